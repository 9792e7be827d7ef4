"""QModel: the quantization flow (HNN style) over a network of QLinear / QConv2d / QLIF.

    qmodel = spiketriton.quant.prepare(model)   # or: class Net(QModel) built with the Q modules
    qmodel.collect_q_params()                   # link layers and neurons, start calibration
    for x in calibration_batches: qmodel(x)     # needed when the first layer reads non-spike input
    qmodel.calculate_q_params()                 # weight scales, encoder input scales
    qmodel.quantize()                           # integer inference
    qmodel.aware()                              # or: quantization-aware training (fake-quant, STE)
    qmodel.restore_float()                      # back to float
    qmodel.save_quantized_model("net.safetensors"); load_quantized_model("net.safetensors", qmodel)

The forward stays the float one: the scales travel from each layer to the neuron it feeds through
the links that ``collect_q_params`` finds (torch.fx; where fx cannot trace, the order of plain
``nn.Sequential`` containers, read through the plain containers and StepWise inside them, never that of a
Sequential subclass with its own forward). A layer reads spikes when a neuron's output reaches it through
reshapes and max poolings (an OR of spikes); otherwise it is an encoding layer (int8 input).

Calibration refuses, at ``calculate_q_params``, an encoding layer that saw no data, NaN or +-inf
(they stick in the running maximum, so the calibration forwards stay free of host syncs), only zeros,
and scales outside float32's normal range; weights or biases with NaN/inf are refused there and at
``quantize()``, naming the layer. Files: see :func:`load_quantized_model` (format version 2, with
checksums; every bad file is a :class:`QuantFormatError`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
import math
import os
from typing import Optional

import torch
from torch import nn

from .._files import open_regular, write_atomic
from ..ann2snn import _fold_in
from ..conv import SpikeConv2d
from ..layers import SpikeLinear, _is_spike_max_pool, _takes_images, is_plain_container
from ..neuron import IF, LIF, PLIF, BaseNeuron, ExtendedLIF
from ..spec import RESET_HARD
from ..spec import INT28_MAX
from .modules import AWARE, FLOAT, QUANTIZED, QConv2d, QLinear, QLIF, QuantConfig, _QLayer, integer_params
from .quantizer import qmax, weight_scale

__all__ = ["QModel", "PreparedModel", "prepare", "load_quantized_model", "QuantFormatError", "FORMAT",
           "FORMAT_VERSION"]

FORMAT = "spiketriton.quant"
FORMAT_VERSION = 2  # 2: checksums (tensor_sha256, manifest_sha256), the tensor table, producer
_SHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)
_SHAPE_METHODS = {"flatten", "reshape", "view", "squeeze", "unsqueeze", "contiguous", "unflatten"}


class QModel(nn.Module):
    """Base class of quantizable networks (subclass it, or get one from :func:`prepare`)."""

    _q_calculated = False

    # -- the flow ----------------------------------------------------------------------------
    def collect_q_params(self) -> None:
        """Link every layer to the neuron it feeds, mark encoding layers, and start recording
        calibration statistics (largest ``|input|`` of each encoding layer) during float forwards."""
        self._link()
        self._set_mode(FLOAT)
        for layer in self._layers():
            layer.start_collecting()
        self._q_calculated = False
        self._collected = True

    def calculate_q_params(self) -> None:
        """Compute the weight scales and, from the calibration data, the encoder input scales."""
        if not getattr(self, "_collected", False):
            raise RuntimeError("calculate_q_params() before collect_q_params(): call collect_q_params(), run "
                               "calibration batches, then calculate_q_params()")
        for layer in self._layers():
            layer.calculate()
            layer.collecting = False
        self._q_calculated = True

    def quantize(self) -> "QModel":
        """Switch to integer inference (int8 weights, int32 currents, integer neurons)."""
        self._require_calculated("quantize()")
        for layer in self._layers():
            layer.w_scale = layer.live_weight_scale()  # the current weights (QAT may have moved them)
            layer.check_scales(layer.w_scale)
            layer.mode = QUANTIZED
            layer.freeze_integers()
        self._set_mode(QUANTIZED)
        return self

    def aware(self) -> "QModel":
        """Switch to quantization-aware training (its forward equals quantize()'s, with gradients)."""
        self._require_calculated("aware()")
        self._set_mode(AWARE)
        return self

    def restore_float(self) -> "QModel":
        self._set_mode(FLOAT)
        return self

    @property
    def q_mode(self) -> str:
        modes = {m.mode for m in self.modules() if isinstance(m, (_QLayer, QLIF))}
        return modes.pop() if len(modes) == 1 else FLOAT

    def reset(self) -> None:
        for m in self.modules():
            if isinstance(m, (QLIF, BaseNeuron)):
                m.reset()

    # -- save / load ------------------------------------------------------------------------------
    def save_quantized_model(self, path) -> None:
        """One safetensors file: the state (float weights, int8 weights, int32 biases, scales) and a
        JSON manifest with checksums (see :func:`load_quantized_model` for the format). No pickle.
        Written atomically (a temporary file, fsync, rename): a failed write leaves no partial file.
        Runs the loader's value checks first and refuses (ValueError) what the loader would refuse:
        NaN or inf in a layer's weights, bias or scales, or in quantized mode float weights changed
        since ``quantize()`` (the saved integers would not be theirs)."""
        from safetensors.torch import save

        from ..export.chip import manifest_digest, tensor_digest

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"save_quantized_model: path must be a str or os.PathLike, got {type(path).__name__}")
        self._require_calculated("save_quantized_model()")
        self._link()  # names and links as the loader will see them
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

        def fail(msg):
            raise ValueError(f"save_quantized_model: {msg} (the loader would refuse the file; after changing "
                             f"weights, run calculate_q_params() / quantize() again)")

        mode = self.q_mode
        for name, m in self.named_modules():  # never write a file that load_quantized_model refuses
            if isinstance(m, _QLayer):
                _check_layer_tensors(name, m, m.qconfig, tensors, tensors, mode, fail)
        from .. import __version__

        manifest = {
            "format": FORMAT, "version": FORMAT_VERSION, "producer": f"spiketriton {__version__}",
            "mode": mode,
            "layers": {name: dict(dataclass_dict(m.qconfig), is_encoder=m.is_encoder, feeds_neuron=m.feeds_neuron)
                       for name, m in self.named_modules() if isinstance(m, _QLayer)},
            "neurons": {name: _neuron_manifest(m) for name, m in self.named_modules() if isinstance(m, QLIF)},
            "tensors": {k: {"dtype": _dtype_name(t), "shape": list(t.shape)} for k, t in tensors.items()},
            "tensor_sha256": tensor_digest(_digest_arrays(tensors)),
        }
        manifest["manifest_sha256"] = manifest_digest(manifest)
        write_atomic(path, save(tensors, metadata={META_KEY: json.dumps(manifest, allow_nan=False)}),
                     "save_quantized_model")

    # -- internals ---------------------------------------------------------------------------------
    def _layers(self):
        return [m for m in self.modules() if isinstance(m, _QLayer)]

    def _require_calculated(self, what):
        if not self._q_calculated:
            raise RuntimeError(f"{what} needs the quantization parameters: call collect_q_params(), run "
                               f"calibration batches (the first layer reads non-spike input), then calculate_q_params()")

    def _set_mode(self, mode):
        for m in self.modules():
            if isinstance(m, (_QLayer, QLIF)):
                m.mode = mode
        self.reset()

    def _link(self):
        root = self.net if isinstance(self, PreparedModel) else self
        links = _links_fx(root)
        if isinstance(links, Exception):
            # the order of a Sequential's children is its data flow only when its forward is
            # nn.Sequential's own: a subclass with another forward would be guessed, not read
            custom = sorted({type(m).__name__ for m in root.modules()
                             if isinstance(m, nn.Sequential) and not is_plain_container(m)})
            if not isinstance(root, nn.Sequential) or custom:
                why = (f" (the nn.Sequential subclasses {', '.join(custom)} have their own forward, so the order of "
                       f"their children is not their data flow)") if custom else ""
                raise RuntimeError(
                    f"QModel: torch.fx cannot trace this model's forward ({type(links).__name__}: "
                    f"{str(links)[:200]}), so the layer feeding each neuron is unknown{why}; make the forward "
                    f"traceable (no data-dependent Python control flow) or build it of plain nn.Sequential containers")
            links = _links_sequential(root)
        feeders, fed_by_spikes = links
        for name, m in self.named_modules():
            if isinstance(m, (_QLayer, QLIF)):
                m.qname = name
        for layer in self._layers():
            layer.feeds_neuron = False
            layer.is_encoder = True
        for neuron, layer in feeders.items():
            neuron.feeder = layer
            layer.feeds_neuron = True
        for layer in fed_by_spikes:
            layer.is_encoder = False
        unlinked = [n for n in self.modules() if isinstance(n, QLIF) and n not in feeders]
        if unlinked:
            names = ", ".join(repr(n.qname) for n in unlinked[:3]) + (", ..." if len(unlinked) > 3 else "")
            raise RuntimeError(f"QModel: {len(unlinked)} QLIF neuron(s) ({names}) are not fed directly by a "
                               f"QLinear/QConv2d (through shape-only modules at most); the integer flow needs that "
                               f"link (a pooling or an unfolded BatchNorm between a layer and its neuron breaks it: "
                               f"pool the neuron's spikes instead)")


