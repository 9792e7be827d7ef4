"""The neuron specification shared by the kernels, the reference and the modules.

One frozen, hashable :class:`NeuronSpec` describes every option of the multi-step neuron of both
families of docs/spec/neurons.md. Values that change what is computed (family, reset mode, surrogate, which
features are on) become constexprs of the kernels; plain constants (thresholds, v_reset, ...) are
runtime scalars; learnable scalars travel in a small fp32 tensor ``params`` so that they need no
host synchronisation and get gradients:

- family A (IF/LIF/PLIF): ``params = [k]`` with ``k = 1/tau`` (IF: k = 0 and decay_input=False).
- family B (ExtendedLIF): ``params = [alpha, beta]`` (leak after the reset).
"""

from __future__ import annotations

import dataclasses
import math

from .surrogate import Surrogate

FAMILY_A = 0  # charge, fire, reset (IF, LIF, PLIF)
FAMILY_B = 1  # integrate, fire, reset, leak (HNN Extended LIF)

RESET_HARD = 0
RESET_SOFT = 1
RESET_SOFT_CONSTANT = 2


@dataclasses.dataclass(frozen=True)
class NeuronSpec:
    family: int
    surrogate: Surrogate
    v_threshold: float          # A: V_th; B: v_th0
    v_reset: float              # value after a hard reset (0.0 for soft reset)
    reset_mode: int = RESET_HARD
    detach_reset: bool = False
    decay_input: bool = True    # family A only
    v_init: float = 0.0         # membrane potential when no state is carried in
    v_l: float = -math.inf      # family B: floor of v and of the threshold
    dv: float = 0.0             # family B: SOFT_CONSTANT decrement
    ref_len: int = 0            # family B: refractory steps after a spike
    v_th_alpha: float = 1.0     # family B: adaptive threshold decay
    v_th_beta: float = 0.0      # family B: adaptive threshold drift
    v_th_incre: float = 0.0     # family B: adaptive threshold increment per spike

    @property
    def adaptive(self) -> bool:
        """Whether the threshold state ``a`` can ever leave 0 (it starts at 0)."""
        return self.family == FAMILY_B and (self.v_th_incre != 0.0 or self.v_th_beta != 0.0)

    @property
    def refractory(self) -> bool:
        return self.family == FAMILY_B and self.ref_len > 0

    @property
    def has_floor(self) -> bool:
        return self.family == FAMILY_B and self.v_l != -math.inf

    @property
    def n_params(self) -> int:
        return 1 if self.family == FAMILY_A else 2


class ResetMode:
    """Reset modes of family B (HNN names). Strings "hard", "soft", "soft_constant" work too."""

    HARD = RESET_HARD
    SOFT = RESET_SOFT
    SOFT_CONSTANT = RESET_SOFT_CONSTANT

    _NAMES = {"hard": RESET_HARD, "soft": RESET_SOFT, "soft_constant": RESET_SOFT_CONSTANT}

    @classmethod
    def parse(cls, mode) -> int:
        if isinstance(mode, str) and mode.lower() in cls._NAMES:
            return cls._NAMES[mode.lower()]
        if not isinstance(mode, bool) and isinstance(getattr(mode, "value", mode), int) and getattr(mode, "value", mode) in (0, 1, 2):
            return int(getattr(mode, "value", mode))
        raise ValueError(
            f"unknown reset_mode {mode!r}: expected 'hard', 'soft', 'soft_constant' or ResetMode.HARD/SOFT/SOFT_CONSTANT"
        )


INT28_MIN = -(1 << 27)
INT28_MAX = (1 << 27) - 1


@dataclasses.dataclass(frozen=True)
class IntNeuronSpec:
    """The quantized form of family B (docs/spec/neurons.md, "The quantized neuron"): every quantity an integer, state in int32 with
    saturation to int28 after every update, leaks as ``floor(x * q / 256)`` with ``q`` in [0, 256]."""

    v_th0: int
    v_reset: int = 0
    reset_mode: int = RESET_HARD
    v_l: int = INT28_MIN            # floor of v and of the threshold (INT28_MIN: none)
    dv: int = 0
    alpha_q: int = 256              # leak: v = floor(v'' * alpha_q / 256) + beta_q
    beta_q: int = 0
    ref_len: int = 0
    v_th_alpha_q: int = 256         # adaptive threshold: a = floor(a * v_th_alpha_q / 256) + v_th_beta_q + s * v_th_incre
    v_th_beta_q: int = 0
    v_th_incre: int = 0
    v_init: int = 0

    def __post_init__(self):
        for name in ("v_th0", "v_reset", "v_l", "dv", "beta_q", "v_th_beta_q", "v_th_incre", "v_init"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not INT28_MIN <= value <= INT28_MAX:
                raise ValueError(f"IntNeuronSpec: {name} must be an integer in int28 [{INT28_MIN}, {INT28_MAX}], got {value!r}")
        for name in ("alpha_q", "v_th_alpha_q"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 256:
                raise ValueError(f"IntNeuronSpec: {name} must be an integer in [0, 256] (the leak is {name}/256), got {value!r}")
        if isinstance(self.ref_len, bool) or not isinstance(self.ref_len, int) or not 0 <= self.ref_len <= INT28_MAX:
            raise ValueError(f"IntNeuronSpec: ref_len must be an integer >= 0, got {self.ref_len!r}")
        if self.reset_mode not in (RESET_HARD, RESET_SOFT, RESET_SOFT_CONSTANT):
            raise ValueError(f"IntNeuronSpec: unknown reset_mode {self.reset_mode!r}")

    @property
    def adaptive(self) -> bool:
        return self.v_th_incre != 0 or self.v_th_beta_q != 0

    @property
    def refractory(self) -> bool:
        return self.ref_len > 0
