"""Hybrid Units connecting ANN and SNN parts of one network (``Y = Q(F(H(W(X))))``)."""

from .units import (
    A2SLatency, A2SLearnable, A2SPoisson, A2SRate, HybridUnit, RepeatWindow, S2AGlobalRate, S2ALearnable,
    S2AWindowRate, SplitWindow, TemporalFilter,
)

__all__ = [
    "HybridUnit", "RepeatWindow", "SplitWindow", "TemporalFilter",
    "A2SRate", "A2SPoisson", "A2SLatency", "A2SLearnable", "S2AGlobalRate", "S2AWindowRate", "S2ALearnable",
]
