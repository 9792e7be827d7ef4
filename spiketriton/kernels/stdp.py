"""Trace-based STDP products from packed spikes: the Triton kernel and the PyTorch (CPU) path.

For packed spikes ``pre [T, B, ceil(K/8)]`` and ``post [T, B, ceil(N/8)]`` (uint8, 8 per byte along
the last dimension, LSB first) and the fp32 traces carried in, ``tr_pre [B, K]`` and ``tr_post [B, N]``,
both paths compute, step by step (``reference/stdp.py`` is the float64 spec):

    tr_pre  = tr_pre  - tr_pre / tau_pre   + pre[t]        (or tr_pre * exp(-1/tau_pre) + pre[t])
    tr_post = tr_post - tr_post / tau_post + post[t]
    P[n, k] += sum_b post[t, b, n] * tr_pre[b, k]          potentiation: post spikes select pre traces
    D[n, k] += sum_b tr_post[b, n] * pre[t, b, k]          depression: pre spikes select post traces

and return ``P``, ``D`` (fp32 ``[N, K]``) and the last traces. Both sums only add traces selected by
spike bits (a product with 0/1 is exact): an outer-product accumulation over batch and time.
"""

from __future__ import annotations

import math

import torch

from .pack_torch import unpack_bits


def decay_factor(tau: float, exp_decay: bool) -> float:
    """The factor a trace keeps per step: ``1 - 1/tau`` (SpikingJelly's STDP: ``tr - tr/tau``) or
    ``exp(-1/tau)`` (its reward-modulated learners)."""
    return math.exp(-1.0 / tau) if exp_decay else 1.0 - 1.0 / tau


def _trace_step(tr: torch.Tensor, s: torch.Tensor, tau: float, exp_decay: bool) -> torch.Tensor:
    # the same operations as SpikingJelly (tr - tr / tau + s), so that the fp32 traces agree bit for bit
    if exp_decay:
        return tr * math.exp(-1.0 / tau) + s
    return tr - tr / tau + s


def stdp_products_torch(pre: torch.Tensor, post: torch.Tensor, K: int, N: int, tr_pre: torch.Tensor,
                        tr_post: torch.Tensor, tau_pre: float, tau_post: float, exp_decay: bool = False,
                        per_step: bool = False):
    """``(P, D, tr_pre_last, tr_post_last)`` with the PyTorch ops (any device).

    The spikes are unpacked here, inside the update, one float copy ``[T, B, K]`` that lives until it
    returns; the traces of every step are kept ``[T, B, K]`` and the two sums are two BLAS matmuls over
    the ``T * B`` rows. ``per_step=True`` returns ``P`` and ``D`` for every step, ``[T, N, K]`` (the
    eligibility of the reward-modulated rule) instead of their sum.
    """
    T, B = pre.shape[0], pre.shape[1]
    s_pre = unpack_bits(pre, K, torch.float32)
    s_post = unpack_bits(post, N, torch.float32)
    tp_seq = torch.empty(T, B, K, dtype=torch.float32, device=pre.device)
    tq_seq = torch.empty(T, B, N, dtype=torch.float32, device=pre.device)
    tp, tq = tr_pre, tr_post
    for t in range(T):
        tp = tp_seq[t] = _trace_step(tp, s_pre[t], tau_pre, exp_decay)
        tq = tq_seq[t] = _trace_step(tq, s_post[t], tau_post, exp_decay)
    if per_step:
        P = torch.bmm(s_post.transpose(1, 2), tp_seq)
        D = torch.bmm(tq_seq.transpose(1, 2), s_pre)
    else:
        P = s_post.reshape(T * B, N).t() @ tp_seq.reshape(T * B, K)
        D = tq_seq.reshape(T * B, N).t() @ s_pre.reshape(T * B, K)
    return P, D, tp.clone(), tq.clone()  # (copies: the last step's views would keep the sequences alive)
