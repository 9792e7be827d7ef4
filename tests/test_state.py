"""state_dict save/load round trips for every module, and ``.to()`` across dtypes and devices.

- A round trip goes through ``torch.save`` / ``torch.load(weights_only=True)`` into a module built
  with other random parameters; it must give the same outputs and the same state_dict. The carried
  state (v, v_th_adpt, ref_cnt) is never in a state_dict.
- ``.to(dtype)`` casts parameters and buffers only: the fp32 state, the fixed neuron constants and
  the quantization scales keep their precision (a rounded scale would change the integer constants).
- ``.to(device)`` also moves the carried state, so that a sequence continues on the new device. On a
  CPU-only machine the move is checked with the meta device (the ops' fake functions run there).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import hybrid as H
from spiketriton import quant as Q
from spiketriton.reference import neuron_reference

from helpers import calibrated as _calibrated

BACKENDS = ["triton", "torch"]


def roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _perturbed(make, seed):
    torch.manual_seed(seed)
    m = make()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


# module name -> (builder, input maker); every learnable or stored tensor gets a non-default value
MODULES = {
    "IF": (lambda: st.IF(v_reset=None), lambda: torch.randn(5, 3, 7) + 0.6),
    "LIF": (lambda: st.LIF(tau=3.0), lambda: torch.randn(5, 3, 7) + 0.6),
    "PLIF": (lambda: st.PLIF(init_tau=2.5), lambda: torch.randn(5, 3, 7) + 0.6),
    "ExtendedLIF": (lambda: st.ExtendedLIF(v_th0=0.8, v_leaky_alpha=0.9, v_leaky_beta=0.02, ref_len=1, v_th_alpha=0.9,
                                           v_th_incre=0.2, v_l=-0.5), lambda: torch.randn(5, 3, 7) + 0.6),
    "ExtendedLIF-learnable_leak": (lambda: st.ExtendedLIF(v_th0=0.8, v_leaky_alpha=0.9, v_leaky_beta=0.02,
                                                          reset_mode="soft", learnable_leak=True),
                                   lambda: torch.randn(5, 3, 7) + 0.6),
    "SpikeLinear": (lambda: st.SpikeLinear(7, 4), lambda: (torch.rand(5, 3, 7) > 0.5).float()),
    "A2SLearnable": (lambda: H.A2SLearnable(6), lambda: torch.rand(3, 7)),
    "S2ALearnable": (lambda: H.S2ALearnable(8, window_size=4), lambda: (torch.rand(8, 3, 7) > 0.5).float()),
    "S2AWindowRate": (lambda: H.S2AWindowRate(4), lambda: (torch.rand(8, 3, 7) > 0.5).float()),
    "TemporalFilter": (lambda: H.TemporalFilter(3, learnable=True, bias=True), lambda: torch.rand(2, 3, 4)),
    "HybridUnit": (lambda: H.HybridUnit(window=H.SplitWindow(2), temporal_filter=H.TemporalFilter(2, learnable=True),
                                        nonlinearity=torch.tanh), lambda: torch.rand(4, 3, 5)),
}

EXPECTED_KEYS = {
    "IF": set(), "LIF": set(), "PLIF": {"w"}, "ExtendedLIF": set(),
    "ExtendedLIF-learnable_leak": {"v_leaky_alpha", "v_leaky_beta"}, "SpikeLinear": {"weight", "bias"},
    "A2SLearnable": {"weight", "bias"}, "S2ALearnable": {"temporal_filter.kernel", "temporal_filter.bias"},
    "S2AWindowRate": {"temporal_filter.kernel"}, "TemporalFilter": {"kernel", "bias"},
    "HybridUnit": {"temporal_filter.kernel"},
}


@pytest.mark.parametrize("name", list(MODULES))
def test_state_dict_round_trip(name):
    make, inp = MODULES[name]
    m1 = _perturbed(make, 0)
    if name == "S2AWindowRate":
        m1.temporal_filter.kernel.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))  # a buffer, not a parameter
    x = inp()
    want = m1(x)
    sd = roundtrip(m1.state_dict())
    assert set(sd) == EXPECTED_KEYS[name]  # never the carried state
    m2 = _perturbed(make, 1)
    if sd:
        assert any(not torch.equal(m2.state_dict()[k], v) for k, v in sd.items())  # it had other values
    m2.load_state_dict(sd, strict=True)
    got = m2(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for k, v in m2.state_dict().items():
        assert torch.equal(v, sd[k]), k
    if isinstance(m1, st.BaseNeuron):  # the state went on in m1, not into the file
        assert m1.v is not None and m2.v is not None
        m1.reset()


def _qnet(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 12), st.LIF(tau=2.0), nn.Linear(12, 8), nn.Flatten(0, 0),
                        st.ExtendedLIF(v_th0=0.8, v_leaky_alpha=0.9, ref_len=1),
                        nn.Unflatten(2, (2, 2, 2)), nn.Flatten(2), nn.Linear(8, 3))
    with torch.no_grad():
        net[0].weight.mul_(6.0)
        net[2].weight.mul_(8.0)
        net[0].bias.add_(0.5)
        net[2].bias.add_(0.5)
    return net


def _conv_net(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), st.LIF(), nn.Conv2d(4, 3, 3, padding=1), st.IF())
    with torch.no_grad():
        net[0].weight.mul_(4.0)
        net[2].weight.mul_(6.0)
    return net


def _set_mode(q, mode):
    {"float": q.restore_float, "aware": q.aware, "quantized": q.quantize}[mode]()


@pytest.mark.parametrize("mode", ["float", "aware", "quantized"])
@pytest.mark.parametrize("arch", ["linear", "conv-per_channel"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_quant_state_dict_round_trip(backend, arch, mode):
    """QLinear / QConv2d / QLIF: a fresh QModel of the same architecture (other weights) loads the
    state_dict (int8 weights, int32 biases and scales included, sized by the checkpoint) and, in the
    same mode, gives the same outputs. The flow: collect_q_params -> load_state_dict ->
    calculate_q_params (recomputed from the loaded weights and calibration maxima) -> mode."""
    make, cfg = (_qnet, {}) if arch == "linear" else (_conv_net, dict(per_channel=True, bits=6))
    x = torch.rand(4, 3, 6) if arch == "linear" else torch.rand(3, 2, 2, 5, 5)
    q1 = _calibrated(make(0), x, backend, **cfg)
    _set_mode(q1, mode)
    with torch.no_grad():
        want = q1(x)
    q1.reset()
    assert want.abs().sum() > 0
    sd = roundtrip(q1.state_dict())
    if mode == "quantized":
        assert any(k.endswith("weight_int") and v.numel() for k, v in sd.items())
    q2 = Q.prepare(make(1), **cfg)
    for m in q2.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    q2.collect_q_params()
    q2.load_state_dict(sd, strict=True)
    q2.calculate_q_params()
    _set_mode(q2, mode)
    with torch.no_grad():
        got = q2(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for k, v in q2.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_quant_state_dict_wrong_shape_is_a_clear_error():
    q = _calibrated(_qnet(0), torch.rand(4, 3, 6), "torch").quantize()
    sd = q.state_dict()
    sd["net.0.weight_int"] = torch.zeros(5, 5, dtype=torch.int8)
    with pytest.raises(RuntimeError, match=r"net\.0\.weight_int has shape \(5, 5\) in the checkpoint; this QLinear "
                                           r"takes one of \[\(0,\), \(12, 6\)\]"):
        Q.prepare(_qnet(1)).load_state_dict(sd)


# ------------------------------------------------------------------------------------------- #
# .to(dtype)
# ------------------------------------------------------------------------------------------- #

NEURONS = ["IF", "LIF", "PLIF", "ExtendedLIF", "ExtendedLIF-learnable_leak"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("name", NEURONS)
def test_neuron_to_dtype(name, dtype):
    """Parameters follow the cast (PLIF's w, a learnable leak: rounded to the dtype, gradients in it);
    the fixed constants and the state do not: the cast module equals an fp32 module holding the
    parameters' rounded values, on the same input, bit for bit (forward) and to the gradients' dtype."""
    make, inp = MODULES[name]
    m = _perturbed(make, 0)
    m_cast = copy.deepcopy(m).to(dtype)
    for p in m_cast.parameters():
        assert p.dtype == dtype
    ref = copy.deepcopy(m)
    with torch.no_grad():
        for p, pc in zip(ref.parameters(), m_cast.parameters()):
            p.copy_(pc.float())  # the rounded values, in fp32
    x = inp().to(dtype)
    x1, x2 = x.clone().requires_grad_(), x.float().requires_grad_()
    s = m_cast(x1)
    assert s.dtype == dtype and m_cast.v.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    s_ref = ref(x2)
    assert m_cast.spec == m.spec
    for k in ("tau", "v_leaky_alpha", "v_leaky_beta"):
        value = m.__dict__.get(k)  # the fixed constants are plain floats (parameters live elsewhere)
        if isinstance(value, float):
            assert m_cast.__dict__[k] == value, k
    if dtype == torch.float64:  # the fp64 path computes in fp64: the fp64 autograd reference, exactly
        tr = neuron_reference(x.detach(), None, None, None, m_cast._params(x).double().detach(), m_cast.spec)
        assert torch.equal(s.detach(), tr.spikes) and s.sum() > 0
    else:
        assert torch.equal(s.float(), s_ref) and s.sum() > 0
    g = torch.randn(s.shape)
    (s.float() * g).sum().backward()
    assert x1.grad.dtype == dtype
    for p in m_cast.parameters():
        assert p.grad is not None and p.grad.dtype == dtype
    if name == "PLIF" and dtype != torch.float64:
        # PLIF keeps H in fp32 for its w: the gradient of the fp32 module (given the upstream gradient
        # as rounded to the spikes' dtype), rounded once to the dtype
        (s_ref * g.to(dtype).float()).sum().backward()
        rel = (m_cast.w.grad.double() - ref.w.grad.double()).abs() / ref.w.grad.double().abs()
        assert rel <= torch.finfo(dtype).eps, rel


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_spike_linear_to_dtype(backend, dtype):
    torch.manual_seed(0)
    lin = st.SpikeLinear(20, 6, backend=backend).to(dtype)
    s = (torch.rand(4, 3, 20) > 0.5).float()
    if backend == "triton" and dtype == torch.float64:
        with pytest.raises(TypeError, match="Triton kernels take float32, float16 or bfloat16 weights"):
            lin(s)
        return
    y = lin(s)
    assert y.dtype == dtype and lin.weight.dtype == dtype
    want = s.double() @ lin.weight.double().T + lin.bias.double()  # exact sum of the stored weights
    # fp32 accumulation and one rounding: <= 1 ulp (the interpreter truncates bf16), exact in fp64
    tol = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-15
    assert ((y.double() - want).abs() <= tol * want.abs() + 1e-30).all()
    y.sum().backward()
    assert lin.weight.grad.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_quantized_model_to_bf16_keeps_scales_and_integers(backend):
    """``.to(torch.bfloat16)`` of a quantized model: the fp32 scales stay fp32 (a bf16 scale changes
    the neurons' integer constants), int8/int32 tensors stay, and the integer network gives the same
    spikes; the float readout comes out in bf16."""
    x = torch.rand(4, 3, 6)
    q = _calibrated(_qnet(0), x, backend).quantize()
    with torch.no_grad():
        want = q(x)
    q.reset()
    consts = q.net[4].int_constants(q.net[2].current_scale(), (3, 8))
    scales = {k: v.clone() for k, v in q.state_dict().items() if k.endswith(("scale", "amax"))}
    q.to(torch.bfloat16)
    for k, v in q.state_dict().items():
        if k in scales:
            assert v.dtype == torch.float32 and torch.equal(v, scales[k]), k
    assert q.net[0].weight.dtype == torch.bfloat16 and q.net[0].weight_int.dtype == torch.int8
    for k, v in q.net[4].int_constants(q.net[2].current_scale(), (3, 8)).items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(consts[k])), k
    spikes = {}
    q.net[4].register_forward_hook(lambda m, i, o: spikes.__setitem__("n", o))
    with torch.no_grad():
        got = q(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want.to(torch.bfloat16), rtol=0, atol=0)
    assert spikes["n"].sum() > 0


# ------------------------------------------------------------------------------------------- #
# .to(device), state carried
# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", NEURONS + ["QLIF"])
def test_to_device_moves_the_state_and_a_dtype_cast_keeps_it(name):
    make = MODULES[name][0] if name != "QLIF" else (lambda: Q.QLIF(v_th0=0.8, v_leaky_alpha=0.9, ref_len=1,
                                                                    v_th_incre=0.1))
    m = make()
    m(torch.randn(4, 3, 7) + 0.6)
    before = {k: getattr(m, k) for k in m._state_names if getattr(m, k) is not None}
    assert before
    m.to(torch.float64)  # a dtype cast: the state keeps its dtype and values
    for k, t in before.items():
        assert getattr(m, k) is t
    m.to(torch.float32)
    m.to("meta")
    for k, t in before.items():
        moved = getattr(m, k)
        assert moved.device.type == "meta" and moved.dtype == t.dtype and moved.shape == t.shape, k
    s = m(torch.randn(2, 3, 7, device="meta"))  # the sequence goes on there (the ops' fake functions)
    assert s.device.type == "meta" and s.shape == (2, 3, 7)


@pytest.mark.gpu
@pytest.mark.parametrize("name", NEURONS)
def test_to_cuda_mid_sequence_continues(name):
    """Half a sequence on the CPU, .to("cuda"), the other half on the GPU: as one run on the GPU."""
    make, inp = MODULES[name]
    torch.manual_seed(0)
    x = inp()
    m_split = _perturbed(make, 0)
    m_gpu = copy.deepcopy(m_split).to("cuda")
    s1 = m_split(x[:2])
    m_split.to("cuda")
    s2 = m_split(x[2:].cuda())
    want = m_gpu(x.cuda())
    torch.testing.assert_close(torch.cat([s1.cuda(), s2]), want, rtol=0, atol=0)
    torch.testing.assert_close(m_split.v, m_gpu.v, rtol=0, atol=1e-6)


def test_other_libraries_keywords_and_a_forgotten_reset_get_hints():
    """SpikingJelly's / snnTorch's keywords name the spiketriton spelling; a second batch without
    reset() says to reset instead of torch's 'backward through the graph a second time'."""
    import spiketriton as st

    with pytest.raises(TypeError, match="surrogate="):
        st.LIF(surrogate_function=st.surrogate.ATan())
    with pytest.raises(TypeError, match="v_threshold="):
        st.IF(threshold=1.0)
    n, fc = st.LIF(backend="torch"), torch.nn.Linear(4, 4)
    x = torch.rand(3, 2, 4)
    n(fc(x)).sum().backward()
    with pytest.raises(RuntimeError, match=r"spiketriton.reset\(net\)"):
        n(fc(x)).sum().backward()
    st.reset(n)
    n(fc(x)).sum().backward()  # after the reset it trains again
    n.v = n.v.detach()  # truncated BPTT: a detached state carries on
    n(fc(x)).sum().backward()