def _neuron_manifest(m: QLIF) -> dict:
    s = m.spec
    return {"v_th0": s.v_threshold, "v_reset": s.v_reset, "v_init": s.v_init,
            "v_l": None if s.v_l == -math.inf else s.v_l, "dv": s.dv, "ref_len": s.ref_len,
            "reset_mode": s.reset_mode, "v_th_alpha": s.v_th_alpha, "v_th_beta": s.v_th_beta,
            "v_th_incre": s.v_th_incre, "v_leaky_alpha": m.v_leaky_alpha, "v_leaky_beta": m.v_leaky_beta}


def dataclass_dict(c):
    return {"bits": c.bits, "per_channel": c.per_channel, "pow2": c.pow2, "even_shift": c.even_shift}


def _links_fx(model):
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (QLIF, _QLayer, BaseNeuron, SpikeLinear)) or _is_hybrid(m) or _takes_images(m) \
                or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # the caller decides whether the Sequential order may stand in for the graph
        return e
    modules = dict(model.named_modules())

    def source(node, spikes=False):
        """The module node a value comes from, looking through shape-only modules and ops; with ``spikes``
        also through max poolings (the max of 0/1 spikes is their OR: spikes again), for the question
        whether a layer reads spikes. A neuron after a max pooling is not fed by a layer directly."""
        while isinstance(node, fx.Node):
            if node.op == "call_module":
                m = modules[node.target]
                if isinstance(m, _SHAPE_MODULES) or (spikes and _is_spike_max_pool(m) and len(node.args) == 1
                                                     and not node.kwargs):
                    node = node.args[0]
                    continue
                return m
            if node.op == "call_method" and node.target in _SHAPE_METHODS:
                node = node.args[0]
                continue
            if node.op == "call_function" and node.target in (torch.flatten, torch.reshape):
                node = node.args[0]
                continue
            return None
        return None

    feeders, fed_by_spikes, fed_by_values = {}, set(), set()
    for node in graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        m = modules[node.target]
        src = source(node.args[0])
        if isinstance(m, QLIF) and isinstance(src, _QLayer):
            if feeders.get(m, src) is not src:
                raise RuntimeError(f"QModel: the QLIF {node.target} is called after two different layers; each call "
                                   f"needs its own neuron module (its integer constants follow its layer's scale)")
            feeders[m] = src
        if isinstance(m, _QLayer):
            (fed_by_spikes if _emits(source(node.args[0], spikes=True)) else fed_by_values).add(m)
    mixed = fed_by_spikes & fed_by_values
    if mixed:
        raise RuntimeError("QModel: a layer is applied both to spikes and to other values; use separate modules")
    return feeders, fed_by_spikes


