"""TRL's GRPOTrainer is bound to our loss: the settings map one to one (or are refused), one TRL update equals one
SGD update of `per_problem_loss(...).mean()` on the same rollouts, those rollouts are the rollout stage's seeded
samples, and a non-finite step fails naming its problems or is skipped and counted."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from learnalign_pipeline.core.compute import ComputeConfig
from learnalign_pipeline.core.data.arithmetic import arithmetic_frame
from learnalign_pipeline.core.policy.generation import TransformersBackend
from learnalign_pipeline.core.policy.model import save_policy
from learnalign_pipeline.core.policy.rollouts import sample_rollouts
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.task.prompts import render
from learnalign_pipeline.core.task.verify import RolloutRewards
from learnalign_pipeline.core.training.config import GRPOConfig, TrainerConfig
from learnalign_pipeline.core.training.grpo import per_problem_loss, to_rollout_batch, token_logprobs
from learnalign_pipeline.core.training.trl_engine import (
    SeededRollouts,
    TRLRun,
    VerifierReward,
    train_run,
    trl_args,
    trl_loss_args,
)

CPU = ComputeConfig(device="cpu")


def test_loss_settings_map_to_trl_and_what_trl_cannot_express_is_refused():
    args = trl_loss_args(GRPOConfig(beta=0.04, clip_epsilon=0.2, aggregation="sample_mean").loss(24))
    assert (args["loss_type"], args["scale_rewards"], args["beta"], args["epsilon"]) == ("grpo", "group", 0.04, 0.2)
    assert args["num_iterations"] == 1 and args["epsilon_high"] is None and args["max_completion_length"] == 24
    assert not args["vllm_importance_sampling_correction"] and not args["mask_truncated_completions"]
    args = trl_loss_args(GRPOConfig(aggregation="constant", scale_rewards=False).loss(16))
    assert (args["loss_type"], args["scale_rewards"], args["max_completion_length"]) == ("dr_grpo", "none", 16)
    with pytest.raises(ValueError, match="token_mean.*has no TRL loss_type"):
        trl_loss_args(GRPOConfig(aggregation="token_mean").loss(16))
    with pytest.raises(ValueError, match="advantage_eps=0.001: TRL adds a fixed 0.0001"):
        trl_loss_args(GRPOConfig(advantage_eps=1e-3).loss(16))
    trl_loss_args(GRPOConfig(advantage_eps=1e-3, scale_rewards=False).loss(16))  # unused without scaling: accepted


def test_a_step_splits_into_processes_and_micro_batches_or_is_refused():
    grpo, task = GRPOConfig(problems_per_step=8, num_samples=4), TaskConfig()
    args = trl_args(grpo, task, TrainerConfig(processes=2, micro_batch_rows=4), CPU, "/tmp/x")
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (4, 4)  # 2 x 4 x 4 = 32
    assert (
        args["use_cpu"] and not args["bf16"] and args["lr_scheduler_type"] == "constant" and not args["shuffle_dataset"]
    )
    with pytest.raises(ValueError, match="32 rollout rows .* do not split evenly over 3 processes"):
        TrainerConfig(processes=3).micro_batches(32)
    with pytest.raises(ValueError, match="trains 16 rows per step, not a multiple of micro_batch_rows=6"):
        TrainerConfig(processes=2, micro_batch_rows=6).micro_batches(32)


@pytest.fixture(scope="module")
def quirky(tokenizer, tmp_path_factory):
    """A config-built Qwen2 with an untied head, a vocabulary padded 16 ids beyond the tokenizer, and an EOS logit
    raised so completions end at varied lengths (1 to max_new_tokens), saved with a reference that differs from it
    (so the KL term has a gradient)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer) + 16, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=1, num_key_value_heads=1, head_dim=64, tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        ids = tokenizer(["Q: 3+4=?\nA:", "Q: 12*3=?\nA: 36"], return_tensors="pt", padding=True)
        hidden = model.model(**ids).last_hidden_state[ids.attention_mask.bool()].mean(0)
        model.lm_head.weight[tokenizer.eos_token_id] = 1.5 * hidden / hidden.norm()
    root = tmp_path_factory.mktemp("quirky")
    save_policy(model, tokenizer, root / "policy")
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_policy(reference, tokenizer, root / "reference")
    return root / "policy", root / "reference"


class LengthParity:
    """Rewards completions of even length: about half of a random policy's samples, so groups have variance."""

    name = "parity"

    def score_batch(self, completions, golds):
        return [float(len(c) % 2 == 0) for c in completions]


