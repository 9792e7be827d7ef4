"""Demo: train a small spiking MLP on scikit-learn's handwritten digits.

Run it with::

    python -m spiketriton.demo                 # default: LIF neurons, T=4, 10 epochs
    python -m spiketriton.demo --neuron plif   # learnable time constants
    python -m spiketriton.demo --help
    python -m spiketriton.demo --export-dir out    # keep the files: out/qnet.safetensors, out/digits.chip, ...

What it shows, step by step:

1. **Data.** ``sklearn.datasets.load_digits`` ships with scikit-learn (no download): 1797 grey
   images of 8x8 pixels, digits 0-9. Pixels (0..16) are scaled to [0, 1] and split 80/20 into a
   training and a test set with a fixed seed.
2. **Encoding.** Spiking layers are multi-step and time-first: they take ``[T, B, *features]``.
   The image is fed as a constant input current at each of ``T`` time steps ("direct encoding");
   the first spiking layer turns it into spikes.
3. **Network.** ``nn.Linear(64, H) -> LIF -> nn.Linear(H, 10) -> LIF``. ``nn.Linear`` acts on the
   last dimension, so it processes all time steps at once; each neuron layer runs the whole
   sequence in one fused call (Triton kernels for CUDA tensors, the PyTorch path on CPU).
4. **Decoding and loss.** The output neuron that fires most often is the prediction: the firing
   rate (mean of the output spikes over time) is compared with the one-hot label by the mean
   squared error, as in the SpikingJelly tutorials (the "train loss" the demo prints). The spike has no useful derivative, so the
   backward pass uses the neurons' surrogate gradient.
5. **State.** Neurons keep their membrane potential between calls (for streaming input); every
   batch is an independent sequence, so ``spiketriton.reset(net)`` clears the state after each one.
6. **Quantization.** PTQ to int8 and a short quantization-aware fine-tune, measured in integer
   inference (``spiketriton.quant``).
7. **Export.** The quantized model is saved with ``save_quantized_model`` as ``qnet.safetensors`` (the
   input of ``python -m spiketriton export``), and written to a chip file (``spiketriton.export.save_chip``:
   integers and a JSON manifest in one safetensors file), loaded back, and run on the test set by
   ``ChipProgram``, an integer simulator in plain numpy: its output spikes equal the quantized
   model's bit for bit. The trained float network is written to NIR (``save_nir``), read back with
   ``from_nir``, and its spikes on the test set equal the original's. The files go to ``--export-dir``
   and are kept; without it they go to a temporary directory that is removed when the demo ends (the
   demo says so where it prints their paths).
8. **Monitor.** ``spiketriton.monitor.Monitor`` records the trained network's spikes and membrane
   potentials on a few test images, one after another, and the demo saves a figure (spike rasters,
   membrane traces with the threshold line, firing rate per layer) and prints its path: by default
   ``digits_monitor.png`` in ``--export-dir``, or in the current directory without one (the export
   files' temporary directory is removed at the end); ``--figure PATH`` chooses another file,
   ``--no-figure`` skips it. The figure needs matplotlib (``pip install matplotlib``); without it the
   demo says so and goes on.

**Threads.** On the CPU the demo runs torch on one thread unless ``--threads N`` says otherwise
(``--threads 0``: torch's default, one per core). On a 2-core machine shared with other work, torch's
default of 2 threads made the whole demo take 60-63 s against 6-9 s with one thread (2026-12-01, load
average 3-5; docs/guides/cpu-notes.md). The demo prints the thread count and restores the previous
one when ``main`` returns.

``main(argv)`` returns a dict with the accuracies and the run time, so tests and other scripts
can drive the demo without parsing its output.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import sys
import tempfile
import time
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import spiketriton
from spiketriton.functional import BACKENDS, use_triton

try:  # tqdm is an optional dependency (``pip install spiketriton[demo]``): fall back to prints
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - depends on the environment
    tqdm = None

__all__ = ["load_data", "encode", "make_neuron", "build_net", "firing_rate", "describe_backend", "train_epoch",
           "evaluate", "monitor_step", "build_parser", "main", "set_threads", "threads_for"]

NUM_INPUTS = 64   # 8x8 pixels
NUM_CLASSES = 10  # digits 0-9
QUICK_EPOCHS = 2  # --quick: 87-95% test accuracy over seeds 0-9 (tests/test_demo.py), ~0.3 s of training on 2 CPU cores
FIGURE_NAME = "digits_monitor.png"  # the monitor figure's default name (in --export-dir, else the current directory)
MONITOR_IMAGES = 8  # test images shown in the monitor figure, one after another
QMODEL_NAME = "qnet.safetensors"  # the quantized model in the export directory (python -m spiketriton export's input)
#: torch threads on the CPU unless --threads says otherwise, for the demo, the examples and the benchmarks
#: (bench/_common.set_threads). Measured on a 2-core machine shared with other jobs (2026-12-01, load average 3-5,
#: the full default demo): 1 thread 5.9-9.1 s, torch's default of 2 threads 60-63 s (its OpenMP barriers wait
#: whenever the other core is taken); `python -m bench --quick` at load 0.5: the three GEMMs of n = 64 took
#: 0.10-35.6 ms over 2 reps with 2 threads, 0.19-0.20 ms with one. One thread is slower only on an idle machine,
#: and its times do not depend on what the other core does; docs/guides/cpu-notes.md
DEFAULT_CPU_THREADS = 1
LOSS_NAME = "MSE of the output firing rates vs the one-hot labels"  # what loss_fn computes, named in the output


# --------------------------------------------------------------------------------------------- #
# 1. Data
# --------------------------------------------------------------------------------------------- #


def load_data(seed: int, test_size: float = 0.2):
    """Digits as float tensors in [0, 1]: ``(x_train [N, 64], y_train [N], x_test, y_test)``.

    The split is stratified (every digit keeps its share in both sets) and fixed by ``seed``.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit("the demo needs scikit-learn: pip install 'spiketriton[demo]'") from e

    digits = load_digits()
    x = digits.data.astype("float32") / 16.0  # pixel intensities are 0..16
    y = digits.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


