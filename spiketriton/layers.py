"""SpikeLinear: a drop-in for nn.Linear on spike inputs, and ``convert(model)``."""

from __future__ import annotations

import operator

import torch
from torch import nn

from .conv import SpikeConv2d
from .functional._checks import check_backend, check_bool, finite
from .functional.images import SpikeImage
from .functional.spikes import SpikeTensor, require_binary, spike_matmul
from .neuron import BaseNeuron
from .pooling import SpikeAvgPool2d, SpikeMaxPool2d, SpikeSumPool2d

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
    - ``backend``: ``"auto"``, ``"triton"`` or ``"torch"`` (see ``spike_matmul``).
    - ``event_driven``: in inference (no gradient needed, no autocast), read only the weights of the
      inputs that fired (:mod:`spiketriton.functional.events`): ``"auto"`` (default) where the measured
      crossover says it is faster (few rows and sparse firing: streaming, one time step at a time),
      ``True`` always, ``False`` never. The event path reads a transposed copy of the weight, made at
      the first such call and kept (``in_features * out_features`` more elements; remade when the
      weight changes; ``release_event_cache()`` frees it).

    The constructor checks its options in Python (no tensor is read): ``in_features`` and
    ``out_features`` are ints >= 0, ``bias`` and ``check_binary`` are bools (a string such as ``"no"``
    is a ``TypeError``, not a true flag), ``input_dropout`` a real number in [0, 1), ``backend`` one of
    the three names (``ValueError``).

    Hooks: a forward hook on this layer sees its input as given, which is a
    :class:`~spiketriton.functional.spikes.SpikeTensor` when the neuron in front hands over packed
    spikes (``packed_output=True``, as ``convert`` sets it): ``s.unpack()`` gives the 0/1 values,
    ``s.to_dense()`` the same with the gradient. ``convert`` does not pack a neuron whose layer
    already has hooks when it runs.
    """

    event_driven = "auto"  # class-level default: a SpikeLinear pickled by an earlier version has none

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 check_binary: bool = True, input_dropout: float = 0.0, backend: str = "auto",
                 event_driven="auto"):
        for what, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise (ValueError if isinstance(v, int) and not isinstance(v, bool) else TypeError)(
                    f"SpikeLinear: {what} must be an int >= 0, got {v!r}")
        check_bool(bias, "bias", "SpikeLinear")
        check_bool(check_binary, "check_binary", "SpikeLinear")
        if not 0.0 <= finite(input_dropout, "input_dropout", "SpikeLinear") < 1.0:
            raise ValueError(f"SpikeLinear: input_dropout must be in [0, 1), got {input_dropout}")
        check_backend(backend, "SpikeLinear")
        if not (event_driven == "auto" if isinstance(event_driven, str) else isinstance(event_driven, bool)):
            raise ValueError(f"SpikeLinear: event_driven must be 'auto', True or False, got {event_driven!r}")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.check_binary = check_binary
        self.input_dropout = float(input_dropout)
        self.backend = backend
        self.event_driven = event_driven
        self.__dict__["_wt_cache"] = None  # (key, W.T contiguous): not a buffer, not in state_dict

    def release_event_cache(self) -> None:
        """Free the transposed weight copy of the event-driven inference path."""
        self.__dict__["_wt_cache"] = None

    def _weight_t(self) -> torch.Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device, tuple(w.shape))
        cache = self.__dict__.get("_wt_cache")
        if cache is None or cache[0] != key:
            cache = (key, w.detach().t().contiguous())
            self.__dict__["_wt_cache"] = cache
        return cache[1]

    def _event_inference(self, s) -> bool:
        """An inference call the event path may serve: no gradient, no autocast, not under compile."""
        if self.event_driven is False or torch.compiler.is_compiling():
            return False
        dev = self.weight.device.type
        if torch.is_autocast_enabled(dev):
            return False
        if torch.is_grad_enabled():
            anchor = s.anchor if isinstance(s, SpikeTensor) else s
            if self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad) or (
                    anchor is not None and anchor.requires_grad):
                return False
        return True

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
                require_binary(s, _NOT_BINARY)
            if s.dtype == torch.bool:
                s = s.to(self.weight.dtype)
        else:
            raise TypeError(f"SpikeLinear: expected a tensor or SpikeTensor, got {type(s).__name__}")
        if s.device.type == "meta" or self.weight.is_meta:
            # shapes only (deferred initialisation, shape inference): no values to check or multiply
            if s.device != self.weight.device:
                raise ValueError(f"SpikeLinear: the input is on {s.device}, the weight on {self.weight.device}")
            return nn.functional.linear(torch.empty(s.shape, dtype=self.weight.dtype, device="meta"), self.weight,
                                        self.bias)
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
        if self._event_inference(s):
            from .functional.events import event_matmul, inference_matmul

            if self.event_driven is True:
                return event_matmul(s, self._weight_t(), self.bias, backend=self.backend)
            return inference_matmul(s, self.weight, self.bias, self._weight_t(), backend=self.backend)
        return spike_matmul(s, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        extra = f", input_dropout={self.input_dropout}" if self.input_dropout else ""
        if self.event_driven != "auto":
            extra += f", event_driven={self.event_driven}"
        return super().extra_repr() + f", check_binary={self.check_binary}{extra}"


# --------------------------------------------------------------------------------------------- #
# convert
# --------------------------------------------------------------------------------------------- #

# modules and ops that move or reshape values without changing them: spikes stay spikes (exact types:
# a subclass may do more in its forward)
_SHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity)
_SHAPE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute,
                torch.movedim}
_SHAPE_METHODS = {"flatten", "reshape", "view", "squeeze", "unsqueeze", "transpose", "permute", "contiguous",
                  "movedim", "unflatten"}
# in-place operators (``x[i] = v`` is operator.setitem; fx records ``x += 1`` as operator.add, a new value)
_INPLACE_FUNCS = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
                  operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
                  operator.ilshift, operator.irshift, operator.imatmul}


class StepWise(nn.Sequential):
    """Apply per-step (stateless) modules, e.g. ``nn.Conv2d`` or pooling, to a sequence
    ``[T, B, *features]`` by folding time into the batch: ``m(x.flatten(0, 1)).unflatten(0, (T, B))``.

    ``StepWise(nn.Conv2d(2, 8, 3), nn.AvgPool2d(2))`` is an ``nn.Sequential`` (same state_dict keys
    ``0.weight``, ...), so quantization and export see its layers as usual.

    ``step_mode="s"`` (set by :func:`spiketriton.set_step_mode`): the input is one step ``[B, *features]``
    and goes to the modules as it is.

    A module that takes sequences itself (its ``step_mode`` is ``"m"``: :class:`~spiketriton.SpikeConv2d`,
    the spike pooling modules) receives the sequence ``[T, B, ...]`` as it is; time is folded into the
    batch only around the others. So ``StepWise(SpikeConv2d(...), nn.BatchNorm2d(...))`` works in both
    step modes, and a :class:`~spiketriton.SpikeImage` (packed spikes) reaches such a module packed; a
    module that takes tensors gets the SpikeImage's 0/1 values instead (``to_dense()``: with the
    gradient), e.g. ``StepWise(SpikeMaxPool2d(2), nn.Flatten())`` pools packed spikes and flattens floats.
    """

    step_mode = "m"

    def forward(self, x_seq):
        if self.step_mode == "s":
            y = x_seq
            for m in self:
                y = m(_dense(y) if isinstance(y, SpikeImage) and not _takes_images(m) else y)
            return y
        if not isinstance(x_seq, (torch.Tensor, SpikeImage)):
            from torch.fx import Proxy

            if not isinstance(x_seq, Proxy):  # (an fx Proxy passes: traced, not run)
                raise TypeError(f"StepWise: expected a tensor [T, B, *features], got {type(x_seq).__name__}")
        elif x_seq.dim() < 3:
            raise ValueError(f"StepWise: expected a sequence [T, B, *features], got shape {tuple(x_seq.shape)}")
        T, B = x_seq.shape[0], x_seq.shape[1]
        y, folded = x_seq, False
        for m in self:
            sequence = getattr(m, "step_mode", None) == "m"  # the module takes [T, B, ...] itself
            if sequence and folded:
                y, folded = _unfold(y, T, B), False
            elif not sequence and not folded:
                y, folded = _fold(y), True
            if isinstance(y, SpikeImage) and not _takes_images(m):
                y = _dense(y)
            y = m(y)
        return _unfold(y, T, B) if folded else y


def _fold(y):
    """``[T, B, ...]`` -> ``[T*B, ...]`` (a SpikeImage's leading dimensions as well)."""
    return y.flatten_lead() if isinstance(y, SpikeImage) else y.flatten(0, 1)


def _unfold(y, T, B):
    """``[T*B, ...]`` -> ``[T, B, ...]`` (a SpikeImage's leading dimension as well)."""
    if isinstance(y, SpikeImage):
        a = y.anchor
        return SpikeImage(y.data.unflatten(0, (T, B)), y.c, a.unflatten(0, (T, B)) if a is not None else None)
    return y.unflatten(0, (T, B))


def _dense(y: SpikeImage) -> torch.Tensor:
    """A SpikeImage's 0/1 values for a module that takes tensors, differentiable (through the anchor)."""
    return y.to_dense(y.anchor.dtype if y.anchor is not None else torch.float32)


def _takes_images(m) -> bool:
    """A module whose forward takes a SpikeImage (a spike convolution or pooling)."""
    return isinstance(m, (SpikeConv2d, SpikeMaxPool2d, SpikeAvgPool2d))


def convert(model: nn.Module, check_binary: bool = True, packed: bool = True, backend: str = "auto") -> nn.Module:
    """Replace every ``nn.Linear`` whose input is proven to be spikes with a :class:`SpikeLinear`
    sharing the same weights. Works in place and returns ``model``; the converted model gives the
    same outputs. ``check_binary`` and ``backend`` are handed to each new layer (see SpikeLinear).

    Conv nets: an ``nn.Conv2d`` (zero padding) inside a :class:`StepWise` whose input is proven to be
    spikes becomes a :class:`~spiketriton.SpikeConv2d` in the StepWise's step mode (the StepWise then
    hands it the sequence), and ``nn.MaxPool2d`` / ``nn.AvgPool2d`` on spikes become
    :class:`~spiketriton.SpikeMaxPool2d` / :class:`~spiketriton.SpikeAvgPool2d` (the same values); max
    pooling passes spikes on. One ``nn.Dropout`` between the spikes and the Conv2d is folded into the
    SpikeConv2d (``input_dropout``: the same random draws, as for a Linear). A Conv2d after an
    ``nn.AvgPool2d`` (firing fractions, not 0/1 values), or outside a StepWise (its step mode is not
    proven), stays.

    The data flow is read with ``torch.fx`` (neurons, spike layers and torch modules as leaves), never
    guessed. An input is spikes when it comes from a spiketriton neuron or spike-emitting hybrid unit
    (a subclass with its own ``forward`` is not taken as one), directly or through exact
    ``nn.Flatten``/``nn.Unflatten``/``nn.Identity`` modules, view/reshape-like ops, max pooling, or one
    ``nn.Dropout`` (folded into the new SpikeLinear / SpikeConv2d: the same random draws), and no in-place op touches it.
    A Linear called several times is converted only when every call reads spikes. A forward hook on
    the chain (on the neuron or a module in between; a pre-hook there or on the Linear) may replace the
    value: with ``check_binary=True`` the layer is converted all the same (its check refuses a
    non-binary input at run time), with ``check_binary=False`` it stays an ``nn.Linear``. Hooks on a
    converted Linear move to the new layer (their handles keep working).

    When fx cannot trace ``model``, only a container whose forward is ``nn.Sequential``'s own (or
    :class:`StepWise`'s) is read in order, child after child, and each child that is not a leaf is
    converted the same way on its own; any other module that fx cannot trace and that holds an
    ``nn.Linear`` is a ``ValueError`` naming it and fx's error: convert its traceable submodules
    (``convert(model.block)``), make its forward traceable, or swap layers yourself with
    ``SpikeLinear.from_linear``. A module without an ``nn.Linear`` is left alone.

    With ``packed=True``, a neuron whose only consumer is a converted layer (proven by fx, and
    without forward or backward hooks on the neuron or on the layer, nor global ones) is switched
    to ``packed_output``: its spikes go to the layer 8 per byte and no float spike tensor is made.
    A forward hook registered on such a neuron *after* ``convert`` receives that
    :class:`~spiketriton.functional.spikes.SpikeTensor` as the output: ``output.unpack()`` gives the
    0/1 values (no gradient), ``output.to_dense()`` the same values with the gradient; or set
    ``neuron.packed_output = False`` to get float spikes (and the float spike tensor) back. A neuron
    whose every use is a spike convolution or spike pooling (without hooks) hands its spikes over as a
    :class:`~spiketriton.SpikeImage` (``packed_output="image"``).

    Checks: ``model`` is an ``nn.Module`` (``TypeError``), ``check_binary`` and ``packed`` are bools
    (``TypeError``), ``backend`` is one of ``"auto"``, ``"triton"``, ``"torch"`` (``ValueError``): Python
    level only. A failure leaves the model untouched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    check_bool(check_binary, "check_binary", "convert")
    check_bool(packed, "packed", "convert")
    check_backend(backend, "convert")
    names = _names_of(model)
    targets, feeders = _targets(model, "", check_binary, names)
    # build every replacement first, then swap: a failure leaves the model untouched
    swaps = []
    for name, dropout_name in targets.items():
        linear = model.get_submodule(name)
        p = model.get_submodule(dropout_name).p if dropout_name is not None else 0.0
        if type(linear) is nn.Conv2d:  # in a StepWise, which hands it the sequence in its step mode
            new = SpikeConv2d.from_conv(linear, check_binary=check_binary, backend=backend,
                                        step_mode=_stepwise_mode(model, name), input_dropout=p)
        elif type(linear) is nn.MaxPool2d:
            new = SpikeMaxPool2d.from_pool(linear, backend=backend)
        elif type(linear) is nn.AvgPool2d:
            new = SpikeAvgPool2d.from_pool(linear, backend=backend)
        else:
            new = SpikeLinear.from_linear(linear, check_binary=check_binary, input_dropout=p, backend=backend)
        _move_hooks(linear, new)
        swaps.append((linear, new, model.get_submodule(dropout_name) if dropout_name is not None else None))
    for linear, new, dropout in swaps:
        if dropout is not None:
            for where in names[id(dropout)]:
                _set_submodule(model, where, nn.Identity())
        for where in names[id(linear)]:  # every place a shared module is registered
            _set_submodule(model, where, new)
    if packed and not _global_hooks(backward=True):
        converted = set(targets)
        for neuron_name, linear_name in feeders:
            neuron = model.get_submodule(neuron_name)
            linear = model.get_submodule(linear_name)
            # a hook on the neuron (e.g. a firing-rate monitor) or on the layer (which sees its input),
            # forward or backward, would be handed packed spikes
            if linear_name in converted and not _call_hooks(neuron) and not _call_hooks(linear):
                neuron.packed_output = True
        if any(_takes_images(m) for m in model.modules()):
            for neuron_name in _image_feeders(model):  # spikes to convolutions and pools: a SpikeImage
                model.get_submodule(neuron_name).packed_output = "image"
    return model


def _is_plain_linear(m) -> bool:
    # exactly nn.Linear: a subclass may do more in its forward than the matmul (and a parametrized
    # Linear, e.g. weight_norm, is a generated subclass whose weight is computed)
    return type(m) is nn.Linear


def _emits_spikes(m) -> bool:
    """A module whose output is spikes by construction: a spiketriton neuron, or a hybrid unit that
    says it emits spikes, running spiketriton's own ``forward`` (a subclass's forward may return
    anything)."""
    fwd = getattr(type(m).forward, "__module__", "") or ""
    if isinstance(m, BaseNeuron):
        return fwd == "spiketriton.neuron"
    return getattr(m, "emits_spikes", False) is True and fwd.startswith("spiketriton.hybrid")


def _global_hooks(backward: bool = False) -> bool:
    """Whether global forward (pre-)hooks (and, with ``backward``, backward hooks) are registered: they
    see, and may replace, any module's input or output."""
    import torch.nn.modules.module as mm

    names = ("_global_forward_hooks", "_global_forward_pre_hooks") + \
        (("_global_backward_hooks", "_global_backward_pre_hooks") if backward else ())
    return any(getattr(mm, n, None) for n in names)


