"""Plots of the benchmark results (matplotlib, PNG), drawn from the result JSON of each suite.

Every figure carries a footer with the device, the date, the versions and the command that measured
it, and the same text in the PNG's metadata ("Description"). ``plot_result(result, folder)`` draws the
plot of any result dict it knows (by its ``benchmark`` field) and returns the path, or None.

    python bench/plots.py bench/results/cpu        # redraw every plot of a results folder
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import versions_line  # noqa: E402

GOAL_COPY_FRACTION = 0.90  # the neuron goal (issue 11), as in neuron_gpu.py and report.py


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def footer_text(result: Dict) -> str:
    dev = result.get("device") or {}
    name = dev.get("name") or dev.get("gpu") or "?"
    return (f"{name} | {result.get('date')}\n{versions_line(result.get('versions') or {})}\n"
            f"{result.get('command', '')}")


def _save(fig, path: Path, result: Dict, title: str) -> str:
    import textwrap

    fig.suptitle(title, fontsize=10)
    width = int(fig.get_figwidth() * 20)
    text = "\n".join(textwrap.fill(line, width) for line in footer_text(result).splitlines())
    n_lines = text.count("\n") + 1
    fig.text(0.005, 0.005, text, fontsize=6.5, color="0.35", ha="left", va="bottom")
    fig.tight_layout(rect=(0, min(0.3, 0.13 * n_lines / fig.get_figheight()), 1, 0.97))
    fig.savefig(path, dpi=110, metadata={"Title": title, "Description": footer_text(result),
                                         "Software": "spiketriton bench (matplotlib)"})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)


#: one colour per library / implementation family, the same in every panel
COLORS = {"spiketriton": "C0", "spikingjelly": "C1", "SpikingJelly (fastest variant)": "C1", "snntorch": "C2",
          "norse": "C3", "torch (3 GEMMs)": "0.45", "torch (Linear only)": "C5", "spiketriton PyTorch path": "C4",
          "autograd reference": "C7"}


def _bars(ax, groups: List[str], series: Dict[str, List[float]], ylabel: str, log: bool = False) -> None:
    xs = list(range(len(groups)))
    k = max(1, len(series))
    w = 0.8 / k
    for j, (label, vals) in enumerate(series.items()):
        ax.bar([x + (j - (k - 1) / 2) * w for x in xs], vals, w, label=label, color=COLORS.get(label))
    ax.set_xticks(xs, groups)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
        finite = [v for vals in series.values() for v in vals if v == v and v > 0]
        if finite:  # bars on a log axis need a floor well below the smallest bar to compare by eye
            ax.set_ylim(bottom=min(finite) / 4)
    ax.legend(fontsize=7)


# --------------------------------------------------------------------------------------------- #
# Suites
# --------------------------------------------------------------------------------------------- #


def _impl_group(impl: str) -> str:
    if impl.startswith("spikingjelly"):
        return "SpikingJelly (fastest variant)"
    return {"spiketriton": "spiketriton", "spiketriton[torch path]": "spiketriton PyTorch path",
            "reference": "autograd reference"}.get(impl, impl)


def neuron_copy_goal_applies(result: Dict) -> bool:
    """The neuron goal ">= 90 % of copy bandwidth" is set for CUDA GPUs (bench/README.md); a CPU result (or a
    GPU script's --smoke-cpu check) has no such line to draw."""
    dev = result.get("device") or {}
    return dev.get("kind") == "cuda" and not dev.get("smoke_cpu")


def plot_neuron(result: Dict, path: Path) -> Optional[str]:
    """fwd+bwd time and effective GB/s per neuron / dtype and implementation, against copy bandwidth."""
    plt = _plt()
    rows = [r for r in result.get("cases", []) if r.get("pass") == "fwd+bwd"]
    if plt is None or not rows:
        return None
    keys = list(dict.fromkeys((r["neuron"], r["dtype"]) for r in rows))
    impls = list(dict.fromkeys(_impl_group(r["impl"]) for r in rows))

    def best(n, d, impl, field):
        v = [r[field] for r in rows if (r["neuron"], r["dtype"]) == (n, d) and _impl_group(r["impl"]) == impl
             and r.get(field) is not None]
        if not v:
            return float("nan")
        return min(v) if field == "median_ms" else max(v)

    labels = [f"{n} {d}" for n, d in keys]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    _bars(a1, labels, {i: [best(n, d, i, "median_ms") for n, d in keys] for i in impls},
          "forward + backward, ms (lower is better)", log=True)
    a1.set_title("time per fwd+bwd")
    _bars(a2, labels, {i: [best(n, d, i, "gbps") for n, d in keys] for i in impls},
          "effective GB/s = fused-kernel bytes / time")
    copy = (result.get("copy_bandwidth") or {}).get("gbps")
    if copy:
        a2.axhline(copy, color="k", lw=1, label=f"measured copy {copy:.0f} GB/s")
        if neuron_copy_goal_applies(result):  # the 90 %-of-copy goal is a GPU goal; the CPU's is >= SpikingJelly
            a2.axhline(GOAL_COPY_FRACTION * copy, color="k", ls="--", lw=1,
                       label=f"{GOAL_COPY_FRACTION:.0%} of copy (goal)")
        a2.legend(fontsize=7)
    a2.set_title("bandwidth (SpikingJelly etc. counted with spiketriton's bytes)")
    shape = (result.get("config") or {}).get("shape_TBN")
    return _save(fig, path, result, f"Neuron forward+backward, [T, B, N] = {shape}")


def _rate_panel(ax, sel: List[dict], key, label, dashed, title: str, ylabel: str) -> None:
    """One line per ``key(row)`` of ``tflops_equiv`` against the firing rate (log y)."""
    for k in dict.fromkeys(key(r) for r in sel):
        pts = sorted((r["rate"], r["tflops_equiv"]) for r in sel if key(r) == k)
        ax.plot([100 * a for a, _ in pts], [b for _, b in pts], "--" if dashed(k) else "-", marker="o", ms=3,
                label=label(k))
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("firing rate %")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)


