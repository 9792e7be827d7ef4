"""Surrogate gradients for the spike nonlinearity.

A spike is a Heaviside step of ``x = H - V_th``; its derivative is zero almost everywhere, so
training replaces it by the derivative of a smooth function. Each surrogate here carries an integer
``id`` and one float ``alpha`` so that the Triton kernels can select it with a constexpr and evaluate
the same closed form as ``Surrogate.derivative`` (the reference and test oracle).

Defaults follow SpikingJelly; ``Rect`` is the rectangular window of the HNN framework.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "Surrogate",
    "Sigmoid",
    "ATan",
    "PiecewiseQuadratic",
    "PiecewiseExp",
    "SoftSign",
    "SuperSpike",
    "Erf",
    "Rect",
    "heaviside",
]


class _Heaviside(torch.autograd.Function):
    """Forward: step (``x >= 0`` or, if strict, ``x > 0``). Backward: the surrogate derivative."""

    @staticmethod
    def forward(ctx, x, surrogate, strict):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype) if strict else (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.surrogate.derivative(x), None, None


class Surrogate:
    """Base class. Subclasses set ``id`` (kernel selector) and implement ``derivative``."""

    id: int = -1
    _param = "alpha"

    def __init__(self, alpha: float):
        # float() would take True as 1 and "2" as 2, and raise its own message for "x" or 1j
        given = alpha
        bad_type = isinstance(alpha, (bool, str, bytes, complex)) or (
            isinstance(alpha, torch.Tensor) and (alpha.numel() != 1 or alpha.is_complex() or alpha.dtype == torch.bool))
        try:
            alpha = float(alpha) if not bad_type else None
        except (TypeError, ValueError):
            alpha = None
        if alpha is None:
            raise TypeError(f"{type(self).__name__}: {self._param} must be a real number > 0, got {given!r}")
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"{type(self).__name__}: {self._param} must be a finite number > 0, got {alpha}")
        self.alpha = alpha

    def derivative(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivative_(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``derivative(x)`` computed in place in ``x`` (no temporaries; the CPU path uses it)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, strict: bool = False) -> torch.Tensor:
        """Spike of ``x`` (``x >= 0``; ``x > 0`` when ``strict``) with this surrogate's gradient."""
        return _Heaviside.apply(x, self, strict)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._param}={self.alpha})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.alpha == other.alpha

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.alpha))


class Sigmoid(Surrogate):
    """``a*s*(1-s)`` with ``s = sigmoid(a*x)``."""

    id = 0

    def __init__(self, alpha: float = 4.0):
        super().__init__(alpha)

    def derivative(self, x):
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1 - s)

    def derivative_(self, x):
        s = x.mul_(self.alpha).sigmoid_()
        return s.addcmul_(s, s, value=-1.0).mul_(self.alpha)

class ATan(Surrogate):
    """``(a/2) / (1 + (pi*a*x/2)^2)``."""

    id = 1

    def __init__(self, alpha: float = 2.0):
        super().__init__(alpha)

    def derivative(self, x):
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)

    def derivative_(self, x):
        return x.mul_(math.pi / 2 * self.alpha).square_().add_(1.0).reciprocal_().mul_(self.alpha / 2)

class PiecewiseQuadratic(Surrogate):
    """``a - a^2 |x|`` for ``|x| <= 1/a``, else 0."""

    id = 2

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha)

    def derivative(self, x):
        a = self.alpha
        return torch.where(x.abs() <= 1 / a, a - a * a * x.abs(), torch.zeros_like(x))

    def derivative_(self, x):
        a = self.alpha  # a - a^2|x| is >= 0 exactly where |x| <= 1/a
        return x.abs_().mul_(-a * a).add_(a).clamp_min_(0.0)

class PiecewiseExp(Surrogate):
    """``(a/2) exp(-a|x|)``."""

    id = 3

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha)

    def derivative(self, x):
        return (self.alpha / 2) * torch.exp(-self.alpha * x.abs())

    def derivative_(self, x):
        return x.abs_().mul_(-self.alpha).exp_().mul_(self.alpha / 2)

class SoftSign(Surrogate):
    """``1 / (2a (1/a + |x|)^2)``."""

    id = 4

    def __init__(self, alpha: float = 2.0):
        super().__init__(alpha)

    def derivative(self, x):
        return 1 / (2 * self.alpha * (1 / self.alpha + x.abs()) ** 2)

    def derivative_(self, x):
        return x.abs_().add_(1 / self.alpha).square_().mul_(2 * self.alpha).reciprocal_()

class SuperSpike(Surrogate):
    """``a / (|x| + 1)^2``."""

    id = 5

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha)

    def derivative(self, x):
        return self.alpha / (x.abs() + 1) ** 2

    def derivative_(self, x):
        return x.abs_().add_(1.0).square_().reciprocal_().mul_(self.alpha)

class Erf(Surrogate):
    """``(a/sqrt(pi)) exp(-(a x)^2)``."""

    id = 6

    def __init__(self, alpha: float = 2.0):
        super().__init__(alpha)

    def derivative(self, x):
        return (self.alpha / math.sqrt(math.pi)) * torch.exp(-((self.alpha * x) ** 2))

    def derivative_(self, x):
        return x.mul_(self.alpha).square_().neg_().exp_().mul_(self.alpha / math.sqrt(math.pi))

class Rect(Surrogate):
    """``1/w`` for ``|x| < w/2``, else 0 (the HNN rectangular window; ``alpha`` is the width)."""

    id = 7
    _param = "width"

    def __init__(self, width: float = 1.0):
        super().__init__(width)

    @property
    def width(self) -> float:
        return self.alpha

    def derivative(self, x):
        w = self.alpha
        return torch.where(x.abs() < w / 2, torch.full_like(x, 1 / w), torch.zeros_like(x))

    def derivative_(self, x):
        w = self.alpha  # -sign(|x| - w/2) is 1 inside the window, 0 on its edge and outside
        return x.abs_().sub_(w / 2).sign_().neg_().clamp_min_(0.0).mul_(1 / w)

ALL = (Sigmoid, ATan, PiecewiseQuadratic, PiecewiseExp, SoftSign, SuperSpike, Erf, Rect)


def heaviside(x: torch.Tensor, surrogate: Surrogate, strict: bool = False) -> torch.Tensor:
    """Functional spelling of ``surrogate(x, strict)``."""
    return surrogate(x, strict)


def check(surrogate) -> Surrogate:
    """Return ``surrogate`` if it is one of ours, else raise a TypeError naming the choices."""
    if not isinstance(surrogate, Surrogate) or type(surrogate) not in ALL:
        names = ", ".join(c.__name__ for c in ALL)
        raise TypeError(
            f"unknown surrogate {surrogate!r}: expected an instance of spiketriton.surrogate.{{{names}}}"
        )
    return surrogate
