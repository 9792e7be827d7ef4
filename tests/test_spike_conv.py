"""Packed spike images (SpikeImage, pack_image) and SpikeConv2d: forward and every gradient against a
float64 reference on both paths (Triton under TRITON_INTERPRET=1 on CPU: tiny shapes)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spiketriton as st
from spiketriton.functional.images import SpikeImage, pack_image, spike_conv2d

BACKENDS = ["triton", "torch"]
EPS = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def spikes(shape, rate=0.3, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < rate).to(dtype).to(device)


# ------------------------------------------------------------------------------------------- #
# packing
# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 13, 1, 1), (2, 1, 8, 3, 2), (3, 16, 2, 3), (1, 9, 2, 2)])
def test_pack_image_roundtrip_and_layout(shape, backend, device):
    s = spikes(shape, 0.4, device=device)
    img = pack_image(s, backend=backend)
    C, H, W = shape[-3:]
    assert img.shape == s.shape and img.c == C
    assert tuple(img.data.shape) == shape[:-3] + (H, W, (C + 7) // 8)
    # the layout: pack_spikes of the channels-last permutation (bit c % 8 of byte c // 8, LSB first)
    assert torch.equal(img.data, st.pack_spikes(s.movedim(-3, -1).contiguous(), backend="torch").data)
    byte = img.data[(0,) * (len(shape) - 3) + (0, 0, 0)].item()
    want = sum(int(s[(0,) * (len(shape) - 3) + (c, 0, 0)].item()) << c for c in range(min(C, 8)))
    assert byte == want
    for dt in (torch.float32, torch.bfloat16, torch.bool, torch.uint8):
        out = img.unpack(dt, backend=backend)
        assert out.dtype == dt and out.is_contiguous() and torch.equal(out.to(s.dtype), s)


def test_pack_image_anchor_carries_gradient():
    s = spikes((2, 3, 4, 4)).requires_grad_()
    img = pack_image(s)
    assert img.anchor is s and img.requires_grad
    g = torch.randn(2, 3, 4, 4)
    (img.to_dense() * g).sum().backward()
    assert torch.equal(s.grad, g)
    assert not img.detach().requires_grad
    assert img[1].shape == (3, 4, 4) and torch.equal(img[1].unpack(), s[1].detach())


def test_spike_image_validation():
    d = torch.zeros(2, 4, 4, 2, dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8"):
        SpikeImage(d.float(), 13)
    with pytest.raises(ValueError, match="ceil"):
        SpikeImage(d, 17)
    with pytest.raises(ValueError, match="at least 3"):
        SpikeImage(torch.zeros(4, 2, dtype=torch.uint8), 13)
    with pytest.raises(ValueError, match="int >= 0"):
        SpikeImage(d, -1)
    with pytest.raises(ValueError, match="logical shape"):
        SpikeImage(d, 13, torch.zeros(2, 4, 4, 13))
    assert SpikeImage(d, 13, torch.zeros(2, 13, 4, 4)).shape == (2, 13, 4, 4)
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        pack_image(torch.full((1, 2, 2, 2), 0.5))
    with pytest.raises(ValueError, match="at least 3"):
        pack_image(torch.zeros(2, 2))
    with pytest.raises(TypeError, match="int32"):
        pack_image(torch.zeros(1, 2, 2, 2, dtype=torch.int32))
    with pytest.raises(TypeError, match="SpikeImage"):
        st.unpack_image(torch.zeros(1))


def test_spike_image_and_spike_tensor_share_a_base_but_stay_distinct_types():
    """Layers dispatch on the two packed types: the shared base must not make one an instance of the
    other, and its methods must return the caller's type, with its own count and error messages."""
    s = (torch.rand(2, 11, 3, 5) < 0.5).float().requires_grad_()
    for p, cls, other, n in ((pack_image(s), SpikeImage, st.SpikeTensor, ("c", 11)),
                             (st.pack_spikes(s), st.SpikeTensor, SpikeImage, ("k", 5))):
        assert isinstance(p, cls) and not isinstance(p, other) and getattr(p, n[0]) == n[1]
        moved, det = p.to("cpu"), p.detach()
        assert type(moved) is cls and type(det) is cls and getattr(det, n[0]) == n[1]
        assert moved.anchor is not None and moved.requires_grad and not det.requires_grad
        assert torch.equal(moved.unpack(), s.detach()) and torch.equal(det.to_dense(), s.detach())
        assert repr(p) == f"{cls.__name__}(shape={tuple(s.shape)}, packed={tuple(p.data.shape)}, device=cpu)"
        assert p.shape == s.shape and p.dim() == 4 and p.device == s.device
        with pytest.raises(ValueError, match=rf"^{cls.__name__}: anchor is on meta but the packed data on cpu"):
            cls(p.data, n[1], torch.zeros(s.shape, device="meta"))
        with pytest.raises(ValueError, match=rf"^{cls.__name__}: {n[0]} = 17 .* need ceil\({n[0]}/8\) = 3 bytes"):
            cls(p.data, 17)


