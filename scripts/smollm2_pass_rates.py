"""How often SmolLM2-135M-Instruct solves each problem of the two candidate pools of the `smollm2` preset: the p
histogram over K samples (vLLM's CPU build, the preset's chat template, stop strings and verifier), and the share of
learnable problems (0 < p < 1). The preset uses the pool where that share is at least 15%.

    .venv/bin/python scripts/fetch_smollm2.py
    .venv/bin/python scripts/smollm2_pass_rates.py --problems 24 --samples 8 --max-new-tokens 256

The conversion of the GGUF file is kept in --work (default /tmp/smollm2_pass_rates) and reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl

from learnalign_pipeline.core.data.arithmetic import MIXES, arithmetic_frame
from learnalign_pipeline.core.data.loaders import SourceConfig, load_problems
from learnalign_pipeline.core.policy.generation import SamplingSpec
from learnalign_pipeline.core.policy.gguf import convert_gguf
from learnalign_pipeline.core.policy.rollouts import sample_rollouts, success_rates
from learnalign_pipeline.core.policy.vllm_backend import VLLMBackend, VLLMConfig
from learnalign_pipeline.core.storage.hashing import sha256_file
from learnalign_pipeline.core.task.config import TaskConfig
from learnalign_pipeline.paths import models_folder
from learnalign_pipeline.presets import GSM8K_DIR, SMOLLM2, SMOLLM2_FILE

ROOT = Path(__file__).resolve().parents[1]


def pools(count: int, seed: int) -> dict[str, pl.DataFrame]:
    gsm8k = load_problems(SourceConfig(path=str(ROOT / GSM8K_DIR / "train.jsonl"), format="gsm8k"), frozenset())
    return {
        "gsm8k_train": gsm8k.problems.sample(n=count, seed=seed, shuffle=True),
        "realistic": arithmetic_frame(count, seed=seed, split="pool", mix=MIXES["realistic"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=24, help="problems drawn from each pool")
    parser.add_argument("--samples", type=int, default=8, help="K samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/smollm2_pass_rates"))
    args = parser.parse_args()

    gguf = models_folder() / SMOLLM2_FILE
    checkpoint = args.work / sha256_file(gguf)
    if not (checkpoint / "config.json").is_file():
        convert_gguf(gguf, checkpoint)
    task = TaskConfig(**{**SMOLLM2["resources"]["task"]["config"], "max_new_tokens": args.max_new_tokens})
    backend = VLLMBackend(str(checkpoint), VLLMConfig(**SMOLLM2["resources"]["generator"]["config"]))
    spec = SamplingSpec(num_samples=args.samples, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    try:
        for name, problems in pools(args.problems, args.seed).items():
            started = time.perf_counter()
            rollouts = sample_rollouts(backend, problems, spec, task.make_verifier(), task.prompt_format(), 0)
            took = time.perf_counter() - started
            p = success_rates(rollouts)["success_rate"]
            histogram = {
                f"{k}/{args.samples}": int((p * args.samples).round().eq(k).sum()) for k in range(args.samples + 1)
            }
            print(
                json.dumps(
                    {
                        "pool": name,
                        "problems": problems.height,
                        "K": args.samples,
                        "max_new_tokens": args.max_new_tokens,
                        "mean_p": round(float(p.mean()), 4),
                        "learnable_share": round(float(((p > 0) & (p < 1)).mean()), 4),
                        "p_histogram": histogram,
                        "truncated_share": round(float((rollouts["finish_reason"] == "length").mean()), 4),
                        "mean_completion_tokens": round(float(rollouts["num_tokens"].mean()), 1),
                        "tokens_per_s": round(float(rollouts["num_tokens"].sum()) / took, 1),
                        "seconds": round(took, 1),
                    }
                ),
                flush=True,
            )
    finally:
        backend.close()


if __name__ == "__main__":
    main()
