"""Stateless multi-step neurons: ``spikes, v_last = lif(x_seq, v)``.

Dispatch (docs/spec/neurons.md, "Execution paths"): ``backend="auto"`` runs the fused Triton kernels for CUDA tensors (or CPU
tensors under TRITON_INTERPRET=1) in fp32/fp16/bf16, and the PyTorch path otherwise: the same fused
algorithm written with torch ops (``kernels/neuron_torch.py``: same saved tensors, hand-written
backward). float64 input always takes the PyTorch path, which then computes in float64.
``backend="triton"`` where Triton cannot run is an error; ``backend="torch"`` always takes the
PyTorch path. Both are checked against the autograd reference in ``reference/neuron.py``.

Both backends are reached through one ``torch.library`` custom op, ``spiketriton::neuron_fwd`` (with
its autograd and fake registrations, ``functional/ops.py``), under ``torch.compile``; eager mode calls
the same op body directly (``ops.call_neuron_fwd``), without the custom-op dispatch.

State is fp32 whatever the input dtype: ``v_last`` is fp32, spikes are in the input dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch

from .. import surrogate as sg
from ..spec import FAMILY_A, FAMILY_B, RESET_HARD, RESET_SOFT, RESET_SOFT_CONSTANT, NeuronSpec, ResetMode
from . import ops
from ._backend import use_triton
from ._checks import check_bool, finite, finite_tensor
from .images import SpikeImage
from .spikes import SpikeTensor

__all__ = ["if_neuron", "lif", "plif", "extended_lif", "ExtendedLIFState", "run_neuron"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ExtendedLIFState(NamedTuple):
    v: torch.Tensor           # fp32 membrane potential
    v_th_adpt: torch.Tensor   # fp32 adaptive part of the threshold (zeros when adaptation is off)
    ref_cnt: torch.Tensor     # int32 refractory counter (zeros when ref_len = 0)


# --------------------------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------------------------- #


def check_sequence(x_seq, op: str) -> None:
    if not isinstance(x_seq, torch.Tensor):
        raise TypeError(f"{op}: x_seq must be a torch.Tensor [T, B, *features], got {type(x_seq).__name__}")
    if not x_seq.is_floating_point():
        raise TypeError(
            f"{op}: x_seq must be a floating tensor (float32, float16, bfloat16 or float64), got {x_seq.dtype}; "
            f"convert spikes or currents with .float() first"
        )
    if x_seq.dim() < 2:
        raise ValueError(
            f"{op}: x_seq must have at least 2 dimensions [T, B, *features] (time first), got shape {tuple(x_seq.shape)}"
        )


def _check_state(state, x_seq, name: str, op: str, integer: bool = False):
    if state is None:
        return None
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(state).__name__}")
    want = tuple(x_seq.shape[1:])
    if tuple(state.shape) != want:
        raise ValueError(
            f"{op}: carried-in {name} has shape {tuple(state.shape)} but x_seq [T, *S] needs S = {want}; "
            f"if the batch or feature size changed, reset the neuron (module.reset() or spiketriton.reset(net)) "
            f"before the new input"
        )
    if state.device != x_seq.device:
        raise ValueError(f"{op}: {name} is on {state.device} but x_seq is on {x_seq.device}; move them to one device")
    if integer:
        if state.is_floating_point() or state.is_complex() or state.dtype == torch.bool:
            raise TypeError(f"{op}: {name} must be an integer tensor (int32, the counter the neuron returns), "
                            f"got {state.dtype}")
        return _counter_int32(state, name, op)
    if not state.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating tensor, got {state.dtype}")
    return state


_INT32_SAFE = (torch.int32, torch.int16, torch.int8, torch.uint8)


def _counter_int32(ref: torch.Tensor, name: str, op: str) -> torch.Tensor:
    """An integer counter as int32. A wider dtype (int64, uint32, ...) is converted only when every
    value fits int32 (checked on the values: free on the CPU, one device sync on CUDA; a traced assert
    under torch.compile): ``.to(torch.int32)`` would wrap 2^32 + 1 to 1."""
    if ref.dtype in _INT32_SAFE:
        return ref.to(torch.int32)
    lo, hi = -(2**31), 2**31 - 1
    if ref.numel() and not ref.is_meta:
        if torch.compiler.is_compiling():
            torch._assert_async(((ref >= lo) & (ref <= hi)).all(),
                                f"{op}: {name} has values outside int32; expected an int32 refractory counter")
        else:
            rmin, rmax = int(ref.min()), int(ref.max())
            if rmin < lo or rmax > hi:
                raise ValueError(f"{op}: {name} ({ref.dtype}) has values in [{rmin}, {rmax}], outside int32 "
                                 f"[{lo}, {hi}]; the refractory counter is int32 (values 0 .. ref_len)")
    return ref.to(torch.int32)


_finite = finite  # the shared check (functional/_checks.py)


def run_neuron(
    x_seq: torch.Tensor,
    v0: Optional[torch.Tensor],
    a0: Optional[torch.Tensor],
    ref0: Optional[torch.Tensor],
    params: torch.Tensor,
    spec: NeuronSpec,
    backend: str = "auto",
    op: str = "neuron",
    packed: Union[bool, str] = False,
    record: bool = False,
):
    """Run any neuron spec. Returns ``(spikes, v_last, a_last, ref_last)``: spikes in the input dtype,
    fp32 states (fp64 for float64 input) and an int32 refractory counter (family A, which has no
    threshold state or counter, gets empty tensors for the last two). Gradients flow to ``x_seq``,
    ``v0``, ``a0`` and ``params``.

    ``packed=True`` returns the spikes as a :class:`~spiketriton.functional.spikes.SpikeTensor` instead:
    the kernels write them 8 per byte only, and their gradient flows back through its anchor.
    ``packed="image"`` (for ``x_seq [T, B, C, H, W]``, the input of a
    :class:`~spiketriton.SpikeConv2d`) returns a :class:`~spiketriton.functional.images.SpikeImage`:
    the spikes packed 8 channels per byte, channels-last, with the same anchor mechanism.

    Memory order: an image sequence ``[T, B, C, H, W]`` stored channels-last (``[T, B, H, W, C]``
    contiguous, as SpikeConv2d writes its output) is run in that order, so that the kernels read it
    without a copy; with ``packed="image"`` it is always run channels-last (the packed channel bytes
    are the neuron's own bits), which copies an NCHW-contiguous input once (one read and write of
    ``x_seq``, and of its gradient in backward). States and spikes come back in the logical shapes
    (float spikes and states then channels-last in memory).

    ``record=True`` appends a ``StateRecord`` (``.h``, ``.v``; unpacks as ``(h_seq, v_seq)``), the potential before the reset (``H``, what is compared
    with the threshold) and after it (``V``, the state carried to the next step; for ExtendedLIF after
    the leak and the floor), ``[T, *S]`` fp32 without gradient: the kernels write H (as for training,
    in fp32) and V follows from it with the kernels' reset rule (``v_sequence``).
    """
    check_sequence(x_seq, op)
    if not (isinstance(packed, bool) or (isinstance(packed, str) and packed == "image")):
        raise TypeError(f"{op}: packed must be True, False or 'image', got {packed!r}")
    if packed == "image" and x_seq.dim() != 5:
        raise ValueError(f"{op}: packed='image' (spikes packed for SpikeConv2d) takes a sequence of images "
                         f"[T, B, C, H, W], got shape {tuple(x_seq.shape)}")
    if not isinstance(spec, NeuronSpec):
        raise TypeError(f"{op}: spec must be a spiketriton.spec.NeuronSpec, got {type(spec).__name__}")
    if not isinstance(params, torch.Tensor) or not params.is_floating_point() or params.numel() != spec.n_params:
        want = "[k] (k = 1/tau)" if spec.family == FAMILY_A else "[alpha, beta] (the leak)"
        got = (f"{params.dtype} tensor of shape {tuple(params.shape)}" if isinstance(params, torch.Tensor)
               else type(params).__name__)
        raise TypeError(f"{op}: params must be a floating tensor {want}, got {got}")
    v0 = _check_state(v0, x_seq, "v", op)
    a0 = _check_state(a0, x_seq, "v_th_adpt", op)
    ref0 = _check_state(ref0, x_seq, "ref_cnt", op, integer=True)
    # image sequences run channels-last when packed for a conv, or when stored that way (see above)
    image = packed == "image"
    cl = image or (packed is False and x_seq.dim() == 5 and not x_seq.is_contiguous()
                   and x_seq.movedim(2, -1).is_contiguous())
    if cl:
        C = x_seq.shape[2]
        x_seq = x_seq.movedim(2, -1)
        v0, a0, ref0 = (t.movedim(1, -1) if t is not None else None for t in (v0, a0, ref0))
    if params.device != x_seq.device:
        raise ValueError(f"{op}: parameters are on {params.device} but x_seq is on {x_seq.device}; move the module with .to()")
    triton_ok = use_triton(backend, x_seq, op=op)
    if triton_ok and x_seq.dtype not in _KERNEL_DTYPES:
        if backend == "triton":
            raise TypeError(f"{op}: the Triton kernels take float32, float16 or bfloat16 input, got {x_seq.dtype}")
        triton_ok = False  # documented: float64 takes the PyTorch path under "auto"
    state_dtype = torch.float64 if x_seq.dtype == torch.float64 else torch.float32  # (fp64 on the float64 path)
    # (dtype tests before .to(): a no-op .to() is a dispatch, ~1 us each in a per-step loop)
    params = params if params.dtype == state_dtype else params.to(state_dtype)
    v0f = v0 if (v0 is None or v0.dtype == state_dtype) else v0.to(state_dtype)
    a0f = a0 if (a0 is None or a0.dtype == state_dtype) else a0.to(state_dtype)
    ref0i = ref0  # int32 already (_check_state)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x_seq, params, v0f, a0f)
    )
    # A learnable decay (PLIF) gets dH/dk = (H - V[t-1]) / k (decay_input) or Vr - V[t-1] from the
    # saved H: the first divides H's rounding error by k, the second sums it over every neuron-step
    # with cancellation (bf16: 8% off, found by tests/test_neuron_property.py). Keep H in fp32 then
    # (fp16/bf16: +2 bytes per neuron-step).
    h_fp32 = (needs_grad and spec.family == FAMILY_A and params.requires_grad) or record
    spec_i, spec_f = ops.spec_args(spec)
    # one op body (functional/ops.py) for both backends: the custom op under torch.compile, called
    # directly in eager mode; with a gradient it saves only what backward reads, without one nothing
    # is written for backward
    spikes, v_last, a_last, ref_last, h, bits, vth, _, _ = ops.call_neuron_fwd(
        x_seq, v0f, a0f, ref0i, params, spec_i, spec_f, triton_ok, needs_grad or record, h_fp32, bool(packed))
    if cl:  # back to the logical [T, B, C, H, W] / [B, C, H, W] (views)
        spikes = spikes.movedim(-1, 2)
        v_last, a_last, ref_last = (t.movedim(-1, 1) if t.dim() == 4 else t for t in (v_last, a_last, ref_last))
        h = h.movedim(-1, 2) if (h is not None and h.dim() == 5) else h
        vth = vth.movedim(-1, 2) if (vth is not None and vth.dim() == 5) else vth
    if image:
        spikes = SpikeImage(bits, C, spikes if needs_grad else None)
    elif packed:
        spikes = SpikeTensor(bits, x_seq.shape[-1], spikes if needs_grad else None)
    if record:
        vth = vth.detach() if (spec.family != FAMILY_A and spec.adaptive) else None
        return spikes, v_last, a_last, ref_last, StateRecord(h.detach(), vth, params.detach(), spec)
    return spikes, v_last, a_last, ref_last


class StateRecord:
    """What ``run_neuron(..., record=True)`` recorded: ``h`` (``[T, *S]`` fp32, the potential compared
    with the threshold) and ``v`` (after the reset, leak and floor), computed from ``h`` by
    ``v_sequence`` when first read (a monitor that wants only H does not pay for V). Iterates as
    ``(h, v)``."""

    __slots__ = ("h", "_v", "_args")

    def __init__(self, h, vth, params, spec):
        self.h, self._v, self._args = h, None, (vth, params, spec)

    @property
    def v(self) -> torch.Tensor:
        if self._v is None:
            self._v = v_sequence(self.h, *self._args)
            self._args = None
        return self._v

    def __iter__(self):
        return iter((self.h, self.v))


def v_sequence(h_seq: torch.Tensor, vth_seq: Optional[torch.Tensor], params: torch.Tensor, spec: NeuronSpec):
    """The membrane potential after each step's reset (and, for family B, leak and floor) from the
    potential ``h_seq`` compared with the threshold, by the kernels' rule: a spike where ``H >= V_th``
    (family A) or ``H > vth[t]`` (family B, ``vth_seq`` when the threshold adapts); hard reset to
    ``V_reset``, soft ``H - V_th`` (or ``- dv``); family B then ``alpha R + beta`` floored at ``v_l``.
    Elementwise in ``h_seq``'s dtype (fp32): equal to the state a step-by-step run carries, bit for bit
    on the PyTorch path and the Triton interpreter (tests/test_step_modes.py); a compiled kernel may
    fuse ``alpha R + beta`` into one FMA (one rounding fewer) for ExtendedLIF with a leak."""
    dt = h_seq.dtype
    if spec.family == FAMILY_A:
        vth = spec.v_threshold
        fired = h_seq >= vth
    else:
        if vth_seq is None:
            vth = max(spec.v_threshold, spec.v_l)   # the threshold in force: max(v_th0 + 0, v_l)
        else:
            vth = vth_seq.to(dt)
        fired = h_seq > vth
    if spec.reset_mode == RESET_HARD:
        r = torch.where(fired, torch.full_like(h_seq, spec.v_reset), h_seq)
    elif spec.family != FAMILY_A and spec.reset_mode == RESET_SOFT_CONSTANT:
        r = torch.where(fired, h_seq - spec.dv, h_seq)
    else:
        r = torch.where(fired, h_seq - vth, h_seq)
    if spec.family == FAMILY_A:
        return r
    alpha, beta = params.to(dt).reshape(2).unbind()
    v = r * alpha + beta
    return torch.where(v >= spec.v_l, v, torch.full_like(v, spec.v_l))


# --------------------------------------------------------------------------------------------- #
# Public functional neurons
# --------------------------------------------------------------------------------------------- #


def family_a_spec(op, *, v_threshold, v_reset, surrogate, detach_reset, decay_input, v_init=None) -> NeuronSpec:
    """``v_init``: the membrane potential before the first step (default: the reset potential, 0 for a
    soft reset)."""
    v_threshold = _finite(v_threshold, "v_threshold", op)
    check_bool(detach_reset, "detach_reset", op)
    check_bool(decay_input, "decay_input", op)
    hard = v_reset is not None
    v_reset = _finite(v_reset, "v_reset", op) if hard else 0.0
    v_init = v_reset if v_init is None else _finite(v_init, "v_init", op)
    return NeuronSpec(
        family=FAMILY_A,
        surrogate=sg.check(sg.Sigmoid() if surrogate is None else surrogate),
        v_threshold=v_threshold,
        v_reset=v_reset,
        reset_mode=RESET_HARD if hard else RESET_SOFT,
        detach_reset=bool(detach_reset),
        decay_input=bool(decay_input),
        v_init=v_init,
    )


def check_tau(tau, op: str, name: str = "tau") -> float:
    tau = _finite(tau, name, op)
    if tau <= 1.0:
        raise ValueError(f"{op}: {name} must be > 1 (the decay 1/tau lies in (0, 1)), got {tau}")
    return tau


def if_neuron(
    x_seq: torch.Tensor,
    v: Optional[torch.Tensor] = None,
    *,
    v_threshold: float = 1.0,
    v_reset: Optional[float] = 0.0,
    surrogate: Optional[sg.Surrogate] = None,
    detach_reset: bool = False,
    backend: str = "auto",
):
    """Integrate-and-fire: ``H[t] = V[t-1] + X[t]``. Returns ``(spikes, v_last)``."""
    spec = family_a_spec("if_neuron", v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                         detach_reset=detach_reset, decay_input=False)
    params = torch.zeros(1, device=_device(x_seq))
    s, v_last, _, _ = run_neuron(x_seq, v, None, None, params, spec, backend, "if_neuron")
    return s, v_last


def lif(
    x_seq: torch.Tensor,
    v: Optional[torch.Tensor] = None,
    *,
    tau: float = 2.0,
    decay_input: bool = True,
    v_threshold: float = 1.0,
    v_reset: Optional[float] = 0.0,
    surrogate: Optional[sg.Surrogate] = None,
    detach_reset: bool = False,
    backend: str = "auto",
):
    """Leaky integrate-and-fire (SpikingJelly semantics). Returns ``(spikes, v_last)``."""
    tau = check_tau(tau, "lif")
    spec = family_a_spec("lif", v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                         detach_reset=detach_reset, decay_input=decay_input)
    params = torch.full((1,), 1.0 / tau, device=_device(x_seq))
    s, v_last, _, _ = run_neuron(x_seq, v, None, None, params, spec, backend, "lif")
    return s, v_last


def plif(
    x_seq: torch.Tensor,
    w: torch.Tensor,
    v: Optional[torch.Tensor] = None,
    *,
    decay_input: bool = True,
    v_threshold: float = 1.0,
    v_reset: Optional[float] = 0.0,
    surrogate: Optional[sg.Surrogate] = None,
    detach_reset: bool = False,
    backend: str = "auto",
):
    """Parametric LIF: as :func:`lif` with ``1/tau = sigmoid(w)``; ``w`` (a one-element tensor) gets a gradient."""
    if not isinstance(w, torch.Tensor) or w.numel() != 1 or not w.is_floating_point():
        raise TypeError(f"plif: w must be a one-element floating tensor (the learnable logit of 1/tau), got {w!r}")
    finite_tensor(w, "w", "plif", _device(x_seq))  # reads w: one device sync on CUDA
    spec = family_a_spec("plif", v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                         detach_reset=detach_reset, decay_input=decay_input)
    params = torch.sigmoid(w.reshape(1).float())
    s, v_last, _, _ = run_neuron(x_seq, v, None, None, params, spec, backend, "plif")
    return s, v_last


def extended_lif(
    x_seq: torch.Tensor,
    state: Optional[ExtendedLIFState] = None,
    *,
    v_th0: float,
    v_leaky_alpha: Union[float, torch.Tensor] = 1.0,
    v_leaky_beta: Union[float, torch.Tensor] = 0.0,
    v_reset: float = 0.0,
    v_init: Optional[float] = None,
    v_l: Optional[float] = None,
    dv: float = 0.0,
    ref_len: int = 0,
    reset_mode="hard",
    v_th_alpha: float = 1.0,
    v_th_beta: float = 0.0,
    v_th_incre: float = 0.0,
    surrogate: Optional[sg.Surrogate] = None,
    detach_reset: bool = False,
    backend: str = "auto",
):
    """The HNN Extended LIF (family B of docs/spec/neurons.md). Returns ``(spikes, ExtendedLIFState)``.

    ``v_leaky_alpha``/``v_leaky_beta`` may be tensors that require grad (learnable leak).
    ``state`` is an :class:`ExtendedLIFState` (or None for the initial state).
    """
    spec = extended_lif_spec(
        "extended_lif", v_th0=v_th0, v_reset=v_reset, v_init=v_init, v_l=v_l, dv=dv, ref_len=ref_len,
        reset_mode=reset_mode, v_th_alpha=v_th_alpha, v_th_beta=v_th_beta, v_th_incre=v_th_incre,
        surrogate=surrogate, detach_reset=detach_reset,
    )
    params = leak_params(v_leaky_alpha, v_leaky_beta, _device(x_seq), "extended_lif")
    if state is None:
        v0 = a0 = r0 = None
    else:
        if not isinstance(state, tuple) or len(state) != 3:
            raise TypeError("extended_lif: state must be an ExtendedLIFState(v, v_th_adpt, ref_cnt) or None")
        v0, a0, r0 = state
    s, v_last, a_last, ref_last = run_neuron(x_seq, v0, a0, r0, params, spec, backend, "extended_lif")
    return s, ExtendedLIFState(v_last, a_last, ref_last)


def extended_lif_spec(op, *, v_th0, v_reset, v_init, v_l, dv, ref_len, reset_mode, v_th_alpha, v_th_beta,
                      v_th_incre, surrogate, detach_reset) -> NeuronSpec:
    v_reset = _finite(v_reset, "v_reset", op)
    check_bool(detach_reset, "detach_reset", op)
    try:
        reset_mode = ResetMode.parse(reset_mode)
    except ValueError as e:
        raise ValueError(f"{op}: {e}") from None
    if isinstance(ref_len, bool) or not isinstance(ref_len, int) or not 0 <= ref_len < 2**31:
        raise ValueError(f"{op}: ref_len must be an integer in [0, 2^31) (refractory steps, an int32 counter), "
                         f"got {ref_len!r}")
    return NeuronSpec(
        family=FAMILY_B,
        surrogate=sg.check(sg.Rect() if surrogate is None else surrogate),
        v_threshold=_finite(v_th0, "v_th0", op),
        v_reset=v_reset,
        reset_mode=reset_mode,
        detach_reset=bool(detach_reset),
        v_init=v_reset if v_init is None else _finite(v_init, "v_init", op),
        v_l=-math.inf if v_l is None else _finite(v_l, "v_l", op),
        dv=_finite(dv, "dv", op),
        ref_len=ref_len,
        v_th_alpha=_finite(v_th_alpha, "v_th_alpha", op),
        v_th_beta=_finite(v_th_beta, "v_th_beta", op),
        v_th_incre=_finite(v_th_incre, "v_th_incre", op),
    )


def leak_params(alpha, beta, device, op) -> torch.Tensor:
    """``[alpha, beta]`` as one fp32 tensor, differentiable wrt whichever is a tensor. A tensor must be
    a finite floating scalar on ``device`` (or on the CPU: then moved); its values are read (one
    device sync for a CUDA tensor)."""
    parts = []
    for name, p in (("v_leaky_alpha", alpha), ("v_leaky_beta", beta)):
        if isinstance(p, torch.Tensor):
            if p.numel() != 1:
                raise ValueError(f"{op}: {name} must be a scalar (one-element tensor), got shape {tuple(p.shape)}")
            finite_tensor(p, name, op, device)
            parts.append(p.reshape(1).float().to(device))
        else:
            parts.append(torch.full((1,), _finite(p, name, op), device=device))
    return torch.cat(parts)


def _device(x) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
