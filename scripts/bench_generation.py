"""Generated tokens/s of the transformers and vLLM backends on the same checkpoint, prompts and K, in one run.

    python scripts/bench_generation.py --checkpoint .learnalign/artifacts/warmup_policy/<digest> --problems 256 --k 8

Without --checkpoint a tiny Qwen2 policy is built from config (random weights: completions run to max length).
Engine start-up is timed separately from generation; each backend generates the same prompts once to warm up.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a save_pretrained directory (default: a tiny random policy)")
    parser.add_argument("--problems", type=int, default=256)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    from learnalign_pipeline.core.data.arithmetic import generate_problems
    from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend, prompt_seeds
    from learnalign_pipeline.core.policy.model import (
        TinyPolicyConfig,
        build_model,
        load_policy,
        save_policy,
        train_tokenizer,
    )
    from learnalign_pipeline.core.policy.vllm_backend import VLLMBackend, VLLMConfig
    from learnalign_pipeline.core.task.prompts import render

    problems = generate_problems(args.problems, seed=99)
    prompts = [render("qa", p.prompt) for p in problems]
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = Path(tempfile.mkdtemp()) / "tiny"
        tokenizer = train_tokenizer([p + " " + q.solution for p, q in zip(prompts, problems)], 512)
        save_policy(
            build_model(TinyPolicyConfig(intermediate_size=256, num_layers=2), tokenizer, 0), tokenizer, checkpoint
        )
    spec = SamplingSpec(num_samples=args.k, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    seeds = prompt_seeds([str(i) for i in range(len(prompts))], 0, args.k)

    def measure(backend) -> tuple[float, int]:
        backend.generate(prompts[:16], spec, seeds[:16])  # warm-up
        started = time.perf_counter()
        groups = backend.generate(prompts, spec, seeds)
        seconds = time.perf_counter() - started
        return seconds, sum(len(c.token_ids) for g in groups for c in g)

    started = time.perf_counter()
    model, tokenizer = load_policy(checkpoint)
    hf_start = time.perf_counter() - started
    hf_seconds, hf_tokens = measure(TransformersBackend(model, tokenizer))

    started = time.perf_counter()
    engine = VLLMBackend(str(checkpoint), VLLMConfig(dtype="float32"))
    engine._engine()
    vllm_start = time.perf_counter() - started
    try:
        vllm_seconds, vllm_tokens = measure(engine)
    finally:
        engine.close()

    print(f"checkpoint: {checkpoint}  prompts: {len(prompts)}  K: {args.k}  max_new_tokens: {args.max_new_tokens}")
    print(f"{'backend':<14}{'start (s)':>10}{'generate (s)':>14}{'tokens':>9}{'tokens/s':>11}")
    print(f"{'transformers':<14}{hf_start:>10.1f}{hf_seconds:>14.2f}{hf_tokens:>9}{hf_tokens / hf_seconds:>11.0f}")
    print(f"{'vllm':<14}{vllm_start:>10.1f}{vllm_seconds:>14.2f}{vllm_tokens:>9}{vllm_tokens / vllm_seconds:>11.0f}")
    print(f"vllm / transformers tokens/s: {(vllm_tokens / vllm_seconds) / (hf_tokens / hf_seconds):.2f}x")


if __name__ == "__main__":
    main()
