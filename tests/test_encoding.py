"""spiketriton.encoding: encoders and decoders (values, statistics, gradients, packing, errors)."""

import doctest
import math

import pytest
import torch

import spiketriton as st
from spiketriton import encoding as E
from spiketriton import surrogate as sg


def test_module_docstring_examples_run():
    assert doctest.testmod(E, raise_on_error=False).failed == 0


# --------------------------------------------------------------------------------------------- #
# rate
# --------------------------------------------------------------------------------------------- #


def test_rate_spreads_floor_xT_spikes_evenly():
    s = E.rate(torch.tensor([0.25]), 8)
    assert s[:, 0].nonzero().flatten().tolist() == [3, 7]
    x = torch.rand(500, generator=torch.Generator().manual_seed(0))
    s = E.rate(x, 16)
    assert torch.equal(s.sum(0), torch.floor(x.double() * 16).float())
    assert set(s.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rate_counts_a_rounded_multiple_of_1_over_T_as_that_multiple(dtype):
    # float32 0.7 is 0.69999999: 0.7 over T = 10 must still give 7 spikes
    for k in range(11):
        x = torch.tensor([k / 10], dtype=dtype)
        assert E.rate(x, 10).sum().item() == k


# --------------------------------------------------------------------------------------------- #
# Poisson
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("p", [0.02, 0.3, 0.9])
def test_poisson_counts_follow_the_binomial_distribution(p):
    T, n = 20, 20000
    g = torch.Generator().manual_seed(1234)
    counts = E.poisson(torch.full((n,), p), T, generator=g).sum(0).long()
    # chi-square of the histogram of counts against Binomial(T, p), bins with an expected count >= 20
    hist = torch.bincount(counts, minlength=T + 1).double()
    pmf = torch.tensor([math.comb(T, k) * p ** k * (1 - p) ** (T - k) for k in range(T + 1)], dtype=torch.float64)
    exp = pmf * n
    keep = exp >= 20
    obs_k, exp_k = hist[keep], exp[keep]
    rest_o, rest_e = hist[~keep].sum(), exp[~keep].sum()
    chi2 = ((obs_k - exp_k) ** 2 / exp_k).sum() + ((rest_o - rest_e) ** 2 / rest_e if rest_e > 0 else 0.0)
    dof = int(keep.sum()) + (1 if rest_e > 0 else 0) - 1
    # the 0.9999 quantile of chi-square(dof) is below dof + 6 sqrt(2 dof) + 10 for these dof
    assert chi2 < dof + 6 * math.sqrt(2 * dof) + 10, (chi2, dof)


def test_poisson_steps_are_independent():
    T, n, p = 2, 50000, 0.4
    s = E.poisson(torch.full((n,), p), T, generator=torch.Generator().manual_seed(7))
    both = (s[0] * s[1]).mean().item()
    # P(s0 = s1 = 1) = p^2 for independent steps; standard error sqrt(p^2 (1 - p^2) / n) ~ 0.002
    assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n)


