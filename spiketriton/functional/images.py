"""Packed spike images and the convolution that reads them.

``SpikeImage`` holds spike images packed **channels-last, 8 channels per byte**: ``data`` is uint8
``[*lead, H, W, ceil(C/8)]`` where channel ``c`` of pixel ``(h, w)`` is bit ``c % 8`` (LSB first) of
byte ``c // 8``, the last byte zero-padded. Its logical shape is ``[*lead, C, H, W]`` (what
``nn.Conv2d`` sees); ``lead`` is ``[T, B]`` for a sequence or ``[B]`` for one step. This is the
layout :func:`~spiketriton.functional.spikes.pack_spikes` writes for the last dimension, applied to
the channels-last permutation ``[*lead, H, W, C]`` (docs/design/packed-images.md says why).

Like :class:`~spiketriton.functional.spikes.SpikeTensor`, a SpikeImage may hold an ``anchor`` of its
logical shape through which the spikes' gradient flows back to whatever produced them (the float
spikes themselves when :func:`pack_image` packed them, or a one-element zero tensor expanded to the
logical shape when a neuron wrote the bits directly).

``spike_conv2d(s, weight, bias, stride, padding, dilation, groups)`` is ``F.conv2d`` for binary ``s``:
on Triton an implicit GEMM reads the packed bytes (kernels/spike_conv.py); on the PyTorch path
``F.conv2d`` runs on the unpacked 0/1 values. Either way only the packed spikes are saved for
backward (dW reads them; dX is dense).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels import spike_conv as KSC
from . import ops
from ._backend import use_triton
from ._checks import check_bool
from .spikes import _compute_params, _PackedSpikes, _unpack_args, is_binary

__all__ = ["SpikeImage", "pack_image", "unpack_image", "spike_conv2d", "conv_padding"]


def _shape_str(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, (Tensor, SpikeImage)) else type(t).__name__


class SpikeImage(_PackedSpikes):
    """Spike images packed channels-last: ``data`` uint8 ``[*lead, H, W, ceil(c/8)]``, logical
    ``[*lead, c, H, W]``.

    >>> import torch, spiketriton as st
    >>> s = (torch.rand(4, 2, 13, 5, 5) < 0.3).float()        # [T, B, C, H, W]
    >>> img = st.pack_image(s)
    >>> img.shape, tuple(img.data.shape)
    (torch.Size([4, 2, 13, 5, 5]), (4, 2, 5, 5, 2))
    >>> torch.equal(img.unpack(), s)
    True
    """

    __slots__ = ("c",)
    _n_name, _n_what, _bits = "c", "c (the channel count)", "channels"
    _data_what, _min_dim = " [*lead, H, W, ceil(C/8)]", 3
    _dims_what = "must be [*lead, H, W, ceil(C/8)] (at least 3 dimensions)"
    _shape_what = "the logical shape"

    def __init__(self, data: Tensor, c: int, anchor: Optional[Tensor] = None):
        super().__init__(data, c, anchor)

    @staticmethod
    def _logical(packed_shape, n: int) -> tuple:
        return tuple(packed_shape[:-3]) + (n,) + tuple(packed_shape[-3:-1])

    def unpack(self, dtype: torch.dtype = torch.float32, backend: str = "auto") -> Tensor:
        """The 0/1 values ``[*lead, C, H, W]`` (contiguous), without gradient (see :meth:`to_dense`)."""
        return unpack_image(self, dtype, backend)

    def flatten_lead(self) -> "SpikeImage":
        """The same spikes with the leading dimensions folded into one: logical ``[N, C, H, W]``."""
        d = self.data
        n = math.prod(d.shape[:-3])
        a = self.anchor
        return SpikeImage(d.reshape((n,) + tuple(d.shape[-3:])), self.c,
                          a.reshape((n,) + tuple(a.shape[-3:])) if a is not None else None)

    def __getitem__(self, i) -> "SpikeImage":
        """Index the leading dimensions (e.g. one time step ``img[t]``); the last three stay whole."""
        if not isinstance(i, (int, slice)) or isinstance(i, bool) or self.data.dim() < 4:
            raise TypeError(f"SpikeImage: only an int or a slice of the first leading dimension can index it "
                            f"(shape {tuple(self.shape)}), got {i!r}")
        return SpikeImage(self.data[i], self.c, self.anchor[i] if self.anchor is not None else None)


def pack_image(x: Tensor, check: bool = True, backend: str = "auto") -> SpikeImage:
    """Pack 0/1 images ``[*lead, C, H, W]`` (float, bool or uint8) into a :class:`SpikeImage`.

    ``check=True`` rejects values other than 0 and 1 (packing would turn them into 1; one pass over
    the input and a host sync). A float ``x`` that requires grad becomes the anchor.

    >>> import torch, spiketriton as st
    >>> img = st.pack_image(torch.ones(2, 3, 1, 1))
    >>> img.data.flatten().tolist()    # channels 0, 1, 2 set: 0b111
    [7, 7]
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"pack_image: expected a tensor [*lead, C, H, W] of 0/1, got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(f"pack_image: expected images [*lead, C, H, W] (at least 3 dimensions), got shape "
                         f"{tuple(x.shape)}")
    if x.is_complex() or (not x.is_floating_point() and x.dtype not in (torch.bool, torch.uint8)):
        raise TypeError(f"pack_image: spikes must be float, bool or uint8 0/1, got {x.dtype}")
    check_bool(check, "check", "pack_image")
    if check and not x.is_meta and not is_binary(x):
        raise ValueError("pack_image: values other than 0 and 1 found; spikes must be binary")
    data = _pack_cl(x, use_triton(backend, x, op="pack_image"))
    anchor = x if (x.is_floating_point() and x.requires_grad) else None
    return SpikeImage(data, x.shape[-3], anchor)


