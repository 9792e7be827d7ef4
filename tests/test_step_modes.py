"""Step modes: T single-step calls equal one multi-step call bit for bit (spikes, state, recorded H/V
sequences, BPTT gradients of the input, the carried-in state and the learnable parameters), on the
PyTorch path and the Triton kernels; shape safety; set_step_mode; store_v_seq against SpikingJelly."""

import pytest
import torch

import spiketriton as st
from spiketriton.reference.neuron import neuron_reference

BACKENDS = ["torch", "triton"]

NEURONS = {
    "IF": lambda **k: st.IF(**k),
    "IF-soft": lambda **k: st.IF(v_reset=None, **k),
    "LIF": lambda **k: st.LIF(tau=2.0, **k),
    "LIF-nodecay-soft": lambda **k: st.LIF(tau=3.0, decay_input=False, v_reset=None, **k),
    "PLIF": lambda **k: st.PLIF(init_tau=2.5, **k),
    "ExtendedLIF": lambda **k: st.ExtendedLIF(v_leaky_alpha=0.75, v_leaky_beta=0.0, v_th_alpha=0.8,
                                              v_th_incre=0.25, ref_len=1, v_l=-0.5, reset_mode="soft",
                                              learnable_leak=True, **k),
}


def _x(T=5, B=3, N=7, seed=0):
    return torch.rand(T, B, N, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.2


def _params(m):
    return [p for p in m.parameters()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(NEURONS))
def test_single_steps_equal_one_multistep_call_bit_for_bit(kind, backend):
    x = _x()
    multi = NEURONS[kind](backend=backend, store_v_seq=True)
    single = NEURONS[kind](backend=backend, step_mode="s")
    single.load_state_dict(multi.state_dict())
    s_multi = multi(x)
    steps, v_steps = [], []
    for t in range(x.shape[0]):
        steps.append(single(x[t]))
        v_steps.append(single.v.clone())
    assert torch.equal(torch.stack(steps), s_multi)
    for name in multi._state_names:
        assert torch.equal(getattr(single, name), getattr(multi, name)), name
    # the recorded V sequence is the state each single step carried
    assert torch.equal(torch.stack(v_steps), multi.v_seq)
    assert multi.h_seq.dtype == torch.float32 and multi.h_seq.shape == x.shape
    # and a second call continues the sequence in both modes
    x2 = _x(seed=1)
    s2 = multi(x2)
    assert torch.equal(torch.stack([single(x2[t]) for t in range(x2.shape[0])]), s2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(NEURONS))
def test_bptt_through_single_steps_equals_the_multistep_gradients(kind, backend):
    x = _x(T=4)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    out = {}
    for mode in ("m", "s"):
        m = NEURONS[kind](backend=backend, step_mode=mode)
        torch.manual_seed(0)
        v0 = (torch.rand(x.shape[1:]) * 0.5).requires_grad_()
        m.v = v0
        xi = x.clone().requires_grad_()
        s = m(xi) if mode == "m" else torch.stack([m(xi[t]) for t in range(x.shape[0])])
        loss = (s * g).sum() + (m.v * 0.3).sum()  # the last state's gradient too
        grads = torch.autograd.grad(loss, [xi, v0] + _params(m))
        out[mode] = (s.detach(), grads)
    assert torch.equal(out["m"][0], out["s"][0])
    gm, gs = out["m"][1], out["s"][1]
    assert torch.equal(gm[0], gs[0]), "dL/dx"
    assert torch.equal(gm[1], gs[1]), "dL/dv0"
    for a, b in zip(gm[2:], gs[2:]):
        # a parameter's gradient is a sum over steps: the multi-step kernel adds the steps in another
        # order than autograd adds T calls (fp32 rounding of the sum only)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_step_with_packed_output(backend):
    x = _x()
    m = st.LIF(backend=backend, packed_output=True, step_mode="s")
    ref = st.LIF(backend=backend)(x)
    outs = [m(x[t]) for t in range(x.shape[0])]
    assert all(isinstance(o, st.SpikeTensor) and o.shape == x.shape[1:] for o in outs)
    assert torch.equal(torch.stack([o.unpack() for o in outs]), ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recorded_h_sequence_matches_the_reference(backend):
    x = _x()
    for kind in ("LIF", "ExtendedLIF"):
        m = NEURONS[kind](backend=backend, store_v_seq=True)
        m(x)
        trace = neuron_reference(x, None, None, None, m._params(x).detach(), m.spec)
        assert torch.allclose(m.h_seq, trace.h.float(), rtol=1e-6, atol=1e-6)
        assert torch.allclose(m.v_seq[-1], trace.v.float(), rtol=1e-6, atol=1e-6)
    m.reset()
    assert m.h_seq is None and m.v_seq is None


def test_store_v_seq_records_without_grad_and_in_single_steps():
    x = _x()
    m = st.LIF(store_v_seq=True, step_mode="s")
    with torch.no_grad():
        m(x[0])
    assert m.v_seq.shape == (1,) + x.shape[1:] and not m.v_seq.requires_grad
    assert torch.equal(m.v_seq[0], m.v)


def test_lif_v_seq_agrees_with_spikingjelly():
    sj = pytest.importorskip("spikingjelly.activation_based.neuron")
    x = _x(T=8, B=4, N=6)
    for kw in (dict(tau=2.0), dict(tau=3.0, decay_input=False), dict(tau=2.0, v_reset=None)):
        theirs = sj.LIFNode(step_mode="m", store_v_seq=True, **kw)
        s_theirs = theirs(x)
        ours = st.LIF(store_v_seq=True, backend="torch", **kw)
        s_ours = ours(x)
        assert torch.equal(s_ours, s_theirs), kw
        assert torch.allclose(ours.v_seq, theirs.v_seq, rtol=0, atol=1e-6), kw


def test_multistep_neuron_refuses_2d_input_and_names_the_way_out():
    with pytest.raises(ValueError, match=r"2-D input of shape \(4, 10\).*step_mode='s'.*x.unsqueeze\(1\)"):
        st.LIF()(torch.rand(4, 10))
    # a snnTorch-style loop over time steps fails on its first call instead of computing something else
    x = torch.rand(5, 4, 10)
    lif = st.LIF()
    with pytest.raises(ValueError, match="step_mode='s'"):
        for t in range(5):
            lif(x[t])


def test_single_step_shapes_and_errors():
    m = st.IF(step_mode="s")
    assert m(torch.ones(3)).shape == (3,)  # [B] (no feature dimension) is one step too
    m.reset()
    assert m(torch.ones(2, 3, 4)).shape == (2, 3, 4)
    m.reset()
    with pytest.raises(ValueError, match="0-d"):
        m(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"step_mode must be 'm' .* or 's'"):
        st.LIF(step_mode="single")
    with pytest.raises(TypeError, match="store_v_seq must be True or False"):
        st.LIF(store_v_seq="yes")
    m = st.LIF(step_mode="s")
    m(torch.ones(2, 3))
    with pytest.raises(ValueError, match="reset"):
        m(torch.ones(5, 3))  # another batch size without reset(): the carried state does not fit


def test_set_step_mode_switches_a_model_and_resets_it():
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), st.LIF(), torch.nn.Linear(6, 2), st.ExtendedLIF())
    x = torch.rand(5, 3, 4)
    y_multi = net(x)
    assert st.set_step_mode(net, "s") is net
    assert net[1].v is None and all(m.step_mode == "s" for m in (net[1], net[3]))
    y_single = torch.stack([net(x[t]) for t in range(5)])
    assert torch.equal(y_single, y_multi)
    st.set_step_mode(net, "m")
    with pytest.raises(ValueError, match="step_mode must be"):
        st.set_step_mode(net, "x")
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        st.set_step_mode("net", "s")


