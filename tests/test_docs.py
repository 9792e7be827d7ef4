"""Every ```python block of README.md and of the pages under docs/ runs on its own, as a user pastes it.

One test per block, named ``file:line``. Each block runs in a fresh process (forked from one worker that
has imported torch and spiketriton once, so a block costs its own run time only), in an empty scratch
directory, with one torch thread and without ``TRITON_INTERPRET`` (the PyTorch path, as on a user's
CPU). A block that must not run here is marked on the line right before its fence with
``<!-- docs-test: skip REASON -->`` (for example a GPU-only block); the test then skips with that reason,
and a marker without a reason is an error.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\b\s*(.*?)\s*-->")
FENCE = re.compile(r"^```python[ \t]*$")
TIMEOUT_S = 120  # per block; the slowest one takes ~3 s here


def doc_files() -> list[pathlib.Path]:
    pages = sorted(p for p in (ROOT / "docs").rglob("*.md") if "generated" not in p.parts and "build" not in p.parts)
    return [ROOT / "README.md"] + pages


def blocks(path: pathlib.Path):
    """(line of the fence, code, skip reason or None) for every ```python block of ``path``."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start = i
            j = i + 1
            while j < len(lines) and lines[j].rstrip() != "```":
                j += 1
            prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            m = SKIP_MARK.search(prev)
            out.append((start + 1, "\n".join(lines[start + 1:j]) + "\n", m.group(1) if m else None))
            i = j
        i += 1
    return out


SNIPPETS = [(f"{p.relative_to(ROOT)}:{line}", code, skip) for p in doc_files() for line, code, skip in blocks(p)]

_WORKER = r"""
import json, os, sys, tempfile, time, traceback, signal
import torch, spiketriton  # imported once; every block runs in a fork of this process
torch.set_num_threads(1)
out_path = sys.argv[1]
jobs = json.load(sys.stdin)
results = {}
for sid, code, timeout in jobs:
    scratch = tempfile.mkdtemp(prefix="docs-snippet-")
    log = os.path.join(scratch, ".output")
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1); os.dup2(fd, 2)          # the block's prints stay out of the results
        sys.stdout = os.fdopen(1, "w", buffering=1); sys.stderr = os.fdopen(2, "w", buffering=1)
        os.chdir(scratch)
        signal.alarm(timeout)
        t0 = time.perf_counter()
        try:
            exec(compile(code, sid, "exec"), {"__name__": "__main__"})
            res = {"ok": True}
        except BaseException:
            res = {"ok": False, "error": traceback.format_exc(limit=-8)}
        res["seconds"] = round(time.perf_counter() - t0, 3)
        with open(os.path.join(scratch, ".result"), "w") as f:
            json.dump(res, f)
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    try:
        with open(os.path.join(scratch, ".result")) as f:
            res = json.load(f)
    except OSError:
        res = {"ok": False, "error": f"the block's process died (wait status {status}; after {timeout} s it is killed)"}
    with open(log, errors="replace") as f:
        res["output"] = f.read()[-3000:]
    results[sid] = res
with open(out_path, "w") as f:
    json.dump(results, f)
"""


@pytest.fixture(scope="session")
def snippet_results(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    jobs = [(sid, code, TIMEOUT_S) for sid, code, skip in SNIPPETS if skip is None]
    out = tmp_path_factory.mktemp("docs-snippets") / "results.json"
    proc = subprocess.run([sys.executable, "-c", _WORKER, str(out)], input=json.dumps(jobs), capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=TIMEOUT_S * len(jobs) + 120)
    assert proc.returncode == 0, f"snippet worker failed:\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("sid,code,skip", SNIPPETS, ids=[s[0] for s in SNIPPETS])
def test_snippet_runs(sid, code, skip, snippet_results):
    if skip is not None:
        assert skip, f"{sid}: a docs-test skip marker must say why the block cannot run here"
        pytest.skip(skip)
    res = snippet_results[sid]
    assert res["ok"], (f"{sid} failed when run on its own:\n{res.get('error')}\n--- its output ---\n"
                       f"{res.get('output', '')}\n--- block ---\n{code}")


def test_snippets_are_found():
    """The collector sees the blocks (a changed fence style would silently test nothing)."""
    files = {sid.rsplit(":", 1)[0] for sid, _, _ in SNIPPETS}
    assert "README.md" in files
    for page in ("docs/quickstart.md", "docs/spec/neurons.md", "docs/migration.md"):
        assert page in files, f"no ```python block found in {page}"
    assert sum(skip is None for _, _, skip in SNIPPETS) >= 20


def test_skip_markers_say_why():
    for sid, _, skip in SNIPPETS:
        assert skip is None or skip.strip(), f"{sid}: a skip marker without a reason"


def _api_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_docs_api", ROOT / "docs" / "_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_api_reference_documents_every_public_name_once(tmp_path):
    """The generated API pages: one per public module, every public name of every module documented exactly
    once (under its shortest public path), a page for a module that is gone removed."""
    api = _api_module()
    (tmp_path / "spiketriton.gone.rst").write_text("stale")
    api.write_pages(tmp_path)
    mods = api.public_modules()
    names = {m.__name__ for m in mods}
    assert {"spiketriton", "spiketriton.quant", "spiketriton.hybrid", "spiketriton.export", "spiketriton.encoding",
            "spiketriton.monitor", "spiketriton.ann2snn", "spiketriton.functional", "spiketriton.surrogate"} <= names
    assert {p.stem for p in tmp_path.glob("*.rst")} == names
    pages = "\n".join(p.read_text() for p in tmp_path.glob("*.rst"))
    documented = re.findall(r"^\.\. auto(?:class|function|data):: (\S+)$", pages, flags=re.M)
    assert len(documented) == len(set(documented)), "an object is documented twice"
    for m in mods:
        for name in api.exported(m):
            home = api._alias(f"{m.__name__}.{name}")
            assert home in documented, f"{m.__name__}.{name} is not documented (expected under {home})"
    assert "spiketriton.LIF" in documented and "spiketriton.neuron.LIF" not in documented


def test_pages_carry_their_own_specification():
    """The documentation is self-contained: no page sends the reader to design notes outside the repository."""
    for page in doc_files():
        assert "DESIGN.md" not in page.read_text(), f"{page.relative_to(ROOT)} cites DESIGN.md"


def test_ci_builds_the_site_with_warnings_as_errors():
    """.ci/run installs the docs extra and builds the site with -W -n (a broken cross-reference fails CI)."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'pip install --quiet -e "\.\[docs\]"', ci)
    assert re.search(r"-m sphinx -W -n --keep-going .*-b html docs build/docs", ci)
    conf = (ROOT / "docs" / "conf.py").read_text()
    assert re.search(r"^nitpicky = True$", conf, flags=re.M)
