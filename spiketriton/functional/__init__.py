"""Stateless functional API: autograd Functions over the kernels, with backend dispatch."""

from ._backend import BACKENDS, use_triton
from .neuron import ExtendedLIFState, extended_lif, if_neuron, lif, plif, run_neuron

__all__ = ["BACKENDS", "use_triton", "ExtendedLIFState", "extended_lif", "if_neuron", "lif", "plif", "run_neuron"]
