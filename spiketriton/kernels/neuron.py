"""Fused multi-step neuron kernels (forward and backward) for both neuron families of DESIGN.md.

Layout: a sequence ``[T, B, *features]`` is viewed as ``[T, R, L]`` with ``L`` its last dimension and
``R`` everything between T and L. Each program owns a ``[BLOCK_R, BLOCK_L]`` tile of neurons and walks
the T steps with the state in fp32 registers, so the input is read once and the spikes written once.
``BLOCK_L`` is a multiple of 8 so that a tile also owns whole bytes of the packed spikes (bits along
the last dimension, LSB first, the last dimension zero-padded to a multiple of 8).

Saved for backward (only when a gradient is needed, ``STORE``):
- ``h``: the potential compared with the threshold (family A: H; family B: v'), in the input dtype;
- ``bits``: the spikes, packed 8 per byte (so bf16/fp16 backward never re-decides a spike from a
  rounded H);
- family B with an adaptive threshold: the raw threshold ``v_th0 + a[t-1]`` in fp32;
- family B with a refractory period: the input gate ``ref[t-1] == 0``, packed 8 per byte;
- family B with a floor ``v_l``: whether the leaked potential was at or above the floor, packed 8 per
  byte (recomputing it from a bf16 H could take the other branch near the floor).
``h`` is fp32 instead of the input dtype when a learnable decay (PLIF) needs its gradient, which
is computed from H and V[t-1] = reset(H[t-1]) and would amplify H's half-precision rounding.
Everything else the backward needs is recomputed from these.

No nn.Module and no autograd here: launchers allocate, launch and return tensors.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ..spec import RESET_HARD, NeuronSpec

# Neurons per program. Each program walks all T steps for its tile, so the grid is small for small
# layers; 1024 keeps 8 fp32 values per thread at 4 warps. Not yet tuned on a GPU (no device was
# lent to the session that wrote this); bench/neuron_gpu.py measures it.
_BLOCK = 1024
_NUM_WARPS = 4


# --------------------------------------------------------------------------------------------- #
# Device helpers
# --------------------------------------------------------------------------------------------- #


@triton.jit
def _surrogate_grad(x, SG_ID: tl.constexpr, alpha):
    """d spike / d x for x = H - V_th. Same closed forms and ids as spiketriton.surrogate."""
    if SG_ID == 0:  # Sigmoid
        sg = tl.sigmoid(alpha * x)
        g = alpha * sg * (1.0 - sg)
    elif SG_ID == 1:  # ATan
        z = 1.5707963267948966 * alpha * x
        g = (0.5 * alpha) / (1.0 + z * z)
    elif SG_ID == 2:  # PiecewiseQuadratic
        ax = tl.abs(x)
        g = tl.where(ax <= 1.0 / alpha, alpha - alpha * alpha * ax, 0.0)
    elif SG_ID == 3:  # PiecewiseExp
        g = 0.5 * alpha * tl.exp(-alpha * tl.abs(x))
    elif SG_ID == 4:  # SoftSign
        d = 1.0 / alpha + tl.abs(x)
        g = 1.0 / (2.0 * alpha * d * d)
    elif SG_ID == 5:  # SuperSpike
        d = tl.abs(x) + 1.0
        g = alpha / (d * d)
    elif SG_ID == 6:  # Erf
        z = alpha * x
        g = (alpha * 0.5641895835477563) * tl.exp(-z * z)
    else:  # Rect (alpha is the window width)
        g = tl.where(tl.abs(x) < 0.5 * alpha, 1.0 / alpha, 0.0)
    return g


@triton.jit
def _tile(R, L, LB, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's [BLOCK_R, BLOCK_L] tile of the [R, L] neurons: indices, masks, int64 offsets,
    and the int64 strides of one time step (T * R * L may exceed 2^31; tl.cast also accepts the
    interpreter's Python ints)."""
    pid_r = tl.program_id(0).to(tl.int64)
    pid_l = tl.program_id(1).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_r = rows < R
    mask = mask_r[:, None] & (cols[None, :] < L)
    offs = rows[:, None] * L + cols[None, :]
    step = tl.cast(R, tl.int64) * L     # elements per time step
    step_b = tl.cast(R, tl.int64) * LB  # bytes per time step of packed data
    return pid_l, rows, cols, mask_r, mask, offs, step, step_b


