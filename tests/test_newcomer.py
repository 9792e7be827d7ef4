"""The first hour of a new user (issue 16): the command line's --version and --help, examples that run on
what the demo produces, the demo's output (temporary files, the loss it names, progress in one form, its
thread count), what `python -m bench --quick` reports (agreement, the memory goal, like-for-like firing
rates, the thread count and why), the quantized model's public class and file mode, and the hints for
habits from SpikingJelly and snnTorch.

The demo runs with ``--backend torch`` on the CPU (the conftest sets TRITON_INTERPRET=1, under which "auto"
would train through the Triton interpreter) and small sizes; the whole file takes ~20 s on one thread.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import stat
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton import _hints, quant
from spiketriton.__main__ import COMMANDS, main as cli_main

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
CPU = ["--backend", "torch", "--device", "cpu", "--no-progress", "--no-figure"]
SMALL = ["--epochs", "1", "--qat-epochs", "0", "--hidden", "16", *CPU]


def _demo():
    pytest.importorskip("sklearn", reason="the demo needs scikit-learn")
    from spiketriton import demo

    return demo


# --------------------------------------------------------------------------------------------- #
# python -m spiketriton
# --------------------------------------------------------------------------------------------- #


def test_version(capsys):
    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"spiketriton {st.__version__}"
    assert cli_main(["-V"]) == 0 and st.__version__ in capsys.readouterr().out


def test_help_lists_every_command_with_an_example(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m spiketriton [--version] [--help] <command>")
    for name in COMMANDS:
        assert re.search(rf"^  {name} ", out, re.M), name
        assert f"example: python -m spiketriton {name} " in out, name
    assert "placeholder" not in out  # the top-level examples all run (test below)
    assert cli_main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'; the commands are: demo, export" in capsys.readouterr().err


def test_help_examples_run_on_what_the_demo_writes(tmp_path, monkeypatch, capsys):
    """The examples of ``python -m spiketriton --help`` and ``export --help``, in their order: the demo writes
    out/qnet.safetensors (quantized), and the export examples turn it into the same chip file the demo wrote
    and into NIR. As a user runs them on a CPU: without the conftest's Triton interpreter (its "auto" would
    run the kernels interpreted, minutes); the demo gets one epoch."""
    _demo()
    from spiketriton.export import cli, load_chip

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # read at each call: "auto" is the PyTorch path again
    monkeypatch.chdir(tmp_path)
    examples = [shlex.split(e.split("#")[0]) for e in cli.EXAMPLES]
    assert [e[3] for e in examples] == ["demo", "export", "export", "export"]
    assert "placeholders" in cli.EXAMPLES[-1]  # the last names your own model: marked as such
    assert COMMANDS["demo"][1] == cli.EXAMPLES[0] and COMMANDS["export"][1] == cli.EXAMPLES[1]
    assert cli_main(examples[0][3:] + ["--epochs", "1", "--qat-epochs", "0", "--no-figure"]) == 0
    out = capsys.readouterr().out
    qpath = tmp_path / "out" / "qnet.safetensors"
    assert f"quantized model: {os.path.join('out', 'qnet.safetensors')} (" in out
    assert "python -m spiketriton export --chip out/qnet.chip --model spiketriton.demo:build_net" in out
    assert quant.load_quantized_model(qpath, quant.prepare(_demo().build_net())).q_mode == quant.QUANTIZED
    assert cli_main(examples[1][3:]) == 0
    assert (tmp_path / "out" / "net.chip").read_bytes() == (tmp_path / "out" / "digits.chip").read_bytes()
    assert load_chip(tmp_path / "out" / "net.chip").output_shape == (10,)
    pytest.importorskip("nir")
    assert cli_main(examples[2][3:]) == 0 and (tmp_path / "out" / "net.nir").stat().st_size > 0


def test_export_hint_only_where_the_factory_builds_the_network(tmp_path, capsys):
    demo = _demo()
    demo.main(SMALL + ["--export-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "builds the default network, --neuron lif --hidden 256; for this one give --model a function of your " \
           "own that returns spiketriton.demo.build_net('lif', 16)" in out
    assert "the same with the command line" not in out


# --------------------------------------------------------------------------------------------- #
# The demo's output
# --------------------------------------------------------------------------------------------- #


def test_demo_says_its_temporary_export_files_are_removed(capsys):
    demo = _demo()
    result = demo.main(SMALL)
    out = capsys.readouterr().out
    m = re.search(r"export files go to a temporary directory, (.+?), which is removed when the demo ends "
                  r"\(--export-dir DIR keeps them\)", out)
    assert m, out
    tmp = m.group(1)
    assert f"quantized model: {os.path.join(tmp, 'qnet.safetensors')}" in out
    assert f"removed {tmp} and the export files in it" in out
    assert not os.path.exists(tmp) and result["qmodel_path"].startswith(tmp)


def test_demo_names_its_loss_and_shows_progress_once(monkeypatch, capsys):
    demo = _demo()
    args = ["--epochs", "2", "--qat-epochs", "-1", "--hidden", "16", "--backend", "torch", "--device", "cpu",
            "--no-figure"]
    demo.main(args)  # stderr is not a terminal here: one line per epoch, no bar
    cap = capsys.readouterr()
    assert "loss: MSE of the output firing rates vs the one-hot labels" in cap.out
    assert re.search(r"^epoch 1/2: train loss \(MSE\) \d\.\d{4}, running train accuracy", cap.out, re.M)
    assert "training:" not in cap.err  # no tqdm bar
    if demo.tqdm is None:
        return
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    demo.main(args)  # a terminal: the bar only
    cap = capsys.readouterr()
    assert "training:" in cap.err and "epoch 1/2" not in cap.out
    assert "trained 2 epoch(s): last epoch's train loss (MSE)" in cap.out


def test_demo_runs_on_one_thread_by_default_and_restores_the_count(capsys):
    demo = _demo()
    args = ["--epochs", "1", "--qat-epochs", "-1", "--hidden", "16", *CPU]  # no quantization: seconds
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert demo.main(args)["threads"] == 1
        assert torch.get_num_threads() == 2
        assert "torch CPU threads: 1 (the demo's default on the CPU" in capsys.readouterr().out
        assert demo.main(args + ["--threads", "2"])["threads"] == 2
        assert "torch CPU threads: 2 (--threads)" in capsys.readouterr().out
        with pytest.raises(SystemExit) as exc:
            demo.main(args + ["--threads", "-1"])
        assert exc.value.code == 2 and "--threads must be >= 0" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------- #
# python -m bench --quick: what it reports (the scripts run in-process on tiny sizes)
# --------------------------------------------------------------------------------------------- #


@pytest.fixture
def bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delenv("BENCH_PROGRESS", raising=False)
    monkeypatch.setenv("BENCH_PROGRESS", "0")


def _json(path):
    import json

    return json.loads(Path(path).read_text())


def test_neuron_agreement_is_measured_without_spikingjelly(bench_path, tmp_path, monkeypatch, capsys):
    import neuron_cpu

    monkeypatch.setitem(sys.modules, "spikingjelly", None)  # not installed
    assert neuron_cpu.main(["--shape", "2,2,16", "--dtypes", "fp32", "--repeats", "1", "--warmup", "0",
                            "--copy-mib", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "None" not in out
    assert "agreement with spiketriton's autograd reference (SpikingJelly is not installed), fp32, same input: " \
           "0 spikes differ" in out
    r = _json(tmp_path / "neuron_cpu.json")
    assert r["agreement_fp32"]["vs"] == "reference" and r["agreement_fp32"]["spike_mismatches"] == 0
    assert r["config"]["torch_num_threads"] == 1 and "stalls" in r["config"]["threads_why"]


def test_memory_goal_applies_to_the_converted_block_only(bench_path, tmp_path, capsys):
    import memory

    assert memory.main(["--shape", "2,2,16", "--n", "8", "--dtypes", "fp32", "--variants",
                        "spiketriton,spiketriton packed_output", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MISSED" not in out
    assert "(no goal for spiketriton: no packed_output: SpikeLinear saves its own packed copy" in out
    rows = {r["variant"]: r for r in _json(tmp_path / "memory.json")["saved_bytes"]}
    assert rows["spiketriton"]["marginal_B_per_neuron_step"] == 4.25 and rows["spiketriton"]["meets_goal"] is None
    assert rows["spiketriton packed_output"]["meets_goal"] is True


def test_open_neuromorphic_compares_like_for_like(bench_path, tmp_path, capsys):
    pytest.importorskip("snntorch")
    pytest.importorskip("norse")
    import open_neuromorphic

    assert open_neuromorphic.main(["--sizes", "16", "--T", "6", "--reps", "1", "--warmup", "0", "--device", "cpu",
                                   "--libraries", "spiketriton,snntorch,norse", "--no-torch-baselines",
                                   "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    r = _json(tmp_path / "open_neuromorphic.json")
    rows = {c["variant"]: c for c in r["cases"]}
    # snnTorch's Leaky and Norse's LIFBoxCell as set up here are the same neuron: the same spikes
    for v in ("snntorch[Leaky loop]", "norse[LIFBoxCell loop]"):
        assert rows[v]["spike_mismatch_vs_spiketriton"] == 0.0, rows[v]
        assert rows[v]["firing_rate"] == rows["spiketriton"]["firing_rate"] > 0
    assert "rate %.3f; spikes = spiketriton's" % rows["spiketriton"]["firing_rate"] in out
    assert "norse[LIF module]" in out and "another neuron, its spikes and rate are not comparable" in out
    assert r["config"]["torch_num_threads"] == 1 and r["config"]["threads_why"]


def test_set_threads_records_the_choice(bench_path):
    from _common import restore_threads, set_threads

    before = torch.get_num_threads()
    info = set_threads(None, "cpu")
    try:
        assert torch.get_num_threads() == 1 and info["torch_num_threads"] == 1 and "stalls" in info["threads_why"]
    finally:
        restore_threads(info)
    assert torch.get_num_threads() == before
    info = set_threads(2, "cpu")
    restore_threads(info)
    assert info["threads_why"] == "--threads 2"
    with pytest.raises(SystemExit, match="--threads must be >= 0"):
        set_threads(-1, "cpu")


def test_threads_for_restores_the_count_after_its_block(bench_path):
    from _common import threads_for

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with threads_for(None, "cpu") as info:
            assert torch.get_num_threads() == 1 == info["torch_num_threads"]
            raise RuntimeError("inside")  # a script that fails still leaves the count as it was
    assert torch.get_num_threads() == before


def test_bench_and_demo_apply_one_thread_rule(bench_path):
    """bench/_common.set_threads and spiketriton.demo.set_threads word one rule (spiketriton.demo):
    the same count for every case, each in its own text."""
    from _common import set_threads as bench_set_threads

    from spiketriton.demo import set_threads

    before = torch.get_num_threads()
    try:
        for requested, device, count, demo_why, bench_why in (
                (None, "cpu", 1, "the demo's default on the CPU", "the default on the CPU"),
                (3, "cpu", 3, "--threads", "--threads 3"),
                (None, "cuda", 2, "torch's default", "torch's default (a CUDA run"),
                (0, "cpu", 2, "torch's default (--threads 0)", "torch's default (--threads 0)")):
            torch.set_num_threads(2)
            info = bench_set_threads(requested, device)
            assert torch.get_num_threads() == info["torch_num_threads"] == count
            assert info["threads_why"].startswith(bench_why) and info["threads_before"] == 2
            torch.set_num_threads(2)
            text = set_threads(requested, torch.device(device))
            assert torch.get_num_threads() == count and text.startswith(f"{count} ({demo_why}")
        for bad in (-1, True, 1.5):
            with pytest.raises(ValueError, match=rf"set_threads: threads must be None or an int >= 0 .*got {bad}"):
                set_threads(bad, torch.device("cpu"))
    finally:
        torch.set_num_threads(before)


def test_bench_passes_threads_to_every_cpu_script(bench_path):
    import run

    steps = run.plan(run.parse_args(["--threads", "2"]), "cpu")
    for s in steps:
        if s.get("script") in ("neuron_cpu", "spike_matmul_cpu", "open_neuromorphic", "event_matmul"):
            assert s["argv"][-2:] == ["--threads", "2"], s
    assert all("--threads" not in s.get("argv", []) for s in run.plan(run.parse_args([]), "cpu"))


# --------------------------------------------------------------------------------------------- #
# quant: the public class, the file mode
# --------------------------------------------------------------------------------------------- #


def _qnet():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), st.LIF(), nn.Linear(8, 3), st.LIF())
    q = quant.prepare(net)
    q.collect_q_params()
    q(torch.rand(3, 2, 4))
    q.reset()
    q.calculate_q_params()
    return net, q.quantize()


def test_prepare_and_load_return_the_public_prepared_model(tmp_path):
    net, q = _qnet()
    assert type(q) is quant.PreparedModel and "PreparedModel" in quant.__all__
    assert repr(q).startswith("PreparedModel(")
    q.save_quantized_model(tmp_path / "q.safetensors")
    back = quant.load_quantized_model(tmp_path / "q.safetensors", quant.prepare(net))
    assert type(back) is quant.PreparedModel and back.q_mode == quant.QUANTIZED


def test_a_prepared_model_pickled_under_its_old_name_still_loads():
    _, q = _qnet()
    x = torch.rand(3, 2, 4)
    with torch.no_grad():
        want = q(x)
    q.reset()
    quant.PreparedModel.__qualname__ = "_Prepared"  # as an earlier version pickled it
    try:
        data = pickle.dumps(q)
    finally:
        quant.PreparedModel.__qualname__ = "PreparedModel"
    assert b"_Prepared" in data and b"PreparedModel" not in data
    old = pickle.loads(data)
    assert type(old) is quant.PreparedModel
    with torch.no_grad():
        assert torch.equal(old(x), want)


def test_save_quantized_model_writes_an_ordinary_file(tmp_path):
    _, q = _qnet()
    old = os.umask(0o022)
    try:
        q.save_quantized_model(tmp_path / "q.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "q.safetensors").stat().st_mode) == 0o644


# --------------------------------------------------------------------------------------------- #
# Habits from SpikingJelly and snnTorch
# --------------------------------------------------------------------------------------------- #


def test_functional_reset_net_and_set_step_mode_work_as_in_spikingjelly():
    net = nn.Sequential(nn.Linear(4, 3), st.LIF())
    net(torch.rand(2, 1, 4))
    assert net[1].v is not None
    assert st.functional.reset_net(net) is None and net[1].v is None
    assert st.functional.set_step_mode(net, "s") is net and net[1].step_mode == "s"
    assert net(torch.rand(1, 4)).shape == (1, 3)
    with pytest.raises(TypeError, match="reset: expected a torch.nn.Module, got int"):
        st.functional.reset_net(3)


def test_missing_names_of_other_libraries_say_the_spiketriton_name():
    with pytest.raises(AttributeError, match=r"'SeqToANNContainer' \(another library's name\); in spiketriton use "
                                             r"spiketriton.StepWise"):
        st.functional.SeqToANNContainer
    with pytest.raises(AttributeError, match=r"^module 'spiketriton.functional' has no attribute 'nothing_here'$"):
        st.functional.nothing_here
    assert not hasattr(st.functional, "multi_step_forward")
    getattr_ = _hints.module_getattr("spiketriton")
    with pytest.raises(AttributeError, match="spiketriton.LIF \\(SpikingJelly's LIFNode\\)"):
        getattr_("LIFNode")


@pytest.mark.parametrize("kw,hint", [("surrogate_function", "for surrogate_function= use surrogate="),
                                     ("spike_grad", "for spike_grad= use surrogate="),
                                     ("threshold", "for threshold= use v_threshold="),
                                     ("beta", "st.ExtendedLIF(v_leaky_alpha=beta) (snnTorch's Leaky(beta) is")])
def test_keywords_of_other_libraries_get_a_hint(kw, hint):
    with pytest.raises(TypeError, match=re.escape(hint)) as exc:
        _hints.check_keywords(st.LIF, {kw: 1, "tau": 2.0})
    assert str(exc.value).startswith(f"LIF: unexpected keyword argument '{kw}' (another library's name)")
    _hints.check_keywords(st.LIF, {"tau": 2.0, "step_mode": "m", "surrogate": None})  # its own: nothing
    _hints.check_keywords(st.LIF, {"bogus": 1})  # unknown everywhere: left to Python's own error


def test_a_forgotten_reset_gets_a_hint_instead_of_torchs_second_backward_error(monkeypatch):
    """guard_stale_state, as the neurons call it on their carried state (BaseNeuron._carry)."""
    from spiketriton.neuron import BaseNeuron

    carry = BaseNeuron._carry
    monkeypatch.setattr(BaseNeuron, "_carry", lambda self, s: _hints.guard_stale_state(carry(self, s),
                                                                                       type(self).__name__))
    net = nn.Sequential(nn.Linear(4, 8), st.LIF(), nn.Linear(8, 3), st.LIF())
    x = torch.rand(3, 2, 4) * 2
    net(x).sum().backward()
    y = net(x)  # the forward still runs (no backward may follow), from the state of the last call
    with pytest.raises(RuntimeError, match=r"LIF: backward reached the state .* Call spiketriton.reset\(net\)"):
        y.sum().backward()
    st.reset(net)
    net(x).sum().backward()  # reset between batches: fine
    with torch.no_grad():
        net(x)  # no graph wanted: nothing to say
    st.reset(net)
    y = net(x)
    y.sum().backward(retain_graph=True)
    net(x).sum().backward()  # a retained graph may be backpropagated again: no hint
    assert not _hints.graph_freed(torch.ones(2)) and not _hints.graph_freed(None)


def test_written_files_honour_the_umask_like_open(tmp_path):
    """The NIR, chip and quantized writers share _files.write_atomic: its file gets 0o666 less the umask
    (as open() would create it), not a fixed 0o644."""
    from spiketriton._files import write_atomic

    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.bin", b"x")
        with open(tmp_path / "b.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o640


def test_spikingjelly_names_on_the_package_and_layers_name_stepwise():
    import spiketriton as st

    for mod in (st, st.layers):
        with pytest.raises(AttributeError, match="StepWise"):
            mod.SeqToANNContainer
    assert not hasattr(st, "no_such_name")


def test_no_source_cites_design_notes_outside_the_repository():
    """The specification lives in docs/spec/; docstrings, benchmarks and examples cite it, not notes a
    user of the repository does not have (help(st.LIF) once said "DESIGN.md family A")."""
    root = Path(__file__).resolve().parents[1]
    name = "DESIGN" + ".md"
    files = [p for d in ("spiketriton", "bench", "examples", "tests", "docs") for p in (root / d).rglob("*")
             if p.suffix in (".py", ".md", ".rst") and not {"results", "generated", "_build"} & set(p.parts)]
    files += [root / "README.md", root / "pyproject.toml"]
    cited = [str(p.relative_to(root)) for p in files if name in p.read_text(errors="replace")
             and p.name not in ("test_newcomer.py", "test_readme.py", "test_docs.py")]
    assert not cited, cited
