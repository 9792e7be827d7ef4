"""Event-driven spike matmul for streaming inference (issue 13): ``event_matmul`` / ``inference_matmul`` vs
``torch.matmul`` / ``F.linear`` / ``spike_matmul`` at a few rows (M = 1, 4, 16: one time step, a small batch)
and low firing, on the CPU or a CUDA GPU; ms, the speedup over torch.matmul, the measured crossover firing rate.

    python bench/event_matmul.py                        # --device auto: CUDA when there, else the CPU (1 thread)
    python bench/event_matmul.py --device cpu --quick   # CPU-sized check of the script (CI), a few seconds
    python bench/event_matmul.py --device cpu --dtypes fp32,bf16 --repeats 80
    python bench/event_matmul.py --device cuda --sizes 4096 --rep-ms 20 --max-seconds 20   # the runbook's stage
    TRITON_INTERPRET=1 python bench/event_matmul.py --smoke-cpu   # the CUDA code path in Triton's interpreter

Cases: ``Y = S @ W.T + b`` with spikes ``S [M, K]`` Bernoulli(rate) 0/1, ``W [N, K] ~ N(0, 1/K)``, a bias
``b ~ 0.1 N(0, 1)``, K = N in ``--sizes`` (default 1024 and 4096), M in ``--Ms`` (1, 4, 16), firing rates
``--rates`` (1, 5, 10, 20 % as issue 13 asks, and 35, 50 %: above the crossover, for the no-regression goal).
The weight's dtype is ``--dtypes`` (fp32; bf16 optional). Streaming inference sees new spikes every step, so
each case cycles through ``--draws`` independent spike draws of its rate (fixed seeds), one per call: the event
path's working set (the fired rows) changes from call to call as it would, and its time is not that of one
pattern whose rows stay in cache. Caches are not flushed otherwise (on the GPU do_bench flushes L2).

Implementations (all under ``torch.no_grad()``, inference):

  torch.matmul              ``torch.matmul(S, W.T)``, S dense in W's dtype, no bias: the baseline ("x torch")
  F.linear                  ``F.linear(S, W, b)``
  spike_matmul(packed)      ``spiketriton.spike_matmul(SpikeTensor, W, b)``: the dense spiketriton path on packed
                            spikes (what SpikeLinear runs above the crossover when fed by ``packed_output=True``)
  spike_matmul(dense)       ``spiketriton.spike_matmul(S, W, b)`` on the dense 0/1 tensor
  event_matmul(packed)      ``spiketriton.functional.events.event_matmul(SpikeTensor, W_t, b)``, ``W_t = W.T``
                            contiguous (the inference copy): reads only the rows of the inputs that fired
  event_matmul(dense)       the same on the dense 0/1 tensor
  inference_matmul(packed)  ``inference_matmul(SpikeTensor, W, b, W_t)``: the automatic choice SpikeLinear makes
                            in inference (CPU: counts the spikes, event path below the crossover rule, else
                            spike_matmul; CUDA: the event kernel for M <= EVENT_MAX_ROWS_CUDA rows); the path it
                            took is recorded per case (observed: event_matmul is wrapped during an untimed pass)
  inference_matmul(dense)   the same on the dense 0/1 tensor

Every impl is first compared with an fp64 reference ``S @ W.T (+ b)`` of the same (rounded) weights on the first
draw of every case (max |error|, ``ok`` within 1e-4 x max(1, |Y|) for fp32, 1e-2 x for bf16/fp16). Then:

- CPU: ``time.perf_counter``; per (dtype, M, K, rate), ``--warmup`` untimed calls per impl, then ``--repeats``
  rounds in which every impl runs once, in a new random order each round (interleaved as in spike_matmul_cpu.py:
  a change in machine load hits the compared impls alike, and the impls compared at one rate run within a
  fraction of a second of each other); median, min, IQR. **One torch thread by default** (``--threads 1``, recorded): the CI machine has 2 cores shared with
  other work, and with torch's default of 2 threads the OpenMP barriers stall whenever the other core is taken
  (single calls 5-20x their quiet time, bench/README.md); the thread count is restored when the script returns.
- CUDA: ``triton.testing.do_bench`` (median and 20/80 % quantiles of CUDA-event times, L2 flushed before each
  repetition) as in spike_matmul_gpu.py; fp32 torch products at ``set_float32_matmul_precision("highest")``.

Figures: ``x_torch`` = torch.matmul's median / the case's (> 1: faster), ``x_spike_matmul`` = spike_matmul's
median on the same spike format / the case's (``x_spike_matmul_paired``, CPU: the median over the rounds of the
ratio within each round, less sensitive to load that drifts between rounds); ``bytes`` = the least the impl must move (the spike operand,
the weight rows it reads: every row for a dense path, the distinct fired rows for the event path, the bias, the
output) and ``gbps`` = bytes / median.

Measured crossover per (dtype, M, K): the lowest firing rate of the grid at which event_matmul(packed) is no
faster than spike_matmul(packed) (medians), and the firing interpolated between it and the rate below (log of
the time ratio, linear in the measured firing fraction); also event_matmul(dense) vs spike_matmul(dense) and vs
F.linear, and each from the minimum times ("... (min)": on a loaded machine a call is either undisturbed or
descheduled for a time slice, and the minimum is the undisturbed cost). Compared with the rule of ``choose_event_path`` (CPU: event while firing < CPU_CROSSOVER_M1 *
M^-CPU_CROSSOVER_EXP; CUDA: M <= EVENT_MAX_ROWS_CUDA).

Goals (bench/report.py): at M = 1, 5 % firing, K = N = 4096, fp32: event_matmul(packed) and inference_matmul
(packed) >= 5x torch.matmul (CPU and CUDA); above the crossover (rates at or above the measured crossover, or
where inference_matmul took the dense path) inference_matmul's median <= 1.05x spike_matmul's on the same spike
format.

Writes ``event_matmul_cpu.json`` / ``.csv`` (``results/cpu/``) or ``event_matmul_gpu.json`` / ``.csv``
(``results/<gpu-slug>/``) after every group (``"partial": true`` until the end), so a time box keeps what was
measured; ``--max-seconds`` stops starting new groups after that many seconds from the start.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR, bench_ms, device_slug, header, int_list, interleaved_rounds, loadavg, name_list, progress,
    save_result, short_error, time_stats,
)
from _matmul_cases import DTYPES, make_spikes, make_weight  # noqa: E402

IMPLS = ("torch.matmul", "F.linear", "spike_matmul(packed)", "spike_matmul(dense)", "event_matmul(packed)",
         "event_matmul(dense)", "inference_matmul(packed)", "inference_matmul(dense)")
BASELINE = "torch.matmul"
#: (event side, dense side) of each measured crossover; the first is the one the brief's rule is compared with
CROSSOVER_PAIRS = (("event_matmul(packed)", "spike_matmul(packed)"), ("event_matmul(dense)", "spike_matmul(dense)"),
                   ("event_matmul(dense)", "F.linear"))
#: inference_matmul on a spike format -> the dense path it falls back to (the no-regression goal's pair)
AUTO_PAIRS = (("inference_matmul(packed)", "spike_matmul(packed)"), ("inference_matmul(dense)", "spike_matmul(dense)"))
GOAL_CASE = {"dtype": "fp32", "M": 1, "K": 4096, "N": 4096, "rate": 0.05}
GOAL_VS_TORCH = 5.0
GOAL_AUTO_SLOWDOWN = 1.05
QUICK = {"cpu": dict(Ms="1,4", sizes="256", rates="5,50", repeats=3, warmup=1, draws=2),
         "cuda": dict(Ms="1,4,16", sizes="4096", rates="5,50", rep_ms=10, warmup_ms=5, draws=2)}
SMOKE = dict(Ms="1,3", sizes="40", rates="10,50", draws=2)


# --------------------------------------------------------------------------------------------- #
# Cases
# --------------------------------------------------------------------------------------------- #


def parse_rates(text: str) -> List[float]:
    """'1,5,10,20' -> [0.01, 0.05, 0.1, 0.2]: whole numbers are percentages ('1' is 1 %, not a fraction of 1, as
    _matmul_cases.parse_rates would read it); a number with a decimal point <= 1 is a fraction ('0.05')."""
    out = []
    for t in text.split(","):
        t = t.strip().rstrip("%")
        if not t:
            continue
        v = float(t)
        v = v if ("." in t and v <= 1.0) else v / 100.0
        if not 0.0 <= v <= 1.0:
            raise SystemExit(f"event_matmul.py: a firing rate is 0-100 (%) or a fraction 0.0-1.0, got {t!r}")
        out.append(v)
    return out


def tolerance(dname: str, ref: torch.Tensor) -> float:
    """fp32 accumulation of exact 0/1 products (fp32), plus the output's rounding for half weights."""
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    return (1e-4 if dname == "fp32" else 1e-2) * scale


