"""Shared cases for the neuron benchmarks (``test_neuron_cpu.py``, ``neuron_cpu.py``, ``neuron_gpu.py``).

Every case runs the same neuron on both sides, with SpikingJelly's defaults:
LIF ``tau=2, decay_input=True, v_threshold=1, v_reset=0`` (hard reset), no ``detach_reset``,
``Sigmoid(alpha=4)`` surrogate; IF and PLIF (``init_tau=2``) with the same threshold/reset/surrogate.

A "runner" is a callable ``x_seq -> spikes`` that starts from the initial state every call (the
spiketriton functions are stateless; the SpikingJelly modules are reset before every call), plus
the tensors that get gradients (``x`` and, for PLIF, the learnable logit ``w``).

Also: the bytes the fused kernels must move (``kernel_bytes``, for GB/s) and SpikingJelly's variants
on a device (``sj_variants``). Nothing here times anything: the pytest-benchmark file and the scripts
own the timing.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from _common import short_error

TAU = 2.0
V_THRESHOLD = 1.0
V_RESET = 0.0
SG_ALPHA = 4.0

NEURONS = ("lif", "if", "plif")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------------------------- #


def make_inputs(shape: Sequence[int], dtype: torch.dtype, device="cpu", seed: int = 0):
    """``(x, grad_spikes)``: x ~ N(1, 1) (a firing rate of about 25 % for LIF tau=2, so both
    branches of the reset are exercised) and a fixed N(0, 1) upstream gradient, both in ``dtype``.
    ``x`` is a leaf that does not require grad; callers ask for it."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(tuple(shape), generator=gen) + 1.0).to(device=device, dtype=dtype)
    g = torch.randn(tuple(shape), generator=gen).to(device=device, dtype=dtype)
    return x, g


def parse_shape(text: str) -> Tuple[int, ...]:
    parts = tuple(int(p) for p in re.split(r"[,x ]+", text.strip()) if p)
    if len(parts) < 2 or any(p <= 0 for p in parts):
        raise ValueError(f"shape must be T,B[,features...] with positive sizes, got {text!r}")
    return parts


# --------------------------------------------------------------------------------------------- #
# Runners
# --------------------------------------------------------------------------------------------- #


