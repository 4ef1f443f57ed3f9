"""A tiny Llama (transformers, built from a config) converted by ``bitnet_``, shared by the
tests of the recipe and of the runtime exports."""

from collections.abc import Callable

import pytest
import torch

import snapset.torch as st
from snapset import demo

transformers = pytest.importorskip("transformers")

#: The changes to ``snapset.demo.LLAMA`` (rows of 256 inputs: GGUF's ternary blocks, TQ1_0
#: and TQ2_0, hold 256 weights each): two layers, grouped-query attention.
TINY = dict(
    intermediate_size=512,
    num_hidden_layers=2,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def build_llama(seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A float ``LlamaForCausalLM`` of the tiny config (``overrides`` change it), seeded."""
    return demo.llama(seed, **{**TINY, **overrides}).eval()


@pytest.fixture
def tiny_llama() -> Callable[..., torch.nn.Module]:
    """``make(seed=0, rms_norm=False, **config)``: a tiny Llama converted by ``bitnet_``."""

    def make(seed: int = 0, rms_norm: bool = False, **overrides: object) -> torch.nn.Module:
        return st.bitnet_(build_llama(seed, **overrides), rms_norm=rms_norm).eval()

    return make