# ------------------------------------------------------------------------------------------- #
# the convolution against float64
# ------------------------------------------------------------------------------------------- #


def _ref(s, w, b, g, geo):
    """float64 F.conv2d and its gradients (s, w, b, g upcast)."""
    s64 = s.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if b is not None else None
    with warnings.catch_warnings():  # torch's note on 'same' with an even kernel
        warnings.simplefilter("ignore")
        y = F.conv2d(s64, w64, b64, **geo)
    gx, gw, *gb = torch.autograd.grad(y, [s64, w64] + ([b64] if b64 is not None else []), g.double())
    return y.detach(), gx, gw, (gb[0] if gb else None)


def assert_close(got, want, bound_abs, dtype, n_terms, what):
    """|got - want| <= one rounding to ``dtype`` + fp32 accumulation of n_terms terms of the sum of
    magnitudes ``bound_abs``: a wrong, missing or extra term is off by a whole |w| (or |dY|)."""
    bound = 2 * EPS[dtype] * want.abs() + (n_terms + 2) * 2.0**-24 * bound_abs
    err = (got.double() - want).abs()
    worst = (err / bound).nan_to_num(posinf=float("inf")).argmax()
    assert (err <= bound).all(), (f"{what}: err {err.flatten()[worst].item():.3g} over the bound "
                                  f"{bound.flatten()[worst].item():.3g} (of {want.flatten()[worst].item():.3g})")


