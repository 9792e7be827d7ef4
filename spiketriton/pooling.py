"""Pooling modules for spike images: drop-ins for ``nn.MaxPool2d`` / ``nn.AvgPool2d`` that also take
packed spikes (:class:`~spiketriton.functional.images.SpikeImage`) and any leading dimensions.

- :class:`SpikeMaxPool2d` (an ``nn.MaxPool2d``): the OR of each window; a SpikeImage stays packed.
- :class:`SpikeAvgPool2d` (an ``nn.AvgPool2d``): firing fractions, a float tensor.
- :class:`SpikeSumPool2d` (an ``nn.AvgPool2d`` with ``divisor_override=1``): spike counts, a float tensor.

They take ``[T, B, C, H, W]`` (multi-step), ``[B, C, H, W]`` (one step) or ``[C, H, W]``: pooling has no
state, so the leading dimensions are simply folded together, and no ``StepWise`` wrapper is needed.
Inside one, they receive the sequence as it is (their ``step_mode`` is ``"m"``, as SpikingJelly's
layers: :class:`~spiketriton.StepWise` hands a module that takes sequences itself ``[T, B, ...]``),
so a SpikeImage reaches them packed. Being subclasses of the torch modules, they keep those modules' arguments,
``repr`` and (empty) state_dict, and the exports read them as the torch pooling they are
(see :mod:`spiketriton.functional.pooling` for the semantics and the gradients).
"""

from __future__ import annotations

from torch import nn

from .functional._checks import check_backend
from .functional.pooling import pool_geometry, spike_avg_pool2d, spike_max_pool2d, spike_sum_pool2d

__all__ = ["SpikeMaxPool2d", "SpikeAvgPool2d", "SpikeSumPool2d"]


class _SeqPool:
    """Pooling takes any leading dimensions: a :class:`~spiketriton.StepWise` passes it the sequence."""

    step_mode = "m"


class SpikeMaxPool2d(_SeqPool, nn.MaxPool2d):
    """``nn.MaxPool2d`` for spikes: the OR of each window.

    A :class:`~spiketriton.functional.images.SpikeImage` is pooled on its packed bytes, 8 channels at a
    time, and returned packed (the gradient flows back through its anchor as ``nn.MaxPool2d`` routes
    it); a float tensor gives exactly ``nn.MaxPool2d``'s values and gradient. ``return_indices=True``
    and a geometry with a window entirely in the padding are refused (ValueError). ``backend``
    (``"auto"``, ``"triton"``, ``"torch"``) chooses the OR (one Triton kernel, or torch ops on the packed
    words) and how the backward unpacks the saved bits.

    >>> import torch, spiketriton as st
    >>> pool = st.SpikeMaxPool2d(2)
    >>> s = (torch.rand(4, 2, 16, 8, 8) < 0.2).float()           # [T, B, C, H, W]
    >>> out = pool(st.pack_image(s))
    >>> out.shape, torch.equal(out.unpack(), pool(s))
    (torch.Size([4, 2, 16, 4, 4]), True)
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False, backend: str = "auto"):
        if return_indices is not False:
            raise ValueError("SpikeMaxPool2d: return_indices=True is not supported (the pooled spikes are an OR; "
                             "use nn.MaxPool2d for the indices)")
        pool_geometry("SpikeMaxPool2d", None, kernel_size, stride, padding, dilation, ceil_mode)
        super().__init__(kernel_size, stride, padding, dilation, False, ceil_mode)
        self.backend = check_backend(backend, "SpikeMaxPool2d")

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d, backend: str = "auto") -> "SpikeMaxPool2d":
        """The same pooling as the ``nn.MaxPool2d`` ``pool``."""
        if not isinstance(pool, nn.MaxPool2d):
            raise TypeError(f"SpikeMaxPool2d.from_pool: expected an nn.MaxPool2d, got {type(pool).__name__}")
        new = cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.return_indices, pool.ceil_mode,
                  backend)
        new.train(pool.training)
        return new

    def forward(self, x):
        return spike_max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                backend=self.backend)


class SpikeAvgPool2d(_SeqPool, nn.AvgPool2d):
    """``nn.AvgPool2d`` for spikes: the firing fraction of each window, a float tensor (``nn.AvgPool2d``'s
    values and gradient). A SpikeImage is unpacked for it (``backend``: how), its gradient reaches the
    anchor.

    >>> import torch, spiketriton as st
    >>> s = (torch.rand(4, 2, 3, 8, 8) < 0.5).float()
    >>> torch.equal(st.SpikeAvgPool2d(2)(st.pack_image(s)), st.SpikeAvgPool2d(2)(s))
    True
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override=None, backend: str = "auto"):
        pool_geometry(type(self).__name__, None, kernel_size, stride, padding, 1, ceil_mode)
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self.backend = check_backend(backend, type(self).__name__)

    @classmethod
    def from_pool(cls, pool: nn.AvgPool2d, backend: str = "auto") -> "SpikeAvgPool2d":
        """The same pooling as the ``nn.AvgPool2d`` ``pool``."""
        if not isinstance(pool, nn.AvgPool2d):
            raise TypeError(f"{cls.__name__}.from_pool: expected an nn.AvgPool2d, got {type(pool).__name__}")
        new = SpikeAvgPool2d(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad,
                             pool.divisor_override, backend)
        new.train(pool.training)
        return new

    def forward(self, x):
        return spike_avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                self.count_include_pad, self.divisor_override, backend=self.backend)


class SpikeSumPool2d(SpikeAvgPool2d):
    """Sum pooling of spikes (counts per window, zero padding): ``nn.AvgPool2d(..., divisor_override=1)``,
    which is how the NIR (``SumPool2d``) and chip (``sumpool2d``) exports read it.

    >>> import torch, spiketriton as st
    >>> st.SpikeSumPool2d(2)(torch.ones(1, 1, 2, 2))
    tensor([[[[4.]]]])
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, backend: str = "auto"):
        super().__init__(kernel_size, stride, padding, ceil_mode, True, 1, backend)

    def forward(self, x):
        return spike_sum_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, backend=self.backend)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}" + \
            (", ceil_mode=True" if self.ceil_mode else "")
