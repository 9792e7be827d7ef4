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

- Max pooling of spikes (:class:`~spiketriton.SpikeMaxPool2d`, or ``nn.MaxPool2d`` right after a neuron):
  NIR has no max pooling, but the max of 0/1 spikes is their OR, which is 1 where the window's count
  is > 0: it is written as a ``SumPool2d`` followed by a ``Threshold`` at 0 (named ``<module>.or``) and
  read back as a SpikeMaxPool2d. Max pooling of other values, ``ceil_mode`` and ``dilation`` are an error.
- :class:`~spiketriton.SpikeConv2d` is a ``Conv2d`` node, :class:`~spiketriton.SpikeAvgPool2d` an
  ``AvgPool2d`` and :class:`~spiketriton.SpikeSumPool2d` a ``SumPool2d`` (imported back as
  ``nn.Conv2d`` / ``nn.AvgPool2d`` in a StepWise: ``spiketriton.convert`` makes them spike layers again).

What NIR cannot express (soft reset, ExtendedLIF's floor, adaptive threshold, refractory period,
a drift ``beta`` without a leak, branches) is an :class:`ExportError` naming the module and the
option, never a silently different network.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .._files import read_regular, write_atomic
from ..functional._checks import check_backend, finite
from ..layers import StepWise
from ..neuron import IF, LIF, PLIF, BaseNeuron, ExtendedLIF
from ..spec import FAMILY_A, RESET_HARD
from ._graph import ExportError, check_model_and_sample, trace_steps

__all__ = ["to_nir", "save_nir", "from_nir", "DEFAULT_DT", "ExportError", "NIRFormatError"]

