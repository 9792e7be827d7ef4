"""Regression tests for defects found in review (each once gave a wrong result or an obscure error)."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import functional as F

BACKENDS = ["triton", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_spikes_into_dropout_layer(backend, device):
    # the dropout path once read the (all-zero) gradient anchor instead of the spikes
    x = (torch.randn(4, 3, 16, device=device) + 1).requires_grad_()
    lin = st.SpikeLinear(16, 5, input_dropout=0.5, backend=backend).to(device).train()
    torch.manual_seed(0)
    y = lin(st.LIF(packed_output=True, backend=backend)(x))
    x2 = x.detach().clone().requires_grad_()
    torch.manual_seed(0)
    want = nn.functional.linear(nn.functional.dropout(st.LIF(backend=backend)(x2), 0.5, True), lin.weight, lin.bias)
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    y.sum().backward(), want.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-6, atol=1e-6)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 0.5


class DimCheck(nn.Module):
    """A module fx cannot trace (data-dependent control flow), without any Linear."""

    def forward(self, x):
        if x.dim() == 3:
            return x * 1.0
        return x


class DimBranch(nn.Sequential):
    def forward(self, x):
        if x.dim() == 3:  # fx cannot trace this, and this forward is not nn.Sequential's
            for m in self:
                x = m(x)
                _ = x.mean() if isinstance(x, torch.Tensor) else None  # uses each output
            return x
        return super().forward(x)


def test_convert_test_untraceable_models_are_what_they_say():
    import torch.fx as fx

    for m in (DimBranch(nn.Linear(8, 3)), nn.Sequential(nn.Linear(8, 3), DimCheck())):
        with pytest.raises(fx.proxy.TraceError):
            fx.symbolic_trace(m)


def test_convert_fallback_never_packs_or_folds():
    # a plain nn.Sequential that fx cannot trace (one child has data-dependent control flow) is read in
    # order: its forward is nn.Sequential's own, so child i's output is child i+1's input
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), st.LIF(), nn.Dropout(0.3), nn.Linear(8, 8), st.LIF(), nn.Linear(8, 3),
                      DimCheck())
    m.eval()
    x = torch.rand(3, 2, 8) * 2
    want = m(x)
    st.reset(m)
    st.convert(m)
    assert not any(getattr(n, "packed_output", False) for n in m.modules())
    assert isinstance(m[2], nn.Dropout) and not isinstance(m[3], st.SpikeLinear)  # Dropout ends the chain
    assert isinstance(m[5], st.SpikeLinear)
    torch.testing.assert_close(m(x), want)


def test_convert_refuses_an_untraceable_sequential_subclass():
    # its own forward may feed the layers anything: convert() used to read the children in order anyway
    m = DimBranch(nn.Linear(8, 8), st.LIF(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"convert: cannot read the data flow of the model \(DimBranch\): torch.fx "
                                         r"cannot trace its forward \(TraceError: symbolically traced variables"):
        st.convert(m)
    assert type(m[2]) is nn.Linear


def test_convert_keeps_shared_dropout_and_hooked_neurons():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.lif, self.fc2, self.drop = nn.Linear(8, 8), st.LIF(), nn.Linear(8, 3), nn.Dropout(0.5)

        def forward(self, x):
            return self.fc2(self.drop(self.lif(self.drop(self.fc1(x)))))

    m = Shared()
    st.convert(m)
    assert isinstance(m.drop, nn.Dropout) and type(m.fc2) is nn.Linear  # not folded, not converted
    rates = []
    m2 = nn.Sequential(nn.Linear(8, 8), st.LIF(), nn.Linear(8, 3))
    m2[1].register_forward_hook(lambda mod, i, o: rates.append(o.mean()))
    st.convert(m2)
    assert isinstance(m2[2], st.SpikeLinear) and not m2[1].packed_output
    m2(torch.rand(2, 1, 8))
    assert len(rates) == 1


def test_convert_skips_parametrized_linear_and_leaves_model_working():
    m = nn.Sequential(nn.Linear(8, 8), st.LIF(), torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 3)))
    x = torch.rand(2, 2, 8)
    want = m(x)
    st.reset(m)
    st.convert(m)
    assert not isinstance(m[2], st.SpikeLinear) and not m[1].packed_output
    torch.testing.assert_close(m(x), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_expanded_bias(backend, device):
    s = (torch.rand(4, 6, device=device) > 0.5).float()
    w = torch.randn(5, 6, device=device)
    for b in (torch.arange(10.0, device=device)[::2], torch.tensor([3.0], device=device).expand(5)):
        torch.testing.assert_close(st.spike_matmul(s, w, b, backend=backend), s @ w.T + b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_is_a_clear_error(backend, device):
    # the hand-written backwards are not differentiable: create_graph=True through them must fail
    # clearly instead of returning a gradient with the second-order terms missing
    x = torch.randn(3, 2, 4, device=device, requires_grad=True)
    s, _ = F.lif(x, backend=backend)
    with pytest.raises(RuntimeError, match="neurons: double backward .* is not supported"):
        torch.autograd.grad((s * x).sum(), x, create_graph=True)
    w = torch.randn(2, 4, device=device, requires_grad=True)
    y = st.spike_matmul((x > 0).float(), w, backend=backend)
    with pytest.raises(RuntimeError, match="spike_matmul: double backward .* is not supported"):
        torch.autograd.grad(y.sum(), w, create_graph=True)


def test_module_dtype_cast_keeps_constants():
    x = (torch.rand(16, 4, 64) * 1.2).to(torch.bfloat16)
    for make in (lambda: st.LIF(tau=3.0, decay_input=False),
                 lambda: st.ExtendedLIF(v_th0=0.8, v_leaky_alpha=0.9, v_leaky_beta=0.01)):
        a, b = make(), make().to(torch.bfloat16)
        assert torch.equal(a(x), b(x)), type(a).__name__


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_bytes_with_a_non_unit_stride(backend, device):
    s = (torch.rand(6, 19, device=device) > 0.5).float()
    w = torch.randn(4, 19, device=device)
    p = st.pack_spikes(s)
    odd = st.SpikeTensor(p.data.t().contiguous().t(), 19)
    assert odd.data.stride(-1) != 1
    torch.testing.assert_close(st.spike_matmul(odd, w, backend=backend), s @ w.T)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_sizes_with_gradients(backend, device):
    for shape in [(0, 2, 5), (3, 0, 5)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        lin = st.SpikeLinear(5, 2, backend=backend).to(device)
        y = lin(st.LIF(packed_output=True, backend=backend)(x))
        y.sum().backward()
        assert y.shape == shape[:-1] + (2,)
    x = torch.randn(3, 2, 0, device=device, requires_grad=True)
    s, v = F.lif(x, backend=backend)
    s.sum().backward()
    lin = st.SpikeLinear(4, 2, backend=backend).to(device)
    lin(torch.zeros(0, 4, device=device, requires_grad=True)).sum().backward()
    assert torch.equal(lin.weight.grad, torch.zeros_like(lin.weight))


def test_interpret_mode_set_after_import(monkeypatch):
    import spiketriton.kernels as K

    monkeypatch.setattr(K, "_INTERPRET_AT_IMPORT", False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.rand(3, 2, 8)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 was set after spiketriton was imported"):
        F.lif(x, backend="triton")
    assert F.lif(x)[0].shape == x.shape  # auto takes the PyTorch path


def test_state_from_inference_mode_continues_in_training():
    m = st.PLIF()
    with torch.inference_mode():
        m(torch.rand(3, 2, 4))
    x = torch.rand(3, 2, 4, requires_grad=True)
    m(x).sum().backward()
    assert m.w.grad is not None


def test_to_dense_routes_the_gradient():
    x = (torch.randn(3, 2, 6) + 1).requires_grad_()
    sp = st.LIF(packed_output=True)(x)
    d = sp.to_dense()
    x2 = x.detach().clone().requires_grad_()
    s2 = st.LIF()(x2)
    assert torch.equal(d, s2)
    g = torch.randn_like(d)
    (d * g).sum().backward(), (s2 * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