def _value_hooks(m, output: bool = False, input: bool = False) -> bool:
    """Whether ``m`` has forward hooks (which may replace or see its output) / forward pre-hooks
    (which may replace its input)."""
    return bool((output and getattr(m, "_forward_hooks", None)) or (input and getattr(m, "_forward_pre_hooks", None)))


def _call_hooks(m) -> bool:
    """Whether ``m`` has hooks that see its inputs or outputs: forward, forward-pre, backward, backward-pre."""
    return any(getattr(m, a, None) for a in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                             "_backward_pre_hooks"))


def _move_hooks(old: nn.Module, new: nn.Module) -> None:
    """The hook dictionaries of ``old``, moved to ``new`` as they are: the hooks keep firing on the
    module that replaces it, and the handles the user holds (which refer to these dictionaries) keep
    working."""
    for k, v in vars(old).items():
        if "hook" in k:
            new.__dict__[k] = v


def _names_of(model: nn.Module) -> dict:
    """id(module) -> every qualified name it is registered under (a shared module has several)."""
    out = {}
    for name, m in model.named_modules(remove_duplicate=False):
        out.setdefault(id(m), []).append(name)
    return out


def _is_leaf(m) -> bool:
    return isinstance(m, (BaseNeuron, SpikeLinear)) or _takes_images(m) or \
        type(m).__module__.startswith("spiketriton.hybrid")


