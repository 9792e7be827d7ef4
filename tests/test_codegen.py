"""The compiled code of every kernel, without a GPU (bench/codegen.py): each kernel compiled for sm_90
and sm_80 exactly as a launch at the stated shapes would be, then read from its SASS.

What the kernels promise, checked on every commit:
- no spills (no local-memory loads/stores, no stack) in any kernel on either target;
- tensor-core instructions (wgmma on sm_90: HGMMA/IGMMA; mma on sm_80: HMMA/IMMA) in every matmul
  path: fp32 (as three bf16 products), bf16, fp16 and int8, forward and dW, and in the spike convolution's
  implicit GEMMs and the STDP update;
- 128-bit global accesses of the float data in the neuron and pack kernels for aligned shapes, and at
  least 64-bit when the last dimension is a multiple of 8;
- the committed report (bench/results/codegen/codegen.json) is the one this code compiles to, so a
  kernel change that is not re-read (``python -m bench.codegen``) fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "bench" / "results" / "codegen" / "codegen.json"
ARCHS = (90, 80)
WGMMA = {90: ("HGMMA", "IGMMA"), 80: ("HMMA", "IMMA")}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Run the tool once per target, both targets at once (one process each)."""
    out = tmp_path_factory.mktemp("codegen")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = [subprocess.Popen([sys.executable, "-m", "bench.codegen", "--arch", str(a), "--out", str(out / str(a)),
                               "--no-sass"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for a in ARCHS]
    records = []
    for a, p in zip(ARCHS, procs):
        stdout, stderr = p.communicate(timeout=1800)
        assert p.returncode == 0, stderr[-4000:] + stdout[-2000:]
        records += json.loads((out / str(a) / "codegen.json").read_text())["kernels"]
    return records


def _ids(records, pred):
    return [r for r in records if pred(r)]


def test_every_kernel_family_is_covered(report):
    kernels = {r["kernel"] for r in report}
    for k in ("_neuron_fwd_kernel", "_neuron_bwd_kernel", "_neuron_int_kernel", "_pack_kernel", "_unpack_kernel",
              "_spike_matmul_fwd_kernel", "_spike_matmul_dw_kernel", "_fallback_fwd_kernel", "_fallback_dw_kernel",
              "_event_matmul_kernel", "_spike_conv_fwd_kernel", "_spike_conv_dw_kernel", "_fallback_conv_fwd_kernel",
              "_fallback_conv_dw_kernel", "_stdp_kernel", "_or_pool_kernel"):
        assert k in kernels, k
    assert {r["arch"] for r in report} == set(ARCHS)


def test_no_spills(report):
    bad = [(r["arch"], r["case"], r["kernel"], r["registers"], r["stack_bytes"], r["ldl_stl"])
           for r in report if r["stack_bytes"] or r["ldl_stl"] or r["local_bytes"]]
    assert not bad, bad


@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_cores_in_every_matmul_path(report, arch):
    paths = set()
    for r in report:
        if r["arch"] != arch or r["kernel"] not in ("_spike_matmul_fwd_kernel", "_spike_matmul_dw_kernel",
                                                    "_spike_conv_fwd_kernel", "_spike_conv_dw_kernel", "_stdp_kernel"):
            continue
        ops = {op.split(".")[0] for op in r["tensor_core_ops"]}
        assert r["tensor_core"] > 0 and ops <= set(WGMMA[arch]), (r["case"], r["tensor_core_ops"])
        if r["hot_loop"]:  # M = 1 specializes to one step: no loop left in dW
            assert r["hot_loop"]["tensor_core"] > 0, r["case"]
        assert r["ffma"] == 0 or r["dtype"] != "float32" or r["tensor_core"] > 0
        paths.add((r["group"], r["dtype"]))
    assert paths >= {(g, d) for g in ("matmul", "matmul_dw") for d in ("float32", "bfloat16", "float16")} | {
        ("matmul", "int8")}


def _float_accesses(r):
    """(load bits, store bits) that must be vector-wide for the float data of a streaming kernel."""
    if r["kernel"] == "_pack_kernel":
        return r["widest_global_load_bits"], None          # reads floats, writes packed bytes
    if r["kernel"] == "_unpack_kernel":
        return None, r["widest_global_store_bits"]         # reads bytes, writes floats
    return r["widest_global_load_bits"], r["widest_global_store_bits"]


def test_streaming_kernels_are_vectorized(report):
    bad = []
    for r in report:
        if r["group"] not in ("neuron", "pack", "neuron_int") or r["dtype"] == "bool":
            continue
        need = 128 if r["aligned"] else (64 if r["last_dim_mult8"] else None)
        if need is None:
            continue
        ld, st = _float_accesses(r)
        if (ld is not None and ld < need) or (st is not None and st < need):
            bad.append((r["arch"], r["case"], r["kernel"], ld, st, need))
    assert not bad, bad


def test_an_unaligned_input_narrows_only_its_own_loads(report):
    # x starts 4 bytes past a 16-byte boundary: its loads are 32-bit (aligning it would need a copy),
    # while the outputs the launcher allocates keep 128-bit stores
    rows = [r for r in report if "unaligned" in r["case"]]
    assert rows
    for r in rows:
        assert r["widest_global_store_bits"] >= 128, (r["arch"], r["case"], r["widest_global_store_bits"])


def test_committed_report_is_current(report):
    committed = json.loads(COMMITTED.read_text())
    if committed["header"]["triton"] != f"triton {triton.__version__}":
        pytest.skip(f"report made with {committed['header']['triton']}, this is triton {triton.__version__}")
    keys = ("registers", "stack_bytes", "shared_bytes", "tensor_core", "widest_global_load_bits",
            "widest_global_store_bits", "programs", "num_warps", "num_stages", "hot_loop")
    want = {(r["arch"], r["case"]): {k: r[k] for k in keys} for r in committed["kernels"]}
    got = {(r["arch"], r["case"]): {k: r[k] for k in keys} for r in report}
    assert got.keys() == want.keys(), "cases differ: run `python -m bench.codegen` and commit bench/results/codegen"
    stale = [k for k in got if got[k] != want[k]]
    assert not stale, f"the compiled code changed for {stale[:5]}: run `python -m bench.codegen` and commit the report"


def test_sass_reader_on_a_known_listing():
    """The SASS reader itself, on a hand-written listing: widths, tensor-core ops, the hot loop."""
    sys.path.insert(0, str(REPO))
    env_interp = os.environ.pop("TRITON_INTERPRET", None)
    try:
        import importlib
        codegen = importlib.import_module("bench.codegen")
    finally:
        if env_interp is not None:
            os.environ["TRITON_INTERPRET"] = env_interp
    sass = """
        /*0000*/                   LDG.E.U8 R2, desc[UR4][R4.64] ;                 /* 0x0 */
        /*0010*/                   LDGSTS.E.BYPASS.128 [R9], desc[UR4][R12.64], P0 ;
        /*0020*/                   SHF.R.U32.HI R3, RZ, 0x1, R2 ;
        /*0030*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8].tnspB, R24 ;
        /*0040*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8].tnspB, R24, gsb0 ;
        /*0050*/              @!P4 BRA 0x10 ;
        /*0060*/                   STG.E.64 desc[UR4][R6.64], R24 ;
        /*0070*/                   STL [R1], R3 ;
        /*0080*/                   BRA 0x80;
    """
    r = codegen.analyse_sass(sass)
    assert r["tensor_core"] == 2 and r["tensor_core_ops"] == ["HGMMA.64x128x16.F32.BF16"]
    assert r["widest_global_load_bits"] == 128 and r["widest_global_store_bits"] == 64
    assert r["ldl_stl"] == 1
    assert r["hot_loop"]["instructions"] == 5 and r["hot_loop"]["tensor_core"] == 2  # 0x10 .. 0x50
    assert r["hot_loop"]["global_loads"] == 1
    assert codegen.analyse_sass("")["hot_loop"] is None
