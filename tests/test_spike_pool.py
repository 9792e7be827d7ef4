"""Spike pooling: max pooling as a bytewise OR of packed spike images (which stay packed), average and sum
pooling; values and every gradient against torch's pooling on the unpacked 0/1 values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spiketriton as st
from spiketriton.functional.pooling import pool_geometry, spike_avg_pool2d, spike_max_pool2d, spike_sum_pool2d

# (kernel, stride, padding, dilation, ceil_mode): torch's argument forms, odd and asymmetric ones
GEOMETRIES = {
    "k2": (2, None, 0, 1, False),
    "k3s2p1-ceil": (3, 2, 1, 1, True),
    "k3-dil2-p1": (3, 1, 1, 2, False),
    "asym": ((2, 3), (1, 2), (1, 1), (2, 1), True),
    "k3s3p1-ceil": (3, 3, 1, 1, True),
    "k1": (1, 1, 0, 1, False),
}
# [*lead, C, H, W]: multi-step, single step, unbatched; C not a multiple of 8; a 1x1 image
SHAPES = {"TBCHW": (3, 2, 11, 7, 9), "T1": (1, 2, 9, 5, 5), "BCHW": (4, 17, 6, 7), "CHW": (8, 5, 6),
          "C1": (2, 1, 1, 4, 4), "C64": (2, 64, 5, 5), "C32": (1, 32, 4, 6)}


def _pack(x, backend="torch"):
    """Packed on the PyTorch path (the Triton interpreter is slow; test_triton_backend covers it)."""
    return st.pack_image(x, backend=backend)


def _spikes(shape, p=0.3, seed=0, dtype=torch.float32):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p).to(dtype)


def _torch_pool(x, fn, *args, **kw):
    """torch's pooling on [*lead, C, H, W] (folded into [N, C, H, W] and back)."""
    y = fn(x.reshape((-1,) + tuple(x.shape[-3:])), *args, **kw)
    return y.reshape(tuple(x.shape[:-3]) + tuple(y.shape[-3:]))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("geom", GEOMETRIES.values(), ids=GEOMETRIES.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_max_pool_packed_is_or_and_stays_packed(shape, geom, backend):
    """Both paths of the OR (the Triton kernel under the interpreter here), against torch's max pooling of
    the unpacked values; the channel counts give every word width (C = 64: int64, 32: int32, 17: 3 bytes,
    11 / 9: int16, 8 / 1: one byte)."""
    k, s, p, d, c = geom
    try:
        pool_geometry("test", shape[-2:], k, s, p, d, c)
    except ValueError:
        pytest.skip("the image is smaller than the dilated kernel")
    x = _spikes(shape)
    want = _torch_pool(x, F.max_pool2d, k, s, p, d, ceil_mode=c)
    got = spike_max_pool2d(_pack(x), k, s, p, d, c, backend=backend)
    assert isinstance(got, st.SpikeImage) and got.c == shape[-3]
    assert got.shape == want.shape
    assert torch.equal(got.unpack(), want)
    # the bytes are exactly what packing the pooled values gives (padding bits of the last byte stay 0)
    assert torch.equal(got.data, _pack(want).data)
    # float input: nn.MaxPool2d's values
    assert torch.equal(spike_max_pool2d(x, k, s, p, d, c), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("geom", [GEOMETRIES["k3s2p1-ceil"], GEOMETRIES["asym"]], ids=["k3s2p1-ceil", "asym"])
def test_max_pool_gradients_equal_nn_maxpool(geom, dtype):
    """Float input and packed input with an anchor: the gradient that nn.MaxPool2d gives (to the first
    maximum of each window, an all-zero window's first element included)."""
    k, s, p, d, c = geom
    x = _spikes((2, 3, 10, 7, 8), p=0.2, dtype=dtype)
    ref_pool = nn.MaxPool2d(k, s, p, d, ceil_mode=c)
    xr = x.clone().requires_grad_()
    want = _torch_pool(xr, ref_pool)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    (want_g,) = torch.autograd.grad(want, xr, g)
    pool = st.SpikeMaxPool2d(k, s, p, d, ceil_mode=c, backend="torch")
    xf = x.clone().requires_grad_()
    yf = pool(xf)
    assert torch.equal(yf.detach(), want.detach())
    assert torch.equal(torch.autograd.grad(yf, xf, g)[0], want_g)
    xp = x.clone().requires_grad_()
    img = pool(_pack(xp))
    assert img.anchor is not None and img.anchor.requires_grad
    dense = img.to_dense(dtype)
    assert torch.equal(dense.detach(), want.detach())
    assert torch.equal(torch.autograd.grad(dense, xp, g)[0], want_g)


def test_max_pool_packed_saves_only_the_packed_bits():
    x = _spikes((4, 2, 16, 8, 8)).requires_grad_()
    img = _pack(x)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = spike_max_pool2d(img, 2)
    assert saved and all(t.dtype == torch.uint8 for t in saved)
    assert sum(t.numel() for t in saved) == img.data.numel()  # 1 bit per input element
    assert out.anchor.untyped_storage().nbytes() == 4  # the output's anchor is one element


def test_max_pool_noncontiguous_and_no_grad():
    x = _spikes((2, 3, 9, 6, 6))
    want = _torch_pool(x, F.max_pool2d, 2)
    xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, other strides
    assert torch.equal(spike_max_pool2d(xt, 2), want)
    img = _pack(x)
    strided = st.SpikeImage(img.data.transpose(0, 1).contiguous().transpose(0, 1), img.c)
    assert not strided.data.is_contiguous()
    assert torch.equal(spike_max_pool2d(strided, 2).unpack(), want)
    xa = x.clone().requires_grad_()
    with torch.no_grad():
        assert spike_max_pool2d(_pack(xa), 2).anchor is None


def test_max_pool_chain_stays_packed_and_gradient_flows_through_two_pools():
    x = _spikes((2, 2, 5, 8, 8), p=0.15)
    xr, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = _torch_pool(_torch_pool(xr, F.max_pool2d, 2), F.max_pool2d, 2, 1, 1)
    got = spike_max_pool2d(spike_max_pool2d(_pack(xp), 2), 2, 1, 1, backend="torch")
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    assert torch.equal(got.unpack(), want.detach())
    assert torch.equal(torch.autograd.grad(got.to_dense(), xp, g)[0], torch.autograd.grad(want, xr, g)[0])


@pytest.mark.parametrize("kind", ["avg", "avg-nopad-count", "avg-divisor", "sum"])
@pytest.mark.parametrize("shape", [SHAPES["TBCHW"], SHAPES["BCHW"], SHAPES["CHW"]], ids=["TBCHW", "BCHW", "CHW"])
def test_avg_and_sum_pool_equal_torch_with_gradients(kind, shape):
    x = _spikes(shape, p=0.4)
    if kind == "sum":
        mod = st.SpikeSumPool2d(3, 2, 1, ceil_mode=True, backend="torch")
        ref = nn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=1)
    elif kind == "avg-nopad-count":
        mod = st.SpikeAvgPool2d(3, 2, 1, count_include_pad=False, backend="torch")
        ref = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
    elif kind == "avg-divisor":
        mod, ref = st.SpikeAvgPool2d(2, divisor_override=3, backend="torch"), nn.AvgPool2d(2, divisor_override=3)
    else:
        mod, ref = st.SpikeAvgPool2d((2, 3), (2, 1), backend="torch"), nn.AvgPool2d((2, 3), (2, 1))
    xr = x.clone().requires_grad_()
    want = _torch_pool(xr, ref)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(3))
    (want_g,) = torch.autograd.grad(want, xr, g)
    for packed in (False, True):
        xi = x.clone().requires_grad_()
        y = mod(_pack(xi) if packed else xi)
        assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
        torch.testing.assert_close(y, want.detach(), rtol=0, atol=0)
        torch.testing.assert_close(torch.autograd.grad(y, xi, g)[0], want_g, rtol=0, atol=0)