# --------------------------------------------------------------------------------------------- #
# 2. Encoding: a static image becomes a sequence [T, B, 64]
# --------------------------------------------------------------------------------------------- #


def encode(x: torch.Tensor, T: int) -> torch.Tensor:
    """Direct encoding: the same input current ``x [B, 64]`` at each of ``T`` steps -> ``[T, B, 64]``.

    ``expand`` repeats the image without copying it; deterministic, so no encoder noise.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise TypeError(f"encode: x must be a tensor [B, features], got "
                        f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"encode: T (time steps) must be an int >= 1, got {T!r}")
    return x.unsqueeze(0).expand(T, *x.shape)


# --------------------------------------------------------------------------------------------- #
# 3. Network
# --------------------------------------------------------------------------------------------- #


def make_neuron(kind: str, backend: str) -> spiketriton.BaseNeuron:
    """One layer of spiking neurons (threshold 1, hard reset to 0, sigmoid surrogate gradient)."""
    if kind == "lif":
        return spiketriton.LIF(tau=2.0, backend=backend)
    if kind == "plif":
        return spiketriton.PLIF(init_tau=2.0, backend=backend)  # learns 1/tau = sigmoid(w)
    if kind == "if":
        return spiketriton.IF(backend=backend)  # no leak
    raise ValueError(f"unknown neuron {kind!r}; choose lif, plif or if")


def build_net(neuron: str = "lif", hidden: int = 256, backend: str = "auto") -> nn.Sequential:
    """``[T, B, 64] -> Linear -> spikes [T, B, H] -> SpikeLinear -> spikes [T, B, 10]``.

    Written as an ordinary PyTorch model, then ``spiketriton.convert`` swaps the Linear that reads
    spikes for a ``SpikeLinear`` (the add-only spike matmul, same weights) and lets the neuron in
    front of it hand over its spikes packed 8 per byte. The first Linear reads pixel intensities,
    not spikes, and stays an ``nn.Linear``.
    """
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"build_net: hidden must be an int >= 1, got {hidden!r}")
    net = nn.Sequential(
        nn.Linear(NUM_INPUTS, hidden),
        make_neuron(neuron, backend),
        nn.Linear(hidden, NUM_CLASSES),
        make_neuron(neuron, backend),
    )
    return spiketriton.convert(net, backend=backend)


def firing_rate(net: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """Run one batch ``x [B, 64]`` for ``T`` steps; return the output firing rates ``[B, 10]``.

    Resets the neurons afterwards: each batch is an independent sequence.
    """
    try:
        return net(encode(x, T)).mean(0)
    finally:
        spiketriton.reset(net)


def describe_backend(backend: str, device: torch.device) -> str:
    """Which implementation the neurons will run on (raises, as the neurons would, if impossible)."""
    probe = torch.empty(0, device=device)
    if not use_triton(backend, probe, op="demo"):
        from .kernels import neuron_cpu

        if device.type == "cpu" and neuron_cpu.status()[0]:
            return "PyTorch path; neurons as one compiled C call per sequence (the fused CPU neuron)"
        return "PyTorch path (spiketriton's fused algorithm in torch ops)"
    if device.type == "cuda":
        return f"Triton kernels on {torch.cuda.get_device_name(device)}"
    return "Triton kernels in the Triton interpreter (TRITON_INTERPRET=1; very slow, for testing kernels)"


# --------------------------------------------------------------------------------------------- #
# 4. Training and evaluation
# --------------------------------------------------------------------------------------------- #


def batches(n: int, batch_size: int, generator: Optional[torch.Generator] = None) -> Iterable[torch.Tensor]:
    """Index batches over ``n`` samples: shuffled with ``generator``, in order without it."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return order.split(batch_size)


