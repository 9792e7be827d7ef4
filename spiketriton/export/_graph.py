"""Read a spiketriton model as a chain of per-time-step operations (shared by the NIR and chip exports).

Exports describe one time step of one sample: shapes carry neither T nor the batch. The model is
traced with ``torch.fx`` (neurons, spike layers and torch layers as leaves) and run once on a
canonical input ``[T=2, B=3, *features]`` with shape propagation, so that every value's shape is
known. A reshape that only folds or unfolds time and batch (``x.flatten(0, 1)``, ``unflatten(0, (T,
B))``, what :class:`~spiketriton.StepWise` does) is not an operation of the step; a reshape of the
features is a ``flatten`` step when it is one, and an error otherwise. Anything the exports cannot
express (a branch, an addition, an unknown module) is an error that names the node.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Optional

import torch
from torch import nn

from ..layers import SpikeLinear, _takes_images
from ..neuron import BaseNeuron

_T, _B = 2, 3  # canonical sequence length and batch: T*B = 6 is never confused with (T, B)

_RESHAPE_METHODS = {"flatten", "reshape", "view", "squeeze", "unsqueeze", "contiguous", "unflatten"}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_PASS_MODULES = (nn.Identity, nn.Dropout)  # inference: dropout is the identity


@dataclasses.dataclass
class Step:
    """One operation of a time step. ``kind`` is one of input, output, linear, conv2d, avgpool2d,
    sumpool2d, maxpool2d, flatten, neuron. Shapes are per sample, without time and batch."""

    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    module: Optional[nn.Module] = None
    start_dim: int = 0  # flatten: dims of the per-sample shape
    end_dim: int = -1


class ExportError(ValueError):
    """The model holds something the export format cannot express (the message names it)."""


def _is_leaf(m: nn.Module) -> bool:
    from ..quant.modules import QLIF, _QLayer

    return isinstance(m, (BaseNeuron, QLIF, SpikeLinear, _QLayer)) or _takes_images(m) or \
        type(m).__module__.startswith("spiketriton.hybrid")


def _copy_without_state(model: nn.Module) -> nn.Module:
    """A deep copy whose neurons carry no state (state may hold an autograd graph deepcopy refuses)."""
    from ..quant.modules import QLIF

    stash = {}
    for m in model.modules():
        if isinstance(m, (BaseNeuron, QLIF)):
            stash[m] = {k: m.__dict__[k] for k in ("v", "v_th_adpt", "ref_cnt") if k in m.__dict__}
            for k in stash[m]:
                m.__dict__[k] = None
    try:
        net = copy.deepcopy(model)
    finally:
        for m, state in stash.items():
            m.__dict__.update(state)
    for m in net.modules():
        if isinstance(m, BaseNeuron):
            m.packed_output = False  # shapes of dense spikes; the export never reads packed bits
    return net


def _per_step(shape, what: str) -> tuple:
    shape = tuple(shape)
    if shape[:2] == (_T, _B):
        return shape[2:]
    if shape and shape[0] == _T * _B:
        return shape[1:]
    raise ExportError(f"{what}: a value of shape {shape} for an input [T={_T}, B={_B}, ...] is neither [T, B, ...] "
                      f"nor [T*B, ...]; the export describes one time step and needs time and batch in front")


def check_model_and_sample(model, sample_input, what: str) -> None:
    """``TypeError`` unless ``model`` is an ``nn.Module`` and ``sample_input`` a tensor."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what}: model must be a torch.nn.Module (a network of spiketriton / torch layers), got "
                        f"{type(model).__name__}")
    if not isinstance(sample_input, torch.Tensor):
        raise TypeError(f"{what}: sample_input must be a torch.Tensor [T, B, *features], got "
                        f"{type(sample_input).__name__}")


