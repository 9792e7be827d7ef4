"""ANN-to-SNN conversion: a trained ReLU network becomes a network of integrate-and-fire neurons.

    snn = spiketriton.ann2snn.convert_ann(ann, calibration_data, mode="percentile")
    out = snn(spiketriton.encoding.direct(x, T))    # [T, B, classes]
    pred = out.mean(0).argmax(-1)                   # the rate-coded prediction after T steps

**What converts.** ``ann`` is an ``nn.Sequential`` (nested plain ``nn.Sequential`` containers are
read in order) of exactly these modules: ``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm1d`` /
``nn.BatchNorm2d`` (each right after the Linear / Conv2d it is folded into, Dropout or Identity in
between allowed), ``nn.AvgPool2d``, ``nn.MaxPool2d``, ``nn.Flatten``, ``nn.Dropout`` (the identity in
eval: dropped), ``nn.Identity``, ``nn.ReLU`` and :class:`QCFS`. Anything else (another activation, a
subclass with its own forward, a container with its own forward, a BatchNorm without running
statistics) is a ``ValueError`` naming the module and what is supported: the data flow is never
guessed. The ANN is not changed (the conversion works on copies).

**What it becomes.** An ordinary spiketriton model (``nn.Sequential``) on ``[T, B, *input]``, time
first: each ReLU / QCFS becomes an :class:`~spiketriton.IF` neuron with threshold 1 and a soft
(subtractive) reset (``v_reset=None``); Conv2d, pooling and Flatten run per step inside
:class:`~spiketriton.StepWise`; Linear layers stay ``nn.Linear`` (they act on the last dimension, and
:func:`spiketriton.convert` can turn those fed by a neuron into ``SpikeLinear``). The input is a
constant current by default: the analog input repeated each step (:func:`spiketriton.encoding.direct`).

**Threshold balancing, by scaling the weights.** Each ReLU gets a scale ``lambda_l``: the largest
activation over the calibration data (``mode="max"``), or a percentile of its positive activations
(``mode="percentile"``: 99.9; or a number ``p`` in (0, 100]), or a QCFS module's learned threshold.
The layer feeding neuron ``l`` is rescaled so that its current is the ANN's pre-activation divided by
``lambda_l`` (weights ``* lambda_{l-1} / lambda_l``, bias ``/ lambda_l``; the analog input has scale
1); the neuron's threshold stays 1, so its firing rate over T steps approximates
``min(ReLU(a) / lambda_l, 1)`` and each spike stands for ``lambda_l`` of the ANN's activation
("data-based normalisation", Diehl et al. 2015; Rueckauer et al. 2017). Pooling and Flatten commute
with a positive scale, so the factors pass through them. The neurons start at ``v_init`` (half the
threshold by default), which centres the rounding of the spike count: with a constant input
current ``z`` in [0, 1] the count after T steps is ``floor(T z + v_init)`` (error at most 1/2 spike,
against up to 1 spike from 0).

**The last layer.** The layer after the last neuron has no neuron: its weights take the factor
``lambda`` of the neuron before it and nothing else, so its output at each step is the ANN's output
in the ANN's units for that step's spikes. The model returns this current for every step,
``[T, B, classes]``; its mean over T is the converted network's output (the rate decoding), which
converges to the ANN's logits as T grows: ``out.mean(0)``. A network that ends with a ReLU returns
that neuron's spikes instead (rate ~ activation / lambda).

**Pooling on spikes.** AvgPool2d of spikes is exact (linear: the mean of rates is the rate of the
mean). MaxPool2d is kept, but the max of 0/1 spikes at one step is their OR, whose rate is at least
the largest input rate and up to the sum of them: a max-pooled SNN over-estimates its activations
(an error SpikingJelly's documentation also notes). Prefer AvgPool2d in networks meant for
conversion.

**QCFS, for low T.** :func:`relu_to_qcfs` replaces each ReLU by :class:`QCFS` (quantization-clip-
floor-shift, Bu et al., ICLR 2022): ``lambda / L * clamp(floor(x L / lambda + 1/2), 0, L)`` with a
learnable ``lambda``. Fine-tune the ANN with it, then convert: each QCFS becomes an IF neuron with
scale ``lambda``; with ``v_init=0.5`` the first layer's spike count at T = L equals the QCFS level
exactly, and a few steps already give most of the ANN's accuracy.

**Quantization and export.** The result is made of nn.Conv2d / nn.Linear / pooling / Flatten in
``StepWise`` and IF neurons, so :func:`spiketriton.quant.prepare` takes it as any spiketriton model
(a neuron's ``v_init`` is carried into its QLIF). NIR has no subtractive reset and no initial
potential: :func:`spiketriton.export.to_nir` refuses the soft-reset neurons (an ``ExportError``
naming them); ``convert_ann(..., reset="hard", v_init=0.0)`` builds an exportable model (hard reset
to 0, less accurate: the charge above the threshold is lost at each spike); keep ``v_init=0.0``
there, since NIR neurons start at rest. MaxPool2d has no NIR node either.

BatchNorm is always read with its running statistics and Dropout as the identity (the ANN's eval
mode), whatever ``ann.training`` is. Hooks on the ANN's modules are not carried into the SNN (nor used
in calibration).

>>> import torch, spiketriton as st
>>> from torch import nn
>>> ann = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
>>> with torch.no_grad():
...     _ = ann[0].weight.copy_(torch.eye(3, 2)); _ = ann[0].bias.zero_()
>>> x = torch.tensor([[1.0, 0.5], [0.25, 1.0]])
>>> snn = st.ann2snn.convert_ann(ann, x, mode="max")
>>> snn
Sequential(
  (0): Linear(in_features=2, out_features=3, bias=True)
  (1): IF(v_threshold=1.0, v_reset=None (soft), v_init=0.5, surrogate=Sigmoid(alpha=4.0), detach_reset=False, backend='auto')
  (2): Linear(in_features=3, out_features=2, bias=True)
)
>>> st.ann2snn.activation_scales(ann, x, mode="max")
[1.0]
>>> out = snn(st.encoding.direct(x, 32))
>>> torch.allclose(out.mean(0), ann(x), atol=0.5 / 32 * ann[2].weight.abs().sum(1).max().item())
True
"""