#: snnTorch's import_from_nir assumes dt = 1e-4 (hard-coded); Norse's from_nir takes ``dt=``.
DEFAULT_DT = 1e-4
#: the name of the Threshold node that follows the SumPool2d of a max pooling of spikes ("<module>.or")
_OR_SUFFIX = ".or"


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
        if t == np.finfo(np.float32).max:  # H > max(float32) never holds for a finite H
            raise ValueError(f"from_nir: a threshold of {theta} leaves no float32 above it, in which the neurons "
                             f"compute")
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

    Every number written (weights, biases, tau, r, v_leak, thresholds, v_reset) must be finite in
    float32, the precision the neurons run in: a NaN (e.g. a PLIF whose learnable ``w`` diverged) or a
    value past float32's range (``v_threshold=1e39``) is an :class:`ExportError` naming the module and
    the field. A ``model`` that is not an ``nn.Module`` or a ``sample_input`` that is not a tensor is a
    ``TypeError``.
    """
    nir = _nir()
    check_model_and_sample(model, sample_input, "to_nir")
    dt = _check_dt(dt, "to_nir")
    steps = trace_steps(model, sample_input, "to_nir")
    taken = {step.name for step in steps if step.kind not in ("input", "output")}
    taken |= {step.name + _OR_SUFFIX for step in steps if step.kind == "maxpool2d"}
    nodes, names = {}, []
    spikes = False  # whether the value on the chain is spikes (0/1)
    for step in steps:
        name = step.name
        if step.kind in ("input", "output"):  # named apart from modules that are called input / output
            while name in taken:
                name = "_" + name
        extra = []
        if step.kind == "input":
            node = nir.Input(input_type={"input": np.array(step.in_shape)})
        elif step.kind == "output":
            node = nir.Output(output_type={"output": np.array(step.out_shape)})
        else:
            if step.kind == "maxpool2d":
                if not spikes:
                    raise ExportError(f"to_nir: {name}: {type(step.module).__name__} of values that are not spikes: "
                                      f"MaxPool2d cannot be exported (NIR has no max pooling; the max of 0/1 spikes, "
                                      f"their OR, is written as a SumPool2d and a Threshold at 0)")
                # the OR of a window of spikes: its count, then 1 where the count is > 0
                extra = [(name + _OR_SUFFIX, nir.Threshold(threshold=np.zeros(step.out_shape, dtype=np.float32)))]
            node = _export_step(nir, step, dt)
            _check_written(node, name, type(step.module).__name__)
        if step.kind != "flatten":
            spikes = step.kind in ("neuron", "maxpool2d")
        for name, node in [(name, node)] + extra:
            if name in nodes:
                raise ExportError(f"to_nir: the module {name!r} is called twice; NIR nodes are layers, give each "
                                  f"call its own module")
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
    """Write :func:`to_nir`'s graph to ``path`` (HDF5, as ``nir.write`` writes it), atomically: the
    HDF5 image is built in memory and written with plain Python I/O by ``spiketriton._files.write_atomic``, so a
    failed write (a full disk, a file-size limit, a read-only directory) is an ``OSError`` naming the
    path, leaves no partial or temporary file, and leaves an existing file untouched."""
    nir = _nir()
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"save_nir: path must be a str or os.PathLike, got {type(path).__name__}")
    check_model_and_sample(model, sample_input, "save_nir")
    graph = to_nir(model, sample_input, dt)
    buf = io.BytesIO()
    nir.write(buf, graph)  # in memory: HDF5's C library never writes to the file system
    write_atomic(path, buf.getvalue(), "save_nir")


_F32_MAX = float(np.finfo(np.float32).max)


def _check_written(node, name, kind):
    """Every number a node carries is finite in float32 (NIR readers, ours included, compute in it)."""
    for field, value in vars(node).items():
        if field in ("input_type", "output_type", "metadata") or isinstance(value, str):
            continue
        try:
            a = np.asarray(value)
        except (TypeError, ValueError):  # pragma: no cover - the nodes are ours
            continue
        if a.dtype.kind not in "fiu" or a.size == 0:
            continue
        bad = ~(np.abs(a.astype(np.float64)) <= _F32_MAX)
        if bad.any():
            v = a.reshape(-1)[int(np.flatnonzero(bad.reshape(-1))[0])]
            raise ExportError(f"to_nir: {name}: {kind} has {field} = {v} ({int(bad.sum())} of {a.size} values), not "
                              f"a finite float32; NIR readers compute in float32 (a diverged training or a constant "
                              f"beyond +-{_F32_MAX:.4g})")


def _tau(m) -> float:
    try:
        return m.tau
    except ZeroDivisionError:  # PLIF with sigmoid(w) = 0 in float32 (w below -104): an infinite tau
        return math.inf


def _f32(value, name, kind, field) -> float:
    """A module constant as a float that is finite in float32, or ExportError naming it."""
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not abs(v) <= _F32_MAX:
        raise ExportError(f"to_nir: {name}: {kind} has {field} = {v}, not a finite float32; NIR readers compute in "
                          f"float32")
    return v


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
    if step.kind in ("avgpool2d", "sumpool2d", "maxpool2d"):  # (maxpool2d: the sum, a Threshold follows)
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
    kind = type(m).__name__
    if s.family == FAMILY_A:
        if s.reset_mode != RESET_HARD:
            raise ExportError(f"to_nir: {name}: {kind} with a soft reset (v_reset=None) cannot be expressed "
                              f"in NIR, whose neurons reset to v_reset; use a hard reset")
        if s.v_init != s.v_reset:
            # NIR stores no initial state: an importer starts the neuron at rest (v_reset), so a neuron that
            # starts elsewhere (ann2snn's half-threshold start) would be a different network
            raise ExportError(f"to_nir: {name}: {kind} starts at v_init={s.v_init}, not at its reset potential "
                              f"v_reset={s.v_reset}; NIR has no initial state (an importer starts it at v_reset)")
        theta = _full(shape, strict_threshold(_f32(s.v_threshold, name, kind, "v_threshold")), np.float32)
        v_reset = _full(shape, _f32(s.v_reset, name, kind, "v_reset"))
        if isinstance(m, IF):
            return nir.IF(r=_full(shape, 1.0 / dt), v_threshold=theta, v_reset=v_reset)
        tau = _f32(_tau(m), name, kind, "tau (PLIF: 1/sigmoid(w))" if isinstance(m, PLIF) else "tau") \
            if isinstance(m, (LIF, PLIF)) else None
        r = 1.0 if s.decay_input else tau
        return nir.LIF(tau=_full(shape, tau * dt), r=_full(shape, r), v_leak=_full(shape, s.v_reset),
                       v_threshold=theta, v_reset=v_reset)
    # family B: ExtendedLIF / QLIF
    if not isinstance(m, (ExtendedLIF, QLIF)):  # pragma: no cover - only these are family B
        raise ExportError(f"to_nir: {name}: unknown neuron {kind}")
    for bad, why in ((s.reset_mode != RESET_HARD, "reset_mode SOFT / SOFT_CONSTANT (NIR resets to v_reset)"),
                     (s.has_floor, f"the floor v_l={s.v_l}"),
                     (s.adaptive, "an adaptive threshold (v_th_beta / v_th_incre)"),
                     (s.refractory, f"a refractory period (ref_len={s.ref_len})")):
        if bad:
            raise ExportError(f"to_nir: {name}: {kind} with {why} cannot be expressed in NIR")
    alpha, beta = (_f32(p, name, kind, f) for p, f in ((m.v_leaky_alpha, "v_leaky_alpha"),
                                                        (m.v_leaky_beta, "v_leaky_beta")))
    _f32(s.v_threshold, name, kind, "v_threshold")
    _f32(s.v_reset, name, kind, "v_reset")
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


class NIRFormatError(ValueError):
    """A NIR file or graph that :func:`from_nir` cannot read: damaged, malformed, hostile, beyond the
    limits below, or describing a network that cannot run (sizes that do not chain, a kernel of 0, a
    string where a number belongs). The message names the file (or "the graph"), the node and the
    field, and what was expected."""


# Limits for reading a NIR file (module constants: read at each call; tests lower them).
# A NIR file is parsed in a child process (see _nir_reader.py): HDF5's C library can crash or loop on
# a damaged file. Measured on the 2-core CI machine under load (h5py 3.16, nir 1.0.8): the child's
# start-up (python -I -S, numpy + h5py, no torch) is 0.13 s; from_nir of a small file (54 kB:
# Linear(6,8), LIF, Linear(8,3), IF) takes 0.17 s (median; 0.15 s at best) against 0.024 s for nir.read
# in-process, so the isolation costs ~0.15 s per load; a 61 MB file (64 MiB of float32 weights,
# gzip) takes 2.4-3.2 s in the child (20-25 MB/s, mostly gzip) against 1.4 s for nir.read.
NIR_MAX_FILE_BYTES = 1 << 30          # 1 GiB: larger than any SNN we know of in NIR (weights are float32)
NIR_MAX_ARRAY_BYTES = 1 << 30         # one dataset, decompressed (checked from its declared shape before reading)
NIR_MAX_TOTAL_BYTES = 1 << 31         # all datasets together, decompressed: 2 GiB
NIR_MAX_OBJECTS = 1 << 16             # HDF5 groups + datasets (a node has about 5-10)
NIR_MAX_DEPTH = 16                    # group nesting (a graph uses 4: node / nodes / <name> / metadata)
NIR_MAX_NODES = 1 << 14               # nodes (and edges) of the graph
# wall-clock time for one parse: a base of 10 s (60x the small file's 0.17 s, for a loaded machine)
# plus 1 s per 2 MB of file (10x slower than the 20 MB/s measured): a 1 GiB file gets ~9 minutes.
# The child's CPU limit (RLIMIT_CPU, SIGXCPU) is the same number of seconds.
NIR_PARSE_BASE_S = 10.0
NIR_PARSE_BYTES_PER_S = 2e6
# the child's address space (RLIMIT_AS): 1 GiB for the interpreter (numpy + h5py map 113 MB with one
# BLAS thread) and HDF5's buffers, plus twice the file image (stdin buffer, BytesIO) and twice the
# decompressed data limit (the arrays read, then their bytes written out)
NIR_CHILD_BASE_BYTES = 1 << 30


def from_nir(graph_or_path, dt: Optional[float] = None, backend: str = "auto") -> nn.Sequential:
    """A spiketriton model (an ``nn.Sequential`` of spiketriton and torch modules) from a NIR graph
    or a file written by ``nir.write``. The graph must be a chain from its input to its output.

    ``dt``: the time step to read the continuous neurons with; default: the ``dt`` a spiketriton
    export recorded in the graph's metadata, else 1e-4 (snnTorch's convention).

    The model takes ``[T, B, *features]`` like every spiketriton model; conv and pooling layers are
    wrapped in :class:`~spiketriton.StepWise`.

    A file is read as untrusted input: only a regular file of at most ``NIR_MAX_FILE_BYTES``, parsed
    in a child process (no torch in it) under a time limit and a memory limit, which returns plain
    arrays and strings (no pickle); a crash, a hang or a malformed structure there is a
    :class:`NIRFormatError`, as is every graph, read or passed in, whose nodes do not hold the fields,
    types, shapes, finite values and ranges their kind needs or whose consecutive sizes do not agree.
    """
    nir = _nir()
    check_backend(backend, "from_nir")
    if dt is not None:
        dt = _check_dt(dt, "from_nir")
    if isinstance(graph_or_path, (str, os.PathLike)):
        graph = _read_file(nir, graph_or_path)
        who = f"from_nir: {os.fspath(graph_or_path)!r}"
    else:
        graph = graph_or_path
        who = "from_nir: the graph"
        if not isinstance(graph, nir.NIRGraph):
            raise TypeError(f"from_nir: expected a nir.NIRGraph or a path, got {type(graph).__name__}")
    if dt is None:
        meta = graph.metadata if isinstance(graph.metadata, dict) else {}
        dt = meta.get("dt", DEFAULT_DT)
        if isinstance(dt, bool) or not isinstance(dt, (int, float)):
            try:
                a = np.asarray(dt) if isinstance(dt, (np.ndarray, np.generic, list, tuple)) else None
            except (TypeError, ValueError):  # a ragged list
                a = None
            if a is None or a.size != 1 or a.dtype.kind not in "iuf":
                raise NIRFormatError(f"{who}: the graph's metadata holds dt = {_short(dt)}, not a number; pass dt= "
                                     f"explicitly")
            dt = float(a.reshape(-1)[0])
        if not (math.isfinite(dt) and dt > 0):
            raise NIRFormatError(f"{who}: the graph's metadata holds dt = {dt}, expected a finite number > 0; pass "
                                 f"dt= explicitly")
    dt = _check_dt(dt, "from_nir")
    order = _chain(graph, who)
    layers, shape = [], None
    with torch.random.fork_rng(devices=[]):  # the layers' random init is overwritten: leave the caller's RNG alone
        for i, name in enumerate(order):
            node = graph.nodes[name]
            at = f"{who}: node {name!r} ({type(node).__name__})"
            if isinstance(node, nir.Input):
                if i != 0:
                    raise NIRFormatError(f"{at}: an Input node in the middle of the chain")
                shape = _io_shape(node.input_type, "input", at, "input_type")
                continue
            if isinstance(node, nir.Output):
                if i != len(order) - 1:
                    raise NIRFormatError(f"{at}: an Output node in the middle of the chain")
                out = _io_shape(node.output_type, "output", at, "output_type")
                if out is not None and shape is not None and _numel(out) != _numel(shape):
                    raise NIRFormatError(f"{at}: output_type {list(out)}, but the chain before it gives "
                                         f"{list(shape)}")
                continue
            if isinstance(node, nir.Threshold):  # after a SumPool2d of spikes: a max pooling of spikes
                module = _import_or(node, at, layers, shape, backend)
                layers[-1] = (layers[-1][0], module)  # (the pooling's name)
                continue
            try:
                module, shape = _import_node(nir, node, at, shape, dt, backend)
            except NIRFormatError:
                raise
            except (ValueError, TypeError, OverflowError) as e:  # a module refused what the checks let through
                raise NIRFormatError(f"{at}: {e}") from None
            layers.append((name, module))
    seq = nn.Sequential()
    for name, module in layers:
        seq.add_module(_module_name(name, seq), module)
    return seq


def _short(v, n=80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


# --------------------------------------------------------------------------------------------- #
# reading a file: in a child process
# --------------------------------------------------------------------------------------------- #

_READER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nir_reader.py")
_DTYPE = re.compile(r"[<|][biuf][1248]")


def _read_file(nir, path) -> "nir.NIRGraph":
    who = f"from_nir: {os.fspath(path)!r}"
    limit = int(NIR_MAX_FILE_BYTES)
    try:  # regular files only: a FIFO would block, /dev/zero would read without end
        image = read_regular(path, "from_nir", limit)
    except ValueError as e:
        raise NIRFormatError(str(e)) from None
    except OSError as e:
        raise NIRFormatError(f"from_nir: cannot read {os.fspath(path)!r} as a NIR file: {e}") from None
    if len(image) > limit:
        raise NIRFormatError(f"{who}: the file has more than {limit} bytes, the limit for a NIR file "
                             f"(spiketriton.export.nir_format.NIR_MAX_FILE_BYTES)")
    tree, arrays = _parse_in_child(image, who)
    return _to_graph(nir, tree, arrays, who)


def _child_path() -> list:
    """The import path the child needs for numpy and h5py: where this process finds them first, then
    this process's absolute path entries (never the working directory)."""
    import importlib.util

    first = []
    for mod in ("h5py", "numpy"):
        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.submodule_search_locations:
            first.append(os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0])))
    rest = [p for p in sys.path if isinstance(p, str) and os.path.isabs(p)]
    return list(dict.fromkeys(first + rest))


