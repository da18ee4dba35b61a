"""Calibrate the selection experiment's GRPO learning rate on the warm-up alone, before any arm runs.

The rule (docs/results.md, "Learning rate"): the largest learning rate at which each seed's warm-up (the
experiment's own: its subset, steps and seed streams) does not lower sampled pass@1 (n = eval_samples, T = 1) on the
whole clean pool, on average over seeds. No arm is trained, so nothing here can look at a contrast.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/calibrate_warmup_lr.py --seeds 0 1 2 --lrs 3e-4 1e-4 3e-5
    # the experiment's base policy if it is materialized (else it is pre-trained here, ~7 min on one core):
    PYTHONPATH=. python scripts/calibrate_warmup_lr.py --policy $LEARNALIGN_HOME/artifacts/experiment_base_policy/...

`--pretrain-steps`, `--pool-size` shrink it to a smoke run (a different base policy: a check of the procedure, not
a calibration). Prints one line per (seed, lr), the table and the calibrated learning rate; `--out` keeps the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-4, 3e-5])
    parser.add_argument("--policy", default=None, help="a save_pretrained directory (default: pre-train the base)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="smoke runs only (default: PretrainConfig)")
    parser.add_argument("--pool-size", type=int, default=None, help="smoke runs only (default: the experiment's)")
    parser.add_argument("--out", default=None, help="write the table here (Parquet)")
    args = parser.parse_args()

    from learnalign_pipeline.lib.console import quiet_libraries

    quiet_libraries()  # one line per (seed, lr), no library bars
    import polars as pl

    from learnalign_pipeline.core.data.arithmetic import MIXES, pretraining_corpus
    from learnalign_pipeline.core.evaluation.experiment import (
        ExperimentConfig,
        ExperimentDataConfig,
        calibrated_learning_rate,
        experiment_problems,
        warmup_calibration,
    )
    from learnalign_pipeline.core.policy.model import TinyPolicyConfig, load_policy
    from learnalign_pipeline.core.selection.config import FeatureConfig
    from learnalign_pipeline.core.task.config import TaskConfig
    from learnalign_pipeline.core.training.config import GRPOConfig, PretrainConfig
    from learnalign_pipeline.core.training.sft import pretrain_tiny_policy

    started = time.perf_counter()
    data = ExperimentDataConfig()
    if args.pool_size:
        data = dataclasses.replace(data, pool_size=args.pool_size)
    problems = experiment_problems(data)
    task = TaskConfig()
    if args.policy:
        model, tokenizer = load_policy(args.policy)
    else:
        pretrain = PretrainConfig()
        if args.pretrain_steps:
            pretrain = dataclasses.replace(pretrain, steps=args.pretrain_steps)
        held_out = problems.filter(pl.col("role").is_in(["target", "validation", "off_target"]))["problem_id"]
        questions, targets = pretraining_corpus(
            pretrain.corpus_size,
            pretrain.corpus_seed,
            pretrain.shortcut_rates,
            exclude_ids=frozenset(held_out.to_list()),
            mix=MIXES[data.mix],
        )
        model, tokenizer, _ = pretrain_tiny_policy(
            questions, targets, TinyPolicyConfig(), pretrain, task.prompt_format()
        )
        print(f"base policy pre-trained in {time.perf_counter() - started:.0f} s", flush=True)
    table = warmup_calibration(
        args.seeds,
        args.lrs,
        model,
        tokenizer,
        problems,
        ExperimentConfig(),
        GRPOConfig(),
        FeatureConfig(),
        task,
        log=lambda line: print(line, flush=True),
    )
    summary = (
        table.group_by("learning_rate")
        .agg(pl.col("delta_points").mean().alias("mean_change_points"), pl.col("delta_points").alias("per_seed"))
        .sort("learning_rate", descending=True)
    )
    print(summary)
    chosen = calibrated_learning_rate(table)
    print(f"calibrated learning rate: {chosen}" if chosen else "every learning rate lowers it: try smaller ones")
    print(f"{time.perf_counter() - started:.0f} s in all")
    if args.out:
        table.write_parquet(args.out)


if __name__ == "__main__":
    main()
