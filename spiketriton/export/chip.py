"""The chip format: a quantized model as one file of integers, and an integer simulator that runs it.

``save_chip(qmodel, path, sample_input)`` writes a quantized :class:`~spiketriton.quant.QModel`
(``qmodel.quantize()`` done) to one safetensors file; ``load_chip(path)`` validates it and returns a
:class:`ChipProgram` whose ``run(x_seq)`` is an integer simulator in plain numpy int64, independent
of spiketriton's torch code and Triton kernels, whose output equals the quantized model's bit for bit.

The file (format ``"spiketriton.chip"``, version 1) is a safetensors file. Its tensors are
integers only: ``layers.<i>.weight`` (int8), ``layers.<i>.bias`` (int32, values in int28) and, for a
neuron whose layer has per-channel scales, ``layers.<i>.<constant>`` (int32, int28 values, a shape
that broadcasts against the neuron's per-sample shape). The safetensors metadata key
``"spiketriton.chip"`` holds the manifest, a JSON object:

- ``format``, ``version``, ``producer``; ``input_shape`` / ``output_shape`` (one time step of one
  sample: no T, no batch); ``output``: what ``run`` returns: ``"spikes"`` (0/1 in float32),
  ``"counts"`` (spike counts of a sum pooling, float32) or ``"real"`` (a readout in real units);
- ``input_bits`` (8: an encoding layer's input is int8) and ``state_bits`` (28: currents, biases and
  neuron state saturate to int28);
- ``tensors``: ``{key: {"dtype": "int8" | "int32", "shape": [...]}}`` for every tensor of the file,
  and ``tensor_sha256``: a SHA-256 over the tensors (name, dtype, shape and little-endian bytes, in
  name order), so that corrupted data is detected;
- ``manifest_sha256``: a SHA-256 over the manifest itself, so that a corrupted manifest is detected:
  of the canonical JSON of the manifest without this field (``json.dumps(m, sort_keys=True,
  separators=(",", ":"), ensure_ascii=True)``: keys sorted, no whitespace, numbers as Python writes
  them, e.g. ``0.001``, ``1e-07``, ``255.0``), UTF-8 encoded;
- ``layers``: the chain in order. Every entry has ``kind``, ``name`` (the module's name in the
  model), ``in_shape``, ``out_shape``, and per kind:

  - ``linear`` (``in_features``, ``out_features``) and ``conv2d`` (``in_channels``,
    ``out_channels``, ``kernel_size``, ``stride``, ``padding``, ``dilation``, ``groups``; zero
    padding): ``bias``; ``input``: ``"spikes"`` (0/1 used as they are) or ``"int8"`` (an encoding
    layer: ``clamp(round(x * input_scale), -127, 127)``, round half to even, in float64);
    ``input_scale``; ``output``: ``"current"`` (the int28 current of the neuron that follows) or
    ``"real"`` (a readout: ``current / current_scale`` in float64, cast to ``output_dtype`` as torch
    casts: float16 through float32, two roundings);
    ``weight_bits`` (2..8: weights within +-(2^(bits-1) - 1)), ``per_channel``, ``pow2``,
    ``even_shift``; ``w_scale`` and ``current_scale`` (``S = w_scale`` times ``input_scale`` for an
    encoding layer; a number, or one per output channel): real value = integer / scale. The
    simulator reads ``S`` of a readout only; the rest documents the integers, and is checked for
    consistency all the same (``even_shift`` needs ``pow2``; with ``pow2`` every ``w_scale`` is a power
    of two, with an even exponent under ``even_shift``; ``S`` equals ``w_scale`` (times
    ``input_scale``) within a relative ``SCALE_RTOL``: the model multiplies in float32).
  - ``neuron``: the quantized family-B neuron (``reference/neuron_int.py``): ``reset_mode``
    (``"hard"``, ``"soft"``, ``"soft_constant"``), ``per_channel``, ``constants``: ``alpha_q``,
    ``v_th_alpha_q`` (leaks ``q / 256``, q in [0, 256]), ``ref_len`` and, unless per channel (then
    they are tensors), the int28 integers ``v_th0``, ``v_reset``, ``v_init``, ``v_l``, ``dv``,
    ``beta_q``, ``v_th_beta_q``, ``v_th_incre`` in the units of the feeding layer's current.
  - ``flatten`` (``start_dim``, ``end_dim`` of the per-sample shape) and ``sumpool2d``
    (``kernel_size``, ``stride``, ``padding``: sums of spikes or counts, zero padding, floor mode);
  - ``maxpool2d`` (``kernel_size``, ``stride``, ``padding``): max pooling of spikes, their OR (1 where
    the window holds a spike), zero padding at most half the kernel, floor mode; its input must be
    spikes and its output is spikes. (A reader without this kind rejects such a file by its kind.)

Loading parses the safetensors header itself and checks it against the file size and the limits
below before anything is allocated, never unpickles nor evaluates anything, and rejects every
inconsistency with its own :class:`ChipFormatError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from typing import Optional

import numpy as np

from .._files import open_regular, write_atomic
from . import _chipsim as sim
from ._graph import ExportError, _pair, trace_steps

__all__ = ["save_chip", "load_chip", "ChipProgram", "ChipFormatError", "CHIP_FORMAT", "CHIP_FORMAT_VERSION"]

CHIP_FORMAT = "spiketriton.chip"
CHIP_FORMAT_VERSION = 1
META_KEY = CHIP_FORMAT  # the safetensors metadata key that holds the manifest

# Limits (module constants: read at each call). A file beyond them is rejected before its data is read.
MAX_HEADER_BYTES = 1 << 24       # safetensors header (JSON, manifest included): 16 MiB
MAX_TENSOR_ELEMENTS = 1 << 27    # one tensor: 128 Mi elements (an int8 weight of 128 MiB)
MAX_TOTAL_ELEMENTS = 1 << 28     # all tensors together: 256 Mi elements (at most 1 GiB of int32)
MAX_LAYERS = 1024                # entries of the layer chain
MAX_RANK = 8                     # dimensions of a per-sample shape or of a tensor
MAX_FEATURES = 1 << 24           # elements of one sample at one step, at any point of the chain (padding included)
MAX_IM2COL = 1 << 25             # a convolution's im2col matrix for one sample (C_in*kh*kw*Ho*Wo; 256 MiB of int64)
MAX_POOL_TERMS = 1 << 25         # a sum pooling's terms for one sample (C*kh*kw*Ho*Wo: the work of summing each window)
MAX_NAME = 1024                  # characters of a name or of the producer string
MAX_RUN_ELEMENTS = 1 << 27       # run(): T * B * features of the largest value of the chain, a zero-padded
                                 # convolution / pooling input included (1 GiB of int64)

SCALE_RTOL = 1e-6                # current_scale against w_scale (x input_scale): float32 rounding is 6e-8 relative

INPUT_BITS = 8
STATE_BITS = 28
STATE_CONSTANTS = ("v_th0", "v_reset", "v_init", "v_l", "dv", "beta_q", "v_th_beta_q", "v_th_incre")  # int28
SCALAR_CONSTANTS = ("alpha_q", "v_th_alpha_q", "ref_len")
RESET_MODES = ("hard", "soft", "soft_constant")  # spiketriton.spec RESET_HARD, RESET_SOFT, RESET_SOFT_CONSTANT
OUTPUT_KINDS = ("spikes", "counts", "real")
OUTPUT_DTYPES = ("float16", "float32", "float64")
_ST_DTYPES = {"I8": "int8", "I32": "int32"}  # safetensors dtype names -> manifest dtype names
_ITEMSIZE = {"int8": 1, "int32": 4}

_COMMON = ("kind", "name", "in_shape", "out_shape")
_QUANT = ("bias", "input", "input_scale", "output", "output_dtype", "weight_bits", "per_channel", "pow2",
          "even_shift", "w_scale", "current_scale")
LAYER_FIELDS = {
    "linear": _COMMON + ("in_features", "out_features") + _QUANT,
    "conv2d": _COMMON + ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
    + _QUANT,
    "neuron": _COMMON + ("reset_mode", "per_channel", "constants"),
    "flatten": _COMMON + ("start_dim", "end_dim"),
    "sumpool2d": _COMMON + ("kernel_size", "stride", "padding"),
    "maxpool2d": _COMMON + ("kernel_size", "stride", "padding"),
}
MANIFEST_FIELDS = ("format", "version", "producer", "input_shape", "output_shape", "output", "input_bits",
                   "state_bits", "tensors", "tensor_sha256", "layers", "manifest_sha256")
_INT_MAX = (1 << 31) - 1  # any size, stride, ... of the manifest


class ChipFormatError(ValueError):
    """A chip file (or a manifest) that is malformed, inconsistent, beyond the limits or corrupted."""


# ============================================================================================= #
# save
# ============================================================================================= #


def save_chip(qmodel, path, sample_input) -> dict:
    """Write the quantized ``qmodel`` to ``path`` as a chip file; returns the manifest.

    ``sample_input [T, B, *features]`` gives the input's per-sample shape (its values are not used).
    The model must be a :class:`~spiketriton.quant.QModel` in quantized mode (``qmodel.quantize()``)
    made of one chain of QLinear / QConv2d layers, QLIF neurons (each fed directly by its layer),
    Flatten, Identity/Dropout, sum pooling (``nn.AvgPool2d(k, divisor_override=1)``,
    :class:`~spiketriton.SpikeSumPool2d`) and max pooling (``nn.MaxPool2d``,
    :class:`~spiketriton.SpikeMaxPool2d`: an OR) of spikes,
    each layer and neuron module called once per step; anything else is an :class:`ExportError`
    naming the module. The file is checked by the loader's
    own checks before it is written, and written atomically (an existing file is replaced only by a
    complete new one).
    """
    _check_path(path, "save_chip")
    manifest, tensors = _build(qmodel, sample_input)
    data = _serialize(manifest, tensors)
    _parse(data, "save_chip")  # exactly the bytes about to be written pass load_chip's checks
    write_atomic(path, data, "save_chip")
    return manifest


def _build(qmodel, sample_input):
    from .. import __version__
    from ..quant.model import QModel, _Prepared
    from ..quant.modules import QLIF, QUANTIZED, _QLayer

    if not isinstance(qmodel, QModel):
        raise TypeError(f"save_chip: qmodel must be a spiketriton.quant.QModel (from quant.prepare(model)) in "
                        f"quantized mode, got {type(qmodel).__name__}")
    modes = {m.mode for m in qmodel.modules() if isinstance(m, (_QLayer, QLIF))}
    if modes != {QUANTIZED}:
        raise ExportError(f"save_chip: the model is in {'/'.join(sorted(modes)) or 'no quantization'} mode; the chip "
                          f"runs the integers of quantized mode: run the flow up to qmodel.quantize() first")
    for name, m in qmodel.named_modules():
        if isinstance(m, QLIF) and m.feeder is None:
            raise ExportError(f"save_chip: {name}: the QLIF is not linked to the layer feeding it (its integer "
                              f"constants are in the units of that layer's current): run qmodel.collect_q_params()")
    # prepare()'s wrapper is traced through its net: name the modules as qmodel.named_modules() does
    root, prefix = (qmodel.net, "net.") if isinstance(qmodel, _Prepared) else (qmodel, "")
    steps = trace_steps(root, sample_input, "save_chip")
    layers, tensors = [], {}
    kind, feeder = "real", None  # the kind of value on the chain; the layer whose current it is
    called = {}  # id(module) -> name, for the layers and neurons already on the chain
    for step in steps[1:-1]:
        i, name = len(layers), prefix + step.name
        entry = {"kind": step.kind, "name": name, "in_shape": list(step.in_shape), "out_shape": list(step.out_shape)}
        m = step.module
        if step.kind in ("linear", "conv2d", "neuron"):
            if id(m) in called:
                raise ExportError(
                    f"save_chip: {name}: the module is called twice in the forward; the chip's layers are separate "
                    f"units (each neuron with its own state, each layer with its own integers and link to its "
                    f"neuron), while the model's calls share one {'state' if step.kind == 'neuron' else 'module'}: "
                    f"give each call its own module")
            called[id(m)] = name
        if step.kind in ("linear", "conv2d"):
            if not isinstance(m, _QLayer):
                raise ExportError(f"save_chip: {name}: {type(m).__name__} is a float layer; the chip runs integers "
                                  f"only (quant.prepare() turns Linear/SpikeLinear/Conv2d into QLinear/QConv2d)")
            entry.update(_layer_entry(m, name, step.kind, kind))
            tensors[f"layers.{i}.weight"] = m.weight_int.detach().cpu().numpy()
            if m.bias is not None:
                tensors[f"layers.{i}.bias"] = m.bias_int.detach().cpu().numpy()
            kind, feeder = ("current", m) if m.feeds_neuron else ("real", None)
        elif step.kind == "neuron":
            if not isinstance(m, QLIF):
                raise ExportError(f"save_chip: {name}: {type(m).__name__} is a float neuron; the chip runs QLIF's "
                                  f"integer neuron (quant.prepare() converts IF/LIF/PLIF/ExtendedLIF)")
            if kind != "current" or m.feeder is None or m.feeder is not feeder:
                raise ExportError(f"save_chip: {name}: the QLIF is not linked to a QLinear/QConv2d right before it "
                                  f"(through reshapes at most); its integer constants are in the units of that layer's "
                                  f"current: build the model with quant.prepare() and run collect_q_params()")
            entry.update(_neuron_entry(m, name, step.in_shape, tensors, i))
            kind, feeder = "spikes", None
        elif step.kind == "sumpool2d":
            if kind not in ("spikes", "counts"):
                raise ExportError(f"save_chip: {name}: sum pooling of {_WHAT[kind]} is not integer arithmetic on the "
                                  f"chip; pool spikes (after a neuron) only")
            entry.update(kernel_size=list(_pair(m.kernel_size)), stride=list(_pair(m.stride)),
                         padding=list(_pair(m.padding)))
            kind = "counts"
        elif step.kind == "maxpool2d":
            if kind != "spikes":
                raise ExportError(f"save_chip: {name}: max pooling of {_WHAT[kind]} is not an OR of spikes; pool spikes "
                                  f"(after a neuron) only")
            entry.update(kernel_size=list(_pair(m.kernel_size)), stride=list(_pair(m.stride)),
                         padding=list(_pair(m.padding)))
        elif step.kind == "avgpool2d":
            raise ExportError(f"save_chip: {name}: AvgPool2d averages, and fractions of spikes are not integers; use "
                              f"nn.AvgPool2d(k, divisor_override=1) (sum pooling: spike counts, exact on the chip)")
        elif step.kind == "flatten":
            entry.update(start_dim=step.start_dim, end_dim=step.end_dim)
        else:  # trace_steps' kinds are all handled above
            raise ExportError(f"save_chip: {name}: a {step.kind!r} step cannot be exported to the chip format")
        layers.append(entry)
    if not layers:
        raise ExportError("save_chip: the model has no layers to export")
    manifest = {
        "format": CHIP_FORMAT, "version": CHIP_FORMAT_VERSION, "producer": f"spiketriton {__version__}",
        "input_shape": list(steps[0].out_shape), "output_shape": list(steps[-1].in_shape), "output": kind,
        "input_bits": INPUT_BITS, "state_bits": STATE_BITS,
        "tensors": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in sorted(tensors.items())},
        "tensor_sha256": tensor_digest(tensors), "layers": layers,
    }
    manifest["manifest_sha256"] = manifest_digest(manifest)
    return manifest, tensors


_WHAT = {"real": "real values", "counts": "spike counts", "spikes": "spikes", "current": "an integer current"}


def _layer_entry(m, name, kind, input_kind) -> dict:
    if tuple(m.weight_int.shape) != tuple(m.weight.shape):
        raise ExportError(f"save_chip: {name}: no frozen integer weights; call qmodel.quantize()")
    if m.is_encoder:
        if input_kind not in ("real", "counts"):
            raise ExportError(f"save_chip: {name}: an encoding layer (int8 input) reads {_WHAT[input_kind]}")
        if not float(m.input_scale) > 0:
            raise ExportError(f"save_chip: {name}: an encoding layer without an input scale; calibrate the model")
    elif input_kind != "spikes":
        raise ExportError(f"save_chip: {name}: the layer is linked as reading spikes but reads {_WHAT[input_kind]}")
    S = m.current_scale().detach().cpu().double()
    entry = {}
    if kind == "linear":
        entry.update(in_features=m.in_features, out_features=m.out_features)
    else:
        entry.update(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=list(_pair(m.kernel_size)),
                     stride=list(_pair(m.stride)), padding=list(_pair(m.padding)), dilation=list(_pair(m.dilation)),
                     groups=m.groups)
    dtype = None
    if not m.feeds_neuron:
        dtype = str(m.weight.dtype).replace("torch.", "")
        if dtype not in OUTPUT_DTYPES:
            raise ExportError(f"save_chip: {name}: a readout in {dtype} (the layer's dtype) cannot be reproduced by "
                              f"the simulator; use {', '.join(OUTPUT_DTYPES)}")
    c = m.qconfig
    entry.update(bias=m.bias is not None, input="int8" if m.is_encoder else "spikes",
                 input_scale=float(m.input_scale) if m.is_encoder else None,
                 output="real" if dtype else "current", output_dtype=dtype, weight_bits=c.bits,
                 per_channel=S.dim() == 1, pow2=c.pow2, even_shift=c.even_shift,
                 w_scale=_floats(m.w_scale), current_scale=_floats(S))
    return entry


def _neuron_entry(m, name, in_shape, tensors, i) -> dict:
    S = m.feeder.current_scale().detach()
    try:
        c = m.int_constants(S, (1,) + tuple(in_shape))
    except (RuntimeError, ValueError) as e:
        raise ExportError(f"save_chip: {name}: {e}") from None
    per_channel = S.dim() == 1
    constants = {k: int(c[k]) for k in SCALAR_CONSTANTS}
    for k in STATE_CONSTANTS:
        if per_channel:
            tensors[f"layers.{i}.{k}"] = c[k].cpu().numpy().astype(np.int32)
        else:
            constants[k] = int(c[k])
    return {"reset_mode": RESET_MODES[m.spec.reset_mode], "per_channel": per_channel, "constants": constants}


def _floats(t):
    t = t.detach().cpu().double()
    return float(t) if t.dim() == 0 else [float(v) for v in t.tolist()]


def tensor_digest(tensors: dict) -> str:
    """SHA-256 over the tensors in name order: name, dtype, shape, then the little-endian bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(json.dumps([name, a.dtype.name, list(a.shape)]).encode() + b"\n")
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the canonical JSON of ``manifest`` without its ``manifest_sha256`` field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_sha256(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(ch in "0123456789abcdef" for ch in v)


def _serialize(manifest: dict, tensors: dict) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                metadata={META_KEY: json.dumps(manifest, allow_nan=False)})


