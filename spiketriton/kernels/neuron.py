"""Fused multi-step neuron kernels (forward and backward) for both neuron families of docs/spec/neurons.md.

Layout: a sequence ``[T, B, *features]`` is viewed as ``[T, R, L]`` with ``L`` its last dimension and
``R`` everything between T and L. Each program owns a ``[BLOCK_R, BLOCK_L]`` tile of neurons and walks
the T steps with the state in fp32 registers, so the input is read once and the spikes written once.
``BLOCK_L`` is a multiple of 8 so that a tile also owns whole bytes of the packed spikes (bits along
the last dimension, LSB first, the last dimension zero-padded to a multiple of 8).

When ``L`` is a multiple of 8, or a launch reads and writes no packed bits, the launchers view the
sequence as ``[T, 1, R * L]`` instead (the "flat" layout): each row's bits then fill whole bytes, so
the public row layout of the packed spikes *is* a flat bitstream of the R * L neurons of a step, and
every tile is a contiguous range of R * L. See ``_plan`` for which accesses are 128-bit wide and which
stay narrower.

Saved for backward (only when a gradient is needed, ``STORE``):

- ``h``: the potential compared with the threshold (family A: H; family B: v'), in the input dtype;
- ``bits``: the spikes, packed 8 per byte (so bf16/fp16 backward never re-decides a spike from a
  rounded H);
- family B with an adaptive threshold: the raw threshold ``v_th0 + a[t-1]`` in fp32;
- family B with a refractory period: the input gate ``ref[t-1] == 0``, packed 8 per byte;
- family B with a floor ``v_l``: whether the leaked potential was at or above the floor, packed 8 per
  byte (recomputing it from a bf16 H could take the other branch near the floor).

``h`` is fp32 instead of the input dtype when a learnable decay (PLIF) needs its gradient, which
is computed from H and V[t-1] = reset(H[t-1]) and would amplify H's half-precision rounding.
Everything else the backward needs is recomputed from these. All packed tensors use the public row
layout (the same bytes the PyTorch path writes): ``bits`` is also the packed output handed to
SpikeLinear, and with a gradient one tensor is both.

No nn.Module and no autograd here: launchers allocate, launch and return tensors.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ..spec import RESET_HARD, NeuronSpec
from . import interpret_mode

# Tiles and grid (``_tiles``). No GPU timing exists yet; the numbers below are arithmetic and what the
# compiled code shows (sm_90 / sm_80 SASS of launches at the shapes named, compiled as
# ``python -m bench.codegen`` does).
#
# _BLOCK: the most neurons per program, _NUM_WARPS: the most warps per program (bench/neuron_gpu.py
# sweeps both). Large layers keep them: [32, 64, 65536] has 4096 tiles of 1024 (31 per SM on a
# 132-SM H100), 4 warps each, 8 fp32 (2 x 128-bit) or 8 bf16 (1 x 128-bit) per thread and tensor.
_BLOCK = 1024
_NUM_WARPS = 4
# A program walks all T steps of its tile, so a small layer gives a small grid: the Open Neuromorphic
# shape [500, 16, 16384] has R * L = 262144 neurons, 256 tiles of 1024 = 1.9 programs per SM, and
# a large T does not help. The launcher halves the tile until there are at least _PROGRAMS_PER_SM
# programs per SM (4 x 132 = 528), but not below one 128-bit vector per thread of one warp
# (32 x 4 fp32 = 128 or 32 x 8 bf16 = 256 neurons), and gives a program only the warps that still hold a
# whole vector each (warps = tile / (32 x vector)). [500, 16, 16384]: fp32 1024 -> 512 (512 programs,
# 3.9 per SM) -> 256 neurons, 2 warps, 1024 programs (7.8 per SM); bf16 256 neurons, 1 warp, 1024
# programs. Smaller programs do not add bytes in flight (all are resident at once; the prefetch
# below does), they spread the T-serial work over more SMs and schedulers.
_PROGRAMS_PER_SM = 4
# The backward holds more tensors per step, each prefetched two steps ahead, so its tile is capped at
# one 128-bit vector per thread (512 fp32 / 1024 bf16 neurons at 4 warps). sm_90 registers per thread
# with two fp32 vectors (1024) -> one (512): LIF 106 -> 61, ExtendedLIF with every option 180 -> 103
# (bf16, one vector of 8: 79 / 136); a 64K-register file holds 65536 / (128 x regs) programs of 4 warps
# per SM: 180 registers would allow 2, 103 allows 4 (before this change, without prefetch: 63 / 104).
_BWD_VECTORS = 1
_DEFAULT_SMS = 132  # H100 SXM / H200; used when the tensors are not on a CUDA device (codegen check)
# Loads are prefetched across T in registers, two steps ahead: step t issues the loads of x[t+2] (forward),
# or of the spike gradient (and saved threshold / gate / floor) of step t-2 and H / spike bits of step
# t-3 (backward, which runs t downwards; PLIF reads H[t-1] one step before it is step t-1's H). Estimate:
# [500, 16, 16384] bf16 inference moves 262144 x (2 + 2 + 1/8) B = 1.1 MB per step, 0.32 us at 3.35 TB/s,
# while a loaded DRAM round trip is ~0.6-0.8 us (published H100 microbenchmarks, not measured here): a
# load must be issued 2+ steps before its use; the old kernels read x[t] at step t (the forward's only
# load waited a full round trip every step). One step ahead is not enough in the compiled code: ptxas
# puts a load that feeds nothing in its own iteration in the middle or at the end of the loop body (seen
# in the sm_90 SASS of the backward: the LDGs come after the surrogate's MUFU chain, just before the
# STG), so a depth of one left the next iteration waiting almost the whole round trip; with two, at
# least one full iteration lies between a load and its first use. Registers (sm_90, 4 warps): forward
# LIF fp32 1024 neurons 40 -> 54, backward see _BWD_VECTORS. ``tl.range(..., num_stages=3)`` does
# pipeline these loads too (the SASS shows LDGSTS.E.BYPASS.128 into shared memory, DEPBAR and a
# BAR.SYNC per step) but leaves the one-byte loads of the packed bits synchronous and costs shared
# memory per stage and a barrier per step; the register prefetch needs neither and runs the same code
# under the interpreter (so the tests cover it).


def _sm_count(device: torch.device) -> int:
    """SMs to fill: the device's; 132 for tensors not on a GPU (the codegen check compiles for an H100
    from CPU tensors); 0 under the Triton interpreter, which runs programs one after the other in
    Python at a cost per program and step, not per neuron: it keeps the largest tiles (the smallest
    made the interpreted test suite several times slower)."""
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 0 if interpret_mode() else _DEFAULT_SMS


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _vec(*dtypes) -> int:
    """Elements of the narrowest dtype in one 128-bit access."""
    return 16 // min(torch.empty((), dtype=d).element_size() for d in dtypes)


def _plan(R: int, L: int, vec: int, packed: bool = True):
    """How a launch views ``[T, R, L]``: returns ``(R, L, l_mult, E)``.

    - flat, ``(1, R * L)``, when ``L % 8 == 0`` or the launch reads and writes no packed bits
      (``packed=False``: inference that writes float spikes only). Every access of the float tensors
      can then be as wide as ``R * L`` allows: 128-bit whenever R * L is a multiple of 4 (fp32) / 8
      (bf16), as every step then starts 16-byte aligned when the tensor does (always with L % 8 == 0).
      R * L not a multiple of the vector (e.g. odd R and odd L) shifts the alignment from step to
      step: accesses of gcd(R * L, vector) elements, as copying to a padded layout would cost a pass.
    - otherwise rows ``(R, L)`` (the packed bits are rows padded to whole bytes, also when they are the
      internal saved tensors: with a gradient, the packed output handed to SpikeLinear is the saved
      tensor): a row starts at ``r * L`` elements, so accesses are ``gcd(L, vec)`` elements wide:
      128-bit when L is a multiple of ``vec`` (4 fp32 / 8 bf16), 64-bit for L = 4 mod 8 in bf16 or
      L = 2 mod 4 in fp32, 32-bit for L = 2 mod 4 in bf16, and scalar for odd L. Splitting each row into
      an aligned body would need a per-row runtime alignment, which Triton cannot vectorize; a flat
      tile would need bytes that straddle tiles and rows.
    - more than 2^31 - 1 neurons per step stay rows (the kernels take L as int32).

    ``l_mult`` is the largest power of two (<= 16) dividing the (new) L; the kernels take ``L //
    l_mult`` and multiply back by the constexpr, so the compiler knows the stride is a multiple of
    the vector even when L is not a multiple of 16 (Triton only specializes divisibility by 16; e.g.
    L = 1000 would otherwise be read 32 bits at a time). ``E = min(vec, l_mult)``: the neurons one
    thread holds contiguously, the unit in which bits are packed and unpacked in registers.

    With a bf16 / fp16 input the fp32 tensors of a launch (PLIF's fp32 H, the adaptive threshold, the
    final state) are 8 per thread like the input, and Triton stores fp32 4 per thread per 128-bit
    access: those stores go through a layout change in shared memory (every step for H / threshold in
    the forward; the backward's fp32 loads take the tile's layout directly, 2 x 128-bit per thread).

    A tensor whose data pointer is not 16-byte aligned (a view such as ``buf[1:]``) is read or
    written with the accesses its own alignment allows, down to scalar for an fp32 pointer offset by
    4 bytes; the other tensors of the launch keep theirs (the launcher allocates them aligned).
    Aligning it would take a copy (one more read and write of it, more than the narrower accesses
    cost: they move the same bytes), or outputs allocated with its misalignment (which would hand
    the misalignment on to the next layer and to the backward, where the incoming gradient is aligned).
    """
    if (L % 8 == 0 or not packed) and R > 1 and R * L < 2**31:
        R, L = 1, R * L
    l_mult = min(L & -L, 16) if L > 0 else 16
    return R, L, l_mult, min(vec, l_mult)


def _tiles(R: int, L: int, E: int, device: torch.device, max_block: Optional[int] = None,
           max_warps: Optional[int] = None, max_vectors: Optional[int] = None):
    """``(block_r, block_l, programs, num_warps)`` for ``[R, L]`` neurons held E per thread (see the
    constants above; ``max_block`` / ``max_warps`` default to ``_BLOCK`` / ``_NUM_WARPS``, read at the
    call; ``max_vectors`` caps the E-vectors per thread)."""
    max_block = _BLOCK if max_block is None else max_block
    max_warps = _NUM_WARPS if max_warps is None else max_warps
    if max_vectors is not None:
        max_block = min(max_block, 32 * E * max_warps * max_vectors)
    min_block = 32 * E  # one warp, one E-vector per thread
    target = _PROGRAMS_PER_SM * _sm_count(device)
    block = max(max_block, min_block)
    while True:
        block_l = min(max(triton.next_power_of_2(L), 8), block)
        block_r = min(max(block // block_l, 1), triton.next_power_of_2(max(R, 1)))
        programs = triton.cdiv(R, block_r) * triton.cdiv(L, block_l)
        if programs >= target or block <= min_block:
            break
        block //= 2
    num_warps = max(1, min(max_warps, (block_r * block_l) // min_block))
    return block_r, block_l, programs, num_warps


# --------------------------------------------------------------------------------------------- #
# Device helpers
# --------------------------------------------------------------------------------------------- #


@triton.jit
def _surrogate_grad(x, SG_ID: tl.constexpr, alpha):
    """d spike / d x for x = H - V_th. Same closed forms and ids as spiketriton.surrogate."""
    if SG_ID == 0:  # Sigmoid
        sg = tl.sigmoid(alpha * x)
        g = alpha * sg * (1.0 - sg)
    elif SG_ID == 1:  # ATan
        z = 1.5707963267948966 * alpha * x
        g = (0.5 * alpha) / (1.0 + z * z)
    elif SG_ID == 2:  # PiecewiseQuadratic
        ax = tl.abs(x)
        g = tl.where(ax <= 1.0 / alpha, alpha - alpha * alpha * ax, 0.0)
    elif SG_ID == 3:  # PiecewiseExp
        g = 0.5 * alpha * tl.exp(-alpha * tl.abs(x))
    elif SG_ID == 4:  # SoftSign
        d = 1.0 / alpha + tl.abs(x)
        g = 1.0 / (2.0 * alpha * d * d)
    elif SG_ID == 5:  # SuperSpike
        d = tl.abs(x) + 1.0
        g = alpha / (d * d)
    elif SG_ID == 6:  # Erf
        z = alpha * x
        g = (alpha * 0.5641895835477563) * tl.exp(-z * z)
    else:  # Rect (alpha is the window width)
        g = tl.where(tl.abs(x) < 0.5 * alpha, 1.0 / alpha, 0.0)
    return g


@triton.jit
def _tile(R, L, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's [BLOCK_R, BLOCK_L] tile of the [R, L] neurons: its column-tile index, rows, masks,
    int64 offsets, and the int64 elements of one time step (T * R * L may exceed 2^31; tl.cast also
    accepts the interpreter's Python ints). The grid is 1-D (the flat layout can have more than the
    65535 programs a second grid axis allows)."""
    pid = tl.program_id(0)
    n_l = tl.cdiv(L, BLOCK_L)
    pid_l = (pid % n_l).to(tl.int64)
    pid_r = (pid // n_l).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_r = rows < R
    mask = mask_r[:, None] & (cols[None, :] < L)
    offs = rows[:, None] * L + cols[None, :]
    step = tl.cast(R, tl.int64) * L
    return pid_l, rows, mask_r, mask, offs, step


@triton.jit
def _valid_t(t, T, like):
    """``0 <= t < T`` as a full tile shaped like ``like`` (the interpreter wants masks as full tiles)."""
    tt = like * 0 + t
    return (tt >= 0) & (tt < T)


@triton.jit
def _load_step(ptr, t, T, step, offs, mask):
    """Step ``t`` of a [T, R, L] tensor in its own dtype (zeros where t is out of [0, T), for prefetches
    past either end)."""
    return tl.load(ptr + t * step + offs, mask=mask & _valid_t(t, T, offs), other=0.0)


# Packed bits in registers: a thread holds E (a power of two) contiguous neurons of a row, so E >= 8
# neurons give whole bytes in one thread (constant shifts, no exchange) and E < 8 neurons an E-bit
# group, 8 / E groups of neighbouring threads per byte (one butterfly shuffle for fp32's E = 4). Bytes go
# to memory as one STG.U8 / LDG.U8 per byte or group (the bits are 1/32 of the fp32 traffic), from and
# into the thread that holds the neurons: no layout change through shared memory. Unpacking is int32
# shifts and masks (32-bit LOP3 bit tests into predicates and selects of 1.0 in the SASS; the code
# before this had 8/16-bit PRMT, I2F.U16 and clamped runtime shift amounts); packing sums exact fp32
# powers of two (see ``_store_bits``).


@triton.jit
def _store_bits(ptr, flag, rows, pid_l, LB, mask_r, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, E: tl.constexpr):
    """Pack a [BLOCK_R, BLOCK_L] boolean tile into bytes (LSB first) and store its [BLOCK_R, BLOCK_L/8]
    bytes of the [*, LB] rows at ``ptr``.

    The byte is summed from exact fp32 powers of two and converted once (F2I): summed as integers,
    LLVM rewrites select(bit, 1, 0) << j chains into i1-vector bitcasts that the NVPTX backend lowers
    with 16-bit ops, and in the kernel with three bit streams through a 2-byte local-memory stack
    frame (STACK 8 in the sm_90 SASS)."""
    G: tl.constexpr = BLOCK_L // 8
    if E >= 8:
        pw = (1 << tl.arange(0, 8)).to(tl.float32)  # exact powers of two (no MUFU.EX2)
        byte = tl.sum(tl.where(tl.reshape(flag, [BLOCK_R, G, 8]), pw[None, None, :], 0.0), axis=2).to(tl.int32)
        bcols = pid_l * G + tl.arange(0, G)
        m = mask_r[:, None] & (bcols[None, :] < LB)
        tl.store(ptr + rows[:, None] * LB + bcols[None, :], byte.to(tl.uint8), mask=m)
    else:
        Q: tl.constexpr = BLOCK_L // E  # groups of E neurons, one per thread and vector
        P: tl.constexpr = 8 // E        # groups per byte, in neighbouring threads
        if E == 1:
            grp = tl.where(flag, 1.0, 0.0)
        else:  # in-thread
            pw = (1 << tl.arange(0, E)).to(tl.float32)
            grp = tl.sum(tl.where(tl.reshape(flag, [BLOCK_R, Q, E]), pw[None, None, :], 0.0), axis=2)
        # across the P threads of a byte (a butterfly shuffle for fp32), then back on every group so that
        # the byte is stored by the thread of its first group: no layout change through shared memory
        pw2 = (1 << (tl.arange(0, P) * E)).to(tl.float32)
        byte = tl.sum(tl.reshape(grp, [BLOCK_R, G, P]) * pw2[None, None, :], axis=2).to(tl.int32)
        byte_q = tl.reshape(tl.broadcast_to(byte[:, :, None], [BLOCK_R, G, P]), [BLOCK_R, Q])
        q = tl.arange(0, Q)
        bcols = pid_l * G + q // P
        m = mask_r[:, None] & ((bcols < LB) & (q % P == 0))[None, :]
        tl.store(ptr + rows[:, None] * LB + bcols[None, :], byte_q.to(tl.uint8), mask=m)


@triton.jit
def _load_bit_groups(ptr, t, T, step_b, rows, pid_l, LB, mask_r,
                     BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, E: tl.constexpr):
    """The packed bits of step ``t`` of this tile as int32 groups: bytes [BLOCK_R, BLOCK_L/8] when E >= 8,
    else each thread's E-bit group [BLOCK_R, BLOCK_L/E] (zeros where t is out of [0, T)). Kept packed
    while prefetched; ``_expand_bits`` unpacks them."""
    if E >= 8:
        G: tl.constexpr = BLOCK_L // 8
        bcols = pid_l * G + tl.arange(0, G)
        m = mask_r[:, None] & (bcols[None, :] < LB)
        m = m & _valid_t(t, T, bcols[None, :])
        grp = tl.load(ptr + t * step_b + rows[:, None] * LB + bcols[None, :], mask=m, other=0).to(tl.int32)
    else:
        Q: tl.constexpr = BLOCK_L // E
        P: tl.constexpr = 8 // E
        q = tl.arange(0, Q)
        bcols = pid_l * (BLOCK_L // 8) + q // P
        m = mask_r[:, None] & (bcols < LB)[None, :]
        m = m & _valid_t(t, T, bcols[None, :])
        byte = tl.load(ptr + t * step_b + rows[:, None] * LB + bcols[None, :], mask=m, other=0).to(tl.int32)
        grp = (byte >> ((q % P) * E)[None, :]) & ((1 << E) - 1)
    return grp


@triton.jit
def _expand_bits(grp, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, E: tl.constexpr):
    """Groups from ``_load_bit_groups`` -> the 0/1 int32 bit of every neuron of the tile (constant shifts)."""
    U: tl.constexpr = 8 if E >= 8 else E
    bits = (grp[:, :, None] >> tl.arange(0, U)[None, None, :]) & 1
    return tl.reshape(bits, [BLOCK_R, BLOCK_L])


@triton.jit
def _bits_f32(grp, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, E: tl.constexpr):
    """0.0 / 1.0 of every neuron's bit (a select: no int->float conversion)."""
    return tl.where(_expand_bits(grp, BLOCK_R, BLOCK_L, E) != 0, 1.0, 0.0)


# --------------------------------------------------------------------------------------------- #
# Forward
# --------------------------------------------------------------------------------------------- #


@triton.jit
def _neuron_fwd_kernel(
    x_ptr,        # [T, R, L] input current (fp32 / fp16 / bf16), contiguous
    v0_ptr,       # [R, L] fp32 carried-in membrane potential (read if HAS_V0)
    a0_ptr,       # [R, L] fp32 carried-in adaptive threshold part (read if HAS_A0)
    ref0_ptr,     # [R, L] int32 carried-in refractory counter (read if HAS_REF0)
    p_ptr,        # fp32 learnable scalars: family A [k = 1/tau]; family B [alpha, beta]
    s_ptr,        # [T, R, L] out: spikes, dtype of x (written if WRITE_SPIKES)
    h_ptr,        # [T, R, L] out: H (A) / v' (B), dtype of x or fp32 (written if STORE)
    bits_ptr,     # [T, R, LB] out: packed spikes, uint8 (written if WRITE_BITS)
    vth_ptr,      # [T, R, L] out: raw threshold v_th0 + a[t-1], fp32 (written if STORE and ADAPTIVE)
    gate_ptr,     # [T, R, LB] out: packed refractory gate, uint8 (written if STORE and REFRACTORY)
    floor_ptr,    # [T, R, LB] out: packed "leaked v >= v_l", uint8 (written if STORE and HAS_FLOOR)
    vT_ptr,       # [R, L] out: fp32 membrane potential after the last step
    aT_ptr,       # [R, L] out: fp32 adaptive part after the last step (written if ADAPTIVE)
    refT_ptr,     # [R, L] out: int32 refractory counter after the last step (written if REFRACTORY)
    T, R, L_div, LB,  # steps (runtime: no recompilation per T), rows, last dim / L_MULT, bytes per packed row
    v_th,         # A: V_th; B: v_th0
    v_reset,      # value after a hard reset (0 for soft reset in family A)
    v_init,       # membrane potential when no state is carried in
    v_l,          # B: floor of v and of the threshold (-inf: none)
    dv,           # B: SOFT_CONSTANT decrement
    th_alpha, th_beta, th_incre,  # B: adaptive threshold decay, drift, increment per spike
    ref_len,      # B: refractory length in steps
    FAMILY: tl.constexpr,       # 0: charge-fire-reset (IF/LIF/PLIF); 1: integrate-fire-reset-leak
    DECAY_INPUT: tl.constexpr,  # A: H = V + (X - (V - Vr)) k   instead of   H = V - (V - Vr) k + X
    RESET_MODE: tl.constexpr,   # 0 hard, 1 soft (subtract threshold), 2 soft constant (subtract dv)
    ADAPTIVE: tl.constexpr, REFRACTORY: tl.constexpr, HAS_FLOOR: tl.constexpr,
    HAS_V0: tl.constexpr, HAS_A0: tl.constexpr, HAS_REF0: tl.constexpr,
    STORE: tl.constexpr,        # write what the backward needs (with the bits)
    WRITE_SPIKES: tl.constexpr, WRITE_BITS: tl.constexpr,  # float spikes / packed spikes
    L_MULT: tl.constexpr, E: tl.constexpr,  # see _plan
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    L = L_div * L_MULT
    pid_l, rows, mask_r, mask, offs, step = _tile(R, L, BLOCK_R, BLOCK_L)
    step_b = tl.cast(R, tl.int64) * LB  # bytes per time step of packed data

    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        v = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.float32) + v_init
    if FAMILY == 0:
        k = tl.load(p_ptr).to(tl.float32)
    else:
        alpha = tl.load(p_ptr).to(tl.float32)
        beta = tl.load(p_ptr + 1).to(tl.float32)
    if ADAPTIVE:
        if HAS_A0:
            a = tl.load(a0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            a = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.float32)
    if REFRACTORY:
        if HAS_REF0:
            ref = tl.load(ref0_ptr + offs, mask=mask, other=0)
        else:
            ref = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.int32)

    # x[t] is loaded two steps ahead (see the prefetch note at the top of the file)
    x_next = _load_step(x_ptr, tl.cast(0, tl.int64), T, step, offs, mask)
    x_next2 = _load_step(x_ptr, tl.cast(1, tl.int64), T, step, offs, mask)
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        x = x_next.to(tl.float32)
        x_next = x_next2
        x_next2 = _load_step(x_ptr, t64 + 2, T, step, offs, mask)
        if FAMILY == 0:
            if DECAY_INPUT:
                h = v + (x - (v - v_reset)) * k
            else:
                h = v - (v - v_reset) * k + x
            spike = (h - v_th) >= 0.0
            if RESET_MODE == 0:
                v = tl.where(spike, v_reset, h)
            else:
                v = tl.where(spike, h - v_th, h)
        else:
            if ADAPTIVE:
                raw = v_th + a
                vth = tl.where(raw >= v_l, raw, v_l)
            else:
                vth = tl.maximum(v_th + tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.float32), v_l)
            if REFRACTORY:
                gate = ref == 0
                h = tl.where(gate, x, 0.0) + v
            else:
                h = x + v
            spike = (h - vth) > 0.0
            if RESET_MODE == 0:
                v2 = tl.where(spike, v_reset, h)
            elif RESET_MODE == 1:
                v2 = tl.where(spike, h - vth, h)
            else:
                v2 = tl.where(spike, h - dv, h)
            v = alpha * v2 + beta
            above = v >= v_l
            v = tl.where(above, v, v_l)
            if ADAPTIVE:
                a = th_alpha * a + th_beta + tl.where(spike, th_incre, 0.0)
            if REFRACTORY:
                ref = tl.where(spike, ref_len, tl.maximum(ref - 1, 0))
        if WRITE_SPIKES:
            # bool -> float via where: the interpreter cannot cast int1 to bf16 directly
            tl.store(s_ptr + t64 * step + offs, tl.where(spike, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=mask)
        if WRITE_BITS:
            # padding lanes must pack as 0 whatever the threshold
            _store_bits(bits_ptr + t64 * step_b, spike & mask, rows, pid_l, LB, mask_r,
                        BLOCK_R, BLOCK_L, E)
        if STORE:
            tl.store(h_ptr + t64 * step + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
            if ADAPTIVE:
                tl.store(vth_ptr + t64 * step + offs, raw, mask=mask)
            if REFRACTORY:
                _store_bits(gate_ptr + t64 * step_b, gate & mask, rows, pid_l, LB, mask_r,
                            BLOCK_R, BLOCK_L, E)
            if HAS_FLOOR:
                _store_bits(floor_ptr + t64 * step_b, above & mask, rows, pid_l, LB, mask_r,
                            BLOCK_R, BLOCK_L, E)

    tl.store(vT_ptr + offs, v, mask=mask)
    if ADAPTIVE:
        tl.store(aT_ptr + offs, a, mask=mask)
    if REFRACTORY:
        tl.store(refT_ptr + offs, ref, mask=mask)


# --------------------------------------------------------------------------------------------- #
# Backward
# --------------------------------------------------------------------------------------------- #


@triton.jit
def _neuron_bwd_kernel(
    gs_ptr,       # [T, R, L] grad wrt spikes (any float dtype)
    gvT_ptr,      # [R, L] grad wrt v after the last step (read if HAS_GVT)
    gaT_ptr,      # [R, L] grad wrt the adaptive part after the last step (read if HAS_GAT)
    h_ptr,        # [T, R, L] saved H / v' (dtype of x)
    bits_ptr,     # [T, R, LB] saved packed spikes
    vth_ptr,      # [T, R, L] saved raw threshold (ADAPTIVE)
    gate_ptr,     # [T, R, LB] saved packed refractory gate (REFRACTORY)
    floor_ptr,    # [T, R, LB] saved packed floor decision (HAS_FLOOR)
    v0_ptr,       # [R, L] carried-in v (read if HAS_V0 and LEARN and family A)
    p_ptr,        # fp32 learnable scalars (as forward)
    gx_ptr,       # [T, R, L] out: grad wrt x (dtype of x)
    gv0_ptr,      # [R, L] out: fp32 grad wrt the carried-in v (written if GRAD_V0)
    ga0_ptr,      # [R, L] out: fp32 grad wrt the carried-in adaptive part (written if GRAD_A0)
    gp_ptr,       # [n_programs, 2] out: fp32 per-program partial grads of params (written if LEARN)
    T, R, L_div, LB,
    v_th, v_reset, v_init, v_l, dv, th_alpha, th_beta, th_incre,
    sg_alpha,     # surrogate parameter
    FAMILY: tl.constexpr, DECAY_INPUT: tl.constexpr, RESET_MODE: tl.constexpr,
    DETACH_RESET: tl.constexpr, SG_ID: tl.constexpr,
    ADAPTIVE: tl.constexpr, REFRACTORY: tl.constexpr, HAS_FLOOR: tl.constexpr,
    HAS_V0: tl.constexpr, HAS_GVT: tl.constexpr, GRAD_V0: tl.constexpr, LEARN: tl.constexpr,
    HAS_GAT: tl.constexpr, GRAD_A0: tl.constexpr,
    L_MULT: tl.constexpr, E: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    L = L_div * L_MULT
    pid_l, rows, mask_r, mask, offs, step = _tile(R, L, BLOCK_R, BLOCK_L)
    step_b = tl.cast(R, tl.int64) * LB
    zero = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.float32)

    if HAS_GVT:
        gv = tl.load(gvT_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        gv = zero
    if FAMILY == 0:
        k = tl.load(p_ptr).to(tl.float32)
        # H of family A is compared with a constant threshold
        vth = v_th
        if LEARN:
            # V[-1]: the carried-in or initial v, for the PLIF gradient of step 0
            if HAS_V0:
                v_first = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            else:
                v_first = v_init + zero
    else:
        alpha = tl.load(p_ptr).to(tl.float32)  # (beta's gradient needs no beta: the floor decision is saved)
        if HAS_GAT:
            ga = tl.load(gaT_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            ga = zero  # grad wrt the adaptive part a[t]
        if not ADAPTIVE:
            vth = tl.maximum(v_th + zero, v_l)
    gp0 = zero  # partial grad of params[0] (k or alpha)
    gp1 = zero  # partial grad of params[1] (beta)

    # Prefetched across T in registers, two steps ahead of their first use (see the top of the file):
    # at step t the loop issues the spike gradient (and saved threshold / gate / floor) of step t-2 and
    # H and the spike bits of step t-3 (family A's PLIF gradient needs V[t-1] = reset(H[t-1], S[t-1])
    # at step t, one step before H[t-1] is step t-1's H). Bits stay packed until used.
    t_last = tl.cast(T - 1, tl.int64)
    h = _load_step(h_ptr, t_last, T, step, offs, mask).to(tl.float32)
    s = _bits_f32(_load_bit_groups(bits_ptr, t_last, T, step_b, rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L, E),
                  BLOCK_R, BLOCK_L, E)
    h_n = _load_step(h_ptr, t_last - 1, T, step, offs, mask)
    h_n2 = _load_step(h_ptr, t_last - 2, T, step, offs, mask)
    s_n = _load_bit_groups(bits_ptr, t_last - 1, T, step_b, rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L, E)
    s_n2 = _load_bit_groups(bits_ptr, t_last - 2, T, step_b, rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L, E)
    gs_n = _load_step(gs_ptr, t_last, T, step, offs, mask)
    gs_n2 = _load_step(gs_ptr, t_last - 1, T, step, offs, mask)
    if ADAPTIVE:
        raw_n = _load_step(vth_ptr, t_last, T, step, offs, mask)
        raw_n2 = _load_step(vth_ptr, t_last - 1, T, step, offs, mask)
    if REFRACTORY:
        gate_n = _load_bit_groups(gate_ptr, t_last, T, step_b, rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L, E)
        gate_n2 = _load_bit_groups(gate_ptr, t_last - 1, T, step_b, rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L, E)
    if HAS_FLOOR:
        floor_n = _load_bit_groups(floor_ptr, t_last, T, step_b, rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L, E)
        floor_n2 = _load_bit_groups(floor_ptr, t_last - 1, T, step_b, rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L, E)
    for i in range(T):
        t = tl.cast(T - 1 - i, tl.int64)
        t_tile = offs * 0 + t  # the interpreter wants masks as full tiles, not scalar predicates
        has_prev = t_tile > 0
        h_prev = h_n.to(tl.float32)  # 0 at t = 0
        s_prev = _bits_f32(s_n, BLOCK_R, BLOCK_L, E)
        gs = gs_n.to(tl.float32)
        h_n = h_n2
        s_n = s_n2
        gs_n = gs_n2
        h_n2 = _load_step(h_ptr, t - 3, T, step, offs, mask)
        s_n2 = _load_bit_groups(bits_ptr, t - 3, T, step_b, rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L, E)
        gs_n2 = _load_step(gs_ptr, t - 2, T, step, offs, mask)
        if ADAPTIVE:
            raw = raw_n
            raw_n = raw_n2
            raw_n2 = _load_step(vth_ptr, t - 2, T, step, offs, mask)
        if REFRACTORY:
            gate = _bits_f32(gate_n, BLOCK_R, BLOCK_L, E)
            gate_n = gate_n2
            gate_n2 = _load_bit_groups(gate_ptr, t - 2, T, step_b, rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L, E)
        if HAS_FLOOR:
            above = _bits_f32(floor_n, BLOCK_R, BLOCK_L, E)
            floor_n = floor_n2
            floor_n2 = _load_bit_groups(floor_ptr, t - 2, T, step_b, rows, pid_l, LB, mask_r, BLOCK_R, BLOCK_L, E)

        if FAMILY == 0:
            sg = _surrogate_grad(h - vth, SG_ID, sg_alpha)
            if RESET_MODE == 0:
                dv_dh = 1.0 - s
                dv_ds = v_reset - h
            else:
                dv_dh = 1.0 + zero
                dv_ds = -vth + zero
            if DETACH_RESET:
                gh = gs * sg + gv * dv_dh
            else:
                gh = gs * sg + gv * (dv_dh + dv_ds * sg)
            if DECAY_INPUT:
                gx = gh * k
            else:
                gx = gh
            if LEARN:
                # V[t-1]: the previous step's state after its reset, or the carried-in/initial v
                if RESET_MODE == 0:
                    v_prev = tl.where(s_prev > 0.0, v_reset, h_prev)
                else:
                    v_prev = h_prev - s_prev * vth
                v_prev = tl.where(has_prev, v_prev, v_first)
                if DECAY_INPUT:
                    # dH/dk = X - (V - Vr) = (H - V) / k   (X itself is not saved)
                    gp0 += gh * (h - v_prev) / k
                else:
                    gp0 += gh * (v_reset - v_prev)
            gv = gh * (1.0 - k)
        else:
            if ADAPTIVE:
                vth = tl.where(raw >= v_l, raw, v_l)
            if RESET_MODE == 0:
                v2 = tl.where(s > 0.0, v_reset, h)
            elif RESET_MODE == 1:
                v2 = h - s * vth
            else:
                v2 = h - s * dv
            if HAS_FLOOR:                              # floor: the forward's decision, saved
                g_pre = gv * above
            else:
                g_pre = gv
            if LEARN:
                gp0 += g_pre * v2
                gp1 += g_pre
            g_v2 = g_pre * alpha                       # leak
            g_s = gs
            if ADAPTIVE:
                g_s += ga * th_incre                   # a[t] = th_alpha a[t-1] + th_beta + s th_incre
            g_vth = zero
            if RESET_MODE == 0:
                g_h = g_v2 * (1.0 - s)
                if not DETACH_RESET:
                    g_s += g_v2 * (v_reset - h)
            elif RESET_MODE == 1:
                g_h = g_v2
                g_vth = -g_v2 * s
                if not DETACH_RESET:
                    g_s -= g_v2 * vth
            else:
                g_h = g_v2
                if not DETACH_RESET:
                    g_s -= g_v2 * dv
            sg = _surrogate_grad(h - vth, SG_ID, sg_alpha)
            g_h += g_s * sg
            g_vth -= g_s * sg
            if REFRACTORY:
                gx = g_h * gate
            else:
                gx = g_h
            gv = g_h
            if ADAPTIVE:
                ga = ga * th_alpha + tl.where(raw >= v_l, g_vth, 0.0)
        tl.store(gx_ptr + t * step + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        h = h_prev
        s = s_prev

    if GRAD_V0:
        tl.store(gv0_ptr + offs, gv, mask=mask)
    if GRAD_A0:
        tl.store(ga0_ptr + offs, ga, mask=mask)
    if LEARN:
        pid = tl.program_id(0)
        tl.store(gp_ptr + pid * 2, tl.sum(tl.sum(tl.where(mask, gp0, 0.0), axis=1), axis=0))
        tl.store(gp_ptr + pid * 2 + 1, tl.sum(tl.sum(tl.where(mask, gp1, 0.0), axis=1), axis=0))


# --------------------------------------------------------------------------------------------- #
# Launchers
# --------------------------------------------------------------------------------------------- #


def _scalars(spec: NeuronSpec):
    v_reset = spec.v_reset if spec.reset_mode == RESET_HARD else 0.0
    return dict(
        v_th=float(spec.v_threshold), v_reset=float(v_reset), v_init=float(spec.v_init),
        v_l=float(spec.v_l), dv=float(spec.dv),
        th_alpha=float(spec.v_th_alpha), th_beta=float(spec.v_th_beta), th_incre=float(spec.v_th_incre),
    )


def _as_trl(t: torch.Tensor, R: int) -> torch.Tensor:
    """View ``[T, *S]`` as ``[T, R, L]`` (contiguous)."""
    return t.contiguous().view(t.shape[0], R, t.shape[-1])


def _launch_shape(R: int, L: int, device: torch.device, *dtypes, packed: bool = True,
                  max_block: Optional[int] = None, max_vectors: Optional[int] = None):
    """Kernel view, divisibility hint and tiles of ``[R, L]`` neurons per step: a dict of the kernel
    arguments ``R, L_div, LB, L_MULT, E, BLOCK_R, BLOCK_L, num_warps`` and the grid."""
    Rk, Lk, l_mult, E = _plan(R, L, _vec(*dtypes), packed)
    block_r, block_l, programs, num_warps = _tiles(Rk, Lk, E, device, max_block=max_block, max_vectors=max_vectors)
    args = dict(R=Rk, L_div=Lk // l_mult, LB=triton.cdiv(Lk, 8), L_MULT=l_mult, E=E,
                BLOCK_R=block_r, BLOCK_L=block_l, num_warps=num_warps)
    return args, (programs,)


def neuron_forward(
    x_seq: torch.Tensor,
    v0: Optional[torch.Tensor],
    a0: Optional[torch.Tensor],
    ref0: Optional[torch.Tensor],
    params: torch.Tensor,
    spec: NeuronSpec,
    store: bool,
    h_dtype: Optional[torch.dtype] = None,
    write_spikes: bool = True,
):
    """Launch the forward kernel.

    ``x_seq [T, *S]`` float; states ``[*S]`` (v0/a0 fp32, ref0 int32) or None; ``params`` fp32.
    Returns ``(spikes, v_last, a_last, ref_last, saved)`` where ``saved`` is
    ``(h, bits, vth, gate, floor)`` (None entries where not needed; all None unless ``store``, except
    ``bits``, also written when ``write_spikes`` is False: the packed spikes are then the output and
    ``spikes`` is None); ``h`` is kept in ``h_dtype`` (default: the input dtype). ``a_last``/``ref_last`` are None
    unless the spec is adaptive/refractory.
    """
    T = x_seq.shape[0]
    S = x_seq.shape[1:]
    L = S[-1]
    R = math.prod(S[:-1])
    LB = triton.cdiv(L, 8)
    dev = x_seq.device
    x = _as_trl(x_seq, R)
    spikes = torch.empty_like(x) if write_spikes else None
    write_bits = store or not write_spikes
    v_last = torch.empty((R, L), device=dev, dtype=torch.float32)
    a_last = torch.empty((R, L), device=dev, dtype=torch.float32) if spec.adaptive else None
    ref_last = torch.empty((R, L), device=dev, dtype=torch.int32) if spec.refractory else None
    h = bits = vth = gate = floor = None
    if write_bits:
        bits = torch.empty((T, R, LB), device=dev, dtype=torch.uint8)
    if store:
        h = torch.empty_like(x, dtype=h_dtype or x.dtype)
        if spec.adaptive:
            vth = torch.empty((T, R, L), device=dev, dtype=torch.float32)
        if spec.refractory:
            gate = torch.empty((T, R, LB), device=dev, dtype=torch.uint8)
        if spec.has_floor:
            floor = torch.empty((T, R, LB), device=dev, dtype=torch.uint8)
    dummy = v_last  # placeholder for pointers a constexpr flag keeps unread/unwritten
    v0c = v0.contiguous().view(R, L) if v0 is not None else None
    a0c = a0.contiguous().view(R, L) if (a0 is not None and spec.adaptive) else None
    ref0c = ref0.contiguous().view(R, L) if (ref0 is not None and spec.refractory) else None
    if T > 0 and R * L > 0:
        shape, grid = _launch_shape(R, L, dev, x.dtype, *((h.dtype,) if h is not None else ()), packed=write_bits)
        _neuron_fwd_kernel[grid](
            x, _or(v0c, dummy), _or(a0c, dummy), _or(ref0c, dummy), params,
            _or(spikes, dummy), _or(h, dummy), _or(bits, dummy), _or(vth, dummy), _or(gate, dummy), _or(floor, dummy),
            v_last, _or(a_last, dummy), _or(ref_last, dummy),
            T, **shape, **_scalars(spec), ref_len=int(spec.ref_len),
            FAMILY=spec.family, DECAY_INPUT=spec.decay_input, RESET_MODE=spec.reset_mode,
            ADAPTIVE=spec.adaptive, REFRACTORY=spec.refractory, HAS_FLOOR=spec.has_floor,
            HAS_V0=v0c is not None, HAS_A0=a0c is not None, HAS_REF0=ref0c is not None,
            STORE=store, WRITE_SPIKES=write_spikes, WRITE_BITS=write_bits,
        )
    elif T == 0:  # no step: the state passes through
        v_last = v0c.float().clone() if v0c is not None else torch.full((R, L), spec.v_init, device=dev)
        if a_last is not None:
            a_last = a0c.float().clone() if a0c is not None else torch.zeros((R, L), device=dev)
        if ref_last is not None:
            ref_last = ref0c.clone() if ref0c is not None else torch.zeros((R, L), dtype=torch.int32, device=dev)
    return (
        spikes.view(x_seq.shape) if spikes is not None else None,
        v_last.view(S),
        a_last.view(S) if a_last is not None else None,
        ref_last.view(S) if ref_last is not None else None,
        (h, bits, vth, gate, floor),
    )


def neuron_backward(
    grad_spikes: torch.Tensor,
    grad_v_last: Optional[torch.Tensor],
    grad_a_last: Optional[torch.Tensor],
    saved,
    v0: Optional[torch.Tensor],
    params: torch.Tensor,
    spec: NeuronSpec,
    need_v0: bool,
    need_a0: bool,
    need_params: bool,
):
    """Launch the backward kernel. Returns ``(grad_x [T, *S] in the dtype of h, grad_v0 fp32 or None,
    grad_a0 fp32 or None, grad_params fp32 [n_params] or None)``."""
    h, bits, vth, gate, floor = saved
    T, R, L = h.shape
    S = grad_spikes.shape[1:]
    gs = _as_trl(grad_spikes, R)
    gx = torch.empty_like(h, dtype=grad_spikes.dtype)  # the input's dtype (h may be kept in fp32)
    gv0 = torch.empty((R, L), device=h.device, dtype=torch.float32) if need_v0 else None
    need_a0 = need_a0 and spec.adaptive
    ga0 = torch.empty((R, L), device=h.device, dtype=torch.float32) if need_a0 else None
    gaT = grad_a_last.contiguous().view(R, L) if (grad_a_last is not None and spec.adaptive) else None
    shape, grid = _launch_shape(R, L, h.device, h.dtype, gs.dtype, max_vectors=_BWD_VECTORS)
    assert shape["LB"] * shape["R"] == bits.shape[-1] * R  # the row layout the forward wrote
    gp = torch.empty((grid[0], 2), device=h.device, dtype=torch.float32) if need_params else None
    gvT = grad_v_last.contiguous().view(R, L) if grad_v_last is not None else None
    v0c = v0.contiguous().view(R, L) if v0 is not None else None
    dummy = gx
    _neuron_bwd_kernel[grid](
        gs, _or(gvT, dummy), _or(gaT, dummy), h, bits, _or(vth, dummy), _or(gate, dummy), _or(floor, dummy), _or(v0c, dummy), params,
        gx, _or(gv0, dummy), _or(ga0, dummy), _or(gp, dummy),
        T, **shape, **_scalars(spec), sg_alpha=float(spec.surrogate.alpha),
        FAMILY=spec.family, DECAY_INPUT=spec.decay_input, RESET_MODE=spec.reset_mode,
        DETACH_RESET=spec.detach_reset, SG_ID=spec.surrogate.id,
        ADAPTIVE=spec.adaptive, REFRACTORY=spec.refractory, HAS_FLOOR=spec.has_floor,
        HAS_V0=v0c is not None, HAS_GVT=gvT is not None, GRAD_V0=need_v0,
        LEARN=need_params, HAS_GAT=gaT is not None, GRAD_A0=need_a0,
    )
    gp_sum = gp.sum(0)[: spec.n_params] if need_params else None
    return (
        gx.view((T,) + tuple(S)),
        gv0.view(S) if gv0 is not None else None,
        ga0.view(S) if ga0 is not None else None,
        gp_sum,
    )


def _or(t, default):
    return t if t is not None else default
