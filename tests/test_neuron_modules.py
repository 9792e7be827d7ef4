"""Neuron modules: state carried across calls, reset, state_dict, gradients through carried state,
memory saved for backward, and the inference variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import functional as F

BACKENDS = ["triton", "torch"]


def make(kind, backend):
    return {
        "IF": lambda: st.IF(backend=backend),
        "LIF": lambda: st.LIF(tau=3.0, backend=backend),
        "LIF-soft": lambda: st.LIF(tau=2.0, v_reset=None, decay_input=False, backend=backend),
        "PLIF": lambda: st.PLIF(init_tau=2.5, backend=backend),
        "ExtendedLIF": lambda: st.ExtendedLIF(v_th0=0.8, v_leaky_alpha=0.9, v_leaky_beta=0.02, ref_len=1,
                                              v_th_alpha=0.9, v_th_incre=0.2, reset_mode="soft",
                                              learnable_leak=True, backend=backend),
    }[kind]()


KINDS = ["IF", "LIF", "LIF-soft", "PLIF", "ExtendedLIF"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_two_calls_equal_one_call(kind, backend, device):
    """State (v, adaptive threshold, refractory counter) carries into the next call, gradient included."""
    torch.manual_seed(0)
    x = (torch.randn(9, 3, 17, device=device) * 0.8 + 0.5)
    m1, m2 = make(kind, backend).to(device), make(kind, backend).to(device)
    xa = x.clone().requires_grad_()
    s_once = m1(xa)
    xb = x.clone().requires_grad_()
    s_split = torch.cat([m2(xb[:4]), m2(xb[4:])])
    assert torch.equal(s_once, s_split)
    torch.testing.assert_close(m1.v, m2.v, rtol=0, atol=1e-6)
    g = torch.randn_like(x)
    (s_once * g).sum().backward()
    (s_split * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    for (n, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("kind", KINDS)
def test_reset_and_state_dict(kind, device):
    m = make(kind, "auto").to(device)
    x = torch.rand(3, 2, 5, device=device) * 2
    first = m(x)
    assert m.v is not None and m.v.dtype == torch.float32 and m.v.shape == (2, 5)
    net = nn.Sequential(nn.Identity(), m)
    st.reset(net)
    assert m.v is None
    if isinstance(m, st.ExtendedLIF):
        assert m.v_th_adpt is None and m.ref_cnt is None
    assert torch.equal(m(x), first)  # same result from the initial state
    sd = m.state_dict()
    assert "v" not in sd
    if kind == "PLIF":
        assert set(sd) == {"w"}
        m2 = make(kind, "auto")
        m2.load_state_dict(sd)
        assert m2.tau == pytest.approx(2.5)


def test_batch_change_without_reset_is_an_error():
    m = st.LIF()
    m(torch.rand(2, 4, 8))
    with pytest.raises(ValueError, match=r"carried-in v has shape \(4, 8\).*reset"):
        m(torch.rand(2, 5, 8))
    m.reset()
    assert m(torch.rand(2, 5, 8)).shape == (2, 5, 8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_saved_bytes_per_neuron_step(backend, dtype, device):
    """Backward keeps H in the input dtype plus the spikes as bits: elsize + 1/8 bytes per neuron-step
    (plus O(neurons) for the learnable-parameter case)."""
    T, B, N = 6, 4, 64
    x = torch.randn(T, B, N, device=device, dtype=dtype, requires_grad=True)
    saved = {}

    def pack(t):
        if t is not x:  # the input belongs to the caller
            saved[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        s, v = F.lif(x, backend=backend)
    per_step = (sum(saved.values()) - 4) / (T * B * N)  # minus the 4-byte decay constant
    assert per_step == pytest.approx(x.element_size() + 1 / 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plif_half_keeps_h_in_fp32(backend, device):
    """A learnable decay needs (H - V)/k in backward: H is kept in fp32 (4 + 1/8 bytes per neuron-step)."""
    T, B, N = 4, 2, 32
    x = torch.randn(T, B, N, device=device, dtype=torch.bfloat16, requires_grad=True)
    m = st.PLIF(backend=backend).to(device)
    saved = {}

    def pack(t):
        if t is not x and t.numel() > 1:
            saved[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    assert sum(saved.values()) / (T * B * N) == pytest.approx(4 + 1 / 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_saves_nothing_and_matches(backend, device):
    x = torch.randn(5, 3, 21, device=device)
    m = st.PLIF(backend=backend).to(device)
    with torch.no_grad():
        s_inf = m(x)
    assert not s_inf.requires_grad and m.v.grad_fn is None
    m.reset()
    s_train = m(x)
    assert s_train.requires_grad
    assert torch.equal(s_inf, s_train)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_time_and_batch(backend, device):
    v0 = torch.full((2, 3), 0.25, device=device)
    s, v = F.lif(torch.zeros(0, 2, 3, device=device), v0, backend=backend)
    assert s.shape == (0, 2, 3) and torch.equal(v, v0)
    s, v = F.lif(torch.zeros(4, 0, 3, device=device, requires_grad=True), backend=backend)
    assert s.shape == (4, 0, 3) and v.shape == (0, 3)


def test_float64_runs_the_pytorch_path_in_float64():
    from spiketriton.functional.neuron import family_a_spec
    from spiketriton.reference import neuron_reference

    torch.manual_seed(1)
    m = st.LIF(tau=2.0).to(torch.float64)
    x = (torch.rand(6, 2, 5, dtype=torch.float64) * 2).requires_grad_()
    s = m(x)  # "auto" takes the PyTorch path for float64, which computes in float64
    assert s.dtype == torch.float64 and m.v.dtype == torch.float64
    g = torch.randn_like(x)
    (s * g).sum().backward()
    xr = x.detach().clone().requires_grad_()
    spec = family_a_spec("lif", v_threshold=1.0, v_reset=0.0, surrogate=None, detach_reset=False, decay_input=True)
    tr = neuron_reference(xr, None, None, None, torch.tensor([0.5], dtype=torch.float64), spec)
    (tr.spikes * g).sum().backward()
    assert torch.equal(s, tr.spikes)
    torch.testing.assert_close(m.v, tr.v, rtol=0, atol=1e-15)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-13, atol=1e-15)


def test_functional_twins_keep_no_state():
    x = torch.rand(3, 2, 4) * 2
    s1, v1 = F.lif(x)
    s2, v2 = F.lif(x)
    assert torch.equal(s1, s2) and torch.equal(v1, v2)
    s3, v3 = F.lif(x[1:], F.lif(x[:1])[1])
    assert torch.equal(torch.cat([F.lif(x[:1])[0], s3]), s1)
