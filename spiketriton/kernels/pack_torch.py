"""Bit packing with PyTorch ops for the CPU path: 8 spikes per byte along the last dimension,
LSB first (docs/spec/packed-spikes.md). Whole 64-bit words are packed with one multiply: for a little-endian word
holding eight 0/1 bytes, ``(w * 0x0102040810204080) >> 56`` is the packed byte (checked for all 256
patterns in tests/test_pack_torch.py). On a 2-core CPU this is ~6x faster than the shift-and-sum of
``reference/pack.py`` ([16, 32, 4096] spikes: 0.36 ms vs 3.3 ms).
"""

from __future__ import annotations

import sys

import torch

from ..reference import pack as ref

_LITTLE = sys.byteorder == "little"
_PACK_MAGIC = 0x0102040810204080
_SPREAD = 0x0101010101010101
_BIT_OF_BYTE = 0x8040201008040201 - (1 << 64)  # as a signed int64
_LOW7 = 0x7F7F7F7F7F7F7F7F


def pack_bits(s: torch.Tensor, binary: bool = False) -> torch.Tensor:
    """0/1 or bool ``[..., K]`` -> uint8 ``[..., ceil(K/8)]`` (nonzero packs as 1). ``binary=True``
    promises the values are exactly 0 or 1 and skips the comparison."""
    if not _LITTLE:  # pragma: no cover - no big-endian CI
        return ref.pack_bits(s)
    K = s.shape[-1]
    if s.numel() == 0:
        return torch.zeros(tuple(s.shape[:-1]) + ((K + 7) // 8,), dtype=torch.uint8, device=s.device)
    b = s.to(torch.uint8) if (binary or s.dtype == torch.bool) else (s != 0).to(torch.uint8)
    pad = (-K) % 8
    if pad:
        b = torch.nn.functional.pad(b, (0, pad))
    w = b.contiguous().view(torch.int64)
    return ((w * _PACK_MAGIC) >> 56).to(torch.uint8)


def unpack_bits(p: torch.Tensor, K: int, dtype=torch.bool) -> torch.Tensor:
    """uint8 ``[..., ceil(K/8)]`` -> ``[..., K]`` of ``dtype`` (bool by default).

    Each byte is copied to all 8 bytes of a word, byte i keeps bit i, and adding 0x7F to every byte
    (no carries: at most 0x80 + 0x7F) moves "nonzero" to bit 7, shifted down to 0/1.
    """
    if not _LITTLE:  # pragma: no cover
        return ref.unpack_bits(p, K, dtype)
    if p.numel() == 0:
        return torch.zeros(tuple(p.shape[:-1]) + (K,), dtype=dtype, device=p.device)
    w = (p.to(torch.int64) * _SPREAD) & _BIT_OF_BYTE
    w = ((w + _LOW7) >> 7) & _SPREAD
    out = w.unsqueeze(-1).view(torch.uint8).view(*p.shape[:-1], p.shape[-1] * 8)[..., :K]
    return out.to(dtype)