def _tracer():
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return _is_leaf(m) or super().is_leaf_module(m, qualname)

    return _Tracer()


def _targets(model: nn.Module, prefix: str, check_binary: bool, names: dict):
    """``({linear name: dropout name or None}, [(neuron name, linear name)])`` for ``model``, the
    submodule of the root at ``prefix`` (names relative to the root)."""
    tracer = _tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # data-dependent control flow, an untraceable op, ...
        if is_plain_container(model):
            return _targets_sequential(model, prefix, check_binary, names, tracer)
        linears = [n for n, m in model.named_modules() if _is_plain_linear(m)]
        if not linears:  # nothing here to convert: leave it as it is
            return {}, []
        what = f"the module {prefix!r} ({type(model).__name__})" if prefix else f"the model ({type(model).__name__})"
        why = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise ValueError(
            f"convert: cannot read the data flow of {what}: torch.fx cannot trace its forward "
            f"({type(e).__name__}: {why}), and convert never guesses which nn.Linear reads spikes "
            f"({len(linears)} nn.Linear inside, e.g. {_join(prefix, linears[0])!r}). Convert its traceable "
            f"submodules (spiketriton.convert(submodule)), make its forward traceable by torch.fx, or swap "
            f"layers yourself with SpikeLinear.from_linear(linear)"
        ) from None
    return _rooted(*_targets_graph(model, graph, check_binary), prefix, model, names)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _rooted(targets, feeders, prefix, model, names):
    """Names relative to the root. A module also registered outside ``model`` (a submodule read on
    its own in the fallback) may be called there on anything: it is neither converted, folded nor
    packed."""
    inside = {}
    for _, m in model.named_modules(remove_duplicate=False):
        inside[id(m)] = inside.get(id(m), 0) + 1

    def private(name):
        m = model.get_submodule(name)
        return len(names.get(id(m), ())) == inside[id(m)]

    out = {_join(prefix, name): (_join(prefix, drop) if drop is not None else None)
           for name, drop in targets.items() if private(name) and (drop is None or private(drop))}
    feeds = [(_join(prefix, n), _join(prefix, lin)) for n, lin in feeders if private(n) and private(lin)]
    return out, feeds


