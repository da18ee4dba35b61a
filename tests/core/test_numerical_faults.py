"""NaN/inf in gradient features is detected, named, and either fails the step or is excluded and counted (for GRPO
training steps: tests/core/test_trl_engine.py)."""

import pytest
import torch

from learnalign_pipeline.core.selection.features import FeatureBatchResult, NonFiniteError, drop_nonfinite


def test_nonfinite_features_fail_naming_the_problem_or_are_excluded():
    result = FeatureBatchResult(["a", "b", "c"], torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.5, float("inf")]]))
    with pytest.raises(NonFiniteError, match=r"2 problems.*'b', 'c'"):
        drop_nonfinite(result, "fail")
    cleaned, excluded = drop_nonfinite(result, "exclude")
    assert excluded == ["b", "c"]
    assert torch.equal(cleaned.features, torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]))
    assert torch.isnan(result.features[1, 0])  # the input is left as it was
    assert drop_nonfinite(FeatureBatchResult(["a"], torch.ones(1, 2)), "fail")[1] == []
