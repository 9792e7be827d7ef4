"""The fp32 spike matmul on bf16 tensor cores (three exact bf16 parts), its range limits and fallback,
split-K, and the tile choice. Kernels run under TRITON_INTERPRET=1 on CPU: the interpreter computes
the same three parts and adds their exact products in fp32, so a wrong split (a missing or rounded
part, an overflow in the top binade, bits lost below 2^-110 without the fallback) shows here."""

from __future__ import annotations

import pytest
import torch

from spiketriton.kernels import pack as PK
from spiketriton.kernels import spike_matmul as KS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1",
                                reason="needs CUDA or the Triton interpreter")


def _data(M, N, K, seed, spread=30, rate=0.3):
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(M, K, generator=g) < rate).float()
    # weights over 60 binades: a split that rounds or drops a part is off by ~2^-16 relative
    w = torch.randn(N, K, generator=g) * 2.0 ** torch.randint(-spread, spread, (N, K), generator=g).float()
    gy = torch.randn(M, N, generator=g) * 2.0 ** torch.randint(-spread, spread, (M, N), generator=g).float()
    return s, w, gy


def _rel_err(got, exact, scale):
    return ((got.double().cpu() - exact).abs() / scale.clamp_min(1e-300)).max().item()


# Measured (this file's data, seeds 0-2, CPU interpreter): the largest error relative to sum |terms|
# was 1.2e-7..1.6e-7 for the forward against torch fp32's 2.2e-7..3.3e-7, and 2.2e-7..2.8e-7 for dW
# against torch's 2.5e-7..3.0e-7 (ratio at most 0.93). The bound allows 1.25x torch's error on the same
# data; a split missing its low part is off by ~2^-16 = 1.5e-5, 50x more.
RATIO = 1.25


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fp32_forward_and_dw_no_worse_than_torch_fp32(seed, device):
    M, N, K = 48, 40, 600
    s, w, gy = _data(M, N, K, seed)
    p = PK.pack(s.to(device))
    y = KS.spike_matmul_fwd(p, K, w.to(device), None)
    exact = s.double() @ w.double().T
    scale = s.double() @ w.double().abs().T
    ours, theirs = _rel_err(y, exact, scale), _rel_err(s @ w.T, exact, scale)
    assert ours <= RATIO * theirs, (ours, theirs)
    dw = KS.spike_matmul_dw(gy.to(device), p, K)
    exact = gy.double().T @ s.double()
    scale = gy.double().abs().T @ s.double()
    ours, theirs = _rel_err(dw, exact, scale), _rel_err(gy.T @ s, exact, scale)
    assert ours <= RATIO * theirs, (ours, theirs)


def test_fp32_single_terms_are_exact_across_the_range(device):
    # one spike per output: y must be the weight itself, bit for bit, from 2^-110 to fp32's max
    # (the top binade, where a round-to-nearest hi part would be inf)
    K = 64
    e = torch.linspace(-110, 127, K).round()
    w = (torch.rand(8, K, generator=torch.Generator().manual_seed(3)) + 1.0) * 2.0 ** e  # [1, 2) * 2^e
    w[:, -1] = torch.finfo(torch.float32).max
    w[1::2] = -w[1::2]
    s = torch.eye(K)
    y = KS.spike_matmul_fwd(PK.pack(s.to(device)), K, w.to(device), None)
    assert torch.equal(y.cpu(), w.T.contiguous())
    dw = KS.spike_matmul_dw(w.T.contiguous().to(device), PK.pack(s.to(device)), K)  # dY = W.T, S = I
    assert torch.equal(dw.cpu(), w)


