"""One entry point for every benchmark: runs the suites available on this machine and writes JSON, CSV and
PNG plots under ``bench/results/<device>/`` (``cpu``, or the GPU's name as a slug), plus a report of the
issue's goals (met / unmet / not-measured).

    python -m bench                          # everything this machine can run, full size (from the repo root)
    python bench/run.py                      # the same, from anywhere
    python -m bench --quick                  # CPU-sized, seconds (the CI sanity test); -> results/<device>-quick/
    python -m bench --suites neuron,memory   # some suites
    python -m bench --list                   # what would run here, and what would be skipped and why
    python -m bench --report-only            # redraw plots and summary from the files already in the folder

Suites (each a script of bench/ that also runs on its own; see bench/README.md):

  neuron             LIF fwd+bwd vs SpikingJelly and the torch reference, GB/s vs measured copy bandwidth
                     (neuron_cpu.py on CPU, neuron_gpu.py on CUDA)
  spike_matmul       spike_matmul / SpikeLinear vs torch.matmul / nn.Linear, shapes x firing rates, TFLOP/s-eq
                     (spike_matmul_cpu.py, spike_matmul_gpu.py)
  int_matmul         integer spike matmul vs torch bf16 / fp32 / torch._int_mm (int_matmul_gpu.py; CUDA only)
  memory             bytes saved for backward per neuron-step, peak CUDA memory of a step (memory.py)
  open_neuromorphic  Linear(n, n) + LIF, batch 16, T = 500: spiketriton, SpikingJelly, snnTorch, Norse,
                     and torch's three GEMMs (open_neuromorphic.py)
  event_matmul       event-driven spike matmul for streaming inference (M = 1, 4, 16 rows, firing 1-50 %) vs
                     torch.matmul / F.linear / spike_matmul, measured crossover (event_matmul.py, CPU and CUDA;
                     on the CPU one torch thread unless --threads says otherwise)
  stdp               STDP update (record + step) of spiketriton.learning.STDPLearner vs SpikingJelly's STDPLearner,
                     N = K up to 4096, batch 32 (stdp.py, CPU and CUDA; on the CPU one torch thread)
  conv_snn           a small Spiking VGG training step on 32x32 input, T = 4, B = 8: bytes saved for backward per
                     neuron-step, time per step, peak CUDA memory; spiketriton before / after convert vs SpikingJelly
                     (conv_snn.py, CPU and CUDA; on the CPU one torch thread)
  step               what ONE time step costs on the CPU: spiketriton's neurons in step_mode="s" (fused C path and
                     torch ops) vs snnTorch Leaky, SpikingJelly LIFNode / IFNode, Norse LIFCell, no_grad at [B, N] =
                     [1, 1024], [16, 200], [128, 1024], and BPTT through 16 single steps (step_cpu.py, CPU only; one
                     torch thread)

A suite whose hardware or package is missing is skipped with the reason recorded (``suite-<name>.json``);
a suite that raises is recorded as failed and the others still run (exit status 1 at the end). A SIGINT
(a stage's time box) stops the suite in progress, which keeps the files it has written so far (the long GPU
suites write as they go: neuron_gpu after every neuron x dtype and before its sweep, spike_matmul_gpu and
int_matmul_gpu after every case group, open_neuromorphic after every n, the spike_matmul sweep after every config;
``"partial": true`` until they end); the suites after it are recorded as not-run and the report is built from what is in the folder. Speed goals are reported in ``summary.json`` /
``summary.md``, never asserted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

SUITES = ("neuron", "spike_matmul", "int_matmul", "memory", "open_neuromorphic", "event_matmul", "stdp", "conv_snn",
          "step")

#: suite -> device kind -> (script module, full-size argv, quick argv); None: cannot run on that kind
#: (the reason is in NOT_ON). Full GPU sizes are the scripts' defaults (estimates in bench/README.md).
PLAN: Dict[str, Dict[str, Optional[tuple]]] = {
    "neuron": {
        "cpu": ("neuron_cpu", [], ["--shape", "8,8,512", "--dtypes", "fp32", "--repeats", "5", "--warmup", "2",
                                   "--copy-mib", "32"]),
        "cuda": ("neuron_gpu", ["--no-plot"], ["--no-plot", "--shape", "8,16,65536", "--neurons", "lif",
                                                "--rep-ms", "50", "--copy-gib", "0.5"]),
    },
    "spike_matmul": {
        "cpu": ("spike_matmul_cpu", [], ["--shapes", "32x256x256", "--rates", "10,50", "--dtypes", "fp32",
                                         "--repeats", "5", "--warmup", "2"]),
        "cuda": ("spike_matmul_gpu", [], ["--shapes", "32x512x512,1024x1024x1024", "--rates", "10,50",
                                          "--rep-ms", "30"]),
    },
    "int_matmul": {
        "cpu": None,
        "cuda": ("int_matmul_gpu", [], ["--shapes", "1024x1024x1024", "--rates", "10,50"]),
    },
    "memory": {
        "cpu": ("memory", [], ["--shape", "4,8,64", "--n", "32"]),
        "cuda": ("memory", [], ["--shape", "4,8,64", "--n", "32"]),
    },
    "open_neuromorphic": {
        "cpu": ("open_neuromorphic", [], ["--sizes", "64,128", "--T", "20", "--reps", "2"]),
        "cuda": ("open_neuromorphic", [], ["--sizes", "512,4096", "--T", "100", "--reps", "3"]),
    },
    "event_matmul": {
        "cpu": ("event_matmul", ["--device", "cpu"], ["--device", "cpu", "--quick"]),
        "cuda": ("event_matmul", ["--device", "cuda"], ["--device", "cuda", "--quick"]),
    },
    "stdp": {
        "cpu": ("stdp", ["--device", "cpu"], ["--device", "cpu", "--quick"]),
        "cuda": ("stdp", ["--device", "cuda"], ["--device", "cuda", "--quick"]),
    },
    "conv_snn": {
        "cpu": ("conv_snn", ["--device", "cpu"], ["--device", "cpu", "--quick"]),
        "cuda": ("conv_snn", ["--device", "cuda"], ["--device", "cuda", "--quick"]),
    },
    "step": {
        "cpu": ("step_cpu", ["--device", "cpu"], ["--device", "cpu", "--quick"]),
        "cuda": None,
    },
}
NOT_ON = {("int_matmul", "cpu"): "the integer spike matmul is a Triton kernel and needs a CUDA GPU (on a CPU the "
                                 "Triton interpreter only checks it: TRITON_INTERPRET=1 python bench/int_matmul_gpu.py "
                                 "--smoke-cpu)",
          ("step", "cuda"): "a CPU benchmark (the fused CPU neuron and the peers' CPU steps): python bench/step_cpu.py "
                            "--device cpu"}
#: scripts that set their own CPU thread count (1 by default: _common.set_threads says why): run.py's --threads is
#: passed on to them
THREADS_ARG = ("event_matmul", "neuron_cpu", "spike_matmul_cpu", "open_neuromorphic", "conv_snn", "stdp", "step_cpu")
#: packages a suite cannot run without (the peers are optional inside the suites)
NEEDS = {"cuda": ("triton",)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--quick", action="store_true", help="CPU-sized cases that finish in seconds (CI sanity)")
    ap.add_argument("--suites", default=",".join(SUITES), help="comma list of " + ", ".join(SUITES))
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="auto: CUDA when available, else CPU")
    ap.add_argument("--out", default=None,
                    help="results folder (default bench/results/<device>, or bench/results/<device>-quick with --quick)")
    ap.add_argument("--sweep", action="store_true", help="GPU: also run neuron_gpu.py's block-size sweep")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for the whole run (default: 1 on the CPU, as every CPU script: on a "
                         "shared machine torch's default stalls; 0: torch's default)")
    ap.add_argument("--set", action="append", default=[], metavar="SUITE:ARGS",
                    help="extra arguments for one suite's script, e.g. --set 'open_neuromorphic:--reps 3'")
    ap.add_argument("--list", action="store_true", help="print what would run or be skipped here, then exit")
    ap.add_argument("--report-only", action="store_true", help="only rebuild summary and plots from the folder")
    ap.add_argument("--progress", default="auto", choices=("auto", "on", "off"),
                    help="tqdm progress bars (auto: on a terminal only)")
    return ap.parse_args(argv)


def plan(args, kind: str) -> List[dict]:
    """For every requested suite: the script and argv to run, or the reason it is skipped."""
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    for s in suites:
        if s not in PLAN:
            raise SystemExit(f"python -m bench: unknown suite {s!r}; expected some of {', '.join(SUITES)}")
    extra: Dict[str, List[str]] = {}
    for item in args.set:
        name, _, rest = item.partition(":")
        if name not in PLAN:
            raise SystemExit(f"python -m bench: --set {item!r}: unknown suite {name!r}")
        extra.setdefault(name, []).extend(shlex.split(rest))
    out = []
    for s in suites:
        spec = PLAN[s].get(kind)
        if spec is None:
            out.append({"suite": s, "skip": NOT_ON.get((s, kind), f"not available on {kind}")})
            continue
        missing = [m for m in NEEDS.get(kind, ()) if importlib.util.find_spec(m) is None]
        if missing:
            out.append({"suite": s, "skip": f"{', '.join(missing)} not installed"})
            continue
        script, full, quick = spec
        argv = list(quick if args.quick else full)
        if s == "neuron" and kind == "cuda" and args.sweep:
            argv.append("--sweep")
        if script in THREADS_ARG and args.threads is not None:
            argv += ["--threads", str(args.threads)]
        out.append({"suite": s, "script": script, "argv": argv + extra.get(s, [])})
    return out


def main(argv=None) -> int:
    # a SIGINT is a time box (the GPU runbook's stages): honour it even when started from the background of a
    # non-interactive shell (``python -m bench ... &``), which starts Python with SIGINT ignored
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parse_args(argv)
    # TRITON_INTERPRET=1 (e.g. inherited from the test suite) would time Triton's interpreter on the CPU:
    # the benchmarks measure the real paths, so it is dropped before spiketriton is imported
    dropped_interpret = os.environ.pop("TRITON_INTERPRET", None) not in (None, "", "0")
    if args.progress != "auto":
        os.environ["BENCH_PROGRESS"] = "1" if args.progress == "on" else "0"

    import torch

    import report
    from _common import RESULTS_DIR, device_slug, header, loadavg, progress, set_threads, short_error, write_json

    if "spiketriton" in sys.modules and dropped_interpret:
        print("python -m bench: spiketriton was imported with TRITON_INTERPRET=1 set; run the benchmarks in a fresh "
              "process", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("python -m bench: --device cuda, but CUDA is not available here", file=sys.stderr)
        return 2
    kind = "cuda" if (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())) else "cpu"
    device = torch.device(kind)
    threads = set_threads(args.threads, kind)
    slug = device_slug(device) + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out else RESULTS_DIR / slug
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    steps = plan(args, kind)

    if args.list:
        print(f"device: {kind} ({device_slug(device)}); results folder: {out}")
        for st in steps:
            what = (f"skipped: {st['skip']}" if "skip" in st else
                    f"python bench/{st['script']}.py {' '.join(st['argv'] + ['--out', os.path.relpath(out)])}")
            print(f"  {st['suite']:18} {what}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if dropped_interpret:
        print("python -m bench: TRITON_INTERPRET ignored (the benchmarks time the real CPU / CUDA paths)", flush=True)
    if args.report_only:
        s = report.build(out, command, device)
        report.print_goals(s["goals"])
        print(f"\nwrote {out}/summary.json, summary.csv, summary.md and {len(s['plots'])} plots")
        return 0

    print(f"python -m bench: {'quick' if args.quick else 'full'} run on {kind}; results in {out}", flush=True)
    failed = []
    bar = progress(len(steps), "bench")
    for st in steps:
        name = st["suite"]
        bar.set_postfix_str(name)
        status = header("suite", f"run.py --suites {name}", [], device)
        status.update(suite=name, mode="quick" if args.quick else "full", command=command,
                      torch_num_threads=torch.get_num_threads(), threads_why=threads["threads_why"],
                      load_average_before=loadavg())
        t0 = time.time()
        if "skip" in st:
            status.update(status="skipped", reason=st["skip"])
            print(f"\n== {name}: skipped ({st['skip']})", flush=True)
        else:
            argv_s = st["argv"] + ["--out", os.path.relpath(out)]  # relative: no machine paths in the records
            status.update(script=f"bench/{st['script']}.py", argv=argv_s)
            print(f"\n== {name}: python bench/{st['script']}.py {' '.join(argv_s)}", flush=True)
            before = {p.name: p.stat().st_mtime for p in out.iterdir()}
            try:
                rc = importlib.import_module(st["script"]).main(argv_s)
                status.update(status="ran" if rc == 0 else "failed", returncode=rc,
                              reason=None if rc == 0 else f"{st['script']}.py returned {rc}")
            except KeyboardInterrupt:
                status.update(status="interrupted", reason="stopped (KeyboardInterrupt / SIGINT, e.g. a time limit)")
                failed.append(name)
                status["files"] = sorted(p.name for p in out.iterdir() if before.get(p.name) != p.stat().st_mtime)
                write_json(out / f"suite-{name}.json", dict(status, seconds=time.time() - t0))
                # The suites write their files as they go (after every case / size), so what this one measured
                # is in the folder. The suites after it are NOT started: a SIGINT here is a time box (e.g.
                # `timeout -s INT -k 30`, or a stage of bench/gpu_session.py, whose SIGKILL follows GRACE_S later),
                # so the time that is left belongs to writing the report, and a suite begun now would be killed
                # half-way (for a whole run, order the suites that matter most first). They are recorded as not-run.
                for later in steps[steps.index(st) + 1:]:
                    rec = header("suite", f"run.py --suites {later['suite']}", [], device)
                    rec.update(suite=later["suite"], mode=status["mode"], command=command, status="not-run",
                               reason=f"not started: the run was interrupted during {name}")
                    write_json(out / f"suite-{later['suite']}.json", rec)
                    failed.append(later["suite"])
                print(f"== {name}: interrupted; not starting "
                      f"{', '.join(x['suite'] for x in steps[steps.index(st) + 1:]) or 'any other suite'}; "
                      "writing the report of what was measured", flush=True)
                break
            except Exception as e:  # noqa: BLE001 - one suite failing must not lose the others
                status.update(status="failed", reason=short_error(e), traceback=traceback.format_exc(limit=8))
                print(f"== {name}: FAILED: {short_error(e)}", flush=True)
            if status["status"] == "failed":
                failed.append(name)
            status["files"] = sorted(p.name for p in out.iterdir() if before.get(p.name) != p.stat().st_mtime)
            if kind == "cuda":
                torch.cuda.empty_cache()
        status["seconds"] = time.time() - t0
        status["load_average_after"] = loadavg()
        write_json(out / f"suite-{name}.json", status)
        bar.update(1)
    bar.close()

    s = report.build(out, command, device)
    print("\nsuites: " + ", ".join(f"{n}: {v.get('status')}" for n, v in s["suites"].items()))
    report.print_goals(s["goals"])
    print(f"\nwrote {out}/summary.json, summary.csv, summary.md and {len(s['plots'])} plots: {', '.join(s['plots'])}")
    if failed:
        print(f"failed or interrupted: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
