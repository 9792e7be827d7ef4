"""Packed spikes and the add-only spike matmul.

``SpikeTensor`` holds spikes packed 8 per byte along the last dimension (the layout of docs/spec/packed-spikes.md) and their
logical size ``k``. It may also hold an ``anchor``: a tensor of the spikes' shape through which the
gradient of the spikes flows back to whatever produced them (the float spikes themselves when they
were packed by :func:`pack_spikes`, or a one-element stand-in expanded to the spikes' shape when a
neuron wrote them packed directly, so that no float spike tensor is ever materialised or saved).

``spike_matmul(s, weight, bias)`` = ``s @ weight.T + bias`` for binary ``s``: on Triton it reads the
packed bytes (kernels/spike_matmul.py); on the PyTorch path it uses the BLAS matmul. Either way only
the packed spikes are saved for backward. Packing, unpacking and the matmul with its weight gradient
are ``torch.library`` custom ops (``functional/ops.py``), so that ``torch.compile`` sees one node
each; a SpikeTensor is a plain Python object that Dynamo traces through (created in the graph, or
passed into a compiled function).
"""

from __future__ import annotations

import math
from typing import Optional, TypeVar, Union

import torch

from . import ops
from ._backend import use_triton
from ._checks import check_bool, check_dtype
from .ops import no_double_backward  # noqa: F401  (re-exported: it lived here before functional/ops.py)

