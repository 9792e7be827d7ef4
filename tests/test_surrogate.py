"""Each surrogate derivative against its closed form and against autograd of the smooth primitive
it is the derivative of; the in-place CPU variant against the out-of-place one."""

from __future__ import annotations

import math

import pytest
import torch

from spiketriton import surrogate as sg

X = torch.cat([torch.linspace(-3, 3, 601, dtype=torch.float64), torch.tensor([0.0, 0.25, -0.25], dtype=torch.float64)])

# smooth primitives g(x) with g' = the surrogate (SpikingJelly's definitions)
PRIMITIVES = {
    sg.Sigmoid: lambda x, a: torch.sigmoid(a * x),
    sg.ATan: lambda x, a: torch.atan(math.pi / 2 * a * x) / math.pi + 0.5,
    sg.PiecewiseExp: lambda x, a: torch.where(x < 0, 0.5 * torch.exp(a * x), 1 - 0.5 * torch.exp(-a * x)),
    sg.SoftSign: lambda x, a: 0.5 * (a * x / (1 + (a * x).abs()) + 1),
    sg.SuperSpike: lambda x, a: a * x / (1 + x.abs()),
    sg.Erf: lambda x, a: 0.5 * torch.erfc(-a * x),
}

CLOSED = {
    sg.Sigmoid: lambda x, a: a / (1 + math.exp(-a * x)) * (1 - 1 / (1 + math.exp(-a * x))),
    sg.ATan: lambda x, a: (a / 2) / (1 + (math.pi * a * x / 2) ** 2),
    sg.PiecewiseQuadratic: lambda x, a: a - a * a * abs(x) if abs(x) <= 1 / a else 0.0,
    sg.PiecewiseExp: lambda x, a: a / 2 * math.exp(-a * abs(x)),
    sg.SoftSign: lambda x, a: 1 / (2 * a * (1 / a + abs(x)) ** 2),
    sg.SuperSpike: lambda x, a: a / (abs(x) + 1) ** 2,
    sg.Erf: lambda x, a: a / math.sqrt(math.pi) * math.exp(-((a * x) ** 2)),
    sg.Rect: lambda x, w: 1 / w if abs(x) < w / 2 else 0.0,
}


@pytest.mark.parametrize("cls", sg.ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 4.0])
def test_closed_form(cls, alpha):
    s = cls(alpha)
    want = torch.tensor([CLOSED[cls](float(x), alpha) for x in X], dtype=torch.float64)
    torch.testing.assert_close(s.derivative(X), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.derivative_(X.clone()), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", list(PRIMITIVES), ids=lambda c: c.__name__)
@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_is_derivative_of_primitive(cls, alpha):
    x = X.clone().requires_grad_()
    PRIMITIVES[cls](x, alpha).sum().backward()
    torch.testing.assert_close(cls(alpha).derivative(X), x.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [sg.PiecewiseQuadratic, sg.Rect], ids=lambda c: c.__name__)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_compact_surrogates_have_unit_area(cls, alpha):
    # the two compactly supported surrogates (no smooth primitive above): area 1 on their support
    x = torch.linspace(-4, 4, 800001, dtype=torch.float64)
    assert torch.trapezoid(cls(alpha).derivative(x), x).item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("cls", sg.ALL, ids=lambda c: c.__name__)
def test_spike_function_forward_and_backward(cls):
    s = cls()
    x = torch.tensor([-0.5, 0.0, 0.5], requires_grad=True)
    y = s(x)
    assert y.tolist() == [0.0, 1.0, 1.0]
    assert s(x.detach(), strict=True).tolist() == [0.0, 0.0, 1.0]
    y.sum().backward()
    torch.testing.assert_close(x.grad, s.derivative(x.detach()))


def test_defaults_and_ids():
    assert [c.id for c in sg.ALL] == list(range(8))
    assert sg.Sigmoid().alpha == 4.0 and sg.ATan().alpha == 2.0 and sg.Rect().width == 1.0
    assert sg.Sigmoid(2.0) == sg.Sigmoid(2.0) and sg.Sigmoid(2.0) != sg.ATan(2.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_alpha(bad):
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        sg.Sigmoid(bad)
    with pytest.raises(ValueError, match="width must be"):
        sg.Rect(bad)
