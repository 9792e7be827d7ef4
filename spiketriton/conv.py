"""SpikeConv2d: a drop-in for nn.Conv2d on spike images, read packed (8 channels per byte)."""

from __future__ import annotations

import torch
from torch import nn

from .functional._backend import use_triton
from .functional._checks import check_backend, check_bool, finite
from .functional.images import SpikeImage, spike_conv2d
from .functional.spikes import _KERNEL_DTYPES, require_binary
from .kernels import spike_conv as KSC

__all__ = ["SpikeConv2d"]

_NOT_BINARY = ("SpikeConv2d: input has values other than 0 and 1; it expects spikes (use nn.Conv2d for "
               "real-valued input, or check_binary=False if the input is known to be binary)")


def _check_step_mode(step_mode) -> str:
    if not isinstance(step_mode, str) or step_mode not in ("m", "s"):
        raise ValueError(f"SpikeConv2d: step_mode must be 'm' (multi-step, [T, B, C, H, W] per call) or 's' "
                         f"(single step, [B, C, H, W] per call), got {step_mode!r}")
    return step_mode


class SpikeConv2d(nn.Conv2d):
    """``nn.Conv2d`` for binary spike images: ``[T, B, C, H, W]`` (``step_mode="m"``, the default) or
    ``[B, C, H, W]`` (``step_mode="s"``, as set by :func:`spiketriton.set_step_mode`), as 0/1 float or
    bool, or as a :class:`~spiketriton.functional.images.SpikeImage` (8 channels per byte, the form a
    neuron with ``packed_output="image"`` hands over). Returns ``[T, B, C_out, H', W']`` (``[B, ...]``
    for one step) in the weight's dtype (or the autocast dtype).

    Same parameters, initialisation and ``state_dict`` keys as ``nn.Conv2d`` (it is one); stride,
    padding (ints, pairs, ``'same'``, ``'valid'``), dilation, groups and bias as there;
    ``padding_mode`` must be ``'zeros'`` (a zero byte is "no spike").

    - On Triton (CUDA, or CPU under ``TRITON_INTERPRET=1``) an implicit GEMM reads the packed spikes;
      on the PyTorch path ``F.conv2d`` runs on the 0/1 values. For training, only the packed spikes
      are kept for backward (1 bit per input value).
    - ``check_binary=True``: a float input with values other than 0 and 1 is a ValueError (one read
      of the input and a device sync; switch it off when the input is known to be spikes).
    - ``backend``: ``"auto"``, ``"triton"`` or ``"torch"``.
    - ``input_dropout``: ``nn.Dropout(p)`` of the input spikes folded into the layer (``convert`` sets it
      for a Dropout between a neuron and the convolution): in training, spikes are dropped with the same
      random draws as ``nn.Dropout(p)``, the convolution reads the remaining 0/1 spikes and its sum is
      scaled by ``1/(1-p)`` before the bias, which equals ``nn.Conv2d(nn.Dropout(p)(s))``; in eval it
      does nothing.

    >>> import torch, spiketriton as st
    >>> conv = st.SpikeConv2d(3, 8, 3, padding=1)
    >>> s = (torch.rand(4, 2, 3, 16, 16) < 0.2).float()        # [T, B, C, H, W]
    >>> y = conv(s)
    >>> y.shape
    torch.Size([4, 2, 8, 16, 16])
    >>> ref = torch.nn.functional.conv2d(s.flatten(0, 1), conv.weight, conv.bias, padding=1)
    >>> torch.allclose(y.flatten(0, 1), ref, atol=1e-5)
    True
    """

    step_mode = "m"
    input_dropout = 0.0  # (class default: a SpikeConv2d pickled before the option existed)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 check_binary: bool = True, backend: str = "auto", step_mode: str = "m",
                 input_dropout: float = 0.0):
        if padding_mode != "zeros":
            raise ValueError(f"SpikeConv2d: padding_mode must be 'zeros' (a zero byte is no spike), got "
                             f"{padding_mode!r}; pad the spikes yourself or keep an nn.Conv2d for that layer")
        check_bool(bias, "bias", "SpikeConv2d")
        check_bool(check_binary, "check_binary", "SpikeConv2d")
        check_backend(backend, "SpikeConv2d")
        step_mode = _check_step_mode(step_mode)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
        if not 0.0 <= finite(input_dropout, "input_dropout", "SpikeConv2d") < 1.0:
            raise ValueError(f"SpikeConv2d: input_dropout must be in [0, 1), got {input_dropout}")
        self.check_binary = check_binary
        self.backend = backend
        self.step_mode = step_mode
        self.input_dropout = float(input_dropout)
        self.__dict__["_wr_cache"] = None  # (key, reordered weight): not a buffer, not in state_dict

    def _weight_r(self):
        """The weight reordered for the kernels, ``[C_out, kh * kw * CGP]`` (K ordered (kh, kw, c)), made
        once and kept until the weight changes (another tensor, an in-place update, a dtype or device
        move); None where the kernels do not read it (the PyTorch path, a dense grouped convolution)."""
        w = self.weight
        if (w.is_meta or w.dtype not in _KERNEL_DTYPES or not KSC.packed_ok(self.in_channels, self.groups)
                or torch.compiler.is_compiling() or not use_triton(self.backend, w, op="SpikeConv2d")):
            return None
        key = (w.data_ptr(), w._version, w.dtype, w.device, tuple(w.shape))
        cache = self.__dict__.get("_wr_cache")
        if cache is None or cache[0] != key:
            cache = (key, KSC.reorder_weight(w, self.groups))
            self.__dict__["_wr_cache"] = cache
        return cache[1]

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> "SpikeConv2d":
        """A SpikeConv2d holding (sharing) ``conv``'s weight and bias; ``kwargs``: check_binary,
        backend, step_mode, input_dropout."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"SpikeConv2d.from_conv: expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"SpikeConv2d.from_conv: the conv's padding_mode is {conv.padding_mode!r}; only "
                             f"'zeros' can be converted")
        w = conv.weight
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, device="meta",
                  dtype=w.dtype, **kwargs)
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def _lead(self, s) -> int:
        """How many leading dimensions the input has before [C, H, W] (2 multi-step, 1 single)."""
        want = 5 if self.step_mode == "m" else 4
        if s.dim() != want:
            what = "SpikeImage of logical shape" if isinstance(s, SpikeImage) else "input of shape"
            if self.step_mode == "m":
                hint = ("a multi-step SpikeConv2d (step_mode='m', the default) takes [T, B, C, H, W]; for one "
                        "step [B, C, H, W] per call use step_mode='s' (or spiketriton.set_step_mode(net, 's'))")
            else:
                hint = "a single-step SpikeConv2d (step_mode='s') takes [B, C, H, W]"
            raise ValueError(f"SpikeConv2d: got a {what} {tuple(s.shape)}; {hint}")
        return want - 3

    def forward(self, s):
        C = self.in_channels
        if isinstance(s, SpikeImage):
            lead = self._lead(s)
            if s.c != C:
                raise ValueError(f"SpikeConv2d: the SpikeImage has c = {s.c} channels, expected in_channels = {C}")
        elif isinstance(s, torch.Tensor):
            if s.dtype == torch.uint8:
                raise TypeError("SpikeConv2d: got a uint8 tensor; wrap packed spikes as SpikeImage(data, c) "
                                "(spiketriton.pack_image) or pass 0/1 spikes as float or bool")
            if not (s.is_floating_point() or s.dtype == torch.bool):
                raise TypeError(f"SpikeConv2d: spikes must be float/bool 0/1 or a SpikeImage, got {s.dtype}")
            lead = self._lead(s)
            if s.shape[lead] != C:
                raise ValueError(f"SpikeConv2d: input has {s.shape[lead]} channels (shape {tuple(s.shape)}), "
                                 f"expected in_channels = {C}")
            if self.check_binary:
                require_binary(s, _NOT_BINARY)
            if s.dtype == torch.bool:
                s = s.to(self.weight.dtype)
        else:
            raise TypeError(f"SpikeConv2d: expected a tensor or SpikeImage, got {type(s).__name__}")
        if s.device != self.weight.device:
            raise ValueError(f"SpikeConv2d: the input is on {s.device}, the weight on {self.weight.device}")
        lead_shape = tuple(s.shape[:lead])
        flat = s.flatten_lead() if isinstance(s, SpikeImage) else s.flatten(0, lead - 1)
        if self.weight.is_meta:
            y = spike_conv2d(torch.empty(flat.shape, device="meta"), self.weight, self.bias, self.stride,
                             self.padding, self.dilation, self.groups)
        elif self.input_dropout > 0.0 and self.training:
            # nn.Dropout(p) folded in (convert does it for Dropout -> Conv2d on spikes): the same Bernoulli
            # draws as nn.Dropout(p)(s), the dropped input kept binary, the 1/(1-p) after the convolution
            p = self.input_dropout
            if isinstance(flat, SpikeImage):
                flat = flat.to_dense(self.weight.dtype, backend=self.backend)
            # drawn in the logical [N, C, H, W] order, as nn.Dropout draws for contiguous spikes, whatever
            # the memory format of the input
            keep = torch.nn.functional.dropout(torch.ones(flat.shape, dtype=flat.dtype, device=flat.device), p,
                                               True) != 0
            y = spike_conv2d(flat * keep, self.weight, None, self.stride, self.padding, self.dilation, self.groups,
                             backend=self.backend, weight_r=self._weight_r()) / (1.0 - p)
            if self.bias is not None:
                y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        else:
            y = spike_conv2d(flat, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                             backend=self.backend, weight_r=self._weight_r())
        return y.unflatten(0, lead_shape) if lead > 1 else y

    def extra_repr(self) -> str:
        extra = ", step_mode='s'" if self.step_mode == "s" else ""
        if getattr(self, "input_dropout", 0.0):
            extra += f", input_dropout={self.input_dropout}"
        return super().extra_repr() + f", check_binary={self.check_binary}{extra}"
