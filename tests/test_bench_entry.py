"""CI sanity check of the benchmark entry point: ``python -m bench --quick`` runs every suite this machine
can run (CPU-sized, seconds) into a temporary folder, and every file it writes is there and well formed:
JSON and CSV stamped with device, date and versions, PNG plots that load, a goal report whose statuses are
met / unmet / not-measured, skipped suites with a reason. No timing is asserted (bench/README.md).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITES = {"neuron", "spike_matmul", "int_matmul", "memory", "open_neuromorphic"}
ISSUE_GOALS = {"neuron_copy_bandwidth", "neuron_vs_spikingjelly", "spike_matmul_vs_torch_fp32",
               "spike_matmul_vs_torch_bf16", "spike_matmul_dw_vs_torch_fp32", "spike_matmul_dw_vs_torch_bf16",
               "int_matmul_vs_torch_bf16", "open_neuromorphic_fastest", "open_neuromorphic_vs_3_gemms"}


def _bench(*args, timeout=600):
    env = dict(os.environ, BENCH_PROGRESS="0", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # tests/conftest.py sets it; the benchmarks time the real paths
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_quick")
    proc = _bench("--quick", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc


def test_list_names_every_suite():
    proc = _bench("--list", "--device", "cpu", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for s in SUITES:
        assert s in proc.stdout
    assert "int_matmul" in proc.stdout and "skipped: " in proc.stdout  # CUDA only, with its reason


def test_summary_suites_and_goals(quick_run):
    out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"]["kind"] == "cpu" and summary["device"]["name"]
    for key in ("torch", "triton", "spiketriton", "spikingjelly", "snntorch", "norse"):
        assert key in summary["versions"]  # None when a peer is not installed
    assert summary["date"]
    assert set(summary["suites"]) == SUITES
    for name, s in summary["suites"].items():
        assert s["status"] in ("ran", "skipped"), (name, s)
        if s["status"] == "skipped":
            assert s["reason"], name
        else:
            assert s["files"], name
    assert summary["suites"]["int_matmul"]["status"] == "skipped"
    goals = {g["id"]: g for g in summary["goals"]}
    assert ISSUE_GOALS <= set(goals)
    for g in goals.values():
        assert g["status"] in ("met", "unmet", "not-measured"), g
        if g["status"] == "not-measured":
            assert g["reason"], g
    for gid in ISSUE_GOALS:  # GPU goals: a CPU run cannot measure them
        assert goals[gid]["status"] == "not-measured"
    md = (out / "summary.md").read_text()
    assert "## Goals" in md and "## Headline numbers" in md


def test_every_json_and_csv_is_stamped(quick_run):
    out, _ = quick_run
    jsons = sorted(out.glob("*.json"))
    names = {p.name for p in jsons}
    for expected in ("neuron_cpu.json", "spike_matmul_cpu.json", "memory.json", "open_neuromorphic.json"):
        assert expected in names
    for p in jsons:
        r = json.loads(p.read_text())
        assert r["date"] and r["device"]["name"] and r["versions"]["torch"], p.name
    csvs = sorted(out.glob("*.csv"))
    assert len(csvs) >= 5
    for p in csvs:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows, p.name
        for col in ("device", "date", "versions"):
            assert col in rows[0] and rows[0][col], (p.name, col)
        assert "torch " in rows[0]["versions"]
    on = json.loads((out / "open_neuromorphic.json").read_text())
    libs = {c["library"] for c in on["cases"]}
    assert {"spiketriton", "torch (3 GEMMs)"} <= libs
    skipped = {s["library"] for s in on["skipped"]}
    for lib in ("spikingjelly", "snntorch", "norse"):
        assert lib in libs or lib in skipped  # measured, or skipped with a reason


def test_plots_are_pngs_that_load(quick_run):
    pytest.importorskip("matplotlib")
    from matplotlib import image
    from PIL import Image

    out, _ = quick_run
    for name in ("neuron.png", "spike_matmul.png", "memory.png", "open_neuromorphic.png"):
        p = out / name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        img = image.imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400, (name, img.shape)
        desc = Image.open(p).text.get("Description", "")
        assert "torch " in desc and "spiketriton " in desc, (name, desc)
