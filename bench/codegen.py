"""Codegen check: compile every Triton kernel for sm_90 and sm_80 exactly as a launch at stated shapes
would, without a GPU, and read the compiled code.

``python -m bench.codegen [--arch 90 80] [--out bench/results/codegen] [--only SUBSTRING]``

How a launch is reproduced: the real launchers (``spiketriton.kernels.*``) are called with CPU tensors
of the stated shapes while Triton's active driver is a stand-in that reports a CUDA target, and every
``kernel[grid](...)`` is turned into a compile-only warm-up. Triton therefore picks the same constexprs,
``num_warps`` / ``num_stages`` and the same specialization (16-byte aligned pointers, integers divisible
by 16, integers equal to 1) that it would pick for those tensors on a GPU. Tensors come from
``torch.empty`` (never touched, so a 512 MiB input costs nothing) or are views with the storage offset a
case wants to test.

Per compiled kernel the report gives (from ``cuobjdump --dump-resource-usage`` and ``cuobjdump -sass``,
both shipped with Triton):
- registers, stack bytes (spills land there), local-memory loads/stores (LDL/STL), shared memory;
- tensor-core instructions (HGMMA/IGMMA on sm_90, HMMA/IMMA on sm_80), counted in the SASS;
- the widest global load and store, in bits (LDG / LDGSTS (cp.async) / TMA for loads, STG for stores);
- the hot loop (the innermost loop that holds the tensor-core instructions, or else the global loads):
  its SASS instruction count per iteration, the tensor-core instructions in it, and what that gives per
  element of the tile;
- for matmul kernels an *estimate* of the issue-bound tensor-core utilisation: the cycles the
  tensor cores need for one iteration's products against the cycles the four warp schedulers of an SM
  need to issue the loop's instructions (one instruction per scheduler per cycle). This is read off
  the compiled code, not measured; the GPU benchmarks (bench/spike_matmul_gpu.py) measure.

Writes ``codegen.json``, ``codegen.md`` and, per kernel, its SASS (``sass/<arch>/<case>.sass.gz``,
without the hex encodings) so every number can be checked. tests/test_codegen.py runs this tool and
asserts the properties the kernels promise (no spills, tensor cores in every matmul path, vectorized
streaming accesses).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("bench.codegen needs TRITON_INTERPRET unset: the interpreter replaces the compiled kernels")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is its default

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver as _driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from spiketriton.kernels import neuron as KN  # noqa: E402
from spiketriton.kernels import neuron_int as KI  # noqa: E402
from spiketriton.kernels import pack as KP  # noqa: E402
from spiketriton.kernels import spike_matmul as KS  # noqa: E402
from spiketriton.spec import NeuronSpec  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "codegen"
NV_BIN = Path(triton.__file__).resolve().parent / "backends" / "nvidia" / "bin"

# Dense tensor-core multiply-adds per SM per clock, used only for the issue-bound estimate.
# sm_90 (H100/H200): 1024 bf16/fp16, 2048 int8; sm_80 (A100): 512 bf16/fp16, 1024 int8 (the
# vendors' peak TFLOP/s divided by 2 x SMs x boost clock: 989e12 / (2 * 132 * 1.83e9) ~ 2048 flops).
TC_FMA_PER_CLK = {90: {"bf16": 1024, "fp16": 1024, "i8": 2048}, 80: {"bf16": 512, "fp16": 512, "i8": 1024}}
ISSUE_PER_CLK = 4  # four warp schedulers per SM, one instruction each per clock
# SMs of the GPU each target stands for (H100 SXM / H200: 132; A100: 108): the launchers size their
# grids from the SM count, read from the device on a GPU and from ``_DEFAULT_SMS`` here.
SMS = {90: 132, 80: 108}


# --------------------------------------------------------------------------------------------- #
# Compiling as a launch would
# --------------------------------------------------------------------------------------------- #


class _CudaTargetDriver:
    """Stands in for Triton's CUDA driver: reports the target, owns no device. Only what a compile-only
    warm-up asks for is here."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


