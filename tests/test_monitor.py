"""spiketriton.monitor (issue 13): the records equal what the neurons compute (spikes = the module's
output, V = the state a step-by-step run carries, H = the reference's trace.h), across calls and step
modes, on the PyTorch path and the Triton kernels, with and without gradient, with packed outputs;
max_steps keeps the last N steps in order; records go to the chosen device; detach() removes every
hook and gives store_v_seq back; firing rates equal encoding.firing_rate's; bad arguments are clear
errors; the plots write files (Agg)."""

from __future__ import annotations

import copy
import doctest
import sys
import warnings

import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import encoding
from spiketriton.monitor import Monitor
from spiketriton.reference.neuron import neuron_reference

BACKENDS = ["torch", "triton"]
PNG = b"\x89PNG\r\n\x1a\n"


def _x(*shape, seed=0, scale=1.6):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * scale - 0.2


def _net(backend, packed=False, N=6):
    """LIF -> Linear -> ExtendedLIF (soft reset, leak, floor, adaptive threshold, refractory): both families."""
    torch.manual_seed(0)
    lin = nn.Linear(N, N)
    with torch.no_grad():
        lin.weight.mul_(2.0)
    return nn.Sequential(
        st.LIF(tau=2.0, backend=backend, packed_output=packed),
        st.SpikeLinear(N, N, backend=backend) if packed else lin,
        st.ExtendedLIF(v_leaky_alpha=0.75, v_th_alpha=0.8, v_th_incre=0.25, ref_len=1, v_l=-0.5,
                       reset_mode="soft", backend=backend),
    )


def _dense(s):
    return s.unpack() if isinstance(s, st.SpikeTensor) else s


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_records_equal_what_the_neurons_compute(backend, packed, grad):
    T, B, N = 4, 2, 6
    net = _net(backend, packed, N)
    twin = st.set_step_mode(copy.deepcopy(net), "s")  # the step-by-step run to compare V with
    x1, x2 = _x(T, B, N, seed=1), _x(3, B, N, seed=2)
    # what each neuron receives and returns, captured by the test's own hooks
    seen = {n: {"in": [], "out": []} for n in ("0", "2")}

    def capture(n):
        def hook(module, args, output):
            seen[n]["in"].append(args[0].detach())
            seen[n]["out"].append(_dense(output).detach().reshape(-1, *args[0].shape[-2:]))
        return hook

    for n in seen:
        net.get_submodule(n).register_forward_hook(capture(n))
    with torch.set_grad_enabled(grad), Monitor(net) as mon:
        assert net[0].store_v_seq and net[2].store_v_seq
        xi = x1.clone().requires_grad_(grad)
        out = net(xi)                         # one multi-step call of T steps
        if grad:
            out.sum().backward()              # the records do not get in the way of BPTT
            assert xi.grad is not None
        st.set_step_mode(net, "s")            # resets the state: the single steps start a new sequence
        outs = [net(x2[t]) for t in range(x2.shape[0])]
    assert not net[0].store_v_seq and not net[2].store_v_seq
    assert len(net[0]._forward_hooks) == len(net[2]._forward_hooks) == 1   # the test's own hooks only
    assert mon.names == ("0", "2") and not mon.attached

    # spikes: the modules' outputs, in order
    for n in ("0", "2"):
        want = torch.cat(seen[n]["out"])
        got = mon.spikes(n)
        assert got.shape == (T + 3, B, N) and not got.requires_grad
        assert torch.equal(got, want), n
        assert mon.steps(n) == T + 3
    assert torch.equal(mon.spikes("2")[:T], out.detach())
    assert torch.equal(mon.spikes("2")[T:], torch.stack(outs))

    # V: the state a step-by-step run carries; H: the reference's trace (per sequence: the state resets)
    v_steps = {"0": [], "2": []}
    for seq in (x1, x2):
        st.reset(twin)
        for t in range(seq.shape[0]):
            twin(seq[t])
            for n in v_steps:
                v_steps[n].append(twin.get_submodule(n).v.clone())
    for n in ("0", "2"):
        assert torch.equal(mon.v(n), torch.stack(v_steps[n])), n
        m = net.get_submodule(n)
        h_want = []
        for inp in (seen[n]["in"][0], torch.stack(seen[n]["in"][1:])):
            trace = neuron_reference(inp.float(), None, None, None, m._params(inp).detach(), m.spec)
            h_want.append(trace.h.float())
            assert torch.equal(trace.spikes, mon.spikes(n)[:T] if len(h_want) == 1 else mon.spikes(n)[T:])
        assert torch.allclose(mon.h(n), torch.cat(h_want), rtol=1e-6, atol=1e-6), n
        assert mon.h(n).dtype == torch.float32 and not mon.v(n).requires_grad
    rec = mon["2"]
    assert set(rec) == {"spikes", "h", "v"} and torch.equal(rec["v"], mon.v("2"))


