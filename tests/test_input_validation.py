"""Hostile input to the neurons, the functional twins, packed spikes and the hybrid units (issue 12):
a clear error naming the function, the argument, the bad value and what was expected, or one
documented behaviour that the PyTorch path and the Triton path (interpreter on CPU) share."""

from __future__ import annotations

import gzip
import itertools
import math
from pathlib import Path

import pytest
import torch

import spiketriton as st
from spiketriton import functional as F
from spiketriton import hybrid as H
from spiketriton.functional.spikes import SpikeTensor, pack_spikes, spike_matmul, unpack_spikes

BACKENDS = ["torch", "triton"]
NAN, INF = float("nan"), float("inf")
SASS = Path(__file__).resolve().parent.parent / "bench" / "results" / "codegen" / "sass" / "sm_90"


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaN where NaN."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.isnan(), b.isnan()) and torch.equal(
        a.nan_to_num(nan=0.0), b.nan_to_num(nan=0.0))


# ------------------------------------------------------------------------------------------- #
# hybrid units: one set of checks (rates, T, NaN parameters)
# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", BACKENDS)
def test_a2s_learnable_takes_rates_only(backend):
    u = H.A2SLearnable(4, backend=backend)
    for bad, msg in [([NAN, 0.5], "inf or NaN"), ([0.5, 1.5], r"values in \[0.5, 1.5\]"),
                     ([-0.1, 0.5], r"values in \[-0.1"), ([INF], "inf or NaN")]:
        with pytest.raises(ValueError, match=f"A2SLearnable: input has {msg}"):
            u(torch.tensor(bad))
    assert u(torch.tensor([0.0, 1.0])).shape == (4, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("param", ["weight", "bias"])
def test_a2s_learnable_refuses_a_nan_parameter(backend, param):
    # a weight that diverged to NaN in training gave all-zero spikes without a word
    u = H.A2SLearnable(4, backend=backend)
    with torch.no_grad():
        getattr(u, param)[1] = NAN
    with pytest.raises(ValueError, match=f"A2SLearnable: the learnable {param} has inf or NaN"):
        u(torch.tensor([0.5, 0.25]))


def test_s2a_units_refuse_zero_time_steps():
    x = torch.zeros(0, 2, 3)
    for unit in (H.S2AGlobalRate(), H.S2AWindowRate(2), H.S2ALearnable(2), H.SplitWindow(2)):
        with pytest.raises(ValueError, match=r"T = 0 time steps .* expected T >= 1"):
            unit(x)
    # an empty batch is not an error: it gives an empty result
    assert H.S2AGlobalRate()(torch.zeros(4, 0, 3)).shape == (0, 3)
    assert H.S2AWindowRate(2)(torch.zeros(4, 0, 3)).shape == (2, 0, 3)


def test_temporal_filter_checks_its_kernel_and_window():
    with pytest.raises(ValueError, match=r"TemporalFilter window_size: T \(time steps\) must be an integer > 0, got 0"):
        H.TemporalFilter(0)
    for bad in ([NAN, 1.0], torch.tensor([1.0, INF])):
        with pytest.raises(ValueError, match="TemporalFilter: kernel must be finite"):
            H.TemporalFilter(2, kernel=bad)
    with pytest.raises(TypeError, match="TemporalFilter: kernel must hold real numbers, got torch.complex64"):
        H.TemporalFilter(2, kernel=torch.ones(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="TemporalFilter: kernel must be a sequence of 2 real numbers"):
        H.TemporalFilter(2, kernel=["a", "b"])
    with pytest.raises(TypeError, match="TemporalFilter: learnable must be True or False, got 'no'"):
        H.TemporalFilter(2, learnable="no")
    with pytest.raises(ValueError, match=r"TemporalFilter: expected windows \[T_w, 2, B, \.\.\.\]"):
        H.TemporalFilter(2)(torch.ones(3, 4, 5))
    assert H.TemporalFilter(2, kernel=[1.0, -1.0])(torch.ones(3, 2, 5)).abs().sum() == 0


def test_hybrid_options_and_stages():
    with pytest.raises(TypeError, match="A2SPoisson: generator must be a torch.Generator or None, got 1"):
        H.A2SPoisson(8)(torch.rand(3), generator=1)
    with pytest.raises(TypeError, match="A2SPoisson: generator must be a torch.Generator or None, got 'seed'"):
        H.A2SPoisson(8, generator="seed")
    with pytest.raises(ValueError, match="A2SPoisson: the generator is on cpu but the input is on meta"):
        H.A2SPoisson(8)(torch.rand(3, device="meta"), generator=torch.Generator())
    with pytest.raises(TypeError, match="HybridUnit: nonlinearity must be a module or callable"):
        H.HybridUnit(nonlinearity="relu")
    with pytest.raises(TypeError, match="S2ALearnable: bias must be True or False"):
        H.S2ALearnable(4, bias="no")
    with pytest.raises(ValueError, match="S2ALearnable: T = 5 is not tiled by windows of 2 steps every 2"):
        H.S2ALearnable(5, window_size=2)
    with pytest.raises(ValueError, match=r"A2SLearnable: backend must be one of"):
        H.A2SLearnable(4, backend="gpu")
    with pytest.raises(TypeError, match="RepeatWindow: expected a tensor"):
        H.RepeatWindow(2)([1.0])


# ------------------------------------------------------------------------------------------- #
# functional twins: tensor parameters checked as float ones
# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_tensor_parameters_must_be_finite(backend, bad):
    x = torch.rand(3, 2, 5)
    with pytest.raises(ValueError, match=f"plif: w must be finite, got {bad}"):
        F.plif(x, torch.tensor([bad]), backend=backend)
    for name in ("v_leaky_alpha", "v_leaky_beta"):
        with pytest.raises(ValueError, match=f"extended_lif: {name} must be finite, got {bad}"):
            F.extended_lif(x, v_th0=1.0, **{name: torch.tensor(bad, requires_grad=True)}, backend=backend)
        with pytest.raises(ValueError, match=f"ExtendedLIF: {name} must be finite, got {bad}"):
            st.ExtendedLIF(**{name: torch.tensor([bad])}, backend=backend)
    # the float spelling gives the same message
    with pytest.raises(ValueError, match=f"extended_lif: v_leaky_alpha must be finite, got {bad}"):
        F.extended_lif(x, v_th0=1.0, v_leaky_alpha=bad, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_parameters_dtype_and_device(backend):
    x = torch.rand(3, 2, 5)
    for bad in (torch.ones(1, dtype=torch.int64), torch.ones(1, dtype=torch.complex64), torch.ones(1, dtype=torch.bool)):
        with pytest.raises(TypeError, match=f"extended_lif: v_leaky_alpha must be a floating tensor .* got {bad.dtype}"):
            F.extended_lif(x, v_th0=1.0, v_leaky_alpha=bad, backend=backend)
    with pytest.raises(ValueError, match="extended_lif: v_leaky_beta is on meta but x_seq is on cpu"):
        F.extended_lif(x, v_th0=1.0, v_leaky_beta=torch.zeros(1, device="meta"), backend=backend)
    with pytest.raises(ValueError, match="plif: w is on meta but x_seq is on cpu"):
        F.plif(x, torch.zeros(1, device="meta"), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_refractory_counter_dtypes(backend):
    x = torch.full((3, 1, 4), 2.0)
    kw = dict(v_th0=1.0, ref_len=3, backend=backend)
    r32 = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32)
    zeros = torch.zeros(1, 4)
    want = F.extended_lif(x, F.ExtendedLIFState(zeros, zeros, r32), **kw)
    for dt in (torch.int64, torch.int16, torch.uint8):  # values that fit int32: the same result
        got = F.extended_lif(x, F.ExtendedLIFState(zeros, zeros, r32.to(dt)), **kw)
        assert same(got[0], want[0]) and all(same(a, b) for a, b in zip(got[1], want[1]))
    # 2^32 + 1 used to wrap to 1 silently
    for big in (2**32 + 1, -(2**31) - 1):
        r = torch.tensor([[0, 1, big, 3]], dtype=torch.int64)
        with pytest.raises(ValueError, match=r"extended_lif: ref_cnt \(torch.int64\) has values in .* outside int32"):
            F.extended_lif(x, F.ExtendedLIFState(zeros, zeros, r), **kw)
    with pytest.raises(TypeError, match="extended_lif: ref_cnt must be an integer tensor .* got torch.bool"):
        F.extended_lif(x, F.ExtendedLIFState(zeros, zeros, torch.zeros(1, 4, dtype=torch.bool)), **kw)


def test_learned_nan_leak_gives_one_answer_on_both_paths():
    # a learnable leak that became NaN in training is not checked in forward (a device sync per
    # call); both paths then give the same state: the kernel's floor where(v >= v_l, v, v_l) sends a
    # NaN to v_l (-inf without a floor) -- the PyTorch path gave NaN, the Triton path -inf
    out = {}
    for backend in BACKENDS:
        n = st.ExtendedLIF(v_th0=1.0, learnable_leak=True, backend=backend)
        with torch.no_grad():
            n.v_leaky_alpha.fill_(NAN)
        s = n(torch.full((3, 1, 4), 2.0))
        out[backend] = (s, n.v)
    assert same(*(o[0] for o in out.values())) and same(*(o[1] for o in out.values()))
    assert out["torch"][1].eq(-INF).all()


# ------------------------------------------------------------------------------------------- #
# options: strings are not flags, bools are not numbers, enums and backends are checked up front
# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("make,msg", [
    (lambda: st.LIF(decay_input="no"), "LIF: decay_input must be True or False, got 'no'"),
    (lambda: st.IF(detach_reset="no"), "IF: detach_reset must be True or False, got 'no'"),
    (lambda: st.PLIF(packed_output="no"), "PLIF: packed_output must be True or False, got 'no'"),
    (lambda: st.ExtendedLIF(learnable_leak="no"), "ExtendedLIF: learnable_leak must be True or False, got 'no'"),
    (lambda: st.ExtendedLIF(detach_reset=1), "ExtendedLIF: detach_reset must be True or False, got 1"),
    (lambda: F.lif(torch.zeros(2, 1, 3), detach_reset="False"), "lif: detach_reset must be True or False"),
    (lambda: pack_spikes(torch.ones(2, 3), check="no"), "pack_spikes: check must be True or False"),
    (lambda: st.LIF(v_threshold=True), "LIF: v_threshold must be a real number, got True"),
    (lambda: st.IF(v_reset="0.0"), "IF: v_reset must be a real number, got '0.0'"),
    (lambda: st.LIF(tau=torch.tensor([2.0, 3.0])), "LIF: tau must be a real number"),
    (lambda: st.surrogate.ATan(alpha="2"), "ATan: alpha must be a real number > 0, got '2'"),
    (lambda: st.surrogate.Rect(width=1j), r"Rect: width must be a real number > 0, got 1j"),
])
def test_option_types(make, msg):
    with pytest.raises(TypeError, match=msg):
        make()


def test_enums_and_backends_are_checked_at_construction():
    with pytest.raises(ValueError, match=r"IF: backend must be one of \('auto', 'triton', 'torch'\), got 'gpu'"):
        st.IF(backend="gpu")
    with pytest.raises(ValueError, match=r"ExtendedLIF: backend must be one of .* got \['torch'\]"):
        st.ExtendedLIF(backend=["torch"])
    with pytest.raises(ValueError, match="ExtendedLIF: unknown reset_mode 'Hard-ish'"):
        st.ExtendedLIF(reset_mode="Hard-ish")
    with pytest.raises(ValueError, match="extended_lif: unknown reset_mode True"):
        F.extended_lif(torch.zeros(2, 1, 3), v_th0=1.0, reset_mode=True)


# ------------------------------------------------------------------------------------------- #
# fp32 overflow: documented, and the same on both paths
# ------------------------------------------------------------------------------------------- #


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warnings inside the interpreter
def test_overflowing_input_gives_the_same_state_on_both_paths():
    """A finite input whose sum overflows fp32 makes the membrane +-inf, and then NaN where a later
    step computes inf - inf (IF's leak term (V - Vr) * 0, LIF's decay): that neuron stops spiking until
    reset. No saturation (it would cost the kernels two ops per step for values no network produces);
    both paths compute the same spikes and state, NaN for NaN (the PyTorch path reset an overflowed H
    as H - H*S, NaN where the kernel selects Vr, and floored with clamp_min, which keeps NaN)."""
    big = 3e38
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (6, 2, 8), generator=g).float() * big
    x[:, 1] = torch.randn(6, 8, generator=g) * 2  # an ordinary row next to the overflowing one
    cases = [dict(kind="if", v_reset=vr) for vr in (0.0, None, -0.5)]
    cases += [dict(kind="lif", v_reset=vr, decay_input=d) for vr, d in itertools.product((0.0, None), (True, False))]
    cases += [dict(kind="elif", reset_mode=m, v_l=vl, ref_len=r, v_th_incre=inc, v_leaky_alpha=a)
              for m, vl, r, inc, a in itertools.product(("hard", "soft", "soft_constant"), (None, -1.0), (0, 2),
                                                         (0.0, 0.5), (1.0, 0.9))
              if (r, inc) != (2, 0.5)]
    for case in cases:
        kw = dict(case)
        kind = kw.pop("kind")
        res = []
        for backend in BACKENDS:
            if kind == "if":
                s, v = F.if_neuron(x, backend=backend, **kw)
                res.append((s, v))
            elif kind == "lif":
                s, v = F.lif(x, tau=2.0, backend=backend, **kw)
                res.append((s, v))
            else:
                s, state = F.extended_lif(x, v_th0=1.0, dv=0.5, v_leaky_beta=0.1, backend=backend, **kw)
                res.append((s,) + tuple(state))
        for a, b in zip(*res):
            assert same(a, b), case
    # the case: IF(v_reset=None) fed +-3e38; both paths: NaN after the overflow, until reset()
    for backend in BACKENDS:
        n = st.IF(v_reset=None, backend=backend)
        s = n(torch.tensor([big, big, -big, -big, 1.0]).reshape(5, 1, 1))
        assert s.flatten().tolist() == [1, 1, 0, 0, 0] and n.v.isnan().all()
        n.reset()
        assert n(torch.full((1, 1, 1), 1.0)).item() == 1