def is_plain_container(m) -> bool:
    """A container whose forward is provably its children in order: nn.Sequential's own forward
    (StepWise's only folds time into the batch around it)."""
    return isinstance(m, nn.Sequential) and type(m).forward in (nn.Sequential.forward, StepWise.forward)


def _targets_graph(model: nn.Module, graph, check_binary: bool):
    import torch.fx as fx

    modules = dict(model.named_modules())
    hooked = _global_hooks()

    def unhooked(mod, output=False, input=False):
        # a hook that may replace the value: with the binary check on, the layer proves its input at run time
        return check_binary or not (hooked or _value_hooks(mod, output=output, input=input))

    spiking = {}  # node -> True when its value is spikes
    via_dropout = {}  # node -> the Dropout folded on the way (if any)
    # spiking node -> the nodes whose tensors its value is, may share storage with, or was computed from
    # (the spike-emitting node; and a max pooling, whose output is a new tensor of spikes)
    roots = {}
    for node in graph.nodes:
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        passes = False  # the node passes its first argument's value on unchanged
        if node.op == "call_module":
            mod = modules.get(node.target)
            if _emits_spikes(mod):  # neurons, A2S hybrid units
                if unhooked(mod, output=True):
                    spiking[node], roots[node] = True, {node}
                continue
            if not unhooked(mod, output=True, input=True):
                continue
            if type(mod) in _SHAPE_MODULES:
                passes = True
            elif type(mod) is nn.Dropout and src is not None and spiking.get(src) and via_dropout.get(src) is None \
                    and len(_value_users(node)) == 1 and _calls(graph, node.target) == 1 \
                    and not _value_hooks(mod, output=True, input=True):  # a shared or hooked Dropout stays
                spiking[node], roots[node], via_dropout[node] = True, roots[src], node.target
                continue
            elif _is_spike_max_pool(mod) and src is not None and spiking.get(src) and via_dropout.get(src) is None \
                    and len(node.args) == 1 and not node.kwargs:
                # the max of 0/1 values is their OR: spikes again (a new tensor)
                spiking[node], roots[node] = True, roots[src] | {node}
                continue
        elif node.op == "call_function":
            passes = node.target in _SHAPE_FUNCS
        elif node.op == "call_method":
            # x.view(dtype) reinterprets the bits: not a reshape
            passes = node.target in _SHAPE_METHODS and not any(isinstance(a, torch.dtype) for a in node.args[1:])
        if passes and src is not None and spiking.get(src):
            spiking[node], roots[node], via_dropout[node] = True, roots[src], via_dropout.get(src)
    # spikes changed in place (through any tensor that may share their storage) are not spikes any more
    tainted = {r for rs in roots.values() for r in rs if _mutated(r, modules)}
    spiking = {n: ok for n, ok in spiking.items() if not (roots[n] & tainted)}
    uses = {}
    direct = {}  # linear name -> neuron name, when the neuron's only consumer is that one call
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        mod = modules.get(node.target)
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        reads_spikes = isinstance(src, fx.Node) and spiking.get(src, False)
        if _is_plain_linear(mod):
            ok = reads_spikes and unhooked(mod, input=True)
            uses.setdefault(node.target, []).append((ok, via_dropout.get(src) if ok else None))
            if ok and src.op == "call_module" and isinstance(modules.get(src.target), BaseNeuron) \
                    and len(src.users) == 1:
                direct.setdefault(node.target, []).append(src.target)
        elif _is_plain_conv(mod) or type(mod) in (nn.MaxPool2d, nn.AvgPool2d):
            # a convolution converts inside a StepWise (which then hands it the sequence), a pooling anywhere
            # (the spike pools take any leading dimensions); after a Dropout (not 0/1 any more) only a
            # convolution, which folds it (SpikeConv2d's input_dropout: the same draws)
            drop = via_dropout.get(src) if reads_spikes else None
            ok = reads_spikes and (drop is None or _is_plain_conv(mod)) and unhooked(mod, input=True) \
                and (not _is_plain_conv(mod) or _stepwise_mode(model, node.target) is not None) \
                and not getattr(mod, "return_indices", False)
            uses.setdefault(node.target, []).append((ok, drop if ok else None))
    # a layer called several times is converted only if every call sees spikes (and no dropout folds)
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


