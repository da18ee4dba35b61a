"""SmolLM2-135M-Instruct (the `smollm2` preset's real model) on this machine, side by side in one run (issue 22):

1. rollout tokens/s: the transformers backend vs vLLM's CPU build, on the same prompts (the embedded `realistic`
   mix in the preset's chat template, with its stop strings), seeds and sampling;
2. gradient-feature problems/s: the stage's batched function (`features_for_rates`, with the preset's projection
   and activation checkpointing) vs one call per problem, and the two feature matrices' agreement (the largest
   per-problem relative error |batched - loop| / |loop| and the lowest cosine);
3. the feature stage's achieved FLOP/s (`ModelShape.feature_flops`: useful FLOPs of the real tokens, padding and
   attention scores left out) against the fp32 GEMM rate measured in the same run (`compute.gemm_peak`, before and
   after the features; the higher of the two);
4. peak memory per token of the feature stage (the peak resident set in a process started with glibc's mmap
   threshold at 64 KiB, so that freed tensors leave it, as scripts/bench_feature_memory.py measures) against the
   estimator's figure (`core/selection/memory.py`, for the sub-batches the stage's planner picks);
5. how the feature stage scales with completion length: the same rollouts cut at two lengths.

The rollouts of both backends are generated once at the longest length; the features use vLLM's (the preset's
backend), each completion cut to its first L tokens, with rewards alternating within each problem so that every
problem has a gradient (the stage differentiates only problems with 0 < p < 1). The KL reference is the scored
policy itself (`reference: stage_start`). vLLM's CPU build binds its engine to one core; the transformers backend
and the features use --threads.

    .venv/bin/python scripts/fetch_smollm2.py
    .venv/bin/python scripts/bench_smollm2.py --out bench_smollm2.json          # the full run (~10 min, 2 cores)
    .venv/bin/python scripts/bench_smollm2.py --problems 2 --samples 2 --lengths 8,16 --gemm-size 256  # plumbing

The GGUF file's conversion is kept in --work and reused. Prints one line per stage, then the markdown table;
--out gets every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import torch

from learnalign_pipeline.core.compute import PeakMemory, gemm_peak
from learnalign_pipeline.core.data.arithmetic import MIXES, arithmetic_frame
from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend
from learnalign_pipeline.core.policy.gguf import convert_gguf
from learnalign_pipeline.core.policy.model import load_policy
from learnalign_pipeline.core.policy.rollouts import sample_rollouts, success_rates
from learnalign_pipeline.core.policy.vllm_backend import VLLMBackend, VLLMConfig
from learnalign_pipeline.core.selection.capture import linear_layers
from learnalign_pipeline.core.selection.config import FeatureConfig, RolloutConfig
from learnalign_pipeline.core.selection.features import (
    features_for_rates,
    memory_budget,
    planned_peak,
    problem_lengths,
)
from learnalign_pipeline.core.selection.memory import ModelShape, feature_memory
from learnalign_pipeline.core.storage.hashing import sha256_file
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.training.config import GRPOConfig
from learnalign_pipeline.core.training.grpo import to_rollout_batch
from learnalign_pipeline.paths import models_folder
from learnalign_pipeline.presets import SMOLLM2, SMOLLM2_FILE

MMAP_THRESHOLD = "65536"  # glibc returns freed blocks above 64 KiB at once: the resident set follows live tensors


def stage(message: str) -> None:
    print(message, flush=True)


# ---- pure helpers (tests/core/test_bench_smollm2.py) ----


def feature_agreement(batched: torch.Tensor, loop: torch.Tensor) -> dict:
    """The largest per-problem relative error |batched_i - loop_i| / |loop_i| and the lowest cosine of the rows."""
    a, b = batched.double(), loop.double()
    relative = (a - b).norm(dim=1) / b.norm(dim=1)
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=1)
    return {"max_relative_error": float(relative.max()), "min_cosine": float(cosine.min())}


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def table_row(measurement: str, baseline: str, compared: str, value: float, unit: str = "x") -> dict:
    """One row of the side-by-side table: what is compared, the two figures, and compared / baseline."""
    shown = "n/a" if math.isnan(value) else (f"{value:.2f}{unit}" if unit == "x" else f"{value:.1%}")
    return {"measurement": measurement, "baseline": baseline, "compared": compared, "ratio": shown}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| measurement | baseline | compared | compared / baseline |", "|---|---|---|---|"]
    lines += [f"| {r['measurement']} | {r['baseline']} | {r['compared']} | {r['ratio']} |" for r in rows]
    return "\n".join(lines)


def summary_rows(result: dict) -> list[dict]:
    """The table from the run's figures (`result`, as --out holds them)."""
    roll, feat = result["rollouts"], result["features"]
    hf, vllm = roll["transformers"], roll["vllm"]
    short, long = (feat["batched"][str(n)] for n in result["settings"]["lengths"])
    loop, gemm = feat["loop"], feat["gemm_flops"]
    rows = [
        table_row(
            f"rollout tokens/s ({hf['completions']} completions, <= {result['settings']['max_new_tokens']} new tokens)",
            f"transformers {hf['tokens_per_s']:.1f}",
            f"vLLM CPU {vllm['tokens_per_s']:.1f}",
            ratio(vllm["tokens_per_s"], hf["tokens_per_s"]),
        ),
        table_row(
            f"feature problems/s (L = {loop['length']}, {loop['problems']} problems)",
            f"one problem per call {loop['problems_per_s']:.3f}",
            f"batched {short['problems_per_s']:.3f}",
            ratio(short["problems_per_s"], loop["problems_per_s"]),
        ),
        {
            "measurement": "batched vs per-problem features",
            "baseline": "-",
            "compared": f"max relative error {feat['agreement']['max_relative_error']:.2e}",
            "ratio": f"min cosine {feat['agreement']['min_cosine']:.6f}",
        },
    ]
    for n, arm in ((result["settings"]["lengths"][0], short), (result["settings"]["lengths"][1], long)):
        rows.append(
            table_row(
                f"feature FLOP/s (L = {n}) vs fp32 GEMM ({feat['gemm_size']}^3)",
                f"GEMM {gemm / 1e9:.1f} GFLOP/s",
                f"features {arm['flops_per_s'] / 1e9:.1f} GFLOP/s",
                ratio(arm["flops_per_s"], gemm),
                unit="%",
            )
        )
    for n, arm in ((result["settings"]["lengths"][0], short), (result["settings"]["lengths"][1], long)):
        rows.append(
            table_row(
                f"feature peak memory per token (L = {n}, {arm['peak_tokens']} padded tokens)",
                f"estimate {arm['estimate_bytes'] / arm['peak_tokens'] / 1024:.1f} KiB",
                f"measured {arm['peak_bytes'] / arm['peak_tokens'] / 1024:.1f} KiB",
                ratio(arm["peak_bytes"], arm["estimate_bytes"]),
            )
        )
    slope = feat["marginal_bytes_per_token"]
    rows.append(
        table_row(
            "feature memory per added token (between the two lengths)",
            f"estimate {slope['estimate'] / 1024:.1f} KiB",
            f"measured {slope['measured'] / 1024:.1f} KiB",
            ratio(slope["measured"], slope["estimate"]),
        )
    )
    rows.append(
        table_row(
            f"feature stage, L = {result['settings']['lengths'][0]} -> {result['settings']['lengths'][1]}: "
            f"completion tokens {short['completion_tokens']} -> {long['completion_tokens']} "
            f"({ratio(long['completion_tokens'], short['completion_tokens']):.2f}x)",
            f"{short['seconds']:.1f} s",
            f"{long['seconds']:.1f} s",
            ratio(long["seconds"], short["seconds"]),
        )
    )
    rows.append(
        table_row(
            "feature completion tokens/s, same two lengths",
            f"{short['completion_tokens_per_s']:.1f}",
            f"{long['completion_tokens_per_s']:.1f}",
            ratio(long["completion_tokens_per_s"], short["completion_tokens_per_s"]),
        )
    )
    return rows


