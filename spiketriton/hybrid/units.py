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
from ..functional._checks import check_backend, check_bool, check_generator, finite

__all__ = [
    "HybridUnit", "RepeatWindow", "SplitWindow", "TemporalFilter",
    "A2SRate", "A2SPoisson", "A2SLatency", "A2SLearnable",
    "S2AGlobalRate", "S2AWindowRate", "S2ALearnable",
]


def _check_T(T, name):
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        raise ValueError(f"{name}: T (time steps) must be an integer > 0, got {T!r}")
    return T


def _check_seq(x, name, min_dim=2):
    """A floating tensor with at least ``min_dim`` dimensions; a sequence (``min_dim >= 2``, time first)
    also needs T >= 1 step (a batch may be empty)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < min_dim:
        raise ValueError(f"{name}: expected at least {min_dim} dimensions ([T, B, ...] time first), got {tuple(x.shape)}")
    if min_dim >= 2 and x.shape[0] == 0:
        raise ValueError(f"{name}: the sequence has T = 0 time steps (shape {tuple(x.shape)}); expected T >= 1")


def _check_unit_interval(x, name, params=()):
    """Rates and probabilities must be finite values in [0, 1]: a clear error rather than a clamp.
    ``params``: ``(tensor, name)`` pairs of learnable parameters that must be finite, checked in the
    same read (one device sync for everything on CUDA; a traced assert under torch.compile)."""
    x = x.detach()
    params = tuple((p.detach(), pname) for p, pname in params)
    if torch.compiler.is_compiling():
        # reading the values on the host would break the graph: a traced assert (a RuntimeError with
        # the message when the compiled code runs on the CPU; a device-side assert on CUDA)
        ok = torch.isfinite(x).all() & (x >= 0).all() & (x <= 1).all()
        for p, _ in params:
            ok = ok & torch.isfinite(p).all()
        torch._assert_async(ok, f"{name}: input has inf/NaN or values outside [0, 1], or a parameter is inf/NaN; "
                                f"a rate code needs finite values in [0, 1]")
        return
    if x.is_meta:  # no values to read
        return
    stats = [torch.isfinite(p).all() for p, _ in params]
    if x.numel():
        stats += [torch.isfinite(x).all(), x.min(), x.max()]
    if not stats:
        return
    vals = torch.stack([t.to(torch.float64) for t in stats]).tolist()  # one read of everything
    for (p, pname), ok in zip(params, vals):
        if not ok:
            raise ValueError(f"{name}: the learnable {pname} has inf or NaN (diverged in training?); expected "
                             f"finite values")
    if x.numel():
        fin, lo, hi = vals[len(params):]
        if not fin:
            raise ValueError(f"{name}: input has inf or NaN; expected finite values in [0, 1]")
        if lo < 0 or hi > 1:
            raise ValueError(f"{name}: input has values in [{lo:.4g}, {hi:.4g}]; a rate code needs [0, 1] "
                             f"(normalise it, or put a sigmoid / clamp in front)")


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
    multiple. Gradient: straight-through, ``d s[t] / d v = 1``. Input ``[B, ...]``."""

    emits_spikes = True

    def __init__(self, T: int):
        super().__init__()
        self.T = _check_T(T, "A2SRate")

    def forward(self, v):
        _check_seq(v, "A2SRate", min_dim=1)
        _check_unit_interval(v, "A2SRate")
        t = torch.arange(self.T + 1, dtype=torch.float64, device=v.device).reshape((-1,) + (1,) * v.dim())
        # a value within half a unit of its dtype's rounding of a multiple k/T is taken as k/T (float32 0.7
        # is 0.69999999, and 0.7 over T = 10 must give 7 spikes); then exact counts in float64
        v64 = v.detach().double()
        k = torch.round(v64 * self.T)
        snap = (v64 * self.T - k).abs() <= self.T * v64.abs() * torch.finfo(v.dtype).eps / 2 + 1e-9
        rate = torch.where(snap, k / self.T, v64)
        counts = torch.floor(rate * t + 1e-9)  # 1e-9: (k/T) * t in float64 may land a hair below an integer
        spikes = (counts[1:] - counts[:-1]).to(v.dtype)
        return spikes + (v - v.detach())  # value: the spikes; gradient: 1 per step


class A2SPoisson(nn.Module):
    """Poisson (Bernoulli per step) code: ``s[t] ~ Bernoulli(v)``; reproducible with a ``torch.Generator``
    (passed at construction or per call). Gradient: straight-through, ``d s[t] / d v = 1``."""

    emits_spikes = True

    def __init__(self, T: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.T = _check_T(T, "A2SPoisson")
        self.generator = check_generator(generator, "A2SPoisson")

    def forward(self, v, generator: Optional[torch.Generator] = None):
        _check_seq(v, "A2SPoisson", min_dim=1)
        check_generator(generator, "A2SPoisson")
        g = generator if generator is not None else self.generator
        if g is not None and g.device.type != v.device.type:
            raise ValueError(f"A2SPoisson: the generator is on {g.device} but the input is on {v.device}; "
                             f"use a torch.Generator(device={v.device.type!r})")
        _check_unit_interval(v, "A2SPoisson")
        # uniform draws in fp32 (fp64 for fp64 input): bf16/fp16 draws are too coarse near 0 (a 3x rate bias)
        dt = torch.float64 if v.dtype == torch.float64 else torch.float32
        u = torch.rand((self.T,) + tuple(v.shape), generator=g, device=v.device, dtype=dt)
        spikes = (u < v.detach().to(dt)).to(v.dtype)
        return spikes + (v - v.detach())


class A2SLatency(nn.Module):
    """Time-to-first-spike: one spike at the first step t with ``v >= 1 - t / (T - 1)`` (v = 1 fires at
    t = 0, v = 0 at the last step). Gradient: the surrogate of each threshold crossing."""

    emits_spikes = True

    def __init__(self, T: int, surrogate: Optional[sg.Surrogate] = None):
        super().__init__()
        self.T = _check_T(T, "A2SLatency")
        self.surrogate = sg.check(surrogate or sg.Sigmoid(alpha=4.0 * max(T - 1, 1)))

    def forward(self, v):
        _check_seq(v, "A2SLatency", min_dim=1)
        _check_unit_interval(v, "A2SLatency")
        T = self.T
        n = max(T - 1, 1)
        # values: the first t >= (1 - v)(T - 1), exactly in float64 (a value within one unit of its
        # dtype's rounding of a threshold counts as on it)
        v64 = v.detach().double()
        first = torch.ceil((1 - v64) * n - n * v64.abs() * torch.finfo(v.dtype).eps).clamp(0, T - 1).long()
        exact = torch.nn.functional.one_hot(first, T).movedim(-1, 0).to(v.dtype)
        # gradient: the surrogate of each threshold crossing (the last threshold, 0, is always crossed)
        thr = (1 - torch.arange(T, dtype=torch.float64, device=v.device) / n).to(v.dtype)
        thr = thr.reshape((-1,) + (1,) * v.dim())
        crossed = self.surrogate(v.unsqueeze(0) - thr)
        crossed = torch.cat([crossed[:-1], torch.ones_like(crossed[-1:])])
        soft = crossed - torch.cat([torch.zeros_like(crossed[:1]), crossed[:-1]])
        return exact + (soft - soft.detach())                    # exactly one spike, at the first crossing


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
    """Firing rate over all T: ``[T, B, ...]`` -> ``[B, ...]``."""

    def forward(self, s):
        _check_seq(s, "S2AGlobalRate")
        return s.mean(0)


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