def trace_steps(model: nn.Module, sample_input: torch.Tensor, what: str) -> list:
    """The model as a list of :class:`Step` from ``input`` to ``output`` (a chain)."""
    import torch.fx as fx

    check_model_and_sample(model, sample_input, what)
    if sample_input.dim() < 3:
        raise ValueError(f"{what}: sample_input must be a sequence [T, B, *features] (a tensor with at least 3 "
                         f"dimensions), got shape {tuple(sample_input.shape)}")
    try:
        net = _copy_without_state(model)
    except Exception as e:  # e.g. a module holding a lock or an open file: deepcopy refuses it
        raise ExportError(f"{what}: cannot copy the model to trace it (copy.deepcopy raised {type(e).__name__}: "
                          f"{_first_line(e)}); the export works on a copy and leaves the model untouched") from None
    from ..quant.model import _Prepared

    if isinstance(net, _Prepared):  # prepare()'s wrapper forwards *args: export the wrapped network
        net = net.net
    net.eval()

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return _is_leaf(m) or super().is_leaf_module(m, qualname)

    try:
        gm = fx.GraphModule(net, _Tracer().trace(net))
    except Exception as e:
        raise ExportError(f"{what}: torch.fx cannot trace the model's forward ({type(e).__name__}: {_first_line(e)}); "
                          f"the export needs a forward without data-dependent Python control flow") from None
    param = next(net.parameters(), None)
    shape = (_T, _B) + tuple(sample_input.shape[2:])
    shapes = {}

    class _Shapes(fx.Interpreter):  # (fx's ShapeProp prints a traceback of its own on failure)
        def run_node(self, n):
            result = super().run_node(n)
            if isinstance(result, torch.Tensor):
                shapes[n] = tuple(result.shape)
            return result

    try:
        x = torch.zeros(shape, dtype=sample_input.dtype,
                        device=param.device if param is not None else sample_input.device)
        with torch.no_grad():
            _Shapes(gm).run(x)
    except Exception as e:  # (MemoryError included: an input too large to allocate)
        raise ExportError(f"{what}: running the model on an input of shape {shape} failed "
                          f"({type(e).__name__}: {_first_line(e)})") from None
    modules = dict(gm.named_modules())

    def shape_of(node):
        if node not in shapes:
            raise ExportError(f"{what}: the node {node.name!r} does not produce one tensor")
        return _per_step(shapes[node], f"{what}: node {node.name!r}")

    # shape queries (x.shape, x.size(), x.ndim, and arithmetic on them such as T * B) only feed
    # reshapes: they are not values of the chain
    meta = set()
    for node in gm.graph.nodes:
        inputs = _nodes_in((node.args, node.kwargs), fx.Node)
        if (node.op == "call_function" and node.target is getattr) or \
                (node.op == "call_method" and node.target in ("size", "dim")) or \
                (node.op in ("call_function", "call_method") and node not in shapes and inputs
                 and all(a in meta for a in inputs)):
            meta.add(node)

    steps, head = [], None  # head: the fx node holding the chain's current value
    for node in gm.graph.nodes:
        if node in meta:
            continue
        if node.op == "placeholder":
            if head is not None:
                raise ExportError(f"{what}: the model takes more than one input ({node.name!r})")
            head = node
            steps.append(Step("input", "input", shape_of(node), shape_of(node)))
            continue
        if node.op == "get_attr":
            raise ExportError(f"{what}: the forward reads the tensor {node.target!r} directly; only module calls "
                              f"and reshapes can be exported")
        if node.op == "output":
            if node.args[0] is not head:
                raise ExportError(f"{what}: the model's output is not the end of a single chain of layers")
            steps.append(Step("output", "output", shape_of(head), shape_of(head)))
            break
        args = [a for a in _nodes_in((node.args, node.kwargs), fx.Node) if a not in meta]
        if len(args) != 1 or args[0] is not head:
            raise ExportError(f"{what}: the node {node.name!r} ({node.op} {node.target}) does not continue a single "
                              f"chain of layers (branches, additions and concatenations cannot be exported)")
        if len([u for u in head.users if u not in meta]) != 1:
            raise ExportError(f"{what}: the value of {head.name!r} is used more than once (a branch)")
        in_shape, out_shape = shape_of(head), shape_of(node)
        if node.op == "call_module":
            m = modules[node.target]
            kind = _module_kind(m, node.target, what)
            if kind is None:  # identity / dropout
                head = node
                continue
            if kind == "flatten":
                steps.append(_flatten_step(node.target, in_shape, out_shape, what))
            else:
                steps.append(Step(node.target, kind, in_shape, out_shape, module=m))
        elif (node.op == "call_method" and node.target in _RESHAPE_METHODS) or \
                (node.op == "call_function" and node.target in _RESHAPE_FUNCS):
            if in_shape != out_shape:
                steps.append(_flatten_step(node.name, in_shape, out_shape, what))
        else:
            raise ExportError(f"{what}: cannot export the operation {node.name!r} ({node.op} "
                              f"{getattr(node.target, '__name__', node.target)}); only layers, neurons and reshapes")
        head = node
    return steps


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def _nodes_in(obj, node_type) -> list:
    if isinstance(obj, node_type):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [n for o in obj for n in _nodes_in(o, node_type)]
    if isinstance(obj, dict):
        return [n for o in obj.values() for n in _nodes_in(o, node_type)]
    return []


