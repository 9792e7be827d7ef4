"""STDP and R-STDP learners (spiketriton.learning) and their kernels (kernels/stdp.py).

Every path is checked against the float64 reference (reference/stdp.py) on random spikes: the STDP
products on both backends (Triton under the interpreter here, tiny shapes), the learners with every
option in both step modes, and agreement with SpikingJelly's functional ``stdp_linear_step``, its
``STDPLearner`` and its ``MSTDPETLearner`` on the same spikes and parameters.

Tolerances: the fp32 paths differ from float64 by rounding only. The measured worst cases over this
file (2026-12-01, CPU): P / D / dW relative to their largest entry 6e-7 (torch) and 1.2e-6 (Triton
interpreter, traces split in three bf16 parts); traces 3e-7 absolute. ``RTOL = 1e-5`` is ~10x above;
a wrong term (a missing trace decay, a swapped P / D, a lost sample) changes entries by O(1).
"""

from __future__ import annotations

import doctest
import math
import sys
import types

import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import learning as L
from spiketriton.kernels import stdp as KS
from spiketriton.kernels.pack_torch import pack_bits
from spiketriton.learning import RSTDPLearner, STDPLearner, stdp_products
from spiketriton.reference.stdp import stdp_products_reference

RTOL = 1e-5
BACKENDS = ["torch", "triton"]
# where each backend runs here: Triton on CUDA when there is a GPU (else its interpreter on the CPU)
DEV = {"torch": torch.device("cpu"),
       "triton": torch.device("cuda" if torch.cuda.is_available() else "cpu")}


