"""Learnability, LearnAlign alignment and the selected subset (LearnAlign steps 2 and 4)."""

import json

import dagster as dg
import polars as pl
import torch

from ...core.data.noise import noisy_flags
from ...core.selection.config import AlignmentConfig, SelectionConfig
from ...core.selection.methods import SelectionSignals, select
from ...core.selection.scoring import alignment_matrix, learnability, learnalign_scores, top_n
from ...core.storage.artifacts import TensorBundle
from ...lib.config import config_view
from ...lib.outputs import markdown_table, versioned


@dg.asset(group_name="selection", code_version="1", kinds={"polars"})
def learnability_scores(success_rates: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """V = p(1 - p) per problem: 0 for problems the policy always or never solves, 0.25 at p = 1/2."""
    rates = torch.tensor(success_rates["success_rate"].to_numpy(), dtype=torch.float64)
    frame = success_rates.select("problem_id", "success_rate").with_columns(
        pl.Series("learnability", learnability(rates).numpy())
    )
    nonzero = int((frame["learnability"] > 0).sum())
    return versioned(
        frame,
        summary=f"V > 0 for {nonzero} of {frame.height} problems",
        mean_learnability=float(frame["learnability"].mean()),
        nonzero=nonzero,
    )


class AlignmentRunConfig(config_view(AlignmentConfig)):
    """LearnAlign's row average (core/selection/config.py AlignmentConfig)."""


@dg.multi_asset(
    group_name="selection",
    outs={
        "alignment_scores": dg.AssetOut(
            code_version="1", description="LearnAlign row average Avg_i = V_i <u_i, mu> per problem.", kinds={"pytorch"}
        ),
        "alignment_matrix": dg.AssetOut(
            code_version="1",
            is_required=False,
            description="The explicit S_ij = V_i V_j cos(phi_i, phi_j), for small pools only.",
            kinds={"pytorch"},
        ),
    },
)
def alignment(config: AlignmentRunConfig, learnability_scores: pl.DataFrame, projected_gradients: TensorBundle):
    """Computed in O(n d): mu = (1/n) sum_j V_j u_j, Avg_i = V_i <u_i, mu>. No n x n matrix is formed."""
    ids = json.loads(projected_gradients.metadata["problem_ids"])
    frame = pl.DataFrame({"problem_id": ids}).join(
        learnability_scores, on="problem_id", how="left", maintain_order="left"
    )
    if frame["learnability"].null_count():
        raise ValueError("projected_gradients and learnability_scores cover different problems; rematerialize both")
    weights = torch.tensor(frame["learnability"].to_numpy(), dtype=torch.float32)
    unit = projected_gradients.tensors["unit_features"].float()
    scores, aligned = learnalign_scores(weights, unit, include_self=config.include_self)
    frame = frame.with_columns(pl.Series("alignment", aligned.numpy()), pl.Series("score", scores.numpy()))
    yield versioned(
        frame,
        output_name="alignment_scores",
        summary=f"{int((frame['score'] > 0).sum())} positive, {int((frame['score'] < 0).sum())} negative scores",
        positive_scores=int((frame["score"] > 0).sum()),
        negative_scores=int((frame["score"] < 0).sum()),
    )
    if len(ids) <= config.max_matrix_problems:
        matrix = alignment_matrix(weights, unit)
        bundle = TensorBundle(tensors={"matrix": matrix}, metadata={"problem_ids": json.dumps(ids)})
        yield versioned(bundle, output_name="alignment_matrix", summary=f"{len(ids)} x {len(ids)}", problems=len(ids))


def pool_signals(success_rates: pl.DataFrame, projected_gradients: TensorBundle, **optional) -> SelectionSignals:
    """The per-problem signals every pool-only method needs, rows in `success_rates` order; `optional` adds
    validation gradients, LIMR trajectories, cold-start features or perplexities (see SelectionSignals)."""
    ids = success_rates["problem_id"].to_list()
    if json.loads(projected_gradients.metadata["problem_ids"]) != ids:
        raise ValueError("projected_gradients rows do not follow success_rates; rematerialize both")
    return SelectionSignals(
        problem_ids=ids,
        success_rate=torch.tensor(success_rates["success_rate"].to_numpy(), dtype=torch.float64),
        unit_features=projected_gradients.tensors["unit_features"].float(),
        norms=projected_gradients.tensors["norms"].float(),
        response_tokens=torch.tensor(success_rates["mean_completion_tokens"].to_numpy(), dtype=torch.float64),
        **optional,
    )


def selection_frame(
    signals: SelectionSignals, picked: list[int], scores: torch.Tensor, raw_problems: pl.DataFrame
) -> pl.DataFrame:
    """The selected problems, best first: rank, score, success rate, the pool row and whether its gold is noisy."""
    chosen = pl.DataFrame(
        {
            "problem_id": [signals.problem_ids[i] for i in picked],
            "rank": list(range(1, len(picked) + 1)),
            "score": [float(scores[i]) for i in picked],
            "success_rate": [float(signals.success_rate[i]) for i in picked],
        },
        schema={"problem_id": pl.String, "rank": pl.Int64, "score": pl.Float64, "success_rate": pl.Float64},
    )
    subset = chosen.join(raw_problems, on="problem_id", how="left", maintain_order="left")
    return subset.with_columns(noisy_flags(subset))


# Methods whose signals come from the comparison group's assets, not from this stage's inputs.
COMPARISON_ONLY = {
    "learnalign_no_learnability",
    "gradalign",
    "gradalign_dot",
    "gradalign_unit_mean",
    "gradalign_learnability",
    "gradalign_bottom",
    "learnalign_no_warmup",
    "limr",
    "perplexity_top",
    "ifd",
}


class SelectionRunConfig(config_view(SelectionConfig)):
    """The subset RL trains on (core/selection/config.py SelectionConfig)."""


@dg.asset(group_name="selection", code_version="2", kinds={"polars"})
def selected_subset(
    config: SelectionRunConfig,
    alignment_scores: pl.DataFrame,
    success_rates: pl.DataFrame,
    projected_gradients: TensorBundle,
    raw_problems: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """The top-N problems by the configured method's score (ties broken by problem id), with rank, score and a
    `noisy` flag (problems whose gold answer the pool config corrupted)."""
    if config.method in COMPARISON_ONLY:
        raise ValueError(f"method {config.method!r} needs signals from the comparison group: use comparison_subsets")
    signals = pool_signals(success_rates, projected_gradients)
    if config.method == "learnalign":  # the stage's own alignment asset (include_self etc. configured there)
        order = {pid: i for i, pid in enumerate(signals.problem_ids)}
        scores = torch.zeros(len(order), dtype=torch.float64)
        scores[[order[p] for p in alignment_scores["problem_id"]]] = torch.tensor(
            alignment_scores["score"].to_numpy(), dtype=torch.float64
        )
        picked = top_n(scores, signals.problem_ids, config.budget)
    else:
        picked, scores = select(config.method, signals, config.budget, config.seed)
    subset = selection_frame(signals, picked, scores, raw_problems)
    by_category = subset.group_by("category").len().sort("category")
    return versioned(
        subset,
        summary=f"{subset.height} problems by {config.method}, mean p {subset['success_rate'].mean() if subset.height else 0:.2f}",
        method=config.method,
        budget=config.budget,
        selected=subset.height,
        noisy_share=float(subset["noisy"].mean()) if subset.height else 0.0,
        mean_success_rate=float(subset["success_rate"].mean()) if subset.height else None,
        category_counts=dg.MetadataValue.json(
            dict(zip(by_category["category"].to_list(), by_category["len"].to_list()))
        ),
        top=dg.MetadataValue.md(
            markdown_table(subset.select("rank", "problem_id", "score", "success_rate", "prompt"), max_rows=10)
        ),
    )