def test_max_steps_keeps_the_last_steps_in_order():
    net = _net("torch")
    full, last = Monitor(net), Monitor(net, max_steps=5)   # two monitors on the same neurons
    net(_x(3, 2, 6, seed=1))
    assert last.steps("0") == 3
    net(_x(4, 2, 6, seed=2))                               # 7 steps: the first 2 are dropped
    assert last.steps("0") == 5
    st.set_step_mode(net, "s")
    for t in range(4):
        net(_x(2, 6, seed=3 + t))
        for kind in ("spikes", "h", "v"):
            assert torch.equal(last.get("2", kind), full.get("2", kind)[-5:]), kind
    assert full.steps("2") == 11 and last.steps("2") == 5
    # memory: only the kept steps are held (the trimmed chunk is a copy, not a view of the whole call)
    for rec in last._records["2"].values():
        assert sum(c[0].shape[0] for c in rec.chunks) == 5
        assert all(c[0].untyped_storage().nbytes() <= c[0].numel() * c[0].element_size() for c in rec.chunks)
    full.detach()
    assert net[0].store_v_seq, "the other monitor still records H and V"
    last.detach()
    assert not net[0].store_v_seq
    one = Monitor(net, max_steps=1, record="v")
    for t in range(3):
        net(_x(2, 6, seed=10 + t))
    assert torch.equal(one.v("0")[0], net[0].v) and one.steps("0") == 1
    one.detach()


def test_device_of_the_records(device):
    net = _net("auto").to(device)
    x = _x(3, 2, 6).to(device)
    with Monitor(net) as on_cpu, Monitor(net, device=None) as in_place, torch.no_grad():
        out = net(x)
    for kind in ("spikes", "h", "v"):
        assert on_cpu.get("2", kind).device.type == "cpu"
        assert in_place.get("2", kind).device == out.device
        assert torch.equal(on_cpu.get("2", kind), in_place.get("2", kind).cpu())
    # the spikes are a copy: changing the output in place does not change the record
    kept = on_cpu.spikes("2").clone()
    out.add_(5)
    assert torch.equal(on_cpu.spikes("2"), kept) and torch.equal(in_place.spikes("2").cpu(), kept)


def test_detach_restores_store_v_seq_and_removes_the_hooks():
    net = _net("torch")
    net[2].store_v_seq = True                  # the user's own setting stays
    mon = Monitor(net, modules=[net[0], "2"])
    assert net[0].store_v_seq and net[2].store_v_seq
    assert len(net[0]._forward_hooks) == 1 and len(net[2]._forward_hooks) == 1
    net(_x(2, 2, 6))
    mon.detach()
    mon.detach()                               # twice: nothing more to do
    assert not net[0].store_v_seq and net[2].store_v_seq
    assert not net[0]._forward_hooks and not net[2]._forward_hooks
    net(_x(2, 2, 6))
    assert mon.steps("0") == 2                 # records stay readable, nothing more is added
    spikes_only = Monitor(net, record="spikes")
    assert not net[0].store_v_seq              # spikes alone leave the kernels' traffic as it is
    spikes_only.detach()


def test_a_copy_of_a_monitored_net_is_not_recorded():
    net = _net("torch")
    with Monitor(net) as mon:
        twin = copy.deepcopy(net)               # copies the hooks and store_v_seq=True with the modules
        twin(_x(3, 2, 6))
        assert mon.steps("0") == 0
        net(_x(2, 2, 6))
        assert mon.steps("0") == 2


def test_spiketriton_reset_keeps_the_records_and_monitor_reset_clears_them():
    net = _net("torch")
    with Monitor(net, record=("spikes", "v")) as mon:
        net(_x(2, 2, 6))
        st.reset(net)
        net(_x(3, 2, 6, seed=1))
        assert mon.steps("2") == 5
        mon.reset()
        with pytest.raises(ValueError, match=r"Monitor.spikes: nothing recorded for '2' yet"):
            mon.spikes("2")
        net(_x(1, 2, 6))
    assert mon.steps("2") == 1