def _value_users(node) -> list:
    """The users of an fx node that read its values: reading ``x.shape`` / ``x.size()`` / ``x.dim()`` (a
    StepWise does, to unfold time) does not."""
    import operator

    def meta(u):
        if u.op == "call_function" and u.target is getattr and len(u.args) > 1:
            return u.args[1] in ("shape", "dtype", "device", "ndim")
        if u.op == "call_function" and u.target is operator.getitem:
            return False
        return u.op == "call_method" and u.target in ("size", "dim")

    return [u for u in node.users if not meta(u)]


def _is_plain_conv(m) -> bool:
    """Exactly nn.Conv2d with zero padding (what SpikeConv2d computes)."""
    return type(m) is nn.Conv2d and m.padding_mode == "zeros"


def _is_spike_max_pool(m) -> bool:
    return type(m) in (nn.MaxPool2d, SpikeMaxPool2d) and not m.return_indices


def _stepwise_mode(model: nn.Module, name: str):
    """The step mode of the StepWise that holds the module ``name`` (every place it is registered: the
    same StepWise mode), or None when it sits elsewhere."""
    m = model.get_submodule(name)
    modes = set()
    for _, parent in model.named_modules(remove_duplicate=False):
        for child in parent.children():
            if child is m:
                if not (isinstance(parent, StepWise) and type(parent).forward is StepWise.forward):
                    return None
                modes.add(parent.step_mode)
    return modes.pop() if len(modes) == 1 else None


