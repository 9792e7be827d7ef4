"""NIR export/import: spiketriton -> NIR -> spiketriton round trips, snnTorch and Norse imports of our
graphs, our imports of graphs written by snnTorch and Norse, the strict/inclusive threshold mapping,
and every construct NIR cannot express rejected by name.

Every comparison is of spikes over T steps, equal element for element, with firing rates checked to
lie well inside (0, 1) so that an all-silent (or all-firing) network cannot pass by accident.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton.export import from_nir, save_nir, to_nir
from spiketriton.export._graph import ExportError
from spiketriton.export.nir_format import inclusive_threshold, strict_threshold

nir = pytest.importorskip("nir")

# snnTorch and Norse call nirtorch's deprecated entry points themselves
pytestmark = pytest.mark.filterwarnings("ignore:nirtorch.* is being deprecated:DeprecationWarning")


def _scaled(net, gain):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(gain)
    return net


from helpers import run_fresh as _run  # noqa: E402  (a fresh no-grad run, dense output)


def _active(spikes, lo=0.03, hi=0.9):
    rate = float(spikes.float().mean())
    assert lo < rate < hi, f"firing rate {rate:.3f}: the comparison would not test much"


def _mlp(neuron_a, neuron_b, gain=3.0):  # noqa: D103
    torch.manual_seed(0)
    return _scaled(nn.Sequential(nn.Linear(12, 24), neuron_a, nn.Linear(24, 8), neuron_b), gain)


NEURON_CASES = {
    "lif-decay": lambda: (st.LIF(tau=2.0), st.LIF(tau=3.0)),
    "lif-nodecay": lambda: (st.LIF(tau=2.0, decay_input=False), st.LIF(tau=5.0, decay_input=False, v_threshold=1.5)),
    "lif-vreset": lambda: (st.LIF(tau=2.0, v_reset=-0.3), st.LIF(tau=4.0, decay_input=False, v_reset=0.2)),
    "if": lambda: (st.IF(v_threshold=0.7), st.IF(v_reset=-0.1)),
    "plif": lambda: (st.PLIF(init_tau=2.5), st.PLIF(init_tau=1.5, decay_input=False)),
    "extended": lambda: (st.ExtendedLIF(v_th0=0.8, v_leaky_alpha=0.75), st.ExtendedLIF(v_th0=1.0)),
    "extended-leak": lambda: (st.ExtendedLIF(v_th0=0.8, v_leaky_alpha=0.5, v_leaky_beta=0.1, v_init=0.1),
                              st.ExtendedLIF(v_leaky_alpha=0.9, v_leaky_beta=-0.05, v_reset=0.3, v_init=0.22)),
}


@pytest.mark.parametrize("case", sorted(NEURON_CASES))
def test_round_trip_mlp(case, tmp_path):
    net = _mlp(*NEURON_CASES[case]())
    x = torch.rand(10, 4, 12) * 2
    want = _run(net, x)
    _active(want)
    graph = to_nir(net, x)
    assert [type(graph.nodes[k]).__name__ for k in ("input", "0", "2", "output")] == ["Input", "Affine", "Affine", "Output"]
    back = from_nir(graph)
    assert torch.equal(_run(back, x), want)
    save_nir(net, tmp_path / "net.nir", x)
    back = from_nir(tmp_path / "net.nir")
    assert torch.equal(_run(back, x), want)


def test_import_leaves_the_global_rng_alone():
    graph = to_nir(_mlp(st.LIF(), st.IF()), torch.zeros(1, 2, 12))
    before = torch.get_rng_state()
    from_nir(graph)
    assert torch.equal(torch.get_rng_state(), before)


def test_round_trip_keeps_neuron_types_and_constants():
    net = _mlp(st.LIF(tau=2.0, decay_input=False, v_reset=-0.25, v_threshold=0.5), st.IF(v_threshold=2.0))
    back = from_nir(to_nir(net, torch.zeros(1, 2, 12)))
    lif, if_ = back[1], back[3]
    assert isinstance(lif, st.LIF) and isinstance(if_, st.IF)
    assert lif.tau == 2.0 and not lif.spec.decay_input and lif.spec.v_reset == -0.25
    # the thresholds come back as the same float32 the kernels compare against
    assert np.float32(lif.spec.v_threshold) == np.float32(0.5) and np.float32(if_.spec.v_threshold) == np.float32(2.0)


def test_demo_network_round_trip_and_packed_output():
    from spiketriton.demo import build_net

    torch.manual_seed(1)
    net = _scaled(build_net(hidden=32), 4.0)  # converted: SpikeLinear, the hidden LIF hands packed spikes over
    assert net[1].packed_output
    x = torch.rand(6, 5, 64)
    want = _run(net, x)
    _active(want)
    back = from_nir(to_nir(net, x))
    assert torch.equal(_run(back, x), want)
    assert net[1].packed_output  # the export ran on a copy


def _conv_net():
    torch.manual_seed(0)
    net = nn.Sequential(
        st.StepWise(nn.Conv2d(2, 6, 3, padding=1), nn.AvgPool2d(2)), st.LIF(tau=2.0),
        st.StepWise(nn.Conv2d(6, 8, 3, stride=1, padding=1, bias=False), nn.AvgPool2d(2, divisor_override=1)),
        st.IF(v_threshold=1.5),
        nn.Flatten(2), nn.Linear(8 * 2 * 2, 5), st.LIF(tau=2.0, decay_input=False))
    return _scaled(net, 6.0)  # firing rates 0.14 / 0.19 / 0.36 by layer


def test_round_trip_conv_network(tmp_path):
    net = _conv_net()
    x = torch.rand(8, 3, 2, 8, 8) * 2
    want = _run(net, x)
    _active(want)
    graph = to_nir(net, x)
    kinds = [type(graph.nodes[n]).__name__ for n in ("0.0", "0.1", "1", "2.0", "2.1", "3", "4", "5", "6")]
    assert kinds == ["Conv2d", "AvgPool2d", "LIF", "Conv2d", "SumPool2d", "IF", "Flatten", "Affine", "LIF"]
    assert graph.nodes["4"].start_dim == 0 and graph.nodes["4"].end_dim == 2  # per sample: [C, H, W] -> [C*H*W]
    save_nir(net, tmp_path / "conv.nir", x)
    back = from_nir(tmp_path / "conv.nir")
    assert torch.equal(_run(back, x), want)


def test_time_folding_by_hand_is_read_as_steps():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.lif, self.fc, self.out = nn.Conv2d(1, 3, 3, padding=1), st.LIF(), nn.Linear(48, 4), st.IF()

        def forward(self, x):  # [T, B, 1, 4, 4]
            T, B = x.shape[:2]
            y = self.lif(self.conv(x.flatten(0, 1)).unflatten(0, (T, B)))
            return self.out(self.fc(y.flatten(2)))

    net = _scaled(Net(), 6.0)
    x = torch.rand(6, 2, 1, 4, 4)
    want = _run(net, x)
    _active(want)
    graph = to_nir(net, x)
    # the folding reshapes are not steps; the feature flatten is
    assert sorted(type(n).__name__ for n in graph.nodes.values()) == \
        sorted(["Input", "Conv2d", "LIF", "Flatten", "Affine", "IF", "Output"])
    assert torch.equal(_run(from_nir(graph), x), want)


def test_thresholds_are_exact_at_equality():
    """H lands exactly on the threshold: LIF/IF fire (>=), and so does the NIR round trip."""
    assert strict_threshold(1.0) == float(np.nextafter(np.float32(1), np.float32(0)))
    for v in (1.0, 0.1, -0.5, 3e-39, 1e30):
        assert inclusive_threshold(strict_threshold(v)) == float(np.float32(v))
    # H > theta for float32 H: theta's float32 when it rounds up (0.1), the next one when it rounds down (0.7)
    assert inclusive_threshold(0.1) == float(np.float32(0.1)) > 0.1
    assert float(np.float32(0.7)) < 0.7 and inclusive_threshold(0.7) == float(np.nextafter(np.float32(0.7), np.float32(1)))
    net = nn.Sequential(st.IF(v_threshold=1.0))
    x = torch.full((4, 1, 3), 0.5)  # H = 0.5, 1.0 (== V_th: fires), 0.5, 1.0
    want = _run(net, x)
    assert want[:, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert torch.equal(_run(from_nir(to_nir(net, x)), x), want)


def test_quantized_model_writes_its_integer_weights():
    from spiketriton import quant

    torch.manual_seed(0)
    net = _mlp(st.LIF(tau=2.0), st.LIF(tau=2.0))
    x = torch.rand(5, 4, 12)
    q = quant.prepare(net)
    q.collect_q_params()
    q(x)
    q.reset()
    q.calculate_q_params()
    q.quantize()
    graph = to_nir(q, x)
    layer = q.net[0]
    want = layer.weight_int.double() / layer.w_scale.double()
    np.testing.assert_array_equal(graph.nodes["0"].weight, want.float().numpy())
    assert type(graph.nodes["1"]).__name__ == "LIF"  # the QLIF (family B) is a NIR LIF


def test_grouped_non_square_conv_and_shape_arithmetic():
    """nir's own type inference mishandles groups and non-square kernels (not used); time folding
    written as x.reshape(T * B, ...) is read as folding."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 6, (3, 2), padding=(1, 0), groups=2, dilation=(1, 2))
            self.lif = st.LIF(tau=2.0)

        def forward(self, x):  # [T, B, 4, 7, 7]
            T, B = x.shape[0], x.shape[1]
            y = self.conv(x.reshape(T * B, x.shape[2], x.shape[3], x.shape[4]))
            return self.lif(y.reshape(T, B, y.shape[1], y.shape[2], y.shape[3]))

    net = _scaled(Net(), 8.0)
    x = torch.rand(6, 2, 4, 7, 7) * 2
    want = _run(net, x)
    _active(want)
    assert torch.equal(_run(from_nir(to_nir(net, x)), x), want)