def _parse_in_child(image: bytes, who: str):
    """Run _nir_reader.py on ``image``: (the tree of plain values, the list of arrays)."""
    timeout = float(NIR_PARSE_BASE_S) + len(image) / float(NIR_PARSE_BYTES_PER_S)
    limits = {"max_file_bytes": int(NIR_MAX_FILE_BYTES), "max_array_bytes": int(NIR_MAX_ARRAY_BYTES),
              "max_total_bytes": int(NIR_MAX_TOTAL_BYTES), "max_objects": int(NIR_MAX_OBJECTS),
              "max_depth": int(NIR_MAX_DEPTH), "max_rank": 8, "max_strings": int(NIR_MAX_NODES) * 4,
              "max_string_chars": 1 << 16, "cpu_seconds": max(1, math.ceil(timeout)),
              "address_space_bytes": int(NIR_CHILD_BASE_BYTES) + 2 * len(image) + 2 * int(NIR_MAX_TOTAL_BYTES)}
    config = json.dumps({"path": _child_path(), "limits": limits}).encode() + b"\n"
    # a minimal environment: no PYTHON* variables (-I), no site (-S), one BLAS thread, no HDF5 plugin
    # path; the dynamic loader's path is kept so that h5py finds the libraries the parent found
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LC_ALL": "C",
           "HDF5_USE_FILE_LOCKING": "FALSE"}
    if "LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    if not sys.executable:  # pragma: no cover - embedded interpreters
        raise NIRFormatError(f"{who}: cannot start the NIR reader: sys.executable is not set")
    try:
        r = subprocess.run([sys.executable, "-I", "-S", _READER], input=config + image, capture_output=True,
                           env=env, timeout=timeout, cwd="/" if os.name == "posix" else None)
    except subprocess.TimeoutExpired:
        raise NIRFormatError(f"{who}: parsing took longer than {timeout:.0f} s and was stopped (a damaged HDF5 file "
                             f"can send the parser into an endless loop)") from None
    except OSError as e:
        raise NIRFormatError(f"{who}: cannot start the NIR reader process ({sys.executable}): {e}") from None
    out, rc = r.stdout, r.returncode
    if rc < 0:
        try:
            sig = signal.Signals(-rc).name
        except ValueError:
            sig = str(-rc)
        if sig == "SIGXCPU":
            raise NIRFormatError(f"{who}: parsing used more than {limits['cpu_seconds']} s of CPU and was stopped (a "
                                 f"damaged HDF5 file can send the parser into an endless loop)")
        raise NIRFormatError(f"{who}: the HDF5 parser crashed (signal {sig}): the file is damaged, is not a NIR file, "
                             f"or needs more than the parser's memory limit ({limits['address_space_bytes']} bytes of "
                             f"address space; HDF5 can crash when an allocation fails)")
    if rc == 0 and out.startswith(b"ER\n"):
        msg = out[3:3 + 2000].decode("utf-8", "replace")
        if msg.startswith("MemoryError"):
            msg += f" (the parser's memory limit is {limits['address_space_bytes']} bytes)"
        raise NIRFormatError(f"{who}: cannot read it as a NIR file: {msg}")
    if rc != 0 or not out.startswith(b"OK\n"):
        tail = r.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise NIRFormatError(f"{who}: the NIR reader process failed (exit status {rc}): {tail[0][:500]}")
    try:
        return _decode(out)
    except (ValueError, TypeError, KeyError, IndexError, struct.error, RecursionError) as e:
        raise NIRFormatError(f"{who}: the NIR reader's answer is malformed ({type(e).__name__}: {e})") from None


