"""Event-driven spike matmul: ``y = s @ W.T + b`` reading only the weights of the inputs that fired.

For streaming inference (one time step, a batch of a few rows, sparse firing) a dense matmul reads the
whole weight for a handful of active inputs. The event-driven path reads a transposed copy
``W_t = W.T [K, N]`` kept for inference: the row of each fired input, summed in fp32.

- CPU: ``F.embedding_bag(mode="sum")`` over the fired inputs of each row (one fused gather-and-sum) for
  fp32/fp64 weights; fp16/bf16 rows are gathered and summed in fp32, then rounded once with the bias.
- CUDA (and the Triton interpreter): ``kernels/event_matmul.py``, masked loads of the fired rows.

:func:`choose_event_path` decides from the shape and, on the CPU, from the number of fired inputs; see
its docstring for the measured crossover. No gradient: this is an inference path (autograd-enabled calls
that need a gradient go to :func:`~spiketriton.spike_matmul`).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ._backend import use_triton
from .spikes import SpikeTensor

__all__ = ["event_matmul", "choose_event_path", "inference_matmul", "EVENT_MAX_ROWS_CUDA"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: CPU crossover: the event path is used while the fraction of fired inputs per row is below
#: ``0.4 * M ** -0.3`` (M rows). Measured with one thread on the 2-core CI machine (F.linear against
#: embedding_bag, K = N = 1024 and 4096, firing 1-50 %): the two cost the same at a firing of about
#: 0.4-0.45 for M = 1, 0.26-0.35 for M = 4 and 0.15-0.18 for M = 16; bench/event_matmul.py measured 41-46 %, 29-34 %, 15-20 % at
#: K = N = 1024 and > 50 %, 33-40 %, 15-17 % at 4096 (M = 1, 4, 16), bench/results/cpu/event_matmul_cpu.json.
CPU_CROSSOVER_M1 = 0.4
CPU_CROSSOVER_EXP = 0.3
#: CUDA: no firing count without a device sync, so the choice is by rows only. An estimate from the
#: compiled kernel, not a measurement: the masked loads of every input issue like a dense pass at
#: M = 16 (K N lanes per row), so only M <= 4 rows take the event kernel until a GPU run measures it.
EVENT_MAX_ROWS_CUDA = 4


def _as_rows(s, K: int, who: str):
    """``(data [M, KS], packed, lead shape)`` for spikes ``[..., K]``."""
    if isinstance(s, SpikeTensor):
        if s.k != K:
            raise ValueError(f"{who}: packed spikes have k = {s.k} but the weight has K = {K} inputs")
        lead = tuple(s.shape[:-1])
        return s.data.reshape(math.prod(lead), s.data.shape[-1]), True, lead
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"{who}: expected a SpikeTensor or a tensor of 0/1 spikes, got {type(s).__name__}")
    if s.is_complex() or not (s.is_floating_point() or s.dtype in (torch.bool, torch.uint8)):
        raise TypeError(f"{who}: spikes must be float, bool or uint8 0/1, got {s.dtype}")
    if s.dim() < 1 or s.shape[-1] != K:
        raise ValueError(f"{who}: spikes [..., K] have shape {tuple(s.shape)} but the weight has K = {K} inputs")
    lead = tuple(s.shape[:-1])
    return s.reshape(math.prod(lead), K), False, lead


def choose_event_path(rows: int, fired: Optional[int], K: int, triton: bool) -> bool:
    """Whether the event-driven path beats the dense one for ``rows`` rows of ``K`` inputs with ``fired``
    spikes in all (``None`` when unknown). PyTorch path (CPU): fired / (rows K) < 0.4 rows^-0.3
    (measured); Triton kernels: rows <= EVENT_MAX_ROWS_CUDA (estimated; no spike count, which would cost
    a device sync)."""
    if rows == 0 or K == 0:
        return False
    if triton:
        return rows <= EVENT_MAX_ROWS_CUDA
    if fired is None:
        return False
    return fired < CPU_CROSSOVER_M1 * rows ** (-CPU_CROSSOVER_EXP) * rows * K


def _torch_event(fired: torch.Tensor, weight_t: torch.Tensor, bias, out_dtype) -> torch.Tensor:
    """``fired [M, K]`` (bool, or 0/1 values: nonzero is a spike) -> the sum of the fired rows of
    ``weight_t`` per row, plus the bias, in ``out_dtype``."""
    M = fired.shape[0]
    rows, cols = fired.nonzero(as_tuple=True)
    if weight_t.dtype in (torch.float32, torch.float64):
        counts = torch.bincount(rows, minlength=M)
        offsets = torch.zeros(M, dtype=torch.long, device=fired.device)
        offsets[1:] = counts.cumsum(0)[:-1]
        y = F.embedding_bag(cols, weight_t, offsets, mode="sum")
    else:
        # fp16/bf16: gathered rows summed in fp32, rounded once with the bias (embedding_bag would round
        # its fp16 sum before the bias is added)
        y = torch.zeros((M, weight_t.shape[1]), dtype=torch.float32, device=fired.device)
        y.index_add_(0, rows, weight_t.index_select(0, cols).float())
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(out_dtype)


def _unpacked(rows: torch.Tensor, packed: bool, K: int, dtype=torch.bool) -> torch.Tensor:
    from ..kernels.pack_torch import unpack_bits

    return unpack_bits(rows, K, dtype) if packed else rows


def event_matmul(s: Union[SpikeTensor, torch.Tensor], weight_t: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 *, backend: str = "auto") -> torch.Tensor:
    """``s @ weight_t + bias`` for binary spikes ``s [..., K]`` (packed, or 0/1 float/bool/uint8; any
    nonzero value is a spike, as for :func:`~spiketriton.spike_matmul`) and ``weight_t [K, N]`` (the
    transposed weight, ``linear.weight.t().contiguous()``). The result ``[..., N]`` is in the weight's
    dtype, accumulated in fp32. No gradient."""
    who = "event_matmul"
    if not isinstance(weight_t, torch.Tensor) or weight_t.dim() != 2 or not weight_t.is_floating_point():
        raise TypeError(f"{who}: weight_t must be a floating tensor [K, N] (the transposed weight)")
    K, N = weight_t.shape
    rows, packed, lead = _as_rows(s, K, who)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (N,):
            raise ValueError(f"{who}: bias must be a tensor of shape ({N},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    for name, t in (("spikes", rows), ("bias", bias)):
        if t is not None and t.device != weight_t.device:
            raise ValueError(f"{who}: {name} are on {t.device} but weight_t is on {weight_t.device}; "
                             f"move them to one device")
    out_dtype = weight_t.dtype
    with torch.no_grad():
        triton_ok = use_triton(backend, weight_t, op=who) and weight_t.dtype in _KERNEL_DTYPES
        if backend == "triton" and weight_t.dtype not in _KERNEL_DTYPES:
            raise TypeError(f"{who}: the Triton kernel takes float32, float16 or bfloat16 weights, got {weight_t.dtype}")
        if triton_ok:
            from ..kernels.event_matmul import event_matmul as kernel

            if rows.stride(-1) != 1:
                rows = rows.contiguous()
            wt = weight_t if weight_t.is_contiguous() else weight_t.contiguous()
            y = kernel(rows, packed, wt, bias.contiguous() if bias is not None else None, out_dtype)
        else:
            y = _torch_event(_unpacked(rows, packed, K), weight_t, bias, out_dtype)
    return y.reshape(lead + (N,))


def inference_matmul(s: Union[SpikeTensor, torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor],
                     weight_t: Optional[torch.Tensor], *, backend: str = "auto") -> torch.Tensor:
    """``s @ weight.T + bias`` without gradient, event-driven when :func:`choose_event_path` says it is
    faster (``weight_t``, the transposed copy, must then be given; ``None`` forces the dense path), else
    :func:`~spiketriton.spike_matmul`'s result. On the PyTorch path the spikes are turned into 0/1 values
    once (as the dense path does anyway), counted with one float sum and handed to whichever path is
    chosen, so the choice costs one small reduction over a dense call."""
    if torch.is_grad_enabled():
        with torch.no_grad():
            return _inference_matmul(s, weight, bias, weight_t, backend)
    return _inference_matmul(s, weight, bias, weight_t, backend)


def _inference_matmul(s, weight, bias, weight_t, backend):
    # Lean on purpose: above the crossover this runs the dense product, and every no-op conversion or
    # context manager here is overhead against spike_matmul (each costs 1-5 us against a 200 us
    # [1, 1024] x [1024, 1024] product on one thread; bench/results/cpu/event_matmul_cpu.json).
    from .spikes import spike_matmul

    if weight_t is None or use_triton(backend, weight, op="inference_matmul"):
        if weight_t is not None:
            rows = math.prod(s.shape[:-1])
            if choose_event_path(rows, None, weight.shape[1], triton=True):
                return event_matmul(s, weight_t, bias, backend=backend)
        return spike_matmul(s, weight, bias, backend=backend)
    K = weight.shape[1]
    data, packed, lead = _as_rows(s, K, "inference_matmul")
    if weight_t.shape != (K, weight.shape[0]):
        raise ValueError(f"inference_matmul: weight_t must be weight.T {(K, weight.shape[0])}, got "
                         f"{tuple(weight_t.shape)}")
    wdt = weight.dtype
    # fp32 for CPU halves, as the dense path computes (ops.acc_dtype, inlined)
    acc = torch.float32 if wdt in (torch.float16, torch.bfloat16) else wdt
    # 0/1 in the BLAS dtype, as the dense path reads them (a dense input: any nonzero is a 1, which is
    # what bool() tests); the count is their sum (a vectorised float sum: count_nonzero took 57 us for
    # [16, 1024] on one thread, (s != 0) 29 us, the sum a few)
    values = _unpacked(data, packed, K, acc) if packed else data.bool().to(acc)
    fired = int(values.sum()) if values.numel() else 0
    if choose_event_path(values.shape[0], fired, K, triton=False):
        y = _torch_event(values, weight_t, bias, weight_t.dtype)
    else:  # spike_matmul's PyTorch path on the same 0/1 values
        if acc is wdt:
            y = torch.nn.functional.linear(values, weight, bias if bias is None or bias.dtype is wdt else bias.to(wdt))
        else:
            y = torch.nn.functional.linear(values, weight.to(acc), bias.to(acc) if bias is not None else None).to(wdt)
    return y if len(lead) == 1 else y.reshape(lead + (weight.shape[0],))