from __future__ import annotations

import copy
import math
from typing import Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from .conv import SpikeConv2d
from .functional._checks import check_backend, finite
from .layers import SpikeLinear, StepWise
from .neuron import IF, BaseNeuron

__all__ = ["convert_ann", "activation_scales", "relu_to_qcfs", "fold_batchnorm", "fold_batchnorms", "QCFS",
           "SUPPORTED_MODULES", "DEFAULT_PERCENTILE"]

#: the percentile of ``mode="percentile"``
DEFAULT_PERCENTILE = 99.9

_WEIGHTED = (nn.Conv2d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_POOLING = (nn.AvgPool2d, nn.MaxPool2d)
_DROPPED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)  # the identity in eval
_PER_STEP = (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten)  # run in StepWise (time folded into the batch)


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation (Bu et al., "Optimal ANN-SNN conversion for high-accuracy
    and ultra-low-latency spiking neural networks", ICLR 2022), a ReLU replacement for ANNs meant for
    conversion at low T:

        QCFS(x) = threshold / levels * clamp(floor(x * levels / threshold + 1/2), 0, levels)

    ``levels`` (L) is the number of quantization steps (the T at which the converted first layer is
    exact); ``threshold`` (lambda) is learnable (an ``nn.Parameter``, gradient through a
    straight-through floor). :func:`convert_ann` turns it into an IF neuron whose scale is the learned
    threshold (no calibration needed for it). The shift 1/2 matches the neurons' ``v_init=0.5``.
    """

    def __init__(self, levels: int = 8, threshold: float = 1.0):
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise (ValueError if isinstance(levels, int) and not isinstance(levels, bool) else TypeError)(
                f"QCFS: levels must be an int >= 1 (the quantization steps), got {levels!r}")
        threshold = finite(threshold, "threshold", "QCFS")
        if threshold <= 0:
            raise ValueError(f"QCFS: threshold must be > 0 (the largest output), got {threshold}")
        self.levels = levels
        self.threshold = nn.Parameter(torch.tensor(threshold))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .quant.quantizer import floor_ste

        lam = self.threshold.to(x.dtype)
        L = self.levels
        return torch.clamp(floor_ste(x * (L / lam) + 0.5), 0, L) * (lam / L)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={float(self.threshold.detach()):.4g}"


#: the modules :func:`convert_ann` accepts (exact types; plus plain nn.Sequential containers)
SUPPORTED_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten,
                     nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.ReLU, QCFS)
_SUPPORTED_NAMES = ("Conv2d, Linear, BatchNorm1d/2d (after the Conv2d/Linear it folds into), AvgPool2d, MaxPool2d, "
                    "Flatten, Dropout, Identity, ReLU and spiketriton.ann2snn.QCFS, in nn.Sequential containers")
# activations that are not ReLU: named in the error (an IF neuron's rate is a clipped ReLU of its current)
_ACTIVATIONS = (nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
                nn.Softmax, nn.LogSoftmax, nn.Threshold, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink,
                nn.LogSigmoid)


# --------------------------------------------------------------------------------------------- #
# Reading the ANN
# --------------------------------------------------------------------------------------------- #


def _flatten(module: nn.Module, prefix: str, op: str, out: List[Tuple[str, nn.Module]]) -> None:
    """The leaf modules of nested plain nn.Sequential containers, in order, with their names."""
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            if type(child).forward is not nn.Sequential.forward:
                raise ValueError(f"{op}: {full!r} ({type(child).__name__}) is an nn.Sequential with its own forward, "
                                 f"so the order of its children is not proven to be its data flow; use plain "
                                 f"nn.Sequential containers of {_SUPPORTED_NAMES}")
            _flatten(child, full, op, out)
            continue
        _check_supported(full, child, op)
        out.append((full, child))


def _check_supported(name: str, m: nn.Module, op: str) -> None:
    kind = type(m).__name__
    if type(m) in SUPPORTED_MODULES:
        if isinstance(m, nn.MaxPool2d) and m.return_indices:
            raise ValueError(f"{op}: {name!r} (MaxPool2d) has return_indices=True; only the pooled values convert")
        if isinstance(m, _BATCHNORM) and (m.running_mean is None or m.running_var is None):
            raise ValueError(f"{op}: {name!r} ({kind}) has no running statistics (track_running_stats=False), so in "
                             f"eval it normalises with each batch's own statistics, which no fixed weights can "
                             f"fold; train it with track_running_stats=True")
        return
    if isinstance(m, SUPPORTED_MODULES):
        raise ValueError(f"{op}: {name!r} is a {kind}, a subclass of {type(m).__mro__[1].__name__} whose forward may "
                         f"do more; only the exact types convert: {_SUPPORTED_NAMES}")
    if isinstance(m, _ACTIVATIONS):
        raise ValueError(f"{op}: {name!r} is a {kind} activation; only nn.ReLU (and spiketriton.ann2snn.QCFS) convert "
                         f"to IF neurons, whose firing rate is a clipped ReLU of their input current. Replace it with "
                         f"nn.ReLU and fine-tune the ANN before converting")
    raise ValueError(f"{op}: {name!r} ({kind}) cannot be converted: the supported modules are {_SUPPORTED_NAMES}")


def _read(ann, op: str) -> List[Tuple[str, nn.Module]]:
    """The ANN as a list of (name, module) with BatchNorm folded into its Conv2d/Linear and the eval
    identities (Dropout, Identity) dropped; modules are copies (the ANN is untouched)."""
    if not isinstance(ann, nn.Module):
        raise TypeError(f"{op}: ann must be a torch.nn.Module (an nn.Sequential of ReLU layers), got "
                        f"{type(ann).__name__}")
    if not isinstance(ann, nn.Sequential) or type(ann).forward is not nn.Sequential.forward:
        raise ValueError(f"{op}: ann must be an nn.Sequential (nested nn.Sequential allowed) of {_SUPPORTED_NAMES}; "
                         f"got {type(ann).__name__}, whose forward's data flow is not read (it is never guessed)")
    leaves: List[Tuple[str, nn.Module]] = []
    _flatten(ann, "", op, leaves)
    ops: List[Tuple[str, nn.Module]] = []
    for name, m in leaves:
        if isinstance(m, _DROPPED):
            continue
        if isinstance(m, _BATCHNORM):
            want = nn.Conv2d if isinstance(m, nn.BatchNorm2d) else nn.Linear
            prev_name, prev = ops[-1] if ops else (None, None)
            if not isinstance(prev, want) or getattr(prev, "_folded", False):
                after = f"after {prev_name!r} ({type(prev).__name__})" if prev is not None else "at the start"
                raise ValueError(f"{op}: {name!r} ({type(m).__name__}) comes {after}; a {type(m).__name__} folds only "
                                 f"into the {want.__name__} right before it (Dropout/Identity in between allowed)")
            out_ch = prev.out_channels if isinstance(prev, nn.Conv2d) else prev.out_features
            if m.num_features != out_ch:
                raise ValueError(f"{op}: {name!r} normalises {m.num_features} features but {prev_name!r} gives {out_ch}")
            ops[-1] = (prev_name, fold_batchnorm(prev, m))
            ops[-1][1]._folded = True
            continue
        ops.append((name, copy.deepcopy(m)))
    for _, m in ops:
        m.__dict__.pop("_folded", None)
        _drop_hooks(m)
        m.eval()
    if not any(isinstance(m, _WEIGHTED) for _, m in ops):
        raise ValueError(f"{op}: ann has no Conv2d or Linear layer; there is nothing to convert")
    return ops


def _drop_hooks(m: nn.Module) -> None:
    """Hooks registered on the ANN's modules are not carried into the copies: they were written for
    ``[B, ...]`` activations (a StepWise layer sees ``[T*B, ...]``), and one that replaced a value
    would change the calibration silently."""
    for k, v in vars(m).items():
        if "hook" in k and isinstance(v, dict):
            vars(m)[k] = type(v)()


def fold_batchnorm(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` with the eval-mode BatchNorm ``bn`` (running statistics) that follows it folded
    in: ``fold_batchnorm(conv, bn)(x) == bn.eval()(conv(x))`` up to rounding (computed in float64, cast
    back to the layer's dtype).

    ``layer``: an ``nn.Conv2d`` (a :class:`~spiketriton.SpikeConv2d` too: the copy keeps its class and
    options) followed by an ``nn.BatchNorm2d``, or an ``nn.Linear`` (a :class:`~spiketriton.SpikeLinear`
    too) followed by an ``nn.BatchNorm1d``. ``bn`` may be the multi-step form: a
    :class:`~spiketriton.StepWise` holding only that BatchNorm (statistics over T x B, SpikingJelly's
    ``layer.BatchNorm2d(step_mode='m')``, which is accepted as well). A BatchNorm whose channel count
    differs from the layer's outputs is a ValueError.

    >>> import torch, spiketriton as st
    >>> from torch import nn
    >>> conv, bn = st.SpikeConv2d(2, 4, 3, padding=1), st.StepWise(nn.BatchNorm2d(4))
    >>> _ = bn.train()(conv(torch.ones(3, 2, 2, 5, 5)))       # running statistics from one batch
    >>> s = (torch.rand(3, 2, 2, 5, 5) < 0.5).float()
    >>> folded = st.ann2snn.fold_batchnorm(conv, bn)
    >>> type(folded).__name__, torch.allclose(folded(s), bn.eval()(conv(s)), atol=1e-5)
    ('SpikeConv2d', True)
    """
    inner = _single_batchnorm(bn)
    if not isinstance(layer, _WEIGHTED) or inner is None:
        raise TypeError(f"fold_batchnorm: expected an nn.Conv2d/nn.Linear and a BatchNorm (or a StepWise holding "
                        f"one), got {type(layer).__name__} and {type(bn).__name__}")
    bn = inner
    want = nn.BatchNorm2d if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d
    if not isinstance(bn, want):
        raise ValueError(f"fold_batchnorm: a {type(bn).__name__} after a {type(layer).__name__}; a Conv2d's output "
                         f"is normalised by a BatchNorm2d, a Linear's by a BatchNorm1d")
    n_out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    if bn.num_features != n_out:
        raise ValueError(f"fold_batchnorm: the {type(bn).__name__} normalises {bn.num_features} features but the "
                         f"{type(layer).__name__} gives {n_out}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm: the BatchNorm has no running statistics (track_running_stats=False)")
    new = copy.deepcopy(layer)
    with torch.no_grad():
        w = layer.weight.double()
        b = layer.bias.double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                            device=w.device)
        scale = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale + (bn.bias.double() if bn.affine else 0.0)
        new.weight = nn.Parameter((w * scale.reshape((-1,) + (1,) * (w.dim() - 1))).to(layer.weight.dtype))
        new.bias = nn.Parameter((b * scale + shift).to(layer.weight.dtype))
    return new


