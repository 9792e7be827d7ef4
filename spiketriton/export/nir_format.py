"""NIR export and import: a spiketriton model to and from a ``nir.NIRGraph`` (https://neuroir.org).

NIR describes neurons as continuous-time ODEs; a spiketriton neuron is a discrete recurrence over
time steps of length ``dt``. Forward Euler with that ``dt`` maps one onto the other exactly:

- NIR LIF ``tau dv/dt = (v_leak - v) + r I`` steps as ``v += (dt/tau) (v_leak - v) + (dt r/tau) I``.
  spiketriton ``LIF(tau)`` with ``decay_input=True`` is ``H = V + (X - (V - V_reset)) / tau``:
  ``tau_nir = tau * dt``, ``r = 1``, ``v_leak = V_reset``. With ``decay_input=False``
  (``H = V - (V - V_reset)/tau + X``) the input gain is 1: ``r = tau`` (``dt r / tau_nir = 1``).
- NIR IF ``dv/dt = r I`` steps as ``v += dt r I``: spiketriton ``IF`` is ``r = 1/dt``.
- ExtendedLIF (leak ``alpha v + beta`` after the reset) is a NIR LIF with ``dt/tau = 1 - alpha``,
  ``v_leak = beta / (1 - alpha)``, ``r = tau/dt`` (gain 1); ``alpha = 1, beta = 0`` is an IF.
- Thresholds: NIR fires at ``v > v_threshold`` (strict); IF/LIF/PLIF fire at ``H >= V_th``. Both
  run in fp32, where ``H >= V_th`` is exactly ``H > prev(V_th)`` (the next float32 below), so the
  export writes ``prev(V_th)`` and the import reads a strict threshold back as the next float32 up:
  no spike differs, also when ``H`` lands on the threshold. ExtendedLIF is strict already.
- Reset: NIR resets to ``v_reset``; a subtractive (soft) reset cannot be expressed and is an error.
- Initial state: NIR stores none; spiketriton starts a neuron at its reset potential (family A:
  ``V[-1] = V_reset``). snnTorch and Norse start at 0 and at ``v_leak``.
- Training-only options (surrogate, ``detach_reset``) have no place in NIR and are not written.
  PLIF's learnable tau and ExtendedLIF's learnable leak are written at their current values.

What NIR cannot express (soft reset, ExtendedLIF's floor, adaptive threshold, refractory period,
a drift ``beta`` without a leak, branches) is an :class:`ExportError` naming the module and the
option, never a silently different network.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .._files import check_regular
from ..layers import StepWise
from ..neuron import IF, LIF, PLIF, ExtendedLIF
from ..spec import FAMILY_A, RESET_HARD
from ._graph import ExportError, trace_steps

__all__ = ["to_nir", "save_nir", "from_nir", "DEFAULT_DT", "ExportError"]

#: snnTorch's import_from_nir assumes dt = 1e-4 (hard-coded); Norse's from_nir takes ``dt=``.
DEFAULT_DT = 1e-4


def _nir():
    try:
        import nir
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("spiketriton.export NIR functions need the `nir` package: pip install spiketriton[export]") \
            from None
    return nir


# --------------------------------------------------------------------------------------------- #
# thresholds: >= in fp32 <-> > (strict)
# --------------------------------------------------------------------------------------------- #


def strict_threshold(v_th: float) -> float:
    """The strict threshold equal to ``H >= v_th`` for every float32 ``H``: the float32 below fp32(v_th)."""
    return float(np.nextafter(np.float32(v_th), np.float32(-np.inf)))


def inclusive_threshold(theta: float) -> float:
    """The ``>=`` threshold equal to ``H > theta`` for every float32 ``H``: the least float32 above theta."""
    if not abs(float(theta)) <= float(np.finfo(np.float32).max):
        raise ValueError(f"from_nir: a threshold of {theta} is beyond float32, in which the neurons compute")
    t = np.float32(theta)
    if float(t) <= float(theta):
        t = np.nextafter(t, np.float32(np.inf))
    return float(t)


# --------------------------------------------------------------------------------------------- #
# export
# --------------------------------------------------------------------------------------------- #


def to_nir(model: nn.Module, sample_input: torch.Tensor, dt: float = DEFAULT_DT):
    """The model as a ``nir.NIRGraph``: one node per layer/neuron, named by its module path.

    ``sample_input [T, B, *features]`` gives the shapes (only its feature shape is used; the model
    and its neuron state are not touched). ``dt`` is the time step the discrete model is read with
    (see the module docstring). A quantized model (``spiketriton.quant``) is written with the
    weights its integer mode uses, dequantized; NIR has no integer semantics: for a bit-exact export
    use :func:`spiketriton.export.save_chip`.
    """
    nir = _nir()
    dt = _check_dt(dt, "to_nir")
    steps = trace_steps(model, sample_input, "to_nir")
    taken = {step.name for step in steps if step.kind not in ("input", "output")}
    nodes, names = {}, []
    for step in steps:
        name = step.name
        if step.kind in ("input", "output"):  # named apart from modules that are called input / output
            while name in taken:
                name = "_" + name
        if step.kind == "input":
            node = nir.Input(input_type={"input": np.array(step.in_shape)})
        elif step.kind == "output":
            node = nir.Output(output_type={"output": np.array(step.out_shape)})
        else:
            node = _export_step(nir, step, dt)
        if name in nodes:
            raise ExportError(f"to_nir: the module {name!r} is called twice; NIR nodes are layers, give each call "
                              f"its own module")
        nodes[name] = node
        names.append(name)
    edges = list(zip(names, names[1:]))
    from .. import __version__
    meta = {"source": "spiketriton", "spiketriton_version": __version__, "dt": dt}
    # nir's own type inference gets grouped and non-square convolutions wrong (it reads the input
    # channels from weight.shape[1] and one kernel size for both axes): the shapes here come from
    # running the model, so the graph is built without it
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)


def save_nir(model: nn.Module, path: Union[str, os.PathLike], sample_input: torch.Tensor,
             dt: float = DEFAULT_DT) -> None:
    """Write :func:`to_nir`'s graph to ``path`` (HDF5, via ``nir.write``), atomically: a failure
    leaves no partial file and an existing file untouched."""
    nir = _nir()
    graph = to_nir(model, sample_input, dt)
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".nir")
    os.close(fd)
    try:
        nir.write(tmp, graph)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a model file is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with contextlib.suppress(OSError):  # make the rename durable where directories can be fsynced
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _export_step(nir, step, dt):
    m, name = step.module, step.name
    if step.kind == "linear":
        if len(step.in_shape) != 1:
            raise ExportError(f"to_nir: {name}: a Linear on features {step.in_shape}; NIR's Affine reads a vector "
                              f"(flatten first)")
        w, b = _weights(m)
        return nir.Affine(weight=w, bias=b) if b is not None else nir.Linear(weight=w)
    if step.kind == "conv2d":
        w, b = _weights(m)
        return nir.Conv2d(input_shape=tuple(step.in_shape[1:]), weight=w, stride=tuple(m.stride),
                          padding=tuple(m.padding), dilation=tuple(m.dilation), groups=m.groups,
                          bias=b if b is not None else np.zeros(w.shape[0], dtype=np.float32))
    if step.kind in ("avgpool2d", "sumpool2d"):
        cls = nir.AvgPool2d if step.kind == "avgpool2d" else nir.SumPool2d
        k = _pair(m.kernel_size)
        s = _pair(m.stride if m.stride is not None else m.kernel_size)
        return cls(kernel_size=np.array(k), stride=np.array(s), padding=np.array(_pair(m.padding)))
    if step.kind == "flatten":
        return nir.Flatten(input_type={"input": np.array(step.in_shape)}, start_dim=step.start_dim,
                           end_dim=step.end_dim)
    if step.kind == "neuron":
        return _export_neuron(nir, m, name, step.in_shape, dt)
    raise ExportError(f"to_nir: {name}: no NIR node for {step.kind}")  # pragma: no cover - _graph lists the kinds


def _weights(m):
    """(weight, bias) as float32 numpy: the float parameters, or for a quantized layer in integer
    mode the integer weights and bias it computes with, in real units."""
    from ..quant.modules import AWARE, QUANTIZED, _QLayer, _channel

    if isinstance(m, _QLayer) and m.mode in (AWARE, QUANTIZED):
        # the integers the layer computes with: frozen (quantized) or of the live weights (aware,
        # whose forward equals quantized's), in real units (an encoder's input stays in real units)
        if m.mode == QUANTIZED:
            s_w, w_int, b_int = m.w_scale.double(), m.weight_int.double(), m.bias_int.double()
        else:
            s_w = m.live_weight_scale().double()
            w_int, b_int = m.integers(s_w, ste=False)
        w = w_int / _channel(s_w, m.weight).double()
        S = s_w * m.input_scale.double() if m.is_encoder else s_w
        b = b_int / S if m.bias is not None else None
    else:
        w = m.weight.detach().double()
        b = m.bias.detach().double() if m.bias is not None else None
    w = w.float().cpu().numpy()
    return w, (b.float().cpu().numpy() if b is not None else None)


def _full(shape, value, dtype=np.float64):
    return np.full(tuple(shape), value, dtype=dtype)


def _export_neuron(nir, m, name, shape, dt):
    from ..quant.modules import QLIF

    s = m.spec
    if s.family == FAMILY_A:
        if s.reset_mode != RESET_HARD:
            raise ExportError(f"to_nir: {name}: {type(m).__name__} with a soft reset (v_reset=None) cannot be expressed "
                              f"in NIR, whose neurons reset to v_reset; use a hard reset")
        theta = _full(shape, strict_threshold(s.v_threshold), np.float32)
        v_reset = _full(shape, s.v_reset)
        if isinstance(m, IF):
            return nir.IF(r=_full(shape, 1.0 / dt), v_threshold=theta, v_reset=v_reset)
        tau = m.tau if isinstance(m, (LIF, PLIF)) else None
        r = 1.0 if s.decay_input else tau
        return nir.LIF(tau=_full(shape, tau * dt), r=_full(shape, r), v_leak=_full(shape, s.v_reset),
                       v_threshold=theta, v_reset=v_reset)
    # family B: ExtendedLIF / QLIF
    kind = type(m).__name__
    if not isinstance(m, (ExtendedLIF, QLIF)):  # pragma: no cover - only these are family B
        raise ExportError(f"to_nir: {name}: unknown neuron {kind}")
    for bad, why in ((s.reset_mode != RESET_HARD, "reset_mode SOFT / SOFT_CONSTANT (NIR resets to v_reset)"),
                     (s.has_floor, f"the floor v_l={s.v_l}"),
                     (s.adaptive, "an adaptive threshold (v_th_beta / v_th_incre)"),
                     (s.refractory, f"a refractory period (ref_len={s.ref_len})")):
        if bad:
            raise ExportError(f"to_nir: {name}: {kind} with {why} cannot be expressed in NIR")
    alpha, beta = (float(p.detach()) if isinstance(p, torch.Tensor) else float(p)
                   for p in (m.v_leaky_alpha, m.v_leaky_beta))
    if not 0.0 <= alpha <= 1.0:
        raise ExportError(f"to_nir: {name}: {kind} with v_leaky_alpha={alpha} outside [0, 1] (a learnable leak trained "
                          f"past its range) has no NIR LIF form (dt/tau = 1 - alpha must lie in [0, 1])")
    theta = _full(shape, s.v_threshold, np.float32)  # strict already
    v_reset = _full(shape, s.v_reset)
    # the state before step 0, leaked, is v_init: a neuron that starts at rest (v_reset) has
    # v_init = alpha * v_reset + beta
    start = alpha * s.v_reset + beta
    if not math.isclose(s.v_init, start, rel_tol=1e-6, abs_tol=1e-7):
        raise ExportError(f"to_nir: {name}: {kind} with v_init={s.v_init} does not start at rest; NIR neurons start "
                          f"at v_reset, which here needs v_init = v_leaky_alpha*v_reset + v_leaky_beta = {start}")
    if alpha == 1.0:
        if beta != 0.0:
            raise ExportError(f"to_nir: {name}: {kind} with v_leaky_alpha=1 and v_leaky_beta={beta} (a constant "
                              f"drift without a leak) cannot be expressed in NIR")
        return nir.IF(r=_full(shape, 1.0 / dt), v_threshold=theta, v_reset=v_reset)
    k = 1.0 - alpha
    tau = dt / k
    return nir.LIF(tau=_full(shape, tau), r=_full(shape, tau / dt), v_leak=_full(shape, beta / k),
                   v_threshold=theta, v_reset=v_reset)


# --------------------------------------------------------------------------------------------- #
# import
# --------------------------------------------------------------------------------------------- #


def from_nir(graph_or_path, dt: Optional[float] = None, backend: str = "auto") -> nn.Sequential:
    """A spiketriton model (an ``nn.Sequential`` of spiketriton and torch modules) from a NIR graph
    or a file written by ``nir.write``. The graph must be a chain from its input to its output.

    ``dt``: the time step to read the continuous neurons with; default: the ``dt`` a spiketriton
    export recorded in the graph's metadata, else 1e-4 (snnTorch's convention).

    The model takes ``[T, B, *features]`` like every spiketriton model; conv and pooling layers are
    wrapped in :class:`~spiketriton.StepWise`.
    """
    nir = _nir()
    if isinstance(graph_or_path, (str, os.PathLike)):
        try:
            check_regular(graph_or_path, "from_nir")  # a FIFO would block h5py's open forever
        except OSError as e:
            raise ValueError(f"from_nir: cannot read {os.fspath(graph_or_path)!r} as a NIR file: {e}") from None
        try:
            graph = nir.read(os.fspath(graph_or_path))
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ValueError(f"from_nir: cannot read {os.fspath(graph_or_path)!r} as a NIR file: {e}") from None
    else:
        graph = graph_or_path
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"from_nir: expected a nir.NIRGraph or a path, got {type(graph).__name__}")
    if dt is None:
        meta = graph.metadata if isinstance(graph.metadata, dict) else {}
        dt = meta.get("dt", DEFAULT_DT)
        if not isinstance(dt, (int, float)):
            a = np.asarray(dt) if isinstance(dt, (np.ndarray, np.generic, list, tuple)) else None
            if a is None or a.size != 1 or a.dtype.kind not in "iuf":
                raise ValueError(f"from_nir: the graph's metadata holds dt = {dt!r}, not a number; pass dt= explicitly")
            dt = float(a.reshape(-1)[0])
    dt = _check_dt(dt, "from_nir")
    order = _chain(graph)
    layers = []
    with torch.random.fork_rng(devices=[]):  # the layers' random init is overwritten: leave the caller's RNG alone
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, (nir.Input, nir.Output)):
                continue
            layers.append((name, _import_node(nir, node, name, dt, backend)))
    seq = nn.Sequential()
    for name, module in layers:
        seq.add_module(_module_name(name, seq), module)
    return seq


def _module_name(name: str, seq: nn.Module) -> str:
    """The node's name as a submodule name: dots become '_', and a name that is taken (by another
    layer, or by an nn.Module attribute such as 'train') gets a suffix."""
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in str(name)) or "layer"
    out, i = base, 1
    while out in seq._modules or hasattr(seq, out):
        out, i = f"{base}_{i}", i + 1
    return out


def _chain(graph) -> list:
    nodes, edges = graph.nodes, [tuple(e) for e in graph.edges]
    for a, b in edges:
        for n in (a, b):
            if n not in nodes:
                raise ValueError(f"from_nir: an edge names the node {n!r}, which the graph does not have")
    succ, pred = {}, {}
    for a, b in edges:
        succ.setdefault(a, []).append(b)
        pred.setdefault(b, []).append(a)
    bad = [n for n in nodes if len(succ.get(n, [])) > 1 or len(pred.get(n, [])) > 1]
    if bad:
        raise ValueError(f"from_nir: the node(s) {bad[:3]} branch or merge; spiketriton imports chains of layers only")
    starts = [n for n in nodes if not pred.get(n)]
    if len(starts) != 1:
        raise ValueError(f"from_nir: expected one input node, found {len(starts)} nodes without inputs: {starts[:5]}")
    order, n = [], starts[0]
    while n is not None:
        if n in order:
            raise ValueError(f"from_nir: the graph has a cycle through {n!r} (recurrent connections are not supported)")
        order.append(n)
        n = succ[n][0] if succ.get(n) else None
    if len(order) != len(nodes):
        missing = sorted(set(nodes) - set(order))
        raise ValueError(f"from_nir: the node(s) {missing[:5]} are not on the chain from the input to the output")
    return order


def _uniform(node, name, field):
    a = np.asarray(getattr(node, field), dtype=np.float64)
    if a.size == 0:
        raise ValueError(f"from_nir: node {name!r}: {field} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"from_nir: node {name!r}: {field} has values that are not finite")
    if not np.all(a == a.reshape(-1)[0]):
        raise ValueError(f"from_nir: node {name!r}: {field} differs between neurons; spiketriton neurons take one "
                         f"value per layer (min {a.min()}, max {a.max()})")
    return float(a.reshape(-1)[0])


def _import_node(nir, node, name, dt, backend):
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = np.asarray(node.weight)
        if w.ndim != 2:
            raise ValueError(f"from_nir: node {name!r}: weight of shape {w.shape}, expected [out, in]")
        has_bias = isinstance(node, nir.Affine) and node.bias is not None
        m = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
        with torch.no_grad():
            m.weight.copy_(t(w))
            if has_bias:
                m.bias.copy_(t(node.bias).reshape(-1))
        return m
    if isinstance(node, nir.Conv2d):
        w = np.asarray(node.weight)
        if w.ndim != 4:
            raise ValueError(f"from_nir: node {name!r}: Conv2d weight of shape {w.shape}, expected [C_out, C_in/groups, "
                             f"kH, kW]")
        padding = node.padding if isinstance(node.padding, str) else _pair_int(node.padding)
        m = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[-2:]), stride=_pair_int(node.stride),
                      padding=padding, dilation=_pair_int(node.dilation), groups=int(node.groups),
                      bias=node.bias is not None)
        with torch.no_grad():
            m.weight.copy_(t(w))
            if node.bias is not None:
                m.bias.copy_(t(node.bias).reshape(-1))
        return StepWise(m)
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        pad = _pair_int(node.padding)
        if any(pad) and isinstance(node, nir.AvgPool2d):
            raise ValueError(f"from_nir: node {name!r}: AvgPool2d with padding {pad} (whether padded zeros count in the "
                             f"average is not part of NIR)")
        stride = node.stride if node.stride is not None else node.kernel_size
        return StepWise(nn.AvgPool2d(_pair_int(node.kernel_size), _pair_int(stride), pad,
                                     divisor_override=1 if isinstance(node, nir.SumPool2d) else None))
    if isinstance(node, nir.Flatten):
        in_type = node.input_type.get("input") if isinstance(node.input_type, dict) else None
        nd = len(in_type) if in_type is not None else None
        start, end = int(node.start_dim), int(node.end_dim)
        if (start < 0 or end < -1) and nd is None:
            raise ValueError(f"from_nir: node {name!r}: Flatten with negative dims needs its input_type")
        if start < 0:
            start += nd
        if end < -1:
            end += nd
        return nn.Flatten(start + 2, end + 2 if end >= 0 else -1)  # + [T, B] in front
    if isinstance(node, nir.IF):
        gain = _uniform(node, name, "r") * dt
        if not math.isclose(gain, 1.0, rel_tol=1e-6):
            raise ValueError(f"from_nir: node {name!r}: IF with r*dt = {gain:g}; spiketriton's IF adds its input once "
                             f"per step (r = 1/dt). Norse writes r = 1 for that: read such graphs with dt=1")
        return IF(v_threshold=inclusive_threshold(_uniform(node, name, "v_threshold")),
                  v_reset=_uniform(node, name, "v_reset"), backend=backend)
    if isinstance(node, nir.LIF):
        tau, r = _uniform(node, name, "tau"), _uniform(node, name, "r")
        v_leak, v_reset = _uniform(node, name, "v_leak"), _uniform(node, name, "v_reset")
        theta = _uniform(node, name, "v_threshold")
        if not tau > 0:
            raise ValueError(f"from_nir: node {name!r}: LIF tau = {tau}, expected > 0")
        k = dt / tau          # leak per step
        gain = r * dt / tau   # input gain per step
        if not 0 < k <= 1:
            raise ValueError(f"from_nir: node {name!r}: LIF with dt/tau = {k:g}; forward Euler needs tau >= dt "
                             f"(is dt={dt} the step the graph was written with?)")
        at_rest = np.float32(v_leak) == np.float32(v_reset)  # what the fp32 kernels see
        if at_rest and k < 1:
            if math.isclose(gain, 1.0, rel_tol=1e-6):
                return LIF(tau=1.0 / k, decay_input=False, v_threshold=inclusive_threshold(theta), v_reset=v_reset,
                           backend=backend)
            if math.isclose(gain, k, rel_tol=1e-6):
                return LIF(tau=1.0 / k, decay_input=True, v_threshold=inclusive_threshold(theta), v_reset=v_reset,
                           backend=backend)
        if math.isclose(gain, 1.0, rel_tol=1e-6):
            alpha, beta = 1.0 - k, k * v_leak
            # family B: strict threshold as NIR; leak after the reset; starts at rest (v_reset)
            return ExtendedLIF(v_th0=float(np.float32(theta)), v_leaky_alpha=alpha, v_leaky_beta=beta, v_reset=v_reset,
                               v_init=alpha * v_reset + beta, backend=backend)
        raise ValueError(f"from_nir: node {name!r}: LIF with input gain r*dt/tau = {gain:g} and dt/tau = {k:g}: "
                         f"spiketriton's LIF takes gain 1 (decay_input=False) or dt/tau (decay_input=True)"
                         + ("" if at_rest else ", and ExtendedLIF gain 1"))
    raise ValueError(f"from_nir: node {name!r}: NIR {type(node).__name__} has no spiketriton counterpart (supported: "
                     f"Input, Output, Affine, Linear, Conv2d, Flatten, AvgPool2d, SumPool2d, IF, LIF)")


def _check_dt(dt, what) -> float:
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: dt must be a number, got {type(dt).__name__}") from None
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"{what}: dt must be finite and > 0, got {dt}")
    return dt


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _pair_int(v) -> tuple:
    a = np.asarray(v).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, 2)
    if a.size != 2:
        raise ValueError(f"expected one or two integers, got {v!r}")
    return tuple(int(x) for x in a)
