"""Monitors: record what spiking neurons do, time step by time step, and plot it.

A :class:`Monitor` hooks chosen neuron modules of a network (every spiketriton neuron by default) and
keeps, for each one and for each time step, the output **spikes**, the potential **H** compared with
the threshold (before the reset) and the potential **V** carried to the next step (after the reset;
for ExtendedLIF after the leak and the floor). It records across calls, in both step modes (a
multi-step call adds T steps, a single-step call one), with or without gradient (records are
detached) and with packed outputs; ``spiketriton.reset(net)`` does not clear it (a record spans
independent sequences, e.g. a whole test set), :meth:`Monitor.reset` does.

>>> import torch, spiketriton as st
>>> from spiketriton.monitor import Monitor
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), st.LIF(backend="torch"),
...                           torch.nn.Linear(8, 2), st.LIF(backend="torch"))
>>> with Monitor(net, max_steps=100) as mon:      # hooks on '1' and '3'
...     out = net(torch.rand(5, 3, 4) * 2)       # [T=5, B=3, 4]: 5 steps
...     _ = st.set_step_mode(net, "s")            # continue one step per call
...     out = net(torch.rand(3, 4) * 2)           # 1 more step
>>> mon.names
('1', '3')
>>> mon.spikes("1").shape, mon.v("3").shape      # [T_recorded, B, features]
(torch.Size([6, 3, 8]), torch.Size([6, 3, 2]))
>>> bool(torch.equal(mon.spikes("3")[-1], out))
True
>>> sorted(mon.firing_rates())                   # layer -> mean firing rate over the records
['1', '3']
>>> net[1].store_v_seq                            # the monitor is detached: hooks and options gone
False

Cost: recording spikes copies the output of each call (as bool: 1 byte per spike, or the packed bits of
a ``packed_output=True`` neuron); recording H or V sets ``store_v_seq=True`` on the monitored neurons,
so their kernels write H in fp32 (as in training) and V is derived from it. With ``device="cpu"`` (the
default) records are copied to the CPU, so they hold no GPU memory, at the price of a device
synchronisation per recorded tensor per call; ``device=None`` keeps them where they are, without a
copy or a sync. Monitors use forward hooks: for eager mode (under ``torch.compile`` hooks are traced
or cause graph breaks; record an eager model).

Plots need matplotlib (``pip install matplotlib``); :meth:`Monitor.figure` draws on a standalone
figure (rendered by Agg when saved) and never touches pyplot's global state or backend.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import weakref
from collections import deque
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .functional.images import SpikeImage, unpack_image
from .functional.spikes import SpikeTensor, unpack_spikes
from .neuron import BaseNeuron

__all__ = ["Monitor", "RECORD_KINDS"]

#: what a monitor can record: the output spikes, the potential before the reset (H) and after it (V)
RECORD_KINDS = ("spikes", "h", "v")

# store_v_seq as it was before the first monitor that needs H/V set it, and how many monitors need it:
# a module watched by two monitors keeps store_v_seq=True until both are detached
_HV_USERS: "weakref.WeakKeyDictionary[nn.Module, List]" = weakref.WeakKeyDictionary()

_MPL_MISSING = ("spiketriton.monitor: plotting needs matplotlib, which is not installed: pip install matplotlib "
                "(or pip install 'spiketriton[bench]')")


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(_MPL_MISSING) from e
    return Figure


def _new_axes(ax, who: str):
    """``ax`` itself, or new axes on pyplot's current backend (as matplotlib users expect from ax=None)."""
    if ax is not None:
        _matplotlib()
        from matplotlib.axes import Axes

        if not isinstance(ax, Axes):
            raise TypeError(f"{who}: ax must be a matplotlib Axes or None, got {type(ax).__name__}")
        return ax
    _matplotlib()
    import matplotlib.pyplot as plt

    return plt.subplots()[1]


