"""Event-driven spike matmul (functional/events.py, kernels/event_matmul.py) against an fp64 reference,
on the PyTorch path and on the Triton kernel (interpreter)."""

import pytest
import torch

import spiketriton as st
from spiketriton.functional.events import choose_event_path, event_matmul

BACKENDS = ["torch", "triton"]


def _case(M, K, N, dtype, p=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g).to(dtype)
    b = torch.randn(N, generator=g).to(dtype)
    s = (torch.rand(M, K, generator=g) < p).float()
    return s, w, b


def _check(y, s, w, b, dtype, backend="torch"):
    """fp32 accumulation, one rounding to dtype: within the fp32 sum's error bound plus half an ulp.
    The Triton interpreter casts fp32 to bf16 by truncation (the compiled kernel rounds to nearest:
    F2FP.BF16.F32.PACK_AB in the SASS): a whole ulp there."""
    ulp = 1.0 if (backend == "triton" and dtype == torch.bfloat16) else 0.5
    ref = s.double() @ w.double().T + (b.double() if b is not None else 0)
    absum = s.double() @ w.double().abs().T + (b.double().abs() if b is not None else 0)
    n = s.sum(-1, keepdim=True).double() + 1
    bound = n * 2.0 ** -24 * absum + torch.finfo(dtype).eps * ulp * ref.abs() * (dtype != torch.float32) + 1e-30
    assert y.dtype == dtype
    err = (y.double() - ref).abs()
    assert (err <= bound * 1.01).all(), (err / bound).max()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M,K,N", [(1, 300, 37), (3, 1000, 130), (5, 17, 1), (2, 8, 256), (1, 1, 3)])
