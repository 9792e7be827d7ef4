"""Pooling of spike images: max pooling as a bytewise OR of packed spikes, average and sum pooling.

Images are ``[*lead, C, H, W]`` (``lead`` = ``[T, B]`` for a sequence, ``[B]`` for one step, or none),
as 0/1 floats or as a :class:`~spiketriton.functional.images.SpikeImage` (packed channels-last, 8
channels per byte). Pooling is per step and per channel, so the leading dimensions are folded
together and the same function serves multi-step and single-step input.

- :func:`spike_max_pool2d`: the max of 0/1 values over a window is their OR. A SpikeImage is pooled
  on its bytes, 8 channels per byte (kernels/spike_pool.py: one Triton kernel, or ``bitwise_or`` of the
  window's shifted planes on the PyTorch path), and the result is a SpikeImage again: pooled spikes
  stay packed. A float input goes to ``F.max_pool2d``
  (the same values and gradient as ``nn.MaxPool2d``).
- :func:`spike_avg_pool2d` / :func:`spike_sum_pool2d`: means / counts of spikes, real values (a
  float tensor), as ``F.avg_pool2d`` (``divisor_override=1`` for the sum).

Gradients: for a float input, those of the torch ops. For a SpikeImage whose ``anchor`` requires
grad, the gradient reaches the anchor (and so the neuron that wrote the spikes) exactly as
``nn.MaxPool2d`` / ``nn.AvgPool2d`` would route it on the unpacked 0/1 values: max pooling sends each
output's gradient to the first maximum of its window (row-major; for an all-zero window its first
element inside the image), as torch's kernels do. Only the packed input (1 bit per element) is kept
for backward.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels import spike_pool as KSP
from ._backend import use_triton
from ._checks import check_backend, check_bool, check_dtype
from .images import SpikeImage, _pair, unpack_image
from .ops import no_double_backward

__all__ = ["spike_max_pool2d", "spike_avg_pool2d", "spike_sum_pool2d", "pool_geometry"]


def _out_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's ``pooling_output_shape``: with ``ceil_mode`` the last window must start inside the
    input or its left padding."""
    eff = d * (k - 1) + 1
    num = n + 2 * p - eff + ((s - 1) if ceil_mode else 0)
    out = num // s + 1 if num >= 0 else 0
    if ceil_mode and out > 0 and (out - 1) * s >= n + p:
        out -= 1
    return out


def pool_geometry(op: str, in_hw, kernel_size, stride, padding, dilation=1, ceil_mode: bool = False):
    """``(kernel, stride, padding, dilation, (Ho, Wo))`` as pairs of ints, checked as torch checks
    pooling arguments (``padding`` at most half the dilated kernel; an output of at least 1x1), and
    refusing a window that lies entirely in the padding (torch's max would be ``-inf`` there, no
    spike value). ``stride=None`` (or an empty sequence) is the kernel size. Python-level only."""
    k = _pair(kernel_size, "kernel_size", op, 1)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else \
        _pair(stride, "stride", op, 1)
    p = _pair(padding, "padding", op, 0)
    d = _pair(dilation, "dilation", op, 1)
    check_bool(ceil_mode, "ceil_mode", op)
    for axis in range(2):
        eff = d[axis] * (k[axis] - 1) + 1
        if 2 * p[axis] > eff:
            raise ValueError(f"{op}: padding {p} must be at most half of the dilated kernel "
                             f"{tuple(d[i] * (k[i] - 1) + 1 for i in range(2))} (as in torch's pooling)")
    if in_hw is None:
        return k, s, p, d, None
    out = []
    for axis in range(2):
        n = in_hw[axis]
        o = _out_size(n, k[axis], s[axis], p[axis], d[axis], ceil_mode)
        if o < 1:
            raise ValueError(f"{op}: the input {tuple(in_hw)} (padding {p}) is smaller than the dilated kernel "
                             f"{tuple(d[i] * (k[i] - 1) + 1 for i in range(2))}: no output")
        for i in range(o):
            start = i * s[axis] - p[axis]
            if not any(0 <= start + j * d[axis] < n for j in range(k[axis])):
                raise ValueError(f"{op}: output {('row', 'column')[axis]} {i} pools a window that lies entirely in "
                                 f"the padding (input {tuple(in_hw)}, kernel {k}, stride {s}, padding {p}, dilation "
                                 f"{d}, ceil_mode={ceil_mode}); it holds no spike value")
        out.append(o)
    return k, s, p, d, tuple(out)


def _images(x, op: str):
    """``(kind, lead, C, H, W)`` of a pooling input: ``"packed"`` for a SpikeImage, ``"dense"`` for a
    float/bool tensor ``[*lead, C, H, W]``."""
    if isinstance(x, SpikeImage):
        shape = tuple(x.shape)
        return "packed", shape[:-3], shape[-3], shape[-2], shape[-1]
    if isinstance(x, Tensor):
        if x.dtype == torch.uint8:
            raise TypeError(f"{op}: got a uint8 tensor; wrap packed spikes as a SpikeImage (spiketriton.pack_image) "
                            f"or pass 0/1 spikes as float")
        if not x.is_floating_point():
            raise TypeError(f"{op}: expected float 0/1 images [*lead, C, H, W] or a SpikeImage, got {x.dtype}")
        if x.dim() < 3:
            raise ValueError(f"{op}: expected images [*lead, C, H, W] (at least 3 dimensions), got shape "
                             f"{tuple(x.shape)}")
        shape = tuple(x.shape)
        return "dense", shape[:-3], shape[-3], shape[-2], shape[-1]
    raise TypeError(f"{op}: expected a tensor [*lead, C, H, W] or a SpikeImage, got {type(x).__name__}")


