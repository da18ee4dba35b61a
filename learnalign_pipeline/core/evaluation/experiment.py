"""The pre-registered selection experiment (docs/results.md): does selection beat a random subset on a pool shaped
like real data, with enough seeds and a negative control to know whether the setup could tell?

One *seed* is a whole pipeline: a warm-up on a fresh random subset, fresh scoring rollouts, a fresh Random draw and
one training seed shared by every arm. Per seed and pool (clean, and the same pool with coin-flip rewards on a share
of its problems) every arm trains the same number of GRPO steps x problems x rollouts from the seed's warm-up
policy and is evaluated by sampled pass@1 on held-out problems at several steps. `run_seed` returns long tables;
`analyze` turns the seeds' tables into paired differences against Random (statistics.py).

Arms: `random`, `learnalign`, `accuracy_band`, `accgreedy`, `zero_variance` (negative control) and `gradalign_static`
select once at the warm-up policy (core/selection/methods.py); `gradalign_curriculum` re-selects every round with the
current policy (core/selection/curriculum.py). GradAlign uses its released scorer by default (`gradalign_scoring`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import torch

from ..data.arithmetic import MIXES, MixName, arithmetic_frame, cell_of
from ..data.noise import mark_noisy, noisy_flags
from ..policy.generation import SamplingSpec, TransformersBackend
from ..policy.rollouts import reward_rollouts, sample_rollouts, success_rates
from ..selection.config import FeatureConfig
from ..selection.curriculum import CurriculumConfig, GradAlignScorer, curriculum_chunk, gradalign_scoring, score_chunk
from ..selection.features import features_for_rates
from ..selection.methods import SelectionSignals, method_scores
from ..selection.scoring import learnability, top_n, unit_rows
from ..settings import require, setting
from ..storage.hashing import derived_seed
from ..task.config import TaskConfig
from ..training.config import GRPOConfig
from ..training.trainer import train_grpo
from .benchmark import pass_at_1
from .statistics import holm, minimum_detectable_effect, paired_summary, spearman, steps_to_reach, t_quantile

ARMS = (
    "random",
    "learnalign",
    "accuracy_band",
    "accgreedy",
    "gradalign_static",
    "gradalign_curriculum",
    "zero_variance",
)
# Selection rule of each static arm (core/selection/methods.py); seeded rules draw with the seed's own stream.
RULES = {
    "random": "random",
    "learnalign": "learnalign",
    "accuracy_band": "accuracy_band",
    "accgreedy": "accgreedy",
    "gradalign_static": "gradalign",
    "zero_variance": "zero_variance",
}
POOLS = ("clean", "coin_flip")


@dataclass(frozen=True)
class ExperimentDataConfig:
    """The problems: a pool, the same pool with coin-flip rewards on a share of it, and held-out sets."""

    mix: MixName = setting("realistic", "the embedded generator's mix (core/data/arithmetic.py)")
    pool_size: int = setting(1024, "problems generated for the pool")
    pool_seed: int = setting(1, "generator seed of the pool")
    heldout_seed: int = setting(2, "generator seed of the held-out problems")
    heldout_generated: int = setting(3000, "held-out problems generated (the sets below are cut from them)")
    target_size: int = setting(300, "held-out problems of the mix's target cells: the primary evaluation set")
    validation_size: int = setting(64, "the next held-out target-cell problems: GradAlign's trusted validation set")
    full_size: int = setting(300, "held-out problems of the whole mix (not in the sets above): secondary evaluation")
    coin_flip_share: float = setting(0.5, "share of the coin-flip pool whose rewards are coins (GradAlign: 50%)")
    noise_seed: int = setting(0, "seed choosing the coin-flip problems")

    def __post_init__(self) -> None:
        require(0 <= self.coin_flip_share <= 1, "coin_flip_share", "must be in [0, 1]")
        require(self.target_size >= 1 and self.full_size >= 1, "target_size", "evaluation sets must not be empty")


def experiment_problems(config: ExperimentDataConfig) -> pl.DataFrame:
    """One table, the problem schema plus `role`: pool, pool_coin_flip, target, validation, full."""
    mix = MIXES[config.mix]
    pool = arithmetic_frame(config.pool_size, config.pool_seed, "pool", mix=mix)
    heldout = arithmetic_frame(
        config.heldout_generated, config.heldout_seed, "test", exclude_ids=frozenset(pool["problem_id"]), mix=mix
    )
    targeted = (
        cell_of(heldout).is_in(list(mix.target_cells)) if mix.target_cells else pl.Series([True] * heldout.height)
    )
    target_rows = heldout.filter(targeted)
    target = target_rows.head(config.target_size)
    validation = target_rows.slice(config.target_size, config.validation_size)
    taken = set(target["problem_id"]) | set(validation["problem_id"])
    full = heldout.filter(~pl.col("problem_id").is_in(list(taken))).head(config.full_size)
    if target.height < config.target_size or validation.height < config.validation_size:
        raise ValueError(f"only {target_rows.height} held-out target problems: raise heldout_generated")
    coin = mark_noisy(pool, config.coin_flip_share, "coin_flip", config.noise_seed)
    parts = [(pool, "pool"), (coin, "pool_coin_flip"), (target, "target"), (validation, "validation"), (full, "full")]
    return pl.concat([frame.with_columns(pl.lit(role).alias("role")) for frame, role in parts])


@dataclass(frozen=True)
class ExperimentConfig:
    """Seeds, arms, equal compute per arm and the evaluation. The defaults are the pre-registered design
    (docs/results.md); GRPO's loss, learning rate and KL reference come from the pipeline's GRPO settings."""

    seeds: list[int] = setting(list(range(8)), "full-pipeline seeds")
    arms: list[str] = setting(list(ARMS), "arms trained on the clean pool")
    coin_flip_arms: list[str] = setting(
        ["random", "gradalign_static", "gradalign_curriculum"], "arms trained on the coin-flip pool"
    )
    budget: int = setting(128, "N: problems each static arm selects")
    steps: int = setting(24, "GRPO steps per arm (equal compute)")
    problems_per_step: int = setting(16, "problems per GRPO step")
    num_samples: int = setting(8, "G: rollouts per problem, in training and in scoring (K)")
    eval_steps: list[int] = setting([8, 16, 24], "steps at which every arm is evaluated (step 0: the warm-up policy)")
    eval_samples: int = setting(4, "n of sampled pass@1 (T=1) on the evaluation sets")
    warmup_subset: int = setting(64, "random pool problems of each seed's warm-up")
    warmup_steps: int = setting(4, "warm-up GRPO steps (x problems_per_step x num_samples)")
    gradalign_scorer: GradAlignScorer = setting("released", "GradAlign's scorer: released (its code's) or ours")
    curriculum_rounds: int = setting(3, "GradAlign rounds; each trains steps / rounds steps")
    curriculum_chunk: int = setting(256, "M: candidates each round scores")
    curriculum_keep: int = setting(32, "M/q: candidates each round keeps")
    validation_samples: int = setting(8, "k_v: rollouts per validation problem")

    def __post_init__(self) -> None:
        unknown = (set(self.arms) | set(self.coin_flip_arms)) - set(ARMS)
        require(not unknown, "arms", f"unknown arms {sorted(unknown)}; known: {list(ARMS)}")
        require("random" in self.arms, "arms", "every contrast is against random: keep it")
        require(not self.coin_flip_arms or "random" in self.coin_flip_arms, "coin_flip_arms", "keep random")
        require(len(self.seeds) >= 2 and len(set(self.seeds)) == len(self.seeds), "seeds", "two or more, distinct")
        require(self.steps % self.curriculum_rounds == 0, "curriculum_rounds", "must divide steps")
        round_ends = {self.steps // self.curriculum_rounds * r for r in range(1, self.curriculum_rounds + 1)}
        require(set(self.eval_steps) <= round_ends, "eval_steps", f"must be curriculum round ends {sorted(round_ends)}")
        require(self.steps in self.eval_steps, "eval_steps", "must include the last step")


@dataclass
class SeedResult:
    accuracy: pl.DataFrame  # seed, pool, arm, step, eval_set, accuracy, num_correct, num_samples
    selections: pl.DataFrame  # seed, pool, arm, round, rank, problem_id, cell, success_rate, score, noisy
    diagnostics: pl.DataFrame  # seed, metric, group, value


def _evaluate(model, tokenizer, problems, verifier, task: TaskConfig, samples: int, seed: int, name: str) -> dict:
    spec = SamplingSpec(samples, 1.0, 1.0, task.max_new_tokens)
    backend = TransformersBackend(model, tokenizer)
    result, _ = pass_at_1(backend, problems, verifier, task.prompt_format(), spec, name, name, seed=seed)
    return {"accuracy": result.accuracy, "num_correct": result.num_correct, "num_samples": samples * problems.height}


def _signals(rates: pl.DataFrame, features: torch.Tensor, validation: torch.Tensor | None = None) -> SelectionSignals:
    if validation is not None and validation.shape[1] != features.shape[1]:
        # one side had no problem with 0 < p < 1, hence no gradient at all: zeros of the other side's width
        if validation.shape[1] == 0:
            validation = torch.zeros(validation.shape[0], features.shape[1])
        elif features.shape[1] == 0:
            features = torch.zeros(features.shape[0], validation.shape[1])
    unit, norms = unit_rows(features)
    return SelectionSignals(
        problem_ids=rates["problem_id"].to_list(),
        success_rate=torch.tensor(rates["success_rate"].to_numpy(), dtype=torch.float64),
        unit_features=unit,
        norms=norms,
        validation_features=validation,
    )


def _with_rows(features: torch.Tensor, rates: pl.DataFrame, fresh: torch.Tensor, fresh_rates: pl.DataFrame):
    """`features` with the rows of `fresh_rates`' problems replaced by `fresh` (rows follow `rates`)."""
    row_of = {pid: i for i, pid in enumerate(rates["problem_id"].to_list())}
    out = features.clone()
    for j, pid in enumerate(fresh_rates["problem_id"].to_list()):
        out[row_of[pid]] = fresh[j]
    return out


