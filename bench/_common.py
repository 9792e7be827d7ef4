"""What every benchmark in bench/ shares: the description of the machine and the library versions,
the output files (JSON header, CSV stamped with device / date / versions), timing and the copy
bandwidth, progress bars and small argument parsers.

Nothing here knows a benchmark case; ``_neuron_cases.py`` and ``_matmul_cases.py`` hold those.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

#: the libraries compared against, recorded with every result (distribution names)
PEERS = ("spikingjelly", "snntorch", "norse")


# --------------------------------------------------------------------------------------------- #
# Machine and versions
# --------------------------------------------------------------------------------------------- #


def _dist_version(dist: str) -> Optional[str]:
    """Installed version of a distribution, or None. A source install without version metadata (norse 1.1.0
    built from its sdist without SETUPTOOLS_SCM_PRETEND_VERSION reports 0.0.0) is recorded with the version
    its archive names: "1.1.0 (from norse-1.1.0.tar.gz; its metadata says 0.0.0)"."""
    try:
        dist_obj = importlib.metadata.distribution(dist)
        v = dist_obj.version
    except importlib.metadata.PackageNotFoundError:
        return None
    if v == "0.0.0":
        try:
            url = json.loads(dist_obj.read_text("direct_url.json") or "{}").get("url", "")
        except (OSError, ValueError):
            url = ""
        archive = url.rsplit("/", 1)[-1]
        real = archive_version(dist, archive)
        if real and real != "0.0.0":
            return f"{real} (from {archive}; its metadata says 0.0.0)"
        if archive:
            return f"0.0.0 (metadata; installed from {archive})"
    return v


def archive_version(dist: str, archive: str) -> Optional[str]:
    """The version in an sdist's or wheel's file name: ('norse', 'norse-1.1.0.tar.gz') -> '1.1.0'."""
    m = re.match(re.escape(dist).replace("\\-", "[-_]") + r"[-_]([0-9][0-9A-Za-z.+!]*?)(?:-py|\.tar|\.zip|-cp|$)",
                 archive, re.IGNORECASE)
    return m.group(1) if m else None


def versions() -> Dict[str, Optional[str]]:
    """python, torch (+ its CUDA), triton, spiketriton and the peers' versions (None: not installed)."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    try:
        import spiketriton

        out["spiketriton"] = spiketriton.__version__
    except ImportError:
        out["spiketriton"] = None
    for dist in PEERS + ("numpy", "matplotlib"):
        out[dist] = _dist_version(dist)
    return out


def versions_line(v: Dict[str, Optional[str]]) -> str:
    """'torch 2.13.0+cpu, triton 3.9.0, spiketriton 0.1.0, spikingjelly 2.0.0, ...' (installed ones)."""
    keys = ("torch", "triton", "spiketriton") + PEERS
    return ", ".join(f"{k} {v[k]}" for k in keys if v.get(k))


def git_state() -> Dict[str, object]:
    """The repository's commit, where spiketriton was imported from, and whether that is this checkout
    with uncommitted changes under spiketriton/ (``spiketriton_dirty``: then the numbers are for code
    that no commit holds; None when spiketriton came from elsewhere)."""
    out: Dict[str, object] = {"commit": None}
    try:
        import spiketriton

        pkg = Path(spiketriton.__file__).resolve().parent
        out["spiketriton_imported_from"] = str(pkg)
    except ImportError:
        pkg = None
    env_commit = os.environ.get("SPIKETRITON_COMMIT")  # a copy of the tree without .git (a lent GPU machine)
    if env_commit:
        out.update(commit=env_commit, commit_source="SPIKETRITON_COMMIT (set by the caller: no git repository used)")
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return out
        out["commit"] = head.stdout.strip()
        out.pop("commit_source", None)
        if pkg is not None and pkg == (REPO_DIR / "spiketriton").resolve():
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "spiketriton"], cwd=REPO_DIR,
                                   capture_output=True, text=True, timeout=10)
            out["spiketriton_dirty"] = bool(dirty.stdout.strip())
        else:
            out["spiketriton_dirty"] = None  # not this checkout's source: see spiketriton_imported_from
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def cpu_description() -> Dict[str, object]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "processor": platform.processor(),
        "cpu_model": model,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
    }


def device_info(device) -> Dict[str, object]:
    """``{"kind": "cpu"|"cuda", "name": ..., ...}``: the GPU's name, capability, memory and SM count
    on CUDA (plus the host), the processor on CPU."""
    device = torch.device(device)
    host = cpu_description()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"kind": "cuda", "name": torch.cuda.get_device_name(device), "gpu": torch.cuda.get_device_name(device),
                "capability": list(torch.cuda.get_device_capability(device)),
                "total_memory_GiB": props.total_memory / 2**30, "multiprocessors": props.multi_processor_count,
                "host": host}
    name = f"CPU: {host['cpu_model'] or host['processor'] or host['machine']}, {host['torch_num_threads']} threads"
    return {"kind": "cpu", "name": name, **host}