def make_bias(N: int, dtype, device, seed: int = 11) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (0.1 * torch.randn((N,), generator=gen)).to(device=device, dtype=dtype)


def make_draws(M: int, K: int, rate: float, n: int, dtype, device) -> List[dict]:
    """``n`` spike draws of one rate (seeds 100, 101, ...): dense 0/1 in ``dtype`` and packed."""
    import spiketriton as st

    out = []
    for i in range(n):
        s = make_spikes(M, K, rate, dtype, device, seed=100 + i + int(round(rate * 1e4)) * 64)
        out.append({"dense": s, "packed": st.pack_spikes(s, check=False),
                    "fired": int((s != 0).sum()), "distinct_fired": int((s != 0).any(0).sum())})
    return out


def _fn_of(impl: str, w, wt, b):
    import torch.nn.functional as F

    import spiketriton as st
    from spiketriton.functional.events import event_matmul, inference_matmul

    wT = w.t()
    if impl == "torch.matmul":
        return lambda x: torch.matmul(x, wT)
    if impl == "F.linear":
        return lambda x: F.linear(x, w, b)
    if impl.startswith("spike_matmul"):
        return lambda x: st.spike_matmul(x, w, b)
    if impl.startswith("event_matmul"):
        return lambda x: event_matmul(x, wt, b)
    if impl.startswith("inference_matmul"):
        return lambda x: inference_matmul(x, w, b, wt)
    raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")


