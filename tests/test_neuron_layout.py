"""The neuron kernels' launch layouts (kernels/neuron.py ``_plan`` / ``_tiles``): the flat view of
``[T, R, L]`` as ``[T, 1, R * L]`` when L is a multiple of 8, row tiles otherwise (L = 4 or 2 mod 8 and
odd L), R = 1, unaligned inputs, the smallest tiles of the grid rule and a 1-D grid over rows and
column tiles. Inputs are exact binary fractions (x in 1/8 steps, decays of 1/2, thresholds and
increments that are short binary fractions, the Rect surrogate), so the fp32 kernels and the float64
reference (spiketriton/reference) agree exactly and every output is compared bit for bit: spikes,
the packed bits against the reference packing of the reference spikes, final states, saved tensors
and the input/state gradients. Parameter gradients are sums over neurons whose grouping follows the
tiles: compared to a tolerance."""

from __future__ import annotations

import math

import pytest
import torch

from spiketriton import surrogate as sg
from spiketriton.kernels import neuron as KN
from spiketriton.kernels import neuron_torch as KNT
from spiketriton.reference import neuron_reference
from spiketriton.reference import pack as PR
from spiketriton.spec import FAMILY_A, FAMILY_B, NeuronSpec

# Gradients stay exact in fp32 when every factor along the chain is a short binary fraction: detached hard
# resets (no (v_reset - H) factor, whose bits grow every step) and soft resets by a constant threshold.
LIF = NeuronSpec(family=FAMILY_A, surrogate=sg.Rect(1.0), v_threshold=1.0, v_reset=0.0, reset_mode=0,
                 detach_reset=True, decay_input=True, v_init=0.0)
LIF_SOFT = NeuronSpec(family=FAMILY_A, surrogate=sg.Rect(2.0), v_threshold=1.0, v_reset=0.0, reset_mode=1,
                      decay_input=False, v_init=0.0)
# ExtendedLIF with every option: adaptive threshold, refractory period, floor
EXT = NeuronSpec(family=FAMILY_B, surrogate=sg.Rect(1.0), v_threshold=0.5, v_reset=0.0, reset_mode=0, v_init=0.0,
                 detach_reset=True, v_l=-0.5, ref_len=2, v_th_alpha=0.5, v_th_beta=0.125, v_th_incre=0.25)
# soft reset by the adaptive threshold: exact forward; the gradient multiplies by thresholds of growing
# length, so it is compared to a tolerance
EXT_SOFT = NeuronSpec(family=FAMILY_B, surrogate=sg.Rect(1.0), v_threshold=0.5, v_reset=0.0, reset_mode=1,
                      v_init=0.0, v_l=-0.5, ref_len=1, v_th_alpha=0.5, v_th_beta=0.125, v_th_incre=0.25)
SPECS = {"lif": (LIF, [0.5]), "lif_soft": (LIF_SOFT, [0.5]), "ext": (EXT, [0.5, 0.125]),
         "ext_soft": (EXT_SOFT, [0.5, 0.125])}

# [T, *S] -> the view _plan gives launches with packed bits (training, the packed output); the inference
# that writes float spikes only views every shape flat (compared with the training run's spikes below)
SHAPES = [
    (5, 3, 16),        # flat, R * L = 48
    (4, 2, 3, 40),     # flat: L = 40 is a multiple of 8, not of 16 (the L = 1000 case)
    (3, 5, 24),        # flat, R * L = 120 is not a multiple of the tile: a masked tail
    (4, 3, 12),        # rows, L = 4 mod 8: 128-bit fp32, 64-bit bf16
    (4, 3, 14),        # rows, L = 6 mod 8: 64-bit fp32
    (4, 5, 13),        # rows, odd L: scalar (inference: flat, R * L = 65 odd, scalar)
    (3, 1, 21),        # R = 1, odd L
    (6, 2, 2, 7),      # rows, L < 8 (inference: flat, R * L = 28)
]


def _exact_inputs(shape, dtype, seed, device, unaligned=False):
    """Everything on ``device``; x and the spike gradient in ``dtype``, states fp32."""
    g = torch.Generator().manual_seed(seed)
    T, S = shape[0], shape[1:]
    x = (torch.randint(-6, 14, shape, generator=g) / 8).to(dtype).to(device)
    if unaligned:  # same values, data pointer 1 element past a 16-byte boundary
        buf = torch.empty(x.numel() + 1, dtype=dtype, device=device)
        buf[1:].copy_(x.flatten())
        x = buf[1:].view(shape)
        assert x.data_ptr() % 16 != 0
    v0 = torch.randint(-4, 8, S, generator=g) / 8
    a0 = torch.randint(0, 4, S, generator=g) / 8
    r0 = torch.randint(0, 3, S, generator=g, dtype=torch.int32)
    gs = (torch.randint(-4, 5, shape, generator=g) / 4).to(dtype)
    gv = torch.randint(-4, 5, S, generator=g) / 4
    ga = torch.randint(-4, 5, S, generator=g) / 4
    return x, *(t.to(device) for t in (v0, a0, r0, gs, gv, ga))