def _single_batchnorm(m) -> Optional[nn.Module]:
    """``m`` itself when it is a BatchNorm1d/2d, the BatchNorm of a StepWise holding only one, else None."""
    if isinstance(m, _BATCHNORM):
        return m
    if isinstance(m, StepWise) and type(m).forward is StepWise.forward and len(m) == 1 and \
            isinstance(m[0], _BATCHNORM):
        return m[0]
    return None


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference with every BatchNorm that directly follows a Conv2d / Linear
    (SpikeConv2d / SpikeLinear included) folded into it (:func:`fold_batchnorm`) and replaced by
    ``nn.Identity``. "Directly follows": the next module in the same ``nn.Sequential`` /
    :class:`~spiketriton.StepWise` (plain forwards, whose order is their data flow), or the first module
    of the StepWise / Sequential that comes next, as in ``StepWise(conv), StepWise(bn)``. The copy
    computes what ``model.eval()`` computes (BatchNorm with its running statistics); ``model`` is not
    changed. A BatchNorm without running statistics, or one that follows anything else, stays.

    >>> import torch, spiketriton as st
    >>> from torch import nn
    >>> net = nn.Sequential(st.StepWise(st.SpikeConv2d(2, 4, 3), nn.BatchNorm2d(4)), st.LIF())
    >>> folded = st.ann2snn.fold_batchnorms(net)
    >>> folded[0]
    StepWise(
      (0): SpikeConv2d(2, 4, kernel_size=(3, 3), stride=(1, 1), check_binary=True)
      (1): Identity()
    )
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorms: model must be a torch.nn.Module, got {type(model).__name__}")
    from .export._graph import _copy_without_state

    new = _copy_without_state(model)  # (without the neurons' state, which may hold an autograd graph)
    for a, b in zip(model.modules(), new.modules()):
        if isinstance(a, BaseNeuron):
            b.packed_output = a.packed_output  # (the export's copy switches packing off)
    _fold_in(new)
    return new.eval()


