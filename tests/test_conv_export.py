"""SpikeConv2d and spike pooling leave the package: NIR (Conv2d, AvgPool2d, SumPool2d, and max pooling of
spikes as SumPool2d + Threshold) with round trips that give the same spikes, and the chip format (conv2d,
sumpool2d, maxpool2d) simulated bit for bit against the quantized model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton.export import ExportError, NIRFormatError, from_nir, load_chip, save_chip, save_nir, to_nir

from helpers import calibrated, run_fresh

nir = pytest.importorskip("nir")


def _spike_conv_net(gain=5.0):
    """A converted conv SNN: SpikeConv2d, max pooling of spikes (packed hand-over), average and sum
    pooling, hard-reset neurons that start at rest (what NIR can express)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        st.StepWise(nn.Conv2d(2, 6, 3, padding=1)), st.LIF(tau=2.0, backend="torch"),
        st.StepWise(nn.Conv2d(6, 8, 3, padding=1, bias=False)), st.IF(backend="torch"),
        st.StepWise(nn.MaxPool2d(2)),
        st.StepWise(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.AvgPool2d(2, divisor_override=1)),
        st.IF(v_threshold=2.0, backend="torch"),
        st.StepWise(nn.AvgPool2d(2)), nn.Flatten(2), nn.Linear(8, 5),
        st.LIF(tau=2.0, decay_input=False, backend="torch"))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(gain)
    return st.convert(net, backend="torch")


def test_nir_round_trip_of_spike_conv_and_pooling(tmp_path):
    net = _spike_conv_net()
    kinds = [type(m).__name__ for m in net.modules()]
    assert kinds.count("SpikeConv2d") == 2 and "SpikeMaxPool2d" in kinds and "SpikeAvgPool2d" in kinds
    assert net[3].packed_output == "image"  # the exports read the model with float spikes all the same
    x = torch.rand(4, 2, 2, 16, 16) * 2
    want = run_fresh(net, x)
    assert 0 < want.mean() < 1
    graph = to_nir(net, x)
    names = ["0.0", "1", "2.0", "3", "4.0", "4.0.or", "5.0", "5.1", "6", "7.0", "8", "9", "10"]
    kinds = [type(graph.nodes[n]).__name__ for n in names]
    assert kinds == ["Conv2d", "LIF", "Conv2d", "IF", "SumPool2d", "Threshold", "Conv2d", "SumPool2d", "IF",
                     "AvgPool2d", "Flatten", "Affine", "LIF"]
    assert ("4.0", "4.0.or") in graph.edges and ("4.0.or", "5.0") in graph.edges
    assert np.all(graph.nodes["4.0.or"].threshold == 0) and graph.nodes["4.0.or"].threshold.shape == (8, 8, 8)
    np.testing.assert_array_equal(graph.nodes["2.0"].weight, net[2][0].weight.detach().numpy())
    save_nir(net, tmp_path / "conv.nir", x)
    for back in (from_nir(graph, backend="torch"), from_nir(tmp_path / "conv.nir", backend="torch")):
        assert isinstance(back[4][0], st.SpikeMaxPool2d)
        assert torch.equal(run_fresh(back, x), want)
        st.convert(back, backend="torch")  # spike layers again: the same spikes
        assert isinstance(back[2][0], st.SpikeConv2d)
        assert torch.equal(run_fresh(back, x), want)


def test_nir_refuses_what_it_cannot_express():
    x = torch.rand(2, 1, 2, 6, 6)
    not_spikes = nn.Sequential(st.StepWise(st.SpikeMaxPool2d(2)), st.IF(backend="torch"))
    with pytest.raises(ExportError, match="to_nir: 0.0: SpikeMaxPool2d of values that are not spikes: MaxPool2d "
                                          "cannot be exported"):
        to_nir(not_spikes, x)
    ceil = nn.Sequential(st.IF(backend="torch"), st.StepWise(st.SpikeMaxPool2d(2, ceil_mode=True)))
    with pytest.raises(ExportError, match=r"to_nir: 1.0: SpikeMaxPool2d with ceil_mode=True cannot be exported"):
        to_nir(ceil, x)
    dilated = nn.Sequential(st.IF(backend="torch"), st.StepWise(nn.MaxPool2d(2, dilation=2)))
    with pytest.raises(ExportError, match=r"MaxPool2d with dilation=2 cannot be exported"):
        to_nir(dilated, x)


def _graph(*nodes):
    names = [f"n{i}" for i in range(len(nodes))]
    nodes = dict(zip(names, nodes))
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])), type_check=False)


