"""The report of a results folder: the issue's goals (met / unmet / not-measured), a headline table,
the suites' status and the plots, all drawn from the JSON files in the folder.

    python bench/report.py bench/results/cpu          # (python -m bench --report-only does the same)

Writes ``summary.json`` (suites, goals, headline), ``summary.csv`` (the goals), ``summary.md`` (the tables,
ready to paste) and one PNG per suite (``plots.py``). Results measured in separate calls (a GPU session's
stages) merge here: every suite leaves its own files, and this reads whatever is in the folder.
Speed goals are reported, never asserted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plots  # noqa: E402
import roofline  # noqa: E402
from _common import header, stamp, versions_line, write_csv, write_json  # noqa: E402

MET, UNMET, NOT_MEASURED = "met", "unmet", "not-measured"
GPU_ONLY = "a GPU goal: needs results measured on a CUDA GPU (bench/README.md, 'GPU session')"

#: the GPU goals of issue 11 (they replace the earlier 85 % / 1.3x / 8x / 1.0x / 1.25x)
GOAL_NEURON_COPY_PCT = 90.0      # neuron fwd+bwd, % of the measured copy bandwidth (LIF, IF, PLIF; fp32, bf16)
GOAL_NEURON_VS_SJ = 1.5          # neuron fwd+bwd vs SpikingJelly's Triton neurons (its fastest variant)
GOAL_MATMUL_FP32 = 4.0           # spike_matmul, fp32 weights, vs cuBLAS fp32 (no TF32) at 4096^3; dW the same
GOAL_MATMUL_BF16 = 0.95          # spike_matmul, bf16 weights, vs cuBLAS bf16 at 4096^3; dW the same
GOAL_INT8_VS_BF16 = 1.5          # integer spike matmul vs cuBLAS bf16 at 4096^3
GOAL_ON_VS_3_GEMMS = 1.1         # Open Neuromorphic n = 16384 bf16: time <= 1.1x its three bf16 GEMMs
#: issue 13: the event-driven spike matmul (bench/event_matmul.py), on the CPU and on a GPU
GOAL_EVENT_VS_TORCH = 5.0        # at M = 1, 5 % firing, K = N = 4096, fp32: >= 5x torch.matmul fp32
GOAL_EVENT_CASE = {"dtype": "fp32", "M": 1, "K": 4096, "N": 4096, "rate": 0.05}
GOAL_EVENT_AUTO = 1.05           # above the crossover: inference_matmul <= 1.05x spike_matmul (same spike format)
EVENT_GOAL_SIZES = (1024, 4096)  # the K = N of issue 13 (quick-mode sizes do not count)
GOAL_STEP_VS_SNNTORCH = 1.0      # CPU: one LIF step at [16, 200] fp32, no_grad: <= 1.0x snnTorch Leaky's time
#: files that are not a suite's result (the runbook's records), read by the report apart
SESSION_FILE, TESTS_FILE = "session-gpu.json", "cuda_tests.json"


def load_results(folder: Path) -> Dict[str, dict]:
    """Every result JSON of the folder by file stem (the suites' status files and our own summary aside)."""
    out = {}
    for f in sorted(Path(folder).glob("*.json")):
        if f.name in ("summary.json", SESSION_FILE, TESTS_FILE) or f.name.startswith(("suite-", "cuda_tests")):
            continue
        try:
            r = json.loads(f.read_text())
        except ValueError:
            continue
        if isinstance(r, dict) and "benchmark" in r:
            if isinstance(r.get("device"), str):  # an example's record names its device in a word ("cpu")
                r["device"] = {"kind": r["device"], "name": r["device"]}
            out[f.stem] = r
    return out


def load_suites(folder: Path) -> Dict[str, dict]:
    out = {}
    for f in sorted(Path(folder).glob("suite-*.json")):
        try:
            s = json.loads(f.read_text())
        except ValueError:
            continue
        out[s.get("suite", f.stem[6:])] = s
    return out


def _goal(gid, suite, statement, target, device="cuda"):
    return {"id": gid, "suite": suite, "goal": statement, "target": target, "device": device,
            "status": NOT_MEASURED, "value": None, "reason": None, "source": None, "detail": None}


def _status(values: List[bool]) -> str:
    return MET if values and all(values) else UNMET


def _on_cuda(r: Optional[dict]) -> bool:
    return bool(r) and (r.get("device") or {}).get("kind") == "cuda" and not (r.get("device") or {}).get("smoke_cpu")


# --------------------------------------------------------------------------------------------- #
# Goals (issue 7, plus the CPU and memory goals of bench/README.md)
# --------------------------------------------------------------------------------------------- #


def merged_neuron_gpu(results: Dict[str, dict]) -> Optional[dict]:
    """``neuron_gpu.json`` and any tagged ``neuron_gpu_*.json`` (the runbook measures LIF and IF / PLIF in separate
    time boxes) as one result: the first file's header, every file's cases (a later file's row replaces an
    earlier one of the same neuron, dtype, impl and pass); ``sources`` names the files. None if there is none."""
    names = sorted(n for n in results if n == "neuron_gpu" or n.startswith("neuron_gpu_"))
    if not names:
        return None
    base = dict(results[names[0]])
    rows: Dict[tuple, dict] = {}
    for n in names:
        for c in results[n].get("cases", []):
            rows[(c["neuron"], c["dtype"], c["impl"], c["pass"])] = c
    base["cases"] = list(rows.values())
    base["sources"] = [f"{n}.json" for n in names]
    base["partial"] = any(results[n].get("partial") for n in names)
    return base


def goals(results: Dict[str, dict]) -> List[dict]:
    out = []
    ng = merged_neuron_gpu(results)
    src = ", ".join((ng or {}).get("sources", ["neuron_gpu.json"]))
    cases = [r for r in (ng or {}).get("cases", []) if r["impl"] == "spiketriton" and r["pass"] == "fwd+bwd"]

    g = _goal("neuron_copy_bandwidth", "neuron", f"neuron kernels fwd+bwd >= {GOAL_NEURON_COPY_PCT:g}% of the measured "
              "copy bandwidth (LIF, IF, PLIF; fp32, bf16)", f">= {GOAL_NEURON_COPY_PCT:g} %")
    if _on_cuda(ng) and cases:
        vals = {f"{r['neuron']} {r['dtype']}": round(r["pct_copy_bw"], 1) for r in cases}
        missing = [f"{n} {d}" for n in ("lif", "if", "plif") for d in ("fp32", "bf16") if f"{n} {d}" not in vals]
        g.update(status=_status([v >= GOAL_NEURON_COPY_PCT for v in vals.values()]), value=min(vals.values()),
                 detail=vals, source=src, reason="value: the lowest case, % of copy bandwidth"
                 + (f"; not measured: {', '.join(missing)}" if missing else ""))
    else:
        g["reason"] = GPU_ONLY
    out.append(g)

    g = _goal("neuron_vs_spikingjelly", "neuron", f"neuron kernels fwd+bwd >= {GOAL_NEURON_VS_SJ:g}x SpikingJelly's "
              "Triton neurons (its fastest variant)", f">= {GOAL_NEURON_VS_SJ:g}x")
    sj = [r for r in cases if r.get("speedup_vs_sj_best")]
    if _on_cuda(ng) and sj:
        vals = {f"{r['neuron']} {r['dtype']}": round(r["speedup_vs_sj_best"], 2) for r in sj}
        g.update(status=_status([v >= GOAL_NEURON_VS_SJ for v in vals.values()]), value=min(vals.values()),
                 detail=vals, source=src, reason="value: the lowest case")
    elif _on_cuda(ng):
        g["reason"] = "SpikingJelly did not run on the GPU (see skipped / errors in neuron_gpu.json)"
    else:
        g["reason"] = GPU_ONLY
    out.append(g)

    for kernel in ("fwd", "dw"):
        for wdt, target in (("fp32", GOAL_MATMUL_FP32), ("bf16", GOAL_MATMUL_BF16)):
            what = ("spike_matmul" if kernel == "fwd" else "spike_matmul_dw (weight gradient)")
            ref = "torch.matmul" if kernel == "fwd" else "torch dY.T @ S"
            g = _goal(f"spike_matmul{'_dw' if kernel == 'dw' else ''}_vs_torch_{wdt}", "spike_matmul",
                      f"{what} ({wdt}) >= {target:g}x {ref} {wdt} (cuBLAS{', no TF32' if wdt == 'fp32' else ''}) "
                      "at 4096x4096x4096", f">= {target:g}x")
            per_rate = _matmul_goal(results, wdt, wdt, kernel)
            if per_rate:
                g.update(status=_status([v >= target for v in per_rate.values()]), value=min(per_rate.values()),
                         detail={f"{100 * k:g}%": round(v, 2) for k, v in per_rate.items()},
                         source="spike_matmul_gpu*.json",
                         reason="value: the lowest firing rate's speedup; public API / launcher with default tiles or "
                                "the best swept tile config, whichever is faster")
            else:
                g["reason"] = GPU_ONLY if not _on_cuda(results.get("spike_matmul_gpu")) else "4096^3 was not measured"
            out.append(g)

    im = results.get("int_matmul_gpu")
    g = _goal("int_matmul_vs_torch_bf16", "int_matmul",
              f"integer spike matmul (int8 weights) >= {GOAL_INT8_VS_BF16:g}x torch.matmul bf16 at 4096x4096x4096",
              f">= {GOAL_INT8_VS_BF16:g}x")
    per = [p for p in ((im or {}).get("goals") or {}).get("per_rate", [])] if _on_cuda(im) else []
    if per:
        g.update(status=_status([p["x_torch_bf16"] >= GOAL_INT8_VS_BF16 for p in per]),
                 value=min(p["x_torch_bf16"] for p in per),
                 detail={f"{100 * p['rate']:g}%": round(p["x_torch_bf16"], 2) for p in per}, source="int_matmul_gpu.json")
    else:
        g["reason"] = GPU_ONLY if not _on_cuda(im) else "4096^3 was not measured"
    out.append(g)

    on = results.get("open_neuromorphic")
    best = _on_best(on, 16384) if on else {}
    g = _goal("open_neuromorphic_fastest", "open_neuromorphic",
              "Open Neuromorphic benchmark at n = 16384: spiketriton the fastest of the four libraries", "fastest")
    peers = ("spikingjelly", "snntorch", "norse")
    if _on_cuda(on) and "spiketriton" in best:
        measured = [p for p in peers if p in best]
        faster = {p: round(best[p]["median_ms"] / best["spiketriton"]["median_ms"], 2) for p in measured}
        if len(measured) == len(peers):
            g.update(status=_status([v > 1.0 for v in faster.values()]), value=min(faster.values()),
                     reason="value: the fastest peer's time / spiketriton's")
        else:
            g["reason"] = (f"not all four measured ({', '.join(p for p in peers if p not in best)} missing); "
                           f"fastest of those measured: {all(v > 1.0 for v in faster.values())}")
        g.update(detail={"peer_time_over_spiketriton": faster}, source="open_neuromorphic.json")
    else:
        g["reason"] = GPU_ONLY if not _on_cuda(on) else "n = 16384 was not measured"
    out.append(g)

    g = _goal("open_neuromorphic_vs_3_gemms", "open_neuromorphic",
              f"Open Neuromorphic benchmark at n = 16384 in bf16: spiketriton's step <= {GOAL_ON_VS_3_GEMMS:g}x the "
              "time of its three bf16 GEMMs done by torch alone", f"<= {GOAL_ON_VS_3_GEMMS:g}x")
    if _on_cuda(on) and "spiketriton" in best and "torch (3 GEMMs)" in best:
        ratio = best["spiketriton"]["median_ms"] / best["torch (3 GEMMs)"]["median_ms"]
        if best["spiketriton"]["dtype"] == "bf16" and best["torch (3 GEMMs)"]["dtype"] == "bf16":
            g.update(status=MET if ratio <= GOAL_ON_VS_3_GEMMS else UNMET, value=round(ratio, 3),
                     source="open_neuromorphic.json")
        else:
            g.update(value=round(ratio, 3), reason="not measured in bf16")
    else:
        g["reason"] = GPU_ONLY if not _on_cuda(on) else "n = 16384 was not measured"
    out.append(g)

    out += event_goals(results)

    # CPU and memory goals (bench/README.md)
    nc = results.get("neuron_cpu")
    g = _goal("neuron_cpu_vs_spikingjelly", "neuron", "CPU: LIF fwd+bwd (fp32, [T, B, N] = [16, 32, 4096]) at least "
              "as fast as SpikingJelly 2.0's CPU op", ">= 1.0x", device="cpu")
    rows = [r for r in (nc or {}).get("cases", []) if r["impl"] == "spiketriton" and r["pass"] == "fwd+bwd"
            and r["dtype"] == "fp32" and r.get("speedup_vs_spikingjelly")]
    if nc and (nc.get("config") or {}).get("shape_TBN") == [16, 32, 4096] and rows:
        v = rows[0]["speedup_vs_spikingjelly"]
        g.update(status=MET if v >= 1.0 else UNMET, value=round(v, 2), source="neuron_cpu.json")
    else:
        g["reason"] = ("needs neuron_cpu.json at [16, 32, 4096] with SpikingJelly installed (the full CPU run)"
                       if not rows else "measured at another shape (quick mode)")
    out.append(g)

    out.append(step_goal(results.get("step_cpu")))

    mem = results.get("memory")
    for dname, target in (("fp32", 4.125), ("bf16", 2.125)):
        g = _goal(f"memory_saved_{dname}", "memory", f"LIF -> SpikeLinear keeps <= {target} bytes per input "
                  f"neuron-step for backward ({dname}; with packed_output=True)", f"<= {target} B", device="any")
        rows = {r["variant"]: r for r in (mem or {}).get("saved_bytes", []) if r["dtype"] == dname}
        if "spiketriton packed_output" in rows:
            v = rows["spiketriton packed_output"]["marginal_B_per_neuron_step"]
            g.update(status=MET if v <= target + 1e-9 else UNMET, value=round(v, 4), source="memory.json",
                     detail={k: round(r["marginal_B_per_neuron_step"], 4) for k, r in rows.items()})
        else:
            g["reason"] = "memory.json has no packed_output row for this dtype"
        out.append(g)
    return out


def step_goal(r: Optional[dict]) -> dict:
    """Issue 13's cheap single step, on the CPU (bench/step_cpu.py): one LIF step ([16, 200] fp32, no_grad)
    at most as long as snnTorch's Leaky step; value = spiketriton's median / snnTorch's."""
    g = _goal("step_cpu_vs_snntorch", "step", "CPU: one LIF time step ([16, 200] fp32, no_grad) at most as long as "
              "snnTorch's Leaky step", f"<= {GOAL_STEP_VS_SNNTORCH:g}x", device="cpu")
    sel = {c["impl"]: c for c in (r or {}).get("cases", []) if c.get("mode") == "infer" and c.get("shape") == "16x200"}
    st, snn = sel.get("spiketriton.LIF"), sel.get("snntorch.Leaky")
    if r is None:
        g["reason"] = "needs step_cpu.json (python bench/step_cpu.py --device cpu)"
    elif (r.get("config") or {}).get("quick"):
        g["reason"] = "measured in quick mode (a CI sanity run): the full run measures it"
    elif not (st and snn):
        g["reason"] = ("spiketriton.LIF or snnTorch's Leaky was not measured at [16, 200] (see skipped and "
                       "neuron_cpu_status in step_cpu.json)")
    else:
        v = st["us_per_step_median"] / snn["us_per_step_median"]
        g.update(status=MET if v <= GOAL_STEP_VS_SNNTORCH else UNMET, value=round(v, 3), source="step_cpu.json",
                 detail={"spiketriton_us": round(st["us_per_step_median"], 2),
                         "snntorch_us": round(snn["us_per_step_median"], 2),
                         "ratio_of_minima": round(st["us_per_step_min"] / snn["us_per_step_min"], 3)},
                 reason="value: spiketriton.LIF's median time per step / snnTorch Leaky's (fused C path: "
                        f"{bool((r.get('neuron_cpu_status') or {}).get('in_use'))})")
    return g


def _round(v, n):
    return round(v, n) if isinstance(v, (int, float)) else None


def _event_result(results: Dict[str, dict], kind: str) -> Optional[dict]:
    """event_matmul_cpu.json measured on a CPU, or event_matmul_gpu.json measured on a CUDA GPU (not a smoke test)."""
    if kind == "cuda":
        r = results.get("event_matmul_gpu")
        return r if _on_cuda(r) else None
    r = results.get("event_matmul_cpu")
    dev = (r or {}).get("device") or {}
    return r if r and dev.get("kind") == "cpu" and not dev.get("smoke_cpu") else None


def event_goals(results: Dict[str, dict]) -> List[dict]:
    """Issue 13's goals of the event-driven spike matmul, on the CPU and on a GPU: >= 5x torch.matmul fp32 at
    M = 1, 5 % firing, K = N = 4096 (event_matmul and inference_matmul on packed spikes: the kernel, and what
    SpikeLinear runs in inference; the value is the lower of the two), and above the crossover inference_matmul
    no more than 5 % slower than spike_matmul on the same spike format (the script's ``auto_checks``: rates at or
    above the measured crossover, or where inference_matmul took the dense path; K = N in EVENT_GOAL_SIZES)."""
    out = []
    for kind in ("cpu", "cuda"):
        r = _event_result(results, kind)
        src = f"event_matmul_{'gpu' if kind == 'cuda' else 'cpu'}.json"
        where = "GPU" if kind == "cuda" else "CPU"
        missing = GPU_ONLY if kind == "cuda" else "needs event_matmul_cpu.json (python bench/event_matmul.py --device cpu)"
        g = _goal(f"event_matmul_vs_torch_{kind}", "event_matmul",
                  f"{where}: event-driven spike matmul (event_matmul and inference_matmul, packed spikes) at M = 1, "
                  f"5 % firing, K = N = 4096, fp32 >= {GOAL_EVENT_VS_TORCH:g}x torch.matmul fp32",
                  f">= {GOAL_EVENT_VS_TORCH:g}x", device=kind)
        sel = {c["impl"]: c for c in (r or {}).get("cases", [])
               if all(abs(c.get(k) - v) < 1e-9 if k == "rate" else c.get(k) == v for k, v in GOAL_EVENT_CASE.items())
               and c.get("x_torch") and c.get("ok")}
        main = [i for i in ("event_matmul(packed)", "inference_matmul(packed)") if i in sel]
        if main:
            v = min(sel[i]["x_torch"] for i in main)
            g.update(status=MET if v >= GOAL_EVENT_VS_TORCH and len(main) == 2 else UNMET, value=round(v, 2),
                     source=src, detail={i: round(c["x_torch"], 2) for i, c in sel.items()},
                     reason="value: the lower of event_matmul(packed) and inference_matmul(packed); x torch.matmul"
                            + ("" if len(main) == 2 else f"; only {main[0]} measured"))
        else:
            g["reason"] = missing if r is None else "M = 1, 5 %, K = N = 4096, fp32 was not measured (quick mode?)"
        out.append(g)

        g = _goal(f"event_matmul_auto_no_regression_{kind}", "event_matmul",
                  f"{where}: above the crossover, inference_matmul (the automatic choice) no more than "
                  f"{100 * (GOAL_EVENT_AUTO - 1):g} % slower than spike_matmul (every case measured, K = N = 1024, 4096)",
                  f"<= {GOAL_EVENT_AUTO:g}x", device=kind)
        checks = [c for c in (r or {}).get("auto_checks", []) if c.get("K") in EVENT_GOAL_SIZES]
        if checks:
            worst = sorted(checks, key=lambda c: -c["ratio_vs_spike_matmul"])
            bad = [c for c in checks if c["ratio_vs_spike_matmul"] > GOAL_EVENT_AUTO or not c.get("ok")]
            g.update(status=UNMET if bad else MET, value=round(worst[0]["ratio_vs_spike_matmul"], 3), source=src,
                     detail={f"{c['dtype']} M={c['M']} K={c['K']} {100 * c['rate']:g}% {c['impl']} [{c['path']}]":
                             {"median": round(c["ratio_vs_spike_matmul"], 3),
                              "paired": _round(c.get("ratio_vs_spike_matmul_paired"), 3),
                              "min": _round(c.get("ratio_vs_spike_matmul_min"), 3)} for c in worst[:8]},
                     reason=f"value: the worst of {len(checks)} cases (median / spike_matmul's median); "
                            f"{len(bad)} over {GOAL_EVENT_AUTO:g}x; detail: the worst 8, with the median of the "
                            "per-round ratios (paired) and the ratio of the minima")
        elif r is not None and (r.get("auto_checks") or []):
            g["reason"] = "measured only at other sizes (quick mode?)"
        else:
            g["reason"] = missing if r is None else "no case above the crossover was measured"
        out.append(g)
    return out


def _matmul_goal(results: Dict[str, dict], wdt: str, ref: str, kernel: str = "fwd") -> Dict[float, float]:
    """Per rate at 4096^3: the best speedup of spike_matmul (``kernel`` fwd) or spike_matmul_dw (dw) with ``wdt``
    weights / gradients over torch in ``ref`` (dW: torch's dY.T @ S in the same dtype), from the main GPU run
    (public API / launcher, default tiles) and any sweep run (best correct launcher config vs its own torch)."""
    shape = "4096x4096x4096"
    per: Dict[float, float] = {}
    impl, col = ("spike_matmul", f"x_torch_{ref}") if kernel == "fwd" else ("spike_matmul_dw", "x_torch")
    best_col = f"x_torch_{ref}" if kernel == "fwd" else "x_torch_same_dtype"
    for name, r in results.items():
        if not name.startswith("spike_matmul_gpu") or not _on_cuda(r):
            continue
        for c in r.get("cases", []):
            if (c["pass"], c["impl"], c["dtype"], c["shape"]) == (kernel, impl, wdt, shape) and c.get("ok") \
                    and c.get(col):
                per[c["rate"]] = max(per.get(c["rate"], 0.0), c[col])
        for b in r.get("sweep_best", []):
            if (b["kernel"], b["dtype"], b["shape"]) == (kernel, wdt, shape) and b.get(best_col):
                per[b["rate"]] = max(per.get(b["rate"], 0.0), b[best_col])
    return dict(sorted(per.items()))


def _on_best(on: dict, n: int) -> Dict[str, dict]:
    best: Dict[str, dict] = {}
    for r in on.get("cases", []):
        if r["n"] == n and (r["library"] not in best or r["median_ms"] < best[r["library"]]["median_ms"]):
            best[r["library"]] = r
    return best


# --------------------------------------------------------------------------------------------- #
# Headline tables (markdown)
# --------------------------------------------------------------------------------------------- #


def _f(v, fmt=None):
    """'-' for None; else ``fmt``, or by default 3 significant digits without exponents (1234 -> '1,234')."""
    if v is None:
        return "-"
    if fmt is not None:
        return fmt.format(v)
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.2e}"


