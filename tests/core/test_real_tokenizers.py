"""Tokenizers as real models ship them (issue 22): a Llama-3-style tokenizer, which adds BOS to every text, whose
chat template writes BOS itself, and which has no pad token, through the public API. One test per finding."""

from __future__ import annotations

import copy

import polars as pl
import pytest
import torch
from testing_utils import ParityReward, requires_vllm

from learnalign_pipeline.core.compute import CPU
from learnalign_pipeline.core.data.arithmetic import arithmetic_frame
from learnalign_pipeline.core.evaluation.benchmark import pass_at_1
from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend
from learnalign_pipeline.core.policy.model import load_policy, save_policy
from learnalign_pipeline.core.policy.vllm_backend import VLLMBackend, VLLMConfig
from learnalign_pipeline.core.selection.perplexity import answer_perplexity
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.task.prompts import PromptFormat
from learnalign_pipeline.core.training.config import GRPOConfig, TrainerConfig
from learnalign_pipeline.core.training.grpo import to_rollout_batch
from learnalign_pipeline.core.training.trl_engine import SeededRollouts, VerifierReward, trl_args

CHAT = PromptFormat("lm_eval_gsm8k", chat=True)
QUESTIONS = ["What is 2 + 3?", "A farmer has 17 cows and buys 5 more. How many cows does he have now?"]


def with_pad(tokenizer):
    """The same tokenizer with pad = <|end_of_text|> (what many users set): isolates the BOS findings from the
    missing-pad ones."""
    padded = copy.deepcopy(tokenizer)
    padded.pad_token = "<|end_of_text|>"
    return padded


def one_bos_ids(tokenizer, question: str) -> list[int]:
    """The chat prompt's ids as the model was trained on them: the template's own BOS, once."""
    ids = tokenizer(CHAT.render(question, tokenizer), add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    return ids


def rollouts_frame(problems: pl.DataFrame, tokenizer) -> pl.DataFrame:
    completions = [tokenizer(" 5", add_special_tokens=False)["input_ids"], [tokenizer.eos_token_id]]
    return pl.DataFrame(
        [
            {"problem_id": pid, "sample_index": k, "token_ids": completions[k], "reward": float(k)}
            for pid in problems["problem_id"]
            for k in range(2)
        ]
    )


def test_generation_feeds_a_chat_prompt_with_one_bos(llama3_model, llama3_tokenizer):
    """generation.py tokenized the template's text with special tokens: two BOS at the start of every prompt."""
    tokenizer, model = with_pad(llama3_tokenizer), llama3_model()
    seen = []
    model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    TransformersBackend(model, tokenizer).generate(
        [CHAT.render(q, tokenizer) for q in QUESTIONS], SamplingSpec.greedy(2), seeds=[0, 1]
    )
    prompt_pass = seen[0]  # the first forward of generate() holds the whole left-padded prompts
    for row, question in zip(prompt_pass.tolist(), QUESTIONS):
        expected = one_bos_ids(tokenizer, question)
        assert row[len(row) - len(expected) :] == expected
        assert set(row[: len(row) - len(expected)]) <= {tokenizer.pad_token_id}


def test_generation_runs_without_a_pad_token(llama3_model, llama3_tokenizer):
    """generation.py crashed on a tokenizer without a pad token; left-padded batched rows must decode as each prompt
    does alone."""
    model = llama3_model()
    backend = TransformersBackend(model, llama3_tokenizer)
    prompts = [CHAT.render(q, llama3_tokenizer) for q in QUESTIONS]
    batched = backend.generate(prompts, SamplingSpec.greedy(4), seeds=[0, 1])
    alone = [backend.generate([p], SamplingSpec.greedy(4), seeds=[s])[0] for p, s in zip(prompts, [0, 1])]
    assert [c[0].token_ids for c in batched] == [c[0].token_ids for c in alone]
    assert all(len(c[0].token_ids) > 0 for c in batched)


def test_the_benchmark_runs_on_a_saved_copy_without_a_pad_token(llama3_model, llama3_tokenizer, tmp_path):
    """benchmark_results loads the pre-trained copy, whose tokenizer is the user's (no pad token), and crashed."""
    save_policy(llama3_model(), llama3_tokenizer, tmp_path / "base")
    model, tokenizer = load_policy(tmp_path / "base")
    assert tokenizer.pad_token is None
    problems = arithmetic_frame(3, seed=1, split="test")
    result, samples = pass_at_1(
        TransformersBackend(model, tokenizer),
        problems,
        TaskConfig().make_verifier(),
        CHAT,
        SamplingSpec.greedy(4),
        "pretrained",
        "arithmetic:test",
    )
    assert result.num_problems == 3 and samples.height == 3


def test_training_batches_hold_a_chat_prompt_with_one_bos(llama3_tokenizer):
    """grpo.py (the batches of training and of the gradient features) encoded the chat prompt with a second BOS."""
    tokenizer = with_pad(llama3_tokenizer)
    problems = arithmetic_frame(2, seed=3, split="pool")
    batch = to_rollout_batch(problems, rollouts_frame(problems, tokenizer), tokenizer, CHAT, GRPOConfig().loss(24))
    for row, question in zip(batch.input_ids[::2].tolist(), problems["prompt"]):
        expected = one_bos_ids(tokenizer, question)
        assert row[: len(expected)] == expected


def test_training_batches_build_without_a_pad_token(llama3_tokenizer):
    """grpo.py crashed building the padded batch when the tokenizer has no pad token."""
    problems = arithmetic_frame(2, seed=3, split="pool")
    batch = to_rollout_batch(
        problems, rollouts_frame(problems, llama3_tokenizer), llama3_tokenizer, CHAT, GRPOConfig().loss(24)
    )
    lengths = batch.attention_mask.sum(1)
    assert lengths.min() < batch.input_ids.shape[1]  # some rows are padded, and padding is masked
    assert batch.completion_mask.sum() == sum(
        len(ids) for ids in rollouts_frame(problems, llama3_tokenizer)["token_ids"]
    )


def test_trl_rollouts_give_trl_a_chat_prompt_with_one_bos(llama3_model, llama3_tokenizer, tmp_path):
    """trl_engine.py handed TRL prompt ids with two BOS, so TRL trained on sequences the rollout stage never saw."""
    from datasets import Dataset
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    tokenizer = with_pad(llama3_tokenizer)
    grpo, task = GRPOConfig(steps=1, problems_per_step=2, num_samples=2, beta=0.0), TaskConfig(max_new_tokens=3)
    prompts = [CHAT.render(q, tokenizer) for q in QUESTIONS]
    rollouts = SeededRollouts(tokenizer, grpo.sampling(task.max_new_tokens), dict(zip(prompts, ["a", "b"])), 0)
    trainer = GRPOTrainer(
        model=llama3_model(),
        reward_funcs=VerifierReward(ParityReward()),
        args=TRLGRPOConfig(**trl_args(grpo, task, TrainerConfig(), CPU, str(tmp_path / "trl"))),
        train_dataset=Dataset.from_dict({"prompt": prompts, "answer": ["5", "22"], "problem_id": ["a", "b"]}),
        processing_class=tokenizer,
        rollout_func=rollouts,
    )
    assert rollouts(prompts, trainer)["prompt_ids"] == [one_bos_ids(tokenizer, q) for q in QUESTIONS]


def _perplexity_by_hand(model, context: list[int], target: list[int]) -> float:
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, len(context) :]
    return float(torch.exp(-logp[len(context) - 1 :].gather(-1, targets[:, None]).mean()))