def spike_format(impl: str) -> str:
    return "packed" if impl.endswith("(packed)") else "dense"


def runner(impl: str, draws: List[dict], w, wt, b):
    """A zero-argument callable that runs ``impl`` on the next draw (cycling), under no_grad."""
    f = _fn_of(impl, w, wt, b)
    xs = [d[spike_format(impl)] for d in draws]
    n = len(xs)
    state = [0]

    def fn():
        j = state[0]
        state[0] = j + 1 if j + 1 < n else 0
        with torch.no_grad():
            return f(xs[j])

    return fn


def observed_paths(impl: str, draws: List[dict], w, wt, b) -> List[str]:
    """The path inference_matmul takes on each draw ('event' / 'dense'), observed: the module's event paths
    (event_matmul, and _torch_event, which the PyTorch path calls on the spikes it already unpacked) are
    wrapped during one untimed call per draw."""
    import spiketriton.functional.events as ev

    reals = {name: getattr(ev, name) for name in ("event_matmul", "_torch_event")}
    hits = []

    def spy(real):
        def call(*a, **k):
            hits.append(1)
            return real(*a, **k)
        return call

    paths = []
    for name, real in reals.items():
        setattr(ev, name, spy(real))
    try:
        for d in draws:
            n0 = len(hits)
            with torch.no_grad():
                ev.inference_matmul(d[spike_format(impl)], w, b, wt)
            paths.append("event" if len(hits) > n0 else "dense")
    finally:
        for name, real in reals.items():
            setattr(ev, name, real)
    return paths


def weight_rows_read(impl: str, path: Optional[str], K: int, distinct: float) -> float:
    event = impl.startswith("event_matmul") or (impl.startswith("inference_matmul") and path == "event")
    return distinct if event else K


