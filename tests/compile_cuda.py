"""Compile every Triton kernel ahead of time for a CUDA target (no GPU needed: Triton ships LLVM and
ptxas), over representative constexpr combinations. The interpreter is lenient about types (loop-
carried values, branches on constexprs); the real compiler is not, so CPU-only CI still catches
kernels that would fail to build on a GPU.

Run as a script with TRITON_INTERPRET unset (tests/test_compile_cuda.py does that in a subprocess):
    python tests/compile_cuda.py [--arch 90]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("compile_cuda.py needs TRITON_INTERPRET unset: the interpreter replaces the compiled kernels")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from spiketriton.kernels import neuron as KN  # noqa: E402
from spiketriton.kernels import neuron_int as KI  # noqa: E402
from spiketriton.kernels import pack as KP  # noqa: E402
from spiketriton.kernels import spike_matmul as KS  # noqa: E402


def compile_kernel(kernel, types: dict, constexprs: dict, target, num_warps=4, num_stages=3):
    """``types``: argument name -> Triton type string for the runtime arguments; every name in
    ``constexprs`` is a constexpr. Arguments are checked to cover the kernel's signature."""
    names = kernel.arg_names
    missing = [n for n in names if n not in types and n not in constexprs]
    if missing:
        raise KeyError(f"{kernel.fn.__name__}: no type for {missing}")
    signature = {n: ("constexpr" if n in constexprs else types[n]) for n in names}
    src = ASTSource(fn=kernel, signature=signature, constexprs={n: constexprs[n] for n in names if n in constexprs})
    return triton.compile(src, target=target, options=dict(num_warps=num_warps, num_stages=num_stages))


def neuron_cases():
    ptrs = {"x_ptr", "v0_ptr", "a0_ptr", "ref0_ptr", "p_ptr", "s_ptr", "h_ptr", "bits_ptr", "vth_ptr", "gate_ptr",
            "floor_ptr", "vT_ptr", "aT_ptr", "refT_ptr", "gs_ptr", "gvT_ptr", "gaT_ptr", "gx_ptr", "gv0_ptr",
            "ga0_ptr", "gp_ptr"}
    for dt, family, mode, feats in itertools.product(["fp32", "bf16"], [0, 1], [0, 1, 2], [False, True]):
        if family == 0 and mode == 2:
            continue
        types = {p: "*fp32" for p in ptrs}
        types.update({"x_ptr": f"*{dt}", "s_ptr": f"*{dt}", "h_ptr": f"*{dt}", "gs_ptr": f"*{dt}", "gx_ptr": f"*{dt}",
                      "bits_ptr": "*u8", "gate_ptr": "*u8", "floor_ptr": "*u8", "ref0_ptr": "*i32", "refT_ptr": "*i32"})
        types.update({n: "i32" for n in ("T", "R", "L_div", "LB", "ref_len")})
        types.update({n: "fp32" for n in ("v_th", "v_reset", "v_init", "v_l", "dv", "th_alpha", "th_beta", "th_incre",
                                          "sg_alpha")})
        b = family == 1 and feats
        # the layout the launcher picks: row tiles for L = 1000 with packed bits, flat for L % 8 == 0
        L = 1001 if feats else 4096
        args, _ = KN._launch_shape(64, L, torch.device("cpu"), torch.float32 if dt == "fp32" else torch.bfloat16)
        common = dict(FAMILY=family, DECAY_INPUT=feats, RESET_MODE=mode, ADAPTIVE=b, REFRACTORY=b, HAS_FLOOR=b,
                      HAS_V0=feats, **{k: args[k] for k in ("L_MULT", "E", "BLOCK_R", "BLOCK_L")})
        yield KN._neuron_fwd_kernel, types, dict(common, HAS_A0=b, HAS_REF0=b, STORE=True, WRITE_SPIKES=not feats,
                                                  WRITE_BITS=True)
        for sg in range(8) if (family == 0 and mode == 0 and dt == "fp32") else [family * 7]:
            yield KN._neuron_bwd_kernel, types, dict(common, DETACH_RESET=not feats, SG_ID=sg, HAS_GVT=True,
                                                      GRAD_V0=True, LEARN=True, HAS_GAT=b, GRAD_A0=b)


