"""Odd arguments to the export entry points of the chip format and the shared tracer (issue 12): a
clear TypeError / ExportError naming the function, never a raw error from deepcopy, os.fspath or an
allocation."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton.export import ExportError, load_chip, save_chip
from spiketriton.export._graph import trace_steps

from helpers import calibrated


class HoldsALock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(4, 3), st.LIF()
        self.lock = threading.Lock()  # copy.deepcopy refuses it

    def forward(self, x):
        return self.lif(self.fc(x))


@pytest.mark.parametrize("path", [None, 3, ["x.chip"]])
def test_chip_paths_must_be_paths(path, tmp_path):
    with pytest.raises(TypeError, match=f"load_chip: path must be a str or os.PathLike, got {type(path).__name__}"):
        load_chip(path)
    x = torch.rand(2, 1, 4)
    q = calibrated(nn.Sequential(nn.Linear(4, 3), st.LIF()), x).quantize()
    with pytest.raises(TypeError, match=f"save_chip: path must be a str or os.PathLike, got {type(path).__name__}"):
        save_chip(q, path, x)


def test_trace_steps_checks_its_arguments():
    x = torch.rand(2, 1, 4)
    with pytest.raises(TypeError, match=r"to_nir: model must be a torch.nn.Module .* got function"):
        trace_steps(lambda t: t, x, "to_nir")
    with pytest.raises(TypeError, match=r"to_nir: sample_input must be a torch.Tensor \[T, B, \*features\], got list"):
        trace_steps(nn.Linear(4, 3), [[[0.0] * 4]], "to_nir")
    with pytest.raises(ValueError, match=r"to_nir: sample_input must be a sequence \[T, B, \*features\] .* got shape "
                                         r"\(1, 4\)"):
        trace_steps(nn.Linear(4, 3), torch.rand(1, 4), "to_nir")


def test_trace_steps_cannot_copy_the_model():
    with pytest.raises(ExportError, match=r"save_chip: cannot copy the model to trace it \(copy.deepcopy raised "
                                          r"TypeError: cannot pickle '_thread.lock' object\)"):
        trace_steps(HoldsALock(), torch.rand(2, 1, 4), "save_chip")


def test_trace_steps_input_too_large_to_allocate():
    # the canonical input [2, 3, *features] cannot even be sized: an ExportError, not torch's RuntimeError
    huge = torch.empty(1, 1, 1 << 60, device="meta")
    with pytest.raises(ExportError, match=r"to_nir: running the model on an input of shape \(2, 3, 1152921504606846976\)"
                                          r" failed \(RuntimeError: Storage size calculation overflowed"):
        trace_steps(nn.Sequential(nn.Linear(4, 3)), huge, "to_nir")