def _image_feeders(model: nn.Module) -> list:
    """The neurons (names) of the converted ``model`` that may hand their spikes over as a SpikeImage:
    called once, without hooks, every use of their output a spike convolution or spike pooling
    without hooks, or a shape query; a max pooling's output in turn used only so, or by the modules
    after it in the same StepWise (which hands them the 0/1 values)."""
    try:
        graph = _tracer().trace(model)
    except Exception:  # untraceable: no packed images (the Linear hand-over has its own fallback)
        return []
    modules = dict(model.named_modules())

    def stack(u):
        """The modules whose forward the node ``u`` runs in (outermost first), the called module last."""
        return [modules.get(name) for name, _ in (u.meta.get("nn_module_stack") or {}).values()]

    def in_stepwise(u, node) -> bool:
        """``u`` is StepWise's own use of ``node``: its fold (``flatten(0, 1)``) or a call of one of its
        modules, which StepWise makes on the 0/1 values of a SpikeImage."""
        mods = stack(u)
        if u.op == "call_method" and u.target == "flatten" and tuple(u.args) == (node, 0, 1) and not u.kwargs:
            parent = mods[-1] if mods else None
        elif u.op == "call_module" and tuple(u.args) == (node,) and not u.kwargs and len(mods) >= 2:
            parent = mods[-2]
        else:
            return False
        return isinstance(parent, StepWise) and type(parent).forward is StepWise.forward

    def takes_images(node, pooled=False) -> bool:
        users = [u for u in node.users if not (u.op == "call_function" and u.target is getattr and
                                                u.args[1:] == ("shape",))]
        if not users:
            return False
        for u in users:
            if any(m is not None and _call_hooks(m) for m in stack(u)):
                return False  # a hook on the module or on a container around it would see the SpikeImage
            m = modules.get(u.target) if u.op == "call_module" else None
            if m is not None and tuple(u.args) == (node,) and not u.kwargs:
                if type(m) in (SpikeConv2d, SpikeAvgPool2d, SpikeSumPool2d):
                    continue
                if type(m) is SpikeMaxPool2d and takes_images(u, pooled=True):
                    continue
            if pooled and in_stepwise(u, node):
                continue
            return False
        return True

    out = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), BaseNeuron):
            neuron = modules[node.target]
            if _emits_spikes(neuron) and _calls(graph, node.target) == 1 and not _call_hooks(neuron) \
                    and takes_images(node):
                out.append(node.target)
    return out


