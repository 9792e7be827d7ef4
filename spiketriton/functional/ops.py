"""The kernels as ``torch.library`` custom operators: one opaque op per kernel for ``torch.compile``.

Every launcher of ``kernels/`` (Triton, or the PyTorch path with ``triton=False``) is wrapped by
exactly one of these ops. Under ``torch.compile`` the functional layer calls the ops; in eager mode
it calls the same op bodies directly (``call_*`` below: one implementation, only the dispatch differs):

===============================  ========================================================  ========
op (``torch.ops.spiketriton.``)  wraps                                                     autograd
===============================  ========================================================  ========
``neuron_fwd``                   ``kernels.neuron.neuron_forward`` / ``neuron_torch``      yes
``neuron_bwd``                   ``kernels.neuron.neuron_backward`` / ``neuron_torch``     no (1)
``pack`` / ``unpack``            ``kernels.pack`` / ``kernels.pack_torch``                 no (2)
``spike_matmul``                 ``kernels.spike_matmul.spike_matmul_fwd`` / BLAS on 0/1   yes
``spike_matmul_dw``              ``kernels.spike_matmul.spike_matmul_dw`` / BLAS on 0/1    no (1)
``spike_matmul_int``             ``kernels.spike_matmul.spike_matmul_int`` (Triton only)   no (3)
``neuron_int``                   ``kernels.neuron_int.neuron_int_forward`` (Triton only)   no (3)
===============================  ========================================================  ========

(1) The backward ops are the hand-written backwards: double backward is an error (as in eager).

(2) Integer outputs, or values without gradient (``SpikeTensor.unpack``).

(3) Integer inference.

Schema conventions: an op cannot return ``None``, so a tensor that a configuration does not produce
is returned as an empty tensor (``numel() == 0``) and turned back into ``None`` by the caller, which
knows from the same static flags which ones exist. A :class:`~spiketriton.spec.NeuronSpec` travels
as two lists, ``spec_i`` (ints: family, surrogate id, reset mode, detach_reset, decay_input,
ref_len) and ``spec_f`` (floats: surrogate alpha, v_threshold, v_reset, v_init, v_l, dv,
v_th_alpha, v_th_beta, v_th_incre); ``torch.compile`` sees them as constants of the graph.

Shapes are normalised to the input's layout: ``h``/``vth`` are ``[T, *S]``, packed bits
(``bits``/``gate``/``floor``) ``[T, *S[:-1], ceil(L/8)]``; outputs are contiguous, except the
packed-spike anchor (a one-element zero tensor expanded to ``[T, *S]``, see ``functional/spikes.py``).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import surrogate as sg
from ..kernels import neuron as KN
from ..kernels import neuron_torch as KNT
from ..kernels import pack as KP
from ..kernels import pack_torch as KPT
from ..kernels import spike_matmul as KSM
from ..spec import FAMILY_A, NeuronSpec

__all__ = ["spec_args", "spec_from_args", "neuron_fwd", "neuron_bwd", "pack", "unpack", "spike_matmul",
           "spike_matmul_dw", "spike_matmul_int", "neuron_int", "no_double_backward", "call_neuron_fwd",
           "call_pack", "call_unpack", "call_spike_matmul"]

_NS = "spiketriton"

assert [c.id for c in sg.ALL] == list(range(len(sg.ALL))), "surrogate ids must index surrogate.ALL"


def no_double_backward(what: str) -> None:
    """The hand-written backwards are not themselves differentiable: refuse create_graph=True rather
    than return a gradient whose second-order terms are silently missing."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{what}: double backward (torch.autograd.grad(..., create_graph=True) through these layers) is "
            f"not supported; their backward is hand-written and not differentiable"
        )


def _no_autocast(*tensors):
    """The ops compute in their inputs' dtypes (fp32 accumulation inside): switch autocast off for the
    torch ops they call (the PyTorch path's matmuls), when it is on for these tensors' device."""
    dev = tensors[0].device.type
    if torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()


