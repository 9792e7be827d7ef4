"""CPU timing of the multi-step LIF neuron: spiketriton vs SpikingJelly 2.0, plus bytes saved for backward.

    python bench/neuron_cpu.py                      # T=16, B=32, N=4096, fp32 and bf16, one torch thread
    python bench/neuron_cpu.py --repeats 50 --threads 2 --dtypes fp32

Cases (LIF tau=2, decay_input=True, v_threshold=1, v_reset=0, Sigmoid(alpha=4), x ~ N(1, 1)):

- spiketriton  ``spiketriton.functional.lif(x, backend="torch")``: the default CPU path;
- spikingjelly ``spikingjelly.activation_based.neuron.LIFNode(step_mode='m')``, reset before each call;
- reference    ``spiketriton.reference.neuron_reference``: spiketriton's autograd oracle, for context;

each as ``fwd+bwd`` (forward, then ``torch.autograd.grad`` with a fixed random upstream gradient) and
``infer`` (forward under ``torch.no_grad()``). Timing: ``time.perf_counter`` around one call,
``--warmup`` untimed calls per case, then ``--repeats`` rounds in which every case runs once in turn
(interleaved, so a change in machine load hits all cases alike); the table shows the median (and
the minimum). Speedup = SpikingJelly's median / the case's median (> 1: faster than SpikingJelly).

Effective GB/s = the bytes the fused kernels must move (``_neuron_cases.kernel_bytes``, as on the GPU)
/ the median time, next to the machine's copy bandwidth (a ``--copy-mib`` fp32 tensor copy,
2 * bytes / time). Without SpikingJelly the script times spiketriton and the reference and records
SpikingJelly as skipped.

Agreement, before timing: spikes and grad x of spiketriton against SpikingJelly on the same input (fp32);
without SpikingJelly, against spiketriton's autograd reference (``reference_fp32``), and the record says which.

Threads: one torch thread unless ``--threads N`` (0: torch's default), recorded with the reason
(``_common.set_threads``: torch's default stalls on a shared machine).

Bytes saved for backward: a ``torch.autograd.graph.saved_tensors_hooks`` pack hook records every
tensor the graph keeps (deduplicated by storage; the input itself excluded and reported apart),
divided by T*B*N neuron-steps, for fp32 and bf16 input.

Writes ``bench/results/cpu/neuron_cpu.json``, ``neuron_cpu.csv`` (timings) and
``neuron_cpu_saved_bytes.csv`` (or under ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR, copy_bandwidth, gbps, header, interleaved_rounds, loadavg, progress, save_result,
    threads_for, time_stats,
)
from _neuron_cases import (  # noqa: E402
    DTYPES, SG_ALPHA, TAU, V_RESET, V_THRESHOLD, kernel_bytes, make_inputs, parse_shape, reference_runner,
    saved_bytes, spikingjelly_runner, spiketriton_runner,
)

IMPLS = ("spiketriton", "spikingjelly", "reference")
PASSES = ("fwd+bwd", "infer")


def _runner(impl: str):
    if impl == "spiketriton":
        return spiketriton_runner("lif", backend="torch")
    if impl == "spikingjelly":
        return spikingjelly_runner("lif")
    return reference_runner("lif")


def build_cases(shape, dtypes, impls):
    """One callable per (dtype, impl, pass) with its own input tensors."""
    cases = []
    for dname in dtypes:
        x0, g = make_inputs(shape, DTYPES[dname])
        for impl in impls:
            run = _runner(impl)
            xg = x0.clone().requires_grad_()
            cases.append(dict(dtype=dname, impl=impl, pass_="fwd+bwd", fn=(lambda r=run, x=xg, g=g: r.train_step(x, g))))
            cases.append(dict(dtype=dname, impl=impl, pass_="infer", fn=(lambda r=run, x=x0: r.infer(x))))
    return cases


def check_agreement(shape, other: str = "spikingjelly"):
    """Max |difference| of spikes and of grad x between spiketriton and ``other`` (fp32; SpikingJelly,
    or spiketriton's autograd ``reference`` where SpikingJelly is not installed): the two must compute
    the same thing for the timing comparison to mean anything."""
    x0, g = make_inputs(shape, torch.float32, seed=1)
    out = {"vs": other}
    res = {}
    for impl in ("spiketriton", other):
        run = _runner(impl)
        x = x0.clone().requires_grad_()
        s = run(x)
        (gx,) = torch.autograd.grad(s, x, g)
        res[impl] = (s.detach(), gx)
    (s1, g1), (s2, g2) = res["spiketriton"], res[other]
    out["spike_mismatches"] = int((s1 != s2).sum())
    out["firing_rate"] = float(s1.float().mean())
    out["grad_x_max_abs_diff"] = float((g1 - g2).abs().max())
    out["grad_x_max_abs"] = float(g2.abs().max())
    return out


def agreement_line(a) -> str:
    """One readable line of :func:`check_agreement`'s record."""
    who = "SpikingJelly" if a["vs"] == "spikingjelly" else "spiketriton's autograd reference (SpikingJelly is not installed)"
    return (f"agreement with {who}, fp32, same input: {a['spike_mismatches']} spikes differ (firing rate "
            f"{a['firing_rate']:.3f}); grad x max |diff| {a['grad_x_max_abs_diff']:.2g} (max |grad x| "
            f"{a['grad_x_max_abs']:.3g})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="16,32,4096", help="T,B,N (default 16,32,4096)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32,bf16,fp16 (default fp32,bf16)")
    ap.add_argument("--repeats", type=int, default=40, help="timed rounds per case (default 40)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls per case first (default 5)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: 1, see the docstring; 0: torch's default)")
    ap.add_argument("--no-reference", action="store_true", help="skip the autograd reference cases")
    ap.add_argument("--copy-mib", type=float, default=256, help="copy-bandwidth buffer in MiB (default 256)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "cpu"), help="output folder")
    args = ap.parse_args(argv)

    skipped = []
    try:
        import spikingjelly  # noqa: F401
        have_sj = True
    except ImportError:
        have_sj = False
        skipped.append({"impl": "spikingjelly", "reason": "spikingjelly is not installed "
                        "(`pip install --no-deps spikingjelly==2.0.0 loguru` to compare)"})
        print("neuron_cpu.py: spikingjelly is not installed; timing spiketriton and the reference only.",
              file=sys.stderr)
    with threads_for(args.threads, "cpu") as threads:
        return _run(ap, args, have_sj, skipped, threads, argv)


def _run(ap, args, have_sj, skipped, threads, argv) -> int:
    shape = parse_shape(args.shape)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}; expected some of {sorted(DTYPES)}")
    impls = [i for i in IMPLS if not (args.no_reference and i == "reference") and (have_sj or i != "spikingjelly")]
    n_steps = shape[0] * int(torch.tensor(shape[1:]).prod())

    load_before = loadavg()
    result = header("neuron_cpu", "neuron_cpu.py", argv, "cpu")
    print(f"shape [T, B, N] = {list(shape)}, dtypes {dtypes}, torch threads {threads['torch_num_threads']} "
          f"({threads['threads_why']}), load average {load_before}")

    copy = copy_bandwidth(int(args.copy_mib * 2**20), "cpu")
    print(f"copy bandwidth ({args.copy_mib:g} MiB fp32 dst.copy_(src)): {copy['gbps']:.1f} GB/s", flush=True)

    # correctness first
    agreement = check_agreement(shape, "spikingjelly" if have_sj else "reference")
    print(agreement_line(agreement))

    # bytes saved for backward
    saved_rows = []
    for dname in dtypes:
        x0, _ = make_inputs(shape, DTYPES[dname])
        for impl in impls:
            x = x0.clone().requires_grad_()
            info = saved_bytes(_runner(impl), x)
            saved_rows.append(dict(impl=impl, dtype=dname, **info))
            gc.collect()

    # timing, interleaved rounds
    cases = build_cases(shape, dtypes, impls)
    bar = progress(len(cases) * (args.warmup + args.repeats), "neuron_cpu")
    interleaved_rounds([cases], args.warmup, args.repeats, bar)
    bar.close()
    load_after = loadavg()

    rows = []
    for c in cases:
        t = time_stats(c["times"])
        nbytes = kernel_bytes(shape, c["dtype"], c["pass_"], neuron="lif")
        rows.append({"neuron": "lif", "dtype": c["dtype"], "pass": c["pass_"], "impl": c["impl"], **t,
                     "kernel_bytes": nbytes, "gbps": gbps(nbytes, t["median_ms"]),
                     "pct_copy_bw": 100.0 * gbps(nbytes, t["median_ms"]) / copy["gbps"]})
    for r in rows:
        sj = [o for o in rows if o["dtype"] == r["dtype"] and o["pass"] == r["pass"] and o["impl"] == "spikingjelly"]
        r["speedup_vs_spikingjelly"] = sj[0]["median_ms"] / r["median_ms"] if sj else None
        r["speedup_vs_spikingjelly_min"] = sj[0]["min_ms"] / r["min_ms"] if sj else None
        r["ns_per_neuron_step"] = r["median_ms"] * 1e6 / n_steps

    # report
    print()
    print(f"{'dtype':5} {'pass':8} {'impl':13} {'median ms':>10} {'min ms':>8} {'IQR ms':>7} {'GB/s':>6} "
          f"{'%copy':>6} {'x SJ':>6}")
    for r in rows:
        spd = f"{r['speedup_vs_spikingjelly']:6.2f}" if r["speedup_vs_spikingjelly"] else f"{'-':>6}"
        print(f"{r['dtype']:5} {r['pass']:8} {r['impl']:13} {r['median_ms']:10.2f} {r['min_ms']:8.2f} "
              f"{r['iqr_ms']:7.2f} {r['gbps']:6.1f} {r['pct_copy_bw']:6.1f} {spd}")
    print()
    print(f"{'dtype':5} {'impl':13} {'saved B/neuron-step':>20} {'tensors':>8} {'(input, excluded)':>18}")
    for s in saved_rows:
        print(f"{s['dtype']:5} {s['impl']:13} {s['bytes_per_neuron_step']:20.3f} {s['n_tensors']:8d} "
              f"{s['input_bytes_per_neuron_step']:18.3f}")
    print(f"\nload average before {load_before}, after {load_after} (2-core machines shared with other work are noisy)")

    result["device"].update(load_average_before=load_before, load_average_after=load_after)
    result.update(
        config=dict(
            shape_TBN=list(shape), neuron="lif", tau=TAU, decay_input=True, v_threshold=V_THRESHOLD, v_reset=V_RESET,
            surrogate=f"Sigmoid(alpha={SG_ALPHA})", detach_reset=False, input="x ~ N(1, 1)",
            upstream_grad="fixed N(0, 1)", warmup=args.warmup, repeats=args.repeats, timer="time.perf_counter",
            spiketriton_call='spiketriton.functional.lif(x, backend="torch")',
            spikingjelly_call="spikingjelly.activation_based.neuron.LIFNode(tau=2.0, step_mode='m'); reset() each call",
            gbps="kernel_bytes (what the fused kernels must move, as on the GPU) / median time",
            torch_num_threads=threads["torch_num_threads"], threads_why=threads["threads_why"],
        ),
        copy_bandwidth=copy,
        agreement_fp32=agreement,
        skipped=skipped,
        cases=rows,
        saved_bytes=saved_rows,
    )
    save_result(args.out, "neuron_cpu", result, {
        "neuron_cpu": rows,
        "neuron_cpu_saved_bytes": [{k: v for k, v in s.items() if k != "tensors"} for s in saved_rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
