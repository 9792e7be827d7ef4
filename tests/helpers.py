"""Shared oracle checks: run an implementation and the float64 autograd reference on the same
inputs and the same random upstream gradients, then compare spikes, state and every gradient."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import torch

from spiketriton.kernels import neuron_cpu
from spiketriton.functional.neuron import run_neuron
from spiketriton.reference import neuron_reference
from spiketriton.spec import NeuronSpec

# Relative error ||got - want|| / ||want|| allowed for the input and carried-state gradients, by input
# dtype, set ~3-10x above the worst case measured over this suite (2026-11-22, CPU, both backends):
#   fp32 2.5e-7 | fp16 6.3e-4 | bf16 9.4e-3 (Triton interpreter) / 4.2e-3 (torch path).
# fp32 differs from the fp64 oracle by rounding only; fp16/bf16 keep H in that dtype for backward
# (the surrogate is evaluated at a rounded H) and return grad_x in that dtype. The Triton
# interpreter truncates fp32->bf16 instead of rounding to nearest even (compiled Triton rounds), which
# doubles its bf16 error. A wrong or missing term gives errors of order 1 in the affected elements.
GRAD_RTOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}
# Parameter gradients are sums over every neuron-step with cancellation; measured worst cases
#   fp32 1.7e-5 | fp16 1.1e-3 | bf16 1.5e-2.
PARAM_RTOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 4e-2}
# The forward computes in fp32 from the same (upcast) inputs for every dtype.
STATE_ATOL = 2e-5
# A spike may flip only where the reference H lies this close to the threshold.
FLIP_EPS = 1e-4


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / (||want|| + sqrt(n))``: relative for large gradients, with an absolute floor
    of one unit per element for tiny tensors whose few entries may cancel (the upstream gradients
    are unit-variance, so the gradients checked here are O(1) quantities)."""
    got, want = got.double(), want.double()
    return (got - want).norm().item() / (want.norm().item() + want.numel() ** 0.5)


@dataclasses.dataclass
class Case:
    spec: NeuronSpec
    params: torch.Tensor           # fp32, gradient is checked when learn=True
    shape: tuple                   # [T, *S]
    dtype: torch.dtype = torch.float32
    carry_v: bool = True
    carry_a: bool = False
    carry_ref: bool = False
    learn: bool = True
    noncontig: bool = False
    seed: int = 0


def make_inputs(case: Case, device):
    g = torch.Generator().manual_seed(case.seed)
    T, *S = case.shape
    # currents centred near the threshold so that every branch (fire / no fire, reset) is taken
    x = torch.randn(case.shape, generator=g) * 0.8 + 0.45
    if case.noncontig:
        # same values, laid out transposed in memory (last two dims swapped)
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not x.is_contiguous()
    x = x.to(case.dtype).to(device)
    v0 = (torch.randn(S, generator=g) * 0.5).to(device) if case.carry_v else None
    a0 = (torch.rand(S, generator=g) * 0.3).to(device) if case.carry_a else None
    r0 = torch.randint(0, 3, S, generator=g, dtype=torch.int32).to(device) if case.carry_ref else None
    gs = torch.randn(case.shape, generator=g).to(case.dtype).to(device)
    gv = torch.randn(S, generator=g).to(device)
    ga = torch.randn(S, generator=g).to(device)
    return x, v0, a0, r0, gs, gv, ga


def resolve_backend(backend: str):
    """``(backend, context)``: the test backend "torch-ops" is the PyTorch path with the fused CPU neuron
    (kernels/neuron_cpu.py) switched off inside the context; the others pass through."""
    if backend == "torch-ops":
        return "torch", neuron_cpu.disabled()
    return backend, contextlib.nullcontext()


def check_case(case: Case, backend: str, device):
    backend, ctx = resolve_backend(backend)
    with ctx:
        _check_case(case, backend, device)


