"""A conv SNN training step (issue 14): a small Spiking VGG on 32x32 images, spiketriton against SpikingJelly 2.0 -
bytes saved for backward per neuron-step, time per training step, and (with CUDA) the peak memory of a step.

    python bench/conv_snn.py                          # --device auto: CUDA when there, else the CPU (1 thread)
    python bench/conv_snn.py --device cpu --quick     # CPU-sized check of the script (CI), seconds
    python bench/conv_snn.py --device cpu --T 4 --batch 8 --width 32 --size 32

The network (``--width`` w, default 32; input ``[T, B, 3, size, size]``, real values repeated each step, as a
direct encoding)::

    conv3x3(3 -> w)  BN  LIF | conv3x3(w -> w)   BN  LIF | maxpool 2
    conv3x3(w -> 2w) BN  LIF | conv3x3(2w -> 2w) BN  LIF | maxpool 2 | flatten | linear(2w (size/4)^2 -> 10)

with SpikingJelly's defaults for the neurons on both sides (LIF ``tau=2``, ``decay_input=True``,
``v_threshold=1``, ``v_reset=0``, ``Sigmoid(alpha=4)``), BatchNorm in training mode (statistics over T x B,
SpikingJelly's multi-step BN), the same weights for every variant:

- ``spikingjelly``              ``layer.Conv2d`` / ``layer.BatchNorm2d`` / ``neuron.LIFNode`` / ``layer.MaxPool2d`` /
                                ``layer.Flatten`` / ``layer.Linear``, all ``step_mode='m'`` (SpikingJelly 2.0's LIFNode
                                runs its PyTorch code);
- ``spiketriton``               the same net written with ``StepWise(nn.Conv2d, nn.BatchNorm2d)``, ``st.LIF`` and
                                ``StepWise(nn.MaxPool2d)``: float spikes between the layers (what a user has before
                                ``convert``);
- ``spiketriton convert``       that net after ``spiketriton.convert``: SpikeConv2d (saves the packed spikes, 1 bit),
                                SpikeMaxPool2d (an OR of packed bytes), the neurons hand over SpikeImages (no float
                                spike tensor is made between a neuron and a convolution or pooling), SpikeLinear.

**Bytes saved for backward per neuron-step**: one forward under ``torch.autograd.graph.saved_tensors_hooks``
(bench/_matmul_cases.saved_bytes_excluding: every tensor the graph keeps, deduplicated by storage, numel *
element_size; the input, the parameters and the buffers excluded), divided by the number of neuron-steps (T *
B * the neurons of the 4 LIF layers). This is the network's whole activation memory for backward per
neuron-step (convolution and BN inputs included), not only the neurons'.

**Time per step**: forward + ``autograd.grad`` over every parameter (what an optimizer step needs) with a fixed
upstream gradient, neurons reset before each call. CPU: ``time.perf_counter``, the variants
interleaved round by round, median / min / IQR, one torch thread (``--threads``). CUDA: ``triton.testing.do_bench``.

**Peak CUDA memory** (CUDA only): ``torch.cuda.max_memory_allocated`` during one step minus what was allocated
before (inputs, parameters, upstream gradient), per neuron-step.

**Agreement**: each variant's output and first-conv weight gradient against SpikingJelly's on the same input and
weights (max |difference|; the spikes of the last LIF layer compared one by one).

Writes ``conv_snn.json`` / ``conv_snn.csv`` and ``conv_snn.png`` (device, date, versions in the footer) under
``bench/results/<device>`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR, bench_ms, device_slug, header, interleaved_rounds, loadavg, restore_threads, save_result, set_threads,
    short_error, time_stats,
)
from _matmul_cases import saved_bytes_excluding  # noqa: E402

VARIANTS = ("spikingjelly", "spiketriton", "spiketriton convert")
QUICK = dict(T=2, batch=2, width=8, size=16, repeats=2, warmup=1)
TAU, V_THRESHOLD, V_RESET, SG_ALPHA = 2.0, 1.0, 0.0, 4.0


def _blocks(width: int, size: int):
    """(kind, args) of the network, shared by the builders so that both libraries get the same layers."""
    w = width
    return [("conv", (3, w)), ("bn", w), ("lif", None), ("conv", (w, w)), ("bn", w), ("lif", None), ("pool", 2),
            ("conv", (w, 2 * w)), ("bn", 2 * w), ("lif", None), ("conv", (2 * w, 2 * w)), ("bn", 2 * w),
            ("lif", None), ("pool", 2), ("flatten", None), ("linear", (2 * w * (size // 4) ** 2, 10))]


def build(variant: str, width: int, size: int, device, seed: int = 0) -> nn.Module:
    """The network for ``variant``; every variant gets the weights of the same seed."""
    torch.manual_seed(seed)
    ref = [nn.Conv2d(*a, 3, padding=1) if k == "conv" else nn.Linear(*a) if k == "linear" else None
           for k, a in _blocks(width, size)]
    mods: List[nn.Module] = []
    if variant == "spikingjelly":
        from spikingjelly.activation_based import layer, neuron
        from spikingjelly.activation_based import surrogate as sjs

        for (k, a), r in zip(_blocks(width, size), ref):
            if k == "conv":
                m = layer.Conv2d(*a, 3, padding=1, step_mode="m")
            elif k == "bn":
                m = layer.BatchNorm2d(a, step_mode="m")
            elif k == "lif":
                m = neuron.LIFNode(tau=TAU, decay_input=True, v_threshold=V_THRESHOLD, v_reset=V_RESET,
                                   surrogate_function=sjs.Sigmoid(alpha=SG_ALPHA), detach_reset=False, step_mode="m")
            elif k == "pool":
                m = layer.MaxPool2d(a, step_mode="m")
            elif k == "flatten":
                m = layer.Flatten(step_mode="m")
            else:
                m = layer.Linear(*a, step_mode="m")
            if r is not None:
                m.load_state_dict(r.state_dict())
            mods.append(m)
        net = nn.Sequential(*mods)
    elif variant.startswith("spiketriton"):
        import spiketriton as st

        group: List[nn.Module] = []
        for (k, a), r in zip(_blocks(width, size), ref):
            if k == "lif":
                if group:
                    mods.append(st.StepWise(*group))
                    group = []
                mods.append(st.LIF(tau=TAU, decay_input=True, v_threshold=V_THRESHOLD, v_reset=V_RESET,
                                   surrogate=st.surrogate.Sigmoid(SG_ALPHA), detach_reset=False))
            elif k == "linear":
                if group:
                    mods.append(st.StepWise(*group))
                    group = []
                mods.append(r)
            else:
                group.append(r if r is not None else nn.BatchNorm2d(a) if k == "bn" else nn.MaxPool2d(a) if k == "pool"
                             else nn.Flatten())
        net = nn.Sequential(*mods)
        if variant == "spiketriton convert":
            st.convert(net)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    return net.to(device).train()


def _reset(net: nn.Module, variant: str) -> None:
    if variant == "spikingjelly":
        from spikingjelly.activation_based import functional

        functional.reset_net(net)
    else:
        import spiketriton as st

        st.reset(net)


def neuron_steps(T: int, B: int, width: int, size: int) -> int:
    """T * B * the neurons of the four LIF layers."""
    return T * B * (2 * width * size * size + 2 * (2 * width) * (size // 2) ** 2)


def step_fn(net, variant, x, g):
    params = [p for p in net.parameters() if p.requires_grad]

    def fn():
        _reset(net, variant)
        y = net(x)
        torch.autograd.grad(y, params, g)

    return fn


def measure_saved(net, variant, x, n_steps) -> Dict[str, object]:
    _reset(net, variant)
    state = list(net.parameters()) + list(net.buffers())
    info = saved_bytes_excluding(lambda: net(x), [x] + state)
    del info["out"]
    _reset(net, variant)
    info["bytes_per_neuron_step"] = info["bytes"] / n_steps
    return info


def measure_cuda_peak(net, variant, x, g, n_steps) -> Dict[str, float]:
    """Peak memory of one training step above what is allocated before it (inputs, parameters, dY)."""
    dev = x.device
    fn = step_fn(net, variant, x, g)
    fn()  # warm-up (allocator, Triton compilation)
    gc.collect()
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    return {"cuda_peak_MiB": peak / 2**20, "cuda_peak_B_per_neuron_step": peak / n_steps}


def agreement(nets: Dict[str, nn.Module], x, g) -> Dict[str, dict]:
    """Output, last-LIF spikes and first-conv weight gradient of each variant against SpikingJelly's."""
    res = {}
    for v, net in nets.items():
        spikes = {}
        lifs = [m for m in net.modules() if type(m).__name__ in ("LIF", "LIFNode")]
        h = lifs[-1].register_forward_hook(lambda m, i, o: spikes.__setitem__("s", o))
        _reset(net, v)
        y = net(x)
        first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        (gw,) = torch.autograd.grad(y, [first.weight], g)
        h.remove()
        s = spikes["s"]
        res[v] = (y.detach(), (s.to_dense() if hasattr(s, "to_dense") else s).detach(), gw)
        _reset(net, v)
    base = res.get("spikingjelly")
    out = {}
    for v, (y, s, gw) in res.items():
        if v == "spikingjelly" or base is None:
            continue
        out[v] = {"output_max_abs_diff": float((y - base[0]).abs().max()),
                  "last_lif_spikes_differing": int((s != base[1]).sum()), "last_lif_spikes": s.numel(),
                  "conv1_weight_grad_max_abs_diff": float((gw - base[2]).abs().max()),
                  "conv1_weight_grad_max_abs": float(base[2].abs().max())}
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--T", type=int, default=4, help="time steps (default 4)")
    ap.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    ap.add_argument("--width", type=int, default=32, help="channels of the first block (default 32; then 2x)")
    ap.add_argument("--size", type=int, default=32, help="input height = width (default 32; a multiple of 4)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=None, help="CPU torch threads (default 1; 0: torch's default)")
    ap.add_argument("--repeats", type=int, default=5, help="CPU: timed rounds (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="CPU: untimed calls per variant first (default 1)")
    ap.add_argument("--rep-ms", type=int, default=200, help="CUDA: do_bench repetition time")
    ap.add_argument("--quick", action="store_true", help=f"CPU-sized check of the script: {QUICK}")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if args.size % 4 or args.size < 4:
        ap.error(f"--size must be a multiple of 4 (two 2x2 poolings), got {args.size}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"conv_snn.py: unknown variant {v!r}; expected some of {VARIANTS}")
    skipped = []
    try:
        import spikingjelly  # noqa: F401
    except ImportError:
        skipped.append({"variant": "spikingjelly", "reason": "spikingjelly is not installed"})
        variants = [v for v in variants if v != "spikingjelly"]
    threads = set_threads(args.threads, device)
    T, B, W, S = args.T, args.batch, args.width, args.size
    n_steps = neuron_steps(T, B, W, S)
    out = Path(args.out) if args.out else RESULTS_DIR / (device_slug(device) + ("-quick" if args.quick else ""))
    stem = "conv_snn"
    result = header(stem, "conv_snn.py", argv, device)
    result["config"] = dict(T=T, batch=B, width=W, size=S, neuron_steps=n_steps, variants=variants,
                            network=f"[conv3x3 BN LIF] x2 ({W} ch), maxpool2, [conv3x3 BN LIF] x2 ({2 * W} ch), maxpool2, "
                                    f"flatten, linear -> 10; input [T, B, 3, {S}, {S}] ~ U(0, 1) * 2",
                            neuron=f"LIF tau={TAU}, decay_input=True, v_threshold={V_THRESHOLD}, v_reset={V_RESET}, "
                                   f"Sigmoid(alpha={SG_ALPHA}), detach_reset=False",
                            measure="saved_tensors_hooks pack hook, dedup by storage, numel*element_size; input, "
                                    "parameters and buffers excluded; / neuron-steps of the 4 LIF layers",
                            step="forward + autograd.grad over every parameter (fixed upstream gradient), neurons reset",
                            load_average_before=loadavg(), **threads)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(T, B, 3, S, S, generator=gen) * 2).to(device)
    g = torch.randn(T, B, 10, generator=gen).to(device)
    rows: List[Dict] = []
    nets: Dict[str, nn.Module] = {}
    try:
        group = []
        for v in variants:
            try:
                net = build(v, W, S, device)
                info = measure_saved(net, v, x, n_steps)
            except Exception as e:  # noqa: BLE001 - one variant failing must not lose the others
                rows.append({"variant": v, "error": short_error(e)})
                print(f"  {v}: FAILED ({short_error(e)})", flush=True)
                continue
            nets[v] = net
            row = {"variant": v, "T": T, "B": B, "width": W, "size": S, "neuron_steps": n_steps,
                   "saved_bytes": info["bytes"], "saved_B_per_neuron_step": info["bytes_per_neuron_step"],
                   "n_tensors": info["n_tensors"], "tensors": json.dumps(info["tensors"])}
            if device.type == "cuda":
                row.update(measure_cuda_peak(net, v, x, g, n_steps))
            rows.append(row)
            group.append({"variant": v, "fn": step_fn(net, v, x, g), "row": row})
        if device.type == "cuda":
            for c in group:
                c["row"].update(bench_ms(c["fn"], 25, args.rep_ms, device))
        else:
            interleaved_rounds([group], args.warmup, args.repeats, rng=random.Random(0))
            for c in group:
                c["row"].update(time_stats(c.pop("times")))
        agree = agreement(nets, x, g) if "spikingjelly" in nets else {}
    finally:
        restore_threads(threads)
    result["config"]["load_average_after"] = loadavg()
    sj = next((r for r in rows if r["variant"] == "spikingjelly" and "median_ms" in r), None)
    for r in rows:
        if sj is not None and "median_ms" in r:
            r["time_x_spikingjelly"] = r["median_ms"] / sj["median_ms"]
            r["saved_x_spikingjelly"] = r["saved_bytes"] / sj["saved_bytes"]
    print(f"\nSpiking VGG (width {W}), input [T, B, 3, {S}, {S}] = [{T}, {B}, 3, {S}, {S}], {n_steps:,d} neuron-steps, "
          + (f"{threads['torch_num_threads']} torch thread(s)" if device.type == "cpu" else "CUDA"))
    print(f"{'variant':22} {'B/neuron-step':>13} {'ms/step':>9} {'x SJ time':>9} {'x SJ bytes':>10}  kept tensors")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:22} FAILED: {r['error']}")
            continue
        print(f"{r['variant']:22} {r['saved_B_per_neuron_step']:13.3f} {r.get('median_ms', float('nan')):9.2f} "
              f"{r.get('time_x_spikingjelly', float('nan')):9.2f} {r.get('saved_x_spikingjelly', float('nan')):10.3f}"
              f"  {r['n_tensors']}")
    if agree:
        print("agreement with SpikingJelly:", json.dumps(agree))
    result.update(rows=rows, agreement_vs_spikingjelly=agree, skipped=skipped + (
        [] if device.type == "cuda" else [{"part": "cuda_peak", "reason": "CUDA is not available"}]))
    save_result(out, stem, result, {stem: [{k: v for k, v in r.items() if k != "tensors"} for r in rows]})
    if not args.no_plot:
        p = plot(result, out / f"{stem}.png")
        if p:
            print(f"wrote {p}")
    return 0 if all("error" not in r for r in rows) else 1


#: one colour per variant (spikingjelly as in plots.COLORS)
COLORS = {"spikingjelly": "C1", "spiketriton": "C4", "spiketriton convert": "C0"}


def plot(result: Dict, path: Path):
    from plots import _plt, _save

    plt = _plt()
    rows = [r for r in result.get("rows", []) if "saved_B_per_neuron_step" in r]
    if plt is None or not rows:
        return None
    cuda = [r for r in rows if "cuda_peak_B_per_neuron_step" in r]
    fig, axes = plt.subplots(1, 3 if cuda else 2, figsize=(14 if cuda else 10, 4.6), squeeze=False)
    panels = [("saved_B_per_neuron_step", "bytes per neuron-step", "saved for backward"),
              ("median_ms", "ms per training step (median)", "time per step (fwd + grad)")]
    if cuda:
        panels.append(("cuda_peak_B_per_neuron_step", "peak CUDA bytes per neuron-step", "peak CUDA memory of a step"))
    for ax, (field, label, title) in zip(axes[0], panels):
        vals = [r.get(field, float("nan")) for r in rows]
        ax.bar(range(len(rows)), vals, 0.7, color=[COLORS.get(r["variant"]) for r in rows])
        for j, v in enumerate(vals):
            if v == v:
                ax.text(j, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["variant"].replace(" ", "\n") for r in rows], fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(top=max(v for v in vals if v == v) * 1.15 if any(v == v for v in vals) else None)
    cfg = result["config"]
    threads = f", {cfg.get('torch_num_threads')} torch thread(s)" if (result.get("device") or {}).get("kind") != "cuda" \
        else ""
    return _save(fig, path, result, f"Spiking VGG training step: input [{cfg['T']}, {cfg['batch']}, 3, {cfg['size']}, "
                                    f"{cfg['size']}], width {cfg['width']}{threads}")


if __name__ == "__main__":
    sys.exit(main())
