"""The fused CPU neuron: the whole multi-step neuron as one compiled C call (``csrc/neuron_cpu.c``).

The PyTorch path (``kernels/neuron_torch.py``) runs the neuron as about 8 (family A) to 15 (family B)
elementwise torch ops per time step. On small tensors each op costs a dispatch (1.5-2 us on the 2-core
CI machine) and on large ones a pass over memory. This module runs the same algorithm, op for op in the
same floating type, in one C function: one call per forward (any T, so one call per step in
``step_mode="s"``) and one per backward, reading the input once.

It is built on first use with the system C compiler (``$CC``, else Python's configured compiler, else
``cc``; 6-10 s on the 2-core CI machine), cached under ``$SPIKETRITON_CACHE_DIR`` (default
``$XDG_CACHE_HOME/spiketriton`` or ``~/.cache/spiketriton``) by a hash of its source and flags, and loaded
with ctypes. The PyTorch path uses it for float32 and float64 tensors on the CPU; fp16/bf16 keep the torch
ops. Without a compiler, or with ``SPIKETRITON_CPU_KERNEL=0``, the torch ops run instead, with the
same results: :func:`status` says which and why.

Results equal the torch ops bit for bit in the forward (spikes, H, states, saved bits), since each
operation rounds once (``-ffp-contract=off``, no fast-math) in the torch op order; backward values agree
to rounding (the surrogates' ``exp`` is libm's on small steps, and the parameter gradients are summed in
float64). A cached library that another user could have written is never loaded (see ``_unsafe``).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import Optional, Tuple

import torch

from .._files import read_regular, write_atomic
from ..spec import FAMILY_A, NeuronSpec

_SRC_DIR = Path(__file__).with_name("csrc")
_SOURCES = ("neuron_cpu.c", "neuron_cpu_body.h")
# gcc 12 vectorizes nothing at plain -O2 (the fused forward then took 2x the torch ops' time); -O3 does,
# but compiled 2-3x longer than -O2 -ftree-vectorize with the dynamic cost model (which allows the alias
# checks these loops need). -fno-trapping-math changes no result (it lets compare-and-select code be
# vectorized). No -march=native: a cache shared between machines never holds code a CPU cannot run.
_FLAGS = ("-O2", "-ftree-vectorize", "-fvect-cost-model=dynamic", "-std=c99", "-shared", "-fPIC",
          "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math")
_ABI = 1
_MAX_LIB_BYTES = 64 << 20  # the library is ~170 KB; a cache file larger than this is not read
_ENV_OFF = "SPIKETRITON_CPU_KERNEL"
_DTYPES = (torch.float32, torch.float64)

_lock = threading.Lock()
_state = {"lib": None, "tried": False, "why": "not built yet (built on the first CPU neuron call)", "off": 0}


def _compiler() -> Optional[str]:
    configured = (sysconfig.get_config_var("CC") or "").split(" ")[0] or None
    for cand in (os.environ.get("CC"), configured, "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return cand
    return None


def cache_dir() -> Path:
    """Where the compiled library is kept: ``$SPIKETRITON_CACHE_DIR``, else ``$XDG_CACHE_HOME/spiketriton``,
    else ``~/.cache/spiketriton``."""
    if os.environ.get("SPIKETRITON_CACHE_DIR"):
        return Path(os.environ["SPIKETRITON_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spiketriton"


def library_path(cc: str) -> Path:
    """The cache file for this source, compiler and flags (it may not exist yet)."""
    sources = b"".join((_SRC_DIR / name).read_bytes() for name in _SOURCES)
    key = hashlib.sha256(sources + repr((cc, _FLAGS, _ABI, platform.machine(), sys.platform)).encode()).hexdigest()[:16]
    return cache_dir() / f"neuron_cpu-{key}.so"


def _unsafe(path: Path) -> Optional[str]:
    """Why a library file, or its directory, may hold code someone else wrote, or None. Loading a shared
    library runs its code: the cache must be writable by this user only."""
    if not hasattr(os, "getuid"):  # pragma: no cover - not POSIX
        return None
    uid = os.getuid()
    if path.is_symlink():
        return f"{path} is a symbolic link"
    for p in (path, path.parent):
        st = os.stat(p)
        if st.st_uid != uid:
            return f"{p} belongs to another user (uid {st.st_uid})"
        if st.st_mode & 0o022:
            return f"{p} is writable by group or others (mode {oct(st.st_mode & 0o777)})"
    return None


def _digest_file(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _sha256(path) -> str:
    return hashlib.sha256(read_regular(path, "neuron_cpu", _MAX_LIB_BYTES)).hexdigest()


def _intact(lib: Path) -> bool:
    """Whether the cached library has the bytes its build recorded. dlopen of a damaged file is not an
    error but a crash: a truncated library maps pages past the end of the file, and the first access
    kills the process with SIGBUS (seen in tests/test_neuron_cpu.py before this check)."""
    try:
        return _digest_file(lib).read_text().strip() == _sha256(lib)
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _compile(cc: str, lib: Path) -> Path:
    """Compile to a private name in lib's directory, record its SHA-256 beside it, then rename: a concurrent
    process never loads a half-written file, and a loaded file is never rewritten in place (that would
    crash its process). Two processes building at once can leave one's digest beside the other's file:
    the next load then sees a mismatch and builds again (slow, never wrong)."""
    # (mkstemp makes it 0600; the linker may add execute bits, never write bits for others)
    fd, tmp = tempfile.mkstemp(prefix=".neuron_cpu-", suffix=".so", dir=lib.parent)
    os.close(fd)
    try:
        cmd = [cc, *_FLAGS, "-o", tmp, str(_SRC_DIR / "neuron_cpu.c"), "-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()[:500]}")
        write_atomic(_digest_file(lib), (_sha256(tmp) + "\n").encode(), "neuron_cpu")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _build(cc: str) -> Path:
    """The cached shared library, compiled if missing; RuntimeError saying why not."""
    lib = library_path(cc)
    lib.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if lib.is_file() or lib.is_symlink():
        return lib
    return _compile(cc, lib)


def _open(path: Path):
    lib = ctypes.CDLL(str(path))
    if lib.st_abi_version() != _ABI:
        raise OSError(f"{path} has ABI {lib.st_abi_version()}, expected {_ABI}")
    return lib


def _load():
    if os.environ.get(_ENV_OFF, "1") == "0":
        return None, f"off: {_ENV_OFF}=0"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found ($CC, cc, gcc, clang); the torch ops run instead"
    note = ""
    try:
        path = _build(cc)
        why = _unsafe(path)
        if why is not None:
            # not loaded: a private build for this process (the file is unlinked once loaded)
            private = Path(tempfile.mkdtemp(prefix="spiketriton-"))
            try:
                path = _compile(cc, private / path.name)
                lib = _open(path)
            finally:
                shutil.rmtree(private, ignore_errors=True)
            note = f"; the cached library was not used ({why}): built for this process only"
        else:
            if not _intact(path):
                # damaged (truncated, flipped, foreign) or without its digest: never handed to dlopen
                path.unlink()
                _compile(cc, path)
                note = "; the cached library did not match its recorded digest: rebuilt"
            try:
                lib = _open(path)
            except OSError:
                # a file that matches its digest but does not load (a cache shared with another system):
                # build it again once
                path.unlink(missing_ok=True)
                lib = _open(_compile(cc, path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return None, f"build failed: {e}; the torch ops run instead"
    for name in ("fwd", "bwd_a", "bwd_b"):
        for suffix in ("f32", "f64"):
            fn = getattr(lib, f"st_neuron_{name}_args_{suffix}")
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = ctypes.c_int
    return lib, f"built with {cc} ({path}){note}"


def library():
    """The loaded library, or None (then :func:`status` says why). Built once per process."""
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                _state["lib"], _state["why"] = _load()
                _state["tried"] = True
    return _state["lib"]


def status() -> Tuple[bool, str]:
    """``(in_use, why)``: whether the fused CPU neuron is used, and where it came from or why not.

    >>> from spiketriton.kernels import neuron_cpu
    >>> ok, why = neuron_cpu.status()
    >>> isinstance(ok, bool) and isinstance(why, str)
    True
    """
    return library() is not None, _state["why"]


@contextlib.contextmanager
def disabled():
    """Run the torch ops instead of the fused CPU neuron inside this block (to compare the two, or to
    time the difference). Nests; not thread-local.

    >>> import torch, spiketriton as st
    >>> from spiketriton.kernels import neuron_cpu
    >>> x = torch.rand(4, 2, 10) * 2
    >>> with neuron_cpu.disabled():
    ...     slow = st.LIF()(x)
    >>> torch.equal(slow, st.LIF()(x))
    True
    """
    _state["off"] += 1
    try:
        yield
    finally:
        _state["off"] -= 1


def _reset_for_tests() -> None:
    with _lock:
        _state.update(lib=None, tried=False, why="not built yet")


_spec_cache = {}  # id(spec) -> (spec, its argument arrays, their addresses)

# Surrogates whose derivative needs exp (Sigmoid, PiecewiseExp, Erf). libm's exp is a call per element:
# with it in the C loop, LIF's backward with the default Sigmoid took 27 ms against the torch ops' 15.5 ms
# ([16, 32, 4096] fp32, 1 thread; the polynomial surrogates vectorize in C: 10 ms). So for steps of at
# least _EXP_TORCH_MIN elements torch computes these derivatives (vectorized), one op chain per step:
# per step, not over the whole [T, *S] tensor, because torch's vectorized and scalar-tail code round
# exp differently and an element's result must not depend on T (BPTT through T single steps equals
# one multi-step call, bit for bit). Below it the 3-4 dispatches per step cost more than libm:
# ~12 us against ~8 ns an element (crossover ~1500 elements; 2048 keeps torch for [16, 128] and up).
_EXP_SURROGATES = frozenset({0, 3, 6})
_EXP_TORCH_MIN = 2048


def _spec_arrays(spec: NeuronSpec):
    """The addresses of ``spec``'s int64 and float64 argument arrays (made once per spec object; keyed
    by identity, since hashing the frozen dataclass costs ~2 us a call)."""
    hit = _spec_cache.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[2]
    ints = (ctypes.c_int64 * 9)(spec.family, spec.surrogate.id, spec.reset_mode, int(spec.detach_reset),
                                int(spec.decay_input), spec.ref_len, int(spec.adaptive), int(spec.refractory),
                                int(spec.has_floor))
    floats = (ctypes.c_double * 9)(spec.surrogate.alpha, spec.v_threshold, spec.v_reset, spec.v_init, spec.v_l,
                                   spec.dv, spec.v_th_alpha, spec.v_th_beta, spec.v_th_incre)
    addrs = (ctypes.addressof(ints), ctypes.addressof(floats))
    if len(_spec_cache) > 256:
        _spec_cache.clear()
    _spec_cache[id(spec)] = (spec, (ints, floats), addrs)  # (the entry keeps spec alive: its id stays unique)
    return addrs


def usable(x: torch.Tensor) -> bool:
    """Whether ``x`` (the input sequence, or the saved H in backward) is one the C code takes."""
    return (x.device.type == "cpu" and x.dtype in _DTYPES and x.numel() > 0 and not _state["off"]
            and library() is not None)


def _ptr(t: Optional[torch.Tensor]) -> int:
    return t.data_ptr() if t is not None else 0


def _call(fn, args) -> int:
    """Call an entry point with its arguments as one int64 block (see neuron_cpu_body.h: one argument
    converted by ctypes instead of 15-19). The block is this call's own, so threads do not share it."""
    block = array.array("q", args)
    return fn(block.buffer_info()[0])


