"""The chip format: quantized model -> chip file -> ChipProgram equal bit for bit (demo MLP, conv
networks per tensor / per channel at 8 and 4 bits, every ExtendedLIF feature, readouts, state carried
across calls), what save_chip refuses, atomic writes, and a catalogue of hostile or corrupt files that
load_chip rejects, each with its own message.

The QModel runs its own code paths (under TRITON_INTERPRET=1 on a CPU: the integer spike-matmul and
neuron Triton kernels for per-tensor scales, int64/float64 torch for the rest); ChipProgram runs
plain numpy int64. Every round trip also checks that every neuron layer fires on some but not all
neuron-steps, so that a bit-exact match says something.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import quant as Q
from spiketriton.export import (CHIP_FORMAT, CHIP_FORMAT_VERSION, ChipFormatError, ChipProgram, ExportError,
                                load_chip, save_chip)
from spiketriton.export import chip as C
from spiketriton.hybrid import S2AGlobalRate

from helpers import calibrated


def quantized(net, x, **cfg):
    return calibrated(net, x, **cfg).quantize()


def neuron_rates(q, x):
    """Firing rate of every QLIF on ``x`` (the model is reset before and after)."""
    rates = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: rates.__setitem__(name, float(o.float().mean())))
             for name, m in q.named_modules() if isinstance(m, Q.QLIF)]
    q.reset()
    with torch.no_grad():
        q(x)
    q.reset()
    for h in hooks:
        h.remove()
    return rates


def assert_round_trip(q, x, path):
    """save -> load -> run twice (state carried) and once after reset(): equal to the model bit for bit."""
    rates = neuron_rates(q, x)
    assert rates and all(0.02 < r < 0.98 for r in rates.values()), rates  # every layer fires, not always
    manifest = save_chip(q, path, x)
    program = load_chip(path)
    assert isinstance(program, ChipProgram) and program.manifest == manifest
    q.reset()
    with torch.no_grad():
        want = [q(x), q(x)]
    q.reset()
    with torch.no_grad():
        want.append(q(x))
    q.reset()
    got = [program.run(x), program.run(x.numpy())]  # torch or numpy input
    program.reset()
    got.append(program.run(x))
    for g, w in zip(got, want):
        assert g.dtype == torch.empty(0, dtype=w.dtype).numpy().dtype and g.shape == tuple(w.shape)
        assert np.array_equal(g, w.numpy())
    assert not np.array_equal(want[0].numpy(), want[1].numpy()) or manifest["output"] == "real", \
        "the second call should start from the carried state"
    return manifest, program


def driven(net, gain):
    """Scale every weight so that the layers fire."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(gain)
    return net


# ------------------------------------------------------------------------------------------- #
# round trips
# ------------------------------------------------------------------------------------------- #


def test_demo_network_round_trip(tmp_path):
    from spiketriton import demo

    torch.manual_seed(0)
    net = driven(demo.build_net(hidden=32, backend="torch"), 8.0)
    x = demo.encode(torch.rand(6, 64), 4)
    q = quantized(net, x)
    manifest, program = assert_round_trip(q, x, tmp_path / "demo.chip")
    assert [layer["kind"] for layer in manifest["layers"]] == ["linear", "neuron", "linear", "neuron"]
    assert manifest["layers"][0]["input"] == "int8" and manifest["layers"][2]["input"] == "spikes"
    assert manifest["format"] == CHIP_FORMAT and manifest["version"] == CHIP_FORMAT_VERSION
    assert manifest["output"] == "spikes" and program.output_shape == (10,)


class ConvNet(nn.Sequential):
    def __init__(self):
        super().__init__(
            st.StepWise(nn.Conv2d(2, 4, 3, padding=1)), st.LIF(tau=2.0),
            st.StepWise(nn.AvgPool2d(2, divisor_override=1)),  # sum pooling: spike counts
            nn.Flatten(2), nn.Linear(4 * 3 * 3, 6), st.LIF(tau=2.0, v_reset=None),
        )


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_conv_network_round_trip(tmp_path, per_channel, bits):
    torch.manual_seed(1)
    net = driven(ConvNet(), 4.0)
    x = torch.rand(4, 3, 2, 6, 6) * 2
    q = quantized(net, x, per_channel=per_channel, bits=bits)
    manifest, _ = assert_round_trip(q, x, tmp_path / "conv.chip")
    kinds = [layer["kind"] for layer in manifest["layers"]]
    assert kinds == ["conv2d", "neuron", "sumpool2d", "flatten", "linear", "neuron"]
    assert manifest["layers"][4]["input"] == "int8"  # a layer after a pooling reads counts through int8
    assert all(layer["weight_bits"] == bits for layer in manifest["layers"] if "weight_bits" in layer)
    per_channel_tensors = [k for k in manifest["tensors"] if k.endswith(".v_th0")]
    assert per_channel_tensors == (["layers.1.v_th0", "layers.5.v_th0"] if per_channel else [])


def test_strided_grouped_dilated_conv_flattened_into_neurons(tmp_path):
    """A conv whose output is flattened before its neuron: per-channel constants repeated over H*W."""
    torch.manual_seed(2)
    net = driven(nn.Sequential(st.StepWise(nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)),
                               nn.Flatten(2), st.IF(), nn.Linear(6 * 3 * 3, 5, bias=False), st.IF()), 4.0)
    x = torch.rand(3, 2, 4, 6, 6) * 2
    for per_channel in (True, False):
        q = quantized(net, x, per_channel=per_channel)
        manifest, _ = assert_round_trip(q, x, tmp_path / f"g{per_channel}.chip")
        if per_channel:
            assert manifest["tensors"]["layers.2.v_th0"]["shape"] == [54]


EXTENDED = {
    "soft_floor": dict(v_th0=0.6, reset_mode="soft", v_l=-0.4, v_leaky_alpha=0.85, v_leaky_beta=-0.02),
    "soft_constant": dict(v_th0=0.5, reset_mode="soft_constant", dv=0.3, v_leaky_alpha=0.9),
    "hard_adaptive": dict(v_th0=0.4, v_reset=-0.1, v_th_alpha=0.8, v_th_beta=0.02, v_th_incre=0.15,
                          v_leaky_alpha=0.95, v_init=0.2),
    "refractory": dict(v_th0=0.3, ref_len=2, reset_mode="soft", v_leaky_alpha=0.75, v_leaky_beta=0.01),
    "everything": dict(v_th0=0.5, reset_mode="soft_constant", dv=0.2, v_l=-0.3, v_leaky_alpha=0.9,
                       v_leaky_beta=0.01, v_th_alpha=0.7, v_th_beta=0.01, v_th_incre=0.1, ref_len=1, v_init=0.1),
}


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("kind", list(EXTENDED))
def test_extended_lif_round_trip(tmp_path, kind, per_channel):
    torch.manual_seed(3)
    p = EXTENDED[kind]
    net = driven(nn.Sequential(nn.Linear(12, 24), st.ExtendedLIF(**p), nn.Linear(24, 8), st.ExtendedLIF(**p)), 2.0)
    x = torch.randn(8, 3, 12)
    q = quantized(net, x, per_channel=per_channel, bits=6)
    manifest, _ = assert_round_trip(q, x, tmp_path / "ext.chip")
    assert manifest["layers"][1]["reset_mode"] == p.get("reset_mode", "hard")
    assert manifest["layers"][1]["constants"]["ref_len"] == p.get("ref_len", 0)


