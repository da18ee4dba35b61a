"""Learnability, LearnAlign alignment and the selected subset (LearnAlign steps 2 and 4)."""

import json

import dagster as dg
import polars as pl
import torch

from ...core.data.noise import noisy_flags
from ...core.evaluation.charts import P_BUCKETS, histogram, p_bucket, shares, subset_vs_pool
from ...core.selection.config import AlignmentConfig, SelectionConfig
from ...core.selection.methods import NoLearnableProblems, SelectionSignals, select
from ...core.selection.scoring import alignment_matrix, learnability, learnalign_scores
from ...core.storage.artifacts import ArtifactIntegrityError, TensorBundle
from ...lib.charts import image, present, table
from ...lib.config import config_view
from ...lib.io_managers import load_latest
from ...lib.outputs import versioned
from ...lib.resources import ArtifactStore
from .gradients import pool_feature_config


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
        max_score=float(frame["score"].max()) if frame.height else None,
        **present(
            score_histogram=image(
                histogram(frame["score"].to_list(), "LearnAlign scores of the pool", "score V_i <u_i, mu>"),
                "score histogram",
            )
            if frame.height
            else None
        ),
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
        norm_floor=pool_feature_config(projected_gradients).norm_floor,
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


@dg.asset(group_name="selection", code_version="3", kinds={"polars"})
def selected_subset(
    context: dg.AssetExecutionContext,
    config: SelectionRunConfig,
    alignment_scores: pl.DataFrame,
    success_rates: pl.DataFrame,
    projected_gradients: TensorBundle,
    raw_problems: pl.DataFrame,
    store: ArtifactStore,
) -> dg.Output[pl.DataFrame]:
    """The top-N problems by the configured method's score (ties broken by problem id), with rank, score and a
    `noisy` flag (problems whose gold answer the pool config corrupted). Learnability and gradient methods select
    only learnable problems (0 < p < 1), so the subset is smaller than N when the pool has fewer; a pool without
    any learnable problem fails the run with the counts (core/selection/methods.py). Metadata: the cut-off score,
    the subset against the pool by success rate and by family, the pool's score histogram, and what entered and
    left since the previous version (with ranks, scores, and whether a leaver was outscored or removed from the
    pool)."""
    if config.method in COMPARISON_ONLY:
        raise ValueError(f"method {config.method!r} needs signals from the comparison group: use comparison_subsets")
    signals = pool_signals(success_rates, projected_gradients)
    own = None
    if config.method == "learnalign":  # the stage's own alignment asset (include_self etc. configured there)
        order = {pid: i for i, pid in enumerate(signals.problem_ids)}
        own = torch.zeros(len(order), dtype=torch.float64)
        own[[order[p] for p in alignment_scores["problem_id"]]] = torch.tensor(
            alignment_scores["score"].to_numpy(), dtype=torch.float64
        )
    try:
        chosen = select(config.method, signals, config.budget, config.seed, scores=own)
    except NoLearnableProblems as error:
        raise dg.Failure(description=str(error), metadata={"problems": len(signals.problem_ids)}) from error
    if chosen.shortfall:
        context.log.warning(chosen.shortfall)
    subset = selection_frame(signals, chosen.picked, chosen.scores, raw_problems)
    by_category = subset.group_by("category").len().sort("category")
    pool = raw_problems.select("problem_id", "category").join(
        success_rates.select("problem_id", "success_rate"), on="problem_id", how="inner"
    )
    cutoff = float(subset["score"][-1]) if subset.height else None
    previous, diff = previous_subset(context, store.root), None
    if previous is not None:
        diff = subset_diff(previous, subset, set(raw_problems["problem_id"].to_list()))
    return versioned(
        subset,
        summary=f"{subset.height} problems by {config.method} ({chosen.learnable_selected} learnable of "
        f"{chosen.learnable_in_pool} in the pool), mean p {subset['success_rate'].mean():.2f}"
        + (f"; {chosen.shortfall}" if chosen.shortfall else "")
        + (f"; {diff['entered']} entered, {diff['left']} left since the previous version" if diff else ""),
        method=config.method,
        budget=config.budget,
        selected=subset.height,
        pool_problems=pool.height,
        learnable_selected=chosen.learnable_selected,
        learnable_in_pool=chosen.learnable_in_pool,
        budget_shortfall=chosen.shortfall or "",
        noisy_share=float(subset["noisy"].mean()),
        mean_success_rate=float(subset["success_rate"].mean()),
        cutoff_score=cutoff,
        category_counts=dg.MetadataValue.json(
            dict(zip(by_category["category"].to_list(), by_category["len"].to_list()))
        ),
        **(
            {
                "entered": diff["entered"],
                "left": diff["left"],
                "kept": diff["kept"],
                "changes": table(diff["table"], max_rows=40),
            }
            if diff
            else {}
        ),
        **subset_charts(pool, subset, [float(v) for v in chosen.scores.tolist()], cutoff, config.method),
        top=table(subset.select("rank", "problem_id", "score", "success_rate", "category", "prompt"), max_rows=20),
    )


