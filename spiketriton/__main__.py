"""``python -m spiketriton <command>``: the command line. Commands: ``export`` (see
``python -m spiketriton export --help``)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

USAGE = ("usage: python -m spiketriton export (--chip OUT | --nir OUT) --model PKG.MODULE:FACTORY "
         "--weights FILE --input-shape F1,F2,...\n(python -m spiketriton export --help for details)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not argv or argv[0] != "export":
        print(USAGE, file=sys.stderr)
        print(f"python -m spiketriton: error: {'unknown command ' + repr(argv[0]) if argv else 'no command'}; "
              f"the commands are: export", file=sys.stderr)
        return 2
    from .export.cli import main as export_main

    return export_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