def _is_hybrid(m) -> bool:
    return type(m).__module__.startswith("spiketriton.hybrid")


def _emits(m) -> bool:
    """Whether the module ``m`` (or None) outputs spikes: a neuron, or a module that says so (A2S units)."""
    return isinstance(m, (QLIF, BaseNeuron)) or bool(getattr(m, "emits_spikes", False))


def _links_sequential(model):
    """The links from the order of plain containers: each one's chain of leaves, read through the plain
    containers inside it (``StepWise(conv), LIF()``: the conv feeds the LIF)."""
    def chain(mod):
        for child in mod.children():
            if is_plain_container(child):
                yield from chain(child)
            else:
                yield child

    feeders, fed_by_spikes = {}, set()
    for mod in model.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        prev, spikes = None, False  # the previous leaf; whether the current value is spikes
        for child in chain(mod):
            if isinstance(child, _SHAPE_MODULES):
                continue
            if _is_spike_max_pool(child):
                prev = child  # spikes stay spikes (their OR); a current does not reach a neuron through it
                continue
            if isinstance(child, QLIF) and isinstance(prev, _QLayer):
                feeders[child] = prev
            if isinstance(child, _QLayer) and spikes:
                fed_by_spikes.add(child)
            prev, spikes = child, _emits(child)
    return feeders, fed_by_spikes


# --------------------------------------------------------------------------------------------- #
# prepare
# --------------------------------------------------------------------------------------------- #


class PreparedModel(QModel):
    """The :class:`QModel` that :func:`prepare` returns (and :func:`load_quantized_model` gives back):
    the converted copy of the float network is ``.net`` (its QLinear / QConv2d / QLIF in place of the
    float layers and neurons), and calling the PreparedModel calls it.

    >>> import torch, spiketriton as st
    >>> from torch import nn
    >>> from spiketriton import quant
    >>> qnet = quant.prepare(nn.Sequential(nn.Linear(4, 3), st.LIF()))
    >>> type(qnet).__name__, type(qnet.net[0]).__name__
    ('PreparedModel', 'QLinear')
    """

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)


#: the name of :class:`PreparedModel` before it was public: models pickled whole (``torch.save(qmodel)``)
#: by earlier versions refer to it
_Prepared = PreparedModel