def test_answer_perplexity_scores_the_target_without_a_bos_inside(llama3_model, llama3_tokenizer):
    """perplexity.py encoded each target with special tokens: a BOS inside the sequence, scored as an answer token."""
    tokenizer, model = with_pad(llama3_tokenizer), llama3_model()
    targets = ["3 + 2 = 5. #### 5", "17 + 5 = 22. #### 22"]
    _, unconditional = answer_perplexity(model, tokenizer, QUESTIONS, targets, CHAT)
    for value, target in zip(unconditional.tolist(), targets):
        ids = tokenizer(" " + target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert value == pytest.approx(_perplexity_by_hand(model, [tokenizer.eos_token_id], ids), rel=1e-4)


def test_answer_perplexity_conditions_on_a_chat_prompt_with_one_bos(llama3_model, llama3_tokenizer):
    """perplexity.py encoded the chat prompt with a second BOS."""
    tokenizer, model = with_pad(llama3_tokenizer), llama3_model()
    targets = ["3 + 2 = 5. #### 5", "17 + 5 = 22. #### 22"]
    conditional, _ = answer_perplexity(model, tokenizer, QUESTIONS, targets, CHAT)
    for value, question, target in zip(conditional.tolist(), QUESTIONS, targets):
        ids = tokenizer(" " + target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert value == pytest.approx(_perplexity_by_hand(model, one_bos_ids(tokenizer, question), ids), rel=1e-4)


@requires_vllm
def test_vllm_is_given_a_chat_prompt_with_one_bos(llama3_model, llama3_tokenizer, tmp_path):
    """vllm_backend.py passed text, which vLLM tokenizes with special tokens: a second BOS."""
    tokenizer = with_pad(llama3_tokenizer)
    save_policy(llama3_model(), tokenizer, tmp_path / "policy")
    backend = VLLMBackend(str(tmp_path / "policy"), VLLMConfig())
    try:
        llm = backend._engine()
        seen, generate = [], llm.generate

        def recording(*args, **kwargs):  # vLLM's own record of the ids it ran
            outputs = generate(*args, **kwargs)
            seen.extend(o.prompt_token_ids for o in outputs)
            return outputs

        llm.generate = recording
        backend.generate([CHAT.render(q, tokenizer) for q in QUESTIONS], SamplingSpec.greedy(2), seeds=[0, 1])
    finally:
        backend.close()
    assert [list(ids) for ids in seen] == [one_bos_ids(tokenizer, q) for q in QUESTIONS]


@requires_vllm
def test_vllm_refusing_a_model_says_what_it_refused(llama3_model, llama3_tokenizer, tmp_path):
    """vLLM's CPU build refuses head_dim 16; that surfaced as a bare EngineDeadError."""
    save_policy(llama3_model(head_dim=16), with_pad(llama3_tokenizer), tmp_path / "policy")
    backend = VLLMBackend(str(tmp_path / "policy"), VLLMConfig())
    with pytest.raises(RuntimeError, match=r"(?s)vLLM could not start .*head_dim=16"):
        backend.generate(["What is 2 + 3?"], SamplingSpec.greedy(2), seeds=[0])
