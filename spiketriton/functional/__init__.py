"""Stateless functional API: autograd Functions over the kernels, with backend dispatch."""

from .neuron import ExtendedLIFState, extended_lif, if_neuron, lif, plif, run_neuron

__all__ = ["ExtendedLIFState", "extended_lif", "if_neuron", "lif", "plif", "run_neuron"]