def _plain(m) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward in (nn.Sequential.forward, StepWise.forward)


def _edge(m, first: bool):
    """(container, name) of the first / last leaf of ``m`` through plain containers, or None."""
    while _plain(m) and len(m):
        name = next(iter(m._modules)) if first else list(m._modules)[-1]
        if not _plain(m._modules[name]):
            return m, name
        m = m._modules[name]
    return None


def _fold_in(module: nn.Module) -> None:
    for child in module.children():
        _fold_in(child)
    if not _plain(module):
        return
    names = list(module._modules)
    for a, b in zip(names, names[1:]):
        left = (module, a) if not _plain(module._modules[a]) else _edge(module._modules[a], first=False)
        right = (module, b) if not _plain(module._modules[b]) else _edge(module._modules[b], first=True)
        if left is None or right is None:
            continue
        layer, bn = left[0]._modules[left[1]], right[0]._modules[right[1]]
        # exact layer types: a subclass may compute more than its weight and bias (QConv2d's integers)
        pair = (type(layer) in (nn.Conv2d, SpikeConv2d) and isinstance(bn, nn.BatchNorm2d)) or \
            (type(layer) in (nn.Linear, SpikeLinear) and isinstance(bn, nn.BatchNorm1d))
        if pair and bn.running_mean is not None and bn.running_var is not None:
            left[0]._modules[left[1]] = fold_batchnorm(layer, bn)
            right[0]._modules[right[1]] = nn.Identity()