def test_event_matmul_matches_the_fp64_sum_of_fired_rows(backend, dtype, M, K, N):
    s, w, b = _case(M, K, N, dtype)
    wt = w.t().contiguous()
    for inp in (s, st.pack_spikes(s), s.bool(), s.to(torch.uint8)):
        _check(event_matmul(inp, wt, b, backend=backend), s, w, b, dtype, backend)
    _check(event_matmul(s, wt, None, backend=backend), s, w, None, dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_event_matmul_shapes_views_and_empty_cases(backend):
    s, w, b = _case(6, 40, 9, torch.float32)
    wt = w.t().contiguous()
    # leading dimensions, a strided (non-contiguous) input, a non-contiguous weight_t view
    s3 = s.reshape(2, 3, 40)
    _check(event_matmul(s3, wt, b, backend=backend).reshape(6, 9), s, w, b, torch.float32)
    big = torch.zeros(6, 80)
    big[:, ::2] = s
    _check(event_matmul(big[:, ::2], wt, b, backend=backend), s, w, b, torch.float32)
    _check(event_matmul(s, w.t(), b, backend=backend), s, w, b, torch.float32)
    # no rows, no inputs, nothing fired
    assert event_matmul(torch.zeros(0, 40), wt, b, backend=backend).shape == (0, 9)
    y = event_matmul(torch.zeros(2, 0), torch.zeros(0, 9), b, backend=backend)
    assert torch.equal(y, b.expand(2, 9))
    assert torch.equal(event_matmul(torch.zeros(2, 40), wt, b, backend=backend), b.expand(2, 9))


@pytest.mark.parametrize("backend", BACKENDS)
def test_any_nonzero_value_is_a_spike_as_in_spike_matmul(backend):
    w = torch.tensor([[1.0, 10.0, 100.0]])
    s = torch.tensor([[2.0, 0.0, float("nan")]])
    y = event_matmul(s, w.t().contiguous(), backend=backend)
    assert y.item() == 101.0 == st.spike_matmul(s, w, backend="torch").item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_event_matmul_agrees_with_spike_matmul(backend):
    s, w, b = _case(4, 257, 65, torch.float32, p=0.2)
    y = event_matmul(st.pack_spikes(s), w.t().contiguous(), b, backend=backend)
    assert torch.allclose(y, st.spike_matmul(s, w, b, backend=backend), rtol=1e-5, atol=1e-5)


def test_split_k_reduction_is_one_launch_in_fixed_order_and_leaves_its_counters_zero():
    """K above one program's share (128 inputs) splits K; the last program to arrive sums the partials in
    the fixed order 0 .. SPLIT-1: the fp32 result is the sequential sum of the split partials, bit for bit,
    and the arrival counters are zero again after every launch (shapes of different grids share them)."""
    from spiketriton.kernels import event_matmul as KE

    for M, K, N in [(3, 1000, 130), (1, 4096, 7), (2, 300, 256)]:
        s, w, b = _case(M, K, N, torch.float32, p=0.3, seed=K)
        wt = w.t().contiguous()
        meta, grid = KE._launch_shape(M, N, K)
        assert grid[2] > 1
        y1 = event_matmul(s, wt, b, backend="triton")
        y2 = event_matmul(st.pack_spikes(s), wt, b, backend="triton")
        per = meta["BLOCK_K"] * meta["K_STEPS"]
        parts = [(s[:, j * per:(j + 1) * per] @ wt[j * per:(j + 1) * per]) for j in range(grid[2])]
        # each program's partial is its own fp32 sum (order inside a program differs): compare the fixed-
        # order total of the exact partials within fp32 rounding, and the two launches bit for bit
        tot = torch.zeros(M, N, dtype=torch.float64)
        for p in parts:
            tot += p.double()
        assert torch.allclose(y1.double(), tot + b.double(), rtol=1e-5, atol=1e-5)
        assert torch.equal(y1, y2)
        assert int(KE._counters(wt.device, 1).abs().sum()) == 0


def test_event_matmul_has_no_gradient_and_does_not_build_a_graph():
    s, w, b = _case(2, 16, 4, torch.float32)
    wt = w.t().contiguous().requires_grad_()
    assert not event_matmul(s, wt, b).requires_grad


def test_crossover_rule():
    cpu, cuda = False, True  # the PyTorch path's rule, the Triton kernels' rule
    assert choose_event_path(1, 200, 4096, cpu)            # 5 %
    assert not choose_event_path(1, 2000, 4096, cpu)       # 49 %
    assert choose_event_path(16, int(0.1 * 16 * 1024), 1024, cpu)
    assert not choose_event_path(16, int(0.25 * 16 * 1024), 1024, cpu)
    assert not choose_event_path(1, None, 4096, cpu)       # unknown firing: dense
    assert choose_event_path(4, None, 4096, cuda) and not choose_event_path(5, None, 4096, cuda)
    assert not choose_event_path(0, 0, 4096, cpu)


@pytest.mark.parametrize("call, err, match", [
    (lambda: event_matmul(torch.zeros(1, 4), torch.zeros(5, 3)), ValueError, r"shape \(1, 4\) but the weight has K = 5"),
    (lambda: event_matmul(st.pack_spikes(torch.zeros(1, 4)), torch.zeros(5, 3)), ValueError, "k = 4 but the weight has K = 5"),
    (lambda: event_matmul([[1.0]], torch.zeros(1, 3)), TypeError, "got list"),
    (lambda: event_matmul(torch.zeros(1, 4, dtype=torch.complex64), torch.zeros(4, 3)), TypeError, "complex64"),
    (lambda: event_matmul(torch.zeros(1, 4), torch.zeros(4, 3, dtype=torch.int32)), TypeError, "floating tensor"),
    (lambda: event_matmul(torch.zeros(1, 4), torch.zeros(4, 3), [0.0, 0.0, 0.0]), ValueError, r"shape \(3,\), got list"),
    (lambda: event_matmul(torch.zeros(1, 4), torch.zeros(4, 3), torch.zeros(2)), ValueError, r"shape \(3,\), got \(2,\)"),
    (lambda: event_matmul(torch.zeros(1, 4), torch.zeros(4, 3), backend="gpu"), ValueError, "backend must be one of"),
    (lambda: event_matmul(torch.zeros(1, 4), torch.zeros(4, 3, dtype=torch.float64), backend="triton"), TypeError,
     "float32, float16 or bfloat16"),
])
def test_bad_input_says_what_was_wrong(call, err, match):
    with pytest.raises(err, match=match):
        call()


@pytest.mark.parametrize("p", [0.02, 0.6])
def test_inference_matmul_takes_the_path_the_rule_chooses_and_agrees_with_spike_matmul(p, monkeypatch):
    from spiketriton.functional import events

    s, w, b = _case(2, 512, 33, torch.float32, p=p)
    wt = w.t().contiguous()
    taken = []
    real = events._torch_event
    monkeypatch.setattr(events, "_torch_event", lambda *a, **k: taken.append(1) or real(*a, **k))
    for inp in (st.pack_spikes(s), s):
        taken.clear()
        y = events.inference_matmul(inp, w, b, wt, backend="torch")
        assert bool(taken) == (p < 0.1)  # 2 % fires below the CPU crossover (0.4 * 2^-0.3 = 0.32), 60 % above
        if taken:
            assert torch.equal(y, events.event_matmul(inp, wt, b, backend="torch"))
        else:  # the dense fallback is spike_matmul's own result
            assert torch.equal(y, st.spike_matmul(inp, w, b, backend="torch"))
    taken.clear()
    events.inference_matmul(s, w, b, None, backend="torch")  # no transposed copy: always dense
    assert not taken


def test_inference_matmul_on_triton_takes_the_event_kernel_for_few_rows(monkeypatch):
    from spiketriton.functional import events

    s, w, b = _case(6, 64, 9, torch.float32, p=0.1)
    wt = w.t().contiguous()
    taken = []
    real = events.event_matmul
    monkeypatch.setattr(events, "event_matmul", lambda *a, **k: taken.append(1) or real(*a, **k))
    y = events.inference_matmul(s[:4], w, b, wt, backend="triton")  # 4 rows: event kernel (CUDA rule)
    assert taken and torch.allclose(y, s[:4] @ w.T + b, rtol=1e-5, atol=1e-5)
    taken.clear()
    y = events.inference_matmul(s, w, b, wt, backend="triton")  # 6 rows: the dense kernel
    assert not taken and torch.allclose(y, s @ w.T + b, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- #
# SpikeLinear's inference path
# --------------------------------------------------------------------------------------------- #


def _spy(monkeypatch):
    from spiketriton.functional import events

    taken = []
    for name in ("_torch_event", "event_matmul"):
        real = getattr(events, name)
        monkeypatch.setattr(events, name, lambda *a, _r=real, **k: taken.append(1) or _r(*a, **k))
    return taken


@pytest.mark.parametrize("backend", BACKENDS)
def test_spike_linear_streams_sparse_single_steps_through_the_event_path(backend, monkeypatch):
    torch.manual_seed(0)
    lin = st.SpikeLinear(300, 40, backend=backend).eval()
    ref = torch.nn.Linear(300, 40)
    ref.load_state_dict(lin.state_dict())
    s = (torch.rand(1, 300) < 0.05).float()
    taken = _spy(monkeypatch)
    with torch.no_grad():
        y = lin(s)
        y_packed = lin(st.pack_spikes(s))
    assert len(taken) == 2
    torch.testing.assert_close(y, ref(s), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_packed, y, rtol=0, atol=0)
    taken.clear()
    y = lin(s)  # gradients wanted: the dense autograd path
    assert not taken and y.requires_grad


def test_spike_linear_event_driven_option_and_cache(monkeypatch):
    torch.manual_seed(0)
    lin = st.SpikeLinear(64, 8, backend="torch")
    s = (torch.rand(2, 64) < 0.5).float()  # above the CPU crossover: "auto" stays dense
    taken = _spy(monkeypatch)
    with torch.no_grad():
        lin(s)
        assert not taken
        lin.event_driven = True
        y = lin(s)
        assert taken
        torch.testing.assert_close(y, s @ lin.weight.T + lin.bias, rtol=1e-5, atol=1e-5)
        # the transposed copy follows an in-place update of the weight (an optimizer step)
        lin.weight.add_(1.0)
        torch.testing.assert_close(lin(s), s @ lin.weight.T + lin.bias, rtol=1e-5, atol=1e-5)
        taken.clear()
        lin.event_driven = False
        lin(s)
        assert not taken
    assert set(lin.state_dict()) == {"weight", "bias"}
    lin.release_event_cache()
    assert lin._wt_cache is None
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="event_driven must be 'auto', True or False"):
            st.SpikeLinear(4, 2, event_driven=bad)
