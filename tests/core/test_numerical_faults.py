"""NaN/inf in losses or gradient features is detected, named, and either fails the step or is excluded and counted."""

import polars as pl
import pytest
import torch

from learnalign_pipeline.core.selection.features import FeatureBatchResult, NonFiniteError, drop_nonfinite
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.task.verify import NumericVerifier
from learnalign_pipeline.core.training.config import GRPOConfig
from learnalign_pipeline.core.training.trainer import train_grpo


def test_nonfinite_features_fail_naming_the_problem_or_are_excluded():
    result = FeatureBatchResult(["a", "b", "c"], torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.5, float("inf")]]))
    with pytest.raises(NonFiniteError, match=r"2 problems.*'b', 'c'"):
        drop_nonfinite(result, "fail")
    cleaned, excluded = drop_nonfinite(result, "exclude")
    assert excluded == ["b", "c"]
    assert torch.equal(cleaned.features, torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]))
    assert torch.isnan(result.features[1, 0])  # the input is left as it was
    assert drop_nonfinite(FeatureBatchResult(["a"], torch.ones(1, 2)), "fail")[1] == []


def _poisoned(model):
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))  # every logit becomes NaN
    return model


def test_nan_loss_fails_the_step_naming_step_and_problems(model, tokenizer, problems):
    config = GRPOConfig(steps=1, problems_per_step=4, beta=0.0, learning_rate=1e-3)
    with pytest.raises(FloatingPointError, match=r"step 0 for 4 problems, e\.g\. \['[0-9a-f]{16}'"):
        train_grpo(_poisoned(model), tokenizer, problems, NumericVerifier(), config, TaskConfig())


def test_nan_loss_is_excluded_and_counted(model, tokenizer, problems):
    config = GRPOConfig(steps=2, problems_per_step=4, on_nonfinite="exclude", beta=0.0, learning_rate=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    history = train_grpo(_poisoned(model), tokenizer, problems, NumericVerifier(), config, TaskConfig())
    assert [r["nonfinite_problems"] for r in history] == [4, 4]
    after = list(model.parameters())
    changed = [not torch.equal(a, b) for a, b in zip(before, after)]
    assert sum(changed) == 1  # only the weight poisoned above differs: no optimizer step was taken on NaN
    assert pl.DataFrame(history)["step"].to_list() == [0, 1]