def case_bytes(impl: str, fmt: str, path: Optional[str], M: int, K: int, N: int, e: int, distinct: float) -> float:
    """The least bytes the impl moves: spikes (``fmt`` packed: M*ceil(K/8), dense: M*K*e), the weight rows it
    reads (all K, or the distinct fired inputs), the bias (not torch.matmul) and the output."""
    spikes = M * ((K + 7) // 8) if fmt == "packed" else M * K * e
    bias = 0 if impl == "torch.matmul" else N * e
    return spikes + weight_rows_read(impl, path, K, distinct) * N * e + bias + M * N * e


def build_group(dname: str, M: int, K: int, N: int, rates: List[float], impls: List[str], n_draws: int, device,
                agreement: List[dict]) -> List[dict]:
    """Every (rate, impl) case of one (dtype, M, K, N) group, checked against fp64 before any timing."""
    dt = DTYPES[dname]
    w = make_weight(N, K, dt, device)
    wt = w.t().contiguous()
    b = make_bias(N, dt, device)
    cases = []
    for rate in rates:
        draws = make_draws(M, K, rate, n_draws, dt, device)
        d0 = draws[0]["dense"]
        ref0 = d0.double() @ w.double().t()
        ref = ref0 + b.double()
        firing = statistics.fmean(d["fired"] for d in draws) / max(1, M * K)
        distinct = statistics.fmean(d["distinct_fired"] for d in draws)
        for impl in impls:
            c = dict(dtype=dname, M=M, K=K, N=N, rate=rate, impl=impl, firing_rate=firing,
                     fired_per_row=firing * K, distinct_fired=distinct, spike_format=spike_format(impl)
                     if impl not in ("torch.matmul", "F.linear") else "dense")
            try:
                fn = runner(impl, draws, w, wt, b)
                with torch.no_grad():
                    y = _fn_of(impl, w, wt, b)(d0 if c["spike_format"] == "dense" else draws[0]["packed"])
                r = ref0 if impl == "torch.matmul" else ref
                err = float((y.double() - r).abs().max()) if y.numel() else 0.0
                tol = tolerance(dname, r)
                c.update(max_abs_err=err, tol=tol, ok=err <= tol, fn=fn)
                if impl.startswith("inference_matmul"):
                    paths = observed_paths(impl, draws, w, wt, b)
                    n_ev = paths.count("event")
                    c.update(path="event" if n_ev == len(paths) else "dense" if n_ev == 0 else "mixed",
                             event_draws=n_ev, draws=len(paths))
                agreement.append({k: c[k] for k in ("dtype", "M", "K", "N", "rate", "impl", "max_abs_err", "tol", "ok")})
            except Exception as e:  # noqa: BLE001 - one failing impl must not lose the others
                c.update(error=short_error(e), ok=False)
                agreement.append({k: c.get(k) for k in ("dtype", "M", "K", "N", "rate", "impl", "error", "ok")})
                print(f"  {dname} M={M} K={K} {rate:.0%} {impl}: FAILED ({short_error(e)})", flush=True)
            cases.append(c)
        del ref, ref0
    return cases


# --------------------------------------------------------------------------------------------- #
# Figures: speedups, crossovers
# --------------------------------------------------------------------------------------------- #


def _paired(case: dict, other: Optional[dict]) -> Optional[float]:
    """Median over the interleaved rounds of other's time / case's time in the same round (CPU: each case of a
    rate runs once per round, so the i-th times of two cases were measured within one round)."""
    a, b = case.get("times") or [], (other or {}).get("times") or []
    if not a or len(a) != len(b):
        return None
    return statistics.median(y / x for x, y in zip(a, b))


def to_rows(cases: List[dict], device_kind: str) -> List[dict]:
    rows = []
    for c in cases:
        r = {k: v for k, v in c.items() if k not in ("fn", "times")}
        if c.get("times"):
            r.update(time_stats(c["times"]))
            r["x_spike_matmul_paired"] = _paired(c, _find(cases, c, f"spike_matmul({c['spike_format']})"))
        e = torch.empty((), dtype=DTYPES[c["dtype"]]).element_size()
        r["bytes"] = case_bytes(c["impl"], c["spike_format"], c.get("path"), c["M"], c["K"], c["N"], e, c["distinct_fired"])
        if r.get("median_ms"):
            r["gbps"] = r["bytes"] / (r["median_ms"] * 1e-3) / 1e9
        rows.append(r)
    add_speedups(rows)
    from spiketriton.functional.events import choose_event_path

    for r in rows:
        r["rule_event"] = choose_event_path(r["M"], int(round(r["firing_rate"] * r["M"] * r["K"])), r["K"],
                                            triton=device_kind != "cpu")
    return rows


def _find(rows, r, impl):
    for o in rows:
        if (o["dtype"], o["M"], o["K"], o["N"], o["rate"], o["impl"]) == (r["dtype"], r["M"], r["K"], r["N"], r["rate"], impl):
            return o
    return None


def add_speedups(rows: List[dict]) -> None:
    """x_torch (torch.matmul's median / this one's), x_spike_matmul (spike_matmul on the same spike format)."""
    for r in rows:
        if not r.get("median_ms"):
            continue
        for col, impl in (("x_torch", BASELINE), ("x_f_linear", "F.linear"),
                          ("x_spike_matmul", f"spike_matmul({r['spike_format']})")):
            b = _find(rows, r, impl)
            r[col] = b["median_ms"] / r["median_ms"] if b and b.get("median_ms") else None
        b = _find(rows, r, BASELINE)
        r["x_torch_min"] = b["min_ms"] / r["min_ms"] if b and b.get("min_ms") and r.get("min_ms") else None


def rule_crossover(M: int, device_kind: str) -> Dict[str, object]:
    """The crossover choose_event_path uses for M rows (CPU: a firing fraction; CUDA: by rows only)."""
    import spiketriton.functional.events as ev

    if device_kind == "cpu":
        return {"firing": ev.CPU_CROSSOVER_M1 * M ** (-ev.CPU_CROSSOVER_EXP),
                "rule": f"event while firing < {ev.CPU_CROSSOVER_M1:g} * M^-{ev.CPU_CROSSOVER_EXP:g}"}
    return {"firing": None, "event_path": M <= ev.EVENT_MAX_ROWS_CUDA,
            "rule": f"event for M <= {ev.EVENT_MAX_ROWS_CUDA} rows (no firing count on CUDA)"}


def measured_crossover(pts: List[tuple]) -> Dict[str, object]:
    """``pts`` = [(rate, firing fraction, t_event / t_dense)] of one (dtype, M, K): the lowest rate with a ratio
    >= 1 (event no faster) and the firing interpolated to ratio 1 between it and the rate below (log ratio,
    linear in the firing fraction)."""
    pts = sorted(pts)
    ratios = {f"{100 * r:g}%": round(q, 4) for r, _, q in pts}
    for i, (rate, fr, q) in enumerate(pts):
        if q >= 1.0:
            if i == 0:
                return {"first_rate_not_faster": rate, "interpolated_firing": None, "ratios": ratios,
                        "note": f"event no faster already at the lowest rate measured ({100 * rate:g} %)"}
            r0, f0, q0 = pts[i - 1]
            lo, hi = math.log(q0), math.log(q)
            x = f0 + (fr - f0) * (0.0 - lo) / (hi - lo) if hi > lo else fr
            return {"first_rate_not_faster": rate, "interpolated_firing": x, "ratios": ratios, "note": None}
    top = pts[-1][0] if pts else None
    return {"first_rate_not_faster": None, "interpolated_firing": None, "ratios": ratios,
            "note": f"event faster at every rate measured (crossover above {100 * top:g} %)" if pts else "no data"}


def crossovers(rows: List[dict], device_kind: str) -> List[dict]:
    out = []
    for key in dict.fromkeys((r["dtype"], r["M"], r["K"], r["N"]) for r in rows):
        sel = [r for r in rows if (r["dtype"], r["M"], r["K"], r["N"]) == key and r.get("median_ms")]
        e = {"dtype": key[0], "M": key[1], "K": key[2], "N": key[3], "rule": rule_crossover(key[1], device_kind)}
        for ev_impl, dense_impl in CROSSOVER_PAIRS:
            for stat, suffix in (("median_ms", ""), ("min_ms", " (min)")):
                pts = []
                for r in sel:
                    if r["impl"] != ev_impl or not r.get("ok") or not r.get(stat):
                        continue
                    d = _find(sel, r, dense_impl)
                    if d and d.get("ok") and d.get(stat):
                        pts.append((r["rate"], r["firing_rate"], r[stat] / d[stat]))
                if pts or not suffix:
                    e[f"{ev_impl} vs {dense_impl}{suffix}"] = measured_crossover(pts)
        out.append(e)
    return out


def auto_check(rows: List[dict], xo: List[dict]) -> List[dict]:
    """Per case above the crossover (rate >= the measured crossover of its pair, or inference_matmul took the
    dense path): inference_matmul's median / spike_matmul's on the same spike format."""
    out = []
    for r in rows:
        for auto, dense in AUTO_PAIRS:
            if r["impl"] != auto or not r.get("median_ms"):
                continue
            d = _find(rows, r, dense)
            if not d or not d.get("median_ms"):
                continue
            ev_impl = "event_matmul(packed)" if "packed" in auto else "event_matmul(dense)"
            x = next((e for e in xo if (e["dtype"], e["M"], e["K"], e["N"]) == (r["dtype"], r["M"], r["K"], r["N"])), {})
            first = (x.get(f"{ev_impl} vs {dense}") or {}).get("first_rate_not_faster")
            above = first is not None and r["rate"] >= first
            if not (above or r.get("path") == "dense"):
                continue
            out.append({"dtype": r["dtype"], "M": r["M"], "K": r["K"], "N": r["N"], "rate": r["rate"], "impl": auto,
                        "path": r.get("path"), "above_measured_crossover": above,
                        "ratio_vs_spike_matmul": r["median_ms"] / d["median_ms"],
                        "ratio_vs_spike_matmul_min": (r["min_ms"] / d["min_ms"]) if r.get("min_ms") and d.get("min_ms")
                        else None,
                        "ratio_vs_spike_matmul_paired": (1.0 / r["x_spike_matmul_paired"])
                        if r.get("x_spike_matmul_paired") else None,
                        "ok": r.get("ok", False) and d.get("ok", False)})
    return out


def goal_summary(rows: List[dict], checks: List[dict]) -> Dict[str, object]:
    g = {"vs_torch": GOAL_VS_TORCH, "case": GOAL_CASE, "auto_max_slowdown": GOAL_AUTO_SLOWDOWN}
    sel = {r["impl"]: r for r in rows if all(r[k] == v for k, v in GOAL_CASE.items())}
    g["x_torch_at_goal_case"] = {i: sel[i].get("x_torch") for i in IMPLS if i in sel and sel[i].get("x_torch")}
    g["auto_worst_ratio"] = max((c["ratio_vs_spike_matmul"] for c in checks), default=None)
    return g


# --------------------------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------------------------- #


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    ap.add_argument("--Ms", default="1,4,16", help="rows (time steps x batch) per call (default 1,4,16)")
    ap.add_argument("--sizes", default="1024,4096", help="K = N sizes (default 1024,4096)")
    ap.add_argument("--rates", default="1,5,10,20,35,50",
                    help="firing rates in %% (whole numbers; 0.05 with a decimal point is a fraction) (default 1,5,10,20,35,50)")
    ap.add_argument("--dtypes", default="fp32", help="weight dtypes: comma list of fp32,bf16,fp16 (default fp32)")
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma list (default all)")
    ap.add_argument("--draws", type=int, default=8, help="spike draws per case, cycled one per call (default 8)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU: torch.set_num_threads for the run (default 1: see the docstring); 0 = torch's choice")
    ap.add_argument("--repeats", type=int, default=50,
                    help="CPU: timed rounds per case (default 50: the compared dense calls differ only by noise on a "
                         "shared machine)")
    ap.add_argument("--warmup", type=int, default=3, help="CPU: untimed calls per case first (default 3)")
    ap.add_argument("--warmup-ms", type=int, default=10, help="CUDA: do_bench warm-up time per measurement")
    ap.add_argument("--rep-ms", type=int, default=50, help="CUDA: do_bench repetition time per measurement")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="start no new (dtype, M, K) group after this many seconds (the files hold what was measured)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes: CPU M=1,4, K=N=256, 5/50 %%, 3 rounds (CI); CUDA the goal shape, 5/50 %%, short reps")
    ap.add_argument("--smoke-cpu", action="store_true",
                    help="check the CUDA code path without a GPU: TRITON_INTERPRET=1 (the Triton kernels in the "
                         "interpreter on CPU tensors), tiny shapes, output to a temporary folder unless --out; "
                         "numbers meaningless")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/cpu or bench/results/<gpu-slug>)")
    args = ap.parse_args(argv)
    given = set()
    for a in (argv if argv is not None else sys.argv[1:]):
        if a.startswith("--"):
            given.add(a[2:].split("=")[0].replace("-", "_"))
    on_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    preset = SMOKE if args.smoke_cpu else (QUICK["cuda" if on_cuda else "cpu"] if args.quick else {})
    for k, v in preset.items():
        if k not in given:  # explicit options win over the preset
            setattr(args, k, v)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke_cpu:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            print("event_matmul.py: --smoke-cpu needs TRITON_INTERPRET=1 before triton is imported; run it as "
                  "`TRITON_INTERPRET=1 python bench/event_matmul.py --smoke-cpu`.", file=sys.stderr)
            return 1
        os.environ["TRITON_INTERPRET"] = "1"
        kind = "cuda"  # the CUDA code path (do_bench-style timing, Triton kernels) on CPU tensors
        device = torch.device("cpu")
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            print("event_matmul.py: --device cuda, but CUDA is not available here "
                  f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Nothing was measured; "
                  "`--device cpu` measures the CPU paths, `--smoke-cpu` checks the CUDA code path.", file=sys.stderr)
            return 1
        kind = "cuda" if (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())) else "cpu"
        device = torch.device(kind)
        if kind == "cuda":
            try:
                import triton  # noqa: F401
            except ImportError:
                print("event_matmul.py: triton is not installed; the CUDA event kernel needs it.", file=sys.stderr)
                return 1

    impls = name_list(args.impls, IMPLS, "impl", "event_matmul.py")
    if BASELINE not in impls:
        impls.insert(0, BASELINE)
    dtypes = name_list(args.dtypes, list(DTYPES), "dtype", "event_matmul.py")
    Ms, sizes, rates = int_list(args.Ms), int_list(args.sizes), parse_rates(args.rates)
    if args.draws < 1 or not Ms or not sizes or not rates or min(Ms + sizes) < 1:
        raise SystemExit("event_matmul.py: --draws, --Ms, --sizes need positive values and --rates at least one rate")

    threads_before = torch.get_num_threads()
    if kind == "cpu" and not args.smoke_cpu and args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, kind, device, impls, dtypes, Ms, sizes, rates, argv)
    finally:
        torch.set_num_threads(threads_before)  # run.py calls main() in its own process: leave it as found