# --------------------------------------------------------------------------------------------- #
# Calibration
# --------------------------------------------------------------------------------------------- #


def _percentile_of(mode, op: str) -> float:
    """``mode`` as a percentile in (0, 100] (100: the maximum)."""
    if isinstance(mode, str):
        if mode == "max":
            return 100.0
        if mode == "percentile":
            return DEFAULT_PERCENTILE
        raise ValueError(f"{op}: mode must be 'max', 'percentile' ({DEFAULT_PERCENTILE}) or a percentile in (0, 100], "
                         f"got {mode!r}")
    p = finite(mode, "mode", op) if not isinstance(mode, (bool, str)) else None
    if p is None or not 0.0 < p <= 100.0:
        raise ValueError(f"{op}: mode must be 'max', 'percentile' ({DEFAULT_PERCENTILE}) or a percentile in (0, 100], "
                         f"got {mode!r}")
    return p


def _batches(data, op: str, batch_size: int = 256) -> Iterable[torch.Tensor]:
    """The calibration inputs: a tensor [N, *input] (run in chunks), or an iterable of such tensors or
    of (input, target, ...) tuples (a DataLoader)."""
    if isinstance(data, torch.Tensor):
        items = [data[i:i + batch_size] for i in range(0, data.shape[0], batch_size)] if data.dim() else [data]
    elif isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(f"{op}: calibration_data must be a tensor [N, *input] or an iterable of tensors or of "
                        f"(input, target) batches, got {type(data).__name__}")
    else:
        items = data
    n = 0
    for item in items:
        x = item[0] if isinstance(item, (tuple, list)) and item else item
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{op}: calibration_data yielded a {type(x).__name__}; expected tensors [B, *input] (or "
                            f"(input, target) tuples)")
        if not x.is_floating_point():
            raise TypeError(f"{op}: calibration inputs must be floating tensors, got {x.dtype}")
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"{op}: calibration inputs must be non-empty batches [B, *input] (B >= 1), got shape "
                             f"{tuple(x.shape)}")
        n += 1
        yield x
    if n == 0:
        raise ValueError(f"{op}: calibration_data is empty; the thresholds need at least one batch of inputs")