def slugify(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (the results folder of a device)."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "gpu"


def device_slug(device) -> str:
    """The results folder name: 'cpu' for any CPU, the slugified GPU name on CUDA."""
    device = torch.device(device)
    return slugify(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def header(benchmark: str, script: str, argv: Optional[Sequence[str]], device) -> Dict[str, object]:
    """The fields every result JSON starts with: benchmark, date, command, device, versions, git."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return {"benchmark": benchmark, "date": now_iso(), "command": " ".join(["python", f"bench/{script}"] + args),
            "device": device_info(device), "versions": versions(), "git": git_state()}


def stamp(result: Dict[str, object]) -> Dict[str, str]:
    """The columns every CSV row carries: device name, date, versions (one string)."""
    dev = result.get("device") or {}
    return {"device": dev.get("name") or dev.get("gpu") or "?", "date": str(result.get("date")),
            "versions": versions_line(result.get("versions") or {})}


# --------------------------------------------------------------------------------------------- #
# Output files
# --------------------------------------------------------------------------------------------- #


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path: Path, rows: List[Dict[str, object]], meta: Optional[Dict[str, object]] = None) -> None:
    """Rows as CSV (columns in order of first appearance); ``meta`` (see :func:`stamp`) is appended to
    every row so that each CSV says on which device, when and with which versions it was measured."""
    import csv

    rows = [dict(r, **meta) if meta else r for r in rows]
    cols: List[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})


def save_result(out, stem: str, result: Dict[str, object], csvs: Dict[str, List[Dict[str, object]]]) -> List[Path]:
    """``out/stem.json`` and one stamped CSV per non-empty entry of ``csvs`` (name -> rows); prints and
    returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", result)
    written = [out / f"{stem}.json"]
    for name, rows in csvs.items():
        if rows:
            write_csv(out / f"{name}.csv", rows, stamp(result))
            written.append(out / f"{name}.csv")
    print("wrote " + ", ".join(str(w) for w in written), flush=True)
    return written


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return v


# --------------------------------------------------------------------------------------------- #
# Argument helpers
# --------------------------------------------------------------------------------------------- #


def int_list(text: str) -> List[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def name_list(text: str, allowed: Sequence[str], what: str, prog: str) -> List[str]:
    out = [t.strip() for t in text.split(",") if t.strip()]
    for t in out:
        if t not in allowed:
            raise SystemExit(f"{prog}: unknown {what} {t!r}; expected some of {', '.join(allowed)}")
    return out


def short_error(e: BaseException, limit: int = 500) -> str:
    msg = f"{type(e).__name__}: {e}".replace("\n", " ")
    return msg if len(msg) < limit else msg[:limit] + "..."


# --------------------------------------------------------------------------------------------- #
# Progress bars (tqdm when it is installed; BENCH_PROGRESS=1/0 forces them on/off, else only on a tty)
# --------------------------------------------------------------------------------------------- #


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str):
    """A tqdm bar (``update``, ``set_postfix_str``, ``close``), or a silent stand-in."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    forced = os.environ.get("BENCH_PROGRESS", "")
    disable = {"1": False, "0": True}.get(forced)  # None: tqdm shows it on a tty only
    return tqdm(total=total, desc=desc, unit="case", disable=disable, dynamic_ncols=True,
                mininterval=0.5 if disable is None else 5.0)


# --------------------------------------------------------------------------------------------- #
# Threads
# --------------------------------------------------------------------------------------------- #

# torch CPU threads of a benchmark: the demo's rule and default (spiketriton.demo.DEFAULT_CPU_THREADS, 1, with the
# measurements that chose it), worded for the benchmarks' records
THREADS_WHY_DEFAULT = ("the default on the CPU: with torch's default of one thread per core, a machine shared with "
                       "other work stalls in OpenMP barriers; --threads N to change it")


def set_threads(requested: Optional[int], device="cpu") -> Dict[str, object]:
    """Set torch's CPU threads for a benchmark and say why, by the demo's rule
    (``spiketriton.demo.set_threads``): ``None`` -> ``DEFAULT_CPU_THREADS`` (1) on the CPU (torch's
    choice on CUDA, where the host threads hardly matter), ``0`` -> torch's default, ``N`` -> N.
    Returns ``{"torch_num_threads", "threads_why", "threads_before"}`` to record (and to restore with
    :func:`restore_threads`)."""
    # imported here: run.py imports this module before it checks that spiketriton is not loaded yet
    from spiketriton.demo import _apply_thread_rule

    before = torch.get_num_threads()
    try:
        case = _apply_thread_rule(requested, device)
    except ValueError:
        raise SystemExit(f"--threads must be >= 0 (0: torch's default), got {requested}") from None
    why = {"default": THREADS_WHY_DEFAULT, "given": f"--threads {requested}",
           "torch": "torch's default" + (" (--threads 0)" if requested == 0 else " (a CUDA run; --threads N to set it)")}
    return {"torch_num_threads": torch.get_num_threads(), "threads_why": why[case], "threads_before": before}


def restore_threads(info: Dict[str, object]) -> None:
    """Put back the thread count :func:`set_threads` found (``python -m bench`` runs the scripts in its own
    process: each leaves the setting as it was)."""
    torch.set_num_threads(int(info["threads_before"]))


@contextlib.contextmanager
def threads_for(requested: Optional[int], device="cpu"):
    """:func:`set_threads` for a ``with`` block: yields its record and restores the count after the block
    (the scripts whose whole run uses the one setting)."""
    info = set_threads(requested, device)
    try:
        yield info
    finally:
        restore_threads(info)


# --------------------------------------------------------------------------------------------- #
# Timing
# --------------------------------------------------------------------------------------------- #


def time_stats(times_s: Sequence[float]) -> Dict[str, float]:
    """median, min and IQR in ms of a list of seconds."""
    ts = sorted(times_s)
    q1, q3 = ts[len(ts) // 4], ts[(3 * len(ts)) // 4]
    return {"median_ms": statistics.median(ts) * 1e3, "min_ms": ts[0] * 1e3, "iqr_ms": (q3 - q1) * 1e3,
            "repeats": len(ts)}


def interleaved_rounds(groups: Iterable[List[dict]], warmup: int, repeats: int, bar=None, rng=None) -> None:
    """CPU timing with ``time.perf_counter``: for each group of cases (dicts with a zero-argument
    ``fn``), ``warmup`` untimed calls per case, then ``repeats`` rounds in which every case of the
    group runs once (in a new random order each round when ``rng`` is given), so that a change in
    machine load hits the compared cases alike. Appends seconds to each case's ``times``."""
    for group in groups:
        for c in group:
            c.setdefault("times", [])
            for _ in range(warmup):
                c["fn"]()
                if bar is not None:
                    bar.update(1)
        order = list(group)
        for _ in range(repeats):
            if rng is not None:
                rng.shuffle(order)
            for c in order:
                t0 = time.perf_counter()
                c["fn"]()
                c["times"].append(time.perf_counter() - t0)
                if bar is not None:
                    bar.update(1)


def bench_ms(fn: Callable[[], object], warmup_ms: int, rep_ms: int, device) -> Dict[str, float]:
    """Median and 20/80 % quantiles in ms: ``triton.testing.do_bench`` on CUDA (CUDA events, L2 flushed
    before each repetition); on CPU (the GPU scripts' ``--smoke-cpu``) a few ``perf_counter`` runs."""
    if torch.device(device).type == "cpu":
        fn()
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        ts.sort()
        return {"median_ms": statistics.median(ts), "p20_ms": ts[1], "p80_ms": ts[3]}
    import triton.testing

    q = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return {"median_ms": float(q[0]), "p20_ms": float(q[1]), "p80_ms": float(q[2])}


def time_one(fn: Callable[[], object], device) -> float:
    """ms of one call: CUDA events around it on CUDA (synchronised), ``time.perf_counter`` on CPU."""
    if torch.device(device).type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_calls(fn: Callable[[], object], warmup: int, reps: int, device) -> Dict[str, float]:
    """For calls long enough that their count matters more than a time budget (hundreds of ms): ``warmup``
    untimed calls, then ``reps`` timed ones (:func:`time_one`); median, min and max in ms."""
    for _ in range(warmup):
        fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return ms_stats([time_one(fn, device) for _ in range(reps)])


def ms_stats(ts: Sequence[float]) -> Dict[str, float]:
    return {"median_ms": statistics.median(ts), "min_ms": min(ts), "max_ms": max(ts), "repeats": len(ts)}


def gbps(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def copy_bandwidth(nbytes: int, device, warmup_ms: int = 25, rep_ms: int = 200, cpu_reps: int = 20) -> Dict[str, float]:
    """The machine's measured copy bandwidth: ``dst.copy_(src)`` of an fp32 buffer of ``nbytes``;
    GB/s = 2 * bytes (read + written) / median time. CUDA: a device-to-device copy timed by
    ``do_bench``; CPU: a large tensor copy, ``cpu_reps`` ``perf_counter`` runs after two warm-ups."""
    device = torch.device(device)
    n = max(1, int(nbytes) // 4)
    src = torch.ones(n, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    if device.type == "cuda":
        t = bench_ms(lambda: dst.copy_(src), warmup_ms, rep_ms, device)
        how = f"torch dst.copy_(src) on {device}, triton.testing.do_bench median"
    else:
        for _ in range(2):
            dst.copy_(src)
        ts = []
        for _ in range(cpu_reps):
            t0 = time.perf_counter()
            dst.copy_(src)
            ts.append(time.perf_counter() - t0)
        t = time_stats(ts)
        how = f"torch dst.copy_(src) on the CPU ({torch.get_num_threads()} threads), median of {cpu_reps}"
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"buffer_bytes": n * 4, **t, "gbps": gbps(2 * n * 4, t["median_ms"]), "how": how}