def other_cases():
    for dt, K in itertools.product(("fp32", "bf16", "u8"), (1001, 4096)):
        tdt = {"fp32": torch.float32, "bf16": torch.bfloat16, "u8": torch.uint8}[dt]
        args, _ = KP._launch_shape(64, K, tdt, torch.device("cpu"))
        cx = {k: args[k] for k in ("K_MULT", "E", "BLOCK_M", "BLOCK_K")}
        yield KP._pack_kernel, {"s_ptr": f"*{dt}", "p_ptr": "*u8", "M": "i32", "K_div": "i32", "KB": "i32"}, cx
        if dt != "u8":
            yield KP._unpack_kernel, {"p_ptr": "*u8", "s_ptr": f"*{dt}", "M": "i32", "K_div": "i32", "KB": "i32"}, cx
    mm = {n: "i32" for n in ("M", "N", "K", "KB", "stride_pm", "stride_wn", "stride_wk", "stride_ym", "stride_gm",
                             "stride_dwn", "K_PER_SPLIT", "M_PER_SPLIT", "N_FLAGS")}
    for dt, split, bias in itertools.product(["fp32", "fp16", "bf16", "i8"], [1, 4], [False, True]):
        out = "i32" if dt == "i8" else dt
        torch_dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "i8": torch.int8}[dt]
        mode = KS._mode(torch_dt)
        types = dict(mm, p_ptr="*u8", w_ptr=f"*{dt}", b_ptr=f"*{out}", y_ptr="*fp32" if split > 1 else f"*{out}",
                     flag_ptr="*i8")
        cfg = {k: v for k, v in KS.fwd_config(64, 1024, 1024, torch_dt).items() if k not in ("num_warps", "num_stages")}
        cfg["SPLIT"] = split
        yield KS._spike_matmul_fwd_kernel, types, dict(cfg, MODE=mode, ONE_BITS=KS._one_bits(torch_dt, False),
                                                        HAS_BIAS=bias, INTERP=False, DIV=8, P_DIV=4)
    for dt in ("fp32", "fp16", "bf16"):
        torch_dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dt]
        types = dict(mm, g_ptr=f"*{dt}", p_ptr="*u8", dw_ptr=f"*{dt}", flag_ptr="*i8")
        cfg = {k: v for k, v in KS.dw_config(1024, 1024, 1024, torch_dt).items() if k not in ("num_warps", "num_stages")}
        yield KS._spike_matmul_dw_kernel, types, dict(cfg, MODE=KS._mode(torch_dt), ONE_BITS=KS._one_bits(torch_dt, False),
                                                       INTERP=False, DIV=16, P_DIV=16)
    fb = {k: v for k, v in KS._FALLBACK.items() if k not in ("num_warps", "num_stages")}
    types = dict(mm, p_ptr="*u8", w_ptr="*fp32", b_ptr="*fp32", y_ptr="*fp32", flag_ptr="*i8", g_ptr="*fp32",
                 dw_ptr="*fp32")
    yield KS._fallback_fwd_kernel, types, dict(fb, HAS_BIAS=True, SPLIT=4, INTERP=False, DIV=1, P_DIV=1, MAIN_BLOCK_N=128)
    yield KS._fallback_dw_kernel, types, dict(fb, INTERP=False, DIV=1, P_DIV=1, SPLIT=4, MAIN_BLOCK_N=128)
    ints = {n: "i32" for n in ("T", "R", "L_div", "LB", "v_th0", "v_reset", "v_l", "dv", "alpha_q", "beta_q", "ref_len",
                               "th_alpha_q", "th_beta_q", "th_incre", "v_init")}
    int_layout = {}
    for feats, L in ((False, 4096), (True, 1001)):
        args, _ = KN._launch_shape(64, L, torch.device("cpu"), torch.int32)
        int_layout[feats] = {k: args[k] for k in ("L_MULT", "E", "BLOCK_R", "BLOCK_L")}
    for mode, feats in itertools.product([0, 1, 2], [False, True]):
        types = dict(ints, u_ptr="*i32", v0_ptr="*i32", a0_ptr="*i32", ref0_ptr="*i32", s_ptr="*u8", bits_ptr="*u8",
                     vT_ptr="*i32", aT_ptr="*i32", refT_ptr="*i32")
        yield KI._neuron_int_kernel, types, dict(RESET_MODE=mode, ADAPTIVE=feats, REFRACTORY=feats, HAS_V0=feats,
                                                 HAS_A0=feats, HAS_REF0=feats, WRITE_SPIKES=True, WRITE_BITS=True,
                                                 **int_layout[feats])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80 or 90")
    args = ap.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    n, t0 = 0, time.time()
    for kernel, types, constexprs in itertools.chain(neuron_cases(), other_cases()):
        try:
            compile_kernel(kernel, types, constexprs, target)
        except Exception as e:
            print(f"FAILED {kernel.fn.__name__} {constexprs}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        n += 1
    print(f"compiled {n} kernel variants for sm_{args.arch} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
