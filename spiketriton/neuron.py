"""Spiking neuron modules: ``spikes = lif(x_seq)`` with ``x_seq [T, B, *features]`` (multi-step, the
default ``step_mode="m"``) or ``spikes = lif(x)`` with ``x [B, *features]`` (one step per call,
``step_mode="s"``, the state carried between calls).

The last membrane potential stays in the module (``module.v``, fp32) and carries into the next call,
gradient included (BPTT across calls), until ``module.reset()`` or ``spiketriton.reset(net)``.
State is not part of ``state_dict``; learnable parameters (PLIF's ``w``, a learnable leak) are.

Shapes are never guessed: a multi-step neuron refuses a 2-D input, because ``[B, N]`` (one step of a
batch, what a snnTorch-style loop over time passes) and ``[T, N]`` (a sequence without a batch) look
alike; the error names both ways out (``step_mode="s"``, or ``x.unsqueeze(1)``).

T calls in single-step mode compute exactly what one multi-step call over the T steps computes (spikes,
state and, through BPTT, every gradient): a single step is a multi-step call with T = 1, one kernel
launch. ``store_v_seq=True`` keeps the last call's potential before the reset (``h_seq``) and after it
(``v_seq``), ``[T, *S]`` fp32 (T = 1 in single-step mode), as :mod:`spiketriton.monitor` records them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from . import _hints, surrogate as sg
from .functional.neuron import (
    check_sequence,
    check_tau,
    extended_lif_spec,
    family_a_spec,
    leak_params,
    run_neuron,
)
from .functional._checks import check_backend, check_bool
from .functional.spikes import SpikeTensor
from .spec import NeuronSpec

__all__ = ["BaseNeuron", "IF", "LIF", "PLIF", "ExtendedLIF", "reset", "set_step_mode", "STEP_MODES"]

#: "m": multi-step, ``[T, B, *features]`` per call; "s": single-step, ``[B, *features]`` per call
STEP_MODES = ("m", "s")


def _check_packed_output(packed_output, op: str):
    if not (isinstance(packed_output, bool) or (isinstance(packed_output, str) and packed_output == "image")):
        raise TypeError(f"{op}: packed_output must be True or False, got {packed_output!r}; or 'image' for a "
                        f"SpikeImage (the input of SpikeConv2d, from [T, B, C, H, W] input)")
    return packed_output


def _check_step_mode(step_mode, op: str) -> str:
    if not isinstance(step_mode, str) or step_mode not in STEP_MODES:
        raise ValueError(f"{op}: step_mode must be 'm' (multi-step, [T, B, *features] per call) or 's' (single "
                         f"step, [B, *features] per call), got {step_mode!r}")
    return step_mode


class BaseNeuron(nn.Module):
    """Common state handling. Subclasses provide ``spec`` and ``_params()``."""

    spec: NeuronSpec
    # class-level defaults of the options added after the first release: a module pickled whole
    # (torch.save(model)) by an earlier version has no instance attribute for them
    step_mode = "m"
    store_v_seq = False
    h_seq = None
    _record = None

    def __new__(cls, *args, **kwargs):
        # another library's keyword (surrogate_function=, spike_grad=, beta=, ...) gets the spiketriton
        # spelling in its TypeError (a dict lookup per keyword)
        _hints.check_keywords(cls, kwargs)
        return super().__new__(cls)

    def __init__(self, backend: str = "auto", packed_output: bool = False, step_mode: str = "m",
                 store_v_seq: bool = False):
        super().__init__()
        self.backend = check_backend(backend, type(self).__name__)
        #: True: return spikes as a SpikeTensor (8 per byte along the last dimension) for a following
        #: SpikeLinear; "image": as a SpikeImage (8 channels per byte, channels-last) for a following
        #: SpikeConv2d, from [T, B, C, H, W] input. The float spike tensor is then never materialised,
        #: and backward keeps only H and these bits
        self.packed_output = _check_packed_output(packed_output, type(self).__name__)
        self.step_mode = _check_step_mode(step_mode, type(self).__name__)
        #: keep the last call's ``h_seq`` / ``v_seq`` (costs writing H in fp32, as in training)
        self.store_v_seq = check_bool(store_v_seq, "store_v_seq", type(self).__name__)
        self.h_seq: Optional[torch.Tensor] = None
        self._record = None  # the last call's StateRecord: v_seq is computed from it when first read
        self.v: Optional[torch.Tensor] = None

    @property
    def v_seq(self) -> Optional[torch.Tensor]:
        """The potential after each step's reset (and leak and floor) of the last call, ``[T, *S]`` fp32,
        with ``store_v_seq=True``; computed from ``h_seq`` when first read."""
        rec = self.__dict__.get("_record")
        return rec.v if rec is not None else None

    #: the carried state (not in state_dict); ``.to(device)`` moves it, a dtype cast leaves it alone
    _state_names = ("v",)

    def reset(self) -> None:
        """Forget the carried state (the next call starts from the initial potential)."""
        self.v = None
        self.h_seq = None
        self._record = None

    def _apply(self, fn, recurse=True):
        """``module.to(device)`` / ``.cuda()`` / ``.cpu()`` also move the carried state, so that a
        sequence can continue on the new device; its dtype stays (fp32 state, int32 counter) whatever
        a dtype cast does to the parameters."""
        super()._apply(fn, recurse)
        for name in self._state_names:
            t = self.__dict__.get(name)
            if isinstance(t, torch.Tensor):
                # where fn sends a tensor of this device, found with an empty probe (no copy of the state)
                device = fn(torch.empty(0, device=t.device)).device
                if device != t.device:
                    self.__dict__[name] = t.to(device)
        return self

    def _params(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The learnable/fixed scalars of the spec as an fp32 tensor on x's device."""
        raise NotImplementedError

    def _const_params(self, x: torch.Tensor, values: tuple) -> torch.Tensor:
        """Fixed (not learnable) scalars as an fp32 tensor on x's device, made once per device and values
        (a new tensor per call cost ~4 us of a single step's ~50). Not a buffer: module.to(torch.bfloat16)
        must not round them, and they stay out of state_dict."""
        if torch.compiler.is_compiling():
            return torch.tensor(values, dtype=torch.float32, device=x.device)
        key = (x.device, values)
        hit = self.__dict__.get("_const_cache")
        if hit is None or hit[0] != key:
            hit = (key, torch.tensor(values, dtype=torch.float32, device=x.device))
            self.__dict__["_const_cache"] = hit
        return hit[1]

    def _carry(self, state):
        # state left by a call under torch.inference_mode() cannot enter autograd: continue from a copy
        # (torch.compile cannot trace is_inference(), and under compile inference_mode is no_grad anyway)
        if torch.compiler.is_compiling():
            return state
        if state is not None and state.is_inference() and not torch.is_inference_mode_enabled():
            return state.clone()
        # a state whose graph an earlier backward freed (reset() forgotten between batches): a backward
        # into it says so, instead of torch's "backward through the graph a second time"
        return _hints.guard_stale_state(state, type(self).__name__)

    def _as_sequence(self, x) -> torch.Tensor:
        """The call's input as ``[T, B, *features]``: a single step gets T = 1; a multi-step neuron
        refuses 2-D input rather than guess which dimension is time."""
        name = type(self).__name__
        if self.step_mode == "s":
            if isinstance(x, torch.Tensor) and x.dim() == 0:
                raise ValueError(f"{name}: step_mode='s' takes one time step [B, *features], got a 0-d tensor")
            return x.unsqueeze(0) if isinstance(x, torch.Tensor) else x  # (check_sequence names a non-tensor)
        if isinstance(x, torch.Tensor) and x.dim() == 2:
            raise ValueError(
                f"{name}: got a 2-D input of shape {tuple(x.shape)}, but a multi-step neuron (step_mode='m', the "
                f"default) takes [T, B, *features] with time first. For one time step of a batch per call "
                f"([B, features], e.g. a loop over time steps as in snnTorch) use step_mode='s' (or "
                f"spiketriton.set_step_mode(net, 's') for a whole model); for a sequence without a batch "
                f"dimension ([T, features]) pass x.unsqueeze(1).")
        return x

    def _one_step(self, spikes):
        if self.step_mode == "m":
            return spikes
        if isinstance(spikes, SpikeTensor):
            return SpikeTensor(spikes.data[0], spikes.k, spikes.anchor[0] if spikes.anchor is not None else None)
        return spikes[0]  # a tensor, or a SpikeImage (its first leading dimension)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [T, B, *features]`` (``step_mode="m"``) or ``[B, *features]`` (``"s"``) -> spikes of
        the same shape, in x's dtype (a SpikeTensor with ``packed_output=True``)."""
        name = type(self).__name__
        x_seq = self._as_sequence(x)
        check_sequence(x_seq, name)
        states = [self._carry(getattr(self, n)) for n in self._state_names] + [None, None]
        out = run_neuron(x_seq, states[0], states[1], states[2], self._params(x_seq), self.spec, self.backend, name,
                         packed=self.packed_output, record=self.store_v_seq)
        if torch.compiler.is_compiling():
            for n, t in zip(self._state_names, out[1:4]):
                setattr(self, n, t)
        else:  # plain attributes (never parameters, buffers or modules): skip nn.Module.__setattr__'s checks
            for n, t in zip(self._state_names, out[1:4]):
                self.__dict__[n] = t
        if self.store_v_seq:
            self._record = out[4]
            self.h_seq = self._record.h
        return self._one_step(out[0])

    def extra_repr(self) -> str:
        s = self.spec
        reset = f"v_reset={s.v_reset}" if s.reset_mode == 0 else "v_reset=None (soft)"
        if s.v_init != (s.v_reset if s.reset_mode == 0 else 0.0):
            reset += f", v_init={s.v_init}"
        return (f"v_threshold={s.v_threshold}, {reset}, surrogate={s.surrogate}, "
                f"detach_reset={s.detach_reset}, backend={self.backend!r}{self._mode_repr()}")

    def _mode_repr(self) -> str:
        packed = f", packed_output={self.packed_output!r}" if self.packed_output else ""
        return (packed + (", step_mode='s'" if self.step_mode == "s" else "")
                + (", store_v_seq=True" if self.store_v_seq else ""))


