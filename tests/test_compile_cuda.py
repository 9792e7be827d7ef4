"""Every Triton kernel compiles for a real CUDA target (sm_80 and sm_90), without a GPU.

The interpreter that runs the kernels on CPU accepts code the compiler rejects (e.g. a loop-carried
value that changes dtype), so CPU-only CI also compiles them ahead of time. Runs in a subprocess
because the test session's TRITON_INTERPRET=1 replaces the compiled kernels.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_cuda.py")


@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_for_cuda(arch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--arch", str(arch)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    assert "compiled" in proc.stdout
