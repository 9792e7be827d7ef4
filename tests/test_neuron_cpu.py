"""The fused CPU neuron (kernels/neuron_cpu.py, csrc/neuron_cpu.c) against the torch ops it replaces:
the forward bit for bit (spikes, H, states, every saved bit plane; inf/NaN inputs included), both
families' backward to rounding, T single steps equal to one multi-step call in both gradient paths, and the
fallbacks (no compiler, a failing compiler, switched off, a damaged cache file)."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import zipfile

import pytest
import torch

import spiketriton as st
from spiketriton import surrogate as sg
from spiketriton.kernels import neuron_cpu
from spiketriton.kernels import neuron_torch as KNT
from spiketriton.spec import FAMILY_A, FAMILY_B, NeuronSpec

pytestmark = pytest.mark.skipif(not neuron_cpu.status()[0], reason="no C compiler: " + neuron_cpu.status()[1])


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return (a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)))


def _random_spec(rng: random.Random, family: int) -> NeuronSpec:
    surrogate = sg.ALL[rng.randrange(len(sg.ALL))](rng.choice([0.7, 1.0, 2.0]))
    if family == FAMILY_A:
        hard = rng.random() < 0.6
        return NeuronSpec(family=FAMILY_A, surrogate=surrogate, v_threshold=rng.choice([1.0, 0.3, -0.2]),
                          v_reset=rng.choice([0.0, -0.1, 0.3]) if hard else 0.0, reset_mode=0 if hard else 1,
                          detach_reset=rng.random() < 0.5, decay_input=rng.random() < 0.5,
                          v_init=rng.choice([0.0, 0.2]))
    return NeuronSpec(family=FAMILY_B, surrogate=surrogate, v_threshold=rng.choice([1.0, 0.3]),
                      v_reset=rng.choice([0.0, -0.1]), reset_mode=rng.choice([0, 1, 2]),
                      detach_reset=rng.random() < 0.5, v_l=rng.choice([-math.inf, -0.5, 0.0]),
                      dv=rng.choice([0.3, 0.1]), ref_len=rng.choice([0, 2]), v_th_alpha=rng.choice([1.0, 0.9]),
                      v_th_beta=rng.choice([0.0, 0.01]), v_th_incre=rng.choice([0.0, 0.3]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("family", [FAMILY_A, FAMILY_B], ids=["A", "B"])
def test_forward_equals_the_torch_ops_bit_for_bit(dtype, family):
    rng = random.Random(family * 10 + (dtype == torch.float64))
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    for _ in range(40):
        spec = _random_spec(rng, family)
        T = rng.choice([1, 2, 5])
        S = rng.choice([(3,), (2, 13), (4, 70), (1, 1), (2, 3, 9), (1, 130)])  # rows past one 64-element chunk
        params = (torch.tensor([rng.choice([0.5, 1 / 3, 0.0, 0.9])]) if family == FAMILY_A
                  else torch.tensor([rng.choice([0.9, 0.5]), rng.choice([0.0, 0.01])])).to(dtype)
        x = torch.randn((T,) + S, generator=gen, dtype=dtype) * 1.5
        if rng.random() < 0.3:  # overflowed input: +inf always fires, -inf never; NaN stays NaN
            x.view(-1)[0], x.view(-1)[-1] = math.inf, -math.inf
        if rng.random() < 0.2:
            x.view(-1)[x.numel() // 2] = math.nan
        v0 = torch.randn(S, generator=gen, dtype=dtype) if rng.random() < 0.5 else None
        a0 = torch.rand(S, generator=gen, dtype=dtype) if family == FAMILY_B and rng.random() < 0.5 else None
        ref0 = (torch.randint(0, 3, S, generator=gen, dtype=torch.int32)
                if family == FAMILY_B and rng.random() < 0.5 else None)
        for store, write_spikes in ((True, True), (False, True), (True, False), (False, False)):
            fused = KNT.neuron_forward(x, v0, a0, ref0, params, spec, store, write_spikes=write_spikes)
            ops = KNT.neuron_forward(x, v0, a0, ref0, params, spec, store, write_spikes=write_spikes, fused=False)
            for name, a, b in zip(("spikes", "v", "a", "ref"), fused[:4], ops[:4]):
                assert _same(a, b), (name, spec, S, store, write_spikes)
            for name, a, b in zip(("h", "bits", "vth", "gate", "floor"), fused[4], ops[4]):
                assert _same(a, b.reshape(a.shape) if (a is not None and b is not None) else b), (name, spec, S, store)


def test_the_module_path_uses_it(monkeypatch):
    calls = []
    real = neuron_cpu.neuron_forward
    monkeypatch.setattr(neuron_cpu, "neuron_forward", lambda *a: calls.append(1) or real(*a))
    # (backend="torch" by name: the tests run "auto" on the Triton interpreter)
    st.LIF(backend="torch")(torch.rand(3, 2, 5))
    st.ExtendedLIF(backend="torch", step_mode="s")(torch.rand(2, 5, dtype=torch.float64))
    assert len(calls) == 2
    st.LIF(backend="torch")(torch.rand(3, 2, 5, dtype=torch.bfloat16))  # half precision keeps the torch ops
    with neuron_cpu.disabled():
        st.LIF(backend="torch")(torch.rand(3, 2, 5))
    assert len(calls) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("surrogate", [c() for c in sg.ALL], ids=repr)
@pytest.mark.parametrize("exp_in_torch", [False, True], ids=["exp-libm", "exp-torch"])
def test_family_a_backward_matches_the_torch_ops(dtype, surrogate, exp_in_torch, monkeypatch):
    # both ways of the exp surrogates: in C (libm, small steps) and per step in torch (large steps)
    monkeypatch.setattr(neuron_cpu, "_EXP_TORCH_MIN", 0 if exp_in_torch else 1 << 62)
    rng = random.Random(surrogate.id)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for trial in range(12):
        hard, detach, decay = trial % 2 == 0, trial % 3 == 0, trial % 4 < 2
        spec = NeuronSpec(family=FAMILY_A, surrogate=surrogate, v_threshold=rng.choice([1.0, 0.3]),
                          v_reset=rng.choice([0.0, -0.1, 0.3]) if hard else 0.0, reset_mode=0 if hard else 1,
                          detach_reset=detach, decay_input=decay, v_init=rng.choice([0.0, 0.2]))
        T, S = rng.choice([1, 3, 6]), rng.choice([(5,), (2, 13), (3, 70)])
        gen = torch.Generator().manual_seed(trial)
        params = torch.tensor([rng.choice([0.5, 1 / 3, 0.9])], dtype=dtype)
        x = torch.randn((T,) + S, generator=gen, dtype=dtype) * 1.5
        v0 = torch.randn(S, generator=gen, dtype=dtype) if trial % 2 else None
        saved = KNT.neuron_forward(x, v0, None, None, params, spec, True, fused=False)[4]
        g = torch.randn(x.shape, generator=gen, dtype=dtype)
        gv = torch.randn(S, generator=gen, dtype=dtype) if trial % 3 else None
        fused = KNT.neuron_backward(g, gv, None, saved, v0, params, spec, True, False, True)
        ops = KNT.neuron_backward(g, gv, None, saved, v0, params, spec, True, False, True, fused=False)
        for name, a, b in zip(("gx", "gv0", "ga0", "gk"), fused, ops):
            if b is None:
                assert a is None
                continue
            assert a.dtype == b.dtype and a.shape == b.shape, name
            err = (a - b).abs().max().item() / (b.abs().max().item() + 1e-30)
            assert err <= tol, (name, spec, T, S, err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("exp_in_torch", [False, True], ids=["exp-libm", "exp-torch"])
def test_family_b_backward_matches_the_torch_ops(dtype, exp_in_torch, monkeypatch):
    # every reset mode, detach, floor, refractory gate, adaptive threshold (with its carried-out
    # gradient) and the learnable leak, against the torch ops' hand-written backward
    monkeypatch.setattr(neuron_cpu, "_EXP_TORCH_MIN", 0 if exp_in_torch else 1 << 62)
    rng = random.Random(7 + exp_in_torch)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for trial in range(48):
        spec = _random_spec(rng, FAMILY_B)
        spec = NeuronSpec(**{**spec.__dict__, "surrogate": sg.ALL[trial % len(sg.ALL)](rng.choice([1.0, 2.0]))})
        T, S = rng.choice([1, 2, 5]), rng.choice([(3,), (2, 13), (4, 70), (1, 1), (2, 3, 9)])
        gen = torch.Generator().manual_seed(trial)
        params = torch.tensor([rng.choice([0.9, 0.5]), rng.choice([0.0, 0.01])], dtype=dtype)
        x = torch.randn((T,) + S, generator=gen, dtype=dtype) * 1.5
        v0 = torch.randn(S, generator=gen, dtype=dtype) if trial % 2 else None
        a0 = torch.rand(S, generator=gen, dtype=dtype) if trial % 3 else None
        ref0 = torch.randint(0, 3, S, generator=gen, dtype=torch.int32) if trial % 4 else None
        saved = KNT.neuron_forward(x, v0, a0, ref0, params, spec, True, fused=False)[4]
        g = torch.randn(x.shape, generator=gen, dtype=dtype)
        gv = torch.randn(S, generator=gen, dtype=dtype) if trial % 5 else None
        ga = torch.randn(S, generator=gen, dtype=dtype) if trial % 3 == 1 else None
        fused = KNT.neuron_backward(g, gv, ga, saved, v0, params, spec, True, True, True)
        ops = KNT.neuron_backward(g, gv, ga, saved, v0, params, spec, True, True, True, fused=False)
        for name, a, b in zip(("gx", "gv0", "ga0", "gparams"), fused, ops):
            if b is None:
                assert a is None, name
                continue
            assert a.dtype == b.dtype and a.shape == b.shape, name
            err = (a - b).abs().max().item() / (b.abs().max().item() + 1e-30)
            assert err <= tol, (name, spec, T, S, err)


@pytest.mark.parametrize("surrogate", [sg.Sigmoid(), sg.ATan()], ids=repr)
def test_bptt_through_single_steps_is_bit_exact_on_large_steps(surrogate):
    # steps of >= _EXP_TORCH_MIN elements take torch's exp per step: the gradient of T single steps must
    # still equal one multi-step call's bit for bit (the rounding of a whole-[T] op would depend on T)
    B, N = 4, 700
    assert B * N >= neuron_cpu._EXP_TORCH_MIN
    x = torch.rand(3, B, N, generator=torch.Generator().manual_seed(0)) * 1.2
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    grads = {}
    for mode in ("m", "s"):
        m = st.PLIF(surrogate=surrogate, step_mode=mode, backend="torch")
        xi = x.clone().requires_grad_()
        s = m(xi) if mode == "m" else torch.stack([m(xi[t]) for t in range(3)])
        grads[mode] = torch.autograd.grad((s * g).sum() + m.v.sum(), [xi, m.w])
    assert torch.equal(grads["m"][0], grads["s"][0])
    assert torch.allclose(grads["m"][1], grads["s"][1], rtol=1e-5)


def _rebuild(monkeypatch, **env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    neuron_cpu._reset_for_tests()


@pytest.fixture
def fresh_state(monkeypatch):
    yield
    monkeypatch.undo()  # the environment and the compiler lookup first, then a fresh load
    neuron_cpu._reset_for_tests()  # the next test loads the normal library again
    assert neuron_cpu.status()[0]


def _check_lif_still_runs():
    x = torch.rand(4, 3, 11) * 2
    with torch.no_grad():
        out = st.LIF(backend="torch")(x)
    with neuron_cpu.disabled():
        assert torch.equal(out, st.LIF(backend="torch")(x))


def test_without_a_compiler_the_torch_ops_run(monkeypatch, fresh_state):
    monkeypatch.setattr(neuron_cpu, "_compiler", lambda: None)
    neuron_cpu._reset_for_tests()
    ok, why = neuron_cpu.status()
    assert not ok and "no C compiler" in why
    _check_lif_still_runs()


def test_a_failing_compiler_is_reported_and_the_torch_ops_run(monkeypatch, tmp_path, fresh_state):
    _rebuild(monkeypatch, CC="false", SPIKETRITON_CACHE_DIR=str(tmp_path / "cache"))
    ok, why = neuron_cpu.status()
    assert not ok and "build failed" in why
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-written left behind
    _check_lif_still_runs()


def test_switched_off_by_the_environment(monkeypatch, fresh_state):
    _rebuild(monkeypatch, SPIKETRITON_CPU_KERNEL="0")
    ok, why = neuron_cpu.status()
    assert not ok and "SPIKETRITON_CPU_KERNEL=0" in why


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_cache_others_can_write_is_not_loaded(what, monkeypatch, tmp_path, fresh_state):
    # loading a shared library runs its code: a cached file (or directory) writable by group or others
    # could hold someone else's; this process then builds and loads a private copy instead
    cache = tmp_path / "cache"
    _rebuild(monkeypatch, SPIKETRITON_CACHE_DIR=str(cache))
    assert neuron_cpu.status()[0]
    (lib,) = cache.glob("neuron_cpu-*.so")
    assert lib.stat().st_mode & 0o022 == 0 and cache.stat().st_mode & 0o077 == 0  # writable by its owner only
    os.chmod(lib if what == "file" else cache, 0o666 if what == "file" else 0o777)
    neuron_cpu._reset_for_tests()
    ok, why = neuron_cpu.status()
    assert ok and "was not used" in why and "writable by group or others" in why, why
    _check_lif_still_runs()


@pytest.mark.parametrize("damage", ["foreign", "truncated", "flipped"])
def test_a_damaged_cached_library_is_rebuilt(damage, tmp_path):
    # in a new process (this one has the library loaded: the dynamic loader would hand back the loaded
    # copy by name): a foreign file, the first half of a real library (dlopen'ed, it killed the process
    # with SIGBUS) or one with a flipped byte, under the expected name, is rebuilt, never loaded
    cache = tmp_path / "cache"
    real = neuron_cpu.library_path(neuron_cpu._compiler())
    assert real.is_file() and neuron_cpu._intact(real)  # (this process built and loaded it)
    data = bytearray(real.read_bytes())
    if damage == "flipped":  # one byte of code changed: it may load and run, so it must not load
        data[len(data) // 2] ^= 0x10
    if damage == "truncated":
        data = data[: len(data) // 2]
    bad = b"\x7fELF not really" if damage == "foreign" else bytes(data)
    (tmp_path / "bad.so").write_bytes(bad)
    code = ("import os, shutil, sys, torch\n"
            "from spiketriton.kernels import neuron_cpu\n"
            "path = neuron_cpu.library_path(neuron_cpu._compiler())\n"
            "path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)\n"
            f"shutil.copyfile({str(tmp_path / 'bad.so')!r}, path)\n"
            # the real build's digest beside it: the check must see the damage, not a missing record
            f"shutil.copyfile({str(neuron_cpu._digest_file(real))!r}, neuron_cpu._digest_file(path))\n"
            "ok, why = neuron_cpu.status()\n"
            "assert ok and 'did not match its recorded digest' in why, why\n"
            f"assert path.read_bytes() != open({str(tmp_path / 'bad.so')!r}, 'rb').read()\n"
            "print('rebuilt', path.name)\n")
    env = dict(os.environ, SPIKETRITON_CACHE_DIR=str(cache))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "rebuilt neuron_cpu-" in res.stdout


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_cache_entry_that_is_not_a_regular_file(kind, monkeypatch, tmp_path, fresh_state):
    # a symlink under the library's name is never followed (it could point at any code): a private build;
    # a directory there cannot be replaced: a clear "build failed" and the torch ops
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv("SPIKETRITON_CACHE_DIR", str(cache))
    path = neuron_cpu.library_path(neuron_cpu._compiler())
    if kind == "symlink":
        path.symlink_to(neuron_cpu.library_path.__code__.co_filename)  # any file: it must not be loaded
    else:
        path.mkdir()
    neuron_cpu._reset_for_tests()
    ok, why = neuron_cpu.status()
    if kind == "symlink":
        assert ok and "symbolic link" in why and "was not used" in why, why
    else:
        assert not ok and "build failed" in why, why
    _check_lif_still_runs()


def test_the_wheel_carries_the_c_sources(tmp_path):
    # pip-installed users build the library from these files: without them every CPU neuron would
    # silently fall back to the torch ops
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), root], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("spiketriton-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for src in neuron_cpu._SOURCES:
        assert f"spiketriton/kernels/csrc/{src}" in names


def test_the_hot_loops_vectorize(tmp_path):
    # the speed of the fused neuron rests on the compiler vectorizing its inner loops (at -O2 without
    # -ftree-vectorize none was, and the forward took 2x the torch ops' time): compile with the module's
    # flags and read gcc's report for the loops marked "hot loop" in the source
    cc = neuron_cpu._compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    if "gcc" not in version.lower() and "free software foundation" not in version.lower():
        pytest.skip(f"the vectorization report is gcc's; the compiler here is {version.splitlines()[0]!r}")
    src = neuron_cpu._SRC_DIR / "neuron_cpu_body.h"
    lines = {tag: n for n, line in enumerate(src.read_text().splitlines(), 1)
             for tag in ("fwd A", "fwd B", "bwd A", "bwd B") if f"/* hot loop: {tag} */" in line}
    assert len(lines) == 4, lines
    res = subprocess.run([cc, *neuron_cpu._FLAGS, "-fopt-info-vec-optimized", "-o", str(tmp_path / "x.so"),
                          str(neuron_cpu._SRC_DIR / "neuron_cpu.c"), "-lm"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    done = {tag: sum(f"neuron_cpu_body.h:{n}:" in ln and "loop vectorized" in ln and "16 byte" in ln
                     for ln in res.stderr.splitlines()) for tag, n in lines.items()}
    # the float32 instantiations (float64 is one generic loop each): family A forward 6 (decay x 3
    # resets), family A backward 16, family B forward 6 of 12 and backward 4 of 6 (the others keep a branch)
    assert done["fwd A"] >= 6 and done["bwd A"] >= 16 and done["fwd B"] >= 6 and done["bwd B"] >= 4, done
