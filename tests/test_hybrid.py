"""Hybrid Units: values of every unit on hand-checkable inputs, Poisson statistics and
reproducibility, window edge cases, gradients (finite differences on the smooth parts), learnable
units learning, bad input, and the hybrid digits example with quantization."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from spiketriton import hybrid as H


def test_rate_code_by_hand():
    s = H.A2SRate(8)(torch.tensor([0.25, 0.0, 1.0, 0.5]))
    assert s.shape == (8, 4)
    assert s[:, 0].tolist() == [0, 0, 0, 1, 0, 0, 0, 1]  # 0.25 over T = 8: exactly 2 spikes
    assert s[:, 1].sum() == 0 and s[:, 2].sum() == 8 and s[:, 3].tolist() == [0, 1] * 4
    v = torch.tensor([i / 10 for i in range(11)])
    assert H.A2SRate(10)(v).sum(0).tolist() == list(range(11))  # float32 0.7 still gives 7 spikes
    r = torch.rand(1000)
    assert torch.equal(H.A2SRate(16)(r).sum(0), torch.floor(r * 16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_rate_and_latency_codes_in_other_dtypes(dtype):
    # counts are floor(v T) of the value as stored in that dtype, spikes stay 0/1 at any T
    v = torch.tensor([0.24, 5e-4, 1.0, 0.7, 3e-4]).to(dtype)
    for T in (8, 300, 1000):
        s = H.A2SRate(T)(v)
        assert set(s.unique().tolist()) <= {0.0, 1.0}
        # the documented rule: a value within half a unit of its dtype's rounding of k/T counts as k/T
        eps = torch.finfo(dtype).eps
        want = [k if abs(x * T - k) <= T * abs(x) * eps / 2 + 1e-9 else math.floor(x * T)
                for x, k in ((x, round(x * T)) for x in v.double().tolist())]
        assert s.double().sum(0).tolist() == want, (T, want)
    # the dtype's rounding of every k/T gives k spikes, for a T the dtype resolves (bf16's 8 significant
    # bits cannot tell 153/300 from 154/300: both round to 0.51171875)
    T = 64 if dtype == torch.bfloat16 else 300
    exact = torch.tensor([k / T for k in range(T + 1)], dtype=torch.float64).to(dtype)
    assert torch.equal(H.A2SRate(T)(exact).double().sum(0), torch.arange(T + 1, dtype=torch.float64))
    assert H.A2SRate(8)(torch.tensor([0.24], dtype=torch.bfloat16)).sum() == 1  # bf16 0.2402: floor(1.92)
    # latency: the first t with v >= 1 - t/(T-1), also exactly on thresholds
    for T in (2, 7, 33):
        ks = torch.arange(T)
        v = (1 - ks.double() / (T - 1)).to(dtype)
        got = H.A2SLatency(T)(v).argmax(0)
        assert torch.equal(got, ks), (T, got)  # the dtype's rounding of threshold k fires at k
    assert H.A2SRate(4)(torch.empty(0, dtype=dtype)).shape == (4, 0)


def test_poisson_small_rates_in_half_precision():
    g = torch.Generator().manual_seed(0)
    for dtype, v in ((torch.bfloat16, 0.001), (torch.float16, 1e-4)):
        rate = H.A2SPoisson(200000, g)(torch.tensor([v], dtype=dtype)).float().mean().item()
        vv = float(torch.tensor(v, dtype=dtype))
        assert abs(rate - vv) <= 5 * (vv / 200000) ** 0.5, (dtype, rate, vv)


def test_rate_code_straight_through_gradient():
    v = torch.tensor([0.3, 0.6], requires_grad=True)
    H.A2SRate(5)(v).sum().backward()
    assert v.grad.tolist() == [5.0, 5.0]


def test_poisson_statistics_and_reproducibility():
    v = torch.tensor([0.1, 0.5, 0.9, 0.0, 1.0])
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a, b = H.A2SPoisson(4000, g1)(v), H.A2SPoisson(4000)(v, generator=g2)
    assert torch.equal(a, b)
    rate = a.mean(0)
    sigma = torch.sqrt(v * (1 - v) / 4000)
    assert ((rate - v).abs() <= 4 * sigma + 1e-9).all(), (rate, v)
    assert rate[3] == 0 and rate[4] == 1
    assert not torch.equal(H.A2SPoisson(100, torch.Generator().manual_seed(1))(v),
                           H.A2SPoisson(100, torch.Generator().manual_seed(2))(v))


def test_latency_code():
    v = torch.tensor([1.0, 0.0, 0.5, 0.6, 0.74])
    s = H.A2SLatency(5)(v)
    assert s.sum(0).tolist() == [1, 1, 1, 1, 1]  # exactly one spike each
    assert s.argmax(0).tolist() == [0, 4, 2, 2, 2]  # first t with v >= 1 - t/4
    v2 = v.clone().requires_grad_()
    (H.A2SLatency(5)(v2) * torch.arange(5.0).unsqueeze(1)).sum().backward()  # d(first-spike time)/dv
    assert torch.isfinite(v2.grad).all() and (v2.grad <= 0).all()  # larger values fire earlier


def test_windows():
    s = torch.arange(12.0).reshape(12, 1)
    assert H.S2AGlobalRate()(s).item() == pytest.approx(5.5)
    assert H.S2AWindowRate(4)(s).flatten().tolist() == [1.5, 5.5, 9.5]
    assert H.S2AWindowRate(4, stride=2)(s).flatten().tolist() == [1.5, 3.5, 5.5, 7.5, 9.5]
    assert H.S2AWindowRate(4)(torch.ones(8, 2, 3)).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="T = 10 is not tiled by windows of 4 steps every 4"):
        H.S2AWindowRate(4)(torch.ones(10, 2))
    with pytest.raises(ValueError, match="T = 3 is not tiled"):
        H.S2AWindowRate(4)(torch.ones(3, 2))
    assert H.RepeatWindow(3)(torch.tensor([[1.0, 2.0]])).shape == (3, 1, 2)


def test_generic_unit_composes():
    unit = H.HybridUnit(window=H.SplitWindow(2), temporal_filter=H.TemporalFilter(2, kernel=[1.0, -1.0]),
                        nonlinearity=torch.relu)
    x = torch.tensor([[1.0], [3.0], [5.0], [2.0]])
    assert unit(x).flatten().tolist() == [0.0, 3.0]  # relu(1 - 3), relu(5 - 2)
    assert not unit.emits_spikes
    a2s = H.HybridUnit(window=H.RepeatWindow(4), discretize=lambda u: (u > 0.5).float())
    assert a2s.emits_spikes and a2s(torch.tensor([0.7, 0.2])).sum(0).tolist() == [4.0, 0.0]


def test_smooth_parts_match_finite_differences():
    f = H.S2ALearnable(8, window_size=4, nonlinearity=torch.tanh).double()
    x = torch.rand(8, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,))
    filt = H.TemporalFilter(3, learnable=True, bias=True).double()
    xw = torch.rand(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: filt(t), (xw,))


def test_learnable_units_learn():
    torch.manual_seed(0)
    # S2ALearnable recovers a temporal kernel that weights late spikes more
    target_k = torch.linspace(0, 1, 8)
    f = H.S2ALearnable(8, bias=False)
    opt = torch.optim.Adam(f.parameters(), 0.05)
    first = None
    for step in range(200):
        s = (torch.rand(8, 32, 4) < 0.5).float()
        loss = ((f(s) - (s * target_k[:, None, None]).sum(0)) ** 2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 20
    # A2SLearnable learns to emit many spikes for one class of values and few for the other
    u = H.A2SLearnable(8, backend="torch")
    opt = torch.optim.Adam(u.parameters(), 0.05)
    v = torch.rand(256)
    target = (v > 0.5).float() * 6  # spike counts
    losses = []
    for step in range(150):
        loss = ((u(v).sum(0) - target) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert min(losses[-10:]) < losses[0] / 2  # measured: 2.56 -> 0.82


@pytest.mark.parametrize("cls", [H.A2SRate, H.A2SPoisson, H.A2SLatency])
def test_rate_inputs_must_be_rates(cls):
    for bad, msg in [(torch.tensor([0.5, -0.1]), "values in \\[-0.1"), (torch.tensor([0.5, 1.5]), "1.5"),
                     (torch.tensor([float("nan")]), "inf or NaN")]:
        with pytest.raises(ValueError, match=msg):
            cls(4)(bad)
    with pytest.raises(TypeError, match="floating tensor"):
        cls(4)(torch.tensor([1, 0]))


@pytest.mark.parametrize("T", [0, -3, 2.5])
def test_time_steps_must_be_positive(T):
    for cls in (H.A2SRate, H.A2SPoisson, H.A2SLatency, H.A2SLearnable, H.S2ALearnable, H.RepeatWindow):
        with pytest.raises(ValueError, match="must be an integer > 0"):
            cls(T)
    with pytest.raises(ValueError, match="must be an integer > 0"):
        H.S2AWindowRate(T)
    if T == 0:
        with pytest.raises(ValueError, match=r"window_size: T \(time steps\) must be an integer > 0"):
            H.S2ALearnable(8, window_size=0)


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"at least 2 dimensions \(\[T, B, \.\.\.\] time first\)"):
        H.S2AGlobalRate()(torch.ones(5))
    with pytest.raises(ValueError, match="at least 1 dimensions"):
        H.A2SRate(4)(torch.tensor(0.5))
    with pytest.raises(ValueError, match="built for T = 8, got a sequence of 6 steps"):  # noqa: E501
        H.S2ALearnable(8)(torch.ones(6, 2))


def _example():
    path = Path(__file__).resolve().parents[1] / "examples" / "hybrid_digits.py"
    spec = importlib.util.spec_from_file_location("hybrid_digits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_hybrid_example_trains_and_quantizes(capsys):
    pytest.importorskip("sklearn")
    from spiketriton import quant

    r = _example().main(["--epochs", "15", "--qat-epochs", "3", "--backend", "torch"])
    assert r["float"] >= 0.90, r  # measured 0.950
    assert r["qat"] >= r["float"] - 0.02, r  # measured 0.950 (PTQ 0.953)
    q = r["qmodel"]
    assert q.net.snn[1].mode == quant.QUANTIZED and isinstance(q.net.snn[1], quant.QLIF)
    assert not q.net.snn[0].is_encoder  # fed by the A2S unit's spikes
    assert q.net.front[0].is_encoder and q.net.head.is_encoder
    assert "QAT int8" in capsys.readouterr().out
    assert math.isfinite(r["ptq"])
