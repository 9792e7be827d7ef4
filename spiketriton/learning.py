"""Local learning: trace-based STDP and reward-modulated STDP (R-STDP) on packed spikes.

A learner attaches to a **synapse** (a :class:`~spiketriton.SpikeLinear` or ``nn.Linear``, weight
``[N, K]``; or a :class:`~spiketriton.SpikeConv2d` / ``nn.Conv2d``, on the torch path, the sums running
over space too) and to the **neuron** after it, with forward hooks. At every forward call it records the
synapse's input spikes (pre, ``[..., K]``) and the neuron's output spikes (post, ``[..., N]``) *packed*,
8 per byte (a neuron with ``packed_output=True`` hands them over packed already; float or bool spikes
are packed in the hook). No float spike tensor is kept between the forward pass and the update, and
nothing here touches autograd (the hooks and the update run under ``torch.no_grad()``).

The update (:meth:`STDPLearner.delta`, :meth:`STDPLearner.step`) reads the records in order and, per
time step t and sample b, follows SpikingJelly's ``STDPLearner`` (``stdp_linear_step``)::

    tr_pre  = tr_pre  - tr_pre / tau_pre   + pre[t]              traces [B, K], [B, N], fp32, carried
    tr_post = tr_post - tr_post / tau_post + post[t]             across calls until reset()
    dW     += a_plus  * f_post(W) * outer(post[t, b], tr_pre[b])     potentiation
            - a_minus * f_pre(W)  * outer(tr_post[b], pre[t, b])     depression

summed over the batch and over every recorded step, never averaged. The weights are fixed while the
records accumulate: a multi-step call (``[T, B, ...]``) and T single-step calls give the same ``dW``,
with ``f_pre(W)`` / ``f_post(W)`` read at the update (as SpikingJelly's multi-step learner), which is
not the same as changing the weights after every step (call ``step()`` after every single-step call
for that).

Weight dependence (``bounds``):

- ``None`` (additive): ``f_pre = f_post = 1``.
- ``"hard"``: additive, and after each applied update the weights are clipped to ``[w_min, w_max]``.
- ``"soft"`` (multiplicative): ``f_post(W) = w_max - W``, ``f_pre(W) = W - w_min``: potentiation
  fades near ``w_max``, depression near ``w_min``.
- ``f_pre`` / ``f_post``: your own callables of the fp32 weight (SpikingJelly's arguments; they
  replace the factors above, and SpikingJelly's defaults are the identity, ours 1).

Naming: as in SpikingJelly, ``f_pre`` scales the term a *pre*-synaptic spike triggers (depression,
``tr_post x pre``) and ``f_post`` the term a post spike triggers (potentiation, ``post x tr_pre``).

``normalize=c`` rescales, after each applied update, every post neuron's incoming weights so that
they sum to ``c`` (Diehl & Cook's normalisation; a row summing to 0 is left alone).

Applying the update (both are supported; choose per call):

- ``learner.step(lr)``: ``W += lr * dW`` in place, then the clipping and the normalisation.
- ``learner.step(lr, on_grad=True)``: ``W.grad -= lr * dW`` (SpikingJelly's ``on_grad``), so that an
  optimizer's descent step moves the weights *along* ``dW``: this composes with gradient training
  (a loss's gradients and the STDP term add up in ``.grad``, one ``optimizer.step()`` applies both).
  The weights change only in ``optimizer.step()``; call :meth:`STDPLearner.constrain_` after it for the
  clipping and the normalisation.
- ``learner.delta()``: only compute (and return) ``dW``, fp32 ``[N, K]``.

Step modes: each record is read in the step mode of the neuron when it fired (``neuron.step_mode``,
``"m"``: ``[T, *batch, features]``, ``"s"``: ``[*batch, features]``) unless ``step_mode`` is given.
Leading batch dimensions are flattened; the batch size must stay the same until
:meth:`STDPLearner.reset`.

Records accumulate until :meth:`STDPLearner.delta` / ``step()`` uses them or :meth:`STDPLearner.reset`
drops them (``disable()`` pauses recording, e.g. for evaluation). The hooks hold the learner: detach it
before ``torch.save(net)`` (hooks do not pickle).

Backends: ``backend="triton"`` runs the update as one Triton kernel reading the packed bits
(``kernels/stdp.py``); ``"torch"`` unpacks inside the update and uses two BLAS matmuls; ``"auto"``
picks Triton for CUDA weights (or under ``TRITON_INTERPRET=1``).

>>> import torch, spiketriton as st
>>> from spiketriton.learning import STDPLearner
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> fc, lif = st.SpikeLinear(64, 10, bias=False), st.LIF(tau=2.0, backend="torch")
>>> net = torch.nn.Sequential(fc, lif)
>>> learner = STDPLearner(fc, lif, tau_pre=2.0, tau_post=2.0, a_plus=1e-3, a_minus=1e-3, bounds="hard",
...                       w_min=-1.0, w_max=1.0, backend="torch")
>>> with torch.no_grad():
...     out = net((torch.rand(8, 4, 64) < 0.3).float())   # T=8 steps of a batch of 4
>>> learner.step()          # W += dW, clipped to [-1, 1]
>>> learner.detach()        # hooks removed; st.reset(net) and learner.reset() start a new sequence
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import nn

from .functional._backend import use_triton
from .functional._checks import check_backend, check_bool, finite
from .functional.images import SpikeImage, pack_image
from .functional.spikes import SpikeTensor, pack_spikes
from .kernels import stdp as KS
from .kernels.pack_torch import unpack_bits

__all__ = ["STDPLearner", "RSTDPLearner", "stdp_products", "BOUNDS"]

#: weight dependence: additive (None), additive with clipping ("hard"), multiplicative ("soft")
BOUNDS = (None, "hard", "soft")


def _check_tau(tau, name: str, op: str, exp_decay: bool) -> float:
    tau = finite(tau, name, op)
    if exp_decay and tau <= 0:
        raise ValueError(f"{op}: {name} must be > 0 (time steps; the trace decays by exp(-1/{name})), got {tau}")
    if not exp_decay and tau < 1:
        raise ValueError(f"{op}: {name} must be >= 1 (time steps; the trace keeps 1 - 1/{name} per step), got {tau}")
    return tau


def stdp_products(pre: torch.Tensor, post: torch.Tensor, K: int, N: int, tr_pre: torch.Tensor,
                  tr_post: torch.Tensor, tau_pre: float, tau_post: float, exp_decay: bool = False,
                  backend: str = "auto"):
    """The two STDP sums from packed spikes: ``(P, D, tr_pre_last, tr_post_last)``.

    ``pre [T, B, ceil(K/8)]`` and ``post [T, B, ceil(N/8)]`` uint8 (packed spikes, time first),
    ``tr_pre [B, K]`` and ``tr_post [B, N]`` fp32 traces carried in (not modified). Per step the traces
    advance (``tr - tr / tau + s``, or ``tr * exp(-1/tau) + s`` with ``exp_decay``) and
    ``P [N, K] += post[t].T @ tr_pre``, ``D [N, K] += tr_post.T @ pre[t]`` (fp32). The rule of a
    learner is ``dW = a_plus * f_post(W) * P - a_minus * f_pre(W) * D``.
    """
    op = "stdp_products"
    for name, t in (("pre", pre), ("post", post)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 3:
            raise TypeError(f"{op}: {name} must be packed spikes, a uint8 tensor [T, B, bytes], got "
                            f"{_describe(t)}")
    for name, v in (("K", K), ("N", N)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{op}: {name} must be an int >= 0, got {v!r}")
    if pre.shape[-1] != (K + 7) // 8 or post.shape[-1] != (N + 7) // 8:
        raise ValueError(f"{op}: pre needs ceil(K/8) = {(K + 7) // 8} bytes and post ceil(N/8) = {(N + 7) // 8}, "
                         f"got {pre.shape[-1]} and {post.shape[-1]}")
    if pre.shape[:2] != post.shape[:2]:
        raise ValueError(f"{op}: pre [T, B, ...] {tuple(pre.shape[:2])} and post {tuple(post.shape[:2])} differ in T or B")
    B = pre.shape[1]
    for name, t, n, dim in (("tr_pre", tr_pre, K, "K"), ("tr_post", tr_post, N, "N")):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != (B, n):
            raise TypeError(f"{op}: {name} must be a float32 tensor [B, {dim}] = [{B}, {n}], got "
                            f"{_describe(t)}")
        if t.device != pre.device:
            raise ValueError(f"{op}: {name} is on {t.device}, the spikes on {pre.device}; move them to one device")
    if post.device != pre.device:
        raise ValueError(f"{op}: pre is on {pre.device}, post on {post.device}; move them to one device")
    _check_tau(tau_pre, "tau_pre", op, exp_decay)
    _check_tau(tau_post, "tau_post", op, exp_decay)
    check_bool(exp_decay, "exp_decay", op)
    if use_triton(backend, pre, op=op):
        return KS.stdp_products_triton(pre, post, K, N, tr_pre, tr_post, tau_pre, tau_post, exp_decay)
    return KS.stdp_products_torch(pre, post, K, N, tr_pre, tr_post, tau_pre, tau_post, exp_decay)


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


class _Learner:
    """Hooks, packed records and traces shared by the learners."""

    _exp_decay = False

    def __init__(self, op: str, synapse, neuron, tau_pre, tau_post, a_plus, a_minus, bounds, w_min, w_max,
                 f_pre, f_post, normalize, step_mode, check_binary, backend):
        self._op = op
        if not isinstance(synapse, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"{op}: synapse must be a SpikeLinear or nn.Linear (weight [N, K]), or a SpikeConv2d or "
                            f"nn.Conv2d, got {type(synapse).__name__}")
        if not synapse.weight.is_floating_point():
            raise TypeError(f"{op}: the synapse's weight must be floating point, got {synapse.weight.dtype}")
        self._conv = isinstance(synapse, nn.Conv2d)
        if self._conv and synapse.padding_mode != "zeros":
            raise ValueError(f"{op}: a conv synapse must pad with zeros (padding_mode='zeros': no spike, a zero trace), "
                             f"got padding_mode={synapse.padding_mode!r}")
        if self._conv and backend == "triton":
            raise ValueError(f"{op}: the Triton STDP kernel covers linear synapses; a conv synapse learns on the "
                             f"torch path (backend='auto' or 'torch', on any device)")
        if not isinstance(neuron, nn.Module):
            raise TypeError(f"{op}: neuron must be the nn.Module whose output spikes follow the synapse, got "
                            f"{type(neuron).__name__}")
        if neuron is synapse:
            raise ValueError(f"{op}: neuron is the synapse itself; pass the neuron module that fires after it")
        self.tau_pre = _check_tau(tau_pre, "tau_pre", op, self._exp_decay)
        self.tau_post = _check_tau(tau_post, "tau_post", op, self._exp_decay)
        self.a_plus = finite(a_plus, "a_plus", op)
        self.a_minus = finite(a_minus, "a_minus", op)
        if bounds not in BOUNDS:
            raise ValueError(f"{op}: bounds must be None (additive), 'hard' (clip to [w_min, w_max]) or 'soft' "
                             f"(multiplicative), got {bounds!r}")
        self.bounds = bounds
        self.w_min = finite(w_min, "w_min", op)
        self.w_max = finite(w_max, "w_max", op)
        if bounds is not None and not self.w_min < self.w_max:
            raise ValueError(f"{op}: bounds={bounds!r} needs w_min < w_max, got w_min={self.w_min}, w_max={self.w_max}")
        for name, f in (("f_pre", f_pre), ("f_post", f_post)):
            if f is not None and not callable(f):
                raise TypeError(f"{op}: {name} must be a callable of the weight or None, got {type(f).__name__}")
        if bounds == "soft" and (f_pre is not None or f_post is not None):
            raise ValueError(f"{op}: bounds='soft' defines f_pre and f_post (W - w_min, w_max - W); pass either "
                             f"bounds='soft' or your own f_pre / f_post")
        self.f_pre, self.f_post = f_pre, f_post
        if normalize is not None:
            normalize = finite(normalize, "normalize", op)
            if normalize <= 0:
                raise ValueError(f"{op}: normalize (the sum of each post neuron's incoming weights) must be > 0 or "
                                 f"None, got {normalize}")
        self.normalize = normalize
        if step_mode is None:
            if getattr(neuron, "step_mode", None) not in ("s", "m"):
                raise ValueError(f"{op}: {type(neuron).__name__} has no step_mode 's' or 'm'; pass step_mode='m' "
                                 f"([T, *batch, features] per call) or 's' ([*batch, features] per call)")
        elif step_mode not in ("s", "m"):
            raise ValueError(f"{op}: step_mode must be None (follow the neuron), 'm' or 's', got {step_mode!r}")
        self.step_mode = step_mode
        self.check_binary = check_bool(check_binary, "check_binary", op)
        self.backend = check_backend(backend, op)
        self.synapse, self.neuron = synapse, neuron
        # features per step on each side: K, N (linear) or the channels C_in, C_out (conv)
        self._k = synapse.in_channels if self._conv else synapse.in_features
        self._n = synapse.out_channels if self._conv else synapse.out_features
        self._pre: List[torch.Tensor] = []   # packed uint8 records, in call order
        self._post: List[Tuple[torch.Tensor, str]] = []
        self.trace_pre: Optional[torch.Tensor] = None   # [B, K] fp32
        self.trace_post: Optional[torch.Tensor] = None  # [B, N] fp32
        self.enabled = True
        self._work = None  # the torch path's (P, D) work buffers, fp32 [N, K], kept between updates
        self._handles = [synapse.register_forward_pre_hook(self._pre_hook),
                         neuron.register_forward_hook(self._post_hook)]

    # ------------------------------------------------------------------------------------------- #
    # recording
    # ------------------------------------------------------------------------------------------- #

    def _packed(self, x, k: int, what: str) -> torch.Tensor:
        if self._conv:
            return self._packed_image(x, k, what)
        if isinstance(x, SpikeTensor):
            if x.k != k:
                raise ValueError(f"{self._op}: the {what} has {x.k} features per step, the synapse {k}")
            return x.data.detach()
        if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.dtype == torch.bool):
            raise TypeError(f"{self._op}: the {what} must be 0/1 spikes (a float or bool tensor, or a SpikeTensor), "
                            f"got {_describe(x)}")
        if x.dim() < 1 or x.shape[-1] != k:
            raise ValueError(f"{self._op}: the {what} must be [..., {k}], got shape {tuple(x.shape)}")
        try:
            return pack_spikes(x.detach(), check=self.check_binary, backend=self.backend).data
        except ValueError:
            raise ValueError(f"{self._op}: the {what} has values other than 0 and 1; STDP needs spikes "
                             f"(check_binary=False skips this check)") from None

    def _packed_image(self, x, c: int, what: str) -> torch.Tensor:
        """A conv synapse's spikes ``[*lead, C, H, W]`` as the bytes of a SpikeImage (channels-last,
        8 channels per byte): ``[*lead, H, W, ceil(C/8)]``."""
        if isinstance(x, SpikeImage):
            if x.c != c:
                raise ValueError(f"{self._op}: the {what} has {x.c} channels, the synapse {c}")
            return x.data.detach()
        if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.dtype == torch.bool):
            raise TypeError(f"{self._op}: the {what} must be 0/1 spike images (a float or bool tensor, or a "
                            f"SpikeImage), got {_describe(x)}")
        if x.dim() < 4 or x.shape[-3] != c:
            raise ValueError(f"{self._op}: the {what} must be [*lead, {c}, H, W], got shape {tuple(x.shape)}")
        try:
            return pack_image(x.detach(), check=self.check_binary, backend=self.backend).data
        except ValueError:
            raise ValueError(f"{self._op}: the {what} has values other than 0 and 1; STDP needs spikes "
                             f"(check_binary=False skips this check)") from None

    def _pre_hook(self, module, args):
        if self.enabled and module is self.synapse and args:  # (not a deepcopy, which copies the hooks)
            with torch.no_grad():
                self._pre.append(self._packed(args[0], self._k, "synapse's input"))

    def _post_hook(self, module, args, output):
        if self.enabled and module is self.neuron:
            mode = self.step_mode or getattr(module, "step_mode", None)
            with torch.no_grad():
                self._post.append((self._packed(output, self._n, "neuron's output"), mode))

    # ------------------------------------------------------------------------------------------- #
    # life cycle
    # ------------------------------------------------------------------------------------------- #

    @property
    def attached(self) -> bool:
        """Whether the hooks are in place (False after :meth:`detach`)."""
        return bool(self._handles)

    def enable(self) -> None:
        """Record again after :meth:`disable`."""
        if not self.attached:
            raise RuntimeError(f"{self._op}: the learner is detached; create a new one")
        self.enabled = True

    def disable(self) -> None:
        """Stop recording (e.g. during evaluation); records and traces stay."""
        self.enabled = False

    def reset(self) -> None:
        """Forget the traces and the records not used yet (call with ``spiketriton.reset(net)`` between
        independent sequences, and before changing the batch size). The weights are not touched."""
        self._pre, self._post = [], []
        self.trace_pre = self.trace_post = None

    def detach(self) -> None:
        """Remove the hooks and forget records, traces and work buffers. Calling it again does nothing."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.reset()
        self._work = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def pending(self) -> int:
        """How many (pre, post) call pairs are recorded and not used yet."""
        return min(len(self._pre), len(self._post))

    # ------------------------------------------------------------------------------------------- #
    # the update
    # ------------------------------------------------------------------------------------------- #

    def _take_records(self):
        """The records as one sequence ``pre [T, B, KB]``, ``post [T, B, NB]`` (uint8), cleared; None
        when nothing is recorded. Checks counts and shapes before anything advances."""
        op = self._op
        if not self.attached:
            raise RuntimeError(f"{op}: the learner is detached; create a new one")
        if len(self._pre) != len(self._post):
            raise RuntimeError(f"{op}: {len(self._pre)} synapse calls but {len(self._post)} neuron calls were recorded; "
                               f"the synapse must feed the neuron once per forward (reset() drops the records)")
        if not self._pre:
            return None
        w = self.synapse.weight
        pres, posts = [], []
        B = self.trace_pre.shape[0] if self.trace_pre is not None else None
        tail = 3 if self._conv else 1  # per-sample dims of the packed bytes: [H, W, bytes] or [bytes]
        what = "C, H, W" if self._conv else "features"
        for i, (p, (q, mode)) in enumerate(zip(self._pre, self._post)):
            if mode == "m":
                if p.dim() < tail + 2 or q.dim() < tail + 2:
                    raise ValueError(f"{op}: multi-step records must be [T, *batch, {what}]; call {i} gave the "
                                     f"synapse {p.dim()} and the neuron {q.dim()} dimensions (use step_mode='s' for "
                                     f"[batch, {what}] per call)")
                p, q = p.reshape(p.shape[:1] + (-1,) + p.shape[-tail:]), q.reshape(q.shape[:1] + (-1,) + q.shape[-tail:])
            else:
                if p.dim() < tail + 1 or q.dim() < tail + 1:
                    raise ValueError(f"{op}: single-step records must be [*batch, {what}]; call {i} gave "
                                     f"{p.dim()} and {q.dim()} dimensions")
                p, q = p.reshape((1, -1) + p.shape[-tail:]), q.reshape((1, -1) + q.shape[-tail:])
            if self._conv:
                self._check_conv_geometry(i, p, q)
            if p.shape[:2] != q.shape[:2]:
                raise ValueError(f"{op}: call {i}: the synapse saw [T, B] = {list(p.shape[:2])} but the neuron fired "
                                 f"{list(q.shape[:2])}")
            if B is not None and p.shape[1] != B:
                raise ValueError(f"{op}: the batch size changed from {B} to {p.shape[1]}; call reset() before changing it")
            if p.device != w.device or q.device != w.device:
                raise ValueError(f"{op}: spikes are on {p.device} / {q.device}, the weight on {w.device}")
            B = p.shape[1]
            pres.append(p)
            posts.append(q)
        self._pre, self._post = [], []
        pre = pres[0] if len(pres) == 1 else torch.cat(pres)
        post = posts[0] if len(posts) == 1 else torch.cat(posts)
        return pre.contiguous(), post.contiguous()

    def _check_conv_geometry(self, i: int, p: torch.Tensor, q: torch.Tensor) -> None:
        """The neuron's image size must be the convolution's output size of the synapse's input."""
        syn = self.synapse
        pad = syn._reversed_padding_repeated_twice  # (left, right, top, bottom)
        want = []
        for d, (lo, hi) in zip(range(2), ((pad[2], pad[3]), (pad[0], pad[1]))):
            n = p.shape[2 + d] + lo + hi - syn.dilation[d] * (syn.kernel_size[d] - 1) - 1
            want.append(n // syn.stride[d] + 1 if n >= 0 else 0)
        if list(q.shape[2:4]) != want:
            raise ValueError(f"{self._op}: call {i}: the synapse's input is {tuple(p.shape[2:4])} pixels, its output "
                             f"{tuple(want)}, but the neuron fired {tuple(q.shape[2:4])}")

    def _traces(self, B: int, pre: torch.Tensor = None, post: torch.Tensor = None):
        """The carried traces, or zeros ``[B, K]`` / ``[B, N]`` (conv: ``[B, C, H, W]`` of the records)."""
        dev = self.synapse.weight.device
        if self._conv:
            shape_p = (B, self._k) + tuple(pre.shape[2:4])
            shape_q = (B, self._n) + tuple(post.shape[2:4])
            for name, t, shape in (("pre", self.trace_pre, shape_p), ("post", self.trace_post, shape_q)):
                if t is not None and tuple(t.shape) != shape:
                    raise ValueError(f"{self._op}: the {name} images changed size from {tuple(t.shape[2:])} to "
                                     f"{shape[2:]}; call reset() before changing it")
        else:
            shape_p, shape_q = (B, self._k), (B, self._n)
        tp = self.trace_pre if self.trace_pre is not None else torch.zeros(shape_p, device=dev)
        tq = self.trace_post if self.trace_post is not None else torch.zeros(shape_q, device=dev)
        return tp, tq

    def _products(self, pre, post, tp, tq, out=None):
        """``(P, D, tr_pre_last, tr_post_last)`` of the records: linear (:func:`stdp_products`, or the torch
        path into ``out``), or conv (:func:`~spiketriton.kernels.stdp.stdp_conv_products_torch`)."""
        if self._conv:
            syn = self.synapse
            return KS.stdp_conv_products_torch(
                pre, post, self._k, self._n, tp, tq, self.tau_pre, self.tau_post, self._exp_decay,
                tuple(syn.weight.shape), syn.stride, syn._reversed_padding_repeated_twice, syn.dilation, syn.groups,
                unpack_backend="torch" if self.backend == "torch" else "auto")
        if out is not None:
            return KS.stdp_products_torch(pre, post, self._k, self._n, tp, tq, self.tau_pre, self.tau_post,
                                          self._exp_decay, out=out)
        return stdp_products(pre, post, self._k, self._n, tp, tq, self.tau_pre, self.tau_post, self._exp_decay,
                             self.backend)

    def _factors(self, w: torch.Tensor):
        """``(a_plus * f_post(W), a_minus * f_pre(W))``: tensors broadcastable to ``[N, K]`` or floats."""
        if self.bounds == "soft":
            return self.a_plus * (self.w_max - w), self.a_minus * (w - self.w_min)
        fp = self.f_post(w) if self.f_post is not None else 1.0
        fd = self.f_pre(w) if self.f_pre is not None else 1.0
        return self.a_plus * fp, self.a_minus * fd

    def _combine(self, P: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        """``dW = a_plus * f_post(W) * P - a_minus * f_pre(W) * D``, written into ``P`` (``P`` and ``D`` are
        overwritten) for the built-in rules: on the CPU each fresh ``[N, K]`` temporary costs more than the
        arithmetic (page faults; 1024 x 1024 at 1 thread: 130 ms per update with the plain formula under
        load, see bench/stdp.py)."""
        w = self.synapse.weight.detach().float()
        if self.f_pre is not None or self.f_post is not None:
            fp, fd = self._factors(w)
            return fp * P - fd * D
        if self.bounds != "soft":
            return P.mul_(self.a_plus).add_(D, alpha=-self.a_minus)
        # a_plus (w_max - W) P - a_minus (W - w_min) D = (w_max P' + w_min D') - W (P' + D'), P' = a_plus P, ...
        P.mul_(self.a_plus)
        D.mul_(self.a_minus)
        both = P + D
        return P.mul_(self.w_max).add_(D, alpha=self.w_min).addcmul_(w, both, value=-1.0)

    def _apply(self, dw: torch.Tensor, lr: float, on_grad: bool) -> None:
        w = self.synapse.weight
        if on_grad:
            if w.grad is None:
                w.grad = (dw * -lr).to(w.dtype)
            elif w.grad.dtype == dw.dtype:
                w.grad.sub_(dw, alpha=lr)
            else:
                w.grad.sub_((dw * lr).to(w.grad.dtype))
            return
        if w.dtype == dw.dtype:
            w.data.add_(dw, alpha=lr)
        else:  # (one rounding to the weight's dtype)
            w.data.copy_(w.data.float().add_(dw, alpha=lr))
        self.constrain_()

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clip the weights to ``[w_min, w_max]`` (``bounds="hard"``) and normalise each post neuron's
        incoming weights to sum to ``normalize`` (when set), in place. :meth:`step` does this itself;
        call it after ``optimizer.step()`` when the update goes through ``.grad``."""
        w = self.synapse.weight.data
        if self.bounds == "hard":
            w.clamp_(self.w_min, self.w_max)
        if self.normalize is not None:
            s = w.float().flatten(1).sum(1).view((-1,) + (1,) * (w.dim() - 1))
            scale = torch.where(s != 0, self.normalize / torch.where(s != 0, s, torch.ones_like(s)), torch.ones_like(s))
            w.mul_(scale.to(w.dtype))

    def _lr(self, lr) -> float:
        return finite(lr, "lr", f"{self._op}.step")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(synapse={type(self.synapse).__name__}({self._k}, "
                f"{self._n}), neuron={type(self.neuron).__name__}, tau_pre={self.tau_pre}, "
                f"tau_post={self.tau_post}, a_plus={self.a_plus}, a_minus={self.a_minus}, bounds={self.bounds!r}, "
                f"backend={self.backend!r}, attached={self.attached}, pending={self.pending})")


class STDPLearner(_Learner):
    """Trace-based STDP on a synapse (``SpikeLinear`` / ``nn.Linear``) and the neuron after it.

    Arguments:

    - ``synapse``: the layer whose weight learns (its bias is not touched): ``SpikeLinear`` /
      ``nn.Linear`` (``[N, K]``), or ``SpikeConv2d`` / ``nn.Conv2d`` (zero padding; torch path only).
    - ``neuron``: the module that fires the post-synaptic spikes ``[..., N]`` from the synapse's output.
    - ``tau_pre``, ``tau_post``: trace time constants in time steps (>= 1): ``tr = tr - tr / tau + s``.
    - ``a_plus``, ``a_minus``: amplitudes of potentiation and depression (default 1).
    - ``bounds``: ``None`` (additive), ``"hard"`` (clip to ``[w_min, w_max]`` after each update) or
      ``"soft"`` (multiplicative: ``f_post = w_max - W``, ``f_pre = W - w_min``).
    - ``w_min``, ``w_max``: the bounds (default 0 and 1).
    - ``f_pre``, ``f_post``: callables of the fp32 weight replacing the weight dependence
      (SpikingJelly's).
    - ``normalize``: ``None`` or ``c > 0``: after each update, scale each post neuron's incoming
      weights to sum to ``c``.
    - ``step_mode``: ``None`` (read each record in the neuron's step mode), ``"m"`` or ``"s"``.
    - ``check_binary``: refuse float inputs/outputs that are not 0/1 (one pass and a device sync per
      recorded float tensor; packed spikes are never checked).
    - ``backend``: ``"auto"``, ``"triton"`` or ``"torch"`` for the update.

    See the module docstring for the rule, the step modes and the ways to apply the update.
    """

    def __init__(self, synapse: nn.Linear, neuron: nn.Module, *, tau_pre: float, tau_post: float,
                 a_plus: float = 1.0, a_minus: float = 1.0, bounds: Optional[str] = None, w_min: float = 0.0,
                 w_max: float = 1.0, f_pre: Optional[Callable] = None, f_post: Optional[Callable] = None,
                 normalize: Optional[float] = None, step_mode: Optional[str] = None, check_binary: bool = True,
                 backend: str = "auto"):
        super().__init__("STDPLearner", synapse, neuron, tau_pre, tau_post, a_plus, a_minus, bounds, w_min, w_max,
                         f_pre, f_post, normalize, step_mode, check_binary, backend)

    @torch.no_grad()
    def delta(self) -> torch.Tensor:
        """Use the records (then dropped), advance the traces and return ``dW`` (fp32 ``[N, K]``, to be
        added to the weight) without changing the weight. Zeros when nothing was recorded."""
        dw = self._update(apply_lr=None)
        return dw

    @torch.no_grad()
    def step(self, lr: float = 1.0, *, on_grad: bool = False) -> None:
        """Compute ``dW`` (:meth:`delta`) and apply ``lr * dW``: to the weight in place, then clip and
        normalise (default), or, with ``on_grad=True``, subtract it from ``weight.grad`` for an
        optimizer to apply (then call :meth:`constrain_` after ``optimizer.step()``).

        On the Triton path without ``f_pre`` / ``f_post`` callables the kernel applies the update and
        the clipping to the weight as it writes it (no ``dW`` tensor is made)."""
        lr = self._lr(lr)
        check_bool(on_grad, "on_grad", "STDPLearner.step")
        if on_grad:
            self._apply(self._update(apply_lr=None), lr, True)
        else:
            self._update(apply_lr=lr)

    def _update(self, apply_lr: Optional[float]) -> Optional[torch.Tensor]:
        """``dW`` (``apply_lr`` None), or apply ``apply_lr * dW`` to the weight (then constrain)."""
        rec = self._take_records()
        w = self.synapse.weight
        K, N = self._k, self._n
        if rec is None:
            if apply_lr is not None:
                return None
            return torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        pre, post = rec
        tp, tq = self._traces(pre.shape[1], pre, post)
        fused = (not self._conv and self.f_pre is None and self.f_post is None
                 and use_triton(self.backend, w, op=self._op) and w.stride(1) == 1)  # (the kernel reads rows of W)
        if fused:  # the weight dependence (and the update of the weight) in the kernel's epilogue
            out = KS.OUT_DW if apply_lr is None else KS.OUT_APPLY
            dw, _, self.trace_pre, self.trace_post = KS.stdp_products_triton(
                pre, post, K, N, tp, tq, self.tau_pre, self.tau_post, self._exp_decay, out=out, weight=w.data,
                a_plus=self.a_plus, a_minus=self.a_minus, soft=self.bounds == "soft", hard=self.bounds == "hard",
                w_min=self.w_min, w_max=self.w_max, lr=apply_lr if apply_lr is not None else 1.0)
            if apply_lr is not None:
                self.constrain_()  # (the clipping is done; the normalisation, if any)
            return dw
        if apply_lr is None or self._conv or use_triton(self.backend, w, op=self._op):
            P, D, self.trace_pre, self.trace_post = self._products(pre, post, tp, tq)
        else:  # the torch path writes P and D into work buffers kept between updates
            ws = self._work
            if ws is None or ws[0].shape != (N, K) or ws[0].device != w.device:
                ws = self._work = (torch.empty(N, K, device=w.device), torch.empty(N, K, device=w.device))
            P, D, self.trace_pre, self.trace_post = self._products(pre, post, tp, tq, out=ws)
        if apply_lr is not None and self._apply_in_place(P, D, apply_lr):
            return None
        dw = self._combine(P, D)
        if apply_lr is None:
            return dw
        self._apply(dw, apply_lr, False)
        return None

    def _apply_in_place(self, P: torch.Tensor, D: torch.Tensor, lr: float) -> bool:
        """``W += lr * dW`` straight from ``P`` and ``D`` without an ``[N, K]`` temporary, for an fp32
        weight and the built-in rules (then the clipping and normalisation); False when not applicable.
        Soft bounds: with ``S = a_plus P + a_minus D``, ``dW = (w_max - W) S - (w_max - w_min) a_minus D``."""
        w = self.synapse.weight.data
        if self.f_pre is not None or self.f_post is not None or w.dtype != torch.float32:
            return False
        if self.bounds == "soft":
            S = P.mul_(self.a_plus).add_(D, alpha=self.a_minus)
            w.addcmul_(w, S, value=-lr).add_(S, alpha=lr * self.w_max)
            w.add_(D, alpha=-lr * self.a_minus * (self.w_max - self.w_min))
        else:
            w.add_(P, alpha=lr * self.a_plus).add_(D, alpha=-lr * self.a_minus)
        self.constrain_()
        return True


class RSTDPLearner(_Learner):
    """Reward-modulated STDP with an eligibility trace, with the semantics of SpikingJelly's
    ``MSTDPETLearner`` (Florian 2007, MSTDPET), batched.

    Per recorded time step t (weights fixed until the update, as for :class:`STDPLearner`)::

        tr_pre  = tr_pre  * exp(-1/tau_pre)  + pre[t]        (exponential decay, as MSTDPETLearner)
        tr_post = tr_post * exp(-1/tau_post) + post[t]
        e_trace = e_trace * exp(-1/tau_trace) + elig / tau_trace    (elig: the previous step's)
        dW     += reward[t] * e_trace
        elig    = a_plus * f_post(W) * outer(post[t], tr_pre) - a_minus * f_pre(W) * outer(tr_post, pre[t])

    so the reward of step t acts on the eligibility of the steps before it (the first step's update is
    0), as in SpikingJelly. With ``per_sample=False`` the eligibility is summed over the batch
    (``[N, K]``; the samples share the reward, which is linear in it) and ``reward`` is a number or
    ``[T]``, one per recorded step; with ``per_sample=True`` every sample keeps its eligibility
    (``[B, N, K]`` memory) and ``reward`` is ``[B]`` or ``[T, B]``, summed ``sum_b reward[t, b] * e_trace[b]``.
    SpikingJelly's learner takes one sample ``[K] / [N]`` and a scalar reward: with batch 1 the two agree.

    Arguments as :class:`STDPLearner`, plus ``tau_trace`` (> 0, the eligibility trace's time constant)
    and ``per_sample``. The per-sample eligibility is updated with PyTorch ops on any backend (an
    elementwise ``[B, N, K]`` update with no reduction for a kernel to fuse); the shared one uses the
    STDP kernel, one step at a time.
    """

    _exp_decay = True

    def __init__(self, synapse: nn.Linear, neuron: nn.Module, *, tau_pre: float, tau_post: float, tau_trace: float,
                 a_plus: float = 1.0, a_minus: float = 1.0, bounds: Optional[str] = None, w_min: float = 0.0,
                 w_max: float = 1.0, f_pre: Optional[Callable] = None, f_post: Optional[Callable] = None,
                 normalize: Optional[float] = None, per_sample: bool = False, step_mode: Optional[str] = None,
                 check_binary: bool = True, backend: str = "auto"):
        # (checked before the hooks go in: a refused learner hooks nothing)
        self.tau_trace = _check_tau(tau_trace, "tau_trace", "RSTDPLearner", True)
        self.per_sample = check_bool(per_sample, "per_sample", "RSTDPLearner")
        if per_sample and isinstance(synapse, nn.Conv2d):
            raise ValueError("RSTDPLearner: per_sample=True covers linear synapses; a conv synapse takes a shared "
                             "reward (per_sample=False)")
        super().__init__("RSTDPLearner", synapse, neuron, tau_pre, tau_post, a_plus, a_minus, bounds, w_min, w_max,
                         f_pre, f_post, normalize, step_mode, check_binary, backend)
        self.eligibility: Optional[torch.Tensor] = None  # the last step's, [N, K] or [B, N, K] fp32
        self.trace_e: Optional[torch.Tensor] = None

    def reset(self) -> None:
        super().reset()
        self.eligibility = self.trace_e = None

    def _rewards(self, reward, T: int, B: int, device) -> torch.Tensor:
        """The reward as fp32 ``[T, 1]`` (shared) or ``[T, B]`` (per sample)."""
        op = "RSTDPLearner.step"
        if isinstance(reward, (bool, str)) or not isinstance(reward, (int, float, torch.Tensor)):
            raise TypeError(f"{op}: reward must be a number or a tensor, got {type(reward).__name__}")
        r = torch.as_tensor(reward, dtype=torch.float32).detach().to(device)
        if r.is_complex():
            raise TypeError(f"{op}: reward must be real, got {r.dtype}")
        if self.per_sample:
            if r.dim() == 1 and r.shape[0] == B:
                return r.expand(T, B)
            if r.dim() == 2 and tuple(r.shape) == (T, B):
                return r
            raise ValueError(f"{op}: per_sample=True takes a reward [B] = [{B}] (every recorded step) or [T, B] = "
                             f"[{T}, {B}] (one per step), got shape {tuple(r.shape)}")
        if r.dim() == 0:
            return r.expand(T, 1)
        if r.dim() == 1 and r.shape[0] == T:
            return r.unsqueeze(1)
        raise ValueError(f"{op}: reward must be a number or [T] = [{T}] (one per recorded step); a reward per "
                         f"sample needs per_sample=True. Got shape {tuple(r.shape)}")

    @torch.no_grad()
    def delta(self, reward) -> torch.Tensor:
        """Use the records with ``reward`` (see the class docstring), advance the traces and return
        ``dW`` (fp32 ``[N, K]``) without changing the weight. Zeros when nothing was recorded (the
        reward is then not used)."""
        rec = self._take_records()
        w = self.synapse.weight
        if rec is None:
            return torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        pre, post = rec
        T, B = pre.shape[:2]
        K, N = self._k, self._n
        r = self._rewards(reward, T, B, w.device)
        if self.per_sample and self.eligibility is not None and self.eligibility.shape[0] != B:
            raise ValueError(f"RSTDPLearner: the batch size changed from {self.eligibility.shape[0]} to {B}; call "
                             f"reset() before changing it")
        tp, tq = self._traces(B, pre, post)
        shape = (B, N, K) if self.per_sample else tuple(w.shape)
        elig = self.eligibility if self.eligibility is not None else torch.zeros(shape, device=w.device)
        te = self.trace_e if self.trace_e is not None else torch.zeros(shape, device=w.device)
        fp, fd = self._factors(w.detach().float())
        ke = math.exp(-1.0 / self.tau_trace)
        dw = torch.zeros(w.shape, device=w.device)
        for t in range(T):
            te = te * ke + elig / self.tau_trace
            if self.per_sample:
                dw += torch.einsum("b,bnk->nk", r[t], te)
                s_pre = unpack_bits(pre[t], K, torch.float32)
                s_post = unpack_bits(post[t], N, torch.float32)
                tp = tp * math.exp(-1.0 / self.tau_pre) + s_pre
                tq = tq * math.exp(-1.0 / self.tau_post) + s_post
                elig = fp * (s_post[:, :, None] * tp[:, None, :]) - fd * (tq[:, :, None] * s_pre[:, None, :])
            else:
                dw += r[t, 0] * te
                P, D, tp, tq = self._products(pre[t:t + 1], post[t:t + 1], tp, tq)
                elig = fp * P - fd * D
        self.trace_pre, self.trace_post, self.eligibility, self.trace_e = tp, tq, elig, te
        return dw

    @torch.no_grad()
    def step(self, reward, lr: float = 1.0, *, on_grad: bool = False) -> None:
        """:meth:`delta` with ``reward``, applied as :meth:`STDPLearner.step` applies it."""
        lr = self._lr(lr)
        check_bool(on_grad, "on_grad", "RSTDPLearner.step")
        self._apply(self.delta(reward), lr, on_grad)