def run_seed(
    seed: int,
    base_model,
    tokenizer,
    problems: pl.DataFrame,
    config: ExperimentConfig,
    grpo: GRPOConfig,
    features: FeatureConfig,
    task: TaskConfig,
    log: Callable[[str], None] = lambda message: None,
) -> SeedResult:
    """One full pipeline for `seed`: warm-up, scoring, every arm on both pools, evaluations, diagnostics."""
    role = {r: problems.filter(pl.col("role") == r).drop("role") for r in problems["role"].unique().to_list()}
    pools = {"clean": role["pool"], "coin_flip": role["pool_coin_flip"]}
    verifier, template = task.make_verifier(), task.prompt_format()
    seconds: dict[str, float] = {}
    reference = base_model if grpo.reference == "base" and grpo.beta else None

    def stream(purpose: str) -> int:
        """One independent seed per purpose of this pipeline seed."""
        return derived_seed(seed, purpose)

    def run(**overrides) -> GRPOConfig:
        return dataclasses.replace(grpo, checkpoint_every=0, num_samples=config.num_samples, **overrides)

    def timed(part: str):
        started = time.perf_counter()
        return lambda: seconds.__setitem__(part, seconds.get(part, 0.0) + time.perf_counter() - started)

    # 1. Warm-up from the base policy on a fresh random subset of the (clean) pool; both pools start from it.
    done = timed("warmup")
    warm = copy.deepcopy(base_model)
    subset = pools["clean"].sample(n=min(config.warmup_subset, pools["clean"].height), seed=stream("warmup_subset"))
    train_grpo(
        warm,
        tokenizer,
        subset,
        verifier,
        run(steps=config.warmup_steps, problems_per_step=config.problems_per_step, seed=stream("warmup")),
        task,
        reference=reference,
    )
    done()

    eval_seed = stream("evaluation")  # shared by every arm and step of this seed: common random numbers
    accuracy_rows: list[dict] = []

    def evaluate(model, step: int, sets: tuple[str, ...]) -> list[dict]:
        done = timed("evaluation")
        out = [
            {
                "step": step,
                "eval_set": s,
                **_evaluate(model, tokenizer, role[s], verifier, task, config.eval_samples, eval_seed, s),
            }
            for s in sets
        ]
        done()
        return out

    start_rows = evaluate(warm, 0, ("target", "full"))

    # 2. LearnAlign's signals: K rollouts at T=1 and the pipeline's loss at the warm-up policy.
    done = timed("scoring_learnalign")
    loss = grpo.loss(task.max_new_tokens)
    feature_ref = (base_model if grpo.reference == "base" else warm) if loss.beta else None
    spec = SamplingSpec(config.num_samples, 1.0, 1.0, task.max_new_tokens)
    rollouts = sample_rollouts(
        TransformersBackend(warm, tokenizer), pools["clean"], spec, verifier, template, stream("scoring")
    )
    ours = {}
    for name, pool in pools.items():
        pool_rollouts = rollouts if name == "clean" else reward_rollouts(rollouts, pool, verifier)
        rates = success_rates(pool_rollouts)
        changed = noisy_flags(pool).to_list()
        if name == "clean":
            feats = features_for_rates(
                warm, feature_ref, tokenizer, pool, pool_rollouts, rates, loss, features, template
            )
        else:  # same samples: only the coin-flip problems' rewards, hence features, differ
            flipped_ids = pool.filter(pl.Series(changed))["problem_id"].to_list()
            flipped_rates = rates.filter(pl.col("problem_id").is_in(flipped_ids))
            fresh = features_for_rates(
                warm,
                feature_ref,
                tokenizer,
                pool,
                pool_rollouts,
                flipped_rates,
                loss,
                features,
                template,
                empty_width=ours["clean"][1].shape[1],
            )
            feats = _with_rows(ours["clean"][1], rates, fresh, flipped_rates)
        ours[name] = (rates, feats)
    done()

    # 3. GradAlign's signals: its scorer on the pool and on the trusted validation set.
    done = timed("scoring_gradalign")
    g_sampling, g_loss = gradalign_scoring(config.gradalign_scorer, loss, config.num_samples, task.max_new_tokens)
    g_ref = feature_ref if g_loss.beta else None
    backend = TransformersBackend(warm, tokenizer)
    g_rollouts = sample_rollouts(backend, pools["clean"], g_sampling, verifier, template, stream("gradalign_scoring"))
    v_sampling = dataclasses.replace(g_sampling, num_samples=config.validation_samples)
    v_rollouts = sample_rollouts(backend, role["validation"], v_sampling, verifier, template, stream("validation"))
    v_features = features_for_rates(
        warm,
        g_ref,
        tokenizer,
        role["validation"],
        v_rollouts,
        success_rates(v_rollouts),
        g_loss,
        features,
        template,
        empty_width=ours["clean"][1].shape[1],
    )
    theirs = {}
    for name, pool in pools.items():
        pool_rollouts = g_rollouts if name == "clean" else reward_rollouts(g_rollouts, pool, verifier)
        rates = success_rates(pool_rollouts)
        if name == "clean":
            feats = features_for_rates(warm, g_ref, tokenizer, pool, pool_rollouts, rates, g_loss, features, template)
        else:
            flipped_rates = rates.filter(pl.col("problem_id").is_in(pool.filter(noisy_flags(pool))["problem_id"]))
            fresh = features_for_rates(
                warm,
                g_ref,
                tokenizer,
                pool,
                pool_rollouts,
                flipped_rates,
                g_loss,
                features,
                template,
                empty_width=theirs["clean"][1].shape[1],
            )
            feats = _with_rows(theirs["clean"][1], rates, fresh, flipped_rates)
        theirs[name] = (rates, feats)
    done()

    # 4. Every static rule's selection on both pools (also the untrained ones: their corrupted shares are reported).
    selection_rows: list[pl.DataFrame] = []
    subsets: dict[tuple[str, str], pl.DataFrame] = {}
    for name, pool in pools.items():
        for arm, rule in RULES.items():
            rates, feats = theirs[name] if arm == "gradalign_static" else ours[name]
            signals = _signals(rates, feats, v_features if arm == "gradalign_static" else None)
            scores = method_scores(rule, signals, stream(arm))
            picked = top_n(scores, signals.problem_ids, config.budget)
            chosen = pl.DataFrame({"problem_id": [signals.problem_ids[i] for i in picked]})
            subsets[(name, arm)] = chosen.join(pool, on="problem_id", how="left", maintain_order="left")
            selection_rows.append(
                _selection_frame(seed, name, arm, 0, subsets[(name, arm)], rates, [float(scores[i]) for i in picked])
            )

    # 5. Train and evaluate every arm: equal steps x problems x rollouts from the warm-up policy.
    train_seed = stream("training")
    for name, pool in pools.items():
        for arm in config.arms if name == "clean" else config.coin_flip_arms:
            done = timed(f"train_{name}")
            model = copy.deepcopy(warm)
            rows = [dict(r) for r in start_rows]
            if arm == "gradalign_curriculum":
                rows += _curriculum(
                    model,
                    warm,
                    tokenizer,
                    pool,
                    role["validation"],
                    config,
                    run,
                    loss,
                    features,
                    task,
                    verifier,
                    reference,
                    stream,
                    train_seed,
                    evaluate,
                    selection_rows,
                    seed,
                    name,
                )
            else:

                def on_step(record: dict, model=model, rows=rows, last=config.steps) -> None:
                    step = record["step"] + 1
                    if step in config.eval_steps:
                        rows.extend(evaluate(model, step, ("target", "full") if step == last else ("target",)))

                train_grpo(
                    model,
                    tokenizer,
                    subsets[(name, arm)],
                    verifier,
                    run(steps=config.steps, problems_per_step=config.problems_per_step, seed=train_seed),
                    task,
                    log=on_step,
                    reference=reference,
                )
            accuracy_rows += [{"seed": seed, "pool": name, "arm": arm, **r} for r in rows]
            done()
            target = [r["accuracy"] for r in rows if r["eval_set"] == "target"]
            log(f"seed {seed} {name} {arm}: target accuracy " + " -> ".join(f"{100 * a:.1f}" for a in target))

    diagnostics = _diagnostics(seed, ours["clean"], pools["clean"], seconds)
    return SeedResult(
        accuracy=pl.DataFrame(accuracy_rows).select(
            "seed", "pool", "arm", "step", "eval_set", "accuracy", "num_correct", "num_samples"
        ),
        selections=pl.concat(selection_rows),
        diagnostics=diagnostics,
    )


