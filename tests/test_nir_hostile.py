"""Hostile NIR input (issue 12): damaged and crafted files, malformed in-memory graphs, values NIR
readers cannot compute with, and writes that fail.

- ``from_nir(path)`` parses the HDF5 file in a child process (``_nir_reader.py``): a crash (SIGSEGV),
  an endless loop, a memory blow-up or a malformed structure there is a ``NIRFormatError``, and the
  test process lives on. Hangs are bounded twice: the reader's own limits (lowered here to keep the
  tests short) and a watchdog (``faulthandler``) that ends the run, instead of blocking CI, if a
  regression hangs in C code where no Python signal handler can run.
- Every graph, read or passed in, is checked node by node before a module is built: fields, dtypes,
  shapes, finite values, ranges, and the sizes of consecutive nodes.
- ``to_nir`` refuses values that are not finite in float32; ``save_nir`` writes through
  ``write_atomic`` (an HDF5 image built in memory, plain Python I/O).
"""

from __future__ import annotations

import errno
import faulthandler
import hashlib
import io
import os
import re
import resource
import time

import numpy as np
import pytest
import torch
from torch import nn

import spiketriton as st
from spiketriton._files import write_atomic
from spiketriton.export import ExportError, NIRFormatError, from_nir, save_nir, to_nir
from spiketriton.export import nir_format as nf

nir = pytest.importorskip("nir")
h5py = pytest.importorskip("h5py")

