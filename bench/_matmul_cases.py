"""Shared cases for the spike-matmul benchmarks (``test_spike_matmul_cpu.py``, ``spike_matmul_cpu.py``,
``spike_matmul_gpu.py``).

The operation is ``Y = S @ W.T (+ b)`` with binary spikes ``S [M, K]`` and a weight ``W [N, K]`` as in
``nn.Linear``. Spikes are Bernoulli(rate) 0/1 (a fixed seed), the weight ``N(0, 1/K)``, the upstream
gradient of a training step a fixed ``N(0, 1)``. Sizes are written ``M x K x N``: M rows of spikes
(time x batch), K input neurons, N output neurons.

Implementations ("impls"):

- forward, no bias, under ``torch.no_grad()`` (inference):
  ``torch.matmul``          ``torch.matmul(S, W.T)`` with S a dense tensor of W's dtype;
  ``spike_matmul(dense)``   ``spiketriton.spike_matmul(S, W)`` with the same dense 0/1 tensor;
  ``spike_matmul(packed)``  ``spiketriton.spike_matmul(SpikeTensor, W)``, S packed 8 per byte beforehand;
- forward + backward with bias, the spikes requiring grad as a neuron's output would
  (``torch.autograd.grad(y, [S, W, b], dY)``):
  ``nn.Linear``, ``SpikeLinear`` (the default, ``check_binary=True``: one pass over S and a host
  sync to verify it is 0/1) and ``SpikeLinear(check_binary=False)``.

Figures of merit: ms, TFLOP/s-equivalent (``2*M*N*K`` per matmul / time: the dense-matmul FLOPs the
result replaces, whatever the kernel really executes; a training step is 3 matmuls: Y, dS, dW) and
the bytes of the spike operand (packed uint8 ``M * ceil(K/8)`` vs dense ``M * K * element_size``).

Nothing here times anything.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from _neuron_cases import DTYPES  # noqa: F401  (re-exported for the scripts)

CPU_SHAPES: Tuple[Tuple[int, int, int], ...] = ((32, 512, 512), (32, 1024, 1024))  # SNNGrow-like layers
GPU_SHAPES: Tuple[Tuple[int, int, int], ...] = CPU_SHAPES + ((4096, 4096, 4096),)
RATES: Tuple[float, ...] = (0.05, 0.10, 0.25, 0.50)

FWD_IMPLS = ("torch.matmul", "spike_matmul(dense)", "spike_matmul(packed)")
TRAIN_IMPLS = ("nn.Linear", "SpikeLinear", "SpikeLinear(check_binary=False)")

# matmuls per pass: forward Y; a training step Y, dS = dY @ W and dW = dY.T @ S
MATMULS = {"fwd": 1, "fwd+bwd": 3, "dw": 1}


# --------------------------------------------------------------------------------------------- #
# Sizes and figures of merit
# --------------------------------------------------------------------------------------------- #


def parse_mkn(text: str) -> Tuple[int, int, int]:
    """'32x512x512' (or '32,512,512') -> (M, K, N)."""
    parts = tuple(int(p) for p in re.split(r"[,x ]+", text.strip()) if p)
    if len(parts) != 3 or any(p <= 0 for p in parts):
        raise ValueError(f"a shape is M x K x N with positive sizes, e.g. 32x512x512; got {text!r}")
    return parts  # type: ignore[return-value]


def parse_shape_list(text: str) -> List[Tuple[int, int, int]]:
    """'32x512x512,32x1024x1024' -> [(32, 512, 512), (32, 1024, 1024)] (shapes separated by commas,
    sizes by 'x')."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if item:
            out.append(parse_mkn(item))
    if not out:
        raise ValueError(f"no shapes in {text!r}")
    return out


def parse_rates(text: str) -> List[float]:
    """'5,10,25,50' or '0.05,0.1' -> [0.05, 0.1, ...] (numbers > 1 are percentages)."""
    out = []
    for t in text.split(","):
        if t.strip():
            v = float(t)
            v = v / 100.0 if v > 1.0 else v
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"a firing rate is in [0, 1] (or 0-100 %), got {t!r}")
            out.append(v)
    return out


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def matmul_flops(M: int, K: int, N: int, pass_: str = "fwd") -> int:
    """Dense-equivalent FLOPs: ``2*M*N*K`` per matmul (``MATMULS[pass_]`` of them)."""
    return 2 * M * N * K * MATMULS[pass_]


