"""Triton kernels and their plain launchers (no nn.Module, no autograd)."""

import os


def interpret_mode() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