def close(got, want, rtol=RTOL):
    """Max error relative to the largest entry of ``want`` (absolute below 1)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    scale = max(want.abs().max().item() if want.numel() else 0.0, 1.0)
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol:g} * {scale:.3g}"


def spikes(*shape, p=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).float()


class Replay(nn.Module):
    """A stand-in neuron that fires prepared spikes, one tensor per call (the input is ignored)."""

    def __init__(self, outputs, step_mode="m"):
        super().__init__()
        self.outputs = list(outputs)
        self.step_mode = step_mode

    def forward(self, x):
        return self.outputs.pop(0)


# --------------------------------------------------------------------------------------------- #
# the products, both paths, against float64
# --------------------------------------------------------------------------------------------- #

SHAPES = [(1, 1, 1, 1), (3, 3, 13, 7), (2, 5, 70, 67), (2, 37, 9, 17)]  # [T, B, K, N]; B = 37: two batch chunks


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("exp_decay", [False, True], ids=["linear", "exp"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}K{}N{}".format(*s))
def test_products_match_float64(backend, exp_decay, shape):
    T, B, K, N = shape
    pre, post = spikes(T, B, K, seed=1), spikes(T, B, N, seed=2)
    tp, tq = torch.rand(B, K) * 3, torch.rand(B, N) * 3
    tp0, tq0 = tp.clone(), tq.clone()
    d = DEV[backend]
    P, D, a, b = stdp_products(pack_bits(pre).to(d), pack_bits(post).to(d), K, N, tp.to(d), tq.to(d), 3.0, 4.5,
                               exp_decay, backend)
    P2, D2, a2, b2 = stdp_products_reference(pre, post, tp, tq, 3.0, 4.5, exp_decay)
    close(P, P2)
    close(D, D2)
    close(a, a2)
    close(b, b2)
    assert torch.equal(tp, tp0) and torch.equal(tq, tq0)  # the traces passed in are not modified
    assert P.dtype == D.dtype == a.dtype == b.dtype == torch.float32


def test_products_paths_agree_on_traces_bit_for_bit():
    """Both paths advance the traces with the same fp32 operations: tr - tr / tau + s with IEEE division
    (bit for bit), tr * exp(-1/tau) + s (a compiled kernel may fuse it into one FMA: within 2 ulp)."""
    T, B, K, N = 4, 3, 21, 10
    pre, post = spikes(T, B, K, seed=3), spikes(T, B, N, seed=4)
    tp, tq = torch.rand(B, K), torch.rand(B, N)
    d = DEV["triton"]
    for exp_decay in (False, True):
        r1 = stdp_products(pack_bits(pre), pack_bits(post), K, N, tp, tq, 3.0, 7.0, exp_decay, "torch")
        r2 = stdp_products(pack_bits(pre).to(d), pack_bits(post).to(d), K, N, tp.to(d), tq.to(d), 3.0, 7.0,
                           exp_decay, "triton")
        if exp_decay and d.type == "cuda":
            assert torch.allclose(r1[2], r2[2].cpu(), rtol=2.5e-7, atol=0) and torch.allclose(
                r1[3], r2[3].cpu(), rtol=2.5e-7, atol=0)
        else:
            assert torch.equal(r1[2], r2[2].cpu()) and torch.equal(r1[3], r2[3].cpu())


@pytest.mark.parametrize("backend", BACKENDS)
def test_products_empty(backend):
    d = DEV[backend]
    z = torch.zeros(0, 2, 2, dtype=torch.uint8, device=d)
    tp, tq = torch.rand(2, 9, device=d), torch.rand(2, 12, device=d)
    P, D, a, b = stdp_products(z, z, 9, 12, tp, tq, 2.0, 2.0, backend=backend)
    assert torch.equal(P.cpu(), torch.zeros(12, 9)) and torch.equal(D.cpu(), torch.zeros(12, 9))
    assert torch.equal(a, tp) and torch.equal(b, tq)


def test_products_noncontiguous_spikes_and_traces():
    T, B, K, N = 2, 3, 16, 9
    pre, post = spikes(T, B, K, seed=5), spikes(T, B, N, seed=6)
    pp = pack_bits(pre).transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    tp = torch.rand(K, B).t()
    tq = torch.rand(N, B).t()
    want = stdp_products_reference(pre, post, tp, tq, 2.0, 3.0)
    for backend in BACKENDS:
        d = DEV[backend]
        got = stdp_products(pp.to(d), pack_bits(post).to(d), K, N, tp.to(d), tq.to(d), 2.0, 3.0, backend=backend)
        for g, w in zip(got, want):
            close(g, w)


# --------------------------------------------------------------------------------------------- #
# the learner against float64: every option, both step modes, both ways of applying
# --------------------------------------------------------------------------------------------- #


def expected_dw(pre, post, w, tau_pre, tau_post, a_plus, a_minus, bounds, w_min, w_max, f_pre=None, f_post=None,
                tp=None, tq=None):
    B, K, N = pre.shape[1], pre.shape[-1], post.shape[-1]
    tp = torch.zeros(B, K) if tp is None else tp
    tq = torch.zeros(B, N) if tq is None else tq
    P, D, tp, tq = stdp_products_reference(pre, post, tp, tq, tau_pre, tau_post)
    w = w.double()
    if bounds == "soft":
        fp, fd = w_max - w, w - w_min
    else:
        fp = f_post(w) if f_post is not None else 1.0
        fd = f_pre(w) if f_pre is not None else 1.0
    return a_plus * fp * P - a_minus * fd * D, tp, tq


OPTIONS = {
    "additive": dict(),
    "hard": dict(bounds="hard", w_min=-0.05, w_max=0.08),
    "soft": dict(bounds="soft", w_min=-0.3, w_max=0.4),
    "callables": dict(f_pre=lambda w: w.abs(), f_post=lambda w: 1.0 - w),
    "normalize": dict(normalize=0.5),
}


def make_layer(K, N, kind, seed=0):
    torch.manual_seed(seed)
    fc = st.SpikeLinear(K, N, bias=False, backend="torch") if kind == "spike" else nn.Linear(K, N)
    with torch.no_grad():
        fc.weight.uniform_(-0.2, 0.3)
    return fc


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("apply", ["delta", "step", "grad"])
def test_learner_matches_float64(backend, option, step_mode, apply):
    T, B, K, N = 3, 2, 11, 6
    opts = dict(OPTIONS[option])
    pre, post = spikes(T, B, K, seed=7), spikes(T, B, N, p=0.5, seed=8)
    d = DEV[backend]
    fc = make_layer(K, N, "spike").to(d)
    w0 = fc.weight.detach().clone()
    neuron = Replay([post.to(d)] if step_mode == "m" else list(post.to(d)), step_mode)
    lr = 0.01
    lrn = STDPLearner(fc, neuron, tau_pre=2.0, tau_post=3.0, a_plus=0.7, a_minus=1.3, backend=backend, **opts)
    with torch.no_grad():
        for x in ([pre.to(d)] if step_mode == "m" else list(pre.to(d))):
            neuron(fc(x))
    assert lrn.pending == (1 if step_mode == "m" else T)
    want, tp, tq = expected_dw(pre, post, w0.cpu(), 2.0, 3.0, 0.7, 1.3, opts.get("bounds"), opts.get("w_min", 0.0),
                               opts.get("w_max", 1.0), opts.get("f_pre"), opts.get("f_post"))
    if apply == "delta":
        close(lrn.delta(), want)
        assert torch.equal(fc.weight, w0)
    elif apply == "step":
        lrn.step(lr)
        w = w0.double().cpu() + lr * want
        if opts.get("bounds") == "hard":
            w = w.clamp(opts["w_min"], opts["w_max"])
        if "normalize" in opts:
            w = w * (opts["normalize"] / w.sum(1, keepdim=True))
        close(fc.weight, w, rtol=1e-6)
    else:
        lrn.step(lr, on_grad=True)
        assert torch.equal(fc.weight, w0)  # only .grad changes
        close(fc.weight.grad, -lr * want, rtol=1e-6)
    close(lrn.trace_pre, tp)
    close(lrn.trace_post, tq)
    assert lrn.pending == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_traces_carry_across_updates_and_reset(backend):
    """Two updates of T/2 steps each equal one of T steps when the weights do not change between
    them (additive rule, delta only); reset() starts from zero traces again."""
    T, B, K, N = 4, 2, 10, 5
    pre, post = spikes(T, B, K, seed=9), spikes(T, B, N, seed=10)
    d = DEV[backend]
    fc = make_layer(K, N, "linear").to(d)
    pd, qd = pre.to(d), post.to(d)
    neuron = Replay([qd[:2], qd[2:], qd], "m")
    lrn = STDPLearner(fc, neuron, tau_pre=2.0, tau_post=2.0, backend=backend)
    with torch.no_grad():
        neuron(fc(pd[:2]))
        d1 = lrn.delta()
        neuron(fc(pd[2:]))
        d2 = lrn.delta()
    want, _, _ = expected_dw(pre, post, fc.weight.detach().cpu(), 2.0, 2.0, 1.0, 1.0, None, 0.0, 1.0)
    close(d1 + d2, want)
    lrn.reset()
    with torch.no_grad():
        neuron(fc(pd))
    close(lrn.delta(), want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_weights(dtype, backend):
    """The update is computed in fp32 and added to a half weight (one rounding)."""
    T, B, K, N = 2, 3, 12, 9
    pre, post = spikes(T, B, K, seed=11), spikes(T, B, N, seed=12)
    d = DEV[backend]
    fc = make_layer(K, N, "linear").to(d, dtype)
    w0 = fc.weight.detach().clone().cpu()
    neuron = Replay([post.to(d, dtype)], "m")
    lrn = STDPLearner(fc, neuron, tau_pre=2.0, tau_post=2.0, bounds="soft", w_min=-1.0, w_max=1.0, backend=backend)
    with torch.no_grad():
        neuron(fc(pre.to(d, dtype)))
    lrn.step(0.01)
    want, _, _ = expected_dw(pre, post, w0.float(), 2.0, 2.0, 1.0, 1.0, "soft", -1.0, 1.0)
    eps = torch.finfo(dtype).eps
    close(fc.weight.float(), w0.double() + 0.01 * want, rtol=eps)  # one rounding (the interpreter truncates bf16)
    assert fc.weight.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("apply", ["delta", "step"])
def test_noncontiguous_weight(backend, apply):
    """A weight stored transposed (column stride 1 missing): the kernel, which reads rows of W, is not
    used on it; the result is the same."""
    T, B, K, N = 2, 2, 10, 7
    pre, post = spikes(T, B, K, seed=40), spikes(T, B, N, seed=41)
    d = DEV[backend]
    fc = make_layer(K, N, "linear").to(d)
    with torch.no_grad():
        fc.weight = nn.Parameter(fc.weight.detach().t().contiguous().t())
    assert fc.weight.stride(1) != 1
    w0 = fc.weight.detach().clone().cpu()
    neuron = Replay([post.to(d)], "m")
    lrn = STDPLearner(fc, neuron, tau_pre=2.0, tau_post=2.0, bounds="soft", w_min=-1.0, w_max=1.0, backend=backend)
    with torch.no_grad():
        neuron(fc(pre.to(d)))
    want, _, _ = expected_dw(pre, post, w0, 2.0, 2.0, 1.0, 1.0, "soft", -1.0, 1.0)
    if apply == "delta":
        close(lrn.delta(), want)
    else:
        lrn.step(0.01)
        close(fc.weight, w0.double() + 0.01 * want, rtol=1e-6)


def test_packed_neuron_output_and_spike_tensor_input():
    """A neuron with packed_output hands the learner its bits; a SpikeTensor input is recorded as it is."""
    T, B, K, N = 3, 2, 17, 9
    torch.manual_seed(1)
    fc = st.SpikeLinear(K, N, bias=False, backend="torch")
    lif = st.LIF(tau=2.0, v_threshold=0.2, backend="torch", packed_output=True)
    x = st.pack_spikes(spikes(T, B, K, seed=13))
    lrn = STDPLearner(fc, lif, tau_pre=2.0, tau_post=2.0, backend="torch")
    with torch.no_grad():
        out = lif(fc(x))
    # the bytes themselves: no copy, no unpacking
    assert lrn._pre[0].data_ptr() == x.data.data_ptr() and lrn._post[0][0].data_ptr() == out.data.data_ptr()
    want, _, _ = expected_dw(x.unpack(), out.unpack(), fc.weight.detach(), 2.0, 2.0, 1.0, 1.0, None, 0.0, 1.0)
    close(lrn.delta(), want)


def test_no_float_spikes_kept_and_no_autograd():
    T, B, K, N = 3, 2, 16, 8
    fc = make_layer(K, N, "spike")
    lif = st.LIF(tau=2.0, v_threshold=0.1, backend="torch")
    lrn = STDPLearner(fc, lif, tau_pre=2.0, tau_post=2.0, backend="torch")
    x = spikes(T, B, K, seed=14).requires_grad_()
    out = lif(fc(x))  # with autograd on
    held = [p for p in lrn._pre] + [q for q, _ in lrn._post]
    assert all(t.dtype == torch.uint8 and not t.requires_grad for t in held)
    assert [tuple(t.shape) for t in held] == [(T, B, 2), (T, B, 1)]
    lrn.step(0.1)
    tensors = [v for v in vars(lrn).values() if isinstance(v, torch.Tensor)]
    assert {tuple(t.shape) for t in tensors} == {(B, K), (B, N)}  # only the traces are left
    assert [(tuple(t.shape), t.dtype) for t in lrn._work] == [((N, K), torch.float32)] * 2  # + P, D buffers
    assert all(t.dtype == torch.float32 and t.grad_fn is None and not t.requires_grad for t in tensors)
    assert lrn._pre == [] and lrn._post == []
    assert fc.weight.grad is None and fc.weight.grad_fn is None
    out.sum().backward()  # the graph of the forward is untouched by the update
    assert x.grad is not None


def test_hooks_detach_disable_enable():
    fc = make_layer(8, 4, "linear")
    neuron = st.IF(backend="torch")
    with STDPLearner(fc, neuron, tau_pre=2.0, tau_post=2.0, backend="torch") as lrn:
        assert lrn.attached and len(fc._forward_pre_hooks) == 1 and len(neuron._forward_hooks) == 1
        lrn.disable()
        neuron(fc(spikes(2, 1, 8)))
        assert lrn.pending == 0
        lrn.enable()
        neuron(fc(spikes(2, 1, 8)))
        assert lrn.pending == 1
    assert not lrn.attached and len(fc._forward_pre_hooks) == 0 and len(neuron._forward_hooks) == 0
    assert lrn.pending == 0
    with pytest.raises(RuntimeError, match="detached"):
        lrn.step()
    with pytest.raises(RuntimeError, match="detached"):
        lrn.enable()
    lrn.detach()  # again: nothing


def test_composes_with_gradient_training():
    """One model, one optimizer: the hidden layer learns by STDP through .grad while the readout and
    the hidden layer also get the loss's gradient; SGD applies their sum."""
    torch.manual_seed(2)
    T, B, K, H, C = 4, 3, 12, 8, 3
    fc1 = st.SpikeLinear(K, H, bias=False, backend="torch")
    lif1 = st.LIF(tau=2.0, v_threshold=0.2, backend="torch")
    fc2 = nn.Linear(H, C)
    net = nn.Sequential(fc1, lif1, fc2)
    lrn = STDPLearner(fc1, lif1, tau_pre=2.0, tau_post=2.0, a_plus=0.5, a_minus=0.5, backend="torch")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = spikes(T, B, K, p=0.5, seed=15)
    w1 = fc1.weight.detach().clone()
    out = net(x)
    hidden = st.SpikeTensor(lrn._post[0][0], H).unpack()  # the hidden spikes, from the learner's record
    loss = out.mean(0).square().sum()
    loss.backward()
    g_loss = fc1.weight.grad.clone()
    dw = expected_dw(x, hidden, w1, 2.0, 2.0, 0.5, 0.5, None, 0.0, 1.0)[0]
    lrn.step(0.05, on_grad=True)
    close(fc1.weight.grad, g_loss.double() - 0.05 * dw, rtol=1e-6)
    opt.step()
    close(fc1.weight, w1.double() - 0.1 * (g_loss.double() - 0.05 * dw), rtol=1e-6)
    assert fc2.weight.grad is not None and fc2.weight.grad.abs().sum() > 0


