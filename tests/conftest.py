"""Shared fixtures: a tiny Qwen2 policy built from a config with a locally trained tokenizer (nothing downloaded)."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from learnalign_pipeline.core.data.arithmetic import arithmetic_frame, generate_problems
from learnalign_pipeline.core.policy.model import TinyPolicyConfig, build_model, train_tokenizer
from learnalign_pipeline.core.task.prompts import render

TINY = TinyPolicyConfig(
    vocab_size=320, hidden_size=128, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1
)


@pytest.fixture(scope="session")
def tokenizer():
    corpus = [render("qa", p.prompt) + " " + p.solution for p in generate_problems(600, seed=123)]
    return train_tokenizer(corpus, TINY.vocab_size)


@pytest.fixture()
def model(tokenizer):
    return build_model(TINY, tokenizer, seed=0).eval()


@pytest.fixture(scope="session")
def problems() -> pl.DataFrame:
    return arithmetic_frame(12, seed=7, split="pool")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


# Qwen2.5-shaped quirks (core/policy/model.py style="qwen"): specials after the BPE vocabulary, two EOS ids in
# generation_config, a chat template, 448 logits for 323 tokens; `qwen_model(tied=...)` builds either head.
QWEN_TINY = TinyPolicyConfig(
    vocab_size=320, hidden_size=128, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1, style="qwen"
)


@pytest.fixture(scope="session")
def qwen_tokenizer():
    corpus = [render("lm_eval_gsm8k", p.prompt) + " " + p.solution for p in generate_problems(600, seed=123)]
    return train_tokenizer(corpus, QWEN_TINY.vocab_size, style="qwen")


@pytest.fixture()
def qwen_model(qwen_tokenizer):
    import dataclasses

    def build(tied: bool = False, seed: int = 0):
        return build_model(dataclasses.replace(QWEN_TINY, tie_word_embeddings=tied), qwen_tokenizer, seed).eval()

    return build