_MATMUL_KEEP = {
    "fwd": ("torch.matmul", "spike_matmul", "spike_matmul(packed)", "spike_matmul_fwd[skip_zero]"),
    "dw": ("torch", "spike_matmul_dw"),
    "fwd+bwd": ("nn.Linear", "SpikeLinear"),
}


def plot_spike_matmul(result: Dict, path: Path) -> Optional[str]:
    """TFLOP/s-equivalent (2*M*N*K per matmul / time) against the firing rate, one panel per pass and
    shape, a line per implementation and dtype."""
    plt = _plt()
    rows = result.get("cases", [])
    if plt is None or not rows:
        return None
    passes = [p for p in ("fwd", "dw", "fwd+bwd") if any(r["pass"] == p for r in rows)]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(len(passes), len(shapes), figsize=(max(9.0, 4.6 * len(shapes)), 3.6 * len(passes)),
                             squeeze=False)
    for i, p in enumerate(passes):
        for j, shape in enumerate(shapes):
            sel = [r for r in rows if r["pass"] == p and r["shape"] == shape and r["impl"] in _MATMUL_KEEP[p]]
            _rate_panel(axes[i][j], sel, lambda r: (r["impl"], r["dtype"]), lambda k: f"{k[0]} {k[1]}",
                        lambda k: k[0] in ("torch.matmul", "torch", "nn.Linear"), f"{p} {shape}", "TFLOP/s-equivalent")
    return _save(fig, path, result, "Spike matmul vs torch.matmul (dense-equivalent TFLOP/s; higher is better)")


def plot_int_matmul(result: Dict, path: Path) -> Optional[str]:
    plt = _plt()
    rows = result.get("cases", [])
    if plt is None or not rows:
        return None
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(max(9.0, 4.6 * len(shapes)), 4.2), squeeze=False)
    for j, shape in enumerate(shapes):
        _rate_panel(axes[0][j], [r for r in rows if r["shape"] == shape], lambda r: r["impl"], str,
                    lambda k: "spike" not in k, shape, "TOP/s-equivalent")
    return _save(fig, path, result, "Integer spike matmul (int8 W, packed spikes, int32) vs torch")