def _none(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if (t is None or t.numel() == 0) else t


# --------------------------------------------------------------------------------------------- #
# NeuronSpec <-> op arguments
# --------------------------------------------------------------------------------------------- #


_args_cache = {}  # id(spec) -> (spec, (ints, floats))


def spec_args(spec: NeuronSpec) -> Tuple[Tuple[int, ...], Tuple[float, ...]]:
    """The spec as the ops' int and float arguments (tuples, made once per spec object: a single-step loop
    calls this every step)."""
    compiling = torch.compiler.is_compiling()  # (dynamo cannot carry an id() across a graph break)
    hit = None if compiling else _args_cache.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    ints = (spec.family, spec.surrogate.id, spec.reset_mode, int(spec.detach_reset), int(spec.decay_input),
            spec.ref_len)
    floats = tuple(float(f) for f in (spec.surrogate.alpha, spec.v_threshold, spec.v_reset, spec.v_init, spec.v_l,
                                      spec.dv, spec.v_th_alpha, spec.v_th_beta, spec.v_th_incre))
    if not compiling:
        if len(_args_cache) > 256:
            _args_cache.clear()
        _args_cache[id(spec)] = (spec, (ints, floats))  # (the entry keeps spec alive: its id stays unique)
    return ints, floats


@functools.lru_cache(maxsize=256)
def _spec_cached(ints: tuple, floats: tuple) -> NeuronSpec:
    family, sg_id, reset_mode, detach_reset, decay_input, ref_len = ints
    alpha, v_th, v_reset, v_init, v_l, dv, th_alpha, th_beta, th_incre = floats
    return NeuronSpec(family=family, surrogate=sg.ALL[sg_id](alpha), v_threshold=v_th, v_reset=v_reset,
                      reset_mode=reset_mode, detach_reset=bool(detach_reset), decay_input=bool(decay_input),
                      v_init=v_init, v_l=v_l, dv=dv, ref_len=ref_len, v_th_alpha=th_alpha, v_th_beta=th_beta,
                      v_th_incre=th_incre)


def spec_from_args(spec_i, spec_f) -> NeuronSpec:
    if type(spec_i) is tuple and type(spec_f) is tuple:  # spec_args' own tuples (eager mode): already typed
        return _spec_cached(spec_i, spec_f)
    return _spec_cached(tuple(int(i) for i in spec_i), tuple(float(f) for f in spec_f))


# --------------------------------------------------------------------------------------------- #
# Neurons
# --------------------------------------------------------------------------------------------- #


def _state_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # fp32 (fp64 on the float64 path)


def _anchor(x: Tensor) -> Tensor:
    """A zero tensor of x's shape backed by one element: a stand-in output for packed spikes."""
    return x.new_zeros(1).as_strided(x.shape, (0,) * x.dim())


def _neuron_fwd_body(x, v0, a0, ref0, params, spec_i, spec_f, triton, store, h_fp32, packed):
    """The body of ``neuron_fwd`` (see its docstring), shared by the op and :class:`_NeuronFn`; the
    tensors that a configuration does not produce are None here (the op returns them empty)."""
    spec = spec_from_args(spec_i, spec_f)
    impl = KN if triton else KNT
    x = x.contiguous()
    T, S = x.shape[0], tuple(x.shape[1:])
    sdt = _state_dtype(x)
    h_dtype = sdt if h_fp32 else x.dtype
    with _no_autocast(x):
        spikes, v_last, a_last, ref_last, saved = impl.neuron_forward(
            x, v0, a0, ref0, params, spec, store=store, h_dtype=h_dtype, write_spikes=not packed)
    if spec.family == FAMILY_A:
        a_last, ref_last = v_last.new_empty(0), torch.empty(0, dtype=torch.int32, device=x.device)
    else:
        a_last = a_last if a_last is not None else torch.zeros_like(v_last)
        ref_last = ref_last if ref_last is not None else torch.zeros(S, dtype=torch.int32, device=x.device)
    h, bits, vth, gate, floor = saved
    bit_shape = (T,) + S[:-1] + ((S[-1] + 7) // 8,)
    return (
        _anchor(x) if packed else spikes,
        v_last.contiguous(),  # the PyTorch path clones a carried-in state with its strides
        a_last.contiguous(),
        ref_last.contiguous(),
        h.view(x.shape) if h is not None else None,
        bits.view(bit_shape) if bits is not None else None,
        vth.view(x.shape) if vth is not None else None,
        gate.view(bit_shape) if gate is not None else None,
        floor.view(bit_shape) if floor is not None else None,
    )


@torch.library.custom_op(f"{_NS}::neuron_fwd", mutates_args=())
def neuron_fwd(
    x: Tensor, v0: Optional[Tensor], a0: Optional[Tensor], ref0: Optional[Tensor], params: Tensor,
    spec_i: List[int], spec_f: List[float], triton: bool, store: bool, h_fp32: bool, packed: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Multi-step neuron forward. Returns ``(spikes, v_last, a_last, ref_last, h, bits, vth, gate, floor)``:
    spikes in x's dtype (the anchor when ``packed``); state in fp32 (fp64 for fp64 input), family A
    gets empty ``a_last``/``ref_last``; the rest is what backward reads (empty unless ``store``,
    except ``bits``, also the packed spikes when ``packed``)."""
    out = _neuron_fwd_body(x, v0, a0, ref0, params, spec_i, spec_f, triton, store, h_fp32, packed)
    # an op cannot return None: the body's absent tensors become (distinct) empty ones
    dtypes = ((_state_dtype(x) if h_fp32 else x.dtype), torch.uint8, torch.float32, torch.uint8, torch.uint8)
    return out[:4] + tuple(t if t is not None else x.new_empty(0, dtype=dt) for t, dt in zip(out[4:], dtypes))


@neuron_fwd.register_fake
def _(x, v0, a0, ref0, params, spec_i, spec_f, triton, store, h_fp32, packed):
    spec = spec_from_args(spec_i, spec_f)
    T, S = x.shape[0], tuple(x.shape[1:])
    sdt = _state_dtype(x)
    h_dtype = sdt if h_fp32 else x.dtype
    bit_shape = (T,) + S[:-1] + ((S[-1] + 7) // 8,)
    u8, f32 = torch.uint8, torch.float32
    empty = lambda dt: x.new_empty(0, dtype=dt)  # noqa: E731
    if spec.family == FAMILY_A:
        a_last, ref_last = empty(sdt), empty(torch.int32)
    else:
        a_last, ref_last = x.new_empty(S, dtype=sdt), x.new_empty(S, dtype=torch.int32)
    return (
        _anchor(x) if packed else x.new_empty(x.shape),
        x.new_empty(S, dtype=sdt),
        a_last,
        ref_last,
        x.new_empty(x.shape, dtype=h_dtype) if store else empty(h_dtype),
        x.new_empty(bit_shape, dtype=u8) if (store or packed) else empty(u8),
        x.new_empty(x.shape, dtype=f32) if (store and spec.adaptive) else empty(f32),
        x.new_empty(bit_shape, dtype=u8) if (store and spec.refractory) else empty(u8),
        x.new_empty(bit_shape, dtype=u8) if (store and spec.has_floor) else empty(u8),
    )


def _neuron_setup_context(ctx, inputs, output):
    x, v0, a0, ref0, params, spec_i, spec_f, triton, store, h_fp32, packed = inputs
    spikes, v_last, a_last, ref_last, h, bits, vth, gate, floor = output
    ctx.mark_non_differentiable(*(t for t in (ref_last, h, bits, vth, gate, floor) if t is not None))
    spec = spec_from_args(spec_i, spec_f)
    if spec.family == FAMILY_A:
        ctx.mark_non_differentiable(a_last)
    ctx.set_materialize_grads(False)
    ctx.spec_args = (spec_i, spec_f)
    ctx.triton = triton
    ctx.x_shape = x.shape
    ctx.x_dtype = x.dtype
    ctx.state_dtypes = (v0.dtype if v0 is not None else None, a0.dtype if a0 is not None else None)
    need_v0_saved = spec.family == FAMILY_A and ctx.needs_input_grad[4] and v0 is not None
    if not store:
        raise RuntimeError("spiketriton::neuron_fwd: a gradient is needed but store=False was passed; "
                           "call it through spiketriton.functional.run_neuron")
    ctx.save_for_backward(h, bits, _none(vth), _none(gate), _none(floor), v0 if need_v0_saved else None, params)


def _neuron_backward_body(ctx, g_spikes, g_v_last, g_a_last, bwd):
    """The neuron backward around ``bwd`` (the ``neuron_bwd`` op, or its body in eager mode)."""
    no_double_backward("spiketriton neurons")
    h, bits, vth, gate, floor, v0, params = ctx.saved_tensors
    spec_i, spec_f = ctx.spec_args
    spec = spec_from_args(spec_i, spec_f)
    need_x, need_v0, need_a0, _, need_p = ctx.needs_input_grad[:5]
    shape = ctx.x_shape
    T = shape[0]
    nothing = (None,) * 6
    if T == 0 or h is None or h.numel() == 0:
        # no step: the state passes straight through
        zeros = torch.zeros(shape[1:], device=params.device)
        gx = torch.zeros(shape, dtype=ctx.x_dtype, device=params.device)
        gv0 = (g_v_last if (g_v_last is not None and T == 0) else zeros) if need_v0 else None
        # a0 reaches a_last only with adaptation (without it a_last is zeros, whatever a0 is)
        ga0 = (g_a_last if (g_a_last is not None and T == 0 and spec.adaptive) else zeros) if need_a0 else None
        gp = torch.zeros_like(params) if need_p else None
        return (gx if need_x else None, gv0, ga0, None, gp) + nothing
    if g_spikes is None:
        g_spikes = torch.zeros(shape, dtype=ctx.x_dtype, device=h.device)
    if spec.family == FAMILY_A:
        g_a_last = None
    gx, gv0, ga0, gp = bwd(
        g_spikes, g_v_last, g_a_last, h, bits, vth, gate, floor, v0, params, spec_i, spec_f, ctx.triton,
        bool(need_v0), bool(need_a0), bool(need_p))
    v_dt, a_dt = ctx.state_dtypes
    if need_a0 and ga0.numel() == 0:  # adaptation off: the carried-in part does not reach the output
        ga0 = torch.zeros(shape[1:], device=h.device)
    return (
        gx if need_x else None,
        gv0.to(v_dt) if need_v0 else None,
        ga0.to(a_dt) if need_a0 else None,
        None,
        gp.to(params.dtype).view_as(params) if need_p else None,
    ) + nothing


def _neuron_backward(ctx, g_spikes, g_v_last, g_a_last, _g_ref, _g_h, _g_bits, _g_vth, _g_gate, _g_floor):
    return _neuron_backward_body(ctx, g_spikes, g_v_last, g_a_last, torch.ops.spiketriton.neuron_bwd)


neuron_fwd.register_autograd(_neuron_backward, setup_context=_neuron_setup_context)


def _neuron_bwd_body(g_spikes, g_v_last, g_a_last, h, bits, vth, gate, floor, v0, params, spec_i, spec_f, triton,
                     need_v0, need_a0, need_params):
    """The body of ``neuron_bwd`` (see its docstring), shared by the op and :class:`_NeuronFn`."""
    spec = spec_from_args(spec_i, spec_f)
    S = tuple(h.shape[1:])
    g_spikes = g_spikes.contiguous()
    if triton:  # the kernels' [T, R, L] view of the sequence
        T = h.shape[0]
        R = math.prod(S[:-1])
        trl = lambda t: t.view(T, R, t.shape[-1]) if t is not None else None  # noqa: E731
        saved = (trl(h), trl(bits), trl(vth), trl(gate), trl(floor))
        impl = KN
    else:
        saved, impl = (h, bits, vth, gate, floor), KNT
    with _no_autocast(h):
        gx, gv0, ga0, gp = impl.neuron_backward(
            g_spikes, g_v_last, g_a_last, saved, v0, params, spec,
            need_v0=need_v0, need_a0=need_a0, need_params=need_params)
    sdt = torch.promote_types(h.dtype, torch.float32)
    empty = h.new_empty(0, dtype=sdt)
    return (
        gx.contiguous(),
        gv0 if gv0 is not None else empty,
        ga0 if ga0 is not None else empty.clone(),
        gp.contiguous() if gp is not None else empty.clone(),
    )


@torch.library.custom_op(f"{_NS}::neuron_bwd", mutates_args=())
def neuron_bwd(
    g_spikes: Tensor, g_v_last: Optional[Tensor], g_a_last: Optional[Tensor], h: Tensor, bits: Tensor,
    vth: Optional[Tensor], gate: Optional[Tensor], floor: Optional[Tensor], v0: Optional[Tensor], params: Tensor,
    spec_i: List[int], spec_f: List[float], triton: bool, need_v0: bool, need_a0: bool, need_params: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The hand-written neuron backward. Returns ``(grad_x [T, *S] in g_spikes' dtype, grad_v0,
    grad_a0, grad_params)`` (state dtype; empty where not asked for, grad_a0 also without adaptation)."""
    return _neuron_bwd_body(g_spikes, g_v_last, g_a_last, h, bits, vth, gate, floor, v0, params, spec_i, spec_f,
                            triton, need_v0, need_a0, need_params)


@neuron_bwd.register_fake
def _(g_spikes, g_v_last, g_a_last, h, bits, vth, gate, floor, v0, params, spec_i, spec_f, triton, need_v0,
      need_a0, need_params):
    spec = spec_from_args(spec_i, spec_f)
    S = tuple(h.shape[1:])
    sdt = torch.promote_types(h.dtype, torch.float32)
    empty = h.new_empty(0, dtype=sdt)
    return (
        h.new_empty(h.shape, dtype=g_spikes.dtype),
        h.new_empty(S, dtype=sdt) if need_v0 else empty,
        h.new_empty(S, dtype=sdt) if (need_a0 and spec.adaptive) else empty.clone(),
        h.new_empty(spec.n_params, dtype=sdt) if need_params else empty.clone(),
    )


# --------------------------------------------------------------------------------------------- #
# Packing
# --------------------------------------------------------------------------------------------- #


@torch.library.custom_op(f"{_NS}::pack", mutates_args=())
def pack(s: Tensor, triton: bool) -> Tensor:
    """0/1 (float, bool or uint8) ``[..., K]`` -> uint8 ``[..., ceil(K/8)]``, nonzero packs as 1."""
    return _pack_body(s, triton)


def _pack_body(s: Tensor, triton: bool) -> Tensor:
    return KP.pack(s) if triton else KPT.pack_bits(s)


@pack.register_fake
def _(s, triton):
    return s.new_empty(tuple(s.shape[:-1]) + ((s.shape[-1] + 7) // 8,), dtype=torch.uint8)


@torch.library.custom_op(f"{_NS}::unpack", mutates_args=())
def unpack(p: Tensor, K: int, dtype: torch.dtype, triton: bool) -> Tensor:
    """uint8 ``[..., ceil(K/8)]`` -> ``[..., K]`` 0/1 in ``dtype`` (no gradient)."""
    return _unpack_body(p, K, dtype, triton)


def _unpack_body(p: Tensor, K: int, dtype: torch.dtype, triton: bool) -> Tensor:
    # the PyTorch path views the bytes as words: it needs unit-stride bytes (a copy only when they are not)
    out = KP.unpack(p, K, dtype) if triton else KPT.unpack_bits(p.contiguous(), K, dtype)
    return out.contiguous()


@unpack.register_fake
def _(p, K, dtype, triton):
    return p.new_empty(tuple(p.shape[:-1]) + (K,), dtype=dtype)


# --------------------------------------------------------------------------------------------- #
# Spike matmul
# --------------------------------------------------------------------------------------------- #


def acc_dtype(t: Tensor) -> torch.dtype:
    """fp32 for half-precision tensors on the CPU: the kernels' semantics (fp32 accumulation, one
    rounding), and much faster there (bf16 32x1024x1024 dY @ W: 71 ms vs 1.0 ms in fp32 on 2 AVX2
    cores, bench/README.md)."""
    return torch.float32 if (t.device.type == "cpu" and t.dtype in (torch.float16, torch.bfloat16)) else t.dtype


def torch_spike_matmul_fwd(packed: Optional[Tensor], K: int, weight: Tensor, bias: Optional[Tensor],
                           dense: Optional[Tensor] = None) -> Tensor:
    """The PyTorch path: BLAS matmul on 0/1 values (exact products), in fp32 for CPU halves. A dense
    input is read as the kernels read it: any nonzero value (NaN included) is a spike."""
    acc = acc_dtype(weight)
    # bool() is the same test as != 0 (NaN and -0.0 included) at about half the cost: [16, 1024] fp32,
    # one thread, 19 us against 35 us for (dense != 0).to(fp32)
    s = dense.bool().to(acc) if dense is not None else KPT.unpack_bits(packed, K, acc)
    y = torch.nn.functional.linear(s, weight.to(acc), bias.to(acc) if bias is not None else None)
    return y.to(weight.dtype)


def _ds(grad_out: Tensor, weight: Tensor, triton: bool) -> Tensor:
    """dS = dY @ W, dense (cuBLAS on the Triton path; fp32 for CPU halves on the PyTorch path)."""
    if triton:
        return grad_out @ weight
    acc = acc_dtype(weight)
    return (grad_out.to(acc) @ weight.to(acc)).to(weight.dtype)


@torch.library.custom_op(f"{_NS}::spike_matmul", mutates_args=())
def spike_matmul(packed: Tensor, K: int, anchor: Optional[Tensor], dense: Optional[Tensor], weight: Tensor,
                 bias: Optional[Tensor], triton: bool) -> Tensor:
    """``Y [M, N] = S @ W.T + b`` for packed spikes ``[M, ceil(K/8)]`` (or their 0/1 values ``dense``
    on the PyTorch path). ``anchor`` is never read: it is the tensor the spikes' gradient goes to."""
    return _smm_body(packed, K, anchor, dense, weight, bias, triton)


def _smm_body(packed, K, anchor, dense, weight, bias, triton):
    with _no_autocast(weight):
        if triton:
            return KSM.spike_matmul_fwd(packed, K, weight, bias)
        return torch_spike_matmul_fwd(packed, K, weight, bias, dense).contiguous()


@spike_matmul.register_fake
def _(packed, K, anchor, dense, weight, bias, triton):
    return weight.new_empty((packed.shape[0], weight.shape[0]))


def _smm_setup_context(ctx, inputs, output):
    packed, K, anchor, dense, weight, bias, triton = inputs
    ctx.K, ctx.triton, ctx.has_bias = K, triton, bias is not None
    need_ds = anchor is not None and ctx.needs_input_grad[2]
    ctx.anchor_dtype = anchor.dtype if anchor is not None else None
    # only the packed spikes (and the weight, for dS) are kept
    ctx.save_for_backward(packed, weight if need_ds else None)


def _smm_backward_body(ctx, gy, dw):
    """The spike_matmul backward around ``dw`` (the ``spike_matmul_dw`` op, or its body in eager mode)."""
    no_double_backward("spike_matmul")
    packed, weight = ctx.saved_tensors
    need_w, need_b = ctx.needs_input_grad[4], ctx.needs_input_grad[5]
    gy = gy.contiguous()
    with _no_autocast(gy):
        gw = dw(gy, packed, ctx.K, ctx.triton) if need_w else None
        gb = gy.sum(0) if (need_b and ctx.has_bias) else None
        gs = _ds(gy, weight, ctx.triton).to(ctx.anchor_dtype) if weight is not None else None
    return None, None, gs, None, gw, gb, None


def _smm_backward(ctx, gy):
    return _smm_backward_body(ctx, gy, torch.ops.spiketriton.spike_matmul_dw)


spike_matmul.register_autograd(_smm_backward, setup_context=_smm_setup_context)


@torch.library.custom_op(f"{_NS}::spike_matmul_dw", mutates_args=())
def spike_matmul_dw(grad_out: Tensor, packed: Tensor, K: int, triton: bool) -> Tensor:
    """``dW [N, K] = grad_out.T @ S`` with S read from the packed spikes, in grad_out's dtype."""
    return _smm_dw_body(grad_out, packed, K, triton)


def _smm_dw_body(grad_out, packed, K, triton):
    if triton:
        return KSM.spike_matmul_dw(grad_out, packed, K)
    with _no_autocast(grad_out):
        acc = acc_dtype(grad_out)
        return (grad_out.to(acc).t() @ KPT.unpack_bits(packed, K, acc)).to(grad_out.dtype).contiguous()


@spike_matmul_dw.register_fake
def _(grad_out, packed, K, triton):
    return grad_out.new_empty((grad_out.shape[1], K))


# --------------------------------------------------------------------------------------------- #
# Eager dispatch: the same bodies, without the custom-op dispatcher
# --------------------------------------------------------------------------------------------- #
#
# Under torch.compile (``torch.compiler.is_compiling()``) the callers below go through the custom ops,
# so Dynamo sees one opaque node per kernel (also for meta/fake/subclass tensors: the fake functions). In eager mode they call the ops' bodies directly: without
# a gradient as plain functions, with one through a thin torch.autograd.Function whose setup_context
# and backward are the ops' own (the backward calling the backward op's body). The math is the same
# code; only the dispatch differs. Eager never enters torch's custom-op wrappers, so it does not import
# torch._dynamo (they do, ~1.5 s on the first call in a process).
#
# Measured (bench script: torch path, 1 thread, min of 9 runs, 2-core CPU shared with other jobs, so
# +-10%; "ops" = every eager call through the custom ops, "a1cc38c" = before the custom ops existed):
#                                    a1cc38c    ops       this
#   lif no_grad [4,8,64]             173 us     260 us    200 us
#   lif fwd+grad [4,8,64]            948 us     1145 us   1094 us
#   pack_spikes [32,64]              31 us      65 us     31 us
#   spike_matmul fwd+dW [32x64x16]   358 us     514 us    412 us
#   first lif call in a process      -          1.28 s    2 ms (torch._dynamo not imported)


_PLAIN = (Tensor, torch.nn.Parameter)


def _use_op(t: Tensor) -> bool:
    """The custom op under torch.compile, and for meta, fake or subclass tensors (its fake function
    and the dispatcher handle those); the body otherwise."""
    return torch.compiler.is_compiling() or t.is_meta or type(t) not in _PLAIN


def _requires_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _NeuronFn(torch.autograd.Function):
    """Eager twin of ``neuron_fwd``'s autograd registration (same forward, setup_context, backward).

    The old-style ``forward(ctx, ...)`` that calls the setup itself: with a ``setup_context`` staticmethod,
    ``Function.apply`` binds the arguments to the signature with ``inspect`` on every call, ~12 % of a
    training step of a single-step LIF loop at [16, 200] (measured: 281 -> 246 us per step, 1 thread).
    (torch.func transforms need the new style; the custom op, which torch.compile takes, keeps it.)"""

    @staticmethod
    def forward(ctx, *args):
        out = _neuron_fwd_body(*args)
        _neuron_setup_context(ctx, args, out)
        return out

    @staticmethod
    def backward(ctx, g_spikes, g_v_last, g_a_last, *_):
        return _neuron_backward_body(ctx, g_spikes, g_v_last, g_a_last, _neuron_bwd_body)


class _SpikeMatmulFn(torch.autograd.Function):
    """Eager twin of ``spike_matmul``'s autograd registration (old-style forward: see _NeuronFn)."""

    @staticmethod
    def forward(ctx, *args):
        out = _smm_body(*args)
        _smm_setup_context(ctx, args, out)
        return out

    @staticmethod
    def backward(ctx, gy):
        return _smm_backward_body(ctx, gy, _smm_dw_body)


def call_neuron_fwd(x, v0, a0, ref0, params, spec_i, spec_f, triton, store, h_fp32, packed):
    """``torch.ops.spiketriton.neuron_fwd`` under torch.compile, its body in eager mode."""
    args = (x, v0, a0, ref0, params, spec_i, spec_f, triton, store, h_fp32, packed)
    if _use_op(x):
        return torch.ops.spiketriton.neuron_fwd(*args)
    if _requires_grad(x, v0, a0, params):
        return _NeuronFn.apply(*args)
    return _neuron_fwd_body(*args)


def call_pack(s: Tensor, triton: bool) -> Tensor:
    if _use_op(s):
        return torch.ops.spiketriton.pack(s, triton)
    return _pack_body(s, triton)


def call_unpack(p: Tensor, K: int, dtype: torch.dtype, triton: bool) -> Tensor:
    if _use_op(p):
        return torch.ops.spiketriton.unpack(p, K, dtype, triton)
    return _unpack_body(p, K, dtype, triton)


def call_spike_matmul(packed, K, anchor, dense, weight, bias, triton):
    args = (packed, K, anchor, dense, weight, bias, triton)
    if _use_op(weight):
        return torch.ops.spiketriton.spike_matmul(*args)
    if _requires_grad(anchor, weight, bias):
        return _SpikeMatmulFn.apply(*args)
    return _smm_body(*args)


# --------------------------------------------------------------------------------------------- #
# Integer inference (Triton only; the PyTorch path is exact int64/float64 torch code in quant/)
# --------------------------------------------------------------------------------------------- #


@torch.library.custom_op(f"{_NS}::spike_matmul_int", mutates_args=())
def spike_matmul_int(packed: Tensor, K: int, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Packed spikes ``[M, ceil(K/8)]`` x int8 ``weight [N, K]`` (+ int32 ``bias``) -> exact int32 ``[M, N]``."""
    return _smm_int_body(packed, K, weight, bias)


def _smm_int_body(packed, K, weight, bias):
    return KSM.spike_matmul_int(packed, K, weight, bias)


@spike_matmul_int.register_fake
def _(packed, K, weight, bias):
    return weight.new_empty((packed.shape[0], weight.shape[0]), dtype=torch.int32)


@torch.library.custom_op(f"{_NS}::neuron_int", mutates_args=())
def neuron_int(u: Tensor, v0: Optional[Tensor], a0: Optional[Tensor], ref0: Optional[Tensor],
               consts: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The integer family-B neuron. ``consts`` is an int64 tensor of the IntNeuronSpec fields in the
    order of :data:`INT_SPEC_FIELDS` (a tensor, so that scales computed on the device need no host
    round trip in the traced graph; read here, once per call). Returns ``(spikes uint8 [T, *S], v, a,
    ref)`` (int32 states)."""
    return _neuron_int_body(u, v0, a0, ref0, consts)


def _neuron_int_body(u, v0, a0, ref0, consts):
    from ..spec import IntNeuronSpec
    from ..kernels.neuron_int import neuron_int_forward

    spec = IntNeuronSpec(**dict(zip(INT_SPEC_FIELDS, (int(c) for c in consts.tolist()))))
    spikes, _, v, a, ref = neuron_int_forward(u, v0, a0, ref0, spec)
    return spikes.contiguous(), v.contiguous(), a.contiguous(), ref.contiguous()


INT_SPEC_FIELDS = ("v_th0", "v_reset", "reset_mode", "v_l", "dv", "alpha_q", "beta_q", "ref_len", "v_th_alpha_q",
                   "v_th_beta_q", "v_th_incre", "v_init")


@neuron_int.register_fake
def _(u, v0, a0, ref0, consts):
    S = tuple(u.shape[1:])
    return (u.new_empty(u.shape, dtype=torch.uint8), u.new_empty(S, dtype=torch.int32),
            u.new_empty(S, dtype=torch.int32), u.new_empty(S, dtype=torch.int32))


def call_spike_matmul_int(packed: Tensor, K: int, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``torch.ops.spiketriton.spike_matmul_int`` under torch.compile, its body in eager mode (no
    gradient: integer inference)."""
    if _use_op(packed):
        return torch.ops.spiketriton.spike_matmul_int(packed, K, weight, bias)
    return _smm_int_body(packed, K, weight, bias)


def call_neuron_int(u: Tensor, v0, a0, ref0, consts: Tensor):
    if _use_op(u):
        return torch.ops.spiketriton.neuron_int(u, v0, a0, ref0, consts)
    return _neuron_int_body(u, v0, a0, ref0, consts)
