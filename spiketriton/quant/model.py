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
the links that ``collect_q_params`` finds (torch.fx, or nested Sequential order).
"""

from __future__ import annotations

import copy
import json
import warnings
import math
import os
import tempfile
from typing import Optional

import torch
from torch import nn

from .._files import check_regular
from ..layers import SpikeLinear
from ..neuron import IF, LIF, PLIF, BaseNeuron, ExtendedLIF
from ..spec import RESET_HARD
from ..spec import INT28_MAX
from .modules import AWARE, FLOAT, QUANTIZED, QConv2d, QLinear, QLIF, QuantConfig, _QLayer
from .quantizer import qmax

__all__ = ["QModel", "prepare", "load_quantized_model", "FORMAT", "FORMAT_VERSION"]

FORMAT = "spiketriton.quant"
FORMAT_VERSION = 1
_SHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)
_SHAPE_METHODS = {"flatten", "reshape", "view", "squeeze", "unsqueeze", "contiguous", "unflatten"}


class QModel(nn.Module):
    """Base class of quantizable networks (subclass it, or get one from :func:`prepare`)."""

    _q_calculated = False

    # -- the flow ----------------------------------------------------------------------------
    def collect_q_params(self) -> None:
        """Link every layer to the neuron it feeds, mark encoding layers, and start recording
        calibration statistics (largest |input| of each encoding layer) during float forwards."""
        self._link()
        self._set_mode(FLOAT)
        for layer in self._layers():
            layer.collecting = layer.is_encoder
            layer.input_amax.zero_()
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
    def save_quantized_model(self, path: str) -> None:
        """One safetensors file: the state (float weights, int8 weights, int32 biases, scales) and a
        JSON manifest (format, version, mode, config per layer). No pickle. Written atomically."""
        from safetensors.torch import save_file

        self._require_calculated("save_quantized_model()")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        layers = {name: dict(dataclass_dict(m.qconfig), is_encoder=m.is_encoder, feeds_neuron=m.feeds_neuron)
                  for name, m in self.named_modules() if isinstance(m, _QLayer)}
        neurons = {name: _neuron_manifest(m) for name, m in self.named_modules() if isinstance(m, QLIF)}
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "mode": self.q_mode, "layers": layers, "neurons": neurons}
        d = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"spiketriton": json.dumps(meta)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

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
        root = self.net if isinstance(self, _Prepared) else self
        links = _links_fx(root)
        if links is None:
            if not isinstance(root, nn.Sequential):
                raise RuntimeError(
                    "QModel: torch.fx cannot trace this model's forward, so the layer feeding each neuron is "
                    "unknown; make the forward traceable (no data-dependent Python control flow) or build it as "
                    "an nn.Sequential"
                )
            links = _links_sequential(root)
        feeders, fed_by_spikes = links
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
            raise RuntimeError(f"QModel: {len(unlinked)} QLIF neuron(s) are not fed directly by a QLinear/QConv2d "
                               f"(through shape-only modules at most); the integer flow needs that link")


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
            return isinstance(m, (QLIF, _QLayer, BaseNeuron, SpikeLinear)) or _is_hybrid(m) \
                or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception:
        return None
    modules = dict(model.named_modules())

    def source(node):
        """The module node a value comes from, looking through shape-only modules and ops."""
        while isinstance(node, fx.Node):
            if node.op == "call_module":
                m = modules[node.target]
                if isinstance(m, _SHAPE_MODULES):
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
            spikes = isinstance(src, (QLIF, BaseNeuron)) or getattr(src, "emits_spikes", False)
            (fed_by_spikes if spikes else fed_by_values).add(m)
    mixed = fed_by_spikes & fed_by_values
    if mixed:
        raise RuntimeError("QModel: a layer is applied both to spikes and to other values; use separate modules")
    return feeders, fed_by_spikes


def _is_hybrid(m) -> bool:
    return type(m).__module__.startswith("spiketriton.hybrid")


def _links_sequential(model):
    feeders, fed_by_spikes = {}, set()
    for mod in model.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        prev = None
        for child in mod.children():
            if isinstance(child, _SHAPE_MODULES):
                continue
            if isinstance(child, QLIF) and isinstance(prev, _QLayer):
                feeders[child] = prev
            if isinstance(child, _QLayer) and (isinstance(prev, (QLIF, BaseNeuron)) or getattr(prev, "emits_spikes", False)):
                fed_by_spikes.add(child)
            prev = child
    return feeders, fed_by_spikes


# --------------------------------------------------------------------------------------------- #
# prepare
# --------------------------------------------------------------------------------------------- #


class _Prepared(QModel):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)


def prepare(model: nn.Module, config: Optional[QuantConfig] = None, **config_kwargs) -> QModel:
    """A QModel from a float model (a copy; the original is untouched): Conv2d-BatchNorm2d and
    Linear-BatchNorm1d pairs are folded, nn.Linear / SpikeLinear / nn.Conv2d become QLinear / QConv2d,
    and IF / LIF / PLIF / ExtendedLIF become QLIF. A family-A neuron maps to family B exactly
    (leak ``alpha = 1 - 1/tau``, ``beta = v_reset / tau``, and with decay_input the factor 1/tau
    folded into the weights and bias of the layer feeding it), except that the chip's threshold is
    strict (``v' > vth`` where LIF fires at ``H >= V_th``: different only when H equals V_th exactly).
    """
    config = config or QuantConfig(**config_kwargs)
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
    _fold_batchnorm(net)
    feeders_of = {}
    _swap(net, config, feeders_of)
    q = _Prepared(net)
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


def _swap(module: nn.Module, config, decay_input_neurons):
    for name, child in list(module.named_children()):
        new = None
        if type(child) in (nn.Linear, SpikeLinear):
            if getattr(child, "input_dropout", 0.0):
                warnings.warn("prepare: SpikeLinear's input_dropout is not carried into the QLinear (no dropout "
                              "during quantization-aware training)")
            new = QLinear.from_float(child, config)
        elif type(child) is nn.Conv2d:
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
        if new is not None:
            setattr(module, name, new)
        else:
            _swap(child, config, decay_input_neurons)


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


def _fold_batchnorm(module: nn.Module):
    """Fold BatchNorm (running statistics) into the Conv2d / Linear right before it in a Sequential."""
    for child in module.children():
        _fold_batchnorm(child)
    if not isinstance(module, nn.Sequential):
        return
    names = list(module._modules)
    for a, b in zip(names, names[1:]):
        layer, bn = module._modules[a], module._modules[b]
        pair = (isinstance(layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)) or \
               (isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d))
        if not pair or bn.running_mean is None:
            continue
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
            layer.weight.mul_(scale.reshape((-1,) + (1,) * (layer.weight.dim() - 1)))
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros_like(shift))
            layer.bias.mul_(scale).add_(shift)
        module._modules[b] = nn.Identity()


# --------------------------------------------------------------------------------------------- #
# load
# --------------------------------------------------------------------------------------------- #


def load_quantized_model(path: str, qmodel: QModel) -> QModel:
    """Restore a file written by ``save_quantized_model`` into ``qmodel`` (a QModel of the same
    architecture, e.g. ``prepare(model)`` of the same float model). Validates the format, version
    and every tensor; loads no code (safetensors, JSON)."""
    from safetensors import SafetensorError, safe_open

    if not isinstance(qmodel, QModel):
        raise TypeError(f"load_quantized_model: qmodel must be a QModel, got {type(qmodel).__name__}")
    try:
        check_regular(path, "load_quantized_model")  # a FIFO would block, a device would read without end
    except OSError as e:
        raise ValueError(f"load_quantized_model: {path} is not a readable safetensors file: {e}") from None
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get("spiketriton")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"load_quantized_model: {path} is not a readable safetensors file: {e}") from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"load_quantized_model: {path} is not a {FORMAT} file (no spiketriton manifest)")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"load_quantized_model: {path} has format version {meta.get('version')!r}; this "
                         f"spiketriton reads version {FORMAT_VERSION}")
    if meta.get("mode") not in (FLOAT, AWARE, QUANTIZED) or not isinstance(meta.get("layers"), dict) \
            or not isinstance(meta.get("neurons"), dict):
        raise ValueError(f"load_quantized_model: {path} has a malformed manifest (mode, layers and neurons expected)")
    own = qmodel.state_dict()
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or extra:
        raise ValueError(f"load_quantized_model: the file does not match the model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    for k, t in tensors.items():
        if t.dtype != own[k].dtype or (t.shape != own[k].shape and own[k].numel() != 0 and t.numel() != 0):
            raise ValueError(f"load_quantized_model: {k} is {t.dtype}{tuple(t.shape)}, the model has "
                             f"{own[k].dtype}{tuple(own[k].shape)}")
    qmodel.collect_q_params()  # links
    for name, m in qmodel.named_modules():
        if isinstance(m, QLIF):
            if meta["neurons"].get(name) != _neuron_manifest(m):
                raise ValueError(f"load_quantized_model: the neuron {name} in the file has other constants than "
                                 f"the model's ({meta['neurons'].get(name)} vs {_neuron_manifest(m)})")
        if isinstance(m, _QLayer):
            cfg = meta["layers"].get(name)
            try:
                m.qconfig = QuantConfig(cfg["bits"], cfg["per_channel"], cfg["pow2"], cfg["even_shift"])
            except (TypeError, KeyError, ValueError) as e:
                raise ValueError(f"load_quantized_model: bad or missing configuration for layer {name}: {e}") from None
            _check_layer_tensors(name, m, tensors, meta["mode"])
            for buf in ("w_scale", "weight_int", "bias_int"):  # sized by the file (empty before quantize)
                setattr(m, buf, torch.empty_like(tensors[f"{name}.{buf}"]))
    qmodel.load_state_dict(tensors, strict=True)
    qmodel._q_calculated = True
    mode = meta.get("mode", FLOAT)
    {FLOAT: qmodel.restore_float, AWARE: qmodel.aware, QUANTIZED: qmodel._set_quantized_from_file}[mode]()
    return qmodel


def _check_layer_tensors(name, m, tensors, mode):
    """Value and shape checks of one layer's quantization tensors against its configuration."""
    def bad(what):
        raise ValueError(f"load_quantized_model: {name}.{what}")

    c = m.qconfig
    w_scale, w_int, b_int = (tensors[f"{name}.{k}"] for k in ("w_scale", "weight_int", "bias_int"))
    s_in = tensors[f"{name}.input_scale"]
    if w_scale.numel():
        want = (m.weight.shape[0],) if c.per_channel and m.weight.dim() > 1 else ()
        if tuple(w_scale.shape) != want:
            bad(f"w_scale has shape {tuple(w_scale.shape)}, expected {want} for per_channel={c.per_channel}")
        if not (torch.isfinite(w_scale).all() and (w_scale > 0).all()):
            bad("w_scale must be finite and > 0")
    if not torch.isfinite(s_in) or s_in < 0:
        bad("input_scale must be finite and >= 0")
    if mode == QUANTIZED:
        if w_int.shape != m.weight.shape:
            bad(f"weight_int has shape {tuple(w_int.shape)}, expected {tuple(m.weight.shape)}")
        if w_int.abs().max() > qmax(c.bits):
            bad(f"weight_int has values beyond +-{qmax(c.bits)} for {c.bits}-bit weights")
        if m.bias is not None and (b_int.shape != m.bias.shape or b_int.abs().max() > INT28_MAX):
            bad("bias_int must have the bias' shape and int28 values")
        if m.is_encoder and not s_in > 0:
            bad("input_scale must be > 0 for an encoding layer")


def _set_quantized_from_file(self):
    self._set_mode(QUANTIZED)  # the integers come from the file, exactly as saved


QModel._set_quantized_from_file = _set_quantized_from_file
