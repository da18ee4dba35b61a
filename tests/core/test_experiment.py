"""The experiment's pieces that can be checked without running it: its problem sets, its settings' guards,
evaluating inside training, GradAlign's released scorer settings, and the analysis on tables with known answers."""

from __future__ import annotations

import copy
import math

import polars as pl
import pytest
import torch
from testing_utils import ParityReward

from learnalign_pipeline.core.data.arithmetic import MIXES, cell_of
from learnalign_pipeline.core.data.noise import noisy_flags
from learnalign_pipeline.core.evaluation.benchmark import pass_at_1
from learnalign_pipeline.core.evaluation.experiment import (
    ExperimentConfig,
    ExperimentDataConfig,
    analyze,
    calibrated_learning_rate,
    curves,
    experiment_problems,
    target_share,
    verdict,
)
from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend
from learnalign_pipeline.core.selection.curriculum import gradalign_scoring
from learnalign_pipeline.core.storage.hashing import derived_seed
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.task.verify import NumericVerifier
from learnalign_pipeline.core.training.config import GRPOConfig
from learnalign_pipeline.core.training.trl_engine import train_in_memory


def test_problem_sets_are_disjoint_and_follow_the_design():
    config = ExperimentDataConfig(
        pool_size=200, heldout_generated=900, target_size=60, validation_size=20, off_target_size=50
    )
    frame = experiment_problems(config)
    role = {r: frame.filter(pl.col("role") == r) for r in frame["role"].unique()}
    assert {r: f.height for r, f in role.items()} == {
        "pool": role["pool"].height, "pool_coin_flip": role["pool"].height, "target": 60, "validation": 20, "off_target": 50
    }  # fmt: skip
    ids = {r: set(f["problem_id"]) for r, f in role.items()}
    assert ids["pool"] == ids["pool_coin_flip"]
    assert not (ids["pool"] & (ids["target"] | ids["validation"] | ids["off_target"]))
    assert not (ids["target"] & ids["validation"]) and not (ids["off_target"] & (ids["target"] | ids["validation"]))
    target_cells = set(MIXES["realistic"].target_cells)
    assert set(cell_of(role["target"])) <= target_cells and set(cell_of(role["validation"])) <= target_cells
    # named for what they hold: no target cell off-target, every other cell there
    assert not set(cell_of(role["off_target"])) & target_cells and len(set(cell_of(role["off_target"]))) > 3
    share = target_share(role["pool"], role["target"])
    assert share == pytest.approx(float(cell_of(role["pool"]).is_in(list(target_cells)).mean()))
    assert 0.1 < share < 0.5  # the pool-weighted estimate weighs the target set by the pool's share
    assert int(noisy_flags(role["pool_coin_flip"]).sum()) == round(0.5 * role["pool"].height)
    assert int(noisy_flags(role["pool"]).sum()) == 0


def test_settings_guard_the_design():
    ExperimentConfig()  # the pre-registered defaults are valid
    with pytest.raises(ValueError, match="round ends"):
        ExperimentConfig(eval_steps=[12, 24])  # the curriculum only stops at 8, 16, 24
    with pytest.raises(ValueError, match="random"):
        ExperimentConfig(arms=["learnalign"])
    with pytest.raises(ValueError, match="unknown arms"):
        ExperimentConfig(arms=["random", "nope"])
    streams = {derived_seed(s, p) for s in range(8) for p in ("warmup", "scoring", "random", "training", "evaluation")}
    assert len(streams) == 40  # every purpose of every seed draws from its own stream


def test_evaluating_inside_training_leaves_training_bitwise_unchanged(model, tokenizer, problems, tmp_path):
    """The experiment evaluates every arm at intermediate steps from the trainer's per-step callback (TRL in
    process); the sampling there uses per-row generators, so training must end exactly where it ends without the
    evaluations."""
    config = GRPOConfig(steps=3, problems_per_step=4, num_samples=4, checkpoint_every=0, seed=5)
    task = TaskConfig(max_new_tokens=8)
    start = copy.deepcopy(model.state_dict())
    plain, _ = train_in_memory(model, tokenizer, problems, config, task, tmp_path / "plain", verifier=ParityReward())
    seen = []

    def on_step(record, live_model):
        backend = TransformersBackend(live_model, tokenizer)
        spec = SamplingSpec(2, 1.0, 1.0, 8)
        seen.append(pass_at_1(backend, problems, NumericVerifier(), "qa", spec, "x", "y", seed=9)[0].num_problems)

    evaluated, history = train_in_memory(
        model, tokenizer, problems, config, task, tmp_path / "evaluated", verifier=ParityReward(), observe=on_step
    )
    assert seen == [problems.height] * 3 and len(history) == 3
    assert all(torch.equal(a, model.state_dict()[k]) for k, a in start.items())  # the start is left as it was
    assert any(not torch.equal(a, plain.state_dict()[k]) for k, a in start.items())  # it did train
    for (name, a), (_, b) in zip(plain.state_dict().items(), evaluated.state_dict().items()):
        assert torch.equal(a, b), name


