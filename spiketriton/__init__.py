"""spiketriton: spiking neural network layers on Triton kernels."""

from . import functional, surrogate
from .spec import ResetMode

__version__ = "0.1.0"
