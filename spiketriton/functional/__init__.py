"""Stateless functional API: autograd Functions over the kernels, with backend dispatch.

For SpikingJelly habits: :func:`reset_net` and :func:`set_step_mode` are spiketriton's
:func:`~spiketriton.reset` and :func:`~spiketriton.set_step_mode` under SpikingJelly's
``functional`` names, and a missing name of SpikingJelly's (``SeqToANNContainer``,
``multi_step_forward``, ...) is an ``AttributeError`` that names the spiketriton equivalent.
"""

from .._hints import module_getattr
from ._backend import BACKENDS, use_triton
from .neuron import ExtendedLIFState, extended_lif, if_neuron, lif, plif, run_neuron

__all__ = ["BACKENDS", "use_triton", "ExtendedLIFState", "extended_lif", "if_neuron", "lif", "plif", "run_neuron",
           "reset_net", "set_step_mode"]


def reset_net(net):
    """SpikingJelly's name for :func:`spiketriton.reset`: forget the state of every spiketriton neuron in
    ``net`` (call it between independent batches).

    >>> import torch, spiketriton as st
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), st.LIF())
    >>> _ = net(torch.rand(2, 1, 4))
    >>> st.functional.reset_net(net); net[1].v is None
    True
    """
    from ..neuron import reset

    reset(net)


def set_step_mode(net, step_mode: str):
    """SpikingJelly's ``functional.set_step_mode``: :func:`spiketriton.set_step_mode` (``"m"``:
    ``[T, B, ...]`` per call, ``"s"``: ``[B, ...]`` per call); returns ``net``."""
    from ..neuron import set_step_mode as _set_step_mode

    return _set_step_mode(net, step_mode)


__getattr__ = module_getattr(__name__)