def _mutated(start, modules) -> bool:
    """Whether the graph may change the tensor of the node ``start`` in place: an in-place op on it or
    on any value derived from it that may share its storage. Conservative: every function and method
    result is taken as a possible view (``x.t()``, ``x[0]``, ``x.float()`` on a float ``x``, ...); a
    module call is a new tensor except for shape-only, dropout and in-place modules."""
    seen, stack = {start}, [start]
    while stack:
        value = stack.pop()
        for user in value.users:
            if _mutates(user, value, modules):
                return True
            if user in seen or user.op == "output":
                continue
            if user.op == "call_module":
                m = modules.get(user.target)
                if not (type(m) in _SHAPE_MODULES or isinstance(m, nn.modules.dropout._DropoutNd)):
                    continue
            seen.add(user)
            stack.append(user)
    return False


def _mutates(user, value, modules) -> bool:
    """Whether the fx node ``user`` may change ``value`` (one of its inputs) in place."""
    first = user.args[0] if user.args else None
    if user.op == "call_method":
        name = str(user.target)
        if name.endswith("_") and not name.startswith("__") and first is value:
            return True  # x.add_(1), x.copy_(y), x.masked_fill_(...)
    elif user.op == "call_function":
        name = getattr(user.target, "__name__", "")
        if (user.target in _INPLACE_FUNCS or (name.endswith("_") and not name.startswith("__"))) and first is value:
            return True  # x[i] = v, torch.relu_(x), F.relu_(x), ...
    elif user.op == "call_module":
        if getattr(modules.get(user.target), "inplace", False) is True:
            return True  # nn.ReLU(inplace=True), nn.Dropout(inplace=True), ...
    return user.kwargs.get("inplace") is True or "out" in user.kwargs  # F.relu(x, inplace=True), out=x