def _decode(out: bytes):
    """The child's answer (OK, a JSON tree, raw arrays) as a tree of dicts, numpy arrays and strings."""
    (n,) = struct.unpack("<Q", out[3:11])
    if n > len(out) - 11:
        raise ValueError("the JSON header runs past the end")
    tree = json.loads(out[11:11 + n].decode("utf-8"))
    pos, arrays = 11 + n, []

    def take(spec):
        nonlocal pos
        if not isinstance(spec.get("dtype"), str) or not _DTYPE.fullmatch(spec["dtype"]):
            raise ValueError(f"array dtype {spec.get('dtype')!r}")
        shape = spec.get("shape")
        if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"array shape {shape!r}")
        if spec.get("a") != len(arrays):
            raise ValueError("arrays out of order")
        dtype = np.dtype(spec["dtype"])
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > len(out) - pos:
            raise ValueError("an array runs past the end")
        a = np.frombuffer(out, dtype=dtype, count=math.prod(shape), offset=pos).reshape(shape).astype(
            dtype.newbyteorder("="))  # a copy, writable, in native order
        pos += nbytes
        arrays.append(a)
        return a[()] if a.ndim == 0 else a  # as h5py reads a scalar dataset: a numpy scalar

    def walk(d, depth):
        if not isinstance(d, dict) or depth > 64:
            raise ValueError("a group is not a JSON object")
        out_ = {}
        for k, v in d.items():
            if not isinstance(v, dict) or len(v) not in (1, 2, 3):
                raise ValueError(f"entry {k!r}")
            if "g" in v:
                out_[k] = walk(v["g"], depth + 1)
            elif "a" in v:
                out_[k] = take(v)
            elif "s" in v:
                s = v["s"]
                if isinstance(s, str):
                    out_[k] = s
                elif isinstance(s, list) and all(isinstance(x, str) for x in s) and isinstance(v.get("shape"), list) \
                        and all(type(x) is int and x >= 0 for x in v["shape"]) and math.prod(v["shape"]) == len(s):
                    a = np.empty(len(s), dtype=object)
                    a[:] = s
                    out_[k] = a.reshape(v["shape"])
                else:
                    raise ValueError(f"string entry {k!r}")
            else:
                raise ValueError(f"entry {k!r}")
        return out_

    tree = walk(tree, 0)
    if pos != len(out):
        raise ValueError(f"{len(out) - pos} bytes after the last array")
    return tree, arrays