def headline(results: Dict[str, dict]) -> List[str]:
    """Markdown sections, one per suite that has results."""
    md: List[str] = []
    r = results.get("ceilings")
    if r:
        copy = (r.get("copy_bandwidth") or {}).get("gbps")
        peaks = (r.get("roofline") or {}).get("peaks_tflops") or {}
        md += [f"**Ceilings** (`ceilings.json`): measured copy bandwidth {_f(copy, '{:.0f}')} GB/s; cuBLAS on random "
               "data against the datasheet peaks the roofline uses", "",
               "| unit | product | TFLOP/s (TOP/s) measured | datasheet peak | measured / peak |", "|---|---|---:|---:|---:|"]
        for k, v in (r.get("cublas_rates") or {}).items():
            pk = peaks.get(k)
            md.append(f"| {k} | {v.get('n', '-')}^3 | {_f(v.get('tflops'))} | {_f(pk)} | "
                      f"{roofline.fmt_fraction(v['tflops'] / pk if pk and v.get('tflops') else None)} |")
        md.append("")
    for key in ("neuron_gpu", "neuron_cpu"):
        r = merged_neuron_gpu(results) if key == "neuron_gpu" else results.get(key)
        if not r:
            continue
        gpu = key == "neuron_gpu"
        copy = (r.get("copy_bandwidth") or {}).get("gbps")
        cfg = r.get("config") or {}
        files = ", ".join(f"`{f}`" for f in r.get("sources", [f"{key}.json"]))
        md += [f"**Neuron fwd+bwd** ({files}, [T, B, N] = {cfg.get('shape_TBN')}, copy bandwidth "
               f"{_f(copy, '{:.1f}')} GB/s" + ("; roofline: the fused kernels' bytes at the copy bandwidth" if gpu
                                               else "") + ")", "",
               "| neuron | dtype | spiketriton ms | GB/s | % copy bw |" + (" bytes | bound ms | % of roofline |" if gpu
                                                                        else "")
               + " SpikingJelly best ms | x SJ | PyTorch path ms | reference ms |",
               "|---|---|---:|---:|---:|" + ("---:|---:|---:|" if gpu else "") + "---:|---:|---:|---:|"]
        rows = [c for c in r.get("cases", []) if c["pass"] == "fwd+bwd"]
        for n, d in dict.fromkeys((c["neuron"], c["dtype"]) for c in rows):
            sel = {c["impl"]: c for c in rows if (c["neuron"], c["dtype"]) == (n, d)}
            st = sel.get("spiketriton") or {}
            sjs = [c["median_ms"] for i, c in sel.items() if i.startswith("spikingjelly")]
            sjb = min(sjs) if sjs else None
            torch_path = (sel.get("spiketriton[torch path]") or {}).get("median_ms")
            roof = (f" {roofline.fmt_bytes(st.get('bytes'))} | {_f(st.get('bound_ms'))} | "
                    f"{roofline.fmt_fraction(st.get('roofline_fraction'))} |") if gpu else ""
            md.append(f"| {n} | {d} | {_f(st.get('median_ms'))} | {_f(st.get('gbps'), '{:.1f}')} | "
                      f"{_f(st.get('pct_copy_bw'), '{:.0f}')} |{roof} {_f(sjb)} | "
                      f"{_f(sjb / st['median_ms'] if sjb and st.get('median_ms') else None, '{:.2f}x')} | "
                      f"{_f(torch_path)} | {_f((sel.get('reference') or {}).get('median_ms'))} |")
        md.append("")
    for key in ("spike_matmul_gpu", "spike_matmul_cpu"):
        r = results.get(key)
        if not r:
            continue
        cases = r.get("cases", [])
        rates = sorted({c["rate"] for c in cases})
        rate = 0.1 if 0.1 in rates else (rates[0] if rates else None)
        gpu = key.endswith("gpu")
        md += [f"**Spike matmul** (`{key}.json`, firing rate {_f(100 * rate if rate is not None else None, '{:g}')} %; "
               "TFLOP/s-equivalent = 2*M*N*K per matmul / time"
               + ("; roofline: bytes (each operand once, spikes packed for spiketriton) at the copy bandwidth or "
                  "flops at the datasheet peak, fp32 weights as three bf16 products" if gpu else "") + ")", "",
               "| dtype | pass | M x K x N | spiketriton | ms | TFLOP/s-eq |"
               + (" bytes | tensor-core flops | bound ms | % of roofline |" if gpu else "")
               + " torch | ms | TFLOP/s-eq |" + (" % of roofline |" if gpu else "") + " x torch |",
               "|---|---|---|---|---:|---:|" + ("---:|---:|---:|---:|" if gpu else "") + "---|---:|---:|"
               + ("---:|" if gpu else "") + "---:|"]
        pairs = {"fwd": ("spike_matmul" if key.endswith("gpu") else "spike_matmul(packed)", "torch.matmul"),
                 "dw": ("spike_matmul_dw", "torch"), "fwd+bwd": ("SpikeLinear", "nn.Linear")}
        for c in cases:
            if c["rate"] != rate or c["pass"] not in pairs or c["impl"] != pairs[c["pass"]][0]:
                continue
            b = [o for o in cases if (o["pass"], o["dtype"], o["shape"], o["rate"], o["impl"])
                 == (c["pass"], c["dtype"], c["shape"], rate, pairs[c["pass"]][1])]
            b = b[0] if b else {}
            roof = (f" {roofline.fmt_bytes(c.get('bytes'))} | {roofline.fmt_flops(c.get('tc_flops'))} | "
                    f"{_f(c.get('bound_ms'))} | {roofline.fmt_fraction(c.get('roofline_fraction'))} |") if gpu else ""
            troof = f" {roofline.fmt_fraction(b.get('roofline_fraction'))} |" if gpu else ""
            md.append(f"| {c['dtype']} | {c['pass']} | {c['shape']} | {c['impl']} | {_f(c['median_ms'])} | "
                      f"{_f(c['tflops_equiv'])} |{roof} {pairs[c['pass']][1]} | {_f(b.get('median_ms'))} | "
                      f"{_f(b.get('tflops_equiv'))} |{troof} "
                      f"{_f(b['median_ms'] / c['median_ms'] if b else None, '{:.2f}x')} |")
        md.append("")
    r = results.get("int_matmul_gpu")
    if r:
        md += ["**Integer spike matmul** (`int_matmul_gpu.json`; % of roofline: bytes at the copy bandwidth or flops "
               "at the int8 / bf16 / fp32 datasheet peak)", "",
               "| M x K x N | rate | spike_matmul_int ms | TOP/s-eq | bytes | bound ms | % of roofline | torch bf16 ms | "
               "% of roofline | torch fp32 ms | torch._int_mm ms | % of roofline |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for shape, rate in dict.fromkeys((c["shape"], c["rate"]) for c in r.get("cases", [])):
            sel = {c["impl"]: c for c in r["cases"] if (c["shape"], c["rate"]) == (shape, rate)}
            si, tb, ti = (sel.get(k, {}) for k in ("spike_matmul_int", "torch.matmul bf16", "torch._int_mm"))
            md.append(f"| {shape} | {100 * rate:g}% | {_f(si.get('median_ms'))} | {_f(si.get('tflops_equiv'))} | "
                      f"{roofline.fmt_bytes(si.get('bytes'))} | {_f(si.get('bound_ms'))} | "
                      f"{roofline.fmt_fraction(si.get('roofline_fraction'))} | {_f(tb.get('median_ms'))} | "
                      f"{roofline.fmt_fraction(tb.get('roofline_fraction'))} | "
                      f"{_f(sel.get('torch.matmul fp32', {}).get('median_ms'))} | {_f(ti.get('median_ms'))} | "
                      f"{roofline.fmt_fraction(ti.get('roofline_fraction'))} |")
        md.append("")
    r = results.get("memory")
    if r:
        cfg = r.get("config") or {}
        md += [f"**Memory** (`memory.json`, LIF -> linear, x [T, B, K] = {cfg.get('shape_TBK')}, N = "
               f"{cfg.get('out_features')}): bytes saved for backward per input neuron-step", "",
               "| dtype | " + " | ".join(dict.fromkeys(s["variant"] for s in r.get("saved_bytes", []))) + " |",
               "|---|" + "---:|" * len(dict.fromkeys(s["variant"] for s in r.get("saved_bytes", [])))]
        for d in dict.fromkeys(s["dtype"] for s in r.get("saved_bytes", [])):
            vals = [s["marginal_B_per_neuron_step"] for s in r["saved_bytes"] if s["dtype"] == d]
            md.append(f"| {d} | " + " | ".join(_f(v, "{:.4g}") for v in vals) + " |")
        cuda = [c for c in (r.get("cuda_peak") or []) if isinstance(c, dict) and "peak_extra_MiB" in c]
        if cuda:
            md += ["", "| dtype | variant | peak CUDA MiB of a training step | B per neuron-step |", "|---|---|---:|---:|"]
            md += [f"| {c['dtype']} | {c['variant']} | {_f(c['peak_extra_MiB'])} | "
                   f"{_f(c['peak_extra_B_per_neuron_step'])} |" for c in cuda]
        md.append("")
    md += event_headline(results)
    r = results.get("open_neuromorphic")
    if r:
        cfg = r.get("config") or {}
        libs = list(dict.fromkeys(c["library"] for c in r.get("cases", [])))
        md += [f"**Open Neuromorphic benchmark** (`open_neuromorphic.json`: Linear(n, n) + LIF, batch {cfg.get('batch')}, "
               f"T = {cfg.get('T')}, {cfg.get('dtype')}, ms per forward + backward, each library's fastest variant)", "",
               "| n | " + " | ".join(libs) + " | spiketriton / 3 GEMMs |"
               + (" spiketriton bytes | flops | bound ms | spiketriton % of roofline | 3 GEMMs % of roofline |"
                  if _on_cuda(r) else ""), "|---:|" + "---:|" * (len(libs) + (6 if _on_cuda(r) else 1))]
        for n in cfg.get("sizes", []):
            best = _on_best(r, n)
            st, gm = best.get("spiketriton"), best.get("torch (3 GEMMs)")
            roof = (f" {roofline.fmt_bytes((st or {}).get('bytes'))} | {roofline.fmt_flops((st or {}).get('flops'))} | "
                    f"{_f((st or {}).get('bound_ms'))} | {roofline.fmt_fraction((st or {}).get('roofline_fraction'))} | "
                    f"{roofline.fmt_fraction((gm or {}).get('roofline_fraction'))} |") if _on_cuda(r) else ""
            md.append(f"| {n} | " + " | ".join(_f(best[lb]["median_ms"]) if lb in best else "-" for lb in libs)
                      + f" | {_f(st['median_ms'] / gm['median_ms'] if st and gm else None, '{:.2f}x')} |{roof}")
        skipped = r.get("skipped") or []
        if skipped:
            md.append("")
            md.append("Not measured: " + "; ".join(f"{s['library']} ({s['reason']})" for s in skipped))
        md.append("")
    return md


EVENT_COLS = ("torch.matmul", "F.linear", "spike_matmul(packed)", "event_matmul(packed)", "event_matmul(dense)",
              "inference_matmul(packed)")


def event_headline(results: Dict[str, dict]) -> List[str]:
    """The event-driven matmul at 5 % firing (every M and K measured) and the measured crossover per (M, K)."""
    md: List[str] = []
    for key in ("event_matmul_gpu", "event_matmul_cpu"):
        r = results.get(key)
        if not r or not r.get("cases"):
            continue
        cases = r["cases"]
        rates = sorted({c["rate"] for c in cases})
        rate = min(rates, key=lambda x: abs(x - 0.05))
        cfg = r.get("config") or {}
        md += [f"**Event-driven spike matmul** (`{key}.json`, {_f(100 * rate, '{:g}')} % firing, medians in ms, "
               f"{cfg.get('torch_num_threads')} torch thread(s) on the CPU; x torch = torch.matmul's time / the "
               "event path's; [path] = what inference_matmul chose)", "",
               "| dtype | M | K = N | " + " | ".join(EVENT_COLS) + " | x torch: event_matmul(packed) | "
               "x torch: inference_matmul(packed) | x torch from the minima: event / inference (packed) |",
               "|---|---:|---:|" + "---:|" * (len(EVENT_COLS) + 3)]
        for dt, M, K in dict.fromkeys((c["dtype"], c["M"], c["K"]) for c in cases):
            sel = {c["impl"]: c for c in cases if (c["dtype"], c["M"], c["K"]) == (dt, M, K) and c["rate"] == rate}
            if not sel:
                continue
            cells = []
            for i in EVENT_COLS:
                c = sel.get(i) or {}
                cells.append(_f(c.get("median_ms")) + (f" [{c['path']}]" if c.get("path") else ""))
            md.append(f"| {dt} | {M} | {K} | " + " | ".join(cells) + " | "
                      f"{_f((sel.get('event_matmul(packed)') or {}).get('x_torch'), '{:.2f}x')} | "
                      f"{_f((sel.get('inference_matmul(packed)') or {}).get('x_torch'), '{:.2f}x')} | "
                      f"{_f((sel.get('event_matmul(packed)') or {}).get('x_torch_min'), '{:.2f}x')} / "
                      f"{_f((sel.get('inference_matmul(packed)') or {}).get('x_torch_min'), '{:.2f}x')} |")
        md += ["", "Measured crossover: the lowest firing rate measured at which the event path is no faster "
               "(medians), and the firing interpolated to equal times; the rule is `choose_event_path`'s.", "",
               "| dtype | M | K = N | event(packed) vs spike_matmul(packed) | interpolated | interpolated from the "
               "minima | event(dense) vs spike_matmul(dense) | event(dense) vs F.linear | rule |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---|"]

        def first(x):
            x = x or {}
            v = x.get("first_rate_not_faster")
            if v is None:
                return "none measured"
            return ("<= " if x.get("interpolated_firing") is None else "") + f"{100 * v:g} %"

        for e in r.get("crossovers", []):
            p = e.get("event_matmul(packed) vs spike_matmul(packed)") or {}
            ip = p.get("interpolated_firing")
            pm = e.get("event_matmul(packed) vs spike_matmul(packed) (min)") or {}
            ipm = pm.get("interpolated_firing")
            ipm_txt = (_f(100 * ipm, "{:.1f} %") if ipm is not None else
                       ("<= " + _f(100 * pm["first_rate_not_faster"], "{:g} %")) if pm.get("first_rate_not_faster")
                       else "none measured" if pm else "-")
            rule = e.get("rule") or {}
            rtxt = f"{100 * rule['firing']:.1f} %" if rule.get("firing") is not None else str(rule.get("rule"))
            md.append(f"| {e['dtype']} | {e['M']} | {e['K']} | {first(p)} | "
                      f"{_f(100 * ip if ip is not None else None, '{:.1f} %')} | {ipm_txt} | "
                      f"{first(e.get('event_matmul(dense) vs spike_matmul(dense)'))} | "
                      f"{first(e.get('event_matmul(dense) vs F.linear'))} | {rtxt} |")
        md.append("")
    return md


# --------------------------------------------------------------------------------------------- #
# Build
# --------------------------------------------------------------------------------------------- #


def build(folder: Path, command: Optional[str] = None, device="cpu") -> Dict[str, object]:
    folder = Path(folder)
    results = load_results(folder)
    suites = load_suites(folder)
    gl = goals(results)
    pngs = []
    to_plot = {n: r for n, r in results.items() if not n.startswith("neuron_gpu")}
    if merged_neuron_gpu(results):  # one neuron.png of every neuron_gpu*.json (each would overwrite the last)
        to_plot["neuron_gpu"] = merged_neuron_gpu(results)
    if "spike_matmul_gpu" in to_plot:  # the main run's plot; tagged runs (sweeps, other shapes) are in the tables
        to_plot = {n: r for n, r in to_plot.items() if n == "spike_matmul_gpu" or not n.startswith("spike_matmul_gpu_")}
    for name, r in to_plot.items():
        try:
            p = plots.plot_result(r, folder)
        except Exception as e:  # noqa: BLE001 - a plot must not lose the report
            print(f"report: plot of {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            p = None
        if p:
            pngs.append(Path(p).name)
    summary = header("summary", "report.py", [str(folder)], device)
    if command:
        summary["command"] = command
    measured = [r["device"] for r in results.values() if isinstance(r.get("device"), dict)]
    if measured:  # the device of the results (a GPU's files may be reported on another machine)
        summary["report_built_on"] = summary["device"]
        summary["device"] = next((d for d in measured if d.get("kind") == "cuda"), measured[0])
    # the devices and dates of the results themselves (a folder can merge several runs)
    summary["results"] = {name: {"benchmark": r.get("benchmark"), "date": r.get("date"),
                                 "device": (r.get("device") or {}).get("name"), "command": r.get("command"),
                                 "versions": versions_line(r.get("versions") or {}),
                                 "threads_why": (r.get("config") or {}).get("threads_why"),
                                 "partial": bool(r.get("partial"))} for name, r in results.items()}
    summary.update(suites=suites, goals=gl, plots=sorted(set(pngs)),
                   measured_with=sorted({s["command"] for s in suites.values() if s.get("command")}))
    write_json(folder / "summary.json", summary)
    write_csv(folder / "summary.csv", [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in g.items()}
                                       for g in gl], stamp(summary))
    md = [f"# Benchmark results: {_main_device(results) or summary['device'].get('name')}", "",
          "Measured with " + (", ".join(f"`{c}`" for c in summary["measured_with"]) or "the commands below")
          + f"; report built {summary['date']} with `{summary['command']}`; {versions_line(summary['versions'])}.", "",
          "| result file | measured on | date | command |", "|---|---|---|---|"]
    md += [f"| {n}.json{' (partial: cut short, what was measured)' if v['partial'] else ''} | {v['device']} | "
           f"{v['date']} | `{v['command']}` |" for n, v in summary["results"].items()]
    why = sorted({v["threads_why"] for v in summary["results"].values() if v.get("threads_why")})
    md += [""] + [f"Threads: {w}." for w in why] if why else []
    md += ["", "## Goals", "", "| goal | target | status | value | note |", "|---|---|---|---|---|"]
    md += [f"| {g['goal']} | {g['target']} | {g['status']} | {_f(g['value'], '{}')} | {g['reason'] or ''} |" for g in gl]
    md += ["", "## Headline numbers", ""] + headline(results)
    if suites:
        md += ["## Suites", "", "| suite | status | seconds | note |", "|---|---|---:|---|"]
        md += [f"| {s} | {v.get('status')} | {_f(v.get('seconds'), '{:.0f}')} | {v.get('reason') or ''} |"
               for s, v in suites.items()]
        md.append("")
    md += session_tables(folder)
    md += ["## Plots", ""] + [f"- `{p}`" for p in sorted(set(pngs))] + [""]
    (folder / "summary.md").write_text("\n".join(md))
    return summary


def session_tables(folder: Path) -> List[str]:
    """The GPU runbook's records, when the folder has them: its stages (``session-gpu.json``) and the CUDA test
    windows (``cuda_tests.json``: the last window per file, and when each rotating slice last ran)."""
    md: List[str] = []
    ses = _load(folder / SESSION_FILE)
    if ses.get("stages"):
        md += [f"## GPU session (`{SESSION_FILE}`: `{ses.get('command', 'bash bench/gpu_session.sh')}`, "
               f"{ses.get('date')}, budget {_f(ses.get('budget_s'), '{:.0f}')} s)", "",
               "| stage | status | seconds | box s | what |", "|---|---|---:|---:|---|"]
        for r in ses["stages"]:
            md.append(f"| {r['stage']} | {r['status']}{(': ' + r['reason']) if r.get('reason') else ''} | "
                      f"{_f(r.get('seconds'), '{:.0f}')} | {_f(r.get('effective_box_s', r.get('box_s')), '{:.0f}')} | "
                      f"{r.get('what', '')} |")
        md.append("")
    tests = _load(folder / TESTS_FILE)
    windows = tests.get("windows") or []
    if windows:
        w = windows[-1]
        counts = {k: sum(c.get(k, 0) for c in (w.get("per_file") or {}).values())
                  for k in ("passed", "failed", "errors", "skipped")}
        md += [f"## CUDA tests (`{TESTS_FILE}`: last window {w.get('date')}, slice {w.get('slice')}, {w.get('status')}; "
               + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")", "",
               "| file | passed | failed | errors | skipped |", "|---|---:|---:|---:|---:|"]
        for f, c in (w.get("per_file") or {}).items():
            md.append(f"| {f}{' (not reached)' if f in (w.get('not_reached') or []) else ''} | {c.get('passed')} | "
                      f"{c.get('failed')} | {c.get('errors')} | {c.get('skipped')} |")
        if w.get("failed"):
            md += ["", "Failed: " + ", ".join(f"`{x}`" for x in w["failed"])]
        last = {}
        for x in windows:
            last[x.get("slice")] = x.get("date")
        md += ["", "Rotating slices (the next window runs the one after the last): "
               + "; ".join(f"{k}: {', '.join(sl)} (last run {last.get(k, 'never')})"
                           for k, sl in enumerate(tests.get("slices") or [])), ""]
    return md


def _load(path: Path) -> dict:
    try:
        v = json.loads(path.read_text())
        return v if isinstance(v, dict) else {}
    except (OSError, ValueError):
        return {}


def _main_device(results: Dict[str, dict]) -> str:
    names = list(dict.fromkeys((r.get("device") or {}).get("name") or (r.get("device") or {}).get("gpu") for r in results.values()))
    return ", ".join(n for n in names if n)


def print_goals(gl: List[dict]) -> None:
    print(f"\n{'goal':38} {'status':13} {'value':>8}  target")
    for g in gl:
        v = g["value"]
        print(f"{g['id']:38} {g['status']:13} {(f'{v:.3g}' if isinstance(v, (int, float)) else '-'):>8}  {g['target']}"
              + (f"  ({g['reason']})" if g["status"] == NOT_MEASURED and g["reason"] else ""))


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python bench/report.py RESULTS_FOLDER", file=sys.stderr)
        return 2
    s = build(Path(args[0]), command="python bench/report.py " + args[0])
    print_goals(s["goals"])
    print(f"wrote {args[0]}/summary.json, summary.csv, summary.md and {len(s['plots'])} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
