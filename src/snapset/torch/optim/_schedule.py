"""Schedules for any hyperparameter of a param group (torch's lr schedulers handle ``lr`` only)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.optim import Optimizer

__all__ = ["HyperparameterSchedule"]


class HyperparameterSchedule:
    """Set ``group[name] = initial * factor(step)`` in every param group, as ``LambdaLR`` does.

    Made for Bop's ``gamma`` and ``threshold`` (torch's schedulers move ``lr`` only), it works
    for any numeric hyperparameter of any optimizer; ``name`` may also be a list of names,
    each scaled by the same factor (``["gamma", "sigma"]``: both rates of ``Bop2ndOrder``). The
    first value is set at construction (``step = 0``); call ``step`` once per optimizer step
    (or epoch), after ``optimizer.step()``. Each group's starting value is kept as
    ``initial_<name>`` in the group, so it travels with the optimizer's ``state_dict``; the
    schedule's own ``state_dict`` holds its step count. ``factor`` is not saved: build the
    schedule again with the same function, then load its state.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> from snapset.torch.optim import HyperparameterSchedule
        >>> layer = st.constrain(torch.nn.Linear(4, 3), "weight", snapset.Sign(), "flip")
        >>> opt = st.Bop([layer.weight], threshold=1e-3, gamma=1e-2)
        >>> decay = HyperparameterSchedule(opt, "gamma", lambda step: 0.5 ** (step // 10))
        >>> for _ in range(20):
        ...     decay.step()
        >>> opt.param_groups[0]["gamma"]
        0.0025
        >>> opt2 = st.Bop2ndOrder([layer.weight])
        >>> linear = lambda t: max(1 - t / 100, 0.01)
        >>> settle = HyperparameterSchedule(opt2, ["gamma", "sigma"], linear)
        >>> for _ in range(100):
        ...     settle.step()
        >>> opt2.param_groups[0]["gamma"], opt2.param_groups[0]["sigma"]
        (0.0001, 0.0001)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        name: str | Sequence[str],
        factor: Callable[[int], float],
        last_step: int = -1,
    ) -> None:
        names = [name] if isinstance(name, str) else list(name)
        for index, group in enumerate(optimizer.param_groups):
            for each in names:
                if each not in group:
                    keys = ", ".join(repr(k) for k in group if k != "params")
                    raise ValueError(
                        f"Param group {index} of {type(optimizer).__name__} has no "
                        f"hyperparameter {each!r}; it has {keys}"
                    )
        for group in optimizer.param_groups:
            for each in names:
                group.setdefault(f"initial_{each}", group[each])
        self.optimizer = optimizer
        self.name = name
        self.names = names
        self.factor = factor
        self.last_step = last_step
        self.step()

    def step(self) -> None:
        """Advance one step and set the hyperparameter of every group."""
        self.last_step += 1
        self._apply()

    def _apply(self) -> None:
        scale = self.factor(self.last_step)
        for group in self.optimizer.param_groups:
            for name in self.names:
                group[name] = group[f"initial_{name}"] * scale

    def state_dict(self) -> dict[str, Any]:
        """The step count (and the name), for resuming."""
        return {
            "name": self.name if isinstance(self.name, str) else self.names,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at a saved step; the hyperparameter takes that step's value."""
        if state_dict["name"] != self.state_dict()["name"]:
            raise ValueError(
                f"This schedule moves {self.name!r}; the state given is for {state_dict['name']!r}"
            )
        self.last_step = int(state_dict["last_step"])
        self._apply()
