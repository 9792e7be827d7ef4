"""What ONE time step of a spiking neuron costs on the CPU (issue 13: the single-step path must be cheap): the
deployment / streaming case (a batch of 1, one step per call, no_grad) and snnTorch-style training loops (BPTT
through T single steps), spiketriton against snnTorch, SpikingJelly and Norse.

    python bench/step_cpu.py --device cpu           # the full run, one torch thread (under a minute on 2 cores)
    python bench/step_cpu.py --device cpu --quick   # CPU-sized check of the script (CI), seconds
    python bench/step_cpu.py --shapes 1x1024 --rounds 100 --threads 2

Shapes ``[B, N]`` (``--shapes``): 1x1024 (deployment: batch 1), 16x200 (a small snnTorch tutorial layer) and
128x1024. Input ``x ~ N(1, 1)`` fp32 (about 25 % firing for LIF tau=2), 16 fixed draws cycled one per step.

**Inference** (``torch.no_grad()``, the state carried from step to step as in streaming):

  spiketriton.<Neuron>              ``st.LIF`` / ``st.IF`` / ``st.PLIF`` / ``st.ExtendedLIF`` with ``step_mode="s"``,
                                    ``backend="torch"``: on the CPU a float32 step is one compiled C call
                                    (``spiketriton.kernels.neuron_cpu``, the fused CPU neuron)
  spiketriton.<Neuron>[torch ops]   the same inside ``neuron_cpu.disabled()``: the neuron as 8-15 torch ops a step
  snntorch.Leaky                    ``snn.Leaky(beta=0.5)``, ``spk, mem = leaky(x, mem)``
  spikingjelly.LIFNode / IFNode     ``neuron.LIFNode(tau=2., step_mode='s')`` / ``neuron.IFNode(step_mode='s')``
                                    (SpikingJelly 2.0 runs its torch code on the CPU)
  norse.LIFCell                     ``norse.torch.LIFCell()``, ``z, s = cell(x, s)`` (skipped, with the reason
                                    recorded, where norse does not import)

**Training**: BPTT through T = ``--train-T`` (16) single steps of LIF: reset, ``s_t = neuron(x_t)`` for t < T,
``loss = sum_t (s_t * w_t).sum()`` with fixed random ``w`` (N(0, 1)), ``torch.autograd.grad(loss, [x_t])``;
time per step = the whole loop / T. Impls: spiketriton.LIF with and without the fused path, snntorch.Leaky,
spikingjelly.LIFNode (its default Sigmoid(alpha=4) surrogate, spiketriton's default too).

Timing (``time.perf_counter``): a timed call runs ``--steps`` consecutive inference steps (or one training loop),
so the timer's own cost and the ``no_grad`` / ``disabled()`` context enter are spread over many steps; per shape
and mode ``--warmup`` untimed calls per impl, then ``--rounds`` rounds in which every impl runs once, in a new
random order each round (a change in machine load hits the compared impls alike). Reported per step, in
microseconds: the median and the minimum over the rounds (on a loaded machine a call is either undisturbed or
descheduled: the minimum is the undisturbed cost), and the IQR. ``x_snntorch`` = snnTorch Leaky's median / the
impl's (> 1: faster than snnTorch), ``x_spikingjelly`` likewise against LIFNode.

Checks before timing (not timed), recorded under ``checks``: every spiketriton neuron's spikes and final
potential with the fused path equal the torch ops' over 16 steps (bit for bit: the fused C code rounds as the
torch ops do), and the fused path was taken (``neuron_cpu.neuron_forward`` observed: calls per step); LIF's
spikes equal SpikingJelly's LIFNode (tau 2, v_reset 0, threshold 1, decay_input True) over the same steps; in
the training loop the input gradients of the fused and torch-ops paths and of SpikingJelly agree to rounding.
The fused library is built (one warm-up call) before anything is timed; ``neuron_cpu.status()`` is recorded.

One torch thread unless ``--threads N`` (0: torch's default), recorded with the reason (``_common.set_threads``).
Writes ``step_cpu.json`` / ``step_cpu.csv`` and ``step_cpu.png`` under ``bench/results/cpu`` (``cpu-quick`` with
``--quick``; or ``--out``), after every shape (``"partial": true`` until the end, so a SIGINT keeps what was
measured). Goal (bench/report.py): one LIF step at [16, 200] fp32 under no_grad no slower than snnTorch's Leaky.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR, header, interleaved_rounds, loadavg, save_result, threads_for, short_error,
    time_stats,
)
from _neuron_cases import SG_ALPHA, TAU, V_RESET, V_THRESHOLD, make_inputs  # noqa: E402

ST_NEURONS = ("LIF", "IF", "PLIF", "ExtendedLIF")
TORCH_OPS = "[torch ops]"
PEER_INFER = ("snntorch.Leaky", "spikingjelly.LIFNode", "spikingjelly.IFNode", "norse.LIFCell")
TRAIN_IMPLS = ("spiketriton.LIF", "spiketriton.LIF" + TORCH_OPS, "snntorch.Leaky", "spikingjelly.LIFNode")
SNN_BASE, SJ_BASE = "snntorch.Leaky", "spikingjelly.LIFNode"
#: the report's goal case: one LIF step at [16, 200] fp32 under no_grad vs snnTorch's Leaky
GOAL_SHAPE = (16, 200)
CHECK_STEPS = 16
N_DRAWS = 16
DEFAULTS = dict(shapes="1x1024,16x200,128x1024", steps=50, rounds=30, warmup=3, train_T=16, train_rounds=15)
QUICK = dict(shapes="1x64,4x40", steps=5, rounds=3, warmup=1, train_T=4, train_rounds=2)


# --------------------------------------------------------------------------------------------- #
# Steppers: reset() and step(x) -> spikes, one per impl
# --------------------------------------------------------------------------------------------- #


def _spiketriton(neuron: str):
    import spiketriton as st

    cls = getattr(st, neuron)
    kw = dict(tau=TAU) if neuron == "LIF" else dict(init_tau=TAU) if neuron == "PLIF" else {}
    m = cls(step_mode="s", backend="torch", **kw)
    return m.reset, m, m


def _snntorch_leaky():
    import snntorch as snn

    leaky = snn.Leaky(beta=0.5)
    state = {}

    def reset():
        state["mem"] = leaky.init_leaky()

    def step(x):
        spk, state["mem"] = leaky(x, state["mem"])
        return spk

    reset()
    return reset, step, leaky


def _spikingjelly(node: str):
    from spikingjelly.activation_based import neuron as sjn
    from spikingjelly.activation_based import surrogate as sjs

    common = dict(v_threshold=V_THRESHOLD, v_reset=V_RESET, surrogate_function=sjs.Sigmoid(alpha=SG_ALPHA),
                  detach_reset=False, step_mode="s")
    m = sjn.LIFNode(tau=TAU, decay_input=True, **common) if node == "LIFNode" else sjn.IFNode(**common)
    return m.reset, m, m


def _norse_cell():
    import norse.torch as nt

    cell = nt.LIFCell()
    state = {}

    def reset():
        state["s"] = None

    def step(x):
        z, state["s"] = cell(x, state["s"])
        return z

    reset()
    return reset, step, cell


def make_stepper(impl: str) -> Tuple[Callable[[], None], Callable, object]:
    """``(reset, step, module)`` of an impl name (the ``[torch ops]`` suffix is the caller's context)."""
    lib, _, name = impl.replace(TORCH_OPS, "").partition(".")
    if lib == "spiketriton":
        return _spiketriton(name)
    if impl == "snntorch.Leaky":
        return _snntorch_leaky()
    if lib == "spikingjelly":
        return _spikingjelly(name)
    if impl == "norse.LIFCell":
        return _norse_cell()
    raise ValueError(f"step_cpu.py: unknown impl {impl!r}")


def _context(impl: str):
    """``neuron_cpu.disabled()`` for a ``[torch ops]`` impl, else a no-op context."""
    if impl.endswith(TORCH_OPS):
        from spiketriton.kernels import neuron_cpu

        return neuron_cpu.disabled()
    return contextlib.nullcontext()


def available_impls(fused: bool) -> Tuple[List[str], List[str], List[dict]]:
    """The inference and training impls that can run here, and the skipped ones with their reason."""
    skipped: List[dict] = []
    infer = []
    for n in ST_NEURONS:
        if fused:
            infer.append(f"spiketriton.{n}")
        infer.append(f"spiketriton.{n}{TORCH_OPS}")
    if not fused:
        from spiketriton.kernels import neuron_cpu

        skipped.append({"impl": "spiketriton.* (fused C path)", "reason": "the fused CPU neuron is not in use: "
                        + neuron_cpu.status()[1]})
    for impl in PEER_INFER:
        try:
            make_stepper(impl)
            infer.append(impl)
        except Exception as e:  # noqa: BLE001 - an absent or broken peer is recorded, not fatal
            skipped.append({"impl": impl, "reason": short_error(e)})
    train = [i for i in TRAIN_IMPLS if i in infer]
    return infer, train, skipped


# --------------------------------------------------------------------------------------------- #
# Cases
# --------------------------------------------------------------------------------------------- #


def make_draws(B: int, N: int, seed: int = 0) -> List[torch.Tensor]:
    x, _ = make_inputs((N_DRAWS, B, N), torch.float32, seed=seed)
    return list(x.unbind(0))


def infer_case(impl: str, xs: List[torch.Tensor], steps: int) -> dict:
    """A zero-argument ``fn`` that runs ``steps`` consecutive no_grad steps (state carried across calls)."""
    reset, step, _ = make_stepper(impl)
    n = len(xs)
    pos = [0]

    def fn():
        j = pos[0]
        with torch.no_grad(), _context(impl):
            for _ in range(steps):
                step(xs[j])
                j = j + 1 if j + 1 < n else 0
        pos[0] = j

    return {"impl": impl, "fn": fn, "steps_per_call": steps}


def train_loop(impl: str, T: int, B: int, N: int, seed: int = 3):
    """``(fn, xs)``: ``fn()`` resets the neuron, runs T single steps and returns the input gradients of
    ``sum_t (s_t * w_t).sum()``; ``xs`` the T input leaves."""
    reset, step, _ = make_stepper(impl)
    x, w = make_inputs((T, B, N), torch.float32, seed=seed)
    xs = [t.clone().requires_grad_() for t in x.unbind(0)]
    ws = list(w.unbind(0))

    def fn():
        with _context(impl):
            reset()
            loss = None
            for t in range(T):
                term = (step(xs[t]) * ws[t]).sum()
                loss = term if loss is None else loss + term
            return torch.autograd.grad(loss, xs)

    return fn, xs


# --------------------------------------------------------------------------------------------- #
# Checks (not timed)
# --------------------------------------------------------------------------------------------- #


def _run_steps(impl: str, xs: List[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """Spikes ``[steps, B, N]``, the final potential (spiketriton / SpikingJelly) and the fused forward calls
    observed (``neuron_cpu.neuron_forward`` wrapped for the run)."""
    from spiketriton.kernels import neuron_cpu

    reset, step, module = make_stepper(impl)
    real = neuron_cpu.neuron_forward
    calls = [0]

    def spy(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    neuron_cpu.neuron_forward = spy
    try:
        with torch.no_grad(), _context(impl):
            reset()
            out = torch.stack([step(x).clone() for x in xs])
    finally:
        neuron_cpu.neuron_forward = real
    v = getattr(module, "v", None)
    return out, (v.clone() if isinstance(v, torch.Tensor) else None), calls[0]


def check_shape(B: int, N: int, infer: List[str], train: List[str], T: int) -> Dict[str, object]:
    """The agreement of one shape (see the module docstring): per spiketriton neuron fused vs torch ops, LIF vs
    SpikingJelly's LIFNode, and the training loop's input gradients."""
    xs = make_draws(B, N, seed=7)[:CHECK_STEPS]
    out: Dict[str, object] = {"shape": f"{B}x{N}", "steps": len(xs)}
    fused_vs_ops = {}
    for n in ST_NEURONS:
        a, b = f"spiketriton.{n}", f"spiketriton.{n}{TORCH_OPS}"
        if a not in infer:
            continue
        sa, va, ca = _run_steps(a, xs)
        sb, vb, cb = _run_steps(b, xs)
        fused_vs_ops[n] = {"spike_mismatches": int((sa != sb).sum()), "firing_rate": round(float(sa.mean()), 4),
                           "v_max_abs_diff": float((va - vb).abs().max()),
                           "fused_calls_per_step": ca / len(xs), "torch_ops_fused_calls": cb,
                           "ok": bool(torch.equal(sa, sb) and torch.equal(va, vb) and ca == len(xs) and cb == 0)}
    out["fused_vs_torch_ops"] = fused_vs_ops
    if SJ_BASE in infer:
        ref = "spiketriton.LIF" if "spiketriton.LIF" in infer else "spiketriton.LIF" + TORCH_OPS
        s1, v1, _ = _run_steps(ref, xs)
        s2, v2, _ = _run_steps(SJ_BASE, xs)
        out["lif_vs_spikingjelly"] = {"impl": ref, "spike_mismatches": int((s1 != s2).sum()),
                                      "firing_rate": round(float(s1.mean()), 4),
                                      "v_max_abs_diff": float((v1 - v2).abs().max()),
                                      "ok": bool(torch.equal(s1, s2))}
    grads = {}
    for impl in train:
        if impl.startswith("snntorch"):
            continue  # another neuron (beta 0.5 without input scaling, ATan surrogate): nothing to compare
        fn, _ = train_loop(impl, T, B, N)
        grads[impl] = torch.stack(fn())
    base = "spiketriton.LIF" + TORCH_OPS
    if base in grads:
        scale = max(1e-30, float(grads[base].abs().max()))
        out["train_grad_x"] = {other: {"max_abs_diff": float((g - grads[base]).abs().max()), "max_abs": scale,
                                       "ok": bool(torch.allclose(g, grads[base], rtol=1e-5, atol=1e-6 * scale))}
                               for other, g in grads.items() if other != base}
        out["train_grad_x_vs"] = base
    out["ok"] = all(v["ok"] for v in fused_vs_ops.values()) and out.get("lif_vs_spikingjelly", {}).get("ok", True) \
        and all(v["ok"] for v in out.get("train_grad_x", {}).values())
    return out


# --------------------------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------------------------- #


def parse_shapes(text: str) -> List[Tuple[int, int]]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            b, n = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise SystemExit(f"step_cpu.py: --shapes takes BxN[,BxN...] (e.g. 1x1024,16x200), got {part!r}") from None
        if b < 1 or n < 1:
            raise SystemExit(f"step_cpu.py: --shapes needs positive sizes, got {part!r}")
        out.append((b, n))
    if not out:
        raise SystemExit("step_cpu.py: --shapes is empty")
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu",), help="the CPU (the benchmark of the CPU path)")
    ap.add_argument("--shapes", default=None, help=f"[B, N] as BxN, comma list (default {DEFAULTS['shapes']})")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"inference steps per timed call (default {DEFAULTS['steps']})")
    ap.add_argument("--rounds", type=int, default=None, help=f"timed inference rounds (default {DEFAULTS['rounds']})")
    ap.add_argument("--warmup", type=int, default=None, help=f"untimed calls per impl first (default {DEFAULTS['warmup']})")
    ap.add_argument("--train-T", type=int, default=None, help=f"BPTT steps of the training loop (default {DEFAULTS['train_T']})")
    ap.add_argument("--train-rounds", type=int, default=None,
                    help=f"timed training loops per impl (default {DEFAULTS['train_rounds']})")
    ap.add_argument("--no-train", action="store_true", help="inference only")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default 1, see the docstring; 0: torch's default)")
    ap.add_argument("--quick", action="store_true", help=f"CPU-sized check of the script (CI): {QUICK}")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/cpu, or cpu-quick with --quick)")
    args = ap.parse_args(argv)
    preset = dict(DEFAULTS, **(QUICK if args.quick else {}))
    for k, v in preset.items():
        if getattr(args, k) is None:  # explicit options win over the preset
            setattr(args, k, v)
    for k in ("steps", "rounds", "train_T", "train_rounds"):
        if getattr(args, k) < 1:
            raise SystemExit(f"step_cpu.py: --{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.warmup < 0:
        raise SystemExit(f"step_cpu.py: --warmup must be >= 0, got {args.warmup}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    shapes = parse_shapes(args.shapes)
    with threads_for(args.threads, "cpu") as threads:
        return _run(args, shapes, threads, argv)


def _run(args, shapes, threads, argv) -> int:
    from spiketriton.kernels import neuron_cpu

    # build (or load) the compiled library and make one fused call before anything is timed
    import spiketriton as st

    with torch.no_grad():
        st.LIF(step_mode="s", backend="torch")(torch.ones(1, 8))
    fused, why = neuron_cpu.status()
    infer, train, skipped = available_impls(fused)
    if args.no_train:
        train = []
    out = Path(args.out) if args.out else RESULTS_DIR / ("cpu-quick" if args.quick else "cpu")
    stem = "step_cpu"
    load_before = loadavg()
    result = header(stem, "step_cpu.py", argv, "cpu")
    result["device"].update(load_average_before=load_before)
    result.update(
        config=dict(shapes_BN=[list(s) for s in shapes], dtype="fp32", input="x ~ N(1, 1), 16 draws cycled",
                    steps_per_call=args.steps, rounds=args.rounds, warmup=args.warmup, train_T=args.train_T,
                    train_rounds=args.train_rounds, quick=bool(args.quick), infer_impls=infer, train_impls=train,
                    neurons={"spiketriton": "st.<Neuron>(step_mode='s', backend='torch') defaults (LIF tau=2, "
                                            "PLIF init_tau=2); [torch ops]: inside neuron_cpu.disabled()",
                             "snntorch": "snn.Leaky(beta=0.5): spk, mem = leaky(x, mem)",
                             "spikingjelly": f"neuron.LIFNode(tau={TAU}, decay_input=True) / IFNode, v_threshold "
                                             f"{V_THRESHOLD}, v_reset {V_RESET}, Sigmoid(alpha={SG_ALPHA}), step_mode='s'",
                             "norse": "norse.torch.LIFCell() defaults: z, s = cell(x, s)"},
                    train="reset; s_t = neuron(x_t), t < T; loss = sum_t (s_t * w_t).sum(), w ~ N(0, 1) fixed; "
                          "torch.autograd.grad(loss, [x_t]); per step = loop / T",
                    timer="time.perf_counter around one call (steps_per_call inference steps, or one training "
                          "loop); per shape and mode warmup untimed calls per impl, then rounds interleaved in a "
                          "new random order each round; median, min, IQR per step in us",
                    torch_num_threads=threads["torch_num_threads"], threads_why=threads["threads_why"]),
        neuron_cpu_status={"in_use": fused, "why": why}, skipped=skipped, partial=True)
    print(f"step_cpu: shapes {[f'{b}x{n}' for b, n in shapes]}, torch threads {threads['torch_num_threads']} "
          f"({threads['threads_why']}); fused CPU neuron: {fused} ({why}); load average {load_before}", flush=True)
    for s in skipped:
        print(f"  skipped {s['impl']}: {s['reason']}", flush=True)

    rows: List[dict] = []
    checks: List[dict] = []
    rng = random.Random(0)
    try:
        for B, N in shapes:
            chk = check_shape(B, N, infer, train, args.train_T)
            checks.append(chk)
            print(f"\n[{B}, {N}] checks: {'ok' if chk['ok'] else 'MISMATCH'} " + _check_line(chk), flush=True)
            xs = make_draws(B, N)
            group = [infer_case(i, xs, args.steps) for i in infer]
            interleaved_rounds([group], args.warmup, args.rounds, rng=rng)
            rows += _rows(group, "infer", B, N, args.steps)
            if train:
                tgroup = []
                for impl in train:
                    fn, _ = train_loop(impl, args.train_T, B, N)
                    tgroup.append({"impl": impl, "fn": fn})
                interleaved_rounds([tgroup], args.warmup, args.train_rounds, rng=rng)
                rows += _rows(tgroup, "train", B, N, args.train_T)
            _ratios(rows)
            _print_shape(rows, B, N)
            result.update(cases=rows, checks=checks)
            result["device"]["load_average_after"] = loadavg()
            save_result(out, stem, result, {stem: rows})  # after every shape: a time box keeps what was measured
            del group
            gc.collect()
    except KeyboardInterrupt:
        result.update(cases=rows, checks=checks, interrupted=True)
        save_result(out, stem, result, {stem: rows})
        raise
    result["partial"] = False
    result["device"]["load_average_after"] = loadavg()
    save_result(out, stem, result, {stem: rows})
    print(f"\nload average before {load_before}, after {result['device']['load_average_after']} (a shared 2-core "
          "machine is noisy: the min column is the undisturbed cost)")
    if not args.no_plot:
        p = plot(result, out / f"{stem}.png")
        if p:
            print(f"wrote {p}")
    bad = [c["shape"] for c in checks if not c["ok"]]
    if bad:
        print(f"WARNING: the checks failed at {', '.join(bad)} (see checks in {stem}.json)", file=sys.stderr)
    return 1 if bad else 0


def _rows(group: List[dict], mode: str, B: int, N: int, per: int) -> List[dict]:
    out = []
    for c in group:
        t = time_stats(c.pop("times"))
        lib, _, name = c["impl"].partition(".")
        out.append({"mode": mode, "impl": c["impl"], "library": lib, "neuron": name.replace(TORCH_OPS, ""),
                    "path": ("torch ops" if c["impl"].endswith(TORCH_OPS) else "fused C") if lib == "spiketriton" else None,
                    "B": B, "N": N, "shape": f"{B}x{N}", "steps_per_call": per,
                    "us_per_step_median": t["median_ms"] * 1e3 / per, "us_per_step_min": t["min_ms"] * 1e3 / per,
                    "us_per_step_iqr": t["iqr_ms"] * 1e3 / per, "rounds": t["repeats"]})
    return out


def _ratios(rows: List[dict]) -> None:
    """``x_snntorch`` / ``x_spikingjelly``: the peer's median / the impl's (and from the minima), same mode and shape."""
    for r in rows:
        for col, base in (("x_snntorch", SNN_BASE), ("x_spikingjelly", SJ_BASE)):
            b = next((o for o in rows if (o["mode"], o["shape"], o["impl"]) == (r["mode"], r["shape"], base)), None)
            r[col] = b["us_per_step_median"] / r["us_per_step_median"] if b else None
            r[col + "_min"] = b["us_per_step_min"] / r["us_per_step_min"] if b else None


def _check_line(chk: dict) -> str:
    parts = ["fused = torch ops: " + ", ".join(f"{n} {v['spike_mismatches']} spikes differ, "
                                                  f"{v['fused_calls_per_step']:g} C call/step"
                                                  for n, v in chk["fused_vs_torch_ops"].items())]
    sj = chk.get("lif_vs_spikingjelly")
    if sj:
        parts.append(f"LIF vs SpikingJelly LIFNode: {sj['spike_mismatches']} spikes differ (firing {sj['firing_rate']:.2f})")
    for k, v in (chk.get("train_grad_x") or {}).items():
        parts.append(f"train grad x {k}: max |diff| {v['max_abs_diff']:.2g}")
    return "; ".join(parts)


def _print_shape(rows: List[dict], B: int, N: int) -> None:
    print(f"{'mode':5} {'impl':34} {'us/step median':>14} {'min':>8} {'x snnTorch':>10} {'x SJ':>6}")
    for r in rows:
        if (r["B"], r["N"]) != (B, N):
            continue
        xs = f"{r['x_snntorch']:10.2f}" if r["x_snntorch"] else f"{'-':>10}"
        xj = f"{r['x_spikingjelly']:6.2f}" if r["x_spikingjelly"] else f"{'-':>6}"
        print(f"{r['mode']:5} {r['impl']:34} {r['us_per_step_median']:14.2f} {r['us_per_step_min']:8.2f} {xs} {xj}")


def plot(result: Dict, path: Path):
    """Microseconds per step (log scale, median; the minimum as a tick) per shape, one panel per mode."""
    from plots import _plt, _save

    plt = _plt()
    rows = [r for r in result.get("cases", []) if r.get("us_per_step_median")]
    if plt is None or not rows:
        return None
    modes = [m for m in ("infer", "train") if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(max(11.0, 8.5 * len(modes)), 5.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        sel = [r for r in rows if r["mode"] == mode]
        shapes = list(dict.fromkeys(r["shape"] for r in sel))
        impls = list(dict.fromkeys(r["impl"] for r in sel))
        width = 0.85 / max(1, len(impls))
        for j, impl in enumerate(impls):
            xs = [i + (j - (len(impls) - 1) / 2) * width for i in range(len(shapes))]
            med = [next((r["us_per_step_median"] for r in sel if r["impl"] == impl and r["shape"] == s), 0.0)
                   for s in shapes]
            mins = [next((r["us_per_step_min"] for r in sel if r["impl"] == impl and r["shape"] == s), 0.0)
                    for s in shapes]
            ax.bar(xs, med, width, label=impl, color=_color(impl, j), hatch="//" if impl.endswith(TORCH_OPS) else None,
                   edgecolor="white", linewidth=0.3)
            ax.plot(xs, mins, "_", color="k", ms=5)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels([f"[B, N] = [{s.replace('x', ', ')}]" for s in shapes])
        ax.set_yscale("log")
        ax.set_ylabel("us per time step (median; tick: min)")
        ax.set_title("inference, no_grad, state carried" if mode == "infer" else
                     f"training: BPTT through T = {sel[0]['steps_per_call']} single steps, fwd + bwd / T", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
    threads = (result.get("config") or {}).get("torch_num_threads")
    return _save(fig, path, result, f"One time step on the CPU (fp32, {threads} torch thread(s)): spiketriton "
                                    "step_mode='s' (fused C / hatched: torch ops) vs snnTorch, SpikingJelly, Norse")


_LIB_COLORS = {"snntorch.Leaky": "C2", "spikingjelly.LIFNode": "C1", "spikingjelly.IFNode": "#f5b971",
               "norse.LIFCell": "C3"}
_ST_COLORS = {"LIF": "C0", "IF": "#6fa8dc", "PLIF": "C4", "ExtendedLIF": "C9"}


def _color(impl: str, j: int) -> str:
    if impl.startswith("spiketriton."):
        return _ST_COLORS.get(impl.split(".", 1)[1].replace(TORCH_OPS, ""), f"C{j % 10}")
    return _LIB_COLORS.get(impl, f"C{j % 10}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("step_cpu.py: interrupted; the files hold the shapes measured so far", file=sys.stderr)
        sys.exit(130)