def test_readout_final_layer_and_a_readout_inside_the_chain(tmp_path):
    """A final layer that feeds no neuron returns real units (float32, u / S in float64); a
    layer feeding no neuron in the middle hands real values to an encoding layer."""
    torch.manual_seed(4)
    net = driven(nn.Sequential(nn.Linear(10, 16), st.LIF(), nn.Linear(16, 12), nn.Linear(12, 8), st.LIF(),
                               nn.Linear(8, 3)), 2.5)
    x = torch.rand(5, 4, 10) * 2
    for per_channel in (False, True):
        q = quantized(net, x, per_channel=per_channel)
        manifest, program = assert_round_trip(q, x, tmp_path / "readout.chip")
        assert [layer["output"] for layer in manifest["layers"] if layer["kind"] == "linear"] == \
            ["current", "real", "current", "real"]
        assert manifest["output"] == "real" and program.run(x).dtype == np.float32


def _fp16_edge_values():
    """float64 values at and around every float16 halfway point (exact, and a hair above / below:
    where one rounding and torch's two roundings through float32 part), subnormals, the overflow
    boundary, infinities and zeros, with both signs."""
    lo = np.arange(0, 0x7BFF, dtype=np.uint16).view(np.float16).astype(np.float64)
    hi = np.arange(1, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mid = (lo + hi) / 2  # exact in float64 (and in float32)
    v = np.concatenate([mid, mid * (1 + 2.0 ** -40), mid * (1 - 2.0 ** -40), lo,
                        [65504.0, 65519.99, 65520.0, 65520.0001, 1e300, 1e-300, 2.0 ** -25 * (1 + 2.0 ** -40),
                         np.inf, 0.0]])
    return np.concatenate([v, -v])


def test_readout_casts_like_torch():
    """torch casts float64 -> float16 through float32 (two roundings); the simulator must too."""
    from spiketriton.export import _chipsim as sim

    v = _fp16_edge_values()
    for dtype in (torch.float16, torch.float32, torch.float64):
        want = torch.from_numpy(v).to(dtype).numpy()
        got = sim.cast_like_torch(v, want.dtype)
        assert got.dtype == want.dtype and np.array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))
    with np.errstate(over="ignore"):
        assert (v.astype(np.float16) != torch.from_numpy(v).half().numpy()).sum() > 10000  # the cases that part
    rng = np.random.default_rng(0)
    u = rng.integers(-(1 << 20), 1 << 20, 200_000)
    for S in (37.123456789, np.array([0.7, 3.3, 1e-3, 255.0]).reshape(1, 4)):
        u2 = u.reshape(-1, 4) if np.ndim(S) else u
        want = (torch.from_numpy(u2).double() / torch.as_tensor(S, dtype=torch.float64)).half().numpy()
        assert np.array_equal(sim.readout(u2, S, "float16").view(np.uint16), want.view(np.uint16))


