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


def _settings_classes() -> list[type]:
    """Every settings dataclass of core (fields declared with `setting(...)`, so they carry help text)."""
    import dataclasses
    import importlib
    import pkgutil

    import learnalign_pipeline.core as core

    found = {}
    for module in pkgutil.walk_packages(core.__path__, f"{core.__name__}."):
        for value in vars(importlib.import_module(module.name)).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.name
                and any("help" in f.metadata for f in dataclasses.fields(value))
            ):
                found[value.__qualname__] = value
    return sorted(found.values(), key=lambda c: c.__qualname__)


def _float_fields() -> list[tuple[type, str, bool]]:
    """(settings class, field, whether it is a dict of numbers) for every float setting."""
    import dataclasses
    import typing

    fields = []
    for cls in _settings_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if typing.get_origin(hint) is dict and typing.get_args(hint)[1] is float:
                fields.append((cls, f.name, True))
            elif hint is float or (typing.get_origin(hint) is not dict and float in typing.get_args(hint)):
                fields.append((cls, f.name, False))
    return fields


FLOAT_FIELDS = _float_fields()


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize(
    ("cls", "name", "is_dict"), FLOAT_FIELDS, ids=[f"{c.__name__}.{n}" for c, n, _ in FLOAT_FIELDS]
)
def test_every_float_setting_refuses_nan_and_inf_naming_the_field(cls, name, is_dict, bad):
    """`learning_rate: inf` used to pass every bound and fail at step 1 blaming the problems; `temperature: inf`
    silently sampled uniformly (issue 25)."""
    value = {k: bad for k in getattr(cls(), name) or {"x": 0}} if is_dict else bad
    with pytest.raises(ValueError) as refused:
        cls(**{name: value})
    assert str(refused.value).startswith(f"{name}:")


def test_the_float_settings_are_found():
    names = {(c.__name__, n) for c, n, _ in FLOAT_FIELDS}
    assert {
        ("GRPOConfig", "learning_rate"),
        ("RolloutConfig", "temperature"),
        ("PretrainConfig", "shortcut_rates"),
    } <= names
    assert len(names) >= 15
