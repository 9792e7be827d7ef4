"""AMP: under ``torch.autocast`` (bf16/fp16) the layers run in the autocast dtype with fp32 state.

- A neuron runs in its input's dtype, like every elementwise op under autocast; the layers that
  autocast casts (nn.Linear, SpikeLinear) hand it the autocast dtype, so in a model every layer runs in
  it. The state (v, v_th_adpt) stays fp32 and the forward computes in fp32 from the upcast input, so
  spikes and state equal an fp32 run on the same (rounded) input exactly; gradients differ by the
  half-precision H kept for backward and the half-precision grad_x.
- SpikeLinear / spike_matmul: output in the autocast dtype, accumulated in fp32 from the weight rounded
  to it (one rounding of the exact sum); weight/bias gradients reach the fp32 parameters in fp32.

Tolerances are relative errors ``||got - want|| / (||want|| + sqrt(n))`` (tests/helpers.py), set
~3-5x above the worst case measured over 4 seeds, both backends, CPU (2026-11-22); the Triton
interpreter truncates fp32 -> bf16 where compiled Triton rounds, which roughly doubles its bf16 error.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spiketriton as st
from helpers import rel_err

BACKENDS = ["triton", "torch"]
DTYPES = [torch.bfloat16, torch.float16]
IDS = {torch.bfloat16: "bf16", torch.float16: "fp16"}

# neuron gradients vs fp32 on the same input. Measured worst: grad of the input current
# bf16 2.8e-3 (triton) / 1.8e-3 (torch), fp16 2.2e-4; parameters (PLIF w, learnable leak, sums over
# every neuron-step) bf16 2.3e-2 / 8.9e-3, fp16 4.8e-4.
NEURON_X_RTOL = {torch.bfloat16: 1e-2, torch.float16: 1e-3}
NEURON_P_RTOL = {torch.bfloat16: 6e-2, torch.float16: 2e-3}
# SpikeLinear gradients vs the exact fp64 products. Measured worst: dW bf16 2.9e-3, fp16 2.2e-4;
# db bf16 2.3e-3, fp16 2.8e-4; dS bf16 7.8e-4, fp16 9.7e-5.
LINEAR_RTOL = {torch.bfloat16: 1e-2, torch.float16: 1e-3}
# a whole model (Linear -> LIF -> SpikeLinear -> PLIF) vs its fp32 twin: no spike flipped in the
# measured cases; parameter gradients bf16 8.8e-3, fp16 6.6e-4.
MODEL_RTOL = {torch.bfloat16: 3e-2, torch.float16: 3e-3}


def make(kind, backend):
    # ExtendedLIF with a smooth surrogate here: its default Rect window gives a different gradient
    # wherever half-precision rounding moves H across the window edge (README, tested elsewhere)
    return {
        "IF": lambda: st.IF(backend=backend),
        "LIF": lambda: st.LIF(tau=3.0, backend=backend),
        "LIF-soft": lambda: st.LIF(tau=2.0, v_reset=None, decay_input=False, backend=backend),
        "PLIF": lambda: st.PLIF(init_tau=2.5, backend=backend),
        "ExtendedLIF": lambda: st.ExtendedLIF(v_th0=0.8, v_leaky_alpha=0.9, v_leaky_beta=0.02, ref_len=1,
                                              v_th_alpha=0.9, v_th_incre=0.2, reset_mode="soft", v_l=-0.5,
                                              surrogate=st.surrogate.Sigmoid(), learnable_leak=True,
                                              backend=backend),
    }[kind]()


def _states(m):
    return [getattr(m, k) for k in m._state_names if getattr(m, k) is not None]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["IF", "LIF", "LIF-soft", "PLIF", "ExtendedLIF"])
def test_neuron_runs_in_autocast_dtype_with_fp32_state(kind, backend, dtype, device):
    for seed in range(2):
        torch.manual_seed(seed)
        lin = nn.Linear(8, 32).to(device)
        with torch.no_grad():
            lin.weight.mul_(2.0)
        n = make(kind, backend).to(device)
        n32 = copy.deepcopy(n)
        x = torch.randn(6, 3, 8, device=device)
        with torch.autocast(device, dtype=dtype):
            cur = lin(x)
            s1 = n(cur)
            s2 = n(cur)  # state carried into a second call
        assert cur.dtype == dtype and s1.dtype == dtype and s2.dtype == dtype
        assert all(t.dtype in (torch.float32, torch.int32) for t in _states(n))
        assert n.v.dtype == torch.float32
        # fp32 reference on the same (upcast) current: forward exactly equal
        c32 = cur.detach().float().requires_grad_()
        r1, r2 = n32(c32), n32(c32)
        assert torch.equal(s1.float(), r1) and torch.equal(s2.float(), r2)
        assert s1.sum() > 0
        for a, b in zip(_states(n), _states(n32)):
            assert torch.equal(a, b)
        cur.retain_grad()
        g1, g2 = torch.randn(s1.shape, device=device), torch.randn(s1.shape, device=device)
        ((s1.float() * g1).sum() + (s2.float() * g2).sum()).backward()
        ((r1 * g1).sum() + (r2 * g2).sum()).backward()
        assert cur.grad.dtype == dtype
        assert rel_err(cur.grad, c32.grad) <= NEURON_X_RTOL[dtype], rel_err(cur.grad, c32.grad)
        for (name, p), p32 in zip(n.named_parameters(), n32.parameters()):
            assert p.grad.dtype == torch.float32
            assert rel_err(p.grad, p32.grad) <= NEURON_P_RTOL[dtype], (name, rel_err(p.grad, p32.grad))


def test_neuron_keeps_an_fp32_input_in_fp32(device):
    """Autocast casts matmul-like ops only; a neuron fed fp32 runs in fp32, as torch's elementwise ops."""
    x = torch.randn(4, 2, 8, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        s = st.LIF()(x)
    assert s.dtype == torch.float32
    assert torch.equal(s, st.LIF()(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_spike_linear_under_autocast(backend, packed, dtype, device):
    eps = torch.finfo(dtype).eps
    for seed in range(2):
        torch.manual_seed(seed)
        lin = st.SpikeLinear(40, 24, backend=backend).to(device)
        s = (torch.rand(5, 3, 40, device=device) > 0.6).float().requires_grad_()
        inp = st.pack_spikes(s) if packed else s
        with torch.autocast(device, dtype=dtype):
            y = lin(inp)
            with torch.no_grad():
                y_inference = lin(inp)
        assert y.dtype == dtype
        assert torch.equal(y, y_inference)  # the inference path (no saved tensors) agrees
        # the exact sum of the rounded weights, rounded once (at most 1 ulp: measured 0.95 ulp with
        # the interpreter's truncation, 0.5 ulp on the PyTorch path)
        w = lin.weight.detach().to(dtype).double()
        b = lin.bias.detach().to(dtype).double()
        want = s.detach().double() @ w.T + b
        assert ((y.double() - want).abs() <= eps * want.abs() + 1e-30).all()
        g = torch.randn(y.shape, device=device)
        (y.float() * g).sum().backward()
        assert lin.weight.grad.dtype == torch.float32 and lin.bias.grad.dtype == torch.float32
        g2 = g.reshape(-1, 24).double()
        tol = LINEAR_RTOL[dtype]
        assert rel_err(lin.weight.grad, g2.T @ s.detach().reshape(-1, 40).double()) <= tol
        assert rel_err(lin.bias.grad, g2.sum(0)) <= tol
        assert rel_err(s.grad, g.double() @ w) <= tol


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("backend", BACKENDS)
def test_spike_linear_with_input_dropout_under_autocast(backend, dtype, device):
    """Training with a folded Dropout: still the autocast dtype, one rounding of the exact value
    (weights rounded to the autocast dtype, as autocast does), same draws as nn.Dropout."""
    eps = torch.finfo(dtype).eps
    p = 0.3
    lin = st.SpikeLinear(40, 24, backend=backend, input_dropout=p).to(device).train()
    s = (torch.rand(6, 40, device=device) > 0.5).float()
    torch.manual_seed(5)
    keep = torch.nn.functional.dropout(torch.ones_like(s), p, True) != 0
    torch.manual_seed(5)
    with torch.autocast(device, dtype=dtype):
        y = lin(s)
    assert y.dtype == dtype
    w = lin.weight.detach().to(dtype).double()
    b = lin.bias.detach().to(dtype).double()
    want = (s * keep).double() @ w.T / (1.0 - p) + b
    assert ((y.double() - want).abs() <= eps * want.abs() + 1e-30).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("backend", BACKENDS)
def test_model_under_autocast(backend, dtype, device):
    """Every layer of Linear -> LIF -> SpikeLinear -> PLIF runs in the autocast dtype, state in fp32;
    training gradients agree with the fp32 model."""
    for seed in range(2):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(12, 32), st.LIF(backend=backend), st.SpikeLinear(32, 16, backend=backend),
                            st.PLIF(backend=backend)).to(device)
        with torch.no_grad():  # both neuron layers fire
            net[0].weight.mul_(2.0)
            net[2].weight.mul_(3.0)
            net[2].bias.add_(0.6)
        ref = copy.deepcopy(net)
        x = torch.randn(8, 4, 12, device=device)
        dtypes = []
        for m in net:
            m.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
        with torch.autocast(device, dtype=dtype):
            y = net(x)
        assert dtypes == [dtype] * 4
        assert net[1].v.dtype == torch.float32 and net[3].v.dtype == torch.float32
        y32 = ref(x)
        assert y32.sum() > 0
        flipped = (y.float() != y32).float().mean().item()
        assert flipped <= 0.01, flipped
        g = torch.randn(y.shape, device=device)
        (y.float() * g).sum().backward()
        (y32 * g).sum().backward()
        for (name, p), p32 in zip(net.named_parameters(), ref.parameters()):
            assert p.grad.dtype == torch.float32
            assert rel_err(p.grad, p32.grad) <= MODEL_RTOL[dtype], (name, rel_err(p.grad, p32.grad))
