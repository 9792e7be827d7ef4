"""Quantizable layers and neurons: QLinear, QConv2d, QLIF, with three modes.

- ``float``: ordinary float layers; encoding layers (the ones fed by non-spike input) record the
  largest ``|input|`` while collecting calibration statistics.
- ``quantized``: integer inference. A layer turns its input into integers (spikes are 0/1; an
  encoding layer rounds ``x * input_scale`` to int8), multiplies by int8 weights ``round(W * s_w)``
  and adds the int32 bias ``round(b * S)``, ``S = s_w * input_scale``: an exact integer current in
  units of ``1/S``. The following QLIF runs the integer family-B neuron (int28 state, floor leak)
  with its constants rounded in the same units (``round(v_th0 * S)``, ..., ``alpha_q = round(256 *
  alpha)``).
- ``aware``: quantization-aware training. The same integer arithmetic, carried in float64 so that
  it is exact, with straight-through gradients for every rounding and the surrogate gradient for
  the spikes (evaluated at ``(v' - vth) / S``, i.e. in real units). Its forward equals ``quantized``
  bit for bit, by construction.

A layer's output that feeds no QLIF (e.g. a readout) is returned in real units, ``current / S``.
Layers and neurons are linked by :class:`~spiketriton.quant.model.QModel`.

Input checks (every mode, Python-level, no device sync): a tensor (or SpikeTensor) on the layer's
device, real (bool, integer or floating; complex is a TypeError), ``[..., in_features]`` for a
QLinear (``[T, B, ..., in_features]`` in the integer modes when it feeds a QLIF), ``[..., C_in, H, W]``
for a QConv2d; the message names the layer (``QLinear 'net.0'`` once linked). An encoding layer in the
integer modes refuses NaN (ValueError: NaN has no int8 value, as in the chip simulator): one
reduction and one host sync per forward; ``+-inf`` saturate to ``+-127``, as on the chip. A layer fed
by spikes counts any nonzero value as a spike on both paths (the Triton path packs its input into
bits). Empty inputs (B = 0 or T = 0) give empty outputs on both paths.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import surrogate as sg
from ..functional.neuron import extended_lif_spec, run_neuron
from ..functional.images import SpikeImage, conv_padding
from ..functional.spikes import SpikeTensor
from ..neuron import BaseNeuron
from ..functional._backend import use_triton
from ..functional import ops as OPS
from ..functional.ops import INT_SPEC_FIELDS
from ..reference.neuron_int import family_b_int_steps, leak
from ..spec import INT28_MAX, INT28_MIN
from ..functional._checks import check_backend, check_bool, finite
from .quantizer import check_bits, floor_ste, qmax, require, round_ste, weight_scale

__all__ = ["QuantConfig", "QLinear", "QConv2d", "QLIF", "FLOAT", "AWARE", "QUANTIZED"]

FLOAT, AWARE, QUANTIZED = "float", "aware", "quantized"
_SCALE_BUFFERS = ("input_amax", "input_scale", "w_scale")  # fp32 whatever the module's dtype
INPUT_BITS = 8  # encoding-layer inputs: calibrated symmetric int8


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Weight quantization: ``bits`` in 2..8, per tensor or per output channel, float scale or a
    power of two (optionally with an even exponent)."""

    bits: int = 8
    per_channel: bool = False
    pow2: bool = False
    even_shift: bool = False

    def __post_init__(self):
        """Strict types: ``bits`` a Python int (not a bool), the flags Python bools: ``per_channel='no'``
        (a truthy string), ``1`` or a numpy bool is a TypeError."""
        check_bits(self.bits)
        for name in ("per_channel", "pow2", "even_shift"):
            check_bool(getattr(self, name), name, "QuantConfig")
        if self.even_shift and not self.pow2:
            raise ValueError("QuantConfig: even_shift constrains a power-of-two scale; set pow2=True as well")