# ---- the run ----


def preset_settings(max_new_tokens: int, samples: int) -> tuple[TaskConfig, VLLMConfig, SamplingSpec, FeatureConfig]:
    """The smollm2 preset's task (template, chat, stop strings), vLLM engine, sampling and projection."""
    ops, resources = SMOLLM2["ops"], SMOLLM2["resources"]
    task = TaskConfig(**{**resources["task"]["config"], "max_new_tokens": max_new_tokens})
    rollout = RolloutConfig(**ops["rollouts_and_success_rates"]["config"])
    spec = SamplingSpec(samples, rollout.temperature, rollout.top_p, max_new_tokens)
    features = FeatureConfig(**ops["projected_gradients"]["config"])
    return task, VLLMConfig(**resources["generator"]["config"]), spec, features


def converted(work: Path) -> Path:
    gguf = models_folder() / SMOLLM2_FILE
    if not gguf.is_file():
        sys.exit(f"{gguf} does not exist: fetch it with `.venv/bin/python scripts/fetch_smollm2.py`")
    checkpoint = work / sha256_file(gguf)
    if not (checkpoint / "config.json").is_file():
        started = time.perf_counter()
        convert_gguf(gguf, checkpoint)
        stage(f"converted {gguf.name} -> {checkpoint} ({time.perf_counter() - started:.1f} s)")
    return checkpoint


