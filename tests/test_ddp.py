"""DDP: two optimizer steps of a small spiking model under torch.distributed (gloo, 2 CPU processes,
each on half of the batch) give the parameters of one process training on the full batch.

DDP averages the gradients of the two halves; with a loss that is a mean over equally sized halves
that is the full-batch gradient, up to the order of fp32 sums. Measured (2026-11-22, CPU): largest
parameter difference 6e-8 absolute (0 for the PLIFs' w), bound 1e-6; training on one half only
ends 1.2e-2 away from the full batch (asserted > 1e-3), so a missing all-reduce fails the test.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import spiketriton as st

KINDS = ("LIF", "PLIF")  # Linear -> LIF -> SpikeLinear -> LIF, and the same with PLIF (w is synced)
STEPS, T, B = 2, 4, 8
ATOL = 1e-6
# the PyTorch path: the same custom ops and autograd as the Triton kernels, without the Triton
# interpreter (+0.1 s per training step and model, measured on 2 cores: 0.33 s vs 0.12 s for two
# steps); this test is about the process group, the gradient all-reduce and the parameters
BACKEND = "torch"


def build(kind):
    torch.manual_seed(0)
    neuron = (lambda: st.LIF(tau=2.0, backend=BACKEND)) if kind == "LIF" else \
        (lambda: st.PLIF(init_tau=2.0, backend=BACKEND))
    net = nn.Sequential(nn.Linear(8, 24), neuron(), st.SpikeLinear(24, 6, backend=BACKEND), neuron())
    with torch.no_grad():  # both neuron layers fire
        net[0].weight.mul_(2.0)
        net[2].weight.mul_(3.0)
        net[2].bias.add_(0.5)
    return net


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, T, B, 8, generator=g), torch.rand(STEPS, B, 6, generator=g)


def train(model, x, target):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(STEPS):
        st.reset(model)
        opt.zero_grad()
        rate = model(x[step]).mean(0)                   # firing rate [B, 6]
        loss = ((rate - target[step]) ** 2).mean()      # a mean over the (half) batch
        loss.backward()
        opt.step()
    st.reset(model)
    net = model.module if isinstance(model, DDP) else model
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _worker(rank, world, port, path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, target = data()
        half = slice(rank * B // world, (rank + 1) * B // world)
        out = {kind: train(DDP(build(kind)), x[:, :, half], target[:, half]) for kind in KINDS}
        if rank == 0:
            torch.save(out, path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo")
def test_ddp_two_processes_equal_one_process_full_batch(tmp_path):
    path = str(tmp_path / "ddp.pt")
    # the children inherit TRITON_INTERPRET from conftest (set before spiketriton is imported there)
    mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    got = torch.load(path, weights_only=True)
    x, target = data()
    for kind in KINDS:
        init = build(kind).state_dict()
        full = train(build(kind), x, target)
        one_half = train(build(kind), x[:, :, : B // 2], target[:, : B // 2])
        assert got[kind].keys() == full.keys()
        if kind == "PLIF":
            assert (full["1.w"] - init["1.w"]).abs().item() > 1e-4  # the neuron parameter trained and was synced
        for k in full:
            torch.testing.assert_close(got[kind][k], full[k], rtol=0, atol=ATOL, msg=f"{kind} {k}")
        moved = max((one_half[k] - full[k]).abs().max().item() for k in full)
        assert moved > 1e-3, moved