def _run(args, kind, device, impls, dtypes, Ms, sizes, rates, argv) -> int:
    t_start = time.monotonic()
    smoke = args.smoke_cpu
    if args.out:
        out = Path(args.out)
    elif smoke:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="event_matmul_smoke_"))
    else:
        out = RESULTS_DIR / device_slug(device)
    stem = "event_matmul_gpu" if kind == "cuda" else "event_matmul_cpu"
    load_before = loadavg()
    result = header(stem, "event_matmul.py", argv, device)
    if smoke:
        result["device"].update(smoke_cpu=True, triton_interpret=True, name="cpu-smoke-test (numbers meaningless)")
    result["device"].update(load_average_before=load_before)
    threads = torch.get_num_threads()
    import spiketriton.functional.events as ev

    timer = (f"triton.testing.do_bench(warmup={args.warmup_ms}, rep={args.rep_ms}), median, 20/80 % quantiles"
             if kind == "cuda" and not smoke else
             "time.perf_counter, 5 runs (smoke test)" if smoke else
             f"time.perf_counter; per (dtype, M, K, rate) {args.warmup} warm-up calls per impl, then {args.repeats} "
             "interleaved rounds of every impl in a new random order each; median, min, IQR")
    result.update(config=dict(
        Ms=Ms, sizes_K_eq_N=sizes, rates=rates, dtypes=dtypes, impls=impls, draws_per_case=args.draws,
        spikes="Bernoulli(rate) 0/1, fixed seeds; each case cycles through its draws, one per call",
        weight="N(0, 1/K), W_t = W.T contiguous for the event path", bias="0.1 N(0, 1)",
        timer=timer, torch_num_threads=threads,
        threads_why=("1 thread by default: 2 cores shared with other work, and torch's default 2 threads stall on "
                     "OpenMP barriers whenever the other core is busy") if kind == "cpu" else None,
        fp32_matmul_precision="highest (no TF32)" if kind == "cuda" else None,
        crossover_constants={"CPU_CROSSOVER_M1": ev.CPU_CROSSOVER_M1, "CPU_CROSSOVER_EXP": ev.CPU_CROSSOVER_EXP,
                             "EVENT_MAX_ROWS_CUDA": ev.EVENT_MAX_ROWS_CUDA},
        quick=bool(args.quick), max_seconds=args.max_seconds,
    ), partial=True)
    print(f"event_matmul on {result['device']['name']}: M {Ms}, K = N {sizes}, rates {rates}, dtypes {dtypes}, "
          f"{len(impls)} impls, {args.draws} draws per case, torch threads {threads}, load average {load_before}",
          flush=True)

    groups = [(d, M, K) for d in dtypes for K in sizes for M in Ms]
    all_cases: List[dict] = []
    agreement: List[dict] = []
    skipped: List[dict] = []
    rng = random.Random(0)
    per_group = len(rates) * len(impls) * ((args.warmup + args.repeats) if kind == "cpu" else 1)
    bar = progress(len(groups) * per_group, "event_matmul")
    prev_prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for gi, (dname, M, K) in enumerate(groups):
            if args.max_seconds is not None and time.monotonic() - t_start > args.max_seconds:
                skipped += [{"dtype": d, "M": m, "K": k, "reason": f"--max-seconds {args.max_seconds:g} reached"}
                            for d, m, k in groups[gi:]]
                print(f"--max-seconds {args.max_seconds:g} reached: {len(groups) - gi} group(s) not measured", flush=True)
                break
            cases = build_group(dname, M, K, K, rates, impls, args.draws, device, agreement)
            timed = [c for c in cases if "fn" in c]
            if kind == "cpu":  # rounds per rate: the impls compared at one rate run within a fraction of a second
                by_rate: Dict[float, List[dict]] = {}
                for c in timed:
                    by_rate.setdefault(c["rate"], []).append(c)
                interleaved_rounds(by_rate.values(), args.warmup, args.repeats, bar, rng=rng)
            else:
                for c in timed:
                    try:
                        c.update(bench_ms(c["fn"], args.warmup_ms, args.rep_ms, device))
                    except Exception as e:  # noqa: BLE001
                        c.update(error=short_error(e), ok=False)
                    bar.update(1)
            for c in cases:
                c.pop("fn", None)
            all_cases += cases
            rows = to_rows(all_cases, device.type)  # the rule of the device the tensors are on
            xo = crossovers(rows, device.type)
            checks = auto_check(rows, xo)
            result.update(cases=rows, agreement=agreement, crossovers=xo, auto_checks=checks,
                          goals=goal_summary(rows, checks), skipped=skipped, groups_done=gi + 1)
            result["device"]["load_average_after"] = loadavg()
            _save_quiet(out, stem, result, rows)  # after every group: a time box keeps what was measured
            _print_group(rows, dname, M, K)
            del cases
            gc.collect()
            if kind == "cuda" and device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        torch.set_float32_matmul_precision(prev_prec)
        bar.close()
    load_after = loadavg()
    rows = result.get("cases", [])
    result["device"]["load_average_after"] = load_after
    result["partial"] = False
    written = save_result(out, stem, result, {stem: rows})
    _print_summary(result, load_before, load_after)
    bad = [a for a in agreement if not a.get("ok")]
    if bad:
        print(f"\nWARNING: {len(bad)} impl(s) failed or disagree with the fp64 reference (ok=False in the output)")
    return 0 if written else 1