def timed_rollouts(backend, problems, spec, task) -> tuple[pl.DataFrame, dict]:
    """A short warm-up call (engine start, first-call set-up), then the timed rollouts."""
    started = time.perf_counter()
    warm = SamplingSpec(1, spec.temperature, spec.top_p, 4)
    sample_rollouts(backend, problems[:1], warm, task.make_verifier(), task.prompt_format(), base_seed=99)
    warm_up = time.perf_counter() - started
    started = time.perf_counter()
    rollouts = sample_rollouts(backend, problems, spec, task.make_verifier(), task.prompt_format(), base_seed=0)
    seconds = time.perf_counter() - started
    tokens = int(rollouts["num_tokens"].sum())
    return rollouts, {
        "completions": rollouts.height,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": tokens / seconds,
        "warm_up_seconds": round(warm_up, 2),
        "mean_tokens": tokens / rollouts.height,
        "stopped_share": float((rollouts["finish_reason"] == "stop").mean()),
        "mean_p": float(success_rates(rollouts)["success_rate"].mean()),
    }


def run_rollouts(checkpoint: Path, problems: pl.DataFrame, args) -> tuple[pl.DataFrame, dict]:
    task, engine, spec, _ = preset_settings(args.max_new_tokens, args.samples)
    model, tokenizer = load_policy(checkpoint)
    _, hf = timed_rollouts(TransformersBackend(model, tokenizer), problems, spec, task)
    stage(
        f"rollouts [transformers, {args.threads} threads]: {hf['tokens']} tokens in {hf['seconds']} s "
        f"(warm-up {hf['warm_up_seconds']} s)"
    )
    del model
    backend = VLLMBackend(str(checkpoint), engine)
    try:
        rollouts, vllm = timed_rollouts(backend, problems, spec, task)
    finally:
        backend.close()
    stage(
        f"rollouts [vLLM CPU build]: {vllm['tokens']} tokens in {vllm['seconds']} s "
        f"(engine start and warm-up {vllm['warm_up_seconds']} s)"
    )
    return rollouts, {"transformers": hf, "vllm": vllm}


def cut(rollouts: pl.DataFrame, length: int) -> pl.DataFrame:
    """Each completion's first `length` tokens, rewards alternating within each problem (every problem has a
    gradient)."""
    return rollouts.with_columns(
        pl.col("token_ids").list.head(length),
        pl.col("num_tokens").clip(upper_bound=length),
        reward=(pl.col("sample_index") % 2).cast(pl.Float32),
    )


