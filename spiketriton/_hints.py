"""Hints for habits from other SNN libraries: where a keyword or a name of SpikingJelly, snnTorch or
Norse is used with spiketriton, the error says what spiketriton calls it.

- :func:`check_keywords` (for a constructor): a keyword the class does not take, but another library's
  class does, is a ``TypeError`` with the spiketriton spelling. Python-level, a dict lookup per keyword.
- :func:`module_getattr` (a module's ``__getattr__``): a missing name that another library has is an
  ``AttributeError`` with the spiketriton name; other names get Python's usual error.
- :func:`guard_stale_state`: a neuron's carried state whose autograd graph was already freed by a
  backward (the state of the previous batch, kept because ``reset`` was not called) is passed on
  unchanged, except that a backward into it raises a ``RuntimeError`` that says to call
  ``spiketriton.reset(net)`` between batches, instead of torch's "backward through the graph a second
  time". Python-level: one attribute read of the state's ``grad_fn`` per call, no device sync.
"""

from __future__ import annotations

import functools
import inspect
from typing import Dict, Optional

import torch

#: keyword arguments of other libraries' neurons -> how to say it in spiketriton
NEURON_KEYWORDS: Dict[str, str] = {
    "surrogate_function": "surrogate= (SpikingJelly's surrogate_function), e.g. surrogate=st.surrogate.ATan()",
    "spike_grad": "surrogate= (snnTorch's spike_grad), e.g. surrogate=st.surrogate.ATan()",
    "threshold": "v_threshold= (snnTorch's threshold)",
    "beta": ("st.ExtendedLIF(v_leaky_alpha=beta) (snnTorch's Leaky(beta) is that neuron: strict threshold, leak after "
             "the reset), or st.LIF(tau=1 / (1 - beta), decay_input=False)"),
    "learn_beta": "st.ExtendedLIF(learnable_leak=True), or st.PLIF (its 1/tau = sigmoid(w) is learnt)",
    "reset_mechanism": ("st.ExtendedLIF's reset_mode= (snnTorch's 'zero' is reset_mode='hard' with detach_reset=True; "
                        "'subtract' with reset_delay=False is 'soft'), or st.LIF's v_reset= (0.0 hard, None soft)"),
    "init_hidden": ("nothing: spiketriton neurons always keep their state in the module (neuron.v) until "
                    "spiketriton.reset(net)"),
    "tau_mem_inv": "tau= in time steps (Norse's tau_mem_inv is per second: tau = 1 / (dt * tau_mem_inv))",
}

#: names of other libraries' modules and functions -> the spiketriton name
NAMES: Dict[str, str] = {
    "reset_net": "spiketriton.reset(net) (SpikingJelly's functional.reset_net; also spiketriton.functional.reset_net)",
    "SeqToANNContainer": ("spiketriton.StepWise(*modules): it applies per-step modules (nn.Conv2d, nn.BatchNorm2d, "
                          "pooling) to a sequence [T, B, ...] by folding time into the batch, as SpikingJelly's "
                          "SeqToANNContainer does"),
    "MultiStepContainer": ("spiketriton.StepWise(*modules) for stateless modules; spiketriton neurons are multi-step "
                           "already (step_mode='m', the default)"),
    "seq_to_ann_forward": "spiketriton.StepWise(*modules)(x_seq)",
    "multi_step_forward": "spiketriton.StepWise(*modules)(x_seq); neurons take [T, B, ...] themselves",
    "LIFNode": "spiketriton.LIF (SpikingJelly's LIFNode)",
    "IFNode": "spiketriton.IF (SpikingJelly's IFNode)",
    "ParametricLIFNode": "spiketriton.PLIF (SpikingJelly's ParametricLIFNode)",
    "Leaky": ("spiketriton.ExtendedLIF(v_leaky_alpha=beta) (snnTorch's Leaky; its reset_mechanism='zero' is "
              "reset_mode='hard' with detach_reset=True), multi-step: one call takes [T, B, ...]"),
    "LIFBoxCell": "spiketriton.LIF (Norse's LIFBoxCell), multi-step; step_mode='s' for one step per call",
}


@functools.lru_cache(maxsize=None)
def _accepted(cls) -> frozenset:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - a C-implemented __init__
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset(NEURON_KEYWORDS)  # takes anything: nothing to hint
    return frozenset(params)


def check_keywords(cls, kwargs: dict, table: Optional[Dict[str, str]] = None) -> None:
    """Raise ``TypeError`` when ``kwargs`` holds a keyword that ``cls.__init__`` does not take and that
    ``table`` (default :data:`NEURON_KEYWORDS`) knows from another library, saying what to write instead.
    Unknown keywords the table does not know are left to Python's own error."""
    table = NEURON_KEYWORDS if table is None else table
    known = [k for k in kwargs if k in table and k not in _accepted(cls)]
    if known:
        hints = "; ".join(f"for {k}= use {table[k]}" for k in known)
        raise TypeError(f"{cls.__name__}: unexpected keyword argument{'s' if len(known) > 1 else ''} "
                        f"{', '.join(repr(k) for k in known)} (another library's name): {hints}")


def module_getattr(module_name: str, names: Optional[Dict[str, str]] = None):
    """A module-level ``__getattr__`` for ``module_name``: a name of another library (``names``, default
    :data:`NAMES`) is an ``AttributeError`` that gives the spiketriton name."""
    names = NAMES if names is None else names

    def __getattr__(name: str):
        hint = names.get(name)
        if hint is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        raise AttributeError(f"module {module_name!r} has no attribute {name!r} (another library's name); in "
                             f"spiketriton use {hint}")

    return __getattr__


STALE_STATE_MESSAGE = (
    "{who}: backward reached the state this neuron carried over from an earlier call, whose graph was freed by "
    "an earlier backward. Call spiketriton.reset(net) (or neuron.reset()) between independent batches; to carry "
    "the state on purpose (truncated BPTT), detach it after each backward: neuron.v = neuron.v.detach()")


class _StaleState(torch.autograd.Function):
    """Identity in the forward; a backward into it raises the hint (the graph behind it is gone)."""

    @staticmethod
    def forward(ctx, state, who):
        ctx.who = who
        return state.view_as(state)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(STALE_STATE_MESSAGE.format(who=ctx.who))


def graph_freed(state: Optional[torch.Tensor]) -> bool:
    """Whether ``state`` comes out of an autograd Function node whose saved tensors were freed by a
    backward (reading its raw saved tensors raises then; a retained graph or one not yet used for a
    backward reads fine). Python-level, about a microsecond; False where the check does not apply."""
    fn = getattr(state, "grad_fn", None)
    if fn is None:
        return False
    try:
        fn._raw_saved_tensors  # torch's Python-Function nodes; absent on C++ nodes (then: not checked)
    except AttributeError:
        return False
    except RuntimeError:
        return True
    return False


def guard_stale_state(state: Optional[torch.Tensor], who: str) -> Optional[torch.Tensor]:
    """``state``, or, when its graph was freed by an earlier backward and gradients are being recorded,
    the same values behind :class:`_StaleState`, so that a backward into it raises
    :data:`STALE_STATE_MESSAGE` naming ``who``. A forward never fails here: under ``no_grad``, or when
    no backward follows, nothing changes."""
    if state is None or not torch.is_grad_enabled() or torch.compiler.is_compiling() or not graph_freed(state):
        return state
    return _StaleState.apply(state, who)
