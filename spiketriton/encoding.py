"""Encoders (values to spike trains) and decoders (spike trains or membrane traces to values).

Shapes follow the rest of the package: a spike train is time first, ``[T, B, *features]``.

Encoders take values ``x [B, *features]`` (the delta encoder takes a sequence ``[T, B, *features]``)
and return ``[T, B, *features]`` spikes in ``x``'s dtype, or a packed :class:`~spiketriton.SpikeTensor`
with ``packed=True`` (what :class:`~spiketriton.SpikeLinear` reads fastest):

- ``PoissonEncoder``: ``s[t] ~ Bernoulli(x)``, independent per step and element; gradient to ``x``:
  straight-through (1).
- ``RateEncoder``: ``floor(x T)`` spikes spread evenly (a counter, no noise); straight-through (1).
- ``LatencyEncoder``: one spike at the first step whose threshold ``x`` reaches (``"linear"``: thresholds
  ``1 - t/(T-1)``; ``"log"``: ``(e^(T-1-t) - 1) / (e^(T-1) - 1)``, finer for small ``x``); gradient: a
  surrogate of each threshold crossing.
- ``DirectEncoder``: no spikes, the value repeated as a constant current; gradient: identity (summed).
- ``DeltaEncoder``: a spike when the input moved by ``threshold`` since the last spike of that element
  (send-on-delta); ``on_off=True`` adds the falling edges as a second block of features; no gradient.

The rate-type encoders (Poisson, rate, latency) read ``x`` as a probability or intensity and refuse
values outside [0, 1] and NaN with a clear error (one device sync per call, as for every check of
values). Random encoders are reproducible with a ``torch.Generator``.

Decoders reduce the time dimension: ``spike_count``, ``firing_rate``, ``first_spike_time``,
``time_softmax`` read spikes (a tensor or a SpikeTensor); ``final_voltage`` and ``max_voltage`` read a
membrane trace ``[T, B, ...]``. Each has a module twin for ``nn.Sequential``.

>>> import torch, spiketriton as st
>>> x = torch.tensor([[0.0, 0.25, 1.0]])
>>> st.encoding.RateEncoder(T=8)(x).sum(0)
tensor([[0., 2., 8.]])
>>> st.encoding.first_spike_time(st.encoding.LatencyEncoder(T=5)(x))
tensor([[4, 3, 0]])
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from . import surrogate as sg
from .functional._checks import check_bool, check_generator
from .functional.spikes import SpikeTensor, pack_spikes

__all__ = [
    "PoissonEncoder", "RateEncoder", "LatencyEncoder", "DirectEncoder", "DeltaEncoder",
    "poisson", "rate", "latency", "direct", "delta",
    "spike_count", "firing_rate", "first_spike_time", "final_voltage", "max_voltage", "time_softmax",
    "SpikeCount", "FiringRate", "FirstSpikeTime", "FinalVoltage", "MaxVoltage", "TimeSoftmax",
    "check_T", "check_unit_interval",
]

LATENCY_MODES = ("linear", "log")


# --------------------------------------------------------------------------------------------- #
# argument checks (shared with the hybrid units)
# --------------------------------------------------------------------------------------------- #


def check_T(T, name: str) -> int:
    """``T`` as a Python int > 0, else ``ValueError`` naming ``name``."""
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        raise ValueError(f"{name}: T (time steps) must be an integer > 0, got {T!r}")
    return T


def _check_values(x, name: str, min_dim: int = 1) -> None:
    """A floating tensor with at least ``min_dim`` dimensions; a sequence (``min_dim >= 2``, time first)
    also needs T >= 1 step (a batch may be empty)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name}: expected a floating tensor, got {got}")
    if x.dim() < min_dim:
        what = "[B, ...]" if min_dim == 1 else "[T, B, ...] time first"
        raise ValueError(f"{name}: expected at least {min_dim} dimensions ({what}), got {tuple(x.shape)}")
    if min_dim >= 2 and x.shape[0] == 0:
        raise ValueError(f"{name}: the sequence has T = 0 time steps (shape {tuple(x.shape)}); expected T >= 1")