def measure_features(spec: dict) -> dict:
    """In a fresh process started with the mmap threshold fixed: the GEMM rate, then the stage's batched features at
    each length and one call per problem at the first, each with its time and peak resident set."""
    torch.set_num_threads(spec["threads"])
    cpu = torch.device("cpu")
    gemm_before = gemm_peak(cpu, torch.float32, spec["gemm_size"])
    stage(f"fp32 GEMM ({spec['gemm_size']}^3, {spec['threads']} threads): {gemm_before / 1e9:.1f} GFLOP/s")
    task, _, _, settings = preset_settings(max(spec["lengths"]), spec["samples"])
    fmt = task.prompt_format()
    model, tokenizer = load_policy(spec["checkpoint"])
    shape = ModelShape.of(model.config)
    problems = pl.read_parquet(spec["problems"])
    rollouts = pl.read_parquet(spec["rollouts"])
    estimator = feature_memory(
        model, linear_layers(model, settings.scope, settings.last_blocks), settings.projector(), None,
        settings.activation_checkpointing,
    )  # fmt: skip
    budget = memory_budget(model, settings.memory_budget_gib)

    def features(problems, rollouts, loss):
        rates = success_rates(rollouts)
        return features_for_rates(model, model, tokenizer, problems, rollouts, rates, loss, settings, fmt)

    def measured(call) -> tuple[torch.Tensor, float, int]:
        peak = PeakMemory(cpu)
        started = time.perf_counter()
        out = call()
        return out, time.perf_counter() - started, peak.peak_bytes()[0]

    first = spec["lengths"][0]
    features(problems[:1], cut(rollouts, first), GRPOConfig().loss(first))  # warm-up, not timed
    result = {"gemm_size": spec["gemm_size"], "batched": {}, "width": None}
    matrices = {}
    for length in spec["lengths"]:
        short, loss = cut(rollouts, length), GRPOConfig().loss(length)
        matrix, seconds, peak = measured(lambda short=short, loss=loss: features(problems, short, loss))
        prompt_tokens, planned = 0, []
        for start in range(0, problems.height, settings.problems_per_batch):  # the stage's content batches
            chunk = problems[start : start + settings.problems_per_batch]
            whole = to_rollout_batch(chunk, short, tokenizer, fmt, loss)
            prompt_tokens += sum(prompt for prompt, _ in problem_lengths(whole))
            planned.append(planned_peak(whole, estimator, budget))
        largest = max(planned, key=lambda p: p.bytes)
        completion_tokens = int(short["num_tokens"].sum())
        flops = shape.feature_flops(prompt_tokens, completion_tokens, settings.activation_checkpointing)
        result["width"] = matrix.shape[1]
        result["batched"][str(length)] = {
            "problems": problems.height,
            "seconds": seconds,
            "problems_per_s": problems.height / seconds,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "completion_tokens_per_s": completion_tokens / seconds,
            "flops": flops,
            "flops_per_s": flops / seconds,
            "peak_bytes": peak,
            "estimate_bytes": largest.bytes,
            "peak_tokens": largest.tokens,
            "sub_batches": sum(p.sub_batches for p in planned),
        }
        matrices[length] = matrix
        stage(
            f"features [batched, L = {length}]: {problems.height} problems, {completion_tokens} completion tokens "
            f"in {seconds:.1f} s, peak {peak / 2**20:.0f} MiB (estimate {largest.bytes / 2**20:.0f} MiB)"
        )
    short, loss = cut(rollouts, first), GRPOConfig().loss(first)

    def one_per_call():
        rows = []
        for i in range(problems.height):
            one = problems[i : i + 1]
            rows.append(features(one, short.filter(pl.col("problem_id") == one["problem_id"][0]), loss))
        return torch.cat(rows)

    loop, seconds, peak = measured(one_per_call)
    result["loop"] = {
        "length": first,
        "problems": problems.height,
        "seconds": seconds,
        "problems_per_s": problems.height / seconds,
        "peak_bytes": peak,
    }
    result["agreement"] = feature_agreement(matrices[first], loop)
    stage(
        f"features [one problem per call, L = {first}]: {seconds:.1f} s; max relative error "
        f"{result['agreement']['max_relative_error']:.2e}, min cosine {result['agreement']['min_cosine']:.6f}"
    )
    # measured again after the features, the better of the two is the rate (a busy machine only lowers it)
    result["gemm_flops_before_after"] = [gemm_before, gemm_peak(cpu, torch.float32, spec["gemm_size"])]
    result["gemm_flops"] = max(result["gemm_flops_before_after"])
    for arm in result["batched"].values():
        arm["share_of_gemm"] = arm["flops_per_s"] / result["gemm_flops"]
    stage(f"fp32 GEMM again: {result['gemm_flops_before_after'][1] / 1e9:.1f} GFLOP/s")
    short_arm, long_arm = (result["batched"][str(n)] for n in spec["lengths"])
    tokens = long_arm["peak_tokens"] - short_arm["peak_tokens"]
    result["marginal_bytes_per_token"] = {
        "measured": ratio(long_arm["peak_bytes"] - short_arm["peak_bytes"], tokens),
        "estimate": ratio(long_arm["estimate_bytes"] - short_arm["estimate_bytes"], tokens),
        "tokens": tokens,
    }
    return result


