"""Triton kernels and their plain launchers (no nn.Module, no autograd)."""

import os


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Triton decides between compiled and interpreted kernels when it decorates them, i.e. when this
# package is imported: what counts is the setting at import.
_INTERPRET_AT_IMPORT = _env_interpret()


def interpret_mode() -> bool:
    """True when the kernels run on the CPU through the Triton interpreter: TRITON_INTERPRET=1 was
    set before spiketriton was imported, and is still set."""
    return _INTERPRET_AT_IMPORT and _env_interpret()


def interpret_set_too_late() -> bool:
    return _env_interpret() and not _INTERPRET_AT_IMPORT