def _run(m: nn.Module, name: str, x: torch.Tensor, op: str) -> torch.Tensor:
    try:
        return m(x)
    except Exception as e:  # shapes that do not fit, dtypes, devices
        raise ValueError(f"{op}: running the ANN on the calibration data failed at {name!r} ({type(m).__name__}) on "
                         f"an input of shape {tuple(x.shape)}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") \
            from None


def _scales(ops, calibration_data, mode, op: str) -> List[float]:
    """One scale per activation (ReLU / QCFS), in order."""
    acts = [i for i, (_, m) in enumerate(ops) if isinstance(m, (nn.ReLU, QCFS))]
    relus = [i for i in acts if isinstance(ops[i][1], nn.ReLU)]
    p = _percentile_of(mode, op)
    peak = {i: 0.0 for i in relus}
    positives = {i: [] for i in relus}
    if relus:
        if calibration_data is None:
            raise ValueError(f"{op}: calibration_data is None, but the ReLU at {ops[relus[0]][0]!r} needs it for its "
                             f"threshold (only QCFS layers carry their own)")
        with torch.no_grad():
            for x in _batches(calibration_data, op):
                for i, (name, m) in enumerate(ops):
                    x = _run(m, name, x, op)
                    if i in peak:
                        a = x.detach()
                        if not bool(torch.isfinite(a).all()):
                            raise ValueError(f"{op}: the activations of {name!r} on the calibration data contain NaN "
                                             f"or inf")
                        if a.numel():
                            peak[i] = max(peak[i], float(a.max()))
                        if p < 100.0:
                            positives[i].append(a[a > 0].float().cpu())
                    if i >= max(relus):
                        break
    out = []
    for i in acts:
        name, m = ops[i]
        if isinstance(m, QCFS):
            lam = float(m.threshold.detach())
            if not math.isfinite(lam) or lam <= 0:
                raise ValueError(f"{op}: the QCFS at {name!r} has threshold {lam}; it must be finite and > 0")
            out.append(lam)
            continue
        if peak[i] <= 0.0:
            raise ValueError(f"{op}: the ReLU at {name!r} never has a positive activation on the calibration data, so "
                             f"its threshold cannot be set; calibrate with more (or representative) inputs")
        if p < 100.0:
            v = torch.cat(positives[i])
            k = max(1, math.ceil(p / 100.0 * v.numel()))  # nearest rank
            out.append(float(v.kthvalue(k).values))
        else:
            out.append(peak[i])
    return out


