"""The demo (``python -m spiketriton.demo``) learns the digits well above chance, reproducibly.

The tests force ``backend="torch"`` on the CPU: the conftest sets TRITON_INTERPRET=1 on machines
without CUDA, and under "auto" the demo would then train through the (very slow) Triton interpreter.
The kernels themselves are tested in test_neuron_kernels.py.

Threshold: ``--quick`` (2 epochs, T=4, 256 hidden LIF neurons) measured on a 2-core CPU
(2026-11-22), test accuracy over seeds 0-9:
    lif  0.875 0.942 0.917 0.906 0.928 0.917 0.919 0.917 0.925 0.883  (min 0.875)
    plif 0.875 0.947 0.917 0.939 0.903 0.925 0.911 0.906 0.944 0.881  (min 0.875)
    if   0.939 0.950 0.939 0.944 0.936 0.942 0.950 0.950 0.928 0.939  (min 0.928)
Chance is 0.10; an untrained or broken network (no gradient through the spikes, wrong reset) stays
near it. 0.80 leaves a margin of more than 7 points below the worst measured seed.
Each run takes about 1-2 s (data loading included).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

import spiketriton as st

pytest.importorskip("sklearn", reason="the demo needs scikit-learn (installed by .ci/run); a bare GPU image lacks it")

from spiketriton import demo  # noqa: E402

QUICK_MIN_TEST_ACCURACY = 0.80
CPU = ["--backend", "torch", "--device", "cpu", "--no-progress", "--no-figure"]  # no figure in the current directory
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.filterwarnings("ignore:prepare. PLIF's learnable tau is fixed")  # expected for --neuron plif
@pytest.mark.parametrize("neuron", ["lif", "plif", "if"])
def test_quick_demo_learns(neuron, capsys):
    result = demo.main(["--quick", "--neuron", neuron, "--seed", "0", *CPU])
    assert result["test_accuracy"] >= QUICK_MIN_TEST_ACCURACY, result
    assert result["train_accuracy"] >= QUICK_MIN_TEST_ACCURACY, result
    assert result["epochs"] == demo.QUICK_EPOCHS
    assert result["seconds"] > 0
    # the quantization step: PTQ int8, then one QAT epoch, both measured in integer inference
    # (quick lif runs, seeds 0-5: PTQ 0.878-0.942, QAT 0.906-0.956)
    assert result["ptq_accuracy"] >= QUICK_MIN_TEST_ACCURACY, result
    assert result["qat_accuracy"] >= QUICK_MIN_TEST_ACCURACY, result
    assert result["qmodel"].q_mode == "quantized"
    out = capsys.readouterr().out
    assert "neurons run on: PyTorch path" in out
    assert "TEST accuracy" in out and "QAT int8: integer TEST accuracy" in out
    # the export: the chip file, run by the numpy integer simulator, equals the quantized model bit for bit
    assert "output spikes equal the quantized model's bit for bit" in out
    assert result["chip_accuracy"] == result["qat_accuracy"]
    # NIR: the trained float network read back by from_nir gives the same spikes (hence accuracy)
    assert result["nir_accuracy"] == result["test_accuracy"]


def test_demo_is_reproducible_and_leaves_global_rng_alone():
    rng_before = torch.get_rng_state()
    args = ["--quick", "--epochs", "1", "--hidden", "32", "--seed", "3", *CPU]
    a, b = demo.main(args), demo.main(args)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert a["test_accuracy"] == b["test_accuracy"]
    assert a["train_loss"] == b["train_loss"]
    for pa, pb in zip(a["model"].parameters(), b["model"].parameters()):
        assert torch.equal(pa, pb)


def test_export_dir_keeps_the_chip_file(tmp_path, capsys):
    from spiketriton.export import load_chip

    result = demo.main(["--quick", "--epochs", "1", "--qat-epochs", "0", "--hidden", "16", "--export-dir",
                        str(tmp_path / "out"), *CPU[:-1]])
    program = load_chip(tmp_path / "out" / "digits.chip")
    assert (tmp_path / "out" / "digits.nir").stat().st_size > 0
    assert program.input_shape == (64,) and program.output_shape == (10,)
    assert result["chip_accuracy"] == result["ptq_accuracy"]
    out = capsys.readouterr().out
    assert f"chip export: {tmp_path / 'out' / 'digits.chip'}" in out
    # the monitor figure goes where the other outputs go
    figure = tmp_path / "out" / demo.FIGURE_NAME
    assert result["figure"] == str(figure) and figure.read_bytes()[:8] == PNG
    assert f"monitor figure: {figure} (spike rasters, membrane traces" in out


def _is_png(path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    data = path.read_bytes()
    return data[:8] == PNG and matplotlib.image.imread(path).shape[2] in (3, 4)


def test_monitor_figure_without_export_dir_is_kept_in_the_current_directory(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    result = demo.main(["--epochs", "1", "--qat-epochs", "-1", "--hidden", "16", *CPU[:-1]])
    figure = tmp_path / demo.FIGURE_NAME
    assert _is_png(figure) and figure.stat().st_size > 10_000
    assert os.path.samefile(result["figure"], figure)
    assert f"monitor figure: {figure} (" in capsys.readouterr().out
    # the monitor is gone: no hooks, store_v_seq as before, the state reset
    for m in result["model"].modules():
        assert not m._forward_hooks
        if isinstance(m, st.BaseNeuron):
            assert not m.store_v_seq and m.v is None


def test_figure_flag_chooses_the_file_and_no_figure_skips_it(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    args = ["--epochs", "1", "--qat-epochs", "-1", "--hidden", "8", *CPU[:-1]]
    result = demo.main(args + ["--figure", "sub.svg"])
    assert result["figure"] == "sub.svg" and (tmp_path / "sub.svg").read_text().lstrip().startswith("<?xml")
    assert demo.main(args + ["--no-figure"])["figure"] is None
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # not installed: the demo says so and goes on
    assert demo.main(args)["figure"] is None
    assert "monitor figure skipped: matplotlib is not installed (pip install matplotlib)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.svg"]


def test_explicit_flags_override_quick():
    result = demo.main(["--quick", "--epochs", "1", "--T", "2", "--hidden", "8", *CPU])
    assert (result["epochs"], result["T"], result["hidden"]) == (1, 2, 8)
    # the trained network is returned for later steps (quantization, export) and is reset
    assert all(getattr(m, "v", None) is None for m in result["model"].modules())


def test_plain_prints_without_tqdm(monkeypatch, capsys):
    monkeypatch.setattr(demo, "tqdm", None)
    demo.main(["--epochs", "2", "--T", "2", "--hidden", "8", "--backend", "torch", "--device", "cpu", "--no-figure"])
    out = capsys.readouterr().out
    assert "epoch 1/2: train loss" in out and "epoch 2/2: train loss" in out


def test_bad_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--T", "0", *CPU])
    assert exc.value.code == 2
    assert "--T must be >= 1" in capsys.readouterr().err


def test_encode_is_time_first():
    x = torch.rand(5, 64)
    seq = demo.encode(x, 3)
    assert seq.shape == (3, 5, 64)
    assert torch.equal(seq[2], x)
