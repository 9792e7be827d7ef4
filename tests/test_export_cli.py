"""``python -m spiketriton export``: end to end in a subprocess (--chip, --nir), and every bad
argument as a usage error (exit status 2) with a message saying what was wrong."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import demo
from spiketriton.export import cli, load_chip

from helpers import calibrated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACTORIES = textwrap.dedent("""
    import spiketriton as st
    from torch import nn

    def averaging():  # AvgPool2d of spikes: fractions, not integers
        return nn.Sequential(st.StepWise(nn.Conv2d(1, 2, 3, padding=1)), st.LIF(), st.StepWise(nn.AvgPool2d(2)),
                             nn.Flatten(2), nn.Linear(8, 2), st.LIF())

    def broken():
        raise RuntimeError("no model today")

    def unlinked():  # a neuron fed through a ReLU, not directly by a layer: quant.prepare refuses it
        return nn.Sequential(nn.Linear(64, 8), nn.ReLU(), st.LIF())

    def not_a_model():
        return 42

    def exits():
        sys.exit(0)

    def interrupted():
        raise KeyboardInterrupt

    class ExitsInForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(64, 8), st.LIF()

        def forward(self, x):
            sys.exit(3)

    def exits_in_forward():
        return ExitsInForward()

    NOT_CALLABLE = 3