def _pack_cl(x: Tensor, triton: bool) -> Tensor:
    """``[*lead, C, H, W]`` -> uint8 ``[*lead, H, W, ceil(C/8)]`` (nonzero packs as 1)."""
    return ops.call_pack(x.movedim(-3, -1), triton)


def _unpack_cl(data: Tensor, c: int, dtype: torch.dtype, triton: bool) -> Tensor:
    """uint8 ``[*lead, H, W, ceil(C/8)]`` -> ``[*lead, C, H, W]`` 0/1 as a channels-last view."""
    return ops.call_unpack(data, c, dtype, triton).movedim(-1, -3)


def unpack_image(p: SpikeImage, dtype: torch.dtype = torch.float32, backend: str = "auto") -> Tensor:
    """Inverse of :func:`pack_image`: ``[*lead, C, H, W]`` 0/1 in ``dtype``, contiguous (no gradient)."""
    triton = _unpack_args(p, SpikeImage, dtype, backend, "unpack_image")
    return _unpack_cl(p.data, p.c, dtype, triton).contiguous()


# --------------------------------------------------------------------------------------------- #
# Geometry
# --------------------------------------------------------------------------------------------- #


def _pair(v, name: str, op: str, minimum: int) -> Tuple[int, int]:
    vals = (v, v) if not isinstance(v, (tuple, list)) else tuple(v)
    if len(vals) != 2 or any(isinstance(a, bool) or not isinstance(a, int) or a < minimum for a in vals):
        raise ValueError(f"{op}: {name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return vals


def conv_padding(padding, kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                 op: str = "spike_conv2d") -> Tuple[int, int, int, int]:
    """Explicit ``(top, bottom, left, right)`` zero padding for ``padding`` as ``nn.Conv2d`` takes it:
    an int, a pair, ``'valid'`` (none) or ``'same'`` (output size = input size, stride 1 only; an
    odd total puts the extra row/column at the bottom/right, as ``F.conv2d`` does)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if tuple(stride) != (1, 1):
                raise ValueError(f"{op}: padding='same' is not supported for strided convolutions "
                                 f"(stride {tuple(stride)}), as in nn.Conv2d")
            out = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return tuple(out)
        raise ValueError(f"{op}: padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    ph, pw = _pair(padding, "padding", op, 0)
    return (ph, ph, pw, pw)


def _out_size(n: int, k: int, s: int, p_lo: int, p_hi: int, d: int) -> int:
    return (n + p_lo + p_hi - d * (k - 1) - 1) // s + 1


# --------------------------------------------------------------------------------------------- #
# The convolution: op bodies (PyTorch path; the Triton kernels come from kernels/spike_conv.py)
# --------------------------------------------------------------------------------------------- #


# The PyTorch path computes channels-last: oneDNN's convolution on the CPU is about twice as fast in
# that format (1 thread, 32 x 64 x 16 x 16 spikes, 64 -> 64 channels 3x3: 20.6 ms NCHW, 9.2 ms
# channels-last), and it is the layout of the packed spikes and of the output.
_CL = torch.channels_last


def _dense_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, pad4, dilation, groups) -> Tensor:
    """``F.conv2d`` with explicit (possibly asymmetric) zero padding, accumulated as the kernels do
    (fp32 for CPU halves: ``ops.acc_dtype``), returned in the weight's dtype."""
    acc = ops.acc_dtype(weight)
    pt, pb, pl, pr = pad4
    x = x.to(dtype=acc, memory_format=_CL)
    if pb != pt or pr != pl:  # the extra row/column of an asymmetric ('same' with an even kernel) padding
        x = F.pad(x, (0, pr - pl, 0, pb - pt))
    y = F.conv2d(x, weight.to(acc), bias.to(acc) if bias is not None else None, stride, (pt, pl), dilation, groups)
    # channels-last memory on every path (the kernels' layout, see kernels.spike_conv.out_like)
    return y.to(weight.dtype).contiguous(memory_format=torch.channels_last)


def _conv_dx(gy: Tensor, weight: Tensor, in_hw: Tuple[int, int], stride, pad4, dilation, groups) -> Tensor:
    """dX = conv_transpose of dY with the weight (dense), in fp32 for CPU halves, in gy's dtype."""
    acc = ops.acc_dtype(weight)
    pt, pb, pl, pr = pad4
    H, W = in_hw
    hp, wp = H + pb - pt, W + pr - pl  # the input as the symmetric padding (pt, pl) sees it
    n, cin = gy.shape[0], weight.shape[1] * groups
    gy = gy.to(dtype=acc, memory_format=_CL)
    gx = torch.nn.grad.conv2d_input((n, cin, hp, wp), weight.to(acc), gy, stride, (pt, pl), dilation, groups)
    return gx[:, :, :H, :W].to(gy.dtype)


def _conv_dw_torch(gy: Tensor, packed: Tensor, C: int, w_shape, stride, pad4, dilation, groups) -> Tensor:
    """dW = dY^T im2col(S) on the PyTorch path: S unpacked (exact 0/1) and torch's conv2d_weight."""
    acc = ops.acc_dtype(gy)
    x = _unpack_cl(packed, C, acc, False)
    pt, pb, pl, pr = pad4
    if pb != pt or pr != pl:
        x = F.pad(x, (0, pr - pl, 0, pb - pt))
    gw = torch.nn.grad.conv2d_weight(x, tuple(w_shape), gy.to(dtype=acc, memory_format=_CL), stride, (pt, pl),
                                     dilation, groups)
    return gw.to(gy.dtype)


def _conv_fwd_body(packed, C, anchor, dense, weight, weight_r, bias, stride, pad4, dilation, groups, triton):
    with ops._no_autocast(weight):
        if triton:
            return KSC.spike_conv2d_fwd(packed, C, weight, bias, stride, pad4, dilation, groups, weight_r)
        x = (dense != 0) if dense is not None else _unpack_cl(packed, C, ops.acc_dtype(weight), False)
        return _dense_conv(x, weight, bias, stride, pad4, dilation, groups)


def _conv_dw_body(gy, packed, C, w_shape, stride, pad4, dilation, groups, triton):
    if triton:
        return KSC.spike_conv2d_dw(gy, packed, C, w_shape, stride, pad4, dilation, groups)
    with ops._no_autocast(gy):
        return _conv_dw_torch(gy, packed, C, w_shape, stride, pad4, dilation, groups).contiguous()


def _conv_setup_context(ctx, inputs, output):
    packed, C, anchor, dense, weight, weight_r, bias, stride, pad4, dilation, groups, triton = inputs
    ctx.geom = (C, tuple(weight.shape), list(stride), list(pad4), list(dilation), groups, triton)
    ctx.has_bias = bias is not None
    ctx.in_hw = (packed.shape[1], packed.shape[2])
    need_dx = anchor is not None and ctx.needs_input_grad[2]
    ctx.anchor_dtype = anchor.dtype if anchor is not None else None
    # only the packed spikes (and the weight, for the dense dX) are kept
    ctx.save_for_backward(packed, weight if need_dx else None)


def _conv_backward_body(ctx, gy, dw):
    ops.no_double_backward("spike_conv2d")
    packed, weight = ctx.saved_tensors
    C, w_shape, stride, pad4, dilation, groups, triton = ctx.geom
    need_w, need_b = ctx.needs_input_grad[4], ctx.needs_input_grad[6]
    # dY as it comes (channels-last from the layers after a SpikeConv2d): the dW kernel reads it through
    # its strides and the PyTorch path works channels-last; an NCHW copy here cost three layout copies
    with ops._no_autocast(gy):
        gw = dw(gy, packed, C, list(w_shape), stride, pad4, dilation, groups, triton) if need_w else None
        gb = gy.sum((0, 2, 3)) if (need_b and ctx.has_bias) else None
        gx = None
        if weight is not None:
            gx = _conv_dx(gy, weight, ctx.in_hw, stride, pad4, dilation, groups).to(ctx.anchor_dtype)
    return None, None, gx, None, gw, None, gb, None, None, None, None, None


@torch.library.custom_op("spiketriton::spike_conv2d", mutates_args=())
def _spike_conv2d_op(packed: Tensor, C: int, anchor: Optional[Tensor], dense: Optional[Tensor], weight: Tensor,
                     weight_r: Optional[Tensor], bias: Optional[Tensor], stride: List[int], pad4: List[int],
                     dilation: List[int], groups: int, triton: bool) -> Tensor:
    """``Y [N, C_out, H', W'] = conv2d(S, W) + b`` for packed spikes ``[N, H, W, ceil(C/8)]`` (or their
    0/1 values ``dense [N, C, H, W]`` on the PyTorch path); ``pad4`` = (top, bottom, left, right).
    ``anchor`` is never read: it is the tensor the spikes' gradient goes to. ``weight_r``: the
    weight reordered for the kernels (``kernels.spike_conv.reorder_weight``), when the caller keeps it."""
    return _conv_fwd_body(packed, C, anchor, dense, weight, weight_r, bias, stride, pad4, dilation, groups, triton)


@_spike_conv2d_op.register_fake
def _(packed, C, anchor, dense, weight, weight_r, bias, stride, pad4, dilation, groups, triton):
    N, H, W = packed.shape[:3]
    kh, kw = weight.shape[2:]
    Ho = _out_size(H, kh, stride[0], pad4[0], pad4[1], dilation[0])
    Wo = _out_size(W, kw, stride[1], pad4[2], pad4[3], dilation[1])
    return KSC.out_like(N, weight.shape[0], Ho, Wo, weight.device, weight.dtype)


def _conv_backward(ctx, gy):
    return _conv_backward_body(ctx, gy, torch.ops.spiketriton.spike_conv2d_dw)


_spike_conv2d_op.register_autograd(_conv_backward, setup_context=_conv_setup_context)


@torch.library.custom_op("spiketriton::spike_conv2d_dw", mutates_args=())
def _spike_conv2d_dw_op(grad_out: Tensor, packed: Tensor, C: int, w_shape: List[int], stride: List[int],
                        pad4: List[int], dilation: List[int], groups: int, triton: bool) -> Tensor:
    """``dW [C_out, C/groups, kh, kw]`` with S read from the packed spikes, in grad_out's dtype."""
    return _conv_dw_body(grad_out, packed, C, w_shape, stride, pad4, dilation, groups, triton)


@_spike_conv2d_dw_op.register_fake
def _(grad_out, packed, C, w_shape, stride, pad4, dilation, groups, triton):
    return grad_out.new_empty(tuple(w_shape))


class _SpikeConvFn(torch.autograd.Function):
    """Eager twin of ``spike_conv2d``'s autograd registration (see functional/ops.py)."""

    @staticmethod
    def forward(*args):
        return _conv_fwd_body(*args)

    setup_context = staticmethod(_conv_setup_context)

    @staticmethod
    def backward(ctx, gy):
        return _conv_backward_body(ctx, gy, _conv_dw_body)


def _call_conv(packed, C, anchor, dense, weight, weight_r, bias, stride, pad4, dilation, groups, triton):
    args = (packed, C, anchor, dense, weight, weight_r, bias, list(stride), list(pad4), list(dilation), groups, triton)
    if ops._use_op(weight):
        return torch.ops.spiketriton.spike_conv2d(*args)
    if ops._requires_grad(anchor, weight, bias):
        return _SpikeConvFn.apply(*args)
    return _conv_fwd_body(*args)


# --------------------------------------------------------------------------------------------- #
# spike_conv2d
# --------------------------------------------------------------------------------------------- #


def spike_conv2d(
    s: Union[SpikeImage, Tensor],
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    backend: str = "auto",
    weight_r: Optional[Tensor] = None,
) -> Tensor:
    """``F.conv2d(s, weight, bias, stride, padding, dilation, groups)`` for binary images ``s``
    ``[N, C, H, W]`` (a :class:`SpikeImage`, or 0/1 float/bool), zero padding only.

    ``padding``: an int, a pair, ``'same'`` or ``'valid'`` as in ``F.conv2d``. The result is in the
    weight's dtype (or the autocast dtype), accumulated in fp32. A float ``s`` is read as spikes: any
    nonzero value is a 1 (check it with :func:`~spiketriton.functional.spikes.is_binary`, or use
    SpikeConv2d's ``check_binary``). Gradients: weight, bias, and the spikes (dense) when they require
    grad; only the packed spikes are saved for backward. ``weight_r``: optional
    ``kernels.spike_conv.reorder_weight(weight, groups)`` kept by the caller (SpikeConv2d caches it);
    it is used only when its dtype is the one the kernel computes in.

    >>> import torch
    >>> from spiketriton.functional.images import spike_conv2d
    >>> s = (torch.rand(2, 3, 8, 8) < 0.3).float()
    >>> w = torch.randn(4, 3, 3, 3)
    >>> torch.allclose(spike_conv2d(s, w, padding=1), torch.nn.functional.conv2d(s, w, padding=1), atol=1e-5)
    True
    """
    op = "spike_conv2d"
    if not isinstance(weight, Tensor) or weight.dim() != 4 or not weight.is_floating_point():
        got = f"{weight.dtype} tensor of shape {tuple(weight.shape)}" if isinstance(weight, Tensor) else type(weight).__name__
        raise TypeError(f"{op}: weight must be a floating tensor [C_out, C_in/groups, kh, kw], got {got}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: groups must be an int >= 1, got {groups!r}")
    c_out, cg, kh, kw = weight.shape
    C = cg * groups
    if c_out % groups:
        raise ValueError(f"{op}: the weight's C_out = {c_out} is not divisible by groups = {groups}")
    if isinstance(s, SpikeImage):
        if s.dim() != 4:
            raise ValueError(f"{op}: expected a SpikeImage of logical shape [N, C, H, W], got {tuple(s.shape)}")
        if s.c != C:
            raise ValueError(f"{op}: the SpikeImage has c = {s.c} channels but the weight expects C_in = {C} "
                             f"(C_in/groups = {cg}, groups = {groups})")
    elif isinstance(s, Tensor):
        if not (s.is_floating_point() or s.dtype == torch.bool):
            raise TypeError(f"{op}: spikes must be a float/bool 0/1 tensor or a SpikeImage, got {s.dtype}")
        if s.dim() != 4 or s.shape[1] != C:
            raise ValueError(f"{op}: expected spikes [N, C, H, W] with C = {C}, got shape {tuple(s.shape)}")
    else:
        raise TypeError(f"{op}: expected a SpikeImage or a tensor, got {type(s).__name__}")
    device = s.device
    if bias is not None and (not isinstance(bias, Tensor) or not bias.is_floating_point()):
        raise TypeError(f"{op}: bias must be a floating tensor [C_out] = [{c_out}] or None, got {_shape_str(bias)}")
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"{op}: bias must have shape ({c_out},), got {tuple(bias.shape)}")
    if weight.device != device or (bias is not None and bias.device != device):
        raise ValueError(f"{op}: spikes are on {device}, weight on {weight.device}"
                         + (f", bias on {bias.device}" if bias is not None else "") + "; move them to one device")
    stride = _pair(stride, "stride", op, 1)
    dilation = _pair(dilation, "dilation", op, 1)
    pad4 = conv_padding(padding, (kh, kw), stride, dilation, op)
    N, _, H, W = s.shape
    Ho = _out_size(H, kh, stride[0], pad4[0], pad4[1], dilation[0])
    Wo = _out_size(W, kw, stride[1], pad4[2], pad4[3], dilation[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: the (padded) input {H}x{W} is smaller than the dilated kernel "
                         f"{dilation[0] * (kh - 1) + 1}x{dilation[1] * (kw - 1) + 1}")
    if device.type == "meta":
        return KSC.out_like(N, c_out, Ho, Wo, "meta", weight.dtype)
    weight, bias, triton_ok = _compute_params(weight, bias, device, backend, op)
    if isinstance(s, SpikeImage):
        packed, anchor, dense = s.data.contiguous(), s.anchor, None
    else:
        anchor = s if (s.is_floating_point() and s.requires_grad) else None
        dense = None if triton_ok else s
        needs_grad = torch.is_grad_enabled() and (
            weight.requires_grad or anchor is not None or (bias is not None and bias.requires_grad))
        if not triton_ok and not needs_grad:
            # inference on the PyTorch path: nothing to save, no packing
            with torch.autocast(device.type, enabled=False):
                return _dense_conv(s != 0, weight, bias, stride, pad4, dilation, groups)
        packed = _pack_cl(s.detach(), triton_ok)
    with torch.autocast(device.type, enabled=False):
        if weight_r is not None and (weight_r.dtype != weight.dtype or not triton_ok):
            weight_r = None  # (autocast changed the dtype: the kernel launcher reorders the cast weight)
        return _call_conv(packed, C, anchor, dense, weight, weight_r, bias, stride, pad4, dilation, groups,
                          triton_ok)
