"""Quantization for spiking models: post-training quantization and quantization-aware training down
to integer-exact spiking inference (see model.py for the flow, modules.py for the modes)."""

from .model import FORMAT, FORMAT_VERSION, PreparedModel, QModel, QuantFormatError, load_quantized_model, prepare
from .modules import AWARE, FLOAT, QUANTIZED, QConv2d, QLIF, QLinear, QuantConfig
from .quantizer import check_bits, fake_quant, floor_ste, qmax, quantize, round_ste, weight_scale

__all__ = [
    "QModel", "PreparedModel", "prepare", "load_quantized_model", "QuantFormatError", "QLinear", "QConv2d", "QLIF", "QuantConfig",
    "FLOAT", "AWARE", "QUANTIZED", "FORMAT", "FORMAT_VERSION",
    "check_bits", "fake_quant", "floor_ste", "qmax", "quantize", "round_ste", "weight_scale",
]
