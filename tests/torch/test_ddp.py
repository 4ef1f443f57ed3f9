"""DistributedDataParallel: replicas of a mixed ste / flip / float model stay identical.

Two processes on the gloo backend (CPU, 127.0.0.1) each build the model from a different
seed, wrap it in DDP (which broadcasts rank 0's parameters, stored latents and flip values
alike), and train 30 steps on different data. DDP averages the gradients, so Bop and Adam
see the same gradient on every rank and make the same moves. Under FSDP2 (``fully_shard``) the
latent methods train on shards (and Bop too: tests/torch/optim/test_bop_fsdp.py, which shares
this module's process launch).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import snapset
import snapset.torch as st

pytestmark = pytest.mark.slow  # two fresh Python processes that import torch: seconds

WORLD_SIZE = 2
STEPS = 30
TIMEOUT_S = 300  # a hung collective fails the test instead of stalling the suite


def mixed_model() -> nn.Sequential:
    """Ternary ste, {-1, 1} flip multiplier, {0, 1} flip, Ternary stochastic, float biases."""
    model = nn.Sequential(
        nn.Linear(8, 16),
        nn.ReLU(),
        st.Multiplier(16, snapset.Sign(), method="flip"),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 2),
    )
    st.constrain(model[0], "weight", snapset.Ternary(), "ste")
    st.constrain(model[3], "weight", snapset.Binary(), "flip")
    st.constrain(model[5], "weight", snapset.Ternary(), "stochastic")
    return model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train(rank: int, port: int, results: Any) -> None:
    with process_group(rank, port):
        torch.manual_seed(rank)  # different initial values on each rank: DDP must broadcast
        model = mixed_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        start = [p.detach().clone() for p in model.parameters()]
        groups = st.param_groups(model)
        bop = st.Bop(groups.flip, threshold=1e-4, gamma=0.1)
        adam = torch.optim.Adam(groups.latent + groups.other, lr=1e-2)
        tracker = st.FlipTracker(model)
        torch.manual_seed(1000 + rank)  # different data (and rounding noise) on each rank
        losses = []
        for _ in range(STEPS):
            x, y = torch.randn(32, 8), torch.randn(32, 2)
            loss = nn.functional.mse_loss(ddp(x), y)
            bop.zero_grad()
            adam.zero_grad()
            loss.backward()
            bop.step()
            adam.step()
            tracker.update()
            losses.append(loss.item())
        params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(params) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, params)
        if rank == 0:
            model.eval()
            results.put(
                {
                    "replicas_equal": all(torch.equal(gathered[0], g) for g in gathered),
                    "first_loss": losses[0],
                    "moved": [
                        not torch.equal(a, p)
                        for a, p in zip(start, model.parameters(), strict=True)
                    ],
                    "values": {name: c.values for name, c in st.named_constraints(model)},
                    # Plain lists: a tensor sent through a queue dies with its process.
                    "weights": {
                        name: model.get_submodule(name.rsplit(".", 1)[0]).weight.tolist()
                        for name, _ in st.named_constraints(model)
                    },
                    "flips": {name: sum(r) for name, r in tracker.flip_ratios().items()},
                }
            )
        else:
            results.put({"first_loss": losses[0]})


@contextmanager
def process_group(rank: int, port: int) -> Iterator[None]:
    """A gloo group on 127.0.0.1 for the body; then the rank's process ends at once.

    Two teardown faults of torch 2.13's gloo, worked around here (the body's results are
    already in the queue): the group is torn down with the GIL held, joining gloo's worker
    thread, which may still be freeing an all_gather's Python tensors and wait for the GIL (a
    deadlock): a barrier completes only once the work queued before it is done and released.
    And about one process in ten aborts at interpreter exit ("terminate called without an
    active exception", a C++ thread destroyed while joinable), so a rank that finished leaves
    through ``os._exit``. A rank whose body raised exits normally, so that mp.spawn reports it.
    """
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)


def run(worker: Any) -> list[dict[str, Any]]:
    """Start ``worker(rank, port, results)`` in WORLD_SIZE processes; return their reports."""
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    ranks = mp.spawn(worker, args=(free_port(), results), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not ranks.join(timeout=1):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish within {TIMEOUT_S} s: a hang in a collective")
    return [results.get() for _ in range(WORLD_SIZE)]


def test_ddp_replicas_stay_identical_and_in_their_sets() -> None:
    reports = run(train)
    report = next(r for r in reports if "replicas_equal" in r)
    # Different data on each rank, yet identical parameters after 30 steps.
    assert reports[0]["first_loss"] != reports[1]["first_loss"]
    assert report["replicas_equal"]
    assert all(report["moved"]), "every parameter should have trained"
    assert set(report["values"]) == {"0.weight", "2.weight", "3.weight", "5.weight"}
    for name, values in report["values"].items():
        weight = torch.tensor(report["weights"][name])
        assert torch.isin(weight, torch.tensor(values.values)).all(), name
        assert report["flips"][name] > 0, f"{name} never changed value"


def fit_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> None:
    """STEPS steps of regression on this rank's own random data (8 inputs, 2 outputs)."""
    torch.manual_seed(1000 + rank)
    for _ in range(STEPS):
        x, y = torch.randn(32, 8), torch.randn(32, 2)
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()


def train_fully_sharded(rank: int, port: int, results: Any) -> None:
    """FSDP2: latent methods train with Adam on shards."""
    from torch.distributed.fsdp import fully_shard

    with process_group(rank, port):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        model.append(nn.Linear(16, 2))
        for layer, method in zip(model[::2], ["ste", "stochastic", "gumbel"], strict=True):
            st.constrain(layer, "weight", snapset.Ternary(), method)
        fully_shard(model)
        start = [p.full_tensor() for p in model.parameters()]
        fit_sharded(model, torch.optim.Adam(model.parameters(), lr=1e-2), rank)
        model.eval()
        model.unshard()  # the whole tensors, to read the constrained values
        weights = [layer.weight.tolist() for layer in model[::2]]
        model.reshard()
        results.put(
            {
                "weights": weights,
                "moved": [
                    not torch.equal(a, p.full_tensor())
                    for a, p in zip(start, model.parameters(), strict=True)
                ],
            }
        )


def test_fully_shard_trains_latent_methods() -> None:
    for report in run(train_fully_sharded):
        for weight in report["weights"]:
            assert torch.isin(torch.tensor(weight), torch.tensor([-1.0, 0.0, 1.0])).all()
        assert all(report["moved"])


def train_bitnet_fully_sharded(rank: int, port: int, results: Any) -> None:
    """FSDP2 on a model that bitnet_ converted: absmean scales of the gathered weights."""
    from torch.distributed.fsdp import fully_shard

    with process_group(rank, port):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        model = st.bitnet_(model.append(nn.Linear(16, 2)), exclude=())
        fully_shard(model)
        fit_sharded(model, torch.optim.AdamW(model.parameters(), lr=1e-2), rank)
        model.eval()
        model.unshard()
        members = [(layer.weight / layer.weight.abs().max()).tolist() for layer in model[::2]]
        model.reshard()
        results.put({"members": members})


def test_fully_shard_trains_a_bitnet_model() -> None:
    reports = run(train_bitnet_fully_sharded)
    assert reports[0]["members"] == reports[1]["members"]
    for members in reports[0]["members"]:
        assert set(torch.tensor(members).unique().tolist()) == {-1.0, 0.0, 1.0}
