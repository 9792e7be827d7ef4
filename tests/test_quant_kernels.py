"""Integer kernels for quantized inference, bit for bit against independent integer references
written plainly here (Python ints, one neuron at a time): the integer spike matmul (int8 weights,
packed spikes, int32 accumulation) and the integer family-B neuron (int28 saturation, floor leak)."""

from __future__ import annotations

import itertools

import pytest
import torch

from spiketriton.kernels import pack as PK
from spiketriton.kernels import spike_matmul as SM
from spiketriton.kernels.neuron_int import neuron_int_forward
from spiketriton.reference import pack as PR
from spiketriton.reference.neuron_int import int_neuron_reference
from spiketriton.spec import INT28_MAX, INT28_MIN, IntNeuronSpec

LO, HI = -(2**27), 2**27 - 1


def plain_neuron(u_seq, spec: IntNeuronSpec, v=None, a=0, ref=0):
    """One neuron, Python ints: the quantized family-B step of docs/spec/neurons.md, written out."""
    sat = lambda x: max(LO, min(HI, x))  # noqa: E731
    fl = lambda x, q: (x * q) // 256  # noqa: E731  floor division, also for negatives
    v = spec.v_init if v is None else v
    a = a if spec.adaptive else 0
    ref = ref if spec.refractory else 0
    out = []
    for u in u_seq:
        vth = max(sat(spec.v_th0 + a), spec.v_l)
        h = sat((u if ref == 0 else 0) + v)
        s = h > vth
        if not s:
            v2 = h
        elif spec.reset_mode == 0:
            v2 = spec.v_reset
        elif spec.reset_mode == 1:
            v2 = sat(h - vth)
        else:
            v2 = sat(h - spec.dv)
        v = max(sat(fl(v2, spec.alpha_q) + spec.beta_q), spec.v_l)
        if spec.adaptive:
            a = sat(fl(a, spec.v_th_alpha_q) + spec.v_th_beta_q + (spec.v_th_incre if s else 0))
        if spec.refractory:
            ref = spec.ref_len if s else max(ref - 1, 0)
        out.append(int(s))
    return out, v, a, ref


SPECS = {
    "hard": IntNeuronSpec(v_th0=1000, v_reset=-50, alpha_q=230, beta_q=3),
    "soft-floor": IntNeuronSpec(v_th0=1000, reset_mode=1, alpha_q=200, beta_q=-7, v_l=-800),
    "softconst-ref": IntNeuronSpec(v_th0=700, reset_mode=2, dv=900, ref_len=2, alpha_q=256),
    "adaptive": IntNeuronSpec(v_th0=600, v_th_alpha_q=180, v_th_beta_q=2, v_th_incre=300, alpha_q=250, v_l=-2000),
    "no-leak-all": IntNeuronSpec(v_th0=500, reset_mode=1, ref_len=1, v_th_incre=100, v_th_alpha_q=256, alpha_q=0, beta_q=11),
    # thresholds and constants at the int28 edges: saturation everywhere
    "saturating": IntNeuronSpec(v_th0=HI, v_reset=LO, alpha_q=256, beta_q=HI, v_th_incre=HI, v_th_alpha_q=255),
}


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("carry", [False, True], ids=["init", "carried"])
def test_integer_neuron_bit_exact(impl, name, carry, device):
    spec = SPECS[name]
    g = torch.Generator().manual_seed(len(name))
    T, B, L = 9, 3, 13
    scale = 2**26 if name == "saturating" else 1500
    u = torch.randint(-scale, scale, (T, B, L), generator=g, dtype=torch.int32)
    if name == "saturating":
        u[::2] = HI  # drive v to the positive bound
    v0 = torch.randint(-scale, scale, (B, L), generator=g, dtype=torch.int32) if carry else None
    a0 = torch.randint(0, 300, (B, L), generator=g, dtype=torch.int32) if carry else None
    r0 = torch.randint(0, 3, (B, L), generator=g, dtype=torch.int32) if carry else None
    if impl == "triton":
        s, bits, v, a, ref = neuron_int_forward(u.to(device), *(x.to(device) if x is not None else None for x in (v0, a0, r0)),
                                                spec, write_spikes=True, write_bits=True)
        assert torch.equal(PK.unpack(bits, L, torch.float32).cpu(), s.float().cpu())
    else:
        s, v, a, ref = int_neuron_reference(u, v0, a0, r0, spec)
    s, v, a, ref = s.cpu(), v.cpu(), a.cpu(), ref.cpu()
    for b, l in itertools.product(range(B), range(L)):
        want = plain_neuron(u[:, b, l].tolist(), spec,
                            v=int(v0[b, l]) if carry else None, a=int(a0[b, l]) if carry else 0,
                            ref=int(r0[b, l]) if carry else 0)
        got = (s[:, b, l].tolist(), int(v[b, l]), int(a[b, l]) if spec.adaptive else 0,
               int(ref[b, l]) if spec.refractory else 0)
        assert got == want, (b, l)
    if name == "saturating":
        assert int(v.max()) == HI  # the bound was reached


