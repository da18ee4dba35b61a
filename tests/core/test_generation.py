import polars as pl
import pytest
import torch

from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend, prompt_seeds
from learnalign_pipeline.core.policy.rollouts import sample_rollouts, success_rates
from learnalign_pipeline.core.task.verify import NumericVerifier
from learnalign_pipeline.core.training.config import GRPOConfig
from learnalign_pipeline.core.training.grpo import to_rollout_batch, token_logprobs


def test_samples_depend_on_the_problem_not_its_batch(model, tokenizer, problems):
    backend = TransformersBackend(model, tokenizer)
    spec = SamplingSpec(num_samples=3, temperature=1.0, top_p=1.0, max_new_tokens=8)
    whole = sample_rollouts(backend, problems, spec, NumericVerifier(), "qa", base_seed=11)
    part = sample_rollouts(
        TransformersBackend(model, tokenizer, batch_size=2), problems[3:6], spec, NumericVerifier(), "qa", base_seed=11
    )
    same = whole.filter(pl.col("problem_id").is_in(part["problem_id"].implode()))
    assert same["token_ids"].to_list() == part["token_ids"].to_list()
    other_seed = sample_rollouts(backend, problems[3:6], spec, NumericVerifier(), "qa", base_seed=12)
    assert other_seed["token_ids"].to_list() != part["token_ids"].to_list()


def test_greedy_completions_are_the_argmax_the_trainer_sees(model, tokenizer, problems):
    """The trainer's forward (right-padded) must score exactly the tokens generation (left-padded) produced."""
    rollouts = sample_rollouts(
        TransformersBackend(model, tokenizer), problems, SamplingSpec(1, 0.0, 1.0, 6), NumericVerifier(), "qa", 0
    )
    batch = to_rollout_batch(problems, rollouts, tokenizer, "qa", GRPOConfig().loss(32))
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    mask = batch.completion_mask.bool()
    assert mask.sum() >= problems.height
    assert torch.equal(logits.argmax(-1)[mask], batch.input_ids[:, 1:][mask])
    logp = token_logprobs(model, batch)
    assert torch.all(logp[mask] <= 0)


def test_sampling_follows_the_model_distribution(model, tokenizer):
    """Gumbel-max sampling draws the first token with the model's softmax probabilities."""
    prompt = "Q: Ann has 3 pens and gets 4 more. How many pens does Ann have?\nA:"
    spec = SamplingSpec(num_samples=1, temperature=1.0, top_p=1.0, max_new_tokens=1)
    backend = TransformersBackend(model, tokenizer)
    draws = backend.generate([prompt] * 3000, spec, seeds=list(range(3000)))
    first = torch.tensor([d[0].token_ids[0] for d in draws])
    with torch.no_grad():
        probs = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].softmax(-1)
    top = probs.topk(3).indices
    for token in top:
        observed = (first == token).float().mean().item()
        expected = probs[token].item()
        assert abs(observed - expected) < 4 * (expected * (1 - expected) / 3000) ** 0.5 + 1e-3


def test_prompt_seeds_are_spaced_by_k_and_stable():
    seeds = prompt_seeds(["a", "b", "c"], base_seed=0, num_samples=8)
    assert all(s % 8 == 0 for s in seeds) and len(set(seeds)) == 3
    assert prompt_seeds(["b"], 0, 8) == seeds[1:2]


def test_success_rates(model, tokenizer, problems):
    rollouts = sample_rollouts(
        TransformersBackend(model, tokenizer), problems, SamplingSpec(4, 1.0, 1.0, 4), NumericVerifier(), "qa", 0
    )
    rates = success_rates(
        rollouts.with_columns(pl.Series("reward", [1.0, 0.0, 0.0, 1.0] * problems.height, dtype=pl.Float32))
    )
    assert rates.height == problems.height
    assert rates["success_rate"].to_list() == [0.5] * problems.height
    assert rates["num_samples"].to_list() == [4] * problems.height


@pytest.mark.parametrize(
    "bad", [dict(num_samples=0), dict(temperature=-1.0), dict(temperature=0.0, num_samples=4), dict(top_p=0.0)]
)
def test_sampling_spec_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        SamplingSpec(**{"num_samples": 1, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 4, **bad})
