"""``python -m spiketriton export``: a saved quantized model to a chip file or to NIR. ::

    python -m spiketriton demo --quick --export-dir out      # writes out/qnet.safetensors
    python -m spiketriton export --chip out/net.chip --model spiketriton.demo:build_net \\
        --weights out/qnet.safetensors --input-shape 64
    python -m spiketriton export --nir out/net.nir --model spiketriton.demo:build_net \\
        --weights out/qnet.safetensors --input-shape 64
    # your own model (placeholders: a module of yours with a factory, the file its qmodel saved)
    python -m spiketriton export --nir OUT.nir --model mypkg.models:make_net --weights my_qnet.safetensors \\
        --input-shape 2,8,8

``--model pkg.module:factory`` names a function called without arguments that builds the float
model; the command does ``quant.prepare(model)`` and ``quant.load_quantized_model(weights, qmodel)``
(the file, written by ``qmodel.save_quantized_model``, brings the quantization settings and the
integers), then writes the chip file (``save_chip``; the file must hold a quantized model) or the
NIR graph (``save_nir``). ``--input-shape`` is the per-sample feature shape of one time step.

Exit status: 0 when the file is written; 2 for bad arguments (usage, a module or factory that cannot
be loaded, a weights file that does not fit the model or is not a regular file, an input shape that
is not positive integers, is beyond the size limit or that the model cannot run, an output path that
cannot be written: a missing directory, a directory, a device or FIFO, no permission, or the same
file as an input); 1 when the model cannot be expressed (``quant.prepare`` cannot convert it, or the
chosen format cannot hold it; the message names the module); 130 when interrupted
(``KeyboardInterrupt``, from Ctrl-C or raised by the model's code). Code of the ``--model`` module
(its import, the factory, the model's forward) that raises anything, ``SystemExit`` from
``sys.exit()`` included, is reported as a bad ``--model`` (2), never as success. Every error is one
message on stderr, without a traceback; no file is written unless the export succeeds (the writers
replace the output atomically).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import stat
import sys
import textwrap
from typing import Optional, Sequence

__all__ = ["build_parser", "main", "EXAMPLES"]

#: the examples of ``--help``; all but the last run as written, in order (the last names placeholders)
EXAMPLES = (
    "python -m spiketriton demo --quick --export-dir out",
    "python -m spiketriton export --chip out/net.chip --model spiketriton.demo:build_net "
    "--weights out/qnet.safetensors --input-shape 64",
    "python -m spiketriton export --nir out/net.nir --model spiketriton.demo:build_net "
    "--weights out/qnet.safetensors --input-shape 64",
    "python -m spiketriton export --nir OUT.nir --model mypkg.models:make_net --weights my_qnet.safetensors "
    "--input-shape 2,8,8   # placeholders",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spiketriton export",
        description="Export a saved quantized spiketriton model to the chip format or to NIR.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples (the first writes out/qnet.safetensors; the last names placeholders for your own model):\n"
               + "\n".join(f"  {e}" for e in EXAMPLES) + "\n\n"
               + textwrap.fill(
                   "exit status: 0 written; 1 the model cannot be expressed (quant.prepare or the format refuses it); "
               "2 bad arguments (module/factory that fails or exits, weights that do not fit or are not a regular "
               "file, bad input shape, output not writable or the same file as an input); 130 interrupted",
                   width=100),
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


PROG = "python -m spiketriton export"
MAX_INPUT_RANK = 8           # dimensions of --input-shape (the chip format's limit)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _export(parser, args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (KeyboardInterrupt); no file was written", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    """An error of the model (exit status 1): the message on stderr."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def _run_user_code(parser, what: str, fn, *args):
    """``fn(*args)``, where ``fn`` runs code of the --model module: whatever it raises (SystemExit from
    sys.exit() included) is a bad --model, exit status 2, with the exception in the message."""
    try:
        return fn(*args)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: B036 - user code: Exception, SystemExit or any other BaseException
        parser.error(f"{what}: {_what(e)}")


