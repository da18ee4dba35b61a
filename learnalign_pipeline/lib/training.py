"""GRPO and pre-training inside assets: the run-config views of core's training settings, the reference model,
launching the TRL training script through Dagster Pipes, and publishing a trained policy as a checkpoint
directory (resumable after a kill)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import torch

import learnalign_pipeline

from ..core.compute import DTYPES, ComputeConfig, device_problems
from ..core.data.arithmetic import pretraining_corpus
from ..core.evaluation.charts import CURVES, training_curves
from ..core.policy.model import TinyPolicyConfig, load_policy, save_policy
from ..core.storage.artifacts import Checkpoint, content_digest
from ..core.storage.hashing import settings_hash
from ..core.task.config import TaskConfig
from ..core.training.config import LOSS_FIELDS, GRPOConfig, PretrainConfig, TrainerConfig
from ..core.training.grpo import GRPOLossConfig
from ..core.training.sft import pretrain_tiny_policy
from ..core.training.trl_engine import ROLLOUT_RECORDS, Launch, TRLRun, write_training_problems
from .charts import image, present, table
from .config import config_view, settings
from .outputs import versioned
from .progress import step_progress
from .resources import ArtifactStore, ComputeSettings, GRPOLoss, TaskSettings, TrainerSettings

TRAINING_MODULE = "learnalign_pipeline.lib.trl_launch"
ACCELERATE_CONFIGS = Path(learnalign_pipeline.__file__).parent / "core" / "training" / "accelerate"
PACKAGE_PARENT = Path(learnalign_pipeline.__file__).parent.parent  # on the launched processes' PYTHONPATH


def grpo_stage_config(**defaults) -> type:
    """The run config of a GRPO stage: GRPOConfig's schedule, sampling and optimisation fields, with this stage's
    `defaults`. The loss and its reference come from the shared `grpo_loss` resource, so every stage trains the
    same loss and the gradient features differentiate it."""
    return config_view(GRPOConfig, exclude=set(LOSS_FIELDS), defaults=defaults)


class GRPOStageConfig(grpo_stage_config()):
    """On-policy GRPO (core/training/config.py GRPOConfig documents every field)."""


class PretrainRunConfig(config_view(PretrainConfig, TinyPolicyConfig, exclude={"warmup_steps", "max_positions"})):
    """The base policy: the built-in Qwen2-architecture policy pre-trained here on generated worked solutions
    (model shape: core/policy/model.py TinyPolicyConfig; training: core/training/config.py PretrainConfig), or with
    `model_path` an existing `save_pretrained` directory (a real model) used as is."""


def grpo_settings(config: dg.Config, grpo_loss: GRPOLoss, **overrides) -> GRPOConfig:
    """The core settings of one GRPO run: the stage's fields, the shared loss, `overrides` (e.g. a seed)."""
    return dataclasses.replace(settings(config, GRPOConfig, **grpo_loss.model_dump()), **overrides)


def pretrain_settings(config: PretrainRunConfig) -> tuple[PretrainConfig, TinyPolicyConfig]:
    return settings(config, PretrainConfig), settings(config, TinyPolicyConfig)


def pretrain_checkpoint(
    context, config: PretrainRunConfig, task: TaskSettings, store: ArtifactStore, exclude_ids, corpus_mix, **recorded
) -> dg.Output:
    """Pre-train the built-in tiny policy on a corpus drawn from `corpus_mix` without the problems in `exclude_ids` (the
    held-out ones), with a progress bar; `recorded` joins the config in the checkpoint's training_config.json."""
    pretrain, spec = pretrain_settings(config)
    questions, targets = pretraining_corpus(
        pretrain.corpus_size, pretrain.corpus_seed, pretrain.shortcut_rates, exclude_ids=exclude_ids, mix=corpus_mix
    )
    started = time.perf_counter()
    with step_progress(context, pretrain.steps, "pre-training steps") as progress:
        model, tokenizer, history = pretrain_tiny_policy(
            questions, targets, spec, pretrain, task.prompt_format(), log=progress
        )
    return publish_checkpoint(
        store,
        model,
        tokenizer,
        history,
        config.model_dump() | recorded,
        dtype=DTYPES[spec.save_dtype],
        summary=f"{len(history)} steps, final loss {history[-1]['loss']:.3f}",
        corpus_examples=len(questions),
        vocab_size=len(tokenizer),
        final_loss=float(history[-1]["loss"]),
        train_seconds=round(time.perf_counter() - started, 1),
    )