def test_extra_batch_dimensions_flatten():
    T, K, N = 2, 9, 5
    pre, post = spikes(T, 2, 3, K, seed=16), spikes(T, 2, 3, N, seed=17)
    fc = make_layer(K, N, "linear")
    neuron = Replay([post], "m")
    lrn = STDPLearner(fc, neuron, tau_pre=2.0, tau_post=2.0, backend="torch")
    with torch.no_grad():
        neuron(fc(pre))
    want, _, _ = expected_dw(pre.reshape(T, 6, K), post.reshape(T, 6, N), fc.weight.detach(), 2.0, 2.0, 1.0, 1.0,
                             None, 0.0, 1.0)
    close(lrn.delta(), want)


def test_doctest():
    assert doctest.testmod(L, raise_on_error=False).failed == 0


# --------------------------------------------------------------------------------------------- #
# SpikingJelly agreement
# --------------------------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def sj():
    """SpikingJelly's functional learning rules and its learner classes. Its learning package imports
    its monitor, which imports tensorboard (not installed here): a stand-in module is put in place
    for that import only."""
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based.functional import learning as fl

    name = "torch.utils.tensorboard"
    stub = name not in sys.modules
    try:
        import torch.utils.tensorboard  # noqa: F401
        stub = False
    except ImportError:
        sys.modules[name] = types.SimpleNamespace(SummaryWriter=None)
    try:
        from spikingjelly.activation_based.learning import plasticity
    finally:
        if stub:
            sys.modules.pop(name, None)
    return types.SimpleNamespace(fl=fl, plasticity=plasticity)


