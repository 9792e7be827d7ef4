"""Quantizer primitives for spiketriton.quant (docs/guides/quantization.md, HNN-style).

Convention (the HNN framework's): a *scale* is the multiplier that maps real values to integers,
``w_int = round(w * scale)``, so real = int / scale. Symmetric ``bits``-bit integers span
``[-(2^(bits-1) - 1), 2^(bits-1) - 1]`` (int8: [-127, 127]).

- ``weight_scale``: ``qmax / max|w|`` per tensor or per output channel (dim 0); with ``pow2`` the
  largest power of two not above it (a shift on the chip), with ``even_shift`` an even exponent.
- ``quantize``: round-half-to-even and clamp, as integers.
- ``fake_quant``: ``quantize(x) / scale`` in floating point with a straight-through gradient
  (identity where the rounded value was in range, zero where it was clamped, as PyTorch's
  fake_quantize), for quantization-aware training.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from ..functional._checks import check_bool

__all__ = ["qmax", "check_bits", "weight_scale", "quantize", "fake_quant", "round_ste", "floor_ste",
           "require"]


def require(ok: torch.Tensor, exc: type, message, static: Optional[str] = None) -> None:
    """Raise ``exc(message)`` unless the bool tensor ``ok`` is all true (a check on tensor values).

    Eager: one host sync; ``message`` may be a callable, so that it can quote the values. Under
    ``torch.compile`` a Python branch on a tensor would break the graph, so the check becomes a traced
    assert (``torch._assert_async``): a RuntimeError carrying ``static`` (default: ``message`` when it
    is a string) when the compiled code runs."""
    if torch.compiler.is_compiling():
        torch._assert_async(ok.all(), static if static is not None else str(message))
        return
    if not bool(ok.all()):
        raise exc(message() if callable(message) else message)


def check_bits(bits) -> int:
    """``bits`` as a Python int in 2..8, else ValueError (a bool, a float or a string included)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 2..8 (symmetric signed weights), got {type(bits).__name__} "
                         f"{bits!r}")
    return bits


def qmax(bits: int) -> int:
    return (1 << (check_bits(bits) - 1)) - 1