def tflops(flops: int, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def spike_bytes(M: int, K: int, fmt) -> int:
    """Bytes of the spike operand: ``'packed'`` = uint8 ``M * ceil(K/8)``, else dense of that dtype."""
    if fmt == "packed":
        return M * ((K + 7) // 8)
    dt = DTYPES[fmt] if isinstance(fmt, str) else fmt
    return M * K * torch.empty((), dtype=dt).element_size()


def dtype_name(dtype: torch.dtype) -> str:
    for k, v in DTYPES.items():
        if v == dtype:
            return k
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------------------------- #


def make_spikes(M: int, K: int, rate: float, dtype=torch.float32, device="cpu", seed: int = 0) -> torch.Tensor:
    """Dense 0/1 spikes ``[M, K]`` in ``dtype``, each 1 with probability ``rate`` (fixed seed; drawn on
    the CPU so every device sees the same spikes)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.rand((M, K), generator=gen) < rate).to(device=device, dtype=dtype)


def make_weight(N: int, K: int, dtype=torch.float32, device="cpu", seed: int = 1) -> torch.Tensor:
    """``W [N, K] ~ N(0, 1/K)`` (outputs of order 1 whatever K)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn((N, K), generator=gen) / K**0.5).to(device=device, dtype=dtype)


def make_grad(M: int, N: int, dtype=torch.float32, device="cpu", seed: int = 2) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn((M, N), generator=gen).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------- #
# Runners: zero-argument callables, one per (impl, pass), each owning its tensors
# --------------------------------------------------------------------------------------------- #


def forward_runner(impl: str, s: torch.Tensor, w: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Forward without bias under ``torch.no_grad()``; ``s`` dense 0/1 of w's dtype."""
    import spiketriton as st

    if impl == "torch.matmul":
        wt = w.t()

        def fn():
            with torch.no_grad():
                return torch.matmul(s, wt)
    elif impl == "spike_matmul(dense)":
        def fn():
            with torch.no_grad():
                return st.spike_matmul(s, w)
    elif impl == "spike_matmul(packed)":
        p = st.pack_spikes(s)

        def fn():
            with torch.no_grad():
                return st.spike_matmul(p, w)
    else:
        raise ValueError(f"unknown forward impl {impl!r}; expected one of {FWD_IMPLS}")
    return fn


def make_linear(K: int, N: int, dtype, device="cpu", seed: int = 1) -> torch.nn.Linear:
    """``nn.Linear(K, N)`` with the benchmark's weight and a small fixed bias."""
    lin = torch.nn.Linear(K, N, device=device, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(make_weight(N, K, dtype, device, seed))
        gen = torch.Generator(device="cpu").manual_seed(seed + 10)
        lin.bias.copy_((0.1 * torch.randn((N,), generator=gen)).to(device=device, dtype=dtype))
    return lin


def train_module(impl: str, lin: torch.nn.Linear) -> torch.nn.Module:
    """The layer for a training-step impl; the SpikeLinear variants share ``lin``'s parameters."""
    import spiketriton as st

    if impl == "nn.Linear":
        return lin
    if impl == "SpikeLinear":
        return st.SpikeLinear.from_linear(lin)
    if impl == "SpikeLinear(check_binary=False)":
        return st.SpikeLinear.from_linear(lin, check_binary=False)
    raise ValueError(f"unknown training impl {impl!r}; expected one of {TRAIN_IMPLS}")


def train_runner(impl: str, s: torch.Tensor, lin: torch.nn.Linear, g: torch.Tensor) -> Callable[[], tuple]:
    """Forward + backward: ``torch.autograd.grad(layer(S), [S, W, b], dY)`` (no accumulation into
    ``.grad``). ``s`` gets its own leaf that requires grad (a neuron's output would)."""
    layer = train_module(impl, lin)
    sg = s.detach().clone().requires_grad_()
    inputs = [sg, layer.weight, layer.bias]

    def fn():
        return torch.autograd.grad(layer(sg), inputs, g)

    return fn


def forward_agreement(s: torch.Tensor, w: torch.Tensor) -> Dict[str, float]:
    """Max |difference| of each forward impl from ``torch.matmul`` (fp32 reference in fp64)."""
    ref = (s.double() @ w.double().t())
    out = {}
    for impl in FWD_IMPLS:
        y = forward_runner(impl, s, w)()
        out[impl] = float((y.double() - ref).abs().max())
    return out


def train_agreement(s: torch.Tensor, lin: torch.nn.Linear, g: torch.Tensor) -> Dict[str, Dict[str, float]]:
    """Max |difference| of the SpikeLinear gradients (and output) from nn.Linear's."""
    base = train_runner("nn.Linear", s, lin, g)()
    out = {}
    for impl in TRAIN_IMPLS[1:]:
        got = train_runner(impl, s, lin, g)()
        out[impl] = {name: float((a.double() - b.double()).abs().max())
                     for name, a, b in zip(("grad_s", "grad_w", "grad_b"), got, base)}
    return out


# --------------------------------------------------------------------------------------------- #
# Bytes saved for backward (deduplicated by storage, chosen tensors excluded)
# --------------------------------------------------------------------------------------------- #


def saved_bytes_excluding(fn: Callable[[], object], exclude: Sequence[torch.Tensor] = ()) -> Dict[str, object]:
    """Bytes the autograd graph keeps after ``fn()`` (a forward): every tensor the
    ``saved_tensors_hooks`` pack hook sees, deduplicated by ``untyped_storage().data_ptr()`` and
    counted as ``numel * element_size``. Tensors sharing storage with one in ``exclude`` (the block's
    input, its parameters: alive anyway) are counted apart. Returns the total, the excluded bytes
    and the kinds of tensors kept (``shape:dtype -> count``). The output of ``fn`` is returned under
    ``"out"`` so that the caller decides when the graph dies."""
    excl = {t.untyped_storage().data_ptr() for t in exclude if t is not None}
    seen: Dict[int, int] = {}
    excluded: Dict[int, int] = {}
    kinds: Dict[str, int] = {}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        nbytes = t.numel() * t.element_size()
        if ptr in excl:
            excluded[ptr] = max(excluded.get(ptr, 0), nbytes)
        elif ptr not in seen:
            seen[ptr] = nbytes
            key = f"{tuple(t.shape)}:{str(t.dtype).removeprefix('torch.')}"
            kinds[key] = kinds.get(key, 0) + 1
        else:
            seen[ptr] = max(seen[ptr], nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return {"bytes": sum(seen.values()), "n_tensors": len(seen), "excluded_bytes": sum(excluded.values()),
            "tensors": kinds, "out": out}