@pytest.mark.parametrize("backend", BACKENDS)
def test_agrees_with_spikingjelly_stdp_linear_step(sj, backend):
    T, B, K, N = 5, 3, 19, 7
    pre, post = spikes(T, B, K, seed=18), spikes(T, B, N, p=0.5, seed=19)
    d = DEV[backend]
    fc = make_layer(K, N, "linear").to(d)
    w = fc.weight.detach().clone().cpu()
    f_pre, f_post = (lambda x: 0.4 * x), (lambda x: 1.0 - x)
    neuron = Replay([post.to(d)], "m")
    lrn = STDPLearner(fc, neuron, tau_pre=3.0, tau_post=5.0, f_pre=f_pre, f_post=f_post, backend=backend)
    with torch.no_grad():
        neuron(fc(pre.to(d)))
    got = lrn.delta()
    tp, tq, want = torch.zeros(B, K), torch.zeros(B, N), torch.zeros(N, K)
    for t in range(T):
        d, (tp, tq) = sj.fl.stdp_linear_step(pre[t], post[t], (tp, tq), w, tau_pre=3.0, tau_post=5.0, f_pre=f_pre,
                                             f_post=f_post)
        want += d
    close(got, want)
    # the same fp32 operations (IEEE division on every path)
    assert torch.equal(lrn.trace_pre.cpu(), tp) and torch.equal(lrn.trace_post.cpu(), tq)


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_agrees_with_spikingjelly_stdp_learner(sj, step_mode):
    """Both learners on one layer and one stand-in neuron, the same spikes, two updates in a row,
    applied through .grad as SpikingJelly does (its weight.grad gets -dW)."""
    T, B, K, N = 4, 2, 10, 6
    pre, post = spikes(2 * T, B, K, seed=20), spikes(2 * T, B, N, p=0.5, seed=21)
    fc_sj, fc_st = make_layer(K, N, "linear"), make_layer(K, N, "linear")
    chunks = [post[:T], post[T:]] if step_mode == "m" else list(post)
    f_pre, f_post = (lambda x: x.abs() + 0.1), (lambda x: 0.5 - x)
    n_sj, n_st = Replay(chunks, step_mode), Replay(chunks, step_mode)
    sjl = sj.plasticity.STDPLearner(step_mode, fc_sj, n_sj, tau_pre=2.0, tau_post=4.0, f_pre=f_pre, f_post=f_post)
    ours = STDPLearner(fc_st, n_st, tau_pre=2.0, tau_post=4.0, f_pre=f_pre, f_post=f_post, backend="torch")
    inputs = [pre[:T], pre[T:]] if step_mode == "m" else list(pre)
    per_update = 1 if step_mode == "m" else T
    opt_sj, opt_st = torch.optim.SGD(fc_sj.parameters(), lr=0.01), torch.optim.SGD(fc_st.parameters(), lr=0.01)
    for u in range(2):
        for x in inputs[u * per_update:(u + 1) * per_update]:
            with torch.no_grad():
                n_sj(fc_sj(x))
                n_st(fc_st(x))
        for opt in (opt_sj, opt_st):
            opt.zero_grad()
        sjl.step(on_grad=True)
        ours.step(on_grad=True)
        close(fc_st.weight.grad, fc_sj.weight.grad)
        opt_sj.step()
        opt_st.step()
        close(fc_st.weight, fc_sj.weight)
    sjl.close()
    ours.detach()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rstdp_agrees_with_spikingjelly_mstdpet(sj, backend):
    """SpikingJelly's MSTDPETLearner takes one sample ([K] / [N]) and a scalar reward per step; ours
    with batch 1 gives the same dW at every step (the reward acting on the previous eligibility)."""
    T, K, N = 6, 9, 5
    pre, post = spikes(T, K, seed=22), spikes(T, N, p=0.5, seed=23)
    rewards = [0.5, -1.0, 2.0, 0.0, 1.5, -0.25]
    d = DEV[backend]
    fc_sj, fc_st = make_layer(K, N, "linear"), make_layer(K, N, "linear").to(d)
    f_pre, f_post = (lambda x: x + 0.5), (lambda x: 0.7 - x)
    n_sj, n_st = Replay(list(post), "s"), Replay([p[None].to(d) for p in post], "s")
    sjl = sj.plasticity.MSTDPETLearner("s", fc_sj, n_sj, tau_pre=2.0, tau_post=3.0, tau_trace=4.0, f_pre=f_pre,
                                       f_post=f_post)
    ours = RSTDPLearner(fc_st, n_st, tau_pre=2.0, tau_post=3.0, tau_trace=4.0, f_pre=f_pre, f_post=f_post,
                        backend=backend)
    for t in range(T):
        with torch.no_grad():
            n_sj(fc_sj(pre[t]))
            n_st(fc_st(pre[t][None].to(d)))
        want = sjl.step(rewards[t], on_grad=False)
        got = ours.delta(rewards[t])
        close(got, want)
    sjl.close()


