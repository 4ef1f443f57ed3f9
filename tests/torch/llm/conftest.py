"""A tiny Llama (transformers, built from a config) converted by ``bitnet_``, shared by the
tests of the recipe and of the runtime exports."""

from collections.abc import Callable

import pytest
import torch

import snapset.torch as st

transformers = pytest.importorskip("transformers")

#: Rows of 256 inputs: GGUF's ternary blocks (TQ1_0, TQ2_0) hold 256 weights each.
TINY = dict(
    vocab_size=256,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def build_llama(seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A float ``LlamaForCausalLM`` of the tiny config (``overrides`` change it), seeded."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**TINY, **overrides})
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama() -> Callable[..., torch.nn.Module]:
    """``make(seed=0, rms_norm=False, **config)``: a tiny Llama converted by ``bitnet_``."""

    def make(seed: int = 0, rms_norm: bool = False, **overrides: object) -> torch.nn.Module:
        return st.bitnet_(build_llama(seed, **overrides), rms_norm=rms_norm).eval()

    return make