def prepare(model: nn.Module, config: Optional[QuantConfig] = None, **config_kwargs) -> "PreparedModel":
    """A :class:`PreparedModel` from a float model (a copy; the original is untouched): Conv2d-BatchNorm2d and
    Linear-BatchNorm1d pairs are folded (next to each other in a Sequential or StepWise, or as
    ``StepWise(conv), StepWise(bn)``: see :func:`spiketriton.ann2snn.fold_batchnorms`), nn.Linear / SpikeLinear /
    nn.Conv2d / SpikeConv2d become QLinear / QConv2d, and IF / LIF / PLIF / ExtendedLIF become QLIF. A
    family-A neuron maps to family B exactly (leak ``alpha = 1 - 1/tau``, ``beta = v_reset / tau``, and
    with decay_input the factor 1/tau folded into the weights and bias of the layer feeding it), except
    that the chip's threshold is strict (``v' > vth`` where LIF fires at ``H >= V_th``: different only
    when H equals V_th exactly).

    A converted conv SNN (:func:`spiketriton.convert`) is taken as it is: the spike pooling modules stay
    (they compute on the QLIF's float spikes as before), a layer after a max pooling of spikes reads spikes
    (an OR of spikes: no int8 input scale), a layer after a sum or average pooling is an encoding layer
    (counts or fractions, int8). QLIF hands over float 0/1 spikes (a neuron's ``packed_output`` is not
    carried; QLinear / QConv2d read a SpikeTensor / SpikeImage as its 0/1 values all the same). A model in
    single-step mode (any module with ``step_mode='s'``) is a ValueError: the quantized model runs
    sequences ``[T, B, ...]``.

    >>> import torch, spiketriton as st
    >>> from torch import nn
    >>> from spiketriton import quant
    >>> net = st.convert(nn.Sequential(                   # for input [T, B, 2, 4, 4]
    ...     st.StepWise(nn.Conv2d(2, 4, 3, padding=1)), st.LIF(), st.StepWise(nn.MaxPool2d(2)),
    ...     st.StepWise(nn.Conv2d(4, 4, 3, padding=1)), st.LIF(), nn.Flatten(2), nn.Linear(4 * 2 * 2, 3), st.LIF()))
    >>> q = quant.prepare(net)
    >>> [type(m).__name__ for m in (q.net[0][0], q.net[2][0], q.net[3][0], q.net[6])]
    ['QConv2d', 'SpikeMaxPool2d', 'QConv2d', 'QLinear']
    >>> q.net[3][0].is_encoder                # after a max pooling of spikes: it reads spikes
    False
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare: model must be a torch.nn.Module (the float network to quantize), got "
                        f"{type(model).__name__}")
    fields = [f.name for f in dataclasses.fields(QuantConfig)]
    unknown = sorted(k for k in config_kwargs if k not in fields)
    if unknown:
        raise TypeError(f"prepare: unknown option(s) {unknown}; the options are config= or the QuantConfig fields "
                        f"{fields}")
    if config is not None:
        if not isinstance(config, QuantConfig):
            raise TypeError(f"prepare: config must be a spiketriton.quant.QuantConfig or None, got "
                            f"{type(config).__name__}")
        if config_kwargs:
            raise TypeError(f"prepare: give either config= or the options {sorted(config_kwargs)}, not both (the "
                            f"options would be ignored)")
    config = config or QuantConfig(**config_kwargs)
    single = [(name, m) for name, m in model.named_modules() if getattr(m, "step_mode", "m") == "s"]
    if single:
        name, m = single[0]
        raise ValueError(f"prepare: {name or 'the model'} ({type(m).__name__}) runs single-step (step_mode='s'), but "
                         f"the quantized model runs sequences [T, B, ...] (QLIF and the chip are multi-step): prepare "
                         f"the model after spiketriton.set_step_mode(model, 'm') (the weights are the same)")
    # the neurons' carried state may hold an autograd graph, which deepcopy refuses: copy without it
    stash = {}
    for m in model.modules():
        if isinstance(m, BaseNeuron):
            stash[m] = {k: m.__dict__[k] for k in ("v", "v_th_adpt", "ref_cnt") if k in m.__dict__}
            m.reset()
    try:
        net = copy.deepcopy(model)
    finally:
        for m, state in stash.items():
            m.__dict__.update(state)
    _fold_in(net)  # every BatchNorm right after a Conv2d/SpikeConv2d/Linear/SpikeLinear, in a StepWise or next to it
    feeders_of = {}
    _swap(net, config, feeders_of, "")
    q = PreparedModel(net)
    q._link()
    # fold a family-A neuron's input factor k = 1/tau into its feeder
    for neuron, k in feeders_of.items():
        layer = neuron.feeder
        if layer is None:
            raise RuntimeError("prepare: a LIF/PLIF with decay_input must be fed directly by a Linear/Conv2d")
        with torch.no_grad():
            layer.weight.mul_(k)
            if layer.bias is not None:
                layer.bias.mul_(k)
    return q


def _swap(module: nn.Module, config, decay_input_neurons, prefix: str):
    for name, child in list(module.named_children()):
        try:
            new = _converted(child, config, decay_input_neurons)
        except (TypeError, ValueError) as e:  # e.g. a PLIF whose w is NaN: name the module that was converted
            raise type(e)(f"prepare: cannot convert {prefix}{name} ({type(child).__name__}): {e}") from None
        if new is not None:
            setattr(module, name, new)
        else:
            _swap(child, config, decay_input_neurons, f"{prefix}{name}.")


def _converted(child, config, decay_input_neurons):
    new = None
    if type(child) in (nn.Linear, SpikeLinear):
        if getattr(child, "input_dropout", 0.0):
            warnings.warn("prepare: SpikeLinear's input_dropout is not carried into the QLinear (no dropout "
                          "during quantization-aware training)")
        new = QLinear.from_float(child, config)
    elif type(child) in (nn.Conv2d, SpikeConv2d):
        if getattr(child, "input_dropout", 0.0):
            warnings.warn("prepare: SpikeConv2d's input_dropout is not carried into the QConv2d (no dropout "
                          "during quantization-aware training)")
        new = QConv2d.from_float(child, config)
    elif isinstance(child, (IF, LIF, PLIF)):
        if isinstance(child, PLIF):
            warnings.warn("prepare: PLIF's learnable tau is fixed at its current value in the QLIF (the chip's "
                          "leak is a constant)")
        new, k = _qlif_from_family_a(child)
        if k is not None:
            decay_input_neurons[new] = k
    elif isinstance(child, ExtendedLIF):
        if isinstance(child.v_leaky_alpha, torch.Tensor):
            warnings.warn("prepare: ExtendedLIF's learnable leak is fixed at its current value in the QLIF")
        new = _qlif_from_extended(child)
    return new


def _qlif_from_family_a(n):
    s = n.spec
    if isinstance(n, IF):
        k = 0.0
    elif isinstance(n, PLIF):
        k = float(torch.sigmoid(n.w.detach().float()))
    else:
        k = 1.0 / n.tau
    vr = s.v_reset if s.reset_mode == RESET_HARD else 0.0
    q = QLIF(v_th0=s.v_threshold, v_leaky_alpha=1.0 - k, v_leaky_beta=k * vr, v_reset=s.v_reset,
             v_init=s.v_init, reset_mode="hard" if s.reset_mode == RESET_HARD else "soft",
             surrogate=s.surrogate, detach_reset=s.detach_reset, backend=n.backend)
    return q, (k if (s.decay_input and k > 0) else None)


def _qlif_from_extended(n):
    s = n.spec
    if isinstance(n.v_leaky_alpha, torch.Tensor):
        alpha, beta = float(n.v_leaky_alpha), float(n.v_leaky_beta)
    else:
        alpha, beta = n.v_leaky_alpha, n.v_leaky_beta
    return QLIF(v_th0=s.v_threshold, v_leaky_alpha=alpha, v_leaky_beta=beta, v_reset=s.v_reset, v_init=s.v_init,
                v_l=None if s.v_l == -math.inf else s.v_l, dv=s.dv, ref_len=s.ref_len, reset_mode=s.reset_mode,
                v_th_alpha=s.v_th_alpha, v_th_beta=s.v_th_beta, v_th_incre=s.v_th_incre,
                surrogate=s.surrogate, detach_reset=s.detach_reset, backend=n.backend)


# --------------------------------------------------------------------------------------------- #
# load
# --------------------------------------------------------------------------------------------- #


def load_quantized_model(path, qmodel: QModel) -> QModel:
    """Restore a file written by ``save_quantized_model`` into ``qmodel`` (a QModel of the same
    architecture, e.g. ``prepare(model)`` of the same float model) and return it (``qmodel`` itself: a
    :class:`PreparedModel` when it came from :func:`prepare`). Loads no code
    (safetensors, JSON). Every file that is malformed, truncated, corrupted, of another format version
    or inconsistent with ``qmodel`` raises :class:`QuantFormatError` (a ValueError) saying what was
    wrong; ``qmodel`` is changed only once every check has passed.

    The file (format ``"spiketriton.quant"``, version 2) is a safetensors file: the model's
    ``state_dict`` (float weights and biases, and per layer ``input_amax``, ``input_scale``,
    ``w_scale``, ``weight_int`` int8, ``bias_int`` int32) and, as the only safetensors metadata key
    ``"spiketriton"``, a JSON manifest: ``format``, ``version``, ``producer``, ``mode`` (``"float"``,
    ``"aware"`` or ``"quantized"``), ``layers`` (per layer: ``bits``, ``per_channel``, ``pow2``,
    ``even_shift``, ``is_encoder``, ``feeds_neuron``), ``neurons`` (per QLIF: its constants),
    ``tensors`` (``{name: {"dtype", "shape"}}`` of every tensor), ``tensor_sha256`` (a SHA-256 over
    the tensors: name, dtype, shape and little-endian bytes, in name order, as the chip format's) and
    ``manifest_sha256`` (a SHA-256 of the canonical JSON of the manifest without this field).

    Checked, before anything is allocated or changed: a regular file (no FIFO, device or directory),
    its size against the largest file ``qmodel`` can have (its tensors at full size plus a 16 MiB
    header), the header length, strict JSON (no NaN, no repeated keys), both checksums, the tensor
    table against the file. Then against ``qmodel``: exactly its state_dict keys, dtypes and shapes;
    the layers and neurons by name, each layer's links (encoder, feeding a neuron), configuration
    (strict types) and each neuron's constants. Values: float tensors of the layers finite; scales
    normal positive float32; an encoder's ``input_scale == 127 / input_amax`` (float32) and a
    non-encoder's 0; int8 weights within ``+-qmax(bits)``, int32 biases within int28. A file in
    quantized mode is also checked for consistency: ``w_scale`` is the scale of the saved float
    weights (a relative 1e-6 for a float scale, one power-of-two step of slack for ``pow2``, which
    goes through log2), and the saved int8 weights and int32 biases are exactly the integers of the
    saved float weights, bias and scales.

    Files of format version 1 (spiketriton 0.1 before this check existed) carry no checksum and are
    refused: recreate them with this version (run the flow, ``collect_q_params()`` ...
    ``quantize()``, and ``save_quantized_model()`` again).
    """
    from safetensors.torch import load as st_load

    from ..export.chip import tensor_digest

    if not isinstance(qmodel, QModel):
        raise TypeError(f"load_quantized_model: qmodel must be a QModel, got {type(qmodel).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_quantized_model: path must be a str or os.PathLike, got {type(path).__name__}")
    where = f"load_quantized_model: {os.fspath(path)}"

    def fail(msg):
        raise QuantFormatError(f"{where}: {msg}")

    own = qmodel.state_dict()
    limit = _max_file_bytes(qmodel, own)
    try:  # regular files only: a FIFO would block, a device would read without end
        fd = open_regular(path, "load_quantized_model")
    except ValueError as e:
        raise QuantFormatError(str(e)) from None
    except OSError as e:
        raise QuantFormatError(f"{where} is not a readable safetensors file: {e}") from None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            fail(f"the file has {size} bytes, more than a file of this model can hold ({limit} bytes): it does not "
                 f"match the model, or is not a spiketriton.quant file")
        data = f.read(limit + 1)  # the file may have grown since the check: never more than the limit
    if len(data) > limit:
        fail(f"the file grew past {limit} bytes while being read")
    manifest = _read_manifest(data, fail)
    try:
        tensors = st_load(data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # safetensors' own checks (offsets, dtypes, sizes); a Rust panic included
        fail(f"not a readable safetensors file: {type(e).__name__}: {str(e)[:200]}")
    have = {k: {"dtype": _dtype_name(t), "shape": list(t.shape)} for k, t in tensors.items()}
    table = manifest["tensors"]
    if have != table:
        diff = sorted(k for k in set(have) | set(table) if have.get(k) != table.get(k))
        fail(f"the file's tensors differ from the manifest's table (corrupted file): {diff[:5]}")
    if tensor_digest(_digest_arrays(tensors)) != manifest["tensor_sha256"]:
        fail("the tensor data does not match the manifest's tensor_sha256 (corrupted file)")
    # -- the file is intact: now does it fit the model? ------------------------------------------
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or extra:
        fail(f"the file does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for k in sorted(tensors):
        t = tensors[k]
        if t.dtype != own[k].dtype:
            fail(f"{k} is {t.dtype} in the file, the model has {own[k].dtype}")
    qmodel._link()  # the architecture's links (idempotent): which layer is an encoder, which feeds a neuron
    layers = {name: m for name, m in qmodel.named_modules() if isinstance(m, _QLayer)}
    neurons = {name: m for name, m in qmodel.named_modules() if isinstance(m, QLIF)}
    for kind, want, got in (("layers", layers, manifest["layers"]), ("neurons", neurons, manifest["neurons"])):
        if set(want) != set(got):
            fail(f"the file does not match the model: its {kind} are {sorted(got)[:5]}, the model's "
                 f"{sorted(want)[:5]}")
    mode = manifest["mode"]
    configs = {}
    for name, m in layers.items():
        configs[name] = _layer_config(name, m, manifest["layers"][name], fail)
        _check_layer_tensors(name, m, configs[name], tensors, own, mode, fail)
    checked = {f"{name}.{k}" for name in layers for k in _LAYER_BUFFERS}
    for k, t in sorted(tensors.items()):  # shapes of everything else (the layers' quantization buffers checked above)
        if k not in checked and tuple(t.shape) != tuple(own[k].shape):
            fail(f"{k} has shape {tuple(t.shape)} in the file, the model has {tuple(own[k].shape)}")
    for name, m in neurons.items():
        entry, want = manifest["neurons"][name], _neuron_manifest(m)
        if not isinstance(entry, dict) or entry != want:
            fail(f"the neuron {name} in the file has other constants than the model's ({_short(entry)} vs {want})")
    # -- every check passed: change the model ----------------------------------------------------
    qmodel.collect_q_params()
    for name, m in layers.items():
        m.qconfig = configs[name]
        for buf in ("w_scale", "weight_int", "bias_int"):  # sized by the file (empty before quantize)
            setattr(m, buf, torch.empty_like(tensors[f"{name}.{buf}"], device=getattr(m, buf).device))
    qmodel.load_state_dict(tensors, strict=True)
    for m in layers.values():
        m.collecting = False
    qmodel._q_calculated = True
    {FLOAT: qmodel.restore_float, AWARE: qmodel.aware, QUANTIZED: qmodel._set_quantized_from_file}[mode]()
    return qmodel


class QuantFormatError(ValueError):
    """A spiketriton.quant file (``load_quantized_model``) that is malformed, truncated, corrupted, of
    another format version, or that does not match the model it is loaded into."""


META_KEY = "spiketriton"             # the safetensors metadata key of the manifest
MAX_HEADER_BYTES = 1 << 24           # the safetensors header (JSON, manifest included): 16 MiB
MANIFEST_FIELDS = ("format", "version", "producer", "mode", "layers", "neurons", "tensors", "tensor_sha256",
                   "manifest_sha256")
LAYER_FIELDS = ("bits", "per_channel", "pow2", "even_shift", "is_encoder", "feeds_neuron")
_LAYER_FLOATS = ("weight", "bias", "input_amax", "input_scale", "w_scale")
_LAYER_BUFFERS = ("input_amax", "input_scale", "w_scale", "weight_int", "bias_int")
SCALE_RTOL = 1e-6  # a saved float weight scale against the one recomputed here (float32 division: exact)


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _digest_arrays(tensors: dict) -> dict:
    """The tensors as numpy arrays for the chip format's ``tensor_digest``; a dtype numpy lacks
    (bfloat16, float8) as raw integers of its size (the manifest's table records the real dtype)."""
    out = {}
    for k, t in tensors.items():
        t = t.detach().cpu().contiguous()
        try:
            out[k] = t.numpy()
        except TypeError:
            out[k] = t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]).numpy()
    return out