class _Record:
    """One quantity of one module: per-call chunks ``[t, B, ...]`` (time first), trimmed to ``max_steps``.

    A chunk is ``(tensor, k, dtype)``: spikes as bool (``k`` None) or packed bytes (``k`` = the logical
    last dimension, or ``("image", C)`` for a SpikeImage's channels-last bytes), ``dtype`` the output's dtype; H and V as fp32 tensors (``k`` and ``dtype`` None).
    Appending costs the chunk only: trimming drops whole chunks from the left and slices at most one.
    """

    __slots__ = ("chunks", "steps")

    def __init__(self):
        self.chunks: deque = deque()
        self.steps = 0

    def append(self, chunk: Tuple[torch.Tensor, Optional[int], Optional[torch.dtype]], max_steps: Optional[int]):
        self.chunks.append(chunk)
        self.steps += chunk[0].shape[0]
        if max_steps is not None and self.steps > max_steps:
            excess = self.steps - max_steps
            while excess >= self.chunks[0][0].shape[0]:
                excess -= self.chunks.popleft()[0].shape[0]
            if excess:
                t, k, dtype = self.chunks[0]
                self.chunks[0] = (t[excess:].clone(), k, dtype)  # a copy: the dropped steps' memory is freed
            self.steps = max_steps

    def dense(self) -> List[torch.Tensor]:
        out = []
        for t, k, dtype in self.chunks:
            if isinstance(k, tuple):  # ("image", C): a SpikeImage's channels-last bytes
                t = unpack_image(SpikeImage(t, k[1]), dtype, backend="auto" if t.is_cuda else "torch")
            elif k is not None:
                t = unpack_spikes(SpikeTensor(t, k), dtype, backend="auto" if t.is_cuda else "torch")
            elif dtype is not None:
                t = t.to(dtype)
            out.append(t)
        return out


