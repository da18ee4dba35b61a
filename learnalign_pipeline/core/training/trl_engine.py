"""GRPO through TRL's `GRPOTrainer`, the one training engine, bound to our loss. (polars is imported where it is
used: scripts/gpu_check.py runs `trl_args`, `SeededRollouts` and `VerifierReward` where there is no polars.)

`trl_args` maps our settings to TRL's so that TRL minimizes exactly `grpo.per_problem_loss(...).mean()` (the
parity test, tests/core/test_trl_engine.py, checks one update against ours), and refuses what TRL cannot express:

| ours (GRPOConfig) | TRL 1.16 GRPOConfig |
|---|---|
| aggregation sample_mean / constant | loss_type "grpo" / "dr_grpo" (max_completion_length = the task's max_new_tokens) |
| aggregation token_mean | refused: TRL's bnpo/dapo average over a micro-batch's or the batch's tokens instead |
| scale_rewards True / False | scale_rewards "group" / "none" (TRL adds a fixed 1e-4 to the std: advantage_eps must be 1e-4) |
| beta, clip_epsilon | beta (k3 estimator, same form), epsilon (epsilon_high = epsilon) |
| one policy update per generation | num_iterations=1, steps_per_generation = gradient accumulation: the ratio is exactly 1 |
| no correction of sampler/trainer mismatch | vllm_importance_sampling_correction=False, mask_truncated_completions=False |

Rollouts come from our seeded sampler through TRL's `rollout_func` (`SeededRollouts`): sample j of a problem at
step s uses seed `prompt_seeds(problem, seed * 1_000_003 + s) + j`, as the rollout stage does, so a run is
deterministic and the same whatever the number of processes or micro-batches. The batches are ours too: the
dataset is the run's whole sequence of step batches in order (`step_order`), read unshuffled, so TRL's one
"epoch" is the run and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..compute import CPU, ComputeConfig
from ..policy.generation import SamplingSpec, TransformersBackend, prompt_seeds, with_stop_strings
from ..policy.model import checkpoint_dtype, load_policy, save_policy
from ..storage.hashing import sha256_file
from ..task.config import TaskConfig
from ..task.prompts import encode_prompt, render
from ..task.verify import RolloutRewards
from .batches import epoch_batches
from .config import GRPOConfig, TrainerConfig
from .grpo import GRPOLossConfig

TRL_ADVANTAGE_EPS = 1e-4  # GRPOTrainer._generate_and_score_completions adds this to the reward std, fixed
SEAL = "complete.json"  # written last into a checkpoint directory: its files and their sha256


def trl_loss_args(loss: GRPOLossConfig) -> dict:
    """GRPOConfig fields that make TRL's loss ours; a ValueError for a loss TRL cannot express."""
    if loss.aggregation == "token_mean":
        raise ValueError(
            "aggregation='token_mean' (each problem's loss averaged over its own tokens) has no TRL loss_type: "
            "TRL's 'bnpo' and 'dapo' average over a micro-batch's or the whole batch's tokens, which weighs problems "
            "by their completion lengths. Use aggregation='sample_mean' (TRL 'grpo') or 'constant' (TRL 'dr_grpo')."
        )
    if loss.scale_rewards and loss.advantage_eps != TRL_ADVANTAGE_EPS:
        raise ValueError(
            f"advantage_eps={loss.advantage_eps}: TRL adds a fixed {TRL_ADVANTAGE_EPS} to the group's reward std; "
            f"set advantage_eps={TRL_ADVANTAGE_EPS} (or scale_rewards=False, where it is unused)."
        )
    return {
        "loss_type": {"sample_mean": "grpo", "constant": "dr_grpo"}[loss.aggregation],
        "scale_rewards": "group" if loss.scale_rewards else "none",
        "beta": loss.beta,
        "epsilon": loss.clip_epsilon,
        "epsilon_high": None,
        "max_completion_length": loss.max_completion_tokens,
        "num_iterations": 1,
        "steps_per_generation": None,
        "importance_sampling_level": "token",
        "mask_truncated_completions": False,
        "vllm_importance_sampling_correction": False,
        "top_entropy_quantile": 1.0,
        "entropy_coef": 0.0,
        "delta": None,
        "off_policy_mask_threshold": None,
        "use_bias_correction_kl": False,
        "multi_objective_aggregation": "sum_then_normalize",
        "sync_ref_model": False,
    }