def weight_scale(w: torch.Tensor, bits: int = 8, per_channel: bool = False, pow2: bool = False,
                 even_shift: bool = False) -> torch.Tensor:
    """The multiplier ``scale`` with ``max|w * scale| <= qmax(bits)``: a 0-dim tensor, or ``[C]`` for
    per-channel (one per output channel, dim 0). All-zero weights get scale 1."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError("weight_scale: w must be a floating tensor")
    for name, flag in (("per_channel", per_channel), ("pow2", pow2), ("even_shift", even_shift)):
        check_bool(flag, name, "weight_scale")
    if even_shift and not pow2:
        raise ValueError("weight_scale: even_shift constrains a power-of-two scale; set pow2=True as well")
    q = qmax(bits)
    w = w.detach().float()
    if w.numel() == 0:  # a layer without inputs or outputs: nothing to scale (amax of nothing is an error)
        amax = w.new_zeros((w.shape[0],) if (per_channel and w.dim() > 1) else ())
    else:
        amax = w.abs().flatten(1).amax(1) if (per_channel and w.dim() > 1) else w.abs().amax()
    require(torch.isfinite(amax), ValueError, "weight_scale: weights contain inf or NaN")
    scale = q / amax
    # all-zero (or denormal-small, whose scale overflows) weights: scale 1, every integer 0
    scale = torch.where((amax > 0) & torch.isfinite(scale), scale, torch.ones_like(amax))
    if pow2:
        e = torch.floor(torch.log2(scale))
        # log2 of a float can land a hair above an exact power: keep max|w| * 2^e <= qmax
        e = torch.where(amax * torch.exp2(e) > q, e - 1, e)
        if even_shift:
            e = e - torch.remainder(e, 2)  # round the exponent down to an even one
        scale = torch.exp2(e)
    return scale


def _bcast(scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return scale.reshape((-1,) + (1,) * (x.dim() - 1)) if scale.dim() == 1 else scale


def _scale_of(scale, x, dtype, who: str) -> torch.Tensor:
    """``scale`` as a tensor of ``dtype`` on x's device, broadcast over x's dim 0 when it is ``[C]``,
    after checking that x is a real tensor and that every scale is finite and > 0 (a zero, NaN or
    infinite scale maps everything to 0 or to NaN, which has no integer value). A Python number is
    checked on the host; a tensor scale costs one reduction and one device sync."""
    if not isinstance(x, torch.Tensor) or x.is_complex():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{who}: x must be a real (bool, integer or floating) tensor, got {got}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, torch.Tensor)):
        raise TypeError(f"{who}: scale must be a number or a tensor, got {type(scale).__name__} {scale!r}")
    fi = torch.finfo(dtype)
    if isinstance(scale, torch.Tensor):
        if scale.is_complex() or scale.dtype == torch.bool:
            raise TypeError(f"{who}: scale must be a real tensor, got {scale.dtype}")
        if scale.dim() > 1 or (scale.dim() == 1 and (x.dim() == 0 or scale.shape[0] != x.shape[0])):
            raise ValueError(f"{who}: scale must be a number or one per channel of x's dim 0 (shape "
                             f"[{x.shape[0] if x.dim() else 1}]), got shape {tuple(scale.shape)}")
        s = scale.detach().to(device=x.device, dtype=dtype)
        require(torch.isfinite(s) & (s > 0), ValueError,
                lambda: f"{who}: every scale must be finite and > 0 in {dtype}, got {scale.detach().cpu().tolist()}")
        return _bcast(scale.to(device=x.device, dtype=dtype), x)
    if not (math.isfinite(scale) and 0 < scale <= fi.max):
        raise ValueError(f"{who}: scale must be finite and > 0 (at most {fi.max:.4g} in {dtype}), got {scale!r}")
    return torch.as_tensor(scale, dtype=dtype, device=x.device)


def quantize(x: torch.Tensor, scale: Union[torch.Tensor, float], bits: int = 8) -> torch.Tensor:
    """``clamp(round(x * scale), -qmax, qmax)`` as int32 (round half to even). x must be a real
    tensor without NaN (NaN has no integer value: ValueError, one device sync); +-inf saturate to
    +-qmax. The scale must be finite and > 0."""
    q = qmax(bits)
    s = _scale_of(scale, x, torch.float32, "quantize")
    if x.is_floating_point():
        require(~torch.isnan(x), ValueError, "quantize: x holds NaN, which has no integer value")
    return torch.round(x.float() * s).clamp(-q, q).to(torch.int32)


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, q):
        r = torch.round(x * scale)
        # PyTorch's fake_quantize convention: the gradient passes where the *rounded* value is in range
        ctx.save_for_backward((r >= -q) & (r <= q))
        return r.clamp(-q, q) / scale

    @staticmethod
    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return g * inside, None, None


def fake_quant(x: torch.Tensor, scale: Union[torch.Tensor, float], bits: int = 8) -> torch.Tensor:
    """``quantize(x) / scale`` in x's dtype, straight-through gradient (zero where clamped). x must
    be a floating tensor; the scale finite and > 0 (NaN in x stays NaN, as in any float op)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"fake_quant: x must be a floating tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    s = _scale_of(scale, x, x.dtype, "fake_quant")
    return _FakeQuant.apply(x, s, float(qmax(bits)))


class _STE(torch.autograd.Function):
    """``op(x)`` exactly in the forward (x + (op(x) - x).detach() can round), identity gradient."""

    @staticmethod
    def forward(ctx, x, op):
        return op(x)

    @staticmethod
    def backward(ctx, g):
        return g, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round with a straight-through (identity) gradient."""
    return _STE.apply(x, torch.round)


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """floor with a straight-through (identity) gradient (the integer leak ``floor(v * q / 256)``)."""
    return _STE.apply(x, torch.floor)


