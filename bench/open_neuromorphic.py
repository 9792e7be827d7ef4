"""The Open Neuromorphic benchmark: one ``Linear(n, n)`` followed by a LIF neuron, batch 16, T = 500 steps,
forward + backward, with spiketriton, SpikingJelly, snnTorch and Norse side by side (each where it is
installed), plus the time of the three GEMMs of the layer done by torch alone.

    python bench/open_neuromorphic.py                        # CUDA: n = 512, 4096, 8192, 16384 in bf16
                                                             # CPU:  n = 256, 512, 1024 in fp32
    python bench/open_neuromorphic.py --sizes 64,128 --T 20 --reps 3          # seconds, on a CPU

The model on every side: ``x [T, B, n]`` (requires grad, as the output of an earlier layer would) ->
``Linear(n, n)`` applied to the whole sequence (one GEMM over T*B rows) -> a LIF neuron over T -> spikes
``[T, B, n]``; one training step is the forward and ``torch.autograd.grad(spikes, [x, W, b], g)`` with a
fixed N(0, 1) upstream gradient ``g``. Every library gets the same Linear weights (PyTorch's default init,
fixed seed) and the same input ``x = 3 * N(0, 1)`` (about 11 % of the LIF neurons fire per step). Each
library is written in its idiomatic fastest form; where one has several, each is timed and the fastest
counts ("library" column):

- **spiketriton**   ``nn.Linear`` -> ``st.LIF(tau=2)`` (multi-step; Triton kernels on CUDA, the fused
  PyTorch path on CPU), reset before each step;
- **spikingjelly**  ``layer.Linear(step_mode='m')`` -> ``neuron.LIFNode(tau=2, step_mode='m')``, reset before
  each step; SpikingJelly 2.0 picks its CUDA implementation itself (native CUDA if built from source,
  else Triton, recorded); on CUDA also its explicit-precision Triton path (``neuron_storage`` fp32 and the
  input dtype), as in ``neuron_gpu.py``;
- **snntorch**      ``nn.Linear`` -> ``snn.Leaky(beta=0.5, reset_mechanism="zero")`` stepped over T in a Python
  loop (the documented usage; the Linear runs once on the whole sequence, not once per step, which is faster
  and the same math). snnTorch's Leaky adds its input unscaled (``U = beta U + I``) where the LIF of the other
  libraries adds ``(1 - beta) I`` (SpikingJelly's ``decay_input``, Norse's ``dt * tau_mem_inv``), and resets by
  subtraction by default: so its Linear gets the same weights times ``1 - beta`` (exact: 0.5) and the reset to
  zero, which makes it the same neuron (a hard reset to 0) at the same cost;
- **norse**         ``nn.Linear`` -> ``LIFBoxCell`` (a LIF without synaptic current, ``tau_mem_inv=500`` at
  ``dt=1e-3``: decay 0.5) stepped over T in a Python loop, and Norse's sequence module ``norse.torch.LIF`` on
  the whole sequence. ``norse.torch.LIF`` is a current-based LIF (the input charges a synaptic current that
  decays with ``tau_syn_inv=200``, and the membrane integrates the current of the step before): another neuron,
  whose spikes and firing rate differ (its rows say so); it is timed as Norse's sequence module;
- **torch (3 GEMMs)**  the layer's three matrix products alone, ``x @ W.T``, ``g @ W``, ``g.T @ x``, in the
  run's dtype: the floor for any library (the issue's goal: spiketriton at n = 16384 within 1.25x of it);
- **torch (Linear only)**  ``nn.Linear`` forward + backward without a neuron (context).

Like for like: before timing, every variant's spikes (a forward on the same input) are compared with
spiketriton's: ``spike_mismatch_vs_spiketriton`` is the fraction of spikes that differ, next to the firing
rate in the output (0 % for SpikingJelly, snnTorch and Norse's LIFBoxCell: the same LIF; a spike may flip
only where H meets the threshold within rounding). The surrogate gradients differ (spiketriton and
SpikingJelly Sigmoid(4), snnTorch ATan, Norse SuperSpike); the time of a step does not depend on them. Timing: every case is built and probed (one step), then
``--warmup`` untimed steps each, then ``--reps`` rounds in which every case runs once in a new random order
(so that load changes on a shared CPU hit all libraries alike); CUDA events around each step on CUDA,
``time.perf_counter`` on CPU; median, and a case whose slowest step took more than 3x its fastest is marked
"noisy" in the output (the machine was busy). On the CPU one torch thread unless ``--threads N`` (0: torch's
default), recorded with the reason (``_common.set_threads``): with torch's default of 2 threads on the shared
2-core machine, the three GEMMs of n = 64 took 0.10 to 35.6 ms in two steps (OpenMP barriers stalled). Peak CUDA
memory of a step is recorded on CUDA. A library that fails in the requested dtype is tried in fp32
(its rows say which dtype ran); failures are recorded under ``errors``, missing packages under ``skipped``.

On CUDA every row also carries the roofline of its step (``roofline.py``, ``open_neuromorphic_case``): ``bytes``
(the three products' operands and outputs once each, plus the LIF's fused-kernel bytes for a library row),
``flops`` (``3 * 2*T*B*n*n`` + the LIF's), ``bound_ms`` = max(bytes / the copy bandwidth measured at the start,
flops / the GPU's peak for the dtype) and ``roofline_fraction`` = bound_ms / median ms.

Writes ``open_neuromorphic.json`` and ``open_neuromorphic.csv`` under ``bench/results/<device>/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR, copy_bandwidth, device_slug, header, int_list, ms_stats, progress, save_result,
    threads_for, short_error, time_one,
)
from _neuron_cases import DTYPES, kernel_bytes, sj_implementation, sj_precision_node, spikingjelly_node  # noqa: E402
import roofline  # noqa: E402

LIBRARIES = ("spiketriton", "spikingjelly", "snntorch", "norse")
GPU_SIZES, CPU_SIZES = "512,4096,8192,16384", "256,512,1024"
TAU = 2.0           # spiketriton / SpikingJelly LIF; snnTorch beta = Norse's decay = 1 - 1/tau
INPUT_SCALE = 3.0   # x = 3 * N(0, 1): ~11 % of the neurons fire per step after the default-initialised Linear
NOISY = 3.0         # a case whose slowest timed step exceeds this many times its fastest is printed as noisy
#: variants that are not the same neuron as spiketriton's LIF (their spikes and rates are not comparable)
OTHER_NEURON = {"norse[LIF module]": "a current-based LIF (synaptic current, tau_syn_inv=200): another neuron, "
                                     "its spikes and rate are not comparable"}


# --------------------------------------------------------------------------------------------- #
# Models: each builder returns (step function x -> spikes, the Linear) or raises
# --------------------------------------------------------------------------------------------- #


def _linear(n: int, state: dict, dtype, device) -> nn.Linear:
    lin = nn.Linear(n, n)
    lin.load_state_dict(state)
    return lin.to(device=device, dtype=dtype)


def build_spiketriton(n, state, dtype, device):
    import spiketriton as st

    lin, lif = _linear(n, state, dtype, device), st.LIF(tau=TAU)

    def fn(x):
        lif.reset()
        return lif(lin(x))

    return fn, lin


def build_spikingjelly(n, state, dtype, device, storage: Optional[str] = None):
    from spikingjelly.activation_based import layer

    lin = layer.Linear(n, n, step_mode="m")
    lin.load_state_dict(state)
    lin = lin.to(device=device, dtype=dtype)
    node = spikingjelly_node("lif").to(device)
    if storage is not None:
        node = sj_precision_node(node, device, storage)

    def fn(x):
        node.reset()
        return node(lin(x))

    return fn, lin


def step_loop(step, cur: torch.Tensor, state=None) -> torch.Tensor:
    """A single-step neuron ``(input_t, state) -> (spikes_t, state)`` stepped over T in a Python loop
    (snnTorch's and Norse's documented usage of their cells)."""
    out = []
    for t in range(cur.shape[0]):
        z, state = step(cur[t], state)
        out.append(z)
    return torch.stack(out)


def build_snntorch(n, state, dtype, device):
    import snntorch as snn

    beta = 1.0 - 1.0 / TAU
    # the same neuron as the others' LIF: Leaky adds its input unscaled (U = beta U + I) where a LIF with
    # decay_input adds (1 - beta) I, so the Linear gets the weights times 1 - beta (0.5: exact), and a hard
    # reset to zero instead of snnTorch's default subtraction
    lin, lif = _linear(n, state, dtype, device), snn.Leaky(beta=beta, reset_mechanism="zero").to(device)
    with torch.no_grad():
        lin.weight.mul_(1.0 - beta)
        lin.bias.mul_(1.0 - beta)

    def fn(x):
        return step_loop(lif, lin(x), lif.init_leaky())

    return fn, lin


def build_norse_cell(n, state, dtype, device):
    import norse.torch as nt

    lin = _linear(n, state, dtype, device)
    cell = nt.LIFBoxCell(nt.LIFBoxParameters(tau_mem_inv=torch.tensor(1000.0 / TAU))).to(device)

    def fn(x):
        return step_loop(cell, lin(x))

    return fn, lin


def build_norse_lif(n, state, dtype, device):
    import norse.torch as nt

    lin = _linear(n, state, dtype, device)
    lif = nt.LIF(nt.LIFParameters(tau_mem_inv=torch.tensor(1000.0 / TAU))).to(device)

    def fn(x):
        return lif(lin(x))[0]

    return fn, lin


def variants(library: str, device, dname: str) -> List[Tuple[str, Callable]]:
    """(variant name, builder) for a library; SpikingJelly's precision variants (state stored in fp32 and
    in the run's dtype ``dname``) only on CUDA."""
    if library == "spiketriton":
        return [("spiketriton", build_spiketriton)]
    if library == "spikingjelly":
        out = [("spikingjelly", build_spikingjelly)]
        if torch.device(device).type == "cuda":
            out += [(f"spikingjelly[neuron_storage={s}]", lambda *a, s=s: build_spikingjelly(*a, storage=s))
                    for s in dict.fromkeys(("fp32", dname))]
        return out
    if library == "snntorch":
        return [("snntorch[Leaky loop]", build_snntorch)]
    if library == "norse":
        return [("norse[LIFBoxCell loop]", build_norse_cell), ("norse[LIF module]", build_norse_lif)]
    raise ValueError(library)


