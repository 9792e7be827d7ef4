"""ANN-to-SNN conversion on scikit-learn's digits (8x8 images, no download).

    OMP_NUM_THREADS=1 PYTHONPATH=. python examples/ann2snn_digits.py   # table + bench/results/cpu/ann2snn_digits.{json,png}
    python examples/ann2snn_digits.py --out /tmp/x --no-plot

A small CNN (Conv-BN-ReLU-AvgPool x2, Linear-ReLU-Dropout, Linear) is trained for a few seconds, then
converted with spiketriton.ann2snn.convert_ann (IF neurons, soft reset, v_init = threshold / 2) with
thresholds balanced on the training images by the maximum activation and by the 99.9th percentile.
The SNN reads the image as a constant current for T steps and predicts the argmax of its mean output.
A third row fine-tunes a QCFS copy of the ANN (levels = 8) and converts it (its ANN accuracy is shown
apart). The split (stratified, 20 % test) and the seed follow spiketriton.demo.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import spiketriton as st
from spiketriton.ann2snn import activation_scales, convert_ann, relu_to_qcfs
from spiketriton.demo import load_data, threads_for
from spiketriton._files import write_atomic

T_LIST = (8, 16, 32, 64)
MODES = (("max", "max"), ("percentile", "percentile"))
QCFS_LEVELS = 8


def build_ann() -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2)),   # 16x4x4
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2)),  # 32x2x2
        nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))


def train(model, x, y, epochs, lr, seed):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def ann_accuracy(model, x, y) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


@torch.no_grad()
def snn_accuracy(snn, x, y, T) -> float:
    st.reset(snn)
    out = snn(st.encoding.direct(x, T))
    st.reset(snn)
    return (out.mean(0).argmax(1) == y).float().mean().item()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--qcfs-epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "results",
                                                  "cpu"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"), help="the IF neurons' backend")
    p.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on the CPU, where torch's default of one per core stalls "
                         "on a shared machine; 0: torch's default)")
    args = p.parse_args(argv)
    with threads_for(args.threads, torch.device('cpu')) as threads:
        print(f"torch threads: {threads}")
        return _run(args, argv)


def _run(args, argv) -> dict:
    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = load_data(args.seed)
    x_tr, x_te = x_tr.reshape(-1, 1, 8, 8), x_te.reshape(-1, 1, 8, 8)
    torch.manual_seed(args.seed)
    ann = train(build_ann(), x_tr, y_tr, args.epochs, args.lr, args.seed)
    t_train = time.perf_counter() - t_start
    acc_ann = ann_accuracy(ann, x_te, y_te)
    print(f"ANN: test accuracy {100 * acc_ann:.2f} % ({len(y_te)} test images, trained {args.epochs} epochs in "
          f"{t_train:.1f} s)")

    rows = []
    for label, mode in MODES:
        snn = convert_ann(ann, x_tr, mode=mode, backend=args.backend)
        scales = activation_scales(ann, x_tr, mode=mode)
        accs = {T: snn_accuracy(snn, x_te, y_te, T) for T in T_LIST}
        rows.append({"model": f"SNN ({label})", "ann_accuracy": acc_ann, "scales": scales,
                     "accuracy": {str(T): a for T, a in accs.items()}})

    # QCFS: fine-tune a copy with the clip-floor-shift activation, then convert with its thresholds
    qann = relu_to_qcfs(ann, levels=QCFS_LEVELS, calibration_data=x_tr, mode="percentile")
    qann = train(qann, x_tr, y_tr, args.qcfs_epochs, args.lr / 3, args.seed + 1)
    acc_qann = ann_accuracy(qann, x_te, y_te)
    snn = convert_ann(qann, backend=args.backend)
    accs = {T: snn_accuracy(snn, x_te, y_te, T) for T in T_LIST}
    rows.append({"model": f"SNN (QCFS L={QCFS_LEVELS})", "ann_accuracy": acc_qann,
                 "scales": activation_scales(qann, None), "accuracy": {str(T): a for T, a in accs.items()}})
    runtime = time.perf_counter() - t_start

    head = f"{'model':<20} {'ANN':>7} " + " ".join(f"{'T=' + str(T):>7}" for T in T_LIST)
    print(head)
    print(f"{'ANN (ReLU)':<20} {100 * acc_ann:>6.2f}%")
    for r in rows:
        print(f"{r['model']:<20} {100 * r['ann_accuracy']:>6.2f}% " +
              " ".join(f"{100 * r['accuracy'][str(T)]:>6.2f}%" for T in T_LIST))
    # the goal: within 1 point of the ANN at T <= 32 (per row and T; QCFS against the ReLU ANN too)
    within = {r["model"]: {str(T): acc_ann - r["accuracy"][str(T)] <= 0.01 + 1e-9 for T in T_LIST} for r in rows}
    met = all(within[r["model"]][str(T)] for r in rows[:2] for T in T_LIST if T <= 32)
    print(f"goal (within 1 point of the ANN at T <= 32, max and percentile): {'met' if met else 'NOT met'}; "
          f"within 1 point: " + "; ".join(f"{m}: T in {[int(T) for T, ok in w.items() if ok]}" for m, w in within.items())
          + f"; runtime {runtime:.1f} s")

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result = {
        "benchmark": "ann2snn_digits",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "examples/ann2snn_digits.py"] + (sys.argv[1:] if argv is None else list(argv))),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "torch_num_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
                     "spiketriton": st.__version__, "spiketriton_imported_from": os.path.dirname(st.__file__),
                     "git_commit": _git_commit()},
        "config": {"backend": args.backend, "seed": args.seed, "epochs": args.epochs, "qcfs_epochs": args.qcfs_epochs,
                   "lr": args.lr,
                   "T": list(T_LIST), "test_images": len(y_te), "calibration": "the training images",
                   "neurons": "IF, threshold 1, soft reset, v_init 0.5, direct (constant-current) input",
                   "decoding": "argmax of the mean over T of the last Linear's output",
                   "ann": str(build_ann())},
        "ann_accuracy": acc_ann,
        "rows": rows,
        "goal_within_1_point_at_T_le_32": met,
        "within_1_point": within,
        "runtime_s": runtime,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "ann2snn_digits.json")
    write_atomic(path, (json.dumps(result, indent=2) + "\n").encode(), "ann2snn_digits")
    print(f"wrote {os.path.relpath(path)}")
    if not args.no_plot:
        plot(result, os.path.join(args.out, "ann2snn_digits.png"))
    return result


def _git_commit():
    import subprocess

    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def plot(result, path):
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    Ts = result["config"]["T"]
    ax.axhline(100 * result["ann_accuracy"], color="k", ls="--", label="ANN (ReLU)")
    for r in result["rows"]:
        label = r["model"] if "QCFS" not in r["model"] else f"{r['model']} (its ANN: {100 * r['ann_accuracy']:.2f} %)"
        ax.plot(Ts, [100 * r["accuracy"][str(T)] for T in Ts], marker="o", label=label)
    ax.axhspan(100 * result["ann_accuracy"] - 1, 100 * result["ann_accuracy"], color="0.9", label="within 1 point")
    ax.set_xscale("log", base=2)
    ax.set_xticks(Ts)
    ax.set_xticklabels([str(T) for T in Ts])
    ax.set_xlabel("time steps T")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"ANN-to-SNN on digits ({result['config']['test_images']} test images, "
                 f"{result['machine']['torch_num_threads']} thread(s))", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, buf.getvalue(), "ann2snn_digits")
    print(f"wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
