"""Leaving the package: NIR (the field's interchange format) and the integer chip format.

- :func:`to_nir` / :func:`save_nir` / :func:`from_nir`: a float (or quantized) spiketriton model to
  and from a ``nir.NIRGraph`` (needs ``pip install spiketriton[export]``, i.e. the ``nir`` package).
  A NIR file is untrusted input: it is parsed in a child process under time and memory limits, and
  every damaged, malformed or unrunnable file or graph is a :class:`NIRFormatError` (a ValueError).
- :func:`save_chip` / :func:`load_chip`: a quantized model to one file (JSON manifest + safetensors,
  integers only), and back as a :class:`ChipProgram` whose ``run`` is an integer simulator
  independent of the Triton kernels.
"""

from ._graph import ExportError
from .chip import CHIP_FORMAT, CHIP_FORMAT_VERSION, ChipFormatError, ChipProgram, load_chip, save_chip
from .nir_format import NIRFormatError, from_nir, save_nir, to_nir

__all__ = ["to_nir", "save_nir", "from_nir", "NIRFormatError", "save_chip", "load_chip", "ChipProgram", "ChipFormatError",
           "CHIP_FORMAT", "CHIP_FORMAT_VERSION", "ExportError"]
