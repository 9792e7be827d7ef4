"""Every implementation (Triton kernels, under the interpreter on CPU, and the PyTorch path, with and
without the fused CPU neuron) against the float64 autograd reference: spikes, final state and every
gradient (input, carried-in v, learnable parameters) for every option combination of both neuron
families."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from spiketriton import surrogate as sg
from spiketriton.spec import FAMILY_A, FAMILY_B, NeuronSpec

from helpers import Case, check_case, resolve_backend

# "torch" on the CPU runs the fused C neuron for fp32/fp64 (kernels/neuron_cpu.py); "torch-ops" the same
# PyTorch path with it switched off (the torch ops it replaces, and the fallback without a compiler)
BACKENDS = ["triton", "torch", "torch-ops"]

# [T, *S]: T = 1, odd and non-power-of-two feature counts, several feature dims, last dim < 8
SHAPES = [(1, 3, 5), (6, 2, 37), (4, 3, 2, 13), (5, 70), (3, 2, 3, 1)]


def spec_a(kind, hard=True, detach=False, surrogate=None, v_reset=-0.2):
    decay_input = kind != "lif_nodecay" and kind != "if"
    return NeuronSpec(
        family=FAMILY_A, surrogate=surrogate or sg.Sigmoid(), v_threshold=1.0,
        v_reset=v_reset if hard else 0.0, reset_mode=0 if hard else 1, detach_reset=detach,
        decay_input=decay_input, v_init=v_reset if hard else 0.0,
    )


def params_a(kind):
    # IF is k = 0 with the input added undecayed; LIF/PLIF have k = 1/tau
    return torch.tensor([0.0 if kind == "if" else 0.4])


def ids(**kw):
    return "-".join(f"{k}={v}" for k, v in kw.items())


# ------------------------------------------------------------------------------------------- #
# Family A: IF, LIF (decay_input True/False), PLIF (learnable k) x reset x detach
# ------------------------------------------------------------------------------------------- #

A_COMBOS = list(itertools.product(["if", "lif", "lif_nodecay"], [True, False], [False, True]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,hard,detach", A_COMBOS, ids=[ids(k=k, hard=h, detach=d) for k, h, d in A_COMBOS])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_family_a_fp32(backend, kind, hard, detach, shape, device):
    case = Case(spec_a(kind, hard, detach), params_a(kind), shape, learn=kind != "if")
    check_case(case, backend, device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("surrogate", [c() for c in sg.ALL], ids=lambda s: repr(s))
@pytest.mark.parametrize("hard", [True, False], ids=["hard", "soft"])
def test_every_surrogate(backend, surrogate, hard, device):
    # the kernels select the surrogate by id: each closed form must match the torch one
    case = Case(spec_a("lif", hard, surrogate=surrogate), params_a("lif"), (6, 4, 19))
    check_case(case, backend, device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind,hard", [("lif", True), ("lif", False), ("lif_nodecay", True), ("if", False)])
def test_family_a_half(backend, dtype, kind, hard, device):
    case = Case(spec_a(kind, hard), params_a(kind), (7, 4, 45), dtype=dtype, learn=kind != "if")
    check_case(case, backend, device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hard", [True, False], ids=["hard", "soft"])
def test_plif_slow_decay_gradient_in_half(backend, dtype, hard, device):
    # tau = 20 (k = 0.05): dH/dk = (H - V[t-1]) / k would multiply a half-precision H's rounding error
    # by 20; with a learnable decay H is kept in fp32, so the k gradient stays as accurate as the rest
    case = Case(spec_a("lif", hard), torch.tensor([0.05]), (8, 4, 45), dtype=dtype)
    check_case(case, backend, device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("carry_v", [True, False], ids=["v0", "no-v0"])
def test_noncontiguous_and_initial_state(backend, carry_v, device):
    case = Case(spec_a("lif", True), params_a("lif"), (5, 3, 11, 9), carry_v=carry_v, noncontig=True)
    check_case(case, backend, device)


# ------------------------------------------------------------------------------------------- #
# Family B: Extended LIF, every reset mode x detach x adaptive threshold x refractory x floor
# ------------------------------------------------------------------------------------------- #


def spec_b(mode, detach=False, adaptive=False, ref_len=0, v_l=None, surrogate=None):
    return NeuronSpec(
        family=FAMILY_B, surrogate=surrogate or sg.Rect(1.5), v_threshold=0.8, v_reset=-0.1,
        reset_mode=mode, detach_reset=detach, v_init=0.0,
        v_l=-math.inf if v_l is None else v_l, dv=0.3, ref_len=ref_len,
        v_th_alpha=0.9 if adaptive else 1.0, v_th_beta=0.02 if adaptive else 0.0,
        v_th_incre=0.25 if adaptive else 0.0,
    )


LEAK = torch.tensor([0.85, 0.05])  # alpha, beta
B_COMBOS = list(itertools.product([0, 1, 2], [False, True], [False, True], [0, 2], [None, -0.4]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mode,detach,adaptive,ref_len,v_l", B_COMBOS,
    ids=[ids(mode=("hard", "soft", "softc")[m], detach=d, adapt=a, ref=r, vl=v) for m, d, a, r, v in B_COMBOS],
)
def test_family_b(backend, mode, detach, adaptive, ref_len, v_l, device):
    case = Case(spec_b(mode, detach, adaptive, ref_len, v_l), LEAK, (7, 3, 13),
                carry_a=adaptive, carry_ref=ref_len > 0)
    check_case(case, backend, device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_family_b_half(backend, dtype, device):
    # smooth surrogate: with half inputs H is kept in half for backward, and a discontinuous
    # surrogate (Rect) legitimately jumps where rounding moves H across its window edge; that case
    # has its own test below
    case = Case(spec_b(1, adaptive=True, ref_len=1, v_l=-0.5, surrogate=sg.ATan()), LEAK, (6, 5, 21), dtype=dtype,
                carry_a=True, carry_ref=True)
    check_case(case, backend, device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rect_surrogate_bf16_differs_only_at_window_edges(backend, device):
    """bf16 backward evaluates the surrogate at H rounded to bf16. For Rect that changes the
    gradient exactly where rounding moves H - V_th across the window edge, and nowhere else."""
    from spiketriton.functional.neuron import run_neuron
    from spiketriton.reference import neuron_reference

    spec = spec_b(0, surrogate=sg.Rect(1.0))
    T, N = 1, 4000  # one step: the input gradient is the surrogate times the upstream gradient
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(T, 1, N, generator=g) * 3 - 0.7).to(torch.bfloat16).to(device)
    gs = torch.ones(T, 1, N, dtype=torch.bfloat16, device=device)
    xi = x.clone().requires_grad_()
    backend, ctx = resolve_backend(backend)
    with ctx:
        s, v, _, _ = run_neuron(xi, None, None, None, LEAK.to(device), spec, backend=backend)
    s.backward(gs)
    xr = x.double().requires_grad_()
    tr = neuron_reference(xr, None, None, None, LEAK.double().to(device), spec)
    tr.spikes.backward(gs.double())
    m_ref = (tr.h - tr.vth).detach()
    m_rounded = tr.h.detach().to(torch.bfloat16).double() - tr.vth
    inside = lambda m: m.abs() < 0.5  # noqa: E731
    edge = inside(m_ref) != inside(m_rounded)
    differs = (xi.grad.double() - xr.grad).abs() > 1e-2
    assert torch.equal(differs, edge)
    assert differs.sum() < N // 50  # rare: within bf16 rounding of the two edges


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_family_b_shapes(backend, shape, device):
    case = Case(spec_b(0, adaptive=True, ref_len=1, surrogate=sg.ATan()), LEAK, shape, carry_a=True, carry_ref=True)
    check_case(case, backend, device)


# ------------------------------------------------------------------------------------------- #
# Larger cases where a GPU exists
# ------------------------------------------------------------------------------------------- #


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("family", ["A", "B"])
def test_gpu_sized(dtype, family):
    if family == "A":
        case = Case(spec_a("lif", True), params_a("lif"), (32, 64, 4099), dtype=dtype)
    else:
        case = Case(spec_b(1, adaptive=True, ref_len=2), LEAK, (32, 64, 4099), dtype=dtype, carry_a=True, carry_ref=True)
    check_case(case, "triton", "cuda")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", [0, 1], ids=["hard", "soft"])
def test_family_b_threshold_floor_binds(backend, mode, device):
    # v_th0 + a starts below v_l for some neurons (a0 in [0, 0.3), v_th0 = 0.3, v_l = 0.35) and rises
    # above it after spikes: the gradient into the adaptive state must stop where the floor binds
    spec = NeuronSpec(
        family=FAMILY_B, surrogate=sg.Sigmoid(2.0), v_threshold=0.3, v_reset=0.4, reset_mode=mode, v_init=0.4,
        v_l=0.35, v_th_alpha=0.8, v_th_beta=0.0, v_th_incre=0.25,
    )
    case = Case(spec, LEAK, (8, 4, 33), carry_a=True)
    check_case(case, backend, device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [0, 2])
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-threshold", "adaptive"])
def test_family_b_carried_threshold_gradient(backend, T, adaptive):
    """d a_last / d a0: without adaptation a_last is zeros whatever a0 is, so its gradient is 0 (also at
    T = 0, where it was 1); with adaptation and no step a_last = a0 (gradient 1). Eager and the custom op."""
    from spiketriton.functional import ExtendedLIFState, extended_lif, ops

    kw = dict(v_th0=1.0, v_th_alpha=0.9, v_th_incre=0.2) if adaptive else dict(v_th0=1.0)
    torch.manual_seed(0)
    x = torch.randn(T, 2, 3, requires_grad=True)
    v0 = torch.randn(2, 3, requires_grad=True)
    a0 = torch.rand(2, 3, requires_grad=True)
    backend, ctx = resolve_backend(backend)
    with ctx:
        _, state = extended_lif(x, ExtendedLIFState(v0, a0, None), backend=backend, **kw)
    (ga0,) = torch.autograd.grad(state.v_th_adpt.sum(), a0)
    if not adaptive:
        assert torch.equal(state.v_th_adpt, torch.zeros(2, 3))
        assert torch.equal(ga0, torch.zeros(2, 3))
    elif T == 0:
        assert torch.equal(state.v_th_adpt, a0.detach())
        assert torch.equal(ga0, torch.ones(2, 3))
    # the registered autograd of the custom op (the path torch.compile takes) gives the same
    spec = extended_lif_spec_for(kw)
    si, sf = ops.spec_args(spec)
    params = torch.tensor([1.0, 0.0])
    out = torch.ops.spiketriton.neuron_fwd(x, v0, a0, None, params, si, sf, backend == "triton", True, False, False)
    (ga0_op,) = torch.autograd.grad(out[2].sum(), a0)
    assert torch.equal(ga0_op, ga0)


def extended_lif_spec_for(kw):
    from spiketriton.functional.neuron import extended_lif_spec

    return extended_lif_spec("t", v_reset=0.0, v_init=None, v_l=None, dv=0.0, ref_len=0, reset_mode="hard",
                             v_th_alpha=kw.get("v_th_alpha", 1.0), v_th_beta=0.0, v_th_incre=kw.get("v_th_incre", 0.0),
                             surrogate=None, detach_reset=False, v_th0=kw["v_th0"])