def _what(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"the code called sys.exit({e.code!r}) (SystemExit); nothing was exported"
    return f"{type(e).__name__}: {_first_line(e)}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else "(no message)"


def _export(parser, args) -> int:
    import torch

    from .. import quant
    from .._files import check_regular
    from ._graph import ExportError
    from .chip import ChipFormatError, save_chip

    out_flag, out = ("--chip", args.chip) if args.chip is not None else ("--nir", args.nir)
    _check_output(parser, out_flag, out)
    _check_distinct(parser, out_flag, out, "--weights", args.weights)
    shape = _parse_shape(parser, args.input_shape)
    module, factory = _load_factory(parser, args.model)
    source = getattr(module, "__file__", None)
    if isinstance(source, str):
        _check_distinct(parser, out_flag, out, f"--model {args.model} (its source file)", source)
    model = _run_user_code(parser, f"--model {args.model}: calling the factory failed", factory)
    if not isinstance(model, torch.nn.Module):
        parser.error(f"--model {args.model}: the factory returned an object of type {type(model).__name__}, expected a "
                     f"torch.nn.Module")
    try:
        qmodel = quant.prepare(model)
    except Exception as e:  # e.g. a neuron not fed directly by a layer; or the model's own code failing
        detail = str(e) if isinstance(e, (ValueError, RuntimeError, TypeError)) else f"{type(e).__name__}: {e}"
        return _fail(f"--model {args.model}: quant.prepare() cannot convert the model: {detail}")
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: B036 - the model's code raising something that is not an Exception
        parser.error(f"--model {args.model}: quant.prepare() ran the model's code: {_what(e)}")
    try:
        check_regular(args.weights, "--weights")
    except ValueError as e:  # a directory, a FIFO, a device, ...
        parser.error(str(e))
    except FileNotFoundError:
        parser.error(f"--weights {args.weights}: no such file")
    except PermissionError:
        parser.error(f"--weights {args.weights}: cannot read the file (permission denied)")
    except OSError as e:
        parser.error(f"--weights {args.weights}: cannot open the file: {e.strerror or e}")
    qmodel = _run_user_code(parser, f"--weights {args.weights}", quant.load_quantized_model, args.weights, qmodel)
    try:
        sample = torch.zeros((1, 1) + shape)
    except (RuntimeError, MemoryError) as e:  # (the shape is within the limit: not expected)
        parser.error(f"--input-shape {args.input_shape}: cannot allocate an input of that shape: {_first_line(e)}")

    def probe():
        try:
            with torch.no_grad():
                qmodel(sample)
        finally:
            qmodel.reset()

    # the model's own error for an input it cannot take
    _run_user_code(parser, f"--input-shape {args.input_shape}: the model cannot run on an input [T, B, "
                           f"{', '.join(map(str, shape))}]", probe)
    if args.chip is not None and qmodel.q_mode != quant.QUANTIZED:
        parser.error(f"--weights {args.weights}: the file holds a model in {qmodel.q_mode!r} mode; the chip "
                     f"format needs a quantized one (save it after qmodel.quantize())")
    try:
        if args.chip is not None:
            manifest = save_chip(qmodel, args.chip, sample)
            kinds = ", ".join(layer["kind"] for layer in manifest["layers"])
            print(f"wrote {args.chip}: chip format v{manifest['version']}, {manifest['input_shape']} -> "
                  f"{manifest['output_shape']} {manifest['output']} ({kinds}), {os.path.getsize(args.chip)} bytes")
        else:
            from .nir_format import save_nir

            save_nir(qmodel, args.nir, sample)
            print(f"wrote {args.nir}: NIR graph, {os.path.getsize(args.nir)} bytes")
    except (ExportError, ChipFormatError, ImportError) as e:
        return _fail(str(e))
    except OSError as e:  # the output cannot be written (checked up front; the file system may still refuse)
        # the system's words for the errno (write_atomic's message also names the caller and the path)
        parser.error(f"{out_flag} {out}: cannot write the file: {os.strerror(e.errno) if e.errno else e}")
    except Exception as e:  # anything else the export raised (e.g. from the model's code): no traceback
        return _fail(f"{out_flag} {out}: the export failed: {type(e).__name__}: {_first_line(e)}")
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: B036 - the model's code raising something that is not an Exception
        parser.error(f"--model {args.model}: the export ran the model's code: {_what(e)}")
    return 0


def _check_output(parser, flag: str, path: str) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"{flag} {path}: is a directory; give the path of the file to write")
    if os.path.exists(path) and not os.path.isfile(path):
        # the file is replaced by a rename: a device (/dev/null) or a FIFO would be replaced by a file
        mode = os.stat(path).st_mode
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        parser.error(f"{flag} {path}: is {kind}; the output must be a regular file (or a new path)")
    if not os.path.isdir(directory):
        parser.error(f"{flag} {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        parser.error(f"{flag} {path}: cannot write to the directory {directory} (permission denied)")


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: the same inode when both exist (hard links, symlinks), else
    the same resolved path."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _check_distinct(parser, out_flag: str, out: str, in_what: str, in_path: str) -> None:
    if _same_file(out, in_path):
        parser.error(f"{out_flag} {out}: is the same file as {in_what} {in_path}; writing it would destroy an input. "
                     f"Give another output path")


def _parse_shape(parser, text: str) -> tuple:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        parser.error(f"--input-shape must be positive integers separated by commas (e.g. 64 or 2,8,8), got {text!r}")
    from .chip import MAX_FEATURES

    if len(shape) > MAX_INPUT_RANK:
        parser.error(f"--input-shape {text}: {len(shape)} dimensions, beyond the limit of {MAX_INPUT_RANK}")
    if math.prod(shape) > MAX_FEATURES:
        parser.error(f"--input-shape {text}: {math.prod(shape)} features per sample and time step, beyond the limit of "
                     f"{MAX_FEATURES}")
    return shape


def _load_factory(parser, spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        parser.error(f"--model must be pkg.module:factory, got {spec!r}")
    module = _run_user_code(parser, f"--model {spec}: cannot import {module_name}", importlib.import_module,
                            module_name)

    def lookup():
        factory = module
        for part in attr.split("."):
            factory = getattr(factory, part, None)
            if factory is None:
                return None
        return factory

    factory = _run_user_code(parser, f"--model {spec}: looking up {attr}", lookup)
    if factory is None:
        parser.error(f"--model {spec}: {module_name} has no attribute {attr!r}")
    if not callable(factory):
        parser.error(f"--model {spec}: {attr} is not callable")
    return module, factory