def reference_checkpoint(grpo_loss: GRPOLoss, start: Checkpoint, base: Checkpoint) -> Checkpoint:
    """The KL reference of a GRPO stage that starts from `start`, and of gradient features scored at `start`: the
    one `reference` setting decides it for training and features alike."""
    return start if grpo_loss.reference == "stage_start" else base


def reference_model(loss: GRPOLossConfig, reference: Checkpoint, scored: Checkpoint, model):
    """The frozen reference model for features of `model` (loaded from `scored`): None without a KL term, the model
    itself when it is its own reference (no second copy is loaded)."""
    if not loss.beta:
        return None
    return model if reference.path == scored.path else load_policy(reference.path, device=model.device)[0]


def publish_checkpoint(
    store: ArtifactStore,
    model,
    tokenizer,
    history: list[dict],
    config: dict,
    *,
    output_name: str = "result",
    dtype=None,
    **metadata,
) -> dg.Output:
    """Save model, tokenizer (weights in `dtype`, the base model's; default as held), training log (Parquet) and
    config (JSON) to staging; the IO manager publishes it."""
    staging = store.staging_dir()
    save_policy(model, tokenizer, staging, dtype=dtype)
    log = pl.DataFrame(history) if history else pl.DataFrame({"step": []}, schema={"step": pl.Int64})
    # Wall-clock times stay out of the checkpoint so identical training gives an identical digest.
    log.drop("seconds", strict=False).write_parquet(staging / "training_log.parquet")
    return finish_checkpoint(staging, history, config, output_name=output_name, **metadata)