def test_set_step_mode_refuses_a_neuron_without_step_modes():
    from spiketriton.quant.modules import QLIF

    with pytest.raises(TypeError, match="QLIF.*runs multi-step only"):
        st.set_step_mode(torch.nn.Sequential(QLIF()), "s")


def test_stepwise_passes_single_steps_straight_through():
    net = torch.nn.Sequential(st.StepWise(torch.nn.Conv2d(1, 2, 3, padding=1)), st.LIF(),
                              torch.nn.Flatten(-3), torch.nn.Linear(2 * 4 * 4, 3))
    x = torch.rand(4, 2, 1, 4, 4)
    y_multi = net(x)
    st.set_step_mode(net, "s")
    assert net[0].step_mode == "s"
    y_single = torch.stack([net(x[t]) for t in range(4)])
    torch.testing.assert_close(y_single, y_multi, rtol=0, atol=0)


def test_plif_tau_of_a_saturated_w_is_infinite():
    m = st.PLIF()
    with torch.no_grad():
        m.w.fill_(-200.0)
    assert m.tau == float("inf")


@pytest.mark.parametrize("backend", BACKENDS)
def test_v_init_starts_the_membrane_and_is_checked(backend):
    x = torch.full((3, 1, 1), 0.3)
    m = st.IF(v_reset=None, v_init=0.5, backend=backend, store_v_seq=True)
    assert m(x).flatten().tolist() == [0.0, 1.0, 0.0]  # 0.8, 1.1 -> spike -> 0.1, 0.4
    torch.testing.assert_close(m.v_seq.flatten(), torch.tensor([0.8, 0.1, 0.4]))
    assert "v_init=0.5" in repr(m) and "v_init" not in repr(st.LIF())
    with pytest.raises(ValueError, match="v_init must be finite"):
        st.LIF(v_init=float("nan"))
    with pytest.raises(TypeError, match="v_init must be a real number"):
        st.PLIF(v_init="0.5")


def test_modules_pickled_before_the_new_options_still_run():
    """torch.save(model) of an earlier version: the instances lack step_mode, store_v_seq, the V record
    and SpikeLinear's event_driven and cache; the class defaults stand in."""
    lif, lin = st.LIF(), st.SpikeLinear(6, 3)
    for m, names in ((lif, ("step_mode", "store_v_seq", "h_seq", "_record")), (lin, ("event_driven", "_wt_cache"))):
        for n in names:
            m.__dict__.pop(n, None)
    x = torch.rand(4, 2, 6)
    with torch.no_grad():
        y = lin(lif(x))
    assert y.shape == (4, 2, 3) and lif.v_seq is None
