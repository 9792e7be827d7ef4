"""Conv SNNs: multi-step BatchNorm (SpikingJelly's semantics), BatchNorm folding into (Spike)Conv2d, and
convert() on conv nets (Conv2d in a StepWise fed by neurons -> SpikeConv2d, max pooling of spikes ->
SpikeMaxPool2d, the packed hand-over): the same spikes and the same gradients as before."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton.ann2snn import fold_batchnorm, fold_batchnorms


def _vgg(seed=0, C=3, pool=nn.MaxPool2d):
    """A small Spiking VGG: conv-BN-LIF blocks in StepWise, max and average pooling, a Linear head."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        st.StepWise(nn.Conv2d(C, 8, 3, padding=1), nn.BatchNorm2d(8)), st.LIF(backend="torch"),
        st.StepWise(nn.Conv2d(8, 11, 3, padding=1), nn.BatchNorm2d(11)), st.LIF(backend="torch"),
        st.StepWise(pool(2)),
        st.StepWise(nn.Conv2d(11, 9, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(9)), st.LIF(backend="torch"),
        st.StepWise(nn.MaxPool2d(2, ceil_mode=True), nn.Flatten()),
        nn.Linear(9, 10), st.LIF(backend="torch"), nn.Linear(10, 4),
    )
    with torch.no_grad():  # drive the neurons so that every layer fires
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.5)
                m.bias.fill_(0.6)
        net[8].weight.mul_(4.0)
        net[8].bias.fill_(0.5)
    return net


def _copy(net):
    new = _vgg()
    new.load_state_dict(net.state_dict())
    return new


def _run(net, x, g):
    """Output and the gradients of the input and of every parameter for upstream gradient ``g``."""
    st.reset(net)
    x = x.clone().requires_grad_()
    y = net(x)
    params = [p for p in net.parameters()]
    grads = torch.autograd.grad(y, [x] + params, g)
    st.reset(net)
    return y.detach(), grads


# --------------------------------------------------------------------------------------------- #
# multi-step BatchNorm and folding
# --------------------------------------------------------------------------------------------- #


