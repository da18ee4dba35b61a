"""Unreliable rewards: coin-flip problems (reproducible coins keyed by problem and rollout seed, decided by one rule
that every consumer calls: scoring rollouts, GRPO training in process and launched, benchmarks clean; kept apart in
the row cache) and the noisy draw's independence from Random's draw."""

from __future__ import annotations

import polars as pl
import torch

from learnalign_pipeline.core.data.arithmetic import arithmetic_frame
from learnalign_pipeline.core.data.noise import coin_flip_ids, mark_noisy, noisy_flags, rollout_rewards
from learnalign_pipeline.core.evaluation.benchmark import pass_at_1
from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend
from learnalign_pipeline.core.policy.rollouts import sample_rollouts
from learnalign_pipeline.core.selection.methods import SelectionSignals, select
from learnalign_pipeline.core.storage.row_cache import problem_keys
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.task.verify import NumericVerifier, RolloutRewards
from learnalign_pipeline.core.training.config import GRPOConfig
from learnalign_pipeline.core.training.trl_engine import train_in_memory, write_training_problems


def test_coin_flip_pool_keeps_gold_and_ids_and_flags_the_share():
    pool = arithmetic_frame(40, seed=3, split="pool")
    noisy = mark_noisy(pool, 0.25, "coin_flip", seed=1)
    flags = noisy_flags(noisy)
    assert int(flags.sum()) == 10
    assert noisy.select("problem_id", "answer").equals(pool.select("problem_id", "answer"))
    assert coin_flip_ids(noisy) == frozenset(noisy.filter(flags)["problem_id"])
    assert coin_flip_ids(pool) == frozenset()
    keys, clean_keys = problem_keys(noisy), problem_keys(pool)
    assert [a != b for a, b in zip(keys, clean_keys)] == flags.to_list()  # only flagged problems change keys


def test_coin_flips_are_fair_reproducible_and_ignore_the_completion():
    inner = NumericVerifier()
    verifier = RolloutRewards(inner, frozenset({"a"}))
    ids, seeds = ["a"] * 4000 + ["b"] * 2, list(range(4000)) + [0, 1]
    completions, golds = ["#### 5"] * 4002, ["5"] * 4002
    rewards = verifier(ids, seeds, completions, golds)
    wrong = verifier(ids, seeds, ["#### 7"] * 4002, golds)
    assert wrong[:4000] == rewards[:4000]  # a flagged problem's reward ignores the completion
    assert rewards[-2:] == [1.0, 1.0]  # unflagged problems are scored by the inner verifier
    assert abs(sum(rewards[:4000]) / 4000 - 0.5) < 0.03
    assert verifier.name == inner.name


def test_sample_rollouts_applies_coin_flips_from_the_table(model, tokenizer):
    pool = arithmetic_frame(6, seed=3, split="pool")
    noisy = mark_noisy(pool, 0.5, "coin_flip", seed=0)
    backend = TransformersBackend(model, tokenizer)
    spec = SamplingSpec(num_samples=8, temperature=1.0, top_p=1.0, max_new_tokens=6)
    clean = sample_rollouts(backend, pool, spec, NumericVerifier(), "qa", base_seed=3)
    flipped = sample_rollouts(backend, noisy, spec, NumericVerifier(), "qa", base_seed=3)
    assert flipped["completion"].equals(clean["completion"])  # same ids and seeds: same samples
    flagged = coin_flip_ids(noisy)
    unflagged = ~pl.col("problem_id").is_in(list(flagged))
    assert flipped.filter(unflagged)["reward"].equals(clean.filter(unflagged)["reward"])
    # an untrained policy solves nothing, so every reward of 1 on a flagged problem is a coin
    assert clean["reward"].sum() == 0 and flipped.filter(~unflagged)["reward"].sum() > 0
    again = sample_rollouts(backend, noisy, spec, NumericVerifier(), "qa", base_seed=3)
    assert again["reward"].equals(flipped["reward"])


