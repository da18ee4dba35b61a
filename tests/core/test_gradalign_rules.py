"""GradAlign's rules where they matter under coin-flip rewards: a candidate whose completions are all identical has
a zero gradient (its advantages sum to 0), so it scores about 0 (the norm floor), and the curriculum never keeps
more candidates than those that carry a gradient: it draws further chunks or keeps fewer, and says which."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from learnalign_pipeline.core.data.arithmetic import arithmetic_frame
from learnalign_pipeline.core.data.noise import mark_noisy
from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend
from learnalign_pipeline.core.policy.rollouts import sample_rollouts, success_rates
from learnalign_pipeline.core.selection.config import FeatureConfig
from learnalign_pipeline.core.selection.curriculum import CurriculumConfig, gradalign_scoring, score_round
from learnalign_pipeline.core.selection.features import features_for_rates
from learnalign_pipeline.core.selection.methods import SelectionSignals, gradalign
from learnalign_pipeline.core.selection.scoring import carries_gradient, unit_rows
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.task.verify import NumericVerifier
from learnalign_pipeline.core.training.config import GRPOConfig

TASK = TaskConfig(max_new_tokens=6)


def test_identical_completions_with_coin_rewards_score_zero(model, tokenizer):
    """8 copies of one completion, rewarded 1, 1, 1, 0, 0, 0, 0, 0 (coins): p = 3/8, yet the exact GRPO gradient is
    0. Its features are round-off; GradAlign's score of the candidate is about 0, while a candidate with varied
    completions keeps a unit feature."""
    problems = arithmetic_frame(2, seed=3, split="pool")
    backend = TransformersBackend(model, tokenizer)
    spec = SamplingSpec(num_samples=8, temperature=1.0, top_p=1.0, max_new_tokens=6)
    varied = sample_rollouts(backend, problems, spec, NumericVerifier(), "qa", base_seed=1)
    rewards = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0] * 2
    first = varied.filter(pl.col("problem_id") == problems["problem_id"][0]).head(1)
    identical = pl.concat([first] * 8).with_columns(pl.Series("sample_index", list(range(8)), dtype=pl.Int32))
    rollouts = pl.concat([identical, varied.filter(pl.col("problem_id") == problems["problem_id"][1])])
    rollouts = rollouts.with_columns(pl.Series("reward", rewards, dtype=pl.Float32))
    assert rollouts.filter(pl.col("problem_id") == problems["problem_id"][1])["completion"].n_unique() > 1
    loss = gradalign_scoring("released", GRPOConfig().loss(6), 8, 6)[1]
    settings = FeatureConfig()
    rates = success_rates(rollouts)
    features = features_for_rates(model, None, tokenizer, problems, rollouts, rates, loss, settings, "qa")
    unit, norms = unit_rows(features, settings.norm_floor)
    assert float(norms[0]) < 1e-6 < 1e-2 < float(norms[1])  # round-off against a real gradient
    assert not carries_gradient(norms, settings.norm_floor)[0] and carries_gradient(norms, settings.norm_floor)[1]
    assert float(unit[0].norm()) < 0.1 and float(unit[1].norm()) == pytest.approx(1, abs=1e-3)  # was 1 and 1
    validation = torch.stack([features[1], features[0]])  # any direction: the identical candidate must not align
    signals = SelectionSignals(
        problem_ids=rates["problem_id"].to_list(),
        success_rate=torch.tensor(rates["success_rate"].to_numpy()),
        unit_features=unit,
        norms=norms,
        validation_features=validation,
        norm_floor=settings.norm_floor,
    )
    scores = gradalign(signals)
    assert abs(float(scores[0])) < 0.1 and float(scores[1]) > 0.5


@pytest.fixture(scope="module")
def coin_pool():
    """An untrained policy solves nothing: only the coin-flip half of this pool has rewards that vary."""
    return mark_noisy(arithmetic_frame(24, seed=5, split="pool"), 0.5, "coin_flip", seed=0)


@pytest.mark.parametrize("shortfall", ["keep_fewer", "draw_more"])
def test_the_curriculum_keeps_only_candidates_with_a_gradient(model, tokenizer, coin_pool, shortfall):
    spec = CurriculumConfig(
        chunk_size=8, keep=6, candidate_samples=4, validation_samples=4, seed=1, scorer="released", shortfall=shortfall
    )
    validation = arithmetic_frame(4, seed=9, split="test")
    scored = score_round(
        model, None, tokenizer, coin_pool, validation, NumericVerifier(), GRPOConfig().loss(6), FeatureConfig(), TASK,
        spec, 0,
    )  # fmt: skip
    report = scored.row(0, named=True)
    selected = scored.filter(pl.col("selected"))
    assert selected["has_gradient"].all()  # never a zero-gradient filler
    assert selected.height == min(spec.keep, report["with_gradient"]) == report["kept"]
    assert report["with_gradient"] == int(scored["has_gradient"].sum())
    first_chunk = scored.filter(pl.col("chunk") == scored["chunk"][0])
    assert first_chunk.height == 8 and int(first_chunk["has_gradient"].sum()) < spec.keep  # the quota is short
    if shortfall == "keep_fewer":
        assert (report["chunks_scored"], report["shortfall"]) == (1, "kept_fewer")
        assert selected.height < spec.keep
    else:
        assert report["chunks_scored"] >= 2 and report["shortfall"] in ("drew_more", "drew_more_kept_fewer")
        assert scored["chunk"].n_unique() == report["chunks_scored"]
        assert selected.height > int(first_chunk["has_gradient"].sum())