def test_poisson_matches_snntorch_rate_statistics():
    snntorch = pytest.importorskip("snntorch")
    from snntorch import spikegen

    T, n = 25, 20000
    x = torch.linspace(0, 1, 11).repeat(n // 11 + 1)[:n]
    torch.manual_seed(3)
    theirs = spikegen.rate(x, num_steps=T)
    ours = E.poisson(x, T, generator=torch.Generator().manual_seed(3))
    assert theirs.shape == ours.shape
    for v in (0.0, 0.1, 0.5, 1.0):
        sel = (x - v).abs() < 1e-6
        m_theirs, m_ours = theirs[:, sel].mean().item(), ours[:, sel].mean().item()
        se = math.sqrt(max(v * (1 - v), 1e-12) / (T * int(sel.sum())))
        assert abs(m_ours - v) < 6 * se + 1e-12 and abs(m_theirs - v) < 6 * se + 1e-12


def test_poisson_is_reproducible_with_a_generator_and_per_call_generator_wins():
    x = torch.rand(3, 17, generator=torch.Generator().manual_seed(0))
    a = E.PoissonEncoder(9, generator=torch.Generator().manual_seed(5))(x)
    b = E.PoissonEncoder(9)(x, generator=torch.Generator().manual_seed(5))
    c = E.PoissonEncoder(9)(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_poisson_extremes_and_low_precision():
    assert E.poisson(torch.zeros(100), 5).sum() == 0
    assert E.poisson(torch.ones(100), 5).sum() == 500
    # fp16 input still draws fp32 uniforms: a small rate is not biased by coarse draws
    x = torch.full((200000,), 0.01, dtype=torch.float16)
    m = E.poisson(x, 1, generator=torch.Generator().manual_seed(0)).float().mean().item()
    assert abs(m - float(x[0])) < 6 * math.sqrt(0.01 / 200000)


# --------------------------------------------------------------------------------------------- #
# latency
# --------------------------------------------------------------------------------------------- #


def test_latency_linear_fires_once_at_the_first_threshold_crossing():
    x = torch.tensor([0.0, 0.25, 0.5, 0.74, 0.75, 1.0])
    s = E.latency(x, 5)  # thresholds 1, .75, .5, .25, 0
    assert torch.equal(s.sum(0), torch.ones(6))
    assert E.first_spike_time(s).tolist() == [4, 3, 2, 2, 1, 0]


def test_latency_log_thresholds_and_spike_times():
    T = 6
    thr = E.latency_thresholds(T, "log")
    t = torch.arange(T, dtype=torch.float64)
    want = (torch.exp(T - 1 - t) - 1) / (math.exp(T - 1) - 1)
    assert torch.allclose(thr, want, rtol=1e-12, atol=0)
    x = thr.float()
    # a value on a threshold (to its dtype's rounding) fires at that threshold's step
    assert E.first_spike_time(E.latency(x, T, mode="log")).tolist() == list(range(T))
    # the log code separates small values that the linear code puts at the last steps
    small = torch.tensor([0.002, 0.02, 0.2])
    assert E.first_spike_time(E.latency(small, T, mode="log")).tolist() == [5, 4, 2]  # thr .0117, .1295
    assert E.first_spike_time(E.latency(small, T)).tolist() == [5, 5, 4]  # thr .2


def test_latency_log_with_many_steps_does_not_overflow():
    thr = E.latency_thresholds(3000, "log")
    assert torch.isfinite(thr).all() and (thr[:-1] > 0).all() and thr[-1] == 0
    assert (thr[1:] <= thr[:-1]).all()
    assert E.first_spike_time(E.latency(torch.tensor([0.0]), 3000, mode="log")).item() == 2999


def test_latency_gradient_is_the_surrogate_of_each_crossing():
    T = 5
    x = torch.tensor([0.1, 0.6, 0.9], dtype=torch.float64, requires_grad=True)
    sur = sg.Sigmoid(alpha=3.0)
    s = E.latency(x, T, surrogate=sur)
    w = torch.arange(1.0, T + 1, dtype=torch.float64).reshape(-1, 1)  # a weight per step
    (g,) = torch.autograd.grad((s * w).sum(), x)
    thr = E.latency_thresholds(T)
    d = sur.derivative(x.detach().unsqueeze(0) - thr.reshape(-1, 1))
    d[-1] = 0  # the last threshold is always crossed: no gradient
    # soft[t] = c[t] - c[t-1]: sum_t w[t] soft[t]' = sum_t (w[t] - w[t+1]) c[t]'
    dw = w[:-1] - w[1:]
    want = (dw * d[:-1]).sum(0)
    assert torch.allclose(g, want, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------- #
# direct, delta
# --------------------------------------------------------------------------------------------- #


def test_direct_repeats_without_copy_and_passes_gradient():
    x = torch.randn(2, 3, requires_grad=True)
    y = E.DirectEncoder(4)(x)
    assert y.shape == (4, 2, 3) and y.data_ptr() == x.data_ptr()
    y.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 4.0))


def test_delta_send_on_delta_with_polarity_channels():
    x = torch.tensor([0.0, 0.1, 0.2, 0.35, 0.3, 0.05, 0.06, 0.12]).reshape(-1, 1, 1)  # [T, B=1, F=1]
    s = E.delta(x, 0.1, on_off=True)
    assert s.shape == (8, 1, 2)
    assert s[:, 0, 0].tolist() == [0, 1, 1, 1, 0, 0, 0, 0]  # rises; .3 -> .05 -> .06: no rise from ref .05
    assert s[:, 0, 1].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]  # one fall .35 -> .05
    # the reference moves only on a spike: a slow drift fires once it adds up to the threshold
    drift = torch.arange(10, dtype=torch.float32).mul(0.04).reshape(-1, 1, 1)
    assert E.delta(drift, 0.1)[:, 0, 0].nonzero().flatten().tolist() == [3, 6, 9]


