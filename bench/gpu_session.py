"""The GPU runbook: one command of about 8 minutes on a lent GPU, the most decisive numbers first, every stage
time-boxed and saving as it goes (bench/README.md, "GPU session"). Started by ``bash bench/gpu_session.sh``,
which installs the carried wheels first; the 8 minutes count from the start of that script.

    bash bench/gpu_session.sh                       # the default plan below, in this order
    bash bench/gpu_session.sh --rotate 2            # the same, with slice 2 of the rotating CUDA tests
    bash bench/gpu_session.sh --stages stamp,ceilings,neuron_sweep,report    # other stages (the budget still holds)
    python bench/gpu_session.py --list              # the plan, boxes and test slices, without running anything
    bash bench/gpu_session.sh --dry-run --budget 30 --results-root /tmp/r   # the plumbing on a CPU, stand-ins

Default plan (box = the stage's hard limit in seconds, SIGINT ``GRACE_S`` before it, SIGKILL at it):

  stamp              30  GPU name, driver, clocks (nvidia-smi), versions, git commit -> session-gpu.json
  ceilings           20  copy bandwidth; cuBLAS bf16 / fp16 / int8 / TF32 / fp32 rates (roofline.py)
  lif                80  LIF fwd+bwd, fp32 then bf16, [32, 64, 65536] vs SpikingJelly's Triton neurons
  spike_matmul       70  spike_matmul fwd and dW at 4096^3, 10 % firing, fp32 and bf16 vs cuBLAS
  event_matmul       30  event-driven spike matmul (issue 13) at K = N = 4096, M = 1, 4, 16, firing 1-50 %, fp32
  int_matmul         30  integer spike matmul (int8) at 4096^3 vs cuBLAS bf16 / fp32 / torch._int_mm
  open_neuromorphic  75  Open Neuromorphic at n = 16384, bf16, T = 500, batch 16 (the libraries installed)
  if_plif            55  IF and PLIF fwd+bwd, fp32 and bf16 (neuron_gpu_if_plif.json)
  cuda_tests       rest  the CUDA kernel tests, then this window's slice of the rest of the CUDA suite (65 s and
                         what the stages above leave)
  report             25  summary.md / summary.json / plots of the results folder

The boxes and ``BUDGET_S`` (480 s) leave the tests what the others do not use; a stage that starts with less
than its box left until the deadline gets what is left (less the report's box), or is skipped under 8 s.
After every stage the results folder is packed into ``$OUT/results.tar.gz`` and the stage's output is in
``$OUT/session.log`` (both come back even when a later stage is cut short).

Results: ``bench/results/<gpu-name-slug>/`` (or ``--results-root``), every file stamped with the GPU, versions
and date; ``session-gpu.json`` records each stage (box, seconds, status: ok / failed / timed-out / killed /
skipped, the tail of its output); ``cuda_tests.json`` the test windows (slice, per-file counts, failures) and
drives the rotation: the next window takes the slice after the last one recorded there (``--rotate K`` to choose).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

BUDGET_S = 480        # the whole command, the wheel install included: ~8 of the device's 15 minutes
GRACE_S = 5           # SIGINT this long before a stage's box ends, SIGKILL at the end
MIN_STAGE_S = 8       # a stage with less time than this left is skipped
MIN_TESTS_S = 60      # the plan must leave the CUDA tests at least this much
N_SLICES = 3          # the rest of the CUDA suite rotates over this many windows

#: run in every window, first: the tests of the Triton kernels themselves (these files, then any other file whose
#: name starts like one of them, e.g. tests/test_spike_matmul_exact.py)
KERNEL_TESTS = ("tests/test_neuron_kernels.py", "tests/test_spike_matmul.py", "tests/test_quant_kernels.py")
#: never on the GPU: they run on CPU tensors whatever the machine (CI covers them), or compile without a GPU
CPU_ONLY_TESTS = ("tests/test_bench_entry.py", "tests/test_bench_records.py", "tests/test_chip.py",
                  "tests/test_compile.py", "tests/test_compile_cuda.py", "tests/test_ddp.py", "tests/test_demo.py",
                  "tests/test_export_cli.py", "tests/test_hybrid.py", "tests/test_nir.py", "tests/test_quantizer.py",
                  "tests/test_readme.py", "tests/test_surrogate.py")
CPU_ONLY_PREFIXES = ("tests/test_codegen",)  # the codegen check compiles ahead of time, without a GPU


@dataclass
class Stage:
    name: str
    box: Optional[int]  # seconds; None: what the plan leaves (the tests)
    what: str
    argv: Callable[["Ctx"], List[str]]
    optional: bool = False  # not in the default plan (--stages)


@dataclass
class Ctx:
    py: str
    results: Path
    slice_index: int = 0
    slices: List[List[str]] = field(default_factory=list)
    stamp_file: str = ""

    def rel(self) -> str:
        """The results folder as the commands name it: relative to the repository when inside it (no machine
        paths in the records), else absolute."""
        p = Path(os.path.abspath(self.results))
        try:
            return str(p.relative_to(REPO))
        except ValueError:
            return str(p)


def _script(name: str, *args: str) -> Callable[[Ctx], List[str]]:
    return lambda c: [c.py, f"bench/{name}", *args, "--out", c.rel()]


def _tests_argv(c: Ctx) -> List[str]:
    argv = [c.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--durations=25",
            f"--junitxml={c.rel()}/cuda_tests-junit.xml"]
    if importlib.util.find_spec("pytest_timeout") is not None:  # in the device image; one hung test must not eat the box
        argv += ["--timeout=120"]
    return argv + selected_tests(c)


STAGES: List[Stage] = [
    Stage("stamp", 30, "GPU name, driver, clocks, versions, git commit -> session-gpu.json",
          lambda c: [c.py, "bench/gpu_session.py", "--stamp", c.stamp_file]),
    Stage("ceilings", 20, "copy bandwidth; cuBLAS bf16 / fp16 / int8 / TF32 / fp32 rates on random data",
          _script("roofline.py", "--copy-gib", "2", "--rep-ms", "50")),
    Stage("lif", 80, "LIF fwd+bwd fp32 and bf16 at [32, 64, 65536] vs SpikingJelly's Triton neurons",
          _script("neuron_gpu.py", "--neurons", "lif", "--dtypes", "fp32,bf16", "--no-context", "--no-plot",
                  "--rep-ms", "100")),
    Stage("spike_matmul", 70, "spike_matmul fwd and dW at 4096^3, 10 % firing, fp32 and bf16 weights vs cuBLAS",
          _script("spike_matmul_gpu.py", "--shapes", "4096x4096x4096", "--rates", "10", "--dtypes", "fp32,bf16",
                  "--no-train")),
    # issue 13's GPU goal (>= 5x torch.matmul at M = 1, 5 %, 4096^2) and the measured crossover the CUDA rule
    # (EVENT_MAX_ROWS_CUDA) is an estimate of; its 30 s come out of the tests' remainder (95 -> 65 s, >= MIN_TESTS_S).
    # --max-seconds 18 starts no new M after 18 s (a group is 48 do_bench calls of ~25 ms plus the compiles).
    Stage("event_matmul", 30, "event-driven spike matmul at K = N = 4096, M = 1, 4, 16, firing 1-50 %, fp32, vs "
          "torch.matmul / F.linear / spike_matmul; measured crossover",
          _script("event_matmul.py", "--device", "cuda", "--Ms", "1,4,16", "--sizes", "4096", "--rates",
                  "1,5,10,20,35,50", "--dtypes", "fp32", "--warmup-ms", "5", "--rep-ms", "20", "--draws", "4",
                  "--max-seconds", "18")),
    Stage("int_matmul", 30, "integer spike matmul (int8 weights) at 4096^3 vs cuBLAS bf16 / fp32 / torch._int_mm",
          _script("int_matmul_gpu.py", "--shapes", "4096x4096x4096", "--rates", "10")),
    Stage("open_neuromorphic", 75, "Open Neuromorphic at n = 16384, bf16, T = 500, batch 16, the libraries installed",
          _script("open_neuromorphic.py", "--device", "cuda", "--sizes", "16384", "--dtype", "bf16", "--reps", "5")),
    Stage("if_plif", 55, "IF and PLIF fwd+bwd fp32 and bf16 at [32, 64, 65536] vs SpikingJelly",
          _script("neuron_gpu.py", "--neurons", "if,plif", "--dtypes", "fp32,bf16", "--no-context", "--no-plot",
                  "--rep-ms", "100", "--tag", "if_plif")),
    Stage("cuda_tests", None, "the CUDA kernel tests, then this window's slice of the rest of the CUDA suite",
          _tests_argv),
    Stage("report", 25, "summary.md / summary.json / plots of the results folder",
          lambda c: [c.py, "bench/report.py", c.rel()]),
    # not in the default plan: for a later window with --stages (the budget check still applies)
    Stage("neuron_sweep", 200, "neuron block-size sweep (LIF, fp32 and bf16) -> neuron_gpu_sweep.json",
          _script("neuron_gpu.py", "--sweep-only", "--sweep-neurons", "lif", "--no-plot", "--tag", "sweep"),
          optional=True),
    Stage("spike_matmul_sweep", 300, "spike_matmul forward tile sweep, bf16, 4096^3 (rows kept as measured)",
          _script("spike_matmul_gpu.py", "--sweep-only", "--sweep-kernels", "fwd", "--sweep-dtypes", "bf16",
                  "--sweep-rates", "10"), optional=True),
    Stage("spike_matmul_shapes", 150, "spike_matmul at 32x512x512, 32x1024x1024, 4096^3, 5-50 %, with training steps",
          _script("spike_matmul_gpu.py", "--tag", "shapes"), optional=True),
    Stage("memory", 40, "bytes saved for backward and peak CUDA memory of a training step",
          _script("memory.py"), optional=True),
]
DEFAULT_PLAN = [s.name for s in STAGES if not s.optional]
BY_NAME = {s.name: s for s in STAGES}


# --------------------------------------------------------------------------------------------- #
# Plan and budget
# --------------------------------------------------------------------------------------------- #


def plan_boxes(names: List[str], budget: float = BUDGET_S) -> Dict[str, float]:
    """Each stage's box in seconds, scaled by ``budget / BUDGET_S`` (a dry run's short budget); the tests get
    what the others leave. Raises ValueError if the fixed boxes leave the tests under ``MIN_TESTS_S`` (scaled)
    or exceed the budget."""
    scale = budget / BUDGET_S
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a stage is named twice in {names}")
    fixed = {n: BY_NAME[n].box * scale for n in names if BY_NAME[n].box is not None}
    total = sum(fixed.values())
    boxes = dict(fixed)
    if "cuda_tests" in names:
        boxes["cuda_tests"] = budget - total
        if boxes["cuda_tests"] < MIN_TESTS_S * scale:
            raise ValueError(f"the stages' boxes ({total:.0f} s) leave the CUDA tests {budget - total:.0f} s of the "
                             f"{budget:.0f} s budget (at least {MIN_TESTS_S * scale:.0f} s)")
    elif total > budget:
        raise ValueError(f"the stages' boxes ({total:.0f} s) exceed the {budget:.0f} s budget")
    return {n: boxes[n] for n in names}


def _all_tests(repo: Path = REPO) -> List[str]:
    return sorted(str(p.relative_to(repo)) for p in (repo / "tests").glob("test_*.py"))


def kernel_test_files(repo: Path = REPO) -> List[str]:
    """``KERNEL_TESTS`` that exist, then the other files named like them (``tests/test_spike_matmul_*.py`` ...)."""
    every = _all_tests(repo)
    first = [f for f in KERNEL_TESTS if f in every]
    stems = tuple(f[:-3] for f in KERNEL_TESTS)
    return first + [f for f in every if f not in first and f.startswith(stems)]


def test_files(repo: Path = REPO) -> List[str]:
    """The CUDA suite outside the kernel tests: every tests/test_*.py that is neither a kernel test nor CPU-only."""
    kernel = set(kernel_test_files(repo))
    return [f for f in _all_tests(repo) if f not in kernel and f not in CPU_ONLY_TESTS
            and not f.startswith(CPU_ONLY_PREFIXES)]


def make_slices(files: List[str], n: int = N_SLICES) -> List[List[str]]:
    """Round-robin over the sorted files: slice k holds files k, k + n, k + 2n ..."""
    return [files[k::n] for k in range(n)]


def next_slice(history: List[dict], n: int = N_SLICES) -> int:
    """The slice after the last window's (0 when none is recorded)."""
    last = [w.get("slice") for w in history if isinstance(w.get("slice"), int)]
    return (last[-1] + 1) % n if last else 0