# ============================================================================================= #
# load
# ============================================================================================= #


def load_chip(path) -> "ChipProgram":
    """Read and validate a chip file; returns a :class:`ChipProgram`. Every malformed, inconsistent,
    oversized, truncated or corrupted file raises :class:`ChipFormatError` saying what was wrong; a
    ``path`` that is not a str or os.PathLike is a ``TypeError``, a missing file ``FileNotFoundError``."""
    _check_path(path, "load_chip")
    where = f"load_chip: {os.fspath(path)}"
    limit = _max_file_bytes()
    try:  # regular files only: a FIFO would block, /dev/zero would read without end (its size is 0)
        fd = open_regular(path, "load_chip")
    except ValueError as e:
        raise ChipFormatError(str(e)) from None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ChipFormatError(f"{where}: the file has {size} bytes, beyond the limit of {limit} for a chip file")
        data = f.read(limit + 1)  # the file may have grown since: never more than the limit
    return _parse(data, where)


def _check_path(path, who: str) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{who}: path must be a str or os.PathLike, got {type(path).__name__}")


def _max_file_bytes() -> int:
    return 8 + MAX_HEADER_BYTES + 4 * MAX_TOTAL_ELEMENTS


def safetensors_header(data: bytes, fail, limit: int, kind: str):
    """The JSON header of a safetensors image (a dict) and its length ``n``: the 8-byte length field
    within ``limit`` and the bytes present, UTF-8, strict JSON (:func:`_json`). ``fail(msg)`` raises the
    reader's error type; ``kind`` names the format in its messages. Shared with the quantized format."""
    if len(data) < 8:
        fail(f"truncated: {len(data)} bytes, shorter than the 8-byte header length of a safetensors file "
             f"(not a readable {kind})")
    (n,) = struct.unpack("<Q", data[:8])
    if n > limit:
        fail(f"the header length field declares {n} bytes, beyond the limit of {limit} (not a {kind}, or a "
             f"corrupted one)")
    if 8 + n > len(data):
        fail(f"truncated: the header length field declares {n} bytes but only {len(data) - 8} follow it (not a "
             f"readable {kind})")
    try:
        text = data[8:8 + n].decode("utf-8")
    except UnicodeDecodeError:
        fail("the safetensors header is not UTF-8 text (corrupted)")
    header = _json(text, "the safetensors header", fail)
    if not isinstance(header, dict):
        fail(f"the safetensors header is a JSON {type(header).__name__}, expected an object")
    return header, n


