"""Backend choice shared by every functional op (docs/spec/neurons.md, "Execution paths": "auto" | "triton" | "torch")."""

from __future__ import annotations

import torch

from ..kernels import interpret_mode, interpret_set_too_late

BACKENDS = ("auto", "triton", "torch")


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - triton is a dependency where it installs
        return False
    return True


def use_triton(backend: str, *tensors: torch.Tensor, op: str) -> bool:
    """Resolve ``backend`` for tensors on one device; raise a clear error for an impossible request."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    device = tensors[0].device
    runnable = _triton_available() and (device.type == "cuda" or (interpret_mode() and device.type == "cpu"))
    if backend == "auto":
        return runnable
    if not runnable:
        if not _triton_available():
            why = "triton is not installed"
        elif interpret_set_too_late() and device.type == "cpu":
            why = ("TRITON_INTERPRET=1 was set after spiketriton was imported; Triton reads it when the "
                   "kernels are defined, so set it before the import")
        else:
            why = (f"the tensors are on {device} (Triton needs CUDA tensors, or CPU tensors with "
                   f"TRITON_INTERPRET=1 set before spiketriton is imported)")
        raise RuntimeError(f"{op}: backend='triton' cannot run here: {why}. Use backend='auto' or 'torch'.")
    return True
