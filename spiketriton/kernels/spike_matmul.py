"""Spike matmul ``Y = S @ W.T + b`` reading S packed 8 per byte, and its weight gradient.

Forward: each program owns a ``[BLOCK_M, BLOCK_N]`` tile of Y and walks K in ``BLOCK_K`` steps: it
reads ``BLOCK_M x BLOCK_K/8`` bytes of spikes, expands the bits in registers to a 0/1 tile in the
weight's dtype and feeds it with the weight tile to ``tl.dot``. A product with 0/1 is exact, so the
result is the fp32 sum of the selected weights: add-only semantics, on tensor cores. fp32 weights use
``input_precision="ieee"`` (TF32 would round the weights to 10 mantissa bits).

Inner-loop choice: tensor-core 0/1 expansion is the default; the select-and-add alternative and the
zero-tile skip (``SKIP_ZERO``) are to be decided by measurement on a GPU (bench/spike_matmul_gpu.py).
No GPU has been lent yet, so the constants below are reasonable starting points, not tuned values.

Weight gradient: ``dW = dY.T @ S`` with S read packed in the same way; ``dS = dY @ W`` is a dense
matmul left to cuBLAS, and ``db = dY.sum(0)``.

Integer mode (quantized inference): int8 weights, int32 bias, exact int32 accumulation
(``tl.dot`` of 0/1 int8 tiles and int8 weights, int8 tensor cores on a GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpret_mode

# Starting tile sizes (not tuned: no GPU lent yet). BLOCK_K must be a multiple of 8 (whole bytes).
_FWD = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3)
_DW = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3)


@triton.jit
def _expand_bits(p_ptr, rows, kb0, KB, stride_pm, mask_rows, BLOCK_K: tl.constexpr):
    """Bytes ``[len(rows), BLOCK_K/8]`` starting at byte column ``kb0`` -> 0/1 int32 ``[len(rows), BLOCK_K]``."""
    kb = kb0 + tl.arange(0, BLOCK_K // 8)
    byte = tl.load(p_ptr + rows[:, None] * stride_pm + kb[None, :], mask=mask_rows[:, None] & (kb < KB)[None, :], other=0)
    bits = (byte.to(tl.int32)[:, :, None] >> tl.arange(0, 8)[None, None, :]) & 1
    return tl.reshape(bits, [rows.shape[0], BLOCK_K])


@triton.jit
def _spike_matmul_fwd_kernel(
    p_ptr,       # [M, KB] uint8 packed spikes (row stride stride_pm, bytes contiguous)
    w_ptr,       # [N, K] weight (fp32 / fp16 / bf16; int8 in integer mode)
    b_ptr,       # [N] bias, dtype of w (int32 in integer mode) (read if HAS_BIAS)
    y_ptr,       # [M, N] out, dtype of w (int32 in integer mode)
    M, N, K, KB,
    stride_pm, stride_wn, stride_wk, stride_ym,
    HAS_BIAS: tl.constexpr,
    SKIP_ZERO: tl.constexpr,   # skip the dot for an all-zero spike tile (pays off at low firing rates)
    IEEE: tl.constexpr,        # fp32 weights: exact fp32 products, no TF32
    DOT_FP32: tl.constexpr,    # interpreter + bf16: its tl.dot mishandles bf16 operands
    IS_INT: tl.constexpr,      # int8 weights, int32 accumulation and output
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # grouped ordering of the output tiles so neighbouring programs share weight tiles in L2
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * n_n)
    first_m = group * GROUP_M
    size_m = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_n)) % size_m
    pid_n = (pid % (GROUP_M * n_n)) // size_m

    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = rm < M
    mask_n = rn < N
    dt = w_ptr.dtype.element_ty
    if IS_INT:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        bits = _expand_bits(p_ptr, rm, k0 // 8, KB, stride_pm, mask_m, BLOCK_K)
        rk = k0 + tl.arange(0, BLOCK_K)
        run = True
        if SKIP_ZERO:
            run = tl.max(tl.max(bits, axis=1), axis=0) > 0
        if run:
            w = tl.load(w_ptr + rn[None, :] * stride_wn + rk[:, None] * stride_wk,
                        mask=(rk < K)[:, None] & mask_n[None, :], other=0)
            s = bits.to(tl.float32)
            if IS_INT:
                acc = tl.dot(bits.to(tl.int8), w, acc, out_dtype=tl.int32)
            elif DOT_FP32:
                acc = tl.dot(s, w.to(tl.float32), acc, input_precision="ieee")
            elif IEEE:
                acc = tl.dot(s, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(s.to(dt), w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=mask_n, other=0).to(acc.dtype)[None, :]
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _spike_matmul_dw_kernel(
    g_ptr,       # [M, N] upstream gradient dY (dtype of w)
    p_ptr,       # [M, KB] uint8 packed spikes
    dw_ptr,      # [N, K] out: dW = dY.T @ S, dtype of w
    M, N, K, KB,
    stride_gm, stride_pm, stride_dwn,
    IEEE: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_n = rn < N
    dt = g_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        mask_m = rm < M
        g = tl.load(g_ptr + rm[:, None] * stride_gm + rn[None, :], mask=mask_m[:, None] & mask_n[None, :], other=0.0)
        s = _expand_bits(p_ptr, rm, pid_k * (BLOCK_K // 8), KB, stride_pm, mask_m, BLOCK_K).to(tl.float32)
        if DOT_FP32:
            acc = tl.dot(tl.trans(g.to(tl.float32)), s, acc, input_precision="ieee")
        elif IEEE:
            acc = tl.dot(tl.trans(g), s, acc, input_precision="ieee")
        else:
            acc = tl.dot(tl.trans(g), s.to(dt), acc)
    tl.store(dw_ptr + rn[:, None] * stride_dwn + rk[None, :], acc.to(dw_ptr.dtype.element_ty),
             mask=mask_n[:, None] & (rk < K)[None, :])


def _flags(dtype: torch.dtype):
    ieee = dtype == torch.float32
    return dict(IEEE=ieee, DOT_FP32=(dtype == torch.bfloat16 and interpret_mode()))


def spike_matmul_fwd(packed: torch.Tensor, K: int, weight: torch.Tensor, bias, skip_zero: bool = False) -> torch.Tensor:
    """``packed [M, KB]`` uint8, ``weight [N, K]`` -> ``[M, N]`` in the weight's dtype."""
    return _launch_fwd(packed, K, weight, bias, weight.dtype,
                       dict(SKIP_ZERO=skip_zero, IS_INT=False, **_flags(weight.dtype)))