def _fold(x: Tensor) -> Tensor:
    """``[*lead, C, H, W]`` -> ``[N, C, H, W]`` (a view where possible)."""
    return x.reshape((-1,) + tuple(x.shape[-3:])) if x.dim() != 4 else x


# --------------------------------------------------------------------------------------------- #
# max pooling: OR of packed bytes
# --------------------------------------------------------------------------------------------- #


class _OrPoolFn(torch.autograd.Function):
    """The gradient path of a packed max pooling: ``anchor`` (the input spikes' stand-in) -> the
    output's anchor (a zero tensor backed by one element); backward routes the output gradient as
    ``F.max_pool2d`` does on the unpacked input, which it unpacks from the saved bytes."""

    @staticmethod
    def forward(ctx, anchor, data, c, geom, out_shape, backend):
        ctx.save_for_backward(data)
        ctx.c, ctx.geom, ctx.in_shape, ctx.backend = c, geom, tuple(anchor.shape), backend
        return anchor.new_zeros(1).as_strided(out_shape, (0,) * len(out_shape))

    @staticmethod
    def backward(ctx, g):
        no_double_backward("spike_max_pool2d")
        (data,) = ctx.saved_tensors
        k, s, p, d, ceil_mode = ctx.geom
        # the unpacked spikes [N, C, H, W] (exact 0/1): torch's own max pooling picks the positions
        x = unpack_image(SpikeImage(data, ctx.c), g.dtype, ctx.backend).reshape((-1,) + ctx.in_shape[-3:])
        _, idx = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil_mode, return_indices=True)
        # torch's own backward of max pooling (the op nn.MaxPool2d's gradient runs: the same sums of
        # overlapping windows, in the same order and precision)
        gx = torch.ops.aten.max_pool2d_with_indices_backward(_fold(g.contiguous()), x, list(k), list(s), list(p),
                                                             list(d), ceil_mode, idx)
        return gx.reshape(ctx.in_shape), None, None, None, None, None


def spike_max_pool2d(x: Union[SpikeImage, Tensor], kernel_size, stride=None, padding=0, dilation=1,
                     ceil_mode: bool = False, *, backend: str = "auto") -> Union[SpikeImage, Tensor]:
    """Max pooling of spike images ``[*lead, C, H, W]``: the OR of each window.

    A :class:`~spiketriton.functional.images.SpikeImage` is pooled on its packed bytes (8 channels
    per byte) and returned packed, with an anchor that carries the gradient back as ``nn.MaxPool2d``
    would; a float tensor is pooled by ``F.max_pool2d`` (its values and gradient). ``kernel_size``,
    ``stride`` (default: the kernel), ``padding``, ``dilation`` and ``ceil_mode`` as in
    ``nn.MaxPool2d``; a window that lies entirely in the padding is a ValueError (torch's max would
    be ``-inf``). ``backend`` (``"auto"``, ``"triton"``, ``"torch"``) chooses the OR: one Triton kernel
    (kernels/spike_pool.py; CUDA, or the interpreter) or ``kh * kw`` torch ``bitwise_or`` passes over the
    packed words; and how the backward unpacks the saved bits.

    >>> import torch, spiketriton as st
    >>> from spiketriton.functional.pooling import spike_max_pool2d
    >>> s = (torch.rand(4, 2, 10, 6, 6) < 0.2).float()          # [T, B, C, H, W]
    >>> pooled = spike_max_pool2d(st.pack_image(s), 2)           # stays packed
    >>> pooled.shape
    torch.Size([4, 2, 10, 3, 3])
    >>> torch.equal(pooled.unpack(), torch.nn.functional.max_pool2d(s.flatten(0, 1), 2).unflatten(0, (4, 2)))
    True
    """
    op = "spike_max_pool2d"
    check_backend(backend, op)
    kind, lead, C, H, W = _images(x, op)
    k, s, p, d, (Ho, Wo) = pool_geometry(op, (H, W), kernel_size, stride, padding, dilation, ceil_mode)
    if kind == "dense":
        y = F.max_pool2d(_fold(x), k, s, p, d, ceil_mode=ceil_mode)
        return y.reshape(tuple(lead) + tuple(y.shape[-3:])) if len(lead) != 1 else y
    data = x.data.reshape((-1,) + tuple(x.data.shape[-3:]))
    orpool = KSP.or_pool2d_triton if use_triton(backend, data, op=op) else KSP.or_pool2d_torch
    out = orpool(data, k, s, p, d, (Ho, Wo)).reshape(tuple(lead) + (Ho, Wo, data.shape[-1]))
    anchor = None
    if x.anchor is not None and x.anchor.requires_grad and torch.is_grad_enabled():
        out_shape = tuple(lead) + (C, Ho, Wo)
        anchor = _OrPoolFn.apply(x.anchor, x.data.contiguous(), C, (k, s, p, d, ceil_mode), out_shape, backend)
    return SpikeImage(out, C, anchor)


