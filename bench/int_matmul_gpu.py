"""Integer spike matmul (int8 weights x packed spikes -> exact int32) vs torch.matmul bf16 / fp32 and
torch._int_mm (int8 x int8 -> int32) at 4096^3 and smaller shapes, on a lent GPU.

Goal (issue 4): >= 1.5x torch.matmul bf16 at 4096^3. Reports ms and TOP/s-equivalent (2*M*N*K / time)
per implementation, firing rate and shape, and the spike operand's bytes; every result of the integer
kernel is checked exactly against torch._int_mm (or an int64 matmul where _int_mm does not take the shape).

    python bench/int_matmul_gpu.py                 # on a GPU; writes bench/results/<gpu>/int_matmul_gpu.{json,csv}
    TRITON_INTERPRET=1 python bench/int_matmul_gpu.py --smoke-cpu   # tiny shapes on the CPU, checks only

Timing: ``triton.testing.do_bench`` (median of CUDA-event times, L2 flushed before each repetition).
``torch.matmul fp32`` runs at ``set_float32_matmul_precision("highest")`` (no TF32).

Roofline (``roofline.py``): every row also carries ``bytes`` (read S packed / int8 / dense, read W, write Y
int32 / bf16 / fp32), ``flops`` (``2*M*N*K``), ``bound_ms`` = max(bytes / the copy bandwidth measured at the
start, flops / the GPU's int8, bf16 or fp32 peak) and ``roofline_fraction`` = bound_ms / median ms. Rows are
written after every shape x rate, so a time box keeps what was measured (``"partial": true`` until the end).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, bench_ms, copy_bandwidth, device_slug, header, save_result  # noqa: E402
import roofline  # noqa: E402

GOAL_SHAPE = "4096x4096x4096"
GOAL_VS_BF16 = 1.5
IMPLS = ("spike_matmul_int", "torch.matmul bf16", "torch.matmul fp32", "torch._int_mm")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096x4096,32x1024x1024,1024x4096x4096", help="MxKxN list")
    ap.add_argument("--rates", default="5,10,25,50", help="firing rates in %%")
    ap.add_argument("--warmup-ms", type=int, default=25, help="do_bench warm-up time per measurement")
    ap.add_argument("--rep-ms", type=int, default=100, help="do_bench repetition time per measurement")
    ap.add_argument("--smoke-cpu", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1), checks only")
    ap.add_argument("--copy-gib", type=float, default=1.0, help="copy-bandwidth buffer in GiB (roofline memory term)")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/<gpu-name-slug>)")
    args = ap.parse_args(argv)

    import torch

    if args.smoke_cpu:
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            print("--smoke-cpu needs TRITON_INTERPRET=1 set before the run", file=sys.stderr)
            return 1
        device, shapes = "cpu", [(33, 70, 17), (64, 128, 64)]
    else:
        if not torch.cuda.is_available():
            print("int_matmul_gpu.py: no CUDA device here; run it on a lent GPU (or --smoke-cpu with "
                  "TRITON_INTERPRET=1 to check it on the CPU)", file=sys.stderr)
            return 1
        device = "cuda"
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]

    from spiketriton.kernels import pack as PK
    from spiketriton.kernels import spike_matmul as SM

    def bench(fn):
        if device == "cpu":
            fn()
            return float("nan")
        return bench_ms(fn, args.warmup_ms, args.rep_ms, device)["median_ms"]

    result = header("int_matmul_gpu", "int_matmul_gpu.py", argv, device)
    gpu = result["device"]["name"] if device == "cuda" else None
    copy = copy_bandwidth(int(args.copy_gib * 2**30), device, 25, 100) if device == "cuda" else None
    out = Path(args.out) if args.out else RESULTS_DIR / device_slug(device)
    rows = []
    result.update(
        config={"shapes_MxKxN": [f"{M}x{K}x{N}" for M, K, N in shapes], "rates": args.rates,
                "weights": "int8 uniform in [-127, 127] (integer impls); N(0, 1) bf16 / its fp32 copy (float impls)",
                "spikes": "Bernoulli(rate) bool, packed 8 per byte for spike_matmul_int",
                "timer": f"triton.testing.do_bench(warmup={args.warmup_ms}, rep={args.rep_ms}), median",
                "flops": "2*M*N*K / time (TOP/s-equivalent)",
                "fp32_matmul_precision": "highest (no TF32)"},
        copy_bandwidth=copy, roofline=roofline.context(copy, gpu), cases=rows, partial=True)

    def goal_block():
        goal_rows = [r for r in rows if r["shape"] == GOAL_SHAPE and r["impl"] == "spike_matmul_int"]
        return {"vs_torch_bf16": GOAL_VS_BF16, "shape": GOAL_SHAPE,
                "per_rate": [{"rate": r["rate"], "x_torch_bf16": r["x_torch_bf16"],
                              "met": r["x_torch_bf16"] >= GOAL_VS_BF16} for r in goal_rows]}

    g = torch.Generator(device=device).manual_seed(0)
    old_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for M, K, N in shapes:
            w8 = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device, generator=g)
            wbf = torch.randn(N, K, dtype=torch.bfloat16, device=device, generator=g)
            w32 = wbf.float()
            w8t = w8.t().contiguous()
            for rate in (float(r) / 100 for r in args.rates.split(",")):
                s = (torch.rand(M, K, device=device, generator=g) < rate)
                packed = PK.pack(s)
                y = SM.spike_matmul_int(packed, K, w8, None)
                s8 = s.to(torch.int8)
                try:
                    want = torch._int_mm(s8, w8t)
                    int_mm = lambda: torch._int_mm(s8, w8t)  # noqa: E731
                except RuntimeError:
                    want = (s.long() @ w8.long().t()).to(torch.int32)
                    int_mm = None
                assert torch.equal(y, want), f"integer spike matmul differs at {M}x{K}x{N}, rate {rate}"
                sbf, s32 = s.to(torch.bfloat16), s.float()
                fns = {"spike_matmul_int": lambda: SM.spike_matmul_int(packed, K, w8, None),
                       "torch.matmul bf16": lambda: sbf @ wbf.t(),
                       "torch.matmul fp32": lambda: s32 @ w32.t(),
                       "torch._int_mm": int_mm}
                spike_bytes = {"spike_matmul_int": packed.numel(), "torch.matmul bf16": sbf.numel() * 2,
                               "torch.matmul fp32": s32.numel() * 4, "torch._int_mm": s8.numel()}
                ms = {impl: (bench(fn) if fn is not None else None) for impl, fn in fns.items()}
                flop = 2 * M * N * K
                for impl in IMPLS:
                    if ms[impl] is None:
                        continue
                    row = dict(shape=f"{M}x{K}x{N}", M=M, K=K, N=N, rate=rate, impl=impl, median_ms=ms[impl],
                               tflops_equiv=flop / ms[impl] / 1e9, spike_operand_bytes=spike_bytes[impl],
                               x_torch_bf16=ms["torch.matmul bf16"] / ms[impl],
                               exact=True if impl == "spike_matmul_int" else None)
                    if device == "cuda":
                        nb, terms = roofline.int_matmul_case(impl, M, K, N)
                        roofline.with_roofline(row, nb, terms, copy["gbps"], gpu)
                    rows.append(row)
                t_int = ms["torch._int_mm"] if ms["torch._int_mm"] is not None else float("nan")
                print(f"{M}x{K}x{N} rate {rate:.0%}: spike_int {ms['spike_matmul_int']:.3f} ms | "
                      f"bf16 {ms['torch.matmul bf16']:.3f} | fp32 {ms['torch.matmul fp32']:.3f} | _int_mm {t_int:.3f} "
                      f"| x bf16 {ms['torch.matmul bf16'] / ms['spike_matmul_int']:.2f} (goal >= {GOAL_VS_BF16} at "
                      f"{GOAL_SHAPE})", flush=True)
                if device == "cuda":  # after every shape x rate: a run cut short keeps what it measured
                    result.update(goals=goal_block())
                    save_result(out, "int_matmul_gpu", result, {"int_matmul_gpu": rows})
    finally:
        torch.set_float32_matmul_precision(old_precision)
    if device == "cpu":
        print(f"smoke check passed: {len(rows) // len(IMPLS) or len(shapes)} shapes x rates exact against the "
              "integer reference")
        return 0
    result.update(goals=goal_block(), partial=False)
    save_result(out, "int_matmul_gpu", result, {"int_matmul_gpu": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
