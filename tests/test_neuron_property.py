"""Property test: random shapes and option combinations, both implementations vs the reference."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("hypothesis", reason="hypothesis is a dev dependency (installed by .ci/run); a bare GPU image lacks it")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spiketriton import surrogate as sg  # noqa: E402
from spiketriton.spec import FAMILY_A, FAMILY_B, NeuronSpec

from helpers import Case, check_case  # noqa: E402

shapes = st.tuples(
    st.integers(1, 6),                                   # T
    st.lists(st.integers(1, 9), min_size=1, max_size=3),  # batch + features (last dim 1..9)
).map(lambda t: (t[0], *t[1]))


@st.composite
def cases(draw):
    family = draw(st.sampled_from([FAMILY_A, FAMILY_B]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    # with bf16 the surrogate is evaluated at H rounded to bf16: Rect's jump at its window edge then
    # changes the gradient where rounding crosses it (pinned down in test_neuron_kernels.py)
    choices = sg.ALL if dtype == torch.float32 else [c for c in sg.ALL if c is not sg.Rect]
    surrogate = draw(st.sampled_from(choices))(draw(st.sampled_from([0.5, 1.0, 2.0])))
    mode = draw(st.sampled_from([0, 1] if family == FAMILY_A else [0, 1, 2]))
    v_reset = draw(st.sampled_from([0.0, -0.3, 0.2])) if mode == 0 else 0.0
    adaptive = family == FAMILY_B and draw(st.booleans())
    spec = NeuronSpec(
        family=family, surrogate=surrogate, v_threshold=draw(st.sampled_from([0.5, 1.0])),
        v_reset=v_reset, reset_mode=mode, detach_reset=draw(st.booleans()),
        decay_input=draw(st.booleans()), v_init=v_reset,
        v_l=draw(st.sampled_from([-math.inf, -0.6])) if family == FAMILY_B else -math.inf,
        dv=0.2, ref_len=draw(st.integers(0, 2)) if family == FAMILY_B else 0,
        v_th_alpha=0.8 if adaptive else 1.0, v_th_incre=0.3 if adaptive else 0.0,
    )
    # k = 0 only exists without decay_input (IF): LIF/PLIF have k = 1/tau in (0, 1)
    k_choices = [0.25, 0.6] if spec.decay_input else [0.0, 0.25, 0.6]
    params = torch.tensor([draw(st.sampled_from(k_choices))]) if family == FAMILY_A else torch.tensor(
        [draw(st.sampled_from([1.0, 0.7])), draw(st.sampled_from([0.0, 0.05]))])
    return Case(spec, params, draw(shapes), dtype=dtype,
                carry_v=draw(st.booleans()), carry_a=adaptive, carry_ref=spec.refractory,
                seed=draw(st.integers(0, 2**16)))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), backend=st.sampled_from(["triton", "torch"]))
def test_random_cases_match_reference(case, backend):
    check_case(case, backend, "cuda" if torch.cuda.is_available() else "cpu")