def _parse(data: bytes, where: str) -> "ChipProgram":
    def fail(msg):
        raise ChipFormatError(f"{where}: {msg}")

    if len(data) > _max_file_bytes():
        fail(f"the file has more than {_max_file_bytes()} bytes, the limit for a chip file")
    header, n = safetensors_header(data, fail, MAX_HEADER_BYTES, "chip file")
    manifest = _manifest_of(header.pop("__metadata__", None), fail)
    entries = _tensor_entries(header, len(data) - 8 - n, fail)
    layers, table = _check_manifest(manifest, fail)
    _compare(entries, table, "the file", "the manifest", fail)
    arrays = _read_tensors(data, entries, fail)
    if tensor_digest(arrays) != manifest["tensor_sha256"]:
        fail("the tensor data does not match the manifest's tensor_sha256 (corrupted file)")
    _check_values(layers, arrays, fail)
    return ChipProgram(manifest, layers, arrays)


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _no_constant(name):
    raise ValueError(f"{name} is not a number in JSON")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} overflows a float")
    return value


def _json(text: str, what: str, fail):
    """Strict JSON: no NaN/Infinity, no overflowing numbers, no repeated keys; depth bounded by Python."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                          parse_float=_finite_float)
    except _DuplicateKey as e:
        fail(f"{what} repeats the key {str(e.args[0])[:80]!r} (ambiguous)")
    except RecursionError:
        fail(f"{what} is nested too deeply to be a chip file")
    except Exception as e:  # JSONDecodeError, and the ValueErrors raised by the hooks and by int()
        fail(f"{what} is not valid JSON: {str(e)[:200]}")


def _manifest_of(meta, fail) -> dict:
    if meta is None:
        fail(f"not a chip file: the safetensors header has no __metadata__ (the manifest lives under {META_KEY!r})")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        fail("the safetensors __metadata__ must map names to strings")
    raw = meta.get(META_KEY)
    if raw is None:
        try:
            other = json.loads(meta.get("spiketriton", "{}")).get("format")
        except Exception:  # anything unreadable is simply not a quant manifest
            other = None
        if other == "spiketriton.quant":
            fail("this is a spiketriton.quant file (a saved QModel), not a chip file: export it with save_chip, or "
                 "`python -m spiketriton export --chip OUT --model ... --weights FILE --input-shape ...`")
        fail(f"not a chip file: no {META_KEY!r} manifest in the safetensors metadata")
    manifest = _json(raw, "the manifest", fail)
    if not isinstance(manifest, dict):
        fail(f"the manifest is a JSON {type(manifest).__name__}, expected an object")
    fmt, version = manifest.get("format"), manifest.get("version")
    if fmt != CHIP_FORMAT:
        fail(f"the manifest's format is {_short(fmt)}, expected {CHIP_FORMAT!r}")
    if type(version) is not int or version != CHIP_FORMAT_VERSION:
        fail(f"format version {_short(version)} is not supported: this spiketriton reads version "
             f"{CHIP_FORMAT_VERSION}")
    if "manifest_sha256" not in manifest:
        fail("the manifest has no manifest_sha256 (its checksum)")
    if not _is_sha256(manifest["manifest_sha256"]):
        fail("manifest_sha256 must be 64 lowercase hexadecimal digits")
    try:
        digest = manifest_digest(manifest)
    except (ValueError, TypeError, RecursionError) as e:  # not expected of parsed JSON; still a format error
        fail(f"the manifest cannot be written as canonical JSON: {str(e)[:200]}")
    if digest != manifest["manifest_sha256"]:
        fail("the manifest does not match its manifest_sha256 (corrupted manifest)")
    return manifest


def _tensor_entries(header: dict, data_len: int, fail) -> dict:
    """The header's tensor entries as ``{name: (dtype, shape)}``, after checking dtypes, sizes against
    the limits and the data offsets against the data section (packed, no gaps, no trailing bytes)."""
    entries, spans, total = {}, [], 0
    for name, e in header.items():
        tag = f"tensor {name[:80]!r}"
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            fail(f"{tag}: a header entry needs exactly dtype, shape and data_offsets")
        dtype = _ST_DTYPES.get(e["dtype"]) if isinstance(e["dtype"], str) else None
        if dtype is None:
            fail(f"{tag}: dtype {_short(e['dtype'], 20)} is not one of the chip's integer types {sorted(_ST_DTYPES)}")
        shape = e["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_int(d) and d >= 0 for d in shape):
            fail(f"{tag}: shape must be a list of at most {MAX_RANK} non-negative integers, got {_short(shape)}")
        numel = math.prod(shape)
        if numel > MAX_TENSOR_ELEMENTS:
            fail(f"{tag} declares {numel} elements, beyond the limit of {MAX_TENSOR_ELEMENTS} per tensor")
        total += numel
        if total > MAX_TOTAL_ELEMENTS:
            fail(f"the tensors declare more than {MAX_TOTAL_ELEMENTS} elements in all (the limit)")
        offsets = e["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            fail(f"{tag}: data_offsets must be [begin, end] with 0 <= begin <= end, got {_short(offsets)}")
        if offsets[1] - offsets[0] != numel * _ITEMSIZE[dtype]:
            fail(f"{tag}: data_offsets span {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs "
                 f"{numel * _ITEMSIZE[dtype]}")
        entries[name] = (dtype, tuple(shape))
        spans.append((offsets[0], offsets[1], name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            fail(f"tensor {name[:80]!r}: its data starts at byte {begin} of the data section, expected {pos} "
                 f"(tensors are packed without gaps or overlaps)")
        pos = end
    if pos > data_len:
        fail(f"truncated: the tensors need {pos} bytes of data but the file holds {data_len}")
    if pos < data_len:
        fail(f"{data_len - pos} unexpected bytes after the last tensor's data (corrupted or appended to)")
    return entries


def _short(v, n=80) -> str:
    """repr of a value from the file, cut to ``n`` characters for the error message."""
    r = repr(v)
    return r if len(r) <= n else r[:n - 3] + "..."


def _is_int(v) -> bool:
    return type(v) is int


class _Fields:
    """Typed access to one JSON object of the manifest; every error names the object and the field."""

    def __init__(self, obj, ctx: str, fail, allowed):
        if not isinstance(obj, dict):
            fail(f"{ctx} must be a JSON object, got {type(obj).__name__}")
        missing = [k for k in allowed if k not in obj]
        extra = sorted(k for k in obj if k not in allowed)
        if missing:
            fail(f"{ctx}: missing field(s) {', '.join(missing)}")
        if extra:
            fail(f"{ctx}: unexpected field(s) {', '.join(k[:40] for k in extra[:5])}")
        self.obj, self.ctx, self._fail = obj, ctx, fail

    def fail(self, msg):
        self._fail(f"{self.ctx}: {msg}")

    def _bad(self, key, want):
        self.fail(f"{key} must be {want}, got {_short(self.obj[key])}")

    def int(self, key, lo=0, hi=_INT_MAX) -> int:
        v = self.obj[key]
        if not _is_int(v) or not lo <= v <= hi:
            self._bad(key, f"an integer in [{lo}, {hi}]")
        return v

    def bool(self, key) -> bool:
        v = self.obj[key]
        if type(v) is not bool:
            self._bad(key, "true or false")
        return v

    def choice(self, key, choices) -> str:
        v = self.obj[key]
        if not isinstance(v, str) or v not in choices:
            self._bad(key, f"one of {', '.join(choices)}")
        return v

    def name(self, key) -> str:
        v = self.obj[key]
        if not isinstance(v, str) or len(v) > MAX_NAME:
            self._bad(key, f"a string of at most {MAX_NAME} characters")
        return v

    def shape(self, key) -> tuple:
        v = self.obj[key]
        if not (isinstance(v, list) and 1 <= len(v) <= MAX_RANK and all(_is_int(d) and 1 <= d <= _INT_MAX for d in v)):
            self._bad(key, f"a list of 1 to {MAX_RANK} positive integers")
        if math.prod(v) > MAX_FEATURES:
            self.fail(f"{key} {v} has {math.prod(v)} elements per sample, beyond the limit of {MAX_FEATURES}")
        return tuple(v)

    def pair(self, key, lo) -> tuple:
        v = self.obj[key]
        if not isinstance(v, list) or len(v) != 2 or not all(_is_int(d) and lo <= d <= _INT_MAX for d in v):
            self._bad(key, f"a list of two integers >= {lo}")
        return tuple(v)

    def scale(self, key, channels: Optional[int]):
        """A positive finite number, or (channels given) a list of ``channels`` of them."""
        v = self.obj[key]
        ok = lambda s: type(s) in (int, float) and math.isfinite(s) and s > 0  # noqa: E731
        if channels is None:
            if not ok(v):
                self._bad(key, "a positive finite number")
            return float(v)
        if not isinstance(v, list) or len(v) != channels or not all(ok(s) for s in v):
            self._bad(key, f"a list of {channels} positive finite numbers (one per output channel)")
        return [float(s) for s in v]


def _check_manifest(manifest: dict, fail):
    """Schema and consistency of the manifest. Returns ``(layers, table)``: the layers as checked
    dicts (with the fields the simulator needs) and the tensor table ``{key: (dtype, shape)}``."""
    top = _Fields(manifest, "the manifest", fail, MANIFEST_FIELDS)
    top.name("producer")
    if top.int("input_bits", 0, 64) != INPUT_BITS:
        top.fail(f"input_bits is {manifest['input_bits']}; version {CHIP_FORMAT_VERSION} has int{INPUT_BITS} inputs")
    if top.int("state_bits", 0, 64) != STATE_BITS:
        top.fail(f"state_bits is {manifest['state_bits']}; version {CHIP_FORMAT_VERSION} saturates to int{STATE_BITS}")
    if not _is_sha256(manifest["tensor_sha256"]):
        top.fail("tensor_sha256 must be 64 lowercase hexadecimal digits")
    declared = _declared_table(manifest["tensors"], fail)
    raw_layers = manifest["layers"]
    if not isinstance(raw_layers, list) or not 1 <= len(raw_layers) <= MAX_LAYERS:
        top.fail(f"layers must be a list of 1 to {MAX_LAYERS} layers")
    shape, kind = top.shape("input_shape"), "real"
    layers, table = [], {}
    for i, raw in enumerate(raw_layers):
        ctx = f"layers[{i}]"
        if isinstance(raw, dict) and isinstance(raw.get("kind"), str) and isinstance(raw.get("name"), str):
            ctx = f"layers[{i}] ({raw['name'][:80]!r}, {raw['kind'][:20]})"
        if not isinstance(raw, dict):
            fail(f"{ctx} must be a JSON object, got {type(raw).__name__}")
        if not isinstance(raw.get("kind"), str) or raw["kind"] not in LAYER_FIELDS:  # (a list is not hashable)
            fail(f"{ctx}: unknown layer kind {_short(raw.get('kind'), 40)}; this version knows "
                 f"{', '.join(LAYER_FIELDS)}")
        f = _Fields(raw, ctx, fail, LAYER_FIELDS[raw["kind"]])
        f.name("name")
        in_shape, out_shape = f.shape("in_shape"), f.shape("out_shape")
        if in_shape != shape:
            f.fail(f"in_shape {list(in_shape)} does not match the previous output shape {list(shape)}")
        layer = {"kind": raw["kind"], "index": i, "ctx": ctx, "in_shape": in_shape, "out_shape": out_shape}
        kind = _CHECKS[raw["kind"]](f, layer, kind, table, declared, i)
        layers.append(layer)
        shape = out_shape
    if kind == "current":
        top.fail("the last layer outputs an integer current that no neuron consumes")
    if top.shape("output_shape") != shape:
        top.fail(f"output_shape {manifest['output_shape']} does not match the last layer's output {list(shape)}")
    if top.choice("output", OUTPUT_KINDS) != kind:
        top.fail(f"output is {manifest['output']!r} but the chain ends with {_WHAT[kind]} ({kind!r})")
    _compare(declared, table, "the manifest's tensor table", "the layers", fail)
    return layers, table


def _declared_table(tensors, fail) -> dict:
    if not isinstance(tensors, dict):
        fail("the manifest: tensors must be a JSON object {key: {dtype, shape}}")
    out = {}
    for key, e in tensors.items():
        f = _Fields(e, f"the manifest's tensor {key[:80]!r}", fail, ("dtype", "shape"))
        dtype = f.choice("dtype", tuple(_ITEMSIZE))
        shape = e["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_int(d) and d >= 0 for d in shape):
            f.fail(f"shape must be a list of at most {MAX_RANK} non-negative integers")
        out[key] = (dtype, tuple(shape))
    return out


def _compare(have: dict, want: dict, have_name: str, want_name: str, fail):
    """``want`` (what the consumer expects) against ``have``: missing, extra, dtype, shape."""
    missing = sorted(set(want) - set(have))
    if missing:
        fail(f"missing tensor(s) {', '.join(k[:80] for k in missing[:5])}: declared by {want_name}, absent from "
             f"{have_name}")
    extra = sorted(set(have) - set(want))
    if extra:
        fail(f"unexpected tensor(s) {', '.join(k[:80] for k in extra[:5])} in {have_name} (not declared by "
             f"{want_name})")
    for key in sorted(want):
        (hd, hs), (wd, ws) = have[key], want[key]
        if hd != wd:
            fail(f"tensor {key}: {have_name} has dtype {hd}, {want_name} declare(s) {wd}")
        if hs != ws:
            fail(f"tensor {key}: {have_name} has shape {list(hs)}, {want_name} declare(s) {list(ws)}")


def _check_quant(f, layer, kind_in, table, i, out_channels, weight_shape) -> str:
    """The fields shared by linear and conv2d; returns the kind of the layer's output."""
    bits = f.int("weight_bits", 2, 8)
    per_channel = f.bool("per_channel")
    pow2, even_shift = f.bool("pow2"), f.bool("even_shift")
    if even_shift and not pow2:
        f.fail("even_shift is true but pow2 is false (an even shift constrains a power-of-two scale)")
    channels = out_channels if per_channel else None
    w_scale = f.scale("w_scale", channels)
    for s in (w_scale if per_channel else [w_scale]):
        mantissa, exponent = math.frexp(s)  # s = mantissa * 2^exponent, mantissa in [0.5, 1)
        if pow2 and (mantissa != 0.5 or (even_shift and (exponent - 1) % 2)):
            f.fail(f"w_scale {s!r} is not a power of two{' with an even exponent' if even_shift else ''}, but "
                   f"pow2 is true{' with even_shift' if even_shift else ''}")
    S = f.scale("current_scale", channels)
    if f.choice("input", ("spikes", "int8")) == "int8":
        if kind_in not in ("real", "counts"):
            f.fail(f"an int8 input quantizes real values or spike counts, but the layer reads {_WHAT[kind_in]}")
        layer["input_scale"] = f.scale("input_scale", None)
    else:
        if kind_in != "spikes":
            f.fail(f"input is 'spikes' but the layer reads {_WHAT[kind_in]}")
        if f.obj["input_scale"] is not None:
            f.fail("input_scale must be null for a layer that reads spikes")
        layer["input_scale"] = None
    # S = w_scale (* input_scale for an encoding layer), as the model computes it in float32: within a
    # relative 2^-24 of the float64 product; a larger difference is a file that contradicts itself
    enc = layer["input_scale"]
    for s, c in zip(w_scale if per_channel else [w_scale], S if per_channel else [S]):
        if not math.isclose(c, s * enc if enc is not None else s, rel_tol=SCALE_RTOL, abs_tol=0.0):
            f.fail(f"current_scale {c!r} is not w_scale {s!r}{f' x input_scale {enc!r}' if enc is not None else ''} "
                   f"(within a relative {SCALE_RTOL})")
    if f.choice("output", ("current", "real")) == "real":
        layer["readout"] = (np.asarray(S, dtype=np.float64), f.choice("output_dtype", OUTPUT_DTYPES))
    else:
        if f.obj["output_dtype"] is not None:
            f.fail("output_dtype must be null for a layer whose output is a current")
        layer["readout"] = None
    layer["bits"] = bits
    table[f"layers.{i}.weight"] = ("int8", weight_shape)
    if f.bool("bias"):
        table[f"layers.{i}.bias"] = ("int32", (out_channels,))
    layer["bias"] = f.obj["bias"]
    return "real" if layer["readout"] is not None else "current"