@dataclasses.dataclass
class Launch:
    kernel: str
    grid: tuple
    compiled: object
    constexprs: dict


@contextlib.contextmanager
def capture(arch: int):
    """Within the block every Triton launch compiles for ``sm_<arch>`` and is recorded, not run; the
    launchers see the SM count of the GPU the target stands for (``SMS``)."""
    launches: List[Launch] = []
    original = JITFunction.run
    compiled_here = set()  # every kernel compiled under the stand-in driver, whatever module holds it

    def run(self, *args, grid, warmup, **kwargs):
        compiled_here.add(self)
        compiled = original(self, *args, grid=grid, warmup=True, **kwargs)
        consts = {k: v for k, v in kwargs.items() if k.isupper() or k in ("num_warps", "num_stages")}
        launches.append(Launch(self.fn.__name__, tuple(grid) if not callable(grid) else (), compiled, consts))
        return compiled

    modules = (KS, KN, KP, KI)
    saved_sms = {m: m._DEFAULT_SMS for m in modules if hasattr(m, "_DEFAULT_SMS")}
    _driver.set_active(_CudaTargetDriver(arch))
    JITFunction.run = run
    for m in saved_sms:
        m._DEFAULT_SMS = SMS.get(arch, 132)
    try:
        yield launches
    finally:
        JITFunction.run = original
        for m, v in saved_sms.items():
            m._DEFAULT_SMS = v
        _driver._active = None  # back to the machine's own driver, resolved lazily
        # the kernels' per-device caches now hold sm_<arch> binaries under device 0: drop them, for every
        # kernel that ran (a cache kept here made the next arch reuse this arch's binary: the event-matmul
        # kernels, outside the modules once listed here, were reported for sm_80 with sm_90's registers)
        for fn in compiled_here:
            fn.device_caches.clear()


# --------------------------------------------------------------------------------------------- #
# Reading the compiled code
# --------------------------------------------------------------------------------------------- #

_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_TC_OPS = ("HGMMA", "IGMMA", "QGMMA", "HMMA", "IMMA", "DMMA")


def _tool(name: str, *args: str) -> str:
    return subprocess.run([str(NV_BIN / name), *args], check=True, capture_output=True, text=True).stdout


def _access_bits(op: str) -> Optional[int]:
    """Width in bits of a global load/store opcode such as LDG.E.128, LDG.E.U8, STG.E.64, LDGSTS.E.BYPASS.128."""
    parts = op.split(".")
    for p in parts[1:]:
        if p in ("64", "128", "256"):
            return int(p)
        if p in ("U8", "S8"):
            return 8
        if p in ("U16", "S16"):
            return 16
    return 32


