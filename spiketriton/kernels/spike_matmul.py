"""Spike matmul ``Y = S @ W.T + b`` reading S packed 8 per byte, and its weight gradient.

Forward. The kernel computes the transposed tile ``Y.T[n, m] = sum_k W[n, k] S[m, k]``: the weight
tile ``[BLOCK_N, BLOCK_K]`` is the tensor-core A operand (it may stay in registers, where the fp32
split below happens), and the spikes are the B operand: each program reads ``BLOCK_M x BLOCK_K/8``
bytes and expands every bit in registers to a 0/1 value of the operand dtype with integer
arithmetic (shift, and, multiply by the bit pattern of 1.0: no int-to-float conversion). The weight
is the wide dimension, so a small batch (deployment: M = 1..32) still fills the tensor cores' M side.
A product with 0/1 is exact, so the result is the fp32 sum of the selected weights: add-only
semantics, on tensor cores.

Operand modes (``MODE``):

- ``MODE_HALF``: bf16 / fp16 weights, used as they are.
- ``MODE_SPLIT3``: fp32 weights, split in the kernel into three bf16 parts ``hi + mid + lo`` by
  truncation (round toward zero). Truncation never rounds up, so ``hi`` is finite even in fp32's top
  binade, and each remainder keeps the sign of the weight: ``hi`` holds the top 8 significand bits,
  ``mid`` the next 8 of the remainder and ``lo`` the last (at most 8): ``w = hi + mid + lo`` exactly
  for every weight whose lowest significand bit is representable in bf16, i.e. ``|w| >= 2^-110`` (bf16
  subnormals end at ``2^-133``), and for 0. Three exact products on bf16 tensor cores, summed in fp32.
  A weight below ``2^-110`` would lose bits: the programs of the first M tile check the weights they
  read, flag their N block, and a fallback kernel recomputes the flagged rows of ``Y`` with exact fp32
  FMAs (the IEEE path). The check runs in 1 of every ``ceil(M / BLOCK_M)`` programs; the fallback
  kernel is one program per N block that returns at once when nothing is flagged.
- ``MODE_INT8``: int8 weights, int32 accumulation (exact), int32 out.
- ``MODE_IEEE``: fp32 FMAs (``input_precision="ieee"``), only in the fallback kernel.

Split-K: when the output tiles do not fill the GPU (small M x N), K is divided among ``SPLIT``
programs per tile; each writes its fp32 (int32) partial sum to a workspace and the launcher adds the
partials in a fixed order (deterministic, no atomics), then the bias.

Weight gradient: ``dW = dY.T @ S`` with S read packed in the same way; fp32 ``dY`` is split into three
bf16 parts in the same way (with the same check and fallback). ``dS = dY @ W`` is a dense matmul left
to cuBLAS, and ``db = dY.sum(0)``.

Alignment: Triton specializes integer arguments on divisibility by 16 only. A weight with K = 1000
(rows of 4000 bytes) is 16-byte aligned row by row but would be read with scalar loads; the launchers
pass the power of two that divides the row strides and K (``*_DIV``) and the kernels write each such
value as ``v // DIV * DIV`` (two uniform shifts; ``tl.multiple_of`` has no effect on a kernel
argument), so such shapes keep vector loads. tests/test_codegen.py checks the compiled code.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpret_mode

MODE_HALF, MODE_SPLIT3, MODE_INT8, MODE_IEEE = 0, 1, 2, 3

# The bit pattern of 1.0 in the operand dtype: a 0/1 bit times it is the operand's 0.0 / 1.0.
_ONE_BITS = {torch.bfloat16: 0x3F80, torch.float16: 0x3C00}
TINY = 2.0**-110  # fp32 weights at or above it (and 0) split exactly into three bf16 parts

# Streaming multiprocessors of the GPU the tiles are chosen for when no CUDA device is present (the
# codegen check compiles for H100/H200, 132 SMs).
_DEFAULT_SMS = 132


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _DEFAULT_SMS


def _pow2_div(*values: int, cap: int = 16) -> int:
    """The largest power of two <= ``cap`` dividing every value (0 divides by anything)."""
    d = cap
    for v in values:
        while d > 1 and v % d:
            d //= 2
    return d


@triton.jit
def _spike_operand(p_ptr, rows, k0, KB, stride_pm, mask_rows, ONE_BITS: tl.constexpr, BLOCK_K: tl.constexpr,
                   K_FIRST: tl.constexpr):
    """Spikes ``S[rows, k0 : k0 + BLOCK_K]`` read from the packed bytes as a 0/1 tile:
    ``[BLOCK_K, len(rows)]`` when ``K_FIRST`` (the B operand of ``W @ S.T``), else
    ``[len(rows), BLOCK_K]`` (dW's B operand).

    The bytes are read as a ``[len(rows), BLOCK_K / 8]`` tile and every byte is expanded to its 8
    bits in registers. Chosen from the sm_90 SASS per k-step of ``W @ S.T`` (bench/codegen.py), bf16
    4096^3: 237 instructions, against 318 when every element loads its own byte and 428 with the
    spikes as the A operand instead of the weights.
    ``ONE_BITS``: 0x3F80 / 0x3C00, bf16 / fp16 made from the integer bit pattern of 1.0 (no conversion
    instruction); 0: int8 0/1; -1: fp32 (the interpreter, and the IEEE fallback)."""
    kb = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    byte = tl.load(p_ptr + rows[:, None] * stride_pm + kb[None, :], mask=mask_rows[:, None] & (kb < KB)[None, :],
                   other=0)
    bit = (byte.to(tl.int32)[:, :, None] >> tl.arange(0, 8)[None, None, :]) & 1
    bit = tl.reshape(bit, [rows.shape[0], BLOCK_K])
    if K_FIRST:
        bit = tl.trans(bit)
    if ONE_BITS == 0x3F80:
        return (bit * ONE_BITS).to(tl.int16).to(tl.bfloat16, bitcast=True)
    elif ONE_BITS == 0x3C00:
        return (bit * ONE_BITS).to(tl.int16).to(tl.float16, bitcast=True)
    elif ONE_BITS == 0:
        return bit.to(tl.int8)
    else:
        return bit.to(tl.float32)


@triton.jit
def _split3(a):
    """fp32 -> three bf16 parts by truncation, ``a = hi + mid + lo`` exactly when ``|a| >= 2^-110``
    or ``a == 0``; also returns whether bits were lost (a nonzero ``|a| < 2^-110``)."""
    hi = a.to(tl.bfloat16, fp_downcast_rounding="rtz")
    r1 = a - hi.to(tl.float32)
    mid = r1.to(tl.bfloat16, fp_downcast_rounding="rtz")
    r2 = r1 - mid.to(tl.float32)
    lo = r2.to(tl.bfloat16, fp_downcast_rounding="rtz")
    lost = (r2 - lo.to(tl.float32)) != 0.0
    return hi, mid, lo, lost


@triton.jit
def _mma(a, b, acc, MODE: tl.constexpr, INTERP: tl.constexpr, check):
    """``acc += a @ b`` in the operand mode; ``b`` is the 0/1 tile. Returns ``(acc, lost)``: in
    MODE_SPLIT3 with ``check`` true, 1 if some value of ``a`` lost bits in the split, else 0."""
    lost = 0
    if MODE == 1:  # MODE_SPLIT3
        hi, mid, lo, lost_el = _split3(a)
        if check:
            lost = tl.max(lost_el.to(tl.int32))
        if INTERP:  # the interpreter's dot mishandles bf16 operands: the exact bf16 values in fp32
            acc = tl.dot(hi.to(tl.float32), b, acc, input_precision="ieee")
            acc = tl.dot(mid.to(tl.float32), b, acc, input_precision="ieee")
            acc = tl.dot(lo.to(tl.float32), b, acc, input_precision="ieee")
        else:
            acc = tl.dot(hi, b, acc)
            acc = tl.dot(mid, b, acc)
            acc = tl.dot(lo, b, acc)
    elif MODE == 2:  # MODE_INT8
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    elif MODE == 3 or INTERP:  # MODE_IEEE, or half operands in the interpreter
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc, lost


@triton.jit
def _spike_matmul_fwd_kernel(
    p_ptr,       # [M, KB] uint8 packed spikes (row stride stride_pm, bytes contiguous)
    w_ptr,       # [N, K] weight (fp32 / fp16 / bf16; int8 in integer mode), strides stride_wn, stride_wk
    b_ptr,       # [N] bias, dtype of the output (read if HAS_BIAS)
    y_ptr,       # [M, N] out (row stride stride_ym), or the [SPLIT, M, N] fp32/int32 workspace if SPLIT > 1
    flag_ptr,    # [SPLIT, cdiv(N, BLOCK_N)] int8 out: 1 where a weight lost bits in the split (MODE_SPLIT3)
    M, N, K, KB,
    stride_pm, stride_wn, stride_wk, stride_ym,
    K_PER_SPLIT,                 # K elements per split (a multiple of BLOCK_K)
    MODE: tl.constexpr,          # MODE_HALF / MODE_SPLIT3 / MODE_INT8 / MODE_IEEE
    ONE_BITS: tl.constexpr,      # see _spike_operand
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,         # programs along K per output tile (1: write y directly)
    INTERP: tl.constexpr,        # running under the Triton interpreter
    DIV: tl.constexpr,           # a power of two dividing N, K, stride_wn and stride_ym (see the top)
    P_DIV: tl.constexpr,         # a power of two dividing KB and stride_pm
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr,
):
    N = N // DIV * DIV
    K = K // DIV * DIV
    stride_wn = stride_wn // DIV * DIV
    stride_ym = stride_ym // DIV * DIV
    KB = KB // P_DIV * P_DIV
    stride_pm = stride_pm // P_DIV * P_DIV
    # grouped ordering: GROUP_N weight row blocks share each spike tile while it is in L2
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_n = tl.cdiv(N, BLOCK_N)
    n_m = tl.cdiv(M, BLOCK_M)
    group = pid // (GROUP_N * n_m)
    first_n = group * GROUP_N
    size_n = min(n_n - first_n, GROUP_N)
    pid_n = first_n + (pid % (GROUP_N * n_m)) % size_n
    pid_m = (pid % (GROUP_N * n_m)) // size_n

    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n = rn < N
    mask_m = rm < M
    if MODE == 2:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
    else:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = min(k_lo + K_PER_SPLIT, K)
    check = pid_m == 0  # the first M tile checks the weights of its N block
    lost = 0
    for k0 in range(k_lo, k_hi, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :] * stride_wk,
                    mask=mask_n[:, None] & (rk < k_hi)[None, :], other=0)
        s = _spike_operand(p_ptr, rm, k0, KB, stride_pm, mask_m, ONE_BITS, BLOCK_K, True)
        acc, lost_k = _mma(w, s, acc, MODE, INTERP, check)
        lost = lost | lost_k
    if MODE == 1:
        if check:
            tl.store(flag_ptr + pid_k * n_n + pid_n, lost.to(tl.int8))
    out = y_ptr + rm[None, :] * stride_ym + rn[:, None]
    mask = mask_n[:, None] & mask_m[None, :]
    if SPLIT > 1:  # fp32 / int32 partial sum of this K range; the launcher adds them and the bias
        tl.store(out + pid_k.to(tl.int64) * M * N, acc, mask=mask)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=mask_n, other=0).to(acc.dtype)[:, None]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _spike_matmul_dw_kernel(
    g_ptr,       # [M, N] upstream gradient dY (dtype of w), row stride stride_gm
    p_ptr,       # [M, KB] uint8 packed spikes
    dw_ptr,      # [N, K] out: dW = dY.T @ S, dtype of dY (row stride stride_dwn), or the [SPLIT, N, K] fp32
                 # workspace if SPLIT > 1
    flag_ptr,    # [SPLIT, cdiv(N, BLOCK_N)] int8 out: 1 where a dY value lost bits in the split (MODE_SPLIT3)
    M, N, K, KB,
    stride_gm, stride_pm, stride_dwn,
    M_PER_SPLIT,                 # rows of M per split (a multiple of BLOCK_M)
    MODE: tl.constexpr, ONE_BITS: tl.constexpr, INTERP: tl.constexpr,
    SPLIT: tl.constexpr,         # programs along M per dW tile (1: write dW directly)
    DIV: tl.constexpr,           # a power of two dividing N, K, stride_gm and stride_dwn
    P_DIV: tl.constexpr,         # a power of two dividing KB and stride_pm
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    N = N // DIV * DIV
    K = K // DIV * DIV
    stride_gm = stride_gm // DIV * DIV
    stride_dwn = stride_dwn // DIV * DIV
    KB = KB // P_DIV * P_DIV
    stride_pm = stride_pm // P_DIV * P_DIV
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_n = rn < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    check = pid_k == 0  # the first K tile checks the gradients of its N block
    lost = 0
    m_lo = pid_s * M_PER_SPLIT
    m_hi = min(m_lo + M_PER_SPLIT, M)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        mask_m = rm < m_hi
        # dY.T tile [BLOCK_N, BLOCK_M]: the A operand
        g = tl.load(g_ptr + rm[None, :] * stride_gm + rn[:, None], mask=mask_n[:, None] & mask_m[None, :], other=0.0)
        # S tile [BLOCK_M, BLOCK_K]: the 0/1 B operand (the transpose of what _spike_operand gives)
        s = _spike_operand(p_ptr, rm, pid_k * BLOCK_K, KB, stride_pm, mask_m, ONE_BITS, BLOCK_K, False)
        acc, lost_m = _mma(g, s, acc, MODE, INTERP, check)
        lost = lost | lost_m
    if MODE == 1:
        if check:
            tl.store(flag_ptr + pid_s * tl.num_programs(0) + pid_n, lost.to(tl.int8))
    out = dw_ptr + rn[:, None] * stride_dwn + rk[None, :]
    if SPLIT > 1:  # fp32 partial sum of this M range; the launcher adds them
        out += pid_s.to(tl.int64) * N * K
    tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=mask_n[:, None] & (rk < K)[None, :])


@triton.jit
def _flagged(flag_ptr, pid_n, N_FLAGS, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, MAIN_BLOCK_N: tl.constexpr):
    """Whether any split of the main kernel flagged the block of weight rows (dW: dY columns) that
    fallback program ``pid_n`` covers (``[SPLIT, N_FLAGS]`` int8 flags)."""
    blk = (pid_n * BLOCK_N) // MAIN_BLOCK_N
    flagged = tl.load(flag_ptr + blk).to(tl.int32)
    for sp in tl.static_range(1, SPLIT):
        flagged = flagged | tl.load(flag_ptr + sp * N_FLAGS + blk).to(tl.int32)
    return flagged != 0


@triton.jit
def _fallback_fwd_kernel(
    p_ptr, w_ptr, b_ptr, y_ptr, flag_ptr,   # as _spike_matmul_fwd_kernel; y is the final [M, N] output
    M, N, K, KB, stride_pm, stride_wn, stride_wk, stride_ym,
    N_FLAGS,                                # flags per split row: cdiv(N, BLOCK_N of the main kernel)
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, INTERP: tl.constexpr, DIV: tl.constexpr, P_DIV: tl.constexpr,
    MAIN_BLOCK_N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Recompute, with exact fp32 FMAs, the rows of Y.T whose weights the split could not hold.
    One program per BLOCK_N weight rows; returns at once unless the main kernel flagged them."""
    K = K // DIV * DIV
    stride_wn = stride_wn // DIV * DIV
    stride_ym = stride_ym // DIV * DIV
    stride_pm = stride_pm // P_DIV * P_DIV
    pid_n = tl.program_id(0)
    if _flagged(flag_ptr, pid_n, N_FLAGS, SPLIT, BLOCK_N, MAIN_BLOCK_N):
        rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = rn < N
        for m0 in range(0, M, BLOCK_M):
            rm = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
            mask_m = rm < M
            acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                rk = k0 + tl.arange(0, BLOCK_K)
                w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :] * stride_wk,
                            mask=mask_n[:, None] & (rk < K)[None, :], other=0)
                s = _spike_operand(p_ptr, rm, k0, KB, stride_pm, mask_m, -1, BLOCK_K, True)
                acc, _unused = _mma(w, s, acc, 3, INTERP, False)
            if HAS_BIAS:
                acc += tl.load(b_ptr + rn, mask=mask_n, other=0).to(tl.float32)[:, None]
            tl.store(y_ptr + rm[None, :] * stride_ym + rn[:, None], acc, mask=mask_n[:, None] & mask_m[None, :])