def check_unit_interval(x: torch.Tensor, name: str, params=()) -> None:
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


def _generator_for(g, device, name: str):
    check_generator(g, name)
    if g is not None and g.device.type != torch.device(device).type:
        raise ValueError(f"{name}: the generator is on {g.device} but the input is on {device}; "
                         f"use a torch.Generator(device={torch.device(device).type!r})")
    return g


def _emit(spikes: torch.Tensor, packed: bool):
    """Spikes as they are, or packed (the float spikes stay the anchor of the gradient)."""
    return pack_spikes(spikes, check=False) if packed else spikes


def _straight_through(spikes: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Values: the spikes; gradient: 1 to ``x`` from every step (an exact 0 is added in the forward)."""
    return spikes + (x - x.detach()) if x.requires_grad else spikes


# --------------------------------------------------------------------------------------------- #
# encoders: functions
# --------------------------------------------------------------------------------------------- #


def poisson(x: torch.Tensor, T: int, generator: Optional[torch.Generator] = None, packed: bool = False):
    """``s[t] ~ Bernoulli(x)`` for ``x`` in [0, 1], ``[B, ...] -> [T, B, ...]``; gradient straight-through."""
    return _poisson(x, T, generator, packed, "poisson")


def _poisson(x, T, generator, packed, who):
    T = check_T(T, who)
    _check_values(x, who)
    check_bool(packed, "packed", who)
    g = _generator_for(generator, x.device, who)
    check_unit_interval(x, who)
    # uniform draws in fp32 (fp64 for fp64 input): bf16/fp16 draws are too coarse near 0 (a 3x rate bias)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    u = torch.rand((T,) + tuple(x.shape), generator=g, device=x.device, dtype=dt)
    spikes = (u < x.detach().to(dt)).to(x.dtype)
    return _emit(_straight_through(spikes, x), packed)


def rate(x: torch.Tensor, T: int, packed: bool = False):
    """Deterministic rate code: ``floor(x T)`` spikes spread evenly over T steps,
    ``s[t] = floor(x (t+1)) - floor(x t)`` (0.25 over T = 8 fires at t = 3 and 7); a value within its
    dtype's rounding of a multiple of 1/T counts as that multiple. Gradient: straight-through."""
    return _rate(x, T, packed, "rate")


def _rate(x, T, packed, who):
    T = check_T(T, who)
    _check_values(x, who)
    check_bool(packed, "packed", who)
    check_unit_interval(x, who)
    t = torch.arange(T + 1, dtype=torch.float64, device=x.device).reshape((-1,) + (1,) * x.dim())
    # a value within half a unit of its dtype's rounding of a multiple k/T is taken as k/T (float32 0.7
    # is 0.69999999, and 0.7 over T = 10 must give 7 spikes); then exact counts in float64
    x64 = x.detach().double()
    k = torch.round(x64 * T)
    snap = (x64 * T - k).abs() <= T * x64.abs() * torch.finfo(x.dtype).eps / 2 + 1e-9
    r = torch.where(snap, k / T, x64)
    counts = torch.floor(r * t + 1e-9)  # 1e-9: (k/T) * t in float64 may land a hair below an integer
    spikes = (counts[1:] - counts[:-1]).to(x.dtype)
    return _emit(_straight_through(spikes, x), packed)


def _check_mode(mode, who):
    if not isinstance(mode, str) or mode not in LATENCY_MODES:
        raise ValueError(f"{who}: mode must be one of {LATENCY_MODES}, got {mode!r}")
    return mode


def latency_thresholds(T: int, mode: str = "linear", dtype=torch.float64, device=None) -> torch.Tensor:
    """The decreasing thresholds ``thr[t]`` (``thr[0] = 1``, ``thr[T-1] = 0``) of the latency code: a value
    fires at the first ``t`` with ``x >= thr[t]``."""
    T = check_T(T, "latency_thresholds")
    _check_mode(mode, "latency_thresholds")
    t = torch.arange(T, dtype=torch.float64, device=device)
    n = max(T - 1, 1)
    if mode == "linear":
        thr = 1 - t / n
    else:
        # (e^(n-t) - 1) / (e^n - 1) = e^-t (1 - e^-(n-t)) / (1 - e^-n): no overflow for any T
        thr = torch.exp(-t) * (-torch.expm1(-(n - t))) / (-math.expm1(-n))
        # past t ~ 745 the thresholds underflow to 0: keep them above 0 so that only x = 0 waits for the last step
        thr = torch.cat([thr[:-1].clamp_min(torch.finfo(torch.float64).tiny), thr[-1:]])
    if T == 1:
        thr = torch.zeros(1, dtype=torch.float64, device=device)  # one step: everything fires at t = 0
    return thr.to(dtype)


def _default_latency_surrogate(T: int) -> sg.Surrogate:
    return sg.Sigmoid(alpha=4.0 * max(T - 1, 1))


def latency(x: torch.Tensor, T: int, mode: str = "linear", surrogate: Optional[sg.Surrogate] = None,
            packed: bool = False):
    """Time-to-first-spike: one spike per element, at the first step ``t`` with ``x >= thr[t]``
    (``latency_thresholds``): ``x = 1`` fires at t = 0, ``x = 0`` at the last step. A value within one
    unit of its dtype's rounding of a threshold counts as on it. Gradient: the surrogate derivative of
    each threshold crossing (default ``Sigmoid(alpha = 4 (T - 1))``)."""
    return _latency(x, T, mode, surrogate, packed, "latency")


def _latency(x, T, mode, surrogate, packed, who):
    T = check_T(T, who)
    _check_values(x, who)
    check_bool(packed, "packed", who)
    _check_mode(mode, who)
    surrogate = sg.check(surrogate or _default_latency_surrogate(T))
    check_unit_interval(x, who)
    thr = latency_thresholds(T, mode, device=x.device)
    # values, exactly in float64: the first crossing is T minus the number of thresholds <= x (+ tolerance)
    x64 = x.detach().double()
    reach = x64 + x64.abs() * torch.finfo(x.dtype).eps
    first = T - torch.searchsorted(thr.flip(0).contiguous(), reach.reshape(-1), right=True).reshape(x.shape)
    first = first.clamp(0, T - 1)
    spikes = torch.nn.functional.one_hot(first, T).movedim(-1, 0).to(x.dtype)
    if x.requires_grad:
        # gradient: the surrogate of each threshold crossing (the last threshold, 0, is always crossed)
        crossed = surrogate(x.unsqueeze(0) - thr.to(x.dtype).reshape((-1,) + (1,) * x.dim()))
        crossed = torch.cat([crossed[:-1], torch.ones_like(crossed[-1:])])
        soft = crossed - torch.cat([torch.zeros_like(crossed[:1]), crossed[:-1]])
        spikes = spikes + (soft - soft.detach())
    return _emit(spikes, packed)


def direct(x: torch.Tensor, T: int) -> torch.Tensor:
    """Direct (constant-current) coding: ``x`` repeated over T steps, ``[B, ...] -> [T, B, ...]``; the
    first spiking layer turns it into spikes. A view (``expand``): no copy."""
    T = check_T(T, "direct")
    _check_values(x, "direct")
    return x.unsqueeze(0).expand((T,) + tuple(x.shape))


def delta(x_seq: torch.Tensor, threshold: float, on_off: bool = False, packed: bool = False):
    """Send-on-delta coding of a sequence ``[T, B, F, ...]``: an element spikes at step t when it has risen
    by at least ``threshold`` since its last spike (its reference starts at ``x[0]``, so t = 0 never
    spikes), and its reference moves to ``x[t]``. With ``on_off=True`` a fall by ``threshold`` spikes too,
    in a second block of features: ``[T, B, 2F, ...]`` with rises in ``[:, :, :F]`` and falls in
    ``[:, :, F:]`` (polarity channels, as an event camera's). No gradient. Reads the values once to
    refuse inf/NaN (one device sync)."""
    who = "delta"
    _check_values(x_seq, who, min_dim=2)
    check_bool(on_off, "on_off", who)
    check_bool(packed, "packed", who)
    threshold = _positive_float(threshold, "delta: threshold")
    if on_off and x_seq.dim() < 3:
        raise ValueError(f"delta: on_off=True needs a feature dimension [T, B, F, ...], got shape {tuple(x_seq.shape)}")
    x = x_seq.detach()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("delta: input has inf or NaN; expected finite values")
    ref = x[0].clone()
    on = torch.zeros_like(x)
    off = torch.zeros_like(x) if on_off else None
    for t in range(1, x.shape[0]):
        d = x[t] - ref
        up = d >= threshold
        fired = up
        on[t] = up.to(x.dtype)
        if on_off:
            down = d <= -threshold
            off[t] = down.to(x.dtype)
            fired = up | down
        ref = torch.where(fired, x[t], ref)
    spikes = torch.cat([on, off], dim=2) if on_off else on
    return _emit(spikes, packed)


def _positive_float(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{what} must be a number > 0, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {v}")
    return v


# --------------------------------------------------------------------------------------------- #
# encoders: modules
# --------------------------------------------------------------------------------------------- #


class PoissonEncoder(nn.Module):
    """:func:`poisson` as a module; ``generator`` at construction or per call."""

    emits_spikes = True

    def __init__(self, T: int, generator: Optional[torch.Generator] = None, packed: bool = False):
        super().__init__()
        self.T = check_T(T, type(self).__name__)
        self.generator = check_generator(generator, type(self).__name__)
        self.packed = check_bool(packed, "packed", type(self).__name__)

    def forward(self, x, generator: Optional[torch.Generator] = None):
        return _poisson(x, self.T, generator if generator is not None else self.generator, self.packed,
                        type(self).__name__)

    def extra_repr(self):
        return f"T={self.T}, packed={self.packed}"


class RateEncoder(nn.Module):
    """:func:`rate` as a module."""

    emits_spikes = True

    def __init__(self, T: int, packed: bool = False):
        super().__init__()
        self.T = check_T(T, type(self).__name__)
        self.packed = check_bool(packed, "packed", type(self).__name__)

    def forward(self, x):
        return _rate(x, self.T, self.packed, type(self).__name__)

    def extra_repr(self):
        return f"T={self.T}, packed={self.packed}"


class LatencyEncoder(nn.Module):
    """:func:`latency` as a module."""

    emits_spikes = True

    def __init__(self, T: int, mode: str = "linear", surrogate: Optional[sg.Surrogate] = None, packed: bool = False):
        super().__init__()
        self.T = check_T(T, type(self).__name__)
        self.mode = _check_mode(mode, type(self).__name__)
        self.surrogate = sg.check(surrogate or _default_latency_surrogate(T))
        self.packed = check_bool(packed, "packed", type(self).__name__)

    def forward(self, x):
        return _latency(x, self.T, self.mode, self.surrogate, self.packed, type(self).__name__)

    def extra_repr(self):
        return f"T={self.T}, mode={self.mode!r}, packed={self.packed}"


class DirectEncoder(nn.Module):
    """:func:`direct` as a module."""

    def __init__(self, T: int):
        super().__init__()
        self.T = check_T(T, "DirectEncoder")

    def forward(self, x):
        return direct(x, self.T)

    def extra_repr(self):
        return f"T={self.T}"


class DeltaEncoder(nn.Module):
    """:func:`delta` as a module."""

    emits_spikes = True

    def __init__(self, threshold: float, on_off: bool = False, packed: bool = False):
        super().__init__()
        self.threshold = _positive_float(threshold, "DeltaEncoder: threshold")
        self.on_off = check_bool(on_off, "on_off", "DeltaEncoder")
        self.packed = check_bool(packed, "packed", "DeltaEncoder")

    def forward(self, x_seq):
        return delta(x_seq, self.threshold, self.on_off, self.packed)

    def extra_repr(self):
        return f"threshold={self.threshold}, on_off={self.on_off}, packed={self.packed}"


# --------------------------------------------------------------------------------------------- #
# decoders
# --------------------------------------------------------------------------------------------- #


def _spikes(s, name: str) -> torch.Tensor:
    if isinstance(s, SpikeTensor):
        s = s.to_dense()
    _check_values(s, name, min_dim=2)
    return s


def spike_count(s: Union[torch.Tensor, SpikeTensor]) -> torch.Tensor:
    """Spikes per element over time: ``[T, B, ...] -> [B, ...]`` (differentiable)."""
    return _spikes(s, "spike_count").sum(0)


def firing_rate(s: Union[torch.Tensor, SpikeTensor]) -> torch.Tensor:
    """Spikes per step: ``[T, B, ...] -> [B, ...]`` in [0, 1] (differentiable)."""
    return _spikes(s, "firing_rate").mean(0)


def first_spike_time(s: Union[torch.Tensor, SpikeTensor]) -> torch.Tensor:
    """The step of each element's first spike, ``[T, B, ...] -> [B, ...]`` int64; ``T`` where an element
    never fires. Not differentiable (use :func:`time_softmax` to train on spike timing)."""
    s = _spikes(s, "first_spike_time").detach()
    T = s.shape[0]
    fired = s != 0
    steps = torch.arange(T, device=s.device).reshape((-1,) + (1,) * (s.dim() - 1))
    return torch.where(fired, steps, T).amin(0)


def time_softmax(s: Union[torch.Tensor, SpikeTensor], tau: Optional[float] = None, dim: int = -1) -> torch.Tensor:
    """A differentiable timing decoder: the softmax over ``dim`` (the classes) of time-weighted spike
    counts ``sum_t s[t] e^(-t / tau)``, so a class that fires earlier and more scores higher.
    ``tau`` defaults to T (a spike at the last step weighs ``1/e`` of one at t = 0)."""
    s = _spikes(s, "time_softmax")
    T = s.shape[0]
    tau = float(T) if tau is None else _positive_float(tau, "time_softmax: tau")
    w = torch.exp(-torch.arange(T, dtype=torch.float64, device=s.device) / tau).to(s.dtype)
    score = (s * w.reshape((-1,) + (1,) * (s.dim() - 1))).sum(0)
    return torch.softmax(score, dim=dim)


def final_voltage(v_seq: torch.Tensor) -> torch.Tensor:
    """The membrane potential at the last step: ``[T, B, ...] -> [B, ...]``."""
    _check_values(v_seq, "final_voltage", min_dim=2)
    return v_seq[-1]


def max_voltage(v_seq: torch.Tensor) -> torch.Tensor:
    """The largest membrane potential over time: ``[T, B, ...] -> [B, ...]`` (gradient to the arg max)."""
    _check_values(v_seq, "max_voltage", min_dim=2)
    return v_seq.amax(0)


class _Decoder(nn.Module):
    fn = None

    def forward(self, x):
        return type(self).fn(x)


class SpikeCount(_Decoder):
    """:func:`spike_count` as a module."""
    fn = staticmethod(spike_count)


class FiringRate(_Decoder):
    """:func:`firing_rate` as a module."""
    fn = staticmethod(firing_rate)


class FirstSpikeTime(_Decoder):
    """:func:`first_spike_time` as a module."""
    fn = staticmethod(first_spike_time)


class FinalVoltage(_Decoder):
    """:func:`final_voltage` as a module."""
    fn = staticmethod(final_voltage)


class MaxVoltage(_Decoder):
    """:func:`max_voltage` as a module."""
    fn = staticmethod(max_voltage)


class TimeSoftmax(nn.Module):
    """:func:`time_softmax` as a module."""

    def __init__(self, tau: Optional[float] = None, dim: int = -1):
        super().__init__()
        self.tau = None if tau is None else _positive_float(tau, "TimeSoftmax: tau")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"TimeSoftmax: dim must be an int, got {dim!r}")
        self.dim = dim

    def forward(self, s):
        return time_softmax(s, self.tau, self.dim)

    def extra_repr(self):
        return f"tau={self.tau}, dim={self.dim}"