@pytest.mark.parametrize("where", ["weight", "grad"])
def test_fp32_below_2_pow_minus_110_falls_back_to_exact_fma(where, device):
    # values whose low bits fall below bf16's smallest subnormal (2^-133): three bf16 parts would lose
    # them; the flagged rows are recomputed with fp32 FMAs and match a float64 sum rounded once
    M, N, K = 6, 70, 40
    g = torch.Generator().manual_seed(4)
    s = (torch.rand(M, K, generator=g) < 0.5).float()
    tiny = (torch.rand(N, K, generator=g) + 1.0) * 2.0**-125  # 24 significant bits down to 2^-148
    w = torch.randn(N, K, generator=g)
    w[65] = tiny[65]            # one tiny row in the second main-kernel block of 64 rows
    w[3, 7] = tiny[3, 7]        # one tiny value in a normal row
    p = PK.pack(s.to(device))
    if where == "weight":
        y = KS.spike_matmul_fwd(p, K, w.to(device), None).cpu()
        exact = (s.double() @ w.double().T)
        # the tiny row is a sum of fp32 subnormal-range products: exact in fp32 FMAs up to one rounding
        # per addition, far below the 2^-133 granularity the split would have
        assert torch.equal(y[:, 65], (s @ w.T)[:, 65]) or (y[:, 65].double() - exact[:, 65]).abs().max() <= 2.0**-149 * K
        assert (y[:, 65] != 0).all()
        scale = s.double() @ w.double().abs().T
        assert ((y.double() - exact).abs() <= K * 2.0**-24 * scale + 2.0**-149 * K).all()
        # without the fallback the split loses the bits below 2^-133: prove the data needs it
        hi = w[65].to(torch.bfloat16).float()
        assert not torch.equal(hi, w[65])
    else:
        gy = w.T.contiguous()[:M].clone()  # [M, N] with tiny columns
        gy[:, 65] = tiny[65, :M]
        dw = KS.spike_matmul_dw(gy.to(device), p, K).cpu()
        exact = gy.double().T @ s.double()
        scale = gy.double().abs().T @ s.double()
        assert ((dw.double() - exact).abs() <= M * 2.0**-24 * scale + 2.0**-149 * M).all()
        assert (dw[65][s.sum(0) > 0] != 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int8], ids=str)
def test_split_k_equals_one_pass(dtype, device):
    # a small output (4 x 64) over a long K is split along K into a fixed-order sum of partials
    M, N, K = 4, 64, 2048
    cfg = KS.fwd_config(M, N, K, dtype)
    assert cfg["SPLIT"] > 1, cfg
    g = torch.Generator().manual_seed(5)
    s = (torch.rand(M, K, generator=g) < 0.2).float()
    if dtype == torch.int8:
        w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
        b = torch.randint(-1000, 1000, (N,), generator=g, dtype=torch.int32)
        y = KS.spike_matmul_int(PK.pack(s.to(device)), K, w.to(device), b.to(device)).cpu()
        assert torch.equal(y, (s.long() @ w.long().T + b).int())
        return
    w = torch.randn(N, K, generator=g).to(dtype)
    b = torch.randn(N, generator=g).to(dtype)
    p = PK.pack(s.to(device))
    exact = s.double() @ w.double().T + b.double()
    scale = s.double() @ w.double().abs().T + b.double().abs()
    eps = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    for c in (cfg, dict(cfg, SPLIT=1)):  # the split, and one pass over K
        y = KS.spike_matmul_fwd(p, K, w.to(device), b.to(device), config=c).cpu()
        # one rounding to nearest either way (the interpreter's in-kernel bf16 cast truncates: under
        # TRITON_INTERPRET the launcher rounds a bf16 output with torch; tests/test_input_validation.py)
        assert ((y.double() - exact).abs() <= eps * exact.abs() + K * 2.0**-24 * scale).all(), c["SPLIT"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dw_split_m_equals_one_pass(dtype, device):
    # a classifier head (N = 10) over many rows: few dW tiles, so M is split into fixed-order partials
    M, N, K = 512, 10, 40
    cfg = KS.dw_config(M, N, K, dtype)
    assert cfg["SPLIT"] > 1, cfg
    g = torch.Generator().manual_seed(6)
    s = (torch.rand(M, K, generator=g) < 0.3).float()
    gy = torch.randn(M, N, generator=g).to(dtype)
    p = PK.pack(s.to(device))
    dw = KS.spike_matmul_dw(gy.to(device), p, K).cpu()
    exact = gy.double().T @ s.double()
    scale = gy.double().abs().T @ s.double()
    # half an ulp of the output dtype: one rounding to nearest, on a GPU and under the interpreter (whose
    # in-kernel bf16 cast truncates: the launcher rounds with torch there, tests/test_input_validation.py)
    eps = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}[dtype]
    assert ((dw.double() - exact).abs() <= eps * exact.abs() + M * 2.0**-24 * scale).all()
    one = KS.spike_matmul_dw(gy.to(device), p, K, config=dict(cfg, SPLIT=1)).cpu()
    assert ((one.double() - exact).abs() <= eps * exact.abs() + M * 2.0**-24 * scale).all()
    if dtype == torch.float32:  # a tiny gradient in one split's rows is still found and recomputed
        gy[400, 3] = 1.5 * 2.0**-126
        gy[:, 3] *= 2.0**-120
        dw = KS.spike_matmul_dw(gy.to(device), p, K).cpu()
        exact = gy.double().T @ s.double()
        assert ((dw.double() - exact).abs()[3] <= M * 2.0**-24 * (gy.double().abs().T @ s.double())[3] + M * 2.0**-149).all()