def test_float16_readout_round_trip(tmp_path):
    """A float16 model whose readout value lies a hair above a float16 halfway point: the chip's
    output equals the model's bit for bit (it differed when the simulator rounded once)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), st.LIF(), nn.Linear(32, 4))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()  # every hidden neuron fires at every step: the readout's current is known
    x = torch.ones(3, 2, 16, dtype=torch.half)
    q = calibrated(net.half(), x)
    ro = q.net[2]
    S = ro.live_weight_scale()
    w_int, _ = ro.integers(S, ste=False)
    base, S = w_int.sum(1).double().numpy(), float(S)
    b16 = np.arange(0x2000, 0x6000, dtype=np.uint16).view(np.float16).astype(np.float64)  # candidate biases
    found = None
    for row in range(4):
        d = (base[row] + np.round(b16 * S)) / S
        with np.errstate(over="ignore"):
            bad = np.flatnonzero(torch.from_numpy(d).half().numpy() != d.astype(np.float16))
        if bad.size:
            found = row, b16[bad[0]]
            break
    assert found is not None
    with torch.no_grad():
        ro.bias[found[0]] = found[1]
    q.quantize()
    manifest = save_chip(q, tmp_path / "h.chip", x)
    assert manifest["layers"][-1]["output_dtype"] == "float16"
    q.reset()
    with torch.no_grad():
        want = q(x).numpy()
    got = load_chip(tmp_path / "h.chip").run(x)
    assert got.dtype == np.float16 and np.array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_power_of_two_scales_round_trip(tmp_path, per_channel):
    """pow2 / even_shift scales (checked against w_scale at load) on a network with an encoding layer,
    whose current_scale is w_scale x input_scale in float32."""
    torch.manual_seed(3)
    net = driven(nn.Sequential(nn.Linear(12, 24), st.LIF(), nn.Linear(24, 8), st.LIF()), 8.0)
    x = torch.randn(8, 3, 12)
    q = quantized(net, x, per_channel=per_channel, pow2=True, even_shift=True)
    manifest, _ = assert_round_trip(q, x, tmp_path / "pow2.chip")
    w = np.ravel(manifest["layers"][0]["w_scale"])
    assert manifest["layers"][0]["even_shift"] and np.array_equal(np.log2(w) % 2, np.zeros_like(w))


def test_sum_pooling_at_the_end_returns_counts(tmp_path):
    torch.manual_seed(5)
    net = driven(nn.Sequential(st.StepWise(nn.Conv2d(1, 3, 3, padding=1)), st.LIF(),
                               st.StepWise(nn.AvgPool2d(3, stride=2, padding=1, divisor_override=1))), 2.0)
    x = torch.rand(3, 2, 1, 5, 5) * 3
    q = quantized(net, x)
    manifest, program = assert_round_trip(q, x, tmp_path / "pool.chip")
    assert manifest["output"] == "counts" and program.output_shape == (3, 3, 3)


def test_sum_pool2d_is_exact_and_its_work_does_not_grow_with_the_kernel():
    """Sum pooling (summed-area table) against torch's sum pooling on random windows, strides and
    paddings; and a 1024 x 1024 window sliding with stride 1 over 2048 x 2048: summing each window
    (1.1e12 additions) took minutes, the summed-area table takes a few passes over the input."""
    import time

    from spiketriton.export import _chipsim as sim

    rng = np.random.default_rng(0)
    for _ in range(200):
        N, C, H, W = (int(v) for v in rng.integers(1, [4, 4, 12, 12], endpoint=True))
        kh, kw = int(rng.integers(1, H + 1)), int(rng.integers(1, W + 1))
        ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
        sh, sw = (int(v) for v in rng.integers(1, 6, 2))
        x = rng.integers(0, 9, (N, C, H, W))
        want = torch.nn.functional.avg_pool2d(torch.from_numpy(x).double(), (kh, kw), (sh, sw), (ph, pw),
                                              divisor_override=1)
        got = sim.sum_pool2d(x, (kh, kw), (sh, sw), (ph, pw))
        assert got.dtype == np.int64 and np.array_equal(got, want.numpy().astype(np.int64))
    x = rng.integers(0, 3, (1, 1, 2048, 2048))
    start = time.perf_counter()
    got = sim.sum_pool2d(x, (1024, 1024), (1, 1), (0, 0))
    assert time.perf_counter() - start < 30  # ~0.05 s; minutes when each window is summed
    assert got.shape == (1, 1, 1025, 1025)
    for i, j in [(0, 0), (1024, 1024), (17, 1000), (600, 5)]:
        assert got[0, 0, i, j] == x[0, 0, i:i + 1024, j:j + 1024].sum()


def test_zero_padding_counts_in_the_run_limit_and_the_chunks(tmp_path, monkeypatch):
    """A convolution whose zero-padded input (1 x 511 x 511) dwarfs every value of the chain (one
    element): the run limit counts the padded input, and the simulator pads a few samples at a time."""
    import tracemalloc

    from spiketriton.export import _chipsim as sim

    net = nn.Sequential(st.StepWise(nn.Conv2d(1, 1, 1, stride=511, padding=255)), st.IF())
    x = torch.rand(2, 1, 1, 1, 1) * 4
    save_chip(quantized(net, x), tmp_path / "pad.chip", x)
    program = load_chip(tmp_path / "pad.chip")
    monkeypatch.setattr(C, "MAX_RUN_ELEMENTS", 64 * 511 * 511 - 1)
    with pytest.raises(ValueError, match=r"T\*B\*features = 64\*1\*261121 exceeds the limit of 16711743 elements per "
                                         r"value \(the chain's largest value, zero-padded inputs included\)"):
        program.run(np.ones((64, 1, 1, 1, 1)))
    monkeypatch.undo()
    monkeypatch.setattr(sim, "IM2COL_CHUNK_ELEMENTS", 1 << 20)  # 8 MiB of int64 per chunk
    tracemalloc.start()
    try:
        program.run(np.ones((64, 1, 1, 1, 1)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 8 << 20, peak  # 64 padded samples at once would be 128 MiB


def test_state_carries_across_runs_until_reset(tmp_path):
    torch.manual_seed(6)
    net = driven(nn.Sequential(nn.Linear(6, 10), st.LIF(tau=4.0), nn.Linear(10, 4), st.LIF(tau=4.0)), 1.5)
    x = torch.rand(6, 2, 6)
    q = quantized(net, x)
    save_chip(q, tmp_path / "s.chip", x)
    program = load_chip(tmp_path / "s.chip")
    whole = program.run(x)
    program.reset()
    pieces = np.concatenate([program.run(x[:2]), program.run(x[2:5]), program.run(x[5:])])
    assert np.array_equal(whole, pieces)  # one sequence in three calls
    with pytest.raises(ValueError, match="carried state is for a batch of 2.*call reset"):
        program.run(torch.rand(2, 3, 6))
    program.reset()
    assert program.run(torch.rand(2, 3, 6)).shape == (2, 3, 4)


def test_run_input_checks(tmp_path, monkeypatch):
    torch.manual_seed(7)
    net = driven(nn.Sequential(nn.Linear(6, 10), st.LIF(), nn.Linear(10, 4), st.LIF()), 1.5)
    x = torch.rand(3, 2, 6)
    save_chip(quantized(net, x), tmp_path / "r.chip", x)
    program = load_chip(tmp_path / "r.chip")
    with pytest.raises(ValueError, match=r"expected input \[T, B, 6\], got shape \(3, 2, 5\)"):
        program.run(np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match="holds NaN"):
        program.run(np.full((3, 2, 6), np.nan))
    with pytest.raises(TypeError, match="real numbers"):
        program.run(np.zeros((3, 2, 6), dtype=complex))
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        program.run([[[0.0] * 6]])
    with monkeypatch.context() as m:
        m.setattr(C, "MAX_RUN_ELEMENTS", 59)  # 3 * 2 * 10 features of the hidden layer = 60
        with pytest.raises(ValueError, match=r"T\*B\*features = 3\*2\*10 exceeds the limit of 59"):
            program.run(np.zeros((3, 2, 6)))
    # bool spikes and +-inf are well defined (inf clamps to the int8 range, as in the model)
    q = quantized(net, x)
    for inp in (torch.rand(3, 2, 6) > 0.5, torch.tensor([[[float("inf"), -float("inf"), 1, 0, 2, 3]] * 2] * 3)):
        program.reset()
        q.reset()
        with torch.no_grad():
            assert np.array_equal(program.run(inp), q(inp).numpy())


class _TensorSubclass(torch.Tensor):
    pass


def test_run_odd_inputs(tmp_path):
    """Inputs with no values, or values that are not real numbers, are refused with a message saying
    so (a meta tensor raised torch's "Cannot copy out of meta tensor", a sparse one numpy's, a masked
    array a broadcasting error); the rest runs as the quantized model does."""
    torch.manual_seed(7)
    net = driven(nn.Sequential(nn.Linear(6, 10), st.LIF(), nn.Linear(10, 4), st.LIF()), 1.5)
    x = torch.rand(3, 2, 6)
    q = quantized(net, x)
    save_chip(q, tmp_path / "r.chip", x)
    program = load_chip(tmp_path / "r.chip")
    refused = [
        (torch.zeros(3, 2, 6, device="meta"), ValueError, r"ChipProgram.run: the input is a meta tensor, which has a "
                                                          r"shape but no values"),
        (torch.zeros(3, 2, 6).to_sparse(), TypeError,
         r"expected a dense \(strided\) tensor \[T, B, 6\], got a sparse_coo tensor"),
        (torch.zeros(3, 2, 6, dtype=torch.complex64), TypeError, r"must hold real numbers .* got torch.complex64"),
        (np.ma.masked_array(np.zeros((3, 2, 6)), mask=True), TypeError, r"a masked array has entries without a value"),
        (np.zeros((3, 2, 6), dtype="datetime64[s]"), TypeError, r"must hold real numbers .* got datetime64"),
        (np.float64(1.0), TypeError, r"expected a torch.Tensor or numpy array \[T, B, 6\], got float64"),
        (None, TypeError, r"expected a torch.Tensor or numpy array \[T, B, 6\], got NoneType"),
    ]
    for inp, error, message in refused:
        with pytest.raises(error, match=message):
            program.run(inp)
    # the size limit is checked before the float64 copy is made (a broadcast view of 2^31 elements)
    with pytest.raises(ValueError, match=r"T\*B\*features = 65536\*32768\*10 exceeds the limit of 134217728"):
        program.run(torch.zeros(1, 1, 6).expand(1 << 16, 1 << 15, 6))
    # requires_grad, an empty batch or sequence, a tensor subclass, a non-contiguous tensor, big-endian
    # and integer arrays: the quantized model's answer
    accepted = [torch.rand(3, 2, 6, requires_grad=True), torch.zeros(3, 0, 6), torch.zeros(0, 2, 6),
                (torch.rand(3, 2, 6) * 2).as_subclass(_TensorSubclass), (torch.rand(6, 2, 3) * 2).permute(2, 1, 0)]
    for inp in accepted:
        program.reset()
        q.reset()
        with torch.no_grad():
            want = q(inp.as_subclass(torch.Tensor).detach()).numpy()
        got = program.run(inp)
        assert got.shape == want.shape and np.array_equal(got, want)
    for inp in ((np.random.rand(3, 2, 6) * 2).astype(">f8"), np.random.randint(-3, 4, (3, 2, 6))):
        program.reset()
        q.reset()
        with torch.no_grad():
            want = q(torch.from_numpy(inp.astype(np.float64)).float()).numpy()
        assert np.array_equal(program.run(inp), want)


# ------------------------------------------------------------------------------------------- #
# what save_chip refuses
# ------------------------------------------------------------------------------------------- #


def mlp():
    torch.manual_seed(0)
    return driven(nn.Sequential(nn.Linear(6, 10), st.LIF(), nn.Linear(10, 4), st.LIF()), 1.5)


class FloatReadout(Q.QModel):
    def __init__(self):
        super().__init__()
        self.fc, self.lif, self.head = Q.QLinear(6, 8), Q.QLIF(), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.lif(self.fc(x)))


class FloatNeuron(Q.QModel):
    def __init__(self):
        super().__init__()
        self.fc, self.lif, self.fc2, self.out = Q.QLinear(6, 8), Q.QLIF(), Q.QLinear(8, 3), st.LIF()

    def forward(self, x):
        return self.out(self.fc2(self.lif(self.fc(x))))


def _flow(q, x):
    q.collect_q_params()
    with torch.no_grad():
        q(x)
    q.reset()
    q.calculate_q_params()
    return q.quantize()


def test_save_refuses_what_the_chip_cannot_run_exactly(tmp_path):
    x = torch.rand(3, 2, 6)
    path = tmp_path / "x.chip"
    with pytest.raises(TypeError, match="must be a spiketriton.quant.QModel"):
        save_chip(mlp(), path, x)
    q = calibrated(mlp(), x)
    with pytest.raises(ExportError, match="float mode.*qmodel.quantize"):
        save_chip(q, path, x)
    with pytest.raises(ExportError, match="aware mode"):
        save_chip(q.aware(), path, x)
    with pytest.raises(ExportError, match="head: Linear is a float layer"):
        save_chip(_flow(FloatReadout(), x), path, x)
    with pytest.raises(ExportError, match="out: LIF is a float neuron"):
        save_chip(_flow(FloatNeuron(), x), path, x)
    q = quantized(mlp(), x)
    q.net[3].feeder = None
    with pytest.raises(ExportError, match="net.3: the QLIF is not linked"):
        save_chip(q, path, x)
    xi = torch.rand(3, 2, 1, 4, 4)
    avg = driven(nn.Sequential(st.StepWise(nn.Conv2d(1, 2, 3, padding=1)), st.LIF(), st.StepWise(nn.AvgPool2d(2)),
                               nn.Flatten(2), nn.Linear(8, 2), st.LIF()), 4.0)
    with pytest.raises(ExportError, match=r"net.2.0: AvgPool2d averages.*divisor_override=1"):
        save_chip(quantized(avg, xi * 4), path, xi)
    pool_input = nn.Sequential(st.StepWise(nn.AvgPool2d(2, divisor_override=1)), nn.Flatten(2), nn.Linear(4, 2),
                               st.LIF())
    with pytest.raises(ExportError, match="net.0.0: sum pooling of real values"):
        save_chip(quantized(pool_input, xi), path, xi)
    hybrid = nn.Sequential(nn.Linear(6, 4), st.LIF(), S2AGlobalRate())
    with pytest.raises(ExportError, match="save_chip"):
        save_chip(quantized(hybrid, x), path, x)
    assert not os.listdir(tmp_path)  # nothing written by any of these


class Twice(nn.Module):
    """``fc`` / ``lif`` called twice in one step: the model's calls share one module (a neuron's one
    state), the chip would write separate units."""

    def __init__(self, reuse):
        super().__init__()
        self.reuse = reuse
        self.enc, self.enc_lif = nn.Linear(8, 8), st.LIF(tau=2.0)
        self.fc, self.lif = nn.Linear(8, 8), st.LIF(tau=2.0)
        if reuse == "layer":
            self.lif2 = st.LIF(tau=2.0)

    def forward(self, x):
        s = self.enc_lif(self.enc(x))
        if self.reuse == "both":  # the reviewer's case: the chip's spikes differed from the model's
            return self.lif(self.fc(self.lif(self.fc(s))))
        if self.reuse == "layer":
            return self.lif2(self.fc(self.lif(self.fc(s))))
        return self.lif(self.lif(self.fc(s)))  # "neuron"


@pytest.mark.parametrize("reuse,culprit", [("both", "net.fc"), ("layer", "net.fc"), ("neuron", "net.lif")])
def test_save_refuses_a_module_called_twice(tmp_path, reuse, culprit):
    torch.manual_seed(0)
    net = driven(Twice(reuse), 4.0)
    x = torch.rand(10, 4, 8) * 2
    q = quantized(net, x)
    with pytest.raises(ExportError, match=rf"save_chip: {culprit}: the module is called twice in the forward.*"
                                          rf"give each call its own module"):
        save_chip(q, tmp_path / "twice.chip", x)
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------------------------- #
# atomic writes
# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("failing", ["fsync", "replace", "write"])
def test_atomic_write_leaves_no_temp_and_the_old_file_intact(tmp_path, monkeypatch, failing):
    x = torch.rand(3, 2, 6)
    path = tmp_path / "net.chip"
    path.write_bytes(b"the old file")
    q = quantized(mlp(), x)

    def boom(*args, **kwargs):
        raise OSError(f"injected {failing} failure")

    if failing == "write":  # a failure half-way through the data: a partial temp file exists
        real_fdopen = os.fdopen

        class Half:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                boom()

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: Half(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match=f"injected {failing} failure"):
        save_chip(q, path, x)
    monkeypatch.undo()
    assert path.read_bytes() == b"the old file"
    assert sorted(os.listdir(tmp_path)) == ["net.chip"]
    save_chip(q, path, x)  # and without the failure the new file replaces the old one
    assert sorted(os.listdir(tmp_path)) == ["net.chip"]
    assert load_chip(path).output_shape == (4,)
    assert (os.stat(path).st_mode & 0o777) == 0o644


# ------------------------------------------------------------------------------------------- #
# hostile and corrupt files
# ------------------------------------------------------------------------------------------- #


def split(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


@pytest.fixture(scope="module")
def base_files(tmp_path_factory):
    """Two valid chip files: a per-channel conv network (per-channel constant tensors, sum pooling,
    flatten) and a per-tensor MLP with biases (constants in the manifest)."""
    d = tmp_path_factory.mktemp("base")
    torch.manual_seed(8)
    conv = driven(ConvNet(), 4.0)
    x = torch.rand(3, 2, 2, 6, 6) * 2
    save_chip(quantized(conv, x, per_channel=True), d / "conv.chip", x)
    xm = torch.rand(3, 2, 6)
    save_chip(quantized(mlp(), xm), d / "mlp.chip", xm)
    return {"conv": (d / "conv.chip").read_bytes(), "mlp": (d / "mlp.chip").read_bytes()}


def parts(data: bytes):
    from safetensors.numpy import load

    header, _ = split(data)
    return json.loads(header["__metadata__"][C.META_KEY]), dict(load(data))


def rebuilt(data, manifest_fn=None, tensors_fn=None, rehash=True, manifest_rehash=True):
    """The file with its manifest and/or tensors changed, the checksums recomputed (an attacker who
    knows the format): the tensors' unless ``rehash=False``, then the manifest's (if it has one)
    unless ``manifest_rehash=False``."""
    manifest, arrays = parts(data)
    if tensors_fn:
        tensors_fn(arrays)
    if manifest_fn:
        manifest_fn(manifest)
    if rehash:
        manifest["tensor_sha256"] = C.tensor_digest(arrays)
    if manifest_rehash and "manifest_sha256" in manifest:
        manifest["manifest_sha256"] = C.manifest_digest(manifest)
    return C._serialize(manifest, arrays)


def header_edit(fn):
    def edit(data):
        header, body = split(data)
        fn(header)
        return join(header, body)
    return edit


def meta_edit(fn):
    """Edit the manifest JSON as text-level metadata (no re-validation of the rest)."""
    def edit(header):
        header["__metadata__"][C.META_KEY] = fn(header["__metadata__"][C.META_KEY])
    return header_edit(edit)


def manifest_edit(fn, rehash=True, manifest_rehash=True):
    return lambda data: rebuilt(data, manifest_fn=fn, rehash=rehash, manifest_rehash=manifest_rehash)


def tensors_edit(fn, rehash=True):
    return lambda data: rebuilt(data, tensors_fn=fn, rehash=rehash)


def setp(*path_and_value):
    """manifest[...path...] = value"""
    *path, value = path_and_value

    def fn(m):
        obj = m
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return fn


def quant_file(data):
    from safetensors.numpy import save

    return save({"x": np.zeros(1, np.int8)}, metadata={"spiketriton": json.dumps({"format": "spiketriton.quant"})})


def first_weight_entry(header):
    return header["layers.0.weight"]


def neuron_after_neuron(m):
    m["layers"].insert(2, dict(m["layers"][1]))


def drop_last_neuron(m):
    m["layers"].pop()
    m["output"] = "current"


def flip_weight_byte(data):
    header, body = split(data)
    begin = header["layers.0.weight"]["data_offsets"][0]
    body = bytearray(body)
    body[begin] ^= 0x01
    return join(header, bytes(body))


def manifest_digit_changed(data):
    """One digit of a neuron constant changed inside the manifest (same length: header size kept)."""
    i = data.index(b'\\"v_th0\\": ') + len(b'\\"v_th0\\": ') + 1
    return data[:i] + (b"5" if data[i:i + 1] != b"5" else b"6") + data[i + 1:]


def gap(header):
    for e in header.values():
        if isinstance(e, dict) and "data_offsets" in e:
            e["data_offsets"] = [e["data_offsets"][0] + 1, e["data_offsets"][1] + 1]


def deep_json(n):
    return lambda text: "[" * n + "]" * n


# (id, base file, mutation of the bytes, expected message); the messages are pairwise different
HOSTILE = [
    ("empty", "mlp", lambda d: b"", r"truncated: 0 bytes, shorter than the 8-byte header length"),
    ("header_length_absurd", "mlp", lambda d: struct.pack("<Q", 1 << 40) + d[8:],
     r"header length field declares 1099511627776 bytes, beyond the limit of 16777216"),
    ("header_cut", "mlp", lambda d: d[:100], r"truncated: the header length field declares \d+ bytes but only 92"),
    ("header_not_utf8", "mlp", lambda d: d[:8] + b"\xff" + d[9:], r"header is not UTF-8 text"),
    ("header_not_json", "mlp", lambda d: d[:8] + b"?" + d[9:], r"the safetensors header is not valid JSON"),
    ("header_is_a_list", "mlp", lambda d: join([1, 2], b""), r"header is a JSON list, expected an object"),
    ("header_duplicate_key", "mlp",
     lambda d: (lambda h: struct.pack("<Q", len(h)) + h)(b'{"a": {}, "a": {}}'), r"header repeats the key 'a'"),
    ("no_metadata", "mlp", header_edit(lambda h: h.pop("__metadata__")), r"has no __metadata__"),
    ("metadata_not_strings", "mlp", header_edit(setp("__metadata__", "other", 3)),
     r"__metadata__ must map names to strings"),
    ("no_manifest", "mlp", header_edit(lambda h: h["__metadata__"].pop(C.META_KEY)),
     r"no 'spiketriton.chip' manifest in the safetensors metadata"),
    ("a_quant_file", "mlp", quant_file, r"spiketriton.quant file \(a saved QModel\), not a chip file"),
    ("manifest_not_json", "mlp", meta_edit(lambda t: t[:-1]), r"the manifest is not valid JSON"),
    ("manifest_nan", "mlp", meta_edit(lambda t: t.replace('"state_bits": 28', '"state_bits": NaN')),
     r"NaN is not a number in JSON"),
    ("manifest_overflowing_number", "mlp", meta_edit(lambda t: t.replace('"state_bits": 28', '"state_bits": 1e999')),
     r"the number 1e999 overflows a float"),
    ("manifest_nested_too_deeply", "mlp", meta_edit(deep_json(100000)), r"the manifest is nested too deeply"),
    ("manifest_is_a_list", "mlp", meta_edit(lambda t: "[]"), r"the manifest is a JSON list, expected an object"),
    ("manifest_duplicate_key", "mlp", meta_edit(lambda t: t[:-1] + ', "version": 1}'),
     r"the manifest repeats the key 'version'"),
    ("unknown_format", "mlp", manifest_edit(setp("format", "other.format")),
     r"the manifest's format is 'other.format', expected 'spiketriton.chip'"),
    ("unknown_version", "mlp", manifest_edit(setp("version", 2)),
     r"format version 2 is not supported: this spiketriton reads version 1"),
    ("tensor_dtype_float", "mlp", header_edit(lambda h: first_weight_entry(h).update(dtype="F32")),
     r"dtype 'F32' is not one of the chip's integer types"),
    ("tensor_entry_fields", "mlp", header_edit(lambda h: first_weight_entry(h).pop("data_offsets")),
     r"a header entry needs exactly dtype, shape and data_offsets"),
    ("tensor_shape_negative", "mlp", header_edit(lambda h: first_weight_entry(h).update(shape=[-1, 6])),
     r"shape must be a list of at most 8 non-negative integers"),
    ("tensor_absurd_size", "mlp", header_edit(lambda h: first_weight_entry(h).update(shape=[1 << 40])),
     r"declares 1099511627776 elements, beyond the limit of 134217728 per tensor"),
    ("tensor_offsets_reversed", "mlp", header_edit(lambda h: first_weight_entry(h).update(data_offsets=[9, 3])),
     r"data_offsets must be \[begin, end\] with 0 <= begin <= end"),
    ("tensor_offsets_span", "mlp",
     header_edit(lambda h: first_weight_entry(h).update(shape=[10, 5])),
     r"data_offsets span 60 bytes but int8\[10, 5\]"),
    ("tensor_data_gap", "mlp", header_edit(gap), r"its data starts at byte 1 of the data section, expected 0"),
    ("data_truncated", "mlp", lambda d: d[:-10], r"truncated: the tensors need \d+ bytes of data but the file holds"),
    ("data_trailing_bytes", "mlp", lambda d: d + b"\0" * 7, r"7 unexpected bytes after the last tensor's data"),
    ("data_corrupted", "mlp", flip_weight_byte, r"does not match the manifest's tensor_sha256 \(corrupted file\)"),
    ("file_lacks_tensor", "mlp",
     lambda d: rebuilt(d, tensors_fn=lambda a: a.pop("layers.0.bias")),
     r"missing tensor\(s\) layers.0.bias: declared by the manifest, absent from the file"),
    ("file_extra_tensor", "mlp", tensors_edit(lambda a: a.update(extra=np.zeros(2, np.int8))),
     r"unexpected tensor\(s\) extra in the file \(not declared by the manifest\)"),
    ("file_dtype_mismatch", "mlp",
     tensors_edit(lambda a: a.update({"layers.0.weight": a["layers.0.weight"].astype(np.int32)})),
     r"tensor layers.0.weight: the file has dtype int32, the manifest declare\(s\) int8"),
    ("file_shape_mismatch", "mlp",
     tensors_edit(lambda a: a.update({"layers.0.weight": a["layers.0.weight"].reshape(6, 10)})),
     r"tensor layers.0.weight: the file has shape \[6, 10\], the manifest declare\(s\) \[10, 6\]"),
    ("table_shape_mismatch", "mlp", manifest_edit(setp("tensors", "layers.0.weight", "shape", [6, 10])),
     r"tensor layers.0.weight: the manifest's tensor table has shape \[6, 10\], the layers declare\(s\) \[10, 6\]"),
    ("table_lacks_tensor", "mlp", manifest_edit(lambda m: m["tensors"].pop("layers.2.bias")),
     r"missing tensor\(s\) layers.2.bias: declared by the layers, absent from the manifest's tensor table"),
    ("weight_beyond_bits", "mlp", manifest_edit(setp("layers", 0, "weight_bits", 3)),
     r"layers\[0\] \('net.0', linear\): weight holds \d+, beyond \+-3 for 3-bit weights"),
    ("bias_beyond_int28", "mlp", tensors_edit(lambda a: a["layers.0.bias"].__setitem__(0, 1 << 28)),
     r"layers\[0\] \('net.0', linear\): bias holds values beyond int28"),
    ("channel_constant_beyond_int28", "conv", tensors_edit(lambda a: a["layers.1.v_th0"].__setitem__(0, -(1 << 28))),
     r"the per-channel constant v_th0 holds values beyond int28"),
    ("constant_beyond_int28", "mlp", manifest_edit(setp("layers", 1, "constants", "v_th0", 1 << 27)),
     r"layers\[1\] \('net.1', neuron\): constants: v_th0 must be an integer in \[-134217728, 134217727\]"),
    ("constant_not_integer", "mlp", manifest_edit(setp("layers", 1, "constants", "dv", 1.5)),
     r"constants: dv must be an integer in"),
    ("constant_boolean", "mlp", manifest_edit(setp("layers", 1, "constants", "v_reset", True)),
     r"constants: v_reset must be an integer in"),
    ("alpha_q_beyond_256", "mlp", manifest_edit(setp("layers", 1, "constants", "alpha_q", 300)),
     r"constants: alpha_q must be an integer in \[0, 256\], got 300"),
    ("ref_len_negative", "mlp", manifest_edit(setp("layers", 3, "constants", "ref_len", -1)),
     r"constants: ref_len must be an integer in \[0, 134217727\]"),
    ("constants_missing", "mlp", manifest_edit(lambda m: m["layers"][1]["constants"].pop("v_th_incre")),
     r"constants: missing field\(s\) v_th_incre"),
    ("unknown_layer_kind", "mlp", manifest_edit(setp("layers", 1, "kind", "lstm")),
     r"layers\[1\] \('net.1', lstm\): unknown layer kind 'lstm'; this version knows linear"),
    ("layer_kind_not_a_string", "mlp", manifest_edit(setp("layers", 1, "kind", ["neuron"])),
     r"layers\[1\]: unknown layer kind \['neuron'\]; this version knows linear"),
    ("layer_not_an_object", "mlp", manifest_edit(setp("layers", 1, "neuron")),
     r"layers\[1\] must be a JSON object, got str"),
    ("unknown_reset_mode", "mlp", manifest_edit(setp("layers", 3, "reset_mode", "sometimes")),
     r"reset_mode must be one of hard, soft, soft_constant, got 'sometimes'"),
    ("shapes_do_not_chain", "mlp", manifest_edit(setp("layers", 2, "in_shape", [11])),
     r"layers\[2\] \('net.2', linear\): in_shape \[11\] does not match the previous output shape \[10\]"),
    ("in_features_mismatch", "mlp", manifest_edit(setp("layers", 0, "in_features", 7)),
     r"in_features is 7 but in_shape \[6\] ends with 6"),
    ("conv_out_shape_wrong", "conv", manifest_edit(setp("layers", 0, "out_shape", [4, 5, 5])),
     r"out_shape \[4, 5, 5\], but the convolution gives \[4, 6, 6\]"),
    ("conv_groups", "conv", manifest_edit(setp("layers", 0, "groups", 3)), r"groups = 3 must divide in_channels = 2"),
    ("window_too_large", "conv", manifest_edit(setp("layers", 2, "kernel_size", [9, 9])),
     r"the window \[9, 9\] \(dilation \[1, 1\]\) does not fit the padded input \[6, 6\]"),
    ("pool_padding", "conv", manifest_edit(setp("layers", 2, "padding", [2, 2])),
     r"padding \[2, 2\] must be at most half the kernel \[2, 2\]"),
    ("flatten_wrong", "conv", manifest_edit(setp("layers", 3, "end_dim", 1)),
     r"out_shape \[36\] is not in_shape \[4, 3, 3\] with dimensions 0..1 merged"),
    ("channel_constant_shape", "conv",
     lambda d: rebuilt(d, manifest_fn=setp("tensors", "layers.1.v_l", "shape", [3]),
                       tensors_fn=lambda a: a.update({"layers.1.v_l": np.zeros(3, np.int32)})),
     r"the per-channel constant layers.1.v_l has shape \[3\], which does not broadcast to the neuron's shape"),
    ("absurd_features", "mlp", manifest_edit(setp("input_shape", [1 << 30])),
     r"input_shape \[1073741824\] has 1073741824 elements per sample, beyond the limit of 16777216"),
    ("missing_field", "mlp", manifest_edit(lambda m: m["layers"][0].pop("bias")),
     r"layers\[0\] \('net.0', linear\): missing field\(s\) bias"),
    ("unexpected_field", "mlp", manifest_edit(setp("layers", 0, "colour", "red")),
     r"layers\[0\] \('net.0', linear\): unexpected field\(s\) colour"),
    ("manifest_unexpected_field", "mlp", manifest_edit(setp("signature", "x")),
     r"the manifest: unexpected field\(s\) signature"),
    ("input_scale_negative", "mlp", manifest_edit(setp("layers", 0, "input_scale", -2.0)),
     r"input_scale must be a positive finite number"),
    ("w_scale_per_channel_length", "conv", manifest_edit(setp("layers", 0, "w_scale", [1.0, 2.0])),
     r"w_scale must be a list of 4 positive finite numbers \(one per output channel\)"),
    ("neuron_without_current", "mlp", manifest_edit(neuron_after_neuron),
     r"layers\[2\] \('net.1', neuron\): a neuron integrates the current of the layer right before it, but it "
     r"receives spikes"),
    ("current_not_consumed", "mlp", manifest_edit(drop_last_neuron),
     r"the last layer outputs an integer current that no neuron consumes"),
    ("output_kind_mismatch", "mlp", manifest_edit(setp("output", "real")),
     r"output is 'real' but the chain ends with spikes"),
    ("output_shape_mismatch", "mlp", manifest_edit(setp("output_shape", [5])),
     r"output_shape \[5\] does not match the last layer's output \[4\]"),
    ("spikes_input_reads_real", "mlp", manifest_edit(lambda m: m["layers"][0].update(input="spikes", input_scale=None)),
     r"input is 'spikes' but the layer reads real values"),
    ("readout_dtype", "mlp", manifest_edit(lambda m: m["layers"][2].update(output="real", output_dtype="bfloat16")),
     r"output_dtype must be one of float16, float32, float64"),
    ("even_shift_without_pow2", "mlp", manifest_edit(lambda m: m["layers"][0].update(pow2=False, even_shift=True)),
     r"layers\[0\] \('net.0', linear\): even_shift is true but pow2 is false"),
    ("w_scale_not_pow2", "mlp", manifest_edit(setp("layers", 2, "pow2", True)),
     r"w_scale [\d.e+-]+ is not a power of two, but pow2 is true"),
    ("w_scale_odd_shift", "mlp", manifest_edit(lambda m: m["layers"][2].update(
        pow2=True, even_shift=True, w_scale=8.0, current_scale=8.0)),
     r"w_scale 8.0 is not a power of two with an even exponent, but pow2 is true with even_shift"),
    ("current_scale_not_w_scale", "mlp",
     manifest_edit(lambda m: m["layers"][2].update(current_scale=m["layers"][2]["w_scale"] * (1 + 1e-5))),
     r"layers\[2\] \('net.2', linear\): current_scale [\d.e+-]+ is not w_scale [\d.e+-]+ \(within a relative 1e-06\)"),
    ("current_scale_not_w_scale_x_input_scale", "mlp",
     manifest_edit(lambda m: m["layers"][0].update(current_scale=m["layers"][0]["w_scale"])),
     r"layers\[0\] \('net.0', linear\): current_scale [\d.e+-]+ is not w_scale [\d.e+-]+ x input_scale"),
    ("input_bits", "mlp", manifest_edit(setp("input_bits", 4)), r"input_bits is 4; version 1 has int8 inputs"),
    ("state_bits", "mlp", manifest_edit(setp("state_bits", 32)), r"state_bits is 32; version 1 saturates to int28"),
    ("checksum_malformed", "mlp", manifest_edit(setp("tensor_sha256", "00"), rehash=False),
     r"tensor_sha256 must be 64 lowercase hexadecimal digits"),
    ("manifest_corrupted", "mlp", manifest_digit_changed,
     r"the manifest does not match its manifest_sha256 \(corrupted manifest\)"),
    ("manifest_edited_without_checksum", "mlp",
     manifest_edit(setp("layers", 1, "constants", "v_th0", 3), manifest_rehash=False),
     r"the manifest does not match its manifest_sha256"),
    ("manifest_checksum_missing", "mlp", manifest_edit(lambda m: m.pop("manifest_sha256")),
     r"the manifest has no manifest_sha256 \(its checksum\)"),
    ("manifest_checksum_malformed", "mlp", manifest_edit(setp("manifest_sha256", "A" * 64), manifest_rehash=False),
     r"manifest_sha256 must be 64 lowercase hexadecimal digits"),
    ("name_too_long", "mlp", manifest_edit(setp("layers", 0, "name", "x" * 5000)),
     r"name must be a string of at most 1024 characters"),
    ("no_layers", "mlp", manifest_edit(setp("layers", [])), r"layers must be a list of 1 to 1024 layers"),
]


def test_hostile_messages_are_distinct():
    assert len({case[3] for case in HOSTILE}) == len(HOSTILE)
    assert len({case[0] for case in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize("base,mutate,message", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_file_is_rejected(tmp_path, base_files, base, mutate, message):
    path = tmp_path / "hostile.chip"
    path.write_bytes(mutate(base_files[base]))
    with pytest.raises(ChipFormatError, match=message) as exc:
        load_chip(path)
    assert str(exc.value).startswith(f"load_chip: {path}: ")


def _value_paths(obj, prefix=()):
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _value_paths(v, prefix + (k,))


def test_every_manifest_value_replaced_by_any_json_type(base_files, tmp_path):
    """Each value of the manifest (every field of every layer, nested ones included) replaced by a
    value of each JSON type, the checksums recomputed: load_chip raises ChipFormatError or returns a
    program that runs, never another exception (a list as a layer kind raised TypeError)."""
    hostile = [None, True, -1, 2 ** 63, 1.5, "x", "neuron", [], [1], ["neuron"], [[1]], {}, {"neuron": 1}]
    path = tmp_path / "value.chip"
    for base in ("mlp", "conv"):
        manifest, arrays = parts(base_files[base])
        for where in list(_value_paths(manifest)):
            if not where or where[0] in ("tensor_sha256", "manifest_sha256"):
                continue
            for value in hostile:
                m = json.loads(json.dumps(manifest))
                obj = m
                for k in where[:-1]:
                    obj = obj[k]
                if obj[where[-1]] == value and type(obj[where[-1]]) is type(value):
                    continue
                obj[where[-1]] = value
                m["manifest_sha256"] = C.manifest_digest(m)
                path.write_bytes(C._serialize(m, arrays))
                try:
                    program = load_chip(path)
                except ChipFormatError:
                    continue
                program.run(np.ones((2, 1) + program.input_shape))


def test_every_changed_byte_is_rejected(base_files, tmp_path):
    """Each byte of a file changed in turn (the header with the manifest, the tensor data, the length
    field): a ChipFormatError, since the manifest and the tensors both carry a checksum, unless the
    change alters no value read (a last digit of a float beyond the 17 that fix a double)."""
    data = base_files["mlp"]
    path = tmp_path / "flip.chip"
    original = parts(data)[0]
    loaded = 0
    for i in range(len(data)):
        for bit in (0x01, 0x10):
            path.write_bytes(data[:i] + bytes([data[i] ^ bit]) + data[i + 1:])
            try:
                program = load_chip(path)
            except ChipFormatError:
                continue
            loaded += 1
            assert program.manifest == original, (i, bit)  # the same numbers: the same program
    assert loaded <= 4


def test_the_base_files_load(base_files, tmp_path):
    for name, data in base_files.items():
        (tmp_path / name).write_bytes(data)
        assert isinstance(load_chip(tmp_path / name), ChipProgram)


def test_limits_are_checked_before_reading(tmp_path, base_files, monkeypatch):
    path = tmp_path / "f.chip"
    path.write_bytes(base_files["mlp"])
    monkeypatch.setattr(C, "MAX_TOTAL_ELEMENTS", 50)
    with pytest.raises(ChipFormatError, match=r"the tensors declare more than 50 elements in all \(the limit\)"):
        load_chip(path)
    monkeypatch.setattr(C, "MAX_HEADER_BYTES", 64)
    monkeypatch.setattr(C, "MAX_TOTAL_ELEMENTS", 16)
    with pytest.raises(ChipFormatError, match=r"the file has \d+ bytes, beyond the limit of 136 for a chip file"):
        load_chip(path)
    monkeypatch.undo()
    path.write_bytes(base_files["conv"])
    monkeypatch.setattr(C, "MAX_IM2COL", 2 * 9 * 36 - 1)  # conv 2 -> 4 channels, 3x3 kernel, 6x6 output
    with pytest.raises(ChipFormatError, match=r"im2col matrix has 648 elements per sample, beyond the limit of 647"):
        load_chip(path)
    monkeypatch.undo()
    monkeypatch.setattr(C, "MAX_POOL_TERMS", 4 * 4 * 9 - 1)  # sum pooling 2x2 of [4, 6, 6] -> [4, 3, 3]
    with pytest.raises(ChipFormatError, match=r"layers\[2\] \('net.2.0', sumpool2d\): the pooling sums 144 terms per "
                                              r"sample \(channels x kernel x output positions\), beyond the limit of 143"):
        load_chip(path)
    monkeypatch.undo()
    path.write_bytes(base_files["mlp"])
    monkeypatch.setattr(C, "MAX_LAYERS", 3)
    with pytest.raises(ChipFormatError, match=r"layers must be a list of 1 to 3 layers"):
        load_chip(path)
    with pytest.raises(FileNotFoundError):
        load_chip(tmp_path / "missing.chip")


def test_int28_saturation_of_currents_and_state(tmp_path):
    """8192 int8 inputs x int8 weights plus a bias exceed int28: the layer's current saturates, and so
    does the membrane sum ``v + u`` of the soft-reset neuron it drives."""
    torch.manual_seed(9)
    K = 8192
    signs = torch.randint(0, 2, (3, K)).float() * 2 - 1
    net = nn.Sequential(nn.Linear(K, 3), st.IF(v_threshold=60.0, v_reset=None))
    with torch.no_grad():
        net[0].weight.copy_(0.01 * signs)  # w_int = +-127
        net[0].bias.fill_(40.0)
    r = torch.rand(12, 4, 3, 1) * 2.3 - 1.0
    x = (r * signs).sum(2).clamp(-1, 1)  # [T, B, K]: neuron n gets about 82 * r_n + 40 (real units)
    q = quantized(net, x)
    with torch.no_grad():
        u = q.net[0](x)
    assert (u == Q.modules.INT28_MAX).any() and (u < Q.modules.INT28_MAX).any()  # the current saturates
    assert_round_trip(q, x, tmp_path / "sat.chip")
