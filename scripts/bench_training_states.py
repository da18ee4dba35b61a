"""What GRPO training states cost, before vs after issue 24, side by side in one run, on the CPU.

The same small GRPO run (a tiny policy from `core/policy/model.py`, arithmetic problems, the task's verifier,
`checkpoint_every` steps between training states) trains in a fresh process per arm, the arms alternating:
- before: the package as of `--before` (default 95eb09d, integration before this change: HF deletes the older
  state when it writes a newer one, the seal hashes every file on the training thread, the last step writes a
  state too);
- after: this tree (`trl_engine.StateSealer`: the seal runs beside training, the older state is deleted once the
  newer one is sealed, no state at the last step).

Per run it reports the training wall time (`train_run`'s `seconds`), the time training waited on states (HF
writing them, `Trainer._save_checkpoint`, plus our `on_save` callback and any wait for a seal), the sealing time
itself (wherever it ran), the states written and left on disk, and one state's size.

    PYTHONPATH=. python scripts/bench_training_states.py [--steps 10] [--every 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(vocab_size=320, hidden_size=512, intermediate_size=1024, num_layers=4, num_heads=8, num_kv_heads=2)


def prepare(root: Path) -> None:
    """The start policy and the problems, written once for every arm."""
    from learnalign_pipeline.core.data.arithmetic import arithmetic_frame, generate_problems
    from learnalign_pipeline.core.policy.model import TinyPolicyConfig, build_model, save_policy, train_tokenizer
    from learnalign_pipeline.core.task.prompts import render
    from learnalign_pipeline.core.training.trl_engine import write_training_problems

    corpus = [render("qa", p.prompt) + " " + p.solution for p in generate_problems(600, seed=123)]
    tokenizer = train_tokenizer(corpus, SHAPE["vocab_size"])
    save_policy(build_model(TinyPolicyConfig(**SHAPE), tokenizer, seed=0), tokenizer, root / "start")
    write_training_problems(arithmetic_frame(24, seed=7, split="pool"), root / "problems.parquet")


def worker(root: Path, name: str, steps: int, every: int) -> dict:
    """One training run with timers around the state writes and seals (runs in the arm's own tree)."""
    import torch
    import transformers
    from transformers.trainer_callback import CallbackHandler

    from learnalign_pipeline.core.compute import ComputeConfig
    from learnalign_pipeline.core.task.config import TaskConfig
    from learnalign_pipeline.core.training import trl_engine
    from learnalign_pipeline.core.training.config import GRPOConfig, TrainerConfig

    torch.manual_seed(0)
    timers = {"write": 0.0, "on_save": 0.0, "final_wait": 0.0, "seal": 0.0}
    inside = dict.fromkeys(timers, False)
    counts = {"written": 0}

    def timed(owner, attribute: str, timer: str) -> None:
        original = getattr(owner, attribute)

        def wrapper(*args, **kwargs):
            nested = timer == "final_wait" and inside["on_save"]  # a wait inside on_save is counted there
            started, inside[timer] = time.perf_counter(), True
            try:
                return original(*args, **kwargs)
            finally:
                inside[timer] = False
                timers[timer] += 0.0 if nested else time.perf_counter() - started
                counts["written"] += timer == "write"

        setattr(owner, attribute, wrapper)

    timed(transformers.Trainer, "_save_checkpoint", "write")
    timed(CallbackHandler, "on_save", "on_save")
    timed(trl_engine, "seal_checkpoint", "seal")
    if hasattr(trl_engine, "StateSealer"):
        timed(trl_engine.StateSealer, "wait", "final_wait")
    grpo = GRPOConfig(steps=steps, problems_per_step=4, num_samples=4, seed=3, checkpoint_every=every)
    run = trl_engine.TRLRun(
        start=str(root / "start"),
        problems=str(root / "problems.parquet"),
        output=str(root / name / "out"),
        state_dir=str(root / name / "state"),
        grpo=dataclasses.asdict(grpo),
        task=dataclasses.asdict(TaskConfig(max_new_tokens=16)),
    )
    started = time.perf_counter()
    summary = trl_engine.train_run(run, TrainerConfig(), ComputeConfig(device="cpu"), lambda record: None)
    states = sorted(Path(run.state_dir).glob("*/checkpoint-*"))
    waited = timers["write"] + timers["on_save"] + timers["final_wait"]
    return {
        "package": str(Path(trl_engine.__file__).parents[3]),
        "train_s": summary["seconds"],
        "run_s": time.perf_counter() - started,
        "waited_s": waited,
        "waited_share": waited / summary["seconds"],
        "seal_s": timers["seal"],
        "states_written": counts["written"],
        "states_on_disk": len(states),
        "state_mb": sum(p.stat().st_size for p in states[-1].rglob("*") if p.is_file()) / 1e6 if states else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--every", type=int, default=2, help="checkpoint_every, the same for both arms")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", default="95eb09d", help="git revision of the 'before' package")
    parser.add_argument("--worker", nargs=2, metavar=("ROOT", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), args.worker[1], args.steps, args.every)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_states_") as scratch:
        root = Path(scratch)
        before_tree = root / "before_tree"
        before_tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.before, "learnalign_pipeline"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before_tree)], input=archive, check=True)
        prepare(root)
        trees = {"before": before_tree, "after": REPO}
        results: dict[str, list[dict]] = {arm: [] for arm in trees}
        for repeat in range(args.repeats):
            for arm, tree in trees.items():
                env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
                command = [sys.executable, __file__, "--steps", str(args.steps), "--every", str(args.every)]
                done = subprocess.run(
                    [*command, "--worker", str(root), f"{arm}{repeat}"], env=env, capture_output=True, text=True
                )
                if done.returncode:
                    sys.exit(f"{arm} run failed:\n{done.stderr[-3000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                assert Path(result.pop("package")) == tree, f"{arm} imported the package from elsewhere"
                results[arm].append(result)
                print(f"{arm} #{repeat}: {results[arm][-1]}", flush=True)
    print(f"\n{args.steps} steps, a state every {args.every}; medians of {args.repeats} runs per arm")
    print("| arm | train s | waited on states s | share of train time | sealing s | written | on disk | MB/state |")
    print("|---|---|---|---|---|---|---|---|")
    for arm, runs in results.items():
        m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"| {arm} | {m['train_s']:.2f} | {m['waited_s']:.2f} | {100 * m['waited_share']:.1f}% | {m['seal_s']:.2f} "
            f"| {m['states_written']:.0f} | {m['states_on_disk']:.0f} | {m['state_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