# a parse that takes longer than this is stopped: ~10x a normal parse (0.13-0.4 s here), so that
# the cases that loop forever cost little
FAST_TIMEOUT_S = 1.5


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(180, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(nf, "NIR_PARSE_BASE_S", FAST_TIMEOUT_S)


# --------------------------------------------------------------------------------------------- #
# the model of the issue and its file
# --------------------------------------------------------------------------------------------- #


def _issue_model():
    """Sequential(Linear(6,8), LIF(tau=2), Linear(8,3), IF()) as the issue wrote it (seed 0), and the
    sample input drawn after it: save_nir of these is the file whose byte flips were scanned."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), st.LIF(tau=2.0), nn.Linear(8, 3), st.IF())
    return net, torch.rand(4, 2, 6)


from helpers import run_fresh as _run  # noqa: E402  (a fresh no-grad run, dense output)


X = torch.rand(8, 3, 6, generator=torch.Generator().manual_seed(1)) * 6


_IMAGE = []


def _image():
    """The issue's model as nir.write writes it to memory (what save_nir writes, byte for byte)."""
    if not _IMAGE:
        net, sample = _issue_model()
        buf = io.BytesIO()
        nir.write(buf, to_nir(net, sample))
        _IMAGE.append(buf.getvalue())
    return _IMAGE[0]


@pytest.fixture(scope="module")
def issue_file(tmp_path_factory):
    net, sample = _issue_model()
    path = tmp_path_factory.mktemp("nir") / "issue.nir"
    save_nir(net, path, sample)
    want = _run(net, X)
    rate = float(want.mean())
    assert 0.05 < rate < 0.9, f"firing rate {rate}: an equal output would not say much"
    return path.read_bytes(), want


def _load(tmp_path, data, name="case.nir", **kw):
    p = tmp_path / name
    p.write_bytes(data)
    return from_nir(p, backend="torch", **kw)


def _flip(data, offset, xor=0xFF):
    d = bytearray(data)
    d[offset] ^= xor
    return bytes(d)


# single-byte flips (XOR 0xFF) of issue_file that crashed (SIGSEGV in h5py, through nir.read) or hung
# (100% CPU, no end) the process before the reader ran in a child. Found by scanning every offset of
# this file (h5py 3.16, HDF5 2.0, nir 1.0.8); a different HDF5 library may lay the file out
# differently, so they run only where the file is byte for byte the one scanned.
SCANNED_SHA = "aeb7cbde6aaff76e"  # sha256 prefix of the scanned file
CRASHED = [7905, 10209]          # SIGSEGV in nir.read
HUNG = [1664, 7851]              # no end in nir.read (and in h5py's tree walk)


def _sha(data):
    return hashlib.sha256(data).hexdigest()[:16]


def test_child_start_up_is_small(issue_file, tmp_path):
    """The per-load cost of the child process, for a small file: well under a second."""
    data, want = issue_file
    _load(tmp_path, data)  # warm the file cache
    t0 = time.perf_counter()
    for _ in range(3):
        back = _load(tmp_path, data)
    per_load = (time.perf_counter() - t0) / 3
    assert torch.equal(_run(back, X), want)
    assert per_load < 2.0, f"from_nir of a 50 kB file took {per_load:.2f} s"
    triton = from_nir(tmp_path / "case.nir", backend="triton" if torch.cuda.is_available() or os.environ.get(
        "TRITON_INTERPRET") == "1" else "torch")  # both paths agree on the loaded model
    assert torch.equal(_run(triton, X), want)


def test_save_nir_writes_the_image_nir_write_makes(issue_file):
    assert issue_file[0] == _image()


def test_flips_that_crashed_or_hung_the_process(tmp_path, fast):
    data = _image()
    if _sha(data) != SCANNED_SHA:
        pytest.skip(f"this HDF5 library writes another layout ({_sha(data)}), not the scanned file")
    for off in CRASHED + HUNG:
        t0 = time.perf_counter()
        with pytest.raises(NIRFormatError, match=r"from_nir: '.*case.nir': (cannot read it as a NIR file|parsing "
                                                 r"took longer than|the HDF5 parser crashed)"):
            _load(tmp_path, _flip(data, off))
        assert time.perf_counter() - t0 < FAST_TIMEOUT_S + 5


# --------------------------------------------------------------------------------------------- #
# the child process: every way it can fail is a NIRFormatError
# --------------------------------------------------------------------------------------------- #


def _fake_reader(monkeypatch, tmp_path, body):
    script = tmp_path / "fake_reader.py"
    script.write_text(body)
    monkeypatch.setattr(nf, "_READER", str(script))


@pytest.mark.parametrize("case,body,message", [
    ("segfault", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
     r"the HDF5 parser crashed \(signal SIGSEGV\)"),
    ("abort", "import os\nos.abort()\n", r"crashed \(signal SIGABRT\).*memory limit"),
    ("hang", "while True:\n    pass\n", r"parsing took longer than 2 s and was stopped"),
    ("exit", "import sys\nsys.stderr.write('boom\\n')\nsys.exit(3)\n", r"exit status 3\): boom"),
    ("garbage", "import sys\nsys.stdout.buffer.write(b'OK\\n' + b'\\xff' * 40)\n", r"answer is malformed"),
    ("short", "import sys\nsys.stdout.buffer.write(b'OK\\n\\x05\\x00\\x00\\x00\\x00\\x00\\x00\\x00{}')\n",
     r"answer is malformed"),
    ("bad-dtype", "import sys, json, struct\nh = json.dumps({'node': {'a': 0, 'dtype': '|O8', 'shape': []}})"
                  ".encode()\nsys.stdout.buffer.write(b'OK\\n' + struct.pack('<Q', len(h)) + h)\n",
     r"answer is malformed.*dtype"),
])
def test_every_child_failure_is_a_format_error(case, body, message, monkeypatch, tmp_path, issue_file):
    monkeypatch.setattr(nf, "NIR_PARSE_BASE_S", 2.0)
    _fake_reader(monkeypatch, tmp_path, body)
    with pytest.raises(NIRFormatError, match=message):
        _load(tmp_path, issue_file[0])


def test_the_child_runs_under_an_address_space_limit(issue_file, tmp_path, monkeypatch):
    """With no room beyond the image and the data limit, the real reader cannot even open the file:
    the limit is applied (a decompression bomb past it fails the same way)."""
    monkeypatch.setattr(nf, "NIR_CHILD_BASE_BYTES", 0)
    monkeypatch.setattr(nf, "NIR_MAX_TOTAL_BYTES", 1 << 20)
    limit = 2 * len(issue_file[0]) + 2 * (1 << 20)
    with pytest.raises(NIRFormatError, match=f"MemoryError.*memory limit is {limit} bytes|crashed .*memory limit "
                                             f"\\({limit} bytes"):
        _load(tmp_path, issue_file[0])


def test_the_child_environment_is_clean(issue_file, tmp_path, monkeypatch):
    """The child is a fresh interpreter (no fork of this torch process) with no PYTHON* variables, no
    HDF5 plugin path and no torch; it reports what it sees."""
    monkeypatch.setenv("HDF5_PLUGIN_PATH", str(tmp_path))
    monkeypatch.setenv("PYTHONSTARTUP", str(tmp_path / "evil.py"))
    (tmp_path / "evil.py").write_text("raise SystemExit('read PYTHONSTARTUP')\n")
    _fake_reader(monkeypatch, tmp_path, "import json, os, sys\n"
                 "sys.stdin.buffer.readline()\n"
                 "seen = {'env': sorted(os.environ), 'torch': 'torch' in sys.modules}\n"
                 "sys.stderr.write(json.dumps(seen))\nsys.exit(9)\n")
    with pytest.raises(NIRFormatError, match="exit status 9") as e:
        _load(tmp_path, issue_file[0])
    assert '"torch": false' in str(e.value)
    for var in ("HDF5_PLUGIN_PATH", "PYTHONSTARTUP", "PYTHONPATH", "HOME"):
        assert f'"{var}"' not in str(e.value)


# --------------------------------------------------------------------------------------------- #
# crafted HDF5 files: valid HDF5, hostile or malformed NIR
# --------------------------------------------------------------------------------------------- #


def _crafted(mutate):
    """The issue's file changed by ``mutate(h5py.File)``."""
    buf = io.BytesIO(_image())
    with h5py.File(buf, "r+") as f:
        mutate(f)
    return buf.getvalue()


def _replace(path, data=None, **kw):
    def mutate(f):
        del f[path]
        parent, name = path.rsplit("/", 1)
        f[parent].create_dataset(name, data=data, **kw)
    return mutate


def _deep(f):
    g = f["node/metadata"]
    for i in range(40):
        g = g.create_group(f"d{i}")


def _many(f):
    g = f["node/metadata"]
    for i in range(300):
        g.create_dataset(f"x{i}", data=i)


def _nested_graph(f):
    del f["node/nodes/2/type"]
    f["node/nodes/2"].create_dataset("type", data="NIRGraph", dtype=h5py.string_dtype())


def _committed_type(f):
    f["node/nodes/0/dt"] = np.dtype("<f4")


def _relink(kind):
    def mutate(f):
        del f["node/nodes/2"]
        f["node/nodes/2"] = kind
    return mutate


def _cycle(f):
    f["node/nodes/0"]["loop"] = f["node"]


STR = h5py.string_dtype()
CRAFTED = {
    "no-node-group": (lambda f: f.__delitem__("node"), "no 'node' group"),
    "node-type": (_replace("node/type", "Garbage", dtype=STR), "/node/type is 'Garbage'"),
    "no-edges": (lambda f: f.__delitem__("node/edges"), "edges must be an \\[n, 2\\] array"),
    "edges-numbers": (_replace("node/edges", np.zeros((3, 2))), "edges must be an \\[n, 2\\] array"),
    "edge-to-nowhere": (_replace("node/edges", np.array([["input", "0"], ["0", "ghost"]], dtype=object), dtype=STR),
                        "names the node 'ghost'"),
    "extra-field": (lambda f: f["node/nodes/0"].create_dataset("colour", data=1.0), "nir cannot build it"),
    "missing-weight": (lambda f: f.__delitem__("node/nodes/0/weight"), "nir cannot build it"),
    "unknown-type": (_replace("node/nodes/1/type", "Dendrite", dtype=STR), "node '1' has type 'Dendrite', not a NIR"),
    "weight-string": (_replace("node/nodes/0/weight", "0.5", dtype=STR), "nir cannot build it|weight is the string"),
    "weight-complex": (_replace("node/nodes/0/weight", np.ones((8, 6), np.complex64)), "HDF5 type"),
    "weight-vlen": (_replace("node/nodes/0/weight", shape=(2,), dtype=h5py.vlen_dtype(np.int32)), "HDF5 type"),
    "weight-compound": (_replace("node/nodes/0/weight", np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")])),
                        "HDF5 type"),
    "huge-declared-shape": (_replace("node/nodes/0/weight", shape=(1 << 22, 1 << 12), dtype="<f4", chunks=(1, 1 << 12),
                                     compression="gzip", fillvalue=0.0), "beyond the limit of .* bytes for one array"),
    "null-dataspace": (_replace("node/nodes/0/weight", h5py.Empty("f4")), "without a dataspace"),
    "external-storage": (_replace("node/nodes/0/weight", shape=(8, 6), dtype="<f4",
                                  external=[("/etc/passwd", 0, 8 * 6 * 4)]), "external storage"),
    "soft-link": (_relink(h5py.SoftLink("/node/nodes/0")), "a link of kind SoftLink .only hard links"),
    "external-link": (_relink(h5py.ExternalLink("/etc/passwd", "/")), "a link of kind ExternalLink .only hard links"),
    "hard-link-cycle": (_cycle, "linked from two places"),
    "deep-groups": (_deep, "nested deeper than"),
    "nested-graph": (_nested_graph, "nested NIRGraph"),
    "committed-datatype": (_committed_type, "expected a group or a dataset"),
    "tau-array-of-strings": (_replace("node/nodes/1/tau", np.array(["2e-4"] * 8, dtype=object), dtype=STR),
                             "tau has dtype object"),
    "chain-mismatch": (_replace("node/nodes/2/weight", np.ones((3, 5), np.float32)),
                       "reads 5 features, but the layer before it gives \\[8\\]"),
    "nan-threshold": (_replace("node/nodes/3/v_threshold", np.full(3, np.nan, np.float32)), "not finite"),
    "dt-string": (_replace("node/metadata/dt", "fast", dtype=STR), "dt = 'fast', not a number"),
    "input-shape-negative": (_replace("node/nodes/input/shape", np.array([-6])), "expected a shape"),
}


def test_crafted_files_are_format_errors(tmp_path, fast, monkeypatch):
    monkeypatch.setattr(nf, "NIR_MAX_OBJECTS", 200)
    cases = dict(CRAFTED, **{"too-many-objects": (_many, "more than 200 HDF5 objects")})
    t0, wrong = time.perf_counter(), {}
    for case, (mutate, message) in cases.items():
        try:
            _load(tmp_path, _crafted(mutate))
            wrong[case] = "loaded"
        except NIRFormatError as e:
            if not re.search(message, str(e)) or "case.nir" not in str(e):
                wrong[case] = str(e)
    assert not wrong, wrong
    assert time.perf_counter() - t0 < 60


def test_a_crafted_file_that_is_valid_still_loads(tmp_path, issue_file):
    """The checks refuse what is wrong, not what is unusual: attributes, extra metadata, integer dt."""
    def mutate(f):
        f["node"].attrs["note"] = "hello"
        f["node/metadata"].create_dataset("comment", data="written by hand", dtype=STR)
    back = _load(tmp_path, _crafted(mutate))
    assert torch.equal(_run(back, X), issue_file[1])


def test_files_that_are_not_hdf5(tmp_path, fast):
    for data in (b"", b"not an hdf5 file", b"\x00" * 4096, b"\x89HDF\r\n\x1a\n" + b"\xff" * 600):
        with pytest.raises(NIRFormatError, match="cannot read it as a NIR file"):
            _load(tmp_path, data)


def test_file_size_limit(tmp_path, issue_file, monkeypatch):
    data = issue_file[0]
    monkeypatch.setattr(nf, "NIR_MAX_FILE_BYTES", len(data) - 1)
    with pytest.raises(NIRFormatError, match=f"more than {len(data) - 1} bytes"):
        _load(tmp_path, data)
    monkeypatch.setattr(nf, "NIR_MAX_FILE_BYTES", len(data))
    assert isinstance(_load(tmp_path, data), nn.Sequential)


# --------------------------------------------------------------------------------------------- #
# fuzz: byte flips and truncations of a real file, bounded in time
# --------------------------------------------------------------------------------------------- #


def test_fuzz_nir_file(issue_file, tmp_path, fast):
    """Seeded byte flips and truncations of the issue's file: each one is a NIRFormatError or loads
    a model whose spikes equal the original's, the process survives, and the whole run is bounded."""
    data, want = issue_file
    rng = np.random.default_rng(12)
    # 3 of 53 kB are not zero (HDF5 leaves the rest of its blocks empty): most flips go where the data is
    used = np.flatnonzero(np.frombuffer(data, np.uint8))
    offsets = np.concatenate([rng.choice(used, 18, replace=False), rng.integers(0, len(data), 4)])
    cases = [("flip", int(o), int(v)) for o, v in zip(offsets, rng.integers(1, 256, len(offsets)))]
    cases += [("truncate", int(n), 0) for n in (8, 2048, len(data) // 2, len(data) - 1)]
    t0, outcomes = time.perf_counter(), {"error": 0, "loaded": 0}
    for kind, n, v in cases:
        damaged = _flip(data, n, v) if kind == "flip" else data[:n]
        try:
            back = _load(tmp_path, damaged)
        except NIRFormatError:
            outcomes["error"] += 1
            continue
        assert torch.equal(_run(back, X), want), f"{kind} at {n} (xor {v:#x}) loaded a different model"
        outcomes["loaded"] += 1
    elapsed = time.perf_counter() - t0
    assert outcomes["error"] >= 4, outcomes  # the truncations at least
    assert elapsed < 40, f"{len(cases)} cases took {elapsed:.1f} s"


# --------------------------------------------------------------------------------------------- #
# graphs in memory: the same checks (NIRFormatError is a ValueError)
# --------------------------------------------------------------------------------------------- #


def _graph(*nodes, in_shape=(6,), out_shape=None):
    names = ["input"] + [f"n{i}" for i in range(len(nodes))] + ["output"]
    all_nodes = {"input": nir.Input({"input": np.array(in_shape)})}
    all_nodes.update({f"n{i}": n for i, n in enumerate(nodes)})
    all_nodes["output"] = nir.Output({"output": np.array(out_shape if out_shape is not None else in_shape)})
    return nir.NIRGraph(nodes=all_nodes, edges=list(zip(names, names[1:])), type_check=False)


def _affine(n_out, n_in, bias=True):
    w = np.ones((n_out, n_in), np.float32)
    return nir.Affine(weight=w, bias=np.zeros(n_out, np.float32)) if bias else nir.Linear(weight=w)


def _lif(n, **kw):
    p = dict(tau=np.full(n, 2e-4), r=np.full(n, 2.0), v_leak=np.zeros(n), v_threshold=np.ones(n), v_reset=np.zeros(n))
    p.update(kw)
    return nir.LIF(**p)


def _conv(c_out=4, c_in_g=2, k=3, groups=1, stride=1, padding=1, dilation=1, bias=True, input_shape=None):
    return nir.Conv2d(input_shape=input_shape, weight=np.ones((c_out, c_in_g, k, k), np.float32), stride=stride,
                      padding=padding, dilation=dilation, groups=groups, bias=np.zeros(c_out) if bias else None)


def _pool(kernel, stride=None, padding=0, cls=None):
    cls = cls or nir.SumPool2d
    return cls(kernel_size=np.array(kernel), stride=np.array(stride if stride is not None else kernel),
               padding=np.array(padding))


def _set(node, **fields):
    for k, v in fields.items():
        setattr(node, k, v)
    return node


IMG = (2, 8, 8)
GRAPH_REJECTED = {
    "chain-sizes": (lambda: _graph(_affine(8, 6), _affine(3, 5), out_shape=(3,)),
                    "n1' \\(Affine\\): weight \\[out=3, in=5\\] reads 5 features, but the layer before it gives \\[8\\]"),
    "input-size": (lambda: _graph(_affine(8, 5)), "reads 5 features, but the layer before it gives \\[6\\]"),
    "linear-on-image": (lambda: _graph(_affine(8, 128), in_shape=IMG), "gives \\[2, 8, 8\\] \\(flatten first\\)"),
    "bias-size": (lambda: _graph(_set(_affine(8, 6), bias=np.zeros(5))), "bias of shape \\[5\\], expected 8"),
    "weight-1d": (lambda: _graph(_set(_affine(8, 6), weight=np.ones(6))), "weight of shape \\[6\\], expected"),
    "weight-empty": (lambda: _graph(_set(_affine(8, 6), weight=np.ones((0, 6)))), "weight of shape \\[0, 6\\]"),
    "weight-nan": (lambda: _graph(_set(_affine(8, 6), weight=np.full((8, 6), np.nan))), "weight has values .*not finite"),
    "weight-strings": (lambda: _graph(_set(_affine(8, 6), weight=np.full((8, 6), "1"))), "weight has dtype <U1"),
    "flatten-start-after-end": (lambda: _graph(nir.Flatten({"input": np.array(IMG)}, 2, 1), in_shape=IMG),
                                "Flatten of dims 2..1"),
    "flatten-beyond-rank": (lambda: _graph(nir.Flatten({"input": np.array(IMG)}, 0, 5), in_shape=IMG),
                            "Flatten of dims 0..5 of a 3-d sample"),
    "flatten-declared-other": (lambda: _graph(nir.Flatten({"input": np.array((4, 4, 8))}, 0, 2), in_shape=IMG),
                               "input_type \\[4, 4, 8\\], but the layer before it gives \\[2, 8, 8\\]"),
    "flatten-float-dim": (lambda: _graph(_set(nir.Flatten({"input": np.array(IMG)}, 0, 2), start_dim=0.5),
                                         in_shape=IMG), "start_dim is 0.5, expected an integer"),
    "sumpool-kernel-0": (lambda: _graph(_pool((0, 2)), in_shape=IMG), "kernel_size is \\[0, 2\\], expected integers in"),
    "pool-stride-negative": (lambda: _graph(_pool((2, 2), stride=(-1, 2)), in_shape=IMG), "stride is \\[-1, 2\\]"),
    "pool-padding-big": (lambda: _graph(_pool((2, 2), padding=(2, 2)), in_shape=IMG), "more than half the kernel"),
    "pool-too-big": (lambda: _graph(_pool((9, 9)), in_shape=IMG), "pooling window .* does not fit"),
    "pool-on-vector": (lambda: _graph(_pool((2, 2))), "pools \\[C, H, W\\], but the layer before it gives \\[6\\]"),
    "tau-string": (lambda: _graph(_set(_lif(6), tau="2e-4")), "tau is the string '2e-4'"),
    "tau-none": (lambda: _graph(_set(_lif(6), tau=None)), "tau is missing"),
    "tau-ragged": (lambda: _graph(_set(_lif(6), tau=[[1e-3], [1e-3, 2e-3]])), "tau is not an array of numbers"),
    "tau-bool": (lambda: _graph(_lif(6, tau=np.full(6, True))), "tau has dtype bool"),
    "neuron-size": (lambda: _graph(_lif(4)), "tau has shape \\[4\\], but the layer before it gives \\[6\\]"),
    "threshold-at-f32-max": (lambda: _graph(_lif(6, v_threshold=np.full(6, np.finfo(np.float32).max))),
                             "leaves no float32 above it"),
    "conv-groups-0": (lambda: _graph(_conv(groups=0), in_shape=IMG), "groups is 0, expected an integer in \\[1"),
    "conv-groups-split": (lambda: _graph(_conv(c_out=3, c_in_g=1, groups=2), in_shape=IMG),
                          "3 output channels do not split into groups=2"),
    "conv-channels": (lambda: _graph(_conv(c_in_g=3), in_shape=IMG),
                      "takes \\[C_in=3, H, W\\] .*but the layer before it gives \\[2, 8, 8\\]"),
    "conv-stride-0": (lambda: _graph(_conv(stride=0), in_shape=IMG), "stride is \\[0, 0\\]"),
    "conv-stride-negative": (lambda: _graph(_conv(stride=(1, -2)), in_shape=IMG), "stride is \\[1, -2\\]"),
    "conv-dilation-0": (lambda: _graph(_conv(dilation=0), in_shape=IMG), "dilation is \\[0, 0\\]"),
    "conv-padding-negative": (lambda: _graph(_conv(padding=-1), in_shape=IMG), "padding is \\[-1, -1\\]"),
    "conv-padding-word": (lambda: _graph(_set(_conv(), padding="full"), in_shape=IMG), "padding 'full'"),
    "conv-same-strided": (lambda: _graph(_conv(padding="same", stride=2), in_shape=IMG), "'same' with stride"),
    "conv-kernel-too-big": (lambda: _graph(_conv(k=11, padding=0), in_shape=IMG), "convolution window .* does not fit"),
    "conv-bias-size": (lambda: _graph(_set(_conv(), bias=np.zeros(3)), in_shape=IMG), "bias of shape \\[3\\]"),
    "conv-input-shape": (lambda: _graph(_conv(input_shape=(7, 7)), in_shape=IMG),
                         "input_shape \\[7, 7\\], but the layer before it gives \\[2, 8, 8\\]"),
    "conv-groups-string": (lambda: _graph(_set(_conv(), groups="1"), in_shape=IMG), "groups is '1'"),
    "output-size": (lambda: _graph(_affine(8, 6), out_shape=(3,)), "output_type \\[3\\], but the chain before it"),
    "input-in-the-middle": (lambda: _graph(_affine(6, 6), nir.Input({"input": np.array([6])})),
                            "an Input node in the middle"),
    "output-in-the-middle": (lambda: _graph(nir.Output({"output": np.array([6])}), _affine(6, 6)),
                             "an Output node in the middle"),
    "input-shape-strings": (lambda: _graph(_affine(8, 6), in_shape=("6",)), "expected a shape"),
    "input-shape-zero": (lambda: _graph(_affine(8, 6), in_shape=(0,)), "expected a shape"),
    "node-name-int": (lambda: _renamed(_graph(_affine(6, 6)), "n0", 7), "node names must be strings, got 7"),
    "node-not-a-node": (lambda: _set(_graph(_affine(6, 6)), nodes={"input": "not a node"}), "is a str, not a NIR node"),
    "nodes-not-a-dict": (lambda: _set(_graph(_affine(6, 6)), nodes=[1, 2]), "nodes must be a dict"),
    "edge-to-nowhere": (lambda: _set(_graph(_affine(6, 6)), edges=[("input", "n0"), ("n0", "ghost")]),
                        "names the node 'ghost'"),
    "edge-not-a-pair": (lambda: _set(_graph(_affine(6, 6)), edges=[("input", "n0", "output")]), "edges must be a list"),
    "edges-not-a-list": (lambda: _set(_graph(_affine(6, 6)), edges=5), "edges must be a list"),
    "edge-unhashable": (lambda: _set(_graph(_affine(6, 6)), edges=[(["input"], "n0")]), "names the node \\['input'\\]"),
    "cycle": (lambda: _set(_graph(_affine(6, 6), _affine(6, 6)), edges=[("input", "n0"), ("n0", "n1"), ("n1", "n0")]),
              "branch or merge|cycle"),
    "self-loop": (lambda: _set(_graph(_affine(6, 6)), edges=[("input", "n0"), ("n0", "n0")]), "cycle|branch"),
    "dt-string": (lambda: _set(_graph(_affine(6, 6)), metadata={"dt": "fast"}), "dt = 'fast', not a number"),
    "dt-none": (lambda: _set(_graph(_affine(6, 6)), metadata={"dt": None}), "dt = None, not a number"),
    "dt-bool": (lambda: _set(_graph(_affine(6, 6)), metadata={"dt": True}), "dt = True, not a number"),
    "dt-inf": (lambda: _set(_graph(_affine(6, 6)), metadata={"dt": float("inf")}), "expected a finite number > 0"),
    "dt-zero-array": (lambda: _set(_graph(_affine(6, 6)), metadata={"dt": np.array([0.0])}), "expected a finite"),
    "dt-complex": (lambda: _set(_graph(_affine(6, 6)), metadata={"dt": 1j}), "not a number"),
    "dt-ragged": (lambda: _set(_graph(_affine(6, 6)), metadata={"dt": [[1e-3], [1, 2]]}), "not a number"),
    "dt-two": (lambda: _set(_graph(_affine(6, 6)), metadata={"dt": (1e-3, 2e-3)}), "not a number"),
}


def _renamed(graph, old, new):
    graph.nodes = {(new if k == old else k): v for k, v in graph.nodes.items()}
    graph.edges = [tuple(new if n == old else n for n in e) for e in graph.edges]
    return graph


@pytest.mark.parametrize("case", sorted(GRAPH_REJECTED))
def test_graph_checks(case):
    make, message = GRAPH_REJECTED[case]
    with pytest.raises(NIRFormatError, match=message) as e:
        from_nir(make(), backend="torch")
    assert str(e.value).startswith("from_nir: the graph")


def test_valid_shapes_still_import():
    """What the checks must keep: conv chains with groups, strides, padding words, flatten with
    negative dims, per-neuron arrays of the layer's shape or of size 1, a leading batch dim of 1."""
    conv = _conv(c_out=4, c_in_g=1, groups=2, stride=2, padding=1)
    g = _graph(conv, _set(_lif(4 * 4 * 4), v_threshold=np.ones((4, 4, 4))), _pool((2, 2)),
               _set(_conv(c_out=2, c_in_g=4, padding="same"), bias=None),
               nir.Flatten({"input": np.array((2, 2, 2))}, -3, -1), _affine(5, 8), _lif(1),
               in_shape=IMG, out_shape=(5,))
    net = from_nir(g, backend="torch")
    y = _run(net, torch.rand(3, 2, *IMG))
    assert y.shape == (3, 2, 5)
    g = _graph(_affine(8, 6), _lif(8), in_shape=(1, 6), out_shape=(8,))  # Norse writes [1, n]
    assert _run(from_nir(g, backend="torch"), torch.rand(2, 2, 6)).shape == (2, 2, 8)
    g = _set(_graph(_lif(6, r=np.ones(6))), metadata={"dt": [0.5e-4]})  # a one-element list is a number
    assert from_nir(g, backend="torch")[0].tau == 4.0  # tau / dt; the default dt (1e-4) would give 2


# --------------------------------------------------------------------------------------------- #
# to_nir: values NIR readers cannot compute with, wrong argument types
# --------------------------------------------------------------------------------------------- #


def _nan_plif():
    n = st.PLIF()
    with torch.no_grad():
        n.w.fill_(float("nan"))
    return n


def _learnable_leak(alpha, beta):
    n = st.ExtendedLIF(learnable_leak=True)
    with torch.no_grad():
        n.v_leaky_alpha.fill_(alpha)
        n.v_leaky_beta.fill_(beta)
    return n


def _bad_linear(field, value):
    m = nn.Linear(4, 4)
    with torch.no_grad():
        getattr(m, field).view(-1)[1] = value
    return m


EXPORT_REJECTED = {
    "plif-nan-w": (lambda: nn.Sequential(nn.Linear(4, 4), _nan_plif()), "1: PLIF has tau .*= nan"),
    "plif-saturated-w": (lambda: nn.Sequential(_set(st.PLIF(), w=nn.Parameter(torch.tensor(-200.0)))),
                         "0: PLIF has tau .*= inf"),
    "threshold-1e39": (lambda: nn.Sequential(st.IF(v_threshold=1e39, backend="torch")), "0: IF has v_threshold = 1e\\+39"),
    "lif-threshold-1e39": (lambda: nn.Sequential(st.LIF(v_threshold=-1e39, backend="torch")), "0: LIF has v_threshold = -1e\\+39"),
    "tau-1e39": (lambda: nn.Sequential(st.LIF(tau=1e39, backend="torch")), "0: LIF has tau = 1e\\+39"),
    "weight-nan": (lambda: nn.Sequential(_bad_linear("weight", float("nan")), st.IF()),
                   "0: Linear has weight = nan \\(1 of 16"),
    "weight-inf": (lambda: nn.Sequential(_bad_linear("weight", float("inf")), st.IF()), "0: Linear has weight = inf"),
    "bias-nan": (lambda: nn.Sequential(_bad_linear("bias", float("nan")), st.IF()), "0: Linear has bias = nan"),
    "ext-learnable-alpha-nan": (lambda: nn.Sequential(_learnable_leak(float("nan"), 0.0)),
                                "0: ExtendedLIF has v_leaky_alpha = nan"),
    "ext-learnable-beta-inf": (lambda: nn.Sequential(_learnable_leak(0.5, float("inf"))),
                               "0: ExtendedLIF has v_leaky_beta = inf"),
}


@pytest.mark.parametrize("case", sorted(EXPORT_REJECTED))
def test_to_nir_refuses_values_not_finite_in_float32(case):
    make, message = EXPORT_REJECTED[case]
    with pytest.raises(ExportError, match=message):
        to_nir(make(), torch.rand(2, 2, 4))


def test_to_nir_refuses_a_dt_that_overflows_r():
    with pytest.raises(ExportError, match="0: IF has r = .*, not a finite float32"):
        to_nir(nn.Sequential(st.IF()), torch.rand(2, 2, 4), dt=1e-300)


def test_to_nir_argument_types(tmp_path):
    net, x = nn.Sequential(nn.Linear(4, 4), st.IF()), torch.rand(2, 2, 4)
    with pytest.raises(TypeError, match="to_nir: model must be a torch.nn.Module .* got function"):
        to_nir(lambda v: v, x)
    with pytest.raises(TypeError, match="to_nir: sample_input must be a torch.Tensor .* got list"):
        to_nir(net, [[[0.0] * 4]])
    with pytest.raises(TypeError, match="save_nir: model must be a torch.nn.Module"):
        save_nir("net", tmp_path / "n.nir", x)
    with pytest.raises(TypeError, match="save_nir: path must be a str or os.PathLike, got int"):
        save_nir(net, 3, x)
    with pytest.raises(TypeError, match="save_nir: sample_input must be a torch.Tensor"):
        save_nir(net, tmp_path / "n.nir", np.zeros((2, 2, 4)))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- #
# save_nir when the write fails
# --------------------------------------------------------------------------------------------- #


def _listing(d):
    return sorted(p.name for p in d.iterdir())


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_save_nir_under_a_file_size_limit(tmp_path):
    """Past RLIMIT_FSIZE, h5py writing the file itself died with SIGSEGV and left .tmp-*.nir behind
    (a regression crashes this run: it fails, it does not hang). Now the image is built in memory
    and written by Python (which ignores SIGXFSZ): EFBIG, the process lives, no temporary file, the
    old file unchanged, and no new file where there was none."""
    net, sample = _issue_model()
    (tmp_path / "old.nir").write_bytes(b"old")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the file is ~50 kB; h5py died at this limit
    try:
        with pytest.raises(OSError) as old:
            save_nir(net, tmp_path / "old.nir", sample)
        with pytest.raises(OSError) as new:
            save_nir(net, tmp_path / "new.nir", sample)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    for e, name in ((old, "old.nir"), (new, "new.nir")):
        assert e.value.errno == errno.EFBIG and f"save_nir: cannot write '{tmp_path / name}'" in str(e.value)
    assert _listing(tmp_path) == ["old.nir"] and (tmp_path / "old.nir").read_bytes() == b"old"
    save_nir(net, tmp_path / "old.nir", sample)  # and with room, it writes
    assert from_nir(tmp_path / "old.nir", backend="torch")[0].weight.shape == (8, 6)


def test_write_atomic_failures_leave_nothing(tmp_path, monkeypatch):
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError, match="nir: cannot write"):
        write_atomic(tmp_path / "dir", b"new", "nir")
    with pytest.raises(FileNotFoundError, match="cannot write"):
        write_atomic(tmp_path / "missing" / "t.bin", b"new")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="save_nir: cannot write .*No space left") as e:
        write_atomic(target, b"new", "save_nir")
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    with pytest.raises(TypeError, match="data must be bytes, got str"):
        write_atomic(target, "new")
    assert _listing(tmp_path) == ["dir", "t.bin"] and target.read_bytes() == b"old"
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o644
    assert _listing(tmp_path) == ["dir", "t.bin"]


def test_dt_and_backend_arguments():
    g = _graph(_affine(6, 6))
    for dt, err, msg in ((True, TypeError, "from_nir: dt must be a real number, got True"),
                         ("1e-3", TypeError, "dt must be a real number, got '1e-3'"),
                         (float("nan"), ValueError, "dt must be finite"),
                         (-1e-3, ValueError, "dt must be finite and > 0, got -0.001")):
        with pytest.raises(err, match=msg):
            from_nir(g, dt=dt)
        with pytest.raises(err, match=msg.replace("from_nir", "to_nir")):
            to_nir(nn.Sequential(st.IF()), torch.rand(2, 2, 4), dt=dt)
    with pytest.raises(ValueError, match="from_nir: backend must be one of .* got 'gpu'"):
        from_nir(g, backend="gpu")  # a graph without neurons: nothing else would look at it


def test_to_nir_refuses_a_family_a_neuron_that_does_not_start_at_rest():
    import dataclasses

    from spiketriton.export import ExportError, to_nir

    lif = st.LIF()
    lif.spec = dataclasses.replace(lif.spec, v_init=0.5)  # as ann2snn starts its IF neurons
    net = nn.Sequential(nn.Linear(3, 4), lif)
    with pytest.raises(ExportError, match=r"starts at v_init=0.5, not at its reset potential v_reset=0.0"):
        to_nir(net, torch.rand(2, 1, 3))