def trl_args(
    grpo: GRPOConfig, task: TaskConfig, trainer: TrainerConfig, compute: ComputeConfig, output_dir: str
) -> dict:
    """Every GRPOConfig (TRL) field a run sets: the loss, sampling, the batch split, optimisation, device and
    precision, checkpoints, and quiet logging."""
    rows, accumulation = trainer.micro_batches(grpo.problems_per_step * grpo.num_samples)
    device = compute.torch_device()
    autocast = compute.autocast_dtype()
    return {
        **trl_loss_args(grpo.loss(task.max_new_tokens)),
        "output_dir": output_dir,
        "num_generations": grpo.num_samples,
        "temperature": grpo.temperature,
        "top_p": 1.0,
        "per_device_train_batch_size": rows,
        "gradient_accumulation_steps": accumulation,
        "max_steps": grpo.steps,
        "learning_rate": grpo.learning_rate,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "optim": "adamw_torch",
        "weight_decay": grpo.weight_decay,
        "max_grad_norm": grpo.max_grad_norm,
        "seed": grpo.seed,
        "data_seed": grpo.seed,
        "shuffle_dataset": False,  # the dataset already is the run's batch sequence (step_order)
        "disable_dropout": True,
        "use_cpu": device.type == "cpu",
        "bf16": autocast == torch.bfloat16,
        "fp16": autocast == torch.float16,
        "gradient_checkpointing": trainer.gradient_checkpointing,
        # TRL builds the reference from these when the policy is passed as a model (its default: the policy's dtype)
        **({"model_init_kwargs": {"dtype": trainer.reference_dtype}} if trainer.reference_dtype != "float32" else {}),
        "use_vllm": trainer.rollouts == "vllm",
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": trainer.vllm_memory_utilization,
        "save_strategy": "steps" if grpo.checkpoint_every else "no",
        "save_steps": grpo.checkpoint_every or 1,
        "save_total_limit": None,  # StateSealer deletes an older state only once a newer one is sealed
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "log_level": "error",
        "dataloader_num_workers": 0,
    }


def step_order(num_problems: int, grpo: GRPOConfig) -> list[int]:
    """Row indices of the problems trained at each step, steps concatenated (each step `problems_per_step` long)."""
    size = min(grpo.problems_per_step, num_problems)
    return [i for batch in epoch_batches(range(num_problems), size, grpo.steps, grpo.seed) for i in batch]


def rollout_seeds(problem_ids: list[str], seed: int, step: int, group: int, first_row: int) -> list[int]:
    """The sampling seed of each of a process's TRL rows at `step`: sample j of a problem's group gets
    `prompt_seeds(problem, seed * 1_000_003 + step) + j` (as the rollout stage seeds a step); the process's rows
    start at global row `first_row`, groups are contiguous. The sampler samples with it and the reward keys coins on
    it, so both agree whatever the rollout engine."""
    base_seed = seed * 1_000_003 + step
    return [prompt_seeds([pid], base_seed, group)[0] + (first_row + i) % group for i, pid in enumerate(problem_ids)]


class SeededRollouts:
    """TRL `rollout_func`: TRL hands over its rows (each problem's prompt repeated num_samples times, rows of a
    generation batch split contiguously over processes); row j of a group is sampled with our seeded sampler."""

    def __init__(
        self,
        tokenizer,
        sampling: SamplingSpec,
        problem_of_prompt: dict[str, str],
        seed: int,
        autocast_dtype: torch.dtype | None = None,
    ):
        self.tokenizer = tokenizer
        self.autocast_dtype = autocast_dtype
        self.one_sample = dataclasses.replace(sampling, num_samples=1)  # row j is drawn alone with seed + j
        self.problem_of_prompt = problem_of_prompt
        self.seed = seed

    def __call__(self, prompts: list[str], trainer) -> dict:
        from trl.models.utils import unwrap_model_for_generation

        group = trainer.num_generations
        offset = trainer.accelerator.process_index * len(prompts)
        problems = [self.problem_of_prompt[p] for p in prompts]
        seeds = rollout_seeds(problems, self.seed, trainer.state.global_step, group, offset)
        with (
            unwrap_model_for_generation(
                trainer.model_wrapped, trainer.accelerator,
                gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
            ) as model,
            trainer._dist.summon_full_params(trainer.model_wrapped, recurse=False),  # FSDP: whole weights (TRL 1.16)
        ):  # fmt: skip
            completions = [
                g[0]
                for g in TransformersBackend(model, self.tokenizer, autocast_dtype=self.autocast_dtype).generate(
                    prompts, self.one_sample, seeds
                )
            ]
        return {
            "prompt_ids": [encode_prompt(self.tokenizer, p) for p in prompts],
            "completion_ids": [list(c.token_ids) for c in completions],
            "logprobs": None,  # only TRL's vLLM importance-sampling correction reads them (off)
            "completion_text": [c.text for c in completions],  # what the verifier scores, as in the rollout stage
        }


