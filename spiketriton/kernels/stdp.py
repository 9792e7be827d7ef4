"""Trace-based STDP products from packed spikes: the Triton kernel and the PyTorch (CPU) path.

For packed spikes ``pre [T, B, ceil(K/8)]`` and ``post [T, B, ceil(N/8)]`` (uint8, 8 per byte along
the last dimension, LSB first) and the fp32 traces carried in, ``tr_pre [B, K]`` and ``tr_post [B, N]``,
both paths compute, step by step (``reference/stdp.py`` is the float64 spec)::

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
                        tr_post: torch.Tensor, tau_pre: float, tau_post: float, exp_decay: bool = False, out=None):
    """``(P, D, tr_pre_last, tr_post_last)`` with the PyTorch ops (any device).

    The spikes are unpacked here, inside the update, one float copy ``[T, B, K]`` that lives until it
    returns; the traces of every step are kept ``[T, B, K]`` and the two sums are two BLAS matmuls over
    the ``T * B`` rows, written into ``out = (P, D)`` (fp32 ``[N, K]`` work buffers) when given: on the
    CPU a fresh 64 MiB result costs more than its matmul (page faults; 4096 x 4096, batch 32, 1 thread).
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
    P, D = out if out is not None else (None, None)
    P = torch.mm(s_post.reshape(T * B, N).t(), tp_seq.reshape(T * B, K), out=P)
    D = torch.mm(tq_seq.reshape(T * B, N).t(), s_pre.reshape(T * B, K), out=D)
    return P, D, tp.clone(), tq.clone()  # (copies: the last step's views would keep the sequences alive)


def stdp_conv_products_torch(pre: torch.Tensor, post: torch.Tensor, C_in: int, C_out: int, tr_pre: torch.Tensor,
                             tr_post: torch.Tensor, tau_pre: float, tau_post: float, exp_decay: bool, w_shape,
                             stride, pad4, dilation, groups: int, unpack_backend: str = "auto"):
    """The conv synapse's STDP sums (PyTorch ops, any device): ``(P, D, tr_pre_last, tr_post_last)``.

    ``pre [T, B, H, W, ceil(C_in/8)]`` and ``post [T, B, H', W', ceil(C_out/8)]`` are packed spike images
    (channels-last, 8 channels per byte), ``tr_pre [B, C_in, H, W]`` and ``tr_post [B, C_out, H', W']`` the
    carried traces; ``pad4`` the synapse's zero padding ``(left, right, top, bottom)``. Summed over time,
    batch and space, for every tap ``(i, j)`` of the kernel (SpikingJelly's ``stdp_conv2d_step``)::

        P[o, c, i, j] += sum post[t, b, o, y, x] * tr_pre[b, c, y * s + i * d, x * s + j * d]   (padded)
        D[o, c, i, j] += sum tr_post[b, o, y, x] * pre[t, b, c, y * s + i * d, x * s + j * d]

    i.e. the weight gradient of the convolution with ``post`` (``tr_post``) as the output gradient and the
    zero-padded ``tr_pre`` (``pre``) as its input: ``torch.nn.grad.conv2d_weight`` over the ``T * B``
    images at once. The padding holds no spikes and so a zero trace.
    """
    from ..functional.images import SpikeImage, unpack_image

    T, B = pre.shape[0], pre.shape[1]
    s_pre = unpack_image(SpikeImage(pre, C_in), torch.float32, unpack_backend)    # [T, B, C, H, W]
    s_post = unpack_image(SpikeImage(post, C_out), torch.float32, unpack_backend)
    tp_seq = torch.empty_like(s_pre)
    tq_seq = torch.empty_like(s_post)
    tp, tq = tr_pre, tr_post
    for t in range(T):
        tp = tp_seq[t] = _trace_step(tp, s_pre[t], tau_pre, exp_decay)
        tq = tq_seq[t] = _trace_step(tq, s_post[t], tau_post, exp_decay)
    pad = torch.nn.functional.pad
    grad_w = torch.nn.grad.conv2d_weight
    P = grad_w(pad(tp_seq.flatten(0, 1), list(pad4)), w_shape, s_post.flatten(0, 1), stride, 0, dilation, groups)
    D = grad_w(pad(s_pre.flatten(0, 1), list(pad4)), w_shape, tq_seq.flatten(0, 1), stride, 0, dilation, groups)
    return P, D, tp.clone(), tq.clone()