def test_sum_pool_counts_in_the_requested_dtype_and_keeps_no_floats():
    x = _spikes((2, 3, 4, 6, 6), p=0.5)
    img = _pack(x)
    y = spike_sum_pool2d(img, 3, dtype=torch.float16, backend="torch")
    assert y.dtype == torch.float16
    assert torch.equal(y.float(), _torch_pool(x, F.avg_pool2d, 3, divisor_override=1))
    xa = x.clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        spike_avg_pool2d(_pack(xa), 2, backend="torch")
    assert not [t for t in saved if t.is_floating_point() and t.numel() > 1]


def test_modules_are_torch_pooling_modules():
    mp = st.SpikeMaxPool2d(3, 2, 1, ceil_mode=True)
    assert isinstance(mp, nn.MaxPool2d) and mp.stride == 2 and mp.step_mode == "m"
    assert repr(mp) == repr(nn.MaxPool2d(3, 2, 1, ceil_mode=True)).replace("MaxPool2d", "SpikeMaxPool2d")
    assert dict(mp.state_dict()) == {}
    same = st.SpikeMaxPool2d.from_pool(nn.MaxPool2d((2, 3), dilation=(1, 2)))
    assert same.kernel_size == (2, 3) and same.stride == (2, 3) and same.dilation == (1, 2)
    sp = st.SpikeSumPool2d(2)
    assert isinstance(sp, nn.AvgPool2d) and sp.divisor_override == 1
    assert repr(sp) == "SpikeSumPool2d(kernel_size=2, stride=2, padding=0)"
    avg = st.SpikeAvgPool2d.from_pool(nn.AvgPool2d(2, count_include_pad=False))
    assert not avg.count_include_pad
    # in a StepWise (multi-step and single step) and alone: the same values
    x = _spikes((3, 2, 4, 6, 6))
    want = _torch_pool(x, F.max_pool2d, 2)
    assert torch.equal(st.StepWise(st.SpikeMaxPool2d(2))(x), want)
    assert torch.equal(st.StepWise(st.SpikeMaxPool2d(2))(_pack(x)).unpack(), want)
    net = st.set_step_mode(st.StepWise(st.SpikeMaxPool2d(2)), "s")
    assert torch.equal(net(x[0]), want[0])