def _reference(spec, params, x, v0, a0, r0, gs, gv, ga):
    xr = x.double().requires_grad_()
    vr = v0.double().requires_grad_()
    ar = a0.double().requires_grad_()
    pr = torch.tensor(params, dtype=torch.float64, device=x.device, requires_grad=True)
    tr = neuron_reference(xr, vr, ar if spec.adaptive else None, r0 if spec.refractory else None, pr, spec)
    outs, grads = [tr.spikes, tr.v], [gs.double(), gv.double()]
    if spec.adaptive:
        outs.append(tr.a), grads.append(ga.double())
    torch.autograd.backward(outs, grads)
    return tr, xr.grad, vr.grad, (ar.grad if spec.adaptive else None), pr.grad


def _run(spec, params, x, v0, a0, r0, gs, gv, ga):
    """Forward with everything saved, inference, packed-only inference and backward, via the launchers."""
    p = torch.tensor(params, dtype=torch.float32, device=x.device)
    a0 = a0 if spec.adaptive else None
    r0 = r0 if spec.refractory else None
    spikes, v, a, ref, saved = KN.neuron_forward(x, v0, a0, r0, p, spec, store=True)
    inf = KN.neuron_forward(x, v0, a0, r0, p, spec, store=False)
    packed = KN.neuron_forward(x, v0, a0, r0, p, spec, store=False, write_spikes=False)
    T, S = x.shape[0], x.shape[1:]
    R = math.prod(S[:-1])
    trl = tuple(t.view(T, R, t.shape[-1]) if t is not None else None for t in saved)
    grads = KN.neuron_backward(gs, gv, ga if spec.adaptive else None, trl, v0, p, spec,
                               need_v0=True, need_a0=spec.adaptive, need_params=True)
    return (spikes, v, a, ref, saved), inf, packed, grads


