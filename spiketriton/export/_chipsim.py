"""The chip's integer operations in plain numpy int64: the simulator behind ``ChipProgram.run``.

Deliberately independent of spiketriton's torch code paths and Triton kernels (it imports neither):
it is a second implementation of the integer semantics, so that a chip file is checked against the
quantized model by two programs that share no code. The neuron follows the quantized family-B
recurrence documented in ``spiketriton/reference/neuron_int.py`` (the spec); everything here works
on int64 arrays, where every intermediate value is exact (int8 x int8 products summed over at most
2^24 inputs stay far below 2^63).
"""

from __future__ import annotations

import numpy as np

INT28_MIN = -(1 << 27)
INT28_MAX = (1 << 27) - 1
INPUT_QMAX = 127  # the encoding layer's input is symmetric int8

# im2col buffers are built for this many int64 elements at a time at most (chunks of samples):
# 2^24 elements = 128 MiB, well inside the memory of the machines this runs on.
IM2COL_CHUNK_ELEMENTS = 1 << 24


def sat(x: np.ndarray) -> np.ndarray:
    """Saturate to int28."""
    return np.clip(x, INT28_MIN, INT28_MAX)


def quantize_input(x: np.ndarray, input_scale: float) -> np.ndarray:
    """An encoding layer's input as int8 values: ``clamp(round(x * input_scale), -127, 127)`` in float64,
    round half to even (as ``torch.round``); +-inf clamp to +-127."""
    y = np.rint(x.astype(np.float64) * np.float64(input_scale))
    return np.clip(y, -INPUT_QMAX, INPUT_QMAX).astype(np.int64)


def linear(x: np.ndarray, w: np.ndarray, b) -> np.ndarray:
    """``x [N, ..., K] @ w[O, K].T + b``, int64, saturated to int28 (after the bias, as the model)."""
    u = np.matmul(x.astype(np.int64, copy=False), w.T)
    if b is not None:
        u += b
    return sat(u)