def activation_scales(ann: nn.Sequential, calibration_data, mode: Union[str, float] = "max") -> List[float]:
    """The scale (``lambda``) :func:`convert_ann` uses for each ReLU / QCFS of ``ann``, in order.

    ``mode="max"``: the largest activation over ``calibration_data``; ``"percentile"``: the
    99.9th percentile of its positive activations; a number ``p`` in (0, 100]: the p-th percentile
    (nearest rank) of the positive activations (the zeros of a ReLU are left out: counted, they
    would move the percentile by the layer's sparsity). A QCFS module's scale is its threshold.
    ``calibration_data``: a tensor ``[N, *input]`` or an iterable of tensors / ``(input, target)``
    batches. Percentiles keep every positive activation of the calibration data (float32, CPU)
    until the end: calibrate with a few batches, not a whole large data set."""
    op = "activation_scales"
    return _scales(_read(ann, op), calibration_data, mode, op)


# --------------------------------------------------------------------------------------------- #
# Conversion
# --------------------------------------------------------------------------------------------- #


def convert_ann(ann: nn.Sequential, calibration_data=None, mode: Union[str, float] = "max", *,
                v_init: float = 0.5, reset: str = "soft", backend: str = "auto") -> nn.Sequential:
    """An IF-neuron SNN from the trained ReLU network ``ann`` (see the module docstring).

    - ``calibration_data``: inputs for threshold balancing, a tensor ``[N, *input]`` (run in chunks
      of 256) or an iterable of tensors or ``(input, target)`` batches (a DataLoader); may be None
      only when every activation is a :class:`QCFS`.
    - ``mode``: ``"max"`` (the largest activation of each layer), ``"percentile"``
      (99.9th percentile of the positive activations, robust to outliers: better at low T) or a
      percentile ``p`` in (0, 100]. See :func:`activation_scales`.
    - ``v_init``: the neurons' initial membrane potential, in units of the threshold (which is 1),
      0.5 by default; 0 starts at rest.
    - ``reset``: ``"soft"`` (subtract the threshold, default: no charge is lost) or ``"hard"``
      (to 0, what NIR can express).
    - ``backend``: handed to every IF neuron (``"auto"``, ``"triton"`` or ``"torch"``).

    Returns an ``nn.Sequential`` taking ``[T, B, *input]`` (the analog input repeated each step:
    ``spiketriton.encoding.direct(x, T)``) and returning the last layer's current ``[T, B, *out]``
    for every step; ``out.mean(0)`` is the prediction. The ANN is not changed.
    """
    op = "convert_ann"
    v0 = finite(v_init, "v_init", op)
    if not 0.0 <= v0 < 1.0:
        raise ValueError(f"{op}: v_init must be in [0, 1) (a fraction of the threshold), got {v_init!r}")
    if reset not in ("soft", "hard"):
        raise ValueError(f"{op}: reset must be 'soft' (subtract the threshold) or 'hard' (to 0), got {reset!r}")
    check_backend(backend, op)
    ops = _read(ann, op)
    scales = iter(_scales(ops, calibration_data, mode, op))
    # the segments between neurons: the first weighted layer takes the previous scale, the last one
    # (the one right before the neuron, maybe the same) the division by the neuron's scale
    out: List[nn.Module] = []
    prev_scale, seg_first, seg_last = 1.0, None, None
    prev_act = None
    with torch.no_grad():
        for name, m in ops:
            if isinstance(m, (nn.ReLU, QCFS)):
                lam = next(scales)
                if seg_last is None:
                    what = f"after {prev_act!r}" if prev_act is not None else "before any Conv2d/Linear"
                    raise ValueError(f"{op}: the activation {name!r} comes {what} with no Conv2d/Linear in between; "
                                     f"its input current cannot be rescaled (remove the redundant activation)")
                seg_last.weight.div_(lam)
                if seg_last.bias is not None:
                    seg_last.bias.div_(lam)
                neuron = IF(v_threshold=1.0, v_reset=None if reset == "soft" else 0.0, backend=backend, v_init=v0)
                out.append(neuron)
                prev_scale, seg_first, seg_last, prev_act = lam, None, None, name
                continue
            if isinstance(m, _WEIGHTED):
                if seg_first is None:
                    m.weight.mul_(prev_scale)
                    seg_first = m
                seg_last = m
            out.append(m)
    # the model: per-step modules in StepWise groups
    layers: List[nn.Module] = []
    group: List[nn.Module] = []
    for m in out:
        if isinstance(m, _PER_STEP):
            group.append(m)
            continue
        if group:
            layers.append(StepWise(*group))
            group = []
        layers.append(m)
    if group:
        layers.append(StepWise(*group))
    snn = nn.Sequential(*layers)
    snn.train(False)
    return snn


