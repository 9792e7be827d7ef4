"""Float64 reference of the trace-based STDP products, one line per equation, float spikes in: the
test oracle of ``kernels/stdp.py`` (both of its paths) and of :mod:`spiketriton.learning`.

For spikes ``pre [T, B, K]`` and ``post [T, B, N]`` (0/1) and carried traces ``tr_pre [B, K]``,
``tr_post [B, N]``, at every step t::

    tr_pre  = tr_pre  - tr_pre / tau_pre   + pre[t]       (exp_decay: tr_pre * exp(-1/tau_pre) + pre[t])
    tr_post = tr_post - tr_post / tau_post + post[t]
    P[n, k] += sum_b post[t, b, n] * tr_pre[b, k]        (potentiation: a post spike reads the pre trace)
    D[n, k] += sum_b tr_post[b, n] * pre[t, b, k]        (depression: a pre spike reads the post trace)
"""

from __future__ import annotations

import math

import torch


def stdp_products_reference(pre: torch.Tensor, post: torch.Tensor, tr_pre: torch.Tensor, tr_post: torch.Tensor,
                            tau_pre: float, tau_post: float, exp_decay: bool = False):
    """``(P, D, tr_pre_last, tr_post_last)`` in float64 (see the module docstring)."""
    pre, post = pre.double(), post.double()
    tp, tq = tr_pre.double().clone(), tr_post.double().clone()
    N, K = post.shape[-1], pre.shape[-1]
    P = torch.zeros(N, K, dtype=torch.float64)
    D = torch.zeros(N, K, dtype=torch.float64)
    for t in range(pre.shape[0]):
        if exp_decay:
            tp = tp * math.exp(-1.0 / tau_pre) + pre[t]
            tq = tq * math.exp(-1.0 / tau_post) + post[t]
        else:
            tp = tp - tp / tau_pre + pre[t]
            tq = tq - tq / tau_post + post[t]
        for b in range(pre.shape[1]):
            P += torch.outer(post[t, b], tp[b])
            D += torch.outer(tq[b], pre[t, b])
    return P, D, tp, tq


def stdp_conv_products_reference(pre: torch.Tensor, post: torch.Tensor, tr_pre: torch.Tensor, tr_post: torch.Tensor,
                                 tau_pre: float, tau_post: float, kernel_size, stride=1, padding=0, dilation=1,
                                 exp_decay: bool = False):
    """The conv form in float64: ``pre [T, B, C, H, W]``, ``post [T, B, O, H', W']`` float spikes; per step
    the traces advance as above and, for every output position (``F.unfold`` of the zero-padded input),
    ``P[o, c, i, j] += post[t, b, o, pos] * tr_pre[b, c, tap (i, j) of pos]``, ``D`` likewise with
    ``tr_post`` and ``pre`` (groups = 1). Returns ``(P, D, tr_pre_last, tr_post_last)``."""
    import torch.nn.functional as F

    pre, post = pre.double(), post.double()
    tp, tq = tr_pre.double().clone(), tr_post.double().clone()
    O, C = post.shape[2], pre.shape[2]
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    P = torch.zeros(O, C * kh * kw, dtype=torch.float64)
    D = torch.zeros(O, C * kh * kw, dtype=torch.float64)
    for t in range(pre.shape[0]):
        if exp_decay:
            tp = tp * math.exp(-1.0 / tau_pre) + pre[t]
            tq = tq * math.exp(-1.0 / tau_post) + post[t]
        else:
            tp = tp - tp / tau_pre + pre[t]
            tq = tq - tq / tau_post + post[t]
        cols_tp = F.unfold(tp, (kh, kw), dilation=dilation, padding=padding, stride=stride)     # [B, C*kh*kw, L]
        cols_pre = F.unfold(pre[t], (kh, kw), dilation=dilation, padding=padding, stride=stride)
        P += torch.einsum("bol,bkl->ok", post[t].flatten(2), cols_tp)
        D += torch.einsum("bol,bkl->ok", tq.flatten(2), cols_pre)
    return P.view(O, C, kh, kw), D.view(O, C, kh, kw), tp, tq
