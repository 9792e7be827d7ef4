"""Integer spike matmul (int8 weights x packed spikes -> exact int32) vs torch.matmul bf16 and
torch._int_mm (int8 x int8 -> int32) at 4096^3 and smaller shapes, on a lent GPU.

Goal (issue 4): >= 1.5x torch.matmul bf16 at 4096^3. Reports ms, TOP/s-equivalent (2*M*N*K / time)
and the spike operand's bytes; every result is checked exactly against torch._int_mm (or an int64
matmul where _int_mm does not take the shape).

    python bench/int_matmul_gpu.py                 # on a GPU; writes bench/results/<gpu>/int_matmul_gpu.{json,csv}
    TRITON_INTERPRET=1 python bench/int_matmul_gpu.py --smoke-cpu   # tiny shapes on the CPU, checks only
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096x4096,32x1024x1024,1024x4096x4096", help="MxKxN list")
    ap.add_argument("--rates", default="5,10,25,50", help="firing rates in %%")
    ap.add_argument("--smoke-cpu", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1), checks only")
    ap.add_argument("--out", default=None)
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

    import triton

    from spiketriton.kernels import pack as PK
    from spiketriton.kernels import spike_matmul as SM

    def bench(fn):
        if device == "cpu":
            fn()
            return float("nan")
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    for M, K, N in shapes:
        w8 = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device, generator=g)
        wbf = torch.randn(N, K, dtype=torch.bfloat16, device=device, generator=g)
        for rate in (float(r) / 100 for r in args.rates.split(",")):
            s = (torch.rand(M, K, device=device, generator=g) < rate)
            packed = PK.pack(s)
            y = SM.spike_matmul_int(packed, K, w8, None)
            try:
                want = torch._int_mm(s.to(torch.int8), w8.t().contiguous())
                int_mm = lambda: torch._int_mm(s8, w8t)  # noqa: E731
                s8, w8t = s.to(torch.int8), w8.t().contiguous()
            except RuntimeError:
                want = (s.long() @ w8.long().t()).to(torch.int32)
                int_mm = None
            assert torch.equal(y, want), f"integer spike matmul differs at {M}x{K}x{N}, rate {rate}"
            sbf = s.to(torch.bfloat16)
            t_ours = bench(lambda: SM.spike_matmul_int(packed, K, w8, None))
            t_bf16 = bench(lambda: sbf @ wbf.t())
            t_int = bench(int_mm) if int_mm is not None else float("nan")
            flop = 2 * M * N * K
            rows.append(dict(M=M, K=K, N=N, rate=rate, ms_spike_int=t_ours, ms_bf16=t_bf16, ms_int_mm=t_int,
                             tops_spike_int=flop / t_ours / 1e9, speedup_vs_bf16=t_bf16 / t_ours,
                             speedup_vs_int_mm=t_int / t_ours, spike_bytes_packed=packed.numel(),
                             spike_bytes_bf16=sbf.numel() * 2))
            print(f"{M}x{K}x{N} rate {rate:.0%}: spike_int {t_ours:.3f} ms | bf16 {t_bf16:.3f} | _int_mm {t_int:.3f} "
                  f"| x bf16 {t_bf16 / t_ours:.2f} (goal >= 1.5 at 4096^3)")
    if device == "cpu":
        print(f"smoke check passed: {len(rows)} cases exact against the integer reference")
        return 0
    gpu = torch.cuda.get_device_name(0)
    out = Path(args.out) if args.out else BENCH_DIR / "results" / re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(gpu=gpu, torch=torch.__version__, triton=triton.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    (out / "int_matmul_gpu.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    with open(out / "int_matmul_gpu.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}/int_matmul_gpu.json and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