class IF(BaseNeuron):
    """Integrate-and-fire: ``H[t] = V[t-1] + X[t]``; fire at ``H >= v_threshold``; reset.
    ``v_init``: the potential before the first step (default ``v_reset``; 0 with a soft reset)."""

    def __init__(self, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0,
                 surrogate: Optional[sg.Surrogate] = None, detach_reset: bool = False, backend: str = "auto",
                 packed_output: bool = False, step_mode: str = "m", store_v_seq: bool = False,
                 v_init: Optional[float] = None):
        super().__init__(backend, packed_output, step_mode, store_v_seq)
        self.spec = family_a_spec("IF", v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                                  detach_reset=detach_reset, decay_input=False, v_init=v_init)

    def _params(self, x):
        return self._const_params(x, (0.0,))


class LIF(BaseNeuron):
    """Leaky integrate-and-fire with SpikingJelly semantics (family A of docs/spec/neurons.md).

    ``decay_input=True``: ``H = V + (X - (V - V_reset)) / tau``; else ``H = V - (V - V_reset)/tau + X``.
    ``v_reset=None`` selects the soft (subtractive) reset.
    """

    def __init__(self, tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: Optional[float] = 0.0, surrogate: Optional[sg.Surrogate] = None,
                 detach_reset: bool = False, backend: str = "auto", packed_output: bool = False,
                 step_mode: str = "m", store_v_seq: bool = False, v_init: Optional[float] = None):
        super().__init__(backend, packed_output, step_mode, store_v_seq)
        self.tau = check_tau(tau, "LIF")
        self.spec = family_a_spec("LIF", v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                                  detach_reset=detach_reset, decay_input=decay_input, v_init=v_init)

    def _params(self, x):
        return self._const_params(x, (1.0 / self.tau,))

    def extra_repr(self):
        return f"tau={self.tau}, decay_input={self.spec.decay_input}, " + super().extra_repr()


