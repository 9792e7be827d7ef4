"""Quantizer primitives: symmetric weight scales (per tensor / per channel, float / power of two with
the even-shift option), integer rounding, and straight-through fake-quant."""

from __future__ import annotations

import pytest
import torch

from spiketriton.quant import check_bits, fake_quant, floor_ste, qmax, quantize, round_ste, weight_scale


@pytest.mark.parametrize("bits", range(2, 9))
def test_qmax_and_range(bits):
    assert qmax(bits) == 2 ** (bits - 1) - 1
    w = torch.randn(7, 5)
    q = quantize(w, weight_scale(w, bits), bits)
    assert q.dtype == torch.int32
    assert q.abs().max() == qmax(bits)  # the largest |w| lands exactly on qmax
    assert q.min() >= -qmax(bits)


@pytest.mark.parametrize("bad", [1, 9, 0, 8.0, True, "8"])
def test_bits_outside_2_to_8(bad):
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        check_bits(bad)
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        weight_scale(torch.randn(3), bits=bad)


def test_per_channel_scales():
    w = torch.tensor([[0.5, -1.0], [0.01, 0.02], [0.0, 0.0]])
    s = weight_scale(w, 8, per_channel=True)
    assert s.shape == (3,)
    torch.testing.assert_close(s, torch.tensor([127.0, 127 / 0.02, 1.0]))
    q = quantize(w, s, 8)
    assert q.tolist() == [[64, -127], [64, 127], [0, 0]]  # 63.5 rounds half to even: 64
    # per-tensor: the small row collapses to 0 and 1
    assert quantize(w, weight_scale(w, 8), 8)[1].tolist() == [1, 3]


@pytest.mark.parametrize("even", [False, True])
def test_power_of_two_scale(even):
    torch.manual_seed(0)
    for amax in (0.3, 1.0, 3.7, 100.0, 2.0**-5):
        w = torch.randn(16, 8)
        w = w / w.abs().max() * amax
        s = weight_scale(w, 8, pow2=True, even_shift=even)
        e = torch.log2(s)
        assert torch.equal(e, torch.round(e))  # a power of two
        if even:
            assert int(e) % 2 == 0
        assert (w.abs() * s).max() <= 127  # never clips
        # the largest such power (or the largest even one)
        step = 4 if even else 2
        assert (w.abs() * s * step).max() > 127
    with pytest.raises(ValueError, match="even_shift constrains a power-of-two scale"):
        weight_scale(torch.randn(3), 8, even_shift=True)


def test_exact_power_of_two_boundary():
    w = torch.tensor([127.0 / 64])  # qmax / amax = 64 exactly
    assert weight_scale(w, 8, pow2=True).item() == 64.0


def test_fake_quant_values_and_straight_through_gradient():
    x = torch.tensor([0.1, 0.26, -0.74, 5.0, -9.0], requires_grad=True)
    s = torch.tensor(10.0)
    y = fake_quant(x, s, bits=4)  # qmax 7: representable values k/10, |k| <= 7
    torch.testing.assert_close(y, torch.tensor([0.1, 0.3, -0.7, 0.7, -0.7]))
    y.sum().backward()
    # zero where clamped; -7.4 rounds to -7, inside the range (PyTorch's fake_quantize convention)
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    # consistent with the integer quantizer
    torch.testing.assert_close(y.detach() * s, quantize(x.detach(), s, 4).float())


def test_fake_quant_per_channel_broadcast():
    w = torch.randn(4, 6)
    s = weight_scale(w, 8, per_channel=True)
    torch.testing.assert_close(fake_quant(w, s) * s[:, None], quantize(w, s).float())


def test_ste_round_and_floor():
    x = torch.tensor([-1.5, -0.2, 0.5, 2.7], requires_grad=True)
    assert floor_ste(x).tolist() == [-2.0, -1.0, 0.0, 2.0]
    assert round_ste(x).tolist() == [-2.0, -0.0, 0.0, 3.0]
    (floor_ste(x) + 2 * round_ste(x)).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0, 3.0, 3.0]


def test_nonfinite_weights():
    with pytest.raises(ValueError, match="inf or NaN"):
        weight_scale(torch.tensor([1.0, float("nan")]))
