"""Learnability, LearnAlign alignment and the selected subset (LearnAlign steps 2 and 4)."""


import json

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ...core.artifacts import TensorBundle
from ...core.scoring import alignment_matrix, learnability, learnalign_scores, top_n
from ..metadata import markdown_table
from ..versioning import versioned


@dg.asset(group_name="selection", code_version="1", kinds={"polars"})
def learnability_scores(success_rates: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """V = p(1 - p) per problem: 0 for problems the policy always or never solves, 0.25 at p = 1/2."""
    rates = torch.tensor(success_rates["success_rate"].to_numpy(), dtype=torch.float64)
    frame = success_rates.select("problem_id", "success_rate").with_columns(
        pl.Series("learnability", learnability(rates).numpy())
    )
    return versioned(frame, mean_learnability=float(frame["learnability"].mean()), nonzero=int((frame["learnability"] > 0).sum()))


class AlignmentConfig(dg.Config):
    include_self: bool = Field(default=True, description="keep the j = i term of LearnAlign's row average")
    max_matrix_problems: int = Field(default=256, description="store the explicit n x n matrix only up to this n")


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
def alignment(config: AlignmentConfig, learnability_scores: pl.DataFrame, projected_gradients: TensorBundle):
    """Computed in O(n d): mu = (1/n) sum_j V_j u_j, Avg_i = V_i <u_i, mu>. No n x n matrix is formed."""
    ids = json.loads(projected_gradients.metadata["problem_ids"])
    frame = pl.DataFrame({"problem_id": ids}).join(learnability_scores, on="problem_id", how="left", maintain_order="left")
    if frame["learnability"].null_count():
        raise ValueError("projected_gradients and learnability_scores cover different problems; rematerialize both")
    weights = torch.tensor(frame["learnability"].to_numpy(), dtype=torch.float32)
    unit = projected_gradients.tensors["unit_features"].float()
    scores, aligned = learnalign_scores(weights, unit, include_self=config.include_self)
    frame = frame.with_columns(pl.Series("alignment", aligned.numpy()), pl.Series("score", scores.numpy()))
    yield versioned(
        frame,
        output_name="alignment_scores",
        positive_scores=int((frame["score"] > 0).sum()),
        negative_scores=int((frame["score"] < 0).sum()),
    )
    if len(ids) <= config.max_matrix_problems:
        matrix = alignment_matrix(weights, unit)
        bundle = TensorBundle(tensors={"matrix": matrix}, metadata={"problem_ids": json.dumps(ids)})
        yield versioned(bundle, output_name="alignment_matrix", problems=len(ids))


class SelectionConfig(dg.Config):
    budget: int = Field(default=256, description="N: problems selected for RL training")


@dg.asset(group_name="selection", code_version="1", kinds={"polars"})
def selected_subset(config: SelectionConfig, alignment_scores: pl.DataFrame, raw_problems: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """The top-N problems by LearnAlign score (ties broken by problem id), with their rank and score."""
    picked = top_n(torch.tensor(alignment_scores["score"].to_numpy()), alignment_scores["problem_id"].to_list(), config.budget)
    chosen = alignment_scores[picked].with_columns(pl.int_range(1, len(picked) + 1).alias("rank"))
    subset = chosen.join(raw_problems, on="problem_id", how="left", maintain_order="left")
    by_category = subset.group_by("category").len().sort("category")
    return versioned(
        subset,
        budget=config.budget,
        selected=subset.height,
        mean_success_rate=float(subset["success_rate"].mean()) if subset.height else None,
        category_counts=dg.MetadataValue.json(dict(zip(by_category["category"].to_list(), by_category["len"].to_list()))),
        top=dg.MetadataValue.md(markdown_table(subset.select("rank", "problem_id", "score", "success_rate", "prompt"), max_rows=10)),
    )
