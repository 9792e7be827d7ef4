"""spiketriton.quant against hostile input (issue 12): input the float model and the chip simulator
refuse, bad calibration data, scales out of float32's normal range, option types, corrupted and
crafted quantized-model files, and a bounded fuzz test of the file format (byte flips, truncations,
crafted headers), on the PyTorch path and the Triton path (interpreter on the CPU)."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import time

import numpy as np
import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import quant as Q

from helpers import calibrated, rewrite_quantized as rewrite

BACKENDS = ["triton", "torch"]


def mlp(seed=0, hidden=16):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(20, hidden), st.LIF(tau=2.0), nn.Linear(hidden, 10), st.LIF(tau=3.0, v_reset=None))
    with torch.no_grad():  # drive the network so that both layers fire
        net[0].weight.mul_(3.0)
        net[2].weight.mul_(4.0)
    return net


def run(q, x):
    q.reset()
    with torch.no_grad():
        out = q(x)
    q.reset()
    return out


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.rand(4, 3, 20) * 2


def quantized(x, backend="torch", seed=0, **cfg):
    return calibrated(mlp(seed), x, backend, **cfg).quantize()


# ------------------------------------------------------------------------------------------- #
# input of the quantized model: what the chip simulator refuses, refused on both paths
# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["quantize", "aware"])
def test_nan_input_is_refused_and_inf_saturates(x, backend, mode):
    q = getattr(calibrated(mlp(), x, backend), mode)()
    bad = x.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"QLinear 'net.0' \(an encoding layer\): the input holds NaN"):
        run(q, bad)
    # +-inf saturate to +-127, as on the chip: the same output as the largest finite value there
    inf, big = x.clone(), x.clone()
    inf[0, :, :4], big[0, :, :4] = float("inf"), 1e30
    inf[2, 1, 5], big[2, 1, 5] = -float("inf"), -1e30
    assert run(q, inf).sum() > 0
    assert torch.equal(run(q, inf), run(q, big))


@pytest.mark.parametrize("backend", BACKENDS)
def test_complex_rank_and_size_errors(x, backend):
    q = quantized(x, backend)
    with pytest.raises(TypeError, match=r"QLinear 'net.0': the input must hold real numbers .* got torch.complex64"):
        run(q, x.to(torch.complex64))
    with pytest.raises(ValueError, match=r"QLinear 'net.0': expected input \[T, B, \.\.\., 20\] .* got shape \(20,\)"):
        run(q, torch.rand(20))
    with pytest.raises(ValueError, match=r"QLinear 'net.0': expected input \[T, B, \.\.\., 20\] \(in_features = 20 "
                                         r"last, time first\), got shape \(4, 3, 19\)"):
        run(q, torch.rand(4, 3, 19))
    # the float model gives the same kind of answer for a wrong size (in float mode too, and named)
    with pytest.raises(ValueError, match=r"QLinear 'net.0': expected input \[\.\.\., 20\]"):
        run(q.restore_float(), torch.rand(4, 3, 19))


@pytest.mark.parametrize("shape", [(4, 0, 20), (0, 3, 20)], ids=["empty-batch", "no-steps"])
def test_empty_input_gives_empty_output_on_both_paths(x, shape):
    outs = [run(quantized(x, backend), torch.rand(shape)) for backend in BACKENDS]
    for out in outs:
        assert out.shape == shape[:2] + (10,)
    assert torch.equal(outs[0], outs[1])
    if shape[0] == 0:  # no steps, then the sequence: as if the empty call had not happened
        for backend in BACKENDS:
            q = quantized(x, backend)
            want = run(q, x)
            with torch.no_grad():
                q(torch.rand(0, 3, 20))
                assert torch.equal(q(x), want), backend


def test_both_paths_agree_on_non_binary_spikes(x):
    """A layer fed by spikes counts any nonzero value as a spike on both paths (the Triton path packs
    the input into bits, as spike_matmul defines it)."""
    q = quantized(x, "torch")
    layer = q.net[2]
    assert not layer.is_encoder
    s = (torch.rand(4, 3, 16) > 0.5).float() * torch.tensor([1.0, 2.0, -3.0, 0.5]).repeat(4)
    with torch.no_grad():
        layer.backend = "torch"
        a = layer(s)
        layer.backend = "triton"
        b = layer(s)
        want = layer((s != 0).float())
    assert torch.equal(a, b) and torch.equal(a, want)


def test_conv_input_errors():
    torch.manual_seed(0)
    net = nn.Sequential(st.StepWise(nn.Conv2d(2, 4, 3, padding=1)), st.LIF(), nn.Flatten(2), nn.Linear(4 * 16, 3),
                        st.LIF())
    x = torch.rand(3, 2, 2, 4, 4)
    q = calibrated(net, x, "torch").quantize()
    with pytest.raises(ValueError, match=r"QConv2d 'net.0.0': expected input \[T, B, 2, H, W\] or \[N, 2, H, W\] "
                                         r"\(in_channels = 2\), got shape \(6, 3, 4, 4\)"):
        q.net[0][0](torch.rand(6, 3, 4, 4))
    with pytest.raises(TypeError, match="real numbers"):
        run(q, x.to(torch.complex64))
    x_nan = x.clone()
    x_nan[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="holds NaN"):
        run(q, x_nan)


def test_qlif_takes_a_sequence():
    q = quantized(torch.rand(2, 2, 20))
    with pytest.raises(ValueError, match=r"QLIF 'net.1': the integer neuron takes the current \[T, B, \*features\]"):
        q.net[1](torch.zeros(16, dtype=torch.int32))


# ------------------------------------------------------------------------------------------- #
# calibration
# ------------------------------------------------------------------------------------------- #


def calibrate(batches, net=None):
    q = Q.prepare(net if net is not None else mlp())
    q.collect_q_params()
    with torch.no_grad():
        for b in batches:
            q(b)
            q.reset()
    return q


def test_calibration_data_must_be_finite_and_nonzero(x):
    with_inf, with_nan = x.clone(), x.clone()
    with_inf[0, 0, 0] = float("inf")
    with_nan[0, 0, 0] = float("nan")
    for batches, exc, msg in [
        ([x, with_inf], ValueError, r"QLinear 'net.0' \(an encoding layer\): the calibration data held an infinite "
                                    r"value \(largest \|input\| seen: inf\)"),
        ([with_nan, x], ValueError, r"QLinear 'net.0' \(an encoding layer\): the calibration data held NaN"),
        ([torch.zeros(2, 3, 20)] * 2, ValueError, r"its 2 calibration batch\(es\) held only zeros"),
        ([], RuntimeError, "saw no calibration data"),
        ([torch.zeros(2, 0, 20)], RuntimeError, "saw no calibration data"),  # an empty batch is no data
    ]:
        q = calibrate(batches)
        with pytest.raises(exc, match=msg):
            q.calculate_q_params()
    q = calibrate([torch.zeros(2, 0, 20), x])  # empty batches are skipped, the rest counts
    q.calculate_q_params()
    assert float(q.net[0].input_scale) == pytest.approx(127 / float(x.abs().max()))


def test_scales_outside_float32_normal_range_are_refused(x):
    # a calibration range whose int8 scale overflows float32 (127 / 1e-39 = inf)
    q = calibrate([torch.full((2, 3, 20), 1e-39)])
    with pytest.raises(ValueError, match=r"QLinear 'net.0': the int8 input scale 127 / 1e-39 .* outside the "
                                         r"normal float32 range"):
        q.calculate_q_params()
    # a huge range whose current scale w_scale x input_scale underflows (3e38 -> 4e-37 x a small s_w)
    net = mlp()
    with torch.no_grad():
        net[0].weight.mul_(1e30)
    q = calibrate([torch.full((2, 3, 20), 3e38)], net)
    with pytest.raises(ValueError, match=r"QLinear 'net.0': the current scale S = w_scale x input_scale is .* outside "
                                         r"the normal float32 range"):
        q.calculate_q_params()


def test_nan_weights_and_bias_are_refused_with_the_layer_name(x):
    for what in ("weight", "bias"):
        net = mlp()
        with torch.no_grad():
            getattr(net[2], what)[0] = float("nan")
        q = calibrate([x], net)
        with pytest.raises(ValueError, match=f"QLinear 'net.2': .*(weights contain inf or NaN|the bias holds NaN)"):
            q.calculate_q_params()
    # weights that go NaN after calibration (e.g. in QAT) are refused by quantize() and by the save
    q = calibrated(mlp(), x, "torch")
    with torch.no_grad():
        q.net[0].bias[1] = float("inf")
    with pytest.raises(ValueError, match="QLinear 'net.0': the bias holds NaN or inf"):
        q.quantize()
    with pytest.raises(ValueError, match=r"save_quantized_model: net.0.bias holds NaN or inf"):
        q.save_quantized_model("never-written.safetensors")
    assert not os.path.exists("never-written.safetensors")


# ------------------------------------------------------------------------------------------- #
# option types
# ------------------------------------------------------------------------------------------- #


def test_prepare_and_config_option_types():
    net = mlp()
    with pytest.raises(TypeError, match="prepare: model must be a torch.nn.Module .* got NoneType"):
        Q.prepare(None)
    with pytest.raises(TypeError, match="QuantConfig: per_channel must be True or False, got 'no'"):
        Q.prepare(net, per_channel="no")
    with pytest.raises(TypeError, match=r"prepare: unknown option\(s\) \['bitz'\]; .* \['bits', 'per_channel', "
                                        r"'pow2', 'even_shift'\]"):
        Q.prepare(net, bitz=4)
    with pytest.raises(TypeError, match="give either config= or the options"):
        Q.prepare(net, config=Q.QuantConfig(), bits=4)
    with pytest.raises(TypeError, match="config must be a spiketriton.quant.QuantConfig or None, got dict"):
        Q.prepare(net, config={"bits": 4})
    for field in ("per_channel", "pow2", "even_shift"):
        for bad in (1, 0, "yes", None, torch.tensor(True), np.bool_(True)):  # strict: Python bools only
            with pytest.raises(TypeError, match=f"QuantConfig: {field} must be True or False"):
                Q.QuantConfig(**{field: bad})
    for bad in (True, 8.0, "8", np.int64(8), 9):
        with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
            Q.QuantConfig(bits=bad)
    with pytest.raises(TypeError, match="weight_scale: pow2 must be True or False"):
        Q.weight_scale(torch.randn(3, 4), pow2="no")


def test_module_option_types():
    with pytest.raises(TypeError, match="QLinear: config must be a spiketriton.quant.QuantConfig"):
        Q.QLinear(3, 4, config="per_channel")
    with pytest.raises(ValueError, match=r"QLinear: backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"):
        Q.QLinear(3, 4, backend="cuda")
    with pytest.raises(ValueError, match="QConv2d: backend must be one of"):
        Q.QConv2d(1, 2, 3, backend=None)
    with pytest.raises(ValueError, match="QLIF: backend must be one of"):
        Q.QLIF(backend="gpu")
    with pytest.raises(TypeError, match="QLIF: detach_reset must be True or False, got 'no'"):
        Q.QLIF(detach_reset="no")
    for name in ("v_th0", "v_leaky_alpha", "v_leaky_beta", "v_reset", "dv", "v_th_incre"):
        for bad in ("0.5", True, torch.tensor([0.5, 0.5]), None):
            with pytest.raises(TypeError, match=f"QLIF: {name} must be a real number"):
                Q.QLIF(**{name: bad})
    with pytest.raises(ValueError, match="v_leaky_alpha must be finite"):
        Q.QLIF(v_leaky_alpha=float("nan"))
    Q.QLIF(v_th0=np.float32(1.0), v_leaky_alpha=np.float64(0.5), ref_len=2)  # numpy reals are real numbers


def test_quantizer_primitives_refuse_bad_scales_and_nan():
    x = torch.tensor([0.5, -1.0, 2.0])
    for bad in (0.0, -1.0, float("nan"), float("inf"), torch.tensor(0.0), torch.tensor([1.0, float("nan"), 1.0])):
        with pytest.raises(ValueError, match="scale must be finite and > 0"):
            Q.quantize(x, bad)
        with pytest.raises(ValueError, match="scale must be finite and > 0"):
            Q.fake_quant(x, bad)
    with pytest.raises(ValueError, match=r"at most 6.55e\+04 in torch.float16"):
        Q.fake_quant(x.half(), 1e6)  # the scale would overflow to inf in x's dtype
    with pytest.raises(TypeError, match="scale must be a number or a tensor, got str"):
        Q.quantize(x, "2")
    with pytest.raises(ValueError, match="quantize: x holds NaN"):
        Q.quantize(torch.tensor([1.0, float("nan")]), 2.0)
    with pytest.raises(TypeError, match="x must be a real"):
        Q.quantize(x.to(torch.complex64), 2.0)
    assert Q.quantize(torch.tensor([float("inf"), -float("inf")]), 2.0).tolist() == [127, -127]


# ------------------------------------------------------------------------------------------- #
# the file: checksums and cross-checks
# ------------------------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def saved(tmp_path_factory, x):
    d = tmp_path_factory.mktemp("qfile")
    q = quantized(x, "torch", per_channel=True)
    path = d / "q.safetensors"
    q.save_quantized_model(path)
    return path, q, run(q, x)


def fresh():
    return Q.prepare(mlp(seed=5))  # same architecture, other weights


def test_round_trip_on_both_paths(saved, x):
    path, q, want = saved
    assert want.sum() > 0
    for backend in BACKENDS:
        m = fresh()
        for mod in m.modules():
            if hasattr(mod, "backend"):
                mod.backend = backend
        Q.load_quantized_model(path, m)
        assert torch.equal(run(m, x), want), backend


def test_int8_minus_128_is_out_of_range(saved, tmp_path, x):
    path, q, _ = saved
    w = q.net[0].weight_int.clone()
    w[0, 0] = -128  # (-128).abs() is -128 in int8: the range check widens first
    bad = rewrite(path, tmp_path / "m128.safetensors", tensors={"net.0.weight_int": w})
    with pytest.raises(Q.QuantFormatError, match=r"net.0.weight_int holds 128, beyond \+-127 for 8-bit weights"):
        Q.load_quantized_model(bad, fresh())
    # also in a float-mode file (its stale integers are not cross-checked, their range is)
    f = quantized(x, "torch").restore_float()
    f.save_quantized_model(tmp_path / "float.safetensors")
    w = f.net[2].weight_int.clone()
    w[1, 1] = -128
    bad = rewrite(tmp_path / "float.safetensors", tmp_path / "f128.safetensors", tensors={"net.2.weight_int": w})
    with pytest.raises(Q.QuantFormatError, match=r"net.2.weight_int holds 128, beyond \+-127"):
        Q.load_quantized_model(bad, fresh())


def test_crafted_values_behind_a_valid_checksum(saved, tmp_path):
    path, q, _ = saved
    L0, L2 = q.net[0], q.net[2]
    w_off = L2.weight_int.clone()
    w_off[3, 2] += 1 if w_off[3, 2] < 127 else -1
    b_off = L0.bias_int.clone()
    b_off[0] += 1
    cases = [
        ({"net.2.w_scale": L2.w_scale * 1000}, r"net.2.weight_int is not the int8 rounding|net.2.w_scale .* is not the "
                                               r"scale of the saved weights"),
        ({"net.0.w_scale": L0.w_scale * 1.01}, r"net.0.w_scale .* is not the scale of the saved weights"),
        ({"net.2.weight_int": w_off}, r"net.2.weight_int is not the int8 rounding of the saved float weights"),
        ({"net.0.bias_int": b_off}, r"net.0.bias_int is not the rounding of the saved bias"),
        ({"net.0.input_scale": L0.input_scale * 2}, r"net.0.input_scale .* must be 127 / input_amax"),
        ({"net.2.input_scale": torch.tensor(1.0)}, r"net.2.input_amax and input_scale must be 0 for a layer fed by "
                                                   r"spikes"),
        ({"net.0.w_scale": torch.full_like(L0.w_scale, 1e-40)}, r"net.0.w_scale must be a normal float32 > 0"),
        ({"net.0.weight": q.net[0].weight.t().contiguous()}, r"net.0.weight has shape \(20, 16\) in the file"),
        ({"net.0.w_scale": L0.w_scale[:3]}, r"net.0.w_scale has shape \(3,\), expected one of \[\(16,\)\]"),
        ({"net.0.weight_int": L0.weight_int.float()}, r"net.0.weight_int is torch.float32 in the file, the model has "
                                                      r"torch.int8"),
        ({"net.0.weight": torch.full_like(q.net[0].weight, float("nan"))}, r"net.0.weight holds NaN or inf"),
    ]
    for i, (tensors, msg) in enumerate(cases):
        bad = rewrite(path, tmp_path / f"c{i}.safetensors", tensors=tensors)
        with pytest.raises(Q.QuantFormatError, match=msg):
            Q.load_quantized_model(bad, fresh())
    # without re-signing, the checksum answers first
    bad = rewrite(path, tmp_path / "unsigned.safetensors", tensors={"net.2.w_scale": L2.w_scale * 1000}, sign=False)
    with pytest.raises(Q.QuantFormatError, match="tensor_sha256 \\(corrupted file\\)"):
        Q.load_quantized_model(bad, fresh())


def test_pow2_scales_are_cross_checked(tmp_path, x):
    q = quantized(x, "torch", pow2=True, even_shift=True)
    q.save_quantized_model(tmp_path / "p.safetensors")
    m = Q.load_quantized_model(tmp_path / "p.safetensors", fresh())
    assert torch.equal(run(m, x), run(q, x))
    for factor in (16.0, 0.0625, 3.0):  # two steps off, or not a power of two
        bad = rewrite(tmp_path / "p.safetensors", tmp_path / "pbad.safetensors",
                      tensors={"net.2.w_scale": q.net[2].w_scale * factor})
        with pytest.raises(Q.QuantFormatError, match=r"net.2.w_scale .* is not the power-of-two scale"):
            Q.load_quantized_model(bad, fresh())


def test_manifest_cross_checks(saved, tmp_path):
    path, q, _ = saved
    meta = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["spiketriton"])
    layers = meta["layers"]
    cases = [
        ({"version": 1}, r"format version 1 \(written by spiketriton 0.1 before files had checksums\) is no longer "
                         r"read: recreate the file"),
        ({"version": True}, "format version True is not supported"),
        ({"mode": 3}, r"mode is 3, expected one of"),
        ({"layers": []}, "layers must be a JSON object"),
        ({"layers": {**layers, "net.0": {**layers["net.0"], "bits": "8"}}}, "net.0: bits must be an integer"),
        ({"layers": {**layers, "net.0": {**layers["net.0"], "per_channel": "no"}}},
         "per_channel must be true or false"),
        ({"layers": {**layers, "net.0": {**layers["net.0"], "bits": 9}}}, "bad configuration for layer net.0"),
        ({"layers": {**layers, "net.2": {**layers["net.2"], "is_encoder": True}}},
         "layer net.2 has is_encoder=True in the file, False in the model"),
        ({"layers": {k: v for k, v in layers.items() if k != "net.2"}}, "does not match the model: its layers are"),
        ({"extra": 1}, r"unexpected fields \['extra'\]"),
        ({"producer": 7}, "producer must be a string"),
    ]
    for i, (change, msg) in enumerate(cases):
        bad = rewrite(path, tmp_path / f"m{i}.safetensors", meta=change)
        with pytest.raises(Q.QuantFormatError, match=msg):
            Q.load_quantized_model(bad, fresh())


def test_a_failed_load_leaves_the_model_alone(saved, tmp_path, x):
    path, q, want = saved
    target = quantized(x, "torch", seed=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    out_before = run(target, x)
    bad = rewrite(path, tmp_path / "late.safetensors", tensors={"net.2.bias_int": q.net[2].bias_int + 1})
    with pytest.raises(Q.QuantFormatError, match="bias_int is not the rounding"):
        Q.load_quantized_model(bad, target)
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert target.q_mode == "quantized" and torch.equal(run(target, x), out_before)


def test_size_limit_and_type_errors(saved, tmp_path):
    path, q, _ = saved
    big = tmp_path / "big.safetensors"
    big.write_bytes(path.read_bytes())
    os.truncate(big, 64 << 20)  # sparse: refused by its size before a byte is read
    t0 = time.monotonic()
    with pytest.raises(Q.QuantFormatError, match=r"the file has 67108864 bytes, more than a file of this model can "
                                                 r"hold"):
        Q.load_quantized_model(big, fresh())
    assert time.monotonic() - t0 < 5
    with pytest.raises(TypeError, match="qmodel must be a QModel"):
        Q.load_quantized_model(path, mlp())
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        Q.load_quantized_model(3, fresh())
    with pytest.raises(TypeError, match="save_quantized_model: path must be a str or os.PathLike"):
        q.save_quantized_model(None)


def test_bfloat16_model_round_trip(tmp_path, x):
    q = calibrated(mlp().to(torch.bfloat16), x.to(torch.bfloat16), "torch").quantize()
    q.save_quantized_model(tmp_path / "bf16.safetensors")
    m = Q.load_quantized_model(tmp_path / "bf16.safetensors", Q.prepare(mlp(seed=4).to(torch.bfloat16)))
    xb = x.to(torch.bfloat16)
    assert torch.equal(run(m, xb), run(q, xb))
    with pytest.raises(Q.QuantFormatError, match=r"net.0.bias is torch.bfloat16 in the file, the model has "
                                                  r"torch.float32"):
        Q.load_quantized_model(tmp_path / "bf16.safetensors", fresh())


# ------------------------------------------------------------------------------------------- #
# fuzz: byte flips, truncations, crafted headers (bounded: fixed seed, fixed count, an alarm per case)
# ------------------------------------------------------------------------------------------- #


def _alarm(signum, frame):
    raise TimeoutError("load_quantized_model took more than 10 s on one file")


def _header(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])


def _with_header(data: bytes, header: dict) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data[8 + n:]


def _with_entry(data: bytes, header: dict, name: str, **change) -> bytes:
    return _with_header(data, {**header, name: {**header[name], **change}})


def _crafted(path, tmp_path, q):
    """Valid safetensors (or nearly) with one thing wrong each."""
    from safetensors.torch import save

    data = path.read_bytes()
    h = _header(data)
    meta = json.loads(h["__metadata__"]["spiketriton"])
    L0 = q.net[0]
    out = {
        "missing_tensor": rewrite(path, tmp_path / "x1", drop=["net.2.bias_int"]).read_bytes(),
        "extra_tensor": rewrite(path, tmp_path / "x2", tensors={"net.9.weight": torch.zeros(2)}).read_bytes(),
        "wrong_dtype": rewrite(path, tmp_path / "x3", tensors={"net.0.bias": L0.bias.double()}).read_bytes(),
        "wrong_shape": rewrite(path, tmp_path / "x4", tensors={"net.0.bias_int": L0.bias_int[:5]}).read_bytes(),
        "unsigned_wrong_shape": rewrite(path, tmp_path / "x5", tensors={"net.0.bias": L0.bias[:5]},
                                        sign=False).read_bytes(),
        "huge_header_length": struct.pack("<Q", 1 << 60) + data[8:],
        "header_length_past_end": struct.pack("<Q", len(data)) + data[8:],
        "metadata_not_json": rewrite(path, tmp_path / "x6", metadata={"spiketriton": "{not json"}).read_bytes(),
        "metadata_nan": rewrite(path, tmp_path / "x7", metadata={
            "spiketriton": json.dumps(meta).replace('"version": 2', '"version": NaN')}).read_bytes(),
        "metadata_a_list": rewrite(path, tmp_path / "x8", metadata={"spiketriton": "[1, 2]"}).read_bytes(),
        "metadata_extra_key": rewrite(path, tmp_path / "x9", metadata={"spiketriton": json.dumps(meta),
                                                                       "other": "x"}).read_bytes(),
        "metadata_wrong_types": rewrite(path, tmp_path / "x10", meta={"layers": "net.0", "tensors": []}).read_bytes(),
        "no_metadata": save({"a": torch.zeros(2)}),
        "header_not_utf8": data[:8] + b"\xff" + data[9:],
        "header_duplicate_key": _with_header(data, h).replace(b'"__metadata__"', b'"__metadata__": {}, "__metadata__"',
                                                              1),
        "header_bad_offsets": _with_entry(data, h, "net.0.bias", data_offsets=[0, 1 << 40]),
        "header_bad_dtype": _with_entry(data, h, "net.0.bias", dtype="Q99"),
        "header_dtype_torch_lacks": _with_entry(data, h, "net.0.bias", dtype="F4"),
        "header_shape_overflows": _with_entry(data, h, "net.0.bias", shape=[2**40, 2**40]),
        "header_shape_negative": _with_entry(data, h, "net.0.bias", shape=[-16]),
        "empty": b"",
        "appended": data + b"\0" * 16,
    }
    # the duplicate-key header no longer has its length right: fix the length field
    dup = out["header_duplicate_key"]
    body_len = len(dup) - 8 - len(data[8 + struct.unpack("<Q", data[:8])[0]:])
    out["header_duplicate_key"] = struct.pack("<Q", body_len) + dup[8:]
    return out


def test_fuzz_file_format(saved, tmp_path, x):
    """Every damaged file gives QuantFormatError, or loads a model whose outputs equal the original's;
    within 10 s each, ~20 s in all."""
    path, q, want = saved
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    rng = random.Random(12)
    cases = {}
    # single-byte flips: the length field, the header (the tensor table and the manifest), the data
    positions = sorted(set(range(8)) | set(rng.sample(range(8, 8 + n), 90)) | set(rng.sample(range(8 + n, len(data)),
                                                                                           40)))
    for p in positions:
        b = bytearray(data)
        b[p] ^= rng.randrange(1, 256)
        cases[f"flip@{p}"] = bytes(b)
    for cut in sorted(set(rng.sample(range(len(data)), 25)) | {0, 7, 8, 8 + n - 1, 8 + n, len(data) - 1}):
        cases[f"truncated@{cut}"] = data[:cut]
    cases.update(_crafted(path, tmp_path, q))
    loaded, refused = [], []
    old = signal.signal(signal.SIGALRM, _alarm)
    t0 = time.monotonic()
    try:
        for name, blob in cases.items():
            f = tmp_path / "case.safetensors"
            f.write_bytes(blob)
            m = fresh()
            signal.alarm(10)
            try:
                Q.load_quantized_model(f, m)
            except Q.QuantFormatError as e:
                refused.append((name, str(e)))
                continue
            finally:
                signal.alarm(0)
            loaded.append(name)
            assert torch.equal(run(m, x), want), f"{name} loaded and changed the outputs"
    finally:
        signal.signal(signal.SIGALRM, old)
    elapsed = time.monotonic() - t0
    for name in ("missing_tensor", "extra_tensor", "wrong_dtype", "wrong_shape", "huge_header_length",
                 "metadata_not_json", "metadata_wrong_types", "appended"):
        assert name in dict(refused), f"{name} was not refused"
    print(f"{len(cases)} cases: {len(refused)} refused, {len(loaded)} loaded with the same outputs {loaded}")
    assert len(refused) > 0.9 * len(cases), (len(refused), len(cases), loaded)
    assert elapsed < 20, elapsed


# ------------------------------------------------------------------------------------------- #
# same class, elsewhere
# ------------------------------------------------------------------------------------------- #


def test_int32_accumulation_limit_routes_to_the_exact_path(x, monkeypatch):
    from spiketriton.functional import ops as OPS
    from spiketriton.quant import modules as QM
    from spiketriton.spec import INT28_MAX

    k = (2**31 - 1 - INT28_MAX) // 127
    assert QM.int32_accumulates(k, 8) and not QM.int32_accumulates(k + 1, 8)
    q = quantized(x, "triton")
    want = run(q, x)
    monkeypatch.setattr(QM, "int32_accumulates", lambda K, bits: False)  # as if K were ~16 M

    def boom(*a):
        raise AssertionError("the int32 kernel ran past its accumulation limit")

    monkeypatch.setattr(OPS, "call_spike_matmul_int", boom)
    assert torch.equal(run(q, x), want)  # the float64 path: the same integers


def test_input_on_another_device_and_empty_weights(x):
    q = quantized(x, "torch")
    with pytest.raises(ValueError, match=r"QLinear 'net.0': the input is on meta, the layer on cpu"):
        run(q, x.to("meta"))
    assert float(Q.weight_scale(torch.empty(0, 5))) == 1.0
    assert Q.weight_scale(torch.empty(3, 0), per_channel=True).tolist() == [1.0, 1.0, 1.0]


def test_prepare_names_the_module_it_cannot_convert():
    net = nn.Sequential(nn.Linear(4, 3), st.PLIF())
    with torch.no_grad():
        net[1].w.fill_(float("nan"))
    with pytest.warns(UserWarning, match="PLIF's learnable tau"):
        with pytest.raises(ValueError, match=r"prepare: cannot convert 1 \(PLIF\): QLIF: v_leaky_alpha must be finite"):
            Q.prepare(net)
    with pytest.raises(TypeError, match="QLinear.from_float: expected an nn.Linear, got Conv2d"):
        Q.QLinear.from_float(nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="QConv2d.from_float: expected an nn.Conv2d, got Linear"):
        Q.QConv2d.from_float(nn.Linear(1, 1))


def test_save_refuses_what_the_loader_would_refuse(tmp_path, x):
    q = quantized(x, "torch")
    with torch.no_grad():
        q.net[2].weight.mul_(1.5)  # changed after quantize(): the frozen integers are no longer theirs
    with pytest.raises(ValueError, match=r"save_quantized_model: net.2.w_scale .* is not the scale of the saved "
                                         r"weights .* run calculate_q_params\(\) / quantize\(\) again"):
        q.save_quantized_model(tmp_path / "stale.safetensors")
    assert not (tmp_path / "stale.safetensors").exists()
    q.quantize()
    q.save_quantized_model(tmp_path / "fresh.safetensors")
    assert torch.equal(run(Q.load_quantized_model(tmp_path / "fresh.safetensors", fresh()), x), run(q, x))


def test_a_failed_save_leaves_no_file(tmp_path, x, monkeypatch):
    q = quantized(x, "torch")
    path = tmp_path / "q.safetensors"
    q.save_quantized_model(path)
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # the data reached no disk
    with pytest.raises(OSError, match="save_quantized_model: cannot write"):
        q.restore_float().save_quantized_model(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["q.safetensors"]


def test_quantized_forward_value_checks_cost_one_sync_each(x, monkeypatch):
    """The integer forward reads tensor values (a host sync each) once per encoding layer (NaN) and once
    per QLIF (its constants within int28, all in one check; it was one per constant)."""
    from spiketriton.quant import modules as QM

    for backend in BACKENDS:
        q = quantized(x, backend)
        calls = []
        real = QM.require
        monkeypatch.setattr(QM, "require", lambda ok, *a, **k: (calls.append(ok.numel()), real(ok, *a, **k)))
        run(q, x)
        monkeypatch.setattr(QM, "require", real)
        assert len(calls) == 1 + 2, (backend, calls)  # net.0's NaN check; net.1's and net.3's constants