def analyse_sass(sass: str) -> dict:
    """Instruction statistics of one kernel's SASS (cuobjdump -sass text)."""
    ins = []  # (address, opcode with modifiers)
    for line in sass.splitlines():
        m = _SASS_LINE.search(line)
        if m:
            ins.append((int(m.group(1), 16), m.group(3), m.group(4)))
    ops = [op for _, op, _ in ins]
    base = [op.split(".")[0] for op in ops]
    loads = [op for op in ops if op.split(".")[0] in ("LDG", "LDGSTS")]
    stores = [op for op in ops if op.split(".")[0] in ("STG", "RED", "ATOMG")]
    tma = sum(1 for b in base if b in ("UTMALDG", "UBLKCP"))
    widest_load = max((_access_bits(op) for op in loads), default=0)
    if tma:
        widest_load = max(widest_load, 1024)  # a TMA copy moves whole boxes
    widest_store = max((_access_bits(op) for op in stores if op.startswith("STG")), default=0)
    # loops: a branch to an earlier address (a branch to itself is the trailing trap)
    loops = []
    addr_index = {a: i for i, (a, _, _) in enumerate(ins)}
    for i, (a, op, rest) in enumerate(ins):
        if op.split(".")[0] != "BRA":
            continue
        m = re.search(r"0x([0-9a-f]+)", rest)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target < a and target in addr_index:
            loops.append((addr_index[target], i))
    def body(lo, hi):
        return [op for _, op, _ in ins[lo:hi + 1]]

    def pick(pred):
        cands = [(hi - lo, lo, hi) for lo, hi in loops if any(pred(op) for op in body(lo, hi))]
        return min(cands)[1:] if cands else None

    is_tc = lambda op: op.split(".")[0] in _TC_OPS  # noqa: E731
    is_ld = lambda op: op.split(".")[0] in ("LDG", "LDGSTS", "UTMALDG")  # noqa: E731
    hot = pick(is_tc) or pick(is_ld)
    loop = None
    if hot:
        b = body(*hot)
        loop = dict(instructions=len(b), tensor_core=sum(map(is_tc, b)),
                    global_loads=sum(map(is_ld, b)), shared_loads=sum(1 for op in b if op.startswith("LDS")),
                    int_alu=sum(1 for op in b if op.split(".")[0] in ("SHF", "LOP3", "PRMT", "IMAD", "IADD3", "SEL",
                                                                       "ISETP", "I2F", "F2FP", "F2F", "I2FP")),
                    syncs=sum(1 for op in b if op.split(".")[0] in ("BAR", "WARPGROUP", "DEPBAR", "SYNCS")))
    return dict(
        instructions=len(ins),
        tensor_core=sum(1 for b in base if b in _TC_OPS),
        tensor_core_ops=sorted({op for op in ops if op.split(".")[0] in _TC_OPS}),
        ffma=base.count("FFMA"),
        ldl_stl=sum(1 for b in base if b in ("LDL", "STL")),
        widest_global_load_bits=widest_load,
        widest_global_store_bits=widest_store,
        global_load_ops=sorted(set(loads)) + (["TMA"] if tma else []),
        global_store_ops=sorted(set(op for op in stores)),
        hot_loop=loop,
    )