# --------------------------------------------------------------------------------------------- #
# R-STDP
# --------------------------------------------------------------------------------------------- #


def rstdp_reference(pre, post, w, rewards, tau_pre, tau_post, tau_trace, a_plus=1.0, a_minus=1.0):
    """Float64, one sample at a time: per sample b and step t the MSTDPET recursion with reward[t, b]."""
    T, B, K = pre.shape
    N = post.shape[-1]
    dw = torch.zeros(N, K, dtype=torch.float64)
    for b in range(B):
        tp, tq = torch.zeros(K, dtype=torch.float64), torch.zeros(N, dtype=torch.float64)
        e = torch.zeros(N, K, dtype=torch.float64)
        elig = torch.zeros(N, K, dtype=torch.float64)
        for t in range(T):
            e = e * math.exp(-1 / tau_trace) + elig / tau_trace
            dw += float(rewards[t, b]) * e
            tp = tp * math.exp(-1 / tau_pre) + pre[t, b].double()
            tq = tq * math.exp(-1 / tau_post) + post[t, b].double()
            elig = a_plus * torch.outer(post[t, b].double(), tp) - a_minus * torch.outer(tq, pre[t, b].double())
    return dw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_rstdp_matches_float64(backend, per_sample, step_mode):
    T, B, K, N = 4, 3, 10, 6
    pre, post = spikes(T, B, K, seed=24), spikes(T, B, N, p=0.5, seed=25)
    g = torch.Generator().manual_seed(26)
    r = torch.randn(T, B if per_sample else 1, generator=g)
    rewards = r if per_sample else r.expand(T, B)
    d = DEV[backend]
    fc = make_layer(K, N, "spike").to(d)
    neuron = Replay([post.to(d)] if step_mode == "m" else list(post.to(d)), step_mode)
    lrn = RSTDPLearner(fc, neuron, tau_pre=2.0, tau_post=3.0, tau_trace=2.5, a_plus=0.8, a_minus=1.1,
                       per_sample=per_sample, backend=backend)
    with torch.no_grad():
        for x in ([pre.to(d)] if step_mode == "m" else list(pre.to(d))):
            neuron(fc(x))
    want = rstdp_reference(pre, post, fc.weight.cpu(), rewards, 2.0, 3.0, 2.5, 0.8, 1.1)
    got = lrn.delta((r if per_sample else r[:, 0]).to(d))
    close(got, want)


