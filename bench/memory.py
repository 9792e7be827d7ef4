"""Memory of a LIF -> linear block: bytes saved for backward per input neuron-step, and (with CUDA) the peak
memory of a training step; spiketriton vs SpikingJelly 2.0.

    python bench/memory.py                              # x [T, B, K] = [16, 32, 1024], N = 1024; fp32 + bf16
    python bench/memory.py --shape 8,16,512 --n 256 --dtypes fp32

The block: ``x [T, B, K]`` (requires grad, as the output of an earlier layer would) -> LIF -> linear(K, N),
with SpikingJelly's defaults on both sides (LIF ``tau=2``, ``decay_input=True``, ``v_threshold=1``,
``v_reset=0``, ``Sigmoid(alpha=4)``; ``x ~ N(1, 1)``: about 25 % of the neurons fire per step):

- ``spiketriton``                 ``st.LIF()`` -> ``st.SpikeLinear(K, N)`` (float spikes between them);
- ``spiketriton packed_output``   ``st.LIF(packed_output=True)`` -> ``st.SpikeLinear(K, N)``: the neuron writes
                                  the spikes packed only (a ``SpikeTensor``), which the layer consumes and saves;
- ``spikingjelly``                ``neuron.LIFNode(step_mode='m')`` -> ``layer.Linear(K, N, step_mode='m')``;
- ``spiketriton LIF + nn.Linear`` context: a spiketriton neuron before ``spiketriton.convert``.

**Bytes saved for backward**: one forward under ``torch.autograd.graph.saved_tensors_hooks``; the pack
hook records every tensor the graph keeps, deduplicated by ``untyped_storage().data_ptr()``, counted as
``numel * element_size``; tensors sharing storage with the block's input ``x``, a parameter or a buffer
(alive anyway) are excluded (reported apart). Measured at ``T`` and ``2T`` steps: the difference divided
by ``T*B*K`` is what each input neuron-step adds (the figure the goals are about); what does not grow with
T (e.g. a 1-element 1/tau) is reported as a constant; the total at ``T`` / ``T*B*K`` is reported too.
Linear layers in bf16 have bf16 parameters; the neuron's input is bf16.

Goals: spiketriton <= 4.125 B per neuron-step in fp32 (H in fp32 + 1 bit of spikes) and <= 2.125 B in
bf16 per neuron-step added, for the block as ``spiketriton.convert`` builds it: ``packed_output=True``
(printed met/MISSED on that row). The plain ``spiketriton`` row (a LIF without ``packed_output`` before a
SpikeLinear, as written by hand without ``convert``) keeps 1 bit more: the neuron saves its spikes packed
for its own backward, and SpikeLinear, handed float spikes, packs and saves its own copy for dW (4.25 B in
fp32); the goal does not apply to it, and the output says why.

**Peak CUDA memory** (only where CUDA is available; skipped otherwise): ``torch.cuda.max_memory_allocated``
during one forward + ``autograd.grad`` over ``[x, W, b]`` minus what was allocated before (inputs,
parameters and the upstream gradient), and what is still allocated after the forward (saved tensors +
output), per neuron-step.

Writes ``bench/results/cpu/memory.json`` and ``memory.csv`` (``memory_cuda.csv`` with CUDA) — or under
``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, header, save_result  # noqa: E402
from _matmul_cases import saved_bytes_excluding  # noqa: E402
from _neuron_cases import DTYPES, SG_ALPHA, TAU, V_RESET, V_THRESHOLD, make_inputs, parse_shape  # noqa: E402

GOALS = {"fp32": 4.125, "bf16": 2.125}
GOAL_VARIANT = "spiketriton packed_output"  # the block spiketriton.convert builds; the goals are about it
#: why a spiketriton row has no goal
NO_GOAL = {"spiketriton": "no packed_output: SpikeLinear saves its own packed copy of the spikes (+1 bit); "
                          "spiketriton.convert sets packed_output=True",
           "spiketriton LIF + nn.Linear": "context: nn.Linear saves the float spikes"}
VARIANTS = ("spiketriton", "spiketriton packed_output", "spikingjelly", "spiketriton LIF + nn.Linear")


class Block(torch.nn.Module):
    """neuron -> linear, reset before every call (each call is an independent sequence)."""

    def __init__(self, neuron: torch.nn.Module, linear: torch.nn.Module, reset: Callable[[], None]):
        super().__init__()
        self.neuron = neuron
        self.linear = linear
        self._reset = reset

    def forward(self, x):
        self._reset()
        return self.linear(self.neuron(x))


def build(variant: str, K: int, N: int, dtype: torch.dtype, device, seed: int = 0) -> Block:
    """The block for ``variant``; every variant gets the same linear weights (``seed``). Raises what the
    library raises (e.g. TypeError where ``LIF(packed_output=True)`` does not exist yet)."""
    torch.manual_seed(seed)
    ref = torch.nn.Linear(K, N)
    if variant.startswith("spiketriton"):
        import spiketriton as st
        from spiketriton import surrogate as sg

        kw = dict(tau=TAU, decay_input=True, v_threshold=V_THRESHOLD, v_reset=V_RESET,
                  surrogate=sg.Sigmoid(SG_ALPHA), detach_reset=False)
        if variant == "spiketriton packed_output":
            kw["packed_output"] = True
        lif = st.LIF(**kw)
        lin = torch.nn.Linear(K, N) if variant == "spiketriton LIF + nn.Linear" else st.SpikeLinear(K, N)
        reset = lif.reset
    elif variant == "spikingjelly":
        from spikingjelly.activation_based import layer, neuron
        from spikingjelly.activation_based import surrogate as sjs

        lif = neuron.LIFNode(tau=TAU, decay_input=True, v_threshold=V_THRESHOLD, v_reset=V_RESET,
                             surrogate_function=sjs.Sigmoid(alpha=SG_ALPHA), detach_reset=False, step_mode="m")
        lin = layer.Linear(K, N, step_mode="m")
        reset = lif.reset
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    lin.load_state_dict(ref.state_dict())
    lin = lin.to(device=device, dtype=dtype)
    lif = lif.to(device=device)
    return Block(lif, lin, reset)


def measure_saved(block: Block, x: torch.Tensor) -> Dict[str, object]:
    """Saved bytes of one forward; ``x``, the parameters and the buffers (module state such as
    spiketriton's 1/tau, alive anyway and independent of T*B*K) are excluded."""
    state = list(block.parameters()) + list(block.buffers())
    info = saved_bytes_excluding(lambda: block(x), [x] + state)
    del info["out"]
    n = x.numel()
    info["bytes_per_neuron_step"] = info["bytes"] / n
    info["excluded_per_neuron_step"] = info["excluded_bytes"] / n
    return info


def measure_cuda_peak(block: Block, x: torch.Tensor, g: torch.Tensor) -> Dict[str, float]:
    """Peak memory of one training step above what is allocated before it (inputs, parameters, dY)."""
    dev = x.device
    inputs = [x] + [p for p in block.parameters() if p.requires_grad]
    torch.autograd.grad(block(x), inputs, g)  # warm-up (allocator, Triton compilation)
    gc.collect()
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    y = block(x)
    torch.cuda.synchronize(dev)
    after_fwd = torch.cuda.memory_allocated(dev) - base
    grads = torch.autograd.grad(y, inputs, g)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    del y, grads
    n = x.numel()
    return {"peak_extra_MiB": peak / 2**20, "peak_extra_B_per_neuron_step": peak / n,
            "after_fwd_MiB": after_fwd / 2**20, "after_fwd_B_per_neuron_step": after_fwd / n}


def agreement(shape, K, N, device) -> Dict[str, object]:
    """Outputs and gradients of the variants vs SpikingJelly on the same input and weights (fp32)."""
    x0, _ = make_inputs(shape, torch.float32, device=device, seed=3)
    g = torch.randn(tuple(shape[:-1]) + (N,), generator=torch.Generator().manual_seed(4)).to(device)
    res = {}
    for v in VARIANTS:
        try:
            block = build(v, K, N, torch.float32, device)
        except Exception as e:  # noqa: BLE001
            res[v] = f"{type(e).__name__}: {e}"
            continue
        x = x0.clone().requires_grad_()
        y = block(x)
        gx, gw = torch.autograd.grad(y, [x, block.linear.weight], g)
        res[v] = (y.detach(), gx, gw)
    base = res.get("spikingjelly")
    out = {}
    for v, r in res.items():
        if isinstance(r, str):
            out[v] = {"error": r}
        elif v != "spikingjelly" and isinstance(base, tuple):
            out[v] = {"y_max_abs_diff": float((r[0] - base[0]).abs().max()),
                      "grad_x_max_abs_diff": float((r[1] - base[1]).abs().max()),
                      "grad_w_max_abs_diff": float((r[2] - base[2]).abs().max())}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="16,32,1024", help="T,B,K of the block's input (default 16,32,1024)")
    ap.add_argument("--n", type=int, default=1024, help="out_features N of the linear layer (default 1024)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32,bf16,fp16 (default fp32,bf16)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    ap.add_argument("--out", default=str(RESULTS_DIR / "cpu"), help="output folder")
    args = ap.parse_args(argv)

    shape = parse_shape(args.shape)
    if len(shape) != 3:
        ap.error("--shape is T,B,K")
    T, B, K = shape
    N = args.n
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}; expected some of {sorted(DTYPES)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; expected some of {VARIANTS}")
    skipped = []
    try:
        import spikingjelly  # noqa: F401
    except ImportError:
        print("memory.py: spikingjelly is not installed (`pip install --no-deps spikingjelly==2.0.0 loguru`); "
              "measuring spiketriton only.", file=sys.stderr)
        if "spikingjelly" in variants:
            skipped.append({"variant": "spikingjelly", "reason": "spikingjelly is not installed"})
        variants = [v for v in variants if v != "spikingjelly"]
    result = header("memory", "memory.py", argv, "cuda" if torch.cuda.is_available() else "cpu")
    n_steps = T * B * K
    print(f"block: x [T, B, K] = {list(shape)} -> LIF -> linear({K}, {N}); dtypes {dtypes}; "
          f"{n_steps:,d} input neuron-steps", flush=True)

    cpu = torch.device("cpu")
    rows: List[dict] = []
    unavailable: List[dict] = []
    for dname in dtypes:
        dt = DTYPES[dname]
        x0, _ = make_inputs(shape, dt)
        for v in variants:
            try:
                block = build(v, K, N, dt, cpu)
                x = x0.clone().requires_grad_()
                info = measure_saved(block, x)
                # the same block on 2T steps: the difference is what each neuron-step adds (the marginal
                # bytes, which the goals are about); the rest is a constant (e.g. a 1-element 1/tau)
                x2 = torch.cat([x0, x0]).requires_grad_()
                info2 = measure_saved(block, x2)
            except Exception as e:  # noqa: BLE001 - e.g. TypeError: LIF(packed_output=True) not there yet
                msg = f"{type(e).__name__}: {e}"
                unavailable.append({"variant": v, "dtype": dname, "error": msg})
                print(f"  {dname} {v}: unavailable ({msg})", flush=True)
                continue
            goal = GOALS.get(dname) if v == GOAL_VARIANT else None
            marginal = (info2["bytes"] - info["bytes"]) / n_steps
            constant = info["bytes"] - marginal * n_steps
            rows.append({"variant": v, "dtype": dname, "T": T, "B": B, "K": K, "N": N,
                         "saved_bytes": info["bytes"], "saved_B_per_neuron_step": info["bytes_per_neuron_step"],
                         "marginal_B_per_neuron_step": marginal, "constant_bytes": constant,
                         "n_tensors": info["n_tensors"], "excluded_bytes": info["excluded_bytes"],
                         "excluded_B_per_neuron_step": info["excluded_per_neuron_step"],
                         "goal_B_per_neuron_step": goal,
                         "meets_goal": (marginal <= goal + 1e-9) if goal is not None else None,
                         "goal_note": NO_GOAL.get(v),
                         "tensors": json.dumps(info["tensors"])})
            gc.collect()
    agree = agreement(shape, K, N, cpu) if "spikingjelly" in variants else {}

    cuda_rows: List[dict] = []
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        for dname in dtypes:
            dt = DTYPES[dname]
            x0, _ = make_inputs(shape, dt, device=dev)
            g = torch.randn((T, B, N), generator=torch.Generator().manual_seed(2)).to(device=dev, dtype=dt)
            for v in variants:
                try:
                    block = build(v, K, N, dt, dev)
                    x = x0.clone().requires_grad_()
                    saved = measure_saved(block, x)
                    peak = measure_cuda_peak(block, x, g)
                except Exception as e:  # noqa: BLE001
                    print(f"  cuda {dname} {v}: unavailable ({type(e).__name__}: {e})", flush=True)
                    cuda_rows.append({"variant": v, "dtype": dname, "error": f"{type(e).__name__}: {e}"})
                    continue
                cuda_rows.append({"variant": v, "dtype": dname, "T": T, "B": B, "K": K, "N": N,
                                  "saved_B_per_neuron_step": saved["bytes_per_neuron_step"], **peak,
                                  "tensors": json.dumps(saved["tensors"])})
                del block, x
                gc.collect()
                torch.cuda.empty_cache()
    else:
        print("peak CUDA memory: skipped (CUDA is not available here)", flush=True)

    # report
    print()
    print(f"{'dtype':5} {'variant':28} {'B/neuron-step':>13} {'(total/TBK)':>11} {'+const B':>8} {'goal':>6} {'':7} "
          f"tensors kept (shape:dtype)")
    for r in rows:
        goal = f"{r['goal_B_per_neuron_step']:6.3f}" if r["goal_B_per_neuron_step"] is not None else f"{'-':>6}"
        met = "" if r["meets_goal"] is None else ("met" if r["meets_goal"] else "MISSED")
        print(f"{r['dtype']:5} {r['variant']:28} {r['marginal_B_per_neuron_step']:13.4f} "
              f"{r['saved_B_per_neuron_step']:11.5f} {r['constant_bytes']:8.0f} {goal} {met:7} {r['tensors']}")
    print("(B/neuron-step: what each input neuron-step adds, from the saved bytes at T and 2T steps; total/TBK: all "
          "saved bytes at T steps / T*B*K; +const: bytes that do not grow with T, e.g. a 1-element 1/tau)")
    for v in dict.fromkeys(r["variant"] for r in rows if r["goal_note"]):
        print(f"(no goal for {v}: {NO_GOAL[v]})")
    for u in unavailable:
        print(f"{u['dtype']:5} {u['variant']:28} {'unavailable':>20}        {u['error']}")
    if agree:
        print("\nagreement with SpikingJelly (fp32, same input and weights):")
        for v, a in agree.items():
            print(f"  {v}: {a}")
    if cuda_rows:
        print(f"\n{'dtype':5} {'variant':28} {'CUDA peak extra MiB':>20} {'B/neuron-step':>14} {'after fwd MiB':>14}")
        for r in cuda_rows:
            if "error" in r:
                print(f"{r['dtype']:5} {r['variant']:28} {'unavailable':>20}  {r['error']}")
            else:
                print(f"{r['dtype']:5} {r['variant']:28} {r['peak_extra_MiB']:20.2f} "
                      f"{r['peak_extra_B_per_neuron_step']:14.3f} {r['after_fwd_MiB']:14.2f}")

    result.update({
        "config": {
            "shape_TBK": list(shape), "out_features": N, "dtypes": dtypes, "variants": variants,
            "cpu_path": "Triton interpreter (TRITON_INTERPRET=1)" if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
                        else "PyTorch path (the default on CPU)",
            "neuron": f"LIF tau={TAU}, decay_input=True, v_threshold={V_THRESHOLD}, v_reset={V_RESET}, "
                      f"Sigmoid(alpha={SG_ALPHA}), detach_reset=False", "input": "x ~ N(1, 1), requires grad",
            "measure": "saved_tensors_hooks pack hook, dedup by untyped_storage().data_ptr(), numel*element_size; "
                       "x, parameters and buffers excluded; / (T*B*K)",
            "saved_bytes_measured_on": "cpu (the graph's saved tensors do not depend on the device)",
        },
        "goals_B_per_neuron_step": GOALS,
        "goal_variant": GOAL_VARIANT,
        "no_goal": {v: NO_GOAL[v] for v in variants if v in NO_GOAL},
        "saved_bytes": rows,
        "unavailable": unavailable,
        "agreement_vs_spikingjelly_fp32": agree,
        "cuda_peak": cuda_rows or "skipped: CUDA not available",
        "skipped": skipped + ([] if cuda_rows else [{"part": "cuda_peak", "reason": "CUDA is not available"}]),
    })
    save_result(args.out, "memory", result, {"memory": rows, "memory_cuda": cuda_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
