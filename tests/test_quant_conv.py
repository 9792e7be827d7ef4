"""quant.prepare on converted conv SNNs (SpikeConv2d, BatchNorm folded, spike max pooling, neurons that hand
over packed images): the links, the float / aware / quantized modes, QAT, and the chip file simulated bit for bit
against the quantized model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import quant as Q
from spiketriton.export import ExportError, load_chip, save_chip

from helpers import calibrated, run_fresh

KINDS = ["conv2d", "neuron", "maxpool2d", "conv2d", "neuron", "maxpool2d", "flatten", "linear", "neuron"]


def _vgg(convert=True):
    """A small Spiking VGG for [T, B, 2, 8, 8]: conv-BN-LIF-maxpool, a grouped conv with padding='same' and a
    multi-step BN (StepWise(bn) after StepWise(conv)), LIF, maxpool + flatten, linear, LIF. Gains chosen so
    that every layer fires at this seed (rates 0.19, 0.13, 0.2 / 0.37 over the two calls of the tests)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        st.StepWise(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)), st.LIF(tau=2.0),
        st.StepWise(nn.MaxPool2d(2)),
        st.StepWise(nn.Conv2d(6, 8, 3, padding="same", groups=2, bias=False)), st.StepWise(nn.BatchNorm2d(8)),
        st.LIF(tau=2.0, detach_reset=True),
        st.StepWise(nn.MaxPool2d(2), nn.Flatten()), nn.Linear(8 * 2 * 2, 5), st.LIF(tau=2.0))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(8.0)
        net[7].weight.abs_()  # an excitatory readout: the output fires
    net.eval()
    return st.convert(net, backend="torch") if convert else net


def _x():
    torch.manual_seed(1)
    return torch.rand(3, 2, 2, 8, 8) * 2


def _qlif_spikes(q, x):
    """The spikes of every QLIF for ``x`` from a reset state."""
    out = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: out.__setitem__(name, o.detach().clone()))
             for name, m in q.named_modules() if isinstance(m, Q.QLIF)]
    q.reset()
    try:
        with torch.no_grad():
            q(x)
    finally:
        for h in hooks:
            h.remove()
        q.reset()
    return out