def _module_kind(m: nn.Module, name: str, what: str) -> Optional[str]:
    from ..quant.modules import QLIF, QConv2d, QLinear

    if isinstance(m, _PASS_MODULES):
        return None
    if isinstance(m, (BaseNeuron, QLIF)):
        return "neuron"
    if isinstance(m, (nn.Linear, QLinear)):
        return "linear"
    if isinstance(m, (nn.Conv2d, QConv2d)):
        if m.padding_mode != "zeros":
            raise ExportError(f"{what}: {name}: Conv2d padding_mode={m.padding_mode!r} cannot be exported (zeros only)")
        if isinstance(m.padding, str):
            k = _pair(m.kernel_size)
            why = ("an even kernel pads one side more than the other with 'same', which the formats (one padding "
                   "per side pair) cannot express: use an odd kernel or numbers" if m.padding == "same" and any(
                       (d * (kk - 1)) % 2 for d, kk in zip(_pair(m.dilation), k)) else "give the padding as numbers")
            raise ExportError(f"{what}: {name}: Conv2d padding={m.padding!r}; {why}")
        return "conv2d"
    if isinstance(m, nn.Flatten):
        return "flatten"
    if isinstance(m, nn.MaxPool2d):  # (SpikeMaxPool2d too) the exports take it on spikes only: an OR
        bad = [f"{k}={v!r}" for k, v, ok in (("ceil_mode", m.ceil_mode, not m.ceil_mode),
                                             ("dilation", m.dilation, _pair(m.dilation) == (1, 1)),
                                             ("return_indices", m.return_indices, not m.return_indices)) if not ok]
        if bad:
            raise ExportError(f"{what}: {name}: {type(m).__name__} with {', '.join(bad)} cannot be exported (max pooling "
                              f"of spikes is written as a sum pooling and a threshold, which have neither)")
        return "maxpool2d"
    if isinstance(m, nn.AvgPool2d):
        if m.ceil_mode:
            raise ExportError(f"{what}: {name}: AvgPool2d(ceil_mode=True) cannot be exported")
        if m.divisor_override not in (None, 1):
            raise ExportError(f"{what}: {name}: AvgPool2d(divisor_override={m.divisor_override}) cannot be exported "
                              f"(None: average, 1: sum pooling)")
        if any(p != 0 for p in _pair(m.padding)) and m.divisor_override is None:
            raise ExportError(f"{what}: {name}: AvgPool2d with padding cannot be exported (whether padded zeros "
                              f"count in the average is not part of the formats)")
        return "sumpool2d" if m.divisor_override == 1 else "avgpool2d"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        raise ExportError(f"{what}: {name}: {type(m).__name__} cannot be exported: fold it into the Conv2d/Linear "
                          f"before it first (model = spiketriton.ann2snn.fold_batchnorms(model); quant.prepare "
                          f"folds it too)")
    raise ExportError(f"{what}: {name}: {type(m).__name__} cannot be exported (supported: Linear/SpikeLinear, "
                      f"Conv2d/SpikeConv2d, AvgPool2d/SpikeAvgPool2d/SpikeSumPool2d, MaxPool2d/SpikeMaxPool2d of "
                      f"spikes, Flatten, Identity, Dropout, IF, LIF, PLIF, ExtendedLIF and the quant layers)")


def _flatten_step(name, in_shape, out_shape, what) -> Step:
    """A reshape of the features that merges one run of dims ``[start, end]`` into one."""
    n = len(in_shape)
    for start in range(n):
        for end in range(start, n):
            merged = in_shape[:start] + (math.prod(in_shape[start:end + 1]),) + in_shape[end + 1:]
            if merged == out_shape:
                return Step(name, "flatten", in_shape, out_shape, start_dim=start, end_dim=end)
    raise ExportError(f"{what}: {name}: a reshape of the features {in_shape} -> {out_shape} is not a flatten of "
                      f"adjacent dimensions and cannot be exported")


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
