"""Max pooling of packed spike images: the OR of each window's bytes (Triton kernel and its PyTorch twin).

Layout (docs/design/packed-images.md): ``[N, H, W, CB]`` uint8, channels-last, 8 channels per byte. The max
of 0/1 values is their OR, so a window's pooled spikes are the bitwise OR of its pixels' channel bytes, 8
channels at a time. OR is bitwise: the bytes of a pixel may be OR-ed as wider words, so both paths view
``[..., CB]`` as int64 / int32 / int16 words when CB is a multiple of 8 / 4 / 2 bytes (64 / 32 / 16
channels per word): fewer, wider memory accesses for the same bits.

Zero padding and windows that reach past the input (``ceil_mode``) read zero bytes (no spike); the caller
(``functional/pooling.py``) has checked that every window holds at least one real pixel, where this OR equals
torch's max pooling (which pads with ``-inf``).

The float64 reference of this op is ``F.max_pool2d`` on the unpacked 0/1 values (exact in any precision);
tests/test_spike_pool.py checks both paths against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .neuron import _sm_count

# At most 512 output words per program at 4 warps (4 per thread) in a [pixels, words] tile, the words of one
# pixel contiguous (up to 16 bytes per access: a pixel of <= 128 channels in one load, 128-bit from 128 channels
# on); halved while the grid has fewer than 4 programs per SM, down to one pixel chunk (BLOCK_C words) per thread,
# which keeps the 128-bit accesses (at one word per thread a 256-channel pixel took two 64-bit loads). Compiled for
# sm_90 / sm_80 (bench/codegen.py): 1024 words per program took 96-211 registers (8 int64 pixel offsets per
# thread), 512 takes 40-100, the smallest tiles 26-54; no spills; a VGG pooling [128, 32, 32, 64 ch] at 512 made
# only 64 programs for 132 SMs.
_BLOCK = 512
_NUM_WARPS = 4


def _words(data: torch.Tensor) -> torch.Tensor:
    """``[..., CB]`` uint8 (contiguous) viewed as the widest words that divide CB: int64 / int32 / int16 / uint8."""
    cb = data.shape[-1]
    for dt, n in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if cb % n == 0:
            return data.view(dt)
    return data


@triton.jit
def _or_pool_kernel(
    x_ptr,      # [N, H, W, CW] words (int8/16/32/64), contiguous
    y_ptr,      # [N, HO, WO, CW] words out
    H, W, HO, WO,                        # input / output sizes
    n_pix,                               # N * HO * WO output pixels
    SH, SW, PH, PW, DH, DW,              # stride, padding (top / left), dilation
    CW: tl.constexpr,                    # words per pixel (constexpr: the pixel stride, so aligned vectors are provable)
    KH: tl.constexpr, KW: tl.constexpr,  # the window (unrolled)
    BLOCK_P: tl.constexpr,               # output pixels per program
    BLOCK_C: tl.constexpr,               # words per pixel in the tile (power of two >= CW, or a slice of CW)
):
    pid_p = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)   # output pixel (n, ho, wo), flattened
    cw = pid_c * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)    # word within the pixel
    mask_p = pix < n_pix
    mask_c = cw < CW
    wo = pix % WO
    t = pix // WO
    ho = t % HO
    n = t // HO
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=x_ptr.dtype.element_ty)
    for u in tl.static_range(KH):
        h = ho * SH - PH + u * DH
        ok_h = mask_p & (h >= 0) & (h < H)
        for v in tl.static_range(KW):
            w = wo * SW - PW + v * DW
            ok = ok_h & (w >= 0) & (w < W)
            base = ((n * H + h) * W + w) * CW
            x = tl.load(x_ptr + base[:, None] + cw[None, :], mask=ok[:, None] & mask_c[None, :], other=0)
            acc = acc | x
    tl.store(y_ptr + (pix * CW)[:, None] + cw[None, :], acc, mask=mask_p[:, None] & mask_c[None, :])


def or_pool2d_triton(data: torch.Tensor, k, s, p, d, out_hw) -> torch.Tensor:
    """The OR pooling of ``data [N, H, W, CB]`` uint8 -> ``[N, HO, WO, CB]`` on Triton (one launch)."""
    data = data.contiguous()
    N, H, W, CB = data.shape
    HO, WO = out_hw
    out = torch.empty((N, HO, WO, CB), dtype=torch.uint8, device=data.device)
    n_pix = N * HO * WO
    if n_pix == 0 or CB == 0:
        return out
    x, y = _words(data), _words(out)
    CW = x.shape[-1]
    block_c = min(triton.next_power_of_2(CW), 16 // x.element_size())  # at most 128 bits of a pixel
    block_p = max(1, _BLOCK // block_c)
    sms = _sm_count(data.device)
    while block_p > 32 * _NUM_WARPS and triton.cdiv(n_pix, block_p) * triton.cdiv(CW, block_c) < 4 * sms:
        block_p //= 2
    grid = (triton.cdiv(n_pix, block_p), triton.cdiv(CW, block_c))
    _or_pool_kernel[grid](x, y, H, W, HO, WO, n_pix, s[0], s[1], p[0], p[1], d[0], d[1],
                          CW=CW, KH=k[0], KW=k[1], BLOCK_P=block_p, BLOCK_C=block_c, num_warps=_NUM_WARPS)
    return out


def or_pool2d_torch(data: torch.Tensor, k, s, p, d, out_hw) -> torch.Tensor:
    """The same on the PyTorch path: zero padding, then the OR of the ``kh * kw`` strided word planes."""
    N, H, W, CB = data.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (HO, WO) = k, s, p, d, out_hw
    # rows/columns the windows reach (ceil_mode may reach past the padded input: zeros there too)
    bottom = max(0, (HO - 1) * sh + dh * (kh - 1) + 1 - H - ph)
    right = max(0, (WO - 1) * sw + dw * (kw - 1) + 1 - W - pw)
    xp = F.pad(data, (0, 0, pw, right, ph, bottom)) if (ph or pw or bottom or right) else data
    xw = _words(xp.contiguous())
    out = None
    for u in range(kh):
        rows = slice(u * dh, u * dh + (HO - 1) * sh + 1, sh)
        for v in range(kw):
            plane = xw[:, rows, v * dw:v * dw + (WO - 1) * sw + 1:sw, :]
            if out is None:
                out = plane.clone(memory_format=torch.contiguous_format)
            else:
                out.bitwise_or_(plane)
    return out.view(torch.uint8) if out.dtype != torch.uint8 else out