def test_noisy_draw_is_independent_of_randoms_draw_with_the_same_seed():
    """noise_seed 0 and Random's seed 0 used to share a hash: the noisy problems were the smallest draws and Random(0)
    took the largest, so Random(0) under-sampled them (~23% instead of 30% with wrong golds, whose ids change; none
    at all with coin flips, whose ids stay)."""
    pool = arithmetic_frame(6000, seed=1, split="pool")
    se = (0.3 * 0.7 / 1000) ** 0.5
    for kind in ("coin_flip", "wrong"):
        noisy = mark_noisy(pool, 0.3, kind, seed=0)
        rates = torch.full((noisy.height,), 0.5)  # every problem learnable: Random draws from the whole pool
        signals = SelectionSignals(problem_ids=noisy["problem_id"].to_list(), success_rate=rates)
        picked = select("random", signals, 1000, seed=0).picked
        share = float(noisy_flags(noisy[picked]).mean())
        assert abs(share - 0.3) < 4 * se, (kind, share)


class AlwaysRight:
    """A verifier that calls every completion correct: whatever the policy writes, a clean reward is 1."""

    name = "always_right"

    def score_batch(self, completions, golds):
        return [1.0] * len(completions)


def _grpo_rewards(model, tokenizer, problems, workdir, verifier=None) -> list[float]:
    grpo = GRPOConfig(steps=2, problems_per_step=16, num_samples=8, beta=0.0, checkpoint_every=0, seed=5)
    _, history = train_in_memory(
        model, tokenizer, problems, grpo, TaskConfig(max_new_tokens=6), workdir, verifier=verifier
    )
    return [r["reward_mean"] for r in history]


def test_grpo_on_a_coin_flip_pool_trains_on_coins_whatever_the_completions(model, tokenizer, tmp_path):
    """The untrained policy solves almost nothing (clean reward ~0); a verifier that calls everything right gives 1. On the
    same pool with every problem's rewards made coin flips, TRL's GRPO logs a mean reward of about 0.5 either way
    (2 steps x 16 problems x 8 rollouts: SE 0.03), so the clean and the coin-flip arm with the same seed differ."""
    pool = arithmetic_frame(16, seed=3, split="pool")
    coins = mark_noisy(pool, 1.0, "coin_flip", seed=0)
    clean = _grpo_rewards(model, tokenizer, pool, tmp_path / "clean")
    assert max(clean) < 0.05  # a rare lucky number
    for name, verifier in (("wrong", None), ("right", AlwaysRight())):
        noisy = _grpo_rewards(model, tokenizer, coins, tmp_path / name, verifier)
        assert abs(sum(noisy) / len(noisy) - 0.5) < 0.12, (name, noisy)
        assert noisy != clean
    assert _grpo_rewards(model, tokenizer, pool, tmp_path / "right_clean", AlwaysRight()) == [1.0, 1.0]


def test_the_launched_runs_table_keeps_the_noise_marks(tmp_path):
    """The Pipes launch trains from a Parquet written by `write_training_problems` (lib/training.py): it keeps
    `extra`, so the launched process decides coins from the same marks."""
    coins = mark_noisy(arithmetic_frame(8, seed=3, split="pool"), 0.5, "coin_flip", seed=0)
    write_training_problems(coins, tmp_path / "problems.parquet")
    written = pl.read_parquet(tmp_path / "problems.parquet")
    assert coin_flip_ids(written) == coin_flip_ids(coins) and len(coin_flip_ids(coins)) == 4


def test_benchmarks_score_clean_rewards_whatever_the_table_marks(model, tokenizer):
    pool = arithmetic_frame(6, seed=3, split="pool")
    coins = mark_noisy(pool, 1.0, "coin_flip", seed=0)
    backend = TransformersBackend(model, tokenizer)
    spec = SamplingSpec(num_samples=8, temperature=1.0, top_p=1.0, max_new_tokens=6)
    result, rollouts = pass_at_1(backend, coins, NumericVerifier(), "qa", spec, "p", "b", seed=3)
    assert result.num_correct == 0 and rollouts["reward"].sum() == 0  # the untrained policy solves nothing
    assert rollout_rewards(coins, NumericVerifier(), clean=True).coin_flip == frozenset()
