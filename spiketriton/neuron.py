"""Multi-step spiking neuron modules: ``spikes = lif(x_seq)`` with ``x_seq [T, B, *features]``.

The last membrane potential stays in the module (``module.v``, fp32) and carries into the next call,
gradient included (BPTT across calls), until ``module.reset()`` or ``spiketriton.reset(net)``.
State is not part of ``state_dict``; learnable parameters (PLIF's ``w``, a learnable leak) are.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from . import surrogate as sg
from .functional.neuron import (
    check_sequence,
    check_tau,
    extended_lif_spec,
    family_a_spec,
    leak_params,
    run_neuron,
)
from .functional._checks import check_backend, check_bool
from .spec import NeuronSpec

__all__ = ["BaseNeuron", "IF", "LIF", "PLIF", "ExtendedLIF", "reset"]


class BaseNeuron(nn.Module):
    """Common state handling. Subclasses provide ``spec`` and ``_params()``."""

    spec: NeuronSpec

    def __init__(self, backend: str = "auto", packed_output: bool = False):
        super().__init__()
        self.backend = check_backend(backend, type(self).__name__)
        #: return spikes as a SpikeTensor (8 per byte) for a following SpikeLinear: the float spike
        #: tensor is then never materialised, and backward keeps only H and these bits
        self.packed_output = check_bool(packed_output, "packed_output", type(self).__name__)
        self.v: Optional[torch.Tensor] = None

    #: the carried state (not in state_dict); ``.to(device)`` moves it, a dtype cast leaves it alone
    _state_names = ("v",)

    def reset(self) -> None:
        """Forget the carried state (the next call starts from the initial potential)."""
        self.v = None

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

    def _carry(self, state):
        # state left by a call under torch.inference_mode() cannot enter autograd: continue from a copy
        # (torch.compile cannot trace is_inference(), and under compile inference_mode is no_grad anyway)
        if torch.compiler.is_compiling():
            return state
        if state is not None and state.is_inference() and not torch.is_inference_mode_enabled():
            return state.clone()
        return state

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_sequence(x_seq, type(self).__name__)
        self.v = self._carry(self.v)
        spikes, self.v, _, _ = run_neuron(
            x_seq, self.v, None, None, self._params(x_seq), self.spec, self.backend, type(self).__name__,
            packed=self.packed_output,
        )
        return spikes

    def extra_repr(self) -> str:
        s = self.spec
        reset = f"v_reset={s.v_reset}" if s.reset_mode == 0 else "v_reset=None (soft)"
        packed = ", packed_output=True" if self.packed_output else ""
        return (f"v_threshold={s.v_threshold}, {reset}, surrogate={s.surrogate}, "
                f"detach_reset={s.detach_reset}, backend={self.backend!r}{packed}")


class IF(BaseNeuron):
    """Integrate-and-fire: ``H[t] = V[t-1] + X[t]``; fire at ``H >= v_threshold``; reset."""

    def __init__(self, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0,
                 surrogate: Optional[sg.Surrogate] = None, detach_reset: bool = False, backend: str = "auto",
                 packed_output: bool = False):
        super().__init__(backend, packed_output)
        self.spec = family_a_spec("IF", v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                                  detach_reset=detach_reset, decay_input=False)

    def _params(self, x):
        return torch.zeros(1, device=x.device)


class LIF(BaseNeuron):
    """Leaky integrate-and-fire with SpikingJelly semantics (DESIGN.md family A).

    ``decay_input=True``: ``H = V + (X - (V - V_reset)) / tau``; else ``H = V - (V - V_reset)/tau + X``.
    ``v_reset=None`` selects the soft (subtractive) reset.
    """

    def __init__(self, tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: Optional[float] = 0.0, surrogate: Optional[sg.Surrogate] = None,
                 detach_reset: bool = False, backend: str = "auto", packed_output: bool = False):
        super().__init__(backend, packed_output)
        self.tau = check_tau(tau, "LIF")
        self.spec = family_a_spec("LIF", v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                                  detach_reset=detach_reset, decay_input=decay_input)

    def _params(self, x):
        # a fixed constant, not a buffer: module.to(torch.bfloat16) must not round 1/tau
        return torch.full((1,), 1.0 / self.tau, device=x.device)

    def extra_repr(self):
        return f"tau={self.tau}, decay_input={self.spec.decay_input}, " + super().extra_repr()


class PLIF(BaseNeuron):
    """Parametric LIF: as :class:`LIF` with ``1/tau = sigmoid(w)``, ``w = -ln(init_tau - 1)`` learnable."""

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: Optional[float] = 0.0, surrogate: Optional[sg.Surrogate] = None,
                 detach_reset: bool = False, backend: str = "auto", packed_output: bool = False):
        super().__init__(backend, packed_output)
        init_tau = check_tau(init_tau, "PLIF", "init_tau")
        self.spec = family_a_spec("PLIF", v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                                  detach_reset=detach_reset, decay_input=decay_input)
        self.w = nn.Parameter(torch.tensor([-math.log(init_tau - 1.0)]))

    @property
    def tau(self) -> float:
        return 1.0 / torch.sigmoid(self.w.detach().float()).item()

    def _params(self, x):
        return torch.sigmoid(self.w.float())

    def extra_repr(self):
        return f"tau={self.tau:.4g}, decay_input={self.spec.decay_input}, " + super().extra_repr()


class ExtendedLIF(BaseNeuron):
    """The HNN Extended LIF (DESIGN.md family B): integrate (gated while refractory), fire at
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
                 packed_output: bool = False):
        super().__init__(backend, packed_output)
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
        return torch.tensor([self.v_leaky_alpha, self.v_leaky_beta], dtype=torch.float32).to(x.device)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_sequence(x_seq, "ExtendedLIF")
        self.v, self.v_th_adpt, self.ref_cnt = (self._carry(t) for t in (self.v, self.v_th_adpt, self.ref_cnt))
        spikes, self.v, self.v_th_adpt, self.ref_cnt = run_neuron(
            x_seq, self.v, self.v_th_adpt, self.ref_cnt, self._params(x_seq), self.spec, self.backend, "ExtendedLIF",
            packed=self.packed_output,
        )
        return spikes

    def extra_repr(self):
        s = self.spec
        mode = ("HARD", "SOFT", "SOFT_CONSTANT")[s.reset_mode]
        return (f"v_th0={s.v_threshold}, reset_mode={mode}, v_reset={s.v_reset}, v_l={s.v_l}, dv={s.dv}, "
                f"ref_len={s.ref_len}, v_th_alpha={s.v_th_alpha}, v_th_beta={s.v_th_beta}, "
                f"v_th_incre={s.v_th_incre}, surrogate={s.surrogate}, backend={self.backend!r}")


def reset(net: nn.Module) -> None:
    """Reset the state of every spiketriton neuron in ``net`` (call between independent sequences)."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"reset: expected a torch.nn.Module, got {type(net).__name__}")
    for m in net.modules():
        if isinstance(m, BaseNeuron):
            m.reset()
