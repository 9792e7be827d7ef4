"""Test set-up: on a machine without CUDA the Triton kernels run under the interpreter.

TRITON_INTERPRET must be set before triton decorates the kernels (at import of spiketriton), so it is
set here, before any test module imports the package. With CUDA the kernels compile for the GPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    return DEVICE


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