def spike_matmul_int(packed: torch.Tensor, K: int, weight: torch.Tensor, bias) -> torch.Tensor:
    """Integer mode: ``packed [M, KB]``, int8 ``weight [N, K]``, int32 ``bias [N]`` or None ->
    int32 ``[M, N]`` (exact: |sum| <= K * 128 + |bias| must stay below 2^31)."""
    return _launch_fwd(packed, K, weight, bias, torch.int32,
                       dict(SKIP_ZERO=False, IS_INT=True, IEEE=False, DOT_FP32=False))


def _launch_fwd(packed, K, weight, bias, out_dtype, flags) -> torch.Tensor:
    M, KB = packed.shape
    N = weight.shape[0]
    y = torch.empty((M, N), device=weight.device, dtype=out_dtype)
    if M == 0 or N == 0:
        return y
    if K == 0:
        return y.zero_() if bias is None else y.copy_(bias.expand(M, N))
    cfg = dict(_FWD)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    _spike_matmul_fwd_kernel[grid](
        packed, weight, bias if bias is not None else weight, y,
        M, N, K, KB, packed.stride(0), weight.stride(0), weight.stride(1), y.stride(0),
        HAS_BIAS=bias is not None, **flags, **cfg,
    )
    return y


def spike_matmul_dw(grad_out: torch.Tensor, packed: torch.Tensor, K: int) -> torch.Tensor:
    """``grad_out [M, N]``, ``packed [M, KB]`` -> ``dW [N, K] = grad_out.T @ S`` in grad_out's dtype."""
    M, N = grad_out.shape
    g = grad_out.contiguous()
    dw = torch.empty((N, K), device=g.device, dtype=g.dtype)
    if N == 0 or K == 0:
        return dw
    if M == 0:
        return dw.zero_()
    cfg = dict(_DW)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(K, cfg["BLOCK_K"]))
    _spike_matmul_dw_kernel[grid](
        g, packed, dw, M, N, K, packed.shape[1], g.stride(0), packed.stride(0), dw.stride(0),
        **_flags(g.dtype), **cfg,
    )
    return dw
