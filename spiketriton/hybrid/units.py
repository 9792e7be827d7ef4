"""Hybrid Units (Zhao et al., Nat. Commun. 13, 2022): ``Y = Q(F(H(W(X))))`` between ANN and SNN parts.

- ``W`` (window): aligns time scales. ANN -> SNN repeats a value ``[B, ...]`` over T steps
  (``[T, B, ...]``); SNN -> ANN splits ``[T, B, ...]`` into windows ``[T_w, window, B, ...]``.
- ``H`` (temporal filter): a convolution over time, fixed (designed units) or learnable.
- ``F`` (nonlinearity): any elementwise function.
- ``Q`` (discretization): to spikes, with a straight-through or surrogate gradient (optional).

``HybridUnit(window=..., temporal_filter=..., nonlinearity=..., discretize=...)`` composes any of them;
the named units below are ready-made compositions. Every unit is differentiable end to end.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .. import surrogate as sg
from ..encoding import _check_values, _latency, _poisson, _rate, check_T, check_unit_interval, firing_rate
from ..functional._checks import check_backend, check_bool, check_generator, finite

__all__ = [
    "HybridUnit", "RepeatWindow", "SplitWindow", "TemporalFilter",
    "A2SRate", "A2SPoisson", "A2SLatency", "A2SLearnable",
    "S2AGlobalRate", "S2AWindowRate", "S2ALearnable",
]


# the checks every encoder shares: the hybrid A2S units are compositions of spiketriton.encoding
_check_T = check_T
_check_unit_interval = check_unit_interval


def _check_seq(x, name, min_dim=2):
    _check_values(x, name, min_dim)


def _check_device(param, x, name):
    if param.device != x.device:
        raise ValueError(f"{name}: its parameters are on {param.device} but the input is on {x.device}; move the "
                         f"module with .to()")


def _check_stage(stage, name, op):
    if stage is not None and not callable(stage):
        raise TypeError(f"{op}: {name} must be a module or callable (or None), got {type(stage).__name__}")
    return stage


# --------------------------------------------------------------------------------------------- #
# the four stages
# --------------------------------------------------------------------------------------------- #


class RepeatWindow(nn.Module):
    """W for ANN -> SNN: ``[B, ...]`` -> ``[T, B, ...]`` (the same value at every step)."""

    def __init__(self, T: int):
        super().__init__()
        self.T = _check_T(T, "RepeatWindow")

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"RepeatWindow: expected a tensor [B, ...], got {type(x).__name__}")
        return x.unsqueeze(0).expand((self.T,) + tuple(x.shape))


class SplitWindow(nn.Module):
    """W for SNN -> ANN: ``[T, B, ...]`` -> ``[T_w, window, B, ...]``, windows of ``window_size`` steps
    every ``stride`` steps (default: non-overlapping). T that the windows do not tile exactly is an
    error (no silent padding)."""

    def __init__(self, window_size: int, stride: Optional[int] = None):
        super().__init__()
        self.window_size = _check_T(window_size, "SplitWindow window_size")
        self.stride = _check_T(stride if stride is not None else window_size, "SplitWindow stride")

    def forward(self, x):
        _check_seq(x, "SplitWindow")
        T = x.shape[0]
        if T < self.window_size or (T - self.window_size) % self.stride:
            raise ValueError(f"SplitWindow: T = {T} is not tiled by windows of {self.window_size} steps every "
                             f"{self.stride}; choose T = window_size + k * stride")
        return x.unfold(0, self.window_size, self.stride).movedim(-1, 1)


class TemporalFilter(nn.Module):
    """H: a weighted sum over the window axis (dim 1 of ``[T_w, window, B, ...]``), i.e. a convolution
    over time with kernel = window and stride = the window's stride. ``learnable`` makes the kernel
    (and an optional bias) parameters; otherwise the kernel is fixed (default: the mean)."""

    def __init__(self, window_size: int, kernel: Optional[torch.Tensor] = None, learnable: bool = False,
                 bias: bool = False):
        super().__init__()
        window_size = _check_T(window_size, "TemporalFilter window_size")
        check_bool(learnable, "learnable", "TemporalFilter")
        check_bool(bias, "bias", "TemporalFilter")
        self.window_size = window_size
        if kernel is None:
            k = torch.full((window_size,), 1.0 / window_size)
        else:
            if isinstance(kernel, torch.Tensor):
                if kernel.is_complex() or kernel.dtype == torch.bool:
                    raise TypeError(f"TemporalFilter: kernel must hold real numbers, got {kernel.dtype}")
                k = kernel.detach().to("cpu", torch.float32)
            else:
                try:
                    k = torch.tensor([finite(w, "kernel", "TemporalFilter") for w in kernel], dtype=torch.float32)
                except TypeError:
                    raise TypeError(f"TemporalFilter: kernel must be a sequence of {window_size} real numbers or a "
                                    f"tensor, got {kernel!r}") from None
        if k.shape != (window_size,):
            raise ValueError(f"TemporalFilter: kernel must have shape ({window_size},), got {tuple(k.shape)}")
        if not bool(torch.isfinite(k).all()):
            raise ValueError(f"TemporalFilter: kernel must be finite, got {k.tolist()}")
        if learnable:
            self.kernel = nn.Parameter(k.clone())
            self.bias = nn.Parameter(torch.zeros(())) if bias else None
        else:
            self.register_buffer("kernel", k.clone())
            self.bias = None

    def forward(self, xw):
        # a learnable kernel that became inf/NaN in training is not checked here (it would cost a device
        # sync per call): it shows as NaN in the output, not as a plausible value
        _check_seq(xw, "TemporalFilter", min_dim=2)
        if xw.shape[1] != self.kernel.shape[0]:
            raise ValueError(f"TemporalFilter: expected windows [T_w, {self.kernel.shape[0]}, B, ...] (dim 1 is the "
                             f"window), got shape {tuple(xw.shape)}")
        _check_device(self.kernel, xw, "TemporalFilter")
        k = self.kernel.to(xw.dtype).reshape((1, -1) + (1,) * (xw.dim() - 2))
        y = (xw * k).sum(1)
        return y + self.bias if self.bias is not None else y


class _STEHeaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


# --------------------------------------------------------------------------------------------- #
# generic unit
# --------------------------------------------------------------------------------------------- #


class HybridUnit(nn.Module):
    """``Y = Q(F(H(W(X))))``: each stage a module/callable or None (identity)."""

    emits_spikes = False

    def __init__(self, window: Optional[Callable] = None, temporal_filter: Optional[Callable] = None,
                 nonlinearity: Optional[Callable] = None, discretize: Optional[Callable] = None):
        super().__init__()
        self.window = _check_stage(window, "window", "HybridUnit")
        self.temporal_filter = _check_stage(temporal_filter, "temporal_filter", "HybridUnit")
        self.nonlinearity = _check_stage(nonlinearity, "nonlinearity", "HybridUnit")
        self.discretize = _check_stage(discretize, "discretize", "HybridUnit")
        self.emits_spikes = discretize is not None

    def forward(self, x):
        for stage in (self.window, self.temporal_filter, self.nonlinearity, self.discretize):
            if stage is not None:
                x = stage(x)
        return x


# --------------------------------------------------------------------------------------------- #
# ANN -> SNN
# --------------------------------------------------------------------------------------------- #


class A2SRate(nn.Module):
    """Deterministic rate code: a value ``v`` in [0, 1] becomes ``floor(v T)`` evenly spread spikes over
    T steps: ``s[t] = floor(v (t+1)) - floor(v t)`` (an integrate-and-fire counter: 0.25 over T = 8 gives
    spikes at t = 3 and 7); a value within its dtype's rounding of a multiple of 1/T counts as that
    multiple. Gradient: straight-through, ``d s[t] / d v = 1``. Input ``[B, ...]``.
    The same code as :class:`spiketriton.encoding.RateEncoder`."""

    emits_spikes = True

    def __init__(self, T: int):
        super().__init__()
        self.T = _check_T(T, "A2SRate")

    def forward(self, v):
        return _rate(v, self.T, False, "A2SRate")


class A2SPoisson(nn.Module):
    """Poisson (Bernoulli per step) code: ``s[t] ~ Bernoulli(v)``; reproducible with a ``torch.Generator``
    (passed at construction or per call). Gradient: straight-through, ``d s[t] / d v = 1``.
    The same code as :class:`spiketriton.encoding.PoissonEncoder`."""

    emits_spikes = True

    def __init__(self, T: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.T = _check_T(T, "A2SPoisson")
        self.generator = check_generator(generator, "A2SPoisson")

    def forward(self, v, generator: Optional[torch.Generator] = None):
        return _poisson(v, self.T, generator if generator is not None else self.generator, False, "A2SPoisson")


class A2SLatency(nn.Module):
    """Time-to-first-spike: one spike at the first step t with ``v >= 1 - t / (T - 1)`` (v = 1 fires at
    t = 0, v = 0 at the last step). Gradient: the surrogate of each threshold crossing.
    :class:`spiketriton.encoding.LatencyEncoder` with ``mode="linear"``."""

    emits_spikes = True

    def __init__(self, T: int, surrogate: Optional[sg.Surrogate] = None):
        super().__init__()
        self.T = _check_T(T, "A2SLatency")
        self.surrogate = sg.check(surrogate or sg.Sigmoid(alpha=4.0 * max(T - 1, 1)))

    def forward(self, v):
        return _latency(v, self.T, "linear", self.surrogate, False, "A2SLatency")


class A2SLearnable(nn.Module):
    """A learnable temporal code: the current ``I[t] = w[t] v + b[t]`` (``w, b`` learnable, one per step)
    drives integrate-and-fire neurons (threshold 1, soft reset, surrogate gradient)."""

    emits_spikes = True

    def __init__(self, T: int, surrogate: Optional[sg.Surrogate] = None, backend: str = "auto"):
        super().__init__()
        self.T = _check_T(T, "A2SLearnable")
        self.backend = check_backend(backend, "A2SLearnable")
        self.weight = nn.Parameter(torch.ones(T))
        self.bias = nn.Parameter(torch.zeros(T))
        self.surrogate = sg.check(surrogate or sg.Sigmoid())

    def forward(self, v):
        _check_seq(v, "A2SLearnable", min_dim=1)
        _check_device(self.weight, v, "A2SLearnable")
        # rates in [0, 1] as for the other A2S units, and the learnable weight / bias finite (a NaN
        # weight would silently give no spikes at all): one read of the values, as the others pay
        _check_unit_interval(v, "A2SLearnable", ((self.weight, "weight"), (self.bias, "bias")))
        from ..functional.neuron import if_neuron

        shape = (-1,) + (1,) * v.dim()
        current = self.weight.to(v.dtype).reshape(shape) * v.unsqueeze(0) + self.bias.to(v.dtype).reshape(shape)
        return if_neuron(current, v_reset=None, surrogate=self.surrogate, backend=self.backend)[0]


# --------------------------------------------------------------------------------------------- #
# SNN -> ANN
# --------------------------------------------------------------------------------------------- #


class S2AGlobalRate(nn.Module):
    """Firing rate over all T: ``[T, B, ...]`` -> ``[B, ...]`` (:func:`spiketriton.encoding.firing_rate`)."""

    def forward(self, s):
        _check_seq(s, "S2AGlobalRate")
        return firing_rate(s)


class S2AWindowRate(HybridUnit):
    """Firing rate per window: ``[T, B, ...]`` -> ``[T_w, B, ...]`` with windows of ``window_size`` steps
    every ``stride`` (default: non-overlapping); T must be tiled exactly (else a clear error)."""

    def __init__(self, window_size: int, stride: Optional[int] = None):
        super().__init__(window=SplitWindow(window_size, stride), temporal_filter=TemporalFilter(window_size))


class S2ALearnable(HybridUnit):
    """A learnable temporal filter per window: ``[T, B, ...]`` -> ``[T_w, B, ...]`` (``[B, ...]`` when
    one window spans T). The kernel starts as the mean; ``nonlinearity`` is applied after it."""

    def __init__(self, T: int, window_size: Optional[int] = None, stride: Optional[int] = None,
                 nonlinearity: Optional[Callable] = None, bias: bool = True):
        T = _check_T(T, "S2ALearnable")
        w = T if window_size is None else _check_T(window_size, "S2ALearnable window_size")
        check_bool(bias, "bias", "S2ALearnable")
        st = w if stride is None else _check_T(stride, "S2ALearnable stride")
        if w > T or (T - w) % st:
            raise ValueError(f"S2ALearnable: T = {T} is not tiled by windows of {w} steps every {st}; choose "
                             f"T = window_size + k * stride")
        super().__init__(window=SplitWindow(w, stride), temporal_filter=TemporalFilter(w, learnable=True, bias=bias),
                         nonlinearity=nonlinearity)
        self.T = T
        self.single = w == T  # one window spans T: [B, ...] out

    def forward(self, s):
        _check_seq(s, "S2ALearnable")
        if s.shape[0] != self.T:
            raise ValueError(f"S2ALearnable: built for T = {self.T}, got a sequence of {s.shape[0]} steps")
        y = super().forward(s)
        return y[0] if self.single else y