def test_delta_on_off_stacks_features_as_channels():
    x = torch.randn(6, 2, 3, 4, 4)
    s = E.DeltaEncoder(0.5, on_off=True)(x)
    assert s.shape == (6, 2, 6, 4, 4)
    # against a scalar reference, element by element: the reference moves on rises and on falls
    xs, on, off = x.reshape(6, -1), s[:, :, :3].reshape(6, -1), s[:, :, 3:].reshape(6, -1)
    for j in range(xs.shape[1]):
        ref = xs[0, j].item()
        for t in range(1, 6):
            d = xs[t, j].item() - ref
            assert on[t, j] == (d >= 0.5) and off[t, j] == (d <= -0.5)
            if abs(d) >= 0.5:
                ref = xs[t, j].item()
    assert on[0].sum() == 0 and off[0].sum() == 0


# --------------------------------------------------------------------------------------------- #
# packed output, gradients through it
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("enc", ["poisson", "rate", "latency"])
def test_packed_output_equals_packing_the_dense_spikes_and_keeps_the_gradient(enc):
    x = torch.rand(3, 13, generator=torch.Generator().manual_seed(0), requires_grad=True)
    kw = {"generator": torch.Generator().manual_seed(2)} if enc == "poisson" else {}
    dense = getattr(E, enc)(x, 6, **kw)
    kw = {"generator": torch.Generator().manual_seed(2)} if enc == "poisson" else {}
    packed = getattr(E, enc)(x, 6, packed=True, **kw)
    assert isinstance(packed, st.SpikeTensor)
    assert torch.equal(packed.unpack(), dense.detach())
    lin = st.SpikeLinear(13, 4, backend="torch")
    w = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(1))  # weights per step and output
    (g_packed,) = torch.autograd.grad((lin(packed) * w).sum(), x)
    (g_dense,) = torch.autograd.grad((lin(dense) * w).sum(), x)
    assert torch.allclose(g_packed, g_dense, rtol=1e-6, atol=1e-6) and g_dense.abs().sum() > 0


def test_straight_through_gradient_of_rate_codes():
    x = torch.rand(4, 5, requires_grad=True)
    for enc in (E.rate, E.poisson):
        (g,) = torch.autograd.grad(enc(x, 7).sum(), x)
        assert torch.equal(g, torch.full_like(x, 7.0))


# --------------------------------------------------------------------------------------------- #
# decoders
# --------------------------------------------------------------------------------------------- #


def test_decoders_values():
    s = torch.tensor([[[0.0, 1.0, 0.0]], [[1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]]])  # [T=4, B=1, 3]
    assert E.spike_count(s).tolist() == [[2.0, 2.0, 0.0]]
    assert E.firing_rate(s).tolist() == [[0.5, 0.5, 0.0]]
    assert E.first_spike_time(s).tolist() == [[1, 0, 4]]  # T where it never fires
    v = torch.tensor([[[0.1, -1.0]], [[0.7, -2.0]], [[0.3, -0.5]]])
    assert E.final_voltage(v).tolist() == [[pytest.approx(0.3), -0.5]]
    assert E.max_voltage(v).tolist() == [[pytest.approx(0.7), -0.5]]
    for mod, fn in ((E.SpikeCount(), E.spike_count), (E.FiringRate(), E.firing_rate),
                    (E.FirstSpikeTime(), E.first_spike_time), (E.FinalVoltage(), E.final_voltage),
                    (E.MaxVoltage(), E.max_voltage), (E.TimeSoftmax(), E.time_softmax)):
        x = v if "oltage" in type(mod).__name__ else s
        assert torch.equal(mod(x), fn(x))