def _to_graph(nir, tree, arrays, who):
    """``nir.read``'s dict -> NIRGraph step (``nir.dict2NIRNode``) on the plain tree, after checking
    what nir's constructors assume; any failure in them is a NIRFormatError."""
    data = tree.get("node")
    if not isinstance(data, dict):
        raise NIRFormatError(f"{who}: no 'node' group (a NIR file holds its graph in /node); found "
                             f"{sorted(tree)[:5]}")
    if data.get("type") != "NIRGraph":
        raise NIRFormatError(f"{who}: /node/type is {_short(data.get('type'))}, expected 'NIRGraph'")
    if "type_check" in data:
        raise NIRFormatError(f"{who}: /node holds a 'type_check' entry, which is not a NIR field")
    nodes, edges = data.get("nodes"), data.get("edges")
    if not isinstance(nodes, dict):
        raise NIRFormatError(f"{who}: /node/nodes is {'missing' if nodes is None else 'not a group'}")
    if len(nodes) > NIR_MAX_NODES:
        raise NIRFormatError(f"{who}: {len(nodes)} nodes, beyond the limit of {NIR_MAX_NODES}")
    for name, node in nodes.items():
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            raise NIRFormatError(f"{who}: node {name!r} is not a group with a 'type' string")
        cls = getattr(nir, node["type"], None)
        if not (isinstance(cls, type) and issubclass(cls, nir.NIRNode)):
            raise NIRFormatError(f"{who}: node {name!r} has type {_short(node['type'])}, not a NIR node type")
        if node["type"] == "NIRGraph":
            raise NIRFormatError(f"{who}: node {name!r} is a nested NIRGraph; spiketriton imports flat chains of "
                                 f"layers")
    if not (isinstance(edges, np.ndarray) and edges.dtype == object and (edges.size == 0 or edges.ndim == 2
                                                                          and edges.shape[1] == 2)):
        raise NIRFormatError(f"{who}: /node/edges must be an [n, 2] array of node names, got "
                             f"{_short(getattr(edges, 'shape', edges))}")
    if len(edges) > NIR_MAX_NODES:
        raise NIRFormatError(f"{who}: {len(edges)} edges, beyond the limit of {NIR_MAX_NODES}")
    data = dict(data, edges=edges.reshape(-1, 2), type_check=False)  # our own checks follow, per node
    try:
        graph = nir.dict2NIRNode(data)
    except Exception as e:  # nir's constructors on untrusted data: AssertionError, KeyError, TypeError, ...
        raise NIRFormatError(f"{who}: the graph is malformed: nir cannot build it ({type(e).__name__}: "
                             f"{_short(str(e), 300) or 'no message'})") from None
    if not isinstance(graph, nir.NIRGraph):  # pragma: no cover - type was checked
        raise NIRFormatError(f"{who}: /node is not a NIRGraph")
    return graph


# --------------------------------------------------------------------------------------------- #
# the graph: a chain of valid nodes
# --------------------------------------------------------------------------------------------- #


def _module_name(name: str, seq: nn.Module) -> str:
    """The node's name as a submodule name: dots become '_', and a name that is taken (by another
    layer, or by an nn.Module attribute such as 'train') gets a suffix."""
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in str(name)) or "layer"
    out, i = base, 1
    while out in seq._modules or hasattr(seq, out):
        out, i = f"{base}_{i}", i + 1
    return out


def _chain(graph, who) -> list:
    nodes, edges = graph.nodes, graph.edges
    if not isinstance(nodes, dict):
        raise NIRFormatError(f"{who}: nodes must be a dict of name -> NIR node, got {type(nodes).__name__}")
    from nir import NIRNode

    for n, node in nodes.items():
        if not isinstance(n, str):
            raise NIRFormatError(f"{who}: node names must be strings, got {_short(n)} ({type(n).__name__})")
        if not isinstance(node, NIRNode):
            raise NIRFormatError(f"{who}: node {n!r} is a {type(node).__name__}, not a NIR node")
    pairs = []
    try:
        for e in edges:
            a, b = e
            pairs.append((a, b))
    except (TypeError, ValueError):
        raise NIRFormatError(f"{who}: edges must be a list of (source, target) pairs of node names, got "
                             f"{_short(edges)}") from None
    for a, b in pairs:
        for n in (a, b):
            if not isinstance(n, str) or n not in nodes:
                raise NIRFormatError(f"{who}: an edge names the node {_short(n)}, which the graph does not have")
    succ, pred = {}, {}
    for a, b in pairs:
        succ.setdefault(a, []).append(b)
        pred.setdefault(b, []).append(a)
    bad = [n for n in nodes if len(succ.get(n, [])) > 1 or len(pred.get(n, [])) > 1]
    if bad:
        raise NIRFormatError(f"{who}: the node(s) {bad[:3]} branch or merge; spiketriton imports chains of layers "
                             f"only")
    starts = [n for n in nodes if not pred.get(n)]
    if len(starts) != 1:
        raise NIRFormatError(f"{who}: expected one input node, found {len(starts)} nodes without inputs: "
                             f"{starts[:5]}")
    order, seen, n = [], set(), starts[0]
    while n is not None:
        if n in seen:
            raise NIRFormatError(f"{who}: the graph has a cycle through {n!r} (recurrent connections are not "
                                 f"supported)")
        order.append(n)
        seen.add(n)
        n = succ[n][0] if succ.get(n) else None
    if len(order) != len(nodes):
        missing = sorted(set(nodes) - set(order))
        raise NIRFormatError(f"{who}: the node(s) {missing[:5]} are not on the chain from the input to the output")
    return order


