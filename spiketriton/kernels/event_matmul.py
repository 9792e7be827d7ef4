"""Event-driven spike matmul for streaming inference: ``y = s @ W.T + b`` reading only the weights of
the inputs that fired.

The weight is read from an inference copy ``W_t [K, N]`` (``W.T``, contiguous): the weights of input
``k`` are one contiguous row, so the masked load of a fired input's row is coalesced and an input that
did not fire costs no memory traffic (a masked-off lane issues no load). The spikes are read packed (8
per byte, LSB first, as ``pack_spikes`` writes them) or as a float/bool/uint8 0/1 tensor.

Grid: (row m, block of N, split of K). Each program covers ``BLOCK_K * K_STEPS`` inputs with K_STEPS
independent chunks unrolled (``static_range``) so their loads are in flight together, accumulated
elementwise and reduced over K once at the end (one cross-warp reduction per program). With one split the
program adds the bias and stores ``y``. With several, each program stores an fp32 partial sum
``[SPLIT, M, N]`` and then increments an arrival counter of its (row, block of N) with an acquire-release
atomic; the program that arrives last sums the SPLIT partials in the fixed order 0 .. SPLIT-1 (the result
does not depend on which program was last: deterministic, no float atomics), adds the bias, stores ``y`` and
sets the counter back to zero. One launch per call: the earlier version reduced the partials with three
more launches (a sum over splits, the bias, the cast), which at one time step costs more GPU time than the
fired rows' loads (an estimate: ~2 us per launch against ~1 us for 205 rows of 16 KiB at 5 % of 4096 inputs).
The counters are a zeroed int32 buffer kept per (device, stream) and left zeroed by every launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# [BLOCK_K, BLOCK_N] = [32, 128] fp32 per chunk at 4 warps is 32 values per thread; 4 chunks unrolled
# keep 128 loads in flight per thread (an estimate: the sm_90 register count is in the codegen report).
_BLOCK_N = 128
_BLOCK_K = 32
_K_STEPS = 4
_NUM_WARPS = 4


@triton.jit
def _event_matmul_kernel(
    s_ptr,      # [M, KS] spikes: uint8 packed (KS = ceil(K/8)) or 0/1 of any dtype (KS = K)
    wt_ptr,     # [K, N] weights, contiguous (the transposed inference copy)
    b_ptr,      # [N] bias (unused without HAS_BIAS)
    y_ptr,      # [M, N] output
    part_ptr,   # [SPLIT, M, N] fp32 partial sums (unused when SPLIT == 1)
    cnt_ptr,    # [M * cdiv(N, BLOCK_N)] int32 arrival counters, zero on entry and on exit (SPLIT > 1)
    M, N, K, stride_sm,
    PACKED: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_STEPS: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)  # reduced over K once, at the end
    k_base = pid_k * (BLOCK_K * K_STEPS)
    for i in tl.static_range(K_STEPS):
        offs_k = k_base + i * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        if PACKED:
            byte = tl.load(s_ptr + m * stride_sm + offs_k // 8, mask=mask_k, other=0).to(tl.int32)
            fired = ((byte >> (offs_k % 8)) & 1) != 0
        else:
            fired = tl.load(s_ptr + m * stride_sm + offs_k, mask=mask_k, other=0) != 0
        fired = fired & mask_k
        w = tl.load(wt_ptr + offs_k.to(tl.int64)[:, None] * N + offs_n[None, :],
                    mask=fired[:, None] & mask_n[None, :], other=0.0)
        acc += w.to(tl.float32)
    y = tl.sum(acc, axis=0)
    if SPLIT == 1:
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(y_ptr + m * N + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)
    else:
        tl.store(part_ptr + (pid_k.to(tl.int64) * M + m) * N + offs_n, y, mask=mask_n)
        # release: this program's partial is visible before its arrival is counted; acquire: the last
        # program sees every partial counted before it
        cnt = cnt_ptr + m * tl.num_programs(1) + pid_n
        arrived = tl.atomic_add(cnt, 1, sem="acq_rel")
        if arrived == SPLIT - 1:
            tot = tl.zeros([BLOCK_N], dtype=tl.float32)
            for j in range(SPLIT):  # fixed order: the same sum whichever program arrives last
                # .cg: read from L2, where the other SMs' partials are (not a stale L1 line)
                tot += tl.load(part_ptr + (j * M + m) * N + offs_n, mask=mask_n, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                tot += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            tl.store(y_ptr + m * N + offs_n, tot.to(y_ptr.dtype.element_ty), mask=mask_n)
            tl.atomic_xchg(cnt, 0, sem="relaxed")  # zero again for the next launch on this stream


def _launch_shape(M: int, N: int, K: int):
    per_program = _BLOCK_K * _K_STEPS
    split = triton.cdiv(K, per_program)
    return dict(BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K, K_STEPS=_K_STEPS, num_warps=_NUM_WARPS), \
        (M, triton.cdiv(N, _BLOCK_N), split)


_COUNTERS: dict = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """A zeroed int32 buffer of at least ``n`` arrival counters for launches on the current stream of
    ``device`` (every launch leaves its counters at zero; launches on one stream run one after another,
    so they never share counters while running; another stream gets its own buffer)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def event_matmul(s: torch.Tensor, packed: bool, weight_t: torch.Tensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
    """``[M, K]`` spikes (``s`` uint8 ``[M, ceil(K/8)]`` when ``packed``; unit stride along the last
    dimension) times ``weight_t [K, N]`` (contiguous) plus ``bias [N]`` -> ``[M, N]`` in ``out_dtype``."""
    K, N = weight_t.shape
    M = s.shape[0]
    meta, grid = _launch_shape(M, N, K)
    split = grid[2]
    y = torch.empty((M, N), dtype=out_dtype, device=weight_t.device)
    if M == 0 or N == 0:
        return y
    if K == 0:
        return y.copy_(bias.to(out_dtype).expand(M, N)) if bias is not None else y.zero_()
    s = s.view(torch.uint8) if s.dtype == torch.bool else s
    if split > 1:
        part = torch.empty((split, M, N), dtype=torch.float32, device=weight_t.device)
        cnt = _counters(weight_t.device, M * grid[1])
    else:
        part = cnt = y  # not read
    b = bias if bias is not None else weight_t
    _event_matmul_kernel[grid](s, weight_t, b, y, part, cnt, M, N, K, s.stride(0), PACKED=packed,
                               HAS_BIAS=bias is not None, SPLIT=split, **meta)
    return y