class PLIF(BaseNeuron):
    """Parametric LIF: as :class:`LIF` with ``1/tau = sigmoid(w)``, ``w = -ln(init_tau - 1)`` learnable."""

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: Optional[float] = 0.0, surrogate: Optional[sg.Surrogate] = None,
                 detach_reset: bool = False, backend: str = "auto", packed_output: bool = False,
                 step_mode: str = "m", store_v_seq: bool = False, v_init: Optional[float] = None):
        super().__init__(backend, packed_output, step_mode, store_v_seq)
        init_tau = check_tau(init_tau, "PLIF", "init_tau")
        self.spec = family_a_spec("PLIF", v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                                  detach_reset=detach_reset, decay_input=decay_input, v_init=v_init)
        self.w = nn.Parameter(torch.tensor([-math.log(init_tau - 1.0)]))

    @property
    def tau(self) -> float:
        k = torch.sigmoid(self.w.detach().float()).item()
        return math.inf if k == 0.0 else 1.0 / k  # w below about -104: sigmoid underflows, no leak

    def _params(self, x):
        return torch.sigmoid(self.w.float())

    def extra_repr(self):
        return f"tau={self.tau:.4g}, decay_input={self.spec.decay_input}, " + super().extra_repr()


class ExtendedLIF(BaseNeuron):
    """The HNN Extended LIF (family B of docs/spec/neurons.md): integrate (gated while refractory), fire at
    ``v' > vth`` (strict), reset (HARD / SOFT / SOFT_CONSTANT), leak ``alpha*v + beta``, floor ``v_l``,
    adaptive threshold ``a = v_th_alpha*a + v_th_beta + s*v_th_incre`` and a refractory counter.

    State: ``v`` (fp32), ``v_th_adpt`` (fp32) and ``ref_cnt`` (int32), all reset by :meth:`reset`.
    ``learnable_leak=True`` makes ``v_leaky_alpha``/``v_leaky_beta`` parameters with gradients.
    """

    def __init__(self, v_th0: float = 1.0, v_leaky_alpha: float = 1.0, v_leaky_beta: float = 0.0,
                 v_reset: float = 0.0, v_init: Optional[float] = None, v_l: Optional[float] = None,
                 dv: float = 0.0, ref_len: int = 0, reset_mode="hard", v_th_alpha: float = 1.0,
                 v_th_beta: float = 0.0, v_th_incre: float = 0.0, surrogate: Optional[sg.Surrogate] = None,
                 detach_reset: bool = False, learnable_leak: bool = False, backend: str = "auto",
                 packed_output: bool = False, step_mode: str = "m", store_v_seq: bool = False):
        super().__init__(backend, packed_output, step_mode, store_v_seq)
        check_bool(learnable_leak, "learnable_leak", "ExtendedLIF")
        self.spec = extended_lif_spec(
            "ExtendedLIF", v_th0=v_th0, v_reset=v_reset, v_init=v_init, v_l=v_l, dv=dv, ref_len=ref_len,
            reset_mode=reset_mode, v_th_alpha=v_th_alpha, v_th_beta=v_th_beta, v_th_incre=v_th_incre,
            surrogate=surrogate, detach_reset=detach_reset,
        )
        leak = leak_params(v_leaky_alpha, v_leaky_beta, torch.device("cpu"), "ExtendedLIF")
        if learnable_leak:
            self.v_leaky_alpha = nn.Parameter(leak[0:1].clone())
            self.v_leaky_beta = nn.Parameter(leak[1:2].clone())
        else:
            # fixed constants, not buffers: module.to(torch.bfloat16) must not round them
            self.v_leaky_alpha, self.v_leaky_beta = float(leak[0]), float(leak[1])
        self.v_th_adpt: Optional[torch.Tensor] = None
        self.ref_cnt: Optional[torch.Tensor] = None

    _state_names = ("v", "v_th_adpt", "ref_cnt")

    def reset(self) -> None:
        super().reset()
        self.v_th_adpt = None
        self.ref_cnt = None

    def _params(self, x):
        if isinstance(self.v_leaky_alpha, torch.Tensor):
            return torch.cat([self.v_leaky_alpha.float(), self.v_leaky_beta.float()])
        return self._const_params(x, (self.v_leaky_alpha, self.v_leaky_beta))

    def extra_repr(self):
        s = self.spec
        mode = ("HARD", "SOFT", "SOFT_CONSTANT")[s.reset_mode]
        return (f"v_th0={s.v_threshold}, reset_mode={mode}, v_reset={s.v_reset}, v_l={s.v_l}, dv={s.dv}, "
                f"ref_len={s.ref_len}, v_th_alpha={s.v_th_alpha}, v_th_beta={s.v_th_beta}, "
                f"v_th_incre={s.v_th_incre}, surrogate={s.surrogate}, backend={self.backend!r}{self._mode_repr()}")


