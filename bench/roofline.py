"""Roofline of every GPU benchmark case: the bytes it must move, the flops it must do, the time the measured
copy bandwidth or the GPU's peak allows for them, and the fraction of that bound a measurement reached.

    bound_ms          = max(bytes / copy bandwidth, sum over the case's products of flops / peak of their unit)
    roofline_fraction = bound_ms / measured median ms       (1.0: at the roofline; 0.25: four times slower)

- **bytes**: the fewest bytes the case must move through device memory, each input read once and each output
  written once (METHOD.md's "two numbers"); the per-case definitions are in the functions below and in
  bench/README.md ("Roofline"). Intermediates that a fused kernel keeps on chip are not counted; what the
  algorithm must store between passes (the neuron's H and packed spikes between forward and backward) is.
- **flops**: the dense-equivalent count (``2*M*N*K`` per matrix product, whatever the kernel executes), and
  ``tc_flops``, what the tensor cores are issued: for spike_matmul with fp32 weights three exact bf16 products
  (W split into hi + mid + lo bf16 parts; 0/1 spikes times a bf16 part is exact), so 3x the equivalent count at
  the bf16 rate. The neurons' arithmetic is an estimate (the model equations per neuron-step, an exp counted
  as one flop): it is at most a few percent of their memory time.
- **copy bandwidth**: measured on the machine (``_common.copy_bandwidth``: ``dst.copy_(src)``, bytes read +
  written over the median time), never a datasheet number.
- **peak**: per GPU and unit, dense (no 2:4 sparsity), from NVIDIA's datasheets at boost clock (below).
  On a GPU not in the table the bound is the bandwidth term alone and ``bound_note`` says so; such a fraction
  is an upper bound of how close the case is to its roofline only where the case is memory-bound.

``python bench/roofline.py [--out DIR]`` measures the ceilings themselves on a CUDA GPU (copy bandwidth, and
the rate cuBLAS reaches at large bf16 / fp16 / fp32 / TF32 / int8 products) into ``ceilings.json``: the peaks
above are leads, these are what the machine gives (KINDS.md saw ~4.3 TB/s and ~790 TFLOP/s bf16 on an H200).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

# --------------------------------------------------------------------------------------------- #
# Peaks (dense TFLOP/s, int8 in TOP/s)
# --------------------------------------------------------------------------------------------- #

#: Sources (dense = the datasheets' sparse figures halved; boost clock):
#: - H100 SXM5 and H200 SXM (the same GH100 compute at the same clocks; the H200 differs in memory only):
#:   NVIDIA H100 Tensor Core GPU datasheet and H200 datasheet: FP32 67, TF32 tensor 989 sparse -> 494.5,
#:   BF16 / FP16 tensor 1979 sparse -> 989.5, INT8 tensor 3958 sparse -> 1979.
#: - H100 PCIe: the same H100 datasheet, PCIe column: FP32 51, TF32 756 sparse -> 378, BF16 / FP16 1513 -> 756.5,
#:   INT8 3026 -> 1513.
#: - A100 (SXM4 and PCIe, 40 / 80 GB: the same peaks): NVIDIA A100 datasheet: FP32 19.5, TF32 156, BF16 / FP16
#:   312, INT8 624.
#: Assumption: torch.cuda.get_device_name() names the part as below ("NVIDIA H200", "NVIDIA H100 80GB HBM3",
#: "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB"); NVL parts (other clocks and power) and anything else are not
#: in the table: their bound is the bandwidth term alone.
PEAKS_TFLOPS: Dict[str, Dict[str, float]] = {
    "H200/H100 SXM": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5, "int8": 1979.0},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5, "int8": 1513.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0, "int8": 624.0},
}

#: compute kinds a case can name: a unit of the table, or "bf16x3" (three bf16 products per equivalent product:
#: spike_matmul with fp32 weights, computed exactly on the bf16 tensor cores)
KIND_UNIT = {"fp32": ("fp32", 1), "tf32": ("tf32", 1), "bf16": ("bf16", 1), "fp16": ("fp16", 1),
             "int8": ("int8", 1), "bf16x3": ("bf16", 3)}

UNKNOWN_GPU = "GPU not in the peak table (bench/roofline.py): bound from the measured copy bandwidth alone"


def gpu_class(name: Optional[str]) -> Optional[str]:
    """The row of :data:`PEAKS_TFLOPS` for a device name, or None (unknown: bandwidth-only bound)."""
    n = (name or "").upper().replace("-", " ")
    if "NVL" in n:
        return None
    if "H200" in n and "GH200" not in n:
        return "H200/H100 SXM"
    if "H100" in n:
        if "PCIE" in n:
            return "H100 PCIe"
        if "SXM" in n or "HBM3" in n:
            return "H200/H100 SXM"
        return None
    if "A100" in n:
        return "A100"
    return None


def peaks_for(name: Optional[str]) -> Optional[Dict[str, float]]:
    c = gpu_class(name)
    return dict(PEAKS_TFLOPS[c]) if c else None


# --------------------------------------------------------------------------------------------- #
# The bound
# --------------------------------------------------------------------------------------------- #

Terms = Sequence[Tuple[float, str]]  # (equivalent flops, compute kind) of each product / elementwise part


def roofline(nbytes: float, terms: Terms, copy_gbps: Optional[float], gpu: Optional[str],
             measured_ms: Optional[float] = None) -> Dict[str, object]:
    """The roofline columns of one case.

    ``nbytes``: the minimum bytes; ``terms``: ``(flops, kind)`` for each part of the work, ``kind`` a key of
    :data:`KIND_UNIT`; ``copy_gbps``: the measured copy bandwidth in GB/s; ``gpu``: the device name (picks the
    peaks); ``measured_ms``: the median time, for ``roofline_fraction``.

    Returns ``bytes``, ``flops`` (equivalent), ``tc_flops`` (issued: 3x for bf16x3), ``compute`` (the kinds),
    ``memory_bound_ms``, ``compute_bound_ms`` (None on an unknown GPU), ``bound_ms``, ``bound_by``
    (memory / compute), ``roofline_fraction`` (bound / measured) and ``bound_note`` when the peak is unknown.
    """
    flops = float(sum(f for f, _ in terms))
    issued = float(sum(f * KIND_UNIT[k][1] for f, k in terms))
    peaks = peaks_for(gpu)
    mem_ms = nbytes / (copy_gbps * 1e9) * 1e3 if copy_gbps else None
    comp_ms = None
    if peaks is not None:
        comp_ms = sum(f * KIND_UNIT[k][1] / (peaks[KIND_UNIT[k][0]] * 1e12) for f, k in terms) * 1e3
    parts = [v for v in (mem_ms, comp_ms) if v is not None]
    bound = max(parts) if parts else None
    out: Dict[str, object] = {
        "bytes": int(nbytes), "flops": flops, "tc_flops": issued,
        "compute": "+".join(dict.fromkeys(k for _, k in terms)) or None,
        "memory_bound_ms": mem_ms, "compute_bound_ms": comp_ms, "bound_ms": bound,
        "bound_by": (None if bound is None else "compute" if comp_ms is not None and comp_ms >= (mem_ms or 0)
                     else "memory"),
        "roofline_fraction": (bound / measured_ms) if (bound is not None and measured_ms) else None,
    }
    if peaks is None:
        out["bound_note"] = UNKNOWN_GPU
    return out


def with_roofline(row: Dict[str, object], nbytes: float, terms: Terms, copy_gbps, gpu) -> Dict[str, object]:
    """``row`` (with ``median_ms``) updated in place with the roofline columns; returned."""
    row.update(roofline(nbytes, terms, copy_gbps, gpu, row.get("median_ms")))
    return row


def context(copy: Optional[dict], gpu: Optional[str]) -> Dict[str, object]:
    """What a result JSON records about its roofline: the copy bandwidth, the peaks used and where they are from."""
    c = gpu_class(gpu)
    return {"copy_gbps": (copy or {}).get("gbps"), "gpu_class": c, "peaks_tflops": peaks_for(gpu),
            "peaks_source": "NVIDIA datasheets, dense, boost clock (bench/roofline.py)" if c else UNKNOWN_GPU,
            "definition": "bound_ms = max(bytes / copy bandwidth, sum of flops / peak per unit); "
                          "roofline_fraction = bound_ms / median_ms; bytes: each input read once, each output "
                          "written once; flops: 2*M*N*K per product (tc_flops: what the tensor cores are issued)"}


# --------------------------------------------------------------------------------------------- #
# Per-case bytes and flops
# --------------------------------------------------------------------------------------------- #

ELEM = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int32": 4, "uint8": 1}

#: flops per neuron-step of the model equations (an exp counted as one): forward h = v + (x - (v - v_reset)) / tau,
#: s = h >= v_th, v = s ? v_reset : h (IF: no decay); backward the sigmoid surrogate, d h, d x, d v (PLIF: + the
#: d tau product and its sum). An estimate: at most a few percent of the neurons' memory time on any GPU.
NEURON_FLOPS = {"lif": {"fwd": 6, "bwd": 15}, "if": {"fwd": 4, "bwd": 12}, "plif": {"fwd": 6, "bwd": 18}}


def neuron_flops(neuron: str, pass_: str, n_steps: int) -> int:
    f = NEURON_FLOPS[neuron]
    per = {"infer": f["fwd"], "fwd": f["fwd"], "bwd": f["bwd"], "fwd+bwd": f["fwd"] + f["bwd"]}[pass_]
    return per * int(n_steps)


def neuron_case(neuron: str, pass_: str, shape: Sequence[int], nbytes: int) -> Tuple[int, Terms]:
    """(bytes, terms) of a neuron case: ``nbytes`` from ``_neuron_cases.kernel_bytes`` (x, spikes, H, the packed
    bits, v_last, grad_spikes, grad_x; see there), the elementwise flops at the fp32 (CUDA-core) rate."""
    return nbytes, [(neuron_flops(neuron, pass_, math.prod(int(s) for s in shape)), "fp32")]


def packed_bytes(M: int, K: int) -> int:
    return M * ((K + 7) // 8)


def matmul_case(pass_: str, impl: str, dtype: str, M: int, K: int, N: int) -> Tuple[int, Terms]:
    """(bytes, terms) of a spike_matmul_gpu.py case (``Y = S @ W.T``, S [M, K] 0/1, W [N, K] of ``dtype``).

    - ``fwd``: read S (packed ``M*ceil(K/8)`` for spiketriton on a SpikeTensor, dense ``M*K*e`` for torch and for
      ``spike_matmul(dense)``, which must read the dense tensor), read W ``N*K*e``, write Y ``M*N*e``;
    - ``dw``: read dY ``M*N*e`` and S (packed / dense as above), write dW ``N*K*e``;
    - ``fwd+bwd`` (nn.Linear / SpikeLinear on dense S that requires grad): read S, W, b, dY; write Y, dS, dW, db,
      all dense (the input and dS are dense for both).

    Compute: torch in fp32 at "highest" precision on the CUDA cores (``fp32``), ``torch.matmul[tf32]`` on the TF32
    tensor cores, half dtypes on theirs; spiketriton's spike products with fp32 weights as three bf16 products
    (``bf16x3``), with half weights at that dtype's rate; SpikeLinear's dS = dY @ W is a dense product (torch, in
    the dtype's own mode).
    """
    e = ELEM[dtype]
    eq = 2 * M * N * K
    spike = impl.startswith("spike_matmul") or impl.startswith("SpikeLinear")
    dense_s = M * K * e
    s_bytes = packed_bytes(M, K) if (spike and impl not in ("spike_matmul(dense)",)) else dense_s
    dense_kind = "tf32" if "tf32" in impl else ("fp32" if dtype == "fp32" else dtype)
    spike_kind = "bf16x3" if dtype == "fp32" else dtype
    kind = spike_kind if spike else dense_kind
    if pass_ == "fwd":
        return s_bytes + N * K * e + M * N * e, [(eq, kind)]
    if pass_ == "dw":
        return M * N * e + s_bytes + N * K * e, [(eq, kind)]
    if pass_ == "fwd+bwd":
        nbytes = dense_s + N * K * e + N * e + M * N * e + M * N * e + dense_s + N * K * e + N * e
        if spike:
            return nbytes, [(eq, spike_kind), (eq, dense_kind), (eq, spike_kind)]
        return nbytes, [(eq, dense_kind)] * 3
    raise ValueError(f"unknown pass {pass_!r}")


def int_matmul_case(impl: str, M: int, K: int, N: int) -> Tuple[int, Terms]:
    """(bytes, terms) of an int_matmul_gpu.py case: read S (packed for spike_matmul_int, int8 for torch._int_mm,
    bf16 / fp32 dense for torch.matmul), read W (int8 / bf16 / fp32), write Y (int32 / bf16 / fp32)."""
    eq = 2 * M * N * K
    if impl == "spike_matmul_int":
        return packed_bytes(M, K) + N * K + M * N * 4, [(eq, "int8")]
    if impl == "torch._int_mm":
        return M * K + N * K + M * N * 4, [(eq, "int8")]
    dt = "bf16" if "bf16" in impl else "fp32"
    e = ELEM[dt]
    return M * K * e + N * K * e + M * N * e, [(eq, dt)]


def open_neuromorphic_case(library: str, T: int, B: int, n: int, dtype: str, lif_bytes: int) -> Tuple[int, Terms]:
    """(bytes, terms) of one Open Neuromorphic training step, ``x [T, B, n]`` -> Linear(n, n) -> LIF, R = T*B rows.

    The three products (y = x W^T, gx = gy W, gW = gy^T x), each reading its operands once and writing its output
    once: ``6*R*n*e + 3*n*n*e`` bytes, ``3 * 2*R*n*n`` flops at the dtype's tensor-core rate (fp32: CUDA cores);
    every library row adds the LIF's fused-kernel bytes (``lif_bytes`` = ``kernel_bytes([T, B, n], fwd+bwd)``: it
    reads y and grad_spikes, writes the spikes, H, the bits and gy) and its flops; ``torch (3 GEMMs)`` is the
    products alone; ``torch (Linear only)`` the products plus the bias and its gradient.
    """
    e = ELEM[dtype]
    R = T * B
    gemm_kind = "fp32" if dtype == "fp32" else dtype
    gemm_bytes = 6 * R * n * e + 3 * n * n * e
    terms: List[Tuple[float, str]] = [(3 * 2 * R * n * n, gemm_kind)]
    if library == "torch (3 GEMMs)":
        return gemm_bytes, terms
    if library == "torch (Linear only)":
        return gemm_bytes + 2 * n * e, terms
    return gemm_bytes + 2 * n * e + lif_bytes, terms + [(neuron_flops("lif", "fwd+bwd", R * n), "fp32")]


# --------------------------------------------------------------------------------------------- #
# Formatting (report tables)
# --------------------------------------------------------------------------------------------- #


def fmt_bytes(b) -> str:
    if b is None:
        return "-"
    for unit, s in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= s:
            return f"{b / s:.3g} {unit}"
    return f"{int(b)} B"


def fmt_flops(f) -> str:
    if not f:
        return "-"
    for unit, s in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if f >= s:
            return f"{f / s:.3g} {unit}"
    return f"{f:.3g} FLOP"


def fmt_fraction(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


# --------------------------------------------------------------------------------------------- #
# Measured ceilings (CLI)
# --------------------------------------------------------------------------------------------- #


def measure_ceilings(device="cuda", copy_gib: float = 2.0, rep_ms: int = 100,
                     products: Iterable[Tuple[str, int]] = (("bf16", 8192), ("fp16", 8192), ("int8", 8192),
                                                             ("tf32", 8192), ("fp32", 4096))) -> Dict[str, object]:
    """Copy bandwidth and the rate cuBLAS reaches on a large product per unit (random data, not zeros:
    METHOD.md), each do_bench's median."""
    import torch

    from _common import bench_ms, copy_bandwidth, short_error

    out: Dict[str, object] = {"copy_bandwidth": copy_bandwidth(int(copy_gib * 2**30), device, 25, rep_ms)}
    rates = {}
    old = torch.get_float32_matmul_precision()
    try:
        for kind, n in products:
            try:
                g = torch.Generator(device=device).manual_seed(0)
                if kind == "int8":
                    a = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=device, generator=g)
                    b = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=device, generator=g)  # as int_matmul_gpu
                    fn = lambda a=a, b=b: torch._int_mm(a, b)  # noqa: E731
                else:
                    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(kind, torch.float32)
                    torch.set_float32_matmul_precision("high" if kind == "tf32" else "highest")
                    a = torch.randn(n, n, device=device, generator=g).to(dt)
                    b = torch.randn(n, n, device=device, generator=g).to(dt)
                    fn = lambda a=a, b=b: a @ b  # noqa: E731
                t = bench_ms(fn, 25, rep_ms, device)
                rates[kind] = {"n": n, **t, "tflops": 2 * n**3 / (t["median_ms"] * 1e-3) / 1e12,
                               "how": f"torch {'_int_mm' if kind == 'int8' else 'matmul'} {n}^3, random data"}
                del a, b
            except Exception as e:  # noqa: BLE001 - a unit missing must not lose the others
                rates[kind] = {"error": short_error(e)}
    finally:
        torch.set_float32_matmul_precision(old)
    out["cublas_rates"] = rates
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="measure the ceilings (copy bandwidth, cuBLAS rates) into ceilings.json")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/<gpu-name-slug>)")
    ap.add_argument("--copy-gib", type=float, default=2.0)
    ap.add_argument("--rep-ms", type=int, default=100)
    args = ap.parse_args(argv)
    import torch

    from _common import RESULTS_DIR, device_slug, header, write_json

    if not torch.cuda.is_available():
        print("roofline.py: no CUDA device here; the ceilings are measured on a GPU", file=sys.stderr)
        return 1
    dev = torch.device("cuda")
    out = Path(args.out) if args.out else RESULTS_DIR / device_slug(dev)
    out.mkdir(parents=True, exist_ok=True)
    result = header("ceilings", "roofline.py", argv, dev)
    gpu = result["device"]["name"]
    result.update(roofline=context(None, gpu), partial=True)
    write_json(out / "ceilings.json", result)
    result.update(measure_ceilings(dev, args.copy_gib, args.rep_ms), partial=False)
    result["roofline"]["copy_gbps"] = result["copy_bandwidth"]["gbps"]
    write_json(out / "ceilings.json", result)
    peaks = peaks_for(gpu) or {}
    print(f"{gpu}: copy {result['copy_bandwidth']['gbps']:.0f} GB/s")
    for k, v in result["cublas_rates"].items():
        if "tflops" in v:
            pk = peaks.get(k)
            print(f"  {k:5} {v['n']}^3: {v['tflops']:.0f} TFLOP/s" + (f" ({100 * v['tflops'] / pk:.0f}% of the "
                                                                      f"{pk:g} datasheet peak)" if pk else ""))
        else:
            print(f"  {k:5}: {v['error']}")
    print(f"wrote {out / 'ceilings.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
