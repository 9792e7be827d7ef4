"""torch.compile: every kernel is a torch.library custom op (spiketriton/functional/ops.py), so Dynamo
sees one opaque node per kernel and ``fullgraph=True`` compiles whole models; outputs, the state
carried across calls and every gradient equal eager.

Most checks use ``backend="aot_eager"``: Dynamo + AOTAutograd, i.e. the ops' fake (meta) functions,
their autograd registrations and the traced state mutation, without generating C++. Being the same
aten ops, it must agree with eager bit for bit. One test runs the default inductor backend.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch import nn

import spiketriton as st
from spiketriton import functional as F
from spiketriton import quant as Q
from spiketriton import surrogate as sg
from spiketriton.functional import ops

from helpers import calibrated
from spiketriton.functional.neuron import extended_lif_spec, family_a_spec

AOT = "aot_eager"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # every test compiles new modules: start from an empty cache (no recompile limits across tests)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------- #
# the custom ops themselves: schema, fake (meta) functions, autograd registration, dynamic shapes
# ------------------------------------------------------------------------------------------- #

SPEC_A = family_a_spec("t", v_threshold=1.0, v_reset=0.0, surrogate=sg.ATan(), detach_reset=False, decay_input=True)
SPEC_B = extended_lif_spec("t", v_th0=0.8, v_reset=0.0, v_init=None, v_l=-1.0, dv=0.0, ref_len=1, reset_mode="soft",
                           v_th_alpha=0.9, v_th_beta=0.0, v_th_incre=0.2, surrogate=None, detach_reset=False)


def neuron_args(family, triton, packed, store=True):
    torch.manual_seed(0)
    spec, params = (SPEC_A, torch.tensor([0.5])) if family == "A" else (SPEC_B, torch.tensor([0.9, 0.02]))
    si, sf = ops.spec_args(spec)
    x = (torch.randn(3, 2, 11) * 0.8 + 0.5).requires_grad_(store)
    v0 = torch.randn(2, 11).requires_grad_(store)
    a0 = torch.rand(2, 11).requires_grad_(store) if family == "B" else None
    r0 = torch.randint(0, 2, (2, 11), dtype=torch.int32) if family == "B" else None
    p = params.clone().requires_grad_(store)
    return (x, v0, a0, r0, p, si, sf, triton, store, store and family == "A", packed)


@pytest.mark.parametrize("packed", [False, True], ids=["spikes", "packed"])
@pytest.mark.parametrize("family", ["A", "B"])
@pytest.mark.parametrize("triton", [True, False], ids=["triton", "torch"])
def test_opcheck_neuron(family, triton, packed):
    torch.library.opcheck(torch.ops.spiketriton.neuron_fwd.default, neuron_args(family, triton, packed))


@pytest.mark.parametrize("triton", [True, False], ids=["triton", "torch"])
def test_opcheck_neuron_backward_and_inference(triton):
    args = neuron_args("B", triton, False)
    x, v0, a0, r0, p, si, sf = args[:7]
    out = torch.ops.spiketriton.neuron_fwd(*args)
    h, bits, vth, gate, floor = out[4:]
    assert h.shape == x.shape and bits.shape == (3, 2, 2) and vth.shape == x.shape
    g = torch.randn_like(x)
    bwd = (g, torch.randn(2, 11), torch.randn(2, 11), h, bits, vth, gate, floor, None, p.detach(), si, sf, triton,
           True, True, True)
    torch.library.opcheck(torch.ops.spiketriton.neuron_bwd.default, bwd)
    # without a gradient nothing is stored for backward
    torch.library.opcheck(torch.ops.spiketriton.neuron_fwd.default, neuron_args("A", triton, False, store=False))


@pytest.mark.parametrize("triton", [True, False], ids=["triton", "torch"])
def test_opcheck_pack_and_spike_matmul(triton):
    torch.manual_seed(0)
    s = (torch.rand(5, 13) > 0.5).float()
    packed = st.pack_spikes(s).data
    w = torch.randn(4, 13, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    anchor = s.clone().requires_grad_()
    torch.library.opcheck(torch.ops.spiketriton.pack.default, (s, triton))
    torch.library.opcheck(torch.ops.spiketriton.unpack.default, (packed, 13, torch.float32, triton))
    torch.library.opcheck(torch.ops.spiketriton.spike_matmul.default, (packed, 13, anchor, None, w, b, triton))
    torch.library.opcheck(torch.ops.spiketriton.spike_matmul.default, (packed, 13, None, s, w, None, triton))
    torch.library.opcheck(torch.ops.spiketriton.spike_matmul_dw.default, (torch.randn(5, 4), packed, 13, triton))


def test_opcheck_integer_ops():
    torch.manual_seed(0)
    s = (torch.rand(5, 13) > 0.5).float()
    packed = st.pack_spikes(s).data
    w = torch.randint(-127, 128, (4, 13), dtype=torch.int8)
    b = torch.randint(-100, 100, (4,), dtype=torch.int32)
    torch.library.opcheck(torch.ops.spiketriton.spike_matmul_int.default, (packed, 13, w, b))
    consts = torch.tensor([10, 0, 1, -(2**27), 0, 230, 1, 1, 256, 0, 3, 0])  # ops.INT_SPEC_FIELDS order
    u = torch.randint(-5, 20, (4, 2, 9), dtype=torch.int32)
    torch.library.opcheck(torch.ops.spiketriton.neuron_int.default, (u, None, None, None, consts))


# ------------------------------------------------------------------------------------------- #
# models: eager vs compiled, two calls with the state carried, every gradient
# ------------------------------------------------------------------------------------------- #


class ToBool(nn.Module):
    def forward(self, s):
        return s > 0


class AllSurrogates(nn.Module):
    """One LIF per surrogate on the same input (each surrogate id is a constant of the graph)."""

    def __init__(self, backend):
        super().__init__()
        self.neurons = nn.ModuleList(st.LIF(surrogate=s(), backend=backend) for s in sg.ALL)

    def forward(self, x):
        return torch.cat([n(x * (1 + i / 8)) for i, n in enumerate(self.neurons)], -1)


def _seq(*layers):
    torch.manual_seed(0)
    net = nn.Sequential(*layers)
    with torch.no_grad():  # drive the neurons so that they fire and reset
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(2.5)
    return net


def _ext(**kw):
    return st.ExtendedLIF(v_th0=0.8, v_leaky_alpha=0.9, v_leaky_beta=0.02, v_l=-1.0, ref_len=1, v_th_alpha=0.9,
                          v_th_incre=0.2, learnable_leak=True, **kw)


MODELS = {
    "IF": lambda b: _seq(nn.Linear(6, 10), st.IF(backend=b)),
    "LIF": lambda b: _seq(nn.Linear(6, 10), st.LIF(tau=2.5, backend=b)),
    "LIF-soft-nodecay-detach": lambda b: _seq(nn.Linear(6, 10), st.LIF(v_reset=None, decay_input=False,
                                                                        detach_reset=True, surrogate=sg.ATan(),
                                                                        backend=b)),
    "PLIF": lambda b: _seq(nn.Linear(6, 10), st.PLIF(init_tau=2.2, surrogate=sg.PiecewiseQuadratic(), backend=b)),
    "ExtendedLIF-soft": lambda b: _seq(nn.Linear(6, 10), _ext(reset_mode="soft", backend=b)),
    "ExtendedLIF-soft_constant": lambda b: _seq(nn.Linear(6, 10), _ext(reset_mode="soft_constant", dv=0.5,
                                                                      backend=b)),
    "SpikeLinear-dense": lambda b: _seq(nn.Linear(6, 10), st.LIF(backend=b), st.SpikeLinear(10, 5, backend=b),
                                        st.LIF(v_reset=None, backend=b)),
    "SpikeLinear-bool": lambda b: _seq(nn.Linear(6, 10), st.LIF(backend=b), ToBool(), st.SpikeLinear(10, 5, backend=b),
                                       st.PLIF(backend=b)),
    "convert-packed": lambda b: st.convert(_seq(nn.Linear(6, 10), st.LIF(backend=b), nn.Linear(10, 5),
                                                _ext(reset_mode="hard", backend=b)), backend=b),
    "convert-dropout": lambda b: st.convert(_seq(nn.Linear(6, 10), st.PLIF(backend=b), nn.Dropout(0.3),
                                                 nn.Linear(10, 5), st.LIF(backend=b)), backend=b),
    "surrogates": lambda b: _seq(nn.Linear(6, 10), AllSurrogates(b)),
}


def _state(model):
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, st.BaseNeuron):
            for k in m._state_names:
                t = getattr(m, k)
                out[f"{name}.{k}"] = t.detach().clone() if t is not None else None
    return out


def run_twice(model, compile_backend, shapes=((3, 2, 6), (5, 2, 6))):
    """Two calls without a reset (the state carries, and T changes: the second call recompiles with a
    dynamic T), then one backward through both. Returns outputs, states, input and parameter grads."""
    fn = torch.compile(model, fullgraph=True, backend=compile_backend) if compile_backend else model
    gen = torch.Generator().manual_seed(1)
    xs = [(torch.randn(s, generator=gen) * 1.2 + 0.3).requires_grad_() for s in shapes]
    outs, states = [], []
    for x in xs:
        torch.manual_seed(2)  # the same dropout draws in both runs
        y = fn(x)
        outs.append(y)
        states.append(_state(model))
    loss = sum((y.float() * torch.randn(y.shape, generator=gen)).sum() for y in outs)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return outs, states, [x.grad for x in xs], grads


def assert_same(eager, compiled, exact=True):
    tol = dict(rtol=0, atol=0) if exact else {}
    (o1, s1, gx1, gp1), (o2, s2, gx2, gp2) = eager, compiled
    for a, b in zip(o1, o2):
        torch.testing.assert_close(b, a, rtol=0, atol=0)  # spikes
    for a, b in zip(s1, s2):
        assert a.keys() == b.keys()
        for k in a:
            if a[k] is None:
                assert b[k] is None, k
            else:
                torch.testing.assert_close(b[k], a[k], **tol, msg=k)
    assert gp1.keys() == gp2.keys()
    for a, b in list(zip(gx1, gx2)) + [(gp1[k], gp2[k]) for k in gp1]:
        if a is None:  # no path from the loss (e.g. through a bool cast): AOTAutograd may give zeros
            assert b is None or not b.any()
        else:
            torch.testing.assert_close(b, a, **tol)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(MODELS))
def test_model_compiles_fullgraph_like_eager(name):
    backend = "auto"  # the Triton kernels (under the interpreter on CPU)
    eager_model = MODELS[name](backend)
    if name == "convert-packed":
        assert eager_model[1].packed_output  # the neuron hands a SpikeTensor to the SpikeLinear
    if name == "convert-dropout":
        assert eager_model[3].input_dropout == 0.3
    compiled_model = copy.deepcopy(eager_model)
    eager = run_twice(eager_model, None)
    compiled = run_twice(compiled_model, AOT)
    assert any(g is not None and g.abs().sum() > 0 for g in eager[3].values())
    assert_same(eager, compiled)


@pytest.mark.parametrize("name", ["PLIF", "ExtendedLIF-soft", "convert-packed"])
def test_torch_backend_compiles_like_eager(name):
    eager_model = MODELS[name]("torch")
    compiled_model = copy.deepcopy(eager_model)
    assert_same(run_twice(eager_model, None), run_twice(compiled_model, AOT))


def test_one_graph_one_op_per_kernel():
    """No graph break, and each layer is one opaque custom op in the graph Dynamo hands over."""
    model = MODELS["convert-packed"]("auto")
    counter = torch._dynamo.testing.CompileCounterWithBackend(AOT)
    torch.compile(model, fullgraph=True, backend=counter)(torch.randn(3, 2, 6, requires_grad=True))
    assert counter.frame_count == 1
    targets = [str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert targets.count("spiketriton.neuron_fwd") == 2
    assert targets.count("spiketriton.spike_matmul") == 1
    assert "spiketriton.pack" not in targets  # the neuron wrote its spikes packed


def test_spike_tensor_as_compiled_input():
    """A SpikeTensor (packed bytes + logical size + gradient anchor) passed into a compiled function."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 12)

    def f(p, w, b):
        return st.spike_matmul(p, w, b)

    results = []
    for fn in (f, torch.compile(f, fullgraph=True, backend=AOT)):
        xx = x.clone().requires_grad_()
        s, _ = F.lif(xx)
        p = st.pack_spikes(s)
        assert p.anchor is not None
        w = torch.randn(5, 12, generator=torch.Generator().manual_seed(3)).requires_grad_()
        b = torch.zeros(5, requires_grad=True)
        y = fn(p, w, b)
        (y * torch.arange(y.numel()).reshape(y.shape).cos()).sum().backward()
        results.append((y, xx.grad, w.grad, b.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert results[0][1].abs().sum() > 0  # the spikes' gradient went through the anchor


def test_functional_twins_compile():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 9) + 0.5
    v = torch.randn(2, 9)

    def f(x, v):
        s, v1 = F.lif(x, v, tau=3.0)
        s2, state = F.extended_lif(x, None, v_th0=0.7, v_leaky_alpha=0.8, ref_len=2, v_th_incre=0.1)
        return s, v1, s2, state.v, state.v_th_adpt, state.ref_cnt

    got = torch.compile(f, fullgraph=True, backend=AOT)(x, v)
    for a, b in zip(f(x, v), got):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_inference_under_no_grad():
    model = MODELS["convert-packed"]("auto")
    x = torch.randn(4, 2, 6)
    with torch.no_grad():
        want = model(x)
        st.reset(model)
        got = torch.compile(model, fullgraph=True, backend=AOT)(x)
    assert not got.requires_grad and model[1].v.grad_fn is None
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_check_binary_under_compile():
    lin = st.SpikeLinear(6, 3)
    fn = torch.compile(lin, fullgraph=True, backend=AOT)
    s = (torch.rand(4, 6) > 0.5).float()
    torch.testing.assert_close(fn(s), lin(s), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="SpikeLinear: input has values other than 0 and 1"):
        fn(s * 0.5 + 0.25)


HYBRID = {
    "a2s-rate": lambda H: (H.A2SRate(5), H.S2AGlobalRate()),
    "a2s-latency": lambda H: (H.A2SLatency(5), H.S2AWindowRate(5)),
    "a2s-learnable": lambda H: (H.A2SLearnable(5), H.S2ALearnable(5, 5)),
    "a2s-poisson": lambda H: (H.A2SPoisson(5), H.S2AGlobalRate()),
}


@pytest.mark.parametrize("name", sorted(HYBRID))
def test_hybrid_units_compile_like_eager(name):
    from spiketriton import hybrid as H

    torch.manual_seed(0)
    a2s, s2a = HYBRID[name](H)
    net = nn.Sequential(a2s, nn.Linear(8, 6), st.LIF(), s2a)
    with torch.no_grad():
        net[1].weight.mul_(4)
    x = torch.rand(3, 8)
    compiled = torch.compile(net, fullgraph=True, backend=AOT)
    outs, grads = [], []
    for fn in (net, compiled):
        net.zero_grad()
        torch.manual_seed(1)  # the Poisson draws
        y = fn(x)
        st.reset(net)
        (y * torch.arange(1.0, y.shape[-1] + 1)).sum().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    assert outs[0].abs().sum() > 0
    assert torch.equal(outs[0], outs[1])
    for g0, g1 in zip(*grads):
        assert torch.equal(g0, g1)


def test_hybrid_rate_check_under_compile():
    from spiketriton import hybrid as H

    fn = torch.compile(H.A2SRate(4), fullgraph=True, backend=AOT)
    fn(torch.rand(2, 3))
    with pytest.raises(RuntimeError, match="A2SRate: input has inf/NaN or values outside"):
        fn(torch.rand(2, 3) + 1.5)


def test_double_backward_under_compile_is_an_error():
    model = MODELS["LIF"]("auto")
    x = torch.randn(3, 2, 6, requires_grad=True)
    y = torch.compile(model, fullgraph=True, backend=AOT)(x)
    with pytest.raises(RuntimeError, match="create_graph|double backward"):
        (g,) = torch.autograd.grad((y * y.detach().cos()).sum(), x, create_graph=True)
        g.sum().backward()


@pytest.mark.parametrize("mode, backend", [("float", "triton"), ("float", "torch"), ("aware", "torch"),
                                           ("quantized", "triton"), ("quantized", "torch")])
def test_quant_modes_compile(mode, backend):
    """QModel (QLinear + QLIF) in each mode. ``aware`` runs torch ops only (no kernel to choose)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), st.LIF(tau=2.0), nn.Linear(12, 4), st.LIF(tau=3.0, v_reset=None))
    with torch.no_grad():  # both layers fire
        net[0].weight.mul_(6.0)
        net[2].weight.mul_(8.0)
        net[0].bias.add_(0.5)
        net[2].bias.add_(0.5)
    x = torch.rand(4, 3, 6)
    q = calibrated(net, x, backend)
    {"float": q.restore_float, "aware": q.aware, "quantized": q.quantize}[mode]()
    results = []
    for fn in (q, torch.compile(q, fullgraph=True, backend=AOT)):
        q.zero_grad(set_to_none=True)
        grad = mode != "quantized"
        xx = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            y = fn(xx)
            y2 = fn(xx)  # state carried
        if grad:
            (y.sum() + (y2 * 0.5).sum()).backward()
        q.reset()
        results.append([y, y2] + ([xx.grad] + [p.grad for p in q.parameters()] if grad else []))
    assert results[0][0].sum() > 0
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_quant_value_check_under_compile():
    """A check on tensor values (here: a neuron constant beyond int28) is a traced assert under compile."""
    net = nn.Sequential(nn.Linear(100, 16), st.IF())
    with torch.no_grad():
        net[0].weight.uniform_(0, 1e-4)
        net[0].bias.zero_()
    q = Q.prepare(net)
    q.collect_q_params()
    with torch.no_grad():
        q(torch.rand(2, 1, 100) * 1e-4)
    q.calculate_q_params()
    q.aware()
    with pytest.raises(RuntimeError, match="v_th0 = 1.0 is beyond int28"):
        torch.compile(q, fullgraph=True, backend=AOT)(torch.rand(2, 1, 100) * 1e-4)


def test_autocast_compiles_like_eager():
    """Under autocast bf16 the spiketriton layers agree exactly; the first nn.Linear (autocast's own
    bf16 matmul, upstream of every spiketriton op) gets weight/bias gradients rounded differently
    by the compiled backward: measured relative error <= 2.1e-3 over 5 seeds (bf16 eps is 7.8e-3)."""
    model = MODELS["convert-packed"]("auto")
    compiled = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = run_twice(model, None)
        got = run_twice(compiled, AOT)
    assert want[0][0].dtype == torch.bfloat16 and want[1][0]["1.v"].dtype == torch.float32
    for k in ("0.weight", "0.bias"):
        a, b = want[3].pop(k), got[3].pop(k)
        assert (b - a).norm() <= 5e-3 * a.norm(), k
    assert_same(want, got)


def test_inductor_default_backend():
    """The default backend (inductor: generated C++ around the opaque ops). Measured 2026-11-22 on 2
    busy cores: 6-9 s to compile forward and backward. Spikes and state equal eager exactly; the
    gradients differ by the order of inductor's fused fp32 reductions (the nn.Linear parts): worst
    relative error 2.1e-7 over 4 seeds, bound 1e-6."""
    # ExtendedLIF with its default floor v_l = -inf (a float constant the generated code must spell)
    eager_model = st.convert(_seq(nn.Linear(6, 10), st.ExtendedLIF(v_th0=0.5, ref_len=1, v_th_incre=0.1),
                                  nn.Linear(10, 5), st.PLIF()))
    assert eager_model[1].packed_output
    compiled_model = copy.deepcopy(eager_model)
    eager = run_twice(eager_model, None, shapes=((3, 2, 6), (3, 2, 6)))
    t0 = time.perf_counter()
    compiled = run_twice(compiled_model, "inductor", shapes=((3, 2, 6), (3, 2, 6)))
    elapsed = time.perf_counter() - t0
    (o1, s1, gx1, gp1), (o2, s2, gx2, gp2) = eager, compiled
    for a, b in zip(o1, o2):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    for a, b in zip(s1, s2):
        for k in a:
            if a[k] is not None:
                torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=0, msg=k)
    for a, b in list(zip(gx1, gx2)) + [(gp1[k], gp2[k]) for k in gp1]:
        assert (b - a).norm() <= 1e-6 * a.norm(), ((b - a).norm() / a.norm()).item()
    assert elapsed < 120, elapsed
