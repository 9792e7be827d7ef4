"""Integer family-B neuron (the chip form) in PyTorch int64 ops: the CPU path and the spec the
Triton kernel (kernels/neuron_int.py) must match bit for bit.

Per step, with ``sat`` = clamp to int28 and ``fl(x, q)`` = floor(x * q / 256):
    vth = max(sat(v_th0 + a), v_l)
    v'  = sat(u * (ref == 0) + v)
    s   = v' > vth
    v'' = v_reset (hard) | sat(v' - vth) (soft) | sat(v' - dv) (soft constant)   where s, else v'
    v   = max(sat(fl(v'', alpha_q) + beta_q), v_l)
    a   = sat(fl(a, v_th_alpha_q) + v_th_beta_q + s * v_th_incre)         (when adaptive)
    ref = ref_len where s, else max(ref - 1, 0)                             (when refractory)
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..spec import INT28_MAX, INT28_MIN, RESET_HARD, RESET_SOFT, IntNeuronSpec


class IntNeuronTrace(NamedTuple):
    spikes: torch.Tensor  # [T, ...] uint8 0/1
    v: torch.Tensor       # [...] int32
    a: torch.Tensor       # [...] int32
    ref: torch.Tensor     # [...] int32


def sat(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(INT28_MIN, INT28_MAX)


def leak(x: torch.Tensor, q: int) -> torch.Tensor:
    """floor(x * q / 256) in int64 (an arithmetic shift floors negative values too)."""
    return (x * q) >> 8


def int_neuron_reference(
    u_seq: torch.Tensor,
    v0: Optional[torch.Tensor],
    a0: Optional[torch.Tensor],
    ref0: Optional[torch.Tensor],
    spec: IntNeuronSpec,
) -> IntNeuronTrace:
    """``u_seq [T, ...]`` integer input (e.g. the int32 output of the integer spike matmul)."""
    T, S = u_seq.shape[0], u_seq.shape[1:]
    dev = u_seq.device
    u = u_seq.to(torch.int64)
    v = v0.to(torch.int64) if v0 is not None else torch.full(S, spec.v_init, dtype=torch.int64, device=dev)
    a = a0.to(torch.int64) if (a0 is not None and spec.adaptive) else torch.zeros(S, dtype=torch.int64, device=dev)
    ref = ref0.to(torch.int64) if (ref0 is not None and spec.refractory) else torch.zeros(S, dtype=torch.int64, device=dev)
    spikes = torch.empty((T,) + tuple(S), dtype=torch.uint8, device=dev)
    for t in range(T):
        vth = sat(spec.v_th0 + a).clamp_min(spec.v_l)
        gate = ref == 0 if spec.refractory else torch.ones_like(ref, dtype=torch.bool)
        h = sat(torch.where(gate, u[t], 0) + v)
        s = h > vth
        if spec.reset_mode == RESET_HARD:
            v2 = torch.where(s, spec.v_reset, h)
        elif spec.reset_mode == RESET_SOFT:
            v2 = torch.where(s, sat(h - vth), h)
        else:
            v2 = torch.where(s, sat(h - spec.dv), h)
        v = sat(leak(v2, spec.alpha_q) + spec.beta_q).clamp_min(spec.v_l)
        if spec.adaptive:
            a = sat(leak(a, spec.v_th_alpha_q) + spec.v_th_beta_q + s.to(torch.int64) * spec.v_th_incre)
        if spec.refractory:
            ref = torch.where(s, spec.ref_len, (ref - 1).clamp_min(0))
        spikes[t] = s.to(torch.uint8)
    return IntNeuronTrace(spikes, v.to(torch.int32), a.to(torch.int32), ref.to(torch.int32))
