"""CPU benchmarks of the multi-step LIF neuron: spiketriton vs SpikingJelly 2.0 (pytest-benchmark).

    python -m pytest bench/test_neuron_cpu.py --benchmark-only -q

LIF tau=2, decay_input=True, v_threshold=1, v_reset=0, Sigmoid(alpha=4) surrogate, fp32,
x [T=16, B=32, N=4096]:

- ``train``: forward + backward with a fixed random upstream gradient (``torch.autograd.grad``);
- ``infer``: forward only under ``torch.no_grad()``.

Implementations: spiketriton's CPU path (``spiketriton.functional.lif(x, backend="torch")``, the fused
algorithm in torch ops), SpikingJelly 2.0's ``LIFNode(step_mode='m')`` (reset before every call), and
spiketriton's autograd reference (``spiketriton.reference.neuron_reference``) for context.
No timing assertions: the numbers are for reading (bench/README.md; bench/neuron_cpu.py writes them down).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark")
pytest.importorskip("spikingjelly")

from _neuron_cases import make_inputs, reference_runner, spikingjelly_runner, spiketriton_runner  # noqa: E402

SHAPE = (16, 32, 4096)  # T, B, N
# pedantic with warm-up rounds: pytest-benchmark's own calibration times the first (cold) call, which
# on a 2-core machine is 10-20x a warm one, and then settles on 5 rounds
TRAIN_ROUNDS, INFER_ROUNDS, WARMUP_ROUNDS = 30, 50, 3

RUNNERS = {
    "spiketriton": lambda: spiketriton_runner("lif", backend="torch"),
    "spikingjelly": lambda: spikingjelly_runner("lif"),
    "reference": lambda: reference_runner("lif"),
}


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(SHAPE, torch.float32)


@pytest.mark.parametrize("impl", list(RUNNERS))
def test_lif_train_fp32(benchmark, inputs, impl):
    """Forward + backward, fixed upstream gradient."""
    x0, g = inputs
    x = x0.clone().requires_grad_()
    run = RUNNERS[impl]()
    benchmark.group = "lif fwd+bwd fp32 T16 B32 N4096"
    benchmark.extra_info.update(impl=impl, shape=list(SHAPE), dtype="fp32", pass_="fwd+bwd")
    gx = benchmark.pedantic(run.train_step, args=(x, g), rounds=TRAIN_ROUNDS, warmup_rounds=WARMUP_ROUNDS)[0]
    assert gx.shape == x.shape  # ran; no timing assertion


@pytest.mark.parametrize("impl", list(RUNNERS))
def test_lif_infer_fp32(benchmark, inputs, impl):
    """Forward only, torch.no_grad()."""
    x, _ = inputs
    run = RUNNERS[impl]()
    benchmark.group = "lif infer fp32 T16 B32 N4096"
    benchmark.extra_info.update(impl=impl, shape=list(SHAPE), dtype="fp32", pass_="infer")
    s = benchmark.pedantic(run.infer, args=(x,), rounds=INFER_ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    assert s.shape == x.shape
