"""Packed spikes, spike_matmul (forward and every gradient), SpikeLinear, convert(), and neurons
handing packed spikes to SpikeLinear. Kernels run under TRITON_INTERPRET=1 on CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton.kernels import pack as PK
from spiketriton.kernels import pack_torch as PT
from spiketriton.reference import pack as PR

BACKENDS = ["triton", "torch"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def spikes(shape, rate, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < rate).to(dtype).to(device)


def assert_matmul_close(got, want64, abs_sum, dtype, K):
    """|got - want| <= rounding to dtype + fp32 accumulation of K terms (the sums are exact in fp64).
    A wrong, missing or extra weight is off by a whole |w|, far above this bound."""
    bound = 2 * EPS[dtype] * want64.abs() + K * 2.0**-24 * abs_sum + 1e-30
    err = (got.double() - want64).abs()
    assert (err <= bound).all(), f"max err {err.max().item():.3g}, bound there {bound.flatten()[err.argmax()].item():.3g}"


# ------------------------------------------------------------------------------------------- #
# packing
# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("K", [1, 7, 8, 9, 13, 64, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.bool, torch.uint8], ids=str)
def test_pack_unpack_round_trip(K, dtype, device):
    s = spikes((3, 5, K), 0.4, seed=K, dtype=dtype, device=device)
    want = PR.pack_bits(s.cpu())
    assert want.shape == (3, 5, (K + 7) // 8) and want.dtype == torch.uint8
    for backend in BACKENDS:
        p = st.pack_spikes(s, backend=backend)
        assert p.k == K and p.shape == s.shape
        assert torch.equal(p.data.cpu(), want), backend
        out_dtype = torch.float32 if dtype in (torch.bool, torch.uint8) else dtype
        assert torch.equal(st.unpack_spikes(p, out_dtype, backend=backend).cpu(), s.cpu().to(out_dtype)), backend


def test_pack_layout_lsb_first_and_zero_padded(device):
    s = torch.zeros(1, 10, device=device)
    s[0, 0] = s[0, 3] = s[0, 9] = 1.0  # bits 0 and 3 of byte 0, bit 1 of byte 1
    assert st.pack_spikes(s).data.tolist() == [[0b00001001, 0b00000010]]
    assert st.pack_spikes(s.cpu(), backend="torch").data.tolist() == [[9, 2]]
    assert PK.pack(s).tolist() == [[9, 2]]


def test_word_packing_every_byte_pattern():
    # the 64-bit multiply used on CPU, for all 256 patterns of 8 bits
    bits = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).to(torch.uint8)
    assert PT.pack_bits(bits).flatten().tolist() == list(range(256))
    assert torch.equal(PT.unpack_bits(torch.arange(256, dtype=torch.uint8)[:, None], 8, torch.uint8), bits)


def test_pack_rejects_non_binary_and_bad_types():
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        st.pack_spikes(torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        st.pack_spikes(torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError, match="float, bool or uint8"):
        st.pack_spikes(torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(TypeError, match="packed data must be a torch.uint8 tensor, got torch.float32"):
        st.SpikeTensor(torch.zeros(2, 1), 8)
    with pytest.raises(ValueError, match=r"k = 9 spikes need ceil\(k/8\) = 2 bytes"):
        st.SpikeTensor(torch.zeros(2, 1, dtype=torch.uint8), 9)


# ------------------------------------------------------------------------------------------- #
# spike_matmul
# ------------------------------------------------------------------------------------------- #

# M, N, K: single elements, odd sizes, K not a multiple of 8, and M, N, K past one 64-wide tile so
# that every kernel loop (K in the forward, M in the weight gradient) and the tile grid run more than once
SHAPES = [(1, 1, 1), (37, 29, 7), (5, 3, 9), (16, 40, 45), (33, 17, 1000), (130, 70, 9)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,N,K", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("packed_in", [False, True], ids=["float-in", "packed-in"])
def test_forward_and_gradients(backend, dtype, M, N, K, rate, packed_in, device):
    g = torch.Generator().manual_seed(M * 1000 + K)
    s = spikes((M, K), rate, seed=K, device=device)
    w = torch.randn(N, K, generator=g).to(dtype).to(device).requires_grad_()
    b = torch.randn(N, generator=g).to(dtype).to(device).requires_grad_()
    gy = torch.randn(M, N, generator=g).to(dtype).to(device)
    si = s.clone().requires_grad_()
    x = st.pack_spikes(si, backend=backend) if packed_in else si
    y = st.spike_matmul(x, w, b, backend=backend)
    assert y.dtype == dtype and y.shape == (M, N)
    y.backward(gy)
    # float64 oracle
    s64, w64, b64, gy64 = s.double(), w.detach().double(), b.detach().double(), gy.double()
    assert_matmul_close(y, s64 @ w64.T + b64, s64 @ w64.abs().T + b64.abs(), dtype, K)
    assert_matmul_close(w.grad, gy64.T @ s64, gy64.abs().T @ s64, dtype, M)
    assert_matmul_close(b.grad, gy64.sum(0), gy64.abs().sum(0), dtype, M)
    # dS = dY @ W is a dense matmul in the weight's dtype (torch's own accumulation)
    torch.testing.assert_close(si.grad.double(), gy64 @ w64, rtol=4 * EPS[dtype] * (N ** 0.5 + 1), atol=4 * EPS[dtype] * N)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_and_no_bias(backend, device):
    s = spikes((4, 3, 2, 19), 0.4, device=device)
    w = torch.randn(6, 19, device=device)
    y = st.spike_matmul(s, w, backend=backend)
    assert y.shape == (4, 3, 2, 6)
    torch.testing.assert_close(y, s @ w.T, rtol=1e-6, atol=1e-5)


def test_fp32_weights_are_summed_exactly_not_in_tf32(device):
    # weights 1 + j*2^-20 need 21 mantissa bits; with K = 8 every partial sum (< 16) fits fp32's 24
    # bits, so the fp32 result is exact, while TF32 (10 bits) would round every weight to 1.0. The
    # interpreter's tl.dot is always fp32: this bites on a GPU, where Triton could pick TF32.
    K = 8
    w = (1.0 + torch.arange(4 * K, dtype=torch.float64).reshape(4, K) * 2.0**-20).float().to(device)
    s = torch.ones(8, K, device=device)
    y = st.spike_matmul(s, w)
    assert torch.equal(y.double().cpu(), s.double().cpu() @ w.double().cpu().T)


def test_autocast(device):
    s = spikes((5, 16), 0.5, device=device)
    lin = st.SpikeLinear(16, 4).to(device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        y = lin(s)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), nn.functional.linear(s, lin.weight, lin.bias), rtol=2e-2, atol=2e-2)


def test_empty_inputs(device):
    w = torch.randn(3, 5, device=device, requires_grad=True)
    y = st.spike_matmul(torch.zeros(0, 5, device=device), w)
    assert y.shape == (0, 3)


def test_spike_matmul_errors():
    w = torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"last dimension \(9,\) but weight has K = 8"):
        st.spike_matmul(torch.zeros(2, 9), w)
    with pytest.raises(ValueError, match="packed spikes have k = 9 but weight"):
        st.spike_matmul(st.pack_spikes(torch.zeros(2, 9)), w)
    with pytest.raises(TypeError, match="weight must be a floating tensor"):
        st.spike_matmul(torch.zeros(2, 8), torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="move them to one device"):
        st.spike_matmul(torch.zeros(2, 8, device="meta"), w)


# ------------------------------------------------------------------------------------------- #
# SpikeLinear
# ------------------------------------------------------------------------------------------- #


def test_spikelinear_is_a_linear():
    torch.manual_seed(0)
    ref = nn.Linear(12, 5)
    torch.manual_seed(0)
    sl = st.SpikeLinear(12, 5)
    assert isinstance(sl, nn.Linear)
    assert sl.state_dict().keys() == ref.state_dict().keys()
    assert torch.equal(sl.weight, ref.weight) and torch.equal(sl.bias, ref.bias)  # same init
    conv = st.SpikeLinear.from_linear(ref)
    assert conv.weight is ref.weight and conv.bias is ref.bias  # shares the parameters
    s = spikes((3, 2, 12), 0.5)
    torch.testing.assert_close(conv(s), ref(s), rtol=1e-6, atol=1e-6)
    assert st.SpikeLinear(4, 2, bias=False).bias is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_spikelinear_inputs(backend, device):
    lin = st.SpikeLinear(10, 3, backend=backend).to(device)
    s = spikes((2, 4, 10), 0.5, device=device)
    y = lin(s)
    assert torch.equal(lin(s.bool()), y)
    assert torch.equal(lin(st.pack_spikes(s)), y)
    assert lin(s[0, 0]).shape == (3,)
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        lin(s * 0.5)
    lin.check_binary = False
    lin(s * 0.5)  # documented: no check, no error
    with pytest.raises(ValueError, match=r"input \[\.\.\., 10\] expected, got shape \(2, 4, 11\)"):
        lin(torch.zeros(2, 4, 11, device=device))
    with pytest.raises(ValueError, match="logical size k = 11, expected in_features = 10"):
        lin(st.pack_spikes(torch.zeros(2, 11, device=device)))
    with pytest.raises(TypeError, match="wrap packed spikes as SpikeTensor"):
        lin(torch.zeros(2, 2, dtype=torch.uint8, device=device))
    with pytest.raises(TypeError, match="got torch.int64"):
        lin(torch.zeros(2, 10, dtype=torch.int64, device=device))


# ------------------------------------------------------------------------------------------- #
# neurons handing packed spikes to SpikeLinear
# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["LIF", "ExtendedLIF"])
def test_packed_neuron_output_equals_float_path(backend, dtype, kind, device):
    def neuron(**kw):
        if kind == "LIF":
            return st.LIF(backend=backend, **kw)
        return st.ExtendedLIF(v_th0=0.8, ref_len=1, v_th_incre=0.2, v_th_alpha=0.9, backend=backend, **kw)

    torch.manual_seed(0)
    x = (torch.randn(6, 3, 21) * 1.5 + 0.5).to(dtype).to(device)
    lin = st.SpikeLinear(21, 7, backend=backend).to(device=device, dtype=dtype)
    a, b = neuron(), neuron(packed_output=True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = lin(a(xa))
    sp = b(xb)
    assert isinstance(sp, st.SpikeTensor) and sp.shape == x.shape
    yb = lin(sp)
    assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [xa, lin.weight, lin.bias], g)
    gb = torch.autograd.grad(yb, [xb, lin.weight, lin.bias], g)
    for u, v in zip(ga, gb):
        assert torch.equal(u, v)
    assert torch.equal(a.v, b.v)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,budget", [(torch.float32, 4.125), (torch.bfloat16, 2.125)], ids=["fp32", "bf16"])
def test_lif_spikelinear_block_saves_h_and_bits_only(backend, dtype, budget, device):
    """Bytes saved for backward per input neuron-step of LIF -> SpikeLinear (issue goal: <= 4.125 fp32,
    <= 2.125 bf16): H in the input dtype + the packed spikes, shared by the neuron and the layer."""
    T, B, K, N = 4, 3, 64, 16
    x = torch.randn(T, B, K, dtype=dtype, device=device, requires_grad=True)
    block = nn.Sequential(st.LIF(backend=backend), nn.Linear(K, N))
    st.convert(block, backend=backend)
    block.to(device=device, dtype=dtype)
    assert block[0].packed_output
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if t is not x and ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = block(x)
    per_step = (sum(saved.values()) - 4) / (T * B * K)  # minus the 4-byte decay constant
    assert per_step <= budget, per_step
    y.sum().backward()  # and the saved tensors suffice


# ------------------------------------------------------------------------------------------- #
# convert
# ------------------------------------------------------------------------------------------- #


class _Custom(nn.Module):
    """fx-traceable model with a view between the neuron and the head, and a Linear on non-spikes."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(8, 12)
        self.lif = st.LIF()
        self.head = nn.Linear(12, 3)
        self.skip = nn.Linear(8, 3)

    def forward(self, x):
        s = self.lif(self.enc(x))
        return self.head(s.view(s.shape[0], s.shape[1], 12)) + self.skip(x)