class Runner:
    """``fn(x) -> spikes`` plus the extra leaf tensors (PLIF's ``w``) that also get gradients."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor], params: Sequence[torch.Tensor] = ()):
        self.name = name
        self.fn = fn
        self.params = list(params)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def train_step(self, x: torch.Tensor, g: torch.Tensor):
        """Forward + backward with the fixed upstream gradient ``g``; ``x`` must require grad.
        ``torch.autograd.grad`` returns the gradients without accumulating into ``.grad``."""
        s = self.fn(x)
        return torch.autograd.grad(s, [x] + self.params, g)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(x)


def spiketriton_runner(neuron: str = "lif", backend: str = "auto", device="cpu") -> Runner:
    """The public functional API (``spiketriton.functional.lif`` / ``if_neuron`` / ``plif``)."""
    import spiketriton.functional as F
    from spiketriton import surrogate as sg

    sgf = sg.Sigmoid(SG_ALPHA)
    common = dict(v_threshold=V_THRESHOLD, v_reset=V_RESET, surrogate=sgf, detach_reset=False, backend=backend)
    if neuron == "lif":
        return Runner("spiketriton", lambda x: F.lif(x, tau=TAU, decay_input=True, **common)[0])
    if neuron == "if":
        return Runner("spiketriton", lambda x: F.if_neuron(x, **common)[0])
    if neuron == "plif":
        # SpikingJelly's init: w = -ln(init_tau - 1), 1/tau = sigmoid(w)
        w = torch.full((1,), -math.log(TAU - 1.0), device=device, requires_grad=True)
        return Runner("spiketriton", lambda x: F.plif(x, w, decay_input=True, **common)[0], [w])
    raise ValueError(f"unknown neuron {neuron!r}; expected one of {NEURONS}")


def reference_runner(neuron: str = "lif", device="cpu") -> Runner:
    """spiketriton's autograd oracle (``spiketriton.reference.neuron_reference``): ~10 graph nodes
    per step, every intermediate saved. Context only; it is not a path users take."""
    from spiketriton import surrogate as sg
    from spiketriton.functional.neuron import family_a_spec
    from spiketriton.reference import neuron_reference

    spec = family_a_spec(
        "reference", v_threshold=V_THRESHOLD, v_reset=V_RESET, surrogate=sg.Sigmoid(SG_ALPHA),
        detach_reset=False, decay_input=neuron != "if",
    )
    if neuron == "lif":
        params, extra = torch.full((1,), 1.0 / TAU, device=device), []
        fn = lambda x: neuron_reference(x, None, None, None, params, spec).spikes  # noqa: E731
    elif neuron == "if":
        params, extra = torch.zeros(1, device=device), []
        fn = lambda x: neuron_reference(x, None, None, None, params, spec).spikes  # noqa: E731
    elif neuron == "plif":
        w = torch.full((1,), -math.log(TAU - 1.0), device=device, requires_grad=True)
        extra = [w]
        fn = lambda x: neuron_reference(x, None, None, None, torch.sigmoid(w), spec).spikes  # noqa: E731
    else:
        raise ValueError(f"unknown neuron {neuron!r}; expected one of {NEURONS}")
    return Runner("reference", fn, extra)


def spikingjelly_node(neuron: str = "lif"):
    """A multi-step SpikingJelly 2.0 node with the same settings (no ``backend`` kwarg in 2.0: the
    node dispatches through ``functional.lif_multi_step`` & co. by device)."""
    from spikingjelly.activation_based import neuron as sjn
    from spikingjelly.activation_based import surrogate as sjs

    common = dict(v_threshold=V_THRESHOLD, v_reset=V_RESET, surrogate_function=sjs.Sigmoid(alpha=SG_ALPHA),
                  detach_reset=False, step_mode="m")
    if neuron == "lif":
        return sjn.LIFNode(tau=TAU, decay_input=True, **common)
    if neuron == "if":
        return sjn.IFNode(**common)
    if neuron == "plif":
        return sjn.ParametricLIFNode(init_tau=TAU, decay_input=True, **common)
    raise ValueError(f"unknown neuron {neuron!r}; expected one of {NEURONS}")


def spikingjelly_runner(neuron: str = "lif", device="cpu", node=None, name: str = "spikingjelly") -> Runner:
    """Wrap a (possibly pre-configured) SpikingJelly node; its state is reset before every call."""
    node = spikingjelly_node(neuron) if node is None else node
    node = node.to(device)
    params = [p for p in node.parameters() if p.requires_grad]

    def fn(x):
        node.reset()
        return node(x)

    r = Runner(name, fn, params)
    r.node = node
    return r


# --------------------------------------------------------------------------------------------- #
# Bytes saved for backward
# --------------------------------------------------------------------------------------------- #


def saved_bytes(runner: Runner, x: torch.Tensor) -> Dict[str, object]:
    """Bytes the autograd graph keeps for backward after one forward of ``runner`` on ``x``.

    A ``saved_tensors_hooks`` pack hook sees every tensor saved for backward (custom Functions'
    ``save_for_backward`` and built-in ops alike); tensors are deduplicated by the data pointer of
    their untyped storage and counted as ``numel * element_size``. Tensors that share the storage
    of the input ``x`` (a leaf created by the caller, alive anyway) are reported separately and
    not counted in ``bytes``.
    """
    x_ptr = x.untyped_storage().data_ptr()
    seen: Dict[int, int] = {}
    input_bytes = 0
    input_ptrs = set()
    kinds: Dict[str, int] = {}

    def pack(t: torch.Tensor):
        nonlocal input_bytes
        ptr = t.untyped_storage().data_ptr()
        nbytes = t.numel() * t.element_size()
        if ptr == x_ptr:
            if ptr not in input_ptrs:
                input_ptrs.add(ptr)
                input_bytes += nbytes
        elif ptr not in seen:
            seen[ptr] = nbytes
            key = f"{tuple(t.shape)}:{str(t.dtype).removeprefix('torch.')}"
            kinds[key] = kinds.get(key, 0) + 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = runner(x)
    del out
    total = sum(seen.values())
    n = x.numel()
    return {
        "bytes": total,
        "bytes_per_neuron_step": total / n,
        "n_tensors": len(seen),
        "input_bytes_excluded": input_bytes,
        "input_bytes_per_neuron_step": input_bytes / n,
        "tensors": kinds,
    }


# --------------------------------------------------------------------------------------------- #
# SpikingJelly's variants on a device
# --------------------------------------------------------------------------------------------- #


def sj_variants(neuron: str, dname: str, device):
    """``(name, runner or None, error or None)`` for SpikingJelly's default node and, on CUDA, its
    explicit-precision Triton path (neuron state stored in fp32 and, for half input, in the input
    dtype): SpikingJelly 2.0 has no ``backend`` argument; on CUDA the default node runs its native
    CUDA op if built from source, else its Triton kernels (for half input with state in the input
    dtype its Torch reference). The caller keeps the fastest that runs."""
    out = []
    try:
        out.append(("spikingjelly", spikingjelly_runner(neuron, device), None))
    except Exception as e:  # noqa: BLE001 - report, do not abort the benchmark
        out.append(("spikingjelly", None, short_error(e)))
    if torch.device(device).type != "cuda":
        return out
    for storage in dict.fromkeys(("fp32", dname)):
        name = f"spikingjelly[neuron_storage={storage}]"
        try:
            node = sj_precision_node(spikingjelly_node(neuron), device, storage)
            out.append((name, spikingjelly_runner(neuron, device, node=node, name=name), None))
        except Exception as e:  # noqa: BLE001
            out.append((name, None, short_error(e)))
    return out


def sj_precision_node(node, device, storage: str):
    """``node`` through SpikingJelly's ``prepare_model_for_precision`` with ``neuron_storage=storage``."""
    from spikingjelly.activation_based.precision import PrecisionConfig, prepare_model_for_precision

    return prepare_model_for_precision(node.to(device), device, PrecisionConfig(neuron_storage=storage)).model