def _curriculum(
    model,
    warm,
    tokenizer,
    pool,
    validation,
    config,
    run,
    loss,
    features,
    task,
    verifier,
    reference,
    stream,
    train_seed,
    evaluate,
    selection_rows,
    seed,
    pool_name,
) -> list[dict]:
    """GradAlign's rounds: score chunk r with the current policy, keep the top M/q, train steps / rounds steps with
    a fresh optimizer (GradAlign restarts training every round), evaluate at the round's end."""
    per_round, rows = config.steps // config.curriculum_rounds, []
    spec = CurriculumConfig(
        chunk_size=config.curriculum_chunk,
        keep=config.curriculum_keep,
        candidate_samples=config.num_samples,
        validation_samples=config.validation_samples,
        method="gradalign",
        seed=stream("curriculum"),
        scorer=config.gradalign_scorer,
    )
    for r in range(config.curriculum_rounds):
        ids = curriculum_chunk(pool["problem_id"].to_list(), spec.chunk_size, r, spec.seed)
        chunk = pool.filter(pl.col("problem_id").is_in(ids)).sort("problem_id")
        ref = (reference if reference is not None else model) if loss.beta else None
        scored = score_chunk(model, ref, tokenizer, chunk, validation, verifier, loss, features, task, spec, r)
        chosen = scored.filter(pl.col("selected")).sort("score", "problem_id", descending=[True, False])
        picked = chosen.select("problem_id").join(pool, on="problem_id", how="left", maintain_order="left")
        selection_rows.append(
            _selection_frame(seed, pool_name, "gradalign_curriculum", r + 1, picked, chosen, chosen["score"].to_list())
        )
        train_grpo(
            model,
            tokenizer,
            picked,
            verifier,
            run(steps=per_round, problems_per_step=config.problems_per_step, seed=train_seed + r),
            task,
            reference=reference,
        )
        step = per_round * (r + 1)
        if step in config.eval_steps:
            rows += evaluate(model, step, ("target", "full") if step == config.steps else ("target",))
    return rows