def resource_usage(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = _tool("cuobjdump", "--dump-resource-usage", f.name)
        sass = _tool("cuobjdump", "-sass", f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if not m:
        raise RuntimeError(f"cuobjdump gave no resource usage:\n{text}")
    reg, stack, shared, local = map(int, m.groups())
    return dict(registers=reg, stack_bytes=stack, static_shared=shared, local_bytes=local), sass


def _strip_hex(sass: str) -> str:
    return "\n".join(re.sub(r"\s*/\* 0x[0-9a-f]+ \*/", "", line).rstrip() for line in sass.splitlines()) + "\n"


def _specialized(ttir: str) -> List[str]:
    """Arguments Triton specialized as divisible by 16 (pointers: 16-byte aligned)."""
    head = next((line for line in ttir.splitlines() if "tt.func public" in line), "")
    return re.findall(r"%(\w+): [^,)]*\{tt\.divisibility = 16", head)


# --------------------------------------------------------------------------------------------- #
# Cases: launcher calls at stated shapes
# --------------------------------------------------------------------------------------------- #


def _t(shape, dtype, offset: int = 0):
    """An untouched tensor of ``shape``; ``offset`` elements into its storage (0: 16-byte aligned)."""
    n = math.prod(shape)
    buf = torch.empty(n + offset, dtype=dtype)
    return buf[offset:].view(shape)


@dataclasses.dataclass
class Case:
    name: str
    group: str          # "neuron", "pack", "matmul", "matmul_dw", "neuron_int"
    shape: str          # the stated shape, for the report
    aligned: bool       # float data 16-byte aligned and the last dimension a multiple of 16 elements
    last_dim_mult8: bool
    run: Callable[[], None]
    dtype: str = ""


def _neuron_spec(kind: str) -> NeuronSpec:
    """LIF as st.LIF(tau=2) builds it; ExtendedLIF with every feature (floor, adaptive threshold, refractory)."""
    from spiketriton.surrogate import ATan, Rect
    if kind == "lif":
        return NeuronSpec(family=0, surrogate=ATan(), v_threshold=1.0, v_reset=0.0, decay_input=True)
    if kind == "elif":
        return NeuronSpec(family=1, surrogate=Rect(), v_threshold=1.0, v_reset=0.0, v_l=-1.0, ref_len=2,
                          v_th_alpha=0.9, v_th_beta=0.0, v_th_incre=0.1)
    raise ValueError(kind)


def neuron_cases() -> List[Case]:
    out = []
    shapes = [("32x64x65536", (32, 64, 65536)), ("500x16x16384", (500, 16, 16384)),
              ("8x16x1000", (8, 16, 1000)), ("8x16x1001", (8, 16, 1001))]
    for (label, shape), dt in [(s, d) for s in shapes for d in (torch.float32, torch.bfloat16)]:
        dn = str(dt).replace("torch.", "")
        aligned = shape[-1] % 16 == 0
        out.append(_neuron_case(f"lif_fwd_train/{dn}/{label}", "lif", shape, dt, 0, True, aligned))
        out.append(_neuron_case(f"lif_fwd_infer/{dn}/{label}", "lif", shape, dt, 0, False, aligned))
        out.append(_neuron_case(f"lif_bwd/{dn}/{label}", "lif", shape, dt, 0, "bwd", aligned))
    # an input that starts 4 bytes past a 16-byte boundary
    out.append(_neuron_case("lif_fwd_train/float32/unaligned/8x16x1024", "lif", (8, 16, 1024), torch.float32, 1,
                            True, False))
    out.append(_neuron_case("elif_fwd_train/float32/32x64x4096", "elif", (32, 64, 4096), torch.float32, 0, True, True))
    out.append(_neuron_case("elif_bwd/float32/32x64x4096", "elif", (32, 64, 4096), torch.float32, 0, "bwd", True))
    return out


def _neuron_case(name, kind, shape, dtype, offset, mode, aligned) -> Case:
    spec = _neuron_spec(kind)
    params = torch.tensor([0.5] if spec.family == 0 else [0.9, 0.0], dtype=torch.float32)  # 1/tau; alpha, beta

    def run():
        x = _t(shape, dtype, offset)
        if mode == "bwd":  # the forward that makes the saved tensors is launched too; build() keeps the backward
            _, _, _, _, saved = KN.neuron_forward(x, None, None, None, params, spec, store=True)
            KN.neuron_backward(_t(shape, dtype), None, None, saved, None, params, spec, need_v0=False, need_a0=False,
                               need_params=False)
        else:
            KN.neuron_forward(x, None, None, None, params, spec, store=bool(mode))

    return Case(name, "neuron", "x".join(map(str, shape)), aligned and offset == 0,
                shape[-1] % 8 == 0 and offset == 0, run, str(dtype).replace("torch.", ""))


def pack_cases() -> List[Case]:
    out = []
    for dt in (torch.float32, torch.bfloat16, torch.bool):
        dn = str(dt).replace("torch.", "")
        for label, shape in [("2048x65536", (2048, 65536)), ("256x1000", (256, 1000))]:
            def run_pack(shape=shape, dt=dt):
                KP.pack(_t(shape, dt))
            out.append(Case(f"pack/{dn}/{label}", "pack", label, shape[-1] % 16 == 0, shape[-1] % 8 == 0, run_pack, dn))
            if dt is not torch.bool:
                def run_unpack(shape=shape, dt=dt):
                    KP.unpack(_t(shape[:-1] + ((shape[-1] + 7) // 8,), torch.uint8), shape[-1], dt)
                out.append(Case(f"unpack/{dn}/{label}", "pack", label, shape[-1] % 16 == 0, shape[-1] % 8 == 0,
                                run_unpack, dn))
    return out


def matmul_cases() -> List[Case]:
    out = []
    shapes = [("4096x4096x4096", 4096, 4096, 4096), ("32x1024x1024", 32, 1024, 1024),
              ("1000x1000x1000", 1000, 1000, 1000),
              ("1x4096x4096", 1, 4096, 4096),        # one time step of one sample (streaming inference)
              ("16384x10x1024", 16384, 10, 1024)]    # a classifier head over T x B rows
    for (label, M, N, K), dt in [(s, d) for s in shapes for d in (torch.float32, torch.bfloat16, torch.float16,
                                                                    torch.int8)]:
        dn = str(dt).replace("torch.", "")

        def fwd(M=M, N=N, K=K, dt=dt):
            p = _t((M, (K + 7) // 8), torch.uint8)
            w = _t((N, K), dt)
            if dt is torch.int8:
                KS.spike_matmul_int(p, K, w, _t((N,), torch.int32))
            else:
                KS.spike_matmul_fwd(p, K, w, _t((N,), dt))

        out.append(Case(f"matmul_fwd/{dn}/{label}", "matmul", label, True, True, fwd, dn))
        if dt is not torch.int8:
            def dw(M=M, N=N, K=K, dt=dt):
                KS.spike_matmul_dw(_t((M, N), dt), _t((M, (K + 7) // 8), torch.uint8), K)
            out.append(Case(f"matmul_dw/{dn}/{label}", "matmul_dw", label, True, True, dw, dn))
    return out


def neuron_int_cases() -> List[Case]:
    from spiketriton.spec import IntNeuronSpec

    def run():
        KI.neuron_int_forward(_t((32, 64, 4096), torch.int32), None, None, None,
                              IntNeuronSpec(v_th0=100, alpha_q=230), write_spikes=False, write_bits=True)

    return [Case("neuron_int/int32/32x64x4096", "neuron_int", "32x64x4096", True, True, run, "int32")]


def event_cases() -> List[Case]:
    """The event-driven streaming matmul (one time step, a few rows) on packed and on float spikes."""
    from spiketriton.kernels import event_matmul as KE

    out = []
    shapes = [("1x4096x4096", 1, 4096, 4096), ("16x1024x1024", 16, 1024, 1024),
              ("4x4096x128", 4, 4096, 128)]  # K <= 128: one split, the kernel rounds and stores the output
    for (label, M, N, K), dt, packed in [(s, d, p) for s in shapes for d in (torch.float32, torch.bfloat16)
                                         for p in (True, False)]:
        dn = str(dt).replace("torch.", "")

        def run(M=M, N=N, K=K, dt=dt, packed=packed):
            s = _t((M, (K + 7) // 8), torch.uint8) if packed else _t((M, K), dt)
            KE.event_matmul(s, packed, _t((K, N), dt), _t((N,), dt), dt)

        out.append(Case(f"event_matmul/{dn}/{'packed' if packed else 'dense'}/{label}", "event", label, True, True,
                        run, dn))
    return out


def stdp_cases() -> List[Case]:
    """The STDP update (kernels/stdp.py): P and D, dW with soft bounds, and the in-place update with
    clipping, for a 4096 x 4096 synapse at batch 32 and an odd 1000 x 1000 one at batch 8."""
    from spiketriton.kernels import stdp as KSTDP

    out = []
    for label, T, B, N, K in [("T8xB32x4096x4096", 8, 32, 4096, 4096), ("T8xB8x1000x1000", 8, 8, 1000, 1000)]:
        for mode, name in [(KSTDP.OUT_PD, "pd"), (KSTDP.OUT_DW, "dw_soft"), (KSTDP.OUT_APPLY, "apply_hard")]:
            def run(T=T, B=B, N=N, K=K, mode=mode):
                KSTDP.stdp_products_triton(
                    _t((T, B, (K + 7) // 8), torch.uint8), _t((T, B, (N + 7) // 8), torch.uint8), K, N,
                    _t((B, K), torch.float32), _t((B, N), torch.float32), 20.0, 20.0, out=mode,
                    weight=_t((N, K), torch.float32), soft=mode == KSTDP.OUT_DW, hard=mode == KSTDP.OUT_APPLY)
            out.append(Case(f"stdp_{name}/float32/{label}", "stdp", label, K % 16 == 0, K % 8 == 0, run, "float32"))
    return out


def conv_cases() -> List[Case]:
    """The spike convolution (kernels/spike_conv.py): implicit-GEMM forward and dW on packed
    channels-last spikes, 3x3 padding 1, at a VGG layer 64 -> 128 channels, 32x32, T x B = 4 x 32
    images (fp32 / bf16 / fp16), and a late layer 256 -> 256 at 8x8 (fp32: split-K)."""
    from spiketriton.kernels import spike_conv as KC

    out = []
    for label, N, C, CO, HW, dts in [("N128x64x32x32-to128", 128, 64, 128, 32, (torch.float32, torch.bfloat16,
                                                                                 torch.float16)),
                                     ("N128x256x8x8-to256", 128, 256, 256, 8, (torch.float32,))]:
        for dt in dts:
            dn = str(dt).replace("torch.", "")

            def fwd(N=N, C=C, CO=CO, HW=HW, dt=dt):
                p = _t((N, HW, HW, C // 8), torch.uint8)
                KC.spike_conv2d_fwd(p, C, _t((CO, C, 3, 3), dt), _t((CO,), dt), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                                    weight_r=_t((CO, 9 * C), dt))

            def dw(N=N, C=C, CO=CO, HW=HW, dt=dt):
                g = _t((N, HW, HW, CO), dt).permute(0, 3, 1, 2)  # channels-last, as the neuron's backward gives it
                KC.spike_conv2d_dw(g, _t((N, HW, HW, C // 8), torch.uint8), C, (CO, C, 3, 3), (1, 1), (1, 1, 1, 1),
                                   (1, 1), 1)

            out.append(Case(f"conv_fwd/{dn}/{label}", "matmul", label, True, True, fwd, dn))
            out.append(Case(f"conv_dw/{dn}/{label}", "matmul_dw", label, True, True, dw, dn))
    return out


def pool_cases() -> List[Case]:
    """The OR pooling of packed images (kernels/spike_pool.py), 2x2 and 3x3/2 padded, at VGG shapes: 64
    channels (one int64 word per pixel), 256 (two 128-bit loads per pixel) and 24 (three bytes: uint8)."""
    from spiketriton.kernels import spike_pool as KSP

    out = []
    for label, N, C, HW in [("N128x64x32x32", 128, 64, 32), ("N128x256x16x16", 128, 256, 16), ("N128x24x32x32", 128, 24, 32)]:
        for name, k, s, p in [("2x2", (2, 2), (2, 2), (0, 0)), ("3x3s2p1", (3, 3), (2, 2), (1, 1))]:
            ho = (HW + 2 * p[0] - k[0]) // s[0] + 1

            def run(N=N, C=C, HW=HW, k=k, s=s, p=p, ho=ho):
                KSP.or_pool2d_triton(_t((N, HW, HW, (C + 7) // 8), torch.uint8), k, s, p, (1, 1), (ho, ho))

            out.append(Case(f"or_pool/{name}/{label}", "pool", label, C % 128 == 0, C % 8 == 0, run, "uint8"))
    return out


def all_cases() -> List[Case]:
    return (neuron_cases() + neuron_int_cases() + pack_cases() + matmul_cases() + event_cases() + stdp_cases()
            + conv_cases() + pool_cases())


# --------------------------------------------------------------------------------------------- #
# The report
# --------------------------------------------------------------------------------------------- #


def _tc_dtype(case: Case) -> str:
    return {"float32": "bf16", "bfloat16": "bf16", "float16": "fp16", "int8": "i8"}.get(case.dtype, "bf16")


def _estimate(case: Case, rec: dict, arch: int) -> Optional[dict]:
    """Issue-bound tensor-core estimate for a matmul kernel's hot loop (an estimate, see the module doc)."""
    loop = rec["hot_loop"]
    c = rec["constexprs"]
    if case.group not in ("matmul", "matmul_dw") or not loop:
        return None
    bm, bn, bk = c.get("BLOCK_M"), c.get("BLOCK_N"), c.get("BLOCK_K")
    if not (bm and bn and bk):
        return None
    parts = 3 if c.get("MODE") == 1 else 1  # fp32 weights: three bf16 products
    fma = bm * bn * bk * parts
    if not rec["tensor_core"]:
        return None
    tc_cycles = fma / TC_FMA_PER_CLK[arch][_tc_dtype(case)]
    issue_cycles = loop["instructions"] * rec["num_warps"] / ISSUE_PER_CLK
    spikes = bm * bk if case.group == "matmul" else bk * bm
    return dict(tc_cycles_per_iter=round(tc_cycles, 1), issue_cycles_per_iter=round(issue_cycles, 1),
                tc_utilisation_bound=round(min(1.0, tc_cycles / issue_cycles), 3),
                warp_instructions_per_spike=round(loop["instructions"] * rec["num_warps"] / spikes, 4))


def build(arch: int, cases: List[Case], sass_dir: Optional[Path]) -> List[dict]:
    records = []
    for case in cases:
        with capture(arch) as launches:
            case.run()
        for i, ln in enumerate(launches):
            if case.name.startswith(("lif_bwd", "elif_bwd")) and "bwd" not in ln.kernel:
                continue  # the forward that made the saved tensors is reported by its own case
            usage, sass = resource_usage(ln.compiled.asm["cubin"])
            meta = ln.compiled.metadata
            stats = analyse_sass(sass)
            key = case.name if len(launches) == 1 or case.name.startswith(("lif_bwd", "elif_bwd")) \
                else f"{case.name}#{i}"
            rec = dict(case=key, kernel=ln.kernel, arch=arch, group=case.group, dtype=case.dtype, shape=case.shape,
                       aligned=case.aligned, last_dim_mult8=case.last_dim_mult8,
                       grid=list(ln.grid), programs=math.prod(ln.grid) if ln.grid else None,
                       num_warps=meta.num_warps, num_stages=meta.num_stages, shared_bytes=meta.shared,
                       constexprs={k: v for k, v in ln.constexprs.items() if isinstance(v, (bool, int, float, str))},
                       specialized_16=_specialized(ln.compiled.asm["ttir"]), **usage, **stats)
            rec["estimate"] = _estimate(case, rec, arch)
            records.append(rec)
            if sass_dir is not None:
                path = sass_dir / f"sm_{arch}" / (key.replace("/", "__").replace("#", "_") + ".sass.gz")
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
                    gz.write(_strip_hex(sass).encode())
    return records


# Dense peaks (datasheet, TFLOP/s or TOPS) of the GPU a target stands for, only for the goal estimates
# below: H100 SXM / H200 (sm_90): fp32 CUDA cores 67, bf16/fp16 989, int8 1979; A100 (sm_80): 19.5, 312, 624.
PEAK = {90: {"fp32": 67.0, "bf16": 989.0, "i8": 1979.0}, 80: {"fp32": 19.5, "bf16": 312.0, "i8": 624.0}}
# issue 11's goals for the spike matmul at 4096^3: (case dtype, what it is compared with, ratio)
GOALS = [("float32", "fp32", 4.0), ("bfloat16", "bf16", 0.95), ("int8", "bf16", 1.5)]


def goal_estimates(records: List[dict]) -> List[dict]:
    """Upper bounds for the matmul goals from the compiled code: the kernel at its issue-bound tensor-core
    utilisation (three bf16 products for fp32 weights) against cuBLAS at 100 % of the datasheet peak of
    the dtype it is compared with. Latency, the wait for the tensor cores at the end of every k-step and
    memory are ignored, so a bound below the goal means the goal is out of reach, one above it says
    nothing more than "not excluded"."""
    out = []
    for r in records:
        if not r["case"].split("#")[0].endswith("/4096x4096x4096") or r["kernel"] not in ("_spike_matmul_fwd_kernel",
                                                                              "_spike_matmul_dw_kernel"):
            continue
        for dtype, ref, goal in GOALS:
            if r["dtype"] != dtype or not r["estimate"]:
                continue
            parts = 3 if dtype == "float32" else 1
            ours = r["estimate"]["tc_utilisation_bound"] * PEAK[r["arch"]]["i8" if dtype == "int8" else "bf16"] / parts
            out.append(dict(arch=r["arch"], case=r["case"], compared_with=f"cuBLAS {ref}",
                            ratio_upper_bound=round(ours / PEAK[r["arch"]][ref], 2), goal=goal))
    return out


def markdown(records: List[dict], header: dict) -> str:
    lines = [f"# Codegen report ({header['triton']}, {header['date']})", "",
             "Compiled without a GPU exactly as a launch at the stated shape would be (bench/codegen.py), "
             f"grids sized for {', '.join(f'{n} SMs on sm_{a}' for a, n in header['sms'].items())}. "
             "`tc/iter`: tensor-core instructions per hot-loop iteration; `ins/iter`: SASS instructions per "
             "iteration; `util≤` is an issue-bound *estimate* of tensor-core utilisation, not a measurement.", "",
             "| arch | case | kernel | grid | warps | stages | regs | stack | LDL/STL | smem | TC | ld bits | st bits "
             "| ins/iter | tc/iter | util≤ |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        loop = r["hot_loop"] or {}
        est = r["estimate"] or {}
        lines.append(
            f"| sm_{r['arch']} | {r['case']} | {r['kernel'].strip('_')} | {r['programs']} | {r['num_warps']} | "
            f"{r['num_stages']} | {r['registers']} | {r['stack_bytes']} | {r['ldl_stl']} | {r['shared_bytes']} | "
            f"{r['tensor_core']} | {r['widest_global_load_bits']} | {r['widest_global_store_bits']} | "
            f"{loop.get('instructions', '')} | {loop.get('tensor_core', '')} | {est.get('tc_utilisation_bound', '')} |")
    lines += ["", "## Matmul goals at 4096^3: upper bounds from the compiled code", "",
              "The kernel at its issue-bound tensor-core utilisation against cuBLAS at 100 % of the datasheet peak "
              "(`goal_estimates`): an upper bound that ignores latency and memory, not a prediction.", "",
              "| arch | case | compared with | ratio upper bound | goal |", "|---|---|---|---|---|"]
    for g in goal_estimates(records):
        lines.append(f"| sm_{g['arch']} | {g['case']} | {g['compared_with']} | {g['ratio_upper_bound']} | "
                     f">= {g['goal']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.codegen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="CUDA compute capabilities")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder (default %(default)s)")
    ap.add_argument("--only", default=None, help="only cases whose name contains this")
    ap.add_argument("--no-sass", action="store_true", help="do not write the SASS files")
    args = ap.parse_args(argv)
    cases = [c for c in all_cases() if args.only is None or args.only in c.name]
    if not cases:
        print(f"no case matches {args.only!r}", file=sys.stderr)
        return 2
    t0 = time.time()
    header = dict(triton=f"triton {triton.__version__}", torch=torch.__version__,
                  date=time.strftime("%Y-%m-%d"), archs=args.arch, sms={a: SMS.get(a, 132) for a in args.arch},
                  command="python -m bench.codegen " + " ".join(argv if argv is not None else sys.argv[1:]))
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for arch in args.arch:
        records += build(arch, cases, None if args.no_sass else args.out / "sass")
    header["seconds"] = round(time.time() - t0, 1)
    tmp = args.out / "codegen.json.tmp"
    tmp.write_text(json.dumps(dict(header=header, kernels=records, goal_estimates=goal_estimates(records)),
                              indent=1) + "\n")
    os.replace(tmp, args.out / "codegen.json")
    (args.out / "codegen.md").write_text(markdown(records, header))
    print(f"{len(records)} compiled kernels for sm_{', sm_'.join(map(str, args.arch))} in {header['seconds']} s "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
