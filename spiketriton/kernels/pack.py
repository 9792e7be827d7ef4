"""Pack 0/1 spikes 8 per byte along the last dimension (LSB first, zero-padded) and back.

Layout (docs/spec/packed-spikes.md): element ``8*k + i`` of a row is bit ``i`` of byte ``k``; ``[M, K]`` spikes become
``[M, ceil(K/8)]`` uint8. Each program owns a ``[BLOCK_M, BLOCK_K]`` tile of spikes, i.e. whole bytes.
When K is a multiple of 8 the rows' bytes are a flat bitstream and the launchers view ``[M, K]`` as
``[1, M * K]`` (see ``kernels/neuron._plan``, shared with the neuron kernels, as are the bit helpers
and the grid rule): the float data then moves 128 bits per access (4 fp32 / 8 bf16 / 16 uint8 per
thread) whenever the tensor is 16-byte aligned; K not a multiple of 8 gives accesses of gcd(K, vector)
elements (odd K: scalar).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .neuron import _expand_bits, _load_bit_groups, _plan, _store_bits, _tile, _tiles, _vec

# One 128-bit vector per thread at 4 warps (512 fp32, 1024 bf16, 2048 uint8 spikes per program), halved
# down to one warp while there are fewer than 4 programs per SM (``neuron._tiles``). With several
# vectors per thread (the former 4096 spikes) a thread's bytes are not contiguous and Triton moved
# them through shared memory to store/load them 32 bits at a time (bf16 pack/unpack in the sm_90
# SASS: STS/LDS.U8 around STG.E / LDG.E); with one, each byte or bit group stays in the thread that
# holds its spikes. A one-pass kernel needs no per-thread ILP: [2048, 65536] is 262144 programs.
_NUM_WARPS = 4


@triton.jit
def _pack_kernel(
    s_ptr,      # [M, K] spikes (any float dtype, bool as uint8, or uint8), contiguous
    p_ptr,      # [M, KB] uint8 out
    M, K_div, KB,
    K_MULT: tl.constexpr, E: tl.constexpr,  # K = K_div * K_MULT; E spikes per thread and vector
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,  # BLOCK_K multiple of 8
):
    K = K_div * K_MULT
    pid_k, rows, mask_r, m, offs, _ = _tile(M, K, BLOCK_M, BLOCK_K)
    s = tl.load(s_ptr + offs, mask=m, other=0)
    _store_bits(p_ptr, (s != 0) & m, rows, pid_k, KB, mask_r, BLOCK_M, BLOCK_K, E)


@triton.jit
def _unpack_kernel(
    p_ptr,      # [M, KB] uint8
    s_ptr,      # [M, K] out, any float dtype (0.0 / 1.0)
    M, K_div, KB,
    K_MULT: tl.constexpr, E: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    K = K_div * K_MULT
    pid_k, rows, mask_r, m, offs, _ = _tile(M, K, BLOCK_M, BLOCK_K)
    grp = _load_bit_groups(p_ptr, tl.cast(0, tl.int64), 1, 0, rows, pid_k, KB, mask_r, BLOCK_M, BLOCK_K, E)
    bit = _expand_bits(grp, BLOCK_M, BLOCK_K, E)
    # via fp32: the interpreter mis-casts integers to bf16
    tl.store(s_ptr + offs, tl.where(bit != 0, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=m)


def _launch_shape(M: int, K: int, dtype: torch.dtype, device: torch.device):
    Mk, Kk, k_mult, E = _plan(M, K, _vec(dtype))
    bm, bk, programs, num_warps = _tiles(Mk, Kk, E, device, max_block=32 * E * _NUM_WARPS, max_warps=_NUM_WARPS)
    return dict(M=Mk, K_div=Kk // k_mult, KB=triton.cdiv(Kk, 8), K_MULT=k_mult, E=E, BLOCK_M=bm, BLOCK_K=bk,
                num_warps=num_warps), (programs,)


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
        args, grid = _launch_shape(M, K, x.dtype, x.device)
        _pack_kernel[grid](x, out, **args)
    return out


def unpack(p: torch.Tensor, K: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``[..., ceil(K/8)]`` -> ``[..., K]`` 0/1 of ``dtype``."""
    KB = p.shape[-1]
    x = p.contiguous()
    M = x.numel() // max(KB, 1)
    out = torch.empty(p.shape[:-1] + (K,), dtype=dtype, device=p.device)
    if M and K:
        args, grid = _launch_shape(M, K, dtype, p.device)
        _unpack_kernel[grid](x, out, **args)
    return out
