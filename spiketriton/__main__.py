"""``python -m spiketriton <command>``: the command line.

    python -m spiketriton --version
    python -m spiketriton --help                 # the commands, with an example each
    python -m spiketriton demo --export-dir out  # train, quantize, export; keeps out/qnet.safetensors
    python -m spiketriton export --chip out/net.chip --model spiketriton.demo:build_net \\
        --weights out/qnet.safetensors --input-shape 64

Every example in :data:`COMMANDS` runs as written, in this order: the ``demo`` writes the
``qnet.safetensors`` that the ``export`` examples read (``tests/test_newcomer.py`` runs them).
``python -m spiketriton <command> --help`` gives a command's own options.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Optional, Sequence

from .export.cli import EXAMPLES

#: command -> (what it does, one example that runs as written after the ones above it)
COMMANDS = {
    "demo": ("train a spiking MLP on scikit-learn's 8x8 digits, quantize it to int8 and export it (the same as "
             "python -m spiketriton.demo); --export-dir keeps its files, qnet.safetensors among them", EXAMPLES[0]),
    "export": ("a saved quantized model (qmodel.save_quantized_model) to a chip file (--chip) or to NIR (--nir)",
               EXAMPLES[1]),
}


def usage() -> str:
    from . import __version__

    lines = [f"usage: python -m spiketriton [--version] [--help] <command> [options]", "",
             f"spiketriton {__version__}: spiking neural network layers for PyTorch on Triton kernels.", "",
             "commands (python -m spiketriton <command> --help for its options):"]
    for name, (what, example) in COMMANDS.items():
        lines += textwrap.wrap(what, width=100, initial_indent=f"  {name:8} ", subsequent_indent=" " * 11)
        lines.append(f"           example: {example}")
    lines += ["", "The examples run in this order: the demo writes out/qnet.safetensors, which export reads."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv and argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"spiketriton {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(usage(), file=sys.stderr)
        what = f"unknown command {argv[0]!r}" if argv else "no command"
        print(f"python -m spiketriton: error: {what}; the commands are: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if argv[0] == "demo":
        from .demo import main as demo_main

        demo_main(argv[1:], prog="python -m spiketriton demo")
        return 0
    from .export.cli import main as export_main

    return export_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
