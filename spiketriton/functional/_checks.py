"""Argument checks shared by the functional ops, the neuron modules and the hybrid units.

Every check names the function or module (``op``), the argument, the bad value and what is expected.
Python-level checks (types, options) cost nothing on the device. :func:`finite_tensor` reads the
values of a (small) parameter tensor: free for a CPU tensor, one device sync for a CUDA one, and a
traced assert under ``torch.compile`` (as the hybrid units' rate check).
"""

from __future__ import annotations

import math

import torch

__all__ = ["finite", "check_bool", "check_backend", "finite_tensor", "check_generator", "check_dtype"]


def finite(value, name: str, op: str) -> float:
    """``value`` as a finite Python float. A bool, a string, a complex number or a tensor with more
    than one element is a TypeError (``float()`` would take ``True`` as 1 and ``"2"`` as 2)."""
    if isinstance(value, (bool, str, bytes, complex)) or (isinstance(value, torch.Tensor) and (
            value.numel() != 1 or value.is_complex() or value.dtype == torch.bool)):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    return value


def check_bool(value, name: str, op: str) -> bool:
    """A flag must be ``True`` or ``False`` (a string such as ``'no'`` is truthy: refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be True or False, got {value!r}")
    return value


def check_backend(backend, op: str) -> str:
    from ._backend import BACKENDS

    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_dtype(dtype, name: str, op: str) -> torch.dtype:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{op}: {name} must be a torch.dtype (e.g. torch.float32), got {dtype!r}")
    return dtype


def check_generator(generator, op: str):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{op}: generator must be a torch.Generator or None, got {generator!r}")
    return generator


def finite_tensor(t: torch.Tensor, name: str, op: str, device=None) -> torch.Tensor:
    """A floating parameter tensor with finite values (on ``device``, or on the CPU, when given).

    Reads the values: no cost for a CPU tensor, one device sync for a CUDA one; under
    ``torch.compile`` a traced assert instead (a device-side assert on CUDA)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating tensor (float32, float16, bfloat16 or float64), got {t.dtype}")
    if device is not None and t.device != device and t.device.type != "cpu":
        raise ValueError(f"{op}: {name} is on {t.device} but x_seq is on {device}; move them to one device")
    if t.is_meta or t.numel() == 0:
        return t
    if torch.compiler.is_compiling():
        torch._assert_async(torch.isfinite(t).all(), f"{op}: {name} has inf or NaN; expected finite values")
        return t
    if not bool(torch.isfinite(t.detach()).all()):
        bad = t.detach().flatten()[~torch.isfinite(t.detach().flatten())][0].item()
        raise ValueError(f"{op}: {name} must be finite, got {bad}")
    return t