def test_firing_rates_equal_encoding_firing_rate():
    net = _net("torch")
    with Monitor(net, record="spikes") as mon:
        net(_x(5, 3, 6, scale=2.5))
        net(_x(2, 3, 6, seed=4, scale=2.5))
    rates, per = mon.firing_rates(), mon.firing_rates(per_neuron=True)
    for n in ("0", "2"):
        fr = encoding.firing_rate(mon.spikes(n))            # [B, N]: rate per element over the steps
        assert rates[n] == pytest.approx(fr.mean().item(), abs=1e-7)
        assert torch.allclose(per[n], fr.mean(0), atol=1e-7) and per[n].shape == (6,)
    assert 0 < rates["0"] < 1
    # calls of another batch size: the arrays no longer stack, the rates still count every spike
    with Monitor(net, modules="0", record="spikes") as mixed:
        a = net[0](_x(2, 3, 6, seed=5, scale=2.5))
        st.reset(net)
        b = net[0](_x(2, 1, 6, seed=6, scale=2.5))
    want = (a.sum() + b.sum()) / (6 * (2 * 3 + 2 * 1))    # every neuron-step counts once
    assert mixed.firing_rates()["0"] == pytest.approx(want.item())
    with pytest.raises(ValueError, match=r"different shapes \[B, \*features\]: \[\(1, 6\), \(3, 6\)\] \(the batch size"):
        mixed.spikes()
    with Monitor(net, modules="0") as empty:
        rate = empty.firing_rates()["0"]
    assert rate != rate   # NaN: nothing recorded


def test_single_steps_of_a_neuron_that_is_the_net():
    lif = st.LIF(backend="torch", step_mode="s", packed_output=True)
    x = _x(4, 2, 9, scale=2.0)
    with Monitor(lif, max_steps=3) as mon:
        outs = [lif(x[t]).unpack() for t in range(4)]
    assert mon.names == ("LIF",) and "LIF" in mon and "0" not in mon and mon.module() is lif
    assert torch.equal(mon.spikes(), torch.stack(outs[1:]))
    assert torch.equal(mon.v(lif), mon.v("LIF")) and mon.v().shape == (3, 2, 9)


def test_bad_arguments_are_clear_errors():
    net = _net("torch")
    cases = [
        (dict(net=[net]), TypeError, "Monitor: net must be a torch.nn.Module, got list"),
        (dict(record=("spikes", "u")), ValueError, "Monitor: record takes 'spikes', 'h', 'v'.*got 'u'"),
        (dict(record=()), ValueError, "Monitor: record is empty"),
        (dict(record=3), TypeError, "Monitor: record must be a string or a sequence"),
        (dict(max_steps=0), ValueError, "max_steps must be an int >= 1 or None .*got 0"),
        (dict(max_steps=-3), ValueError, "got -3"),
        (dict(max_steps=2.5), TypeError, "max_steps must be an int >= 1 or None .*got float 2.5"),
        (dict(max_steps=True), TypeError, "got bool True"),
        (dict(device="gpu7"), ValueError, "Monitor: device 'gpu7' is not a device name"),
        (dict(device="meta"), ValueError, "device 'meta' holds no data"),
        (dict(device=0.5), TypeError, "Monitor: device must be a torch.device"),
        (dict(modules="fc"), ValueError, r"Monitor: Sequential has no module named 'fc'; its neurons are: '0', '2'"),
        (dict(modules="1"), ValueError, r"Monitor: '1' is a Linear, not a spiketriton neuron"),
        (dict(modules=[st.LIF()]), ValueError, "the LIF module passed in modules is not part of net"),
        (dict(modules=[1]), TypeError, "modules takes module names .*got int 1"),
        (dict(modules=5), TypeError, "Monitor: modules must be None, a module name, .*got int"),
        (dict(modules=[]), ValueError, "Monitor: modules is empty"),
        (dict(net=nn.Linear(2, 2)), ValueError, "Monitor: Linear has no spiketriton neuron"),
    ]
    for kw, exc, message in cases:
        kw = {"net": net, **kw}
        with pytest.raises(exc, match=message):
            Monitor(**kw)
    assert not net[0]._forward_hooks and not net[0].store_v_seq  # a refused monitor left nothing behind

    from spiketriton.quant.modules import QLIF

    qnet = nn.Sequential(QLIF())
    with pytest.raises(ValueError, match=r"'0' \(QLIF\): a neuron with its own forward, which does not store H/V"):
        Monitor(qnet)
    Monitor(qnet, record="spikes").detach()

    mon = Monitor(net, record="spikes")
    with pytest.raises(ValueError, match=r"Monitor.spikes: name the module, one of \['0', '2'\]"):
        mon.spikes()
    with pytest.raises(KeyError, match=r"Monitor.spikes: 'nope' is not monitored"):
        mon.spikes("nope")
    with pytest.raises(ValueError, match=r"Monitor.v: this monitor records \('spikes',\), not 'v'"):
        mon.v("0")
    with pytest.raises(ValueError, match=r"Monitor.get: kind must be one of"):
        mon.get("0", "u")
    with pytest.raises(TypeError, match="per_neuron must be True or False"):
        mon.firing_rates(per_neuron=1)
    mon.detach()