def selected_tests(c: Ctx) -> List[str]:
    return kernel_test_files() + (c.slices[c.slice_index] if c.slices else [])


# --------------------------------------------------------------------------------------------- #
# Running a stage
# --------------------------------------------------------------------------------------------- #


def _stage_signals() -> None:
    """In a stage's process before it starts: its own process group (the signals reach what it starts), and
    SIGINT at its default. A session started in the background of a non-interactive shell (``cmd &``)
    inherits SIGINT ignored, and so would every stage: the time box's SIGINT would do nothing, and the stage
    would be killed at the box without writing what it had measured."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_stage(argv: List[str], box: float, log, grace: float = GRACE_S, env=None) -> Dict[str, object]:
    """Run ``argv`` (its own process group, so that the signals reach what it started; output to stdout and
    ``log``) for at most ``box`` seconds: SIGINT at ``box - grace`` (the scripts keep what they wrote and stop;
    pytest writes its report), SIGKILL at ``box``."""
    grace = min(grace, box / 4)
    t0 = time.monotonic()
    tail: List[str] = []
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, errors="replace", bufsize=1, preexec_fn=_stage_signals)

    def pump():
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            tail.append(line)
            if len(tail) > 40:
                del tail[0]
        log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    status = None
    try:
        proc.wait(timeout=max(0.1, box - grace))
    except subprocess.TimeoutExpired:
        status = "timed-out"
        _signal_group(proc, signal.SIGINT)
        try:
            proc.wait(timeout=max(0.1, box - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            status = "killed"
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    rc = proc.returncode
    if status is None:
        status = "ok" if rc == 0 else "failed"
    return {"status": status, "returncode": rc, "seconds": round(time.monotonic() - t0, 1),
            "tail": "".join(tail)[-1500:]}


def _signal_group(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def pack(results: Path, out: Path) -> Optional[Path]:
    """The results folder as it stands -> ``$OUT/results.tar.gz`` (written aside, then renamed: a cut-short
    command leaves the last whole archive)."""
    if not results.is_dir():
        return None
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".results.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(results, arcname=results.name)
    final = out / "results.tar.gz"
    os.replace(tmp, final)
    return final


# --------------------------------------------------------------------------------------------- #
# The test windows
# --------------------------------------------------------------------------------------------- #


def parse_junit(path: Path, files: List[str]) -> Dict[str, object]:
    """Per file of ``files``: passed / failed / errors / skipped from pytest's junit XML; the files with no test
    case in it (the box ended first) are ``not_reached``; ``failed`` lists the node ids (at most 60)."""
    per = {f: {"passed": 0, "failed": 0, "errors": 0, "skipped": 0} for f in files}
    failed: List[str] = []
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return {"per_file": per, "failed": [], "not_reached": list(files), "junit_error": f"{type(e).__name__}: {e}"}
    for tc in root.iter("testcase"):
        cls = tc.get("classname", "")
        f = _file_of(cls, files)
        if f is None:
            continue
        kinds = {child.tag for child in tc}
        kind = "failed" if "failure" in kinds else "errors" if "error" in kinds else \
            "skipped" if "skipped" in kinds else "passed"
        per[f][kind] += 1
        if kind in ("failed", "errors") and len(failed) < 60:
            failed.append(f"{f}::{tc.get('name')}")
    not_reached = [f for f, c in per.items() if not any(c.values())]
    return {"per_file": per, "failed": failed, "not_reached": not_reached}


def _file_of(classname: str, files: List[str]) -> Optional[str]:
    """'tests.test_spike_matmul.TestX' or 'test_spike_matmul' -> 'tests/test_spike_matmul.py'."""
    parts = classname.split(".")
    for f in files:
        mod = Path(f).stem
        if mod in parts:
            return f
    return None


def load_json(path: Path) -> dict:
    try:
        v = json.loads(path.read_text())
        return v if isinstance(v, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- #
# The stamp (a stage of its own: CUDA's start can hang, and every stage is time-boxed)
# --------------------------------------------------------------------------------------------- #


def stamp(dry_run: bool) -> Dict[str, object]:
    """The session's header: GPU, versions, git commit, date, nvidia-smi's view; and the results folder's slug."""
    now = _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")
    if dry_run:
        return {"slug": "dry-run", "header": {"benchmark": "gpu_session", "date": now, "dry_run": True,
                                              "device": {"kind": "cpu", "name": "dry run (stand-in stages)"}}}
    sys.path.insert(0, str(BENCH))
    import torch

    from _common import device_slug, header

    if not torch.cuda.is_available():
        raise SystemExit("gpu_session: CUDA is not available here (torch "
                         f"{torch.__version__}); the runbook needs a GPU (--dry-run checks the plumbing on a CPU)")
    h = header("gpu_session", "gpu_session.sh", sys.argv[1:], "cuda")
    h["source_sha256"] = source_digest()  # names the code measured even where the tree travelled without .git
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,"
                            "power.limit,temperature.gpu,memory.total", "--format=csv"],
                           capture_output=True, text=True, timeout=10)
        h["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        h["nvidia_smi"] = f"{type(e).__name__}: {e}"
    return {"slug": device_slug("cuda"), "header": h}


def source_digest(repo: Path = REPO) -> Dict[str, str]:
    """sha256 over the sorted (path, content) of spiketriton/**/*.py, and of bench/*.py: compare with
    ``python bench/gpu_session.py --digest`` here to know which code a GPU window measured."""
    import hashlib

    out = {}
    for name, pattern in (("spiketriton", "spiketriton/**/*.py"), ("bench", "bench/*.py")):
        h = hashlib.sha256()
        for p in sorted(repo.glob(pattern)):
            h.update(str(p.relative_to(repo)).encode() + b"\0" + p.read_bytes() + b"\0")
        out[name] = h.hexdigest()
    return out


# --------------------------------------------------------------------------------------------- #
# Dry run: stand-in stages on a CPU
# --------------------------------------------------------------------------------------------- #

DRY_CODE = r"""
import json, os, signal, sys, time
name, sleep_s, mode, real, results, junit, tests = sys.argv[1:8]
print(f"dry run: stage {name} stands for: {real}", flush=True)
if mode == "ignore-int":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
if mode in ("overrun", "ignore-int"):
    sleep_s = 1e6
if os.path.isdir(results):  # (not before the stamp has named it)
    open(f"{results}/dry-{name}.txt", "w").write(real + "\n")
if junit != "-":
    cases = "".join(f'<testcase classname="tests.{f.split("/")[-1][:-3]}" name="test_dry" time="0.01"/>'
                    for f in json.loads(tests))
    open(junit, "w").write(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>')
time.sleep(float(sleep_s))
print(f"dry run: stage {name} done", flush=True)
"""


def dry_argv(stage: str, real: List[str], box: float, mode: str, c: Ctx) -> List[str]:
    junit, tests = "-", "[]"
    if stage == "cuda_tests":
        junit, tests = str(c.results / "cuda_tests-junit.xml"), json.dumps(selected_tests(c))
    return [sys.executable, "-c", DRY_CODE, stage, str(round(box * 0.1, 3)), mode, shlex.join(real), str(c.results),
            junit, tests]


# --------------------------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------------------------- #


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="bash bench/gpu_session.sh", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--stages", default=",".join(DEFAULT_PLAN),
                    help="comma list, run in this order (default: the plan above); optional ones: "
                         + ", ".join(s.name for s in STAGES if s.optional))
    ap.add_argument("--rotate", type=int, default=None, metavar="K",
                    help=f"run slice K (0..{N_SLICES - 1}) of the rotating CUDA tests (default: the one after the "
                         "last recorded in cuda_tests.json)")
    ap.add_argument("--budget", type=float, default=BUDGET_S,
                    help=f"seconds for the whole command from SESSION_T0 (default {BUDGET_S}); the boxes scale with it")
    ap.add_argument("--results-root", default=str(BENCH / "results"), help="parent of the <gpu-slug> results folder")
    ap.add_argument("--list", action="store_true", help="print the plan and the test slices, run nothing")
    ap.add_argument("--dry-run", action="store_true",
                    help="stand-in stages (print the real command, sleep a tenth of the box): the plumbing on a CPU")
    ap.add_argument("--dry-overrun", action="append", default=[], metavar="STAGE[:ignore-int]",
                    help="dry run: that stand-in outlives its box (ignore-int: it also ignores SIGINT)")
    ap.add_argument("--digest", action="store_true", help="print the source digests a session records, then exit")
    ap.add_argument("--stamp", default=None, metavar="FILE", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.digest:
        print(json.dumps(source_digest(), indent=1))
        return 0
    if args.stamp:
        info = stamp(args.dry_run)
        write_json(Path(args.stamp), info)
        print(f"{(info['header'].get('device') or {}).get('name')}: results in bench/results/{info['slug']}/", flush=True)
        return 0
    t0_wall = float(os.environ.get("SESSION_T0") or time.time())
    deadline = time.monotonic() + args.budget - max(0.0, time.time() - t0_wall)
    names = [n.strip() for n in args.stages.split(",") if n.strip()]
    try:
        boxes = plan_boxes(names, args.budget)
    except ValueError as e:
        print(f"gpu_session: {e}", file=sys.stderr)
        return 2
    scale = args.budget / BUDGET_S
    files = test_files()
    slices = make_slices(files)
    import tempfile

    ctx = Ctx(py=sys.executable if args.dry_run else os.environ.get("PYTHON", "python3"),
              results=Path(args.results_root) / "<gpu-slug>", slices=slices,
              stamp_file=str(Path(tempfile.gettempdir()) / f"gpu_session_stamp_{os.getpid()}.json"))
    if args.list:
        print(f"budget {args.budget:.0f} s from SESSION_T0 (the wheel install included); boxes in s:")
        for n in names:
            print(f"  {n:20} {boxes[n]:6.0f}  {BY_NAME[n].what}")
        print(f"kernel tests (every window): {', '.join(kernel_test_files())}")
        for k, sl in enumerate(slices):
            print(f"rotating slice {k}: {', '.join(sl) or '-'}")
        return 0

    out = Path(os.environ.get("OUT") or "/tmp/spiketriton-out")
    out.mkdir(parents=True, exist_ok=True)
    overrun = dict((o.split(":") + ["overrun"])[:2] for o in args.dry_overrun)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # the kernels compile for the GPU (and the benchmarks time the real paths)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO)) if p)
    session: Dict[str, object] = {"benchmark": "gpu_session", "budget_s": args.budget, "grace_s": GRACE_S * scale,
                                  "command": "bash bench/gpu_session.sh " + shlex.join(sys.argv[1:] if argv is None
                                                                                       else argv),
                                  "plan": names, "stages": []}
    results: Optional[Path] = None
    log = open(out / "session.log", "a")
    print(f"gpu_session: {len(names)} stages in {args.budget:.0f} s: {', '.join(names)}", flush=True)
    try:
        for name in names:
            st = BY_NAME[name]
            left = deadline - time.monotonic()
            later = sum(boxes[n] for n in names[names.index(name) + 1:] if n == "report")
            box = min(boxes[name] if name != "cuda_tests" else left - later, left - later)
            rec: Dict[str, object] = {"stage": name, "box_s": round(boxes[name], 1), "what": st.what}
            if name != "stamp" and results is None:
                rec.update(status="skipped", reason="no results folder: the stamp stage did not run")
            elif name == "cuda_tests" and not ctx.slices:
                rec.update(status="skipped", reason="no test files")
            elif box < MIN_STAGE_S * scale:
                rec.update(status="skipped", reason=f"{max(0.0, box):.0f} s left before the deadline")
            else:
                if name == "cuda_tests":
                    hist = load_json(results / "cuda_tests.json").get("windows", [])
                    ctx.slice_index = (args.rotate % N_SLICES) if args.rotate is not None else next_slice(hist)
                    rec.update(slice=ctx.slice_index, files=selected_tests(ctx))
                real = st.argv(ctx)
                argv = dry_argv(name, real, box, overrun.get(name, "normal"), ctx) if args.dry_run else real
                if name == "stamp" and args.dry_run and name not in overrun:
                    argv = [sys.executable, str(BENCH / "gpu_session.py"), "--stamp", ctx.stamp_file, "--dry-run"]
                rec.update(command=shlex.join(real), effective_box_s=round(box, 1), started=_now())
                print(f"\n== stage {name} (box {box:.0f} s, {left:.0f} s left): {shlex.join(real)}", flush=True)
                log.write(f"\n== stage {name} (box {box:.0f} s): {shlex.join(real)}\n")
                rec.update(run_stage(argv, box, log, GRACE_S * scale, env))
                if name == "stamp":
                    results = _after_stamp(rec, Path(args.results_root), ctx, session)
                if name == "cuda_tests" and results is not None:
                    _record_tests(results, rec, ctx, session)
            session["stages"].append(rec)
            print(f"== stage {name}: {rec['status']}" + (f" ({rec.get('seconds')} s)" if "seconds" in rec else "")
                  + (f": {rec['reason']}" if rec.get("reason") else ""), flush=True)
            if results is not None:
                session["updated"] = _now()
                write_json(results / "session-gpu.json", session)
                pack(results, out)
    finally:
        log.close()
    print("\nstage               status      seconds  box")
    for r in session["stages"]:
        print(f"{r['stage']:19} {r['status']:10} {r.get('seconds', '-'):>8} {r.get('effective_box_s', r['box_s']):>5}")
    if results is not None:
        print(f"\nresults: {results} (packed in {out / 'results.tar.gz'}); log: {out / 'session.log'}")
    ok = results is not None and all(r["status"] in ("ok", "skipped") for r in session["stages"])
    return 0 if ok else 1


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _after_stamp(rec: dict, root: Path, ctx: Ctx, session: dict) -> Optional[Path]:
    """The results folder named by the stamp; if the stamp failed or ran out of time (a cold start that is slow to
    import torch, say), ``unknown-gpu``: the stages still run and their own files name the GPU."""
    info = load_json(Path(ctx.stamp_file))
    try:
        os.unlink(ctx.stamp_file)
    except OSError:
        pass
    if rec["status"] != "ok" or "slug" not in info:
        rec["reason"] = "the stamp failed: results go to unknown-gpu/ (every result file names its GPU; see the log)"
        info = {"slug": "unknown-gpu", "header": {"date": _now()}}
    results = root / info["slug"]
    results.mkdir(parents=True, exist_ok=True)
    ctx.results = results
    session.update({k: v for k, v in info["header"].items() if k not in session})
    return results


def _record_tests(results: Path, rec: dict, ctx: Ctx, session: dict) -> None:
    """cuda_tests.json: this window appended to the history (the rotation reads it next time)."""
    path = results / "cuda_tests.json"
    doc = load_json(path)
    files = list(rec.get("files") or [])
    parsed = parse_junit(results / "cuda_tests-junit.xml", files)
    window = {"date": session.get("date"), "gpu": (session.get("device") or {}).get("name"),
              "commit": (session.get("git") or {}).get("commit"), "slice": ctx.slice_index,
              "kernel_tests": [f for f in kernel_test_files() if f in files], "slice_files": ctx.slices[ctx.slice_index],
              "status": rec["status"], "returncode": rec.get("returncode"), "seconds": rec.get("seconds"), **parsed}
    doc.update({"what": "the CUDA tests of the GPU runbook's windows (bench/gpu_session.py); the next window runs "
                        "the slice after the last one here",
                "kernel_tests": kernel_test_files(), "cpu_only": list(CPU_ONLY_TESTS), "slices": ctx.slices,
                "windows": doc.get("windows", []) + [window]})
    write_json(path, doc)
    rec["tests"] = {k: parsed[k] for k in ("failed", "not_reached")}
    rec["tests"]["counts"] = {k: sum(c[k] for c in parsed["per_file"].values())
                              for k in ("passed", "failed", "errors", "skipped")}


if __name__ == "__main__":
    sys.exit(main())