@triton.jit
def _store_bits(ptr, flag, rows, pid_l, LB, mask_r, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """Pack a [BLOCK_R, BLOCK_L] 0/1 int32 tile into bytes (LSB first) and store [BLOCK_R, BLOCK_L/8]."""
    shift = tl.arange(0, BLOCK_L) % 8
    b = tl.reshape(flag << shift[None, :], [BLOCK_R, BLOCK_L // 8, 8])
    packed = tl.sum(b, axis=2).to(tl.uint8)
    cols = pid_l * (BLOCK_L // 8) + tl.arange(0, BLOCK_L // 8)
    m = mask_r[:, None] & (cols[None, :] < LB)
    tl.store(ptr + rows[:, None] * LB + cols[None, :], packed, mask=m)


@triton.jit
def _load_bits(ptr, rows, cols, LB, mask):
    """Read the bit of every neuron of a tile from packed bytes; returns 0/1 int32."""
    byte = tl.load(ptr + rows[:, None] * LB + (cols // 8)[None, :], mask=mask, other=0)
    return (byte.to(tl.int32) >> (cols % 8)[None, :]) & 1


# --------------------------------------------------------------------------------------------- #
# Forward
# --------------------------------------------------------------------------------------------- #


@triton.jit
def _neuron_fwd_kernel(
    x_ptr,        # [T, R, L] input current (fp32 / fp16 / bf16), contiguous
    v0_ptr,       # [R, L] fp32 carried-in membrane potential (read if HAS_V0)
    a0_ptr,       # [R, L] fp32 carried-in adaptive threshold part (read if HAS_A0)
    ref0_ptr,     # [R, L] int32 carried-in refractory counter (read if HAS_REF0)
    p_ptr,        # fp32 learnable scalars: family A [k = 1/tau]; family B [alpha, beta]
    s_ptr,        # [T, R, L] out: spikes, dtype of x (written if WRITE_SPIKES)
    h_ptr,        # [T, R, L] out: H (A) / v' (B), dtype of x or fp32 (written if STORE)
    bits_ptr,     # [T, R, LB] out: packed spikes, uint8 (written if WRITE_BITS)
    vth_ptr,      # [T, R, L] out: raw threshold v_th0 + a[t-1], fp32 (written if STORE and ADAPTIVE)
    gate_ptr,     # [T, R, LB] out: packed refractory gate, uint8 (written if STORE and REFRACTORY)
    floor_ptr,    # [T, R, LB] out: packed "leaked v >= v_l", uint8 (written if STORE and HAS_FLOOR)
    vT_ptr,       # [R, L] out: fp32 membrane potential after the last step
    aT_ptr,       # [R, L] out: fp32 adaptive part after the last step (written if ADAPTIVE)
    refT_ptr,     # [R, L] out: int32 refractory counter after the last step (written if REFRACTORY)
    T, R, L, LB,  # steps (runtime: no recompilation per T), rows, last dim, bytes per packed row
    v_th,         # A: V_th; B: v_th0
    v_reset,      # value after a hard reset (0 for soft reset in family A)
    v_init,       # membrane potential when no state is carried in
    v_l,          # B: floor of v and of the threshold (-inf: none)
    dv,           # B: SOFT_CONSTANT decrement
    th_alpha, th_beta, th_incre,  # B: adaptive threshold decay, drift, increment per spike
    ref_len,      # B: refractory length in steps
    FAMILY: tl.constexpr,       # 0: charge-fire-reset (IF/LIF/PLIF); 1: integrate-fire-reset-leak
    DECAY_INPUT: tl.constexpr,  # A: H = V + (X - (V - Vr)) k   instead of   H = V - (V - Vr) k + X
    RESET_MODE: tl.constexpr,   # 0 hard, 1 soft (subtract threshold), 2 soft constant (subtract dv)
    ADAPTIVE: tl.constexpr, REFRACTORY: tl.constexpr, HAS_FLOOR: tl.constexpr,
    HAS_V0: tl.constexpr, HAS_A0: tl.constexpr, HAS_REF0: tl.constexpr,
    STORE: tl.constexpr,        # write what the backward needs (with the bits)
    WRITE_SPIKES: tl.constexpr, WRITE_BITS: tl.constexpr,  # float spikes / packed spikes
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_l, rows, cols, mask_r, mask, offs, step, step_b = _tile(R, L, LB, BLOCK_R, BLOCK_L)

    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        v = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.float32) + v_init
    if FAMILY == 0:
        k = tl.load(p_ptr).to(tl.float32)
    else:
        alpha = tl.load(p_ptr).to(tl.float32)
        beta = tl.load(p_ptr + 1).to(tl.float32)
    if ADAPTIVE:
        if HAS_A0:
            a = tl.load(a0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            a = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.float32)
    if REFRACTORY:
        if HAS_REF0:
            ref = tl.load(ref0_ptr + offs, mask=mask, other=0)
        else:
            ref = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.int32)

    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        x = tl.load(x_ptr + t64 * step + offs, mask=mask, other=0.0).to(tl.float32)
        if FAMILY == 0:
            if DECAY_INPUT:
                h = v + (x - (v - v_reset)) * k
            else:
                h = v - (v - v_reset) * k + x
            spike = (h - v_th) >= 0.0
            if RESET_MODE == 0:
                v = tl.where(spike, v_reset, h)
            else:
                v = tl.where(spike, h - v_th, h)
        else:
            if ADAPTIVE:
                raw = v_th + a
                vth = tl.where(raw >= v_l, raw, v_l)
            else:
                vth = tl.maximum(v_th + tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.float32), v_l)
            if REFRACTORY:
                gate = ref == 0
                h = tl.where(gate, x, 0.0) + v
            else:
                h = x + v
            spike = (h - vth) > 0.0
            if RESET_MODE == 0:
                v2 = tl.where(spike, v_reset, h)
            elif RESET_MODE == 1:
                v2 = tl.where(spike, h - vth, h)
            else:
                v2 = tl.where(spike, h - dv, h)
            v = alpha * v2 + beta
            above = v >= v_l
            v = tl.where(above, v, v_l)
            if ADAPTIVE:
                a = th_alpha * a + th_beta + tl.where(spike, th_incre, 0.0)
            if REFRACTORY:
                ref = tl.where(spike, ref_len, tl.maximum(ref - 1, 0))
        if WRITE_SPIKES:
            # bool -> float via where: the interpreter cannot cast int1 to bf16 directly
            tl.store(s_ptr + t64 * step + offs, tl.where(spike, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=mask)
        if WRITE_BITS:
            # padding lanes must pack as 0 whatever the threshold
            _store_bits(bits_ptr + t64 * step_b, tl.where(spike & mask, 1, 0), rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L)
        if STORE:
            tl.store(h_ptr + t64 * step + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
            if ADAPTIVE:
                tl.store(vth_ptr + t64 * step + offs, raw, mask=mask)
            if REFRACTORY:
                _store_bits(gate_ptr + t64 * step_b, tl.where(gate & mask, 1, 0), rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L)
            if HAS_FLOOR:
                _store_bits(floor_ptr + t64 * step_b, tl.where(above & mask, 1, 0), rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L)

    tl.store(vT_ptr + offs, v, mask=mask)
    if ADAPTIVE:
        tl.store(aT_ptr + offs, a, mask=mask)
    if REFRACTORY:
        tl.store(refT_ptr + offs, ref, mask=mask)


# --------------------------------------------------------------------------------------------- #
# Backward
# --------------------------------------------------------------------------------------------- #


@triton.jit
def _neuron_bwd_kernel(
    gs_ptr,       # [T, R, L] grad wrt spikes (any float dtype)
    gvT_ptr,      # [R, L] grad wrt v after the last step (read if HAS_GVT)
    gaT_ptr,      # [R, L] grad wrt the adaptive part after the last step (read if HAS_GAT)
    h_ptr,        # [T, R, L] saved H / v' (dtype of x)
    bits_ptr,     # [T, R, LB] saved packed spikes
    vth_ptr,      # [T, R, L] saved raw threshold (ADAPTIVE)
    gate_ptr,     # [T, R, LB] saved packed refractory gate (REFRACTORY)
    floor_ptr,    # [T, R, LB] saved packed floor decision (HAS_FLOOR)
    v0_ptr,       # [R, L] carried-in v (read if HAS_V0 and LEARN and family A)
    p_ptr,        # fp32 learnable scalars (as forward)
    gx_ptr,       # [T, R, L] out: grad wrt x (dtype of x)
    gv0_ptr,      # [R, L] out: fp32 grad wrt the carried-in v (written if GRAD_V0)
    ga0_ptr,      # [R, L] out: fp32 grad wrt the carried-in adaptive part (written if GRAD_A0)
    gp_ptr,       # [n_programs, 2] out: fp32 per-program partial grads of params (written if LEARN)
    T, R, L, LB,
    v_th, v_reset, v_init, v_l, dv, th_alpha, th_beta, th_incre,
    sg_alpha,     # surrogate parameter
    FAMILY: tl.constexpr, DECAY_INPUT: tl.constexpr, RESET_MODE: tl.constexpr,
    DETACH_RESET: tl.constexpr, SG_ID: tl.constexpr,
    ADAPTIVE: tl.constexpr, REFRACTORY: tl.constexpr, HAS_FLOOR: tl.constexpr,
    HAS_V0: tl.constexpr, HAS_GVT: tl.constexpr, GRAD_V0: tl.constexpr, LEARN: tl.constexpr,
    HAS_GAT: tl.constexpr, GRAD_A0: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_l, rows, cols, mask_r, mask, offs, step, step_b = _tile(R, L, LB, BLOCK_R, BLOCK_L)
    zero = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.float32)

    if HAS_GVT:
        gv = tl.load(gvT_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        gv = zero
    if FAMILY == 0:
        k = tl.load(p_ptr).to(tl.float32)
        # H of family A is compared with a constant threshold
        vth = v_th
    else:
        alpha = tl.load(p_ptr).to(tl.float32)  # (beta's gradient needs no beta: the floor decision is saved)
        if HAS_GAT:
            ga = tl.load(gaT_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            ga = zero  # grad wrt the adaptive part a[t]
        if not ADAPTIVE:
            vth = tl.maximum(v_th + zero, v_l)
    gp0 = zero  # partial grad of params[0] (k or alpha)
    gp1 = zero  # partial grad of params[1] (beta)

    # H and spike of step t are prefetched one step ahead: family A's PLIF gradient needs the
    # state V[t-1] = reset(H[t-1], S[t-1]) at step t, which is then reused as step t-1's H.
    t_last = tl.cast(T - 1, tl.int64)
    h = tl.load(h_ptr + t_last * step + offs, mask=mask, other=0.0).to(tl.float32)
    s = _load_bits(bits_ptr + t_last * step_b, rows, cols, LB, mask).to(tl.float32)
    for i in range(T):
        t = tl.cast(T - 1 - i, tl.int64)
        t_tile = offs * 0 + t  # the interpreter wants masks as full tiles, not scalar predicates
        has_prev = t_tile > 0
        mask_p = mask & has_prev
        h_prev = tl.load(h_ptr + (t - 1) * step + offs, mask=mask_p, other=0.0).to(tl.float32)
        s_prev = _load_bits(bits_ptr + (t - 1) * step_b, rows, cols, LB, mask_p).to(tl.float32)
        gs = tl.load(gs_ptr + t * step + offs, mask=mask, other=0.0).to(tl.float32)

        if FAMILY == 0:
            sg = _surrogate_grad(h - vth, SG_ID, sg_alpha)
            if RESET_MODE == 0:
                dv_dh = 1.0 - s
                dv_ds = v_reset - h
            else:
                dv_dh = 1.0 + zero
                dv_ds = -vth + zero
            if DETACH_RESET:
                gh = gs * sg + gv * dv_dh
            else:
                gh = gs * sg + gv * (dv_dh + dv_ds * sg)
            if DECAY_INPUT:
                gx = gh * k
            else:
                gx = gh
            if LEARN:
                # V[t-1]: the previous step's state after its reset, or the carried-in/initial v
                if RESET_MODE == 0:
                    v_prev = tl.where(s_prev > 0.0, v_reset, h_prev)
                else:
                    v_prev = h_prev - s_prev * vth
                if HAS_V0:
                    v_first = tl.load(v0_ptr + offs, mask=mask & (t_tile == 0), other=0.0).to(tl.float32)
                else:
                    v_first = v_init + zero
                v_prev = tl.where(has_prev, v_prev, v_first)
                if DECAY_INPUT:
                    # dH/dk = X - (V - Vr) = (H - V) / k   (X itself is not saved)
                    gp0 += gh * (h - v_prev) / k
                else:
                    gp0 += gh * (v_reset - v_prev)
            gv = gh * (1.0 - k)
        else:
            if ADAPTIVE:
                raw = tl.load(vth_ptr + t * step + offs, mask=mask, other=0.0)
                vth = tl.where(raw >= v_l, raw, v_l)
            if RESET_MODE == 0:
                v2 = tl.where(s > 0.0, v_reset, h)
            elif RESET_MODE == 1:
                v2 = h - s * vth
            else:
                v2 = h - s * dv
            if HAS_FLOOR:                              # floor: the forward's decision, saved
                g_pre = gv * _load_bits(floor_ptr + t * step_b, rows, cols, LB, mask).to(tl.float32)
            else:
                g_pre = gv
            if LEARN:
                gp0 += g_pre * v2
                gp1 += g_pre
            g_v2 = g_pre * alpha                       # leak
            g_s = gs
            if ADAPTIVE:
                g_s += ga * th_incre                   # a[t] = th_alpha a[t-1] + th_beta + s th_incre
            g_vth = zero
            if RESET_MODE == 0:
                g_h = g_v2 * (1.0 - s)
                if not DETACH_RESET:
                    g_s += g_v2 * (v_reset - h)
            elif RESET_MODE == 1:
                g_h = g_v2
                g_vth = -g_v2 * s
                if not DETACH_RESET:
                    g_s -= g_v2 * vth
            else:
                g_h = g_v2
                if not DETACH_RESET:
                    g_s -= g_v2 * dv
            sg = _surrogate_grad(h - vth, SG_ID, sg_alpha)
            g_h += g_s * sg
            g_vth -= g_s * sg
            if REFRACTORY:
                gate = _load_bits(gate_ptr + t * step_b, rows, cols, LB, mask).to(tl.float32)
                gx = g_h * gate
            else:
                gx = g_h
            gv = g_h
            if ADAPTIVE:
                ga = ga * th_alpha + tl.where(raw >= v_l, g_vth, 0.0)
        tl.store(gx_ptr + t * step + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        h = h_prev
        s = s_prev

    if GRAD_V0:
        tl.store(gv0_ptr + offs, gv, mask=mask)
    if GRAD_A0:
        tl.store(ga0_ptr + offs, ga, mask=mask)
    if LEARN:
        pid = tl.program_id(0).to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
        tl.store(gp_ptr + pid * 2, tl.sum(tl.sum(tl.where(mask, gp0, 0.0), axis=1), axis=0))
        tl.store(gp_ptr + pid * 2 + 1, tl.sum(tl.sum(tl.where(mask, gp1, 0.0), axis=1), axis=0))


# --------------------------------------------------------------------------------------------- #
# Launchers
# --------------------------------------------------------------------------------------------- #


def _tiles(R: int, L: int):
    block_l = min(max(triton.next_power_of_2(L), 8), _BLOCK)
    block_r = max(_BLOCK // block_l, 1)
    block_r = min(block_r, max(triton.next_power_of_2(R), 1))
    return block_r, block_l, (triton.cdiv(R, block_r), triton.cdiv(L, block_l))


def _scalars(spec: NeuronSpec):
    v_reset = spec.v_reset if spec.reset_mode == RESET_HARD else 0.0
    return dict(
        v_th=float(spec.v_threshold), v_reset=float(v_reset), v_init=float(spec.v_init),
        v_l=float(spec.v_l), dv=float(spec.dv),
        th_alpha=float(spec.v_th_alpha), th_beta=float(spec.v_th_beta), th_incre=float(spec.v_th_incre),
    )


def _as_trl(t: torch.Tensor, R: int) -> torch.Tensor:
    """View ``[T, *S]`` as ``[T, R, L]`` (contiguous)."""
    return t.contiguous().view(t.shape[0], R, t.shape[-1])


def neuron_forward(
    x_seq: torch.Tensor,
    v0: Optional[torch.Tensor],
    a0: Optional[torch.Tensor],
    ref0: Optional[torch.Tensor],
    params: torch.Tensor,
    spec: NeuronSpec,
    store: bool,
    h_dtype: Optional[torch.dtype] = None,
    write_spikes: bool = True,
):
    """Launch the forward kernel.

    ``x_seq [T, *S]`` float; states ``[*S]`` (v0/a0 fp32, ref0 int32) or None; ``params`` fp32.
    Returns ``(spikes, v_last, a_last, ref_last, saved)`` where ``saved`` is
    ``(h, bits, vth, gate, floor)`` (None entries where not needed; all None unless ``store``, except
    ``bits``, also written when ``write_spikes`` is False: the packed spikes are then the output and
    ``spikes`` is None); ``h`` is kept in ``h_dtype`` (default: the input dtype). ``a_last``/``ref_last`` are None
    unless the spec is adaptive/refractory.
    """
    T = x_seq.shape[0]
    S = x_seq.shape[1:]
    L = S[-1]
    R = math.prod(S[:-1])
    LB = triton.cdiv(L, 8)
    dev = x_seq.device
    x = _as_trl(x_seq, R)
    spikes = torch.empty_like(x) if write_spikes else None
    write_bits = store or not write_spikes
    v_last = torch.empty((R, L), device=dev, dtype=torch.float32)
    a_last = torch.empty((R, L), device=dev, dtype=torch.float32) if spec.adaptive else None
    ref_last = torch.empty((R, L), device=dev, dtype=torch.int32) if spec.refractory else None
    h = bits = vth = gate = floor = None
    if write_bits:
        bits = torch.empty((T, R, LB), device=dev, dtype=torch.uint8)
    if store:
        h = torch.empty_like(x, dtype=h_dtype or x.dtype)
        if spec.adaptive:
            vth = torch.empty((T, R, L), device=dev, dtype=torch.float32)
        if spec.refractory:
            gate = torch.empty((T, R, LB), device=dev, dtype=torch.uint8)
        if spec.has_floor:
            floor = torch.empty((T, R, LB), device=dev, dtype=torch.uint8)
    dummy = v_last  # placeholder for pointers a constexpr flag keeps unread/unwritten
    v0c = v0.contiguous().view(R, L) if v0 is not None else None
    a0c = a0.contiguous().view(R, L) if (a0 is not None and spec.adaptive) else None
    ref0c = ref0.contiguous().view(R, L) if (ref0 is not None and spec.refractory) else None
    block_r, block_l, grid = _tiles(R, L)
    if T > 0 and R * L > 0:
        _neuron_fwd_kernel[grid](
            x, _or(v0c, dummy), _or(a0c, dummy), _or(ref0c, dummy), params,
            _or(spikes, dummy), _or(h, dummy), _or(bits, dummy), _or(vth, dummy), _or(gate, dummy), _or(floor, dummy),
            v_last, _or(a_last, dummy), _or(ref_last, dummy),
            T, R, L, LB, **_scalars(spec), ref_len=int(spec.ref_len),
            FAMILY=spec.family, DECAY_INPUT=spec.decay_input, RESET_MODE=spec.reset_mode,
            ADAPTIVE=spec.adaptive, REFRACTORY=spec.refractory, HAS_FLOOR=spec.has_floor,
            HAS_V0=v0c is not None, HAS_A0=a0c is not None, HAS_REF0=ref0c is not None,
            STORE=store, WRITE_SPIKES=write_spikes, WRITE_BITS=write_bits, BLOCK_R=block_r, BLOCK_L=block_l, num_warps=_NUM_WARPS,
        )
    elif T == 0:  # no step: the state passes through
        v_last = v0c.float().clone() if v0c is not None else torch.full((R, L), spec.v_init, device=dev)
        if a_last is not None:
            a_last = a0c.float().clone() if a0c is not None else torch.zeros((R, L), device=dev)
        if ref_last is not None:
            ref_last = ref0c.clone() if ref0c is not None else torch.zeros((R, L), dtype=torch.int32, device=dev)
    return (
        spikes.view(x_seq.shape) if spikes is not None else None,
        v_last.view(S),
        a_last.view(S) if a_last is not None else None,
        ref_last.view(S) if ref_last is not None else None,
        (h, bits, vth, gate, floor),
    )


def neuron_backward(
    grad_spikes: torch.Tensor,
    grad_v_last: Optional[torch.Tensor],
    grad_a_last: Optional[torch.Tensor],
    saved,
    v0: Optional[torch.Tensor],
    params: torch.Tensor,
    spec: NeuronSpec,
    need_v0: bool,
    need_a0: bool,
    need_params: bool,
):
    """Launch the backward kernel. Returns ``(grad_x [T, *S] in the dtype of h, grad_v0 fp32 or None,
    grad_a0 fp32 or None, grad_params fp32 [n_params] or None)``."""
    h, bits, vth, gate, floor = saved
    T, R, L = h.shape
    LB = bits.shape[-1]
    S = grad_spikes.shape[1:]
    gs = _as_trl(grad_spikes, R)
    gx = torch.empty_like(h, dtype=grad_spikes.dtype)  # the input's dtype (h may be kept in fp32)
    gv0 = torch.empty((R, L), device=h.device, dtype=torch.float32) if need_v0 else None
    need_a0 = need_a0 and spec.adaptive
    ga0 = torch.empty((R, L), device=h.device, dtype=torch.float32) if need_a0 else None
    gaT = grad_a_last.contiguous().view(R, L) if (grad_a_last is not None and spec.adaptive) else None
    block_r, block_l, grid = _tiles(R, L)
    n_prog = grid[0] * grid[1]
    gp = torch.empty((n_prog, 2), device=h.device, dtype=torch.float32) if need_params else None
    gvT = grad_v_last.contiguous().view(R, L) if grad_v_last is not None else None
    v0c = v0.contiguous().view(R, L) if v0 is not None else None
    dummy = gx
    _neuron_bwd_kernel[grid](
        gs, _or(gvT, dummy), _or(gaT, dummy), h, bits, _or(vth, dummy), _or(gate, dummy), _or(floor, dummy), _or(v0c, dummy), params,
        gx, _or(gv0, dummy), _or(ga0, dummy), _or(gp, dummy),
        T, R, L, LB, **_scalars(spec), sg_alpha=float(spec.surrogate.alpha),
        FAMILY=spec.family, DECAY_INPUT=spec.decay_input, RESET_MODE=spec.reset_mode,
        DETACH_RESET=spec.detach_reset, SG_ID=spec.surrogate.id,
        ADAPTIVE=spec.adaptive, REFRACTORY=spec.refractory, HAS_FLOOR=spec.has_floor,
        HAS_V0=v0c is not None, HAS_GVT=gvT is not None, GRAD_V0=need_v0,
        LEARN=need_params, HAS_GAT=gaT is not None, GRAD_A0=need_a0,
        BLOCK_R=block_r, BLOCK_L=block_l, num_warps=_NUM_WARPS,
    )
    gp_sum = gp.sum(0)[: spec.n_params] if need_params else None
    return (
        gx.view((T,) + tuple(S)),
        gv0.view(S) if gv0 is not None else None,
        ga0.view(S) if ga0 is not None else None,
        gp_sum,
    )


def _or(t, default):
    return t if t is not None else default