def _fit(shape, rank):
    """``shape`` without leading 1s beyond ``rank`` dims: other tools (Norse) write a batch dim of 1
    into a graph's input type; a [1, 10] sample reads as [10], a [1, C, H, W] one as [C, H, W]."""
    while shape is not None and len(shape) > rank and shape[0] == 1:
        shape = shape[1:]
    return shape


def _numel(shape) -> int:
    return math.prod(shape)


def _numbers(node, at, field, allow_none=False):
    """The field as a float64 array of finite numbers that are finite in float32, or NIRFormatError."""
    v = getattr(node, field, None)
    if v is None:
        if allow_none:
            return None
        raise NIRFormatError(f"{at}: {field} is missing")
    if isinstance(v, (str, bytes)):
        raise NIRFormatError(f"{at}: {field} is the string {_short(v)}, expected numbers")
    try:
        a = np.asarray(v)
    except (TypeError, ValueError) as e:
        raise NIRFormatError(f"{at}: {field} is not an array of numbers ({e})") from None
    if a.dtype.kind not in "iuf":
        raise NIRFormatError(f"{at}: {field} has dtype {a.dtype}, expected numbers (integers or floats)")
    a = a.astype(np.float64)
    bad = ~(np.abs(a) <= _F32_MAX)
    if bad.any():
        what = "not finite" if not np.all(np.isfinite(a)) else "beyond float32, in which the neurons compute"
        raise NIRFormatError(f"{at}: {field} has values that are {what} ({int(bad.sum())} of {a.size})")
    return a


def _ints(node, at, field, n, lo, default=None):
    """The field as ``n`` Python ints >= lo (one value stands for all ``n``), or NIRFormatError."""
    v = getattr(node, field, None)
    if v is None:
        if default is not None:
            return default
        raise NIRFormatError(f"{at}: {field} is missing")
    if isinstance(v, (str, bytes, bool, np.bool_)):
        raise NIRFormatError(f"{at}: {field} is {_short(v)}, expected {'an integer' if n == 1 else 'integers'}")
    try:
        a = np.asarray(v)
    except (TypeError, ValueError):
        a = np.asarray([], dtype=object)
    ok = a.dtype.kind in "iu" or (a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)))
    a = a.reshape(-1)
    if not ok or a.size not in ((1, n) if n > 1 else (1,)):
        raise NIRFormatError(f"{at}: {field} is {_short(v)}, expected {'an integer' if n == 1 else f'{n} integers'}")
    vals = tuple(int(x) for x in (np.repeat(a, n) if a.size == 1 else a))
    if any(x < lo or x > 2 ** 31 - 1 for x in vals):
        raise NIRFormatError(f"{at}: {field} is {list(vals) if n > 1 else vals[0]}, expected "
                             f"{'integers' if n > 1 else 'an integer'} in [{lo}, 2**31-1]")
    return vals if n > 1 else vals[0]


def _io_shape(types, key, at, field):
    """The per-sample shape an Input / Output / Flatten node declares, or None if it declares none."""
    v = types.get(key) if isinstance(types, dict) else None
    if v is None:
        return None
    try:
        a = np.asarray(v)
    except (TypeError, ValueError):
        a = np.asarray([], dtype=object)
    if a.dtype.kind not in "iu" or a.ndim != 1 or not 1 <= a.size <= 8 or np.any(a < 1) or np.any(a > 2 ** 31 - 1):
        raise NIRFormatError(f"{at}: {field} {_short(v)}, expected a shape: 1 to 8 positive integers")
    return tuple(int(x) for x in a)


def _uniform(node, at, field, shape):
    a = _numbers(node, at, field)
    if a.size == 0:
        raise NIRFormatError(f"{at}: {field} is empty")
    if shape is not None and a.size not in (1, _numel(shape)):
        raise NIRFormatError(f"{at}: {field} has shape {list(a.shape)}, but the layer before it gives {list(shape)}")
    if not np.all(a == a.reshape(-1)[0]):
        raise NIRFormatError(f"{at}: {field} differs between neurons; spiketriton neurons take one value per layer "
                             f"(min {a.min()}, max {a.max()})")
    return float(a.reshape(-1)[0])


def _weight(node, at, ndim, what):
    w = _numbers(node, at, "weight")
    if w.ndim != ndim or 0 in w.shape:
        raise NIRFormatError(f"{at}: weight of shape {list(w.shape)}, expected {what}")
    return w


def _bias(node, at, n, required):
    b = _numbers(node, at, "bias", allow_none=not required)
    if b is not None and b.size != n:
        raise NIRFormatError(f"{at}: bias of shape {list(b.shape)}, expected {n} values (one per output)")
    return b


def _window_out(size, k, s, p, d, at, what):
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    if out < 1:
        raise NIRFormatError(f"{at}: the {what} window (kernel {k}, dilation {d}, padding {p}) does not fit an input "
                             f"of size {size}")
    return out


