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
