"""pytest configuration for the benchmarks in bench/ (run only when named explicitly:
``python -m pytest bench/test_neuron_cpu.py --benchmark-only -q``; the repository's testpaths is tests/)."""

from __future__ import annotations

import sys
from pathlib import Path

_BENCH = str(Path(__file__).resolve().parent)
if _BENCH not in sys.path:  # the shared cases module, whatever pytest's import mode
    sys.path.insert(0, _BENCH)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the library versions and the thread count with the saved benchmark results."""
    import torch
    from _common import versions

    machine_info["versions"] = versions()
    machine_info["torch_num_threads"] = torch.get_num_threads()