def _check_linear(f, layer, kind_in, table, declared, i) -> str:
    k, n = f.int("in_features", 1), f.int("out_features", 1)
    if layer["in_shape"][-1] != k:
        f.fail(f"in_features is {k} but in_shape {list(layer['in_shape'])} ends with {layer['in_shape'][-1]}")
    if layer["out_shape"] != layer["in_shape"][:-1] + (n,):
        f.fail(f"out_shape {list(layer['out_shape'])} is not in_shape with its last dimension replaced by "
               f"out_features = {n}")
    return _check_quant(f, layer, kind_in, table, i, n, (n, k))


def _check_conv2d(f, layer, kind_in, table, declared, i) -> str:
    c_in, c_out, groups = f.int("in_channels", 1), f.int("out_channels", 1), f.int("groups", 1)
    kernel, stride = f.pair("kernel_size", 1), f.pair("stride", 1)
    padding, dilation = f.pair("padding", 0), f.pair("dilation", 1)
    if c_in % groups or c_out % groups:
        f.fail(f"groups = {groups} must divide in_channels = {c_in} and out_channels = {c_out}")
    out_hw = _window_shape(f, layer, c_in, kernel, stride, padding, dilation)
    if layer["out_shape"] != (c_out,) + out_hw:
        f.fail(f"out_shape {list(layer['out_shape'])}, but the convolution gives {[c_out, *out_hw]}")
    im2col = c_in * kernel[0] * kernel[1] * out_hw[0] * out_hw[1]
    if im2col > MAX_IM2COL:
        f.fail(f"the convolution's im2col matrix has {im2col} elements per sample, beyond the limit of {MAX_IM2COL}")
    layer.update(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return _check_quant(f, layer, kind_in, table, i, c_out, (c_out, c_in // groups) + kernel)


def _window_shape(f, layer, channels, kernel, stride, padding, dilation) -> tuple:
    """Checks a [C, H, W] input of a conv/pool window and returns the output's (Ho, Wo)."""
    in_shape = layer["in_shape"]
    if len(in_shape) != 3 or in_shape[0] != channels:
        f.fail(f"in_shape {list(in_shape)} must be [C, H, W] with C = {channels}")
    padded = [s + 2 * p for s, p in zip(in_shape[1:], padding)]
    if channels * padded[0] * padded[1] > MAX_FEATURES:
        f.fail(f"the zero-padded input {[channels, *padded]} has more than {MAX_FEATURES} elements (the limit)")
    out = tuple((s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(padded, kernel, stride, dilation))
    if min(out) < 1:
        f.fail(f"the window {list(kernel)} (dilation {list(dilation)}) does not fit the padded input {padded}")
    return out


def _check_sumpool2d(f, layer, kind_in, table, declared, i) -> str:
    kernel, stride, padding = f.pair("kernel_size", 1), f.pair("stride", 1), f.pair("padding", 0)
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        f.fail(f"padding {list(padding)} must be at most half the kernel {list(kernel)}")
    if kind_in not in ("spikes", "counts"):
        f.fail(f"sum pooling needs spikes or spike counts, but the layer reads {_WHAT[kind_in]}")
    out_hw = _window_shape(f, layer, layer["in_shape"][0], kernel, stride, padding, (1, 1))
    if layer["out_shape"] != layer["in_shape"][:1] + out_hw:
        f.fail(f"out_shape {list(layer['out_shape'])}, but the pooling gives {[layer['in_shape'][0], *out_hw]}")
    terms = layer["in_shape"][0] * kernel[0] * kernel[1] * out_hw[0] * out_hw[1]
    if terms > MAX_POOL_TERMS:
        f.fail(f"the pooling sums {terms} terms per sample (channels x kernel x output positions), beyond the limit "
               f"of {MAX_POOL_TERMS}")
    layer.update(kernel=kernel, stride=stride, padding=padding)
    return "counts"


def _check_maxpool2d(f, layer, kind_in, table, declared, i) -> str:
    if kind_in != "spikes":
        f.fail(f"max pooling is an OR of spikes, but the layer reads {_WHAT[kind_in]}")
    _check_sumpool2d(f, layer, "spikes", table, declared, i)  # the same window fields and limits
    return "spikes"


def _check_flatten(f, layer, kind_in, table, declared, i) -> str:
    n = len(layer["in_shape"])
    start, end = f.int("start_dim", 0, n - 1), f.int("end_dim", 0, n - 1)
    s = layer["in_shape"]
    if start > end or layer["out_shape"] != s[:start] + (math.prod(s[start:end + 1]),) + s[end + 1:]:
        f.fail(f"out_shape {list(layer['out_shape'])} is not in_shape {list(s)} with dimensions {start}..{end} merged")
    return kind_in


def _check_neuron(f, layer, kind_in, table, declared, i) -> str:
    if kind_in != "current":
        f.fail(f"a neuron integrates the current of the layer right before it, but it receives {_WHAT[kind_in]}")
    if layer["out_shape"] != layer["in_shape"]:
        f.fail(f"out_shape {list(layer['out_shape'])} differs from in_shape {list(layer['in_shape'])}")
    layer["reset_mode"] = f.choice("reset_mode", RESET_MODES)
    per_channel = f.bool("per_channel")
    fields = SCALAR_CONSTANTS if per_channel else SCALAR_CONSTANTS + STATE_CONSTANTS
    c = _Fields(f.obj["constants"], f"{f.ctx}: constants", f._fail, fields)
    consts = {"alpha_q": c.int("alpha_q", 0, 256), "v_th_alpha_q": c.int("v_th_alpha_q", 0, 256),
              "ref_len": c.int("ref_len", 0, sim.INT28_MAX)}
    for k in STATE_CONSTANTS:
        if per_channel:
            key = f"layers.{i}.{k}"
            shape = declared.get(key, ("int32", None))[1]
            if shape is not None and not _broadcasts(shape, layer["in_shape"]):
                f.fail(f"the per-channel constant {key} has shape {list(shape)}, which does not broadcast to the "
                       f"neuron's shape {list(layer['in_shape'])}")
            table[key] = ("int32", shape)
        else:
            consts[k] = c.int(k, sim.INT28_MIN, sim.INT28_MAX)
    layer["constants"] = consts
    return "spikes"


def _broadcasts(shape, target) -> bool:
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


_CHECKS = {"linear": _check_linear, "conv2d": _check_conv2d, "neuron": _check_neuron, "flatten": _check_flatten,
           "sumpool2d": _check_sumpool2d, "maxpool2d": _check_maxpool2d}


def _read_tensors(data: bytes, entries: dict, fail) -> dict:
    """The tensors, read by safetensors from bytes already checked against the header and the limits."""
    from safetensors.numpy import load

    try:
        arrays = load(data)
    except Exception as e:  # the checks above make this unexpected; still a format error, not a crash
        fail(f"safetensors cannot read the tensors: {str(e)[:200]}")
    for key, (dtype, shape) in entries.items():
        a = arrays.get(key)
        if a is None or a.dtype.name != dtype or tuple(a.shape) != shape:
            fail(f"tensor {key[:80]!r} read back as something other than its header entry")
    return arrays


def _check_values(layers: list, arrays: dict, fail):
    lo, hi = sim.INT28_MIN, sim.INT28_MAX
    for layer in layers:
        i, ctx = layer["index"], layer["ctx"]
        if layer["kind"] in ("linear", "conv2d"):
            q = (1 << (layer["bits"] - 1)) - 1
            w = arrays[f"layers.{i}.weight"]
            if w.size and np.abs(w.astype(np.int64)).max() > q:
                fail(f"{ctx}: weight holds {int(np.abs(w.astype(np.int64)).max())}, beyond +-{q} for "
                     f"{layer['bits']}-bit weights")
            b = arrays.get(f"layers.{i}.bias")
            if b is not None and b.size and (b.min() < lo or b.max() > hi):
                fail(f"{ctx}: bias holds values beyond int28 [{lo}, {hi}]")
        elif layer["kind"] == "neuron":
            for k in STATE_CONSTANTS:
                a = arrays.get(f"layers.{i}.{k}")
                if a is not None and a.size and (a.min() < lo or a.max() > hi):
                    fail(f"{ctx}: the per-channel constant {k} holds values beyond int28 [{lo}, {hi}]")


# ============================================================================================= #
# the program
# ============================================================================================= #


class ChipProgram:
    """A validated chip file, ready to run (get one from :func:`load_chip`).

    ``run(x_seq)`` takes ``[T, B, *input_shape]`` (a torch tensor or a numpy array of real numbers:
    float input for the encoding layer, or 0/1 spikes) and returns a numpy array ``[T, B,
    *output_shape]``: the last neuron's spikes as float32 0/1 (``output == "spikes"``), spike counts
    as float32 (``"counts"``), or a readout in real units in the layer's dtype (``"real"``). The
    neurons' state carries from one ``run`` to the next, as in the quantized model, until
    :meth:`reset`. Everything is computed in numpy int64 (``_chipsim.py``).

    ``run`` checks, before it copies anything: a dense torch tensor (any device; a meta tensor has no
    values: ``ValueError``; sparse or nested: ``TypeError``) or a numpy array (not a masked one) of
    real numbers (bool, int or float; complex, object, strings, dates: ``TypeError``), of shape
    ``[T, B, *input_shape]`` (``T`` or ``B`` may be 0), within ``MAX_RUN_ELEMENTS``, and the batch
    size of the carried state. Then, in one pass over the float64 copy, that it holds no NaN
    (``+-inf`` saturate to +-127 at the int8 input, as in the quantized model). ``requires_grad`` is
    ignored (the program has no gradient).
    """

    def __init__(self, manifest: dict, layers: list, arrays: dict):
        self.manifest = manifest
        self.input_shape = tuple(manifest["input_shape"])
        self.output_shape = tuple(manifest["output_shape"])
        self.output = manifest["output"]
        self._ops = [_make_op(layer, arrays) for layer in layers]
        self._max_features = max([math.prod(self.input_shape)] + [_features(x) for x in layers])
        self._state: dict = {}
        self._batch: Optional[int] = None

    def reset(self) -> None:
        """Forget the neurons' state (the next run starts from v_init)."""
        self._state, self._batch = {}, None

    def run(self, x_seq) -> np.ndarray:
        x = self._input(x_seq)
        T, B = x.shape[:2]
        if self._batch is not None and B != self._batch:
            raise ValueError(f"ChipProgram.run: the carried state is for a batch of {self._batch}, the input has "
                             f"B = {B}; call reset() before a new batch size")
        value = x.reshape((T * B,) + self.input_shape)
        for op in self._ops:
            value = op(value, T, B, self._state)
        self._batch = B if self._state else self._batch
        out = value.reshape((T, B) + self.output_shape)
        return out.astype(np.float32) if self.output in ("spikes", "counts") else out

    def _input(self, x_seq) -> np.ndarray:
        """The input as a numpy array of real numbers, checked (type, layout, shape, size) before any copy."""
        want = f"[T, B, {', '.join(map(str, self.input_shape))}]"
        import torch  # (spiketriton imports it anyway)

        if isinstance(x_seq, torch.Tensor):
            if x_seq.layout != torch.strided or x_seq.is_nested:
                raise TypeError(f"ChipProgram.run: expected a dense (strided) tensor {want}, got a "
                                f"{'nested' if x_seq.is_nested else str(x_seq.layout).replace('torch.', '')} tensor; "
                                f"make it a regular tensor first (.to_dense() for a sparse one)")
            if x_seq.is_meta:
                raise ValueError(f"ChipProgram.run: the input is a meta tensor, which has a shape but no values; give "
                                 f"a tensor with data {want} (on any device)")
            if x_seq.is_complex() or x_seq.is_quantized:
                raise TypeError(f"ChipProgram.run: the input must hold real numbers (bool, int or float), got "
                                f"{x_seq.dtype}")
            self._check_shape(tuple(x_seq.shape), want)
            try:
                t = x_seq.detach().cpu().as_subclass(torch.Tensor)
                x_seq = (t.double() if t.is_floating_point() else t).numpy()  # exact: bf16/fp16/fp32 fit in fp64
            except (RuntimeError, TypeError, NotImplementedError) as e:
                raise TypeError(f"ChipProgram.run: cannot read the values of the input tensor ({type(x_seq).__name__}, "
                                f"{x_seq.dtype}, on {x_seq.device}): {str(e).splitlines()[0][:200]}") from None
        elif isinstance(x_seq, np.ma.MaskedArray):
            raise TypeError("ChipProgram.run: a masked array has entries without a value; fill them first "
                            "(x.filled(...)) or pass x.data")
        elif isinstance(x_seq, np.ndarray):
            x_seq = np.asarray(x_seq)  # (an ndarray subclass as a plain array)
            if x_seq.dtype.kind not in "biuf":
                raise TypeError(f"ChipProgram.run: the input must hold real numbers (bool, int or float), got "
                                f"{x_seq.dtype}")
            self._check_shape(x_seq.shape, want)
        else:
            raise TypeError(f"ChipProgram.run: expected a torch.Tensor or numpy array {want}, got "
                            f"{type(x_seq).__name__}")
        if x_seq.dtype.kind == "f" and np.isnan(x_seq).any():
            raise ValueError("ChipProgram.run: the input holds NaN, which has no integer value")
        return x_seq

    def _check_shape(self, shape: tuple, want: str) -> None:
        if len(shape) != 2 + len(self.input_shape) or tuple(shape[2:]) != self.input_shape:
            raise ValueError(f"ChipProgram.run: expected input {want}, got shape {shape}")
        T, B = shape[:2]
        if T * B * self._max_features > MAX_RUN_ELEMENTS:
            raise ValueError(f"ChipProgram.run: T*B*features = {T}*{B}*{self._max_features} exceeds the limit of "
                             f"{MAX_RUN_ELEMENTS} elements per value (the chain's largest value, zero-padded inputs "
                             f"included); run shorter pieces (the state carries across calls) or smaller batches")

    def __repr__(self) -> str:
        kinds = ", ".join(op.kind for op in self._ops)
        return (f"ChipProgram({self.manifest['format']} v{self.manifest['version']}: {list(self.input_shape)} -> "
                f"{list(self.output_shape)} {self.output}; {kinds})")


def _features(layer) -> int:
    """Elements per sample of a layer's output, or of its zero-padded input where that is larger."""
    n = math.prod(layer["out_shape"])
    if "padding" in layer:  # conv2d / sumpool2d: [C, H, W] padded as a whole
        n = max(n, sim._padded(layer["in_shape"], layer["padding"]))
    return n


class _Op:
    kind = ""

    def __init__(self, layer, arrays):
        self.out_shape = layer["out_shape"]
        i = layer["index"]
        self.w = arrays.get(f"layers.{i}.weight")
        self.w = self.w.astype(np.int64) if self.w is not None else None
        b = arrays.get(f"layers.{i}.bias")
        self.b = b.astype(np.int64) if b is not None else None
        self.layer = layer


class _Dense(_Op):
    """linear / conv2d: integer input, int64 product, int28 current or a real-unit readout."""

    def __init__(self, layer, arrays):
        super().__init__(layer, arrays)
        self.kind = layer["kind"]
        self.scale = layer["input_scale"]
        self.readout = layer["readout"]
        if self.readout is not None and self.kind == "conv2d" and self.readout[0].ndim == 1:
            self.readout = (self.readout[0].reshape(-1, 1, 1), self.readout[1])

    def __call__(self, x, T, B, state):
        x = sim.quantize_input(x, self.scale) if self.scale is not None else x
        if self.kind == "linear":
            u = sim.linear(x, self.w, self.b)
        else:
            L = self.layer
            u = sim.conv2d(x, self.w, self.b, L["stride"], L["padding"], L["dilation"], L["groups"])
        return sim.readout(u, *self.readout) if self.readout is not None else u


class _Neuron(_Op):
    kind = "neuron"

    def __init__(self, layer, arrays):
        super().__init__(layer, arrays)
        i = layer["index"]
        self.c = dict(layer["constants"])
        for k in STATE_CONSTANTS:
            if f"layers.{i}.{k}" in arrays:
                self.c[k] = arrays[f"layers.{i}.{k}"].astype(np.int64)
        self.reset_mode, self.index = layer["reset_mode"], i

    def __call__(self, u, T, B, state):
        shape = (B,) + self.out_shape
        if self.index in state:
            v, a, ref = state[self.index]
        else:
            v = np.broadcast_to(np.asarray(self.c["v_init"], dtype=np.int64), shape).copy()
            a, ref = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
        spikes, v, a, ref = sim.neuron_steps(u.reshape((T,) + shape), v, a, ref, self.c, self.reset_mode)
        state[self.index] = (v, a, ref)
        return spikes.reshape((T * B,) + self.out_shape)


class _Flatten(_Op):
    kind = "flatten"

    def __call__(self, x, T, B, state):
        return x.reshape((x.shape[0],) + self.out_shape)


class _SumPool(_Op):
    kind = "sumpool2d"

    def __call__(self, x, T, B, state):
        L = self.layer
        return sim.sum_pool2d(x, L["kernel"], L["stride"], L["padding"])


class _MaxPool(_Op):
    kind = "maxpool2d"

    def __call__(self, x, T, B, state):
        L = self.layer
        return sim.or_pool2d(x, L["kernel"], L["stride"], L["padding"])


def _make_op(layer, arrays) -> _Op:
    return {"linear": _Dense, "conv2d": _Dense, "neuron": _Neuron, "flatten": _Flatten,
            "sumpool2d": _SumPool, "maxpool2d": _MaxPool}[layer["kind"]](layer, arrays)