def test_rstdp_reward_split_across_calls():
    """Stepping after every single-step call with its reward equals one update over the records with
    the rewards as [T] (the weights do not change in delta)."""
    T, B, K, N = 5, 2, 8, 4
    pre, post = spikes(T, B, K, seed=27), spikes(T, B, N, p=0.5, seed=28)
    r = torch.tensor([1.0, -0.5, 0.25, 2.0, -1.0])
    fc = make_layer(K, N, "linear")
    n1, n2 = Replay(list(post), "s"), Replay(list(post), "s")
    a = RSTDPLearner(fc, n1, tau_pre=2.0, tau_post=2.0, tau_trace=3.0, backend="torch")
    total = 0
    for t in range(T):
        with torch.no_grad():
            n1(fc(pre[t]))
        total = total + a.delta(r[t])
    a.detach()
    b = RSTDPLearner(fc, n2, tau_pre=2.0, tau_post=2.0, tau_trace=3.0, backend="torch")
    with torch.no_grad():
        for t in range(T):
            n2(fc(pre[t]))
    close(b.delta(r), total)


# --------------------------------------------------------------------------------------------- #
# conv synapses (torch path): float64 reference, SpikingJelly's conv learner
# --------------------------------------------------------------------------------------------- #

CONV = [  # (C_in, C_out, H, kernel, stride, padding, dilation)
    (5, 4, 7, 3, 2, 1, 1),
    (9, 3, 6, (2, 3), 1, 0, 1),
    (3, 2, 8, 3, 1, 2, 2),
    (2, 10, 1, 1, 1, 0, 1),    # 1x1 images, 1x1 kernel
]


def conv_case(C, O, H, k, stride, padding, dilation, T, B, seed=30, step_mode="m"):
    conv = st.SpikeConv2d(C, O, k, stride=stride, padding=padding, dilation=dilation, bias=False, backend="torch")
    with torch.no_grad():
        conv.weight.uniform_(-0.2, 0.3)
        out_shape = conv(torch.zeros(T, B, C, H, H)).shape
    conv.step_mode = step_mode
    return conv, spikes(T, B, C, H, H, seed=seed), spikes(*out_shape, p=0.5, seed=seed + 1)


@pytest.mark.parametrize("geom", CONV, ids=lambda g: "C{}O{}H{}k{}s{}p{}d{}".format(*g))
@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("option", ["additive", "soft", "normalize"])
def test_conv_learner_matches_float64(geom, step_mode, option):
    from spiketriton.reference.stdp import stdp_conv_products_reference

    C, O, H, k, stride, padding, dilation = geom
    T, B = 3, 2
    conv, pre, post = conv_case(C, O, H, k, stride, padding, dilation, T, B, step_mode=step_mode)
    w0 = conv.weight.detach().clone()
    neuron = Replay([post] if step_mode == "m" else list(post), step_mode)
    opts = dict(OPTIONS[option])
    lrn = STDPLearner(conv, neuron, tau_pre=2.0, tau_post=3.0, a_plus=0.7, a_minus=1.3, backend="torch", **opts)
    with torch.no_grad():
        for x in ([pre] if step_mode == "m" else list(pre)):
            neuron(conv(x))
    P, D, tp, tq = stdp_conv_products_reference(pre, post, torch.zeros(pre.shape[1:]), torch.zeros(post.shape[1:]),
                                                2.0, 3.0, k, stride, padding, dilation)
    w = w0.double()
    if option == "soft":
        want = 0.7 * (opts["w_max"] - w) * P - 1.3 * (w - opts["w_min"]) * D
    else:
        want = 0.7 * P - 1.3 * D
    lrn.step(0.01)
    w_new = w + 0.01 * want
    if option == "normalize":
        w_new = w_new * (opts["normalize"] / w_new.flatten(1).sum(1).view(-1, 1, 1, 1))
    close(conv.weight, w_new, rtol=1e-6)
    close(lrn.trace_pre, tp)
    close(lrn.trace_post, tq)