def _import_node(nir, node, at, shape, dt, backend):
    """(module, its per-sample output shape or None) for one node; ``shape`` is the per-sample shape the
    chain feeds it (None when the graph does not say). Every field is checked first."""
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = _weight(node, at, 2, "[out, in]")
        n_out, n_in = w.shape
        b = _bias(node, at, n_out, required=False) if isinstance(node, nir.Affine) else None
        if shape is not None and _fit(shape, 1) != (n_in,):
            raise NIRFormatError(f"{at}: weight [out={n_out}, in={n_in}] reads {n_in} features, but the layer before "
                                 f"it gives {list(shape)}" + (" (flatten first)" if _numel(shape) == n_in else ""))
        m = nn.Linear(n_in, n_out, bias=b is not None)
        with torch.no_grad():
            m.weight.copy_(t(w))
            if b is not None:
                m.bias.copy_(t(b).reshape(-1))
        return m, (n_out,)
    if isinstance(node, nir.Conv2d):
        w = _weight(node, at, 4, "[C_out, C_in/groups, kH, kW]")
        c_out, c_in_g, kh, kw = w.shape
        groups = _ints(node, at, "groups", 1, 1)
        if c_out % groups:
            raise NIRFormatError(f"{at}: {c_out} output channels do not split into groups={groups}")
        c_in = c_in_g * groups
        stride = _ints(node, at, "stride", 2, 1)
        dilation = _ints(node, at, "dilation", 2, 1)
        if isinstance(node.padding, str):
            if node.padding not in ("same", "valid"):
                raise NIRFormatError(f"{at}: padding {node.padding!r}, expected 'same', 'valid' or integers")
            if node.padding == "same" and stride != (1, 1):
                raise NIRFormatError(f"{at}: padding 'same' with stride {list(stride)} (PyTorch takes 'same' with "
                                     f"stride 1 only)")
            padding = node.padding
        else:
            padding = _ints(node, at, "padding", 2, 0)
        b = _bias(node, at, c_out, required=False)
        declared = getattr(node, "input_shape", None)
        shape = _fit(shape, 3)
        if declared is not None:
            declared = _ints(node, at, "input_shape", 2, 1)
            if shape is None:
                shape = (c_in,) + declared
            elif tuple(shape[1:]) != declared:
                raise NIRFormatError(f"{at}: input_shape {list(declared)}, but the layer before it gives "
                                     f"{list(shape)}")
        out = None
        if shape is not None:
            if len(shape) != 3 or shape[0] != c_in:
                raise NIRFormatError(f"{at}: takes [C_in={c_in}, H, W] (weight {list(w.shape)}, groups {groups}), "
                                     f"but the layer before it gives {list(shape)}")
            if padding == "same":
                out = tuple(shape)
                out = (c_out,) + out[1:]
            else:
                pad = (0, 0) if padding == "valid" else padding
                out = (c_out,) + tuple(_window_out(shape[1 + i], (kh, kw)[i], stride[i], pad[i], dilation[i], at,
                                                   "convolution") for i in range(2))
        m = nn.Conv2d(c_in, c_out, (kh, kw), stride=stride, padding=padding, dilation=dilation, groups=groups,
                      bias=b is not None)
        with torch.no_grad():
            m.weight.copy_(t(w))
            if b is not None:
                m.bias.copy_(t(b).reshape(-1))
        return StepWise(m), out
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        kernel = _ints(node, at, "kernel_size", 2, 1)
        stride = _ints(node, at, "stride", 2, 1, default=kernel)
        pad = _ints(node, at, "padding", 2, 0, default=(0, 0))
        if any(pad) and isinstance(node, nir.AvgPool2d):
            raise NIRFormatError(f"{at}: AvgPool2d with padding {list(pad)} (whether padded zeros count in the "
                                 f"average is not part of NIR)")
        if any(2 * p > k for p, k in zip(pad, kernel)):
            raise NIRFormatError(f"{at}: padding {list(pad)} is more than half the kernel {list(kernel)}")
        out, shape = None, _fit(shape, 3)
        if shape is not None:
            if len(shape) != 3:
                raise NIRFormatError(f"{at}: pools [C, H, W], but the layer before it gives {list(shape)}")
            out = (shape[0],) + tuple(_window_out(shape[1 + i], kernel[i], stride[i], pad[i], 1, at, "pooling")
                                      for i in range(2))
        return StepWise(nn.AvgPool2d(kernel, stride, pad,
                                     divisor_override=1 if isinstance(node, nir.SumPool2d) else None)), out
    if isinstance(node, nir.Flatten):
        declared = _io_shape(node.input_type, "input", at, "input_type")
        if declared is not None and shape is not None and _fit(declared, 1) != _fit(shape, 1):
            raise NIRFormatError(f"{at}: input_type {list(declared)}, but the layer before it gives {list(shape)}")
        shape = shape if shape is not None else declared
        start, end = _ints(node, at, "start_dim", 1, -(2 ** 31)), _ints(node, at, "end_dim", 1, -(2 ** 31))
        if shape is None:
            if start < 0 or end < -1:
                raise NIRFormatError(f"{at}: Flatten with negative dims needs its input_type")
            if end != -1 and end < start:
                raise NIRFormatError(f"{at}: Flatten with start_dim {start} > end_dim {end}")
            return nn.Flatten(start + 2, end + 2 if end >= 0 else -1), None  # + [T, B] in front
        nd = len(shape)
        s_, e_ = start + nd if start < 0 else start, end + nd if end < 0 else end
        if not 0 <= s_ <= e_ < nd:
            raise NIRFormatError(f"{at}: Flatten of dims {start}..{end} of a {nd}-d sample {list(shape)}; expected "
                                 f"-{nd} <= start_dim <= end_dim < {nd} (after negative dims count from the end)")
        out = shape[:s_] + (_numel(shape[s_:e_ + 1]),) + shape[e_ + 1:]
        return nn.Flatten(s_ + 2, e_ + 2), out
    if isinstance(node, nir.IF):
        gain = _uniform(node, at, "r", shape) * dt
        if not math.isclose(gain, 1.0, rel_tol=1e-6):
            raise NIRFormatError(f"{at}: IF with r*dt = {gain:g}; spiketriton's IF adds its input once per step "
                                 f"(r = 1/dt). Norse writes r = 1 for that: read such graphs with dt=1")
        theta, v_reset = _uniform(node, at, "v_threshold", shape), _uniform(node, at, "v_reset", shape)
        return IF(v_threshold=_inclusive(theta, at), v_reset=v_reset, backend=backend), _neuron_shape(node, shape)
    if isinstance(node, nir.LIF):
        tau, r = _uniform(node, at, "tau", shape), _uniform(node, at, "r", shape)
        v_leak, v_reset = _uniform(node, at, "v_leak", shape), _uniform(node, at, "v_reset", shape)
        theta = _inclusive(_uniform(node, at, "v_threshold", shape), at)
        out = _neuron_shape(node, shape)
        if not tau > 0:
            raise NIRFormatError(f"{at}: LIF tau = {tau}, expected > 0")
        k = dt / tau          # leak per step
        gain = r * dt / tau   # input gain per step
        if not 0 < k <= 1:
            raise NIRFormatError(f"{at}: LIF with dt/tau = {k:g}; forward Euler needs tau >= dt (is dt={dt} the step "
                                 f"the graph was written with?)")
        at_rest = np.float32(v_leak) == np.float32(v_reset)  # what the fp32 kernels see
        if at_rest and k < 1:
            if math.isclose(gain, 1.0, rel_tol=1e-6):
                return LIF(tau=1.0 / k, decay_input=False, v_threshold=theta, v_reset=v_reset, backend=backend), out
            if math.isclose(gain, k, rel_tol=1e-6):
                return LIF(tau=1.0 / k, decay_input=True, v_threshold=theta, v_reset=v_reset, backend=backend), out
        if math.isclose(gain, 1.0, rel_tol=1e-6):
            alpha, beta = 1.0 - k, k * v_leak
            # family B: strict threshold as NIR; leak after the reset; starts at rest (v_reset)
            v_th = float(np.float32(_uniform(node, at, "v_threshold", shape)))
            return ExtendedLIF(v_th0=v_th, v_leaky_alpha=alpha, v_leaky_beta=beta, v_reset=v_reset,
                               v_init=alpha * v_reset + beta, backend=backend), out
        raise NIRFormatError(f"{at}: LIF with input gain r*dt/tau = {gain:g} and dt/tau = {k:g}: spiketriton's LIF "
                             f"takes gain 1 (decay_input=False) or dt/tau (decay_input=True)"
                             + ("" if at_rest else ", and ExtendedLIF gain 1"))
    raise NIRFormatError(f"{at}: NIR {type(node).__name__} has no spiketriton counterpart (supported: Input, Output, "
                         f"Affine, Linear, Conv2d, Flatten, AvgPool2d, SumPool2d, IF, LIF)")


