"""Reference multi-step neuron: plain, autograd-able PyTorch in fp32, one line per equation of
the specification (docs/spec/neurons.md). The Triton kernels must agree with it (spikes exactly, everything else within float
rounding), including every gradient autograd derives from it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..spec import FAMILY_A, RESET_HARD, RESET_SOFT, NeuronSpec


class NeuronTrace(NamedTuple):
    spikes: torch.Tensor   # [T, ...] in the input dtype
    v: torch.Tensor        # [...] fp32 (fp64 for fp64 input) membrane potential after the last step
    a: torch.Tensor        # [...] fp32 adaptive threshold part after the last step (zeros for family A)
    ref: torch.Tensor      # [...] int32 refractory counter after the last step (zeros for family A)
    h: torch.Tensor        # [T, ...] fp32 potential compared with the threshold (H of family A, v' of B)
    vth: torch.Tensor      # [T, ...] fp32 threshold in force at each step


def neuron_reference(
    x_seq: torch.Tensor,
    v0: Optional[torch.Tensor],
    a0: Optional[torch.Tensor],
    ref0: Optional[torch.Tensor],
    params: torch.Tensor,
    spec: NeuronSpec,
) -> NeuronTrace:
    """Run ``spec`` over ``x_seq [T, ...]``. ``v0``/``a0``/``ref0`` are carried-in state or None.

    ``params`` is ``[k]`` (family A, k = 1/tau) or ``[alpha, beta]`` (family B); gradients flow to
    ``x_seq``, ``v0``, ``a0`` (the adaptive part of the threshold) and ``params``. The refractory
    counter is an integer state without gradient.
    """
    cdt = torch.promote_types(x_seq.dtype, torch.float32)  # fp32, or fp64 for fp64 input
    x = x_seq.to(cdt)
    shape = x.shape[1:]
    v = v0.to(cdt) if v0 is not None else x.new_full(shape, spec.v_init)
    sg = spec.surrogate
    spikes, hs, vths = [], [], []
    if spec.family == FAMILY_A:
        k = params.to(cdt).reshape(())
        vr = spec.v_reset if spec.reset_mode == RESET_HARD else 0.0
        for t in range(x.shape[0]):
            if spec.decay_input:
                h = v + (x[t] - (v - vr)) * k
            else:
                h = v - (v - vr) * k + x[t]
            s = sg(h - spec.v_threshold)
            s_r = s.detach() if spec.detach_reset else s
            if spec.reset_mode == RESET_HARD:
                v = s_r * spec.v_reset + (1 - s_r) * h
            else:
                v = h - s_r * spec.v_threshold
            spikes.append(s)
            hs.append(h)
            vths.append(torch.full_like(h, spec.v_threshold))
        a = torch.zeros(shape, dtype=cdt, device=x.device)
        ref = torch.zeros(shape, dtype=torch.int32, device=x.device)
    else:
        alpha, beta = params.to(cdt).reshape(2).unbind()
        # carried-in state of a disabled feature is ignored (the same spec only ever produces zeros)
        a = a0.to(cdt) if (a0 is not None and spec.adaptive) else torch.zeros_like(v)
        if ref0 is not None and spec.refractory:
            ref = ref0.to(torch.int32)
        else:
            ref = torch.zeros(shape, dtype=torch.int32, device=x.device)
        for t in range(x.shape[0]):
            raw = spec.v_threshold + a                           # threshold accumulate
            vth = torch.where(raw >= spec.v_l, raw, torch.full_like(raw, spec.v_l))
            gate = (ref == 0).float()
            h = x[t] * gate + v                                  # integrate (input gated while refractory)
            s = sg(h - vth, strict=True)                         # fire, strict threshold
            s_r = s.detach() if spec.detach_reset else s
            if spec.reset_mode == RESET_HARD:
                v2 = s_r * spec.v_reset + (1 - s_r) * h
            elif spec.reset_mode == RESET_SOFT:
                v2 = h - s_r * vth
            else:
                v2 = h - s_r * spec.dv
            v = alpha * v2 + beta                                # leak
            v = torch.where(v >= spec.v_l, v, torch.full_like(v, spec.v_l))  # floor
            if spec.adaptive:
                a = spec.v_th_alpha * a + spec.v_th_beta + s * spec.v_th_incre
            if spec.refractory:
                ref = torch.where(s.detach() > 0, torch.full_like(ref, spec.ref_len), (ref - 1).clamp_min(0))
            spikes.append(s)
            hs.append(h)
            vths.append(vth)
    return NeuronTrace(
        torch.stack(spikes).to(x_seq.dtype), v, a, ref, torch.stack(hs), torch.stack(vths)
    )
