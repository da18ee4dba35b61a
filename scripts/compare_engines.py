"""Engine comparison: our former GRPO loop against TRL's GRPOTrainer on the same start policy, problems, steps and
seeds, side by side in one run: wall time, reward per step, held-out greedy accuracy, weight difference.

The loop was deleted when TRL became the only engine (docs/design.md, "Training"); this script runs it from the
last commit that has it (`--builtin-commit`, default 583a5ab) in a temporary git worktree, with the same Python
environment, and TRL from this checkout as the assets launch it (the training script in one process).

    python scripts/compare_engines.py --home .learnalign          # after `learnalign demo`: its trained_policy stage
    python scripts/compare_engines.py --start DIR --problems P.parquet --benchmark B.parquet

Inputs with --home: the latest `warmup_policy`, `selected_subset` and `benchmark_problems` of that home's
instance, and the demo's training settings (60 steps x 32 problems x 8 samples, lr 3e-4, beta 0.04, seed 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUILTIN = """
import json, sys, time, torch
import polars as pl
from learnalign_pipeline.core.policy.model import load_policy, save_policy
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.core.training.config import GRPOConfig
from learnalign_pipeline.core.training.trainer import train_grpo
spec = json.loads(sys.argv[1])
model, tokenizer = load_policy(spec["start"])
task = TaskConfig(**spec["task"])
started = time.perf_counter()
history = train_grpo(model, tokenizer, pl.read_parquet(spec["problems"]), task.make_verifier(), GRPOConfig(**spec["grpo"]), task)
seconds = time.perf_counter() - started
save_policy(model, tokenizer, spec["output"])
print(json.dumps({"train_seconds": seconds, "rewards": [r["reward_mean"] for r in history]}))
"""


def _latest(home: Path, asset: str) -> Path:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None:
            raise SystemExit(f"{asset} was never materialized in {home}: run `learnalign demo` first")
        return Path(event.asset_materialization.metadata["path"].value)


def _run(command: list[str], env: dict, cwd: Path | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, cwd=cwd)
    if done.returncode:
        raise SystemExit(f"{command[:4]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="a LEARNALIGN_HOME after `learnalign demo`")
    parser.add_argument("--start", type=Path, help="start checkpoint (save_pretrained directory)")
    parser.add_argument("--problems", type=Path, help="training problems (Parquet: problem_id, prompt, answer)")
    parser.add_argument("--benchmark", type=Path, help="held-out problems (Parquet)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--builtin-commit", default="583a5ab", help="last commit with core/training/trainer.py")
    parser.add_argument("--out", type=Path, default=None, help="where the two trained policies go (default: a tmp dir)")
    args = parser.parse_args()
    if args.home:
        args.start = args.start or _latest(args.home, "warmup_policy")
        args.problems = args.problems or _latest(args.home, "selected_subset")
        args.benchmark = args.benchmark or _latest(args.home, "benchmark_problems")
    if not (args.start and args.problems and args.benchmark):
        parser.error("give --home, or --start, --problems and --benchmark")

    import polars as pl
    import torch
    from safetensors.torch import load_file

    from learnalign_pipeline.core.evaluation.benchmark import pass_at_1
    from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend
    from learnalign_pipeline.core.policy.model import load_policy
    from learnalign_pipeline.core.task.config import TaskConfig
    from learnalign_pipeline.core.training.config import GRPOConfig
    from learnalign_pipeline.core.training.trl_engine import Launch, TRLRun

    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="compare_engines_"))
    out.mkdir(parents=True, exist_ok=True)
    task = TaskConfig()  # the demo's: qa template, numeric_flexible, 24 new tokens
    grpo = GRPOConfig(steps=args.steps, checkpoint_every=0)  # the demo's trained_policy: 32 x 8, lr 3e-4, beta 0.04
    problems = pl.read_parquet(args.problems).select("problem_id", "prompt", "answer")
    problems.write_parquet(out / "problems.parquet")
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []

    worktree = Path(tempfile.mkdtemp(prefix="builtin_engine_")) / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.builtin_commit],
        check=True,
        capture_output=True,
    )
    try:
        spec = {
            "start": str(args.start),
            "problems": str(out / "problems.parquet"),
            "output": str(out / "builtin"),
            "grpo": {k: v for k, v in dataclasses.asdict(grpo).items() if k in GRPOConfig.__dataclass_fields__},
            "task": dataclasses.asdict(task),
        }
        # in the old tree's directory: `python -c` puts the working directory first on sys.path, and this checkout
        # (no trainer.py) must not shadow the old code
        command = [sys.executable, "-c", BUILTIN, json.dumps(spec)]
        wall, stdout = _run(command, {**env, "PYTHONPATH": str(worktree)}, cwd=worktree)
        result = json.loads(stdout.strip().splitlines()[-1])
        rows.append(
            (
                "builtin loop (commit " + args.builtin_commit + ")",
                wall,
                result["train_seconds"],
                result["rewards"],
                out / "builtin",
            )
        )
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], capture_output=True)

    run = TRLRun(
        start=str(args.start),
        problems=str(out / "problems.parquet"),
        output=str(out / "trl"),
        state_dir=str(out / "trl_state"),
        grpo=dataclasses.asdict(grpo),
        task=dataclasses.asdict(task),
    )
    Launch(runs=[run], trainer={}, compute={"device": "cpu"}).write(out / "launch.json")
    module = "learnalign_pipeline.lib.trl_launch"
    wall, stdout = _run([sys.executable, "-m", module, str(out / "launch.json")], {**env, "PYTHONPATH": str(REPO)})
    steps = [line for line in stdout.splitlines() if " GRPO step " in line]
    rewards = [float(line.split("reward_mean=")[1].split(",")[0]) for line in steps]
    done = [line for line in stdout.splitlines() if " done: " in line][-1]
    train_seconds = float(done.split("'seconds': ")[1].split(",")[0])
    rows.append(("TRL 1.16 GRPOTrainer (this checkout)", wall, train_seconds, rewards, out / "trl"))

    benchmark = pl.read_parquet(args.benchmark)
    print(
        f"start {args.start}\nproblems {args.problems} ({problems.height})\nbenchmark {args.benchmark} ({benchmark.height})"
    )
    print("\n| engine | wall s (process) | train s | reward step 1 | reward last step | held-out correct | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for name, wall, train, rewards, path in rows:
        model, tokenizer = load_policy(path)
        result, _ = pass_at_1(
            TransformersBackend(model, tokenizer), benchmark, task.make_verifier(), task.prompt_format(),
            SamplingSpec.greedy(task.max_new_tokens), name, "benchmark",
        )  # fmt: skip
        print(
            f"| {name} | {wall:.1f} | {train:.1f} | {rewards[0]:.3f} | {rewards[-1]:.3f} | {result.num_correct}/{result.num_problems} | {result.accuracy:.4f} |"
        )
    a, b = (load_file(path / "model.safetensors") for *_, path in rows)
    print(f"\nmax |builtin - TRL| over the final weights: {max(float((a[k] - b[k]).abs().max()) for k in a):.2e}")


if __name__ == "__main__":
    main()
