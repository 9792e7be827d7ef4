"""GPU benchmark of the fused neuron kernels: ms, effective GB/s, % of copy bandwidth, vs SpikingJelly 2.0.

    python bench/neuron_gpu.py                     # LIF, IF, PLIF at [T=32, B=64, N=65536], fp32 + bf16
    python bench/neuron_gpu.py --sweep             # + block-size sweep (_BLOCK x _NUM_WARPS)
    python bench/neuron_gpu.py --sweep-only --sweep-neurons lif,plif

Needs a CUDA GPU (exits with a message otherwise). For every neuron and dtype:

- spiketriton through the public functional API (``lif`` / ``if_neuron`` / ``plif``; the Triton
  kernels on CUDA), four passes: ``infer`` (no_grad forward), ``fwd`` (forward that stores for
  backward), ``bwd`` (``torch.autograd.grad`` on a retained graph), ``fwd+bwd``;
- SpikingJelly 2.0 ``LIFNode`` / ``IFNode`` / ``ParametricLIFNode`` (``step_mode='m'``, reset before
  each call), which picks its own CUDA implementation (native CUDA if built, else Triton; the choice
  is recorded; ``--sj-impl`` forces one through SpikingJelly's ``SJ_*_CUDA_IMPLEMENTATION``
  variables). For bf16 input the default node keeps its state in bf16, which SpikingJelly runs on
  its Torch reference, so the script also tries its explicit-precision Triton path
  (``prepare_model_for_precision(node, device, PrecisionConfig(neuron_storage=...))``) and compares
  against the fastest variant that ran ("SJ best").

Effective GB/s = the bytes the kernels must move (``kernel_bytes``: forward reads x and writes
spikes, H, packed spike bits and v_last; backward reads grad_spikes, H and the bits and writes
grad_x; H in x's dtype, fp32 for PLIF in bf16/fp16) / the measured time. The same byte count is used for SpikingJelly's GB/s, so its figure
is "as if it moved only what ours must". Copy bandwidth: ``dst.copy_(src)`` on a ``--copy-gib``
buffer, GB/s = 2 * bytes / time. Timing: ``triton.testing.do_bench`` (L2 flushed before each rep,
median and 20/80 % quantiles of CUDA-event times).

Roofline (``roofline.py``): every row also carries ``bytes`` (= ``kernel_bytes``), ``flops`` (an estimate of the
model equations' arithmetic), ``bound_ms`` = max(bytes / copy bandwidth, flops / the fp32 peak) and
``roofline_fraction`` = bound_ms / median ms.

Goals (issue 11, bench/README.md): fwd+bwd at >= 90 % of copy bandwidth and >= 1.5x SpikingJelly's best.

The neurons run one after the other, each in every dtype (``--neurons lif,if,plif`` runs LIF fp32, LIF bf16,
then IF ...), and the files are rewritten after each neuron x dtype, so a time box keeps the first ones.

Writes ``bench/results/<gpu-name-slug>/neuron_gpu.json``, ``neuron_gpu.csv``,
``neuron_gpu_saved_bytes.csv``, ``neuron_gpu_sweep.csv`` (with ``--sweep``) and ``neuron_gpu.png``
(if matplotlib imports); with ``--tag T`` the names are ``neuron_gpu_T.*`` (the report merges every
``neuron_gpu*.json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR, bench_ms, copy_bandwidth, device_slug, gbps, header, int_list, name_list, progress, short_error,
    stamp, write_csv, write_json,
)
from _neuron_cases import (  # noqa: E402
    DTYPES, NEURONS, SG_ALPHA, TAU, V_RESET, V_THRESHOLD, kernel_bytes, make_inputs, parse_shape,
    reference_runner, saved_bytes, sj_implementation, sj_variants, spiketriton_runner,
)
import roofline  # noqa: E402

PASSES = ("infer", "fwd", "bwd", "fwd+bwd")
GOAL_COPY_FRACTION = 0.90  # issue 11 (was 0.85)
GOAL_SPEEDUP = 1.5         # issue 11 (was 1.3)
SJ_ENV = {"lif": "SJ_LIF_CUDA_IMPLEMENTATION", "if": "SJ_IF_CUDA_IMPLEMENTATION", "plif": "SJ_PLIF_CUDA_IMPLEMENTATION"}


# --------------------------------------------------------------------------------------------- #
# Device-independent helpers
# --------------------------------------------------------------------------------------------- #


def _ints(text: str) -> List[int]:
    return int_list(text)


def _names(text: str, allowed: Sequence[str], what: str) -> List[str]:
    return name_list(text, allowed, what, "neuron_gpu.py")


_short_error = short_error


# --------------------------------------------------------------------------------------------- #
# Timing
# --------------------------------------------------------------------------------------------- #


def _empty_cache(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def time_passes(runner, x0, g, warmup_ms, rep_ms, passes=PASSES) -> Dict[str, Dict[str, float]]:
    """ms for each pass of one runner; also the peak extra memory of one fwd+bwd (CUDA)."""
    dev = x0.device
    out: Dict[str, Dict[str, float]] = {}
    xg = x0.clone().requires_grad_()
    if "infer" in passes:
        out["infer"] = bench_ms(lambda: runner.infer(x0), warmup_ms, rep_ms, dev)
    if "fwd" in passes:
        out["fwd"] = bench_ms(lambda: runner(xg), warmup_ms, rep_ms, dev)
    if "bwd" in passes:
        s = runner(xg)
        inputs = [xg] + runner.params
        out["bwd"] = bench_ms(lambda: torch.autograd.grad(s, inputs, g, retain_graph=True), warmup_ms, rep_ms, dev)
        del s
    if "fwd+bwd" in passes:
        out["fwd+bwd"] = bench_ms(lambda: runner.train_step(xg, g), warmup_ms, rep_ms, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            runner.train_step(xg, g)
            torch.cuda.synchronize(dev)
            out["fwd+bwd"]["peak_extra_MiB"] = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    del xg
    return out


def agreement(st, other, x0, g) -> Dict[str, float]:
    """Spike mismatches and max |grad x difference| between two runners on the same input."""
    res = []
    for r in (st, other):
        x = x0.clone().requires_grad_()
        s = r(x)
        gx = torch.autograd.grad(s, x, g)[0]
        res.append((s.detach(), gx.float()))
    (s1, g1), (s2, g2) = res
    return {
        "spike_mismatches": int((s1 != s2).sum()),
        "firing_rate": float(s1.float().mean()),
        "grad_x_max_abs_diff": float((g1 - g2).abs().max()),
        "grad_x_max_abs": float(g2.abs().max()),
    }


# --------------------------------------------------------------------------------------------- #
# Block-size sweep
# --------------------------------------------------------------------------------------------- #


def block_sweep(shape, neurons, dtypes, blocks, warps, warmup_ms, rep_ms, copy_gbps, device="cuda",
                rows: Optional[List[dict]] = None, on_row=None, gpu: Optional[str] = None) -> List[dict]:
    """Time spiketriton's fwd, bwd and fwd+bwd for each (_BLOCK, _NUM_WARPS); restores the constants. Rows are
    appended to ``rows`` (when given) as they come and ``on_row()`` is called after each (incremental files)."""
    import spiketriton.kernels.neuron as K

    original = (K._BLOCK, K._NUM_WARPS)
    rows = [] if rows is None else rows
    try:
        for dname in dtypes:
            x0, g = make_inputs(shape, DTYPES[dname], device=device)
            for neuron in neurons:
                for block in blocks:
                    for nw in warps:
                        K._BLOCK, K._NUM_WARPS = block, nw
                        row = {"neuron": neuron, "dtype": dname, "BLOCK": block, "num_warps": nw}
                        try:
                            run = spiketriton_runner(neuron, device=device)
                            t = time_passes(run, x0, g, warmup_ms, rep_ms, passes=("fwd", "bwd", "fwd+bwd"))
                            for p, v in t.items():
                                row[f"{p}_ms"] = v["median_ms"]
                                row[f"{p}_gbps"] = gbps(kernel_bytes(shape, dname, p, neuron=neuron), v["median_ms"])
                            row["fwd+bwd_pct_copy_bw"] = 100.0 * row["fwd+bwd_gbps"] / copy_gbps
                            nb, terms = roofline.neuron_case(neuron, "fwd+bwd", shape,
                                                             kernel_bytes(shape, dname, "fwd+bwd", neuron=neuron))
                            rl = roofline.roofline(nb, terms, copy_gbps, gpu, row["fwd+bwd_ms"])
                            row["fwd+bwd_bound_ms"] = rl["bound_ms"]
                            row["fwd+bwd_roofline_fraction"] = rl["roofline_fraction"]
                        except Exception as e:  # noqa: BLE001 - e.g. out of registers/shared memory
                            row["error"] = _short_error(e)
                        rows.append(row)
                        print(f"  sweep {neuron:4} {dname} BLOCK={block:5} warps={nw}: "
                              + (f"fwd+bwd {row['fwd+bwd_ms']:.3f} ms ({row['fwd+bwd_pct_copy_bw']:.0f}% copy bw)"
                                 if "error" not in row else row["error"]), flush=True)
                        if on_row is not None:
                            on_row()
            del x0, g
            _empty_cache(device)
    finally:
        K._BLOCK, K._NUM_WARPS = original
    return rows


def sweep_best(rows: List[dict]) -> List[dict]:
    best = {}
    for r in rows:
        if "error" in r:
            continue
        key = (r["neuron"], r["dtype"])
        if key not in best or r["fwd+bwd_ms"] < best[key]["fwd+bwd_ms"]:
            best[key] = r
    return list(best.values())


def add_speedups(rows: List[dict]) -> None:
    """Speedups vs SpikingJelly's fastest variant, per neuron, dtype and pass (in place)."""
    for r in rows:
        sj = [o["median_ms"] for o in rows if o["impl"].startswith("spikingjelly") and o["neuron"] == r["neuron"]
              and o["dtype"] == r["dtype"] and o["pass"] == r["pass"]]
        r["sj_best_ms"] = min(sj) if sj else None
        r["speedup_vs_sj_best"] = (min(sj) / r["median_ms"]) if sj else None


