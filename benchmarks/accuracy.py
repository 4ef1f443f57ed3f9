"""Accuracy on real data: float against value-set weights, snapset against larq and brevitas.

MNIST-1D (generated offline) and scikit-learn's digits; the same architectures in float and
with every weight in Sign, Binary {0, 1}, Ternary and [1, -1, 0.5, -0.5], trained with ``ste``
and with ``flip`` (Bop), 3 seeds; larq (in its own virtual environment, created from PyPI on
first use) and brevitas on the same data, architecture and recipe. Writes
results/accuracy.md. The same as ``snapset bench accuracy`` run from the repository root.

    .venv/bin/python benchmarks/accuracy.py [--quick]
"""

import sys
from pathlib import Path

from snapset.torch._bench import accuracy_command

here = Path(__file__).resolve().parent
sys.exit(
    accuracy_command(
        quick="--quick" in sys.argv[1:],
        out=here / "results" / "accuracy.md",
        peers=here / "peers",
    )
)