def reset(net: nn.Module) -> None:
    """Reset the state of every spiketriton neuron in ``net`` (call between independent sequences)."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"reset: expected a torch.nn.Module, got {type(net).__name__}")
    for m in net.modules():
        if isinstance(m, BaseNeuron):
            m.reset()


def set_step_mode(net: nn.Module, step_mode: str) -> nn.Module:
    """Switch every spiketriton neuron in ``net`` (and every :class:`~spiketriton.StepWise` wrapper, which
    then passes ``[B, ...]`` straight to its module) to ``step_mode`` ("m" or "s"), and reset their state
    (a sequence does not continue across the switch). Returns ``net``. A neuron with its own forward that
    does not implement step modes (the quantized QLIF) is an error, rather than silently multi-step."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"set_step_mode: expected a torch.nn.Module, got {type(net).__name__}")
    _check_step_mode(step_mode, "set_step_mode")
    for name, m in net.named_modules():
        if isinstance(m, BaseNeuron) and type(m).forward is not BaseNeuron.forward and step_mode != "m":
            raise TypeError(f"set_step_mode: {name or 'the model'} ({type(m).__name__}) has its own forward and "
                            f"runs multi-step only")
    for m in net.modules():
        if isinstance(m, BaseNeuron) or hasattr(m, "step_mode"):
            m.step_mode = step_mode
        if isinstance(m, BaseNeuron):
            m.reset()
    return net