@pytest.mark.parametrize(
    "aggregation, scale_rewards, micro_batch_rows",
    [("sample_mean", True, 0), ("constant", False, 0), ("sample_mean", False, 4), ("constant", True, 8)],
)
def test_one_trl_update_equals_one_sgd_update_of_our_loss(
    quirky, tokenizer, aggregation, scale_rewards, micro_batch_rows, tmp_path
):
    """SGD with lr 1, no clipping, one step on 4 problems x 4 rollouts (whole batch or accumulated micro-batches):
    TRL's parameter change equals minus the gradient of our loss on the rollouts TRL trained on (rel. 1e-5), and
    those rollouts are exactly what the rollout stage samples for the same weights, problems and seed."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    policy_dir, reference_dir = quirky
    problems = arithmetic_frame(4, seed=7, split="pool")
    grpo = GRPOConfig(
        steps=1,
        problems_per_step=4,
        num_samples=4,
        beta=0.04,
        aggregation=aggregation,
        scale_rewards=scale_rewards,
        seed=3,
    )
    task = TaskConfig(max_new_tokens=12)
    prompts = [render("qa", p) for p in problems["prompt"]]
    args = trl_args(grpo, task, TrainerConfig(micro_batch_rows=micro_batch_rows), CPU, str(tmp_path / "trl"))
    args.update(learning_rate=1.0, max_grad_norm=0.0, save_strategy="no")
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    policy.config._name_or_path = str(reference_dir)  # TRL's reference model is loaded from here
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    rollouts = SeededRollouts(
        tokenizer, grpo.sampling(task.max_new_tokens), dict(zip(prompts, problems["problem_id"])), grpo.seed
    )
    trained_on = []

    def recording(batch_prompts, trainer):
        out = rollouts(batch_prompts, trainer)
        trained_on.extend(zip(batch_prompts, out["completion_ids"], out["completion_text"]))
        return out

    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=VerifierReward(RolloutRewards(LengthParity())),
        args=TRLGRPOConfig(**args),
        train_dataset=Dataset.from_dict(
            {"prompt": prompts, "answer": problems["answer"].to_list(), "problem_id": problems["problem_id"].to_list()}
        ),
        processing_class=tokenizer,
        rollout_func=recording,
        optimizers=(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)),
    )
    trainer.train()
    trl_delta = {n: p.detach() - before[n] for n, p in policy.named_parameters()}

    problem_of = dict(zip(prompts, problems["problem_id"]))
    frame = pl.DataFrame(
        [{"problem_id": problem_of[p], "token_ids": ids, "completion": text} for p, ids, text in trained_on]
    ).with_columns(pl.int_range(pl.len()).over("problem_id").alias("sample_index"))
    frame = frame.with_columns(reward=pl.Series(LengthParity().score_batch(frame["completion"].to_list(), [])))
    lengths = frame["token_ids"].list.len()
    assert lengths.min() < lengths.max() and 0 < frame["reward"].mean() < 1  # varied lengths, rewards with variance
    ours_sampled = sample_rollouts(
        TransformersBackend(AutoModelForCausalLM.from_pretrained(policy_dir), tokenizer),
        problems,
        grpo.sampling(12),
        LengthParity(),
        "qa",
        base_seed=grpo.seed * 1_000_003,
    )
    assert sorted(map(tuple, ours_sampled["token_ids"].to_list())) == sorted(map(tuple, frame["token_ids"].to_list()))

    ours = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).train()
    reference = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32)
    loss = grpo.loss(task.max_new_tokens)
    batch = to_rollout_batch(problems, frame, tokenizer, "qa", loss)
    with torch.no_grad():
        reference_logp = token_logprobs(reference, batch, grpo.temperature)
    per_problem_loss(
        token_logprobs(ours, batch, grpo.temperature), batch, loss, ref_logp=reference_logp
    ).mean().backward()
    ours_delta = torch.cat([-p.grad.flatten() for _, p in ours.named_parameters()])
    theirs = torch.cat([trl_delta[n].flatten() for n, _ in ours.named_parameters()])
    assert ours_delta.norm() > 1e-3  # the update is not trivially zero
    assert float((theirs - ours_delta).norm() / ours_delta.norm()) < 1e-5


def _run(tmp_path, start: Path, problems: pl.DataFrame, **grpo) -> TRLRun:
    problems.write_parquet(tmp_path / "problems.parquet")
    return TRLRun(
        start=str(start),
        problems=str(tmp_path / "problems.parquet"),
        output=str(tmp_path / "out"),
        state_dir=str(tmp_path / "state"),
        grpo=dataclasses.asdict(
            GRPOConfig(**{"problems_per_step": 4, "num_samples": 2, "beta": 0.0, "checkpoint_every": 0, **grpo})
        ),
        task=dataclasses.asdict(TaskConfig(max_new_tokens=6)),
    )


@pytest.fixture()
def poisoned(model, tokenizer, tmp_path):
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))  # every logit becomes NaN
    save_policy(model, tokenizer, tmp_path / "poisoned")
    return tmp_path / "poisoned"


def test_a_nonfinite_step_fails_naming_step_and_problems(poisoned, problems, tmp_path):
    with pytest.raises(FloatingPointError, match=r"at step 0 for 4 problems, e\.g\. \['[0-9a-f]{16}'"):
        train_run(_run(tmp_path, poisoned, problems, steps=1), TrainerConfig(), CPU, report=lambda r: None)


def test_a_nonfinite_step_is_skipped_and_counted_with_exclude(poisoned, problems, tmp_path):
    run = _run(tmp_path, poisoned, problems, steps=2, on_nonfinite="exclude")
    records = []
    train_run(run, TrainerConfig(), CPU, report=records.append)
    assert [r["nonfinite_problems"] for r in records] == [4, 4]
    before, after = load_file(poisoned / "model.safetensors"), load_file(Path(run.output) / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).all() for k in before)  # no update on NaN
    assert pl.read_parquet(Path(run.output) / "training_log.parquet")["nonfinite_problems"].to_list() == [4, 4]


def test_a_base_reference_without_the_base_checkpoint_is_refused(problems, tmp_path):
    """reference="base" never silently falls back to the stage's start."""
    with pytest.raises(ValueError, match="reference='base' needs the base checkpoint"):
        train_run(_run(tmp_path, tmp_path, problems, reference="base", beta=0.04), TrainerConfig(), CPU, print)