def test_floor_leak_rounds_down_for_negative_values(device):
    # floor(-3 * 200 / 256) = floor(-2.34) = -3, not -2 (truncation)
    spec = IntNeuronSpec(v_th0=10**6, alpha_q=200)
    _, v, _, _ = int_neuron_reference(torch.tensor([[-3]], dtype=torch.int32), None, None, None, spec)
    assert int(v) == -3
    _, _, v2, _, _ = neuron_int_forward(torch.tensor([[-3]], dtype=torch.int32, device=device), None, None, None, spec)
    assert int(v2) == -3


@pytest.mark.parametrize("bad", [dict(alpha_q=257), dict(alpha_q=-1), dict(v_th0=2**27), dict(v_l=-(2**27) - 1),
                                 dict(ref_len=-1), dict(v_th0=1.5), dict(reset_mode=3)])
def test_int_spec_validation(bad):
    with pytest.raises(ValueError, match="IntNeuronSpec"):
        IntNeuronSpec(**{"v_th0": 1, **bad})


@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (37, 29, 7), (130, 70, 1000)])
def test_integer_spike_matmul_exact(M, N, K, device):
    g = torch.Generator().manual_seed(K)
    s = (torch.rand(M, K, generator=g) < 0.5).to(device)
    w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8).to(device)
    w[0, :] = -128  # the most negative weights, selected by every spike
    b = torch.randint(INT28_MIN, INT28_MAX, (N,), generator=g, dtype=torch.int32).to(device)
    y = SM.spike_matmul_int(PK.pack(s), K, w, b)
    assert y.dtype == torch.int32
    sp, wp, bp = s.cpu().tolist(), w.cpu().tolist(), b.cpu().tolist()
    want = [[sum(wp[n][k] for k in range(K) if sp[m][k]) + bp[n] for n in range(N)] for m in range(M)]
    assert y.cpu().tolist() == want


@pytest.mark.parametrize("name", ["soft-floor", "softconst-ref", "adaptive", "saturating"])
@pytest.mark.parametrize("shape", [(5, 3, 16), (4, 2, 40), (5, 3, 13), (3, 1, 7)], ids=lambda s: "x".join(map(str, s)))
def test_integer_neuron_int32_extremes(name, shape, device):
    """The kernel computes in int32 (no 64-bit state): inputs over the whole int32 range and carried-in
    states outside int28 (which the reference takes as they are, in int64) give the reference's
    results bit for bit, on the flat (L multiple of 8) and the row layouts."""
    spec = SPECS[name]
    g = torch.Generator().manual_seed(sum(shape))
    T, S = shape[0], shape[1:]
    I32 = torch.iinfo(torch.int32)
    u = torch.randint(I32.min, I32.max, shape, generator=g, dtype=torch.int32)
    u[0, ..., 0], u[-1, ..., 0] = I32.max, I32.min
    v0 = torch.randint(I32.min, I32.max, S, generator=g, dtype=torch.int32)
    a0 = torch.randint(I32.min, I32.max, S, generator=g, dtype=torch.int32)
    r0 = torch.randint(-3, 3, S, generator=g, dtype=torch.int32)
    v0.view(-1)[:2] = torch.tensor([I32.max, I32.min])
    a0.view(-1)[:2] = torch.tensor([I32.max, I32.min])
    r0.view(-1)[0] = I32.min
    want = int_neuron_reference(u, v0, a0, r0, spec)
    s, bits, v, a, ref = neuron_int_forward(u.to(device), v0.to(device), a0.to(device), r0.to(device), spec,
                                            write_spikes=True, write_bits=True)
    assert torch.equal(s.cpu(), want.spikes)
    assert torch.equal(bits.cpu(), PR.pack_bits(want.spikes))
    assert torch.equal(v.cpu(), want.v)
    if spec.adaptive:
        assert torch.equal(a.cpu(), want.a)
    if spec.refractory:
        assert torch.equal(ref.cpu(), want.ref)
    assert want.spikes.any() and not want.spikes.all()
    # without packed bits the launch views every shape flat (odd L included)
    s2, bits2, v2, a2, ref2 = neuron_int_forward(u.to(device), v0.to(device), a0.to(device), r0.to(device), spec)
    assert bits2 is None and torch.equal(s2.cpu(), want.spikes) and torch.equal(v2.cpu(), want.v)
    assert torch.equal(a2, a) and torch.equal(ref2, ref)
