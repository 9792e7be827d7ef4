"""Readers of untrusted files refuse what is not a regular file before reading a byte: a FIFO (open
would block until a writer comes), a device such as /dev/zero (its size reads as 0, and reading never
ends), a directory. Each case runs under an alarm, so a hang fails the test instead of stalling CI."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import quant
from spiketriton.export import ChipFormatError, from_nir, load_chip

from helpers import calibrated

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(signal, "SIGALRM"),
                                reason="needs POSIX FIFOs and SIGALRM")


def _qmodel():
    return quant.prepare(nn.Sequential(nn.Linear(4, 3), st.LIF()))


READERS = {
    "load_chip": lambda p: load_chip(p),
    "load_quantized_model": lambda p: quant.load_quantized_model(p, _qmodel()),
    "from_nir": lambda p: from_nir(p),
}


@pytest.fixture
def hostile(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.chip"
    zero.symlink_to("/dev/zero")
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"FIFO": fifo, "character device": zero, "directory": folder}


def _alarm(signum, frame):
    raise TimeoutError("the reader hung on a non-regular file")


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("kind", ["FIFO", "character device", "directory"])
def test_non_regular_files_are_refused_at_once(reader, kind, hostile):
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    t0 = time.monotonic()
    try:
        with pytest.raises(ValueError, match=f"is a {kind}; expected a regular file"):
            READERS[reader](hostile[kind])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < 10


def test_load_chip_error_type_and_missing_file(hostile, tmp_path):
    with pytest.raises(ChipFormatError, match="load_chip: .*fifo is a FIFO"):
        load_chip(hostile["FIFO"])
    with pytest.raises(FileNotFoundError):
        load_chip(tmp_path / "nothing.chip")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        quant.load_quantized_model(tmp_path / "nothing.safetensors", _qmodel())
    with pytest.raises(ValueError, match="cannot read .* as a NIR file"):
        from_nir(tmp_path / "nothing.nir")


def test_a_symlink_to_a_regular_file_is_read(tmp_path):
    # the check is on what the path points to: a link to a real chip file still loads, bit for bit
    from spiketriton.export import save_chip

    torch.manual_seed(0)
    x = torch.rand(4, 2, 6) * 2
    q = calibrated(nn.Sequential(nn.Linear(6, 5), st.LIF(tau=2.0)), x)
    q.quantize()
    save_chip(q, tmp_path / "real.chip", x)
    (tmp_path / "link.chip").symlink_to(tmp_path / "real.chip")
    a, b = load_chip(tmp_path / "real.chip"), load_chip(tmp_path / "link.chip")
    xi = x.numpy()
    assert (a.run(xi) == b.run(xi)).all()
