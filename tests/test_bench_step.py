"""bench/step_cpu.py (the ``step`` suite, issue 13's cheap single step): a tiny run records every impl or the
reason it was skipped, the checks that make its numbers mean something (fused = torch ops bit for bit, the fused
path taken once per step, LIF = SpikingJelly's LIFNode, the training gradients) catch a wrong fused step, and the
report's goal reads the file. No timing is asserted (bench/README.md).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import step_cpu  # noqa: E402

from spiketriton.kernels import neuron_cpu  # noqa: E402

needs_fused = pytest.mark.skipif(not neuron_cpu.status()[0], reason="the fused CPU neuron is not built here")


def _case(impl, us, mode="infer", shape="16x200"):
    return {"mode": mode, "impl": impl, "shape": shape, "us_per_step_median": us, "us_per_step_min": us * 0.8}


def _write(folder: Path, cases, **extra):
    r = {"benchmark": "step_cpu", "device": {"kind": "cpu", "name": "cpu"}, "date": "d", "versions": {},
         "command": "python bench/step_cpu.py", "config": {"quick": False, "torch_num_threads": 1},
         "neuron_cpu_status": {"in_use": True, "why": "built"}, "cases": cases}
    r.update(extra)
    (folder / "step_cpu.json").write_text(json.dumps(r))


def test_report_goal_from_synthetic_results(tmp_path):
    import report

    def goal():
        return {g["id"]: g for g in report.goals(report.load_results(tmp_path))}["step_cpu_vs_snntorch"]

    assert goal()["status"] == "not-measured" and "step_cpu.json" in goal()["reason"]
    peers = [_case("snntorch.Leaky", 40.0), _case("spiketriton.LIF", 999.0, shape="1x1024"),
             _case("spiketriton.LIF", 999.0, mode="train")]
    _write(tmp_path, peers + [_case("spiketriton.LIF", 20.0)])
    g = goal()
    assert g["status"] == "met" and g["value"] == 0.5 and g["detail"]["snntorch_us"] == 40.0, g  # the [16, 200] row
    _write(tmp_path, peers + [_case("spiketriton.LIF", 41.0)])
    assert goal()["status"] == "unmet" and goal()["value"] == round(41 / 40, 3)
    _write(tmp_path, peers + [_case("spiketriton.LIF", 20.0)], config={"quick": True})
    assert goal()["status"] == "not-measured" and "quick" in goal()["reason"]
    # without the fused path only the [torch ops] row exists: not measured, and the reason says where to look
    _write(tmp_path, peers + [_case("spiketriton.LIF[torch ops]", 20.0)])
    assert goal()["status"] == "not-measured" and "neuron_cpu_status" in goal()["reason"]


@needs_fused
def test_checks_catch_a_fused_step_that_differs(monkeypatch):
    """The agreement check is not a formality: a fused forward whose potential is off by 1e-3 is reported."""
    infer, train, _ = step_cpu.available_impls(True)
    assert step_cpu.check_shape(2, 24, infer, train, T=3)["ok"]
    real = neuron_cpu.neuron_forward

    def off(*a, **k):
        spikes, v, *rest = real(*a, **k)
        return (spikes, v + 1e-3, *rest)

    monkeypatch.setattr(neuron_cpu, "neuron_forward", off)
    chk = step_cpu.check_shape(2, 24, infer, [], T=3)
    assert not chk["ok"]
    for n in step_cpu.ST_NEURONS:
        c = chk["fused_vs_torch_ops"][n]
        assert not c["ok"] and c["v_max_abs_diff"] > 0 and c["fused_calls_per_step"] == 1, (n, c)


@needs_fused
def test_checks_see_when_the_fused_path_is_not_taken():
    infer, _, _ = step_cpu.available_impls(True)
    with neuron_cpu.disabled():  # the "fused" variants then run the torch ops: no C call observed
        chk = step_cpu.check_shape(1, 16, infer, [], T=2)
    assert not chk["ok"]
    assert all(c["fused_calls_per_step"] == 0 and not c["ok"] for c in chk["fused_vs_torch_ops"].values())


def test_tiny_run_records_every_impl_checks_and_threads(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rc = step_cpu.main(["--shapes", "1x16,3x20", "--steps", "2", "--rounds", "2", "--warmup", "0", "--train-T",
                            "3", "--train-rounds", "1", "--out", str(tmp_path)])
        assert torch.get_num_threads() == 2  # the runner's process gets its thread count back
    finally:
        torch.set_num_threads(before)
    assert rc == 0
    r = json.loads((tmp_path / "step_cpu.json").read_text())
    assert r["benchmark"] == "step_cpu" and r["partial"] is False and r["config"]["torch_num_threads"] == 1
    assert r["config"]["threads_why"] and r["device"]["load_average_after"] is not None
    fused, why = neuron_cpu.status()
    assert r["neuron_cpu_status"] == {"in_use": fused, "why": why}
    skipped = {s["impl"] for s in r["skipped"]}
    want_infer = [f"spiketriton.{n}{p}" for n in step_cpu.ST_NEURONS for p in (("", "[torch ops]") if fused else
                                                                              ("[torch ops]",))]
    for impl in want_infer + list(step_cpu.PEER_INFER):
        for shape in ("1x16", "3x20"):
            rows = [c for c in r["cases"] if (c["impl"], c["shape"], c["mode"]) == (impl, shape, "infer")]
            assert len(rows) == 1 or impl in skipped, (impl, shape)
    for c in r["cases"]:
        assert c["us_per_step_min"] > 0 and c["us_per_step_median"] >= c["us_per_step_min"], c
        assert c["steps_per_call"] == (2 if c["mode"] == "infer" else 3)
        assert c["rounds"] == (2 if c["mode"] == "infer" else 1)
        assert c["path"] == (None if c["library"] != "spiketriton" else
                             "torch ops" if c["impl"].endswith("[torch ops]") else "fused C")
    train = {c["impl"] for c in r["cases"] if c["mode"] == "train"}
    assert {"spiketriton.LIF[torch ops]"} <= train <= set(step_cpu.TRAIN_IMPLS)
    for c in r["cases"]:  # the ratios are against snnTorch's row of the same mode and shape
        snn = [o for o in r["cases"] if (o["impl"], o["shape"], o["mode"]) == ("snntorch.Leaky", c["shape"], c["mode"])]
        assert c["x_snntorch"] == (snn[0]["us_per_step_median"] / c["us_per_step_median"] if snn else None)
    assert [c["shape"] for c in r["checks"]] == ["1x16", "3x20"]
    for chk in r["checks"]:
        assert chk["ok"], chk
        assert set(chk["fused_vs_torch_ops"]) == (set(step_cpu.ST_NEURONS) if fused else set())
        if "spikingjelly.LIFNode" not in skipped:
            assert chk["lif_vs_spikingjelly"]["spike_mismatches"] == 0 and chk["lif_vs_spikingjelly"]["firing_rate"] > 0
    with open(tmp_path / "step_cpu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(r["cases"]) and rows[0]["device"] and "torch " in rows[0]["versions"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "step_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, what", [(["--shapes", "16"], "BxN"), (["--shapes", "0x4"], "positive"),
                                        (["--steps", "0"], "--steps"), (["--warmup", "-1"], "--warmup")])
def test_bad_arguments_name_the_option(argv, what, tmp_path):
    with pytest.raises(SystemExit, match=what):
        step_cpu.main(argv + ["--out", str(tmp_path)])