def test_bad_input_is_a_clear_error():
    x = _spikes((2, 3, 6, 6))
    with pytest.raises(ValueError, match="SpikeMaxPool2d: return_indices=True is not supported"):
        st.SpikeMaxPool2d(2, return_indices=True)
    with pytest.raises(ValueError, match=r"SpikeMaxPool2d: kernel_size must be an int >= 1 or a pair of them, got 0"):
        st.SpikeMaxPool2d(0)
    with pytest.raises(ValueError, match=r"SpikeAvgPool2d: stride must be an int >= 1"):
        st.SpikeAvgPool2d(2, stride=(1, 0))
    with pytest.raises(ValueError, match=r"spike_max_pool2d: padding \(2, 2\) must be at most half of the dilated"):
        spike_max_pool2d(x, 3, padding=2)
    with pytest.raises(ValueError, match="a window that lies entirely in the padding"):
        spike_max_pool2d(_spikes((1, 1, 2, 2)), 2, 1, 1, 3)
    with pytest.raises(ValueError, match=r"spike_max_pool2d: the input \(6, 6\) .* is smaller than the dilated kernel"):
        spike_max_pool2d(x, 7)
    with pytest.raises(TypeError, match="spike_max_pool2d: got a uint8 tensor; wrap packed spikes as a SpikeImage"):
        spike_max_pool2d(x.to(torch.uint8), 2)
    with pytest.raises(TypeError, match="spike_avg_pool2d: expected float 0/1 images .* got torch.int64"):
        spike_avg_pool2d(x.long(), 2)
    with pytest.raises(ValueError, match=r"spike_sum_pool2d: expected images \[\*lead, C, H, W\] .* got shape \(6, 6\)"):
        spike_sum_pool2d(x[0, 0], 2)
    with pytest.raises(TypeError, match="spike_max_pool2d: expected a tensor .* or a SpikeImage, got list"):
        spike_max_pool2d([x], 2)
    with pytest.raises(TypeError, match="ceil_mode"):
        spike_max_pool2d(x, 2, ceil_mode="yes")
    with pytest.raises(ValueError, match="spike_avg_pool2d: dtype is for packed input"):
        spike_avg_pool2d(x, 2, dtype=torch.float16)
    with pytest.raises(TypeError, match="spike_sum_pool2d: dtype must be a floating dtype"):
        spike_sum_pool2d(_pack(x), 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="spike_avg_pool2d: divisor_override must be None or an int >= 1"):
        spike_avg_pool2d(x, 2, divisor_override=0)


def test_triton_backend_unpacks_the_same():
    """backend="triton" (the interpreter here) unpacks with the Triton kernel: the same values and gradients."""
    x = _spikes((2, 1, 11, 6, 6), p=0.3)
    want = {}
    for backend in ("torch", "triton"):
        xa = x.clone().requires_grad_()
        img = _pack(xa, backend)
        y = st.SpikeMaxPool2d(3, 2, 1, backend=backend)(img).to_dense(backend=backend)
        z = st.SpikeSumPool2d(2, backend=backend)(img)
        g = torch.autograd.grad((y * torch.arange(y.numel()).reshape(y.shape)).sum() + (z * z).sum(), xa)[0]
        want[backend] = (y.detach(), z.detach(), g)
    for a, b in zip(want["torch"], want["triton"]):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="SpikeMaxPool2d: backend must be one of"):
        st.SpikeMaxPool2d(2, backend="cuda")
