"""Pack 0/1 spikes 8 per byte along the last dimension (LSB first, zero-padded) and back.

Layout (DESIGN.md): element ``8*k + i`` of a row is bit ``i`` of byte ``k``; ``[M, K]`` spikes become
``[M, ceil(K/8)]`` uint8. Each program owns a ``[BLOCK_M, BLOCK_K]`` tile of spikes, i.e. whole bytes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Spikes per program: 4096 = 16 KiB of fp32 input, 512 bytes out. Not yet tuned on a GPU.
_BLOCK = 4096


@triton.jit
def _pack_kernel(
    s_ptr,      # [M, K] spikes (any float dtype, bool as uint8, or uint8), contiguous
    p_ptr,      # [M, KB] uint8 out
    M, K, KB,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,  # BLOCK_K multiple of 8
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    m = (rows < M)[:, None] & (cols < K)[None, :]
    s = tl.load(s_ptr + rows[:, None] * K + cols[None, :], mask=m, other=0)
    bit = tl.where((s != 0) & m, 1, 0) << (tl.arange(0, BLOCK_K) % 8)[None, :]
    packed = tl.sum(tl.reshape(bit, [BLOCK_M, BLOCK_K // 8, 8]), axis=2).to(tl.uint8)
    bcols = tl.program_id(1).to(tl.int64) * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
    tl.store(p_ptr + rows[:, None] * KB + bcols[None, :], packed,
             mask=(rows < M)[:, None] & (bcols < KB)[None, :])


@triton.jit
def _unpack_kernel(
    p_ptr,      # [M, KB] uint8
    s_ptr,      # [M, K] out, any float dtype (0.0 / 1.0)
    M, K, KB,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    m = (rows < M)[:, None] & (cols < K)[None, :]
    byte = tl.load(p_ptr + rows[:, None] * KB + (cols // 8)[None, :], mask=m, other=0)
    bit = (byte.to(tl.int32) >> (cols % 8)[None, :]) & 1
    # via fp32: the interpreter mis-casts integers to bf16
    tl.store(s_ptr + rows[:, None] * K + cols[None, :], bit.to(tl.float32).to(s_ptr.dtype.element_ty), mask=m)


def _tiles(M: int, K: int):
    block_k = min(max(triton.next_power_of_2(K), 8), 1024)
    block_m = min(max(_BLOCK // block_k, 1), triton.next_power_of_2(max(M, 1)))
    return block_m, block_k, (triton.cdiv(M, block_m), triton.cdiv(K, block_k))


def pack(s: torch.Tensor) -> torch.Tensor:
    """``[..., K]`` 0/1 -> uint8 ``[..., ceil(K/8)]`` (nonzero packs as 1)."""
    K = s.shape[-1]
    KB = triton.cdiv(K, 8)
    x = s.contiguous()
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)
    M = x.numel() // max(K, 1)
    out = torch.empty(s.shape[:-1] + (KB,), dtype=torch.uint8, device=s.device)
    if M and K:
        bm, bk, grid = _tiles(M, K)
        _pack_kernel[grid](x, out, M, K, KB, BLOCK_M=bm, BLOCK_K=bk)
    return out


def unpack(p: torch.Tensor, K: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``[..., ceil(K/8)]`` -> ``[..., K]`` 0/1 of ``dtype``."""
    KB = p.shape[-1]
    x = p.contiguous()
    M = x.numel() // max(KB, 1)
    out = torch.empty(p.shape[:-1] + (K,), dtype=dtype, device=p.device)
    if M and K:
        bm, bk, grid = _tiles(M, K)
        _unpack_kernel[grid](x, out, M, K, KB, BLOCK_M=bm, BLOCK_K=bk)
    return out