""").replace("import spiketriton as st", "import sys\n\nimport spiketriton as st")

# modules whose import does not return normally (each its own file: a failed import is not cached)
HOSTILE_MODULES = {
    "exit_zero": "import sys\nsys.exit(0)\n",
    "exit_none": "raise SystemExit\n",
    "exit_message": "raise SystemExit('bye')\n",
    "base_exception": "class Boom(BaseException):\n    pass\nraise Boom('not an Exception')\n",
    "interrupt_on_import": "raise KeyboardInterrupt\n",
}


def quantized_demo_net(seed=0):
    """``demo.build_net()`` (the CLI's factory), quantized; returns it and a test input."""
    torch.manual_seed(seed)
    net = demo.build_net(backend="torch")
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(8.0)
    x = demo.encode(torch.rand(5, 64), 4)
    return calibrated(net, x).quantize(), x


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    q, x = quantized_demo_net()
    q.save_quantized_model(str(d / "q.safetensors"))
    q.reset()
    with torch.no_grad():
        want = q(x)
    q.restore_float()
    q.save_quantized_model(str(d / "float.safetensors"))
    (d / "clifactories.py").write_text(FACTORIES)
    for name, text in HOSTILE_MODULES.items():
        (d / f"{name}.py").write_text(text)
    avg = calibrated_averaging(d)
    avg.save_quantized_model(str(d / "avg.safetensors"))
    return {"dir": d, "x": x, "want": want}


def calibrated_averaging(d):
    import importlib.util

    spec = importlib.util.spec_from_file_location("clifactories_local", d / "clifactories.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.averaging()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(4.0)
    return calibrated(net, torch.rand(3, 2, 1, 4, 4) * 4).quantize()


def run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(cwd)]))
    return subprocess.run([sys.executable, "-m", "spiketriton", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_chip_end_to_end(files):
    d = files["dir"]
    r = run_cli("export", "--chip", "out.chip", "--model", "spiketriton.demo:build_net", "--weights", "q.safetensors",
                "--input-shape", "64", cwd=d)
    assert r.returncode == 0, r.stderr
    assert "wrote out.chip: chip format v1, [64] -> [10] spikes (linear, neuron, linear, neuron)" in r.stdout
    got = load_chip(d / "out.chip").run(files["x"])
    assert files["want"].float().mean() > 0.05  # the output neurons fire
    assert np.array_equal(got, files["want"].numpy())


def test_cli_nir_end_to_end(files):
    nir = pytest.importorskip("nir")
    d = files["dir"]
    r = run_cli("export", "--nir", "out.nir", "--model", "spiketriton.demo:build_net", "--weights", "q.safetensors",
                "--input-shape", "64", cwd=d)
    assert r.returncode == 0, r.stderr
    assert "wrote out.nir: NIR graph" in r.stdout
    graph = nir.read(str(d / "out.nir"))
    assert {"input", "output"} <= set(graph.nodes) and len(graph.nodes) == 6


def test_cli_export_error_exits_1(files):
    r = run_cli("export", "--chip", "avg.chip", "--model", "clifactories:averaging", "--weights", "avg.safetensors",
                "--input-shape", "1,4,4", cwd=files["dir"])
    assert r.returncode == 1
    assert "python -m spiketriton export: error: save_chip: net.2.0: AvgPool2d averages" in r.stderr
    assert not (files["dir"] / "avg.chip").exists()


def test_output_errors_are_usage_errors_without_traceback(files):
    """An output path that cannot be written: a message and exit status 2, before any work is done."""
    r = run_cli("export", "--chip", "no/such/dir/x.chip", "--model", "spiketriton.demo:build_net", "--weights",
                "q.safetensors", "--input-shape", "64", cwd=files["dir"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"--chip no/such/dir/x.chip: the directory {files['dir'] / 'no/such/dir'} does not exist" in r.stderr


def test_write_failure_is_a_usage_error(files, capsys, monkeypatch):
    """The file system refusing the write (here: no permission; tests run as root, where os.access
    says yes to everything) is reported as such, exit status 2."""
    from spiketriton.export import chip

    monkeypatch.chdir(files["dir"])

    def refuse(path, data, who):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(chip, "write_atomic", refuse)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--chip", "out3.chip", "--model", "spiketriton.demo:build_net", "--weights", "q.safetensors",
                  "--input-shape", "64"])
    assert exc.value.code == 2
    assert "--chip out3.chip: cannot write the file: Permission denied" in capsys.readouterr().err
    assert not os.path.exists("out3.chip")


def test_prepare_error_is_a_model_error(files, capsys, monkeypatch):
    """quant.prepare() refusing the model is reported against --model (exit 1: the model cannot be
    expressed), not as a --weights problem."""
    monkeypatch.chdir(files["dir"])
    monkeypatch.syspath_prepend(str(files["dir"]))
    code = cli.main(["--chip", "out4.chip", "--model", "clifactories:unlinked", "--weights", "q.safetensors",
                     "--input-shape", "64"])
    err = capsys.readouterr().err
    assert code == 1 and "--weights" not in err
    assert "error: --model clifactories:unlinked: quant.prepare() cannot convert the model: QModel: 1 QLIF" in err
    assert not os.path.exists("out4.chip")


def test_unknown_command_is_a_usage_error(files):
    r = run_cli("frobnicate", cwd=files["dir"])
    assert r.returncode == 2 and "unknown command 'frobnicate'; the commands are: demo, export" in r.stderr


BAD = [
    ("no_output", [], "one of the arguments --chip --nir is required"),
    ("both_outputs", ["--nir", "x.nir"], "argument --nir: not allowed with argument --chip"),
    ("model_without_colon", ["--model", "spiketriton.demo"], "--model must be pkg.module:factory"),
    ("model_not_importable", ["--model", "no_such_module_xyz:f"], "cannot import no_such_module_xyz"),
    ("model_no_attribute", ["--model", "spiketriton.demo:nope"], "spiketriton.demo has no attribute 'nope'"),
    ("model_not_callable", ["--model", "clifactories:NOT_CALLABLE"], "NOT_CALLABLE is not callable"),
    ("factory_raises", ["--model", "clifactories:broken"], "calling the factory failed: RuntimeError: no model today"),
    ("factory_not_a_module", ["--model", "clifactories:not_a_model"],
     "the factory returned an object of type int, expected a torch.nn.Module"),
    ("weights_missing", ["--weights", "nothere.safetensors"], "--weights nothere.safetensors: no such file"),
    ("weights_a_directory", ["--weights", "."], "--weights: . is a directory; expected a regular file"),
    ("output_dir_missing", ["--chip", "no/such/dir/x.chip"], "--chip no/such/dir/x.chip: the directory "),
    ("output_is_a_directory", ["--chip", "."], "--chip .: is a directory; give the path of the file to write"),
    ("nir_output_dir_missing", ["--chip", None, "--nir", "no/dir/x.nir"], "--nir no/dir/x.nir: the directory "),
    ("weights_other_model", ["--weights", "avg.safetensors"], "the file does not match the model"),
    ("weights_not_quantized", ["--weights", "float.safetensors"], "holds a model in 'float' mode; the chip format"),
    ("input_shape_not_numbers", ["--input-shape", "8x8"], "--input-shape must be positive integers"),
    ("input_shape_zero", ["--input-shape", "0"], "--input-shape must be positive integers"),
    ("input_shape_wrong", ["--input-shape", "63"], "the model cannot run on an input [T, B, 63]"),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_arguments_exit_2(files, change, message, capsys, monkeypatch):
    monkeypatch.chdir(files["dir"])
    monkeypatch.syspath_prepend(str(files["dir"]))
    args = {"--chip": "out2.chip", "--model": "spiketriton.demo:build_net", "--weights": "q.safetensors",
            "--input-shape": "64"}
    argv = []
    if change:
        args.update(dict(zip(change[::2], change[1::2])))
    else:
        args.pop("--chip")
    for k, v in args.items():
        if v is not None:
            argv += [k, v]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists("out2.chip")


def test_main_dispatch(capsys):
    from spiketriton.__main__ import main

    assert main(["--help"]) == 0 and "python -m spiketriton export" in capsys.readouterr().out
    assert main([]) == 2 and "no command" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--input-shape" in out
    assert "exit status: 0 written; 1 the model cannot be expressed" in out and "130 interrupted" in out


def test_demo_factory_builds_the_demo_network():
    net = demo.build_net()
    assert [type(m) for m in net] == [nn.Linear, st.LIF, st.SpikeLinear, st.LIF]


# ------------------------------------------------------------------------------------------- #
# issue 12: user code that exits, outputs that are inputs, shapes beyond the limit, odd files
# ------------------------------------------------------------------------------------------- #


def test_a_module_that_exits_on_import_fails(files):
    """It used to give exit status 0, no file and no message."""
    r = run_cli("export", "--chip", "exit.chip", "--model", "exit_zero:f", "--weights", "q.safetensors",
                "--input-shape", "64", cwd=files["dir"])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--model exit_zero:f: cannot import exit_zero: the code called sys.exit(0) (SystemExit)" in r.stderr
    assert not (files["dir"] / "exit.chip").exists()


ABORTS = [
    ("exit_none:f", "cannot import exit_none: the code called sys.exit(None) (SystemExit)"),
    ("exit_message:f", "cannot import exit_message: the code called sys.exit('bye') (SystemExit)"),
    ("base_exception:f", "cannot import base_exception: Boom: not an Exception"),
    ("clifactories:exits", "calling the factory failed: the code called sys.exit(0) (SystemExit)"),
    ("clifactories:exits_in_forward", "quant.prepare() ran the model's code: the code called sys.exit(3) (SystemExit)"),
]


@pytest.mark.parametrize("model,message", ABORTS, ids=[a[0] for a in ABORTS])
def test_user_code_that_does_not_return_is_a_bad_model(files, model, message, capsys, monkeypatch):
    monkeypatch.chdir(files["dir"])
    monkeypatch.syspath_prepend(str(files["dir"]))
    with pytest.raises(SystemExit) as exc:
        cli.main(["--chip", "abort.chip", "--model", model, "--weights", "q.safetensors", "--input-shape", "64"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: --model {model}: " in err and message in err, err
    assert not os.path.exists("abort.chip")


@pytest.mark.parametrize("model", ["interrupt_on_import:f", "clifactories:interrupted"])
def test_a_keyboard_interrupt_is_reported(files, model, capsys, monkeypatch):
    monkeypatch.chdir(files["dir"])
    monkeypatch.syspath_prepend(str(files["dir"]))
    code = cli.main(["--chip", "abort.chip", "--model", model, "--weights", "q.safetensors", "--input-shape", "64"])
    assert code == 130
    assert "python -m spiketriton export: interrupted (KeyboardInterrupt); no file was written" in \
        capsys.readouterr().err
    assert not os.path.exists("abort.chip")


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


@pytest.mark.parametrize("how", ["same_path", "symlink", "hardlink", "nir", "module_source"])
def test_an_output_that_is_an_input_is_refused(files, how, tmp_path, capsys, monkeypatch):
    """--chip X --weights X used to overwrite the weights with the chip file."""
    d = files["dir"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = _copy(d / "q.safetensors", tmp_path / "w.safetensors")
    before = weights.read_bytes()
    _copy(d / "clifactories.py", tmp_path / "myfactories.py")
    out_flag, out, what = "--chip", "w.safetensors", "--weights w.safetensors"
    if how == "symlink":
        (tmp_path / "link.chip").symlink_to(weights)
        out = "link.chip"
    elif how == "hardlink":
        os.link(weights, tmp_path / "hard.chip")
        out = "hard.chip"
    elif how == "nir":
        out_flag = "--nir"
    elif how == "module_source":
        out, what = "myfactories.py", "--model myfactories:not_a_model (its source file)"
    with pytest.raises(SystemExit) as exc:
        cli.main([out_flag, out, "--model", "myfactories:not_a_model" if how == "module_source" else
                  "spiketriton.demo:build_net", "--weights", "w.safetensors", "--input-shape", "64"])
    assert exc.value.code == 2
    assert f"error: {out_flag} {out}: is the same file as {what}" in capsys.readouterr().err
    assert weights.read_bytes() == before
    assert (tmp_path / "myfactories.py").read_text() == (d / "clifactories.py").read_text()


def test_an_input_shape_beyond_the_limit_is_a_usage_error(files):
    """It used to allocate the input: a traceback and exit status 1."""
    r = run_cli("export", "--chip", "big.chip", "--model", "spiketriton.demo:build_net", "--weights", "q.safetensors",
                "--input-shape", "100000000000", cwd=files["dir"])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert ("--input-shape 100000000000: 100000000000 features per sample and time step, beyond the limit of "
            "16777216") in r.stderr
    assert not (files["dir"] / "big.chip").exists()


@pytest.mark.parametrize("shape,message", [
    ("4096,4097", "16781312 features per sample and time step, beyond the limit of 16777216"),
    ("1,1,1,1,1,1,1,1,64", "9 dimensions, beyond the limit of 8"),
])
def test_input_shape_limits(files, shape, message, capsys, monkeypatch):
    monkeypatch.chdir(files["dir"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["--chip", "s.chip", "--model", "spiketriton.demo:build_net", "--weights", "q.safetensors",
                  "--input-shape", shape])
    assert exc.value.code == 2 and f"--input-shape {shape}: {message}" in capsys.readouterr().err


def _alarm(signum, frame):
    raise TimeoutError("the command hung on a FIFO")


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(signal, "SIGALRM"), reason="needs FIFOs and SIGALRM")
@pytest.mark.parametrize("kind", ["FIFO", "character device"])
def test_weights_that_are_not_a_regular_file(files, kind, tmp_path, capsys, monkeypatch):
    """They used to be reported as 'no such file'."""
    monkeypatch.chdir(tmp_path)
    if kind == "FIFO":
        os.mkfifo(tmp_path / "w.safetensors")
    else:
        (tmp_path / "w.safetensors").symlink_to("/dev/zero")
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main(["--chip", "out.chip", "--model", "spiketriton.demo:build_net", "--weights", "w.safetensors",
                      "--input-shape", "64"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert exc.value.code == 2
    assert f"error: --weights: w.safetensors is a {kind}; expected a regular file" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_an_output_that_is_not_a_regular_file_is_refused(files, tmp_path, capsys, monkeypatch):
    # the writer replaces the output by a rename: a FIFO (or /dev/null) would be replaced by a regular file
    monkeypatch.chdir(tmp_path)
    os.mkfifo(tmp_path / "out.chip")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--chip", "out.chip", "--model", "spiketriton.demo:build_net", "--weights",
                  str(files["dir"] / "q.safetensors"), "--input-shape", "64"])
    assert exc.value.code == 2
    assert "--chip out.chip: is a FIFO; the output must be a regular file (or a new path)" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out.chip").st_mode)
