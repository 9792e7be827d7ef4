"""The demo's command line refuses bad flags before any work (issue 12, same class as the export CLI):
exit status 2 and a message, where a NaN or negative --lr gave Adam's traceback (or, for inf, a
network that silently diverged), a negative --seed scikit-learn's traceback, --qat-epochs -5 skipped
quantization without a word, --device meta trained on the meta device, and an --export-dir that is a
file failed after the training."""

from __future__ import annotations

import pytest

from spiketriton import demo

BAD = [
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "-0.1"], "--lr must be a finite number > 0, got -0.1"),
    (["--qat-epochs", "-5"], "--qat-epochs must be >= -1 (-1 skips quantization, 0 skips QAT), got -5"),
    (["--seed", "-1"], "--seed must be in 0..2**32-1 (scikit-learn's split takes no other), got -1"),
    (["--seed", str(2 ** 32)], "--seed must be in 0..2**32-1"),
    (["--device", "meta"], "--device meta: the demo runs on cpu or cuda[:N], got a 'meta' device"),
    (["--device", "nonsense"], "--device: "),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--bits", "9"], "--bits must be in 2..8, got 9"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_demo_flags_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(argv + ["--backend", "torch", "--no-progress"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_export_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as exc:
        demo.main(["--export-dir", str(tmp_path / "f"), "--backend", "torch", "--no-progress"])
    assert exc.value.code == 2
    assert f"--export-dir {tmp_path / 'f'}: exists and is not a directory" in capsys.readouterr().err


FIGURE_BAD = [
    (["--figure", "x.png", "--no-figure"], "--figure and --no-figure contradict each other"),
    (["--figure", "no/such/dir/x.png"], "/no/such/dir does not exist"),
    (["--figure", "x.docx"], "--figure x.docx: matplotlib cannot write .docx files; use one of"),
    (["--figure", ""], "--figure '': expected a file name such as digits_monitor.png, got an empty name"),
]


@pytest.mark.parametrize("argv,message", FIGURE_BAD, ids=[" ".join(b[0]) for b in FIGURE_BAD])
def test_bad_figure_flags_exit_2_before_training(argv, message, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        demo.main(argv + ["--backend", "torch", "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr()
    assert message in err.err and "training" not in err.out
    with pytest.raises(SystemExit):
        demo.main(["--figure", str(tmp_path), "--backend", "torch", "--no-progress"])
    assert "expected a file name such as digits_monitor.png, got a directory" in capsys.readouterr().err


def test_figure_flag_without_matplotlib_is_a_usage_error(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SystemExit) as exc:
        demo.main(["--figure", "x.png", "--backend", "torch", "--no-progress"])
    assert exc.value.code == 2
    assert "--figure needs matplotlib, which is not installed: pip install matplotlib" in capsys.readouterr().err


def test_demo_functions_check_their_arguments():
    import torch

    with pytest.raises(ValueError, match=r"encode: T \(time steps\) must be an int >= 1, got -1"):
        demo.encode(torch.rand(2, 64), -1)
    with pytest.raises(ValueError, match=r"encode: T \(time steps\) must be an int >= 1, got 2.0"):
        demo.encode(torch.rand(2, 64), 2.0)
    with pytest.raises(TypeError, match=r"encode: x must be a tensor \[B, features\], got list"):
        demo.encode([[0.0] * 64], 2)
    with pytest.raises(ValueError, match=r"build_net: hidden must be an int >= 1, got 0"):
        demo.build_net(hidden=0)
    with pytest.raises(ValueError, match=r"unknown neuron 'lfi'; choose lif, plif or if"):
        demo.build_net("lfi")
    assert demo.encode(torch.rand(2, 64), 3).shape == (3, 2, 64)
