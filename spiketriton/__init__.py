"""spiketriton: spiking neural network layers for PyTorch on fused Triton kernels.

Neurons are multi-step (``x_seq [T, B, *features]``), keep their state between calls until
``reset``, and run on Triton for CUDA tensors (or under TRITON_INTERPRET=1) and on the PyTorch
reference otherwise. See README.md and docs/ (docs/spec/ holds the specification).
"""

from . import ann2snn, encoding, functional, learning, monitor, surrogate
from .functional.spikes import SpikeTensor, pack_spikes, spike_matmul, unpack_spikes
from .conv import SpikeConv2d
from .functional.images import SpikeImage, pack_image, unpack_image
from .layers import SpikeLinear, StepWise, convert
from .neuron import IF, LIF, PLIF, BaseNeuron, ExtendedLIF, reset, set_step_mode
from .pooling import SpikeAvgPool2d, SpikeMaxPool2d, SpikeSumPool2d  # noqa: F401  (in __all__ below)
from .spec import ResetMode

__version__ = "0.1.0"

__all__ = [
    "IF", "LIF", "PLIF", "ExtendedLIF", "BaseNeuron", "ResetMode", "reset", "set_step_mode",
    "SpikeTensor", "pack_spikes", "unpack_spikes", "spike_matmul", "SpikeLinear", "StepWise", "convert",
    "SpikeConv2d", "SpikeImage", "pack_image", "unpack_image",
    "functional", "surrogate", "encoding", "monitor", "ann2snn", "learning",
]
__all__ += ["SpikeMaxPool2d", "SpikeAvgPool2d", "SpikeSumPool2d"]

from ._hints import module_getattr as _module_getattr  # noqa: E402

__getattr__ = _module_getattr(__name__)
