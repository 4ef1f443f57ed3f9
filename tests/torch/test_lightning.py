"""The Lightning callback logs flip ratios and value histograms during a real Trainer.fit."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st

pl = pytest.importorskip("lightning.pytorch", reason="needs the 'lightning' extra")
sl = pytest.importorskip("snapset.torch.lightning")

pytestmark = [
    # Lightning's advice for real runs (DataLoader workers, logging intervals), not errors here.
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    # Lightning 2.6 calls a pytree API that torch 2.13 deprecates; not snapset's doing.
    pytest.mark.filterwarnings(
        "ignore:`isinstance.treespec, LeafSpec.` is deprecated:FutureWarning"
    ),
]

BATCHES, EVERY = 12, 3


class MemoryLogger(pl.loggers.Logger):
    """Keeps every logged metric in a list."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step or 0, dict(metrics)))


class FlipAndSte(pl.LightningModule):
    """A {0, 1} flip layer trained by Bop and a ternary ste layer trained by Adam."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False  # two optimizers: Bop and Adam
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        st.constrain(self.net[0], "weight", snapset.Binary(), "flip")
        st.constrain(self.net[2], "weight", snapset.Ternary(), "ste")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        groups = st.param_groups(self)
        return [
            st.Bop(groups.flip, threshold=1e-3, gamma=0.3),
            torch.optim.Adam(groups.latent + groups.other, lr=2e-2),
        ]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        optimizers = self.optimizers()
        loss = nn.functional.mse_loss(self.net(x), y)
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()


class Snapshots(pl.Callback):
    """The reference: a float copy of each constrained weight after every batch."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.on_train_batch_end(trainer, pl_module, None, None, -1)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        pl_module.eval()  # the deterministic values, as FlipTracker counts them
        self.weights.append(
            {
                "net.0.weight": pl_module.net[0].weight.detach().clone(),
                "net.2.weight": pl_module.net[2].weight.detach().clone(),
            }
        )
        pl_module.train()


def fit(callbacks: list[Any], logger: Any) -> FlipAndSte:
    torch.manual_seed(0)
    model = FlipAndSte()
    x, y = torch.randn(BATCHES * 16, 8), torch.randn(BATCHES * 16, 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, loader)
    return model


def test_flip_monitor_logs_what_the_weights_did() -> None:
    logger, snapshots = MemoryLogger(), Snapshots()
    monitor = sl.FlipMonitor(every_n_steps=EVERY)
    model = fit([snapshots, monitor], logger)

    logged = [metrics for _, metrics in logger.rows if "flip_ratio/all" in metrics]
    assert len(logged) == BATCHES // EVERY
    sets = {"net.0.weight": snapset.Binary(), "net.2.weight": snapset.Ternary()}
    # Snapshots runs before the monitor in each batch: snapshot i * EVERY is the state the
    # monitor saw at its i-th log.
    states = snapshots.weights[::EVERY]
    assert len(states) == len(logged) + 1
    last = {name: torch.zeros_like(states[0][name]) for name in sets}  # last change: -1, 0, 1
    for before, after, metrics in zip(states[:-1], states[1:], logged, strict=True):
        changed = total = 0
        for name, values in sets.items():
            flips = int((before[name] != after[name]).sum())
            assert metrics[f"flip_ratio/{name}"] == pytest.approx(flips / after[name].numel())
            # values order as codes do: an oscillation is a change against the last one
            direction = (after[name] - before[name]).sign()
            back = int(((direction != 0) & (direction == -last[name])).sum())
            last[name] = torch.where(direction != 0, direction, last[name])
            ratio = metrics[f"oscillation_ratio/{name}"]
            assert ratio == pytest.approx(back / after[name].numel())
            for value in values.values:
                share = float((after[name] == value).float().mean())
                assert metrics[f"values/{name}/{value:g}"] == pytest.approx(share)
            changed, total = changed + flips, total + after[name].numel()
        assert metrics["flip_ratio/all"] == pytest.approx(changed / total)
    assert any(m["flip_ratio/net.0.weight"] > 0 for m in logged), "Bop never flipped"
    assert any(m["flip_ratio/net.2.weight"] > 0 for m in logged), "ste never moved"
    assert monitor.last_metrics == logged[-1]
    assert torch.isin(model.net[0].weight, torch.tensor([0.0, 1.0])).all()


def test_flip_monitor_without_histograms_and_bad_arguments() -> None:
    logger = MemoryLogger()
    fit([sl.FlipMonitor(histograms=False)], logger)
    logged = [m for _, m in logger.rows if "flip_ratio/all" in m]
    assert len(logged) == BATCHES
    assert not any(key.startswith("values/") for m in logged for key in m)
    with pytest.raises(ValueError, match="every_n_steps"):
        sl.FlipMonitor(every_n_steps=0)
    with pytest.raises(TypeError, match="every_n_steps"):
        sl.FlipMonitor(every_n_steps=1.5)


def test_flip_monitor_refuses_a_model_with_nothing_constrained() -> None:
    class Plain(FlipAndSte):
        def __init__(self) -> None:
            pl.LightningModule.__init__(self)
            self.automatic_optimization = False
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

        def configure_optimizers(self) -> list[torch.optim.Optimizer]:
            return [torch.optim.Adam(self.parameters())]

    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        callbacks=[sl.FlipMonitor()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(16, 8), torch.randn(16, 2)), batch_size=16
    )
    with pytest.raises(ValueError, match="no tensor constrained by snapset"):
        trainer.fit(Plain(), loader)


def test_without_lightning_the_import_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "snapset.torch.lightning")
    with pytest.raises(ImportError, match=r"pip install 'snapset\[lightning\]'"):
        importlib.import_module("snapset.torch.lightning")
