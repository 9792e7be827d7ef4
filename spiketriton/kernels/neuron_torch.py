"""The fused neuron algorithm of ``kernels/neuron.py`` written with PyTorch ops: the CPU path.

Same interface, same saved tensors (H in the input dtype + packed spikes [+ raw threshold, packed
gate]) and the same hand-written backward as the Triton kernels, so it is fast and light on CPU where
the autograd reference (``reference/neuron.py``, the oracle) records ~10 graph nodes per step.
Each step works in fp32 (fp64 for fp64 input) on whole ``[*S]`` slices, in place where possible.
"""

from __future__ import annotations

import math

import torch

from . import neuron_cpu
from .pack_torch import pack_bits, unpack_bits
from ..spec import FAMILY_A, RESET_HARD, RESET_SOFT, NeuronSpec


def _cdt(dtype):
    return torch.promote_types(dtype, torch.float32)


def neuron_forward(x_seq, v0, a0, ref0, params, spec: NeuronSpec, store: bool, h_dtype=None, write_spikes=True,
                   fused=True):
    """Same contract as :func:`spiketriton.kernels.neuron.neuron_forward`."""
    if fused and (h_dtype is None or h_dtype == x_seq.dtype) and neuron_cpu.usable(x_seq):
        # float32/float64 on the CPU: the same algorithm as one compiled call (kernels/neuron_cpu.py)
        return neuron_cpu.neuron_forward(x_seq, v0, a0, ref0, params, spec, store, write_spikes)
    T, S = x_seq.shape[0], x_seq.shape[1:]
    cdt = _cdt(x_seq.dtype)
    dev = x_seq.device
    v = v0.to(cdt).clone() if v0 is not None else torch.full(S, spec.v_init, dtype=cdt, device=dev)
    spikes = torch.empty_like(x_seq)
    fired = torch.empty((T,) + tuple(S), dtype=torch.bool, device=dev) if spec.family != FAMILY_A else None
    h_seq = torch.empty_like(x_seq, dtype=h_dtype or x_seq.dtype) if store else None
    vth_seq = torch.empty((T,) + tuple(S), dtype=torch.float32, device=dev) if (store and spec.adaptive) else None
    gate_seq = torch.empty((T,) + tuple(S), dtype=torch.bool, device=dev) if (store and spec.refractory) else None
    floor_seq = torch.empty((T,) + tuple(S), dtype=torch.bool, device=dev) if (store and spec.has_floor) else None
    p = params.to(cdt)
    vr = spec.v_reset if spec.reset_mode == RESET_HARD else 0.0
    if spec.family == FAMILY_A:
        # Per step on [*S] slices with reusable scratch buffers (whole-[T] temporaries cost more in
        # fresh-page faults than they save in Python overhead: measured 2x slower on 2 cores), float
        # arithmetic only (bool masks are 5-10x slower than float ops on CPU). The op order is the
        # reference's, so spikes agree bit for bit.
        k = p[0]
        vth = spec.v_threshold
        direct = store and h_seq.dtype == cdt  # write H straight into the saved tensor
        hb = torch.empty(S, dtype=cdt, device=dev)
        tmp = torch.empty(S, dtype=cdt, device=dev)
        sf = torch.empty(S, dtype=cdt, device=dev)
        fmax = torch.finfo(cdt).max
        for t in range(T):
            h = h_seq[t] if direct else hb
            torch.sub(v, vr, out=tmp)                              # V - Vr
            if spec.decay_input:
                torch.sub(x_seq[t], tmp, out=h).mul_(k).add_(v)    # V + (X - (V - Vr)) k
            else:
                torch.sub(v, tmp.mul_(k), out=h).add_(x_seq[t])    # V - (V - Vr) k + X
            torch.ge(h, vth, out=sf)
            spikes[t].copy_(sf)
            if store and not direct:
                h_seq[t].copy_(h)
            # reset into the V buffer. Hard: V = min(H, fmax) (H < Vth) + Vr S, the kernel's
            # where(spike, Vr, H) also for an fp32 overflow: H - H S was NaN for H = +inf (which always
            # spikes: capped before the product with 0) and for H = -inf (which never does: kept by
            # the factor 1); a NaN H stays NaN. (A reset to 0 of a negative H >= Vth gives -0.0, equal
            # to the kernel's +0.0.) Float ops only: bool masks cost 5-10x more on the CPU (a
            # torch.where here made this loop 3x slower; this costs ~+20% over H - H S)
            if spec.reset_mode == RESET_HARD:
                torch.lt(h, vth, out=tmp)
                torch.clamp_max(h, fmax, out=v).mul_(tmp)
                if vr != 0.0:
                    v.add_(sf, alpha=vr)
            else:
                torch.sub(h, sf, alpha=vth, out=v)
        a_last = ref_last = None
    else:
        alpha, beta = p[0], p[1]
        a = a0.to(cdt).clone() if (a0 is not None and spec.adaptive) else torch.zeros(S, dtype=cdt, device=dev)
        ref = ref0.to(torch.int32).clone() if (ref0 is not None and spec.refractory) else torch.zeros(S, dtype=torch.int32, device=dev)
        for t in range(T):
            x = x_seq[t].to(cdt)
            raw = spec.v_threshold + a
            # the floors as the kernel's where(x >= v_l, x, v_l), which sends a NaN to v_l (an overflowed
            # state: inf - inf); NaN -> v_l, then the max, in float ops (a bool where costs 7x more)
            vth = raw.nan_to_num(nan=spec.v_l, posinf=math.inf, neginf=-math.inf).clamp_min_(spec.v_l) \
                if spec.adaptive else raw.clamp_min_(spec.v_l)
            if spec.refractory:
                gate = ref == 0
                h = torch.where(gate, x, 0.0).add_(v)
            else:
                h = x + v
            s = h > vth
            sf = s.to(cdt)
            fired[t] = s
            if spec.reset_mode == RESET_HARD:
                v2 = torch.where(s, torch.tensor(spec.v_reset, dtype=cdt, device=dev), h)
            elif spec.reset_mode == RESET_SOFT:
                # as the kernel's where(spike, h - vth, h): only an adaptive threshold can overflow (h - 0 * inf)
                v2 = torch.where(s, h - vth, h) if spec.adaptive else h - sf * vth
            else:
                v2 = h - sf * spec.dv
            v = (v2 * alpha).add_(beta)
            if floor_seq is not None:
                torch.ge(v, spec.v_l, out=floor_seq[t])
            v = v.nan_to_num_(nan=spec.v_l, posinf=math.inf, neginf=-math.inf).clamp_min_(spec.v_l)
            if spec.adaptive:
                a = a * spec.v_th_alpha + spec.v_th_beta + sf * spec.v_th_incre
            if spec.refractory:
                ref = torch.where(s, spec.ref_len, (ref - 1).clamp_min_(0)).to(torch.int32)
            if store:
                h_seq[t] = h
                if spec.adaptive:
                    vth_seq[t] = raw
                if spec.refractory:
                    gate_seq[t] = gate
        a_last = a if spec.adaptive else None
        ref_last = ref if spec.refractory else None
    if spec.family != FAMILY_A:
        spikes.copy_(fired)
    saved = (None, pack_bits(spikes, binary=True) if not write_spikes else None, None, None, None)
    if not write_spikes:
        spikes = None  # the packed spikes are the output (spikes were a per-call temporary here)
    if store:
        saved = (
            h_seq,
            saved[1] if saved[1] is not None else pack_bits(spikes, binary=True),
            vth_seq,
            pack_bits(gate_seq) if gate_seq is not None else None,
            pack_bits(floor_seq) if floor_seq is not None else None,
        )
    return spikes, v, a_last, ref_last, saved