def _selection_frame(
    seed, pool_name, arm, round_index, chosen: pl.DataFrame, rates: pl.DataFrame, scores
) -> pl.DataFrame:
    p = chosen.select("problem_id").join(rates.select("problem_id", "success_rate"), on="problem_id", how="left")
    return pl.DataFrame(
        {
            "seed": [seed] * chosen.height,
            "pool": [pool_name] * chosen.height,
            "arm": [arm] * chosen.height,
            "round": [round_index] * chosen.height,
            "rank": list(range(1, chosen.height + 1)),
            "problem_id": chosen["problem_id"],
            "cell": cell_of(chosen),
            "success_rate": p["success_rate"].cast(pl.Float64),
            "score": pl.Series(scores, dtype=pl.Float64),
            "noisy": noisy_flags(chosen),
        }
    )


def _diagnostics(
    seed: int, signals: tuple[pl.DataFrame, torch.Tensor], pool: pl.DataFrame, seconds: dict
) -> pl.DataFrame:
    """What explains a null result without training: the p classes per family and cell, Spearman(LearnAlign score,
    V) among learnable problems, and the mean gradient cosine within vs between families."""
    rates, feats = signals
    table = rates.select("problem_id", "success_rate").join(
        pool.select("problem_id", "category", "extra"), on="problem_id", how="left", maintain_order="left"
    )
    table = table.with_columns(cell_of(table))
    rows = []
    for key in ("category", "cell"):
        for group, frame in table.group_by(key, maintain_order=True):
            p = frame["success_rate"]
            for metric, share in (
                ("p0", (p == 0).mean()),
                ("learnable", ((p > 0) & (p < 1)).mean()),
                ("p1", (p == 1).mean()),
            ):
                rows.append(
                    {
                        "metric": f"{metric}_by_{'family' if key == 'category' else 'cell'}",
                        "group": group[0],
                        "value": float(share),
                    }
                )
    p = rates["success_rate"]
    rows += [
        {"metric": m, "group": "pool", "value": float(v)}
        for m, v in (("p0", (p == 0).mean()), ("learnable", ((p > 0) & (p < 1)).mean()), ("p1", (p == 1).mean()))
    ]
    signals_ = _signals(rates, feats)
    score = method_scores("learnalign", signals_)
    v = learnability(signals_.success_rate)
    active = (v > 0).nonzero().flatten().tolist()
    if len(active) > 2:
        rows.append(
            {
                "metric": "spearman_learnalign_score_vs_V",
                "group": "learnable",
                "value": spearman([float(score[i]) for i in active], [float(v[i]) for i in active]),
            }
        )
        unit = signals_.unit_features[active]
        cos = unit @ unit.T
        families = table["category"].to_list()
        fam = [families[i] for i in active]
        same = torch.tensor([[a == b for b in fam] for a in fam])
        off = ~torch.eye(len(active), dtype=torch.bool)
        for name, mask in (("within_family", same & off), ("between_families", ~same)):
            if mask.any():
                rows.append({"metric": "mean_gradient_cosine", "group": name, "value": float(cos[mask].mean())})
    rows += [{"metric": "seconds", "group": part, "value": round(s, 2)} for part, s in seconds.items()]
    return pl.DataFrame(rows).with_columns(pl.lit(seed).alias("seed")).select("seed", "metric", "group", "value")