class _QLayer:
    """Mixin for QLinear / QConv2d (the state and flow shared by both)."""

    def _qinit(self, config: Optional[QuantConfig], backend: str = "auto"):
        if config is not None and not isinstance(config, QuantConfig):
            raise TypeError(f"{type(self).__name__}: config must be a spiketriton.quant.QuantConfig or None, got "
                            f"{type(config).__name__}")
        self.qconfig = config or QuantConfig()
        self.backend = check_backend(backend, type(self).__name__)
        self.qname = None           # the module's name in its QModel (set by QModel's linking), for messages
        self._calib_batches = 0     # non-empty calibration batches seen since collect_q_params()
        self.mode = FLOAT
        self.is_encoder = False     # fed by non-spike input (set by QModel's linking)
        self.feeds_neuron = False   # output goes to a QLIF (set by QModel's linking)
        self.collecting = False
        self.register_buffer("input_amax", torch.zeros(()))   # calibration: largest |input| seen
        self.register_buffer("input_scale", torch.zeros(()))  # encoder: int8 input scale (0: not set)
        self.register_buffer("w_scale", torch.zeros(0))       # s_w (0-dim or [C_out]) once calculated
        self.register_buffer("weight_int", torch.zeros(0, dtype=torch.int8))
        self.register_buffer("bias_int", torch.zeros(0, dtype=torch.int32))

    # -- module plumbing -------------------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        """A dtype cast (``.to(torch.bfloat16)``, ``.half()``, ...) leaves the fp32 scales alone: a
        rounded scale would change the integer constants derived from it. Devices move as usual."""
        keep = {k: self._buffers[k] for k in _SCALE_BUFFERS if self._buffers.get(k) is not None}
        super()._apply(fn, recurse)
        for k, old in keep.items():
            new = self._buffers[k]
            if new.dtype != old.dtype:
                self._buffers[k] = old.to(new.device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """The quantization tensors are empty until calculate_q_params()/quantize() size them: take the
        checkpoint's shapes (checked against the layer), so that a state_dict loads into a fresh model."""
        allowed = {
            "w_scale": {(0,), (), (self.weight.shape[0],)},
            "weight_int": {(0,), tuple(self.weight.shape)},
            "bias_int": {(0,)} | ({tuple(self.bias.shape)} if self.bias is not None else set()),
        }
        for name, shapes in allowed.items():
            t = state_dict.get(prefix + name)
            own = self._buffers.get(name)
            if not isinstance(t, torch.Tensor) or own is None or t.shape == own.shape:
                continue
            if tuple(t.shape) not in shapes:
                error_msgs.append(f"{prefix}{name} has shape {tuple(t.shape)} in the checkpoint; this "
                                  f"{type(self).__name__} takes one of {sorted(shapes)}")
                continue
            self._buffers[name] = torch.empty(t.shape, dtype=own.dtype, device=own.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # -- scales ----------------------------------------------------------------------------------

    def current_scale(self) -> torch.Tensor:
        """``S``: integer current = real current * S (0-dim, or [C_out] per channel)."""
        s_w = self.w_scale if self.mode == QUANTIZED else self.live_weight_scale()
        if s_w.numel() == 0:
            raise RuntimeError(f"{type(self).__name__}: no weight scale yet; call calculate_q_params() first")
        return s_w * self.input_scale if self.is_encoder else s_w

    def who(self) -> str:
        """``QLinear 'net.0'`` once linked in a QModel, else the class name (for error messages)."""
        return f"{type(self).__name__} {self.qname!r}" if self.qname else type(self).__name__

    def start_collecting(self):
        self.collecting = self.is_encoder
        self.input_amax.zero_()
        self._calib_batches = 0

    def calculate(self):
        """Weight scale and, for an encoding layer, the int8 input scale ``127 / input_amax``. Refused,
        with the reason: no calibration batch, calibration data that held NaN or +-inf (NaN and inf stick
        in the running maximum, so nothing is lost by checking here rather than at every batch; the
        calibration forwards stay free of host syncs), all-zero calibration data, and scales that
        overflow or underflow float32."""
        if self.is_encoder:
            amax = float(self.input_amax)
            if self._calib_batches == 0 and amax == 0:
                raise RuntimeError(
                    f"{self.who()} (an encoding layer, fed by non-spike input) saw no calibration data: "
                    f"call collect_q_params(), run calibration batches through the model, then calculate_q_params()"
                )
            if not math.isfinite(amax):
                raise ValueError(
                    f"{self.who()} (an encoding layer): the calibration data held "
                    f"{'NaN' if math.isnan(amax) else 'an infinite value'} (largest |input| seen: {amax}); an int8 "
                    f"input scale needs finite calibration data. Call collect_q_params() again and calibrate "
                    f"with finite inputs")
            if amax == 0:
                raise ValueError(
                    f"{self.who()} (an encoding layer): its {self._calib_batches} calibration batch(es) held only "
                    f"zeros, so no int8 input scale can be derived; calibrate with representative (non-zero) inputs")
            input_scale = (qmax(INPUT_BITS) / self.input_amax).float()
            _check_scale(input_scale, f"{self.who()}: the int8 input scale 127 / {amax:.4g} (largest |input| "
                                      f"seen in calibration)")
            self.input_scale = input_scale
        self.w_scale = self.live_weight_scale()
        self.check_scales(self.w_scale)

    def live_weight_scale(self) -> torch.Tensor:
        c = self.qconfig
        try:
            return weight_scale(self.weight, c.bits, c.per_channel, c.pow2, c.even_shift)
        except ValueError as e:
            raise ValueError(f"{self.who()}: {e}") from None

    def check_scales(self, s_w):
        """The current scale ``S`` (``s_w``, times the input scale for an encoding layer) must be a
        normal, finite float32: a zero or subnormal S silences the layer, an infinite one breaks the
        readout. One host sync (at calculate_q_params() / quantize() only)."""
        S = s_w * self.input_scale if self.is_encoder else s_w
        _check_scale(S, f"{self.who()}: the current scale S = w_scale"
                        f"{' x input_scale' if self.is_encoder else ''}")
        if self.bias is not None:
            b = self.bias.detach()
            require(torch.isfinite(b), ValueError, f"{self.who()}: the bias holds NaN or inf")

    def integers(self, s_w: torch.Tensor, ste: bool):
        """``(w_int, b_int)`` as integer-valued float64 tensors, computed once for both modes: the
        products in float64 (float32 products misround ~1e-6 of the weights), weights clamped to
        ``±qmax``, the bias rounded in units of ``1/S``; a bias beyond int28 is an error."""
        w = self.weight if ste else self.weight.detach()
        b = None if self.bias is None else (self.bias if ste else self.bias.detach())
        return integer_params(w, b, s_w, self.input_scale if self.is_encoder else None, self.qconfig.bits, ste,
                              self.who())

    def freeze_integers(self):
        """Store the int8 weights and int32 bias of the current float parameters (quantized mode)."""
        w_int, b_int = self.integers(self.w_scale, ste=False)
        self.weight_int = w_int.to(torch.int8)
        if b_int is not None:
            self.bias_int = b_int.to(torch.int32)

    # -- forward ---------------------------------------------------------------------------------
    def _qforward(self, x):
        if isinstance(x, (SpikeTensor, SpikeImage)):  # packed spikes: their 0/1 values (with the gradient)
            x = x.to_dense(self.weight.dtype)
        self._check_input(x)
        if self.mode == FLOAT:
            if self.collecting and self.is_encoder and x.numel():
                # NaN and inf stick in the running maximum: calculate() refuses them (no host sync here)
                self.input_amax = torch.maximum(self.input_amax, x.detach().abs().max().float())
                self._calib_batches += 1
            return self._op(x, self.weight, self.bias)
        if self.is_encoder and x.is_floating_point():
            # the only value check of the integer forward: NaN has no integer value (the chip simulator
            # refuses it too); +-inf saturate to +-127 as on the chip. One reduction and one host sync.
            require(~torch.isnan(x.detach()), ValueError,
                    f"{self.who()} (an encoding layer): the input holds NaN, which has no int8 value; +-inf "
                    f"saturate to +-127, NaN is refused (as by the chip simulator)")
        S = self.current_scale()
        if self.mode == AWARE:
            w_int, b_int = self.integers(self.live_weight_scale(), ste=True)
            x_int = self._input_int(x, aware=True)
            u = self._op(x_int, w_int, b_int).clamp(INT28_MIN, INT28_MAX)  # exact integers in float64
        elif isinstance(self, QLinear) and not self.is_encoder and use_triton(self.backend, x, op="QLinear") \
                and int32_accumulates(self.in_features, self.qconfig.bits):
            # spikes x int8 weights on the integer spike-matmul kernel (exact int32)
            K = self.in_features
            packed = OPS.call_pack(x.reshape(-1, K), True)
            b = self.bias_int if self.bias is not None else None
            u = OPS.call_spike_matmul_int(packed, K, self.weight_int.contiguous(), b)
            u = u.reshape(tuple(x.shape[:-1]) + (self.out_features,))  # -1 is ambiguous for an empty batch
            u = u.clamp(INT28_MIN, INT28_MAX)
        else:
            x_int = self._input_int(x, aware=False)
            b = self.bias_int.double() if self.bias is not None else None
            u = self._op(x_int, self.weight_int.double(), b)  # exact: float64 holds these sums exactly
            u = u.clamp(INT28_MIN, INT28_MAX).to(torch.int32)
        if self.feeds_neuron:
            return u
        return (u.double() / self._bcast(S).double()).to(self.weight.dtype)  # a readout: real units

    def _check_input(self, x):
        """Python-level checks of the input (no device sync): a real tensor of the layer's shape."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.who()}: expected a torch.Tensor (or a SpikeTensor / SpikeImage), got "
                            f"{type(x).__name__}")
        if x.is_complex():
            raise TypeError(f"{self.who()}: the input must hold real numbers (a floating, integer or bool dtype), "
                            f"got {x.dtype}")
        if x.device != self.weight.device:
            raise ValueError(f"{self.who()}: the input is on {x.device}, the layer on {self.weight.device}; move "
                             f"one of them (model.to(device) or x.to(device))")
        self._check_shape(x)

    def _input_int(self, x, aware):
        if not self.is_encoder:
            # spikes: the integers 0 and 1. In integer inference any nonzero value is a spike, as the
            # Triton path packs it (one semantics on both paths); QAT keeps the values for the gradient.
            return x.double() if aware else (x != 0).double()
        q = qmax(INPUT_BITS)
        y = x.double() * self.input_scale.double()
        return _clamp_ste(round_ste(y), q) if aware else torch.round(y).clamp(-q, q)


def int32_accumulates(K: int, bits: int) -> bool:
    """Whether the integer spike-matmul kernel's int32 sum of ``K`` spikes times ``bits``-bit weights
    plus an int28 bias cannot overflow (K < ~15.8 M for int8): beyond, the layer takes the float64 path,
    which is exact, so that both paths (and the chip) saturate the same sum."""
    return K * qmax(bits) + INT28_MAX <= 2**31 - 1


def _check_scale(S: torch.Tensor, what: str) -> None:
    """Every value of the float32 scale ``S`` finite and normal (at least float32's smallest normal,
    ~1.2e-38): one host sync."""
    tiny = torch.finfo(torch.float32).tiny
    require(torch.isfinite(S) & (S >= tiny), ValueError,
            lambda: f"{what} is {S.detach().cpu().tolist()}, outside the normal float32 range [{tiny:.3g}, "
                    f"{torch.finfo(torch.float32).max:.3g}] (the calibration range or the weights are too large or "
                    f"too small to quantize)")


def integer_params(w, b, s_w, input_scale, bits: int, ste: bool, who: str):
    """The integers of a layer (see :meth:`_QLayer.integers`) from its float weight ``w``, bias ``b``
    (or None), weight scale ``s_w`` and, for an encoding layer, ``input_scale`` (None otherwise): the
    one definition shared by quantize(), aware() and load_quantized_model's cross-check."""
    q = qmax(bits)
    rnd = round_ste if ste else torch.round
    w_int = _clamp_ste(rnd(w.double() * _channel(s_w, w).double()), q)
    b_int = None
    if b is not None:
        S = s_w * input_scale if input_scale is not None else s_w
        b_int = rnd(b.double() * S.double())
        advice = "use fewer weight bits, a smaller encoder input range, or a smaller bias"
        require(b_int.detach().abs() <= INT28_MAX, ValueError,  # NaN fails it too: one check, one sync
                lambda: f"{who}: the bias holds NaN or inf" if not bool(torch.isfinite(b).all()) else
                        f"{who}: a bias is {float(b.detach().abs().max()):.3g}, which in the layer's "
                        f"integer units (x {float(S.max()):.3g}) exceeds int28; {advice}",
                static=f"{who}: a bias is NaN or exceeds int28 in the layer's integer units; {advice}")
    return w_int, b_int


def _own_rng(device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _clamp_ste(x, q):
    """clamp to [-q, q], gradient zero outside (as fake_quant)."""
    return x.clamp(-q, q)


def _channel(scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return scale.reshape((-1,) + (1,) * (w.dim() - 1)) if scale.dim() == 1 else scale


class QLinear(_QLayer, nn.Linear):
    """nn.Linear with quantization modes (see the module docstring). Same parameters and init."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None,
                 config: Optional[QuantConfig] = None, backend: str = "auto"):
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._qinit(config, backend)

    @classmethod
    def from_float(cls, m: nn.Linear, config: Optional[QuantConfig] = None) -> "QLinear":
        if not isinstance(m, nn.Linear):
            raise TypeError(f"QLinear.from_float: expected an nn.Linear, got {type(m).__name__}")
        with _own_rng(m.weight.device):  # the initialisation is overwritten: leave the caller's RNG alone
            q = cls(m.in_features, m.out_features, m.bias is not None, device=m.weight.device, dtype=m.weight.dtype,
                    config=config)
        q.load_state_dict(m.state_dict(), strict=False)
        return q

    def _op(self, x, w, b):
        return F.linear(x, w.to(x.dtype), b.to(x.dtype) if b is not None else None)

    def _check_shape(self, x):
        K = self.in_features
        # integer modes: the neuron fed by this layer reads [T, B, *features] (time first)
        need = 2 if (self.mode != FLOAT and self.feeds_neuron) else 1
        if x.dim() < need or x.shape[-1] != K:
            lead = "T, B, ..." if need == 2 else "..."
            raise ValueError(f"{self.who()}: expected input [{lead}, {K}] (in_features = {K} last"
                             f"{', time first' if need == 2 else ''}), got shape {tuple(x.shape)}")

    def _bcast(self, S):
        return S  # [C_out] broadcasts along the last dimension

    def forward(self, x):
        return self._qforward(x)


class QConv2d(_QLayer, nn.Conv2d):
    """nn.Conv2d with quantization modes. Takes ``[N, C, H, W]`` or a sequence ``[T, B, C, H, W]``
    (time folded into the batch), as a tensor or as packed spikes (a
    :class:`~spiketriton.functional.images.SpikeImage`, read as its 0/1 values)."""

    def __init__(self, *args, config: Optional[QuantConfig] = None, backend: str = "auto", **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._qinit(config, backend)

    @classmethod
    def from_float(cls, m: nn.Conv2d, config: Optional[QuantConfig] = None) -> "QConv2d":
        """The QConv2d of an ``nn.Conv2d`` (a :class:`~spiketriton.SpikeConv2d` too): its weight, bias and
        geometry. A padding given as ``'valid'`` or ``'same'`` becomes the numbers it stands for where they
        are the same on both sides (the chip format takes numbers); an asymmetric ``'same'`` (an even
        kernel) stays a string."""
        if not isinstance(m, nn.Conv2d):
            raise TypeError(f"QConv2d.from_float: expected an nn.Conv2d, got {type(m).__name__}")
        padding = m.padding
        if isinstance(padding, str):
            top, bottom, left, right = conv_padding(padding, m.kernel_size, m.stride, m.dilation, "QConv2d.from_float")
            if top == bottom and left == right:
                padding = (top, left)
        with _own_rng(m.weight.device):
            q = cls(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=padding,
                    dilation=m.dilation, groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode,
                    device=m.weight.device, dtype=m.weight.dtype, config=config)
        q.load_state_dict(m.state_dict(), strict=False)
        return q

    def _op(self, x, w, b):
        lead = x.shape[:-3]
        y = self._conv_forward(x.reshape((-1,) + tuple(x.shape[-3:])), w.to(x.dtype),
                               b.to(x.dtype) if b is not None else None)
        return y.reshape(tuple(lead) + tuple(y.shape[1:]))

    def _bcast(self, S):
        return S.reshape(-1, 1, 1) if S.dim() == 1 else S

    def _check_shape(self, x):
        C = self.in_channels
        if x.dim() < 3 or x.shape[-3] != C:
            raise ValueError(f"{self.who()}: expected input [T, B, {C}, H, W] or [N, {C}, H, W] (in_channels = {C}), "
                             f"got shape {tuple(x.shape)}")

    def forward(self, x):
        return self._qforward(x)


class QLIF(BaseNeuron):
    """The quantizable neuron: the HNN Extended LIF (family B) with the parameters of
    :class:`~spiketriton.ExtendedLIF`. In float mode it is an ExtendedLIF (fused kernels); in aware
    and quantized modes it consumes the integer current of the layer feeding it (``self.feeder``)."""

    def __init__(self, v_th0: float = 1.0, v_leaky_alpha: float = 1.0, v_leaky_beta: float = 0.0,
                 v_reset: float = 0.0, v_init: Optional[float] = None, v_l: Optional[float] = None,
                 dv: float = 0.0, ref_len: int = 0, reset_mode="hard", v_th_alpha: float = 1.0,
                 v_th_beta: float = 0.0, v_th_incre: float = 0.0, surrogate: Optional[sg.Surrogate] = None,
                 detach_reset: bool = False, backend: str = "auto"):
        super().__init__(check_backend(backend, "QLIF"))
        # the leak: real numbers (a string such as "0.5" passed float(), a bool was 1.0); the other
        # constants, detach_reset, ref_len and reset_mode are checked by extended_lif_spec
        v_leaky_alpha = finite(v_leaky_alpha, "v_leaky_alpha", "QLIF")
        v_leaky_beta = finite(v_leaky_beta, "v_leaky_beta", "QLIF")
        self.spec = extended_lif_spec(
            "QLIF", v_th0=v_th0, v_reset=v_reset, v_init=v_init, v_l=v_l, dv=dv, ref_len=ref_len,
            reset_mode=reset_mode, v_th_alpha=v_th_alpha, v_th_beta=v_th_beta, v_th_incre=v_th_incre,
            surrogate=surrogate, detach_reset=detach_reset,
        )
        if not 0.0 <= float(v_leaky_alpha) <= 1.0 or not 0.0 <= float(v_th_alpha) <= 1.0:
            raise ValueError("QLIF: v_leaky_alpha and v_th_alpha must lie in [0, 1] (they become q/256 on the chip)")
        self.v_leaky_alpha = float(v_leaky_alpha)
        self.v_leaky_beta = float(v_leaky_beta)
        self.mode = FLOAT
        self.qname = None   # the module's name in its QModel (set by QModel's linking), for messages
        self.feeder = None  # the QLinear/QConv2d whose current this neuron integrates (set by QModel)
        self.reset()

    @property
    def feeder(self) -> Optional[nn.Module]:
        return self.__dict__["_feeder"]

    def __setattr__(self, name, value):
        if name == "feeder":
            # a plain reference, not a submodule: the layer's parameters belong to the model once
            self.__dict__["_feeder"] = value
            return
        super().__setattr__(name, value)

    _state_names = ("v", "v_th_adpt", "ref_cnt")

    def reset(self):
        self.v = self.v_th_adpt = self.ref_cnt = None

    # -- the integer constants in the feeder's current units ------------------------------------
    def int_constants(self, S: torch.Tensor, shape) -> dict:
        """Constants for the integer recurrence, per channel where ``S`` is: ``round(K * S)`` clamped
        to int28, and the leaks as ``q = round(256 * alpha)``."""
        s = self.spec
        S = _broadcast_scale(S.double(), self.feeder, shape)

        values = {"v_th0": s.v_threshold, "v_reset": s.v_reset, "v_init": s.v_init, "v_l": s.v_l, "dv": s.dv,
                  "v_leaky_beta": self.v_leaky_beta, "v_th_beta": s.v_th_beta, "v_th_incre": s.v_th_incre}
        rounded = {name: torch.round(torch.as_tensor(value, dtype=torch.float64) * S)
                   for name, value in values.items() if value != -math.inf}
        advice = ("the quantized neuron could never reach it. Use fewer weight bits or larger weights in the feeding "
                  "layer")

        def within(name):
            return rounded[name].abs() <= INT28_MAX

        def message(name):
            return (f"QLIF: {name} = {values[name]} is {float(rounded[name].abs().max()):.3g} in the integer units of "
                    f"the layer feeding it (x {float(S.max()):.3g}), beyond int28: {advice}")

        if torch.compiler.is_compiling():  # traced asserts: no sync, one per constant (it names it)
            for name in rounded:
                require(within(name), ValueError, "",
                        static=f"QLIF: {name} = {values[name]} is beyond int28 in the integer units of the layer "
                               f"feeding it: {advice}")
        else:  # eager: all constants in one check, one host sync per forward
            require(torch.stack([within(name).all() for name in rounded]), ValueError,
                    lambda: message(next(name for name in rounded if not bool(within(name).all()))))

        def k(name):
            if name not in rounded:  # v_l = -inf: no floor
                return torch.full_like(S, INT28_MIN).to(torch.int64)
            return rounded[name].to(torch.int64)

        return dict(
            v_th0=k("v_th0"), v_reset=k("v_reset"), v_init=k("v_init"), v_l=k("v_l"), dv=k("dv"),
            beta_q=k("v_leaky_beta"), v_th_beta_q=k("v_th_beta"), v_th_incre=k("v_th_incre"),
            alpha_q=int(round(256 * self.v_leaky_alpha)), v_th_alpha_q=int(round(256 * s.v_th_alpha)),
            ref_len=s.ref_len,
        )

    def forward(self, x):
        if self.mode == FLOAT:
            params = torch.tensor([self.v_leaky_alpha, self.v_leaky_beta], dtype=torch.float32).to(x.device)
            spikes, self.v, self.v_th_adpt, self.ref_cnt = run_neuron(
                x, self.v, self.v_th_adpt, self.ref_cnt, params, self.spec, self.backend, "QLIF")
            return spikes
        if not isinstance(x, torch.Tensor) or x.is_complex() or x.dim() < 2:
            got = (f"shape {tuple(x.shape)}" if x.dim() < 2 else f"dtype {x.dtype}") if isinstance(x, torch.Tensor) \
                else type(x).__name__
            name = f"QLIF {self.qname!r}" if self.qname else "QLIF"
            raise ValueError(f"{name}: the integer neuron takes the current [T, B, *features] (time first) of the "
                             f"layer feeding it, got {got}")
        if self.feeder is None:
            raise RuntimeError("QLIF: not linked to the layer feeding it; build the model as a QModel "
                               "(or via spiketriton.quant.prepare) and call collect_q_params()")
        for name in ("v", "v_th_adpt", "ref_cnt"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != tuple(x.shape[1:]):
                raise ValueError(f"QLIF: carried-in {name} has shape {tuple(t.shape)} but the input [T, *S] needs "
                                 f"S = {tuple(x.shape[1:])}; reset the model (qmodel.reset()) before a new batch size")
        S = self.feeder.current_scale()
        c = self.int_constants(S, x.shape[1:])
        s = self.spec
        shape = x.shape[1:]
        aware = self.mode == AWARE
        dt = torch.float64 if aware else torch.int64
        v = self.v if self.v is not None else torch.broadcast_to(c["v_init"], shape).to(dt)
        a = self.v_th_adpt if (self.v_th_adpt is not None and s.adaptive) else torch.zeros(shape, dtype=dt, device=x.device)
        ref = self.ref_cnt if self.ref_cnt is not None else torch.zeros(shape, dtype=torch.int64, device=x.device)
        if aware:
            S_b = _broadcast_scale(S.double(), self.feeder, shape)
            surrogate = s.surrogate
            spike_fn = lambda h, vth: surrogate((h - vth) / S_b, strict=True)  # noqa: E731
            leak_fn = lambda y, q: floor_ste(y * (q / 256.0))  # noqa: E731  exact in float64 (|y| < 2^28)
            u = x.double()
        else:
            if S.dim() == 0 and use_triton(self.backend, x, op="QLIF"):
                return self._integer_kernel(x, c)
            spike_fn = lambda h, vth: (h > vth).to(h.dtype)  # noqa: E731
            leak_fn = leak
            u = x.to(torch.int64)
        spikes, self.v, a, self.ref_cnt = family_b_int_steps(
            u, v.to(device=x.device), a, ref.to(device=x.device), c, reset_mode=s.reset_mode,
            adaptive=s.adaptive, refractory=s.refractory, spike_fn=spike_fn, leak_fn=leak_fn,
            detach_reset=s.detach_reset,
        )
        self.v_th_adpt = a
        return spikes.float()

    def _integer_kernel(self, x, c):
        """Per-tensor constants: the Triton integer neuron (kernels/neuron_int.py), through its custom op
        (the constants travel as one int64 tensor: no host round trip in a compiled graph)."""
        s = self.spec
        c = dict(c, reset_mode=s.reset_mode, ref_len=s.ref_len)
        consts = torch.stack([torch.as_tensor(c[k], dtype=torch.int64, device=x.device).reshape(())
                              for k in INT_SPEC_FIELDS])
        spikes, v, a, ref = OPS.call_neuron_int(x.to(torch.int32), self.v, self.v_th_adpt, self.ref_cnt,
                                                             consts)
        self.v, self.v_th_adpt, self.ref_cnt = v, a, ref
        return spikes.float()

    def extra_repr(self):
        s = self.spec
        mode = ("HARD", "SOFT", "SOFT_CONSTANT")[s.reset_mode]
        return (f"v_th0={s.v_threshold}, v_leaky_alpha={self.v_leaky_alpha}, v_leaky_beta={self.v_leaky_beta}, "
                f"reset_mode={mode}, v_reset={s.v_reset}, mode={self.mode!r}")


def _broadcast_scale(S, feeder, shape):
    """A per-channel scale ``[C]`` laid out over the neuron state ``[B, *features]``: along the last
    dimension after a QLinear; along ``C`` of ``[B, C, H, W]`` after a QConv2d, or repeated over each
    channel's H*W block when the conv output was flattened (channel-major) on the way."""
    if S.dim() == 0:
        return S
    C = S.shape[0]
    feats = tuple(shape[1:])
    if isinstance(feeder, QConv2d):
        if len(feats) >= 3 and feats[-3] == C:
            return S.reshape(C, 1, 1)
        n = math.prod(feats)
        if n % C:
            raise RuntimeError(f"QLIF: {n} neurons cannot be split into the {C} channels of the QConv2d feeding them")
        return S.repeat_interleave(n // C).reshape(feats)
    if feats[-1] != C:
        raise RuntimeError(f"QLIF: the last dimension ({feats[-1]}) is not the {C} outputs of the QLinear feeding it")
    return S