class VerifierReward:
    """TRL reward function: each row's reward from the run's reward rule (`task/verify.py` RolloutRewards: coin flips
    for the problems the training table marks, the verifier otherwise), keyed on the row's sampling seed
    (`rollout_seeds`); keeps (step, problem, reward, tokens) of every row it scores (LIMR's trajectories are built
    from them)."""

    __name__ = "verifier"

    def __init__(self, rewards: RolloutRewards, seed: int = 0, group: int = 1):
        self.rewards, self.seed, self.group = rewards, seed, group
        self.records: list[dict] = []

    def __call__(self, prompts, completions, completion_ids, answer, problem_id, trainer_state, **columns):
        texts = columns.get("completion_text") or [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        step = trainer_state.global_step
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        seeds = rollout_seeds(list(problem_id), self.seed, step, self.group, rank * len(prompts))
        rewards = [float(r) for r in self.rewards(list(problem_id), seeds, list(texts), list(answer))]
        for pid, ids, reward in zip(problem_id, completion_ids, rewards, strict=True):
            self.records.append({"step": step, "problem_id": pid, "reward": reward, "num_tokens": len(ids)})
        return rewards


TRAINING_COLUMNS = ("problem_id", "prompt", "answer", "extra")


def write_training_problems(problems, path: Path) -> None:
    """The table a GRPO run reads (`TRLRun.problems`): ids, prompts, golds and `extra`, whose noise marks decide the
    training rewards (coin flips) as they decide every other reward."""
    import polars as pl

    if "extra" not in problems.columns:
        problems = problems.with_columns(pl.lit(None, dtype=pl.String).alias("extra"))
    problems.select(TRAINING_COLUMNS).write_parquet(path)


@dataclass(frozen=True)
class TRLRun:
    """One GRPO run, as the launched script reads it (JSON): from checkpoint `start` on the problems in
    `problems` (Parquet with problem_id, prompt, answer, extra: `write_training_problems`), into `output` (a save_pretrained directory in the start
    checkpoint's dtype). `state_dir` is shared by every attempt at the same run: each attempt writes its
    checkpoints and rollout records under `state_dir/<attempt>/` only (two attempts at once never touch each other's
    files) and resumes from the newest sealed checkpoint of any attempt."""

    start: str
    problems: str
    output: str
    state_dir: str
    grpo: dict  # GRPOConfig fields
    task: dict  # TaskConfig fields
    attempt: str = "0"
    reference: str | None = None  # the KL reference checkpoint; None: the start (GRPOConfig.reference "stage_start")
    record_rollouts: bool = False

    def settings(self) -> tuple[GRPOConfig, TaskConfig]:
        return GRPOConfig(**self.grpo), TaskConfig(**self.task)


@dataclass(frozen=True)
class Launch:
    """What one launch trains: `runs` in order, with the same trainer and compute settings."""

    runs: list[TRLRun]
    trainer: dict = field(default_factory=dict)  # TrainerConfig fields
    compute: dict = field(default_factory=dict)  # ComputeConfig fields

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> Launch:
        data = json.loads(Path(path).read_text())
        return cls(runs=[TRLRun(**r) for r in data["runs"]], trainer=data["trainer"], compute=data["compute"])


def seal_checkpoint(path: Path) -> None:
    """Record every file of a finished checkpoint directory with its sha256, atomically, as its last file."""
    files = {
        p.relative_to(path).as_posix(): sha256_file(p)
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != SEAL
    }
    scratch = path / f".{SEAL}.tmp"
    scratch.write_text(json.dumps(files, indent=1))
    os.replace(scratch, path / SEAL)


def _states(pattern: str, root: Path) -> dict[Path, int]:
    """HF's training-state directories (`checkpoint-<step>`) matching `pattern` under `root`, with their steps."""
    found = (p for p in root.glob(pattern) if p.is_dir())
    return {p: int(p.name.split("-")[-1]) for p in found if p.name.split("-")[-1].isdigit()}


def remove_older_states(path: Path) -> None:
    """Delete the training states of `path`'s attempt older than `path` (seal first: a state half deleted by a kill
    is unsealed, never half trusted)."""
    step = int(path.name.split("-")[-1])
    for older, older_step in _states("checkpoint-*", path.parent).items():
        if older_step < step:
            (older / SEAL).unlink(missing_ok=True)
            shutil.rmtree(older)


class StateSealer:
    """Seals each training state on a thread beside training (sha256 of the 18.5 GB state at 1.5B is tens of
    seconds of CPU, which the next steps' compute hides), then deletes the attempt's older states. A state is
    deleted only once a newer one is sealed, so a kill at any moment leaves the newest sealed state on disk; at most
    one sealed state of an attempt stays there, with its optimizer state. `wait` before reading the states."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def seal(self, path: Path) -> None:
        self.wait()  # one state at a time, in step order
        self._thread = threading.Thread(target=self._seal, args=(path,), name=f"seal {path.name}")
        self._thread.start()

    def _seal(self, path: Path) -> None:
        try:
            seal_checkpoint(path)
            remove_older_states(path)
        except BaseException as error:  # re-raised in the training thread by `wait`
            self._error = error

    def wait(self) -> None:
        """Until the last state is sealed (and older ones deleted); raises what sealing raised."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def newest_sealed_checkpoint(
    state_dir: Path, warn: Callable[[str], None] | None = None, into: Path | None = None
) -> Path | None:
    """The newest `<attempt>/checkpoint-<step>` under `state_dir` whose files all match its seal. One killed while
    being written has no seal; one changed afterwards fails its digests; both are skipped (training resumes from an
    older one, or starts over: the same result, later). With `into` (the resuming attempt's directory), another
    attempt's state is hard-linked to `into/<its name>` first and the links are verified (each file hashed once):
    its attempt deletes it once it sealed a newer one, and HF, reading a state in several passes, silently starts
    over (step 0, fresh optimizer) when a file is gone by its second pass; the links keep the files."""
    tried: set[Path] = set()
    while True:  # listed again after each candidate: one deleted meanwhile has a newer sealed one
        steps = _states("*/checkpoint-*", state_dir)
        found = sorted(set(steps) - tried, key=steps.get, reverse=True)
        if into is not None:
            found = [p for p in found if p.parent == into or not (into / p.name).exists()]
        if not found:
            return None
        path = found[0]
        tried.add(path)
        local = path if into is None or path.parent == into else into / path.name
        try:
            if local != path:
                shutil.copytree(path, local, copy_function=_link_or_copy)
            files = json.loads((local / SEAL).read_text())
            changed = [name for name, digest in files.items() if sha256_file(local / name) != digest]
        except (OSError, ValueError) as error:
            changed = [f"{SEAL} ({type(error).__name__})"]
        if not changed:
            return path
        if local != path:
            shutil.rmtree(local, ignore_errors=True)
        if warn:
            warn(f"skipping checkpoint {path}: unsealed or changed ({', '.join(changed[:3])})")


