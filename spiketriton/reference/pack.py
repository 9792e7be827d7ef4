"""Reference bit packing (the layout of docs/spec/packed-spikes.md): bits along the last dimension, LSB first; element
``8*k + i`` is bit ``i`` of byte ``k``; the last dimension is zero-padded to a multiple of 8."""

from __future__ import annotations

import torch

_SHIFTS = {}


def _shifts(device) -> torch.Tensor:
    key = str(device)
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.arange(8, dtype=torch.uint8, device=device)
    return _SHIFTS[key]


def pack_bits(s: torch.Tensor) -> torch.Tensor:
    """0/1 (or bool) tensor ``[..., K]`` -> uint8 ``[..., ceil(K/8)]``."""
    K = s.shape[-1]
    pad = (-K) % 8
    b = (s != 0).to(torch.uint8)
    if pad:
        b = torch.nn.functional.pad(b, (0, pad))
    b = b.view(*b.shape[:-1], -1, 8) << _shifts(s.device)
    return b.sum(-1, dtype=torch.uint8)


def unpack_bits(p: torch.Tensor, K: int, dtype=torch.float32) -> torch.Tensor:
    """uint8 ``[..., ceil(K/8)]`` -> 0/1 tensor ``[..., K]`` of ``dtype``."""
    bits = (p.unsqueeze(-1) >> _shifts(p.device)) & 1
    return bits.reshape(*p.shape[:-1], -1)[..., :K].to(dtype)