# --------------------------------------------------------------------------------------------- #
# Triton
# --------------------------------------------------------------------------------------------- #
#
# One program owns a [BLOCK_N, BLOCK_K] tile of P and D. It walks the batch in chunks of BLOCK_B
# samples and, for each chunk, all T steps: it loads the chunk's traces once, then per step reads
# BLOCK_B x BLOCK_K/8 pre bytes and BLOCK_B x BLOCK_N/8 post bytes, expands the bits in registers,
# advances both traces in registers and accumulates
#     P += post_t.T @ tr_pre      ([BLOCK_N, BLOCK_B] 0/1  x  [BLOCK_B, BLOCK_K] fp32)
#     D += tr_post.T @ pre_t      ([BLOCK_N, BLOCK_B] fp32 x  [BLOCK_B, BLOCK_K] 0/1)
# on tensor cores: the fp32 traces are split into three bf16 parts (spike_matmul's _split3: exact
# for values >= 2^-110; a trace below that loses bits below 2^-133 absolute), the 0/1 operand is
# bf16 made from the bit pattern of 1.0. No trace sequence is stored: the kernel reads only the
# packed spikes, the traces carried in, and (when it applies the update) the weight.
# The recomputed traces cost O(T * B * (BLOCK_N + BLOCK_K)) per program against
# O(T * B * BLOCK_N * BLOCK_K) tensor-core work.

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from . import interpret_mode  # noqa: E402
from .spike_matmul import _mma, _one_bits, _spike_operand, _split3  # noqa: E402

#: epilogues: write P and D / write dW = fp * P - fd * D / add lr * dW to the weight in place
OUT_PD, OUT_DW, OUT_APPLY = 0, 1, 2


@triton.jit
def _dot_split_b(a01, b, acc, INTERP: tl.constexpr):
    """``acc += a01 @ b`` for a 0/1 ``a01`` and fp32 ``b`` split in three bf16 parts (exact products)."""
    hi, mid, lo, _lost = _split3(b)
    if INTERP:  # the interpreter's dot mishandles bf16 operands: the exact bf16 values in fp32
        acc = tl.dot(a01, hi.to(tl.float32), acc, input_precision="ieee")
        acc = tl.dot(a01, mid.to(tl.float32), acc, input_precision="ieee")
        acc = tl.dot(a01, lo.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a01, hi, acc)
        acc = tl.dot(a01, mid, acc)
        acc = tl.dot(a01, lo, acc)
    return acc


@triton.jit
def _decay(tr, s, tau, keep, EXP: tl.constexpr):
    """One trace step: ``tr - tr / tau + s`` (as SpikingJelly writes it), or ``tr * keep + s``."""
    if EXP:
        return tr * keep + s
    else:
        return tr - tl.math.div_rn(tr, tau) + s