def _max_file_bytes(qmodel, own) -> int:
    """The largest file ``qmodel`` can have: the header limit and its tensors, the quantization buffers at
    their full size (int8 weights, int32 biases, one scale per output channel)."""
    total = sum(t.numel() * t.element_size() for t in own.values())
    for m in qmodel._layers():
        total += m.weight.numel() + 4 * (m.bias.numel() if m.bias is not None else 0) + 4 * m.weight.shape[0]
    return 8 + MAX_HEADER_BYTES + total


def _short(v, n=120) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n - 3] + "..."


def _read_manifest(data: bytes, fail) -> dict:
    """The manifest of a safetensors image, after the header length, strict JSON, the format, the
    version, the fields and the manifest checksum."""
    # the chip format's strict JSON reader and checksums (imported here: export imports quant)
    from ..export.chip import _is_sha256, _json, manifest_digest, safetensors_header

    header, _ = safetensors_header(data, fail, MAX_HEADER_BYTES, f"{FORMAT} file")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get(META_KEY), str):
        if isinstance(meta, dict) and "spiketriton.chip" in meta:
            fail(f"this is a chip file (spiketriton.export.load_chip reads it), not a {FORMAT} file")
        fail(f"not a {FORMAT} file (no spiketriton manifest in the safetensors metadata)")
    if set(meta) != {META_KEY}:
        fail(f"the safetensors metadata has keys {_short(sorted(meta))}; a {FORMAT} file has only {META_KEY!r}")
    manifest = _json(meta[META_KEY], "the manifest", fail)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fail(f"not a {FORMAT} file (its manifest's format is "
             f"{_short(manifest.get('format') if isinstance(manifest, dict) else manifest)})")
    version = manifest.get("version")
    if version == 1 and type(version) is int:
        fail(f"format version 1 (written by spiketriton 0.1 before files had checksums) is no longer read: "
             f"recreate the file with this version (collect_q_params(), calibration, calculate_q_params(), "
             f"quantize(), then save_quantized_model())")
    if type(version) is not int or version != FORMAT_VERSION:
        fail(f"format version {_short(version)} is not supported: this spiketriton reads version {FORMAT_VERSION}")
    missing = [k for k in MANIFEST_FIELDS if k not in manifest]
    extra = sorted(k for k in manifest if k not in MANIFEST_FIELDS)
    if missing or extra:
        fail(f"malformed manifest: missing fields {missing}, unexpected fields {_short(extra)}")
    for k in ("tensor_sha256", "manifest_sha256"):
        if not _is_sha256(manifest[k]):
            fail(f"malformed manifest: {k} must be 64 lowercase hexadecimal digits")
    try:
        digest = manifest_digest(manifest)
    except (ValueError, TypeError, RecursionError) as e:
        fail(f"the manifest cannot be written as canonical JSON: {str(e)[:200]}")
    if digest != manifest["manifest_sha256"]:
        fail("the manifest does not match its manifest_sha256 (corrupted manifest)")
    # types of the fields (a manifest with a valid checksum was still written by someone)
    if manifest["mode"] not in (FLOAT, AWARE, QUANTIZED):
        fail(f"malformed manifest: mode is {_short(manifest['mode'])}, expected one of {[FLOAT, AWARE, QUANTIZED]}")
    if not isinstance(manifest["producer"], str) or len(manifest["producer"]) > 1024:
        fail("malformed manifest: producer must be a string of at most 1024 characters")
    for k in ("layers", "neurons", "tensors"):
        if not isinstance(manifest[k], dict):
            fail(f"malformed manifest: {k} must be a JSON object, got {type(manifest[k]).__name__}")
    return manifest