def run_features(checkpoint: Path, problems: pl.DataFrame, rollouts: pl.DataFrame, args) -> dict:
    """`measure_features` in a child process (glibc reads the mmap threshold only at start)."""
    args.work.mkdir(parents=True, exist_ok=True)
    spec = {
        "checkpoint": str(checkpoint),
        "problems": str(args.work / "problems.parquet"),
        "rollouts": str(args.work / "rollouts.parquet"),
        "lengths": args.lengths,
        "samples": args.samples,
        "threads": args.threads,
        "gemm_size": args.gemm_size,
    }
    problems.write_parquet(spec["problems"])
    rollouts.write_parquet(spec["rollouts"])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], env=env, stdout=subprocess.PIPE, text=True
    )
    lines = done.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(line, flush=True)
    if done.returncode != 0:
        sys.exit(f"the feature measurements failed ({done.returncode}); their output is above")
    return json.loads(lines[-1])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--problems", type=int, default=8, help="problems of the embedded realistic mix")
    parser.add_argument("--samples", type=int, default=4, help="K rollouts per problem")
    parser.add_argument(
        "--lengths", default="64,256", help="two completion lengths (new tokens) of the feature stage; the rollouts "
        "are generated at the longer one",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (transformers, features)")
    parser.add_argument("--gemm-size", type=int, default=2048, help="side of the fp32 GEMM that measures the peak")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problems drawn from the mix")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_smollm2"), help="conversion and scratch files")
    parser.add_argument("--out", type=Path, default=Path("bench_smollm2.json"), help="every figure, as JSON")
    args = parser.parse_args()
    from learnalign_pipeline.lib.console import quiet_libraries

    quiet_libraries()  # one line per stage: vLLM's and transformers' logs and bars stay off the console
    if args.child:
        print(json.dumps(measure_features(json.loads(args.child))))
        return
    args.lengths = sorted(int(n) for n in args.lengths.split(","))
    if len(args.lengths) != 2 or args.lengths[0] < 1 or args.lengths[0] == args.lengths[1]:
        sys.exit(f"--lengths takes two different positive lengths, e.g. 64,256 (got {args.lengths})")
    if args.problems < 1 or args.samples < 2:
        sys.exit("--problems must be >= 1 and --samples >= 2 (alternating rewards need two samples)")
    args.max_new_tokens = args.lengths[1]
    torch.set_num_threads(args.threads)
    load_before, started = os.getloadavg(), time.perf_counter()
    stage(
        f"bench_smollm2: {args.problems} problems x {args.samples} samples, lengths {args.lengths}, "
        f"{args.threads} threads, {os.cpu_count()} cores, load {load_before[0]:.2f}"
    )
    checkpoint = converted(args.work)
    problems = arithmetic_frame(args.problems, seed=args.seed, split="pool", mix=MIXES["realistic"])
    rollouts, rollout_figures = run_rollouts(checkpoint, problems, args)
    features = run_features(checkpoint, problems, rollouts, args)
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"},
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "seconds": round(time.perf_counter() - started, 1),
        "rollouts": rollout_figures,
        "features": features,
    }
    result["table"] = summary_rows(result)
    args.out.write_text(json.dumps(result, indent=1))
    stage(
        f"finished in {result['seconds']:.0f} s, load {result['machine']['load_after'][0]:.2f}; figures in {args.out}"
    )
    print("\n" + markdown_table(result["table"]))


if __name__ == "__main__":
    main()
