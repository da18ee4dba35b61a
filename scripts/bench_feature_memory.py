"""Memory of the gradient-feature stage and of the seeded sampler, before vs after issue 14, side by side in one run.

1. Feature-stage memory per token on config-built Qwen2 models with >= 10M parameters (K = 8 rollouts per
   problem, 4 problems per batch, random completion tokens, KL term on, Kronecker 16x16, float32 on the CPU):
   - before: the hooks keep every scored layer's input and output, one `autograd.grad` returns every output
     gradient at once, per-problem rows are concatenated, and only then is anything projected (the code before
     issue 14, re-implemented here as the baseline);
   - in-hook: `core.selection.features.gradient_features` (projected inside the hooks);
   - in-hook + checkpointing: the same with `activation_checkpointing`.
   Each arm runs in a fresh process at two completion lengths; the reported figure is the marginal peak memory
   per processed token, (peak(L2) - peak(L1)) / (tokens(L2) - tokens(L1)), next to the estimate of
   `core/selection/memory.py`. Peak RSS is reset after the model and batch are built (/proc/self/clear_refs) and
   glibc's mmap threshold is fixed at 64 KiB, so freed tensors leave the resident set and RSS follows live
   tensors.
2. Sampler memory at 24 vs 512 new tokens (32 rows, a 32,000-column vocabulary, fixed logits): the noise
   pre-allocated as [rows, max_new_tokens, vocab] (before) vs drawn per step (`SeededGumbelSampler`).
3. The estimator's figures for Qwen2.5-1.5B and -7B shapes (bfloat16 autocast; K = 8, prompt 120 tokens,
   completions 300), arithmetic only.
4. The estimator against the whole measured peak (not the slope): `batch_bytes + fixed_bytes` beside the peak
   RSS increment of one `gradient_features` call, float32 and bfloat16 autocast, with and without checkpointing
   (issue 24: under autocast the residual stream stays float32 and each pass saves its own bfloat16 weight copy).

    PYTHONPATH=. python scripts/bench_feature_memory.py [--parts 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from learnalign_pipeline.core.compute import PeakMemory

SHAPES = {  # name -> TinyPolicyConfig fields; both have >= 10M parameters
    "wide 4L h512": dict(hidden_size=512, intermediate_size=1408, num_layers=4, num_heads=8, num_kv_heads=2),
    "deep 16L h256": dict(hidden_size=256, intermediate_size=704, num_layers=16, num_heads=4, num_kv_heads=1),
}
ARMS = ("before", "in-hook", "in-hook + checkpointing")
PROBLEMS, SAMPLES, LENGTHS = 4, 8, (32, 96)


def capture_then_project(model, reference, batch, loss, layers, projector):
    """The baseline: keep every layer's input and output, all output gradients at once, then project."""
    from learnalign_pipeline.core.selection.capture import _shared_prefix_layout, sequence_logprobs
    from learnalign_pipeline.core.selection.projection import per_problem_outer
    from learnalign_pipeline.core.training.grpo import per_problem_loss

    inputs, outputs, handles = {n: [] for n in layers}, {n: [] for n in layers}, []
    for p in model.parameters():
        p.requires_grad_(False)
    handles.append(model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.requires_grad_()))

    def keep(name):
        def hook(module, args, output):  # returns None: the output is not replaced
            inputs[name].append(args[0].detach())
            outputs[name].append(output)

        return hook

    for name, layer in layers.items():
        handles.append(layer.register_forward_hook(keep(name)))
    layout = _shared_prefix_layout(batch)
    with torch.no_grad():
        ref_logp = sequence_logprobs(reference, batch, layout, 1.0)
    logp = sequence_logprobs(model, batch, layout, 1.0)
    total = per_problem_loss(logp, batch, loss, ref_logp=ref_logp).sum()
    flat = [(n, i) for n in layers for i in range(len(outputs[n]))]
    grads = torch.autograd.grad(total, [outputs[n][i] for n, i in flat], materialize_grads=True)
    for h in handles:
        h.remove()
    gy = {n: [] for n in layers}
    for (n, _), g in zip(flat, grads):
        gy[n].append(g)

    def rows(prompt, completions):  # [P, Lp, d] + [P*K, Lc, d] -> [P, Lp + K*Lc, d], copies
        return torch.cat([prompt, completions.reshape(prompt.shape[0], -1, completions.shape[-1])], dim=1)

    owner = torch.arange(batch.num_problems)
    xs = {n: rows(*inputs[n]) for n in layers}  # as the old capture_batch returned them: every layer at once
    gys = {n: rows(*gy[n]) for n in layers}
    blocks = []
    for n in layers:
        x, g = projector.project_input(n, xs[n]), projector.project_output(n, gys[n])
        blocks.append(per_problem_outer(x, g, owner, len(owner)).flatten(1))
    return torch.cat(blocks, dim=1)


