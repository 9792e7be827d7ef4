"""CPU benchmarks of the spike matmul: ``spiketriton.spike_matmul`` / ``SpikeLinear`` vs ``torch.matmul`` /
``nn.Linear`` on the same 0/1 spikes as a dense tensor (pytest-benchmark).

    python -m pytest bench/test_spike_matmul_cpu.py --benchmark-only -q
    python -m pytest bench/test_spike_matmul_cpu.py --benchmark-only -q -k "fp32 and fwd"

SNNGrow-like layer sizes ``M x K x N`` = 32x512x512 and 32x1024x1024, firing rates 5, 10, 25, 50 %,
fp32 and bf16:

- ``fwd``: ``torch.matmul(S, W.T)`` vs ``spike_matmul(S, W)`` (S dense 0/1) vs ``spike_matmul(SpikeTensor, W)``
  (S packed 8 per byte beforehand), no bias, under ``torch.no_grad()``;
- ``train``: forward + backward, ``autograd.grad(layer(S), [S, W, b], dY)``, ``nn.Linear`` vs
  ``SpikeLinear`` (default ``check_binary=True``) vs ``SpikeLinear(check_binary=False)``.

On CPU ``spike_matmul`` takes the PyTorch path (BLAS on 0/1 values; packed spikes saved for backward), so
the firing rate should not matter; the cases show the overhead of the packing around the same BLAS call.
The ``extra_info`` of every case holds the dense-equivalent FLOPs and the bytes of the spike operand
(``bench/spike_matmul_cpu.py`` turns them into TFLOP/s and writes a table). No timing assertions.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from _matmul_cases import (  # noqa: E402
    CPU_SHAPES, FWD_IMPLS, RATES, TRAIN_IMPLS, forward_runner, make_grad, make_linear, make_spikes,
    make_weight, matmul_flops, shape_str, spike_bytes, train_runner,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# pedantic rounds with warm-up (pytest-benchmark's calibration would time the cold first call).
# bf16 training steps are slow on CPU in torch itself (its bf16 GEMM for dW = dY.T @ S: ~15 ms at
# 32x512x512, ~90 ms at 32x1024x1024 on 2 cores), so they get fewer rounds.
ROUNDS = {("fp32", "fwd"): 60, ("fp32", "train"): 40, ("bf16", "fwd"): 30, ("bf16", "train"): 8}
WARMUP_ROUNDS = 3

SHAPE_IDS = [shape_str(s) for s in CPU_SHAPES]
RATE_IDS = [f"rate{int(round(r * 100))}" for r in RATES]


def _info(benchmark, impl, shape, rate, dname, pass_):
    M, K, N = shape
    benchmark.group = f"spike_matmul {pass_} {dname} {shape_str(shape)} rate {rate:.0%}"
    benchmark.extra_info.update(
        impl=impl, M=M, K=K, N=N, rate=rate, dtype=dname, pass_=pass_,
        dense_equiv_flops=matmul_flops(M, K, N, "fwd" if pass_ == "fwd" else "fwd+bwd"),
        spike_bytes_packed=spike_bytes(M, K, "packed"), spike_bytes_dense=spike_bytes(M, K, DTYPES[dname]),
    )


@pytest.mark.parametrize("impl", FWD_IMPLS)
@pytest.mark.parametrize("rate", RATES, ids=RATE_IDS)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dname", list(DTYPES))
def test_fwd(benchmark, dname, shape, rate, impl):
    """Forward, no bias, torch.no_grad()."""
    M, K, N = shape
    dt = DTYPES[dname]
    s, w = make_spikes(M, K, rate, dt), make_weight(N, K, dt)
    fn = forward_runner(impl, s, w)
    _info(benchmark, impl, shape, rate, dname, "fwd")
    y = benchmark.pedantic(fn, rounds=ROUNDS[(dname, "fwd")], warmup_rounds=WARMUP_ROUNDS)
    assert y.shape == (M, N)  # ran; no timing assertion


@pytest.mark.parametrize("impl", TRAIN_IMPLS)
@pytest.mark.parametrize("rate", RATES, ids=RATE_IDS)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dname", list(DTYPES))
def test_train(benchmark, dname, shape, rate, impl):
    """Forward + backward with bias; gradients of S (dense dY @ W), W and b."""
    M, K, N = shape
    dt = DTYPES[dname]
    s = make_spikes(M, K, rate, dt)
    lin = make_linear(K, N, dt)
    g = make_grad(M, N, dt)
    fn = train_runner(impl, s, lin, g)
    _info(benchmark, impl, shape, rate, dname, "fwd+bwd")
    gs, gw, gb = benchmark.pedantic(fn, rounds=ROUNDS[(dname, "train")], warmup_rounds=WARMUP_ROUNDS)
    assert gs.shape == (M, K) and gw.shape == (N, K) and gb.shape == (N,)
