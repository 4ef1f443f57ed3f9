"""Oscillation: an entry's value going back the way it came (Nagel et al., ICML 2022).

Near the end of training, a latent weight whose gradient is only noise random-walks across a
threshold, and its exact value flips back and forth ("Overcoming Oscillations in
Quantization-Aware Training"). Both fronts' diagnostics count it with this definition:

An entry *oscillates* at an update when its code (its index into the sorted set) changes and
the direction of the change (up: the code grew; down: it fell) is opposite to the direction of
that entry's previous change. The first change of an entry is never an oscillation. For a
two-value set this is "the value went back to what it was before its last change". The
oscillation ratio of a tensor at an update is its oscillating entries over its entries.

Between updates an entry keeps the direction of its last change as two bits, "went up" and
"went down" (both 0: it never changed): two bit planes in the compiled sweep of
``snapset._kernels.recode``, two bool arrays of the codes' shape in ``changes``. This module
knows nothing of torch or keras.
"""

from __future__ import annotations

from typing import Any

__all__ = ["changes"]


def changes(previous: Any, codes: Any, last: Any) -> tuple[Any, Any]:
    """Which entries changed code from ``previous`` to ``codes`` (flipped), and which of them
    oscillated (see the module's definition): two bool arrays; ``last`` is updated in place.

    ``previous`` and ``codes`` are arrays of one shape (numpy arrays or torch tensors, of any
    integer or bool dtype that orders the codes); ``last`` is a pair of bool arrays of their
    shape, ``(went_up, went_down)``: whether an entry's last change went up, or down (all False
    at the start; a pair, not one array, so that torch's sharded tensors keep their layout).
    Written with operators only (no ``where``, no masked assignment, which
    would make torch wait for the GPU), so numpy and torch run it alike; each front counts the
    entries with its own ``count_nonzero`` (a bool ``sum`` measured several times slower).

    Examples:
        >>> import numpy as np
        >>> last = np.zeros(3, bool), np.zeros(3, bool)
        >>> flipped, oscillating = changes(np.array([0, 1, 2]), np.array([1, 1, 1]), last)
        >>> flipped.tolist(), oscillating.tolist()  # first changes never oscillate
        ([True, False, True], [False, False, False])
        >>> flipped, oscillating = changes(np.array([1, 1, 1]), np.array([0, 2, 2]), last)
        >>> flipped.tolist(), oscillating.tolist()  # entries 0 and 2 go back
        ([True, True, True], [True, False, True])
        >>> [went.astype(int).tolist() for went in last]  # went up, went down
        [[0, 1, 1], [1, 0, 0]]
    """
    up, down = codes > previous, codes < previous
    went_up, went_down = last  # updated in place
    oscillating = up & went_down
    oscillating |= down & went_up
    went_up &= ~down
    went_up |= up
    went_down &= ~up
    went_down |= down
    up |= down  # now: every entry that changed
    return up, oscillating
