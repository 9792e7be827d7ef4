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


def family_b_int_steps(u_seq, v, a, ref, c, *, reset_mode, adaptive, refractory, spike_fn, leak_fn,
                       detach_reset=False):
    """The quantized family-B recurrence over ``u_seq [T, ...]``, written once for two uses:

    - integer inference: int64 tensors, ``spike_fn = lambda h, vth: (h > vth).to(h.dtype)``,
      ``leak_fn = leak`` (exact floor by an arithmetic shift);
    - quantization-aware training: integer-valued float64 tensors, a surrogate ``spike_fn`` and a
      straight-through floor, so that the forward equals integer inference bit for bit.

    ``c`` maps v_th0, v_reset, v_l, dv, alpha_q, beta_q, ref_len, v_th_alpha_q, v_th_beta_q,
    v_th_incre to ints or to integer tensors broadcastable to the state (per-channel constants).
    Returns ``(spikes [T, ...] in u's dtype, v, a, ref)``.
    """
    spikes = []
    for t in range(u_seq.shape[0]):
        vth = sat(c["v_th0"] + a)
        vth = torch.where(vth >= c["v_l"], vth, torch.as_tensor(c["v_l"], dtype=vth.dtype, device=vth.device))
        u = u_seq[t]
        if refractory:
            u = u * (ref == 0).to(u.dtype)
        h = sat(u + v)
        s = spike_fn(h, vth)
        s_r = s.detach() if detach_reset else s
        if reset_mode == RESET_HARD:
            v2 = s_r * c["v_reset"] + (1 - s_r) * h
        elif reset_mode == RESET_SOFT:
            v2 = sat(h - s_r * vth)
        else:
            v2 = sat(h - s_r * c["dv"])
        v = sat(leak_fn(v2, c["alpha_q"]) + c["beta_q"])
        v = torch.where(v >= c["v_l"], v, torch.as_tensor(c["v_l"], dtype=v.dtype, device=v.device))
        if adaptive:
            a = sat(leak_fn(a, c["v_th_alpha_q"]) + c["v_th_beta_q"] + s * c["v_th_incre"])
        if refractory:
            ref = torch.where(s.detach() > 0, torch.as_tensor(c["ref_len"], dtype=ref.dtype, device=ref.device),
                              (ref - 1).clamp_min(0))
        spikes.append(s)
    return torch.stack(spikes) if spikes else u_seq.new_zeros(u_seq.shape), v, a, ref


def spec_constants(spec: IntNeuronSpec) -> dict:
    return {k: getattr(spec, k) for k in ("v_th0", "v_reset", "v_l", "dv", "alpha_q", "beta_q", "ref_len",
                                          "v_th_alpha_q", "v_th_beta_q", "v_th_incre")}


def int_neuron_reference(
    u_seq: torch.Tensor,
    v0: Optional[torch.Tensor],
    a0: Optional[torch.Tensor],
    ref0: Optional[torch.Tensor],
    spec: IntNeuronSpec,
) -> IntNeuronTrace:
    """``u_seq [T, ...]`` integer input (e.g. the int32 output of the integer spike matmul)."""
    S = u_seq.shape[1:]
    dev = u_seq.device
    v = v0.to(torch.int64) if v0 is not None else torch.full(S, spec.v_init, dtype=torch.int64, device=dev)
    a = a0.to(torch.int64) if (a0 is not None and spec.adaptive) else torch.zeros(S, dtype=torch.int64, device=dev)
    ref = ref0.to(torch.int64) if (ref0 is not None and spec.refractory) else torch.zeros(S, dtype=torch.int64, device=dev)
    spikes, v, a, ref = family_b_int_steps(
        u_seq.to(torch.int64), v, a, ref, spec_constants(spec), reset_mode=spec.reset_mode,
        adaptive=spec.adaptive, refractory=spec.refractory,
        spike_fn=lambda h, vth: (h > vth).to(h.dtype), leak_fn=leak,
    )
    return IntNeuronTrace(spikes.to(torch.uint8), v.to(torch.int32), a.to(torch.int32), ref.to(torch.int32))