def _layer_config(name, m, entry, fail) -> QuantConfig:
    if not isinstance(entry, dict) or set(entry) != set(LAYER_FIELDS):
        fail(f"malformed manifest: layer {name} must have exactly the fields {list(LAYER_FIELDS)}, got {_short(entry)}")
    for k in ("bits",) + LAYER_FIELDS[1:]:
        ok = type(entry[k]) is int if k == "bits" else type(entry[k]) is bool
        if not ok:
            fail(f"malformed manifest: layer {name}: {k} must be {'an integer' if k == 'bits' else 'true or false'}, "
                 f"got {_short(entry[k])}")
    try:
        config = QuantConfig(entry["bits"], entry["per_channel"], entry["pow2"], entry["even_shift"])
    except (TypeError, ValueError) as e:
        fail(f"bad configuration for layer {name}: {e}")
    for k in ("is_encoder", "feeds_neuron"):
        if entry[k] != getattr(m, k):
            fail(f"the file does not match the model: layer {name} has {k}={entry[k]} in the file, "
                 f"{getattr(m, k)} in the model")
    return config


def _check_layer_tensors(name, m, c: QuantConfig, tensors, own, mode, fail):
    """Shapes and values of one layer's tensors against its configuration, and in quantized mode the
    consistency of the saved scales and integers with the saved float weights."""
    def bad(what):
        fail(f"{name}.{what}")

    t = {k: tensors.get(f"{name}.{k}") for k in ("weight", "bias", "input_amax", "input_scale", "w_scale",
                                                  "weight_int", "bias_int")}
    W, b = t["weight"], t["bias"]
    for k, have in (("weight", W), ("bias", b)):
        if have is not None and tuple(have.shape) != tuple(own[f"{name}.{k}"].shape):
            bad(f"{k} has shape {tuple(have.shape)} in the file, the model has {tuple(own[f'{name}.{k}'].shape)}")
    for k in _LAYER_FLOATS:
        if t[k] is not None and not bool(torch.isfinite(t[k]).all()):
            bad(f"{k} holds NaN or inf")
    per_channel = c.per_channel and W.dim() > 1
    want = {"input_amax": [()], "input_scale": [()], "w_scale": [(W.shape[0],) if per_channel else ()],
            "weight_int": [tuple(W.shape)] + ([] if mode == QUANTIZED else [(0,)]),
            "bias_int": ([(W.shape[0],)] if b is not None else []) + ([(0,)] if b is None or mode != QUANTIZED else [])}
    for k, shapes in want.items():
        if tuple(t[k].shape) not in shapes:
            bad(f"{k} has shape {tuple(t[k].shape)}, expected one of {shapes} (per_channel={c.per_channel}, "
                f"mode {mode!r})")
    tiny = torch.finfo(torch.float32).tiny
    s_w, amax, s_in = t["w_scale"], t["input_amax"], t["input_scale"]
    if not bool((s_w >= tiny).all()):
        bad(f"w_scale must be a normal float32 > 0, got {_short(s_w.tolist())}")
    if m.is_encoder:
        if not (amax > 0 and torch.equal(s_in, (qmax(8) / amax).float()) and s_in >= tiny):
            bad(f"input_scale ({float(s_in):.6g}) must be 127 / input_amax ({float(amax):.6g}) in float32, > 0, for "
                f"an encoding layer")
    elif amax != 0 or s_in != 0:
        bad(f"input_amax and input_scale must be 0 for a layer fed by spikes, got {float(amax)}, {float(s_in)}")
    q = qmax(c.bits)
    w_int, b_int = t["weight_int"], t["bias_int"]
    if w_int.numel() and int(w_int.to(torch.int16).abs().max()) > q:  # widened: abs(-128) is -128 in int8
        bad(f"weight_int holds {int(w_int.to(torch.int16).abs().max())}, beyond +-{q} for {c.bits}-bit weights")
    if b_int.numel() and int(b_int.to(torch.int64).abs().max()) > INT28_MAX:
        bad("bias_int holds values beyond int28")
    if mode != QUANTIZED:
        return  # in float / aware mode the scales and integers are recomputed by quantize()
    S = s_w * s_in if m.is_encoder else s_w
    if not bool((torch.isfinite(S) & (S >= tiny)).all()):
        bad(f"the current scale (w_scale{' x input_scale' if m.is_encoder else ''}) must be a normal float32, got "
            f"{_short(S.tolist())}")
    live = weight_scale(W, c.bits, c.per_channel, c.pow2, c.even_shift)
    Wf = W.detach().double()
    amax_w = Wf.abs().flatten(1).amax(1) if per_channel else Wf.abs().amax()
    if c.pow2:
        mant, exp = torch.frexp(s_w)
        step = 4.0 if c.even_shift else 2.0
        ratio = s_w.double() / live.double()
        if not (bool((mant == 0.5).all()) and (not c.even_shift or bool(((exp - 1) % 2 == 0).all()))
                and bool(((ratio == 1) | (ratio == step) | (ratio == 1 / step)).all())
                and bool((amax_w * s_w.double() <= q).all())):
            bad(f"w_scale {_short(s_w.tolist())} is not the power-of-two scale of the saved weights "
                f"({_short(live.tolist())}{', even exponent' if c.even_shift else ''})")
    elif not bool(((s_w.double() - live.double()).abs() <= SCALE_RTOL * live.double()).all()):
        bad(f"w_scale {_short(s_w.tolist())} is not the scale of the saved weights ({_short(live.tolist())}): the "
            f"largest |weight| x w_scale must be {q}")
    try:
        w_want, b_want = integer_params(W, b, s_w, s_in if m.is_encoder else None, c.bits, False, name)
    except ValueError as e:
        bad(f"bias: {e}")
    if not torch.equal(w_int.to(torch.int64), w_want.to(torch.int64)):
        bad("weight_int is not the int8 rounding of the saved float weights by w_scale (corrupted or edited)")
    if b is not None and not torch.equal(b_int.to(torch.int64), b_want.to(torch.int64)):
        bad("bias_int is not the rounding of the saved bias in the layer's integer units (corrupted or edited)")


def _set_quantized_from_file(self):
    self._set_mode(QUANTIZED)  # the integers come from the file, exactly as saved


QModel._set_quantized_from_file = _set_quantized_from_file