def test_conv_packed_images_are_kept_packed():
    C, O, H = 10, 4, 5
    conv = st.SpikeConv2d(C, O, 3, padding=1, bias=False, backend="torch")
    lif = st.LIF(tau=2.0, v_threshold=0.1, backend="torch", packed_output="image")
    x = st.pack_image(spikes(2, 3, C, H, H, seed=31))
    lrn = STDPLearner(conv, lif, tau_pre=2.0, tau_post=2.0)
    with torch.no_grad():
        out = lif(conv(x))
    assert lrn._pre[0].data_ptr() == x.data.data_ptr() and lrn._post[0][0].data_ptr() == out.data.data_ptr()
    from spiketriton.reference.stdp import stdp_conv_products_reference

    P, D, _, _ = stdp_conv_products_reference(x.unpack(), out.unpack(), torch.zeros(3, C, H, H),
                                              torch.zeros(3, O, H, H), 2.0, 2.0, 3, 1, 1)
    close(lrn.delta(), P - D)


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_conv_agrees_with_spikingjelly_stdp_learner(sj, step_mode):
    T, B = 4, 2
    conv_st, pre, post = conv_case(4, 3, 6, 3, 2, 1, 1, T, B, seed=32, step_mode=step_mode)
    from spikingjelly.activation_based import layer

    conv_sj = layer.Conv2d(4, 3, 3, stride=2, padding=1, bias=False, step_mode=step_mode)
    with torch.no_grad():
        conv_sj.weight.copy_(conv_st.weight)
    chunks = [post] if step_mode == "m" else list(post)
    f_pre, f_post = (lambda x: x.abs() + 0.1), (lambda x: 0.5 - x)
    n_sj, n_st = Replay(chunks, step_mode), Replay(chunks, step_mode)
    sjl = sj.plasticity.STDPLearner(step_mode, conv_sj, n_sj, tau_pre=2.0, tau_post=4.0, f_pre=f_pre, f_post=f_post)
    ours = STDPLearner(conv_st, n_st, tau_pre=2.0, tau_post=4.0, f_pre=f_pre, f_post=f_post, backend="torch")
    with torch.no_grad():
        for x in ([pre] if step_mode == "m" else list(pre)):
            n_sj(conv_sj(x))
            n_st(conv_st(x))
    close(ours.delta(), sjl.step(on_grad=False))
    sjl.close()


def test_conv_rstdp_first_reward_reads_the_first_eligibility():
    """R-STDP on a conv synapse: with rewards [0, r] the update is r * elig(step 0) / tau_trace, the conv
    STDP term of step 0 with exponentially decaying traces."""
    from spiketriton.reference.stdp import stdp_conv_products_reference

    conv, pre, post = conv_case(3, 2, 5, 3, 1, 1, 1, 2, 2, seed=33)
    neuron = Replay([post], "m")
    lrn = RSTDPLearner(conv, neuron, tau_pre=2.0, tau_post=3.0, tau_trace=4.0, a_plus=0.5, a_minus=0.8,
                       backend="torch")
    with torch.no_grad():
        neuron(conv(pre))
    P, D, _, _ = stdp_conv_products_reference(pre[:1], post[:1], torch.zeros(pre.shape[1:]),
                                              torch.zeros(post.shape[1:]), 2.0, 3.0, 3, 1, 1, exp_decay=True)
    close(lrn.delta(torch.tensor([0.0, 2.0])), 2.0 * (0.5 * P - 0.8 * D) / 4.0)