def _save_quiet(out: Path, stem: str, result: dict, rows: List[dict]):
    from _common import stamp, write_csv, write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", result)
    if rows:
        write_csv(out / f"{stem}.csv", rows, stamp(result))
    return [out / f"{stem}.json"]


def _fmt_ms(v):
    return f"{v:9.4f}" if isinstance(v, float) else f"{'-':>9}"


def _print_group(rows: List[dict], dname: str, M: int, K: int) -> None:
    sel = [r for r in rows if (r["dtype"], r["M"], r["K"]) == (dname, M, K)]
    print(f"\n{dname} M={M} K=N={K}: median ms (x torch.matmul)", flush=True)
    for rate in dict.fromkeys(r["rate"] for r in sel):
        cells = []
        for r in sel:
            if r["rate"] != rate:
                continue
            if r.get("median_ms") is None:
                cells.append(f"{r['impl']} failed")
                continue
            tag = f" [{r['path']}]" if r.get("path") else ""
            cells.append(f"{r['impl']} {r['median_ms']:.4f} ({r.get('x_torch') or 0:.2f}x){tag}")
        print(f"  {rate:5.0%}: " + "; ".join(cells), flush=True)


def _print_summary(result: dict, load_before, load_after) -> None:
    print("\nmeasured crossover (lowest rate where the event path is no faster; interpolated firing) vs the rule:")
    for e in result.get("crossovers", []):
        main = e["event_matmul(packed) vs spike_matmul(packed)"]
        dense = e["event_matmul(dense) vs F.linear"]

        def f(x):
            if x.get("first_rate_not_faster") is None:
                return "none (" + (x.get("note") or "") + ")"
            ip = x.get("interpolated_firing")
            return f"{100 * x['first_rate_not_faster']:g} %" + (f" (~{100 * ip:.1f} %)" if ip is not None else "")

        rule = e["rule"]
        rtxt = f"{100 * rule['firing']:.1f} %" if rule.get("firing") is not None else rule["rule"]
        print(f"  {e['dtype']} M={e['M']:<3} K=N={e['K']:<5} packed vs spike_matmul: {f(main)}; dense vs F.linear: "
              f"{f(dense)}; rule: {rtxt}")
    g = result.get("goals") or {}
    at_goal = g.get("x_torch_at_goal_case") or {}
    print(f"\ngoal case {GOAL_CASE}: x torch.matmul "
          + (", ".join(f"{k} {v:.2f}x" for k, v in at_goal.items()) if at_goal else "not measured")
          + f" (goal >= {GOAL_VS_TORCH:g}x)")
    w = g.get("auto_worst_ratio")
    print(f"above the crossover: inference_matmul / spike_matmul worst {w:.3f}" if w is not None else
          "above the crossover: no case measured", f"(goal <= {GOAL_AUTO_SLOWDOWN:g})")
    print(f"load average before {load_before}, after {load_after}")


if __name__ == "__main__":
    sys.exit(main())