@triton.jit
def _stdp_kernel(
    pre_ptr,      # [T, B, KB] uint8 packed pre spikes, contiguous
    post_ptr,     # [T, B, NB] uint8 packed post spikes, contiguous
    tp_ptr,       # [B, K] fp32 pre traces carried in
    tq_ptr,       # [B, N] fp32 post traces carried in
    tp_out_ptr,   # [B, K] fp32 out: pre traces after the last step (written by the pid_n == 0 programs)
    tq_out_ptr,   # [B, N] fp32 out: post traces after the last step (written by the pid_k == 0 programs)
    p_ptr,        # [N, K] fp32 out: P (OUT_PD), dW (OUT_DW); unused (OUT_APPLY)
    d_ptr,        # [N, K] fp32 out: D (OUT_PD); unused otherwise
    w_ptr,        # [N, K] weight (row stride stride_wn): read for soft bounds, updated in place (OUT_APPLY)
    T, B, N, K, KB, NB, stride_wn,
    tau_pre, tau_post,      # trace time constants (linear decay)
    keep_pre, keep_post,    # exp(-1/tau) (EXP)
    a_plus, a_minus,        # amplitudes (OUT_DW / OUT_APPLY)
    w_min, w_max,           # bounds: soft factors (SOFT), clipping (HARD with OUT_APPLY)
    lr,                     # OUT_APPLY: W += lr * dW
    EXP: tl.constexpr,      # exponential trace decay
    OUT: tl.constexpr,      # OUT_PD / OUT_DW / OUT_APPLY
    SOFT: tl.constexpr, HARD: tl.constexpr,
    ONE_BITS: tl.constexpr,  # the 0/1 operand: see spike_matmul._spike_operand
    INTERP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_n = rn < N
    mask_k = rk < K
    acc_p = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc_d = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
        mask_b = rb < B
        m_bk = mask_b[:, None] & mask_k[None, :]
        m_nb = mask_n[:, None] & mask_b[None, :]
        tp = tl.load(tp_ptr + rb[:, None] * K + rk[None, :], mask=m_bk, other=0.0)    # [BLOCK_B, BLOCK_K]
        tq = tl.load(tq_ptr + rb[None, :] * N + rn[:, None], mask=m_nb, other=0.0)    # [BLOCK_N, BLOCK_B]
        for t in range(T):
            rows = t * B + rb
            s_pre = _spike_operand(pre_ptr, rows, pid_k * BLOCK_K, KB, KB, mask_b, ONE_BITS, BLOCK_K, False)
            s_post = _spike_operand(post_ptr, rows, pid_n * BLOCK_N, NB, NB, mask_b, ONE_BITS, BLOCK_N, True)
            tp = _decay(tp, s_pre.to(tl.float32), tau_pre, keep_pre, EXP)
            tq = _decay(tq, s_post.to(tl.float32), tau_post, keep_post, EXP)
            acc_p = _dot_split_b(s_post, tp, acc_p, INTERP)
            acc_d, _lost = _mma(tq, s_pre, acc_d, 1, INTERP, False)  # 1: spike_matmul.MODE_SPLIT3
        if pid_n == 0:
            tl.store(tp_out_ptr + rb[:, None] * K + rk[None, :], tp, mask=m_bk)
        if pid_k == 0:
            tl.store(tq_out_ptr + rb[None, :] * N + rn[:, None], tq, mask=m_nb)
    m_nk = mask_n[:, None] & mask_k[None, :]
    out = rn[:, None] * K + rk[None, :]
    if OUT == 0:
        tl.store(p_ptr + out, acc_p, mask=m_nk)
        tl.store(d_ptr + out, acc_d, mask=m_nk)
    else:
        w_at = w_ptr + rn[:, None] * stride_wn + rk[None, :]
        if SOFT or OUT == 2:
            w = tl.load(w_at, mask=m_nk, other=0.0).to(tl.float32)
        if SOFT:
            dw = a_plus * (w_max - w) * acc_p - a_minus * (w - w_min) * acc_d
        else:
            dw = a_plus * acc_p - a_minus * acc_d
        if OUT == 1:
            tl.store(p_ptr + out, dw, mask=m_nk)
        else:
            w = w + lr * dw
            if HARD:
                w = tl.minimum(tl.maximum(w, w_min), w_max)
            tl.store(w_at, w.to(w_ptr.dtype.element_ty), mask=m_nk)


def _arch() -> int:
    """The compute capability Triton compiles for (90 under the interpreter)."""
    if interpret_mode():
        return 90
    try:
        return int(triton.runtime.driver.active.get_current_target().arch)
    except Exception:  # pragma: no cover - no driver: tiles as for sm_90
        return 90


def stdp_config(B: int, N: int, K: int, arch: int = 90) -> dict:
    """Tiles: ``BLOCK_B`` the batch rounded up to a power of two in [16, 32] (tl.dot needs 16), 64 x 64
    tiles of P and D (two fp32 accumulators). Read off the compiled code (bench/codegen.py, 4096 x 4096,
    B = 32): on sm_90 4 warps use 243 registers, no spills, 1403 SASS instructions per step (12
    wgmma), against 8 warps' 168 registers but 875 per warp (1750 issue cycles per SM against 1403); on
    sm_80 4 warps spilled (24 B of stack, 17 LDL/STL), 8 warps do not (242 registers)."""
    block_b = min(max(triton.next_power_of_2(max(B, 1)), 16), 32)
    return dict(BLOCK_N=64, BLOCK_K=64, BLOCK_B=block_b, num_warps=4 if arch >= 90 else 8, num_stages=1)


def stdp_products_triton(pre, post, K: int, N: int, tr_pre, tr_post, tau_pre: float, tau_post: float,
                         exp_decay: bool = False, *, out: int = OUT_PD, weight=None, a_plus: float = 1.0,
                         a_minus: float = 1.0, soft: bool = False, hard: bool = False, w_min: float = 0.0,
                         w_max: float = 1.0, lr: float = 1.0, config=None):
    """The Triton kernel. ``out=OUT_PD``: ``(P, D, tr_pre_last, tr_post_last)``; ``OUT_DW``: ``(dW, None,
    tr_pre_last, tr_post_last)`` with ``dW = a_plus * f_post * P - a_minus * f_pre * D`` (soft or
    additive factors of ``weight``); ``OUT_APPLY``: ``weight += lr * dW`` in place (clipped to
    ``[w_min, w_max]`` when ``hard``), ``(None, None, tr_pre_last, tr_post_last)``."""
    T, B = pre.shape[0], pre.shape[1]
    dev = pre.device
    pre, post = pre.contiguous(), post.contiguous()
    tr_pre, tr_post = tr_pre.contiguous(), tr_post.contiguous()
    tp_out = tr_pre.clone()  # (T = 0, or B = 0: the traces as they were)
    tq_out = tr_post.clone()
    P = torch.zeros(N, K, device=dev, dtype=torch.float32) if out != OUT_APPLY else None
    D = torch.zeros(N, K, device=dev, dtype=torch.float32) if out == OUT_PD else None
    if weight is not None and weight.stride(1) != 1:
        raise ValueError("stdp_products_triton: the weight's rows must be contiguous")
    if N == 0 or K == 0 or B == 0 or T == 0:
        if N and K and out == OUT_APPLY and hard:
            weight.data.clamp_(w_min, w_max)
        return P, D, tp_out, tq_out
    cfg = dict(config) if config is not None else stdp_config(B, N, K, _arch())
    interp = interpret_mode()
    w = weight if weight is not None else P
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(K, cfg["BLOCK_K"]))
    _stdp_kernel[grid](
        pre, post, tr_pre, tr_post, tp_out, tq_out, P if P is not None else w, D if D is not None else w, w,
        T, B, N, K, pre.shape[2], post.shape[2], w.stride(0),
        float(tau_pre), float(tau_post), decay_factor(tau_pre, True), decay_factor(tau_post, True),
        float(a_plus), float(a_minus), float(w_min), float(w_max), float(lr),
        EXP=exp_decay, OUT=out, SOFT=soft, HARD=hard, ONE_BITS=_one_bits(torch.float32, interp), INTERP=interp,
        **cfg,
    )
    return P, D, tp_out, tq_out