def neuron_backward(grad_spikes, grad_v_last, grad_a_last, saved, v0, params, spec: NeuronSpec,
                    need_v0: bool, need_a0: bool, need_params: bool, fused=True):
    """Same contract as :func:`spiketriton.kernels.neuron.neuron_backward` (the kernel's algorithm)."""
    h_seq, bits, vth_seq, gate_bits, floor_bits = saved
    if fused and grad_spikes.dtype == h_seq.dtype and neuron_cpu.usable(h_seq):
        if spec.family == FAMILY_A:
            return neuron_cpu.neuron_backward_a(grad_spikes, grad_v_last, saved, v0, params, spec, need_v0, need_params)
        return neuron_cpu.neuron_backward_b(grad_spikes, grad_v_last, grad_a_last, saved, params, spec, need_v0,
                                            need_a0, need_params)
    T, S = h_seq.shape[0], h_seq.shape[1:]
    L = S[-1]
    cdt = _cdt(h_seq.dtype)
    gates = unpack_bits(gate_bits, L, torch.bool) if gate_bits is not None else None
    p = params.to(cdt)
    gv = grad_v_last.to(cdt) if grad_v_last is not None else torch.zeros(S, dtype=cdt, device=h_seq.device)
    gp = torch.zeros(2, dtype=cdt, device=h_seq.device)
    der = spec.surrogate.derivative
    vr = spec.v_reset if spec.reset_mode == RESET_HARD else 0.0
    if spec.family == FAMILY_A:
        # gH = dS sg + gV ((1-S) + (Vr-H) sg)  [hard]   or   dS sg + gV (1 - Vth sg)  [soft]
        # (the dV/dS terms vanish with detach_reset); gX = gH k (or gH); gV[t-1] = gH (1-k).
        # Per step, in place, on reusable [*S] buffers, float arithmetic only.
        k = p[0]
        keep = 1.0 - k
        vth = spec.v_threshold
        dev = h_seq.device
        hb = torch.empty(S, dtype=cdt, device=dev)
        sf = torch.empty(S, dtype=cdt, device=dev)
        sg = torch.empty(S, dtype=cdt, device=dev)
        gh = torch.empty(S, dtype=cdt, device=dev)
        gvb = torch.zeros(S, dtype=cdt, device=dev) if grad_v_last is None else grad_v_last.to(cdt).clone()
        gx = torch.empty_like(h_seq, dtype=grad_spikes.dtype)  # the input's dtype (h may be fp32)
        direct = gx.dtype == cdt
        hard = spec.reset_mode == RESET_HARD
        for t in range(T - 1, -1, -1):
            h = h_seq[t] if h_seq.dtype == cdt else hb.copy_(h_seq[t])
            if hard:
                sf.copy_(unpack_bits(bits[t], L, torch.uint8))
            spec.surrogate.derivative_(torch.sub(h, vth, out=sg))
            if spec.detach_reset:
                torch.mul(grad_spikes[t], sg, out=gh)
                if hard:
                    gvb.addcmul_(gvb, sf, value=-1.0)                                   # gV (1 - S)
                gh.add_(gvb)
            elif hard:
                torch.sub(h, vr, out=gh).neg_().mul_(gvb).add_(grad_spikes[t]).mul_(sg)  # sg (dS + gV (Vr - H))
                gh.add_(gvb).addcmul_(gvb, sf, value=-1.0)                               # + gV (1 - S)
            else:
                torch.mul(gvb, -vth, out=gh).add_(grad_spikes[t]).mul_(sg).add_(gvb)    # sg (dS - gV Vth) + gV
            if spec.decay_input:
                torch.mul(gh, k, out=gx[t]) if direct else gx[t].copy_(gh * k)
            else:
                gx[t].copy_(gh)
            if need_params:
                # dH/dk with V[t-1] the state after step t-1's reset (or the initial state)
                if t > 0:
                    vp = h_seq[t - 1].to(cdt)
                    sp = unpack_bits(bits[t - 1], L, cdt)
                    vp = vp - vp * sp + sp * vr if hard else vp - sp * vth
                elif v0 is not None:
                    vp = v0.to(cdt)
                else:
                    vp = torch.full(S, spec.v_init, dtype=cdt, device=dev)
                dh_dk = (h - vp).div_(k) if spec.decay_input else (vp - vr).neg_()
                gp[0] += torch.dot(gh.reshape(-1), dh_dk.reshape(-1))
            torch.mul(gh, keep, out=gvb)
        gv = gvb
    else:
        alpha = p[0]
        fired = unpack_bits(bits, L, torch.bool)
        above = unpack_bits(floor_bits, L, torch.bool) if floor_bits is not None else None
        gx = torch.empty_like(h_seq, dtype=grad_spikes.dtype)
        ga = torch.zeros(S, dtype=cdt, device=h_seq.device)
        if grad_a_last is not None and spec.adaptive:
            ga = grad_a_last.to(cdt).clone()
        vth_const = max(spec.v_threshold, spec.v_l)
        for t in range(T - 1, -1, -1):
            h = h_seq[t].to(cdt)
            s = fired[t]
            sf = s.to(cdt)
            if spec.adaptive:
                raw = vth_seq[t].to(cdt)
                vth = raw.clamp_min(spec.v_l)
            else:
                vth = vth_const
            if spec.reset_mode == RESET_HARD:
                v2 = torch.where(s, spec.v_reset, h)
            elif spec.reset_mode == RESET_SOFT:
                v2 = h - sf * vth
            else:
                v2 = h - sf * spec.dv
            g_pre = gv * above[t] if above is not None else gv  # floor: the forward's decision, saved
            if need_params:
                gp[0] += (g_pre * v2).sum()
                gp[1] += g_pre.sum()
            g_v2 = g_pre * alpha
            g_s = grad_spikes[t].to(cdt)
            if spec.adaptive:
                g_s = g_s + ga * spec.v_th_incre
            g_vth = None
            if spec.reset_mode == RESET_HARD:
                g_h = g_v2 * (1.0 - sf)
                if not spec.detach_reset:
                    g_s = g_s + g_v2 * (spec.v_reset - h)
            elif spec.reset_mode == RESET_SOFT:
                g_h = g_v2
                g_vth = -g_v2 * sf
                if not spec.detach_reset:
                    g_s = g_s - g_v2 * vth
            else:
                g_h = g_v2
                if not spec.detach_reset:
                    g_s = g_s - g_v2 * spec.dv
            sg = der(h - vth)
            g_h = g_h + g_s * sg
            gx[t] = g_h * gates[t] if gates is not None else g_h
            gv = g_h
            if spec.adaptive:
                g_vth = -g_s * sg if g_vth is None else g_vth - g_s * sg
                ga = ga * spec.v_th_alpha + torch.where(raw >= spec.v_l, g_vth, 0.0)
    gv0 = gv.to(_out(cdt)) if need_v0 else None
    ga0 = ga.to(_out(cdt)) if (need_a0 and spec.adaptive) else None
    gps = gp[: spec.n_params].to(_out(cdt)) if need_params else None
    return gx, gv0, ga0, gps


def _out(cdt):
    return cdt  # fp32, or fp64 on the float64 path
