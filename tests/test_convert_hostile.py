"""convert() swaps a Linear only where its input is proven to be spikes, and refuses what it cannot read
(issue 12: on an nn.Sequential subclass with its own forward that fx cannot trace, it used to read the
children in order and swapped in a SpikeLinear whose input was really ``spikes + 1``). Options of
convert() and SpikeLinear are type-checked; hooks see what the docstrings say they see."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spiketriton as st

BACKENDS = ["torch", "triton"]


def _drive(m):
    """Weights large enough that the neurons fire (so that non-spike inputs would show)."""
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(4.0)
    return m


def _same_outputs(m, x, **kwargs):
    """Convert ``m`` and check that it gives the outputs it gave before (state reset around)."""
    with torch.no_grad():  # (in-place ops on a neuron's output are refused by autograd on the Triton path)
        want = m(x)
        st.reset(m)
        st.convert(m, **kwargs)
        got = m(x)
        st.reset(m)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    return m


class PlusOne(nn.Sequential):
    """The issue's model: a Sequential subclass whose forward fx cannot trace and adds 1 to the spikes
    before the last Linear."""

    def forward(self, x):
        if x.dim() != 3:  # data-dependent control flow: torch.fx cannot trace it
            raise ValueError("expected [T, B, F]")
        x = self[1](self[0](x))
        return self[2](x + 1)


class DimCheck(nn.Module):
    """Untraceable (data-dependent control flow) and without a Linear: nothing to convert inside."""

    def forward(self, x):
        return x * 1.0 if x.dim() == 3 else x


class Untraceable(nn.Module):
    """Untraceable, with a Linear reading its neuron's spikes plus one."""

    def __init__(self):
        super().__init__()
        self.lif, self.fc = st.LIF(), nn.Linear(8, 8)

    def forward(self, x):
        if x.dim() != 3:
            raise ValueError("expected [T, B, F]")
        return self.fc(self.lif(x) + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_untraceable_sequential_subclass_is_refused(backend, device):
    torch.manual_seed(0)
    m = _drive(PlusOne(nn.Linear(8, 8), st.LIF(backend=backend), nn.Linear(8, 3))).to(device)
    x = torch.rand(4, 2, 8, device=device) * 2
    want = m(x)
    st.reset(m)
    with pytest.raises(ValueError, match=r"convert: cannot read the data flow of the model \(PlusOne\): torch.fx "
                                         r"cannot trace its forward \(TraceError: .*\), and convert never guesses "
                                         r".*SpikeLinear.from_linear") as exc:
        st.convert(m, check_binary=False, backend=backend)
    assert "convert(submodule)" in str(exc.value)
    assert type(m[0]) is nn.Linear and type(m[2]) is nn.Linear and not m[1].packed_output  # untouched
    torch.testing.assert_close(m(x), want, rtol=0, atol=0)


def test_untraceable_submodule_is_named():
    # a plain Sequential is read in order, and its children on their own: the one that cannot be read
    # (and holds a Linear) is named by its path
    m = nn.Sequential(nn.Linear(8, 8), st.LIF(), nn.Sequential(nn.Identity(), Untraceable()), DimCheck())
    with pytest.raises(ValueError, match=r"cannot read the data flow of the module '2.1' \(Untraceable\).*"
                                         r"1 nn.Linear inside, e.g. '2.1.fc'"):
        st.convert(m)
    assert type(m[2][1].fc) is nn.Linear


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_sequential_fallback_reads_children_on_their_own(backend, device):
    # fx cannot trace the root (DimCheck); the root is a plain nn.Sequential, so its children are read in
    # order, and each child container is traced on its own: both spike-reading Linears are converted,
    # the one inside a traceable child with packed spikes, the one right after a neuron of the root without
    torch.manual_seed(1)
    m = _drive(nn.Sequential(
        nn.Sequential(nn.Linear(8, 8), st.LIF(backend=backend)),
        nn.Linear(8, 8),  # reads the spikes of the child before it: not proven at the root level, stays
        st.LIF(backend=backend), nn.Flatten(2), nn.Linear(8, 8),
        nn.Sequential(st.LIF(backend=backend), nn.Linear(8, 3)),
        DimCheck(),
    )).to(device)
    x = torch.rand(4, 2, 8, device=device) * 2
    _same_outputs(m, x, backend=backend)
    assert type(m[1]) is nn.Linear
    assert isinstance(m[4], st.SpikeLinear) and not m[2].packed_output  # fallback: never packed
    assert isinstance(m[5][1], st.SpikeLinear) and m[5][0].packed_output  # proven by fx inside the child


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc0, self.lif, self.fc = nn.Linear(8, 8), st.LIF(), nn.Linear(8, 8)

    def forward(self, x):
        s = self.lif(self.fc0(x))
        return self.fc(s) + self.fc(x)  # the second call reads real values


class NotSpikes(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.fc0, self.lif, self.fc, self.op = nn.Linear(8, 8), st.LIF(), nn.Linear(8, 8), op

    def forward(self, x):
        return self.fc(self.op(self.lif(self.fc0(x))))


class HalfLIF(st.LIF):
    """A neuron subclass with its own forward: its output is not spikes."""

    def forward(self, x):
        return super().forward(x) * 0.5


class InPlace(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.fc0, self.lif, self.fc, self.how = nn.Linear(8, 8), st.LIF(), nn.Linear(8, 8), how
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        s = self.lif(self.fc0(x))
        if self.how == "method":
            s.add_(1)
        elif self.how == "view":
            s[0].mul_(3)  # through a view of the spikes
        elif self.how == "function":
            torch.sigmoid_(s)
        elif self.how == "functional":
            torch.nn.functional.hardtanh(s, 0.0, 0.5, inplace=True)
        return self.fc(s)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["called_twice", "plus_one", "neuron_subclass", "inplace_method", "inplace_view",
                                  "inplace_function", "inplace_functional"])
def test_only_proven_spikes_are_swapped(case, backend, device):
    torch.manual_seed(2)
    m = {"called_twice": CalledTwice, "plus_one": lambda: NotSpikes(lambda s: s + 1),
         "neuron_subclass": lambda: NotSpikes(nn.Identity()),
         "inplace_method": lambda: InPlace("method"), "inplace_view": lambda: InPlace("view"),
         "inplace_function": lambda: InPlace("function"), "inplace_functional": lambda: InPlace("functional")}[case]()
    if case == "neuron_subclass":
        m.lif = HalfLIF()
    for n in m.modules():
        if isinstance(n, st.BaseNeuron):
            n.backend = backend
    _drive(m).to(device)
    x = torch.rand(4, 2, 8, device=device) * 2
    _same_outputs(m, x, check_binary=False, backend=backend)
    assert type(m.fc) is nn.Linear
    assert not m.lif.packed_output


def test_a_reinterpreting_view_is_not_a_reshape():
    m = NotSpikes(lambda s: s.view(torch.int32))
    st.convert(m, check_binary=False)
    assert type(m.fc) is nn.Linear  # (fx records the view; the model itself cannot run: int32 into a Linear)


class Aliased(nn.Module):
    """The same Linear registered under two names; the forward calls it by the second."""

    def __init__(self):
        super().__init__()
        self.fc0, self.lif, self.fc = nn.Linear(8, 8), st.LIF(), nn.Linear(8, 3)
        self.alias = self.fc

    def forward(self, x):
        return self.alias(self.lif(self.fc0(x)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shared_linear_is_replaced_wherever_it_is_registered(backend, device):
    # convert used to replace it under its first name only: the forward then fed packed spikes to the old
    # nn.Linear under the second (TypeError)
    torch.manual_seed(3)
    m = _drive(Aliased()).to(device)
    m.lif.backend = backend
    _same_outputs(m, torch.rand(4, 2, 8, device=device) * 2, backend=backend)
    assert isinstance(m.fc, st.SpikeLinear) and m.alias is m.fc and m.lif.packed_output


# ------------------------------------------------------------------------------------------- #
# hooks
# ------------------------------------------------------------------------------------------- #


def _net(backend="torch", device="cpu"):
    torch.manual_seed(4)
    return _drive(nn.Sequential(nn.Linear(8, 8), st.LIF(backend=backend), nn.Linear(8, 3))).to(device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hook_that_changes_the_spikes_blocks_an_unchecked_swap(backend, device):
    x = torch.rand(4, 2, 8, device=device) * 2
    m = _net(backend, device)
    m[1].register_forward_hook(lambda mod, inp, out: out + 1)
    _same_outputs(m, x, check_binary=False, backend=backend)
    assert type(m[2]) is nn.Linear
    # with the binary check on, the layer is converted: the check proves each input when it runs
    m = _net(backend, device)
    m[1].register_forward_hook(lambda mod, inp, out: out + 1)
    st.convert(m, backend=backend)
    assert isinstance(m[2], st.SpikeLinear) and not m[1].packed_output
    with pytest.raises(ValueError, match="SpikeLinear: input has values other than 0 and 1"):
        m(x)
    # a pre-hook on the Linear, and a hook on a module in between, change its input just as well
    m = _net(backend, device)
    m[2].register_forward_pre_hook(lambda mod, inp: (inp[0] * 2,))
    _same_outputs(m, x, check_binary=False, backend=backend)
    assert type(m[2]) is nn.Linear
    m = nn.Sequential(*_net(backend, device)[:2], nn.Identity(), _net(backend, device)[2])
    m[2].register_forward_hook(lambda mod, inp, out: out * 2)
    _same_outputs(m, x, check_binary=False, backend=backend)
    assert type(m[3]) is nn.Linear


def test_a_global_forward_hook_blocks_unchecked_swaps_and_packing():
    x = torch.rand(4, 2, 8) * 2
    m = _net()
    handle = nn.modules.module.register_module_forward_hook(
        lambda mod, inp, out: out + 1 if isinstance(mod, st.LIF) else None)
    try:
        _same_outputs(m, x, check_binary=False)
        assert type(m[2]) is nn.Linear
    finally:
        handle.remove()


@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_on_a_converted_linear_move_with_it(backend, device):
    # they used to stay on the replaced nn.Linear, so that they silently stopped firing
    x = torch.rand(4, 2, 8, device=device) * 2
    m = _net(backend, device)
    seen = []
    handle = m[2].register_forward_hook(lambda mod, inp, out: seen.append((type(mod), type(inp[0]), out.shape)))
    pre = m[2].register_forward_pre_hook(lambda mod, inp: None)
    _same_outputs(m, x, backend=backend)
    assert isinstance(m[2], st.SpikeLinear)
    assert not m[1].packed_output  # the hook sees the layer's input: dense spikes, as before
    m(x)
    assert seen[-1] == (st.SpikeLinear, torch.Tensor, torch.Size([4, 2, 3]))
    n = len(seen)
    handle.remove(), pre.remove()  # the handles still work
    m(x)
    assert len(seen) == n and not m[2]._forward_hooks and not m[2]._forward_pre_hooks


@pytest.mark.parametrize("where", ["neuron", "linear"])
@pytest.mark.parametrize("kind", ["forward", "backward"])
def test_hooks_that_see_the_spikes_keep_them_dense(where, kind):
    m = _net()
    module = m[1] if where == "neuron" else m[2]
    seen = []
    if kind == "forward":
        module.register_forward_hook(lambda mod, inp, out: seen.append(type(out if where == "neuron" else inp[0])))
    else:
        module.register_full_backward_hook(lambda mod, gin, gout: seen.append(type(gout[0] if where == "neuron"
                                                                                   else gin[0])))
    st.convert(m)
    assert isinstance(m[2], st.SpikeLinear) and not m[1].packed_output
    x = torch.rand(4, 2, 8, requires_grad=True) * 2
    m(x).sum().backward()
    assert seen == [torch.Tensor]


def test_a_hooked_dropout_is_not_folded():
    # folding replaces the Dropout with an Identity: its hooks would silently stop firing
    m = nn.Sequential(*_net()[:2], nn.Dropout(0.5), _net()[2])
    seen = []
    m[2].register_forward_hook(lambda mod, inp, out: seen.append(1))
    st.convert(m)
    assert type(m[2]) is nn.Dropout and type(m[3]) is nn.Linear
    m(torch.rand(2, 1, 8))
    assert seen == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hook_registered_after_convert_sees_packed_spikes(backend, device):
    """Documented in convert() and SpikeLinear: the neuron hands over a SpikeTensor; ``unpack()`` and
    ``to_dense()`` give the 0/1 values, ``packed_output = False`` the float spikes."""
    x = torch.rand(4, 2, 8, device=device) * 2
    dense = _net(backend, device)
    want = dense[1](dense[0](x))
    m = st.convert(_net(backend, device), backend=backend)
    assert m[1].packed_output
    got = []
    m[1].register_forward_hook(lambda mod, inp, out: got.append(out))
    m(x)
    assert isinstance(got[0], st.SpikeTensor) and got[0].shape == want.shape
    assert torch.equal(got[0].unpack(), want) and torch.equal(got[0].to_dense(), want)
    assert want.sum() > 0  # the neurons fire
    st.reset(m)
    m[1].packed_output = False
    m(x)
    assert isinstance(got[1], torch.Tensor) and torch.equal(got[1], want)


# ------------------------------------------------------------------------------------------- #
# option types
# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("args,kwargs,error,message", [
    ((torch.zeros(3),), {}, TypeError, r"convert: model must be a torch.nn.Module, got Tensor"),
    ((None,), {}, TypeError, r"convert: model must be a torch.nn.Module, got NoneType"),
    ((nn.Linear(2, 2),), {"check_binary": "no"}, TypeError, r"convert: check_binary must be True or False, got 'no'"),
    ((nn.Linear(2, 2),), {"check_binary": 0}, TypeError, r"convert: check_binary must be True or False, got 0"),
    ((nn.Linear(2, 2),), {"packed": "no"}, TypeError, r"convert: packed must be True or False, got 'no'"),
    ((nn.Linear(2, 2),), {"backend": "cuda"}, ValueError,
     r"convert: backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"),
    ((nn.Linear(2, 2),), {"backend": None}, ValueError, r"convert: backend must be one of .* got None"),
])
def test_convert_checks_its_arguments(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        st.convert(*args, **kwargs)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"check_binary": "no"}, TypeError, r"SpikeLinear: check_binary must be True or False, got 'no'"),
    ({"check_binary": None}, TypeError, r"SpikeLinear: check_binary must be True or False, got None"),
    ({"bias": "no"}, TypeError, r"SpikeLinear: bias must be True or False, got 'no'"),
    ({"input_dropout": "0.5"}, TypeError, r"SpikeLinear: input_dropout must be a real number, got '0.5'"),
    ({"input_dropout": True}, TypeError, r"SpikeLinear: input_dropout must be a real number"),
    ({"input_dropout": float("nan")}, ValueError, r"SpikeLinear: input_dropout must be finite, got nan"),
    ({"input_dropout": 1.0}, ValueError, r"SpikeLinear: input_dropout must be in \[0, 1\), got 1.0"),
    ({"backend": "gpu"}, ValueError, r"SpikeLinear: backend must be one of \('auto', 'triton', 'torch'\), got 'gpu'"),
    ({"in_features": 8.0}, TypeError, r"SpikeLinear: in_features must be an int >= 0, got 8.0"),
    ({"out_features": -1}, ValueError, r"SpikeLinear: out_features must be an int >= 0, got -1"),
])
def test_spike_linear_checks_its_options(kwargs, error, message):
    args = {"in_features": 8, "out_features": 3, **kwargs}
    with pytest.raises(error, match=message):
        st.SpikeLinear(**args)


