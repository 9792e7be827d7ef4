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