def _import_or(node, at, layers, shape, backend) -> nn.Module:
    """A Threshold right after a SumPool2d of spikes, at a level in [0, 1): the OR of each window, i.e.
    the max pooling of spikes that :func:`to_nir` writes so; returned as a SpikeMaxPool2d."""
    from ..pooling import SpikeMaxPool2d

    what = ("spiketriton reads a Threshold only as the second half of a max pooling of spikes: a SumPool2d of "
            "spikes (right after a neuron or another such pooling) followed by a Threshold in [0, 1)")
    prev = layers[-1][1] if layers else None
    pool = prev[0] if isinstance(prev, StepWise) and len(prev) == 1 else None
    if not (type(pool) is nn.AvgPool2d and pool.divisor_override == 1):
        raise NIRFormatError(f"{at}: {what}; it follows {type(prev).__name__ if prev is not None else 'the input'}")
    before = layers[-2][1] if len(layers) >= 2 else None
    if not (isinstance(before, BaseNeuron) or (isinstance(before, StepWise) and len(before) == 1
                                               and isinstance(before[0], SpikeMaxPool2d))):
        raise NIRFormatError(f"{at}: {what}; the SumPool2d before it reads "
                             f"{type(before).__name__ if before is not None else 'the input'}, not spikes")
    theta = _uniform(node, at, "threshold", shape)
    if not 0.0 <= theta < 1.0:
        raise NIRFormatError(f"{at}: {what}; its threshold is {theta}")
    return StepWise(SpikeMaxPool2d(pool.kernel_size, pool.stride, pool.padding, backend=backend))


def _neuron_shape(node, shape):
    """A neuron layer keeps its input's shape; with none known, the shape of its per-neuron arrays."""
    if shape is not None:
        return shape
    a = np.asarray(node.v_threshold)
    return tuple(int(d) for d in a.shape) if a.ndim >= 1 and a.size > 1 else None


def _inclusive(theta, at):
    try:
        return inclusive_threshold(theta)
    except ValueError as e:
        raise NIRFormatError(f"{at}: {str(e).removeprefix('from_nir: ')}") from None


def _check_dt(dt, what) -> float:
    """A time step: a real number (not a bool or a string), finite and > 0."""
    dt = finite(dt, "dt", what)
    if not dt > 0:
        raise ValueError(f"{what}: dt must be finite and > 0, got {dt}")
    return dt


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
