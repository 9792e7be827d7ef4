"""Quantization for spiking models (issue 4, in progress).

What exists so far: the quantizer primitives (``quantizer.py``) and, in ``spiketriton.kernels``,
the integer kernels that quantized inference runs on (``spike_matmul_int``: int8 weights x packed
spikes -> exact int32; ``neuron_int``: the integer family-B neuron with int28 saturation). The
QModel / QLinear / QConv2d / QLIF flow (prepare, calibration, quantize, aware, save/load) is not
built yet.
"""

from .quantizer import check_bits, fake_quant, floor_ste, qmax, quantize, round_ste, weight_scale

__all__ = ["check_bits", "fake_quant", "floor_ste", "qmax", "quantize", "round_ste", "weight_scale"]