def measure_features(arm: str, shape: str, completion_len: int, precision: str = "float32") -> dict:
    """One arm at one length, in this (fresh) process; `precision` float32 or bfloat16 (autocast)."""
    import copy

    import polars as pl

    from learnalign_pipeline.core.data.arithmetic import arithmetic_frame, generate_problems
    from learnalign_pipeline.core.policy.model import TinyPolicyConfig, build_model, train_tokenizer
    from learnalign_pipeline.core.selection.capture import linear_layers
    from learnalign_pipeline.core.selection.features import gradient_features
    from learnalign_pipeline.core.selection.memory import feature_memory
    from learnalign_pipeline.core.selection.projection import KroneckerProjector
    from learnalign_pipeline.core.task.prompts import render
    from learnalign_pipeline.core.training.config import GRPOConfig
    from learnalign_pipeline.core.training.grpo import to_rollout_batch

    torch.manual_seed(0)
    corpus = [render("qa", p.prompt) + " " + p.solution for p in generate_problems(600, seed=123)]
    tokenizer = train_tokenizer(corpus, 512)
    model = build_model(TinyPolicyConfig(vocab_size=512, **SHAPES[shape]), tokenizer, seed=0).eval()
    reference = copy.deepcopy(model)
    problems = arithmetic_frame(PROBLEMS, seed=3, split="pool")
    gen = torch.Generator().manual_seed(0)
    ids = [
        torch.randint(3, len(tokenizer), (completion_len,), generator=gen).tolist() for _ in range(PROBLEMS * SAMPLES)
    ]
    rollouts = pl.DataFrame(
        {
            "problem_id": [p for p in problems["problem_id"].to_list() for _ in range(SAMPLES)],
            "sample_index": list(range(SAMPLES)) * PROBLEMS,
            "token_ids": ids,
            "reward": [float(k % 2) for k in range(SAMPLES)] * PROBLEMS,
        },
        schema={
            "problem_id": pl.String,
            "sample_index": pl.Int32,
            "token_ids": pl.List(pl.Int32),
            "reward": pl.Float32,
        },
    )
    loss = GRPOConfig(beta=0.04).loss(completion_len)
    batch = to_rollout_batch(problems, rollouts, tokenizer, "qa", loss)
    prompt_len = int((batch.completion_mask.argmax(dim=1) + 1).max())
    tokens = PROBLEMS * prompt_len + PROBLEMS * SAMPLES * completion_len  # shared-prompt layout: prompts once
    layers, projector = linear_layers(model), KroneckerProjector(16, 16, seed=0)
    checkpointing = arm.endswith("checkpointing")
    autocast = torch.bfloat16 if precision == "bfloat16" else None
    estimate = feature_memory(model, layers, projector, autocast, checkpointing)
    predicted = estimate.batch_bytes(PROBLEMS, SAMPLES, prompt_len, completion_len, PROBLEMS * SAMPLES)
    if arm == "before":

        def run():
            return capture_then_project(model, reference, batch, loss, layers, projector)
    else:

        def run():
            return gradient_features(
                model,
                reference,
                tokenizer,
                problems,
                rollouts,
                loss,
                projector,
                "qa",
                checkpointing=checkpointing,
                memory_budget_bytes=1 << 40,
                autocast_dtype=autocast,
            ).features

    peak = PeakMemory(torch.device("cpu"))  # the resident set's peak from here on
    started = time.perf_counter()
    run()
    return {
        "arm": arm,
        "shape": shape,
        "completion_len": completion_len,
        "tokens": tokens,
        "params": sum(p.numel() for p in model.parameters()),
        "peak_bytes": peak.peak_bytes()[0],
        "estimate_bytes": predicted,
        "fixed_bytes": estimate.fixed_bytes(),
        "seconds": round(time.perf_counter() - started, 2),
    }


def measure_sampler(arm: str, steps: int) -> dict:
    from learnalign_pipeline.core.policy.generation import SamplingSpec, SeededGumbelSampler

    rows, vocab = 32, 32_000
    spec = SamplingSpec(num_samples=1, temperature=1.0, top_p=1.0, max_new_tokens=steps)
    scores = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0))
    peak = PeakMemory(torch.device("cpu"))
    if arm == "before":  # the noise of every step, drawn up front (the code before issue 14)
        noise = torch.empty(rows, steps, vocab)
        for row in range(rows):
            uniform = torch.rand(steps, vocab, generator=torch.Generator().manual_seed(row))
            noise[row] = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
        picks = [(scores + noise[:, s]).argmax(-1) for s in range(steps)]
    else:
        sampler = SeededGumbelSampler(list(range(rows)), spec)
        picks = [sampler(torch.zeros(rows, s + 1, dtype=torch.long), scores).argmax(-1) for s in range(steps)]
    return {
        "arm": arm,
        "steps": steps,
        "peak_bytes": peak.peak_bytes()[0],
        "first_step_picks": picks[0][:4].tolist(),
    }