def test_the_gsm8k_preset_trains_with_the_papers_settings_through_trl():
    """G=8, T=1.0, beta 0.04, eps 0.2, lr 1e-6, warm-up one epoch of its 300 problems, chat template on, vLLM
    rollouts; every stage's step splits over the preset's processes into its micro-batches."""
    from learnalign_pipeline.presets import GSM8K_GPU

    ops, resources = GSM8K_GPU["ops"], GSM8K_GPU["resources"]
    task = TaskConfig(**resources["task"]["config"])
    trainer = TrainerConfig(**resources["trainer"]["config"])
    assert task.chat and trainer.rollouts == "vllm" and trainer.gradient_checkpointing
    warmup = ops["warmup_policy"]["config"]
    assert warmup["steps"] * warmup["problems_per_step"] == warmup["subset_size"] == 300  # one epoch
    for stage in ("warmup_policy", "trained_policy"):
        fields = {k: v for k, v in ops[stage]["config"].items() if k != "subset_size"}
        grpo = GRPOConfig(**fields, **resources["grpo_loss"]["config"])
        args = trl_args(grpo, task, trainer, CPU, "/tmp/x")
        assert (args["num_generations"], args["temperature"], args["learning_rate"]) == (8, 1.0, 1e-6)
        assert (args["beta"], args["epsilon"], args["loss_type"]) == (0.04, 0.2, "grpo")
        assert args["use_vllm"] and args["vllm_mode"] == "colocate" and args["per_device_train_batch_size"] == 12


@pytest.mark.parametrize(("handoff", "saved"), [("start", ("bfloat16", "BF16")), ("float32", ("float32", "F32"))])
def test_the_trained_policy_keeps_the_start_checkpoints_dtype_and_settings(
    model, tokenizer, problems, tmp_path, handoff, saved
):
    """Trained with float32 master weights, published in the start's bfloat16 (or, with handoff_dtype float32 as
    the GPU preset sets, in the master weights' float32, so the next stage does not restart from rounded weights),
    with its KV-cache setting (training turns the cache off) and the training log."""
    from safetensors import safe_open

    save_policy(model, tokenizer, tmp_path / "start", dtype=torch.bfloat16)
    run = _run(tmp_path, tmp_path / "start", problems, steps=1)
    train_run(run, TrainerConfig(handoff_dtype=handoff), CPU, report=lambda r: None)
    out = Path(run.output)
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == saved[0] and config["use_cache"] is True
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {saved[1]}
    assert pl.read_parquet(out / "training_log.parquet")["step"].to_list() == [0]


def test_a_bfloat16_reference_is_built_by_trl_in_bfloat16(model, tokenizer, tmp_path):
    """reference_dtype='bfloat16' (the GPU preset): TRL loads the frozen KL reference in bfloat16 while the policy
    keeps its float32 master weights; the default leaves the reference in the policy's float32."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    save_policy(model, tokenizer, tmp_path / "start")
    grpo = GRPOConfig(problems_per_step=2, num_samples=2, beta=0.04, checkpoint_every=0, steps=1)
    dtypes = {}
    for reference_dtype in ("float32", "bfloat16"):
        policy = AutoModelForCausalLM.from_pretrained(tmp_path / "start", dtype=torch.float32)
        trainer = TrainerConfig(reference_dtype=reference_dtype)
        args = trl_args(grpo, TaskConfig(max_new_tokens=4), trainer, CPU, str(tmp_path / reference_dtype))
        built = GRPOTrainer(
            model=policy,
            reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
            args=TRLGRPOConfig(**args),
            train_dataset=datasets.Dataset.from_dict({"prompt": ["1+1=", "2+2="]}),
            processing_class=tokenizer,
        )
        dtypes[reference_dtype] = (built.model.dtype, built.ref_model.dtype)
    assert dtypes == {"float32": (torch.float32,) * 2, "bfloat16": (torch.float32, torch.bfloat16)}
