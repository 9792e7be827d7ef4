"""CPU timing of the spike matmul: ``spiketriton.spike_matmul`` / ``SpikeLinear`` vs ``torch.matmul`` /
``nn.Linear`` on the same spikes as a dense tensor; ms, TFLOP/s-equivalent and spike-operand bytes.

    python bench/spike_matmul_cpu.py                       # 32x512x512, 32x1024x1024; 5/10/25/50 %; fp32 + bf16; 1 thread
    python bench/spike_matmul_cpu.py --dtypes fp32 --repeats 60 --threads 2
    python bench/spike_matmul_cpu.py --shapes 32x2048x2048 --rates 10

Cases (bench/_matmul_cases.py): spikes ``S [M, K]`` Bernoulli(rate) 0/1, ``W [N, K] ~ N(0, 1/K)``.

- ``fwd`` (no bias, ``torch.no_grad()``): ``torch.matmul(S, W.T)`` with S dense in W's dtype;
  ``spike_matmul(dense)`` = ``spiketriton.spike_matmul(S, W)`` on the same tensor; ``spike_matmul(packed)``
  = ``spiketriton.spike_matmul(SpikeTensor, W)`` with S packed 8 per byte beforehand (the packing not timed);
- ``fwd+bwd`` (bias, S requiring grad, fixed N(0, 1) upstream gradient; ``autograd.grad(y, [S, W, b], dY)``):
  ``nn.Linear``; ``SpikeLinear`` (the default ``check_binary=True``); ``SpikeLinear(check_binary=False)``.

On CPU spiketriton's default path is the PyTorch one (BLAS on the 0/1 values, packed spikes saved for
backward; kernels/spike_matmul.py is the CUDA path), so the firing rate is not expected to matter.

Timing: the cases are grouped by (dtype, shape, pass), i.e. the impls and rates to compare; group after
group, ``--warmup`` untimed calls per case, then ``--repeats`` rounds in which every case of the group runs
once, in a new random order each round (interleaved as in neuron_cpu.py, so load changes hit the compared
cases alike; grouped, so a 0.3 ms case never follows an 80 ms bf16 one with cold caches); median, min, IQR.
TFLOP/s-equiv = 2*M*N*K per matmul (3 matmuls for fwd+bwd: Y, dS, dW) / median time. "x torch" =
the torch baseline's median / the case's median (> 1: faster than torch). Spike-operand bytes: packed
uint8 ``M * ceil(K/8)`` vs the dense tensor ``M * K * element_size``.

Threads: one torch thread unless ``--threads N`` (0: torch's default), recorded with the reason
(``_common.set_threads``: torch's default stalls on a shared machine).

Writes ``bench/results/cpu/spike_matmul_cpu.json`` (machine, versions, git commit, date, config,
agreement, every case) and ``spike_matmul_cpu.csv``.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR, header, interleaved_rounds, loadavg, progress, save_result, threads_for, time_stats,
)
from _matmul_cases import (  # noqa: E402
    CPU_SHAPES, DTYPES, FWD_IMPLS, TRAIN_IMPLS, forward_agreement, forward_runner, make_grad, make_linear,
    make_spikes, make_weight, matmul_flops, parse_rates, parse_shape_list, shape_str, spike_bytes, tflops,
    train_agreement, train_runner,
)

BASELINE = {"fwd": "torch.matmul", "fwd+bwd": "nn.Linear"}


def build_cases(shapes, rates, dtypes, passes):
    cases = []
    for dname in dtypes:
        dt = DTYPES[dname]
        for (M, K, N) in shapes:
            # one weight / layer / upstream gradient per (dtype, shape), shared by all its cases
            w = make_weight(N, K, dt)
            lin = make_linear(K, N, dt)
            g = make_grad(M, N, dt)
            for rate in rates:
                s = make_spikes(M, K, rate, dt)
                common = dict(dtype=dname, M=M, K=K, N=N, rate=rate, firing_rate=float(s.float().mean()))
                if "fwd" in passes:
                    for impl in FWD_IMPLS:
                        cases.append(dict(common, pass_="fwd", impl=impl, fn=forward_runner(impl, s, w)))
                if "fwd+bwd" in passes:
                    for impl in TRAIN_IMPLS:
                        cases.append(dict(common, pass_="fwd+bwd", impl=impl, fn=train_runner(impl, s, lin, g)))
    return cases


def check_agreement(shapes, dtypes):
    """spike_matmul vs torch.matmul (max |y - fp64 reference|) and SpikeLinear vs nn.Linear gradients,
    at a 25 % rate: the comparison is only worth something if both compute the same thing."""
    out = []
    for dname in dtypes:
        dt = DTYPES[dname]
        for (M, K, N) in shapes:
            s = make_spikes(M, K, 0.25, dt, seed=5)
            row = {"dtype": dname, "shape": shape_str((M, K, N)),
                   "fwd_max_abs_err_vs_fp64": forward_agreement(s, make_weight(N, K, dt))}
            row["train_max_abs_diff_vs_nn_linear"] = train_agreement(s, make_linear(K, N, dt), make_grad(M, N, dt))
            out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(shape_str(s) for s in CPU_SHAPES),
                    help="comma list of MxKxN (default 32x512x512,32x1024x1024)")
    ap.add_argument("--rates", default="5,10,25,50", help="firing rates in %% or as fractions (default 5,10,25,50)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32,bf16,fp16 (default fp32,bf16)")
    ap.add_argument("--passes", default="fwd,fwd+bwd", help="comma list of fwd,fwd+bwd")
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds per case (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per case first (default 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: 1, see the docstring; 0: torch's default)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "cpu"), help="output folder")
    args = ap.parse_args(argv)

    with threads_for(args.threads, "cpu") as threads:
        return _run(ap, args, threads, argv)


def _run(ap, args, threads, argv) -> int:
    shapes = parse_shape_list(args.shapes)
    rates = parse_rates(args.rates)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    passes = [p.strip() for p in args.passes.split(",") if p.strip()]
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}; expected some of {sorted(DTYPES)}")
    for p in passes:
        if p not in BASELINE:
            ap.error(f"unknown pass {p!r}; expected some of {sorted(BASELINE)}")

    load_before = loadavg()
    result = header("spike_matmul_cpu", "spike_matmul_cpu.py", argv, "cpu")
    print(f"shapes {[shape_str(s) for s in shapes]}, rates {rates}, dtypes {dtypes}, passes {passes}, "
          f"torch threads {threads['torch_num_threads']} ({threads['threads_why']}), load average {load_before}",
          flush=True)

    agreement = check_agreement(shapes, dtypes)
    for a in agreement:
        print(f"agreement {a['dtype']} {a['shape']}: fwd max|err| vs fp64 {a['fwd_max_abs_err_vs_fp64']}; "
              f"fwd+bwd max|diff| vs nn.Linear {a['train_max_abs_diff_vs_nn_linear']}", flush=True)

    cases = build_cases(shapes, rates, dtypes, passes)
    bar = progress(len(cases) * (args.warmup + args.repeats), "spike_matmul_cpu")
    # groups of like cases (dtype, shape, pass: the impls and rates to compare), one group after the
    # other; within a group, warm-up then interleaved rounds in a new random order each round
    groups: dict = {}
    for c in cases:
        groups.setdefault((c["dtype"], c["M"], c["K"], c["N"], c["pass_"]), []).append(c)
    interleaved_rounds(groups.values(), args.warmup, args.repeats, bar, rng=random.Random(0))
    bar.close()
    load_after = loadavg()

    rows = []
    for c in cases:
        t = time_stats(c["times"])
        M, K, N = c["M"], c["K"], c["N"]
        med = t["median_ms"]
        packed_in = c["impl"] == "spike_matmul(packed)" or c["impl"].startswith("SpikeLinear")
        rows.append({
            "dtype": c["dtype"], "pass": c["pass_"], "shape": shape_str((M, K, N)), "M": M, "K": K, "N": N,
            "rate": c["rate"], "firing_rate": c["firing_rate"], "impl": c["impl"],
            **t,
            "tflops_equiv": tflops(matmul_flops(M, K, N, c["pass_"]), med),
            "spike_bytes_dense": spike_bytes(M, K, c["dtype"]), "spike_bytes_packed": spike_bytes(M, K, "packed"),
            # what the impl takes as its spike operand / keeps of it for backward
            "spike_operand": "packed uint8" if c["impl"] == "spike_matmul(packed)" else f"dense {c['dtype']}",
            "spike_bytes_saved_for_bwd": (spike_bytes(M, K, "packed") if packed_in else spike_bytes(M, K, c["dtype"]))
            if c["pass_"] == "fwd+bwd" else None,
        })
    for r in rows:
        base = next(o for o in rows if o["dtype"] == r["dtype"] and o["pass"] == r["pass"] and o["shape"] == r["shape"]
                    and o["rate"] == r["rate"] and o["impl"] == BASELINE[r["pass"]])
        r["speedup_vs_torch"] = base["median_ms"] / r["median_ms"]
        r["speedup_vs_torch_min"] = base["min_ms"] / r["min_ms"]

    # report
    print()
    print(f"{'dtype':5} {'pass':7} {'M x K x N':13} {'rate':>5} {'impl':32} {'median ms':>9} {'min ms':>7} "
          f"{'IQR':>6} {'TFLOP/s':>8} {'x torch':>7}")
    for r in rows:
        print(f"{r['dtype']:5} {r['pass']:7} {r['shape']:13} {r['rate']:5.0%} {r['impl']:32} {r['median_ms']:9.3f} "
              f"{r['min_ms']:7.3f} {r['iqr_ms']:6.3f} {r['tflops_equiv']:8.4f} {r['speedup_vs_torch']:7.2f}")
    print()
    print(f"{'M x K x N':13} {'spike operand: packed uint8':>28} {'dense fp32':>11} {'dense bf16':>11}")
    for (M, K, N) in shapes:
        print(f"{shape_str((M, K, N)):13} {spike_bytes(M, K, 'packed'):28,d} {spike_bytes(M, K, 'fp32'):11,d} "
              f"{spike_bytes(M, K, 'bf16'):11,d}")
    print(f"\nload average before {load_before}, after {load_after} (a 2-core machine shared with other work is noisy)")

    result["device"].update(load_average_before=load_before, load_average_after=load_after)
    result.update(
        config=dict(
            shapes_MxKxN=[shape_str(s) for s in shapes], rates=rates, dtypes=dtypes, passes=passes,
            spikes="Bernoulli(rate) 0/1, fixed seed", weight="N(0, 1/K)", upstream_grad="fixed N(0, 1)",
            warmup=args.warmup, repeats=args.repeats, timer="time.perf_counter; per (dtype, shape, pass) group: interleaved rounds in shuffled order; median",
            fwd_impls=list(FWD_IMPLS), train_impls=list(TRAIN_IMPLS),
            flops="2*M*N*K per matmul; fwd+bwd = 3 matmuls (Y, dS, dW)",
            spiketriton_path="CPU default (backend='auto' -> the PyTorch path)",
            torch_num_threads=threads["torch_num_threads"], threads_why=threads["threads_why"],
        ),
        agreement=agreement,
        cases=rows,
    )
    save_result(args.out, "spike_matmul_cpu", result, {"spike_matmul_cpu": rows})
    gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
