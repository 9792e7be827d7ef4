"""A hybrid network on scikit-learn's digits: ANN front-end -> A2S -> spiking layers -> S2A -> ANN head.

    python examples/hybrid_digits.py            # float training, then PTQ and QAT to int8

The ANN front-end (Linear + Sigmoid) turns pixels into rates in [0, 1]; a Hybrid Unit (A2SRate) encodes
them as spike trains over T steps; two spiking layers process them; another Hybrid Unit
(S2AGlobalRate) decodes firing rates; an ANN head classifies. The whole network trains end to end, and
spiketriton.quant.prepare() quantizes it (the spiking part runs in integers; the units sit between).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import spiketriton as st
from spiketriton import hybrid, quant
from spiketriton.demo import threads_for


class HybridNet(nn.Module):
    def __init__(self, T: int = 8, hidden: int = 128, backend: str = "auto"):
        super().__init__()
        self.front = nn.Sequential(nn.Linear(64, 64), nn.Sigmoid())      # ANN: pixels -> rates in [0, 1]
        self.a2s = hybrid.A2SRate(T)                                       # HU: rates -> spikes [T, B, 64]
        self.snn = nn.Sequential(nn.Linear(64, hidden), st.LIF(backend=backend), nn.Linear(hidden, hidden),
                                 st.LIF(backend=backend))
        self.s2a = hybrid.S2AGlobalRate()                                  # HU: spikes -> rates [B, hidden]
        self.head = nn.Linear(hidden, 10)                                  # ANN: rates -> logits

    def forward(self, x):
        return self.head(self.s2a(self.snn(self.a2s(self.front(x)))))


def load(seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    st.reset(model)
    return acc


def train(model, x, y, epochs, lr, seed=0):
    opt = torch.optim.Adam(model.parameters(), lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            st.reset(model)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="auto", choices=("auto", "triton", "torch"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on the CPU, where torch's default of one per core stalls "
                         "on a shared machine; 0: torch's default)")
    args = ap.parse_args(argv)
    with threads_for(args.threads, torch.device('cpu')) as threads:
        print(f"torch threads: {threads}")
        return _run(args)


def _run(args) -> dict:
    start = time.perf_counter()
    xtr, ytr, xte, yte = load(args.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        net = HybridNet(args.T, backend=args.backend)
    train(net, xtr, ytr, args.epochs, 1e-2, args.seed)
    fp = accuracy(net, xte, yte)
    print(f"float: test accuracy {fp:.2%}")
    q = quant.prepare(net)
    q.collect_q_params()
    accuracy(q, xtr, ytr)  # calibration forwards
    q.calculate_q_params()
    ptq = accuracy(q.quantize(), xte, yte)
    print(f"PTQ int8: test accuracy {ptq:.2%}")
    q.aware()
    train(q, xtr, ytr, args.qat_epochs, 2e-3, args.seed + 1)
    q.calculate_q_params()
    qat = accuracy(q.quantize(), xte, yte)
    print(f"QAT int8: test accuracy {qat:.2%} ({time.perf_counter() - start:.1f} s)")
    return {"float": fp, "ptq": ptq, "qat": qat, "model": net, "qmodel": q}


if __name__ == "__main__":
    main()
    sys.exit(0)