def test_module_names_that_clash():
    """Modules called input / output, and node names that collide once dots become '_' or that are
    nn.Module attributes, all survive a round trip."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.input = nn.Linear(6, 8)
            self.fc = nn.Sequential(st.LIF(), nn.Linear(8, 8))
            self.fc_0 = st.LIF()
            self.train_ = nn.Linear(8, 5)
            self.output = st.IF()

        def forward(self, x):
            return self.output(self.train_(self.fc_0(self.fc(self.input(x)))))

    net = _scaled(Net(), 8.0)
    x = torch.rand(8, 3, 6) * 2
    want = _run(net, x)
    _active(want)
    graph = to_nir(net, x)
    assert {"input", "output", "fc.0", "fc.1", "fc_0"} <= set(graph.nodes)
    back = from_nir(graph)
    assert len(back) == 6 and torch.equal(_run(back, x), want)
    g2 = _chain(_lif_node(), _lif_node())
    g2.nodes = {("train" if k == "n0" else k): v for k, v in g2.nodes.items()}
    g2.edges = [tuple("train" if n == "n0" else n for n in e) for e in g2.edges]
    assert len(from_nir(g2)) == 2


def test_aware_and_quantized_write_the_same_weights():
    from spiketriton import quant

    torch.manual_seed(0)
    q = quant.prepare(_mlp(st.LIF(), st.LIF()))
    x = torch.rand(4, 3, 12)
    q.collect_q_params()
    q(x)
    q.reset()
    q.calculate_q_params()
    aware = to_nir(q.aware(), x)
    quantized = to_nir(q.quantize(), x)
    for name in ("0", "2"):
        np.testing.assert_array_equal(aware.nodes[name].weight, quantized.nodes[name].weight)
        np.testing.assert_array_equal(aware.nodes[name].bias, quantized.nodes[name].bias)


def test_saved_file_is_world_readable(tmp_path):
    save_nir(nn.Sequential(st.IF()), tmp_path / "n.nir", torch.rand(2, 2, 4))
    assert (tmp_path / "n.nir").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------------------------- #
# what NIR cannot express: errors naming the module and the option
# --------------------------------------------------------------------------------------------- #

REJECTED = {
    "soft-reset-lif": (lambda: nn.Sequential(nn.Linear(4, 4), st.LIF(v_reset=None)), "1: LIF with a soft reset"),
    "soft-reset-if": (lambda: nn.Sequential(st.IF(v_reset=None)), "0: IF with a soft reset"),
    "ext-soft": (lambda: nn.Sequential(st.ExtendedLIF(reset_mode="soft")), "SOFT / SOFT_CONSTANT"),
    "ext-floor": (lambda: nn.Sequential(st.ExtendedLIF(v_l=-1.0)), "the floor v_l=-1.0"),
    "ext-adaptive": (lambda: nn.Sequential(st.ExtendedLIF(v_th_incre=0.1)), "adaptive threshold"),
    "ext-refractory": (lambda: nn.Sequential(st.ExtendedLIF(ref_len=2)), "refractory period"),
    "ext-drift": (lambda: nn.Sequential(st.ExtendedLIF(v_leaky_beta=0.1, v_init=0.1)), "constant drift"),
    "ext-init": (lambda: nn.Sequential(st.ExtendedLIF(v_leaky_alpha=0.5, v_init=0.3)), "does not start at rest"),
    "maxpool": (lambda: nn.Sequential(st.StepWise(nn.MaxPool2d(2)), st.IF()), "MaxPool2d cannot be exported"),
    "batchnorm": (lambda: nn.Sequential(st.StepWise(nn.Linear(4, 4), nn.BatchNorm1d(4))),
                  "BatchNorm1d cannot be exported"),
    "fails-to-run": (lambda: nn.Sequential(nn.Linear(5, 4)), "running the model on an input of shape"),
    "linear-on-matrix": (lambda: nn.Sequential(nn.Linear(4, 4), st.IF()), "Affine reads a vector"),
    "leak-out-of-range": (lambda: nn.Sequential(_trained_leak(1.2)), "v_leaky_alpha=1.2.* outside \\[0, 1\\]"),
}


def _trained_leak(alpha):
    n = st.ExtendedLIF(learnable_leak=True)
    with torch.no_grad():
        n.v_leaky_alpha.fill_(alpha)
    return n


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(4, 4), st.LIF()

    def forward(self, x):
        return self.lif(self.fc(x) + x)


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_inexpressible_is_an_error(case):
    make, message = REJECTED[case]
    x = torch.rand(2, 2, 3, 4) if case == "linear-on-matrix" else \
        torch.rand(2, 2, 1, 4, 4) if case == "maxpool" else torch.rand(2, 2, 4)
    with pytest.raises(ExportError, match=message):
        to_nir(make(), x)


def test_branches_and_bad_inputs_are_errors():
    with pytest.raises(ExportError, match="a branch"):
        to_nir(_Residual(), torch.rand(2, 2, 4))
    with pytest.raises(ValueError, match="sample_input must be a sequence"):
        to_nir(nn.Sequential(st.IF()), torch.rand(4))
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        to_nir(nn.Sequential(st.IF()), torch.rand(2, 2, 4), dt=0.0)


def _lif_node(n=4, **kw):
    p = dict(tau=np.full(n, 2e-4), r=np.full(n, 2.0), v_leak=np.zeros(n), v_threshold=np.ones(n), v_reset=np.zeros(n))
    p.update(kw)
    return nir.LIF(**p)


def _chain(*nodes):
    names = ["input"] + [f"n{i}" for i in range(len(nodes))] + ["output"]
    shape = np.array([4])
    all_nodes = {"input": nir.Input({"input": shape}), "output": nir.Output({"output": shape})}
    all_nodes.update({f"n{i}": n for i, n in enumerate(nodes)})
    return nir.NIRGraph(nodes=all_nodes, edges=list(zip(names, names[1:])), type_check=False)


IMPORT_REJECTED = {
    "cuba": (lambda: _chain(nir.CubaLIF(tau_syn=np.ones(4), tau_mem=np.ones(4), r=np.ones(4), v_leak=np.zeros(4),
                                        v_threshold=np.ones(4))), "CubaLIF has no spiketriton counterpart"),
    "per-neuron-tau": (lambda: _chain(_lif_node(tau=np.array([2e-4, 2e-4, 3e-4, 2e-4]))), "tau differs between neurons"),
    "gain": (lambda: _chain(_lif_node(r=np.full(4, 7.0))), "input gain"),
    "tau-below-dt": (lambda: _chain(_lif_node(tau=np.full(4, 1e-5))), "needs tau >= dt"),
    "if-r1": (lambda: _chain(nir.IF(r=np.ones(4), v_threshold=np.ones(4))), "read such graphs with dt=1"),
    "nonfinite": (lambda: _chain(_lif_node(v_threshold=np.full(4, np.nan))), "v_threshold has values that are not finite"),
    "threshold-beyond-f32": (lambda: _chain(_lif_node(v_threshold=np.full(4, 1e39))), "beyond float32"),
    "conv-3d-weight": (lambda: _chain(nir.Conv2d(None, np.ones((2, 2, 3)), 1, 0, 1, 1, np.zeros(2))),
                       "expected \\[C_out, C_in/groups"),
    "bad-dt-metadata": (lambda: _with_meta(_chain(_lif_node()), {"dt": "fast"}), "not a number; pass dt="),
}


def _with_meta(graph, meta):
    graph.metadata = meta
    return graph


@pytest.mark.parametrize("case", sorted(IMPORT_REJECTED))
def test_import_rejects_what_spiketriton_cannot_run(case):
    make, message = IMPORT_REJECTED[case]
    with pytest.raises(ValueError, match=message):
        from_nir(make())


def test_import_rejects_branches_cycles_and_garbage(tmp_path):
    lif = _lif_node()
    shape = np.array([4])
    nodes = {"input": nir.Input({"input": shape}), "a": lif, "b": _lif_node(), "output": nir.Output({"output": shape})}
    branch = nir.NIRGraph(nodes=nodes, edges=[("input", "a"), ("input", "b"), ("a", "output"), ("b", "output")],
                          type_check=False)
    with pytest.raises(ValueError, match="branch or merge"):
        from_nir(branch)
    cycle = nir.NIRGraph(nodes=nodes, edges=[("input", "a"), ("a", "b"), ("b", "a")], type_check=False)
    with pytest.raises(ValueError, match="branch or merge|cycle"):
        from_nir(cycle)
    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="cannot read"):
        from_nir(bad)
    with pytest.raises(TypeError, match="expected a nir.NIRGraph"):
        from_nir(42)


def test_import_of_gain_forms_and_extended_lif():
    # r = 1 (gain dt/tau): decay_input=True; v_leak != v_reset with gain 1: ExtendedLIF, strict threshold
    m = from_nir(_chain(_lif_node(r=np.ones(4))))[0]
    assert isinstance(m, st.LIF) and m.spec.decay_input and m.tau == 2.0
    m = from_nir(_chain(_lif_node(v_leak=np.full(4, 0.5), v_reset=np.full(4, -0.5))))[0]
    assert isinstance(m, st.ExtendedLIF)
    assert m.v_leaky_alpha == 0.5 and m.v_leaky_beta == 0.25 and m.spec.v_init == 0.5 * -0.5 + 0.25


def test_saving_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "net.nir"
    path.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(nir, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        save_nir(nn.Sequential(st.IF()), path, torch.rand(2, 2, 4))
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["net.nir"]


# --------------------------------------------------------------------------------------------- #
# other libraries: snnTorch and Norse read our graphs, we read theirs
# --------------------------------------------------------------------------------------------- #


def _step_by_step(module, x, pass_state=False):
    """Run a per-step module over x [T, ...]: snnTorch keeps its state inside (init_hidden), Norse
    returns (output, state) and takes the state back."""
    outs, state = [], None
    with torch.no_grad():
        for t in range(x.shape[0]):
            out = module(x[t], state) if pass_state else module(x[t])
            if isinstance(out, tuple):
                out, state = out
            outs.append(out)
    return torch.stack(outs)


EXTERNAL_MLP = {
    "lif-decay": lambda: (st.LIF(tau=2.0), st.LIF(tau=3.0)),
    "lif-nodecay": lambda: (st.LIF(tau=2.0, decay_input=False), st.LIF(tau=4.0, decay_input=False)),
    "extended": lambda: (st.ExtendedLIF(v_leaky_alpha=0.5), st.ExtendedLIF(v_th0=0.9, v_leaky_alpha=0.8)),
}


@pytest.mark.parametrize("case", sorted(EXTERNAL_MLP))
def test_snntorch_imports_our_graph(case, capsys):
    import_nir = pytest.importorskip("snntorch.import_nir")
    net = _mlp(*EXTERNAL_MLP[case]())
    x = torch.rand(12, 4, 12) * 2
    want = _run(net, x)
    _active(want)
    got = _step_by_step(import_nir.import_from_nir(to_nir(net, x)), x)  # snnTorch assumes dt = 1e-4
    assert torch.equal(got, want)


@pytest.mark.parametrize("case", ["lif-decay", "lif-other-taus", "if"])
def test_norse_imports_our_graph(case):
    norse = pytest.importorskip("norse.torch")
    neurons = {
        "lif-decay": lambda: (st.LIF(tau=2.0), st.LIF(tau=3.0)),  # r = 1: what Norse's LIFBox implements
        "lif-other-taus": lambda: (st.LIF(tau=4.0), st.LIF(tau=1.5)),
        "if": lambda: (st.IF(v_threshold=0.8), st.IF()),  # Norse's IAF adds the input per step, ignoring r
    }[case]
    net = _mlp(*neurons(), gain=6.0)
    x = torch.rand(12, 4, 12) * 2
    want = _run(net, x)
    _active(want)
    dt = 1e-3  # any dt: Norse takes the one the graph was written with
    got = _step_by_step(norse.from_nir(to_nir(net, x, dt=dt), dt=dt, ignore_warnings=(case == "if")), x, True)
    assert torch.equal(got, want)


def test_external_imports_of_a_conv_network():
    import_nir = pytest.importorskip("snntorch.import_nir")
    norse = pytest.importorskip("norse.torch")
    torch.manual_seed(0)
    # no Flatten: snnTorch and Norse (nirtorch) apply NIR's start_dim to the batched tensor
    net = _scaled(nn.Sequential(st.StepWise(nn.Conv2d(2, 4, 3, padding=1)), st.LIF(tau=2.0, decay_input=False),
                                st.StepWise(nn.Conv2d(4, 3, 3, stride=2)), st.LIF(tau=2.0, decay_input=False)), 5.0)
    x = torch.rand(10, 3, 2, 9, 9) * 2
    want = _run(net, x)
    _active(want)
    graph = to_nir(net, x)
    assert torch.equal(_step_by_step(import_nir.import_from_nir(graph), x), want)
    net_n = _scaled(nn.Sequential(st.StepWise(nn.Conv2d(2, 4, 3, padding=1)), st.LIF(tau=2.0),
                                  st.StepWise(nn.Conv2d(4, 3, 3, stride=2)), st.LIF(tau=2.0)), 8.0)
    want = _run(net_n, x)
    _active(want)
    got = _step_by_step(norse.from_nir(to_nir(net_n, x, dt=1e-3), dt=1e-3), x, True)
    assert torch.equal(got, want)


def test_we_import_snntorch_graphs():
    snn = pytest.importorskip("snntorch")
    export_nir = pytest.importorskip("snntorch.export_nir")
    torch.manual_seed(0)

    def leaky(n, beta, **kw):  # per-neuron tensors: snnTorch's export of a scalar threshold has no shape
        return snn.Leaky(beta=torch.full((n,), beta), threshold=torch.full((n,), 1.0), reset_mechanism="zero",
                         reset_delay=False, init_hidden=True, **kw)

    net = nn.Sequential(nn.Linear(10, 20), leaky(20, 0.8), nn.Linear(20, 6), leaky(6, 0.5, output=True))
    _scaled(net, 3.0)
    graph = export_nir.export_to_nir(net, torch.rand(1, 10), ignore_dims=[0])
    ours = from_nir(graph)  # snnTorch writes dt = 1e-4 units: our default
    assert isinstance(ours[1], st.LIF) and not ours[1].spec.decay_input
    x = torch.rand(12, 4, 10) * 2
    for m in net.modules():
        if isinstance(m, snn.Leaky):
            m.reset_mem()
    want = _step_by_step(net, x)
    _active(want)
    assert torch.equal(_run(ours, x), want)


def test_we_import_norse_graphs():
    """Norse 1.1's to_nir writes tau = dt / tau_mem_inv (its from_nir reads tau_mem_inv = 1 / tau): the
    two agree, and match NIR, only for dt = 1. A Norse model stepped with dt = 1 round-trips exactly."""
    norse = pytest.importorskip("norse.torch")
    torch.manual_seed(0)
    dt = 1.0
    p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(0.5), v_th=torch.tensor(0.5))
    net = norse.SequentialState(nn.Linear(10, 16), norse.LIFBoxCell(p, dt=dt), nn.Linear(16, 5), norse.LIFBoxCell(p, dt=dt))
    _scaled(net, 3.0)
    x = torch.rand(12, 4, 10) * 2
    want = _step_by_step(net, x, True)
    _active(want)
    graph = norse.to_nir(net, torch.rand(1, 10), dt=dt)
    ours = from_nir(graph, dt=dt)
    assert isinstance(ours[1], st.LIF) and ours[1].spec.decay_input and math.isclose(ours[1].tau, 2.0)
    assert torch.equal(_run(ours, x), want)