def plot_memory(result: Dict, path: Path) -> Optional[str]:
    """Bytes saved for backward per input neuron-step (and the CUDA peak of a training step)."""
    plt = _plt()
    rows = [r for r in result.get("saved_bytes", []) if "marginal_B_per_neuron_step" in r]
    if plt is None or not rows:
        return None
    cuda = [r for r in (result.get("cuda_peak") or []) if isinstance(r, dict) and "peak_extra_B_per_neuron_step" in r]
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, 2 if cuda else 1, figsize=(13 if cuda else 8, 4.8), squeeze=False)
    a1 = axes[0][0]

    def get(rs, v, d, field):
        x = [r[field] for r in rs if r["variant"] == v and r["dtype"] == d]
        return x[0] if x else float("nan")

    _bars(a1, dtypes, {v: [get(rows, v, d, "marginal_B_per_neuron_step") for d in dtypes] for v in variants},
          "bytes saved for backward per input neuron-step")
    for d, goal in (result.get("goals_B_per_neuron_step") or {}).items():
        if d in dtypes:
            x = dtypes.index(d)
            a1.hlines(goal, x - 0.45, x + 0.45, colors="k", linestyles="--", lw=1)
    a1.set_title("saved for backward (dashed: goal)")
    if cuda:
        _bars(axes[0][1], dtypes, {v: [get(cuda, v, d, "peak_extra_B_per_neuron_step") for d in dtypes] for v in variants},
              "peak CUDA memory of a training step, B per input neuron-step")
        axes[0][1].set_title("peak CUDA memory (fwd + autograd.grad)")
    cfg = result.get("config") or {}
    return _save(fig, path, result, f"Memory of LIF -> linear, x [T, B, K] = {cfg.get('shape_TBK')}, "
                                    f"N = {cfg.get('out_features')}")


def plot_open_neuromorphic(result: Dict, path: Path) -> Optional[str]:
    """Time per forward+backward of Linear(n, n) + LIF against n, per library (its fastest variant)."""
    plt = _plt()
    rows = [r for r in result.get("cases", []) if r.get("median_ms") is not None]
    if plt is None or not rows:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    libs = list(dict.fromkeys(r["library"] for r in rows))
    best: Dict = {}
    for r in rows:
        k = (r["library"], r["n"])
        if k not in best or r["median_ms"] < best[k]["median_ms"]:
            best[k] = r
    for lib in libs:
        pts = sorted((n, b["median_ms"]) for (lb, n), b in best.items() if lb == lib)
        style = "--" if lib.startswith("torch") else "-"
        a1.plot([n for n, _ in pts], [t for _, t in pts], style, marker="o", label=lib, color=COLORS.get(lib))
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    a1.set_xlabel("n (Linear(n, n) + LIF)")
    a1.set_ylabel("ms per forward + backward (lower is better)")
    a1.legend(fontsize=7)
    a1.set_title("time per training step")
    ref_lib = "spiketriton"
    ns = sorted({n for (_, n) in best})
    libs2 = [lb for lb in libs if lb != ref_lib]
    _bars(a2, [str(n) for n in ns],
          {lb: [(best[(lb, n)]["median_ms"] / best[(ref_lib, n)]["median_ms"])
                if (lb, n) in best and (ref_lib, n) in best else float("nan") for n in ns] for lb in libs2},
          "time / spiketriton's time (> 1: spiketriton faster)", log=True)
    a2.axhline(1.0, color="k", lw=1)
    a2.set_xlabel("n")
    a2.set_title("relative to spiketriton")
    cfg = result.get("config") or {}
    return _save(fig, path, result, f"Open Neuromorphic benchmark: Linear(n, n) + LIF, batch {cfg.get('batch')}, "
                                    f"T = {cfg.get('T')}, forward + backward")


#: the event-driven matmul's lines: (impl, line style); one colour per M
_EVENT_LINES = (("event_matmul(packed)", "-"), ("inference_matmul(packed)", ":"), ("spike_matmul(packed)", "--"))