def test_prepare_takes_a_converted_spiking_vgg():
    net = _vgg()
    assert isinstance(net[3][0], st.SpikeConv2d) and isinstance(net[2][0], st.SpikeMaxPool2d)
    assert isinstance(net[7], st.SpikeLinear)
    assert net[1].packed_output == "image" and net[5].packed_output == "image"
    x = _x()
    q = Q.prepare(net)
    conv1, conv2, lin = q.net[0][0], q.net[3][0], q.net[7]
    assert [type(m) for m in (conv1, conv2, lin)] == [Q.QConv2d, Q.QConv2d, Q.QLinear]
    assert isinstance(q.net[0][1], nn.Identity) and isinstance(q.net[4][0], nn.Identity)  # both BN forms folded
    assert isinstance(q.net[2][0], st.SpikeMaxPool2d) and isinstance(q.net[6][0], st.SpikeMaxPool2d)
    assert conv2.padding == (1, 1) and conv2.groups == 2 and conv2.bias is not None  # 'same' as numbers; BN's bias
    # links: only the first conv reads real input; the conv and the linear after the max poolings read spikes
    assert [m.is_encoder for m in (conv1, conv2, lin)] == [True, False, False]
    assert [m.feeds_neuron for m in (conv1, conv2, lin)] == [True, True, True]
    assert [q.net[i].feeder for i in (1, 5, 8)] == [conv1, conv2, lin]
    # float mode: the converted net's spikes (the QLIF's threshold is strict: equal H and V_th may differ)
    want = run_fresh(net, x)
    got = run_fresh(q, x)
    assert 0 < float(want.mean()) < 1
    assert (got != want).float().mean() <= 0.01
    assert torch.equal(run_fresh(_vgg(convert=False), x), want)  # (convert keeps the outputs)
    # quantized before or after convert: the same integers and spikes (nn.MaxPool2d is read as the OR too)
    before = calibrated(_vgg(convert=False), x, backend="torch").quantize()
    after = calibrated(net, x, backend="torch").quantize()
    for name in ("net.0.0", "net.3.0", "net.7"):
        a, b = before.get_submodule(name), after.get_submodule(name)
        assert not a.is_encoder or name == "net.0.0"
        assert torch.equal(a.weight_int, b.weight_int) and torch.equal(a.bias_int, b.bias_int), name
    assert torch.equal(run_fresh(before, x), run_fresh(after, x))


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_spiking_vgg_on_the_chip_is_bit_exact(tmp_path, per_channel, backend, device):
    net, x = _vgg().to(device), _x().to(device)
    q = calibrated(net, x, backend=backend, per_channel=per_channel).quantize()
    manifest = save_chip(q, tmp_path / "vgg.chip", x)
    layers = manifest["layers"]
    assert [layer["kind"] for layer in layers] == KINDS
    assert [layers[i]["input"] for i in (0, 3, 7)] == ["int8", "spikes", "spikes"]
    assert layers[3]["groups"] == 2 and layers[3]["padding"] == [1, 1] and manifest["output"] == "spikes"
    program = load_chip(tmp_path / "vgg.chip")
    q.reset()
    with torch.no_grad():
        want = [q(x), q(x)]  # the second call continues from the carried state
    got = [program.run(x.cpu()), program.run(x.cpu())]
    for g, w in zip(got, want):
        assert 0.0 < float(w.mean()) < 1.0
        assert np.array_equal(g, w.cpu().numpy())
    if backend == "triton":  # the integer kernels (QLIF per tensor, QLinear on spikes) give the torch path's spikes
        ref = calibrated(net, x, backend="torch", per_channel=per_channel).quantize()
        mine, theirs = _qlif_spikes(q, x), _qlif_spikes(ref, x)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_aware_equals_quantized_and_one_qat_step_trains(device):
    net, x = _vgg().to(device), _x().to(device)
    q = calibrated(net, x, backend="torch").quantize()
    want = _qlif_spikes(q, x)
    q.aware()
    got = _qlif_spikes(q, x)
    assert list(got) == ["net.1", "net.5", "net.8"]
    for name in want:
        assert torch.equal(got[name], want[name]), name
    layers = [q.net[0][0], q.net[3][0], q.net[7]]
    before = [m.weight.detach().clone() for m in layers]
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    q.train()
    q.reset()
    out = q(x)
    loss = ((out.mean(0) - 0.5) ** 2).sum()
    loss.backward()
    for m in layers:
        g = m.weight.grad
        assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0, m.qname
    opt.step()
    assert all(not torch.equal(m.weight, b) for m, b in zip(layers, before))
    q.reset()
    q.quantize()  # the moved weights quantize again, and the chip still runs them bit for bit
    q.eval()
    assert torch.equal(_qlif_spikes(q.aware(), x)["net.8"], _qlif_spikes(q.quantize(), x)["net.8"])


def test_quantized_file_round_trip_of_a_conv_net(tmp_path):
    net, x = _vgg(), _x()
    q = calibrated(net, x, backend="torch").quantize()
    q.save_quantized_model(tmp_path / "vgg.safetensors")
    back = Q.load_quantized_model(tmp_path / "vgg.safetensors", Q.prepare(net))
    assert back.q_mode == Q.QUANTIZED
    assert torch.equal(run_fresh(back, x), run_fresh(q, x))