def test_from_linear_checks_the_options_too():
    with pytest.raises(TypeError, match=r"SpikeLinear: check_binary must be True or False, got 'no'"):
        st.SpikeLinear.from_linear(nn.Linear(8, 3), check_binary="no")


def test_spike_linear_accepts_numpy_and_int_dropout():
    import numpy as np

    assert st.SpikeLinear(8, 3, input_dropout=np.float32(0.25)).input_dropout == 0.25
    assert st.SpikeLinear(8, 3, input_dropout=0).input_dropout == 0.0


def test_stepwise_refuses_what_is_not_a_sequence():
    s = st.StepWise(nn.Identity())
    with pytest.raises(TypeError, match=r"StepWise: expected a tensor \[T, B, \*features\], got list"):
        s([[1.0]])
    with pytest.raises(ValueError, match=r"StepWise: expected a sequence \[T, B, \*features\], got shape \(2, 3\)"):
        s(torch.zeros(2, 3))


@pytest.mark.parametrize("check_binary", [True, False])
def test_spike_linear_on_meta_tensors_gives_shapes(check_binary):
    # as the neurons do (a model built on the meta device for shape inference); the binary check read
    # the values (Tensor.item() on a meta tensor), the matmul asked for an autocast type of 'meta'
    lin = st.SpikeLinear(8, 3, check_binary=check_binary, device="meta")
    y = lin(torch.zeros(4, 2, 8, device="meta"))
    assert y.is_meta and y.shape == (4, 2, 3) and y.dtype == torch.float32
    m = st.convert(nn.Sequential(nn.Linear(8, 8), st.LIF(), nn.Linear(8, 3)).to("meta"), check_binary=check_binary)
    assert m[1].packed_output and isinstance(m[2], st.SpikeLinear)
    y = m(torch.zeros(4, 2, 8, device="meta"))  # packed spikes on the meta device too
    assert y.is_meta and y.shape == (4, 2, 3)
