"""Integer family-B neuron (quantized inference, the chip form): one program per tile of neurons walks
the T steps with int32 state in registers. The spec, and the CPU path, is ``reference/neuron_int.py``
(int64 tensors); this kernel must match it bit for bit. Spikes can be written as uint8 0/1 and/or
packed 8 per byte for the next integer spike matmul.

Everything is computed in int32 (a 64-bit integer add or multiply is 2+ instructions on the GPU and
doubles the registers of the state), exactly as the reference's int64 for any int32 input and any
int32 carried-in state:

- ``_sat_add(x, y)`` = sat(x + y) for any int32 x, y: the wrapped sum, and where it overflowed (x and y
  of one sign, the sum of the other) the bound of x's sign;
- the leak floor(x * q / 256) for any int32 x and 0 <= q <= 256 (x q up to 2^39) is
  (x >> 8) * q + (((x & 255) * q) >> 8): x = 256 hi + lo with 0 <= lo < 256 also for negative x, so
  floor(x q / 256) = hi q + floor(lo q / 256) exactly, and hi q + 255 <= 2^31 - 1;
- after the first step every state is int28, and the differences and sums the step takes of int28
  values (h - vth, h - dv, leak + beta_q, ...) stay within +-2^29;
- max(ref - 1, 0) is written max(ref, 1) - 1 (no wrap at ref = -2^31).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ..spec import INT28_MAX, INT28_MIN, IntNeuronSpec
from . import neuron as _kn
from .neuron import _load_step, _store_bits, _tile

# At most one 128-bit int32 vector per thread at 4 warps: the uint8 spikes then leave 32 bits per
# thread in the tile's own layout. With 1024 (two vectors) the sm_90 SASS stores them 64 bits per
# thread after a layout change through shared memory every step (STS.128 / LDS.128); the grid rule
# (kernels/neuron._tiles) then halves it like the float kernels'.
_BLOCK = 512


@triton.jit
def _sat(x):
    return tl.minimum(tl.maximum(x, -134217728), 134217727)  # int28 [-2^27, 2^27 - 1]


@triton.jit
def _sat_add(x, y):
    """sat(x + y) for any int32 x, y (see the module docstring)."""
    s = x + y  # two's complement wrap
    overflow = ((x ^ s) & (y ^ s)) < 0
    return tl.where(overflow, tl.where(x < 0, -134217728, 134217727), _sat(s))


@triton.jit
def _leak(x, q):
    """floor(x * q / 256) for any int32 x and 0 <= q <= 256, in int32 (see the module docstring)."""
    return (x >> 8) * q + (((x & 255) * q) >> 8)


@triton.jit
def _neuron_int_kernel(
    u_ptr,        # [T, R, L] int32 input
    v0_ptr,       # [R, L] int32 carried-in v (read if HAS_V0)
    a0_ptr,       # [R, L] int32 carried-in adaptive part (read if HAS_A0)
    ref0_ptr,     # [R, L] int32 carried-in refractory counter (read if HAS_REF0)
    s_ptr,        # [T, R, L] out: uint8 0/1 spikes (written if WRITE_SPIKES)
    bits_ptr,     # [T, R, LB] out: packed spikes (written if WRITE_BITS)
    vT_ptr, aT_ptr, refT_ptr,  # [R, L] int32 out: state after the last step
    T, R, L_div, LB,
    v_th0, v_reset, v_l, dv, alpha_q, beta_q, ref_len, th_alpha_q, th_beta_q, th_incre, v_init,
    RESET_MODE: tl.constexpr, ADAPTIVE: tl.constexpr, REFRACTORY: tl.constexpr,
    HAS_V0: tl.constexpr, HAS_A0: tl.constexpr, HAS_REF0: tl.constexpr,
    WRITE_SPIKES: tl.constexpr, WRITE_BITS: tl.constexpr,
    L_MULT: tl.constexpr, E: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    L = L_div * L_MULT
    pid_l, rows, mask_r, mask, offs, step = _tile(R, L, BLOCK_R, BLOCK_L)
    step_b = tl.cast(R, tl.int64) * LB
    zero = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.int32)
    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0)
    else:
        v = zero + v_init
    a = zero
    if ADAPTIVE:
        if HAS_A0:
            a = tl.load(a0_ptr + offs, mask=mask, other=0)
    ref = zero
    if REFRACTORY:
        if HAS_REF0:
            ref = tl.load(ref0_ptr + offs, mask=mask, other=0)
    # u[t] is loaded two steps ahead, as in the float forward (kernels/neuron.py)
    u_next = _load_step(u_ptr, tl.cast(0, tl.int64), T, step, offs, mask)
    u_next2 = _load_step(u_ptr, tl.cast(1, tl.int64), T, step, offs, mask)
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        u = u_next
        u_next = u_next2
        u_next2 = _load_step(u_ptr, t64 + 2, T, step, offs, mask)
        vth = tl.maximum(_sat_add(a, v_th0), v_l)
        if REFRACTORY:
            u = tl.where(ref == 0, u, 0)
        h = _sat_add(u, v)
        spike = h > vth
        if RESET_MODE == 0:
            v2 = tl.where(spike, zero + v_reset, h)
        elif RESET_MODE == 1:
            v2 = tl.where(spike, _sat(h - vth), h)
        else:
            v2 = tl.where(spike, _sat(h - dv), h)
        v = tl.maximum(_sat(_leak(v2, alpha_q) + beta_q), v_l)  # floor(v'' alpha_q / 256) + beta_q
        if ADAPTIVE:
            a = _sat_add(_leak(a, th_alpha_q), th_beta_q + tl.where(spike, th_incre, 0))
        if REFRACTORY:
            ref = tl.where(spike, zero + ref_len, tl.maximum(ref, 1) - 1)
        if WRITE_SPIKES:
            tl.store(s_ptr + t64 * step + offs, tl.where(spike, 1, 0).to(tl.uint8), mask=mask)
        if WRITE_BITS:
            _store_bits(bits_ptr + t64 * step_b, spike & mask, rows, pid_l, LB, mask_r,
                        BLOCK_R, BLOCK_L, E)
    tl.store(vT_ptr + offs, v, mask=mask)
    tl.store(aT_ptr + offs, a, mask=mask)
    tl.store(refT_ptr + offs, ref, mask=mask)


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
    v, a, ref)`` (int32 states ``[*S]``)."""
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
        shape, grid = _kn._launch_shape(R, L, dev, torch.int32, packed=write_bits, max_block=_BLOCK)
        dummy = v_last
        _neuron_int_kernel[grid](
            u, v0c if v0c is not None else dummy, a0c if a0c is not None else dummy,
            r0c if r0c is not None else dummy,
            spikes if spikes is not None else dummy, bits if bits is not None else dummy,
            v_last, a_last, ref_last, T, **shape,
            v_th0=spec.v_th0, v_reset=spec.v_reset, v_l=spec.v_l, dv=spec.dv, alpha_q=spec.alpha_q,
            beta_q=spec.beta_q, ref_len=spec.ref_len, th_alpha_q=spec.v_th_alpha_q, th_beta_q=spec.v_th_beta_q,
            th_incre=spec.v_th_incre, v_init=spec.v_init,
            RESET_MODE=spec.reset_mode, ADAPTIVE=spec.adaptive, REFRACTORY=spec.refractory,
            HAS_V0=v0c is not None, HAS_A0=a0c is not None, HAS_REF0=r0c is not None,
            WRITE_SPIKES=write_spikes, WRITE_BITS=write_bits,
        )
    return (
        spikes.view(u_seq.shape) if spikes is not None else None,
        bits.view(tuple(u_seq.shape[:-1]) + (LB,)) if bits is not None else None,
        v_last.view(S), a_last.view(S), ref_last.view(S),
    )


assert INT28_MIN == -134217728 and INT28_MAX == 134217727  # the literals in _sat
