"""STDP update (issue 15): time per update of ``spiketriton.learning.STDPLearner`` against SpikingJelly's
``STDPLearner`` on the same synapse, spikes and rule, on the CPU (one torch thread) or a CUDA GPU.

    python bench/stdp.py                         # --device auto: CUDA when there, else the CPU (1 thread)
    python bench/stdp.py --device cpu --quick    # CPU-sized check of the script (CI), seconds
    python bench/stdp.py --device cpu --sizes 256,1024,4096 --batch 32 --T 1
    python bench/stdp.py --device cuda --sizes 1024,4096,8192 --T 1,8
    TRITON_INTERPRET=1 python bench/stdp.py --smoke-cpu  # the CUDA code path (Triton impl) in the interpreter

One *update* is what a training loop pays per learning step beyond the forward pass: the learner's hooks
record the synapse's input and the neuron's output (the synapse and neuron here are stand-ins that return
prepared spikes, so no matmul or neuron is timed), then ``step()`` advances the traces over the T recorded
time steps and applies ``W += lr * dW`` with soft bounds (``f_post(W) = w_max - W``, ``f_pre(W) = W - w_min``),
summed over the batch. Cases: N = K in ``--sizes`` (default 256, 1024, 4096), batch ``--batch`` (32), T in
``--T`` (1: a single-step update; 8: a multi-step record), pre and post firing ``--rate`` (10 %).

Implementations:

  spiketriton(torch)    STDPLearner(backend="torch"): the hooks pack the spikes (8 per byte); step() unpacks
                        inside the update and runs two BLAS matmuls over the T*B rows
  spiketriton(triton)   STDPLearner(backend="triton") (CUDA only): one kernel reads the packed bits, advances
                        the traces in registers and applies the update in place
  spikingjelly          spikingjelly.activation_based.learning.STDPLearner with the same f_pre / f_post,
                        ``dw = step(on_grad=False); W += lr * dw`` (its stdp_linear_step broadcasts
                        [B, N, K] products and sums them)

Before timing, the dW of every impl on the first draw is compared with the float64 reference
(reference/stdp.py): max |error| relative to max |dW|, ``ok`` within 1e-5. CPU: ``time.perf_counter``, the
impls of a case interleaved round by round, median / min / IQR, one torch thread (``--threads``); CUDA:
``triton.testing.do_bench``. Writes ``stdp_cpu.json`` / ``.csv`` and ``stdp_cpu.png`` (or ``stdp_gpu.*``)
with the device, date and versions.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import types
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR, bench_ms, device_slug, header, int_list, interleaved_rounds, restore_threads, save_result,
    set_threads, short_error, time_stats,
)

IMPLS = ("spiketriton(torch)", "spiketriton(triton)", "spikingjelly")
W_MIN, W_MAX, LR, TAU = 0.0, 1.0, 1e-3, 20.0
QUICK = dict(sizes="64,128", batch=8, T="1,4", repeats=3, warmup=1)
SMOKE = dict(sizes="40", batch=3, T="1,3", repeats=1, warmup=0)


class _Free(nn.Linear):
    """A synapse stand-in: its weight learns, its forward returns a prepared tensor (no matmul timed)."""

    def forward(self, x):
        return self.out


class _Replay(nn.Module):
    """A neuron stand-in that fires the prepared post spikes."""

    def __init__(self, post, step_mode):
        super().__init__()
        self.post, self.step_mode = post, step_mode

    def forward(self, x):
        return self.post


def spikingjelly_learner_class():
    """SpikingJelly's STDPLearner. Its learning package imports its monitor, which imports tensorboard;
    without tensorboard installed a stand-in module serves that import only."""
    name = "torch.utils.tensorboard"
    try:
        import torch.utils.tensorboard  # noqa: F401
        stub = False
    except ImportError:
        sys.modules[name] = types.SimpleNamespace(SummaryWriter=None)
        stub = True
    try:
        from spikingjelly.activation_based.learning.plasticity import STDPLearner
    finally:
        if stub:
            sys.modules.pop(name, None)
    return STDPLearner


def make_case(impl: str, N: int, K: int, B: int, T: int, rate: float, device, seed: int = 0) -> Dict:
    from spiketriton.learning import STDPLearner

    g = torch.Generator().manual_seed(seed)
    pre = (torch.rand(T, B, K, generator=g) < rate).float().to(device)
    post = (torch.rand(T, B, N, generator=g) < rate).float().to(device)
    w0 = torch.rand(N, K, generator=g).to(device)
    mode = "m" if T > 1 else "s"
    x, y = (pre, post) if T > 1 else (pre[0], post[0])
    syn = _Free(K, N, bias=False, device=device)
    syn.out = y
    with torch.no_grad():
        syn.weight.copy_(w0)
    neuron = _Replay(y, mode)
    if impl == "spikingjelly":
        sjl = spikingjelly_learner_class()(mode, syn, neuron, tau_pre=TAU, tau_post=TAU,
                                           f_pre=lambda w: w - W_MIN, f_post=lambda w: W_MAX - w)

        def update():
            with torch.no_grad():
                neuron(syn(x))
                dw = sjl.step(on_grad=False)
                syn.weight.add_(LR * dw)
        learner = sjl
    else:
        backend = "triton" if impl.endswith("(triton)") else "torch"
        lrn = STDPLearner(syn, neuron, tau_pre=TAU, tau_post=TAU, bounds="soft", w_min=W_MIN, w_max=W_MAX,
                          check_binary=False, backend=backend)

        def update():
            with torch.no_grad():
                neuron(syn(x))
            lrn.step(LR)
        learner = lrn
    return dict(impl=impl, fn=update, syn=syn, w0=w0, pre=pre, post=post, learner=learner)


def check(case: Dict) -> Dict:
    """One update from w0 with zero traces, against float64: dW = (W - w0) / lr."""
    from spiketriton.reference.stdp import stdp_products_reference

    case["fn"]()
    dw = (case["syn"].weight.detach().double() - case["w0"].double()) / LR
    pre, post = case["pre"].cpu(), case["post"].cpu()
    B, K, N = pre.shape[1], pre.shape[2], post.shape[2]
    P, D, _, _ = stdp_products_reference(pre, post, torch.zeros(B, K), torch.zeros(B, N), TAU, TAU)
    w = case["w0"].cpu().double()
    want = (W_MAX - w) * P - (w - W_MIN) * D
    scale = max(1.0, float(want.abs().max()))
    # dW recovered from an fp32 weight step: its rounding (|w| <= 1, ulp 6e-8) / lr, relative to max |dW|
    err = float((dw.cpu() - want).abs().max()) / scale
    tol = 1e-5 + 2 * 6e-8 / LR / scale
    return dict(rel_err=err, tol=tol, ok=err <= tol)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--sizes", default="256,1024,4096", help="N = K (default 256,1024,4096)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", default="1,8", help="time steps per update (default 1,8)")
    ap.add_argument("--rate", type=float, default=0.1, help="firing probability of pre and post spikes (0.1)")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--threads", type=int, default=None, help="CPU torch threads (default 1; 0: torch's default)")
    ap.add_argument("--repeats", type=int, default=5, help="CPU: timed rounds per case (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="CPU: untimed calls per impl first (default 1)")
    ap.add_argument("--rep-ms", type=int, default=100, help="CUDA: do_bench repetition time")
    ap.add_argument("--quick", action="store_true", help=f"CPU-sized check of the script: {QUICK}")
    ap.add_argument("--smoke-cpu", action="store_true",
                    help=f"with TRITON_INTERPRET=1: every impl incl. the Triton kernel on the CPU at {SMOKE} (checks "
                         f"the GPU code path without a GPU; times mean nothing); writes to results/cpu-quick/")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick or args.smoke_cpu:
        for k, v in (SMOKE if args.smoke_cpu else QUICK).items():
            setattr(args, k, v)
    if args.smoke_cpu:
        from spiketriton.kernels import interpret_mode

        if not interpret_mode():
            raise SystemExit("stdp.py --smoke-cpu: set TRITON_INTERPRET=1 before starting (the kernel runs interpreted)")
        args.device = "cpu"
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    impls = [i for i in args.impls.split(",") if i]
    if device.type != "cuda" and not args.smoke_cpu:
        impls = [i for i in impls if i != "spiketriton(triton)"]  # the kernel needs CUDA (tests run it interpreted)
    threads = set_threads(args.threads, device)
    kind = "gpu" if device.type == "cuda" else "cpu"
    stem = f"stdp_{kind}" + ("_quick" if args.quick else "_smoke" if args.smoke_cpu else "")
    folder = device_slug(device) + ("-quick" if args.quick or args.smoke_cpu else "")  # (-quick: git-ignored)
    out = Path(args.out) if args.out else RESULTS_DIR / folder
    result = header(stem, "stdp.py", argv, device)
    result["config"] = dict(sizes=args.sizes, batch=args.batch, T=args.T, rate=args.rate, lr=LR, tau=TAU,
                            rule="soft bounds: f_post = 1 - W, f_pre = W (w in [0, 1])", impls=impls, **threads)
    rows: List[Dict] = []
    try:
        for size in int_list(args.sizes):
            for T in int_list(args.T):
                group = []
                for impl in impls:
                    try:
                        c = make_case(impl, size, size, args.batch, T, args.rate, device)
                        c.update(check(c))
                        c["learner"].reset()
                        group.append(c)
                    except Exception as e:  # noqa: BLE001 - one impl failing must not lose the others
                        rows.append(dict(impl=impl, N=size, K=size, B=args.batch, T=T, error=short_error(e)))
                        print(f"  {impl} N=K={size} T={T}: FAILED ({short_error(e)})", flush=True)
                if device.type == "cuda" or args.smoke_cpu:
                    for c in group:
                        c.update(bench_ms(c["fn"], 25, args.rep_ms, device))
                else:
                    interleaved_rounds([group], args.warmup, args.repeats, rng=random.Random(0))
                    for c in group:
                        c.update(time_stats(c.pop("times")))
                for c in group:
                    r = {k: v for k, v in c.items() if k in ("impl", "median_ms", "min_ms", "iqr_ms", "p20_ms",
                                                              "p80_ms", "repeats", "rel_err", "tol", "ok")}
                    r.update(N=size, K=size, B=args.batch, T=T)
                    rows.append(r)
                    print(f"  N=K={size} B={args.batch} T={T} {c['impl']:20s} {r.get('median_ms', float('nan')):10.3f} ms"
                          f"  (rel err {r['rel_err']:.1e}, ok={r['ok']})", flush=True)
                sj = next((r for r in rows if r.get("impl") == "spikingjelly" and r["N"] == size and r["T"] == T
                           and r.get("median_ms")), None)
                for r in rows:
                    if r["N"] == size and r["T"] == T and sj and r.get("median_ms"):
                        r["x_spikingjelly"] = sj["median_ms"] / r["median_ms"]
                del group
                gc.collect()
                result["cases"] = rows
                result["partial"] = True
                save_result(out, stem, result, {stem: rows})
    finally:
        restore_threads(threads)
    result["partial"] = False
    save_result(out, stem, result, {stem: rows})
    if not args.no_plot:
        plot(result, out / f"{stem}.png")
    return 0


def plot(result: Dict, path: Path):
    from plots import _plt, _save

    plt = _plt()
    if plt is None:
        print("matplotlib missing: no plot")
        return None
    rows = [r for r in result["cases"] if r.get("median_ms")]
    Ts = sorted({r["T"] for r in rows})
    fig, axes = plt.subplots(1, len(Ts), figsize=(5 * len(Ts), 4), squeeze=False)
    colors = {"spiketriton(torch)": "C4", "spiketriton(triton)": "C0", "spikingjelly": "C1"}
    for ax, T in zip(axes[0], Ts):
        sizes = sorted({r["N"] for r in rows if r["T"] == T})
        impls = [i for i in IMPLS if any(r["impl"] == i and r["T"] == T for r in rows)]
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            ys = [next((r["median_ms"] for r in rows if r["impl"] == impl and r["T"] == T and r["N"] == s), 0.0)
                  for s in sizes]
            xs = [i + (j - (len(impls) - 1) / 2) * width for i in range(len(sizes))]
            ax.bar(xs, ys, width, label=impl, color=colors.get(impl))
            for x, y in zip(xs, ys):
                if y:
                    ax.text(x, y, f"{y:.3g}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels([f"{s}x{s}" for s in sizes])
        ax.set_yscale("log")
        ax.set_ylabel("ms per update (median)")
        ax.set_title(f"T = {T} step(s) per update, batch {rows[0]['B']}", fontsize=9)
        ax.legend(fontsize=7)
    threads = result["config"].get("torch_num_threads")
    return _save(fig, path, result, f"STDP update (record + step, soft bounds), {threads} torch thread(s)")


if __name__ == "__main__":
    sys.exit(main())
