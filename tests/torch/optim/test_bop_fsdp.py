"""Bop on FSDP2 shards: each rank moves its own shard, and the run is the unsharded run.

Two processes on gloo (CPU) shard a model of three flip layers with ``fully_shard`` (rows
split unevenly: 4 + 3 and 2 + 1) and train it with Bop, relative and absolute thresholds in
two param groups, on the same data on both ranks, so that FSDP's averaged gradient is each
rank's own gradient exactly. Each rank also trains an unsharded copy of the model, in the same
process, on the same data: the gathered shards must equal it bit for bit.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from tests.torch.test_ddp import process_group, run
from torch import nn

import snapset
import snapset.torch as st

pytestmark = pytest.mark.slow  # two fresh Python processes that import torch: seconds

STEPS = 15


def flip_model() -> nn.Sequential:
    """{-1, 1}, a four-value multiplier (moved by table look-up) and ternary, all flip."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 7, bias=False),
        nn.Tanh(),
        st.Multiplier(7, [1, -1, 0.5, -0.5], method="flip"),
        nn.Linear(7, 3, bias=False),
    )
    st.constrain(model[0], "weight", snapset.Sign(), "flip")
    st.constrain(model[3], "weight", snapset.Ternary(), "flip")
    return model


def flip_optimizer(model: nn.Module) -> st.Bop:
    first, multiplier, last = st.param_groups(model).flip
    return st.Bop(
        [
            {"params": [first, multiplier], "threshold": 0.5, "threshold_mode": "rel"},
            {"params": [last], "threshold": 2e-3, "momentum_reset": "never"},
        ],
        gamma=0.2,
    )


def train(model: nn.Module, bop: st.Bop, steps: int) -> None:
    data = torch.Generator().manual_seed(1)  # the same batches on every rank
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=data), torch.randn(16, 3, generator=data)
        nn.functional.mse_loss(model(x), y).backward()
        bop.step()
        bop.zero_grad()


def whole(tensor: torch.Tensor) -> Any:
    """The whole tensor as plain lists (a tensor sent through a queue dies with its process)."""
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).tolist()


def train_sharded_and_whole(rank: int, port: int, results: Any) -> None:
    from torch.distributed.fsdp import fully_shard

    with process_group(rank, port):
        model = flip_model()
        start = [p.detach().clone() for p in model.parameters()]
        fully_shard(model[0])
        fully_shard(model[3])
        fully_shard(model)
        sharded_bop = flip_optimizer(model)  # after fully_shard: its parameters are new
        reference = flip_model()
        reference_bop = flip_optimizer(reference)
        train(model, sharded_bop, STEPS)
        train(reference, reference_bop, STEPS)
        report: dict[str, Any] = {
            "local_shapes": [tuple(p.to_local().shape) for p in model.parameters()],
            "moved": [
                int(a.ne(p.full_tensor()).sum())
                for a, p in zip(start, model.parameters(), strict=True)
            ],
            "params": [whole(p) for p in model.parameters()],
            "reference_params": [whole(p) for p in reference.parameters()],
        }
        for name, bop, params in [
            ("", sharded_bop, list(model.parameters())),
            ("reference_", reference_bop, list(reference.parameters())),
        ]:
            states = [bop.state[p] for p in params]
            report[f"{name}momentums"] = [whole(s["momentum"]) for s in states]
            report[f"{name}grad_sqs"] = [s["grad_sq"].item() for s in states]
            report[f"{name}steps"] = [s["step"].item() for s in states]

        # A non-finite gradient entry on one rank's shard only: both ranks skip the step.
        data = torch.Generator().manual_seed(2)
        model(torch.randn(16, 6, generator=data)).square().mean().backward()
        if rank == 1:
            model[0].weight.grad.to_local()[0, 0] = float("inf")
        before = [p.full_tensor() for p in model.parameters()]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sharded_bop.step()
        report["skip_warnings"] = [str(w.message) for w in caught]
        report["skipped_unchanged"] = all(
            torch.equal(b, p.full_tensor()) for b, p in zip(before, model.parameters(), strict=True)
        )
        report["nonfinite_steps"] = sharded_bop.nonfinite_steps

        # A value off the set written into this rank's shard: refused before anything moves.
        sharded_bop.zero_grad()
        model(torch.randn(16, 6, generator=data)).square().mean().backward()
        shard = model[3].parametrizations.weight.original.to_local()
        with torch.no_grad():
            shard[0, 0] = 0.5
        try:
            sharded_bop.step()
            report["refusal"] = ""
        except snapset.OutsideSetError as error:
            report["refusal"] = str(error)
        results.put(report)


def test_bop_on_fsdp2_shards_equals_the_unsharded_run_bit_for_bit() -> None:
    reports = run(train_sharded_and_whole)
    # Each rank held a part of every tensor, uneven where the rows do not split evenly.
    shapes = sorted(tuple(r["local_shapes"]) for r in reports)
    assert shapes == [((3, 6), (3,), (1, 7)), ((4, 6), (4,), (2, 7))]
    for report in reports:
        assert all(report["moved"]), "every flip tensor should have changed values"
        assert report["params"] == report["reference_params"]
        assert report["momentums"] == report["reference_momentums"]
        # The shards' norms, summed across ranks, may round the last bit of the mean square
        # differently from one norm of the whole tensor (a decision can differ only where |m|
        # lies within that rounding of the threshold).
        assert report["grad_sqs"] == pytest.approx(report["reference_grad_sqs"], rel=1e-6)
        assert report["steps"] == report["reference_steps"] == [STEPS] * 3
        # The gradient norms are the whole tensors': a shard's inf is every rank's.
        assert len(report["skip_warnings"]) == 1
        assert "skipped this step" in report["skip_warnings"][0]
        assert report["skipped_unchanged"]
        assert report["nonfinite_steps"] == 1
        assert "flip parameter 'weight' holds 1 value outside" in report["refusal"]