def loss_fn(rate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the firing rates and the one-hot labels."""
    return F.mse_loss(rate, F.one_hot(y, NUM_CLASSES).to(rate.dtype))


def train_epoch(net, optimizer, x, y, T, batch_size, generator):
    """One pass over the training set in shuffled mini-batches; returns ``(mean loss, accuracy)``."""
    net.train()
    total_loss, correct = 0.0, 0
    for idx in batches(len(x), batch_size, generator):
        xb, yb = x[idx], y[idx]
        rate = firing_rate(net, xb, T)
        loss = loss_fn(rate, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(idx)
        correct += (rate.argmax(1) == yb).sum().item()
    return total_loss / len(x), correct / len(x)


@torch.no_grad()
def evaluate(net, x, y, T, batch_size) -> float:
    """Accuracy on ``(x, y)``; inference mode saves nothing for backward."""
    net.eval()
    correct = 0
    for idx in batches(len(x), batch_size):
        correct += (firing_rate(net, x[idx], T).argmax(1) == y[idx]).sum().item()
    return correct / len(x)


# --------------------------------------------------------------------------------------------- #
# 5. Quantization: integer inference, and quantization-aware fine-tuning
# --------------------------------------------------------------------------------------------- #


def quantize_step(net, args, x_tr, y_tr, x_te, y_te, shuffle, log=print) -> dict:
    """PTQ then QAT with spiketriton.quant, measured in integer inference.

    ``prepare`` copies the float network into quantizable layers (the LIFs become the chip's
    integer neuron); calibration batches fix the int8 scale of the first layer's pixel input;
    ``quantize()`` switches to integer arithmetic (int8 weights, int32 currents, int28 membrane
    potentials); ``aware()`` trains with the same integer forward and straight-through gradients.
    """
    from . import quant

    qnet = quant.prepare(net, bits=args.bits)
    qnet.collect_q_params()
    evaluate(qnet, x_tr, y_tr, args.T, args.batch_size)  # calibration: float forwards record max |input|
    qnet.calculate_q_params()
    ptq = evaluate(qnet.quantize(), x_te, y_te, args.T, args.batch_size)
    log(f"PTQ int{args.bits}: integer TEST accuracy {ptq:.2%}")
    qat = ptq
    if args.qat_epochs > 0:
        qnet.aware()
        optimizer = torch.optim.Adam(qnet.parameters(), lr=args.lr / 5)
        for epoch in range(1, args.qat_epochs + 1):
            loss, running = train_epoch(qnet, optimizer, x_tr, y_tr, args.T, args.batch_size, shuffle)
            log(f"QAT epoch {epoch}/{args.qat_epochs}: train loss (MSE) {loss:.4f}, running train accuracy {running:.2%}")
        qnet.calculate_q_params()
        qat = evaluate(qnet.quantize(), x_te, y_te, args.T, args.batch_size)
        log(f"QAT int{args.bits}: integer TEST accuracy {qat:.2%}")
    return {"ptq_accuracy": ptq, "qat_accuracy": qat, "qmodel": qnet}


# --------------------------------------------------------------------------------------------- #
# 6. Export: a chip file, run by the integer simulator
# --------------------------------------------------------------------------------------------- #


def export_step(qnet, args, x_te, y_te, export_dir: str, log=print, net=None) -> dict:
    """Save the quantized model to ``export_dir/qnet.safetensors`` (``save_quantized_model``: the
    ``--weights`` of ``python -m spiketriton export``). Write the quantized network to
    ``export_dir/digits.chip``, load it back and run the whole test
    set through ``ChipProgram`` (numpy int64, independent of the model's torch and Triton code);
    its output spikes must equal the quantized model's bit for bit (an error otherwise). With the
    float network ``net``, also write it to ``export_dir/digits.nir`` (NIR), read it back with
    ``from_nir`` and check that the rebuilt network's spikes equal the original's."""
    from .export import load_chip, save_chip

    x = encode(x_te, args.T)
    qpath = os.path.join(export_dir, QMODEL_NAME)
    qnet.save_quantized_model(qpath)
    log(f"quantized model: {qpath} ({os.path.getsize(qpath)} bytes, {qnet.q_mode} mode; "
        f"quant.load_quantized_model reads it back)")
    results = {"qmodel_path": qpath}
    if net is not None:
        results.update(_nir_step(net, x, y_te, export_dir, log))
    path = os.path.join(export_dir, "digits.chip")
    save_chip(qnet, path, x[:, :1])
    program = load_chip(path)
    qnet.reset()
    try:
        with torch.no_grad():
            want = qnet(x).cpu().numpy()
    finally:
        qnet.reset()
    got = program.run(x)
    if got.dtype != want.dtype or not np.array_equal(got, want):
        raise RuntimeError(f"the chip simulator's output differs from the quantized model's on "
                           f"{int((got != want).sum())} of {got.size} spikes")
    accuracy = float((got.sum(0).argmax(1) == y_te.cpu().numpy()).mean())
    log(f"chip export: {path} ({os.path.getsize(path)} bytes, {len(program.manifest['layers'])} layers); "
        f"ChipProgram (numpy int64) on {len(x_te)} test images: output spikes equal the quantized model's bit for "
        f"bit; chip TEST accuracy {accuracy:.2%}")
    results["chip_accuracy"] = accuracy
    return results


def _nir_step(net, x, y_te, export_dir, log) -> dict:
    from .export import from_nir, save_nir

    try:
        import nir  # noqa: F401
    except ImportError:
        log("NIR export skipped: the `nir` package is not installed (pip install spiketriton[export])")
        return {}
    path = os.path.join(export_dir, "digits.nir")
    save_nir(net, path, x[:, :1])
    back = from_nir(path).to(next(net.parameters()).device)
    with torch.no_grad():
        spiketriton.reset(net)
        want = net(x)
        got = back(x)
        spiketriton.reset(net)
        spiketriton.reset(back)
    if not torch.equal(got, want):
        raise RuntimeError(f"the network read back from NIR differs from the trained one on "
                           f"{int((got != want).sum())} of {got.numel()} spikes")
    accuracy = (got.sum(0).argmax(1) == y_te).sum().item() / len(y_te)  # as evaluate() counts
    log(f"NIR export: {path} ({os.path.getsize(path)} bytes); read back with from_nir: output spikes equal the "
        f"trained network's; NIR TEST accuracy {accuracy:.2%}")
    return {"nir_accuracy": accuracy}


# --------------------------------------------------------------------------------------------- #
# 7. Monitor: spikes and membrane potentials of the trained network, as a figure
# --------------------------------------------------------------------------------------------- #


@torch.no_grad()
def monitor_step(net, x_te, y_te, T: int, path: str, images: int = MONITOR_IMAGES, log=print) -> str:
    """Run the first ``images`` test images through ``net`` one after another (``T`` steps each, the
    state reset between them) under a :class:`~spiketriton.monitor.Monitor`, and save its figure to
    ``path``: a spike raster per layer, the output layer's membrane potential (V, and H before the
    reset, dotted) with the threshold line, and the firing rate per layer. Returns ``path``."""
    from .monitor import Monitor

    net.eval()
    n = min(images, len(x_te))
    with Monitor(net) as mon:  # every neuron: spikes, H and V, copied to the CPU
        for i in range(n):
            net(encode(x_te[i:i + 1], T))
            spiketriton.reset(net)
    digits = " ".join(str(int(d)) for d in y_te[:n])
    mon.figure(path, title=f"{n} test images (digits {digits}), {T} steps each, state reset between them")
    log(f"monitor figure: {os.path.abspath(path)} (spike rasters, membrane traces of the output layer with the "
        f"threshold, firing rate per layer; {n} test images, {T} steps each)")
    return path


def _export_command(args, qmodel_path: str) -> str:
    """The command line that turns the saved quantized model into a chip file, when the CLI's factory
    ``spiketriton.demo:build_net`` (called without arguments) builds this run's network."""
    defaults = build_parser().parse_args([])
    chip = os.path.join(os.path.dirname(qmodel_path), "qnet.chip")
    if (args.neuron, args.hidden) == (defaults.neuron, defaults.hidden):
        return (f"the same with the command line: python -m spiketriton export --chip {shlex.quote(chip)} --model "
                f"spiketriton.demo:build_net --weights {shlex.quote(qmodel_path)} --input-shape {NUM_INPUTS}")
    return (f"(python -m spiketriton export --model spiketriton.demo:build_net builds the default network, "
            f"--neuron {defaults.neuron} --hidden {defaults.hidden}; for this one give --model a function of your own "
            f"that returns spiketriton.demo.build_net({args.neuron!r}, {args.hidden}))")


def _figure_path(args) -> Optional[str]:
    """Where the monitor figure goes: ``--figure``, else ``digits_monitor.png`` in ``--export-dir`` (the
    other outputs' place), else in the current directory (the export's temporary directory is removed
    at the end); None with ``--no-figure``."""
    if args.no_figure:
        return None
    if args.figure is not None:
        return args.figure
    return os.path.join(args.export_dir if args.export_dir is not None else os.curdir, FIGURE_NAME)


def _check_figure_args(parser, args) -> None:
    """Refuse a --figure that cannot be written before any training (issue 12's rule for the demo's flags)."""
    if args.no_figure and args.figure is not None:
        parser.error("--figure and --no-figure contradict each other; give one")
    if args.figure is None:
        return
    path = args.figure
    if not path or os.path.isdir(path):
        parser.error(f"--figure {path!r}: expected a file name such as {FIGURE_NAME}, got "
                     f"{'a directory' if path else 'an empty name'}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        parser.error(f"--figure {path}: the directory {parent} does not exist")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        parser.error("--figure needs matplotlib, which is not installed: pip install matplotlib (or --no-figure)")
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    supported = Figure().canvas.get_supported_filetypes()
    if suffix and suffix not in supported:
        parser.error(f"--figure {path}: matplotlib cannot write .{suffix} files; use one of "
                     f"{', '.join('.' + f for f in sorted(supported))}")


# --------------------------------------------------------------------------------------------- #
# 8. Command line
# --------------------------------------------------------------------------------------------- #


def build_parser(prog: str = "python -m spiketriton.demo") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train a spiking MLP (Linear -> LIF -> Linear -> LIF) on scikit-learn's 8x8 digits.",
    )
    p.add_argument("--epochs", type=int, default=10, help="passes over the training set (default: 10)")
    p.add_argument("--T", type=int, default=4, help="time steps per image (default: 4)")
    p.add_argument("--hidden", type=int, default=256, help="hidden spiking neurons (default: 256)")
    p.add_argument("--neuron", choices=("lif", "plif", "if"), default="lif", help="neuron model (default: lif)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="neuron backend: auto = Triton on CUDA (or TRITON_INTERPRET=1), else PyTorch (default: auto)")
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default: 64)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default: 1e-2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the shuffling")
    p.add_argument("--quick", action="store_true",
                   help=f"a very short run for tests: {QUICK_EPOCHS} epochs unless --epochs is given")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: one line per epoch instead (the default where stderr is not a terminal)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"torch CPU threads (default: {DEFAULT_CPU_THREADS} on the CPU, where torch's default of one "
                        f"per core stalls on a machine shared with other work; 0: torch's default)")
    p.add_argument("--qat-epochs", type=int, default=2,
                   help="quantization: epochs of quantization-aware fine-tuning after PTQ; 0 skips QAT, "
                        "-1 skips quantization altogether (default: 2; --quick: 1)")
    p.add_argument("--bits", type=int, default=8, help="weight bits for quantization, 2..8 (default: 8)")
    p.add_argument("--export-dir", default=None,
                   help=f"where the quantized model ({QMODEL_NAME}, the input of python -m spiketriton export), its "
                        "chip file (digits.chip), the NIR file (digits.nir) and the monitor figure "
                        f"({FIGURE_NAME}) are written and kept (default: a temporary directory, removed when the demo "
                        "ends; the figure then goes to the current directory)")
    p.add_argument("--figure", default=None, metavar="PATH",
                   help=f"save the monitor figure (spike rasters, membrane traces, firing rates) to PATH; the "
                        f"format follows the suffix (.png, .pdf, .svg, ...) (default: {FIGURE_NAME} in --export-dir, "
                        f"else in the current directory; needs matplotlib)")
    p.add_argument("--no-figure", action="store_true", help="do not draw the monitor figure")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m spiketriton.demo") -> dict:
    """Run the demo with command-line arguments ``argv`` (default: ``sys.argv[1:]``); ``prog`` is the
    command's name in its usage and error messages.

    Returns a dict: ``test_accuracy`` and ``train_accuracy`` (fractions in [0, 1], measured on the
    trained network), ``train_loss`` (mean loss of the last epoch: the MSE of the output firing rates
    vs the one-hot labels), ``seconds`` (wall time of data loading, training and evaluation), the
    settings used (``epochs``, ``T``, ``hidden``, ``neuron``, ``backend``, ``device``, ``seed``,
    ``threads``: torch's CPU threads during the run) and the trained ``model`` (an ``nn.Sequential``);
    with quantization also ``ptq_accuracy``, ``qat_accuracy``, the quantized ``qmodel``,
    ``qmodel_path`` (its saved file; removed with the temporary directory unless ``--export-dir``) and
    ``chip_accuracy`` (the chip file run by ``ChipProgram``, equal to the model's bit for bit);
    ``figure``: the monitor figure's path (None with ``--no-figure`` or without matplotlib).
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.quick:  # shorten the run; flags given explicitly still win
        parser.set_defaults(epochs=QUICK_EPOCHS, qat_epochs=1)
        args = parser.parse_args(argv)
    for name in ("epochs", "T", "hidden", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 2 <= args.bits <= 8:
        parser.error(f"--bits must be in 2..8, got {args.bits}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    if args.qat_epochs < -1:
        parser.error(f"--qat-epochs must be >= -1 (-1 skips quantization, 0 skips QAT), got {args.qat_epochs}")
    if args.threads is not None and args.threads < 0:
        parser.error(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    if not 0 <= args.seed < 2 ** 32:
        parser.error(f"--seed must be in 0..2**32-1 (scikit-learn's split takes no other), got {args.seed}")
    if args.export_dir is not None and os.path.exists(args.export_dir) and not os.path.isdir(args.export_dir):
        parser.error(f"--export-dir {args.export_dir}: exists and is not a directory")
    _check_figure_args(parser, args)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:  # not a device name
        parser.error(f"--device: {e}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: the demo runs on cpu or cuda[:N], got a {device.type!r} device")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        parser.error(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    try:
        backend_text = describe_backend(args.backend, device)
    except RuntimeError as e:  # e.g. --backend triton on a CPU without TRITON_INTERPRET=1
        parser.error(str(e))
    with threads_for(args.threads, device) as threads_text:  # a caller's process keeps its own setting after
        return _run(args, device, backend_text, threads_text)


@contextlib.contextmanager
def threads_for(threads: Optional[int], device: torch.device):
    """:func:`set_threads` for the length of a ``with`` block, which gets its text; torch's earlier thread
    count is restored after it (a caller's process, a test or a notebook, keeps its own setting)."""
    before = torch.get_num_threads()
    try:
        yield set_threads(threads, device)
    finally:
        torch.set_num_threads(before)


def set_threads(threads: Optional[int], device: torch.device) -> str:
    """Set torch's CPU threads for a run and say why, for the demo and the examples' ``--threads``:
    ``None`` -> ``DEFAULT_CPU_THREADS`` (1) when ``device`` is the CPU, else torch's default;
    ``0`` -> torch's default (one per core); ``N`` -> N. Returns the text the demo prints, e.g.
    ``"1 (the demo's default on the CPU: ...)"``; ``threads`` other than None or an int >= 0 is a
    ValueError. The caller restores ``torch.get_num_threads()``'s earlier value if it must (``main``
    does; :func:`threads_for` does it for a ``with`` block).

    >>> import torch
    >>> from spiketriton.demo import set_threads
    >>> before = torch.get_num_threads()
    >>> set_threads(None, torch.device("cpu")).split(" (")[0]
    '1'
    >>> torch.set_num_threads(before)
    """
    case = _apply_thread_rule(threads, device)
    why = {"default": "the demo's default on the CPU: torch's default of one thread per core stalls on a machine "
                      "shared with other work; --threads N to change it, docs/guides/cpu-notes.md",
           "given": "--threads",
           "torch": "torch's default" + (" (--threads 0)" if threads == 0 else "")}[case]
    return f"{torch.get_num_threads()} ({why})"


def _apply_thread_rule(threads: Optional[int], device) -> str:
    """The one thread rule of the demo, the examples and the benchmarks (bench/_common.set_threads):
    ``None`` -> :data:`DEFAULT_CPU_THREADS` when ``device`` (a ``torch.device`` or its name) is the CPU,
    else torch's default (a GPU run's host threads hardly matter); ``0`` -> torch's default (left as it
    is); ``N`` -> N. Sets torch's thread count and returns the case, ``"default"``, ``"given"`` or
    ``"torch"``, for the caller to word. ``threads`` other than None or an int >= 0: a ValueError."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
        raise ValueError(f"set_threads: threads must be None or an int >= 0 (0: torch's default), got {threads!r}")
    if threads is None and torch.device(device).type == "cpu":
        torch.set_num_threads(DEFAULT_CPU_THREADS)
        return "default"
    if threads:
        torch.set_num_threads(threads)
        return "given"
    return "torch"


def _use_bar(args) -> bool:
    """Progress as one tqdm bar where it can be drawn (stderr is a terminal, or a notebook), else as one
    line per epoch: never both."""
    if tqdm is None or args.no_progress:
        return False
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def _run(args, device: torch.device, backend_text: str, threads_text: str) -> dict:
    start = time.perf_counter()

    x_tr, y_tr, x_te, y_te = (t.to(device) for t in load_data(args.seed))
    print(f"digits: {len(x_tr)} train / {len(x_te)} test images of 8x8 pixels, 10 classes")

    # The seed fixes the initialisation and the shuffling without touching the caller's global RNG:
    # the weights are drawn inside fork_rng, the shuffling uses its own generator.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(args.seed)
        net = build_net(args.neuron, args.hidden, args.backend).to(device)
    shuffle = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)

    print(f"network: {net}".replace("\n", "\n  "))
    print(f"neurons run on: {backend_text} [backend={args.backend!r}, device={device}]")
    print(f"torch CPU threads: {threads_text}")
    print(f"training {args.epochs} epoch(s), T={args.T}, batch size {args.batch_size}, Adam lr={args.lr}, seed {args.seed}; "
          f"loss: {LOSS_NAME}")

    # Progress in one form: a tqdm bar over the epochs (an epoch takes a fraction of a second on a CPU)
    # where one can be drawn, else one line per epoch (no tqdm, --no-progress, output to a file or a pipe).
    epochs = range(1, args.epochs + 1)
    bar = tqdm(epochs, desc="training", unit="epoch") if _use_bar(args) else None
    train_loss, running_acc = float("nan"), float("nan")
    try:
        for epoch in bar if bar is not None else epochs:
            train_loss, running_acc = train_epoch(net, optimizer, x_tr, y_tr, args.T, args.batch_size, shuffle)
            # the accuracy is measured on the fly while the weights change: a running estimate
            if bar is not None:
                bar.set_postfix_str(f"train loss (MSE) {train_loss:.4f}, running accuracy {running_acc:.2%}")
            else:
                print(f"epoch {epoch}/{args.epochs}: train loss (MSE) {train_loss:.4f}, running train accuracy "
                      f"{running_acc:.2%}")
    finally:
        if bar is not None:
            bar.close()
    if bar is not None:  # the bar's last state, kept in the log
        print(f"trained {args.epochs} epoch(s): last epoch's train loss (MSE) {train_loss:.4f}, running train "
              f"accuracy {running_acc:.2%}")

    # Final accuracies of the trained network (no weight updates, inference mode).
    train_acc = evaluate(net, x_tr, y_tr, args.T, args.batch_size)
    test_acc = evaluate(net, x_te, y_te, args.T, args.batch_size)
    print(f"final train accuracy: {train_acc:.2%}")
    print(f"TEST accuracy: {test_acc:.2%} ({len(x_te)} images, chance is 10%) in {time.perf_counter() - start:.1f} s")
    figure = _figure_path(args)
    if figure is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("monitor figure skipped: matplotlib is not installed (pip install matplotlib)")
            figure = None
    if figure is not None:
        if args.export_dir is not None:
            os.makedirs(args.export_dir, exist_ok=True)
        monitor_step(net, x_te, y_te, args.T, figure)
    quant_results = quantize_step(net, args, x_tr, y_tr, x_te, y_te, shuffle, log=print) if args.qat_epochs >= 0 else {}
    if quant_results:
        if args.export_dir is not None:
            os.makedirs(args.export_dir, exist_ok=True)
            print(f"export files go to {args.export_dir} and are kept")
            quant_results.update(export_step(quant_results["qmodel"], args, x_te, y_te, args.export_dir, net=net))
            print(_export_command(args, quant_results["qmodel_path"]))
        else:
            with tempfile.TemporaryDirectory(prefix="spiketriton-demo-") as tmp:
                print(f"export files go to a temporary directory, {tmp}, which is removed when the demo ends "
                      f"(--export-dir DIR keeps them)")
                quant_results.update(export_step(quant_results["qmodel"], args, x_te, y_te, tmp, net=net))
            print(f"removed {tmp} and the export files in it (--export-dir DIR keeps them)")
    seconds = time.perf_counter() - start
    return {
        **quant_results,
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "train_loss": train_loss,
        "seconds": seconds,
        "epochs": args.epochs,
        "T": args.T,
        "hidden": args.hidden,
        "neuron": args.neuron,
        "backend": args.backend,
        "device": str(device),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "figure": figure,
        "model": net,
    }


if __name__ == "__main__":
    main()
