"""The Triton pack/unpack kernels (kernels/pack.py) on every launch layout, bit for bit against the
reference packing (spiketriton/reference/pack.py): the flat view ``[1, M * K]`` when K is a multiple of
8 (several rows per program, programs ending inside a row), row tiles for K = 4 / 2 mod 8 and odd K,
M = 1, unaligned inputs (one element past a 16-byte boundary), and the smallest tiles of the grid rule."""

from __future__ import annotations

import pytest
import torch

from spiketriton.kernels import neuron as KN
from spiketriton.kernels import pack as PK
from spiketriton.reference import pack as PR

SHAPES = [(5, 16), (3, 7, 40), (9, 24), (4, 12), (6, 14), (5, 13), (1, 21), (3, 2, 7), (2, 1000), (3, 1001)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.bool, torch.uint8]


def _spikes(shape, dtype, seed, device, unaligned=False):
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(shape, generator=g) < 0.4).to(dtype).to(device)
    if unaligned:
        buf = torch.zeros(s.numel() + 1, dtype=dtype, device=device)
        buf[1:].copy_(s.flatten())
        s = buf[1:].view(shape)
        assert s.data_ptr() % 16 != 0
    return s


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("unaligned", [False, True], ids=["aligned", "unaligned"])
def test_pack_unpack_every_layout(shape, dtype, unaligned, device):
    s = _spikes(shape, dtype, sum(shape), device, unaligned)
    want = PR.pack_bits(s.cpu())
    p = PK.pack(s)
    assert p.dtype == torch.uint8 and torch.equal(p.cpu(), want)
    out_dtype = dtype if dtype.is_floating_point else torch.float32
    u = PK.unpack(p, shape[-1], out_dtype)
    assert torch.equal(u.cpu(), PR.unpack_bits(want, shape[-1], out_dtype))


@pytest.mark.parametrize("shape", [(7, 40), (5, 37), (3, 12)], ids=lambda s: "x".join(map(str, s)))
def test_smallest_tiles_many_programs(shape, monkeypatch, device):
    s = _spikes(shape, torch.float32, 1, device)
    want = PR.pack_bits(s.cpu())
    monkeypatch.setattr(KN, "_sm_count", lambda device: 10**6)
    p = PK.pack(s)
    assert torch.equal(p.cpu(), want)
    assert torch.equal(PK.unpack(p, shape[-1], torch.float32).cpu(), s.cpu())


def test_nonzero_packs_as_one(device):
    s = torch.tensor([[0.0, 2.0, -1.0, 0.0, float("inf"), -0.0, 0.5, 1.0, 3.0]], device=device)
    assert PK.pack(s).tolist() == [[0b11010110, 1]]
