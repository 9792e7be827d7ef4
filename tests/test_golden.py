"""Golden traces small enough to check by hand (exact binary fractions, so every backend must match
them exactly). The arithmetic is written out next to each expected value."""

from __future__ import annotations

import math

import pytest
import torch

from spiketriton import functional as F
from spiketriton.reference import neuron_reference

BACKENDS = ["triton", "torch", "reference"]


def seq(values, device):
    return torch.tensor(values, dtype=torch.float32, device=device).reshape(-1, 1, 1)


def lif_ref(x, **kw):
    """The autograd reference through the same spec construction as the public function."""
    from spiketriton.functional.neuron import family_a_spec

    tau = kw.pop("tau", None)
    spec = family_a_spec("lif", v_threshold=kw.get("v_threshold", 1.0), v_reset=kw.get("v_reset", 0.0),
                         surrogate=None, detach_reset=False, decay_input=kw.get("decay_input", True))
    k = torch.tensor([0.0 if tau is None else 1.0 / tau], device=x.device)
    tr = neuron_reference(x, None, None, None, k, spec)
    return tr.spikes, tr.v


@pytest.mark.parametrize("backend", BACKENDS)
def test_if_hard_reset_fires_at_equality(backend, device):
    # H: 0.5, 1.0 (>= 1: spike, V=0), 0.5, 1.0 (spike, V=0)
    x = seq([0.5, 0.5, 0.5, 0.5], device)
    if backend == "reference":
        s, v = lif_ref(x, decay_input=False)
    else:
        s, v = F.if_neuron(x, backend=backend)
    assert s.flatten().tolist() == [0, 1, 0, 1]
    assert v.item() == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_lif_hard_decay_input(backend, device):
    # tau = 2: H = V + (X - V)/2
    # t0: 0 + (1 - 0)/2 = 0.5      t1: 0.5 + (1 - 0.5)/2 = 0.75    t2: 0.75 + 0.125 = 0.875
    # t3: 0.875 + (3 - 0.875)/2 = 1.9375 -> spike, V = 0
    x = seq([1.0, 1.0, 1.0, 3.0], device)
    s, v = lif_ref(x, tau=2.0) if backend == "reference" else F.lif(x, tau=2.0, backend=backend)
    assert s.flatten().tolist() == [0, 0, 0, 1]
    assert v.item() == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_lif_soft_no_decay_input(backend, device):
    # tau = 2, soft reset, H = V - V/2 + X
    # t0: 1.25 -> spike, V = 1.25 - 1 = 0.25    t1: 0.25 - 0.125 + 0.625 = 0.75    t2: 0.75 - 0.375 + 0 = 0.375
    x = seq([1.25, 0.625, 0.0], device)
    if backend == "reference":
        s, v = lif_ref(x, tau=2.0, decay_input=False, v_reset=None)
    else:
        s, v = F.lif(x, tau=2.0, decay_input=False, v_reset=None, backend=backend)
    assert s.flatten().tolist() == [1, 0, 0]
    assert v.item() == 0.375


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_lif_one_step_gradient(backend, device):
    # T = 1, tau = 2, x = 1.5: H = 0.75 < 1, no spike. dS/dX = sg'(H - 1) * (1/tau) with the Sigmoid(4)
    # surrogate: s = sigmoid(4 * -0.25) = sigmoid(-1); sg' = 4 s (1 - s)
    x = seq([1.5], device).requires_grad_()
    s, v = F.lif(x, tau=2.0, backend=backend)
    s.sum().backward()
    sig = 1 / (1 + math.exp(1.0))
    assert x.grad.item() == pytest.approx(4 * sig * (1 - sig) * 0.5, rel=1e-6)
    assert v.item() == 0.75


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_extended_lif_refractory_and_adaptive_threshold(backend, device):
    # v_th0 = 1, ref_len = 2, a = 0.5 a + 0.5 s, hard reset to 0, no leak; x = 1.5 every step
    # t0: vth = 1,      gate open,  v' = 1.5 > 1 -> s, v = 0, a = 0.5,    ref = 2
    # t1: vth = 1.5,    gated,      v' = 0        ,    v = 0, a = 0.25,   ref = 1
    # t2: vth = 1.25,   gated,      v' = 0        ,    v = 0, a = 0.125,  ref = 0
    # t3: vth = 1.125,  gate open,  v' = 1.5 -> s,     v = 0, a = 0.5625, ref = 2
    # t4: vth = 1.5625, gated,      v' = 0        ,    v = 0, a = 0.28125, ref = 1
    x = seq([1.5] * 5, device)
    s, state = F.extended_lif(x, v_th0=1.0, ref_len=2, v_th_alpha=0.5, v_th_incre=0.5, backend=backend)
    assert s.flatten().tolist() == [1, 0, 0, 1, 0]
    assert state.v.item() == 0.0
    assert state.v_th_adpt.item() == 0.28125
    assert state.ref_cnt.item() == 1


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_extended_lif_leak_and_strict_threshold(backend, device):
    # v_th0 = 0.5, alpha = 0.5, beta = 0.25, x = 0.25, hard reset to 0 (then leak: 0.5*0 + 0.25)
    # t0: v' = 0.25          -> no,  v = 0.125 + 0.25 = 0.375
    # t1: v' = 0.625 > 0.5   -> s,   v = 0 * 0.5 + 0.25 = 0.25
    # t2: v' = 0.5, not > 0.5 -> no (strict), v = 0.25 + 0.25 = 0.5
    # t3: v' = 0.75          -> s,   v = 0.25
    x = seq([0.25] * 4, device)
    s, state = F.extended_lif(x, v_th0=0.5, v_leaky_alpha=0.5, v_leaky_beta=0.25, backend=backend)
    assert s.flatten().tolist() == [0, 1, 0, 1]
    assert state.v.item() == 0.25


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_extended_lif_soft_constant_and_floor(backend, device):
    # SOFT_CONSTANT: v'' = v' - dv on a spike; floor v_l = -0.5 applies after the leak (none here)
    # t0: v' = 1.5 > 1 -> s, v = 1.5 - 0.75 = 0.75     t1: v' = 0.75 - 2 = -1.25 -> floor -0.5
    # t2: v' = -0.5 + 1.75 = 1.25 -> s, v = 0.5
    x = seq([1.5, -2.0, 1.75], device)
    s, state = F.extended_lif(x, v_th0=1.0, reset_mode="soft_constant", dv=0.75, v_l=-0.5, backend=backend)
    assert s.flatten().tolist() == [1, 0, 1]
    assert state.v.item() == 0.5