def _available(library: str) -> Optional[str]:
    """None if the library imports, else why not."""
    mod = {"spiketriton": "spiketriton", "spikingjelly": "spikingjelly.activation_based.neuron",
           "snntorch": "snntorch", "norse": "norse.torch"}[library]
    try:
        __import__(mod)
    except Exception as e:  # noqa: BLE001 - ImportError or a broken install
        return f"{library} is not installed or does not import ({short_error(e, 200)})"
    return None


# --------------------------------------------------------------------------------------------- #
# One measurement
# --------------------------------------------------------------------------------------------- #


def build_cases(n, state, x0, g0, todo, dname, device, errors, agreement, no_baselines, bar) -> List[dict]:
    """Every variant built and probed once (a forward for the firing rate, then a full step) with its own
    zero-argument ``step``; a variant that fails in the run's dtype is retried in fp32. Then the torch
    baselines. The inputs are shared by the cases of one dtype."""
    inputs: Dict[str, tuple] = {}

    def io(dt_name):
        if dt_name not in inputs:
            dt = DTYPES[dt_name]
            inputs[dt_name] = (x0.to(device=device, dtype=dt).requires_grad_(), g0.to(device=device, dtype=dt))
        return inputs[dt_name]

    cases: List[dict] = []
    reference = None  # spiketriton's spikes: every variant is compared with them (like for like)
    for lib, name, build in todo:
        bar.set_postfix_str(f"n={n} {name}")
        for dt_name in dict.fromkeys((dname, "fp32")):
            x, g = io(dt_name)
            try:
                fn, lin = build(n, state, DTYPES[dt_name], device)
                params = [x] + list(lin.parameters())
                step = (lambda fn=fn, params=params, x=x, g=g: torch.autograd.grad(fn(x), params, g))
                with torch.no_grad():
                    s = fn(x)
                rate = float(s.float().mean())
                if name == "spiketriton":
                    reference = s
                mismatch = (float((s.float() != reference.float()).float().mean())
                            if reference is not None and s.shape == reference.shape else None)
                agreement.append({"n": n, "variant": name, "dtype": dt_name, "firing_rate": rate,
                                  "spike_mismatch_vs_spiketriton": mismatch, "note": OTHER_NEURON.get(name)})
                del s
                step()  # the backward too: compilation, allocator
                cases.append({"library": lib, "variant": name, "dtype": dt_name, "step": step, "firing_rate": rate,
                              "spike_mismatch_vs_spiketriton": mismatch, "times": []})
                break
            except Exception as e:  # noqa: BLE001 - one library failing must not lose the rest
                errors.append({"n": n, "variant": name, "dtype": dt_name, "error": short_error(e),
                               "traceback": traceback.format_exc(limit=4)})
                print(f"  n={n} {name} {dt_name}: failed ({short_error(e, 160)})", flush=True)
        bar.update(1)
    del reference
    if not no_baselines:
        x, g = io(dname)
        for name, fn in torch_baselines(n, state, x, g, DTYPES[dname], device):
            try:
                fn()
                cases.append({"library": name, "variant": name, "dtype": dname, "step": fn, "times": []})
            except Exception as e:  # noqa: BLE001
                errors.append({"n": n, "variant": name, "dtype": dname, "error": short_error(e)})
            bar.update(1)
    return cases


