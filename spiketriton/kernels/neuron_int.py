"""Integer family-B neuron (quantized inference, the chip form): one program per tile of neurons walks
the T steps with int32 state in registers; products for the leak are taken in int64 and floored by an
arithmetic shift. The spec, and the CPU path, is ``reference/neuron_int.py``; this kernel must match
it bit for bit. Spikes can be written as uint8 0/1 and/or packed 8 per byte for the next integer
spike matmul.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ..spec import INT28_MAX, INT28_MIN, IntNeuronSpec
from .neuron import _NUM_WARPS, _store_bits, _tile, _tiles


@triton.jit
def _sat(x):
    return tl.minimum(tl.maximum(x, -134217728), 134217727)  # int28 [-2^27, 2^27 - 1]


@triton.jit
def _neuron_int_kernel(
    u_ptr,        # [T, R, L] int32 input
    v0_ptr,       # [R, L] int32 carried-in v (read if HAS_V0)
    a0_ptr,       # [R, L] int32 carried-in adaptive part (read if HAS_A0)
    ref0_ptr,     # [R, L] int32 carried-in refractory counter (read if HAS_REF0)
    s_ptr,        # [T, R, L] out: uint8 0/1 spikes (written if WRITE_SPIKES)
    bits_ptr,     # [T, R, LB] out: packed spikes (written if WRITE_BITS)
    vT_ptr, aT_ptr, refT_ptr,  # [R, L] int32 out: state after the last step
    T, R, L, LB,
    v_th0, v_reset, v_l, dv, alpha_q, beta_q, ref_len, th_alpha_q, th_beta_q, th_incre, v_init,
    RESET_MODE: tl.constexpr, ADAPTIVE: tl.constexpr, REFRACTORY: tl.constexpr,
    HAS_V0: tl.constexpr, HAS_A0: tl.constexpr, HAS_REF0: tl.constexpr,
    WRITE_SPIKES: tl.constexpr, WRITE_BITS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_l, rows, cols, mask_r, mask, offs, step, step_b = _tile(R, L, LB, BLOCK_R, BLOCK_L)
    zero = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.int64)
    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0).to(tl.int64)
    else:
        v = zero + v_init
    a = zero
    if ADAPTIVE:
        if HAS_A0:
            a = tl.load(a0_ptr + offs, mask=mask, other=0).to(tl.int64)
    ref = zero
    if REFRACTORY:
        if HAS_REF0:
            ref = tl.load(ref0_ptr + offs, mask=mask, other=0).to(tl.int64)
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        u = tl.load(u_ptr + t64 * step + offs, mask=mask, other=0).to(tl.int64)
        vth = tl.maximum(_sat(v_th0 + a), v_l)
        if REFRACTORY:
            u = tl.where(ref == 0, u, 0)
        h = _sat(u + v)
        spike = h > vth
        if RESET_MODE == 0:
            v2 = tl.where(spike, zero + v_reset, h)
        elif RESET_MODE == 1:
            v2 = tl.where(spike, _sat(h - vth), h)
        else:
            v2 = tl.where(spike, _sat(h - dv), h)
        v = tl.maximum(_sat(((v2 * alpha_q) >> 8) + beta_q), v_l)  # floor(v'' alpha_q / 256) + beta_q
        if ADAPTIVE:
            a = _sat(((a * th_alpha_q) >> 8) + th_beta_q + tl.where(spike, th_incre, 0))
        if REFRACTORY:
            ref = tl.where(spike, zero + ref_len, tl.maximum(ref - 1, 0))
        if WRITE_SPIKES:
            tl.store(s_ptr + t64 * step + offs, tl.where(spike, 1, 0).to(tl.uint8), mask=mask)
        if WRITE_BITS:
            _store_bits(bits_ptr + t64 * step_b, tl.where(spike & mask, 1, 0), rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L)
    tl.store(vT_ptr + offs, v.to(tl.int32), mask=mask)
    tl.store(aT_ptr + offs, a.to(tl.int32), mask=mask)
    tl.store(refT_ptr + offs, ref.to(tl.int32), mask=mask)


def neuron_int_forward(
    u_seq: torch.Tensor,
    v0: Optional[torch.Tensor],
    a0: Optional[torch.Tensor],
    ref0: Optional[torch.Tensor],
    spec: IntNeuronSpec,
    write_spikes: bool = True,
    write_bits: bool = False,
):
    """``u_seq [T, *S]`` int32 -> ``(spikes uint8 [T, *S] or None, bits [T, *S[:-1], LB] or None,
    v, a, ref)`` (int32 states [*S])."""
    T, S = u_seq.shape[0], u_seq.shape[1:]
    L = S[-1]
    R = math.prod(S[:-1])
    LB = triton.cdiv(L, 8)
    dev = u_seq.device
    u = u_seq.to(torch.int32).contiguous().view(T, R, L)
    spikes = torch.empty((T, R, L), dtype=torch.uint8, device=dev) if write_spikes else None
    bits = torch.empty((T, R, LB), dtype=torch.uint8, device=dev) if write_bits else None
    v_last = torch.empty((R, L), dtype=torch.int32, device=dev)
    a_last = torch.empty_like(v_last)
    ref_last = torch.empty_like(v_last)
    prep = lambda t: t.to(torch.int32).contiguous().view(R, L) if t is not None else None  # noqa: E731
    v0c, a0c, r0c = prep(v0), prep(a0 if spec.adaptive else None), prep(ref0 if spec.refractory else None)
    if T == 0 or R * L == 0:
        v_last = v0c.clone() if v0c is not None else torch.full((R, L), spec.v_init, dtype=torch.int32, device=dev)
        a_last = a0c.clone() if a0c is not None else torch.zeros_like(v_last)
        ref_last = r0c.clone() if r0c is not None else torch.zeros_like(v_last)
    else:
        block_r, block_l, grid = _tiles(R, L)
        dummy = v_last
        _neuron_int_kernel[grid](
            u, v0c if v0c is not None else dummy, a0c if a0c is not None else dummy,
            r0c if r0c is not None else dummy,
            spikes if spikes is not None else dummy, bits if bits is not None else dummy,
            v_last, a_last, ref_last, T, R, L, LB,
            spec.v_th0, spec.v_reset, spec.v_l, spec.dv, spec.alpha_q, spec.beta_q, spec.ref_len,
            spec.v_th_alpha_q, spec.v_th_beta_q, spec.v_th_incre, spec.v_init,
            RESET_MODE=spec.reset_mode, ADAPTIVE=spec.adaptive, REFRACTORY=spec.refractory,
            HAS_V0=v0c is not None, HAS_A0=a0c is not None, HAS_REF0=r0c is not None,
            WRITE_SPIKES=write_spikes, WRITE_BITS=write_bits, BLOCK_R=block_r, BLOCK_L=block_l,
            num_warps=_NUM_WARPS,
        )
    return (
        spikes.view(u_seq.shape) if spikes is not None else None,
        bits.view(tuple(u_seq.shape[:-1]) + (LB,)) if bits is not None else None,
        v_last.view(S), a_last.view(S), ref_last.view(S),
    )


assert INT28_MIN == -134217728 and INT28_MAX == 134217727  # the literals in _sat
