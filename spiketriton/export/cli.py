"""``python -m spiketriton export``: a saved quantized model to a chip file or to NIR.

    python -m spiketriton export --chip OUT.chip --model spiketriton.demo:build_net \\
        --weights qnet.safetensors --input-shape 64
    python -m spiketriton export --nir OUT.nir --model pkg.module:factory --weights ... --input-shape 2,8,8

``--model pkg.module:factory`` names a function called without arguments that builds the float
model; the command does ``quant.prepare(model)`` and ``quant.load_quantized_model(weights, qmodel)``
(the file, written by ``qmodel.save_quantized_model``, brings the quantization settings and the
integers), then writes the chip file (``save_chip``; the file must hold a quantized model) or the
NIR graph (``save_nir``). ``--input-shape`` is the per-sample feature shape of one time step.

Exit status: 0 when the file is written; 2 for bad arguments (usage, a module or factory that cannot
be loaded, a weights file that does not fit the model, an input shape the model cannot run, an output
path that cannot be written: a missing directory, a directory, no permission); 1 when the model cannot
be expressed (``quant.prepare`` cannot convert it, or the chosen format cannot hold it; the message
names the module).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spiketriton export",
        description="Export a saved quantized spiketriton model to the chip format or to NIR.",
    )
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--chip", metavar="OUT", help="write a chip file (integers; runs bit-exactly in ChipProgram)")
    out.add_argument("--nir", metavar="OUT", help="write a NIR graph (HDF5)")
    p.add_argument("--model", required=True, metavar="PKG.MODULE:FACTORY",
                   help="a function, called without arguments, that builds the float model")
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="the quantized model saved by qmodel.save_quantized_model(FILE)")
    p.add_argument("--input-shape", required=True, metavar="F1,F2,...",
                   help="per-sample input features of one time step, e.g. 64 or 2,8,8")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    import torch

    from .. import quant
    from ._graph import ExportError
    from .chip import ChipFormatError, save_chip

    parser = build_parser()
    args = parser.parse_args(argv)
    out_flag, out = ("--chip", args.chip) if args.chip is not None else ("--nir", args.nir)
    _check_output(parser, out_flag, out)
    shape = _parse_shape(parser, args.input_shape)
    factory = _load_factory(parser, args.model)
    try:
        model = factory()
    except Exception as e:  # user code: report whatever it raised as a bad --model
        parser.error(f"--model {args.model}: calling the factory failed: {type(e).__name__}: {e}")
    if not isinstance(model, torch.nn.Module):
        parser.error(f"--model {args.model}: the factory returned an object of type {type(model).__name__}, expected a "
                     f"torch.nn.Module")
    try:
        qmodel = quant.prepare(model)
    except (ValueError, RuntimeError, TypeError) as e:  # e.g. a neuron not fed directly by a layer
        print(f"python -m spiketriton export: error: --model {args.model}: quant.prepare() cannot convert the "
              f"model: {e}", file=sys.stderr)
        return 1
    if not os.path.isfile(args.weights):
        parser.error(f"--weights {args.weights}: {'a directory' if os.path.isdir(args.weights) else 'no such file'}")
    try:
        qmodel = quant.load_quantized_model(args.weights, qmodel)
    except (ValueError, RuntimeError, TypeError) as e:
        parser.error(f"--weights {args.weights}: {e}")
    sample = torch.zeros((1, 1) + shape)
    try:
        with torch.no_grad():
            qmodel(sample)
    except Exception as e:  # the model's own error for an input it cannot take
        parser.error(f"--input-shape {args.input_shape}: the model cannot run on an input [T, B, "
                     f"{', '.join(map(str, shape))}]: {type(e).__name__}: {e}")
    finally:
        qmodel.reset()
    try:
        if args.chip is not None:
            if qmodel.q_mode != quant.QUANTIZED:
                parser.error(f"--weights {args.weights}: the file holds a model in {qmodel.q_mode!r} mode; the chip "
                             f"format needs a quantized one (save it after qmodel.quantize())")
            manifest = save_chip(qmodel, args.chip, sample)
            kinds = ", ".join(layer["kind"] for layer in manifest["layers"])
            print(f"wrote {args.chip}: chip format v{manifest['version']}, {manifest['input_shape']} -> "
                  f"{manifest['output_shape']} {manifest['output']} ({kinds}), {os.path.getsize(args.chip)} bytes")
        else:
            from .nir_format import save_nir

            save_nir(qmodel, args.nir, sample)
            print(f"wrote {args.nir}: NIR graph, {os.path.getsize(args.nir)} bytes")
    except (ExportError, ChipFormatError, ImportError) as e:
        print(f"python -m spiketriton export: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the output cannot be written (checked up front; the file system may still refuse)
        parser.error(f"{out_flag} {out}: cannot write the file: {e.strerror or e}")
    return 0


def _check_output(parser, flag: str, path: str) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"{flag} {path}: is a directory; give the path of the file to write")
    if not os.path.isdir(directory):
        parser.error(f"{flag} {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        parser.error(f"{flag} {path}: cannot write to the directory {directory} (permission denied)")


def _parse_shape(parser, text: str) -> tuple:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        parser.error(f"--input-shape must be positive integers separated by commas (e.g. 64 or 2,8,8), got {text!r}")
    return shape


def _load_factory(parser, spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        parser.error(f"--model must be pkg.module:factory, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises on import
        parser.error(f"--model {spec}: cannot import {module_name}: {type(e).__name__}: {e}")
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            parser.error(f"--model {spec}: {module_name} has no attribute {attr!r}")
    if not callable(factory):
        parser.error(f"--model {spec}: {attr} is not callable")
    return factory