@triton.jit
def _fallback_dw_kernel(
    g_ptr, p_ptr, dw_ptr, flag_ptr, M, N, K, KB, stride_gm, stride_pm, stride_dwn,
    N_FLAGS,                                # flags per split row: cdiv(N, BLOCK_N of the main kernel)
    INTERP: tl.constexpr, DIV: tl.constexpr, P_DIV: tl.constexpr, SPLIT: tl.constexpr, MAIN_BLOCK_N: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dW rows whose dY values the split could not hold, with exact fp32 FMAs (see the forward's)."""
    K = K // DIV * DIV
    stride_gm = stride_gm // DIV * DIV
    stride_dwn = stride_dwn // DIV * DIV
    stride_pm = stride_pm // P_DIV * P_DIV
    pid_n = tl.program_id(0)
    if _flagged(flag_ptr, pid_n, N_FLAGS, SPLIT, BLOCK_N, MAIN_BLOCK_N):
        rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = rn < N
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
            for m0 in range(0, M, BLOCK_M):
                rm = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
                mask_m = rm < M
                g = tl.load(g_ptr + rm[None, :] * stride_gm + rn[:, None], mask=mask_n[:, None] & mask_m[None, :],
                            other=0.0)
                s = _spike_operand(p_ptr, rm, k0, KB, stride_pm, mask_m, -1, BLOCK_K, False)
                acc, _unused = _mma(g, s, acc, 3, INTERP, False)
            tl.store(dw_ptr + rn[:, None] * stride_dwn + rk[None, :], acc, mask=mask_n[:, None] & (rk < K)[None, :])


# --------------------------------------------------------------------------------------------- #
# Tile choice
# --------------------------------------------------------------------------------------------- #

# Fallback tiles: exact fp32 FMAs, small enough that the FMA dot does not spill (bench/codegen.py).
_FALLBACK = dict(BLOCK_N=32, BLOCK_M=32, BLOCK_K=16, num_warps=4, num_stages=1)


def _one_bits(dtype: torch.dtype, interp: bool) -> int:
    """ONE_BITS for the spike operand (see _spike_operand)."""
    if dtype == torch.int8:
        return 0
    if interp:
        return -1
    return _ONE_BITS.get(dtype, 0x3F80)  # fp32 weights: bf16 parts


def _mode(dtype: torch.dtype) -> int:
    if dtype == torch.int8:
        return MODE_INT8
    return MODE_SPLIT3 if dtype == torch.float32 else MODE_HALF


def fwd_config(M: int, N: int, K: int, dtype: torch.dtype, n_sms: int = _DEFAULT_SMS) -> dict:
    """Tiles for the forward at ``[M, K] x [N, K]``. The choices are read off the compiled code
    (bench/codegen.py, bench/results/codegen/): no GPU has timed them yet.

    - ``BLOCK_N`` (weight rows, the tensor cores' M side): 128 with 8 warps (two warpgroups of
      64-row wgmma) when N allows, else 64 with 4 warps.
    - ``BLOCK_M`` (spike rows, the wgmma N side, 16..256): the batch rounded up to a power of two, at
      most 128, so a small batch costs no padded work; 256 for large shapes (below).
    - ``BLOCK_K`` 64 (one 64-byte row of bf16 weights per 4 k-steps; 32 for fp32 weights, whose split
      keeps three bf16 copies of the tile live).
    - Less than one wave of output tiles (``n_sms`` programs): 64 x 64 tiles, then ``SPLIT``: K is
      split (up to 16 ways) until the programs fill a wave, keeping at least 2 k-steps per program.
      32 x 1024 x 1024 in bf16: 16 tiles x 8 splits = 128 programs instead of 16 with 64 x 64 tiles.
    """
    mode = _mode(dtype)
    block_m = min(max(triton.next_power_of_2(max(M, 1)), 16), 128)
    block_n = 128 if N > 64 else 64
    if triton.cdiv(M, block_m) * triton.cdiv(N, block_n) < n_sms:
        block_n = 64  # less than a wave: narrower tiles first
    block_k = 32 if mode == MODE_SPLIT3 else 64
    if mode != MODE_SPLIT3 and M >= 256 and block_n == 128 and triton.cdiv(M, 256) * triton.cdiv(N, 128) >= n_sms:
        # large shapes: 128 x 256 tiles halve the weight re-reads from L2 (W is read once per M tile:
        # 1 GiB of bf16 at 4096^3 with 128-row tiles). Per spike, sm_90 SASS issues 0.217 warp
        # instructions (bf16) and 0.164 (int8) against 0.231 / 0.192 with 128 x 128 tiles; BLOCK_K 32
        # keeps bf16 at 210 registers with a bias (64: 234 without). fp32 weights stay at 128 x 128:
        # with 256 they spilled (24 B on sm_90, 5 KB on sm_80).
        block_m, block_k = 256, 32
    if block_n == 64:
        block_m = min(block_m, 64)  # 64 x 128 tiles spilled on sm_80 (fp32 weights: 24 B on 8 warps, 232 B on 4)
    num_warps = 8 if block_n * block_m >= 128 * 64 else 4
    tiles = triton.cdiv(M, block_m) * triton.cdiv(N, block_n)
    split = 1
    while tiles * split < n_sms and K >= 2 * split * 2 * block_k and split < 16:
        split *= 2  # then split K, keeping at least 2 k-steps per program
    return dict(BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_K=block_k, GROUP_N=8, SPLIT=split,
                num_warps=num_warps, num_stages=3)


def dw_config(M: int, N: int, K: int, dtype: torch.dtype, n_sms: int = _DEFAULT_SMS) -> dict:
    """Tiles for ``dW [N, K] = dY.T @ S``: each program owns a ``[BLOCK_N, BLOCK_K]`` tile of dW and
    walks M, 32 rows a step, 128 x 128 with 8 warps. For fp32 dY (split in three) 128 x 64 tiles were
    issue-bound on sm_90 (516 SASS instructions a step against 768 tensor-core cycles: at most 0.74 of
    the tensor cores); 128 x 128 issues 557 for 1536 cycles (175 registers; sm_80 222). When the dW tiles fill less than a wave (a classifier head: N = 10 gives
    8 to 16 tiles), M is split (up to 16 ways, at least 2 steps a program) into fp32 partial sums that
    the launcher adds in a fixed order."""
    mode = _mode(dtype)
    block_n = 128 if N > 64 else 64
    block_k = 64 if K <= 64 else 128
    block_m = 32
    tiles = triton.cdiv(N, block_n) * triton.cdiv(K, block_k)
    split = 1
    while tiles * split < n_sms and M >= 2 * split * 2 * block_m and split < 16:
        split *= 2
    return dict(BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_K=block_k, SPLIT=split,
                num_warps=8 if block_n * block_k >= 8192 else 4, num_stages=3)


# --------------------------------------------------------------------------------------------- #
# Launchers
# --------------------------------------------------------------------------------------------- #


def _round_outside(out_dtype, interp: bool) -> bool:
    """Under TRITON_INTERPRET only: bf16 outputs are written in fp32 by the kernel and rounded to nearest
    by torch. The interpreter casts fp32 -> bf16 by truncation (triton/runtime/interpreter.py:
    ``cast_impl`` calls ``_convert_float`` with no rounding mode, which drops the low bits), while the
    compiled store rounds to nearest even (``F2FP.BF16.F32.PACK_AB``, not its ``.RZ`` form, in the
    sm_90 SASS of bench/results/codegen; tests/test_input_validation.py checks it). The compiled
    kernels never take this branch, so their code is unchanged."""
    return interp and out_dtype == torch.bfloat16


def spike_matmul_fwd(packed: torch.Tensor, K: int, weight: torch.Tensor, bias, config=None) -> torch.Tensor:
    """``packed [M, KB]`` uint8, ``weight [N, K]`` -> ``[M, N]`` in the weight's dtype. ``config``
    replaces ``fwd_config``'s choice (the benchmarks' tile sweep)."""
    return _launch_fwd(packed, K, weight, bias, weight.dtype, config)


def spike_matmul_int(packed: torch.Tensor, K: int, weight: torch.Tensor, bias, config=None) -> torch.Tensor:
    """Integer mode: ``packed [M, KB]``, int8 ``weight [N, K]``, int32 ``bias [N]`` or None ->
    int32 ``[M, N]`` (exact: ``|sum| <= K * 128 + |bias|`` must stay below 2^31)."""
    return _launch_fwd(packed, K, weight, bias, torch.int32, config)


def _launch_fwd(packed, K, weight, bias, out_dtype, config=None) -> torch.Tensor:
    M, KB = packed.shape
    N = weight.shape[0]
    dev = weight.device
    y = torch.empty((M, N), device=dev, dtype=out_dtype)
    if M == 0 or N == 0:
        return y
    if K == 0:
        return y.zero_() if bias is None else y.copy_(bias.expand(M, N))
    mode = _mode(weight.dtype)
    cfg = dict(config) if config is not None else fwd_config(M, N, K, weight.dtype, _num_sms(dev))
    split = cfg.pop("SPLIT")
    bk = cfg["BLOCK_K"]
    k_per_split = triton.cdiv(triton.cdiv(K, split), bk) * bk
    split = triton.cdiv(K, k_per_split)
    n_n = triton.cdiv(N, cfg["BLOCK_N"])
    flags = torch.empty((split, n_n), device=dev, dtype=torch.int8)
    acc_dtype = torch.int32 if mode == MODE_INT8 else torch.float32
    interp = interpret_mode()
    rne = _round_outside(out_dtype, interp)
    out = y if (split == 1 and not rne) else torch.empty((split, M, N), device=dev, dtype=acc_dtype)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * n_n, split)
    _spike_matmul_fwd_kernel[grid](
        packed, weight, bias if bias is not None else weight, out, flags,
        M, N, K, KB, packed.stride(0), weight.stride(0), weight.stride(1), y.stride(0), k_per_split,
        MODE=mode, ONE_BITS=_one_bits(weight.dtype, interp), HAS_BIAS=bias is not None, SPLIT=split, INTERP=interp,
        DIV=_pow2_div(N, K, weight.stride(0), y.stride(0)), P_DIV=_pow2_div(packed.stride(0), KB), **cfg,
    )
    if split > 1:  # the partial sums in a fixed order, then the bias, then one rounding
        acc = out.sum(0)
        if bias is not None:
            acc += bias.to(acc_dtype)
        y.copy_(acc)
    elif rne:  # the kernel added the bias in fp32; one rounding to nearest here
        y.copy_(out[0])
    if mode == MODE_SPLIT3:
        fb = _FALLBACK
        _fallback_fwd_kernel[(triton.cdiv(N, fb["BLOCK_N"]),)](
            packed, weight, bias if bias is not None else weight, y, flags,
            M, N, K, KB, packed.stride(0), weight.stride(0), weight.stride(1), y.stride(0), n_n,
            HAS_BIAS=bias is not None, SPLIT=split, INTERP=interp, MAIN_BLOCK_N=cfg["BLOCK_N"],
            DIV=_pow2_div(N, K, weight.stride(0), y.stride(0)), P_DIV=_pow2_div(packed.stride(0), KB), **fb,
        )
    return y


def spike_matmul_dw(grad_out: torch.Tensor, packed: torch.Tensor, K: int, config=None) -> torch.Tensor:
    """``grad_out [M, N]``, ``packed [M, KB]`` -> ``dW [N, K] = grad_out.T @ S`` in grad_out's dtype.
    ``config`` replaces ``dw_config``'s choice."""
    M, N = grad_out.shape
    g = grad_out.contiguous()
    dw = torch.empty((N, K), device=g.device, dtype=g.dtype)
    if N == 0 or K == 0:
        return dw
    if M == 0:
        return dw.zero_()
    mode = _mode(g.dtype)
    cfg = dict(config) if config is not None else dw_config(M, N, K, g.dtype, _num_sms(g.device))
    split = cfg.pop("SPLIT", 1)
    bm = cfg["BLOCK_M"]
    m_per_split = triton.cdiv(triton.cdiv(M, split), bm) * bm
    split = triton.cdiv(M, m_per_split)
    KB = packed.shape[1]
    n_n = triton.cdiv(N, cfg["BLOCK_N"])
    flags = torch.empty((split, n_n), device=g.device, dtype=torch.int8)
    interp = interpret_mode()
    rne = _round_outside(g.dtype, interp)
    out = dw if (split == 1 and not rne) else torch.empty((split, N, K), device=g.device, dtype=torch.float32)
    div = _pow2_div(N, K, g.stride(0), dw.stride(0))
    grid = (n_n, triton.cdiv(K, cfg["BLOCK_K"]), split)
    _spike_matmul_dw_kernel[grid](
        g, packed, out, flags, M, N, K, KB, g.stride(0), packed.stride(0), dw.stride(0), m_per_split,
        MODE=mode, ONE_BITS=_one_bits(g.dtype, interp), INTERP=interp, SPLIT=split,
        DIV=div, P_DIV=_pow2_div(packed.stride(0), KB), **cfg,
    )
    if split > 1:  # the partial sums in a fixed order, then one rounding
        dw.copy_(out.sum(0))
    elif rne:
        dw.copy_(out[0])
    if mode == MODE_SPLIT3:
        fb = _FALLBACK
        _fallback_dw_kernel[(triton.cdiv(N, fb["BLOCK_N"]),)](
            g, packed, dw, flags, M, N, K, KB, g.stride(0), packed.stride(0), dw.stride(0), n_n,
            INTERP=interp, SPLIT=split, MAIN_BLOCK_N=cfg["BLOCK_N"], DIV=div,
            P_DIV=_pow2_div(packed.stride(0), KB), **fb,
        )
    return dw