def relu_to_qcfs(ann: nn.Sequential, levels: int = 8, calibration_data=None,
                 mode: Union[str, float] = "percentile") -> nn.Sequential:
    """A copy of ``ann`` with every ``nn.ReLU`` replaced by :class:`QCFS` (``levels`` steps), for fine-
    tuning before :func:`convert_ann`. The initial thresholds are the ReLUs' scales over
    ``calibration_data`` (:func:`activation_scales` with ``mode``), or 1 without data. The copy
    keeps the ANN's module names (state_dict keys) and its train/eval mode."""
    op = "relu_to_qcfs"
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise (ValueError if isinstance(levels, int) and not isinstance(levels, bool) else TypeError)(
            f"{op}: levels must be an int >= 1, got {levels!r}")
    ops = _read(ann, op)  # checks the structure
    names = [n for n, m in ops if isinstance(m, (nn.ReLU, QCFS))]
    scales = _scales(ops, calibration_data, mode, op) if calibration_data is not None else [1.0] * len(names)
    new = copy.deepcopy(ann)
    for name, lam, (_, m) in zip(names, scales, [(n, m) for n, m in ops if isinstance(m, (nn.ReLU, QCFS))]):
        if not isinstance(m, nn.ReLU):
            continue  # already a QCFS
        parent_name, _, leaf = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        q = QCFS(levels, threshold=lam).to(device=_device_of(ann))
        q.train(parent.training)
        setattr(parent, leaf, q)
    return new


def _device_of(m: nn.Module) -> Optional[torch.device]:
    for p in m.parameters():
        return p.device
    return None