__all__ = ["SpikeTensor", "pack_spikes", "unpack_spikes", "spike_matmul", "is_binary"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_P = TypeVar("_P", bound="_PackedSpikes")


class _PackedSpikes:
    """What :class:`SpikeTensor` and :class:`~spiketriton.functional.images.SpikeImage` share: uint8
    ``data`` whose last dimension packs ``n`` bits 8 per byte, LSB first (``k`` spikes, ``c``
    channels), and an optional ``anchor`` of the logical :attr:`shape` through which the spikes'
    gradient flows back to whatever produced them.

    A subclass names the attribute that holds ``n`` and the words of its error messages, and says how
    the packed shape maps to the logical one (``_logical``) and how to unpack (``unpack``). Neither
    subclass is an instance of the other: layers dispatch on the two types."""

    __slots__ = ("data", "anchor")

    _n_name: str  # the attribute holding n: "k" or "c"
    _n_what: str  # n in an error message, e.g. "k (the logical last-dimension size)"
    _bits: str  # what the n bits are: "spikes" or "channels"
    _data_what: str  # the packed layout after "a torch.uint8 tensor" ("" or " [*lead, H, W, ceil(C/8)]")
    _min_dim: int  # the fewest dimensions of the packed data
    _dims_what: str  # what the packed data's dimensions must be, e.g. "needs at least one dimension (...)"
    _shape_what: str  # the logical shape in an error message: "the spikes' shape" or "the logical shape"

    def __init__(self, data: torch.Tensor, n: int, anchor: Optional[torch.Tensor] = None):
        name, nn = type(self).__name__, self._n_name
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8:
            got = data.dtype if isinstance(data, torch.Tensor) else type(data).__name__
            raise TypeError(f"{name}: packed data must be a torch.uint8 tensor{self._data_what}, got {got}")
        if data.dim() < self._min_dim:
            raise ValueError(f"{name}: packed data {self._dims_what}, got shape {tuple(data.shape)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name}: {self._n_what} must be an int >= 0, got {n!r}")
        if data.shape[-1] != (n + 7) // 8:
            raise ValueError(f"{name}: {nn} = {n} {self._bits} need ceil({nn}/8) = {(n + 7) // 8} bytes in the "
                             f"last dimension, the data has {data.shape[-1]}")
        logical = self._logical(data.shape, n)
        if anchor is not None and not isinstance(anchor, torch.Tensor):
            raise TypeError(f"{name}: anchor must be a torch.Tensor of {self._shape_what} {logical} or None, "
                            f"got {type(anchor).__name__}")
        if anchor is not None and tuple(anchor.shape) != logical:
            raise ValueError(f"{name}: anchor shape {tuple(anchor.shape)} is not {self._shape_what} {logical}")
        if anchor is not None and anchor.device != data.device:
            raise ValueError(f"{name}: anchor is on {anchor.device} but the packed data on {data.device}; "
                             f"move them to one device")
        self.data = data
        setattr(self, nn, n)
        self.anchor = anchor

    @staticmethod
    def _logical(packed_shape, n: int) -> tuple:
        """The logical shape of packed data of shape ``packed_shape`` holding ``n`` bits a row."""
        raise NotImplementedError

    @property
    def shape(self) -> torch.Size:
        """The logical shape: ``[..., k]`` for a SpikeTensor, ``[*lead, C, H, W]`` for a SpikeImage."""
        return torch.Size(self._logical(self.data.shape, getattr(self, self._n_name)))

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def requires_grad(self) -> bool:
        return self.anchor is not None and self.anchor.requires_grad

    def dim(self) -> int:
        return self.data.dim()

    def unpack(self, dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
        raise NotImplementedError

    def to_dense(self, dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
        """The 0/1 values, differentiable: the gradient reaches whatever produced the spikes (through
        the anchor, whose values never matter: ``anchor - anchor.detach()`` adds an exact 0)."""
        dense = self.unpack(dtype, backend)
        if self.anchor is not None and self.anchor.requires_grad:
            dense = dense + (self.anchor - self.anchor.detach()).to(dtype)
        return dense

    def to(self: _P, device) -> _P:
        a = self.anchor
        return type(self)(self.data.to(device), getattr(self, self._n_name), a.to(device) if a is not None else None)

    def detach(self: _P) -> _P:
        return type(self)(self.data, getattr(self, self._n_name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, packed={tuple(self.data.shape)}, device={self.device})"


class SpikeTensor(_PackedSpikes):
    """Spikes packed along the last dimension: ``data`` uint8 ``[..., ceil(k/8)]``, logical ``[..., k]``."""

    __slots__ = ("k",)
    _n_name, _n_what, _bits = "k", "k (the logical last-dimension size)", "spikes"
    _data_what, _min_dim, _dims_what = "", 1, "needs at least one dimension (the packed bytes)"
    _shape_what = "the spikes' shape"

    def __init__(self, data: torch.Tensor, k: int, anchor: Optional[torch.Tensor] = None):
        super().__init__(data, k, anchor)

    @staticmethod
    def _logical(packed_shape, n: int) -> tuple:
        return tuple(packed_shape[:-1]) + (n,)

    def unpack(self, dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
        """The 0/1 values, without gradient (see :meth:`to_dense`)."""
        return unpack_spikes(self, dtype, backend)


def is_binary(x: torch.Tensor) -> bool:
    """True when every element is exactly 0 or 1 (NaN is not). One pass and a host sync."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"is_binary: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool:
        return True
    return not bool(((x != 0) & (x != 1)).any())


def require_binary(x: torch.Tensor, message: str) -> None:
    """A layer's ``check_binary``: ``ValueError(message)`` unless every element of ``x`` is 0 or 1 (one
    pass and a host sync); under ``torch.compile`` a traced device-side assert with the same message (a
    data-dependent Python branch would break the graph). Meta tensors have no values to check."""
    if x.is_meta:
        return
    if torch.compiler.is_compiling():
        torch._assert_async(((x == 0) | (x == 1)).all(), message)
    elif not is_binary(x):
        raise ValueError(message)


def pack_spikes(s: torch.Tensor, check: bool = True, backend: str = "auto") -> SpikeTensor:
    """Pack a 0/1 tensor ``[..., K]`` (float, bool or uint8) into a :class:`SpikeTensor`.

    ``check=True`` rejects values other than 0 and 1 (packing would silently turn them into 1).
    A float ``s`` that requires grad stays the anchor: gradients of the packed spikes reach it.
    """
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"pack_spikes: expected a tensor [..., K] of 0/1, got {type(s).__name__}")
    if s.dim() < 1:
        raise ValueError("pack_spikes: expected at least one dimension [..., K]")
    if s.is_complex() or (not s.is_floating_point() and s.dtype not in (torch.bool, torch.uint8)):
        raise TypeError(f"pack_spikes: spikes must be float, bool or uint8 0/1, got {s.dtype}")
    check_bool(check, "check", "pack_spikes")
    if check and not is_binary(s):
        raise ValueError("pack_spikes: values other than 0 and 1 found; spikes must be binary")
    data = ops.call_pack(s, use_triton(backend, s, op="pack_spikes"))
    anchor = s if (s.is_floating_point() and s.requires_grad) else None
    return SpikeTensor(data, s.shape[-1], anchor)


def unpack_spikes(p: SpikeTensor, dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
    """Inverse of :func:`pack_spikes`: ``[..., k]`` 0/1 in ``dtype`` (no gradient)."""
    triton = _unpack_args(p, SpikeTensor, dtype, backend, "unpack_spikes")
    return ops.call_unpack(p.data, p.k, dtype, triton)


def _unpack_args(p, cls: type, dtype: torch.dtype, backend: str, op: str) -> bool:
    """Checks the arguments of ``unpack_spikes`` / ``unpack_image`` (``p`` a ``cls``, ``dtype`` a real
    dtype); whether the Triton kernel unpacks (the backend allows it and it writes ``dtype``)."""
    if not isinstance(p, cls):
        raise TypeError(f"{op}: expected a {cls.__name__}, got {type(p).__name__}")
    check_dtype(dtype, "dtype", op)
    if dtype.is_complex:
        raise TypeError(f"{op}: dtype must be a real dtype (float, integer or bool), got {dtype}")
    return use_triton(backend, p.data, op=op) and dtype in _KERNEL_DTYPES


def _compute_params(weight: torch.Tensor, bias: Optional[torch.Tensor], device: torch.device, backend: str,
                    op: str):
    """``(weight, bias, triton)`` as the spike matmul and convolution compute with them: in the autocast
    dtype when autocast is on for ``device`` (otherwise the bias in the weight's dtype), the bias
    contiguous (the kernels read it with unit stride); ``triton``: whether the Triton kernels run (the
    backend allows it and they take the dtype; ``backend="triton"`` with another dtype is a TypeError)."""
    if torch.is_autocast_enabled(device.type):
        dt = torch.get_autocast_dtype(device.type)
        weight = weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
    elif bias is not None and bias.dtype != weight.dtype:
        bias = bias.to(weight.dtype)
    if bias is not None:
        bias = bias.contiguous()
    triton = use_triton(backend, weight, op=op) and weight.dtype in _KERNEL_DTYPES
    if backend == "triton" and weight.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"{op}: the Triton kernels take float32, float16 or bfloat16 weights, got {weight.dtype}")
    return weight, bias, triton


# --------------------------------------------------------------------------------------------- #
# spike_matmul
# --------------------------------------------------------------------------------------------- #


def spike_matmul(
    s: Union[SpikeTensor, torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``s @ weight.T + bias`` for binary spikes ``s [..., K]`` (packed, or a 0/1 float/bool tensor).

    ``weight [N, K]`` and ``bias [N]`` in fp32, fp16 or bf16; the result ``[..., N]`` is in the weight's
    dtype, or in the autocast dtype when autocast is on, and is accumulated in fp32 by the kernels.
    A float ``s`` is read as spikes on every backend: any nonzero value (NaN included) is a 1, as
    :func:`pack_spikes` packs it (use ``spiketriton.functional.spikes.is_binary`` or SpikeLinear's check to refuse such input).
    Gradients: weight, bias, and the spikes (dense ``dY @ W``) when they require grad.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        got = (f"{weight.dtype} tensor of shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor)
               else type(weight).__name__)
        raise TypeError(f"spike_matmul: weight must be a floating tensor [N, K], got {got}")
    K = weight.shape[1]
    if isinstance(s, SpikeTensor):
        if s.k != K:
            raise ValueError(f"spike_matmul: packed spikes have k = {s.k} but weight [N, K] has K = {K}")
        device = s.device
    elif isinstance(s, torch.Tensor):
        if not (s.is_floating_point() or s.dtype == torch.bool):
            raise TypeError(f"spike_matmul: spikes must be a float/bool 0/1 tensor or a SpikeTensor, got {s.dtype}")
        if s.dim() < 1 or s.shape[-1] != K:
            raise ValueError(f"spike_matmul: spikes [..., K] have last dimension {tuple(s.shape)[-1:]} but weight has K = {K}")
        device = s.device
    else:
        raise TypeError(f"spike_matmul: expected a SpikeTensor or a tensor, got {type(s).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"spike_matmul: bias must be a floating tensor [N] = [{weight.shape[0]}] or None, "
                        f"got {type(bias).__name__}")
    if bias is not None and not bias.is_floating_point():
        raise TypeError(f"spike_matmul: bias must be a floating tensor [N] = [{weight.shape[0]}], got {bias.dtype}")
    if weight.device != device or (bias is not None and bias.device != device):
        raise ValueError(f"spike_matmul: spikes are on {device}, weight on {weight.device}"
                         + (f", bias on {bias.device}" if bias is not None else "") + "; move them to one device")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"spike_matmul: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if device.type == "meta":  # shapes only (shape inference, deferred initialisation): nothing to multiply
        return torch.empty(tuple(s.shape[:-1]) + (weight.shape[0],), dtype=weight.dtype, device="meta")
    weight, bias, triton_ok = _compute_params(weight, bias, device, backend, "spike_matmul")

    lead = tuple(s.shape[:-1])
    M = math.prod(lead)
    if isinstance(s, SpikeTensor):
        # bytes must be contiguous along the last dimension (the kernels read them with unit stride)
        packed, anchor, dense = s.data.reshape(M, s.data.shape[-1]).contiguous(), s.anchor, None
    else:
        anchor = s if (s.is_floating_point() and s.requires_grad) else None
        dense = None if triton_ok else s.reshape(M, K)
        needs_grad = torch.is_grad_enabled() and (
            weight.requires_grad or anchor is not None or (bias is not None and bias.requires_grad))
        if not triton_ok and not needs_grad:
            # inference on the PyTorch path: nothing to save, no packing
            with torch.autocast(device.type, enabled=False):
                return ops.torch_spike_matmul_fwd(None, K, weight, bias, s)
        packed = ops.call_pack(s.reshape(M, K), triton_ok)
    with torch.autocast(device.type, enabled=False):
        y = ops.call_spike_matmul(packed, K, anchor.reshape(M, K) if anchor is not None else None,
                                   dense, weight, bias, triton_ok)
    return y.reshape(lead + (weight.shape[0],))