def test_gradalign_released_scorer_settings():
    ours = GRPOConfig().loss(24)  # the pipeline's defaults: beta 0.04, std-normalized, sample mean
    sampling, loss = gradalign_scoring("released", ours, 8, 24)
    assert (sampling.temperature, sampling.top_p, sampling.num_samples) == (0.7, 0.95, 8)
    assert (loss.beta, loss.scale_rewards, loss.aggregation) == (0.0, False, "token_mean")
    sampling, loss = gradalign_scoring("ours", ours, 8, 24)
    assert (sampling.temperature, sampling.top_p) == (1.0, 1.0) and loss == ours


def _accuracy(effects: dict[tuple[str, str], list[float]], seeds: int = 8) -> pl.DataFrame:
    """Synthetic curves: every arm starts at 0.50 (step 0) and ends at 0.60 + effect at step 24 (linear)."""
    rows = []
    for (pool, arm), effect in effects.items():
        for s in range(seeds):
            for step in (0, 8, 16, 24):
                final = 0.60 + effect[s]
                value = 0.50 + (final - 0.50) * step / 24
                for eval_set in ("target", "off_target", "pool_weighted") if step in (0, 24) else ("target",):
                    rows.append(
                        {"seed": s, "pool": pool, "arm": arm, "step": step, "eval_set": eval_set, "accuracy": value}
                    )
    return pl.DataFrame(rows)


def test_analysis_on_tables_with_known_answers():
    up = [0.05, 0.04, 0.06, 0.05, 0.05, 0.03, 0.07, 0.05]  # +5 points on every seed
    down = [-0.10] * 8
    noise = [0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.0]
    accuracy = _accuracy(
        {
            ("clean", "random"): [0.0] * 8,
            ("clean", "learnalign"): up,
            ("clean", "accuracy_band"): noise,
            ("clean", "zero_variance"): down,
            ("coin_flip", "random"): [0.0] * 8,
            ("coin_flip", "accuracy_band"): down,
            ("coin_flip", "gradalign_curriculum"): noise,
            ("coin_flip", "clean_half_oracle"): up,
        }
    )
    selections = pl.DataFrame(
        {"pool": ["coin_flip"] * 4, "arm": ["gradalign_curriculum"] * 4, "noisy": [True, False, False, False]}
    )
    table = analyze(accuracy, selections)
    rows = {(r["pool"], r["arm"], r["comparator"]): r for r in table.iter_rows(named=True)}
    la = rows[("clean", "learnalign", "random")]
    assert la["family"] == "confirmatory" and la["mean_points"] == pytest.approx(5.0)
    assert la["p_sign_flip"] == pytest.approx(2 / 256) and la["p_holm"] == pytest.approx(3 * 2 / 256)
    assert la["ci_low"] > 0 and verdict(la) == "better"
    # it reaches Random's final accuracy (0.60) at step 24 * 0.10 / (0.10 + effect) on each seed
    assert la["median_steps_to_comparator_final"] == pytest.approx(24 * 0.10 / 0.15, abs=0.2)
    assert la["off_target_points"] == pytest.approx(5.0) and la["pool_weighted_points"] == pytest.approx(5.0)
    band = rows[("clean", "learnalign", "accuracy_band")]
    assert band["mean_points"] == pytest.approx(5.0 - 0.0, abs=1e-9)
    power = rows[("clean", "zero_variance", "random")]
    assert power["family"] == "power_check" and verdict(power) == "has power" and power["p_holm"] is None
    coin = rows[("coin_flip", "gradalign_curriculum", "random")]
    assert coin["family"] == "secondary"
    assert coin["arm_corrupted_share"] == pytest.approx(0.25) and verdict(coin).startswith("not detected")
    h3 = rows[("coin_flip", "gradalign_curriculum", "accuracy_band")]  # H3: against the rule noise fools most
    assert h3["family"] == "confirmatory" and h3["mean_points"] == pytest.approx(10.0) and verdict(h3) == "better"
    ceiling = rows[("coin_flip", "gradalign_curriculum", "clean_half_oracle")]
    assert ceiling["family"] == "ceiling" and ceiling["mean_points"] < 0 and ceiling["p_holm"] is None
    assert rows[("clean", "accuracy_band", "random")]["family"] == "secondary"
    assert math.isinf(rows[("clean", "zero_variance", "random")]["median_steps_to_comparator_final"])
    curve = curves(accuracy).filter((pl.col("arm") == "learnalign") & (pl.col("step") == 24))
    assert curve["mean"][0] == pytest.approx(65.0) and curve["half_width"][0] > 0


def test_the_learning_rate_rule_takes_the_largest_lr_whose_warm_up_does_not_lower_sampled_accuracy():
    """Calibrated on the warm-up alone: mean change over seeds >= 0 points, the largest such lr; None if none."""
    table = pl.DataFrame(
        {
            "seed": [0, 1, 0, 1, 0, 1],
            "learning_rate": [3e-4, 3e-4, 1e-4, 1e-4, 3e-5, 3e-5],
            "delta_points": [-1.0, -5.2, 2.7, -1.1, 0.5, 0.4],
        }
    )
    assert calibrated_learning_rate(table) == 1e-4
    assert calibrated_learning_rate(table.filter(pl.col("learning_rate") == 3e-4)) is None