def add_ratios(rows: List[dict]) -> None:
    """Per n: each library's fastest variant, and the ratios the goals are about (in place)."""
    for r in rows:
        same_n = [o for o in rows if o["n"] == r["n"]]
        st_ = [o["median_ms"] for o in same_n if o["library"] == "spiketriton"]
        gm = [o["median_ms"] for o in same_n if o["library"] == "torch (3 GEMMs)"]
        lib_best = min(o["median_ms"] for o in same_n if o["library"] == r["library"])
        r["fastest_of_library"] = r["median_ms"] == lib_best
        r["x_vs_spiketriton"] = r["median_ms"] / st_[0] if st_ else None
        r["x_vs_3_gemms"] = r["median_ms"] / gm[0] if gm else None


def peak_memory_MiB(step, device) -> float:
    """Peak CUDA memory of one step above what was allocated before it."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def torch_baselines(n, state, x, g, dtype, device):
    """(name, zero-argument step) for the three GEMMs and for nn.Linear fwd+bwd alone."""
    lin = _linear(n, state, dtype, device)
    W = lin.weight.detach()
    x2, g2 = x.detach().reshape(-1, n), g.reshape(-1, n)

    def gemms():
        return x2 @ W.t(), g2 @ W, g2.t() @ x2

    def linear_only():
        return torch.autograd.grad(lin(x), [x, lin.weight, lin.bias], g)

    return [("torch (3 GEMMs)", gemms), ("torch (Linear only)", linear_only)]


# --------------------------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------------------------- #


def _rate_text(row: dict) -> str:
    """' (rate 0.110, spikes = spiketriton's)': the firing rate and whether the spikes are spiketriton's
    (like for like), plus a 'noisy' mark where the slowest step took more than NOISY x the fastest."""
    parts = []
    if row.get("firing_rate") is not None:
        parts.append(f"rate {row['firing_rate']:.3f}")
    mm = row.get("spike_mismatch_vs_spiketriton")
    if row["variant"] in OTHER_NEURON:
        parts.append(OTHER_NEURON[row["variant"]])
    elif mm is not None and row["variant"] != "spiketriton":
        parts.append("spikes = spiketriton's" if mm == 0 else f"{100 * mm:.3g} % of spikes differ from spiketriton's")
    if row.get("min_ms") and row.get("max_ms", 0) > NOISY * row["min_ms"]:
        parts.append(f"noisy: {row['min_ms']:.2f}-{row['max_ms']:.2f} ms")
    return f" ({'; '.join(parts)})" if parts else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=None, help=f"comma list of n (default {GPU_SIZES} on CUDA, {CPU_SIZES} on CPU)")
    ap.add_argument("--T", type=int, default=500, help="time steps (default 500)")
    ap.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--libraries", default=",".join(LIBRARIES), help="comma list of " + ", ".join(LIBRARIES))
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per case after the probe (default 1)")
    ap.add_argument("--reps", type=int, default=5, help="timed steps per case (default 5)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: 1 on the CPU, see the docstring; 0: torch's default)")
    ap.add_argument("--no-torch-baselines", action="store_true", help="skip the torch GEMM / Linear-only rows")
    ap.add_argument("--copy-gib", type=float, default=1.0, help="CUDA: copy-bandwidth buffer in GiB (roofline)")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/<device>)")
    args = ap.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("open_neuromorphic.py: --device cuda but CUDA is not available", file=sys.stderr)
        return 1
    with threads_for(args.threads, device) as threads:
        return _run(ap, args, device, threads, argv)


def _run(ap, args, device, threads, argv) -> int:
    sizes = int_list(args.sizes or (GPU_SIZES if device.type == "cuda" else CPU_SIZES))
    dname = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    libraries = [lib.strip() for lib in args.libraries.split(",") if lib.strip()]
    for lib in libraries:
        if lib not in LIBRARIES:
            ap.error(f"unknown library {lib!r}; expected some of {LIBRARIES}")
    out = Path(args.out) if args.out else RESULTS_DIR / device_slug(device)
    out.mkdir(parents=True, exist_ok=True)
    result = header("open_neuromorphic", "open_neuromorphic.py", argv, device)

    skipped = []
    todo: List[Tuple[str, str, Callable]] = []
    for lib in libraries:
        why = _available(lib)
        if why:
            skipped.append({"library": lib, "reason": why})
            print(f"  {lib}: skipped ({why})", flush=True)
        else:
            todo += [(lib, name, b) for name, b in variants(lib, device, dname)]
    sj_impl = sj_implementation("lif", device) if any(lib == "spikingjelly" for lib, _, _ in todo) else None
    print(f"{result['device']['name']}: Linear(n, n) + LIF, n in {sizes}, T={args.T}, batch {args.batch}, {dname}; "
          f"{[v for _, v, _ in todo]}; torch threads {threads['torch_num_threads']} ({threads['threads_why']})",
          flush=True)

    rows: List[dict] = []
    errors: List[dict] = []
    agreement: List[dict] = []
    copy, gpu = None, None
    if device.type == "cuda":  # the roofline's memory term
        copy = copy_bandwidth(int(args.copy_gib * 2**30), device, 25, 100)
        gpu = result["device"]["name"]
        print(f"copy bandwidth: {copy['gbps']:.0f} GB/s", flush=True)
    result.update(
        config={"sizes": sizes, "T": args.T, "batch": args.batch, "dtype": dname, "libraries": libraries,
                "variants": [v for _, v, _ in todo], "warmup": args.warmup, "reps": args.reps,
                "input": f"x = {INPUT_SCALE} * N(0, 1), requires grad; upstream grad g ~ N(0, 1) on the spikes",
                "step": "forward, then torch.autograd.grad(spikes, [x, W, b], g)",
                "linear": "PyTorch default init, seed 0, the same weights for every library",
                "timer": "CUDA events around each step (median)" if device.type == "cuda"
                         else "time.perf_counter around each step (median)",
                "neurons": {"spiketriton": f"st.LIF(tau={TAU})", "spikingjelly": f"neuron.LIFNode(tau={TAU}, step_mode='m'), "
                            "Sigmoid(alpha=4)", "snntorch": f"snn.Leaky(beta={1 - 1 / TAU}, reset_mechanism='zero') (ATan "
                            f"surrogate), its Linear's weights and bias times {1 / TAU:g} (Leaky does not scale its input)",
                            "norse": f"LIFBoxCell / LIF with tau_mem_inv={1000 / TAU:g}, dt=1e-3 (SuperSpike); "
                                     "norse.torch.LIF is current-based (another neuron)"},
                "torch_num_threads": threads["torch_num_threads"], "threads_why": threads["threads_why"]},
        spikingjelly_implementation=sj_impl,
        copy_bandwidth=copy,
        roofline=roofline.context(copy, gpu) if copy else None,
        skipped=skipped,
        errors=errors,
        agreement_vs_spiketriton=agreement,
        cases=rows,
        partial=True,
        sizes_done=[],
    )
    n_base = 0 if args.no_torch_baselines else 2
    bar = progress(len(sizes) * (len(todo) + n_base) * (1 + args.warmup + args.reps), "open_neuromorphic")
    for n in sizes:
        torch.manual_seed(0)
        state = nn.Linear(n, n).state_dict()
        gen = torch.Generator().manual_seed(1)
        x0 = INPUT_SCALE * torch.randn((args.T, args.batch, n), generator=gen)
        g0 = torch.randn((args.T, args.batch, n), generator=gen)
        cases = build_cases(n, state, x0, g0, todo, dname, device, errors, agreement, args.no_torch_baselines, bar)
        # interleaved: warm-up, then rounds in which every case runs once in a new random order, so that a
        # change in machine load (a shared CPU) hits all libraries alike
        for c in cases:
            for _ in range(args.warmup):
                c["step"]()
                bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rng = random.Random(n)
        order = list(cases)
        for _ in range(args.reps):
            rng.shuffle(order)
            for c in order:
                c["times"].append(time_one(c["step"], device))
                bar.update(1)
        for c in cases:
            row = {"n": n, "library": c["library"], "variant": c["variant"], "dtype": c["dtype"], "T": args.T,
                   "batch": args.batch, **ms_stats(c["times"]), "firing_rate": c.get("firing_rate"),
                   "spike_mismatch_vs_spiketriton": c.get("spike_mismatch_vs_spiketriton")}
            if device.type == "cuda":
                row["peak_extra_MiB"] = peak_memory_MiB(c["step"], device)
                nb, terms = roofline.open_neuromorphic_case(
                    c["library"], args.T, args.batch, n, c["dtype"],
                    kernel_bytes((args.T, args.batch, n), c["dtype"], "fwd+bwd", neuron="lif"))
                roofline.with_roofline(row, nb, terms, copy["gbps"], gpu)
            rows.append(row)
            rate = _rate_text(row)
            roof = (f" ({100 * row['roofline_fraction']:.0f}% of the {row['bound_ms']:.2f} ms roofline)"
                    if row.get("roofline_fraction") else "")
            print(f"  n={n:6d} {c['variant']:36} {c['dtype']}: {row['median_ms']:10.2f} ms{rate}{roof}", flush=True)
        del cases
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # after every n: a run cut short (a stage's time box, SIGINT) keeps the sizes it finished
        add_ratios(rows)
        result["sizes_done"].append(n)
        if n != sizes[-1]:
            save_result(out, "open_neuromorphic", result, {"open_neuromorphic": rows})
    bar.close()

    add_ratios(rows)
    print()
    print(f"{'n':>6} " + " ".join(f"{lib[:18]:>18}" for lib in dict.fromkeys(r["library"] for r in rows)) + "   (ms, fastest variant)")
    for n in sizes:
        best = {}
        for r in rows:
            if r["n"] == n and r["fastest_of_library"]:
                best[r["library"]] = r["median_ms"]
        print(f"{n:6d} " + " ".join(f"{best.get(lib, float('nan')):18.2f}" for lib in dict.fromkeys(r["library"] for r in rows)))

    result.update(partial=False, sizes_done=sizes)
    save_result(out, "open_neuromorphic", result, {"open_neuromorphic": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