def plot_event_matmul(result: Dict, path: Path) -> Optional[str]:
    """Speedup over torch.matmul against the firing rate, one panel per K = N (and dtype), a colour per M: the
    event path (solid), the automatic choice (dotted) and the dense spike_matmul (dashed); on the CPU the rule's
    crossover for each M as a vertical line, and the goal point (M = 1, 5 %, 4096, >= 5x)."""
    plt = _plt()
    rows = [r for r in result.get("cases", []) if r.get("x_torch")]
    if plt is None or not rows:
        return None
    panels = list(dict.fromkeys((r["dtype"], r["K"]) for r in rows))
    Ms = sorted({r["M"] for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(max(10.0, 5.8 * len(panels)), 4.8), squeeze=False)
    rule = {x["M"]: (x.get("rule") or {}).get("firing") for x in result.get("crossovers", [])}
    for j, (dt, K) in enumerate(panels):
        ax = axes[0][j]
        for i, M in enumerate(Ms):
            for impl, style in _EVENT_LINES:
                pts = sorted((r["rate"], r["x_torch"]) for r in rows
                             if (r["dtype"], r["K"], r["M"], r["impl"]) == (dt, K, M, impl))
                if pts:
                    ax.plot([100 * a for a, _ in pts], [b for _, b in pts], style, marker="o", ms=3, color=f"C{i}",
                            label=f"M={M} {impl}")
            if rule.get(M):
                ax.axvline(100 * rule[M], color=f"C{i}", lw=0.8, ls="-.", alpha=0.6)
        ax.axhline(1.0, color="k", lw=1)
        if K == 4096 and dt == "fp32":
            ax.plot([5], [5.0], marker="*", ms=12, color="k", ls="none", label="goal: M=1, 5 %: >= 5x")
        ax.set_yscale("log")
        ax.set_xlabel("firing rate %" + (" (dash-dot: the CPU rule's crossover per M)" if any(rule.values()) else ""))
        ax.set_ylabel("x torch.matmul (torch's time / this; > 1 faster)")
        ax.set_title(f"{dt}, K = N = {K}", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, path, result, "Event-driven spike matmul, M rows: speedup over torch.matmul (solid event_matmul, "
                                    "dotted inference_matmul = the automatic choice, dashed spike_matmul)")


#: benchmark name (the result JSON's "benchmark") -> (plot function, PNG name)
def _plot_from(module: str):
    """The ``plot(result, path)`` of a suite script that draws its own figure (imported when used:
    those scripts import torch and spiketriton)."""
    def run(result: Dict, path: Path):
        import importlib

        return importlib.import_module(module).plot(result, path)

    return run


PLOTTERS = {
    "neuron_cpu": (plot_neuron, "neuron.png"),
    "neuron_gpu": (plot_neuron, "neuron.png"),
    "spike_matmul_cpu": (plot_spike_matmul, "spike_matmul.png"),
    "spike_matmul_gpu": (plot_spike_matmul, "spike_matmul.png"),
    "int_matmul_gpu": (plot_int_matmul, "int_matmul.png"),
    "memory": (plot_memory, "memory.png"),
    "open_neuromorphic": (plot_open_neuromorphic, "open_neuromorphic.png"),
    "event_matmul_cpu": (plot_event_matmul, "event_matmul.png"),
    "event_matmul_gpu": (plot_event_matmul, "event_matmul.png"),
    "stdp_cpu": (_plot_from("stdp"), "stdp_cpu.png"),
    "stdp_gpu": (_plot_from("stdp"), "stdp_gpu.png"),
    "conv_snn": (_plot_from("conv_snn"), "conv_snn.png"),
    "step_cpu": (_plot_from("step_cpu"), "step_cpu.png"),
}


def plot_result(result: Dict, folder: Path) -> Optional[str]:
    entry = PLOTTERS.get(result.get("benchmark", ""))
    if entry is None:
        return None
    fn, name = entry
    return fn(result, Path(folder) / name)


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python bench/plots.py RESULTS_FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    for f in sorted(folder.glob("*.json")):
        try:
            result = json.loads(f.read_text())
        except ValueError:
            continue
        p = plot_result(result, folder) if isinstance(result, dict) else None
        if p:
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