def test_store_v_seq_switched_off_by_someone_else_warns_once():
    net = _net("torch")
    with Monitor(net, modules="0") as mon:
        net[0].store_v_seq = False
        with pytest.warns(RuntimeWarning, match="'0' has store_v_seq=False"):
            net(_x(2, 2, 6))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            net(_x(2, 2, 6))
    assert mon.steps("0") == 4 and not net[0].store_v_seq


def test_docstring_example_runs():
    import spiketriton.monitor as module

    result = doctest.testmod(module, raise_on_error=False)
    assert result.attempted >= 5 and result.failed == 0


# --------------------------------------------------------------------------------------------- #
# plots
# --------------------------------------------------------------------------------------------- #


def _recorded():
    net = _net("torch")
    with Monitor(net) as mon:
        net(_x(6, 2, 6, scale=2.5))
    return mon


def test_figure_is_a_png_and_plots_draw(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    import matplotlib.image

    mon = _recorded()
    path = tmp_path / "mon.png"
    fig = mon.figure(path, sample=1, title="test")
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 5000
    assert matplotlib.image.imread(path).ndim == 3
    assert len(fig.axes) == 4                   # two rasters, the traces and the rates
    assert (tmp_path / "mon.svg").exists() is False
    mon.figure(tmp_path / "mon.svg")
    assert (tmp_path / "mon.svg").read_text().lstrip().startswith("<?xml")

    axes = Figure().subplots(1, 3)
    ax = mon.plot_raster("0", sample=1, ax=axes[0])
    assert len(ax.collections[0].get_offsets()) == int(mon.spikes("0")[:, 1].sum())
    ax = mon.plot_traces("2", neurons=[0, 3], ax=axes[1])
    assert len(ax.lines) == 2 * 2 + 1           # V and H per neuron, and the threshold
    assert ax.lines[-1].get_ydata()[0] == net_threshold(mon, "2")
    ax = mon.plot_rates(ax=axes[2])
    assert [p.get_height() for p in ax.patches] == pytest.approx(list(mon.firing_rates().values()))


def net_threshold(mon, name):
    return mon.module(name).spec.v_threshold


def test_plot_with_new_pyplot_axes():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    mon = _recorded()
    try:
        ax = mon.plot_traces("0")              # default neurons: the (up to) 5 that fire most
        assert 1 <= len(ax.lines) - 1 <= 10
    finally:
        plt.close("all")


def test_plot_errors(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    mon = _recorded()
    with pytest.raises(ValueError, match=r"Monitor.figure: cannot save .*x\.docx.*matplotlib writes .*\.png"):
        mon.figure(tmp_path / "x.docx")
    with pytest.raises(OSError, match="Monitor.figure: cannot write"):
        mon.figure(tmp_path / "no" / "such" / "dir.png")
    with pytest.raises(ValueError, match="sample 2 is out of range for a batch of 2"):
        mon.figure(tmp_path / "x.png", sample=2)
    with pytest.raises(ValueError, match=r"neuron index 6 is out of range; '0' has 6 neurons"):
        mon.figure(tmp_path / "x.png", name="0", neurons=[6])
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes or None, got str"):
        mon.plot_rates(ax="left")
    assert not list(tmp_path.iterdir())        # nothing half-written
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"plotting needs matplotlib, which is not installed: pip install matplotlib"):
        mon.figure(tmp_path / "x.png")


def test_packed_image_spikes_are_recorded_packed_and_read_back_in_the_logical_shape():
    """A neuron handing a SpikeImage to a SpikeConv2d (packed_output='image') is recorded from its
    channels-last bytes (1 bit per spike) and read back as [T, B, C, H, W], in both step modes and
    across the max_steps trim."""
    g = torch.Generator().manual_seed(0)
    lif = st.LIF(backend="torch", packed_output="image")
    net = nn.Sequential(lif, st.SpikeConv2d(11, 4, 3, padding=1, backend="torch"))
    mon, last = Monitor(net, record="spikes"), Monitor(net, record="spikes", max_steps=4)
    xs = [torch.rand(3, 2, 11, 5, 6, generator=g) * 2 for _ in range(2)]
    want = []
    ref = st.LIF(backend="torch")
    for x in xs:
        net(x)
        want.append(ref(x))
    want = torch.cat(want)
    assert torch.equal(mon.spikes("0"), want) and torch.equal(last.spikes("0"), want[-4:])
    chunk = mon._records["0"]["spikes"].chunks[0][0]
    assert chunk.dtype == torch.uint8 and chunk.shape == (3, 2, 5, 6, 2)  # [T, B, H, W, ceil(C/8)]
    st.set_step_mode(net, "s")  # (resets the neurons' state)
    st.reset(ref)
    x1 = torch.rand(2, 11, 5, 6, generator=g) * 2
    net(x1)
    assert torch.equal(mon.spikes("0")[-1], ref(x1.unsqueeze(0))[0])