def _resume_point(state_dir: Path, attempt_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """`newest_sealed_checkpoint(state_dir, into=attempt_dir)`, looked up by the first process and shared with the
    others, so each file is linked and hashed once."""
    found = [None]
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        found = [newest_sealed_checkpoint(state_dir, warn, into=attempt_dir)]
    if torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(found, src=0)
    return found[0]


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except FileNotFoundError:
        raise
    except OSError:  # a filesystem without hard links
        shutil.copy2(source, target)


HISTORY_KEYS = {  # our training-log column -> TRL's logged metric
    "loss": "loss",
    "reward_mean": "reward",
    "reward_std": "reward_std",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "completion_tokens_mean": "completions/mean_length",
    "grad_norm": "grad_norm",
    "kl": "kl",
    "entropy": "entropy",
    "seconds": "step_time",
}


def train_run(
    run: TRLRun,
    trainer_config: TrainerConfig,
    compute: ComputeConfig,
    report: Callable[[dict], None],
    warn: Callable[[str], None] = print,
    verifier=None,
    observe: Callable[[dict, torch.nn.Module], None] | None = None,
) -> dict:
    """Train `run` in this process (one rank of a launch); returns its summary. On the main process, `report`
    receives one record per step and `warn` hears of checkpoints that were skipped. `verifier` replaces the task's
    (tests use synthetic rewards); either way the problems' noise marks apply (`data/noise.py` rollout_rewards). `observe(record, model)` sees the live model after each step (the experiment
    evaluates it there; it must leave the weights and the training's random streams alone)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental in TRL 1.16
    import datasets
    import polars as pl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    datasets.disable_progress_bars()
    grpo, task = run.settings()
    if grpo.reference == "base" and grpo.beta and not run.reference:
        raise ValueError("reference='base' needs the base checkpoint: set TRLRun.reference")
    problems = pl.read_parquet(run.problems)
    if problems.height == 0:
        raise ValueError("GRPO needs at least one problem")
    tokenizer = AutoTokenizer.from_pretrained(run.start, padding_side="left")
    template = task.prompt_format()
    prompts = [render(template, p, tokenizer) for p in problems["prompt"].to_list()]
    order = step_order(problems.height, grpo)
    dataset = datasets.Dataset.from_dict({
        "prompt": [prompts[i] for i in order],
        "answer": [problems["answer"][i] for i in order],
        "problem_id": [problems["problem_id"][i] for i in order],
    })  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(run.start, dtype=torch.float32, use_safetensors=True)  # master weights
    if grpo.beta:
        # GRPOTrainer loads its frozen reference model from this path (trl: get_config_model_id(model.config)).
        model.config._name_or_path = run.reference or run.start
    sampling = with_stop_strings(grpo.sampling(task.max_new_tokens), template.stop)  # as the rollout stage samples
    rollouts = SeededRollouts(
        tokenizer, sampling, dict(zip(prompts, problems["problem_id"])), grpo.seed, compute.autocast_dtype()
    )
    from ..data.noise import rollout_rewards

    reward = VerifierReward(rollout_rewards(problems, verifier or task.make_verifier()), grpo.seed, grpo.num_samples)
    checkpoints = Path(run.state_dir) / run.attempt
    history: list[dict] = []
    skipped: dict[int, int] = {}
    sealer = StateSealer()

    class Steps(TrainerCallback):
        """Stops (or skips) a step whose gradient is not finite, seals checkpoints (none at the last step), reports
        each step."""

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else torch.tensor(True)
            finite = finite.to(model.device).float()
            if torch.distributed.is_initialized():
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            if finite.item():
                return
            named = sorted({r["problem_id"] for r in reward.records if r["step"] == state.global_step})
            if grpo.on_nonfinite == "fail":
                raise FloatingPointError(
                    f"non-finite GRPO loss or gradient at step {state.global_step} for {len(named)} problems, "
                    f"e.g. {named[:5]}"
                )
            skipped[state.global_step] = len(named)
            for p in model.parameters():
                p.grad = None  # the optimizer skips parameters without a gradient: no update, no moment decay

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False  # HF saves at the end; the trained policy is published right after

        def on_save(self, args, state, control, **kwargs):
            _barrier()  # every rank has written its part of the checkpoint (optimizer shards, RNG state)
            records = _gathered(reward.records) if run.record_rollouts else []
            if state.is_world_process_zero:
                path = checkpoints / f"checkpoint-{state.global_step}"
                # HF pickles the whole TrainingArguments here and never reads it back: keep only tensor files, which
                # resume loads weights-only.
                (path / "training_args.bin").unlink(missing_ok=True)
                if run.record_rollouts:
                    _records_frame(records).write_parquet(path / ROLLOUT_RECORDS)
                sealer.seal(path)
            _barrier()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "reward" not in logs:
                return
            record = {"step": state.global_step - 1, **_metrics(logs)}
            record["nonfinite_problems"] = skipped.get(state.global_step - 1, 0)
            state.log_history[-1][NONFINITE_KEY] = record["nonfinite_problems"]  # saved with the checkpoints
            history.append(record)
            report(record)
            if observe is not None:
                observe(record, kwargs["model"])  # the trainer passes its (unwrapped, one-process) model

    args = trl_args(grpo, task, trainer_config, compute, str(checkpoints))
    if trainer_config.rollouts == "vllm" and sampling.stop:
        args["generation_kwargs"] = {"stop": list(sampling.stop)}  # vLLM's SamplingParams: the same stop strings
    args = TRLGRPOConfig(**args)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollouts if trainer_config.rollouts == "seeded" else None,
        callbacks=[Steps()],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    resume = _resume_point(Path(run.state_dir), checkpoints, warn)
    local = checkpoints / resume.name if resume else None  # this attempt's links to it (or itself)
    if local is not None and trainer.accelerator.is_main_process:  # what was logged and recorded before it
        history.extend(_history_from_state(local))
        if run.record_rollouts:
            reward.records.extend(pl.read_parquet(local / ROLLOUT_RECORDS).to_dicts())
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(local) if local else None)
    finally:
        sealer.wait()  # a state still being sealed when training ends or fails is finished (a kill leaves it unsealed)
    seconds = time.perf_counter() - started
    dtype = torch.float32 if trainer_config.handoff_dtype == "float32" else checkpoint_dtype(run.start)
    _save_final(trainer, tokenizer, Path(run.output), Path(run.start), history, dtype)
    records = _gathered(reward.records) if run.record_rollouts else []
    if run.record_rollouts and trainer.accelerator.is_main_process:
        _records_frame(records).write_parquet(checkpoints / ROLLOUT_RECORDS)
    summary = {
        "output": run.output,
        "resumed_from": resume.relative_to(run.state_dir).as_posix() if resume else None,
        "seconds": seconds,
        "steps": len(history),
    }
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return summary


def train_in_memory(
    model,
    tokenizer,
    problems,
    grpo: GRPOConfig,
    task: TaskConfig,
    workdir: Path,
    *,
    reference=None,
    verifier=None,
    observe: Callable[[dict, torch.nn.Module], None] | None = None,
    compute: ComputeConfig | None = None,
):
    """(trained model, history): `train_run` in this process for a policy held in memory, for callers that train
    many short runs without Dagster (the selection experiment). The start (and `reference`, the KL reference when
    it is not the start) is saved under `workdir`, trained there, and the trained policy loaded back in float32 on
    the start's device; `model` itself is left as it was. Without checkpoints (`grpo.checkpoint_every` 0), nothing
    is left in `workdir` but the saved policies."""
    workdir = Path(workdir)
    save_policy(model, tokenizer, workdir / "start")
    if reference is not None:
        save_policy(reference, tokenizer, workdir / "reference")
    write_training_problems(problems, workdir / "problems.parquet")
    run = TRLRun(
        start=str(workdir / "start"),
        problems=str(workdir / "problems.parquet"),
        output=str(workdir / "trained"),
        state_dir=str(workdir / "state"),
        grpo=dataclasses.asdict(grpo),
        task=dataclasses.asdict(task),
        reference=str(workdir / "reference") if reference is not None else None,
    )
    history: list[dict] = []
    train_run(run, TrainerConfig(), compute or CPU, history.append, verifier=verifier, observe=observe)
    trained, _ = load_policy(run.output, device=next(model.parameters()).device)
    return trained, history


ROLLOUT_RECORDS = "rollout_records.parquet"
NONFINITE_KEY = "learnalign/nonfinite_problems"  # kept in TRL's log history, so it survives a resume


def _metrics(logs: dict) -> dict:
    """Our training-log record from one of TRL's log entries (NaN for what it did not log)."""
    values = {ours: logs.get(theirs) for ours, theirs in HISTORY_KEYS.items()}
    return {k: float("nan") if v is None else float(v) for k, v in values.items()}


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _gathered(records: list[dict]) -> list[dict]:
    """Every rank's records, on every rank (a collective: all ranks must call it)."""
    if not torch.distributed.is_initialized():
        return list(records)
    from accelerate.utils import gather_object

    return gather_object(records)


def _records_frame(records: list[dict]):
    import polars as pl

    schema = {"step": pl.Int32, "problem_id": pl.String, "reward": pl.Float64, "num_tokens": pl.Int32}
    return pl.DataFrame(records, schema=schema).sort("step", "problem_id", maintain_order=True)


def _history_from_state(checkpoint: Path) -> list[dict]:
    """The per-step records logged before `checkpoint` (TRL keeps its log in trainer_state.json)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [
        {"step": entry["step"] - 1, **_metrics(entry), "nonfinite_problems": entry.get(NONFINITE_KEY, 0)}
        for entry in state["log_history"]
        if "reward" in entry
    ]


def _save_final(trainer, tokenizer, output: Path, start: Path, history: list[dict], dtype: torch.dtype) -> None:
    """The trained policy as a save_pretrained directory in `dtype` with the start checkpoint's settings (training
    turns off the KV cache): gathered from every rank (replicated, FSDP full state or ZeRO-3), written by the main
    process, with the training log (no timings, so identical training gives identical bytes)."""
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.accelerator.is_main_process:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.use_cache = json.loads((start / "config.json").read_text()).get("use_cache", True)
    save_policy(model, tokenizer, output, dtype=dtype, state=state)
    import polars as pl

    pl.DataFrame(history).drop("seconds", strict=False).write_parquet(output / "training_log.parquet")