# ------------------------------------------------------------------------------------------- #
# packed spikes: clear errors, and any byte layout on both paths
# ------------------------------------------------------------------------------------------- #


def test_packed_spike_errors():
    d = torch.zeros(2, 1, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"SpikeTensor: anchor must be a torch.Tensor of the spikes' shape \(2, 3\) or None, got list"):
        SpikeTensor(d, 3, [0.0])
    with pytest.raises(ValueError, match=r"SpikeTensor: anchor is on meta but the packed data on cpu"):
        SpikeTensor(d, 3, torch.zeros(2, 3, device="meta"))
    with pytest.raises(TypeError, match=r"spike_matmul: bias must be a floating tensor \[N\] = \[4\] or None, got list"):
        spike_matmul(torch.ones(2, 3), torch.ones(4, 3), [0.0] * 4)
    with pytest.raises(TypeError, match=r"spike_matmul: bias must be a floating tensor \[N\] = \[4\], got torch.complex64"):
        spike_matmul(torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"spike_matmul: weight must be a floating tensor \[N, K\], got torch.int64 tensor"):
        spike_matmul(torch.ones(2, 3), torch.ones(4, 3, dtype=torch.int64))
    p = pack_spikes(torch.ones(2, 3))
    with pytest.raises(TypeError, match=r"unpack_spikes: dtype must be a torch.dtype \(e.g. torch.float32\), got 'float32'"):
        unpack_spikes(p, dtype="float32")
    with pytest.raises(TypeError, match="unpack_spikes: dtype must be a real dtype"):
        p.to_dense(dtype=torch.complex64)
    with pytest.raises(TypeError, match="is_binary: expected a torch.Tensor, got list"):
        st.functional.spikes.is_binary([0, 1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_bytes_in_any_layout(backend):
    g = torch.Generator().manual_seed(3)
    s = (torch.rand(5, 20, generator=g) < 0.5).float()
    bytes_ = pack_spikes(s, backend="torch").data  # [5, 3]
    transposed = torch.empty(3, 5, dtype=torch.uint8).t()  # last-dimension stride 5, not 1
    transposed.copy_(bytes_)
    offset = torch.zeros(1 + bytes_.numel(), dtype=torch.uint8)[1:].view(5, 3)  # storage offset 1
    offset.copy_(bytes_)
    strided = torch.zeros(5, 3, 2, dtype=torch.uint8)[..., 1]  # stride 2 along the bytes
    strided.copy_(bytes_)
    w = torch.randn(4, 20, generator=g)
    want = spike_matmul(s, w, backend=backend)
    for data in (transposed, offset, strided):
        p = SpikeTensor(data, 20)
        assert torch.equal(unpack_spikes(p, backend=backend), s)
        assert torch.equal(p.to_dense(torch.bfloat16, backend=backend), s.bfloat16())
        assert torch.equal(spike_matmul(p, w, backend=backend), want)


# ------------------------------------------------------------------------------------------- #
# bf16 output rounding: to nearest, on the compiled kernel and on both CPU paths
# ------------------------------------------------------------------------------------------- #


def _sass_conversions(name: str) -> set:
    with gzip.open(SASS / name, "rt") as f:
        return {tok.rstrip(" ;,") for line in f for tok in line.split() if tok.startswith("F2FP.")}


def test_compiled_bf16_store_rounds_to_nearest():
    """The bf16 outputs of the compiled spike matmul (forward and dW, no split) are converted with
    F2FP.BF16.F32.PACK_AB: round to nearest even (cvt.rn.bf16x2.f32). Its round-toward-zero form
    F2FP.BF16.F32.PACK_AB.RZ is what the fp32-weight split (fp_downcast_rounding="rtz") compiles to,
    in the same listings: the reader tells the two apart."""
    for name in ("matmul_fwd__bfloat16__1000x1000x1000.sass.gz", "matmul_fwd__bfloat16__4096x4096x4096.sass.gz",
                 "matmul_dw__bfloat16__4096x4096x4096.sass.gz"):
        conv = _sass_conversions(name)
        assert "F2FP.BF16.F32.PACK_AB" in conv and not any(c.endswith(".RZ") for c in conv), (name, conv)
    assert "F2FP.BF16.F32.PACK_AB.RZ" in _sass_conversions("matmul_fwd__float32__1000x1000x1000_0.sass.gz")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_matmul_rounds_to_nearest_once(backend):
    """Sums that bf16 cannot hold (exact in fp32): the result is the exact sum rounded to nearest,
    once, on both paths. The Triton interpreter casts fp32 -> bf16 by truncation
    (triton/runtime/interpreter.py: cast_impl -> _convert_float without a rounding mode), which gave
    11 of these 30 outputs one ulp toward zero; the launchers now let torch do that one rounding under
    TRITON_INTERPRET only (the compiled kernel rounds to nearest itself: the SASS test above)."""
    from spiketriton.kernels import pack as PK
    from spiketriton.kernels import spike_matmul as KS

    g = torch.Generator().manual_seed(1)
    M, N, K = 5, 6, 40
    s = (torch.rand(M, K, generator=g) < 0.5).float()
    w = (torch.randint(1, 255, (N, K), generator=g) * 2).to(torch.bfloat16)  # exact; sums need > 8 bits
    exact = s.double() @ w.double().T
    assert (exact.to(torch.bfloat16).double() != exact).sum() > 10  # the rounding is exercised
    assert torch.equal(spike_matmul(s, w, backend=backend), exact.to(torch.bfloat16))
    b = torch.full((N,), 0.5, dtype=torch.bfloat16)
    assert torch.equal(spike_matmul(s, w, b, backend=backend), (exact + 0.5).to(torch.bfloat16))
    if backend == "triton":  # one pass (no split), and dW
        cfg = dict(KS.fwd_config(M, N, K, torch.bfloat16), SPLIT=1)
        assert torch.equal(KS.spike_matmul_fwd(PK.pack(s), K, w, None, config=cfg), exact.to(torch.bfloat16))
        gy = (torch.randint(1, 255, (M, N), generator=g) * 2).to(torch.bfloat16)
        dw = KS.spike_matmul_dw(gy, PK.pack(s), K)
        assert torch.equal(dw, (gy.double().T @ s.double()).to(torch.bfloat16))
    assert math.isfinite(float(exact.sum()))


def test_run_neuron_arguments():
    from spiketriton.functional.neuron import family_a_spec, run_neuron

    spec = family_a_spec("t", v_threshold=1.0, v_reset=0.0, surrogate=None, detach_reset=False, decay_input=True)
    x = torch.zeros(2, 1, 3)
    with pytest.raises(TypeError, match=r"neuron: params must be a floating tensor \[k\] \(k = 1/tau\), got list"):
        run_neuron(x, None, None, None, [0.5], spec)
    with pytest.raises(TypeError, match=r"params must be a floating tensor \[k\] .* got torch.float32 tensor of shape \(3,\)"):
        run_neuron(x, None, None, None, torch.zeros(3), spec)
    with pytest.raises(TypeError, match="neuron: spec must be a spiketriton.spec.NeuronSpec, got dict"):
        run_neuron(x, None, None, None, torch.zeros(1), {"family": 0})


def test_devices_and_reset():
    with pytest.raises(ValueError, match="A2SLearnable: its parameters are on cpu but the input is on meta"):
        H.A2SLearnable(4)(torch.zeros(3, device="meta"))
    with pytest.raises(ValueError, match="TemporalFilter: its parameters are on cpu but the input is on meta"):
        H.TemporalFilter(2)(torch.zeros(3, 2, 4, device="meta"))
    with pytest.raises(TypeError, match="reset: expected a torch.nn.Module, got list"):
        st.reset([st.LIF()])


def test_spike_matmul_on_meta_tensors_gives_the_shape():
    w = torch.empty(5, 12, device="meta")
    for s in (torch.empty(3, 4, 12, device="meta"), st.SpikeTensor(torch.empty(3, 4, 2, dtype=torch.uint8, device="meta"), 12)):
        y = st.spike_matmul(s, w, torch.empty(5, device="meta"))
        assert y.shape == (3, 4, 5) and y.is_meta
