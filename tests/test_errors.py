"""Bad input gets a clear error naming what was wrong and what was expected."""

from __future__ import annotations

import pytest
import torch

import spiketriton as st
from spiketriton import functional as F


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_integer_or_bool_input(dtype):
    with pytest.raises(TypeError, match=r"x_seq must be a floating tensor .* got torch\.(int|uint|bool)"):
        st.LIF()(torch.zeros(3, 2, 4, dtype=dtype))


@pytest.mark.parametrize("shape", [(5,), ()])
def test_too_few_dimensions(shape):
    with pytest.raises(ValueError, match=r"at least 2 dimensions \[T, B, \*features\]"):
        F.lif(torch.zeros(shape))


def test_not_a_tensor():
    with pytest.raises(TypeError, match="x_seq must be a torch.Tensor"):
        st.IF()([[0.0, 1.0]])


@pytest.mark.parametrize("tau", [1.0, 0.5, -2.0])
def test_tau_at_most_one(tau):
    with pytest.raises(ValueError, match=r"tau must be > 1"):
        st.LIF(tau=tau)
    with pytest.raises(ValueError, match=r"tau must be > 1"):
        F.lif(torch.zeros(2, 1, 1), tau=tau)
    with pytest.raises(ValueError, match=r"init_tau must be > 1"):
        st.PLIF(init_tau=tau)


@pytest.mark.parametrize("bad", ["sigmoid", torch.sigmoid, None.__class__])
def test_unknown_surrogate(bad):
    with pytest.raises(TypeError, match=r"unknown surrogate .* expected an instance of spiketriton\.surrogate\."):
        st.LIF(surrogate=bad)


def test_state_from_another_batch_size():
    with pytest.raises(ValueError, match=r"carried-in v has shape \(3, 4\) but x_seq \[T, \*S\] needs S = \(2, 4\)"):
        F.lif(torch.zeros(2, 2, 4), torch.zeros(3, 4))


def test_mismatched_devices():
    x = torch.zeros(2, 2, 4, device="meta")
    with pytest.raises(ValueError, match=r"v is on cpu but x_seq is on meta"):
        F.lif(x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"parameters are on cpu but x_seq is on meta"):
        st.PLIF()(x)  # its learnable w stays where the module is


def test_triton_where_it_cannot_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.zeros(2, 2, 4)  # a CPU tensor without the interpreter
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run here: the tensors are on cpu"):
        F.lif(x, backend="triton")
    # "auto" is not an error: it takes the PyTorch path
    assert F.lif(x, backend="auto")[0].shape == x.shape


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"):
        F.lif(torch.zeros(2, 1, 1), backend="cuda")


def test_float64_on_triton(device):
    with pytest.raises(TypeError, match="Triton kernels take float32, float16 or bfloat16 input, got torch.float64"):
        F.lif(torch.zeros(2, 1, 3, dtype=torch.float64, device=device), backend="triton")


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        (dict(reset_mode="medium"), ValueError, "unknown reset_mode 'medium'"),
        (dict(ref_len=-1), ValueError, r"ref_len must be an integer in \[0, 2\^31\)"),
        (dict(ref_len=1.5), ValueError, r"ref_len must be an integer in \[0, 2\^31\)"),
        (dict(ref_len=2**40), ValueError, r"ref_len must be an integer in \[0, 2\^31\)"),
        (dict(v_th0=float("nan")), ValueError, "v_th0 must be finite"),
        (dict(v_th0="high"), TypeError, "v_th0 must be a real number"),
        (dict(surrogate="rect"), TypeError, "unknown surrogate"),
    ],
)
def test_extended_lif_options(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        st.ExtendedLIF(**{"v_th0": 1.0, **kwargs})


def test_extended_lif_state():
    x = torch.zeros(2, 1, 3)
    with pytest.raises(TypeError, match=r"state must be an ExtendedLIFState"):
        F.extended_lif(x, torch.zeros(1, 3), v_th0=1.0)
    bad = F.ExtendedLIFState(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3))  # float counter
    with pytest.raises(TypeError, match=r"ref_cnt must be an integer tensor"):
        F.extended_lif(x, bad, v_th0=1.0, ref_len=1)


def test_plif_weight():
    with pytest.raises(TypeError, match="w must be a one-element floating tensor"):
        F.plif(torch.zeros(2, 1, 3), 0.5)


def test_nonfinite_threshold():
    with pytest.raises(ValueError, match="v_threshold must be finite"):
        st.IF(v_threshold=float("inf"))