class Monitor:
    """Record the spikes, H and V of neuron modules of ``net`` at every time step.

    Args:

    - ``net``: the model (an ``nn.Module``); a neuron module itself is fine.
    - ``modules``: which neurons to watch: ``None`` (every :class:`~spiketriton.BaseNeuron` in ``net``), a
      name as in ``net.named_modules()`` (``"1"``, ``"block.lif"``), a module object of ``net``, or a
      list of these. A neuron that is ``net`` itself is named by its class (``"LIF"``).
    - ``record``: which quantities: any of ``"spikes"``, ``"h"`` (potential before the reset) and ``"v"``
      (after the reset), as a tuple or one string. ``"h"`` or ``"v"`` sets ``store_v_seq=True`` on
      the watched neurons until :meth:`detach`.
    - ``max_steps``: keep only the last ``max_steps`` time steps per module (``None``: keep all).
    - ``device``: where records are stored: ``"cpu"`` (default: a copy, no GPU memory held), another
      device, or ``None`` (where the network computes them, no copy).

    Read the records with :meth:`spikes`, :meth:`h`, :meth:`v` (``[T_recorded, B, *features]``),
    ``mon[name]`` (a dict kind -> tensor) and :meth:`firing_rates`; plot them with
    :meth:`plot_raster`, :meth:`plot_traces`, :meth:`plot_rates` and :meth:`figure`. Records survive
    :meth:`detach` and ``spiketriton.reset(net)``; :meth:`reset` clears them. A module called several
    times per forward records every call, in order. Use as a context manager (``with Monitor(net) as
    mon:``) or call :meth:`detach` to remove the hooks (and before ``torch.save(net)``: hooks do not pickle).
    """

    def __init__(self, net: nn.Module, modules=None, record: Union[str, Sequence[str]] = RECORD_KINDS,
                 max_steps: Optional[int] = None, device: Union[str, torch.device, None] = "cpu"):
        if not isinstance(net, nn.Module):
            raise TypeError(f"Monitor: net must be a torch.nn.Module, got {type(net).__name__}")
        self.record = self._check_record(record)
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)):
            raise TypeError(f"Monitor: max_steps must be an int >= 1 or None (keep every step), got "
                            f"{type(max_steps).__name__} {max_steps!r}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"Monitor: max_steps must be an int >= 1 or None (keep every step), got {max_steps}")
        self.max_steps = max_steps
        self.device = self._check_device(device)
        self._modules: Dict[str, BaseNeuron] = self._select(net, modules)
        if "h" in self.record or "v" in self.record:
            own = [f"{n!r} ({type(m).__name__})" for n, m in self._modules.items()
                   if type(m).forward is not BaseNeuron.forward]
            if own:
                raise ValueError(f"Monitor: {', '.join(own)}: a neuron with its own forward, which does not store H/V "
                                 f"sequences (store_v_seq); record only spikes (record=('spikes',)) or leave it out "
                                 f"(modules=[...])")
        self._records: Dict[str, Dict[str, _Record]] = {}
        self.reset()
        self._handles = []
        self._hv_modules: List[nn.Module] = []
        self._warned: set = set()
        for name, m in self._modules.items():
            self._handles.append(m.register_forward_hook(self._make_hook(name)))
            if "h" in self.record or "v" in self.record:
                entry = _HV_USERS.get(m)
                if entry is None:
                    entry = _HV_USERS[m] = [m.store_v_seq, 0]
                entry[1] += 1
                m.store_v_seq = True
                self._hv_modules.append(m)

    # ------------------------------------------------------------------------------------------- #
    # arguments
    # ------------------------------------------------------------------------------------------- #

    @staticmethod
    def _check_record(record) -> Tuple[str, ...]:
        kinds = (record,) if isinstance(record, str) else record
        try:
            kinds = tuple(kinds)
        except TypeError:
            raise TypeError(f"Monitor: record must be a string or a sequence of {RECORD_KINDS}, got "
                            f"{type(record).__name__}") from None
        for k in kinds:
            if not isinstance(k, str) or k not in RECORD_KINDS:
                raise ValueError(f"Monitor: record takes {', '.join(map(repr, RECORD_KINDS))} (spikes, the potential "
                                 f"before the reset, after it), got {k!r}")
        if not kinds:
            raise ValueError(f"Monitor: record is empty; choose from {RECORD_KINDS}")
        return tuple(dict.fromkeys(kinds))

    @staticmethod
    def _check_device(device) -> Optional[torch.device]:
        if device is None:
            return None
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"Monitor: device must be a torch.device, a device name such as 'cpu', or None (keep "
                            f"records where they are computed), got {type(device).__name__}")
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"Monitor: device {device!r} is not a device name: {e}") from None
        if dev.type == "meta":
            raise ValueError("Monitor: device 'meta' holds no data; use 'cpu', a GPU or None")
        return dev

    @staticmethod
    def _select(net: nn.Module, modules) -> Dict[str, BaseNeuron]:
        named = list(net.named_modules())
        neurons = {(n or type(m).__name__): m for n, m in named if isinstance(m, BaseNeuron)}
        if modules is None:
            if not neurons:
                raise ValueError(f"Monitor: {type(net).__name__} has no spiketriton neuron (BaseNeuron) to record")
            return neurons
        items = [modules] if isinstance(modules, (str, nn.Module)) else modules
        try:
            items = list(items)
        except TypeError:
            raise TypeError(f"Monitor: modules must be None, a module name, a module of net or a list of these, "
                            f"got {type(modules).__name__}") from None
        if not items:
            raise ValueError("Monitor: modules is empty; pass None to record every neuron of net")
        by_name = {n: m for n, m in named}
        by_name.update(neurons)  # the root neuron's class name
        by_id = {id(m): (n or type(m).__name__) for n, m in named}  # named_modules lists a shared module once
        chosen: Dict[str, BaseNeuron] = {}
        for item in items:
            if isinstance(item, str):
                if item not in by_name:
                    known = ", ".join(repr(n) for n in list(neurons)[:12]) + (", ..." if len(neurons) > 12 else "")
                    raise ValueError(f"Monitor: {type(net).__name__} has no module named {item!r}; its neurons are: "
                                     f"{known or 'none'}")
                name, m = item, by_name[item]
            elif isinstance(item, nn.Module):
                if id(item) not in by_id:
                    raise ValueError(f"Monitor: the {type(item).__name__} module passed in modules is not part of net")
                name, m = by_id[id(item)], item
            else:
                raise TypeError(f"Monitor: modules takes module names (str) or modules of net, got "
                                f"{type(item).__name__} {item!r}")
            if not isinstance(m, BaseNeuron):
                raise ValueError(f"Monitor: {name!r} is a {type(m).__name__}, not a spiketriton neuron (BaseNeuron); "
                                 f"a monitor records neurons' spikes, H and V")
            chosen.setdefault(name or type(m).__name__, m)
        return chosen

    # ------------------------------------------------------------------------------------------- #
    # recording
    # ------------------------------------------------------------------------------------------- #

    def _make_hook(self, name: str):
        def hook(module, args, output):
            if module is self._modules[name]:  # not a deepcopy of the module, which copies its hooks
                self._store(name, module, output)
        return hook

    def _to_store(self, t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return t.to(device=self.device or t.device, dtype=dtype or t.dtype)

    def _store(self, name: str, module: BaseNeuron, output) -> None:
        single = getattr(module, "step_mode", "m") == "s"
        records = self._records[name]
        if "spikes" in records:
            if isinstance(output, (SpikeTensor, SpikeImage)):  # kept packed: 1 bit per spike
                data = output.data.detach()
                data = data.unsqueeze(0) if single else data
                k = output.k if isinstance(output, SpikeTensor) else ("image", output.c)
                chunk = (data.to(self.device or data.device, copy=True), k, torch.float32)
            elif isinstance(output, torch.Tensor):
                data = output.detach()
                data = data.unsqueeze(0) if single else data
                # bool: one byte per spike; a copy even on the same device (the output may be changed in place)
                chunk = (self._to_store(data, torch.bool), None, data.dtype)
            else:
                self._warn(name, f"spiketriton.Monitor: {name!r} returned a {type(output).__name__}, not spikes; "
                                 f"nothing recorded for this call")
                return
            records["spikes"].append(chunk, self.max_steps)
        if "h" in records or "v" in records:
            if not module.store_v_seq or module.h_seq is None:
                self._warn(name, f"spiketriton.Monitor: {name!r} has store_v_seq=False (set by something other than "
                                 f"this monitor): its H and V are not recorded")
                return
            # fresh tensors of this call (the neuron replaces them at every call): no copy on the same device
            if "h" in records:
                records["h"].append((self._to_store(module.h_seq), None, None), self.max_steps)
            if "v" in records:
                records["v"].append((self._to_store(module.v_seq), None, None), self.max_steps)

    def _warn(self, name: str, message: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def detach(self) -> None:
        """Remove the hooks and give the neurons back their ``store_v_seq`` (as it was before the first
        monitor that needed it). The records stay readable. Calling it again does nothing."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for m in self._hv_modules:
            entry = _HV_USERS.get(m)
            if entry is None:
                continue
            entry[1] -= 1
            if entry[1] <= 0:
                m.store_v_seq = entry[0]
                del _HV_USERS[m]
        self._hv_modules = []

    def reset(self) -> None:
        """Clear the records (the hooks stay). ``spiketriton.reset(net)`` does not call this: a record may
        span independent sequences (e.g. a test set, batch after batch)."""
        self._records = {n: {k: _Record() for k in self.record} for n in self._modules}
        self._warned = set()

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        """Whether the hooks are in place (False after :meth:`detach`)."""
        return bool(self._handles)

    @property
    def names(self) -> Tuple[str, ...]:
        """The monitored modules' names, in the network's order."""
        return tuple(self._modules)

    def module(self, name: Optional[str] = None) -> BaseNeuron:
        """The monitored neuron called ``name``."""
        return self._modules[self._name(name, "module")]

    def __repr__(self) -> str:
        return (f"Monitor(names={list(self._modules)}, record={self.record}, max_steps={self.max_steps}, "
                f"device={self.device}, attached={self.attached})")

    # ------------------------------------------------------------------------------------------- #
    # reading
    # ------------------------------------------------------------------------------------------- #

    def _name(self, name, who: str) -> str:
        if isinstance(name, nn.Module):
            for n, m in self._modules.items():
                if m is name:
                    return n
            raise ValueError(f"Monitor.{who}: that {type(name).__name__} is not monitored; monitored: {list(self._modules)}")
        if name is None:
            if len(self._modules) == 1:
                return next(iter(self._modules))
            raise ValueError(f"Monitor.{who}: name the module, one of {list(self._modules)}")
        if not isinstance(name, str):
            raise TypeError(f"Monitor.{who}: name must be a module name (str), a monitored module or None, got "
                            f"{type(name).__name__}")
        if name not in self._modules:
            raise KeyError(f"Monitor.{who}: {name!r} is not monitored; monitored: {list(self._modules)}")
        return name

    def _record(self, name, kind: str, who: str) -> Tuple[str, _Record]:
        name = self._name(name, who)
        if kind not in self.record:
            raise ValueError(f"Monitor.{who}: this monitor records {self.record}, not {kind!r}; create it with "
                             f"record=(..., {kind!r})")
        return name, self._records[name][kind]

    def steps(self, name=None) -> int:
        """How many time steps of ``name`` are recorded (at most ``max_steps``)."""
        name = self._name(name, "steps")
        return self._records[name][self.record[0]].steps

    def get(self, name=None, kind: str = "spikes") -> torch.Tensor:
        """The record ``kind`` ("spikes", "h" or "v") of ``name`` as ``[T_recorded, B, *features]``: spikes
        0/1 in the neuron's output dtype (float32 for packed outputs), H and V fp32."""
        if not isinstance(kind, str) or kind not in RECORD_KINDS:
            raise ValueError(f"Monitor.get: kind must be one of {RECORD_KINDS}, got {kind!r}")
        name, rec = self._record(name, kind, kind)
        if rec.steps == 0:
            raise ValueError(f"Monitor.{kind}: nothing recorded for {name!r} yet (run the network while the monitor "
                             f"is attached)")
        chunks = rec.dense()
        shapes = {tuple(c.shape[1:]) for c in chunks}
        if len(shapes) > 1:
            raise ValueError(f"Monitor.{kind}: the calls recorded for {name!r} have different shapes [B, *features]: "
                             f"{sorted(shapes)} (the batch size changed between calls?); firing_rates() still works, "
                             f"or call mon.reset() between runs of different shapes")
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def spikes(self, name=None) -> torch.Tensor:
        """Spikes ``[T_recorded, B, *features]`` (0/1 in the output's dtype)."""
        return self.get(name, "spikes")

    def h(self, name=None) -> torch.Tensor:
        """Potential before the reset (compared with the threshold), ``[T_recorded, B, *features]`` fp32."""
        return self.get(name, "h")

    def v(self, name=None) -> torch.Tensor:
        """Potential after the reset (the state carried to the next step), ``[T_recorded, B, *features]`` fp32."""
        return self.get(name, "v")

    def __getitem__(self, name) -> Dict[str, torch.Tensor]:
        """``mon[name]``: a dict kind -> record, for every recorded kind."""
        name = self._name(name, "__getitem__")
        return {k: self.get(name, k) for k in self.record}

    def __contains__(self, name) -> bool:
        return name in self._modules

    def firing_rates(self, per_neuron: bool = False) -> Dict[str, Union[float, torch.Tensor]]:
        """name -> mean firing rate over the recorded steps (spikes per neuron per step, in [0, 1]),
        averaged over steps, batch and neurons (a float), or with ``per_neuron=True`` over steps and
        batch only (a float32 tensor ``[*features]``). Calls of different batch sizes are weighted by
        their size. A module with nothing recorded gets NaN."""
        if not isinstance(per_neuron, bool):
            raise TypeError(f"Monitor.firing_rates: per_neuron must be True or False, got {per_neuron!r}")
        if "spikes" not in self.record:
            raise ValueError(f"Monitor.firing_rates: this monitor records {self.record}, not spikes; create it "
                             f"with record=('spikes', ...)")
        rates: Dict[str, Union[float, torch.Tensor]] = {}
        for name in self._modules:
            rec = self._records[name]["spikes"]
            counts, samples, features = None, 0, None
            for c in rec.dense():
                if features is not None and tuple(c.shape[2:]) != features:
                    raise ValueError(f"Monitor.firing_rates: the calls recorded for {name!r} have different feature "
                                     f"shapes: {features} and {tuple(c.shape[2:])}")
                features = tuple(c.shape[2:])
                s = c.reshape(c.shape[0] * c.shape[1], *features).sum(0, dtype=torch.float64)
                counts = s if counts is None else counts + s
                samples += c.shape[0] * c.shape[1]
            if counts is None:
                rates[name] = torch.tensor(math.nan) if per_neuron else math.nan
            elif per_neuron:
                rates[name] = (counts / samples).float()
            else:
                rates[name] = float(counts.sum() / (samples * max(counts.numel(), 1)))
        return rates

    # ------------------------------------------------------------------------------------------- #
    # plots (matplotlib, imported here)
    # ------------------------------------------------------------------------------------------- #

    def _sample(self, t: torch.Tensor, sample, who: str) -> torch.Tensor:
        if isinstance(sample, bool) or not isinstance(sample, int):
            raise TypeError(f"Monitor.{who}: sample must be an int (a batch index), got {type(sample).__name__}")
        if t.dim() < 2 or not -t.shape[1] <= sample < t.shape[1]:
            raise ValueError(f"Monitor.{who}: sample {sample} is out of range for a batch of {t.shape[1]}")
        return t[:, sample].reshape(t.shape[0], -1).float().cpu()

    def plot_raster(self, name=None, sample: int = 0, ax=None):
        """Spike raster of ``name`` for batch element ``sample``: time step vs neuron index (features
        flattened). Draws on ``ax`` (default: new pyplot axes); returns the axes."""
        ax = _new_axes(ax, "Monitor.plot_raster")
        name = self._name(name, "plot_raster")
        s = self._sample(self.spikes(name), sample, "plot_raster")
        t, n = torch.nonzero(s, as_tuple=True)
        ax.scatter(t.numpy(), n.numpy(), marker="|", s=max(4.0, min(60.0, 3000.0 / max(s.shape[1], 1))),
                   color="black", linewidths=1.0)
        ax.set_xlim(-0.5, s.shape[0] - 0.5)
        ax.set_ylim(-0.5, s.shape[1] - 0.5)
        ax.set_xlabel("time step")
        ax.set_ylabel("neuron")
        ax.set_title(f"{name}: spikes (sample {sample}, {int(s.sum())} spikes)")
        return ax

    def plot_traces(self, name=None, neurons: Union[None, int, Sequence[int]] = None, sample: int = 0, ax=None):
        """Membrane potential V of ``neurons`` of ``name`` (features flattened; default: the up to 5 that
        fire most in this sample) for batch element ``sample``, with H dotted where it is recorded and
        the threshold line (``module.spec.v_threshold``; the base threshold for an adaptive one).
        Draws on ``ax`` (default: new pyplot axes); returns the axes."""
        ax = _new_axes(ax, "Monitor.plot_traces")
        name = self._name(name, "plot_traces")
        if "v" not in self.record and "h" not in self.record:
            raise ValueError(f"Monitor.plot_traces: this monitor records {self.record}; traces need 'v' or 'h'")
        main = "v" if "v" in self.record else "h"
        v = self._sample(self.get(name, main), sample, "plot_traces")
        h = self._sample(self.h(name), sample, "plot_traces") if main == "v" and "h" in self.record else None
        N = v.shape[1]
        if neurons is None:
            if "spikes" in self.record:
                counts = self._sample(self.spikes(name), sample, "plot_traces").sum(0)
                neurons = sorted(torch.argsort(-counts, stable=True)[:5].tolist())
            else:
                neurons = list(range(min(5, N)))
        elif isinstance(neurons, int) and not isinstance(neurons, bool):
            neurons = [neurons]
        try:
            neurons = list(neurons)
        except TypeError:
            raise TypeError(f"Monitor.plot_traces: neurons must be None, an int or a list of ints, got "
                            f"{type(neurons).__name__}") from None
        for i in neurons:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < N:
                raise ValueError(f"Monitor.plot_traces: neuron index {i!r} is out of range; {name!r} has {N} neurons "
                                 f"(features flattened)")
        steps = torch.arange(v.shape[0]).numpy()
        for i in neurons:
            line, = ax.plot(steps, v[:, i].numpy(), marker=".", label=f"{main.upper()} {i}")
            if h is not None:
                ax.plot(steps, h[:, i].numpy(), linestyle=":", color=line.get_color())
        threshold = self._modules[name].spec.v_threshold
        ax.axhline(threshold, color="red", linestyle="--", linewidth=1.0, label=f"threshold {threshold:g}")
        ax.set_xlabel("time step")
        ax.set_ylabel("membrane potential")
        ax.set_title(f"{name}: {main.upper()}" + (" (dotted: H before reset)" if h is not None else "")
                     + f", sample {sample}")
        ax.legend(fontsize="small", loc="upper right")
        return ax

    def plot_rates(self, ax=None):
        """Mean firing rate per monitored layer, a bar chart (layers with nothing recorded are left empty).
        Draws on ``ax`` (default: new pyplot axes); returns the axes."""
        ax = _new_axes(ax, "Monitor.plot_rates")
        rates = self.firing_rates()
        names = list(rates)
        bars = ax.bar(range(len(names)), [rates[n] for n in names], color="tab:blue")
        ax.bar_label(bars, labels=[f"{r:.3f}" if not math.isnan(r) else "" for r in rates.values()],
                     fontsize="small")
        ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 4 else 0)
        ax.set_ylim(0, max([1e-3] + [r for r in rates.values() if not math.isnan(r)]) * 1.2)
        ax.set_xlabel("layer")
        ax.set_ylabel("firing rate (spikes / neuron / step)")
        ax.set_title("firing rate per layer")
        return ax

    def figure(self, path: Union[str, os.PathLike, None] = None, name=None, sample: int = 0, neurons=None,
               title: Optional[str] = None, dpi: int = 100):
        """One figure: a spike raster per monitored layer, then the traces of ``name`` (default: the last
        monitored layer) and the firing rates per layer. A standalone matplotlib ``Figure`` (not managed
        by pyplot, no backend change); with ``path`` it is also saved there (the format from the suffix,
        PNG without one; written atomically). Returns the figure."""
        Figure = _matplotlib()
        if "spikes" not in self.record:
            raise ValueError(f"Monitor.figure: this monitor records {self.record}; the figure needs 'spikes'")
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Monitor.figure: path must be a str, a path or None, got {type(path).__name__}")
        if isinstance(dpi, bool) or not isinstance(dpi, int) or not 10 <= dpi <= 1000:
            raise ValueError(f"Monitor.figure: dpi must be an int in 10..1000, got {dpi!r}")
        fmt = None
        if path is not None:
            suffix = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
            fmt = suffix or "png"
            supported = Figure().canvas.get_supported_filetypes()
            if fmt not in supported:
                raise ValueError(f"Monitor.figure: cannot save {os.fspath(path)!r}: matplotlib writes "
                                 f"{', '.join('.' + f for f in sorted(supported))}")
        traced = self._name(name if name is not None else self.names[-1], "figure")
        rastered = [n for n in self._modules if self._records[n]["spikes"].steps]
        if not rastered:
            raise ValueError("Monitor.figure: nothing recorded yet (run the network while the monitor is attached)")
        traces = "v" in self.record or "h" in self.record
        fig = Figure(figsize=(10, 2.2 * len(rastered) + 3.2), dpi=dpi, layout="constrained")
        grid = fig.add_gridspec(len(rastered) + 1, 2 if traces else 1,
                                height_ratios=[2.2] * len(rastered) + [3.2])
        for i, n in enumerate(rastered):
            self.plot_raster(n, sample=sample, ax=fig.add_subplot(grid[i, :]))
        if traces:
            self.plot_traces(traced, neurons=neurons, sample=sample, ax=fig.add_subplot(grid[-1, 0]))
        self.plot_rates(ax=fig.add_subplot(grid[-1, -1]))
        if title is not None:
            fig.suptitle(str(title))
        if path is not None:
            from ._files import write_atomic

            buf = io.BytesIO()
            fig.savefig(buf, format=fmt)
            write_atomic(path, buf.getvalue(), "Monitor.figure")
        return fig