def _as(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """t in dtype and contiguous (attribute checks first: a no-op .to().contiguous() costs ~2 us a call,
    which adds up at one call per time step)."""
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return t.to(dtype).contiguous()


def neuron_forward(x_seq, v0, a0, ref0, params, spec: NeuronSpec, store: bool, write_spikes: bool):
    """:func:`spiketriton.kernels.neuron_torch.neuron_forward`'s contract, for a float32/float64 CPU
    ``x_seq`` (:func:`usable`); H is saved in x's dtype."""
    lib = library()
    dt = x_seq.dtype
    x = _as(x_seq, dt)
    shape = x.shape
    T, S = shape[0], shape[1:]
    L = S[-1]
    R = math.prod(S[:-1])
    bit_shape = (T,) + tuple(S[:-1]) + ((L + 7) // 8,)
    if L % 8 == 0:  # rows of whole bytes: one long row has the same bits, and fewer, longer chunks
        R, L = 1, R * L
    u8 = torch.uint8
    family_b = spec.family != FAMILY_A
    adaptive, refractory = spec.adaptive, spec.refractory
    v0 = _as(v0, dt)
    a0 = _as(a0, dt) if adaptive else None
    ref0 = _as(ref0, torch.int32) if refractory else None
    p = _as(params, dt)
    spikes = torch.empty(shape, dtype=dt) if write_spikes else None
    bits = torch.empty(bit_shape, dtype=u8) if (store or not write_spikes) else None
    h = torch.empty(shape, dtype=dt) if store else None
    vth = torch.empty(shape, dtype=torch.float32) if (store and adaptive) else None
    gate = torch.empty(bit_shape, dtype=u8) if (store and refractory) else None
    floor = torch.empty(bit_shape, dtype=u8) if (store and spec.has_floor) else None
    v_last = torch.empty(S, dtype=dt)
    a_last = torch.empty(S, dtype=dt) if adaptive else None
    ref_last = torch.empty(S, dtype=torch.int32) if refractory else None
    si, sf = _spec_arrays(spec)
    fn = lib.st_neuron_fwd_args_f32 if dt == torch.float32 else lib.st_neuron_fwd_args_f64
    rc = _call(fn, (x.data_ptr(), T, R, L, _ptr(v0), _ptr(a0), _ptr(ref0), p.data_ptr(), si, sf, _ptr(spikes),
                    _ptr(bits), _ptr(h), _ptr(vth), _ptr(gate), _ptr(floor), v_last.data_ptr(), _ptr(a_last),
                    _ptr(ref_last)))
    if rc != 0:  # pragma: no cover - the wrapper passes only what the C code takes
        raise RuntimeError(f"neuron_cpu: the fused CPU neuron refused its arguments (code {rc})")
    if not family_b:
        a_last = ref_last = None
    return spikes, v_last, a_last, ref_last, (h, bits, vth, gate, floor)


def _exp_surrogate_in_torch(spec: NeuronSpec, h_seq: torch.Tensor, vth) -> Optional[torch.Tensor]:
    """The exp surrogates' derivative for steps of at least _EXP_TORCH_MIN elements, by torch, one op
    chain per step; None: the C code computes the surrogate. ``vth``: a number, or a tensor [T, *S]."""
    T, S = h_seq.shape[0], h_seq.shape[1:]
    if spec.surrogate.id not in _EXP_SURROGATES or math.prod(S) < _EXP_TORCH_MIN:
        return None
    sg = torch.empty_like(h_seq)
    for t in range(T):
        d = torch.sub(h_seq[t], vth if not isinstance(vth, torch.Tensor) else vth[t], out=sg[t])
        spec.surrogate.derivative_(d) if spec.family == FAMILY_A else sg[t].copy_(spec.surrogate.derivative(d))
    return sg


def neuron_backward_a(grad_spikes, grad_v_last, saved, v0, params, spec: NeuronSpec, need_v0: bool,
                      need_params: bool):
    """Family A's backward (the contract of ``neuron_torch.neuron_backward``) for a float32/float64 CPU
    saved H whose dtype is the gradient's."""
    lib = library()
    h_seq, bits = saved[0].contiguous(), saved[1].contiguous()
    dt = h_seq.dtype
    T, S = h_seq.shape[0], tuple(h_seq.shape[1:])
    L = S[-1]
    R = h_seq[0].numel() // L
    gs = grad_spikes.to(dt).contiguous()
    gvl = grad_v_last.to(dt).contiguous() if grad_v_last is not None else None
    v0c = v0.to(dt).contiguous() if (v0 is not None and need_params) else None
    p = params.to(dt).contiguous()
    gx = torch.empty_like(h_seq)
    gv0 = torch.empty(S, dtype=dt)
    gk = ctypes.c_double(0.0)
    sg = _exp_surrogate_in_torch(spec, h_seq, spec.v_threshold)
    si, sf = _spec_arrays(spec)
    fn = lib.st_neuron_bwd_a_args_f32 if dt == torch.float32 else lib.st_neuron_bwd_a_args_f64
    rc = _call(fn, (gs.data_ptr(), h_seq.data_ptr(), bits.data_ptr(), _ptr(sg), T, R, L, _ptr(gvl), _ptr(v0c),
                    p.data_ptr(), si, sf, gx.data_ptr(), gv0.data_ptr(), ctypes.addressof(gk) if need_params else 0))
    if rc != 0:  # pragma: no cover
        raise RuntimeError(f"neuron_cpu: the fused CPU neuron backward refused its arguments (code {rc})")
    gps = torch.tensor([gk.value], dtype=dt) if need_params else None
    return gx, (gv0 if need_v0 else None), None, gps


def neuron_backward_b(grad_spikes, grad_v_last, grad_a_last, saved, params, spec: NeuronSpec, need_v0: bool,
                      need_a0: bool, need_params: bool):
    """Family B's backward (the contract of ``neuron_torch.neuron_backward``) for a float32/float64 CPU
    saved H whose dtype is the gradient's."""
    lib = library()
    h_seq, bits, vth_seq, gate_bits, floor_bits = saved
    dt = h_seq.dtype
    h_seq = _as(h_seq, dt)
    T, S = h_seq.shape[0], tuple(h_seq.shape[1:])
    L = S[-1]
    R = math.prod(S[:-1])
    adaptive = spec.adaptive
    gs = _as(grad_spikes, dt)
    gvl = _as(grad_v_last, dt)
    gal = _as(grad_a_last, dt) if adaptive else None
    vths = _as(vth_seq, torch.float32) if adaptive else None
    gates = _as(gate_bits, torch.uint8) if spec.refractory else None
    floors = _as(floor_bits, torch.uint8) if spec.has_floor else None
    p = _as(params, dt)
    gx = torch.empty_like(h_seq)
    gv0 = torch.empty(S, dtype=dt)
    ga0 = torch.empty(S, dtype=dt) if adaptive else None
    gp = (ctypes.c_double * 2)()
    if adaptive:
        vth = vths.to(dt).clamp_min(spec.v_l) if spec.surrogate.id in _EXP_SURROGATES else None
    else:
        vth = max(spec.v_threshold, spec.v_l)
    sg = _exp_surrogate_in_torch(spec, h_seq, vth) if vth is not None else None
    si, sf = _spec_arrays(spec)
    fn = lib.st_neuron_bwd_b_args_f32 if dt == torch.float32 else lib.st_neuron_bwd_b_args_f64
    rc = _call(fn, (gs.data_ptr(), h_seq.data_ptr(), _as(bits, torch.uint8).data_ptr(), _ptr(vths), _ptr(gates),
                    _ptr(floors), _ptr(sg), T, R, L, _ptr(gvl), _ptr(gal), p.data_ptr(), si, sf, gx.data_ptr(),
                    gv0.data_ptr(), _ptr(ga0), ctypes.addressof(gp) if need_params else 0))
    if rc != 0:  # pragma: no cover
        raise RuntimeError(f"neuron_cpu: the fused CPU neuron backward refused its arguments (code {rc})")
    gps = torch.tensor([gp[0], gp[1]], dtype=dt) if need_params else None
    return gx, (gv0 if need_v0 else None), (ga0 if (need_a0 and adaptive) else None), gps