def subset_charts(pool: pl.DataFrame, subset: pl.DataFrame, pool_scores: list[float], cutoff, method: str) -> dict:
    """Where the subset sits in the pool: by success-rate bucket and by family (charts and tables), and the pool's
    score distribution with the cut-off."""
    by_p = [
        shares(frame.with_columns(p_bucket(pl.col("success_rate")).alias("p")), "p", P_BUCKETS)
        for frame in (pool, subset)
    ]
    families = sorted({str(c) if c is not None else "(none)" for c in pool["category"].to_list()})
    by_family = [shares(frame, "category", families) for frame in (pool, subset)]

    def side_by_side(pair):
        return (
            pair[0]
            .select("value", pl.col("problems").alias("pool"), pl.col("share").alias("pool_share"))
            .join(
                pair[1].select("value", pl.col("problems").alias("subset"), pl.col("share").alias("subset_share")),
                on="value",
                how="left",
                maintain_order="left",
            )
        )

    return present(
        subset_vs_pool_by_p=image(subset_vs_pool(*by_p, "subset vs pool by success rate p", "p bucket"), "by p"),
        subset_vs_pool_by_family=image(subset_vs_pool(*by_family, "subset vs pool by family", "family"), "by family"),
        by_p=table(side_by_side(by_p), descriptions=SHARE_COLUMNS),
        by_family=table(side_by_side(by_family), descriptions=SHARE_COLUMNS),
        score_histogram=image(
            histogram(pool_scores, f"{method} scores of the pool (cut-off = last selected)", "score", cutoff=cutoff),
            "score histogram",
        )
        if pool_scores
        else None,
    )


SHARE_COLUMNS = {
    "value": "success-rate bucket or family",
    "pool": "pool problems in it",
    "pool_share": "its share of the pool",
    "subset": "selected problems in it",
    "subset_share": "its share of the subset",
}


def previous_subset(context: dg.AssetExecutionContext, root: str) -> pl.DataFrame | None:
    """The subset of the latest earlier materialization (while this one runs, the latest recorded), or None."""
    if context.instance.get_latest_materialization_event(context.asset_key) is None:
        return None
    try:
        return load_latest(context.instance, context.asset_key, root)
    except (OSError, ValueError, ArtifactIntegrityError) as error:
        # never materialized, pruned, unreadable or corrupted: the diff is skipped, never the subset, so
        # rematerializing this asset (what a consumer's integrity error advises) rewrites a corrupted file
        context.log.warning(f"previous selected_subset unreadable, no diff: {error}")
        return None


def subset_diff(previous: pl.DataFrame, current: pl.DataFrame, pool_ids: set[str]) -> dict:
    """Problems that entered and left the subset since `previous`, with ranks and scores, and why they left."""
    old, new = set(previous["problem_id"].to_list()), set(current["problem_id"].to_list())
    entered = current.filter(pl.col("problem_id").is_in(sorted(new - old))).select(
        pl.lit("entered").alias("change"),
        "problem_id",
        "rank",
        "score",
        "success_rate",
        pl.lit("").alias("why"),
        "prompt",
    )
    left = previous.filter(pl.col("problem_id").is_in(sorted(old - new))).select(
        pl.lit("left").alias("change"),
        "problem_id",
        "rank",
        "score",
        "success_rate",
        pl.when(pl.col("problem_id").is_in(sorted(pool_ids)))
        .then(pl.lit("outscored"))
        .otherwise(pl.lit("removed from the pool"))
        .alias("why"),
        "prompt",
    )
    changes = pl.concat([entered, left]).with_columns(pl.col("prompt").str.slice(0, 80))
    return {"entered": len(new - old), "left": len(old - new), "kept": len(new & old), "table": changes}