def test_from_nir_reads_a_threshold_only_as_the_or_of_a_spike_sum_pool():
    shape = np.array([2, 4, 4])
    inp = nir.Input(input_type={"input": shape})
    out = lambda s: nir.Output(output_type={"output": np.array(s)})  # noqa: E731
    neuron = nir.IF(r=np.full(tuple(shape), 1e4), v_threshold=np.full(tuple(shape), 0.5),
                    v_reset=np.zeros(tuple(shape)))
    pool = nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
    good = _graph(inp, neuron, pool, nir.Threshold(threshold=np.full((2, 2, 2), 0.5)), out([2, 2, 2]))
    net = from_nir(good, backend="torch")
    assert len(net) == 2 and isinstance(net[1][0], st.SpikeMaxPool2d)
    x = torch.rand(3, 2, 2, 4, 4)
    spikes = run_fresh(net[0], x)
    assert torch.equal(run_fresh(net, x), torch.nn.functional.max_pool2d(spikes.flatten(0, 1), 2).unflatten(0, (3, 2)))
    alone = _graph(inp, nir.Threshold(threshold=np.zeros(tuple(shape))), out(shape))
    with pytest.raises(NIRFormatError, match="reads a Threshold only as the second half of a max pooling of spikes"):
        from_nir(alone)
    of_input = _graph(inp, pool, nir.Threshold(threshold=np.zeros((2, 2, 2))), out([2, 2, 2]))
    with pytest.raises(NIRFormatError, match="the SumPool2d before it reads the input, not spikes"):
        from_nir(of_input)
    high = _graph(inp, neuron, pool, nir.Threshold(threshold=np.full((2, 2, 2), 1.0)), out([2, 2, 2]))
    with pytest.raises(NIRFormatError, match="its threshold is 1.0"):
        from_nir(high)


# --------------------------------------------------------------------------------------------- #
# chip
# --------------------------------------------------------------------------------------------- #


def _chip_net(convert=True):
    torch.manual_seed(1)
    net = nn.Sequential(
        st.StepWise(nn.Conv2d(2, 6, 3, padding=1)), st.LIF(tau=2.0, backend="torch"),
        st.StepWise(nn.Conv2d(6, 8, 3, padding=1)), st.LIF(tau=2.0, backend="torch"),
        st.StepWise(nn.MaxPool2d(2, padding=1)),
        st.StepWise(nn.Conv2d(8, 4, 3)), st.IF(backend="torch"),
        st.StepWise(nn.AvgPool2d(2, divisor_override=1)), nn.Flatten(2), nn.Linear(4, 3), st.LIF(tau=2.0, backend="torch"))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(4.0)
        net[9].weight.abs_()  # an excitatory readout: with this seed's mixed signs the output never fired
    if convert:
        return st.convert(net, backend="torch")
    net[4][0] = st.SpikeMaxPool2d.from_pool(net[4][0])  # the float convs, a spike pooling
    net[7][0] = st.SpikeSumPool2d(2)
    return net


def _assert_chip_equal(q, x, path):
    manifest = save_chip(q, path, x)
    program = load_chip(path)
    q.reset()
    with torch.no_grad():
        want = [q(x), q(x)]  # the second call continues from the carried state
    q.reset()
    got = [program.run(x), program.run(x)]
    rates = [float(w.float().mean()) for w in want]
    assert all(0.0 < r < 1.0 for r in rates), rates
    for g, w in zip(got, want):
        assert np.array_equal(g, w.numpy())
    return manifest


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_chip_max_pooling_of_spikes_is_bit_exact(tmp_path, per_channel):
    """conv -> neuron -> max pooling (padded): the chip's maxpool2d (an OR) equals the quantized model."""
    torch.manual_seed(3)
    net = nn.Sequential(st.StepWise(nn.Conv2d(2, 5, 3, padding=1)), st.LIF(tau=2.0, backend="torch"),
                        st.StepWise(nn.MaxPool2d(3, stride=2, padding=1)))
    with torch.no_grad():
        net[0][0].weight.mul_(3.0)
    x = torch.rand(3, 2, 2, 7, 7) * 2
    q = calibrated(net, x, per_channel=per_channel).quantize()
    manifest = _assert_chip_equal(q, x, tmp_path / "pool.chip")
    assert [layer["kind"] for layer in manifest["layers"]] == ["conv2d", "neuron", "maxpool2d"]
    assert manifest["output"] == "spikes" and manifest["layers"][2]["padding"] == [1, 1]
    assert manifest["layers"][2]["out_shape"] == [5, 4, 4]


@pytest.mark.parametrize("convert", [True, False], ids=["spike_conv", "spike_pools"])
def test_chip_round_trip_of_spike_conv_and_pooling_is_bit_exact(tmp_path, convert):
    net = _chip_net(convert)
    assert [type(m).__name__ for m in net.modules()].count("SpikeConv2d") == (2 if convert else 0)
    x = torch.rand(3, 2, 2, 8, 8) * 2
    q = calibrated(net, x).quantize()
    manifest = _assert_chip_equal(q, x, tmp_path / "conv.chip")
    kinds = [layer["kind"] for layer in manifest["layers"]]
    assert kinds == ["conv2d", "neuron", "conv2d", "neuron", "maxpool2d", "conv2d", "neuron", "sumpool2d", "flatten",
                     "linear", "neuron"]
    assert manifest["layers"][5]["input"] == "spikes"


def test_chip_refuses_max_pooling_of_counts(tmp_path):
    torch.manual_seed(2)
    net = nn.Sequential(st.StepWise(nn.Conv2d(1, 2, 3, padding=1)), st.LIF(),
                        st.StepWise(nn.AvgPool2d(2, divisor_override=1), nn.MaxPool2d(2)))
    x = torch.rand(2, 1, 1, 8, 8)
    q = calibrated(net, x).quantize()
    with pytest.raises(ExportError, match=r"save_chip: net.2.1: max pooling of spike counts is not an OR of spikes"):
        save_chip(q, tmp_path / "bad.chip", x)