def child(args: list[str]) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--parts", default="1,2,3,4")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        kind, *rest = args.child
        result = (
            measure_features(rest[0], rest[1], int(rest[2]), *rest[3:])
            if kind == "features"
            else measure_sampler(rest[0], int(rest[1]))
        )
        print(json.dumps(result))
        return
    parts, rows = set(args.parts.split(",")), []
    print(f"torch {torch.__version__}, 1 thread per measurement, CPU, float32")
    if "1" in parts:
        for shape in SHAPES:
            per_token = {}
            for arm in ARMS:
                short, long = (child(["features", arm, shape, str(n)]) for n in LENGTHS)
                slope = (long["peak_bytes"] - short["peak_bytes"]) / (long["tokens"] - short["tokens"])
                predicted = (long["estimate_bytes"] - short["estimate_bytes"]) / (long["tokens"] - short["tokens"])
                per_token[arm] = slope
                estimate = (
                    "-" if arm == "before" else f"{predicted / 1024:.1f} KiB"
                )  # the estimator models the new code
                line = (
                    f"1 features [{shape}, {long['params'] / 1e6:.1f}M params]",
                    f"{arm}: peak bytes per token (estimate)",
                    f"{slope / 1024:.1f} KiB ({estimate})",
                )
                rows.append(line)
                print("  ".join(line), flush=True)
            for arm in ARMS[1:]:
                ratio = per_token["before"] / per_token[arm]
                verdict = f"{'met' if ratio >= 10 else 'MISSED'} (>= 10x)"
                rows.append((f"1 features [{shape}]", f"before / {arm}", f"{ratio:.1f}x {verdict}"))
                print("  ".join(rows[-1]), flush=True)
    if "2" in parts:
        for arm in ("before", "per-step"):
            measured = {steps: child(["sampler", arm, str(steps)]) for steps in (24, 512)}
            rows.append(
                (
                    "2 sampler [32 rows x 32000 vocab]",
                    f"{arm}: peak MiB at 24 / 512 new tokens",
                    f"{measured[24]['peak_bytes'] / 2**20:.1f} / {measured[512]['peak_bytes'] / 2**20:.1f}",
                )
            )
            print("  ".join(rows[-1]), flush=True)
    if "3" in parts:
        from learnalign_pipeline.core.selection.memory import FeatureMemory, ModelShape

        qwen = {  # Qwen2.5 config.json values
            "Qwen2.5-1.5B": ModelShape(28, 1536, 8960, 12, 2 * 128, 151_936, 1_543_714_304),
            "Qwen2.5-7B": ModelShape(28, 3584, 18944, 28, 4 * 128, 152_064, 7_615_616_512),
        }
        for name, shape in qwen.items():
            held = 7 * shape.layers * 16 + (0 if name.endswith("1.5B") else 16)
            for checkpointing in (False, True):
                m = FeatureMemory(shape, held, 7 * shape.layers * 256, autocast_bf16=True, checkpointing=checkpointing)
                one = m.batch_bytes(1, 8, 120, 300, 1)  # the head one row at a time
                rows.append(
                    (
                        f"3 estimate [{name}, bf16 autocast]",
                        f"one problem (K=8, 120 + 300 tokens), checkpointing={checkpointing}",
                        f"{one / 2**30:.2f} GiB + {m.fixed_bytes() / 2**30:.1f} GiB fixed",
                    )
                )
                print("  ".join(rows[-1]), flush=True)
    if "4" in parts:
        for shape in SHAPES:
            for precision in ("float32", "bfloat16"):
                for arm in ARMS[1:]:
                    m = child(["features", arm, shape, str(LENGTHS[1]), precision])
                    estimate = m["estimate_bytes"] + m["fixed_bytes"]
                    error = estimate / m["peak_bytes"] - 1
                    rows.append(
                        (
                            f"4 whole peak [{shape}, {precision}]",
                            f"{arm}: measured / estimate (of it fixed)",
                            f"{m['peak_bytes'] / 2**20:.1f} / {estimate / 2**20:.1f} MiB "
                            f"({m['fixed_bytes'] / 2**20:.1f}): {error:+.0%} {'ok' if abs(error) <= 0.2 else 'OFF'} "
                            "(goal within 20%)",
                        )
                    )
                    print("  ".join(rows[-1]), flush=True)
    print("\n| benchmark | quantity | value |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
