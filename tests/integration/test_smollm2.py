"""The first real pretrained LLM through the pipeline's pieces, in CI: SmolLM2-135M-Instruct (the registry's 4-bit
GGUF, 30 Llama blocks, GQA, tied embeddings, ChatML template) converted to a checkpoint, K samples per problem
through vLLM's CPU build with its chat template and stop strings, projected GRPO gradients over every linear layer
of all 30 blocks, and one TRL step. A handful of problems, short completions: it proves the path, not a number."""

import dataclasses
import json

import polars as pl
import pytest
import torch
from testing_utils import requires_vllm

from learnalign_pipeline.core.compute import CPU
from learnalign_pipeline.core.data.arithmetic import MIXES, arithmetic_frame
from learnalign_pipeline.core.policy.gguf import convert_gguf
from learnalign_pipeline.core.policy.model import load_policy
from learnalign_pipeline.core.policy.rollouts import sample_rollouts, success_rates
from learnalign_pipeline.core.policy.vllm_backend import VLLMBackend, VLLMConfig
from learnalign_pipeline.core.selection.capture import linear_layers
from learnalign_pipeline.core.selection.features import gradient_features
from learnalign_pipeline.core.selection.projection import KroneckerProjector
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.training.config import GRPOConfig, TrainerConfig
from learnalign_pipeline.core.training.trl_engine import TRLRun, train_run

TASK = TaskConfig(template="lm_eval_gsm8k", chat=True, verifier="numeric_flexible", max_new_tokens=24)
NUM_LAYERS = 30


@pytest.mark.slow
@requires_vllm
def test_smollm2_through_rollouts_features_and_a_trl_step(smollm2_gguf, tmp_path):
    checkpoint = tmp_path / "smollm2"
    convert_gguf(smollm2_gguf, checkpoint)
    assert json.loads((checkpoint / "config.json").read_text())["num_hidden_layers"] == NUM_LAYERS
    problems = arithmetic_frame(4, seed=5, split="pool", mix=MIXES["realistic"])
    fmt = TASK.prompt_format()

    backend = VLLMBackend(str(checkpoint), VLLMConfig(max_model_len=512, gpu_memory_utilization=0.15))
    try:
        spec = GRPOConfig(num_samples=4).sampling(TASK.max_new_tokens)
        rollouts = sample_rollouts(backend, problems, spec, TASK.make_verifier(), fmt, base_seed=0)
    finally:
        backend.close()
    assert rollouts.height == 16 and rollouts["completion"].str.len_chars().min() > 0
    # the chat template's end of turn stops a completion, never a second BOS or a runaway "Question:"
    assert set(rollouts["finish_reason"]) <= {"stop", "length"}
    rates = success_rates(rollouts)
    assert rates.height == 4

    model, tokenizer = load_policy(checkpoint)
    layers = linear_layers(model, "all_linear", 1)
    assert {name.split(".")[2] for name in layers} == {str(i) for i in range(NUM_LAYERS)}  # every block
    # synthetic rewards with variance, so every problem has a gradient whatever the model solved
    varied = rollouts.with_columns(reward=(pl.col("sample_index") % 2).cast(pl.Float64))
    result = gradient_features(
        model, model, tokenizer, problems, varied, GRPOConfig().loss(TASK.max_new_tokens),
        KroneckerProjector(4, 4, seed=0), fmt, checkpointing=True,
    )  # fmt: skip
    assert result.features.shape[0] == 4 and torch.isfinite(result.features).all()
    assert (result.features.norm(dim=1) > 0).all()
    del model

    problems.write_parquet(tmp_path / "problems.parquet")
    run = TRLRun(
        start=str(checkpoint),
        problems=str(tmp_path / "problems.parquet"),
        output=str(tmp_path / "trained"),
        state_dir=str(tmp_path / "state"),
        grpo=dataclasses.asdict(
            GRPOConfig(steps=1, problems_per_step=2, num_samples=2, beta=0.0, checkpoint_every=0, learning_rate=1e-5)
        ),
        task=dataclasses.asdict(dataclasses.replace(TASK, max_new_tokens=8)),
    )
    records = []
    train_run(run, TrainerConfig(), CPU, report=records.append)
    assert [r["step"] for r in records if "step" in r] == [0]
    trained, _ = load_policy(tmp_path / "trained")
    assert sum(p.numel() for p in trained.parameters()) > 100_000_000