def sj_implementation(neuron: str, device) -> Optional[dict]:
    """Which implementation SpikingJelly binds for ``neuron`` on ``device`` (its own report)."""
    try:
        from spikingjelly.activation_based.functional import neuron_implementation

        return dict(neuron_implementation(neuron, torch.device(device)))
    except Exception as e:  # noqa: BLE001
        return {"error": short_error(e)}


# --------------------------------------------------------------------------------------------- #
# Bytes the fused kernels must move (the numerator of effective GB/s)
# --------------------------------------------------------------------------------------------- #


def element_size(dtype) -> int:
    return torch.empty((), dtype=DTYPES[dtype] if isinstance(dtype, str) else dtype).element_size()


def h_element_size(neuron: str, dtype) -> int:
    """Bytes per element of the H that ``neuron`` stores for backward from input of ``dtype``: the input
    dtype, except PLIF (a learnable tau, so ``spiketriton.functional.neuron`` passes ``h_fp32``) which
    keeps H in fp32 for bf16/fp16 input (the gradient of tau sums over every neuron-step)."""
    e = element_size(dtype)
    return max(e, 4) if neuron == "plif" else e


def kernel_bytes(shape: Sequence[int], dtype, pass_: str = "fwd+bwd", grad_dtype=None, neuron: str = "lif") -> int:
    """Bytes the fused kernels must move for ``x [T, *S]`` of ``dtype`` through ``neuron`` (lif, if, plif).

    - ``infer`` (no_grad forward): read x, write spikes (dtype of x) and v_last (fp32);
    - ``fwd`` (forward storing for backward): read x; write spikes, H (dtype of x; fp32 for PLIF, see
      :func:`h_element_size`: 16.375 instead of 12.375 B per neuron-step fwd+bwd in bf16), the spikes
      packed 8 per byte along the last dimension ([T, R, ceil(L/8)] uint8) and v_last (fp32);
    - ``bwd``: read grad_spikes (``grad_dtype``, default the dtype of x), H and the packed bits;
      write grad_x (dtype of x). PLIF's per-program partial sums (8 bytes a program) are ignored;
    - ``fwd+bwd``: the sum.
    What is not needed is not counted (e.g. the zero-filled a_last/ref_last the autograd Function
    allocates for family A).
    """
    T = int(shape[0])
    S = [int(s) for s in shape[1:]]
    L = S[-1]
    R = math.prod(S[:-1])
    M = R * L
    e = element_size(dtype)
    eg = element_size(grad_dtype if grad_dtype is not None else dtype)
    eh = h_element_size(neuron, dtype)
    bits = T * R * ((L + 7) // 8)
    seq = T * M
    infer = seq * e + seq * e + M * 4
    fwd = seq * e + seq * e + seq * eh + bits + M * 4
    bwd = seq * eg + seq * eh + bits + seq * e
    table = {"infer": infer, "fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}
    if pass_ not in table:
        raise ValueError(f"pass_ must be one of {sorted(table)}, got {pass_!r}")
    return table[pass_]
