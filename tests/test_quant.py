"""spiketriton.quant: prepare(), the calibration flow, integer inference bit for bit against an
independent integer reference, QAT (aware) equal to integer inference, per-channel scales, Conv2d +
BatchNorm folding, save/load, bad input, and the load_digits accuracy acceptance."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import quant as Q

import helpers

BACKENDS = ["triton", "torch"]


def calibrated(model, x, backend="torch", **cfg):
    return helpers.calibrated(model, x, backend, **cfg)


def mlp(seed=0, hidden=48):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(20, hidden), st.LIF(tau=2.0), nn.Linear(hidden, 10), st.LIF(tau=3.0, v_reset=None))
    with torch.no_grad():  # drive the network so that both layers fire
        net[0].weight.mul_(3.0)
        net[2].weight.mul_(4.0)
    return net


def record_spikes(q, x):
    out = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: out.__setitem__(name, o.detach().clone()))
             for name, m in q.named_modules() if isinstance(m, Q.QLIF)]
    with torch.no_grad():
        q(x)
    for h in hooks:
        h.remove()
    q.reset()
    return out


# ------------------------------------------------------------------------------------------- #
# integer inference vs an independent integer reference
# ------------------------------------------------------------------------------------------- #


def plain_integer_mlp(q, x):
    """The quantized MLP written out with Python ints: int8 input, int8 weights, int32 bias, the
    integer family-B neuron with int28 saturation and floor leak. Independent of the package's code
    paths; it reads only the frozen integers and constants."""
    L1, N1, L2, N2 = q.net[0], q.net[1], q.net[2], q.net[3]
    lo, hi = -(2**27), 2**27 - 1
    sat = lambda v: max(lo, min(hi, v))  # noqa: E731
    s_in = float(L1.input_scale)
    T, B, _ = x.shape

    def layer(inp, L):  # inp: [B][K] ints
        W, b = L.weight_int.tolist(), L.bias_int.tolist()
        return [[sum(w * v for w, v in zip(W[n], row)) + b[n] for n in range(len(W))] for row in inp]

    def neuron(N, L):
        S = L.current_scale()
        c = N.int_constants(S, (B, L.out_features))
        get = lambda k, n: int(c[k].reshape(-1)[n if c[k].numel() > 1 else 0]) if torch.is_tensor(c[k]) else c[k]  # noqa: E731
        return get, N.spec

    st_ = {}
    outs = {"net.1": [], "net.3": []}
    for t in range(T):
        row = [[max(-127, min(127, round(v * s_in))) for v in r] for r in x[t].double().tolist()]
        # Python's round is half-to-even like torch.round
        cur = layer(row, L1)
        for name, L, N in (("net.1", L1, N1), ("net.3", L2, N2)):
            get, spec = neuron(N, L)
            spikes = []
            for bi in range(B):
                srow = []
                for n in range(len(cur[bi])):
                    v = st_.get((name, bi, n), get("v_init", n))
                    vth = max(sat(get("v_th0", n)), get("v_l", n))
                    h = sat(cur[bi][n] + v)
                    s = h > vth
                    v2 = (get("v_reset", n) if spec.reset_mode == 0 else sat(h - vth)) if s else h
                    v = max(sat((v2 * get("alpha_q", n)) // 256 + get("beta_q", n)), get("v_l", n))
                    st_[(name, bi, n)] = v
                    srow.append(int(s))
                spikes.append(srow)
            outs[name].append(spikes)
            if name == "net.1":
                cur = layer(spikes, L2)
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in outs.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_integer_inference_is_bit_exact(backend, per_channel, device):
    net = mlp().to(device)
    x = torch.rand(5, 3, 20, device=device) * 2
    q = calibrated(net, x, backend, per_channel=per_channel).quantize()
    got = record_spikes(q, x)
    want = plain_integer_mlp(q, x.cpu())
    for name in want:
        assert torch.equal(got[name].cpu(), want[name]), name
    assert 0 < float(got["net.1"].mean()) < 1 and float(got["net.3"].sum()) > 0  # both layers fire


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("bits", [8, 4])
def test_aware_equals_quantized_and_trains(per_channel, bits, device):
    net = mlp(1).to(device)
    x = torch.rand(6, 4, 20, device=device) * 2
    q = calibrated(net, x, bits=bits, per_channel=per_channel)
    q.quantize()
    want = record_spikes(q, x)
    q.aware()
    got = record_spikes(q, x)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # gradients reach every weight and bias through the straight-through estimators
    out = q(x).mean(0)
    out.sum().backward()
    for name, p in q.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.filterwarnings("ignore:prepare. PLIF's learnable tau is fixed")
def test_prepare_keeps_the_float_model(device):
    for neuron in (lambda: st.LIF(tau=2.0), lambda: st.LIF(tau=2.5, decay_input=False, v_reset=None),
                   lambda: st.IF(), lambda: st.PLIF(init_tau=3.0),
                   lambda: st.ExtendedLIF(v_th0=0.9, v_leaky_alpha=0.8, v_leaky_beta=0.05, ref_len=1)):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(12, 16), neuron(), nn.Linear(16, 4), neuron()).to(device)
        x = torch.rand(6, 3, 12, device=device) * 2
        want = net(x)
        st.reset(net)
        q = Q.prepare(net)
        got = q(x)
        # identical except where H equals the threshold exactly (the chip's threshold is strict)
        assert (got != want).float().mean() < 0.01, type(net[1]).__name__
        assert isinstance(q.net[1], Q.QLIF) and isinstance(q.net[0], Q.QLinear)
        assert torch.equal(net[0].weight, net[0].weight)  # the original is untouched (prepare copies)


def test_conv_batchnorm_folding_and_per_channel(device):
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), st.LIF(),
                                          nn.Conv2d(6, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), st.IF())
            self.head = nn.Sequential(nn.Flatten(2), nn.Linear(4 * 5 * 5, 3), st.LIF())

        def forward(self, x):  # x [T, B, C, H, W]
            T, B = x.shape[:2]
            y = self.features[0](x.flatten(0, 1))
            y = self.features[1](y)
            y = self.features[2](y.unflatten(0, (T, B)))
            y = self.features[3](y.flatten(0, 1))
            y = self.features[4](y)
            y = self.features[5](y.unflatten(0, (T, B)))
            return self.head(y)

    net = Net().to(device)
    for bn in (net.features[1], net.features[4]):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    net.eval()
    x = torch.rand(3, 2, 2, 5, 5, device=device) * 3
    want = net(x)
    st.reset(net)
    # the fx-traced forward feeds Conv2d with [T*B, C, H, W]: prepare folds BN inside the Sequential
    q = Q.prepare(net, per_channel=True)
    assert isinstance(q.net.features[1], nn.Identity) and isinstance(q.net.features[4], nn.Identity)
    got = q(x)
    assert (got != want).float().mean() < 0.02
    q.reset()
    q.collect_q_params()
    q(x)
    q.reset()
    q.calculate_q_params()
    assert q.net.features[0].w_scale.shape == (6,)
    q.quantize()
    want_q = record_spikes(q, x)
    q.aware()
    got_q = record_spikes(q, x)
    for name in want_q:
        assert torch.equal(got_q[name], want_q[name]), name


def test_saturation_at_int28(device):
    # a large negative current drives the integer state to -2^27, where it saturates instead of wrapping
    lif = Q.QLIF(v_th0=1.0)
    lin = Q.QLinear(64, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(0.0)

    class Net(Q.QModel):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(lin, lif)

        def forward(self, x):
            return self.seq(x)

    q = Net().to(device)
    q.collect_q_params()
    x = torch.full((300, 1, 64), -100.0, device=device)  # -64 * 127 * 127 per step: past -2^27 in ~130 steps
    q(x[:1])
    q.reset()
    q.calculate_q_params()
    for mode in (q.quantize, q.aware):
        mode()
        q(x[:100])
        assert -(2**27) < float(lif.v.detach().min()) < 0
        q(x[100:])
        assert float(lif.v.detach().min()) == -(2**27)  # saturated, not wrapped to a positive value
        q.reset()


def test_linking_uses_the_data_flow():
    class Plain(nn.Module):  # not a Sequential: linked through torch.fx
        def __init__(self):
            super().__init__()
            self.fc, self.lif, self.out, self.lif2 = nn.Linear(8, 8), st.LIF(), nn.Linear(8, 3), st.LIF()

        def forward(self, x):
            return self.lif2(self.out(self.lif(self.fc(x))))

    q = Q.prepare(Plain())
    q.collect_q_params()
    assert q.net.lif.feeder is q.net.fc and q.net.lif2.feeder is q.net.out
    assert q.net.fc.is_encoder and not q.net.out.is_encoder

    class Residual(nn.Module):  # the neuron integrates layer output + raw input: no integer link exists
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(8, 8), st.IF())

        def forward(self, x):
            return self.seq[1](self.seq[0](x) + x)

    with pytest.raises(RuntimeError, match="not fed directly by a QLinear/QConv2d"):
        Q.prepare(Residual()).collect_q_params()
    nested = nn.Sequential(nn.Sequential(nn.Linear(8, 8), st.LIF()), nn.Sequential(nn.Linear(8, 3), st.LIF()))
    q = Q.prepare(nested)
    q.collect_q_params()
    assert q.net[0][0].is_encoder and not q.net[1][0].is_encoder


def test_aware_equals_quantized_at_the_edges():
    # a readout whose integer current saturates at int28, weights whose float32 products misround,
    # and quantize() after QAT steps (the scales follow the trained weights)
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(10000, 1))  # an encoder readout: 10000 * 127 * 127 > 2^27
    with torch.no_grad():
        big[0].weight.fill_(1.0)
        big[0].bias.fill_(0.0)
    x = torch.ones(2, 1, 10000)
    q = calibrated(big, x)
    outs = []
    for mode in (q.quantize, q.aware):
        mode()
        outs.append(q(x).detach())
        q.reset()
    assert torch.equal(outs[0], outs[1])
    assert float(outs[0].max()) < 10000  # saturated at int28 (2^27 / 127^2 = 8321.5), in both modes
    net = mlp(4)
    xs = torch.rand(5, 3, 20) * 2
    q = calibrated(net, xs).aware()
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    for _ in range(3):
        q(xs).mean().backward()
        opt.step()
        opt.zero_grad()
        q.reset()
    want = record_spikes(q, xs)
    q.quantize()
    got = record_spikes(q, xs)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_constants_beyond_int28_are_an_error():
    net = nn.Sequential(nn.Linear(1000, 16), st.IF())
    with torch.no_grad():
        net[0].weight.uniform_(0, 0.01)
    q = calibrated(net, torch.rand(2, 1, 1000) * 0.01)
    with pytest.raises(ValueError, match="v_th0 = 1.0 is .* beyond int28"):
        q.quantize()(torch.rand(2, 1, 1000) * 0.01)


# ------------------------------------------------------------------------------------------- #
# save / load and bad input
# ------------------------------------------------------------------------------------------- #


def test_save_load_round_trip(tmp_path, device):
    net = mlp(2).to(device)
    x = torch.rand(5, 3, 20, device=device) * 2
    q = calibrated(net, x, per_channel=True, bits=6).quantize()
    want = record_spikes(q, x)
    path = tmp_path / "net.safetensors"
    q.save_quantized_model(str(path))
    raw = path.read_bytes()
    assert b"pickle" not in raw[:4096] and raw[8:9] == b"{"  # safetensors header, no pickle
    fresh = Q.prepare(mlp(3))  # other weights, same architecture
    Q.load_quantized_model(str(path), fresh.to(device))
    assert fresh.q_mode == "quantized"
    got = record_spikes(fresh, x)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert fresh.net[0].qconfig == Q.QuantConfig(bits=6, per_channel=True)


def test_load_rejects_other_files(tmp_path):
    net = mlp()
    x = torch.rand(3, 2, 20)
    q = calibrated(net, x)
    path = tmp_path / "q.safetensors"
    q.save_quantized_model(str(path))
    # crafted files with valid checksums: the checks behind the checksum answer
    for i, (change, msg) in enumerate([
        (dict(meta={"version": 99}), "format version 99 is not supported"),
        (dict(meta={"format": "other"}), "not a spiketriton.quant file"),
        (dict(drop=["net.0.weight"]), "the file does not match the model: missing \\['net.0.weight'\\]"),
    ]):
        bad = _tamper(path, tmp_path / f"bad{i}.safetensors", **change)
        with pytest.raises(Q.QuantFormatError, match=msg):
            Q.load_quantized_model(str(bad), Q.prepare(mlp()))
    (tmp_path / "trunc.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(Q.QuantFormatError, match="truncated: the header length field declares"):
        Q.load_quantized_model(str(tmp_path / "trunc.safetensors"), Q.prepare(mlp()))


def test_flow_errors():
    net = mlp()
    q = Q.prepare(net)
    with pytest.raises(RuntimeError, match="calculate_q_params\\(\\) before collect_q_params\\(\\)"):
        q.calculate_q_params()
    with pytest.raises(RuntimeError, match="quantize\\(\\) needs the quantization parameters"):
        q.quantize()
    q.collect_q_params()
    with pytest.raises(RuntimeError, match="encoding layer, fed by non-spike input\\) saw no calibration data"):
        q.calculate_q_params()
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        Q.prepare(net, bits=9)
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        Q.QuantConfig(bits=1)
    with pytest.raises(RuntimeError, match="not linked"):
        lif = Q.QLIF()
        lif.mode = Q.QUANTIZED
        lif(torch.zeros(2, 1, 3, dtype=torch.int32))


# ------------------------------------------------------------------------------------------- #
# acceptance: load_digits
# ------------------------------------------------------------------------------------------- #


@pytest.mark.slow
def test_digits_float_ptq_qat_accuracy():
    """Float >= 93%; PTQ int8 loses <= 2 points; QAT int8 within 1 point of float; 4-bit within 3."""
    pytest.importorskip("sklearn")
    from spiketriton.demo import encode, load_data

    torch.manual_seed(0)
    xtr, ytr, xte, yte = load_data(0)
    T = 4

    def acc(model):
        with torch.no_grad():
            out = model(encode(xte, T)).mean(0)
        st.reset(model)
        return (out.argmax(1) == yte).float().mean().item()

    def train(model, epochs, lr):
        opt = torch.optim.Adam(model.parameters(), lr)
        g = torch.Generator().manual_seed(1)
        for _ in range(epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr), 64):
                idx = perm[i:i + 64]
                out = model(encode(xtr[idx], T)).mean(0)
                loss = nn.functional.mse_loss(out, nn.functional.one_hot(ytr[idx], 10).float())
                opt.zero_grad()
                loss.backward()
                opt.step()
                st.reset(model)

    net = nn.Sequential(nn.Linear(64, 256), st.LIF(backend="torch"), nn.Linear(256, 10), st.LIF(backend="torch"))
    train(net, 10, 1e-2)
    fp = acc(net)
    assert fp >= 0.93
    results = {}
    for bits in (8, 4):
        q = calibrated(net, encode(xtr, T), bits=bits)
        q.quantize()
        results[f"ptq{bits}"] = acc(q)
        q.aware()
        train(q, 3, 2e-3)
        q.calculate_q_params()
        q.quantize()
        results[f"qat{bits}"] = acc(q)
    assert results["ptq8"] >= fp - 0.02, (fp, results)
    assert results["qat8"] >= fp - 0.01, (fp, results)
    assert results["qat4"] >= fp - 0.03, (fp, results)


def test_prepare_leaves_the_global_rng_alone():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), st.LIF(), nn.Flatten(2), nn.Linear(2, 3), st.LIF())
    before = torch.get_rng_state()
    Q.prepare(net)
    assert torch.equal(torch.get_rng_state(), before)


# ------------------------------------------------------------------------------------------- #
# regressions from review
# ------------------------------------------------------------------------------------------- #


_tamper = helpers.rewrite_quantized  # a re-signed copy of a quantized file (tests/helpers.py)


def test_load_validates_values_and_neurons(tmp_path):
    x = torch.rand(4, 2, 20) * 2
    q = calibrated(mlp(), x, bits=4).quantize()
    path = tmp_path / "q.safetensors"
    q.save_quantized_model(str(path))
    cases = [
        (dict(tensors={"net.0.weight_int": torch.full_like(q.net[0].weight_int, 127)}), "beyond \\+-7 for 4-bit"),
        (dict(tensors={"net.2.w_scale": torch.tensor(float("nan"))}), "net.2.w_scale holds NaN or inf"),
        (dict(tensors={"net.0.input_scale": torch.tensor(0.0)}), "input_scale \\(0\\) must be 127 / input_amax"),
        (dict(meta={"mode": "bogus"}), "malformed manifest"),
        (dict(meta={"layers": []}), "malformed manifest"),
    ]
    for i, (change, msg) in enumerate(cases):
        bad = _tamper(path, tmp_path / f"bad{i}.safetensors", **change)
        with pytest.raises(ValueError, match=msg):
            Q.load_quantized_model(str(bad), Q.prepare(mlp()))
    other = nn.Sequential(nn.Linear(20, 48), st.LIF(tau=2.0, v_threshold=3.0), nn.Linear(48, 10),
                          st.LIF(tau=3.0, v_reset=None))
    with pytest.raises(ValueError, match="neuron net.1 in the file has other constants"):
        Q.load_quantized_model(str(path), Q.prepare(other))


def test_per_channel_conv_flattened_into_a_neuron(device):
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.flat, self.lif = nn.Conv2d(1, 3, 3, padding=1), nn.Flatten(1), st.LIF()

        def forward(self, x):  # x [T, B, 1, 4, 4] -> conv on [T*B, ...] -> neurons [T, B, 48]
            T, B = x.shape[:2]
            return self.lif(self.flat(self.conv(x.flatten(0, 1))).unflatten(0, (T, B)))

    x = torch.rand(3, 2, 1, 4, 4, device=device) * 3
    q = calibrated(Net().to(device), x, per_channel=True)
    q.quantize()
    want = q(x)
    q.reset()
    q.aware()
    assert torch.equal(q(x), want)


def test_links_and_state_errors():
    class Twice(Q.QModel):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.lif = Q.QLinear(4, 4), Q.QLinear(4, 4), Q.QLIF()

        def forward(self, x):
            return self.lif(self.fc2(self.lif(self.fc1(x))))

    with pytest.raises(RuntimeError, match="called after two different layers"):
        Twice().collect_q_params()
    q = calibrated(mlp(), torch.rand(3, 2, 20)).quantize()
    q(torch.rand(3, 2, 20))
    with pytest.raises(ValueError, match="reset the model"):
        q(torch.rand(3, 5, 20))


def test_prepare_warnings_tiny_weights_and_state():
    with pytest.warns(UserWarning, match="PLIF's learnable tau is fixed"):
        Q.prepare(nn.Sequential(nn.Linear(4, 4), st.PLIF()))
    w = torch.zeros(2, 3)
    w[0, 0] = 1e-40  # a denormal: 127 / 1e-40 overflows
    s = Q.weight_scale(w, per_channel=True)
    assert torch.isfinite(s).all() and Q.quantize(w, s).abs().max() <= 127
    net = mlp()
    net(torch.rand(3, 2, 20))  # state with an autograd graph, no reset
    Q.prepare(net)  # copies without the state
    assert net[1].v is not None and net[1].v.grad_fn is not None  # the original keeps its state