def test_decoders_read_packed_spikes_with_gradient():
    s = (torch.rand(5, 2, 11, generator=torch.Generator().manual_seed(0)) < 0.4).float().requires_grad_()
    p = st.pack_spikes(s)
    assert torch.equal(E.spike_count(p), s.detach().sum(0))
    assert torch.equal(E.first_spike_time(p), E.first_spike_time(s))
    (g,) = torch.autograd.grad(E.firing_rate(p).sum(), s)
    assert torch.allclose(g, torch.full_like(s, 1 / 5))


def test_time_softmax_prefers_earlier_and_more_spikes():
    s = torch.zeros(6, 1, 3)
    s[0, 0, 0] = 1  # early
    s[4, 0, 1] = 1  # late
    p = E.time_softmax(s)
    assert torch.allclose(p.sum(-1), torch.ones(1)) and p[0, 0] > p[0, 1] > p[0, 2]
    w = torch.exp(-torch.arange(6.0) / 6)
    assert torch.allclose(p, torch.softmax(torch.tensor([[w[0], w[4], 0.0]]), -1))
    sr = s.clone().requires_grad_()
    (g,) = torch.autograd.grad(E.time_softmax(sr, tau=2.0)[0, 0], sr)
    assert g[0, 0, 0] > g[5, 0, 0] > 0  # an earlier spike of the class moves its probability more


# --------------------------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("call, err, match", [
    (lambda: E.RateEncoder(0), ValueError, "T .time steps. must be an integer > 0"),
    (lambda: E.PoissonEncoder(True), ValueError, "got True"),
    (lambda: E.PoissonEncoder(4, packed="no"), TypeError, "packed must be True or False"),
    (lambda: E.PoissonEncoder(4, generator=1), TypeError, "torch.Generator"),
    (lambda: E.LatencyEncoder(4, mode="exp"), ValueError, r"mode must be one of \('linear', 'log'\)"),
    (lambda: E.rate(torch.tensor([1.5]), 4), ValueError, r"values in \[1.5, 1.5\]; a rate code needs \[0, 1\]"),
    (lambda: E.poisson(torch.tensor([float("nan")]), 4), ValueError, "inf or NaN"),
    (lambda: E.latency(torch.tensor([-0.1]), 4), ValueError, "needs \\[0, 1\\]"),
    (lambda: E.rate(torch.tensor([1, 0]), 4), TypeError, "floating tensor, got torch.int64"),
    (lambda: E.poisson([0.5], 4), TypeError, "got list"),
    (lambda: E.rate(torch.tensor(0.5), 4), ValueError, "at least 1 dimensions"),
    (lambda: E.delta(torch.ones(4), 0.1), ValueError, "at least 2 dimensions"),
    (lambda: E.delta(torch.ones(4, 2), 0.1, on_off=True), ValueError, "needs a feature dimension"),
    (lambda: E.delta(torch.ones(4, 2, 3), 0.0), ValueError, "threshold must be a finite number > 0"),
    (lambda: E.delta(torch.ones(4, 2, 3), "0.1"), TypeError, "threshold must be a number"),
    (lambda: E.delta(torch.full((3, 1, 1), float("inf")), 0.1), ValueError, "inf or NaN"),
    (lambda: E.spike_count(torch.ones(3)), ValueError, r"\[T, B, \.\.\.\] time first"),
    (lambda: E.firing_rate(torch.ones(0, 2)), ValueError, "T = 0 time steps"),
    (lambda: E.time_softmax(torch.ones(3, 2), tau=-1.0), ValueError, "tau must be a finite number > 0"),
    (lambda: E.TimeSoftmax(dim="x"), TypeError, "dim must be an int"),
])
def test_bad_arguments_say_what_was_wrong(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_generator_on_another_device_type_is_refused():
    with pytest.raises(ValueError, match="the generator is on cpu but the input is on meta"):
        E.poisson(torch.rand(3, device="meta"), 2, generator=torch.Generator())


def test_empty_batch_gives_empty_spikes():
    for enc in (E.poisson, E.rate, E.latency):
        assert enc(torch.empty(0, 4), 3).shape == (3, 0, 4)
    assert E.delta(torch.empty(3, 0, 4), 0.1).shape == (3, 0, 4)
