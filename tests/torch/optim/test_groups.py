"""param_groups: the one-line rule, the counts, and what a copied model needs."""

from __future__ import annotations

import copy

import torch
from torch import nn

import snapset
import snapset.torch as st


def test_param_groups_report_counts(small_mixed_model: nn.Sequential) -> None:
    groups = st.param_groups(small_mixed_model)
    assert str(groups) == (
        "flip: 2 tensors, 15 entries; latent: 1 tensor, 18 entries; other: 2 tensors, 5 entries"
    )


def test_what_the_stored_tensor_holds_decides_the_group() -> None:
    model = nn.Sequential(
        st.constrain(nn.Linear(4, 4), "weight", snapset.Sign(), "flip"),
        st.constrain(nn.Linear(4, 4), "weight", snapset.Sign(), "ste"),
        st.constrain(nn.Linear(4, 4), "weight", snapset.Sign(), "stochastic"),
        st.constrain(nn.Linear(4, 4), "weight", snapset.Sign(), "gumbel"),
        st.GF2Linear(4, 4),
    )
    groups = st.param_groups(model)
    stored = [layer.parametrizations.weight.original for layer in model]
    assert groups.flip == stored[:1]
    assert groups.latent == stored[1:]  # latents, logits and GF2Linear's logits
    assert groups.other == [layer.bias for layer in model[:4]]
    st.harden_(model[4])
    assert st.param_groups(model).latent == stored[1:4]  # a hardened GF(2) weight is a buffer


def test_frozen_and_shared_parameters() -> None:
    layer = st.constrain(nn.Linear(4, 4), "weight", snapset.Sign(), "flip")
    layer.bias.requires_grad_(False)
    model = nn.Sequential(layer, layer)
    groups = st.param_groups(model)
    assert groups.flip == [layer.parametrizations.weight.original]
    assert groups.other == []


def test_param_groups_registers_a_copied_models_parameters_for_bop() -> None:
    twin = copy.deepcopy(st.constrain(nn.Linear(4, 3), "weight", snapset.Binary(), "flip"))
    assert twin.weight.unique().tolist() == [0.0, 1.0]
    groups = st.param_groups(twin)
    opt = st.Bop(groups.flip, threshold=0.0, gamma=0.5)
    twin(torch.ones(5, 4)).sum().backward()  # the loss wants every weight smaller
    opt.step()
    assert torch.equal(twin.weight, torch.zeros(3, 4))