def check_conv(backend, device, C, Co, k, N=2, HW=(5, 6), dtype=torch.float32, bias=True, seed=0, **geo):
    torch.manual_seed(seed)
    conv = st.SpikeConv2d(C, Co, k, bias=bias, backend=backend, step_mode="s", **geo).to(device=device, dtype=dtype)
    s = spikes((N, C) + HW, 0.4, seed, dtype, device).requires_grad_()
    y = conv(s)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device=device, dtype=dtype)
    gx, gw, *gb = torch.autograd.grad(y, [s, conv.weight] + ([conv.bias] if bias else []), g)
    fgeo = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    want = _ref(s, conv.weight, conv.bias, g, fgeo)
    mag = _ref(s, conv.weight.abs(), conv.bias.abs() if bias else None, g.abs(), fgeo)
    kh, kw = conv.kernel_size
    assert y.dtype == dtype and y.shape == want[0].shape
    assert_close(y, want[0], mag[0], dtype, C // conv.groups * kh * kw, "forward")
    assert_close(gx, want[1], mag[1], dtype, Co // conv.groups * kh * kw, "grad x")
    assert_close(gw, want[2], mag[2], dtype, y.shape[0] * y.shape[2] * y.shape[3], "grad weight")
    if bias:
        assert_close(gb[0], want[3], mag[3], dtype, y.shape[0] * y.shape[2] * y.shape[3], "grad bias")
    return y


GEOMETRIES = {
    "3x3-pad1-C3": dict(C=3, Co=5, k=3, padding=1),
    "C13-stride2-rect": dict(C=13, Co=6, k=(2, 3), stride=2),
    "same-dil2": dict(C=8, Co=4, k=3, padding="same", dilation=2),
    "same-even-kernel": dict(C=5, Co=3, k=(2, 4), padding="same"),
    "valid-stride-rect": dict(C=9, Co=7, k=(3, 1), stride=(2, 1), padding="valid", dilation=(1, 2)),
    "1x1-kernel": dict(C=16, Co=3, k=1),
    "1x1-image-pad1": dict(C=3, Co=4, k=3, padding=1, HW=(1, 1)),
    "1x1-image-1x1-kernel": dict(C=13, Co=2, k=1, HW=(1, 1), N=1),
    "groups2-x8": dict(C=16, Co=6, k=3, padding=1, groups=2),
    "groups3-x2": dict(C=6, Co=9, k=3, padding=(0, 1), groups=3),
    "depthwise8": dict(C=8, Co=8, k=3, padding=1, groups=8, bias=False),
    "pad-asym-stride3": dict(C=11, Co=5, k=2, stride=3, padding=(2, 1)),
    # 256 output pixels: the dW kernel splits M (fp32 partial sums added by the launcher)
    "dw-split-m": dict(C=8, Co=4, k=2, N=4, HW=(9, 9), bias=False),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_conv_forward_and_gradients(name, backend, device):
    check_conv(backend, device, **GEOMETRIES[name])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_conv_half_precision(dtype, backend, device):
    check_conv(backend, device, C=13, Co=6, k=3, padding=1, dtype=dtype)
    check_conv(backend, device, C=16, Co=4, k=(1, 2), groups=2, stride=2, dtype=dtype, seed=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multistep_T1_spikeimage_and_noncontiguous_agree(backend, device):
    torch.manual_seed(0)
    conv = st.SpikeConv2d(13, 5, 3, padding=1, backend=backend).to(device)
    for T in (1, 2):
        base = spikes((2, 13, 3, T, 8), 0.3, T, device=device)
        s = base.permute(3, 0, 1, 2, 4)[..., ::2]  # [T, B, C, H, W], not contiguous
        assert not s.is_contiguous()
        y = conv(s)
        assert y.shape == (T, 2, 5, 3, 4)
        ref = F.conv2d(s.flatten(0, 1).double(), conv.weight.double(), conv.bias.double(), padding=1)
        assert torch.allclose(y.flatten(0, 1).double(), ref, atol=1e-5)
        yi = conv(pack_image(s, backend=backend))
        assert torch.equal(y, yi)
        assert torch.equal(conv(s.bool()), y)
    # a single step of the multi-step layer and the single-step layer agree
    conv.step_mode = "s"
    assert torch.equal(conv(s[1]), y[1])
    assert torch.equal(conv(pack_image(s)[1]), y[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_spikeimage_gradient_reaches_producer(backend, device):
    torch.manual_seed(1)
    conv = st.SpikeConv2d(13, 4, 3, padding=1, backend=backend).to(device)
    s = spikes((2, 2, 13, 4, 4), device=device).requires_grad_()
    g = torch.randn(2, 2, 4, 4, 4, device=device)
    (gx_float,) = torch.autograd.grad(conv(s), [s], g)
    (gx_img,) = torch.autograd.grad(conv(pack_image(s)), [s], g)
    assert torch.equal(gx_float, gx_img)


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_packed_spikes_are_saved(backend, device):
    """Training saves the packed spikes (1 bit per input value) and the weight, nothing of the size of
    the float spikes."""
    T, B, C, H, W = 2, 2, 13, 5, 5
    conv = st.SpikeConv2d(C, 8, 3, padding=1, backend=backend).to(device)
    s = spikes((T, B, C, H, W), device=device).requires_grad_()
    params = {p.untyped_storage().data_ptr() for p in conv.parameters()}
    saved = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = conv(s)
    assert len(saved) == 1 and saved[0].dtype == torch.uint8
    assert saved[0].untyped_storage().nbytes() == T * B * H * W * 2
    y.sum().backward()
    assert s.grad is not None and conv.weight.grad is not None


# ------------------------------------------------------------------------------------------- #
# the module: drop-in for nn.Conv2d, errors
# ------------------------------------------------------------------------------------------- #


def test_state_dict_and_from_conv():
    torch.manual_seed(0)
    ref = nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2)
    torch.manual_seed(0)
    sc = st.SpikeConv2d(6, 4, 3, stride=2, padding=1, groups=2)
    assert sc.state_dict().keys() == ref.state_dict().keys()
    for k in ref.state_dict():
        assert torch.equal(sc.state_dict()[k], ref.state_dict()[k])  # same init from the same seed
    sc2 = st.SpikeConv2d(6, 4, 3, stride=2, padding=1, groups=2)
    sc2.load_state_dict(ref.state_dict())
    ref.load_state_dict(sc2.state_dict())
    f = st.SpikeConv2d.from_conv(ref, backend="torch")
    assert f.weight is ref.weight and f.bias is ref.bias and f.backend == "torch"
    s = spikes((3, 2, 6, 7, 7))
    assert torch.allclose(f(s).flatten(0, 1), ref(s.flatten(0, 1)), atol=1e-6)
    nb = nn.Conv2d(3, 2, 1, bias=False).eval()
    assert st.SpikeConv2d.from_conv(nb).bias is None and not st.SpikeConv2d.from_conv(nb).training
    assert "check_binary=True" in repr(sc)


def test_set_step_mode_reaches_spikeconv():
    net = nn.Sequential(st.SpikeConv2d(3, 4, 3), st.LIF())
    st.set_step_mode(net, "s")
    assert net[0].step_mode == "s"
    assert net(spikes((2, 3, 5, 5))).shape == (2, 4, 3, 3)


def test_bad_input_errors():
    conv = st.SpikeConv2d(13, 4, 3)
    with pytest.raises(ValueError, match="c = 8 channels, expected in_channels = 13"):
        conv(pack_image(spikes((1, 2, 8, 5, 5))))
    with pytest.raises(ValueError, match="12 channels"):
        conv(spikes((1, 2, 12, 5, 5)))
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        conv(torch.full((1, 1, 13, 5, 5), 0.5))
    st.SpikeConv2d(13, 4, 3, check_binary=False)(torch.full((1, 1, 13, 5, 5), 0.5))  # the check is off
    with pytest.raises(ValueError, match="step_mode='s'"):
        conv(spikes((2, 13, 5, 5)))
    with pytest.raises(ValueError, match=r"takes \[B, C, H, W\]"):
        st.SpikeConv2d(13, 4, 3, step_mode="s")(spikes((1, 2, 13, 5, 5)))
    with pytest.raises(TypeError, match="uint8"):
        conv(torch.zeros(1, 1, 13, 5, 5, dtype=torch.uint8))
    with pytest.raises(TypeError, match="int64"):
        conv(torch.zeros(1, 1, 13, 5, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match="list"):
        conv([1, 2])
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        conv(spikes((1, 1, 13, 2, 5)))
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'"):
        st.SpikeConv2d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode"):
        st.SpikeConv2d.from_conv(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        st.SpikeConv2d.from_conv(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="step_mode"):
        st.SpikeConv2d(3, 4, 3, step_mode="x")
    with pytest.raises(ValueError, match="backend"):
        st.SpikeConv2d(3, 4, 3, backend="cuda")
    with pytest.raises(TypeError, match="check_binary"):
        st.SpikeConv2d(3, 4, 3, check_binary="yes")
    with pytest.raises(ValueError, match="C_in = 13"):
        spike_conv2d(pack_image(spikes((1, 8, 5, 5))), conv.weight)
    with pytest.raises(ValueError, match="stride"):
        spike_conv2d(spikes((1, 13, 5, 5)), conv.weight, stride=0)
    with pytest.raises(ValueError, match="'same' is not supported for strided"):
        spike_conv2d(spikes((1, 13, 5, 5)), conv.weight, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding must be"):
        spike_conv2d(spikes((1, 13, 5, 5)), conv.weight, padding="full")


def test_meta_shapes():
    conv = st.SpikeConv2d(5, 4, 3, stride=2, padding=1, device="meta")
    y = conv(torch.empty(3, 2, 5, 9, 9, device="meta"))
    assert y.shape == (3, 2, 4, 5, 5) and y.is_meta


# ------------------------------------------------------------------------------------------- #
# the kernels: exact fp32 split with its fallback, the cached reordered weight
# ------------------------------------------------------------------------------------------- #


def test_fp32_values_below_the_split_range_are_exact(device):
    """fp32 weights (forward) and dY values (dW) below 2^-110 cannot be split into three bf16 parts;
    the kernels flag their rows and recompute them with fp32 FMAs. Without that the result would be
    off by ~2^-13 relative, far outside the bound."""
    torch.manual_seed(0)
    s = spikes((2, 16, 4, 5), 0.5, device=device)
    w = torch.randn(20, 16, 3, 3, device=device)
    w[3:5] *= 2.0**-120  # two output channels of tiny (still normal fp32) weights
    g = torch.randn(2, 20, 4, 5, device=device)
    g[:, 7] *= 2.0**-120
    for backend in BACKENDS:
        wr = w.clone().requires_grad_()
        y = spike_conv2d(s, wr, padding=1, backend=backend)
        (gw,) = torch.autograd.grad(y, [wr], g)
        geo = dict(padding=1)
        want = _ref(s, w, None, g, geo)
        mag = _ref(s, w.abs(), None, g.abs(), geo)
        assert_close(y, want[0], mag[0], torch.float32, 144, f"{backend} forward")
        assert_close(gw, want[2], mag[2], torch.float32, 40, f"{backend} grad weight")
        assert_close(y[:, 3:5], want[0][:, 3:5], mag[0][:, 3:5], torch.float32, 144, "tiny rows")
        assert_close(gw[7], want[2][7], mag[2][7], torch.float32, 40, "tiny dY row")


def test_reordered_weight_is_cached_until_the_weight_changes(device):
    conv = st.SpikeConv2d(13, 4, 3, padding=1, backend="triton").to(device)
    s = spikes((1, 2, 13, 4, 4), device=device)
    y0 = conv(s)
    wr = conv._weight_r()
    assert wr is conv._weight_r() and wr.shape == (4, 3 * 3 * 16)
    assert torch.equal(wr.view(4, 3, 3, 16)[..., :13], conv.weight.detach().permute(0, 2, 3, 1))
    assert not wr.view(4, 3, 3, 16)[..., 13:].any()  # the padded channels are zero weights
    with torch.no_grad():
        conv.weight.mul_(2)  # an in-place update (an optimizer step) invalidates it
    assert conv._weight_r() is not wr
    b = conv.bias.view(1, 1, -1, 1, 1)
    assert torch.allclose(conv(s) - b, 2 * (y0 - b), atol=1e-5)
    conv.weight = nn.Parameter(torch.zeros_like(conv.weight))  # another tensor
    assert torch.equal(conv(s), conv.bias.view(1, 1, -1, 1, 1).expand(1, 2, 4, 4, 4))
    assert st.SpikeConv2d(13, 4, 3, backend="torch")._weight_r() is None
    assert st.SpikeConv2d(6, 6, 3, groups=3)._weight_r() is None  # 2 channels a group: dense path


# ------------------------------------------------------------------------------------------- #
# memory layout and the neuron hand-over
# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_is_channels_last_and_dW_reads_any_gradient_layout(backend, device):
    """The output is [N, C_out, H', W'] stored channels-last on both paths (what a neuron packs without
    a copy); the weight gradient is the same for an NCHW and a channels-last upstream gradient."""
    torch.manual_seed(0)
    conv = st.SpikeConv2d(16, 6, 3, padding=1, backend=backend, step_mode="s").to(device)
    s = spikes((2, 16, 4, 5), device=device)
    y = conv(s)
    assert y.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn(y.shape, device=device)
    (gw_nchw,) = torch.autograd.grad(conv(s), [conv.weight], g.contiguous())
    (gw_cl,) = torch.autograd.grad(conv(s), [conv.weight], g.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(gw_nchw, gw_cl, rtol=1e-6, atol=1e-6)
    # y.sum() hands back an expanded dY (all strides 0)
    (gw_sum,) = torch.autograd.grad(conv(s).sum(), [conv.weight])
    (gw_ones,) = torch.autograd.grad(conv(s), [conv.weight], torch.ones(y.shape, device=device))
    assert torch.allclose(gw_sum, gw_ones, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert conv(s).is_contiguous(memory_format=torch.channels_last)


def _neuron(kind, backend, **kw):
    if kind == "lif":
        return st.LIF(backend=backend, **kw)
    return st.ExtendedLIF(v_th0=0.8, v_leaky_alpha=0.9, v_th_incre=0.1, v_th_alpha=0.9, ref_len=1,
                          backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lif", "extended"])
def test_neuron_hands_a_spike_image_to_the_conv(kind, backend, device):
    """packed_output='image': the same spikes, state, output and gradients (input, weight, bias, and
    the neuron's parameters through the anchor) as float spikes, across calls (carried state)."""
    torch.manual_seed(0)
    conv = st.SpikeConv2d(13, 4, 3, padding=1, backend=backend).to(device)
    a = _neuron(kind, backend).to(device)
    b = _neuron(kind, backend, packed_output="image").to(device)
    assert "packed_output='image'" in repr(b)
    for call in range(2):
        x = (torch.randn(2, 1, 13, 3, 4, device=device) + 0.5).requires_grad_()
        sa, sb = a(x), b(x)
        assert isinstance(sb, SpikeImage) and sb.shape == x.shape and sb.requires_grad
        assert torch.equal(sb.unpack(), sa)
        for name in a._state_names:
            assert getattr(b, name).shape == getattr(a, name).shape and torch.equal(getattr(b, name), getattr(a, name))
        ya, yb = conv(sa), conv(sb)
        assert torch.allclose(ya, yb, rtol=1e-6, atol=1e-6)
        g = torch.randn_like(ya)
        wrt = lambda n: [x, conv.weight, conv.bias] + list(n.parameters())  # noqa: E731
        ga = torch.autograd.grad(ya, wrt(a), g)
        gb = torch.autograd.grad(yb, wrt(b), g)
        for u, v in zip(ga, gb):
            assert torch.allclose(u, v, rtol=1e-5, atol=1e-6)
        a.v, b.v = a.v.detach(), b.v.detach()  # the next call continues from the state, not the graph
        for n in (a, b):
            for name in n._state_names[1:]:
                setattr(n, name, getattr(n, name).detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_neuron_image_single_step_and_errors(backend, device):
    x = torch.randn(2, 3, 2, 13, 4, 4, device=device)[:, 0]  # [T, B, C, H, W]
    m = st.LIF(backend=backend)
    s = st.LIF(backend=backend, packed_output="image", step_mode="s")
    full = m(x)
    steps = [s(x[t]) for t in range(2)]
    assert all(isinstance(o, SpikeImage) and o.shape == x.shape[1:] for o in steps)
    assert torch.equal(torch.stack([o.unpack() for o in steps]), full)
    with pytest.raises(ValueError, match=r"packed='image'.*\[T, B, C, H, W\]"):
        st.LIF(backend=backend, packed_output="image")(torch.randn(2, 3, 8, device=device))
    with pytest.raises(TypeError, match="packed_output must be True or False, got 'yes'; or 'image'"):
        st.LIF(packed_output="yes")


@pytest.mark.parametrize("backend", BACKENDS)
def test_neuron_to_conv_saves_h_and_bits_only(backend, device):
    """LIF(packed_output='image') -> SpikeConv2d keeps H (fp32) and the packed bits, shared by both:
    4 + 1/8 bytes per neuron-step (C = 16: no padding bits)."""
    T, B, C, H, W = 2, 2, 16, 4, 4
    x = torch.randn(T, B, C, H, W, device=device, requires_grad=True)
    block = nn.Sequential(st.LIF(backend=backend, packed_output="image"), st.SpikeConv2d(C, 8, 3, backend=backend))
    block.to(device)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if t is not x and ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = block(x)
    per_step = (sum(saved.values()) - 4) / (T * B * C * H * W)  # minus the 4-byte decay constant
    assert per_step <= 4.125, per_step
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_neuron_runs_on_channels_last_input(backend, device):
    """A float-output neuron fed the conv's channels-last output runs in that order: the same spikes,
    state and gradient as on an NCHW copy."""
    x = torch.randn(2, 2, 3, 5, 6, device=device).permute(0, 1, 4, 2, 3)  # [T, B, C, H, W], channels-last
    assert x.movedim(2, -1).is_contiguous() and not x.is_contiguous()
    xa = x.detach().contiguous().requires_grad_()
    xb = x.detach().requires_grad_()
    na, nb = st.LIF(backend=backend), st.LIF(backend=backend)
    sa, sb = na(xa), nb(xb)
    assert torch.equal(sa, sb) and torch.equal(na.v, nb.v)
    g = torch.randn_like(sa)
    (ga,) = torch.autograd.grad(sa, [xa], g)
    (gb,) = torch.autograd.grad(sb, [xb], g)
    # (torch's vectorised and scalar loops may round the surrogate differently in the last bit)
    assert torch.allclose(ga, gb, rtol=1e-6, atol=1e-7)


def test_int64_index_path_gives_the_same_result(monkeypatch, device):
    """The kernels index in int32 unless an offset may reach 2^31; the int64 variant (forced here: the
    tensors that need it are too large for a test) computes the same values."""
    from spiketriton.kernels import spike_conv as KSC

    torch.manual_seed(0)
    s = spikes((2, 16, 5, 5), device=device).requires_grad_()
    w = torch.randn(6, 16, 3, 3, device=device, requires_grad=True)
    g = torch.randn(2, 6, 3, 2, device=device)
    y32 = spike_conv2d(s, w, stride=(1, 2), backend="triton")
    grads32 = torch.autograd.grad(y32, [s, w], g)
    monkeypatch.setattr(KSC, "_idx64", lambda *t: True)
    y64 = spike_conv2d(s, w, stride=(1, 2), backend="triton")
    grads64 = torch.autograd.grad(y64, [s, w], g)
    assert torch.equal(y32, y64)
    for a, b in zip(grads32, grads64):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_torch_compile_fullgraph(device):
    """The conv and its packed hand-over are custom ops Dynamo traces whole (aot_eager: the fake
    functions, with the channels-last output they promise), with the same values and gradients. (The
    op is the same for both backends, only its ``triton`` flag differs: one backend here, ~15 s.)"""
    backend = "torch"
    torch.manual_seed(0)
    conv = st.SpikeConv2d(13, 6, 3, padding=1, backend=backend).to(device)
    lif = st.LIF(backend=backend, packed_output="image").to(device)

    def f(x):
        return conv(lif(x)), conv(lif(x).unpack())

    x = torch.randn(2, 2, 13, 4, 4, device=device, requires_grad=True)
    want = f(x)
    gwant = torch.autograd.grad(sum(y.sum() for y in want), [x, conv.weight, conv.bias])
    st.reset(lif)
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x)
    ggot = torch.autograd.grad(sum(y.sum() for y in got), [x, conv.weight, conv.bias])
    for a, b in zip(want + gwant, got + ggot):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_uses_the_autocast_dtype(backend, device):
    """Under autocast the weight and bias are rounded to the autocast dtype (the cached fp32 reorder is
    not used) and the result is in that dtype, as the same conv with bf16 parameters gives."""
    torch.manual_seed(0)
    conv = st.SpikeConv2d(16, 4, 3, padding=1, backend=backend, step_mode="s").to(device)
    s = spikes((2, 16, 4, 4), device=device)
    want = spike_conv2d(s, conv.weight.bfloat16(), conv.bias.bfloat16(), padding=1, backend=backend)
    conv(s)  # fills the fp32 reordered-weight cache
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        got = conv(s)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_magic_divisor_is_exact():
    """The kernels' int32 division by H'*W' and W' (multiply-high and shift) on edge and random values."""
    from spiketriton.kernels.spike_conv import magic_divisor

    g = torch.Generator().manual_seed(0)
    divisors = list(range(1, 70)) + [2**k + e for k in range(7, 31) for e in (-1, 0, 1) if 2**k + e < 2**31]
    divisors += torch.randint(1, 2**31 - 1, (200,), generator=g).tolist()
    for d in divisors:
        magic, shift = magic_divisor(d)
        assert 0 < magic < 2**32
        ns = [0, 1, d - 1, d, d + 1, 2 * d - 1, 2**31 - 1, 2**31 - 2, (2**31 - 1) // d * d, (2**31 - 1) // d * d - 1]
        ns += torch.randint(0, 2**31 - 1, (50,), generator=g).tolist()
        for n in ns:
            if 0 <= n < 2**31:
                assert (((2 * n) * magic) >> 32) >> shift == n // d, (n, d)