def _bits_of(b, shape):
    return b.view(tuple(shape[:-1]) + ((shape[-1] + 7) // 8,))


def _check_exact(spec, params, shape, dtype, out, ref, inputs):
    (spikes, v, a, ref_last, saved), inf, packed, (gx, gv0, ga0, gp) = out
    tr, gx_r, gv_r, ga_r, gp_r = ref
    h, bits, vth, gate, floor = saved
    assert torch.equal(spikes.double(), tr.spikes.detach())
    assert torch.equal(v.double(), tr.v.detach())
    want_bits = PR.pack_bits(tr.spikes.detach())
    assert torch.equal(_bits_of(bits, shape), want_bits)
    assert torch.equal(packed[4][1].view_as(want_bits), want_bits)  # the public layout handed to SpikeLinear
    assert packed[0] is None and torch.equal(packed[1], v)
    assert torch.equal(inf[0], spikes) and torch.equal(inf[1], v)
    if spec.adaptive:
        assert torch.equal(a.double(), tr.a.detach())
        assert torch.equal(vth.view(shape).double(), tr.vth.detach())  # v_l < every raw threshold here
    if spec.refractory:
        assert torch.equal(ref_last, tr.ref)
    # the refractory gate and the floor decision are not in the reference trace: the PyTorch path's
    # (kernels/neuron_torch.py, the same arithmetic, exact here) packed with the reference packing
    p = torch.tensor(params, device=inputs[0].device)
    _, _, _, _, (_, _, _, gate_t, floor_t) = KNT.neuron_forward(*inputs, p, spec, store=True)
    if spec.refractory:
        assert torch.equal(_bits_of(gate, shape), gate_t)
    if spec.has_floor:
        assert torch.equal(_bits_of(floor, shape), floor_t)
    if dtype == torch.float32:
        assert torch.equal(h.view(shape).double(), tr.h.detach())
        exact = spec.detach_reset or spec.reset_mode == 1 and spec.family == FAMILY_A
        close = torch.equal if exact else lambda a, b: torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7) is None
        assert close(gx.double(), gx_r)
        assert close(gv0.double(), gv_r)
        if spec.adaptive:
            assert close(ga0.double(), ga_r)
        torch.testing.assert_close(gp.double(), gp_r, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_layout_bit_exact(name, dtype, shape, device):
    spec, params = SPECS[name]
    x, v0, a0, r0, gs, gv, ga = _exact_inputs(shape, dtype, sum(shape), device)
    out = _run(spec, params, x, v0, a0, r0, gs, gv, ga)
    inputs = (x, v0, a0 if spec.adaptive else None, r0 if spec.refractory else None)
    _check_exact(spec, params, shape, dtype, out, _reference(spec, params, x, v0, a0, r0, gs, gv, ga), inputs)


@pytest.mark.parametrize("name", ["lif", "ext"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(4, 3, 16), (3, 5, 13), (4, 2, 12)], ids=lambda s: "x".join(map(str, s)))
def test_unaligned_input_and_gradient(name, dtype, shape, device):
    """x and the spike gradient one element past a 16-byte boundary (their accesses narrow, the rest
    do not): every output equal to the aligned run, bit for bit."""
    spec, params = SPECS[name]
    x, v0, a0, r0, gs, gv, ga = _exact_inputs(shape, dtype, 3, device, unaligned=True)
    gs_u = torch.empty(gs.numel() + 1, dtype=dtype, device=device)[1:].view(shape)
    gs_u.copy_(gs)
    got = _run(spec, params, x, v0, a0, r0, gs_u, gv, ga)
    want = _run(spec, params, x.contiguous().clone(), v0, a0, r0, gs, gv, ga)
    for g, w in zip(_flatten(got), _flatten(want)):
        assert (g is None and w is None) or torch.equal(g, w)


def _flatten(out):
    (spikes, v, a, ref, saved), inf, packed, grads = out
    return [spikes, v, a, ref, *saved, *inf[:4], packed[1], packed[4][1], *grads]


@pytest.mark.parametrize("name", ["lif", "ext"])
@pytest.mark.parametrize("shape", [(3, 7, 40), (3, 9, 13), (3, 5, 37), (2, 3, 5, 12)],
                         ids=lambda s: "x".join(map(str, s)))
def test_smallest_tiles_many_programs(name, shape, monkeypatch, device):
    """The grid rule at its floor (one warp, one vector per thread) and a 1-D grid of many row and column
    tiles: the interpreter normally gets whole-layer tiles (one 'SM'); here it gets a GPU's worth."""
    spec, params = SPECS[name]
    x, v0, a0, r0, gs, gv, ga = _exact_inputs(shape, torch.float32, 5, device)
    want = _run(spec, params, x, v0, a0, r0, gs, gv, ga)
    monkeypatch.setattr(KN, "_sm_count", lambda device: 10**6)
    monkeypatch.setattr(KN, "_BLOCK", 32)  # below the floor: clamped to 32 x E
    got = _run(spec, params, x, v0, a0, r0, gs, gv, ga)
    flat_g, flat_w = _flatten(got), _flatten(want)
    for g, w in zip(flat_g[:-1], flat_w[:-1]):
        assert (g is None and w is None) or torch.equal(g, w)
    torch.testing.assert_close(flat_g[-1], flat_w[-1], rtol=1e-6, atol=1e-6)  # parameter sums regroup


@pytest.mark.parametrize("R,L,dtype,packed,view,l_mult,E", [
    (64, 65536, torch.float32, True, (1, 64 * 65536), 16, 4),
    (16, 16384, torch.bfloat16, True, (1, 16 * 16384), 16, 8),
    (64, 1000, torch.float32, True, (1, 64000), 16, 4),     # L = 1000: 128-bit through the flat view
    (64, 1000, torch.bfloat16, True, (1, 64000), 16, 8),
    (64, 1001, torch.float32, True, (64, 1001), 1, 1),      # odd L with bits: scalar rows (whole bytes per row)
    (64, 1001, torch.float32, False, (1, 64064), 16, 4),    # ... without bits (inference): flat, 128-bit
    (64, 1001, torch.bfloat16, False, (1, 64064), 16, 8),
    (5, 1001, torch.float32, False, (1, 5005), 1, 1),       # R * L odd: the step alignment drifts, scalar
    (2, 1001, torch.bfloat16, False, (1, 2002), 2, 2),
    (64, 1004, torch.float32, True, (64, 1004), 4, 4),      # L = 4 mod 8: 128-bit fp32 rows
    (64, 1004, torch.bfloat16, True, (64, 1004), 4, 4),     # ... 64-bit bf16 rows
    (64, 1002, torch.float32, True, (64, 1002), 2, 2),      # L = 2 mod 8: 64-bit fp32 rows
    (1, 1001, torch.float32, True, (1, 1001), 1, 1),
    (1, 8, torch.int32, True, (1, 8), 8, 4),
])
def test_plan_table(R, L, dtype, packed, view, l_mult, E):
    assert KN._plan(R, L, KN._vec(dtype), packed) == (*view, l_mult, E)


@pytest.mark.parametrize("shape,dtype,want", [
    # (block_r, block_l, programs, num_warps) on a 132-SM GPU
    ((64, 65536), torch.float32, (1, 1024, 4096, 4)),    # 31 programs per SM: the full tile
    ((64, 65536), torch.bfloat16, (1, 1024, 4096, 4)),
    ((16, 16384), torch.float32, (1, 256, 1024, 2)),     # Open Neuromorphic: 7.8 per SM, not 1.9
    ((16, 16384), torch.bfloat16, (1, 256, 1024, 1)),
    ((64, 1001), torch.float32, (1, 64, 1024, 2)),       # odd L, scalar: 32 per warp
])
def test_grid_rule_at_the_benchmark_shapes(shape, dtype, want, monkeypatch):
    monkeypatch.setattr(KN, "_sm_count", lambda device: 132)
    Rk, Lk, _, E = KN._plan(*shape, KN._vec(dtype))
    got = KN._tiles(Rk, Lk, E, torch.device("cpu"))
    assert got == want
    assert got[2] >= 4 * 132
