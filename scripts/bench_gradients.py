"""Benchmark of per-problem gradient features, everything side by side in one process.

1. Batched gradients (one forward/backward per batch of problems) vs one backward per problem, exact
   (unprojected) features: relative error and speedup, on config-built Qwen2 models.
2. Kronecker vs dense projection at equal output width on a config-built Qwen2 model with >= 10M parameters:
   problems/s of the projection stage on the same captured activations, and end to end.
3. Selection agreement on a demo run's artifacts: LearnAlign top-N from the default projected features vs from
   exact gradients (Jaccard) and Spearman correlation of the scores.

    python scripts/bench_gradients.py --artifacts ~/.learnalign/artifacts

Timings interleave the compared methods; ratios use the best of the repeats (least disturbed by other load on a
shared machine), and medians are printed beside them.
Nothing is downloaded: models are built from configs, tokenizers trained locally.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import polars as pl
import torch

from learnalign_pipeline.core.data.arithmetic import arithmetic_frame, generate_problems
from learnalign_pipeline.core.policy.model import TinyPolicyConfig, build_model, load_policy, train_tokenizer
from learnalign_pipeline.core.policy.rollouts import learnable_problems
from learnalign_pipeline.core.selection.capture import linear_layers
from learnalign_pipeline.core.selection.features import ExactGradients, gradient_features, loop_gradients
from learnalign_pipeline.core.selection.projection import DenseProjector, KroneckerProjector
from learnalign_pipeline.core.selection.scoring import learnability, learnalign_scores, top_n, unit_rows
from learnalign_pipeline.core.task.prompts import render
from learnalign_pipeline.core.training.config import GRPOConfig

ROWS: list[tuple[str, str, str, str]] = []  # (benchmark, quantity, value, target verdict)


def report(bench: str, quantity: str, value: str, verdict: str = "") -> None:
    ROWS.append((bench, quantity, value, verdict))
    print(f"  {bench:<28} {quantity:<44} {value:>16}  {verdict}", flush=True)


def verdict(ok: bool, target: str) -> str:
    return f"{'met' if ok else 'MISSED'} ({target})"


def tokenizer_for(vocab: int):
    return train_tokenizer([render("qa", p.prompt) + " " + p.solution for p in generate_problems(600, seed=123)], vocab)


def synthetic_rollouts(problems: pl.DataFrame, vocab: int, samples: int, seed: int) -> pl.DataFrame:
    """K random completions of 4-24 tokens per problem, rewards alternating so every group has mixed rewards."""
    gen = torch.Generator().manual_seed(seed)
    rows: dict[str, list] = {"problem_id": [], "sample_index": [], "token_ids": [], "reward": []}
    for pid in problems["problem_id"].to_list():
        for k in range(samples):
            length = int(torch.randint(4, 25, (1,), generator=gen))
            rows["problem_id"].append(pid)
            rows["sample_index"].append(k)
            rows["token_ids"].append(torch.randint(3, vocab, (length,), generator=gen).tolist())
            rows["reward"].append(float(k % 2))
    schema = {"problem_id": pl.String, "sample_index": pl.Int32, "token_ids": pl.List(pl.Int32), "reward": pl.Float32}
    return pl.DataFrame(rows, schema=schema)


def perturbed(model):
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return reference


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def bench_batched_vs_loop(
    name: str, spec: TinyPolicyConfig, num_problems: int, samples: int, repeats: int, problems_per_batch: int
) -> None:
    tokenizer = tokenizer_for(spec.vocab_size)
    model = build_model(spec, tokenizer, seed=0).eval()
    reference = perturbed(model)
    problems = arithmetic_frame(num_problems, seed=1, split="pool")
    rollouts = synthetic_rollouts(problems, len(tokenizer), samples, seed=0)
    config = GRPOConfig(beta=0.04).loss(32)
    params = sum(p.numel() for p in model.parameters())
    label = f"1 batched vs loop [{name}]"
    report(
        label,
        "model params / problems x rollouts / per batch",
        f"{params / 1e6:.2f}M / {num_problems}x{samples} / {problems_per_batch}",
    )
    batched_times, loop_times = [], []
    for _ in range(repeats):  # interleaved so both see the same machine load
        batched, t_batched = timed(
            lambda: (
                gradient_features(
                    model,
                    reference,
                    tokenizer,
                    problems,
                    rollouts,
                    config,
                    ExactGradients(),
                    "qa",
                    problems_per_batch=problems_per_batch,
                ).features
            )
        )
        loop, t_loop = timed(lambda: loop_gradients(model, reference, tokenizer, problems, rollouts, config))
        batched_times.append(t_batched)
        loop_times.append(t_loop)
    relative = ((batched - loop).norm() / loop.norm()).item()
    speedup = min(loop_times) / min(batched_times)
    report(
        label, "relative error norm(batched - loop) / norm(loop)", f"{relative:.2e}", verdict(relative < 1e-5, "< 1e-5")
    )
    report(
        label,
        f"batched s (best / median of {repeats})",
        f"{min(batched_times):.3f} / {statistics.median(batched_times):.3f}",
    )
    report(
        label, f"loop s (best / median of {repeats})", f"{min(loop_times):.3f} / {statistics.median(loop_times):.3f}"
    )
    report(
        label,
        "speedup (best / median)",
        f"{speedup:.2f}x / {statistics.median(loop_times) / statistics.median(batched_times):.2f}x",
        verdict(speedup >= 3, ">= 3x"),
    )


def bench_projections(num_problems: int, samples: int, repeats: int) -> None:
    spec = TinyPolicyConfig(
        vocab_size=512, hidden_size=512, intermediate_size=1408, num_layers=4, num_heads=8, num_kv_heads=2
    )
    tokenizer = tokenizer_for(spec.vocab_size)
    model = build_model(spec, tokenizer, seed=0).eval()
    reference = perturbed(model)
    problems = arithmetic_frame(num_problems, seed=2, split="pool")
    rollouts = synthetic_rollouts(problems, len(tokenizer), samples, seed=1)
    config = GRPOConfig(beta=0.04).loss(32)
    layers = linear_layers(model)
    params = sum(p.numel() for p in model.parameters())
    linear_params = sum(layer.weight.numel() for layer in layers.values())
    label = "2 kronecker vs dense"
    report(
        label,
        "model params (in scored linear layers)",
        f"{params / 1e6:.1f}M ({linear_params / 1e6:.1f}M)",
        verdict(params >= 10e6, ">= 10M"),
    )
    projectors = {
        "kronecker": KroneckerProjector(16, 16, seed=0),
        "dense": DenseProjector(width_per_layer=256, seed=0),
    }
    # Projection runs inside the backward hooks, so each projector is timed end to end (forward, backward and
    # projection of the same batch), interleaved so both see the same machine load.
    times: dict[str, list[float]] = {k: [] for k in projectors}
    widths = {}
    for _ in range(repeats):
        for key, projector in projectors.items():
            result, seconds = timed(
                lambda projector=projector: (
                    gradient_features(
                        model,
                        reference,
                        tokenizer,
                        problems,
                        rollouts,
                        config,
                        projector,
                        "qa",
                        problems_per_batch=num_problems,
                    ).features
                )
            )
            times[key].append(seconds)
            widths[key] = result.shape[1]
    report(label, "output width kronecker 16x16 / dense 256 per layer", f"{widths['kronecker']} / {widths['dense']}")
    rate = {k: num_problems / min(v) for k, v in times.items()}
    for key in projectors:
        report(label, f"{key} end to end problems/s (best of {repeats})", f"{rate[key]:.2f}")
    report(label, "end-to-end ratio kronecker/dense", f"{rate['kronecker'] / rate['dense']:.1f}x")


def newest(directory: Path, asset: str) -> Path:
    candidates = sorted((directory / asset).iterdir(), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no {asset} artifact under {directory}")
    return candidates[-1]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of average ranks (ties share their mean rank)."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        values, inverse, counts = torch.unique(x.double(), return_inverse=True, return_counts=True)
        ends = torch.cumsum(counts, 0).double()
        return (ends - (counts.double() - 1) / 2)[inverse]

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


def bench_selection(artifacts: Path) -> None:
    # The pipeline's own defaults (budget, projection, loss, template), so this measures what the assets do.
    from learnalign_pipeline.core.selection.config import AlignmentConfig, FeatureConfig, SelectionConfig
    from learnalign_pipeline.defs.selection.gradients import GradientConfig
    from learnalign_pipeline.lib.resources import GRPOLoss, TaskSettings

    task, gradient_config = TaskSettings(), GradientConfig()
    budget = SelectionConfig().budget
    loss = GRPOLoss().config(task.max_new_tokens)
    raw = pl.read_parquet(newest(artifacts, "raw_problems"))
    rollouts = pl.read_parquet(newest(artifacts, "rollouts"))
    rates = pl.read_parquet(newest(artifacts, "success_rates"))
    model, tokenizer = load_policy(newest(artifacts, "warmup_policy"))
    reference = load_policy(newest(artifacts, "pretrained_policy"))[0] if loss.beta else None
    active = learnable_problems(rates).select("problem_id")
    active = active.join(raw, on="problem_id", how="left", maintain_order="left")
    ids = rates["problem_id"].to_list()
    row_of = {pid: i for i, pid in enumerate(ids)}
    weights = learnability(torch.tensor(rates["success_rate"].to_numpy(), dtype=torch.float64)).float()
    label = "3 selection agreement"
    report(label, "pool / nonzero-variance problems / budget N", f"{len(ids)} / {active.height} / {budget}")

    def scores(projector, fp16: bool):
        result = gradient_features(
            model,
            reference,
            tokenizer,
            active,
            rollouts,
            loss,
            projector,
            task.template,
            scope=gradient_config.scope,
            last_blocks=gradient_config.last_blocks,
            problems_per_batch=gradient_config.problems_per_batch,
        )
        features = torch.zeros(len(ids), result.features.shape[1])
        features[[row_of[p] for p in result.problem_ids]] = result.features
        unit = unit_rows(features, FeatureConfig().norm_floor)[0]
        unit = unit.to(torch.float16).float() if fp16 else unit  # the asset stores float16 unit features
        return learnalign_scores(weights, unit, include_self=AlignmentConfig().include_self)[0], features.shape[1]

    (exact, exact_width), t_exact = timed(lambda: scores(ExactGradients(), fp16=False))
    (projected, width), t_projected = timed(lambda: scores(gradient_config.projector(), fp16=True))
    report(label, "width exact / projected (default kronecker)", f"{exact_width} / {width}")
    report(label, "feature time s exact / projected", f"{t_exact:.1f} / {t_projected:.1f}")
    top_exact = set(top_n(exact.double(), ids, budget))
    top_projected = set(top_n(projected.double(), ids, budget))
    jaccard = len(top_exact & top_projected) / len(top_exact | top_projected)
    report(label, f"Jaccard of top-{budget}", f"{jaccard:.3f}", verdict(jaccard >= 0.8, ">= 0.8"))
    on = torch.tensor([row_of[p] for p in active["problem_id"].to_list()])
    report(label, "Spearman of scores, nonzero-variance problems", f"{spearman(exact[on], projected[on]):.3f}")
    report(label, "Spearman of scores, whole pool", f"{spearman(exact, projected):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, help="LEARNALIGN_HOME/artifacts of a finished demo run (benchmark 3)")
    parser.add_argument("--parts", default="1,2,3", help="comma-separated benchmarks to run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--problems-per-batch",
        type=int,
        default=None,
        help="benchmark 1: problems per batched backward (default: the stage's mean batch size)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    parts = set(args.parts.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if "1" in parts:
        from learnalign_pipeline.defs.selection.gradients import GradientConfig

        per_batch = args.problems_per_batch or GradientConfig().problems_per_batch
        demo = TinyPolicyConfig(
            vocab_size=320, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=2, num_kv_heads=1
        )
        larger = TinyPolicyConfig(
            vocab_size=512, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, num_kv_heads=2
        )
        bench_batched_vs_loop(
            "demo 128/256/2L", demo, num_problems=32, samples=8, repeats=args.repeats, problems_per_batch=per_batch
        )
        bench_batched_vs_loop(
            "256/768/4L", larger, num_problems=16, samples=8, repeats=args.repeats, problems_per_batch=per_batch
        )
    if "2" in parts:
        bench_projections(num_problems=16, samples=8, repeats=max(1, args.repeats - 1))
    if "3" in parts:
        if args.artifacts is None:
            print("  3 selection agreement: skipped (pass --artifacts DIR)")
        else:
            bench_selection(args.artifacts)
    print("\n| benchmark | quantity | value | target |\n|---|---|---|---|")
    for row in ROWS:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