def _windows(x: np.ndarray, kernel, stride, padding, dilation) -> np.ndarray:
    """``x [N, C, H, W]`` -> zero-padded sliding windows ``[N, C, Ho, Wo, kh, kw]`` (a view, no copy)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else x
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]


def _chunks(n: int, per_sample: int):
    """Slices of ``n`` samples, each slice needing at most ``IM2COL_CHUNK_ELEMENTS`` of work memory
    (``per_sample`` int64 elements per sample; one sample per slice at least)."""
    step = max(1, IM2COL_CHUNK_ELEMENTS // max(1, per_sample))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)] or [slice(0, 0)]


def _padded(shape, padding) -> int:
    """Elements of one zero-padded sample ``[C, H + 2 ph, W + 2 pw]`` (np.pad allocates them)."""
    C, H, W = shape
    return C * (H + 2 * padding[0]) * (W + 2 * padding[1])


def conv2d(x: np.ndarray, w: np.ndarray, b, stride, padding, dilation, groups: int) -> np.ndarray:
    """Integer convolution by im2col: ``x [N, C, H, W]``, ``w [O, C/groups, kh, kw]`` -> int28 ``[N, O, Ho, Wo]``."""
    x = x.astype(np.int64, copy=False)
    N, C = x.shape[:2]
    O, Cg, kh, kw = w.shape
    G, Og = groups, O // groups
    wg = w.reshape(G, Og, Cg * kh * kw).transpose(0, 2, 1)  # [G, Cg*kh*kw, Og]
    outs = []
    im2col = C * kh * kw * _out_hw(x.shape[2:], (kh, kw), stride, padding, dilation)
    for part in _chunks(N, _padded(x.shape[1:], padding) + im2col):  # the padded chunk and its im2col
        win = _windows(x[part], (kh, kw), stride, padding, dilation)  # [n, C, Ho, Wo, kh, kw]
        n, _, Ho, Wo = win.shape[:4]
        cols = win.reshape(n, G, Cg, Ho, Wo, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)  # [G, n, Ho, Wo, Cg, kh, kw]
        cols = cols.reshape(G, n * Ho * Wo, Cg * kh * kw)
        y = np.matmul(cols, wg)  # [G, n*Ho*Wo, Og]
        outs.append(y.reshape(G, n, Ho, Wo, Og).transpose(1, 0, 4, 2, 3).reshape(n, O, Ho, Wo))
    u = np.concatenate(outs) if len(outs) > 1 else outs[0]
    if b is not None:
        u += b.reshape(-1, 1, 1)
    return sat(u)


def _out_hw(hw, kernel, stride, padding, dilation) -> int:
    out = 1
    for size, k, s, p, d in zip(hw, kernel, stride, padding, dilation):
        out *= (size + 2 * p - d * (k - 1) - 1) // s + 1
    return out


def sum_pool2d(x: np.ndarray, kernel, stride, padding) -> np.ndarray:
    """Sum pooling of integers (spike counts): ``x [N, C, H, W]`` -> int64 ``[N, C, Ho, Wo]``, zero
    padding, floor mode.

    By a summed-area table (2-D prefix sums): each window is 4 lookups, so the work is linear in the
    padded input whatever the kernel (summing every window's elements costs ``kh * kw`` per output).
    Exact in int64: the prefix sums of spike counts stay far below 2^63.
    """
    x = x.astype(np.int64, copy=False)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x.shape
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    rows = (slice(0, sh * (Ho - 1) + 1, sh), slice(kh, kh + sh * (Ho - 1) + 1, sh))  # window starts, ends
    cols = (slice(0, sw * (Wo - 1) + 1, sw), slice(kw, kw + sw * (Wo - 1) + 1, sw))
    outs = []
    for part in _chunks(N, C * (H + 2 * ph + 1) * (W + 2 * pw + 1) + 2 * C * Ho * Wo):
        # P[i, j] = sum of the padded input's rows < i and columns < j
        P = np.zeros((part.stop - part.start, C, H + 2 * ph + 1, W + 2 * pw + 1), np.int64)
        P[:, :, 1 + ph:1 + ph + H, 1 + pw:1 + pw + W] = x[part]
        np.cumsum(P, axis=2, out=P)
        np.cumsum(P, axis=3, out=P)
        (r0, r1), (c0, c1) = rows, cols
        out = P[:, :, r1, c1] - P[:, :, r0, c1]
        out -= P[:, :, r1, c0]
        out += P[:, :, r0, c0]
        outs.append(out)
    return np.concatenate(outs) if len(outs) > 1 else outs[0]


def or_pool2d(x: np.ndarray, kernel, stride, padding) -> np.ndarray:
    """Max pooling of spikes (0/1): the OR of each window, uint8 ``[N, C, Ho, Wo]``; zero padding, floor
    mode. A window's OR is 1 exactly where its sum is > 0 (spikes are never negative)."""
    return (sum_pool2d(x, kernel, stride, padding) > 0).astype(np.uint8)


def readout(u: np.ndarray, scale: np.ndarray, dtype) -> np.ndarray:
    """A layer that feeds no neuron returns real units: ``(u / S)`` in float64, then cast (as the model)."""
    return cast_like_torch(u.astype(np.float64) / scale, dtype)


def cast_like_torch(y: np.ndarray, dtype) -> np.ndarray:
    """float64 ``y`` to ``dtype`` (float16, float32 or float64) exactly as torch's ``Tensor.to`` does.

    torch converts float64 to float16 through float32 (two roundings to nearest even), numpy's
    ``astype(float16)`` rounds once: they differ where the float32 rounding lands on a float16
    halfway point (a hair above 25.5078125, halfway between 25.5 and 25.515625: float32 rounds it to
    the halfway point, which ties to the even 25.5; one rounding gives 25.515625). Values beyond the
    range become +-inf in both.
    """
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore"):
        if dtype == np.float16:
            y = y.astype(np.float32)
        return y.astype(dtype)


def neuron_steps(u_seq: np.ndarray, v: np.ndarray, a: np.ndarray, ref: np.ndarray, c: dict, reset_mode: str):
    """The quantized family-B neuron over ``u_seq [T, B, ...]`` (int64), state ``v, a, ref [B, ...]``.

    ``c``: v_th0, v_reset, v_l, dv, beta_q, v_th_beta_q, v_th_incre as ints or int64 arrays that
    broadcast against the state (per-channel constants); alpha_q, v_th_alpha_q, ref_len as ints.
    Per step (``fl(x, q) = floor(x * q / 256)`` by an arithmetic shift, ``sat`` to int28)::

        vth = max(sat(v_th0 + a), v_l)
        v'  = sat(u * (ref == 0) + v);  s = v' > vth
        v'' = v_reset | sat(v' - vth) | sat(v' - dv)  where s (hard | soft | soft_constant), else v'
        v   = max(sat(fl(v'', alpha_q) + beta_q), v_l)
        a   = sat(fl(a, v_th_alpha_q) + v_th_beta_q + s * v_th_incre)
        ref = ref_len where s, else max(ref - 1, 0)

    With v_th_beta_q = v_th_incre = 0, ``a`` stays 0; with ref_len = 0, ``ref`` stays 0: the
    adaptive threshold and the refractory period need no separate switches.
    Returns ``(spikes uint8 [T, B, ...], v, a, ref)``.
    """
    spikes = np.empty(u_seq.shape, dtype=np.uint8)
    for t in range(u_seq.shape[0]):
        vth = np.maximum(sat(c["v_th0"] + a), c["v_l"])
        h = sat(np.where(ref == 0, u_seq[t], 0) + v)
        s = h > vth
        if reset_mode == "hard":
            v2 = np.where(s, c["v_reset"], h)
        elif reset_mode == "soft":
            v2 = np.where(s, sat(h - vth), h)
        elif reset_mode == "soft_constant":
            v2 = np.where(s, sat(h - c["dv"]), h)
        else:  # the loader accepts only the three modes
            raise ValueError(f"unknown reset mode {reset_mode!r}")
        v = np.maximum(sat(((v2 * c["alpha_q"]) >> 8) + c["beta_q"]), c["v_l"])
        a = sat(((a * c["v_th_alpha_q"]) >> 8) + c["v_th_beta_q"] + s * c["v_th_incre"])
        ref = np.where(s, c["ref_len"], np.maximum(ref - 1, 0))
        spikes[t] = s
    return spikes, v, a, ref