def test_conv_errors():
    conv = st.SpikeConv2d(3, 2, 3, bias=False, backend="torch")
    n = st.LIF(backend="torch")
    with pytest.raises(ValueError, match="Triton STDP kernel covers linear synapses"):
        STDPLearner(conv, n, tau_pre=2.0, tau_post=2.0, backend="triton")
    with pytest.raises(ValueError, match="must pad with zeros"):
        STDPLearner(nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect"), n, tau_pre=2.0, tau_post=2.0)
    with pytest.raises(ValueError, match="per_sample=True covers linear synapses"):
        RSTDPLearner(conv, n, tau_pre=2.0, tau_post=2.0, tau_trace=2.0, per_sample=True)
    neuron = Replay([spikes(2, 1, 2, 4, 4)], "m")  # the conv gives 3x3 images
    lrn = STDPLearner(conv, neuron, tau_pre=2.0, tau_post=2.0, backend="torch")
    with torch.no_grad():
        neuron(conv(spikes(2, 1, 3, 5, 5)))
    with pytest.raises(ValueError, match=r"input is \(5, 5\) pixels, its output \(3, 3\), but the neuron fired \(4, 4\)"):
        lrn.delta()
    with pytest.raises(ValueError, match=r"must be \[\*lead, 3, H, W\]"):
        conv(torch.zeros(2, 1, 4, 5, 5))


# --------------------------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------------------------- #


def test_constructor_errors():
    fc, n = make_layer(8, 4, "linear"), st.LIF(backend="torch")
    ok = dict(tau_pre=2.0, tau_post=2.0)
    bad = [
        (dict(tau_pre=0.5), ValueError, "tau_pre must be >= 1"),
        (dict(tau_post=float("nan")), ValueError, "tau_post must be finite"),
        (dict(a_plus="1"), TypeError, "a_plus must be a real number"),
        (dict(bounds="clip"), ValueError, "bounds must be None"),
        (dict(bounds="hard", w_min=1.0, w_max=0.0), ValueError, "w_min < w_max"),
        (dict(bounds="soft", f_pre=lambda w: w), ValueError, "bounds='soft' defines"),
        (dict(f_post=3.0), TypeError, "f_post must be a callable"),
        (dict(normalize=0.0), ValueError, "normalize"),
        (dict(step_mode="x"), ValueError, "step_mode must be None"),
        (dict(check_binary="yes"), TypeError, "check_binary must be True or False"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
    ]
    for kw, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            STDPLearner(fc, n, **{**ok, **kw})
    with pytest.raises(TypeError, match="synapse must be a SpikeLinear or nn.Linear"):
        STDPLearner(nn.Conv1d(2, 2, 1), n, **ok)
    with pytest.raises(TypeError, match="neuron must be the nn.Module"):
        STDPLearner(fc, lambda x: x, **ok)
    with pytest.raises(ValueError, match="has no step_mode"):
        STDPLearner(fc, nn.ReLU(), **ok)
    with pytest.raises(ValueError, match="tau_trace must be > 0"):
        RSTDPLearner(fc, n, tau_trace=0.0, **ok)
    assert len(fc._forward_pre_hooks) == 0 and len(n._forward_hooks) == 0  # a refused learner hooks nothing


def test_recording_and_update_errors():
    K, N = 8, 4
    fc = make_layer(K, N, "linear")
    n = st.IF(backend="torch")
    lrn = STDPLearner(fc, n, tau_pre=2.0, tau_post=2.0, backend="torch")
    with pytest.raises(ValueError, match="STDPLearner: the synapse's input has values other than 0 and 1"):
        n(fc(torch.full((2, 1, K), 0.5)))
    lrn.reset()
    fc(spikes(2, 1, K))  # a synapse call without its neuron
    with pytest.raises(RuntimeError, match="1 synapse calls but 0 neuron calls"):
        lrn.delta()
    lrn.reset()
    n(fc(spikes(2, 3, K)))
    lrn.delta()
    st.reset(n)
    n(fc(spikes(2, 2, K)))
    with pytest.raises(ValueError, match="batch size changed from 3 to 2"):
        lrn.delta()
    lrn.reset()
    st.reset(n)
    with pytest.raises(TypeError, match="lr must be a real number"):
        lrn.step("fast")
    with pytest.raises(TypeError, match="on_grad must be True or False"):
        lrn.step(on_grad=1)
    r = RSTDPLearner(fc, n, tau_pre=2.0, tau_post=2.0, tau_trace=2.0, backend="torch")
    lrn.detach()
    n(fc(spikes(3, 2, K)))
    with pytest.raises(ValueError, match=r"reward must be a number or \[T\] = \[3\]"):
        r.delta(torch.ones(2))
    r.reset()
    n(fc(spikes(3, 2, K)))
    with pytest.raises(TypeError, match="reward must be a number or a tensor"):
        r.delta("good")
    rs = RSTDPLearner(fc, n, tau_pre=2.0, tau_post=2.0, tau_trace=2.0, per_sample=True, backend="torch")
    r.detach()
    n(fc(spikes(3, 2, K)))
    with pytest.raises(ValueError, match=r"per_sample=True takes a reward \[B\] = \[2\]"):
        rs.delta(1.0)


def test_stdp_products_errors():
    u = torch.zeros(2, 3, 1, dtype=torch.uint8)
    tr = torch.zeros(3, 8)
    with pytest.raises(TypeError, match="pre must be packed spikes"):
        stdp_products(u.float(), u, 8, 8, tr, tr, 2.0, 2.0)
    with pytest.raises(ValueError, match="needs ceil"):
        stdp_products(u, u, 9, 8, torch.zeros(3, 9), tr, 2.0, 2.0)
    with pytest.raises(TypeError, match=r"tr_post must be a float32 tensor \[B, N\]"):
        stdp_products(u, u, 8, 8, tr, tr.double(), 2.0, 2.0)
    with pytest.raises(ValueError, match="tau_pre must be >= 1"):
        stdp_products(u, u, 8, 8, tr, tr, 0.9, 2.0)
    with pytest.raises(ValueError, match="differ in T or B"):
        stdp_products(u, u[:1], 8, 8, tr, tr, 2.0, 2.0)


def test_guide_python_blocks_run(tmp_path, monkeypatch):
    """docs/guides/local-learning.md: every python block runs on its own (a fresh scope each), as a user
    on a CPU runs it: on the torch paths (TRITON_INTERPRET dropped for the test: "auto" then picks the
    torch path for CPU tensors; under the interpreter the same blocks take ~45 s here)."""
    import pathlib
    import re

    guide = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guides" / "local-learning.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.chdir(tmp_path)
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"local-learning.md python block {i}", "exec"), {"__name__": "__guide__"})
        except Exception as e:  # pragma: no cover - the failure message is the point
            pytest.fail(f"local-learning.md python block {i} failed: {type(e).__name__}: {e}\n{code}")
