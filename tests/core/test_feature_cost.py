"""The figures the benchmarks divide by (scripts/gpu_check.py, scripts/bench_smollm2.py): the FLOP count of a
feature pass and the estimator's peak for the sub-batches the stage's planner picks."""

import torch

from learnalign_pipeline.core.selection.features import planned_peak
from learnalign_pipeline.core.selection.memory import FeatureMemory, ModelShape, plan_sub_batches
from learnalign_pipeline.core.training.grpo import build_rollout_batch

SHAPE = ModelShape(layers=2, hidden=64, intermediate=128, heads=4, kv_dim=32, vocab=100, parameters=0)


def test_a_feature_pass_costs_4n_per_token_and_6n_per_checkpointed_completion_token():
    layers = 2 * (64 * (2 * 64 + 2 * 32) + 3 * 64 * 128)
    head = 100 * 64
    assert SHAPE.feature_flops(1, 0, checkpointing=False) == 4 * layers  # prompts skip the head
    assert SHAPE.feature_flops(1, 0, checkpointing=True) == 4 * layers  # and are never recomputed
    assert SHAPE.feature_flops(0, 1, checkpointing=False) == 4 * (layers + head)
    assert SHAPE.feature_flops(0, 1, checkpointing=True) == 6 * (layers + head)
    assert SHAPE.feature_flops(3, 5, checkpointing=True) == 3 * 4 * layers + 5 * 6 * (layers + head)


def test_the_planned_peak_is_the_largest_sub_batch_the_planner_picks():
    estimator = FeatureMemory(SHAPE, held_per_token=16, accumulator_per_problem=256, checkpointing=True)
    prompts = [[5] * 10, [5] * 30, [5] * 10]  # K = 2; the middle problem is the long one
    completions = [[[6] * 4, [6] * 4], [[6] * 20, [6] * 8], [[6] * 4, [6] * 4]]
    whole = build_rollout_batch(prompts, completions, torch.ones(3, 2), pad_id=0)

    roomy = planned_peak(whole, estimator, 1 << 40)
    _, chunk = plan_sub_batches([(10, 4), (30, 20), (10, 4)], 2, estimator, 1 << 40)
    assert roomy.sub_batches == 1
    assert roomy.bytes == estimator.fixed_bytes() + estimator.batch_bytes(3, 2, 30, 20, chunk)
    assert roomy.tokens == 3 * (30 + 2 * 20)  # padded to the longest prompt and completion

    alone = estimator.batch_bytes(1, 2, 30, 20, 2)  # the long problem by itself fits, nothing next to it does
    tight = planned_peak(whole, estimator, alone + 1)
    _, chunk = plan_sub_batches([(10, 4), (30, 20), (10, 4)], 2, estimator, alone + 1)
    assert tight.sub_batches == 3
    assert tight.bytes == estimator.batch_bytes(1, 2, 30, 20, chunk)
    assert tight.tokens == 30 + 2 * 20
