"""Every settings object refuses values that would crash a stage or silently train nothing, naming the field and
saying why (issue 16: steps 0, problems_per_step 0, budget 0 or -1, num_samples 1 or <= 0, ...)."""

import pytest

from learnalign_pipeline.core.data.loaders import SourceConfig
from learnalign_pipeline.core.evaluation.benchmark import BenchmarkConfig
from learnalign_pipeline.core.policy.model import TinyPolicyConfig
from learnalign_pipeline.core.selection.config import AlignmentConfig, FeatureConfig, RolloutConfig, SelectionConfig
from learnalign_pipeline.core.selection.curriculum import CurriculumConfig
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.training.config import GRPOConfig, PretrainConfig

REFUSED = [
    (GRPOConfig, {"steps": 0}, "steps: must be >= 1"),  # was ZeroDivisionError / IndexError in training
    (GRPOConfig, {"problems_per_step": 0}, "problems_per_step: must be >= 1"),  # was IndexError in group_advantages
    (GRPOConfig, {"num_samples": 1}, "num_samples: GRPO scores each rollout against the others"),  # trained nothing
    (GRPOConfig, {"num_samples": 0}, "num_samples:"),
    (GRPOConfig, {"temperature": 0.0}, "temperature: GRPO samples"),
    (GRPOConfig, {"learning_rate": 0.0}, "learning_rate: must be > 0"),
    (GRPOConfig, {"advantage_eps": 0.0}, "advantage_eps: must be > 0"),
    (GRPOConfig, {"checkpoint_every": -1}, "checkpoint_every: must be >= 0"),
    (PretrainConfig, {"steps": 0}, "steps: must be >= 1"),
    (PretrainConfig, {"shortcut_rates": {"sub": 1.5}}, "shortcut_rates: shares must be in [0, 1]"),
    (RolloutConfig, {"num_samples": 1}, "num_samples: learnability p(1 - p) needs >= 2 samples"),  # every V = 0
    (RolloutConfig, {"num_samples": -3}, "num_samples:"),  # was checked at run time in every shard
    (RolloutConfig, {"temperature": 0.0}, "temperature: must be > 0"),
    (RolloutConfig, {"top_p": 0.0}, "top_p: must be in (0, 1]"),
    (FeatureConfig, {"problems_per_batch": 0}, "problems_per_batch: must be >= 1"),
    (FeatureConfig, {"kronecker_in": 0}, "kronecker_in: must be >= 1"),
    (AlignmentConfig, {"max_matrix_problems": -1}, "max_matrix_problems: must be >= 0"),
    (SelectionConfig, {"budget": 0}, "budget: must be >= 1"),  # was an empty subset, then a GRPO error
    (SelectionConfig, {"budget": -1}, "budget: must be >= 1"),  # was "n must be >= 0"
    (BenchmarkConfig, {"sampled_temperature": 0.0}, "sampled_temperature: must be > 0"),
    (CurriculumConfig, {"keep": 0}, "keep: must be >= 1"),
    (CurriculumConfig, {"candidate_samples": 1}, "candidate_samples: needs >= 2"),
    (TinyPolicyConfig, {"hidden_size": 100, "num_heads": 3}, "hidden_size: must be a multiple of num_heads"),
    (TaskConfig, {"max_new_tokens": 0}, "max_new_tokens: must be >= 1"),
    (SourceConfig, {"format": "generic", "answer_column": "a"}, "prompt_column: the generic format needs"),
    (SourceConfig, {"max_row_chars": 0}, "max_row_chars: must be >= 1"),
]


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    REFUSED,
    ids=[f"{c.__name__}-{next(iter(v))}={next(iter(v.values()))}" for c, v, _ in REFUSED],
)
def test_bad_values_are_refused_with_the_field_name(cls, values, message):
    with pytest.raises(ValueError) as refused:
        cls(**values)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(
    "cls",
    [
        GRPOConfig,
        PretrainConfig,
        RolloutConfig,
        FeatureConfig,
        AlignmentConfig,
        SelectionConfig,
        BenchmarkConfig,
        CurriculumConfig,
        TinyPolicyConfig,
        TaskConfig,
        SourceConfig,
    ],
)
def test_defaults_are_accepted(cls):
    cls()
