"""Models that several PyTorch test modules share."""

import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st


@pytest.fixture
def small_mixed_model() -> nn.Sequential:
    """{0, 1} flip, a four-value flip Multiplier and Ternary gumbel, with float biases."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 3), st.Multiplier(3, [1, -1, 0.5, -0.5], method="flip"), nn.Linear(3, 2)
    )
    st.constrain(model[0], "weight", snapset.Binary(), method="flip")
    st.constrain(model[2], "weight", snapset.Ternary(), method="gumbel")
    return model