def _calls(graph, target: str) -> int:
    return sum(1 for n in graph.nodes if n.op == "call_module" and n.target == target)


def _targets_sequential(model: nn.Module, prefix: str, check_binary: bool, names: dict, tracer):
    """A container fx cannot trace whose forward is nn.Sequential's: its children in order. A Linear
    right after a neuron (through shape-only modules) reads its spikes; each other child that is not
    a leaf is read on its own (fx, or this again). Never switches neurons to packed output and never
    folds a Dropout here (a Dropout ends the chain)."""
    out, feeders = {}, []
    hooked = _global_hooks()

    def unhooked(mod, output=False, input=False):
        return check_binary or not (hooked or _value_hooks(mod, output=output, input=input))

    spiking = False
    for name, child in model.named_children():
        full = _join(prefix, name)
        unique = len(names.get(id(child), ())) == 1  # a shared module may be called elsewhere
        if _emits_spikes(child):
            spiking = unique and unhooked(child, output=True)
            continue
        if spiking and type(child) in _SHAPE_MODULES and unhooked(child, output=True, input=True):
            continue
        if spiking and _is_plain_linear(child) and unique and unhooked(child, input=True):
            out[full] = None
        elif not tracer.is_leaf_module(child, full):
            t, f = _targets(child, full, check_binary, names)
            out.update(t)
            feeders.extend(f)
        spiking = False
    return out, feeders


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)

from ._hints import module_getattr as _module_getattr  # noqa: E402

__getattr__ = _module_getattr(__name__)