def goal_summary(rows: List[dict]) -> List[dict]:
    """spiketriton's fwd+bwd rows against the goals (% of copy bandwidth, x SpikingJelly's best)."""
    out = []
    for r in rows:
        if r["impl"] == "spiketriton" and r["pass"] == "fwd+bwd":
            out.append({
                "neuron": r["neuron"], "dtype": r["dtype"], "pct_copy_bw": r["pct_copy_bw"],
                "meets_copy_goal": r["pct_copy_bw"] >= 100 * GOAL_COPY_FRACTION,
                "roofline_fraction": r.get("roofline_fraction"),
                "speedup_vs_sj_best": r.get("speedup_vs_sj_best"),
                "meets_speedup_goal": (r["speedup_vs_sj_best"] or 0) >= GOAL_SPEEDUP if r.get("sj_best_ms") else None,
            })
    return out


# --------------------------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------------------------- #


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="GPU benchmark of spiketriton's fused neuron kernels vs SpikingJelly 2.0")
    ap.add_argument("--shape", default="32,64,65536", help="T,B,N (default 32,64,65536)")
    ap.add_argument("--neurons", default="lif,if,plif", help="comma list of lif,if,plif")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32,bf16,fp16")
    ap.add_argument("--copy-gib", type=float, default=2.0, help="copy-bandwidth buffer size in GiB (default 2)")
    ap.add_argument("--warmup-ms", type=int, default=25, help="do_bench warm-up time per measurement")
    ap.add_argument("--rep-ms", type=int, default=200, help="do_bench repetition time per measurement")
    ap.add_argument("--no-sj", action="store_true", help="skip SpikingJelly")
    ap.add_argument("--sj-impl", default=None, choices=("auto", "cuda", "triton", "torch"),
                    help="force SpikingJelly's CUDA implementation (sets SJ_{LIF,IF,PLIF}_CUDA_IMPLEMENTATION)")
    ap.add_argument("--no-check", action="store_true", help="skip the spiketriton/SpikingJelly agreement check")
    ap.add_argument("--no-context", action="store_true",
                    help="skip the context rows: spiketriton's PyTorch path (backend='torch') and the autograd reference")
    ap.add_argument("--sweep", action="store_true", help="also sweep the kernel block size and warps")
    ap.add_argument("--sweep-only", action="store_true", help="only the block-size sweep (and copy bandwidth)")
    ap.add_argument("--sweep-blocks", default="256,512,1024,2048", help="values of kernels.neuron._BLOCK")
    ap.add_argument("--sweep-warps", default="2,4,8", help="values of kernels.neuron._NUM_WARPS")
    ap.add_argument("--sweep-neurons", default="lif", help="neurons to sweep (default lif)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/<gpu-name-slug>)")
    ap.add_argument("--tag", default=None, help="suffix of the output file names: neuron_gpu_TAG.json ...")
    ap.add_argument("--smoke-cpu", action="store_true",
                    help="check the script itself without a GPU: tiny CPU tensors (default shape 4,2,64), "
                         "perf_counter timing, output to a temporary folder unless --out; numbers are meaningless")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke_cpu:
        print(
            "neuron_gpu.py: CUDA is not available here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); this benchmark needs an "
            "NVIDIA GPU and a CUDA build of torch. Nothing was measured. For CPU numbers run "
            "`python bench/neuron_cpu.py`; to check this script without a GPU, add --smoke-cpu.",
            file=sys.stderr,
        )
        return 1
    try:
        import triton  # noqa: F401
    except ImportError:
        print("neuron_gpu.py: triton is not installed; the spiketriton kernels need it.", file=sys.stderr)
        return 1
    if args.sj_impl:
        for var in SJ_ENV.values():
            os.environ[var] = args.sj_impl  # read when SpikingJelly's ops are first imported
    have_sj = not args.no_sj
    skipped: List[dict] = [] if have_sj else [{"impl": "spikingjelly", "reason": "--no-sj"}]
    if have_sj:
        try:
            import spikingjelly  # noqa: F401
        except ImportError:
            print("neuron_gpu.py: spikingjelly is not installed; timing spiketriton only "
                  "(`pip install --no-deps spikingjelly==2.0.0 loguru` to compare).", file=sys.stderr)
            have_sj = False
            skipped.append({"impl": "spikingjelly", "reason": "spikingjelly is not installed"})

    import spiketriton.kernels.neuron as K

    neurons = _names(args.neurons, NEURONS, "neuron")
    dtypes = _names(args.dtypes, list(DTYPES), "dtype")
    if args.smoke_cpu:
        import tempfile

        device = torch.device("cpu")
        shape = parse_shape(args.shape if args.shape != "32,64,65536" else "4,2,64")
        gpu = "cpu-smoke-test"
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="neuron_gpu_smoke_"))
        args.copy_gib = min(args.copy_gib, 1 / 64)
    else:
        device = torch.device("cuda")
        shape = parse_shape(args.shape)
        gpu = torch.cuda.get_device_name(device)
        out = Path(args.out) if args.out else RESULTS_DIR / device_slug(device)
    result = header("neuron_gpu", "neuron_gpu.py", argv, device)
    stem = "neuron_gpu" + (f"_{args.tag}" if args.tag else "")
    if args.smoke_cpu:
        result["device"].update(smoke_cpu=True, name="cpu-smoke-test (numbers meaningless)")
    out.mkdir(parents=True, exist_ok=True)
    n_steps = math.prod(shape)
    print(f"{gpu}: shape [T, B, N] = {list(shape)}, neurons {neurons}, dtypes {dtypes}, "
          f"kernel BLOCK={K._BLOCK} num_warps={K._NUM_WARPS}", flush=True)

    copy = copy_bandwidth(int(args.copy_gib * 2**30), device, args.warmup_ms, args.rep_ms)
    print(f"copy bandwidth ({args.copy_gib:g} GiB dst.copy_(src)): {copy['gbps']:.0f} GB/s", flush=True)

    rows: List[dict] = []
    saved_rows: List[dict] = []
    checks: List[dict] = []
    sj_impl: Dict[str, object] = {}
    errors: List[dict] = []
    sweep_rows: List[dict] = []
    result.update({
        "config": {
            "shape_TBN": list(shape), "neurons": neurons, "dtypes": dtypes, "tau": TAU, "decay_input": True,
            "v_threshold": V_THRESHOLD, "v_reset": V_RESET, "surrogate": f"Sigmoid(alpha={SG_ALPHA})",
            "input": "x ~ N(1, 1)", "upstream_grad": "fixed N(0, 1)",
            "timer": f"triton.testing.do_bench(warmup={args.warmup_ms}, rep={args.rep_ms}), median",
            "kernel_BLOCK": K._BLOCK, "kernel_NUM_WARPS": K._NUM_WARPS, "sj_impl_forced": args.sj_impl,
            "gbps": "kernel_bytes (what the fused kernels must move) / median time, for every impl",
            "context_impls": "spiketriton[torch path] = functional API with backend='torch'; reference = autograd oracle",
        },
        "copy_bandwidth": copy,
        "roofline": roofline.context(copy, None if args.smoke_cpu else gpu),
        "spikingjelly_implementation": sj_impl,
        "goals": {"copy_fraction": GOAL_COPY_FRACTION, "speedup_vs_sj": GOAL_SPEEDUP, "summary": []},
        "cases": rows,
        "saved_bytes": saved_rows,
        "agreement": checks,
        "errors": errors,
        "sweep": sweep_rows,
        "sweep_best": [],
        "partial": True,
        "skipped": skipped,
    })

    def dump(partial: bool) -> None:
        """neuron_gpu.json and its CSVs as they stand: after every neuron x dtype, after the main run (before
        any sweep) and after every sweep row, so that a run cut short (SIGINT at a stage's time box) keeps
        what it measured and the report uses it (``partial`` says it was cut short)."""
        add_speedups(rows)
        result["goals"]["summary"] = goal_summary(rows)
        result["sweep_best"] = sweep_best(sweep_rows)
        result["partial"] = partial
        write_json(out / f"{stem}.json", result)
        meta = stamp(result)
        for name, rs in ((f"{stem}.csv", rows), (f"{stem}_saved_bytes.csv", saved_rows),
                         (f"{stem}_sweep.csv", sweep_rows)):
            if rs:
                write_csv(out / name, rs, meta)

    rl_gpu = None if args.smoke_cpu else gpu  # the smoke test's "GPU" is a CPU: no peaks
    if not args.sweep_only:
        bar = progress(len(dtypes) * len(neurons), "neuron_gpu")
        inputs: Dict[str, tuple] = {}
        # neuron-major (LIF fp32, LIF bf16, IF fp32 ...): a time box keeps the first neuron in every dtype
        for neuron in neurons:
            for dname in dtypes:
                if dname not in inputs:  # made once per dtype, shared by the neurons (both fit on a GPU)
                    inputs[dname] = make_inputs(shape, DTYPES[dname], device=device)
                x0, g = inputs[dname]
                bar.set_postfix_str(f"{neuron} {dname}")
                runners = [("spiketriton", spiketriton_runner(neuron, device=device), None)]
                if have_sj:
                    sj_impl[neuron] = sj_implementation(neuron, device)
                    runners += sj_variants(neuron, dname, device)
                if not args.no_context:  # context: the same algorithm in torch ops, and the autograd oracle
                    runners += [("spiketriton[torch path]", spiketriton_runner(neuron, backend="torch", device=device), None),
                                ("reference", reference_runner(neuron, device=device), None)]
                for impl, run, err in runners:
                    if run is None:
                        errors.append({"neuron": neuron, "dtype": dname, "impl": impl, "error": err})
                        print(f"  {neuron:4} {dname} {impl}: unavailable ({err})", flush=True)
                        continue
                    try:
                        probe = x0[:2].clone().requires_grad_()
                        grad_fn = type(run(probe).grad_fn).__name__
                        del probe
                        if impl != "spiketriton" and not args.no_check:
                            checks.append({"neuron": neuron, "dtype": dname, "vs": impl,
                                           **agreement(runners[0][1], run, x0, g)})
                        sb = saved_bytes(run, x0.clone().requires_grad_())
                        saved_rows.append({"neuron": neuron, "dtype": dname, "impl": impl,
                                           **{k: v for k, v in sb.items() if k != "tensors"},
                                           "tensors": json.dumps(sb["tensors"])})
                        t = time_passes(run, x0, g, args.warmup_ms, args.rep_ms)
                    except Exception as e:  # noqa: BLE001 - one failing variant must not lose the rest
                        errors.append({"neuron": neuron, "dtype": dname, "impl": impl, "error": _short_error(e),
                                       "traceback": traceback.format_exc(limit=5)})
                        print(f"  {neuron:4} {dname} {impl}: failed ({_short_error(e)})", flush=True)
                        _empty_cache(device)
                        continue
                    for p, v in t.items():
                        nbytes = kernel_bytes(shape, dname, p, neuron=neuron)
                        row = {"neuron": neuron, "dtype": dname, "impl": impl, "pass": p, **v,
                               "kernel_bytes": nbytes, "gbps": gbps(nbytes, v["median_ms"]),
                               "pct_copy_bw": 100.0 * gbps(nbytes, v["median_ms"]) / copy["gbps"],
                               "ns_per_neuron_step": v["median_ms"] * 1e6 / n_steps, "grad_fn": grad_fn}
                        nb, terms = roofline.neuron_case(neuron, p, shape, nbytes)
                        roofline.with_roofline(row, nb, terms, copy["gbps"], rl_gpu)
                        rows.append(row)
                    print(f"  {neuron:4} {dname} {impl:40} fwd+bwd {t['fwd+bwd']['median_ms']:8.3f} ms  "
                          f"fwd {t['fwd']['median_ms']:7.3f}  bwd {t['bwd']['median_ms']:7.3f}  "
                          f"infer {t['infer']['median_ms']:7.3f}  ({grad_fn})", flush=True)
                    gc.collect()
                    _empty_cache(device)
                bar.update(1)
                dump(partial=True)
        del inputs, x0, g
        _empty_cache(device)
        bar.close()

    add_speedups(rows)

    if args.sweep or args.sweep_only:
        dump(partial=True)  # the main numbers are on disk before the sweep starts
        print(f"block sweep: BLOCK {args.sweep_blocks} x num_warps {args.sweep_warps}", flush=True)
        block_sweep(shape, _names(args.sweep_neurons, NEURONS, "neuron"), dtypes, _ints(args.sweep_blocks),
                    _ints(args.sweep_warps), args.warmup_ms, args.rep_ms, copy["gbps"], device,
                    rows=sweep_rows, on_row=lambda: dump(partial=True), gpu=rl_gpu)

    # report
    summary = goal_summary(rows)
    print()
    print(f"{'neuron':6} {'dtype':5} {'pass':8} {'ST ms':>8} {'GB/s':>7} {'%copy':>6} {'bound ms':>8} {'%roof':>6} "
          f"{'SJ best ms':>10} {'x SJ':>6}")
    for r in rows:
        if r["impl"] != "spiketriton":
            continue
        sjb = f"{r['sj_best_ms']:10.3f}" if r["sj_best_ms"] else f"{'-':>10}"
        spd = f"{r['speedup_vs_sj_best']:6.2f}" if r["speedup_vs_sj_best"] else f"{'-':>6}"
        frac = r.get("roofline_fraction")
        print(f"{r['neuron']:6} {r['dtype']:5} {r['pass']:8} {r['median_ms']:8.3f} {r['gbps']:7.0f} "
              f"{r['pct_copy_bw']:6.1f} {r['bound_ms']:8.3f} {(100 * frac if frac else float('nan')):6.1f} {sjb} {spd}")
    if summary:
        print(f"\ngoals (fwd+bwd): >= {GOAL_COPY_FRACTION:.0%} of copy bandwidth, >= {GOAL_SPEEDUP}x SpikingJelly best")
        for s in summary:
            spd = f"{s['speedup_vs_sj_best']:.2f}x" if s["speedup_vs_sj_best"] else "n/a"
            print(f"  {s['neuron']:4} {s['dtype']}: {s['pct_copy_bw']:.1f}% copy bw "
                  f"[{'met' if s['meets_copy_goal'] else 'MISSED'}], {spd} SJ "
                  f"[{'n/a' if s['meets_speedup_goal'] is None else ('met' if s['meets_speedup_goal'] else 'MISSED')}]")
    best = sweep_best(sweep_rows)
    if best:
        print("\nbest block size (fwd+bwd):")
        for b in best:
            print(f"  {b['neuron']:4} {b['dtype']}: BLOCK={b['BLOCK']} num_warps={b['num_warps']} "
                  f"{b['fwd+bwd_ms']:.3f} ms ({b['fwd+bwd_pct_copy_bw']:.1f}% copy bw)")
    for c in checks:
        print(f"  check {c['neuron']} {c['dtype']} vs {c['vs']}: {c['spike_mismatches']} spike mismatches, "
              f"max |d grad x| {c['grad_x_max_abs_diff']:.3g}")

    dump(partial=False)
    written = [out / f"{stem}.json"] + [out / f for f, rs in (
        (f"{stem}.csv", rows), (f"{stem}_saved_bytes.csv", saved_rows), (f"{stem}_sweep.csv", sweep_rows)) if rs]
    if rows and not args.no_plot:
        import plots

        p = plots.plot_neuron(result, out / f"{stem}.png")
        if p:
            written.append(Path(p))
        else:
            print("matplotlib is not installed: no plot", file=sys.stderr)
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
