"""The README's promises: its set-up commands are the ones CI runs, its headline numbers are the committed
results, its links and its plot exist, and it fits a screen. (Its python block runs in tests/test_docs.py.)"""

from __future__ import annotations

import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RESULTS = ROOT / "bench" / "results" / "cpu"

DEMO_CMD = 'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m spiketriton.demo'
TEST_CMD = "python -m pytest -q"


def setup_block() -> list[str]:
    m = re.search(r"## Set-up on a fresh machine \(two commands\)\n\n```bash\n(.*?)```", README, flags=re.S)
    assert m, "the README lost its set-up section"
    return [line.split("#")[0].strip() for line in m.group(1).splitlines() if line.strip()]


def test_two_setup_commands_are_the_ones_ci_runs():
    assert setup_block() == [DEMO_CMD, TEST_CMD]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'^\$PY -m pytest -q$', ci, flags=re.M), ".ci/run no longer runs the README's test command"
    assert 'pip install --quiet -e ".[dev]"' in ci
    pyproject = (ROOT / "pyproject.toml").read_text()   # (tomllib is Python >= 3.11; the package supports 3.10)
    for extra in ("dev", "docs"):
        assert re.search(rf"^{extra} = \[", pyproject, flags=re.M), f"pyproject.toml has no [{extra}] extra"
    assert (ROOT / "spiketriton" / "demo.py").is_file()


def test_fits_a_screen():
    n = README.count("\n")
    assert 60 <= n <= 160, f"README.md has {n} lines; keep it near 150 and move details into docs/"
    assert "DESIGN.md" not in README


def _links():
    return re.findall(r"\]\(([^)\s]+)\)", README)


def test_relative_links_and_anchors_resolve():
    links = [u for u in _links() if not re.match(r"[a-z]+://", u)]
    assert any(u.startswith("docs/") for u in links)
    for url in links:
        path, _, anchor = url.partition("#")
        target = ROOT / path
        assert target.exists(), f"README links to {path}, which does not exist"
        if anchor:
            slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                     for h in re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)}
            assert anchor in slugs, f"README links to {url}: no heading with that anchor"


def test_plot_is_a_committed_png():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", README)
    assert images, "the README shows no plot"
    for img in images:
        data = (ROOT / img).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", img
        assert img.startswith("bench/results/"), "plots in the README come from committed results"


def _load(name):
    return json.loads((RESULTS / name).read_text())


def _neuron(impl):
    return next(c["median_ms"] for c in _load("neuron_cpu.json")["cases"]
                if (c["neuron"], c["dtype"], c["pass"], c["impl"]) == ("lif", "fp32", "fwd+bwd", impl))


def _on(library, n=1024):
    return next(c["median_ms"] for c in _load("open_neuromorphic.json")["cases"]
                if c["n"] == n and c["library"] == library and c.get("fastest_of_library"))


def _saved(variant):
    return next(r["marginal_B_per_neuron_step"] for r in _load("memory.json")["saved_bytes"]
                if r["variant"] == variant and r["dtype"] == "fp32")


def _step(impl, shape="16x200"):
    return next(c["us_per_step_median"] for c in _load("step_cpu.json")["cases"]
                if (c["mode"], c["impl"], c["shape"]) == ("infer", impl, shape))


def _goal(goal_id):
    return next(g["value"] for g in _load("summary.json")["goals"] if g["id"] == goal_id)


def _ann2snn(T=32):
    d = _load("ann2snn_digits.json")
    snn = next(r for r in d["rows"] if r["model"] == "SNN (max)")
    return d["ann_accuracy"] * 100, snn["accuracy"][str(T)] * 100


# (row label in the README, the numbers that row must show, computed from the committed result files)
HEADLINES = {
    "LIF forward + backward": lambda: [f"{_neuron('spiketriton'):.1f} ms", f"{_neuron('spikingjelly'):.1f} ms"],
    "Open Neuromorphic benchmark": lambda: [f"{_on(lib):,.0f} ms" for lib in ("spiketriton", "spikingjelly", "norse",
                                                                             "snntorch")],
    "bytes saved for backward": lambda: [f"**{_saved('spiketriton packed_output'):g}**",
                                         f"SpikingJelly {_saved('spikingjelly'):g}"],
    "streaming inference": lambda: [f"**{_goal('event_matmul_vs_torch_cpu'):.2f}x**"],
    "one LIF time step": lambda: [f"**{_step('spiketriton.LIF'):.1f} us**", f"snnTorch {_step('snntorch.Leaky'):.1f} us",
                                  f"SpikingJelly {_step('spikingjelly.LIFNode'):.1f} us"],
    "ANN-to-SNN conversion": lambda: [f"ANN: {_ann2snn()[0]:.2f} %", f"**{_ann2snn()[1]:.2f} %**"],
}


@pytest.mark.parametrize("label", list(HEADLINES))
def test_headline_numbers_are_the_committed_results(label):
    row = next((line for line in README.splitlines() if line.startswith("|") and label in line), None)
    assert row is not None, f"no headline row '{label}'"
    for text in HEADLINES[label]():
        assert text in row, f"headline '{label}': the committed results say {text!r}; the README row is {row!r}"
    device = row.rstrip(" |").rsplit("|", 1)[1]
    assert "CPU" in device or "GPU" in device, f"headline '{label}' does not name its device"


def test_headline_devices_match_the_result_files():
    rows = {label: next(line for line in README.splitlines() if line.startswith("|") and label in line)
            for label in HEADLINES}
    for label, source in (("LIF forward + backward", "neuron_cpu.json"), ("Open Neuromorphic benchmark",
                          "open_neuromorphic.json"), ("bytes saved for backward", "memory.json"),
                          ("streaming inference", "event_matmul_cpu.json"), ("one LIF time step", "step_cpu.json")):
        dev = _load(source)["device"]
        assert dev["cpu_model"].replace("(R)", "").split(" Processor")[0] in rows[label], (label, dev["cpu_model"])
        assert f"{dev['torch_num_threads']} thread" in rows[label]
