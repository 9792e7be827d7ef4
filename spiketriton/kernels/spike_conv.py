"""The spike convolution on packed channels-last spike images (interim: Triton unpack + torch conv;
the implicit-GEMM kernels replace these two functions)."""

from __future__ import annotations

import torch

from . import pack as KP


def _dense(packed, C, dtype):
    return KP.unpack(packed, C, dtype).movedim(-1, -3)


def spike_conv2d_fwd(packed, C, weight, bias, stride, pad4, dilation, groups):
    from ..functional.images import _dense_conv

    return _dense_conv(_dense(packed, C, torch.float32), weight, bias, stride, pad4, dilation, groups).contiguous()


def spike_conv2d_dw(gy, packed, C, w_shape, stride, pad4, dilation, groups):
    import torch.nn.functional as F

    x = _dense(packed, C, torch.float32)
    pt, pb, pl, pr = pad4
    if pb != pt or pr != pl:
        x = F.pad(x, (0, pr - pl, 0, pb - pt))
    gw = torch.nn.grad.conv2d_weight(x, tuple(w_shape), gy.float(), stride, (pt, pl), dilation, groups)
    return gw.to(gy.dtype).contiguous()
