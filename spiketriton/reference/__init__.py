"""Pure-PyTorch fp32 implementations of every kernel: the executable spec and the test oracle."""

from .neuron import NeuronTrace, neuron_reference

__all__ = ["NeuronTrace", "neuron_reference"]