def test_multistep_batchnorm_is_spikingjellys():
    """StepWise(nn.BatchNorm2d) normalises over T x B x H x W, as SpikingJelly's layer.BatchNorm2d with
    step_mode='m': the same outputs, gradients and running statistics, in training and in eval."""
    sj_layer = pytest.importorskip("spikingjelly.activation_based.layer")
    ours, theirs = st.StepWise(nn.BatchNorm2d(5)), sj_layer.BatchNorm2d(5, step_mode="m")
    with torch.no_grad():
        ours[0].weight.uniform_(0.5, 2.0)
        ours[0].bias.uniform_(-1.0, 1.0)
    theirs.load_state_dict(ours[0].state_dict())
    gen = torch.Generator().manual_seed(0)
    for step in range(3):  # running statistics move with each training batch
        x = torch.randn(4, 3, 5, 6, 7, generator=gen) * 2 + 1
        g = torch.randn(x.shape, generator=gen)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)
        ga = torch.autograd.grad(ya, [xa, ours[0].weight, ours[0].bias], g)
        gb = torch.autograd.grad(yb, [xb, theirs.weight, theirs.bias], g)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(ours[0].running_mean, theirs.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(ours[0].running_var, theirs.running_var, rtol=0, atol=0)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("wrap", ["plain", "stepwise", "spikingjelly"])
def test_fold_batchnorm_into_spike_conv(wrap):
    conv = st.SpikeConv2d(3, 6, 3, stride=2, padding=1, bias=False, backend="torch")
    bn2d = nn.BatchNorm2d(6)
    if wrap == "spikingjelly":
        sj_layer = pytest.importorskip("spikingjelly.activation_based.layer")
        bn = sj_layer.BatchNorm2d(6, step_mode="m")
    else:
        bn = st.StepWise(bn2d) if wrap == "stepwise" else bn2d
    inner = bn if wrap != "stepwise" else bn[0]
    with torch.no_grad():
        inner.running_mean.uniform_(-1, 1)
        inner.running_var.uniform_(0.5, 2)
        inner.weight.uniform_(0.5, 2)
        inner.bias.uniform_(-1, 1)
    s = (torch.rand(2, 3, 3, 9, 9, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    want = bn.eval()(conv(s)) if wrap != "plain" else bn.eval()(conv(s).flatten(0, 1)).unflatten(0, (2, 3))
    folded = fold_batchnorm(conv, bn)
    assert type(folded) is st.SpikeConv2d and folded.backend == "torch" and folded.bias is not None
    assert folded.weight is not conv.weight and conv.bias is None  # a copy; the conv is untouched
    torch.testing.assert_close(folded(s), want, rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_refuses_mismatches():
    with pytest.raises(ValueError, match="fold_batchnorm: a BatchNorm1d after a SpikeConv2d"):
        fold_batchnorm(st.SpikeConv2d(2, 4, 3), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="fold_batchnorm: the BatchNorm2d normalises 5 features but the Conv2d gives 4"):
        fold_batchnorm(nn.Conv2d(2, 4, 3), st.StepWise(nn.BatchNorm2d(5)))
    with pytest.raises(TypeError, match="fold_batchnorm: expected an nn.Conv2d/nn.Linear and a BatchNorm"):
        fold_batchnorm(nn.Conv2d(2, 4, 3), st.StepWise(nn.BatchNorm2d(4), nn.ReLU()))
    with pytest.raises(TypeError, match="fold_batchnorms: model must be a torch.nn.Module"):
        fold_batchnorms("net")


def test_fold_batchnorms_of_a_converted_conv_net_computes_eval_mode():
    net = _vgg()
    x = torch.rand(3, 2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    net.train()
    for _ in range(2):  # running statistics
        net(x)
        st.reset(net)
    st.convert(net, backend="torch")
    net.eval()
    with torch.no_grad():
        want = net(x)
        st.reset(net)
        folded = fold_batchnorms(net)
        got = folded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3  # the model is untouched
    assert [type(m).__name__ for m in folded[2]] == ["SpikeConv2d", "Identity"]
    # the folded weights round differently: a spike may flip only where a potential sits at the threshold
    assert (got - want).abs().max() < 1e-4 or (got != want).float().mean() < 0.01
    # a BN as the first module of the next StepWise folds too; one after a ReLU does not
    split = nn.Sequential(st.StepWise(nn.Conv2d(2, 3, 1)), st.StepWise(nn.BatchNorm2d(3), nn.ReLU()),
                          st.StepWise(nn.ReLU()), st.StepWise(nn.BatchNorm2d(3)))
    f = fold_batchnorms(split)
    assert [type(m).__name__ for m in f.modules()].count("BatchNorm2d") == 1
    assert isinstance(f[1][0], nn.Identity) and not f.training


# --------------------------------------------------------------------------------------------- #
# convert() on conv nets
# --------------------------------------------------------------------------------------------- #


def _kinds(net):
    return [type(m).__name__ for m in net.modules() if not isinstance(m, (nn.Sequential,))]


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "float"])
def test_convert_spiking_vgg_same_spikes_and_gradients(packed):
    net = _vgg()
    ref = _copy(net)
    st.convert(net, backend="torch", packed=packed)
    kinds = _kinds(net)
    assert kinds.count("SpikeConv2d") == 2 and kinds.count("Conv2d") == 1  # the first conv reads the input
    assert kinds.count("SpikeMaxPool2d") == 2 and kinds.count("SpikeLinear") == 2
    assert net[2][0].step_mode == "m" and isinstance(net[2][0], st.SpikeConv2d)
    assert net[0][0].weight is ref[0][0].weight or torch.equal(net[0][0].weight, ref[0][0].weight)
    x = torch.rand(3, 2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    g = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(4))
    net.train(), ref.train()
    y, grads = _run(net, x, g)
    y_ref, grads_ref = _run(ref, x, g)
    assert y.abs().sum() > 0
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    names = ["input"] + [n for n, _ in net.named_parameters()]
    for name, a, b in zip(names, grads, grads_ref):
        assert b.abs().sum() > 0, name  # every gradient is exercised
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    # the neurons before a SpikeConv2d hand over a SpikeImage (so does the one before the max pooling +
    # Flatten: the pooling keeps it packed, StepWise hands Flatten the values), the one before a SpikeLinear
    # a SpikeTensor
    assert [net[i].packed_output for i in (1, 3, 6, 9)] == (["image", "image", "image", True] if packed else [False] * 4)


def test_converted_conv_net_single_steps_equal_multi_step():
    net = _vgg()
    st.convert(net, backend="torch", packed=False)
    net.eval()
    x = torch.rand(3, 2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = net(x)
        st.set_step_mode(net, "s")
        assert net[2][0].step_mode == "s"
        got = torch.stack([net(x[t]) for t in range(3)])
        st.set_step_mode(net, "m")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class _ManualFold(nn.Module):
    """A Conv2d called on [T*B, ...] in the user's own forward (not a StepWise): left alone."""

    def __init__(self):
        super().__init__()
        self.lif, self.conv = st.LIF(backend="torch"), nn.Conv2d(2, 3, 3)

    def forward(self, x):
        s = self.lif(x)
        return self.conv(s.flatten(0, 1)).unflatten(0, (x.shape[0], x.shape[1]))


@pytest.mark.parametrize("case", ["after-avgpool", "own-forward", "reflect", "shared-on-input", "inplace",
                                  "first-layer"])
def test_convert_leaves_convs_that_do_not_read_spikes(case):
    conv = nn.Conv2d(2, 3, 3, padding=1)
    if case == "after-avgpool":  # averages of spikes are fractions, not spikes
        net = nn.Sequential(st.LIF(backend="torch"), st.StepWise(nn.AvgPool2d(2), conv))
    elif case == "own-forward":
        net = _ManualFold()
        conv = net.conv
    elif case == "reflect":
        conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")
        net = nn.Sequential(st.LIF(backend="torch"), st.StepWise(conv))
    elif case == "shared-on-input":  # called once on spikes, once on the input
        net = nn.Sequential(st.StepWise(conv), st.LIF(backend="torch"), st.StepWise(conv))
        conv = nn.Conv2d(2, 2, 3, padding=1)
        net = nn.Sequential(st.StepWise(conv), st.LIF(backend="torch"), st.StepWise(conv))
    elif case == "inplace":  # spikes changed in place before the conv
        net = nn.Sequential(st.LIF(backend="torch"), st.StepWise(nn.ReLU(inplace=True), conv))
    else:
        net = nn.Sequential(st.StepWise(conv), st.LIF(backend="torch"))
    st.convert(net)
    assert any(m is conv for m in net.modules()) and type(conv) is nn.Conv2d


def test_convert_moves_hooks_and_keeps_a_hooked_neuron_unpacked():
    net = nn.Sequential(st.StepWise(nn.Conv2d(2, 4, 3, padding=1)), st.LIF(backend="torch"),
                        st.StepWise(nn.Conv2d(4, 4, 3)), st.LIF(backend="torch"))
    seen = []
    handle = net[2][0].register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    net[1].register_forward_hook(lambda m, i, o: None)  # a monitor on the neuron: it must see float spikes
    st.convert(net, backend="torch")
    assert isinstance(net[2][0], st.SpikeConv2d) and net[1].packed_output is False
    net(torch.rand(2, 1, 2, 6, 6))
    assert seen == ["SpikeConv2d"]
    handle.remove()
    net(torch.rand(2, 1, 2, 6, 6))
    assert seen == ["SpikeConv2d"]


def test_stepwise_hands_a_tensor_module_the_values_of_a_spike_image():
    """A SpikeImage reaching a module that takes tensors (both step modes) arrives as its 0/1 values, and the
    gradient flows back to the SpikeImage's anchor; spike modules get it packed."""
    s = (torch.rand(2, 3, 4, 5, 5, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    x = s.clone().requires_grad_()
    img = st.pack_image(x, backend="torch")
    y = st.StepWise(st.SpikeMaxPool2d(2), nn.Flatten())(img)
    want = torch.nn.functional.max_pool2d(s.flatten(0, 1), 2).flatten(1).unflatten(0, (2, 3))
    assert torch.equal(y, want)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    ref = s.clone().requires_grad_()
    (want_g,) = torch.autograd.grad(nn.Flatten()(nn.MaxPool2d(2)(ref.flatten(0, 1))).unflatten(0, (2, 3)), ref, g)
    assert torch.equal(torch.autograd.grad(y, x, g)[0], want_g)
    one = st.set_step_mode(st.StepWise(st.SpikeMaxPool2d(2), nn.Flatten()), "s")
    assert torch.equal(one(st.pack_image(s[0], backend="torch")), want[0])
    out = st.StepWise(st.SpikeMaxPool2d(2), st.SpikeSumPool2d(2, backend="torch"))(img)
    assert out.shape == (2, 3, 4, 1, 1)


def test_convert_keeps_float_spikes_for_a_hooked_container():
    """A hook on the StepWise around the max pooling would see the SpikeImage: the neuron keeps float spikes."""
    net = nn.Sequential(st.StepWise(nn.Conv2d(2, 4, 3, padding=1)), st.LIF(backend="torch"),
                        st.StepWise(nn.MaxPool2d(2), nn.Flatten()), nn.Linear(16, 3))
    free = copy.deepcopy(net)
    net[2].register_forward_hook(lambda m, i, o: None)
    st.convert(net, backend="torch")
    st.convert(free, backend="torch")
    assert net[1].packed_output is False and free[1].packed_output == "image"
    assert isinstance(net[2][0], st.SpikeMaxPool2d) and isinstance(net[3], st.SpikeLinear)


def test_convert_pool_and_conv_in_one_stepwise_hand_over_packed_images():
    """StepWise(MaxPool2d, Conv2d, BatchNorm2d) after a neuron: the pool and the conv take the sequence, the
    neuron hands over a SpikeImage, the pool keeps it packed; the same outputs and input gradient."""
    torch.manual_seed(6)
    def make():
        return nn.Sequential(st.StepWise(nn.Conv2d(2, 9, 3, padding=1)), st.LIF(backend="torch"),
                             st.StepWise(nn.MaxPool2d(2), nn.Conv2d(9, 5, 3, padding=1), nn.BatchNorm2d(5)),
                             st.LIF(backend="torch"))

    net, ref = make(), make()
    with torch.no_grad():
        net[0][0].weight.mul_(3.0)
    ref.load_state_dict(net.state_dict())
    st.convert(net, backend="torch")
    assert [type(m).__name__ for m in net[2]] == ["SpikeMaxPool2d", "SpikeConv2d", "BatchNorm2d"]
    assert net[1].packed_output == "image" and net[3].packed_output is False  # the last one is the output
    x = torch.rand(3, 2, 2, 8, 8, generator=torch.Generator().manual_seed(7))
    g = torch.randn(3, 2, 5, 4, 4, generator=torch.Generator().manual_seed(8))
    y, grads = _run(net, x, g)
    y_ref, grads_ref = _run(ref, x, g)
    assert 0 < y.mean() < 1
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_convert_leaves_a_pool_whose_hook_may_replace_spikes():
    """A forward hook on the max pooling may replace its output: with check_binary=False nothing after it
    converts (the conv could not check its input); with the check on, the conv converts and checks."""
    for check in (False, True):
        net = nn.Sequential(st.LIF(backend="torch"), st.StepWise(nn.MaxPool2d(2), nn.Conv2d(2, 3, 3)))
        net[1][0].register_forward_hook(lambda m, i, o: o * 2)
        st.convert(net, check_binary=check)
        assert isinstance(net[1][1], st.SpikeConv2d) is check


def test_convert_an_ann2snn_conv_net():
    """An ANN-to-SNN conversion (IF neurons with soft reset, convs and poolings in StepWise) converts to spike
    layers and gives the same outputs."""
    from spiketriton.ann2snn import convert_ann

    torch.manual_seed(9)
    ann = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 3))
    ann.eval()
    x = torch.rand(16, 1, 8, 8)
    snn = convert_ann(ann, x, mode="max", backend="torch")
    xs = x[:4].unsqueeze(0).repeat(6, 1, 1, 1, 1)  # direct encoding, T = 6
    with torch.no_grad():
        want = snn(xs)
        st.reset(snn)
        st.convert(snn, backend="torch")
        got = snn(xs)
    kinds = [type(m).__name__ for m in snn.modules()]
    assert "SpikeConv2d" in kinds and "SpikeMaxPool2d" in kinds and "SpikeLinear" not in kinds  # after AvgPool
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where", ["inside", "outside"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_convert_folds_a_dropout_before_a_conv_with_the_same_draws(where, backend):
    """LIF -> Dropout(p) -> Conv2d: the Dropout goes into the SpikeConv2d (input_dropout = p), which
    drops spikes with nn.Dropout's draws and scales the sum: the same outputs and gradients in training
    (same seed), the same outputs in eval."""
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 4, 3, padding=1)
    if where == "inside":
        net = nn.Sequential(st.LIF(backend="torch"), st.StepWise(nn.Dropout(0.3), conv), st.LIF(backend="torch"))
    else:
        net = nn.Sequential(st.LIF(backend="torch"), nn.Dropout(0.3), st.StepWise(conv), st.LIF(backend="torch"))
    ref = copy.deepcopy(net)
    st.convert(net, backend=backend)
    new = [m for m in net.modules() if isinstance(m, st.SpikeConv2d)]
    assert len(new) == 1 and new[0].input_dropout == 0.3 and not any(isinstance(m, nn.Dropout) for m in net.modules())
    assert "input_dropout=0.3" in repr(new[0])
    x = torch.rand(3, 2, 5, 6, 6) * 2
    for mode in ("train", "eval"):
        getattr(net, mode)(), getattr(ref, mode)()
        outs = []
        for m in (ref, net):
            st.reset(m)
            xi = x.clone().requires_grad_(True)
            torch.manual_seed(1)
            y = m(xi)
            (y * torch.arange(y.numel()).reshape(y.shape).sin()).sum().backward()
            outs.append((y.detach(), xi.grad, [p.grad.clone() for p in m.parameters()]))
            m.zero_grad()
        (y0, gx0, gp0), (y1, gx1, gp1) = outs
        assert torch.equal(y0, y1), mode
        assert torch.allclose(gx0, gx1, atol=1e-5), mode
        for a, b in zip(gp0, gp1):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), mode


def test_spike_conv_input_dropout_checks_and_eval():
    with pytest.raises(ValueError, match="input_dropout"):
        st.SpikeConv2d(2, 2, 3, input_dropout=1.0)
    with pytest.raises(ValueError, match="input_dropout"):
        st.SpikeConv2d(2, 2, 3, input_dropout=float("nan"))
    conv = st.SpikeConv2d(2, 3, 3, input_dropout=0.5, backend="torch").eval()
    s = (torch.rand(2, 2, 2, 5, 5) < 0.5).float()
    plain = st.SpikeConv2d(2, 3, 3, backend="torch")
    plain.load_state_dict(conv.state_dict())
    assert torch.equal(conv(s), plain(s))  # no dropout in eval