def _check_case(case: Case, backend: str, device):
    x, v0, a0, r0, gs, gv, ga = make_inputs(case, device)
    adaptive = case.spec.adaptive
    # implementation under test
    xi = x.clone().requires_grad_()
    vi = v0.clone().requires_grad_() if v0 is not None else None
    ai = a0.clone().requires_grad_() if a0 is not None else None
    pi = case.params.clone().to(device).requires_grad_(case.learn)
    s, v_last, a_last, ref_last = run_neuron(xi, vi, ai, r0, pi, case.spec, backend=backend)
    assert s.dtype == x.dtype and s.shape == x.shape
    assert v_last.dtype == torch.float32 and v_last.shape == x.shape[1:]
    # upstream gradients for the spikes, the final v and (when adapting) the final threshold state
    outs, grads = [s, v_last], [gs, gv]
    if adaptive:
        outs.append(a_last), grads.append(ga)
    torch.autograd.backward(outs, grads)
    # float64 oracle on the same (upcast) values
    xr = x.double().requires_grad_()
    vr = v0.double().requires_grad_() if v0 is not None else None
    ar = a0.double().requires_grad_() if a0 is not None else None
    pr = case.params.double().to(device).requires_grad_(case.learn)
    tr = neuron_reference(xr, vr, ar, r0, pr, case.spec)
    outs, grads = [tr.spikes, tr.v], [gs.double(), gv.double()]
    if adaptive:
        outs.append(tr.a), grads.append(ga.double())
    torch.autograd.backward(outs, grads)

    # spikes: exact, except where the reference H is within rounding of the threshold; a neuron
    # whose spike flipped follows another trajectory afterwards and is left out of the comparisons
    diff = s.double() != tr.spikes
    T = x.shape[0]
    flat_diff = diff.reshape(T, -1)
    diverged = flat_diff.any(0)
    n_div = int(diverged.sum())
    if n_div:
        first = flat_diff.float().argmax(0)
        idx = diverged.nonzero().squeeze(1)
        margin = (tr.h - tr.vth).reshape(T, -1)[first[idx], idx].abs()
        assert (margin <= FLIP_EPS).all(), f"spike flips away from the threshold: margins {margin.tolist()}"
    assert n_div <= max(1, diverged.numel() // 1000), f"{n_div} of {diverged.numel()} neurons flipped"
    keep = ~diverged.reshape(x.shape[1:])

    torch.testing.assert_close(v_last[keep].double(), tr.v[keep], atol=STATE_ATOL, rtol=0)
    if case.spec.adaptive:
        torch.testing.assert_close(a_last[keep].double(), tr.a.detach()[keep], atol=STATE_ATOL, rtol=0)
    if case.spec.refractory:
        assert torch.equal(ref_last[keep], tr.ref[keep])

    tol = GRAD_RTOL[case.dtype]
    assert xi.grad.dtype == x.dtype
    assert rel_err(xi.grad[:, keep], xr.grad[:, keep]) <= tol, f"grad x: {rel_err(xi.grad[:, keep], xr.grad[:, keep]):.3g}"
    if v0 is not None:
        assert rel_err(vi.grad[keep], vr.grad[keep]) <= tol, f"grad v0: {rel_err(vi.grad[keep], vr.grad[keep]):.3g}"
    if a0 is not None and adaptive:
        assert rel_err(ai.grad[keep], ar.grad[keep]) <= tol, f"grad a0: {rel_err(ai.grad[keep], ar.grad[keep]):.3g}"
    if case.learn and n_div == 0:
        # parameters gather every neuron; compared when no neuron diverged
        assert rel_err(pi.grad, pr.grad) <= PARAM_RTOL[case.dtype], f"grad params: {pi.grad.tolist()} vs {pr.grad.tolist()}"
    return n_div


def calibrated(model, x, backend=None, **cfg):
    """``quant.prepare(model, **cfg)`` through the calibration flow on ``x`` (collect_q_params, one
    forward, reset, calculate_q_params): in float mode, ``.quantize()`` / ``.aware()`` next. ``backend``
    sets every module's backend (None: the modules' own default)."""
    from spiketriton import quant

    q = quant.prepare(model, **cfg)
    if backend is not None:
        for m in q.modules():
            if hasattr(m, "backend"):
                m.backend = backend
    q.collect_q_params()
    with torch.no_grad():
        q(x)
    q.reset()
    q.calculate_q_params()
    return q


def rewrite_quantized(path, out, tensors=None, meta=None, drop=(), sign=True, metadata=None):
    """A copy of ``path`` with tensors replaced / dropped and manifest fields replaced; with ``sign`` the
    tensor table and both checksums are recomputed (a crafted file that passes the checksums)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from spiketriton.export.chip import manifest_digest, tensor_digest
    from spiketriton.quant.model import _digest_arrays, _dtype_name

    with safe_open(str(path), "pt") as f:
        m = json.loads(f.metadata()["spiketriton"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    t.update(tensors or {})
    for k in drop:
        del t[k]
    if sign:
        m["tensors"] = {k: {"dtype": _dtype_name(v), "shape": list(v.shape)} for k, v in t.items()}
        m["tensor_sha256"] = tensor_digest(_digest_arrays(t))
    m.update(meta or {})
    if sign:
        m["manifest_sha256"] = manifest_digest(m)
    save_file(t, str(out), metadata=metadata if metadata is not None else {"spiketriton": json.dumps(m)})
    return out


def run_fresh(net, x):
    """``net(x)`` from a reset state without gradient, state reset after; packed output made dense."""
    import spiketriton as st

    st.reset(net)
    with torch.no_grad():
        y = net(x)
    st.reset(net)
    return y.to_dense() if isinstance(y, st.SpikeTensor) else y