def test_qconv2d_reads_packed_images():
    net, x = _vgg(), _x()
    q = calibrated(net, x, backend="torch")
    conv = q.net[3][0]
    s = (torch.rand(3, 2, 6, 4, 4) < 0.3).float()
    for mode in (q.restore_float, q.quantize, q.aware):
        mode()
        with torch.no_grad():
            assert torch.equal(conv(st.pack_image(s)), conv(s)), conv.mode


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # (torch's, for the even kernel)
def test_padding_strings_and_what_the_chip_refuses(tmp_path):
    valid = Q.QConv2d.from_float(st.SpikeConv2d(2, 3, 3, padding="valid"))
    assert valid.padding == (0, 0)
    even = st.SpikeConv2d(2, 3, 2, padding="same")  # one more row / column after than before: no numbers
    q_even = Q.QConv2d.from_float(even)
    assert q_even.padding == "same"
    s = (torch.rand(4, 2, 5, 5) < 0.5).float()
    assert torch.allclose(q_even(s), even(s.unsqueeze(0))[0], atol=1e-6)
    torch.manual_seed(0)
    net = nn.Sequential(st.StepWise(nn.Conv2d(1, 2, 3, padding=1)), st.LIF(),
                        st.StepWise(nn.Conv2d(2, 2, 2, padding="same")), st.LIF())
    net = st.convert(net, backend="torch")
    x = torch.rand(2, 1, 1, 4, 4)
    q = calibrated(net, x, backend="torch").quantize()
    with pytest.raises(ExportError, match=r"save_chip: (net\.)?2\.0: Conv2d padding='same'; an even kernel pads one side more"):
        save_chip(q, tmp_path / "bad.chip", x)
    averaged = nn.Sequential(st.StepWise(nn.Conv2d(1, 2, 3, padding=1)), st.LIF(), st.StepWise(nn.AvgPool2d(2)),
                             st.StepWise(nn.Conv2d(2, 2, 3)), st.LIF())
    with torch.no_grad():
        averaged[0][0].weight.mul_(8.0)
    averaged = st.convert(averaged, backend="torch")
    assert isinstance(averaged[2][0], st.SpikeAvgPool2d)
    q = calibrated(averaged, torch.rand(2, 1, 1, 8, 8), backend="torch").quantize()
    assert q.net[3][0].is_encoder  # firing fractions: an int8 encoding layer in the quantized model
    with pytest.raises(ExportError, match=r"save_chip: net.2.0: AvgPool2d averages"):
        save_chip(q, tmp_path / "avg.chip", torch.rand(2, 1, 1, 8, 8))


def test_prepare_errors_name_the_problem():
    net = _vgg()
    st.set_step_mode(net, "s")
    with pytest.raises(ValueError, match=r"prepare: 0 \(StepWise\) runs single-step \(step_mode='s'\), but the "
                                         r"quantized model runs sequences"):
        Q.prepare(net)
    pooled_current = nn.Sequential(st.StepWise(st.SpikeConv2d(2, 4, 3), st.SpikeMaxPool2d(2)), st.LIF())
    with pytest.raises(RuntimeError, match=r"1 QLIF neuron\(s\) \('net.1'\) are not fed directly by a "
                                           r"QLinear/QConv2d .* pool the neuron's spikes instead"):
        Q.prepare(pooled_current)


class _Untraceable(nn.Module):
    """The identity, with data-dependent control flow that torch.fx cannot trace."""

    def forward(self, x):
        if bool((x < 0).any()):
            return x
        return x


def test_sequential_fallback_links_through_stepwise_and_max_pooling():
    """Where fx cannot trace the model, plain containers are read in order, through the StepWise inside
    them: the same links as the traced model."""
    traced = Q.prepare(_vgg())
    net = _vgg()
    net.append(_Untraceable())
    from spiketriton.quant.model import _links_fx

    assert isinstance(_links_fx(Q.prepare(net).net), Exception)  # (the fallback is what runs)
    fallback = Q.prepare(net)
    for name, m in traced.named_modules():
        if isinstance(m, Q.QConv2d) or isinstance(m, Q.QLinear):
            other = fallback.get_submodule(name)
            assert (other.is_encoder, other.feeds_neuron) == (m.is_encoder, m.feeds_neuron), name
        if isinstance(m, Q.QLIF):
            assert fallback.get_submodule(name).feeder is fallback.get_submodule(m.feeder.qname), name
    x = _x()
    q = calibrated(net, x, backend="torch").quantize()
    assert torch.equal(run_fresh(q, x), run_fresh(calibrated(_vgg(), x, backend="torch").quantize(), x))
