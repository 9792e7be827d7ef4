"""SpikeLinear: a drop-in for nn.Linear on spike inputs, and ``convert(model)``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .functional.spikes import SpikeTensor, is_binary, spike_matmul
from .neuron import BaseNeuron

__all__ = ["SpikeLinear", "convert"]


_NOT_BINARY = ("SpikeLinear: input has values other than 0 and 1; it expects spikes (use nn.Linear for "
               "real-valued input, or check_binary=False if the input is known to be binary)")


class SpikeLinear(nn.Linear):
    """``y = s @ W.T + b`` for binary spikes ``s [..., in_features]`` (0/1 float or bool, or a
    :class:`~spiketriton.functional.spikes.SpikeTensor`), on the add-only spike matmul.

    Same parameters, initialisation and ``state_dict`` keys as ``nn.Linear`` (it is one).

    - ``check_binary=True``: a float input with values other than 0 and 1 is a ValueError. The check
      reads the input once and synchronises with the device; switch it off for speed when the
      input is known to be spikes (a non-binary input then gives a wrong result, not an error).
    - ``input_dropout``: dropout of the input spikes folded into the layer (``convert`` sets it when a
      ``nn.Dropout`` sits between a neuron and the layer): in training, spikes are dropped with
      probability p and the product is scaled by ``1/(1-p)``, the same values and RNG draws as
      ``nn.Linear(nn.Dropout(p)(s))`` while the input to the matmul stays binary.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 check_binary: bool = True, input_dropout: float = 0.0, backend: str = "auto"):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if not 0.0 <= float(input_dropout) < 1.0:
            raise ValueError(f"SpikeLinear: input_dropout must be in [0, 1), got {input_dropout}")
        self.check_binary = check_binary
        self.input_dropout = float(input_dropout)
        self.backend = backend

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "SpikeLinear":
        """A SpikeLinear holding (sharing) ``linear``'s weight and bias."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SpikeLinear.from_linear: expected an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device="meta", dtype=w.dtype, **kwargs)
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def forward(self, s):
        K = self.in_features
        if isinstance(s, SpikeTensor):
            if s.k != K:
                raise ValueError(f"SpikeLinear: packed spikes have logical size k = {s.k}, expected in_features = {K}")
        elif isinstance(s, torch.Tensor):
            if s.dtype == torch.uint8:
                raise TypeError(
                    "SpikeLinear: got a uint8 tensor; wrap packed spikes as SpikeTensor(data, k) "
                    "(spiketriton.pack_spikes) or pass 0/1 spikes as float or bool"
                )
            if not (s.is_floating_point() or s.dtype == torch.bool):
                raise TypeError(f"SpikeLinear: spikes must be float/bool 0/1 or a SpikeTensor, got {s.dtype}")
            if s.dim() < 1 or s.shape[-1] != K:
                raise ValueError(f"SpikeLinear: input [..., {K}] expected, got shape {tuple(s.shape)}")
            if self.check_binary:
                if torch.compiler.is_compiling():
                    # a data-dependent Python branch would break the graph: a traced device-side assert
                    # (a RuntimeError with the same message when the compiled code runs)
                    torch._assert_async(((s == 0) | (s == 1)).all(), _NOT_BINARY)
                elif not is_binary(s):
                    raise ValueError(_NOT_BINARY)
            if s.dtype == torch.bool:
                s = s.to(self.weight.dtype)
        else:
            raise TypeError(f"SpikeLinear: expected a tensor or SpikeTensor, got {type(s).__name__}")
        p = self.input_dropout
        if p > 0.0 and self.training:
            if isinstance(s, SpikeTensor):
                s = s.to_dense(self.weight.dtype, backend=self.backend)
            # the same Bernoulli draws as nn.Dropout(p)(s), kept binary; the 1/(1-p) goes after the matmul
            keep = torch.nn.functional.dropout(torch.ones_like(s), p, True) != 0
            # under autocast, as the eval path's single spike_matmul call: weight and bias rounded to
            # the autocast dtype, the sum, the 1/(1-p) and the bias in fp32, one rounding at the end
            dev = s.device.type
            cast = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
            w, b = self.weight, self.bias
            if cast is not None:
                w = w.to(cast).to(w.dtype)
                b = b.to(cast).to(b.dtype) if b is not None else None
            with torch.autocast(dev, enabled=False):
                y = spike_matmul(s * keep, w, None, backend=self.backend) / (1.0 - p)
                if b is not None:
                    y = y + b
            return y.to(cast) if cast is not None else y
        return spike_matmul(s, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        extra = f", input_dropout={self.input_dropout}" if self.input_dropout else ""
        return super().extra_repr() + f", check_binary={self.check_binary}{extra}"


# --------------------------------------------------------------------------------------------- #
# convert
# --------------------------------------------------------------------------------------------- #

# modules and ops that move or reshape values without changing them: spikes stay spikes
_SHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity)
_SHAPE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute,
                torch.movedim}
_SHAPE_METHODS = {"flatten", "reshape", "view", "squeeze", "unsqueeze", "transpose", "permute", "contiguous",
                  "movedim", "unflatten"}


class StepWise(nn.Sequential):
    """Apply per-step (stateless) modules, e.g. ``nn.Conv2d`` or pooling, to a sequence
    ``[T, B, *features]`` by folding time into the batch: ``m(x.flatten(0, 1)).unflatten(0, (T, B))``.

    ``StepWise(nn.Conv2d(2, 8, 3), nn.AvgPool2d(2))`` is an ``nn.Sequential`` (same state_dict keys
    ``0.weight``, ...), so quantization and export see its layers as usual.
    """

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if isinstance(x_seq, torch.Tensor) and x_seq.dim() < 3:  # (an fx Proxy passes: traced, not run)
            raise ValueError(f"StepWise: expected a sequence [T, B, *features], got shape {tuple(x_seq.shape)}")
        y = super().forward(x_seq.flatten(0, 1))
        return y.unflatten(0, (x_seq.shape[0], x_seq.shape[1]))


def convert(model: nn.Module, check_binary: bool = True, packed: bool = True, backend: str = "auto") -> nn.Module:
    """Replace every ``nn.Linear`` whose input comes from a spiking neuron (directly, or through
    shape-only modules/ops such as Flatten, Identity, view/reshape, or an nn.Dropout that is folded
    into the new layer) with a :class:`SpikeLinear` sharing the same weights. Other layers are left
    alone. Works in place and returns ``model``; the converted model gives the same outputs.

    With ``packed=True``, a neuron whose only consumer is a converted layer is switched to
    ``packed_output``: its spikes go to the layer 8 per byte and no float spike tensor is made.

    The data flow is read with ``torch.fx`` (neurons and torch modules as leaves); a model fx cannot
    trace is read as nested ``nn.Sequential`` containers in order.
    """
    found = _targets_fx(model)
    if found is None:
        found = _targets_sequential(model)
    targets, feeders = found
    # build every replacement first, then swap: a failure leaves the model untouched
    swaps = []
    for name, dropout_name in targets.items():
        linear = model.get_submodule(name)
        p = model.get_submodule(dropout_name).p if dropout_name is not None else 0.0
        new = SpikeLinear.from_linear(linear, check_binary=check_binary, input_dropout=p, backend=backend)
        swaps.append((name, new, dropout_name))
    for name, new, dropout_name in swaps:
        if dropout_name is not None:
            _set_submodule(model, dropout_name, nn.Identity())
        _set_submodule(model, name, new)
    if packed:
        converted = {name for name, _, _ in swaps}
        for neuron_name, linear_name in feeders:
            neuron = model.get_submodule(neuron_name)
            # a hook on the neuron (e.g. a firing-rate monitor) would be handed packed spikes
            if linear_name in converted and not neuron._forward_hooks:
                neuron.packed_output = True
    return model



def _is_plain_linear(m) -> bool:
    # exactly nn.Linear: a subclass may do more in its forward than the matmul (and a parametrized
    # Linear, e.g. weight_norm, is a generated subclass whose weight is computed)
    return type(m) is nn.Linear


def _targets_fx(model: nn.Module) -> Optional[dict]:
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (BaseNeuron, SpikeLinear)) or type(m).__module__.startswith("spiketriton.hybrid") \
                or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception:  # data-dependent control flow etc.: fall back to the Sequential reading
        return None
    modules = dict(model.named_modules())
    spiking = {}  # node -> True when its value is spikes; dropout node feeding it (if any) tracked below
    via_dropout = {}
    for node in graph.nodes:
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if node.op == "call_module":
            mod = modules.get(node.target)
            if isinstance(mod, BaseNeuron) or getattr(mod, "emits_spikes", False):  # neurons, A2S hybrid units
                spiking[node] = True
            elif isinstance(mod, _SHAPE_MODULES) and src is not None and spiking.get(src):
                spiking[node] = True
                via_dropout[node] = via_dropout.get(src)
            elif type(mod) is nn.Dropout and src is not None and spiking.get(src) and via_dropout.get(src) is None \
                    and len(node.users) == 1 and _calls(graph, node.target) == 1:  # a shared Dropout stays
                spiking[node] = True
                via_dropout[node] = node.target
        elif node.op == "call_function" and node.target in _SHAPE_FUNCS and src is not None and spiking.get(src):
            spiking[node] = True
            via_dropout[node] = via_dropout.get(src)
        elif node.op == "call_method" and node.target in _SHAPE_METHODS and src is not None and spiking.get(src):
            spiking[node] = True
            via_dropout[node] = via_dropout.get(src)
    uses = {}
    direct = {}  # linear name -> neuron name, when the neuron's only consumer is that one call
    for node in graph.nodes:
        if node.op == "call_module" and _is_plain_linear(modules.get(node.target)):
            src = node.args[0] if node.args else None
            ok = isinstance(src, fx.Node) and spiking.get(src, False)
            uses.setdefault(node.target, []).append((ok, via_dropout.get(src) if ok else None))
            if ok and src.op == "call_module" and isinstance(modules.get(src.target), BaseNeuron) \
                    and len(src.users) == 1:
                direct.setdefault(node.target, []).append(src.target)
    # a Linear called several times is converted only if every call sees spikes (and no dropout folds)
    out, feeders = {}, []
    for name, calls in uses.items():
        if all(ok for ok, _ in calls):
            drops = {d for _, d in calls}
            if len(calls) == 1 or drops == {None}:
                out[name] = calls[0][1]
                neurons = direct.get(name, [])
                # a neuron module called once, feeding only this layer, may hand over packed spikes
                if len(neurons) == len(calls) and all(_calls(graph, n) == 1 for n in neurons):
                    feeders.extend((n, name) for n in neurons)
    return out, feeders


def _calls(graph, target: str) -> int:
    return sum(1 for n in graph.nodes if n.op == "call_module" and n.target == target)


def _targets_sequential(model: nn.Module):
    """Fallback reading of a model fx cannot trace: nested Sequentials in order. The model's own
    forward may use a neuron's output or a Dropout elsewhere, so this path never switches neurons to
    packed output and never folds a Dropout (a Dropout ends the chain)."""
    out = {}
    for prefix, mod in model.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        spiking = False
        for name, child in mod.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, BaseNeuron):
                spiking = True
            elif spiking and isinstance(child, _SHAPE_MODULES):
                continue
            elif spiking and _is_plain_linear(child):
                out[full] = None
                spiking = False
            else:
                spiking = False
    return out, []


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