# ---- analysis -------------------------------------------------------------------------------------------------------

CONFIRMATORY = (
    ("clean", "learnalign", "random"),
    ("clean", "learnalign", "accuracy_band"),
    ("coin_flip", "gradalign_curriculum", "random"),
)
POWER_CHECK = ("clean", "zero_variance", "random")


def contrasts(config_arms: list[str], coin_flip_arms: list[str]) -> list[tuple[str, str, str, str]]:
    """(family, pool, arm, comparator) of every reported contrast: the confirmatory three, the power check, and every
    other arm against Random on each pool (secondary)."""
    out = [("confirmatory", *c) for c in CONFIRMATORY if c[1] in (config_arms if c[0] == "clean" else coin_flip_arms)]
    if POWER_CHECK[1] in config_arms:
        out.append(("power_check", *POWER_CHECK))
    taken = {(p, a, b) for _, p, a, b in out}
    for pool, arms in (("clean", config_arms), ("coin_flip", coin_flip_arms)):
        out += [("secondary", pool, a, "random") for a in arms if a != "random" and (pool, a, "random") not in taken]
    return out


def analyze(accuracy: pl.DataFrame, selections: pl.DataFrame, eval_set: str = "target") -> pl.DataFrame:
    """One row per contrast: paired differences (arm - comparator, in accuracy points) over seeds at the last step,
    their mean, 95% t-interval, exact sign-flip p, Holm-adjusted p within its family (confirmatory, secondary),
    the mean over evaluated steps (area under the curve), the full-mix difference at the last step, the steps the arm
    needs to reach the comparator's final accuracy (median over seeds), and the minimum detectable effect."""
    last = int(accuracy["step"].max())
    arms = {pool: accuracy.filter(pl.col("pool") == pool)["arm"].unique().to_list() for pool in POOLS}
    rows = []
    for family, pool, arm, other in contrasts(
        [a for a in ARMS if a in arms.get("clean", [])], [a for a in ARMS if a in arms.get("coin_flip", [])]
    ):
        frame = accuracy.filter(pl.col("pool") == pool)

        def per_seed(a: str, step: int | None, s: str = eval_set, frame=frame) -> dict[int, float]:
            f = frame.filter((pl.col("arm") == a) & (pl.col("eval_set") == s))
            f = f.filter(pl.col("step") == step) if step is not None else f.filter(pl.col("step") > 0)
            return dict(f.group_by("seed").agg(pl.col("accuracy").mean()).iter_rows())

        final_a, final_b = per_seed(arm, last), per_seed(other, last)
        seeds = sorted(set(final_a) & set(final_b))
        if len(seeds) < 2:
            continue
        diffs = [100 * (final_a[s] - final_b[s]) for s in seeds]
        summary = paired_summary(diffs)
        auc_a, auc_b = per_seed(arm, None), per_seed(other, None)
        full_a, full_b = per_seed(arm, last, "full"), per_seed(other, last, "full")
        reach = []
        for s in seeds:
            curve = frame.filter(
                (pl.col("arm") == arm) & (pl.col("eval_set") == eval_set) & (pl.col("seed") == s)
            ).sort("step")
            reach.append(steps_to_reach(curve["step"].to_list(), curve["accuracy"].to_list(), final_b[s]))
        corrupted = selections.filter((pl.col("pool") == pool) & (pl.col("arm") == arm))["noisy"].mean()
        rows.append(
            {
                "family": family,
                "pool": pool,
                "arm": arm,
                "comparator": other,
                "seeds": len(seeds),
                "mean_points": summary.mean,
                "sd_points": summary.sd,
                "ci_low": summary.ci_low,
                "ci_high": summary.ci_high,
                "p_sign_flip": summary.p_sign_flip,
                "auc_points": 100 * sum(auc_a[s] - auc_b[s] for s in seeds) / len(seeds),
                "full_mix_points": 100 * sum(full_a[s] - full_b[s] for s in seeds) / len(seeds)
                if full_a and full_b
                else None,
                "median_steps_to_comparator_final": sorted(reach)[len(reach) // 2],
                "seeds_reaching_it": sum(math.isfinite(r) for r in reach),
                "mde_points": minimum_detectable_effect(summary.sd, len(seeds)),
                "arm_corrupted_share": float(corrupted) if corrupted is not None else None,
            }
        )
    table = pl.DataFrame(rows)
    if table.height == 0:
        return table
    adjusted = {}
    for family in ("confirmatory", "secondary"):
        part = table.filter(pl.col("family") == family)
        keys = [f"{p}/{a}/{b}" for p, a, b in part.select("pool", "arm", "comparator").iter_rows()]
        adjusted.update(holm(dict(zip(keys, part["p_sign_flip"].to_list()))))
    return table.with_columns(
        pl.Series(
            "p_holm",
            [adjusted.get(f"{p}/{a}/{b}") for p, a, b in table.select("pool", "arm", "comparator").iter_rows()],
            dtype=pl.Float64,
        )
    )


def verdict(row: dict) -> str:
    """The pre-registered reading of one contrast."""
    if row["family"] == "power_check":
        return "has power" if row["mean_points"] < 0 and row["ci_high"] < 0 else "NO POWER: change the design and rerun"
    excludes = row["ci_low"] > 0 or row["ci_high"] < 0
    significant = row["p_holm"] is not None and row["p_holm"] < 0.05
    if excludes and significant:
        return "better" if row["mean_points"] > 0 else "worse"
    return f"not detected (MDE {row['mde_points']:.1f} points)"


def curves(accuracy: pl.DataFrame, eval_set: str = "target") -> pl.DataFrame:
    """Mean accuracy per (pool, arm, step) over seeds with a 95% t-interval, in points."""
    grouped = (
        accuracy.filter(pl.col("eval_set") == eval_set)
        .group_by("pool", "arm", "step")
        .agg(
            (100 * pl.col("accuracy")).mean().alias("mean"),
            (100 * pl.col("accuracy")).std().alias("sd"),
            pl.len().alias("n"),
        )
        .sort("pool", "arm", "step")
    )
    half = [
        t_quantile(0.975, n - 1) * sd / math.sqrt(n) if n > 1 and sd is not None else 0.0
        for sd, n in grouped.select("sd", "n").iter_rows()
    ]
    return grouped.with_columns(pl.Series("half_width", half, dtype=pl.Float64))


def plot_curves(curve: pl.DataFrame, path, title: str):
    """Accuracy vs GRPO steps, one line per arm with its 95% band, one panel per pool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = [p for p in POOLS if p in set(curve["pool"])]
    fig, axes = plt.subplots(1, len(pools), figsize=(6 * len(pools), 4.5), dpi=110, squeeze=False)
    for ax, pool in zip(axes[0], pools):
        for arm in ARMS:
            rows = curve.filter((pl.col("pool") == pool) & (pl.col("arm") == arm)).sort("step")
            if rows.height == 0:
                continue
            x, y, h = rows["step"].to_list(), rows["mean"].to_list(), rows["half_width"].to_list()
            (line,) = ax.plot(x, y, marker="o", label=arm)
            ax.fill_between(
                x, [a - b for a, b in zip(y, h)], [a + b for a, b in zip(y, h)], color=line.get_color(), alpha=0.15
            )
        ax.set_title(f"{pool} pool", fontsize=9)
        ax.set_xlabel("GRPO steps (the same problems x rollouts per step for every arm)")
        ax.set_ylabel("sampled pass@1 on held-out target problems (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