# --------------------------------------------------------------------------------------------- #
# average and sum pooling: real values
# --------------------------------------------------------------------------------------------- #


class _AvgPoolPackedFn(torch.autograd.Function):
    """``F.avg_pool2d`` of the unpacked spikes; keeps nothing for backward but the input's shape (the
    gradient of an average pooling does not depend on the values)."""

    @staticmethod
    def forward(ctx, anchor, dense, args):
        ctx.args, ctx.in_shape = args, tuple(dense.shape)
        return F.avg_pool2d(dense, *args)

    @staticmethod
    def backward(ctx, g):
        no_double_backward("spike_avg_pool2d")
        with torch.enable_grad():  # (cheap: a zero input; the gradient of a linear map)
            x = torch.zeros(ctx.in_shape, dtype=g.dtype, device=g.device, requires_grad=True)
            (gx,) = torch.autograd.grad(F.avg_pool2d(x, *ctx.args), x, g)
        return gx, None, None


def _avg(x, op, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dtype, backend):
    check_backend(backend, op)
    kind, lead, C, H, W = _images(x, op)
    k, s, p, _, _ = pool_geometry(op, (H, W), kernel_size, stride, padding, 1, ceil_mode)
    check_bool(count_include_pad, "count_include_pad", op)
    if divisor_override is not None and (isinstance(divisor_override, bool) or not isinstance(divisor_override, int)
                                         or divisor_override < 1):
        raise ValueError(f"{op}: divisor_override must be None or an int >= 1, got {divisor_override!r}")
    args = (k, s, p, ceil_mode, count_include_pad, divisor_override)
    if kind == "dense":
        if dtype is not None:
            raise ValueError(f"{op}: dtype is for packed input (a SpikeImage); a float input keeps its dtype")
        y = F.avg_pool2d(_fold(x), *args)
    else:
        if dtype is None:
            dtype = x.anchor.dtype if x.anchor is not None else torch.float32
        check_dtype(dtype, "dtype", op)
        if not dtype.is_floating_point:
            raise TypeError(f"{op}: dtype must be a floating dtype (averages and counts), got {dtype}")
        folded = x.flatten_lead() if len(lead) != 1 else x
        dense = folded.unpack(dtype, backend)
        if x.anchor is not None and x.anchor.requires_grad and torch.is_grad_enabled():
            y = _AvgPoolPackedFn.apply(folded.anchor, dense, args)
        else:
            y = F.avg_pool2d(dense, *args)
    return y.reshape(tuple(lead) + tuple(y.shape[-3:])) if len(lead) != 1 else y


def spike_avg_pool2d(x: Union[SpikeImage, Tensor], kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                     count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
                     dtype: Optional[torch.dtype] = None, backend: str = "auto") -> Tensor:
    """Average pooling of spike images ``[*lead, C, H, W]``: the firing fraction of each window, a
    float tensor (``F.avg_pool2d``'s values and gradient, arguments as ``nn.AvgPool2d``). A SpikeImage
    is unpacked for it (in ``dtype``: default its anchor's dtype, else float32; ``backend`` chooses the
    unpacking, see :func:`~spiketriton.functional.images.unpack_image`); its gradient reaches the
    anchor.

    >>> import torch, spiketriton as st
    >>> from spiketriton.functional.pooling import spike_avg_pool2d
    >>> s = torch.tensor([[[[1., 0.], [1., 1.]]]])
    >>> spike_avg_pool2d(st.pack_image(s), 2)
    tensor([[[[0.7500]]]])
    """
    return _avg(x, "spike_avg_pool2d", kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                dtype, backend)


def spike_sum_pool2d(x: Union[SpikeImage, Tensor], kernel_size, stride=None, padding=0, ceil_mode: bool = False, *,
                     dtype: Optional[torch.dtype] = None, backend: str = "auto") -> Tensor:
    """Sum pooling (spike counts) of spike images ``[*lead, C, H, W]``: ``F.avg_pool2d`` with
    ``divisor_override=1`` (zero padding), a float tensor of integer counts (exact in any float dtype
    up to 2^11 = 2048 spikes per window in float16, 2^24 in float32). ``dtype`` and ``backend`` as in
    :func:`spike_avg_pool2d`.

    >>> import torch, spiketriton as st
    >>> from spiketriton.functional.pooling import spike_sum_pool2d
    >>> spike_sum_pool2d(st.pack_image(torch.ones(1, 3, 4, 4)), 2)[0, 0]
    tensor([[4., 4.],
            [4., 4.]])
    """
    return _avg(x, "spike_sum_pool2d", kernel_size, stride, padding, ceil_mode, True, 1, dtype, backend)

