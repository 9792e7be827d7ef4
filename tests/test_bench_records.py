"""What the benchmarks record (bench/, CPU, seconds): the byte count behind the neuron GB/s matches what the
kernels really store, a run cut short keeps what it measured (and the report uses it), the peers' versions
are the real ones, the plots draw only the goals that apply, and the pytest-benchmark files of bench/ (outside
testpaths) still pass. No timing is asserted (bench/README.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def _env():
    env = dict(os.environ, BENCH_PROGRESS="0", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # tests/conftest.py sets it; the benchmarks time the real paths
    return env


# --------------------------------------------------------------------------------------------- #
# kernel_bytes: H as the kernels store it
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("neuron", ["lif", "if", "plif"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_kernel_bytes_counts_h_in_the_dtype_it_is_saved(neuron, dtype):
    import spiketriton as st
    from _neuron_cases import DTYPES, h_element_size, kernel_bytes

    shape = (4, 2, 64)
    mod = {"lif": st.LIF, "if": st.IF, "plif": st.PLIF}[neuron]()
    x = torch.randn(shape, dtype=DTYPES[dtype], requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mod(x)
    h = [t for t in saved if tuple(t.shape) == shape and t.dtype.is_floating_point and t is not x]
    assert len(h) == 1, [(tuple(t.shape), t.dtype) for t in saved]
    assert h[0].element_size() == h_element_size(neuron, dtype), (neuron, dtype, h[0].dtype)
    # H is written by fwd and read by bwd: each pass counts it once, at the saved element size
    e, eh = torch.empty((), dtype=DTYPES[dtype]).element_size(), h[0].element_size()
    n = 4 * 2 * 64
    lif_like = kernel_bytes(shape, dtype, "fwd+bwd", neuron="lif")
    assert kernel_bytes(shape, dtype, "fwd+bwd", neuron=neuron) - lif_like == 2 * n * (eh - e)
    assert kernel_bytes(shape, dtype, "infer", neuron=neuron) == kernel_bytes(shape, dtype, "infer")


def test_plif_bf16_bytes_per_neuron_step():
    from _neuron_cases import kernel_bytes

    shape = (32, 64, 65536)
    n = 32 * 64 * 65536
    assert kernel_bytes(shape, "bf16", "fwd+bwd", neuron="lif") / n == 12.375
    assert kernel_bytes(shape, "bf16", "fwd+bwd", neuron="plif") / n == 16.375
    assert kernel_bytes(shape, "fp32", "fwd+bwd", neuron="plif") / n == 24.375


# --------------------------------------------------------------------------------------------- #
# A run cut short keeps what it measured
# --------------------------------------------------------------------------------------------- #


def test_interrupted_run_keeps_finished_sizes_and_reports_them(tmp_path):
    """SIGINT (a stage's time box) during the second size of open_neuromorphic: the first size is on disk,
    marked partial, the report is built from it, and the suite after it is recorded as not-run."""
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "bench", "--device", "cpu", "--threads", "1", "--suites", "open_neuromorphic,memory",
           "--set", "open_neuromorphic:--sizes 32,3072 --T 20 --reps 40 --warmup 0 --libraries spiketriton",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    on = out / "open_neuromorphic.json"
    try:
        deadline = time.time() + 240
        while not on.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert on.exists(), "open_neuromorphic.json was not written after the first size"
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, stdout[-3000:]
    r = json.loads(on.read_text())
    assert r["partial"] is True and r["sizes_done"] == [32], stdout[-3000:]
    assert {c["n"] for c in r["cases"]} == {32}
    assert {"spiketriton", "torch (3 GEMMs)"} <= {c["library"] for c in r["cases"]}
    assert all(c["x_vs_3_gemms"] for c in r["cases"])
    assert (out / "open_neuromorphic.csv").exists()
    suites = {n: json.loads((out / f"suite-{n}.json").read_text()) for n in ("open_neuromorphic", "memory")}
    assert suites["open_neuromorphic"]["status"] == "interrupted"
    assert "open_neuromorphic.json" in suites["open_neuromorphic"]["files"]
    assert suites["memory"]["status"] == "not-run" and "interrupted during open_neuromorphic" in suites["memory"]["reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"]["open_neuromorphic"]["partial"] is True
    assert "open_neuromorphic.json (partial" in (out / "summary.md").read_text()


def test_neuron_gpu_writes_the_main_run_before_the_sweep(tmp_path, monkeypatch):
    """neuron_gpu.py (checked on the CPU with --smoke-cpu): the main numbers are on disk before the block-size
    sweep starts, so a sweep cut short does not lose them."""
    import neuron_gpu

    def interrupted_sweep(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(neuron_gpu, "block_sweep", interrupted_sweep)
    with pytest.raises(KeyboardInterrupt):
        neuron_gpu.main(["--smoke-cpu", "--out", str(tmp_path), "--neurons", "lif,plif", "--dtypes", "bf16", "--no-sj",
                         "--no-context", "--no-check", "--sweep", "--no-plot"])
    r = json.loads((tmp_path / "neuron_gpu.json").read_text())
    assert r["partial"] is True
    got = {(c["neuron"], c["pass"]) for c in r["cases"] if c["impl"] == "spiketriton"}
    assert got == {(n, p) for n in ("lif", "plif") for p in ("infer", "fwd", "bwd", "fwd+bwd")}
    assert {(s["neuron"], s["dtype"]) for s in r["goals"]["summary"]} == {("lif", "bf16"), ("plif", "bf16")}
    kb = {c["neuron"]: c["kernel_bytes"] for c in r["cases"] if c["pass"] == "fwd+bwd"}
    assert kb["plif"] - kb["lif"] == 2 * 4 * 2 * 64 * 2  # PLIF's H in fp32: +2 B written, +2 B read
    assert (tmp_path / "neuron_gpu.csv").exists()


# --------------------------------------------------------------------------------------------- #
# Versions and plots
# --------------------------------------------------------------------------------------------- #


def test_version_of_a_source_install_without_metadata():
    from _common import archive_version

    assert archive_version("norse", "norse-1.1.0.tar.gz") == "1.1.0"
    assert archive_version("norse", "norse-1.1.0-py3-none-any.whl") == "1.1.0"
    assert archive_version("norse", "norse-0.0.0-py3-none-any.whl") == "0.0.0"
    assert archive_version("norse", "something-else.tar.gz") is None


@pytest.mark.parametrize("kind,goal_line", [("cpu", False), ("cuda", True)])
def test_neuron_plot_draws_the_copy_goal_only_on_a_gpu(tmp_path, monkeypatch, kind, goal_line):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    import plots

    labels = []
    orig = Axes.axhline

    def spy(self, *a, **k):
        labels.append(k.get("label") or "")
        return orig(self, *a, **k)

    monkeypatch.setattr(Axes, "axhline", spy)
    rows = [{"neuron": "lif", "dtype": "fp32", "pass": "fwd+bwd", "impl": impl, "median_ms": ms, "gbps": gb}
            for impl, ms, gb in (("spiketriton", 1.0, 10.0), ("spikingjelly", 2.0, 5.0))]
    result = {"benchmark": "neuron_cpu" if kind == "cpu" else "neuron_gpu", "device": {"kind": kind, "name": kind},
              "versions": {"torch": torch.__version__}, "date": "today", "cases": rows,
              "copy_bandwidth": {"gbps": 20.0}, "config": {"shape_TBN": [4, 2, 64]}}
    assert plots.plot_neuron(result, tmp_path / "n.png")
    assert any("measured copy" in s for s in labels)
    assert any("(goal)" in s for s in labels) == goal_line, labels


# --------------------------------------------------------------------------------------------- #
# bench/test_*.py: outside testpaths, so run here once each (no timing)
# --------------------------------------------------------------------------------------------- #


def test_bench_pytest_files_pass():
    """bench/test_neuron_cpu.py and bench/test_spike_matmul_cpu.py are pytest-benchmark files that CI does not
    collect (testpaths = tests): run them with --benchmark-disable (each case once, as a plain test, ~20 s) so
    that a change that breaks them fails here."""
    pytest.importorskip("pytest_benchmark")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                           "bench"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-2000:]


# --------------------------------------------------------------------------------------------- #
# Roofline arithmetic (bench/roofline.py)
# --------------------------------------------------------------------------------------------- #


def test_roofline_of_a_bf16_gemm_on_an_h200_is_compute_bound():
    """torch.matmul bf16 at 4096^3 on an H200, copy bandwidth 4300 GB/s, measured 0.2 ms: bytes = A, B and C once
    (3 * 4096^2 * 2), flops = 2 * 4096^3; compute bound 2*4096^3 / 989.5e12 s = 0.1389 ms beats the memory bound
    (100.7 MB / 4.3 TB/s = 0.0234 ms), so the fraction is 0.1389 / 0.2."""
    import roofline

    nb, terms = roofline.matmul_case("fwd", "torch.matmul", "bf16", 4096, 4096, 4096)
    assert nb == 3 * 4096 * 4096 * 2
    r = roofline.roofline(nb, terms, 4300.0, "NVIDIA H200", measured_ms=0.2)
    flops = 2 * 4096**3
    assert r["flops"] == r["tc_flops"] == flops
    assert r["memory_bound_ms"] == pytest.approx(nb / 4300e9 * 1e3)
    assert r["compute_bound_ms"] == pytest.approx(flops / 989.5e12 * 1e3)
    assert r["bound_ms"] == pytest.approx(0.138898, rel=1e-4) and r["bound_by"] == "compute"
    assert r["roofline_fraction"] == pytest.approx(0.138898 / 0.2, rel=1e-4)
    assert "bound_note" not in r


def test_roofline_fp32_spike_matmul_counts_three_bf16_products_and_packed_spikes():
    import roofline

    M = K = N = 4096
    nb, terms = roofline.matmul_case("fwd", "spike_matmul", "fp32", M, K, N)
    assert nb == M * K // 8 + N * K * 4 + M * N * 4  # packed spikes, fp32 W and Y
    r = roofline.roofline(nb, terms, 4300.0, "NVIDIA H100 80GB HBM3", measured_ms=1.0)
    assert r["flops"] == 2 * M * N * K and r["tc_flops"] == 3 * 2 * M * N * K
    assert r["compute_bound_ms"] == pytest.approx(3 * 2 * 4096**3 / 989.5e12 * 1e3)
    assert r["roofline_fraction"] == pytest.approx(r["bound_ms"] / 1.0)
    # cuBLAS fp32 ("highest", no TF32) runs on the CUDA cores: 67 TFLOP/s
    _, t32 = roofline.matmul_case("fwd", "torch.matmul", "fp32", M, K, N)
    assert roofline.roofline(1, t32, 4300.0, "NVIDIA H200")["compute_bound_ms"] == pytest.approx(
        2 * 4096**3 / 67e12 * 1e3)
    # dW reads dY and the packed spikes and writes dW
    assert roofline.matmul_case("dw", "spike_matmul_dw", "bf16", M, K, N)[0] == M * N * 2 + M * K // 8 + N * K * 2


def test_roofline_of_a_neuron_is_memory_bound_and_unknown_gpus_get_the_bandwidth_term_alone():
    import roofline
    from _neuron_cases import kernel_bytes

    shape = (32, 64, 65536)
    n = 32 * 64 * 65536
    nb, terms = roofline.neuron_case("lif", "fwd+bwd", shape, kernel_bytes(shape, "bf16", "fwd+bwd"))
    assert nb == 12.375 * n
    r = roofline.roofline(nb, terms, 4300.0, "NVIDIA H200", measured_ms=0.5)
    assert r["bound_by"] == "memory" and r["bound_ms"] == pytest.approx(12.375 * n / 4300e9 * 1e3)
    assert r["roofline_fraction"] == pytest.approx(r["bound_ms"] / 0.5)
    assert r["compute_bound_ms"] < 0.2 * r["memory_bound_ms"]  # the neurons' arithmetic is small
    u = roofline.roofline(nb, terms, 4300.0, "Some Future GPU", measured_ms=0.5)
    assert u["compute_bound_ms"] is None and u["bound_ms"] == r["memory_bound_ms"] and u["bound_note"]
    for name, cls in (("NVIDIA H200", "H200/H100 SXM"), ("NVIDIA H100 80GB HBM3", "H200/H100 SXM"),
                      ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA A100-SXM4-80GB", "A100"),
                      ("NVIDIA H200 NVL", None), ("NVIDIA GeForce RTX 4090", None)):
        assert roofline.gpu_class(name) == cls, name


def test_roofline_of_open_neuromorphic_at_16384():
    """The three bf16 products of one step at n = 16384, T = 500, batch 16: 12.9 TFLOP, 13.0 ms at 989.5 TFLOP/s;
    a library row adds the LIF's fused-kernel bytes and arithmetic to the products'."""
    import roofline
    from _neuron_cases import kernel_bytes

    T, B, n = 500, 16, 16384
    lif = kernel_bytes((T, B, n), "bf16", "fwd+bwd")
    g_bytes, g_terms = roofline.open_neuromorphic_case("torch (3 GEMMs)", T, B, n, "bf16", lif)
    assert g_bytes == 6 * T * B * n * 2 + 3 * n * n * 2
    rg = roofline.roofline(g_bytes, g_terms, 4300.0, "NVIDIA H200", measured_ms=16.0)
    assert rg["flops"] == 6 * T * B * n * n == pytest.approx(12.88e12, rel=1e-3)
    assert rg["bound_ms"] == pytest.approx(6 * T * B * n * n / 989.5e12 * 1e3) and rg["bound_by"] == "compute"
    s_bytes, s_terms = roofline.open_neuromorphic_case("spiketriton", T, B, n, "bf16", lif)
    assert s_bytes == g_bytes + 2 * n * 2 + lif
    rs = roofline.roofline(s_bytes, s_terms, 4300.0, "NVIDIA H200", measured_ms=18.0)
    assert rs["bound_ms"] > rg["bound_ms"] and rs["roofline_fraction"] == pytest.approx(rs["bound_ms"] / 18.0)
