"""Spike convolution on packed channels-last spike images: an implicit GEMM on tensor cores.

Layout (docs/design/packed-images.md): the spikes are uint8 ``[N, H, W, CB]``, ``CB = ceil(C/8)``
bytes per pixel, channel ``c`` in bit ``c % 8`` of byte ``c // 8``. The weight ``[C_out, C_g, kh, kw]``
(``C_g = C / groups``) is reordered once to ``Wr [C_out, kh * kw * CGP]``, K ordered ``(kh, kw, c)``
with the channels of each tap zero-padded to ``CGP`` (a multiple of 8: the bytes of a pixel), see
:func:`reorder_weight`. Padding bits of the last byte then meet a zero weight.

Forward. ``Y.T[co, m] = sum_k Wr[co, k] S_col[m, k]``, m = (image, oh, ow): exactly the spike matmul's
transposed tile (weight rows on the tensor cores' M side), with the B operand gathered from the image.
A K step stays inside one filter tap ``(i, j)``: the step's spikes are, for every output pixel of the
tile, ``BLOCK_K / 8`` consecutive bytes of one input pixel ``(oh * sh - pt + i * dh, ow * sw - pl + j *
dw)``, so the matmul's ``_spike_operand`` reads them unchanged, given each
row's pixel byte offset as its row address (a pixel outside the image is a masked row: zero padding
is a zero byte). The products and the exact fp32 3-way bf16 split are the matmul's ``_mma``; a weight
the split cannot hold (``0 < |w| < 2^-110``) is flagged and its rows recomputed with fp32 FMAs, as in
the matmul. The output is written NCHW, contiguous along the output pixels.

Weight gradient: ``dWr[co, k] = sum_m dY[m, co] S_col[m, k]``, each program a ``[BLOCK_N, BLOCK_K]``
tile of one tap, walking M, with fp32 ``dY`` split in three as in the matmul's dW; M is split among
programs (fixed-order sum of fp32 partials) when the dW tiles do not fill the GPU, which is the common
case (a 64 -> 128 channel 3x3 layer has 9 tiles of 128 x 64).

Groups: each program's output channels lie in one group (the grid's second axis), whose input
channels start at byte ``g * C_g / 8`` of a pixel; this needs ``C_g % 8 == 0``. Other grouped
convolutions (depthwise, ...) take the dense path: the spikes are unpacked (Triton) and cuDNN runs
the convolution; still only the packed spikes are saved. :func:`packed_ok` says which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import interpret_mode
from . import pack as KP
from . import spike_matmul as KSM
from .spike_matmul import _FALLBACK, _flagged, _mma, _spike_operand

__all__ = ["spike_conv2d_fwd", "spike_conv2d_dw", "reorder_weight", "packed_ok", "conv_fwd_config",
           "conv_dw_config"]

MODE_SPLIT3 = KSM.MODE_SPLIT3


def packed_ok(C: int, groups: int) -> bool:
    """Whether the implicit-GEMM kernels take this channel grouping: one group, or groups whose
    channel count is a multiple of 8 (each group's channels start on a byte)."""
    return groups == 1 or (C // groups) % 8 == 0


def reorder_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``[C_out, C_g, kh, kw]`` -> contiguous ``[C_out, kh * kw * CGP]``, K ordered ``(kh, kw, c)``,
    the channels of each tap zero-padded to ``CGP = 8 * ceil(C_g / 8)`` (one group: the pixel's bytes)."""
    co, cg, kh, kw = weight.shape
    cgp = 8 * ((cg + 7) // 8)
    wr = weight.detach().permute(0, 2, 3, 1)
    if cgp != cg:
        wr = F.pad(wr, (0, cgp - cg))
    return wr.reshape(co, kh * kw * cgp).contiguous()


@triton.jit
def _rows(m0, BLOCK_M: tl.constexpr, IDX64: tl.constexpr):
    """Output pixel rows ``m0 .. m0 + BLOCK_M``: int32 index arithmetic (the per-row divisions into
    image, row and column are in every K step of dW) unless an offset may reach 2^31 (``IDX64``)."""
    rm = m0 + tl.arange(0, BLOCK_M)
    if IDX64:
        rm = rm.to(tl.int64)
    return rm


@triton.jit
def _pixel_rows(rm, HoWo, Wo, SH, SW, PT, PL, MGA, SGA, MGB, SGB, IDX64: tl.constexpr):
    """Output pixel rows ``rm`` -> (image index, output row, output column, first input row/column of
    the window). With int32 indices the two divisions (by ``H' * W'`` and by ``W'``) are a multiply-high
    and a shift by the launcher's magic numbers (:func:`magic_divisor`): the dW kernel redoes them in
    every K step, where signed division was most of the loop's integer instructions."""
    if IDX64:
        img = rm // HoWo
        p = rm - img * HoWo
        oh = p // Wo
    else:
        img = _udiv(rm, MGA, SGA)
        p = rm - img * HoWo
        oh = _udiv(p, MGB, SGB)
    ow = p - oh * Wo
    return img, oh, ow, oh * SH - PT, ow * SW - PL


@triton.jit
def _udiv(n, magic, shift):
    """``n // d`` for int32 ``0 <= n < 2^31`` from ``(magic, shift) = magic_divisor(d)``."""
    q = tl.umulhi((n * 2).to(tl.uint32), magic.to(tl.uint32)) >> shift.to(tl.uint32)
    return q.to(tl.int32)


@triton.jit
def _tap_rows(img, ih0, iw0, mask_m, i, j, H, W, CB, DH, DW, P_DIV: tl.constexpr):
    """Byte offset of each row's input pixel for filter tap (i, j), and whether it lies in the image."""
    ih = ih0 + i * DH
    iw = iw0 + j * DW
    ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    pix = ((img * H + ih) * W + iw) * (CB // P_DIV) * P_DIV
    return pix, ok


@triton.jit
def _fwd_tile(p_ptr, w_ptr, rn, mask_n, rm, mask_m, g, st_lo, st_hi,
              M, H, W, Wo, HoWo, CB, CGB, CGP, KT, KW, NCB, SH, SW, PT, PL, DH, DW, MGA, SGA, MGB, SGB, check,
              MODE: tl.constexpr, ONE_BITS: tl.constexpr, INTERP: tl.constexpr, P_DIV: tl.constexpr,
              IDX64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc[BLOCK_N, BLOCK_M] = sum over K steps [st_lo, st_hi) of Wr[rn, k] S_col[rm, k]`` (rn are
    global output channels of group g). Returns ``(acc, lost)`` (see ``_mma``)."""
    img, oh, ow, ih0, iw0 = _pixel_rows(rm, HoWo, Wo, SH, SW, PT, PL, MGA, SGA, MGB, SGB, IDX64)
    gbyte = g * (CGB // P_DIV) * P_DIV  # the group's first byte in a pixel
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    lost = 0
    rk = tl.arange(0, BLOCK_K)
    for st in range(st_lo, st_hi):
        tap = st // NCB
        c0 = (st - tap * NCB) * BLOCK_K
        i = tap // KW
        pix, ok = _tap_rows(img, ih0, iw0, mask_m, i, tap - i * KW, H, W, CB, DH, DW, P_DIV)
        kc = c0 + rk
        w = tl.load(w_ptr + rn[:, None] * KT + (tap * CGP + kc)[None, :],
                    mask=mask_n[:, None] & (kc < CGP)[None, :], other=0)
        s = _spike_operand(p_ptr, pix, gbyte * 8 + c0, gbyte + CGB, 1, ok, ONE_BITS, BLOCK_K, True)
        acc, lost_k = _mma(w, s, acc, MODE, INTERP, check)
        lost = lost | lost_k
    return acc, lost, img, oh, ow


@triton.jit
def _spike_conv_fwd_kernel(
    p_ptr,       # [N, H, W, CB] uint8 packed spikes, contiguous
    w_ptr,       # [CO, KT] reordered weight (fp32 / fp16 / bf16), contiguous
    b_ptr,       # [CO] bias (read if HAS_BIAS)
    y_ptr,       # [N, CO, Ho, Wo] out (strides sy*; sys between splits), or the fp32 workspace if SPLIT > 1
    flag_ptr,    # [SPLIT, GROUPS * n_n] int8 out: 1 where a weight lost bits in the split (MODE_SPLIT3)
    M, H, W, Wo, HoWo, CB, CGB, CGP, COG, CO, KT, KW, NCB, SH, SW, PT, PL, DH, DW, MGA, SGA, MGB, SGB,
    STEPS, STEPS_PER_SPLIT, syn, syc, syh, syw, sys,
    MODE: tl.constexpr, ONE_BITS: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
    INTERP: tl.constexpr, P_DIV: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    pid_k = tl.program_id(2)
    n_n = tl.cdiv(COG, BLOCK_N)
    pid_n = pid % n_n  # consecutive programs share one spike tile (in L2) and read other weight rows
    pid_m = pid // n_n
    rnl = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rnl < COG
    rn = g * COG + rnl
    rm = _rows(pid_m * BLOCK_M, BLOCK_M, IDX64)
    mask_m = rm < M
    st_lo = pid_k * STEPS_PER_SPLIT
    st_hi = min(st_lo + STEPS_PER_SPLIT, STEPS)
    check = pid_m == 0  # the first M tile checks the weights of its N block
    acc, lost, img, oh, ow = _fwd_tile(p_ptr, w_ptr, rn, mask_n, rm, mask_m, g, st_lo, st_hi,
                                  M, H, W, Wo, HoWo, CB, CGB, CGP, KT, KW, NCB, SH, SW, PT, PL, DH, DW, MGA, SGA, MGB, SGB, check,
                                  MODE, ONE_BITS, INTERP, P_DIV, IDX64, BLOCK_N, BLOCK_M, BLOCK_K)
    if MODE == 1:
        if check:
            tl.store(flag_ptr + pid_k * tl.num_programs(1) * n_n + g * n_n + pid_n, lost.to(tl.int8))
    out = y_ptr + (img * syn + oh * syh + ow * syw)[None, :] + rn[:, None] * syc
    mask = mask_n[:, None] & mask_m[None, :]
    if SPLIT > 1:  # fp32 partial sum of this K range; the launcher adds them and the bias
        tl.store(out + pid_k.to(tl.int64) * sys, acc, mask=mask)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=mask_n, other=0).to(tl.float32)[:, None]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fallback_conv_fwd_kernel(
    p_ptr, w_ptr, b_ptr, y_ptr, flag_ptr,   # as _spike_conv_fwd_kernel; y is the final output
    M, H, W, Wo, HoWo, CB, CGB, CGP, COG, CO, KT, KW, NCB, SH, SW, PT, PL, DH, DW, MGA, SGA, MGB, SGB, STEPS,
    syn, syc, syh, syw,
    N_FLAGS,                                # flags per split row: GROUPS * cdiv(COG, MAIN_BLOCK_N)
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, INTERP: tl.constexpr, P_DIV: tl.constexpr, IDX64: tl.constexpr,
    MAIN_BLOCK_N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Recompute with exact fp32 FMAs the output channels whose weights the split could not hold.
    One program per BLOCK_N channels of a group; returns at once unless the main kernel flagged them."""
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    n_main = tl.cdiv(COG, MAIN_BLOCK_N)
    if _flagged(flag_ptr + g * n_main, pid_n, N_FLAGS, SPLIT, BLOCK_N, MAIN_BLOCK_N):
        rnl = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = rnl < COG
        rn = g * COG + rnl
        for m0 in range(0, M, BLOCK_M):
            rm = _rows(m0, BLOCK_M, IDX64)
            mask_m = rm < M
            acc, _lost, img, oh, ow = _fwd_tile(p_ptr, w_ptr, rn, mask_n, rm, mask_m, g, 0, STEPS,
                                           M, H, W, Wo, HoWo, CB, CGB, CGP, KT, KW, NCB, SH, SW, PT, PL, DH, DW, MGA, SGA, MGB, SGB,
                                           False, 3, -1, INTERP, P_DIV, IDX64, BLOCK_N, BLOCK_M, BLOCK_K)
            if HAS_BIAS:
                acc += tl.load(b_ptr + rn, mask=mask_n, other=0).to(tl.float32)[:, None]
            tl.store(y_ptr + (img * syn + oh * syh + ow * syw)[None, :] + rn[:, None] * syc, acc,
                     mask=mask_n[:, None] & mask_m[None, :])


@triton.jit
def _dw_tile(g_ptr, p_ptr, rn, mask_n, g, tap, c0, m_lo, m_hi,
             H, W, Wo, HoWo, CB, CGB, KW, SH, SW, PT, PL, DH, DW, MGA, SGA, MGB, SGB, sgn, sgc, sgh, sgw, check,
             MODE: tl.constexpr, ONE_BITS: tl.constexpr, INTERP: tl.constexpr, P_DIV: tl.constexpr,
             IDX64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc[BLOCK_N, BLOCK_K] = sum_{m in [m_lo, m_hi)} dY[m, rn] S_col[m, tap, c0 : c0 + BLOCK_K]``."""
    gbyte = g * (CGB // P_DIV) * P_DIV
    i = tap // KW
    j = tap - i * KW
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    lost = 0
    for m0 in range(m_lo, m_hi, BLOCK_M):
        rm = _rows(m0, BLOCK_M, IDX64)
        mask_m = rm < m_hi
        img, oh, ow, ih0, iw0 = _pixel_rows(rm, HoWo, Wo, SH, SW, PT, PL, MGA, SGA, MGB, SGB, IDX64)
        pix, ok = _tap_rows(img, ih0, iw0, mask_m, i, j, H, W, CB, DH, DW, P_DIV)
        # dY.T tile [BLOCK_N, BLOCK_M] (dY [N, CO, Ho, Wo] with strides sg*): the A operand
        gy = tl.load(g_ptr + (img * sgn + oh * sgh + ow * sgw)[None, :] + rn[:, None] * sgc,
                     mask=mask_n[:, None] & mask_m[None, :], other=0.0)
        s = _spike_operand(p_ptr, pix, gbyte * 8 + c0, gbyte + CGB, 1, ok, ONE_BITS, BLOCK_K, False)
        acc, lost_m = _mma(gy, s, acc, MODE, INTERP, check)
        lost = lost | lost_m
    return acc, lost


@triton.jit
def _spike_conv_dw_kernel(
    g_ptr,       # [N, CO, Ho, Wo] upstream gradient (strides sg*: NCHW or channels-last)
    p_ptr,       # [N, H, W, CB] uint8 packed spikes
    dw_ptr,      # [CO, KT] out (reordered dW, dtype of dY), or the [SPLIT, CO, KT] fp32 workspace
    flag_ptr,    # [SPLIT, GROUPS * n_n] int8 out: 1 where a dY value lost bits in the split (MODE_SPLIT3)
    M, H, W, Wo, HoWo, CB, CGB, CGP, COG, CO, KT, KW, NCB, SH, SW, PT, PL, DH, DW, MGA, SGA, MGB, SGB,
    M_PER_SPLIT, sgn, sgc, sgh, sgw,
    MODE: tl.constexpr, ONE_BITS: tl.constexpr, SPLIT: tl.constexpr, INTERP: tl.constexpr, P_DIV: tl.constexpr,
    IDX64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_ng = tl.program_id(0)  # (group, N block)
    st = tl.program_id(1)      # (tap, channel block)
    pid_s = tl.program_id(2)
    n_n = tl.cdiv(COG, BLOCK_N)
    g = pid_ng // n_n
    pid_n = pid_ng - g * n_n
    rnl = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rnl < COG
    rn = g * COG + rnl
    tap = st // NCB
    c0 = (st - tap * NCB) * BLOCK_K
    m_lo = pid_s * M_PER_SPLIT
    m_hi = min(m_lo + M_PER_SPLIT, M)
    check = st == 0  # the first K tile checks the gradients of its N block
    acc, lost = _dw_tile(g_ptr, p_ptr, rn, mask_n, g, tap, c0, m_lo, m_hi, H, W, Wo, HoWo, CB, CGB, KW,
                         SH, SW, PT, PL, DH, DW, MGA, SGA, MGB, SGB, sgn, sgc, sgh, sgw, check, MODE, ONE_BITS, INTERP, P_DIV, IDX64,
                         BLOCK_N, BLOCK_M, BLOCK_K)
    if MODE == 1:
        if check:
            tl.store(flag_ptr + pid_s * tl.num_programs(0) + pid_ng, lost.to(tl.int8))
    kc = c0 + tl.arange(0, BLOCK_K)
    out = dw_ptr + rn[:, None] * KT + (tap * CGP + kc)[None, :]
    if SPLIT > 1:
        out += pid_s.to(tl.int64) * CO * KT
    tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=mask_n[:, None] & (kc < CGP)[None, :])


@triton.jit
def _fallback_conv_dw_kernel(
    g_ptr, p_ptr, dw_ptr, flag_ptr,         # as _spike_conv_dw_kernel; dw is the final output
    M, H, W, Wo, HoWo, CB, CGB, CGP, COG, CO, KT, KW, NCB, SH, SW, PT, PL, DH, DW, MGA, SGA, MGB, SGB, STEPS,
    sgn, sgc, sgh, sgw,
    N_FLAGS,                                # flags per split row: GROUPS * cdiv(COG, MAIN_BLOCK_N)
    SPLIT: tl.constexpr, INTERP: tl.constexpr, P_DIV: tl.constexpr, IDX64: tl.constexpr,
    MAIN_BLOCK_N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dW rows whose dY values the split could not hold, with exact fp32 FMAs (see the forward's)."""
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    n_main = tl.cdiv(COG, MAIN_BLOCK_N)
    if _flagged(flag_ptr + g * n_main, pid_n, N_FLAGS, SPLIT, BLOCK_N, MAIN_BLOCK_N):
        rnl = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = rnl < COG
        rn = g * COG + rnl
        for st in range(0, STEPS):
            tap = st // NCB
            c0 = (st - tap * NCB) * BLOCK_K
            acc, _lost = _dw_tile(g_ptr, p_ptr, rn, mask_n, g, tap, c0, 0, M, H, W, Wo, HoWo, CB, CGB, KW,
                                  SH, SW, PT, PL, DH, DW, MGA, SGA, MGB, SGB, sgn, sgc, sgh, sgw, False, 3, -1, INTERP, P_DIV, IDX64,
                                  BLOCK_N, BLOCK_M, BLOCK_K)
            kc = c0 + tl.arange(0, BLOCK_K)
            tl.store(dw_ptr + rn[:, None] * KT + (tap * CGP + kc)[None, :], acc,
                     mask=mask_n[:, None] & (kc < CGP)[None, :])


# --------------------------------------------------------------------------------------------- #
# Tiles and launchers
# --------------------------------------------------------------------------------------------- #


class _Geom:
    """The integer arguments every kernel takes, from the shapes."""

    def __init__(self, packed, C, w_shape, stride, pad4, dilation, groups):
        self.N, self.H, self.W, self.CB = packed.shape
        self.CO, cg, self.KH, self.KW = w_shape
        self.groups = groups
        self.CGP = 8 * ((cg + 7) // 8)
        self.CGB = self.CGP // 8
        self.COG = self.CO // groups
        self.KT = self.KH * self.KW * self.CGP
        self.SH, self.SW = stride
        self.PT, self.PL = pad4[0], pad4[2]
        self.DH, self.DW = dilation
        self.Ho = (self.H + pad4[0] + pad4[1] - self.DH * (self.KH - 1) - 1) // self.SH + 1
        self.Wo = (self.W + pad4[2] + pad4[3] - self.DW * (self.KW - 1) - 1) // self.SW + 1
        self.M = self.N * self.Ho * self.Wo
        self.P_DIV = KSM._pow2_div(self.CB, self.CGB if groups > 1 else self.CB)

    def args(self, block_k):
        ncb = triton.cdiv(self.CGP, block_k)
        return ncb, (self.M, self.H, self.W, self.Wo, self.Ho * self.Wo, self.CB, self.CGB, self.CGP, self.COG,
                     self.CO, self.KT, self.KW, ncb, self.SH, self.SW, self.PT, self.PL, self.DH, self.DW,
                     *magic_divisor(max(self.Ho * self.Wo, 1)), *magic_divisor(max(self.Wo, 1)))


def magic_divisor(d: int):
    """``(magic, shift)`` with ``n // d == (((2 * n) * magic) >> 32) >> shift`` for every ``0 <= n < 2^31``
    (``1 <= d < 2^31``): ``shift = ceil(log2 d)``, ``magic = ceil(2^(31 + shift) / d) < 2^32``. Exact
    because ``magic * d - 2^(31 + shift) < d <= 2^shift`` (Granlund and Montgomery's condition for
    31-bit dividends); tests/test_spike_conv.py checks it on edge and random values."""
    shift = (d - 1).bit_length()
    return (2 ** (31 + shift) + d - 1) // d, shift


def _idx64(*tensors) -> bool:
    """Whether an element offset into one of the tensors (or a row count) may reach 2^31."""
    return any(t.numel() + sum(abs(st) for st in t.stride()) >= 2**31 for t in tensors)


def _block_k(block_k: int, cgp: int) -> int:
    """A K step stays in one tap: no wider than the tap's channels (padded to 16, tl.dot's minimum)."""
    return max(16, min(block_k, triton.next_power_of_2(cgp)))


def conv_fwd_config(geo: _Geom, dtype: torch.dtype, n_sms: int) -> dict:
    """The matmul's forward tiles (``spike_matmul.fwd_config``) for M = output pixels, N = output
    channels per group, K = kh * kw * CGP; a K step no wider than one tap's channels, and split-K
    over the (tap, channel block) steps when the output tiles fill less than a wave."""
    cfg = KSM.fwd_config(geo.M, geo.COG, geo.KT, dtype, n_sms)
    cfg.pop("GROUP_N")
    cfg.pop("SPLIT")
    if cfg["BLOCK_M"] > 128:
        # the matmul's 128 x 256 tiles for large halves spilled here (sm_90 bf16: 255 registers, 376 B of
        # stack): each row of the gathered B operand also holds its pixel coordinates
        cfg["BLOCK_M"], cfg["BLOCK_K"] = 128, 64
    if geo.COG <= 32:
        cfg["BLOCK_N"] = max(16, triton.next_power_of_2(geo.COG))
    cfg["BLOCK_K"] = _block_k(cfg["BLOCK_K"], geo.CGP)
    steps = geo.KH * geo.KW * triton.cdiv(geo.CGP, cfg["BLOCK_K"])
    tiles = triton.cdiv(geo.M, cfg["BLOCK_M"]) * triton.cdiv(geo.COG, cfg["BLOCK_N"]) * geo.groups
    split = 1
    while tiles * split < n_sms and steps >= 2 * split * 2 and split < 16:
        split *= 2
    cfg["SPLIT"] = split
    return cfg


def conv_dw_config(geo: _Geom, dtype: torch.dtype, n_sms: int) -> dict:
    """The matmul's dW tiles (``spike_matmul.dw_config``), a K step inside one tap, and M split until
    the programs fill a wave (up to 64 ways, at least 2 steps of BLOCK_M rows each)."""
    cfg = KSM.dw_config(geo.M, geo.COG, geo.KT, dtype, n_sms)
    if geo.COG <= 32:
        cfg["BLOCK_N"] = max(16, triton.next_power_of_2(geo.COG))
    cfg["BLOCK_K"] = _block_k(cfg["BLOCK_K"], geo.CGP)
    cfg["num_warps"] = 8 if cfg["BLOCK_N"] * cfg["BLOCK_K"] >= 8192 else 4
    steps = geo.KH * geo.KW * triton.cdiv(geo.CGP, cfg["BLOCK_K"])
    tiles = triton.cdiv(geo.COG, cfg["BLOCK_N"]) * geo.groups * steps
    split = 1
    while tiles * split < n_sms and geo.M >= 2 * split * 2 * cfg["BLOCK_M"] and split < 64:
        split *= 2
    cfg["SPLIT"] = split
    return cfg


def out_like(N: int, CO: int, Ho: int, Wo: int, device, dtype) -> torch.Tensor:
    """The convolution's output ``[N, C_out, H', W']`` in channels-last memory (``[N, H', W', C_out]``
    contiguous): a neuron with ``packed_output="image"`` then packs along contiguous channels without a
    copy (and a float-output neuron runs on it in that order too), see functional/neuron.py."""
    return torch.empty((N, Ho, Wo, CO), device=device, dtype=dtype).permute(0, 3, 1, 2)


def spike_conv2d_fwd(packed, C, weight, bias, stride, pad4, dilation, groups, weight_r=None, config=None):
    """``packed [N, H, W, CB]`` uint8, ``weight [C_out, C/groups, kh, kw]`` -> ``[N, C_out, H', W']`` in
    the weight's dtype. ``weight_r``: :func:`reorder_weight` of the weight, when the caller keeps it."""
    if not packed_ok(C, groups):
        return _dense_fwd(packed, C, weight, bias, stride, pad4, dilation, groups)
    packed = packed.contiguous()
    geo = _Geom(packed, C, weight.shape, stride, pad4, dilation, groups)
    dev = weight.device
    y = out_like(geo.N, geo.CO, geo.Ho, geo.Wo, dev, weight.dtype)
    if y.numel() == 0:
        return y
    if C == 0:
        return y.zero_() if bias is None else y.copy_(bias.view(1, -1, 1, 1).expand_as(y))
    wr = weight_r if weight_r is not None else reorder_weight(weight, groups)
    mode = KSM._mode(weight.dtype)
    cfg = dict(config) if config is not None else conv_fwd_config(geo, weight.dtype, KSM._num_sms(dev))
    split = cfg.pop("SPLIT")
    ncb, args = geo.args(cfg["BLOCK_K"])
    steps = geo.KH * geo.KW * ncb
    per_split = triton.cdiv(steps, split)
    split = triton.cdiv(steps, per_split)
    n_n = triton.cdiv(geo.COG, cfg["BLOCK_N"])
    flags = torch.empty((split, groups * n_n), device=dev, dtype=torch.int8)
    interp = interpret_mode()
    rne = KSM._round_outside(weight.dtype, interp)
    if split == 1 and not rne:
        out, sys = y, 0
    else:  # [SPLIT, N, Ho, Wo, CO] fp32 partial sums, viewed [SPLIT, N, CO, Ho, Wo]
        out = torch.empty((split, geo.N, geo.Ho, geo.Wo, geo.CO), device=dev, dtype=torch.float32).permute(0, 1, 4, 2, 3)
        sys = out.stride(0)
    sy = out.stride()[-4:]
    grid = (triton.cdiv(geo.M, cfg["BLOCK_M"]) * n_n, groups, split)
    _spike_conv_fwd_kernel[grid](
        packed, wr, bias if bias is not None else wr, out, flags, *args, steps, per_split, *sy, sys,
        MODE=mode, ONE_BITS=KSM._one_bits(weight.dtype, interp), HAS_BIAS=bias is not None, SPLIT=split,
        INTERP=interp, P_DIV=geo.P_DIV, IDX64=_idx64(packed, out), **cfg,
    )
    if split > 1:  # the partial sums in a fixed order, then the bias, then one rounding
        acc = out.sum(0)
        if bias is not None:
            acc += bias.float().view(1, -1, 1, 1)
        y.copy_(acc)
    elif rne:
        y.copy_(out[0])
    if mode == MODE_SPLIT3:
        fb = dict(_FALLBACK)
        ncb_fb, args_fb = geo.args(fb["BLOCK_K"])
        _fallback_conv_fwd_kernel[(triton.cdiv(geo.COG, fb["BLOCK_N"]), groups)](
            packed, wr, bias if bias is not None else wr, y, flags, *args_fb, geo.KH * geo.KW * ncb_fb, *y.stride(),
            groups * n_n,
            HAS_BIAS=bias is not None, SPLIT=split, INTERP=interp, P_DIV=geo.P_DIV, IDX64=_idx64(packed, y),
            MAIN_BLOCK_N=cfg["BLOCK_N"], **fb,
        )
    return y


def spike_conv2d_dw(gy, packed, C, w_shape, stride, pad4, dilation, groups, config=None):
    """``gy [N, C_out, H', W']``, ``packed [N, H, W, CB]`` -> ``dW [C_out, C/groups, kh, kw]`` in gy's dtype."""
    w_shape = tuple(w_shape)
    if not packed_ok(C, groups):
        return _dense_dw(gy, packed, C, w_shape, stride, pad4, dilation, groups)
    g = gy
    packed = packed.contiguous()
    geo = _Geom(packed, C, w_shape, stride, pad4, dilation, groups)
    co, cg, kh, kw = w_shape
    dev = g.device
    if geo.M == 0 or C == 0:
        return torch.zeros(w_shape, device=dev, dtype=g.dtype)
    mode = KSM._mode(g.dtype)
    cfg = dict(config) if config is not None else conv_dw_config(geo, g.dtype, KSM._num_sms(dev))
    split = cfg.pop("SPLIT", 1)
    bm = cfg["BLOCK_M"]
    m_per_split = triton.cdiv(triton.cdiv(geo.M, split), bm) * bm
    split = triton.cdiv(geo.M, m_per_split)
    ncb, args = geo.args(cfg["BLOCK_K"])
    steps = geo.KH * geo.KW * ncb
    n_n = triton.cdiv(geo.COG, cfg["BLOCK_N"])
    flags = torch.empty((split, groups * n_n), device=dev, dtype=torch.int8)
    interp = interpret_mode()
    rne = KSM._round_outside(g.dtype, interp)
    dwr = torch.empty((co, geo.KT), device=dev, dtype=g.dtype)
    out = dwr if (split == 1 and not rne) else torch.empty((split, co, geo.KT), device=dev, dtype=torch.float32)
    _spike_conv_dw_kernel[(groups * n_n, steps, split)](
        g, packed, out, flags, *args, m_per_split, *g.stride(),
        MODE=mode, ONE_BITS=KSM._one_bits(g.dtype, interp), SPLIT=split, INTERP=interp, P_DIV=geo.P_DIV,
        IDX64=_idx64(packed, g), **cfg,
    )
    if split > 1:
        dwr.copy_(out.sum(0))
    elif rne:
        dwr.copy_(out[0])
    if mode == MODE_SPLIT3:
        fb = dict(_FALLBACK)
        ncb_fb, args_fb = geo.args(fb["BLOCK_K"])
        _fallback_conv_dw_kernel[(triton.cdiv(geo.COG, fb["BLOCK_N"]), groups)](
            g, packed, dwr, flags, *args_fb, geo.KH * geo.KW * ncb_fb, *g.stride(), groups * n_n,
            SPLIT=split, INTERP=interp, P_DIV=geo.P_DIV, IDX64=_idx64(packed, g), MAIN_BLOCK_N=cfg["BLOCK_N"], **fb,
        )
    # [C_out, kh, kw, CGP] -> [C_out, C_g, kh, kw]
    return dwr.view(co, kh, kw, geo.CGP)[..., :cg].permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------- #
# Dense path for groups whose channels do not start on a byte
# --------------------------------------------------------------------------------------------- #


def _dense_input(packed, C, pad4):
    x = KP.unpack(packed, C, torch.float32).movedim(-1, -3)
    pt, pb, pl, pr = pad4
    if pb != pt or pr != pl:
        x = F.pad(x, (0, pr - pl, 0, pb - pt))
    return x


def _dense_fwd(packed, C, weight, bias, stride, pad4, dilation, groups):
    """Unpacked 0/1 spikes (Triton unpack) and torch's convolution, accumulated in fp32."""
    x = _dense_input(packed, C, pad4).to(weight.dtype if weight.is_cuda else torch.float32)
    w = weight if weight.is_cuda else weight.float()
    y = F.conv2d(x, w, bias.to(w.dtype) if bias is not None else None, stride, (pad4[0], pad4[2]), dilation, groups)
    return y.to(weight.dtype).contiguous(memory_format=torch.channels_last)


def _dense_dw(gy, packed, C, w_shape, stride, pad4, dilation, groups):
    x = _dense_input(packed, C, pad4)
    acc = gy.dtype if gy.is_cuda else torch.float32
    gw = torch.nn.grad.conv2d_weight(x.to(acc), tuple(w_shape), gy.to(acc), stride, (pad4[0], pad4[2]), dilation,
                                     groups)
    return gw.to(gy.dtype).contiguous()