class _Untraceable(nn.Module):
    """Data-dependent control flow (fx cannot trace it), no Linear inside: a plain nn.Sequential holding
    it is read in order by convert()."""

    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_convert_gives_the_same_outputs(mode):
    torch.manual_seed(0)
    models = {
        "sequential": nn.Sequential(nn.Linear(8, 16), st.LIF(), nn.Dropout(0.25), nn.Linear(16, 10), st.IF(),
                                    nn.Flatten(2), nn.Linear(10, 4)),
        "custom": _Custom(),
        "untraceable": nn.Sequential(_Untraceable(), nn.Linear(8, 16), st.PLIF(), nn.Linear(16, 4)),
    }
    x = torch.rand(5, 3, 8) * 2
    for name, model in models.items():
        getattr(model, mode)()
        conv = st.convert(copy.deepcopy(model))
        torch.manual_seed(1)
        want = model(x)
        torch.manual_seed(1)
        got = conv(x)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=name)
        st.reset(model), st.reset(conv)
        kinds = [type(m).__name__ for m in conv.modules()]
        assert kinds.count("SpikeLinear") == {"sequential": 2, "custom": 1, "untraceable": 1}[name], name
    assert isinstance(conv[1], nn.Linear) and not isinstance(conv[1], st.SpikeLinear)


def test_convert_leaves_non_spike_linears_alone():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    st.convert(m)
    assert not any(isinstance(x, st.SpikeLinear) for x in m.modules())
    m2 = nn.Sequential(st.LIF(), nn.ReLU(), nn.Linear(4, 3))  # ReLU is not shape-only
    st.convert(m2)
    assert not isinstance(m2[2], st.SpikeLinear)