def finish_checkpoint(staging: Path, history: list[dict], config: dict, *, output_name: str = "result", **metadata):
    """Add the training config (JSON) to a saved policy in `staging` and return it for the IO manager to publish,
    with its parameter count and training curve as metadata."""
    (staging / "training_config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    log = pl.DataFrame(history) if history else pl.DataFrame({"step": []}, schema={"step": pl.Int64})
    return versioned(
        Checkpoint(staging),
        output_name=output_name,
        parameters=_parameter_count(staging),
        training_steps=log.height,
        **training_metadata(log, "training curves"),
        **metadata,
    )


def training_metadata(log: pl.DataFrame, title: str) -> dict:
    """Every step's curves as an image, the last step's values as numbers (plotted across materializations in the
    UI), and a table of every tenth step with the last one."""
    if not log.height:
        return {}
    every = max(1, log.height // 10)
    rows = log.filter((pl.col("step") % every == 0) | (pl.col("step") == log["step"].max()))
    last = log.tail(1).row(0, named=True)
    numbers = {f"last_{k}": float(last[k]) for k in CURVES if k in last and last[k] is not None}
    return {
        **present(training_curves=image(training_curves(log, title), title)),
        **numbers,
        "training_log": table(rows.select([c for c in ("step", *CURVES) if c in rows.columns]), max_rows=12),
    }


@dataclass(frozen=True)
class TrainingRequest:
    """One GRPO run of a stage: from `start` on `problems`, KL against `reference` (None: the start itself),
    resumable from the checkpoints any attempt at the same run left in `state_dir`."""

    start: Checkpoint
    problems: pl.DataFrame
    grpo: GRPOConfig
    state_dir: Path
    reference: Checkpoint | None = None
    record_rollouts: bool = False  # keep (step, problem, reward) of every rollout (LIMR's trajectories)


@dataclass(frozen=True)
class TrainedPolicy:
    """A finished run: the policy saved in `staging` (to be published), its per-step log, where it resumed."""

    staging: Path
    history: list[dict]
    resumed_from: str | None
    train_seconds: float
    rollouts: pl.DataFrame | None


def launch_command(trainer: TrainerConfig, compute: ComputeConfig, launch_file: Path) -> list[str]:
    """The command that trains a launch file: the script itself for one process; `accelerate launch` (run by the
    script's `--accelerate` entry, so it dies with the step) for several processes (data-parallel), FSDP or
    DeepSpeed ZeRO-3 (with the config file shipped in core/training/accelerate)."""
    script = ["-m", TRAINING_MODULE, str(launch_file)]
    processes = trainer.process_count()
    if processes == 1 and trainer.distributed == "ddp":
        return [sys.executable, *script]
    autocast = compute.autocast_dtype()
    command = [sys.executable, "-m", TRAINING_MODULE, "--accelerate", "--num_machines", "1"]
    command += ["--num_processes", str(processes), "--main_process_port", str(_free_port())]
    command += ["--mixed_precision", {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast, "no")]
    command += ["--dynamo_backend", "no"]
    if trainer.distributed == "ddp":  # the torch-elastic launcher; on CPU its processes use gloo (--cpu: just one)
        command += ["--multi_gpu"]
    else:
        command += ["--config_file", str(ACCELERATE_CONFIGS / f"{trainer.distributed}.yaml")]
    return [*command, *script]


def train_policies(
    context,
    requests: list[TrainingRequest],
    task: TaskConfig,
    trainer: TrainerConfig,
    compute: ComputeConfig,
    store: ArtifactStore,
) -> list[TrainedPolicy]:
    """Train every request in one launch of the TRL script through Dagster Pipes (one process per GPU), in order.

    The script's main process streams a message per step (a progress bar here, a log line every tenth of a run in
    the event log) and a summary per run. A failed launch raises with the tail of each process's log. A killed
    launch leaves sealed checkpoints in each request's `state_dir`; training again resumes from them."""
    for request in requests:  # before anything is launched: a short set would train no step
        try:
            request.grpo.require_full_step(request.problems.height)
        except ValueError as error:
            raise ValueError(f"{context.op.name}: {error}") from None
    refused = device_problems(
        compute, processes=trainer.processes, vllm_training=trainer.rollouts == "vllm", tensor_parallel_size=1, shards=1
    )
    if refused:
        raise ValueError("training cannot run on this machine's devices: " + "; ".join(map(str, refused)))
    trainer = trainer.resolved()
    compute, device_env = compute.launched(trainer.processes)
    attempt = uuid.uuid4().hex
    launch_dir = Path(store.root) / ".launches" / attempt
    launch_dir.mkdir(parents=True)
    runs, stagings = [], []
    for index, request in enumerate(requests):
        (request.state_dir / attempt).mkdir(parents=True)
        (request.state_dir / attempt / OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        problems = launch_dir / f"problems_{index}.parquet"
        write_training_problems(request.problems, problems)
        staging = store.staging_dir()
        stagings.append(staging)
        runs.append(
            TRLRun(
                start=str(request.start.path),
                reference=str(request.reference.path) if request.reference is not None else None,
                problems=str(problems),
                output=str(staging),
                state_dir=str(request.state_dir),
                attempt=attempt,
                grpo=dataclasses.asdict(request.grpo),
                task=dataclasses.asdict(task),
                record_rollouts=request.record_rollouts,
            )
        )
    Launch(runs=runs, trainer=dataclasses.asdict(trainer), compute=dataclasses.asdict(compute)).write(
        launch_dir / "launch.json"
    )
    command = launch_command(trainer, compute, launch_dir / "launch.json")
    env = {
        "LEARNALIGN_TRAIN_LOG_DIR": str(launch_dir / "logs"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")])),
        "TOKENIZERS_PARALLELISM": "false",
        **device_env,
    }
    total = sum(r.grpo.steps for r in requests)
    messages = _run_with_pipes(context, command, env, total, launch_dir)
    results = []
    for index, (request, staging) in enumerate(zip(requests, stagings, strict=True)):
        steps = [m for m in messages if m.get("run") == index and m.get("kind") == "step"]
        done = next(m for m in messages if m.get("run") == index and m.get("kind") == "done")
        history = pl.read_parquet(staging / "training_log.parquet").to_dicts()
        for record, message in zip(history[len(history) - len(steps) :], steps, strict=True):
            record["seconds"] = message.get("seconds")  # timings stay out of the checkpoint, not out of metadata
        records = request.state_dir / attempt / ROLLOUT_RECORDS
        rollouts = pl.read_parquet(records) if request.record_rollouts else None
        resumed = done["resumed_from"]
        if resumed:
            context.log.info(f"run {index + 1}: resumed from {resumed} in {request.state_dir}")
        results.append(TrainedPolicy(staging, history, resumed, round(done["seconds"], 1), rollouts))
        _remove_finished_attempts(request.state_dir, attempt)
    shutil.rmtree(launch_dir, ignore_errors=True)
    return results


OWNER = "owner.json"  # which process (host, pid) an attempt's directory belongs to


def _remove_finished_attempts(state_dir: Path, attempt: str) -> None:
    """The run is complete: remove this attempt's checkpoints, and those of attempts whose process is gone (killed
    on this host). An attempt still running (a concurrent run of the same stage) or on another host is left alone."""
    for path in state_dir.iterdir() if state_dir.is_dir() else []:
        try:
            owner = json.loads((path / OWNER).read_text())
        except (OSError, ValueError):
            owner = {}
        gone = owner.get("host") == socket.gethostname() and not _alive(owner.get("pid", 0))
        if path.name == attempt or gone:
            shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        state_dir.rmdir()  # when no other attempt is left


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_with_pipes(context, command: list[str], env: dict, total_steps: int, launch_dir: Path) -> list[dict]:
    """Run `command` in a Dagster Pipes session (what `PipesSubprocessClient.run` does, plus a progress bar fed by
    the step messages as they arrive); the custom messages it reported. Interrupting the step stops the launch."""
    with dg.open_pipes_session(
        context=context,
        context_injector=dg.PipesTempFileContextInjector(),
        message_reader=dg.PipesTempFileMessageReader(),
    ) as session:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env, **session.get_bootstrap_env_vars()},
            start_new_session=True,  # its own process group: stopped as a whole when the step is interrupted
        )
        try:
            with step_progress(context, total_steps, "GRPO steps", log=False) as progress:
                seen = 0
                while True:
                    finished = process.poll() is not None
                    steps = [m for m in session.get_custom_messages() if m.get("kind") == "step"]
                    for record in steps[seen:]:
                        progress({k: v for k, v in record.items() if k not in ("kind", "run")})
                    seen = len(steps)
                    if finished:
                        break
                    time.sleep(0.5)
        except BaseException:  # interrupted (Ctrl-C, run termination): no training process may outlive the step
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            raise
    if process.returncode != 0:
        tails = "\n".join(f"--- {log.name} ---\n{_tail(log)}" for log in sorted((launch_dir / "logs").glob("*.log")))
        raise RuntimeError(
            f"GRPO training failed (exit code {process.returncode}); logs in {launch_dir / 'logs'}:\n{tails}"
        )
    return list(session.get_custom_messages())


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_from(
    context,
    start: Checkpoint,
    base: Checkpoint,
    runs: list[tuple[pl.DataFrame, GRPOConfig]],
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    trainer: TrainerSettings,
    compute: ComputeSettings,
    store: ArtifactStore,
    record_rollouts: bool = False,
) -> list[TrainedPolicy]:
    """GRPO from `start` for each (problems, settings) of `runs`, in one launch; KL against the reference the
    `reference` setting names (`base`: the pre-trained policy). Each run resumes from its own checkpoints."""
    reference = reference_checkpoint(grpo_loss, start, base)
    requests = [
        TrainingRequest(
            start,
            problems,
            grpo,
            resume_directory(context, store, start, base, problems, grpo, task, trainer),
            reference=None if reference is start else reference,
            record_rollouts=record_rollouts,
        )
        for problems, grpo in runs
    ]
    return train_policies(context, requests, task.config(), trainer.config(), compute.config(), store)


def grpo_stage(
    context,
    config: dg.Config,
    task: TaskSettings,
    grpo_loss: GRPOLoss,
    trainer: TrainerSettings,
    compute: ComputeSettings,
    store: ArtifactStore,
    start: Checkpoint,
    base: Checkpoint,
    problems: pl.DataFrame,
    **recorded,
) -> dg.Output:
    """GRPO from checkpoint `start` (`base`: the pre-trained policy, the KL reference when `reference` is "base")
    on `problems` with a GRPO stage config; publishes the result. `recorded` goes into the checkpoint's
    training_config.json next to the stage config and the loss. A run in which every group had equal rewards (no
    advantage, so nothing learned from reward) fails with the counts, or with `on_no_signal="warn"` (the warm-up's
    default) is published with a warning, `no_reward_signal` in its metadata and the counts in its summary."""
    grpo = grpo_settings(config, grpo_loss)
    [trained] = train_from(context, start, base, [(problems, grpo)], task, grpo_loss, trainer, compute, store)
    history = trained.history
    silent = no_reward_signal(history, grpo.problems_per_step)
    if silent and grpo.on_no_signal == "fail":
        raise dg.Failure(
            description=f"{context.op.name}: {silent}. Check the gold answers and the policy's rollouts, sample more "
            "rollouts per problem (num_samples), train on problems the policy sometimes solves, or set "
            "on_no_signal: warn to publish it anyway",
            metadata={"steps": len(history), "problems_per_step": grpo.problems_per_step},
        )
    if silent:
        context.log.warning(f"{context.op.name}: {silent}; published anyway (on_no_signal: warn)")
    return finish_checkpoint(
        trained.staging,
        history,
        {
            **config.model_dump(exclude={"checkpoint_every"}),
            "loss": grpo_loss.model_dump(),
            "start": start.path.name,
            **recorded,
        },
        summary=f"reward {history[0]['reward_mean']:.2f} -> {history[-1]['reward_mean']:.2f} over {len(history)} steps"
        + (f"; NO REWARD SIGNAL: {silent}" if silent else ""),
        no_reward_signal=bool(silent),
        problems=problems.height,
        reward_first_step=history[0]["reward_mean"],
        reward_last_step=history[-1]["reward_mean"],
        kl_last_step=history[-1]["kl"],
        frac_reward_zero_std_mean=sum(r["frac_reward_zero_std"] for r in history) / len(history),
        nonfinite_steps_skipped=sum(r["nonfinite_problems"] > 0 for r in history),
        resumed_from=trained.resumed_from or "",
        train_seconds=trained.train_seconds,
        training_processes=trainer.config().process_count(),
    )


def no_reward_signal(history: list[dict], problems_per_step: int) -> str | None:
    """Why a GRPO run learned nothing from reward (every group of every step had equal rewards, so every advantage
    was 0: TRL's `frac_reward_zero_std` is 1 at each step), with the counts; None when some group had a signal."""
    if not history or any(step["frac_reward_zero_std"] < 1.0 for step in history):
        return None
    groups = len(history) * problems_per_step
    mean = sum(step["reward_mean"] for step in history) / len(history)
    return (
        f"all {groups} groups ({len(history)} steps x {problems_per_step} problems) had equal rewards (mean reward "
        f"{mean:.2f}), so every GRPO advantage was 0 and the weights moved only by the KL term, if at all"
    )


def resume_directory(
    context,
    store: ArtifactStore,
    start: Checkpoint,
    base: Checkpoint,
    problems: pl.DataFrame,
    grpo: GRPOConfig,
    task: TaskSettings,
    trainer: TrainerSettings,
) -> Path:
    """`<artifacts>/.resume/<stage>/<key>`: the key hashes everything the trained weights depend on (start and
    reference checkpoints, problems, GRPO settings, task, how the batch is split, code version), so a rerun of the
    same run finds its checkpoints and any change starts fresh. `checkpoint_every` is left out: it does not change
    the result."""
    stage = context.op.name
    key = settings_hash(
        {
            "stage": stage,
            "code_version": sorted(str(v) for v in context.assets_def.code_versions_by_key.values()),
            "start": start.path.name,  # content-addressed: the start checkpoint's digest prefix, verified on load
            "reference": base.path.name if grpo.reference == "base" else None,
            "problems": content_digest(problems),
            "grpo": {k: v for k, v in dataclasses.asdict(grpo).items() if k != "checkpoint_every"},
            "task": dataclasses.asdict(task.config()),
            "trainer": trainer.model_dump(),
        }
    )
    return Path(store.root) / ".resume" / stage / key[:24]


def _parameter_count(checkpoint: Path) -> int:
    """Parameters of a saved policy, read from its safetensors headers (tied weights are stored once)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(path, "pt") as tensors:
            for name in tensors.keys():
                total += int(torch.Size(tensors.get_slice(name).get_shape()).numel())
    return total