def test_tile_choice():
    # large shapes: 128 x 256 tiles, 8 warps, no split; a small batch keeps its own width and
    # is split along K until the tiles fill two waves of a 132-SM GPU
    big = KS.fwd_config(4096, 4096, 4096, torch.bfloat16)
    assert (big["BLOCK_N"], big["BLOCK_M"], big["SPLIT"], big["num_warps"]) == (128, 256, 1, 8)
    mid = KS.fwd_config(1024, 1024, 1024, torch.bfloat16)  # 4 x 8 tiles of 256: less than a wave
    assert (mid["BLOCK_N"], mid["BLOCK_M"]) == (64, 64)
    small = KS.fwd_config(32, 1024, 1024, torch.bfloat16)
    assert small["BLOCK_M"] == 32
    assert (1024 // small["BLOCK_N"]) * small["SPLIT"] == 128  # 16 programs without the split
    head = KS.dw_config(16384, 10, 1024, torch.float32)  # 16 dW tiles: M split 16 ways
    assert head["SPLIT"] == 16
    one = KS.fwd_config(1, 4096, 4096, torch.float32)
    assert one["BLOCK_M"] == 16 and (4096 // one["BLOCK_N"]) * one["SPLIT"] >= 132
    for dt in (torch.float32, torch.bfloat16, torch.int8):
        for shape in [(1, 1, 1), (7, 3, 9), (4096, 4096, 4096), (1, 4096, 4096)]:
            cfg = KS.fwd_config(*shape, dt)
            assert cfg["BLOCK_K"] % 16 == 0 and 1 <= cfg["SPLIT"] <= 16


def test_pow2_div():
    assert KS._pow2_div(1000, 4096) == 8 and KS._pow2_div(125) == 1 and KS._pow2_div(64, 32) == 16
    assert KS._pow2_div(0) == 16


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_non_binary_spikes_mean_the_same_on_every_path(backend, device):
    # issue 12: [[2, 0, 1]] @ [1, 10, 100] was 102 on the PyTorch path and 101 on Triton; a NaN spike
    # NaN on one, 1 on the other. Any nonzero value is a spike, as pack_spikes packs it.
    import spiketriton as st

    w = torch.tensor([[1.0, 10.0, 100.0]], device=device)
    for s, want in (([[2.0, 0.0, 1.0]], 101.0), ([[float("nan"), 0.0, 1.0]], 101.0), ([[-0.5, 3.0, 0.0]], 11.0)):
        s = torch.tensor(s, device=device)
        assert st.spike_matmul(s, w, backend=backend).item() == want
        with torch.no_grad():
            assert st.spike_matmul(s, w, backend=backend).item() == want
        lin = st.SpikeLinear(3, 1, bias=False, check_binary=False, backend=backend).to(device)
        with torch.no_grad():
            lin.weight.copy_(w)
        assert lin(s).item() == want
