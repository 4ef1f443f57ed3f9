"""``snapset demo`` and ``snapset bench accuracy``, and what they are made of.

Semi-public: these names serve the ``snapset`` command, the repository's benchmarks and its
tests, and carry no stability promise; they may change in any release. Everything here works
from an installed wheel: the data are generated (MNIST-1D, by the ``mnist1d`` package) or ship
with scikit-learn (the 8x8 digits), nothing is downloaded. Needs PyTorch; the demo's
multiplier section uses Keras when ``snapset.keras`` imports.

- the forum problems, planted, and the answers the forums gave (``planted_binary_matrix``,
  ``planted_multiplier``, ``fit_adam``, ``ReluSigmoidAnswer``, ``SigmoidAnswer``,
  ``SignAnswer``);
- real data (``mnist1d``, ``digits``, ``Split``), the models (``cnn``,
  ``mlp``, ``build``) and one training loop (``Recipe``, ``train``,
  ``Run``);
- a language model on real text: the standard library's source as bytes
  (``stdlib_corpus``), a transformers Llama (``llama``, ``LLAMA``), one training loop
  (``LMRecipe``, ``train_lm``, ``LMRun``), ``bits_per_byte`` and ``generate``;
- the demo's report (``run_demo``) and snapset's rows of the accuracy table
  (``run_accuracy``, ``snapset_rows``, ``markdown``).

Examples:
    >>> from snapset import demo
    >>> model = demo.build("digits", "ternary")
    >>> sorted(model[1].weight.unique().tolist())
    [-1.0, 0.0, 1.0]
"""

from ._accuracy import CONFIGS as CONFIGS
from ._accuracy import PAPER_FLOAT as PAPER_FLOAT
from ._accuracy import PLAIN_CONFIGS as PLAIN_CONFIGS
from ._accuracy import PLAIN_RECIPE as PLAIN_RECIPE
from ._accuracy import Row as Row
from ._accuracy import accuracy_plan as accuracy_plan
from ._accuracy import markdown as markdown
from ._accuracy import run_accuracy as run_accuracy
from ._accuracy import snapset_rows as snapset_rows
from ._accuracy import table as table
from ._data import Split as Split
from ._data import datasets as datasets
from ._data import digits as digits
from ._data import mnist1d as mnist1d
from ._forum import ReluSigmoidAnswer as ReluSigmoidAnswer
from ._forum import SigmoidAnswer as SigmoidAnswer
from ._forum import SignAnswer as SignAnswer
from ._forum import fit_adam as fit_adam
from ._forum import planted_binary_matrix as planted_binary_matrix
from ._forum import planted_multiplier as planted_multiplier
from ._lm import LLAMA as LLAMA
from ._lm import LMRecipe as LMRecipe
from ._lm import LMRun as LMRun
from ._lm import TextCorpus as TextCorpus
from ._lm import bits_per_byte as bits_per_byte
from ._lm import generate as generate
from ._lm import llama as llama
from ._lm import stdlib_corpus as stdlib_corpus
from ._lm import train_lm as train_lm
from ._machine import cpu_name as cpu_name
from ._machine import machine_line as machine_line
from ._models import ARCHITECTURES as ARCHITECTURES
from ._models import FOUR_VALUES as FOUR_VALUES
from ._models import SET_LABELS as SET_LABELS
from ._models import SETS as SETS
from ._models import Center as Center
from ._models import PlusMinus as PlusMinus
from ._models import build as build
from ._models import cnn as cnn
from ._models import mlp as mlp
from ._plots import plot_demo as plot_demo
from ._report import matrix_report as matrix_report
from ._report import mnist1d_report as mnist1d_report
from ._report import multiplier_report as multiplier_report
from ._report import multiplier_trainer as multiplier_trainer
from ._report import run_demo as run_demo
from ._report import sizes_report as sizes_report
from ._train import Recipe as Recipe
from ._train import Run as Run
from ._train import accuracy as accuracy
from ._train import fit_bop as fit_bop
from ._train import one_thread as one_thread
from ._train import size_text as size_text
from ._train import train as train

__all__ = [
    "ARCHITECTURES",
    "CONFIGS",
    "FOUR_VALUES",
    "LLAMA",
    "PAPER_FLOAT",
    "PLAIN_CONFIGS",
    "PLAIN_RECIPE",
    "SETS",
    "SET_LABELS",
    "Center",
    "LMRecipe",
    "LMRun",
    "PlusMinus",
    "Recipe",
    "ReluSigmoidAnswer",
    "Row",
    "Run",
    "SigmoidAnswer",
    "SignAnswer",
    "Split",
    "TextCorpus",
    "accuracy",
    "accuracy_plan",
    "bits_per_byte",
    "build",
    "cnn",
    "cpu_name",
    "datasets",
    "digits",
    "fit_adam",
    "fit_bop",
    "generate",
    "llama",
    "machine_line",
    "markdown",
    "matrix_report",
    "mlp",
    "mnist1d",
    "mnist1d_report",
    "multiplier_report",
    "multiplier_trainer",
    "one_thread",
    "planted_binary_matrix",
    "planted_multiplier",
    "plot_demo",
    "run_accuracy",
    "run_demo",
    "size_text",
    "sizes_report",
    "snapset_rows",
    "stdlib_corpus",
    "table",
    "train",
    "train_lm",
]
