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

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import polars as pl
import torch

from ..data.arithmetic import MIXES, MixName, arithmetic_frame, cell_of
from ..data.noise import mark_noisy, noisy_flags
from ..policy.generation import SamplingSpec, TransformersBackend
from ..policy.rollouts import reward_rollouts, sample_rollouts, success_rates
from ..selection.config import FeatureConfig
from ..selection.curriculum import CurriculumConfig, GradAlignScorer, ShortfallRule, gradalign_scoring, score_round
from ..selection.features import features_for_rates
from ..selection.methods import SelectionSignals, method_scores
from ..selection.scoring import learnability, top_n, unit_rows
from ..settings import require, require_finite, setting
from ..storage.hashing import derived_seed
from ..task.config import TaskConfig
from ..training.config import GRPOConfig
from ..training.trl_engine import train_in_memory
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
    "clean_half_oracle",
)
# Selection rule of each static arm (core/selection/methods.py); seeded rules draw with the seed's own stream.
RULES = {
    "random": "random",
    "learnalign": "learnalign",
    "accuracy_band": "accuracy_band",
    "accgreedy": "accgreedy",
    "gradalign_static": "gradalign",
    "zero_variance": "zero_variance",
    "clean_half_oracle": "random",  # Random among the problems whose rewards are not coins: H3's ceiling
}
ORACLE = "clean_half_oracle"
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
    off_target_size: int = setting(300, "held-out problems of the mix's other cells: forgetting off-target")
    coin_flip_share: float = setting(0.5, "share of the coin-flip pool whose rewards are coins (GradAlign: 50%)")
    noise_seed: int = setting(0, "seed choosing the coin-flip problems")

    def __post_init__(self) -> None:
        require_finite(self)
        require(0 <= self.coin_flip_share <= 1, "coin_flip_share", "must be in [0, 1]")
        require(self.target_size >= 1 and self.off_target_size >= 1, "target_size", "evaluation sets must not be empty")


def experiment_problems(config: ExperimentDataConfig) -> pl.DataFrame:
    """One table, the problem schema plus `role`: pool, pool_coin_flip, target (held-out target cells), validation
    (the next target-cell rows), off_target (held-out rows of every other cell)."""
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
    off_target = heldout.filter(~targeted).head(config.off_target_size)
    if target.height < config.target_size or validation.height < config.validation_size:
        raise ValueError(f"only {target_rows.height} held-out target problems: raise heldout_generated")
    if off_target.height < config.off_target_size:
        raise ValueError(f"only {off_target.height} held-out off-target problems: raise heldout_generated")
    coin = mark_noisy(pool, config.coin_flip_share, "coin_flip", config.noise_seed)
    parts = [
        (pool, "pool"),
        (coin, "pool_coin_flip"),
        (target, "target"),
        (validation, "validation"),
        (off_target, "off_target"),
    ]
    return pl.concat([frame.with_columns(pl.lit(role).alias("role")) for frame, role in parts])


def target_share(pool: pl.DataFrame, target: pl.DataFrame) -> float:
    """The share of the pool in the target set's cells: the weight of the target set's accuracy in the pool-weighted
    estimate of the whole distribution (the off-target set's weight is the rest)."""
    return float(cell_of(pool).is_in(cell_of(target).unique().to_list()).mean())


@dataclass(frozen=True)
class ExperimentConfig:
    """Seeds, arms, equal compute per arm and the evaluation. The defaults are the pre-registered design
    (docs/results.md); GRPO's loss and KL reference come from the pipeline's GRPO settings, the learning rate from
    here (calibrated on the warm-up alone: scripts/calibrate_warmup_lr.py)."""

    seeds: list[int] = setting(list(range(8)), "full-pipeline seeds")
    arms: list[str] = setting([a for a in ARMS if a != ORACLE], "arms trained on the clean pool")
    coin_flip_arms: list[str] = setting(
        ["random", "accuracy_band", "gradalign_curriculum", ORACLE], "arms trained on the coin-flip pool"
    )
    learning_rate: float = setting(
        1e-4,
        "GRPO learning rate of the warm-up and every arm: the largest at which the warm-up alone does not lower "
        "sampled pass@1 on the pool (scripts/calibrate_warmup_lr.py; never chosen by looking at the arms)",
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
    curriculum_chunk: int = setting(512, "M: candidates each round scores")
    curriculum_keep: int = setting(32, "M/q: candidates each round keeps (at most those that carry a gradient)")
    curriculum_shortfall: ShortfallRule = setting(
        "draw_more", "a round with fewer candidates with a gradient than the keep: draw_more or keep_fewer"
    )
    curriculum_samples: int = setting(16, "k_r: rollouts per curriculum candidate")
    validation_samples: int = setting(16, "k_v: rollouts per validation problem")

    def __post_init__(self) -> None:
        require_finite(self)
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


def _signals(
    rates: pl.DataFrame, features: torch.Tensor, norm_floor: float, validation: torch.Tensor | None = None
) -> SelectionSignals:
    if validation is not None and validation.shape[1] != features.shape[1]:
        # one side had no problem with 0 < p < 1, hence no gradient at all: zeros of the other side's width
        if validation.shape[1] == 0:
            validation = torch.zeros(validation.shape[0], features.shape[1])
        elif features.shape[1] == 0:
            features = torch.zeros(features.shape[0], validation.shape[1])
    unit, norms = unit_rows(features, norm_floor)
    return SelectionSignals(
        problem_ids=rates["problem_id"].to_list(),
        success_rate=torch.tensor(rates["success_rate"].to_numpy(), dtype=torch.float64),
        unit_features=unit,
        norms=norms,
        validation_features=validation,
        norm_floor=norm_floor,
    )


class _Seed:
    """One pipeline seed: what its steps share (models, problem sets, settings, seed streams, the rows so far)."""

    def __init__(self, seed, base_model, tokenizer, problems, config, grpo, features, task, log):
        self.seed, self.base, self.tokenizer = seed, base_model, tokenizer
        self.config, self.grpo, self.features, self.task, self.log = config, grpo, features, task, log
        self.role = {r: problems.filter(pl.col("role") == r).drop("role") for r in problems["role"].unique().to_list()}
        self.pools = {"clean": self.role["pool"], "coin_flip": self.role["pool_coin_flip"]}
        self.target_share = target_share(self.role["pool"], self.role["target"])
        self.verifier, self.template = task.make_verifier(), task.prompt_format()
        self.loss = grpo.loss(task.max_new_tokens)
        # training's KL reference: the base policy when configured so, else (None) a copy of each run's start
        self.reference = base_model if grpo.reference == "base" and grpo.beta else None
        self.eval_seed = self.stream("evaluation")  # every arm and step of the seed: common random numbers
        self.seconds: dict[str, float] = {}
        self.selections: list[pl.DataFrame] = []
        self.rounds: list[pl.DataFrame] = []  # the curriculum's per-round report (diagnostics rows)

    def stream(self, purpose: str) -> int:
        """An independent seed per purpose of this pipeline seed."""
        return derived_seed(self.seed, purpose)

    def grpo_run(self, **overrides) -> GRPOConfig:
        return dataclasses.replace(
            self.grpo,
            checkpoint_every=0,
            num_samples=self.config.num_samples,
            learning_rate=self.config.learning_rate,
            **overrides,
        )

    @contextmanager
    def timed(self, part: str):
        started = time.perf_counter()
        yield
        self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - started

    def evaluate(self, model, step: int) -> list[dict]:
        """Sampled pass@1 on the target set; at the start and the last step also on the off-target set and the
        pool-weighted estimate of the whole distribution (`pool_weighted`)."""
        sets = ("target", "off_target") if step in (0, self.config.steps) else ("target",)
        spec = SamplingSpec(self.config.eval_samples, 1.0, 1.0, self.task.max_new_tokens)
        rows = []
        with self.timed("evaluation"):
            for name in sets:
                backend = TransformersBackend(model, self.tokenizer)
                problems = self.role[name]
                result, _ = pass_at_1(backend, problems, self.verifier, self.template, spec, name, name, self.eval_seed)
                samples = self.config.eval_samples * problems.height
                rows.append(
                    {
                        "step": step,
                        "eval_set": name,
                        "accuracy": result.accuracy,
                        "num_correct": result.num_correct,
                        "num_samples": samples,
                    }
                )
        if len(rows) == 2:
            share = self.target_share
            estimate = share * rows[0]["accuracy"] + (1 - share) * rows[1]["accuracy"]
            rows.append(
                {
                    "step": step,
                    "eval_set": "pool_weighted",
                    "accuracy": estimate,
                    "num_correct": None,
                    "num_samples": None,
                }
            )
        return rows

    def warm_up(self):
        """The base policy after GRPO on a fresh random subset of the clean pool (both pools start from it)."""
        pool = self.pools["clean"]
        subset = pool.sample(n=min(self.config.warmup_subset, pool.height), seed=self.stream("warmup_subset"))
        run = self.grpo_run(
            steps=self.config.warmup_steps, problems_per_step=self.config.problems_per_step, seed=self.stream("warmup")
        )
        with self.timed("warmup"):
            return self.train(self.base, subset, run)

    def train(self, model, subset: pl.DataFrame, run: GRPOConfig, observe=None):
        """The policy after GRPO `run` from `model` on `subset` (TRL in this process; `model` is left as it was)."""
        with tempfile.TemporaryDirectory(prefix="experiment-grpo-") as workdir:
            trained, _ = train_in_memory(
                model,
                self.tokenizer,
                subset,
                run,
                self.task,
                Path(workdir),
                reference=self.reference,
                verifier=self.verifier,
                observe=observe,
            )
        return trained

    def pool_signals(self, warm, sampling: SamplingSpec, loss, ref, purpose: str) -> dict[str, tuple]:
        """(success rates, raw projected gradients) of both pools at `warm`. The coin-flip pool reuses the clean
        pool's samples: only its flagged problems' rewards, hence rates and gradients, are recomputed."""
        backend = TransformersBackend(warm, self.tokenizer)
        clean = self.pools["clean"]
        rollouts = sample_rollouts(backend, clean, sampling, self.verifier, self.template, self.stream(purpose))
        rates = success_rates(rollouts)
        gradients = partial(
            features_for_rates,
            warm,
            ref,
            self.tokenizer,
            loss_config=loss,
            settings=self.features,
            template=self.template,
        )
        out = {"clean": (rates, gradients(problems=clean, rollouts=rollouts, rates=rates))}
        coin = self.pools["coin_flip"]
        coin_rollouts = reward_rollouts(rollouts, coin, self.verifier)
        coin_rates = success_rates(coin_rollouts)
        flipped = coin_rates.filter(pl.col("problem_id").is_in(coin.filter(noisy_flags(coin))["problem_id"]))
        fresh = gradients(problems=coin, rollouts=coin_rollouts, rates=flipped, empty_width=out["clean"][1].shape[1])
        features = out["clean"][1].clone()
        row_of = {pid: i for i, pid in enumerate(coin_rates["problem_id"].to_list())}
        for j, pid in enumerate(flipped["problem_id"].to_list()):
            features[row_of[pid]] = fresh[j]
        out["coin_flip"] = (coin_rates, features)
        return out

    def select(self, pool: str, arm: str, signals: SelectionSignals, rates: pl.DataFrame) -> pl.DataFrame:
        """The arm's N problems on `pool` (recorded with their cells, p, scores and noisy flags)."""
        scores = method_scores(RULES[arm], signals, self.stream(arm))
        if arm == ORACLE:  # the noisy problems score below every clean one (they fill only a budget too large)
            table = self.pools[pool]
            noisy = set(table.filter(noisy_flags(table))["problem_id"].to_list())
            scores = torch.where(torch.tensor([i in noisy for i in signals.problem_ids]), scores - 2.0, scores)
        picked = top_n(scores, signals.problem_ids, self.config.budget)
        chosen = pl.DataFrame({"problem_id": [signals.problem_ids[i] for i in picked]})
        chosen = chosen.join(self.pools[pool], on="problem_id", how="left", maintain_order="left")
        self.selections.append(
            _selection_frame(self.seed, pool, arm, 0, chosen, rates, [float(scores[i]) for i in picked])
        )
        return chosen

    def train_static(self, warm, subset: pl.DataFrame) -> list[dict]:
        """`steps` GRPO steps on the subset from the warm-up policy, evaluated at every evaluation step."""
        rows = []

        def on_step(record: dict, live_model) -> None:
            if record["step"] + 1 in self.config.eval_steps:
                rows.extend(self.evaluate(live_model, record["step"] + 1))

        run = self.grpo_run(
            steps=self.config.steps, problems_per_step=self.config.problems_per_step, seed=self.stream("training")
        )
        self.train(warm, subset, run, observe=on_step)
        return rows

    def train_curriculum(self, warm, pool: str) -> list[dict]:
        """GradAlign's rounds: score chunk r with the current policy, keep the top M/q, train steps / rounds steps
        with a fresh optimizer (GradAlign restarts training every round), evaluate at the round's end."""
        config, problems = self.config, self.pools[pool]
        model, rows, per_round = warm, [], config.steps // config.curriculum_rounds
        spec = CurriculumConfig(
            chunk_size=config.curriculum_chunk,
            keep=config.curriculum_keep,
            candidate_samples=config.curriculum_samples,
            validation_samples=config.validation_samples,
            method="gradalign",
            seed=self.stream("curriculum"),
            scorer=config.gradalign_scorer,
            shortfall=config.curriculum_shortfall,
        )
        for r in range(config.curriculum_rounds):
            ref = (self.reference if self.reference is not None else model) if self.loss.beta else None
            scored = score_round(
                model,
                ref,
                self.tokenizer,
                problems,
                self.role["validation"],
                self.verifier,
                self.loss,
                self.features,
                self.task,
                spec,
                r,
            )
            kept = scored.filter(pl.col("selected")).sort("score", "problem_id", descending=[True, False])
            subset = kept.select("problem_id").join(problems, on="problem_id", how="left", maintain_order="left")
            self.selections.append(
                _selection_frame(self.seed, pool, "gradalign_curriculum", r + 1, subset, kept, kept["score"].to_list())
            )
            report = scored.row(0, named=True)
            self.rounds.append(
                pl.DataFrame(
                    {
                        "seed": self.seed,
                        "metric": [f"curriculum_{m}" for m in ("chunks_scored", "with_gradient", "kept")],
                        "group": f"{pool}/round{r + 1}/{report['shortfall']}",
                        "value": [float(report[m]) for m in ("chunks_scored", "with_gradient", "kept")],
                    }
                )
            )
            self.log(f"seed {self.seed} {pool} curriculum round {r + 1}: kept {report['kept']} ({report['shortfall']})")
            run = self.grpo_run(
                steps=per_round, problems_per_step=config.problems_per_step, seed=self.stream("training") + r
            )
            if subset.height:  # nothing carried a gradient anywhere in the pool: the round trains nothing
                model = self.train(model, subset, run)
            if per_round * (r + 1) in config.eval_steps:
                rows += self.evaluate(model, per_round * (r + 1))
        return rows


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
    arm_done: Callable[[], None] = lambda: None,
) -> SeedResult:
    """One full pipeline for `seed`: warm-up, scoring, every arm on both pools, evaluations, diagnostics."""
    s = _Seed(seed, base_model, tokenizer, problems, config, grpo, features, task, log)
    warm = s.warm_up()
    start = s.evaluate(warm, 0)

    # LearnAlign's signals: K rollouts at T = 1 and the pipeline's loss (its KL reference: the base policy, or the
    # scored policy itself) at the warm-up policy.
    with s.timed("scoring_learnalign"):
        ref = (base_model if grpo.reference == "base" else warm) if s.loss.beta else None
        sampling = SamplingSpec(config.num_samples, 1.0, 1.0, task.max_new_tokens)
        ours = s.pool_signals(warm, sampling, s.loss, ref, "scoring")
    # GradAlign's signals: its scorer on the pool and on the trusted validation set.
    with s.timed("scoring_gradalign"):
        g_sampling, g_loss = gradalign_scoring(config.gradalign_scorer, s.loss, config.num_samples, task.max_new_tokens)
        g_ref = ref if g_loss.beta else None
        theirs = s.pool_signals(warm, g_sampling, g_loss, g_ref, "gradalign_scoring")
        validation = s.role["validation"]
        v_sampling = dataclasses.replace(g_sampling, num_samples=config.validation_samples)
        backend = TransformersBackend(warm, tokenizer)
        v_rollouts = sample_rollouts(backend, validation, v_sampling, s.verifier, s.template, s.stream("validation"))
        v_features = features_for_rates(
            warm,
            g_ref,
            tokenizer,
            validation,
            v_rollouts,
            success_rates(v_rollouts),
            g_loss,
            features,
            s.template,
            empty_width=theirs["clean"][1].shape[1],
        )

    # Every static rule selects on both pools (the untrained ones too: their corrupted shares are reported), then
    # every arm trains the same steps x problems x rollouts from the warm-up policy.
    accuracy = []
    for pool in POOLS:
        subsets = {}
        for arm in RULES:
            rates, feats = theirs[pool] if arm == "gradalign_static" else ours[pool]
            validation_features = v_features if arm == "gradalign_static" else None
            subsets[arm] = s.select(pool, arm, _signals(rates, feats, features.norm_floor, validation_features), rates)
        for arm in config.arms if pool == "clean" else config.coin_flip_arms:
            with s.timed(f"train_{pool}"):
                rows = (
                    s.train_curriculum(warm, pool)
                    if arm == "gradalign_curriculum"
                    else s.train_static(warm, subsets[arm])
                )
            rows = start + rows
            accuracy += [{"seed": seed, "pool": pool, "arm": arm, **r} for r in rows]
            target = [r["accuracy"] for r in rows if r["eval_set"] == "target"]
            log(f"seed {seed} {pool} {arm}: target accuracy " + " -> ".join(f"{100 * a:.1f}" for a in target))
            arm_done()

    columns = ["seed", "pool", "arm", "step", "eval_set", "accuracy", "num_correct", "num_samples"]
    return SeedResult(
        accuracy=pl.DataFrame(accuracy).select(columns),
        selections=pl.concat(s.selections),
        diagnostics=pl.concat(
            [_diagnostics(seed, ours["clean"], s.pools["clean"], s.seconds, features.norm_floor), *s.rounds],
            how="vertical_relaxed",
        ),
    )


def warmup_calibration(
    seeds: list[int],
    learning_rates: list[float],
    base_model,
    tokenizer,
    problems: pl.DataFrame,
    config: ExperimentConfig,
    grpo: GRPOConfig,
    features: FeatureConfig,
    task: TaskConfig,
    log: Callable[[str], None] = lambda message: None,
) -> pl.DataFrame:
    """The learning-rate calibration, on the warm-up alone (no arm is trained or looked at): per seed and lr, sampled
    pass@1 (n = eval_samples, T = 1) on the whole clean pool before and after that seed's warm-up (the experiment's
    own `_Seed.warm_up`: its subset, steps and seed streams), with common random numbers. One row per (seed, lr)."""
    rows = []
    spec = SamplingSpec(config.eval_samples, 1.0, 1.0, task.max_new_tokens)
    for seed in seeds:
        before = None
        for lr in learning_rates:
            s = _Seed(seed, base_model, tokenizer, problems, dataclasses.replace(config, learning_rate=lr), grpo,
                      features, task, log)  # fmt: skip
            pool, eval_seed = s.pools["clean"], s.stream("calibration")

            def sampled(model, pool=pool, eval_seed=eval_seed, s=s) -> float:
                backend = TransformersBackend(model, tokenizer)
                return pass_at_1(backend, pool, s.verifier, s.template, spec, "policy", "pool", eval_seed)[0].accuracy

            before = sampled(base_model) if before is None else before
            after = sampled(s.warm_up())
            rows.append({"seed": seed, "learning_rate": lr, "before": before, "after": after,
                         "delta_points": 100 * (after - before)})  # fmt: skip
            log(f"seed {seed} lr {lr:g}: sampled pass@1 on the pool {100 * before:.1f} -> {100 * after:.1f}")
    return pl.DataFrame(rows)


def calibrated_learning_rate(calibration: pl.DataFrame) -> float | None:
    """The rule: the largest learning rate at which the warm-up does not lower sampled pass@1 on the pool, on
    average over seeds (mean change >= 0 points); None when every one lowers it (try smaller ones)."""
    means = calibration.group_by("learning_rate").agg(pl.col("delta_points").mean())
    passing = means.filter(pl.col("delta_points") >= 0)["learning_rate"]
    return float(passing.max()) if passing.len() else None


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
    seed: int, signals: tuple[pl.DataFrame, torch.Tensor], pool: pl.DataFrame, seconds: dict, norm_floor: float
) -> pl.DataFrame:
    """What explains a null result without training: the p histogram and p classes per family and cell,
    Spearman(LearnAlign score, V) among learnable problems, the mean gradient cosine within vs between families, and
    the seconds each part took (`train_<pool>` includes its arms' evaluations)."""
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
    # the p histogram per family: share of the family's problems at each observed success rate
    for (family, p_value), frame in table.group_by("category", "success_rate", maintain_order=True):
        share = frame.height / table.filter(pl.col("category") == family).height
        rows.append({"metric": f"p_histogram:{family}", "group": f"{p_value:.3f}", "value": share})
    p = rates["success_rate"]
    rows += [
        {"metric": m, "group": "pool", "value": float(v)}
        for m, v in (("p0", (p == 0).mean()), ("learnable", ((p > 0) & (p < 1)).mean()), ("p1", (p == 1).mean()))
    ]
    signals_ = _signals(rates, feats, norm_floor)
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
    ("coin_flip", "gradalign_curriculum", "accuracy_band"),  # H3: the rule noise fools most is the comparator
)
POWER_CHECK = ("clean", "zero_variance", "random")
SECONDARY_SETS = ("off_target", "pool_weighted")  # evaluated at the start and the last step


def contrasts(config_arms: list[str], coin_flip_arms: list[str]) -> list[tuple[str, str, str, str]]:
    """(family, pool, arm, comparator) of every reported contrast: the confirmatory three, the power check, every
    other arm against Random on each pool (secondary), and the curriculum against the clean-half oracle (ceiling)."""
    out = [
        ("confirmatory", *c)
        for c in CONFIRMATORY
        if {c[1], c[2]} <= set(config_arms if c[0] == "clean" else coin_flip_arms)
    ]
    if POWER_CHECK[1] in config_arms:
        out.append(("power_check", *POWER_CHECK))
    taken = {(p, a, b) for _, p, a, b in out}
    for pool, arms in (("clean", config_arms), ("coin_flip", coin_flip_arms)):
        out += [("secondary", pool, a, "random") for a in arms if a != "random" and (pool, a, "random") not in taken]
    if {"gradalign_curriculum", ORACLE} <= set(coin_flip_arms):  # how far from knowing the coins (no test)
        out.append(("ceiling", "coin_flip", "gradalign_curriculum", ORACLE))
    return out


def analyze(accuracy: pl.DataFrame, selections: pl.DataFrame, eval_set: str = "target") -> pl.DataFrame:
    """One row per contrast: paired differences (arm - comparator, in accuracy points) over seeds at the last step,
    their mean, 95% t-interval, exact sign-flip p, Holm-adjusted p within its family (confirmatory, secondary),
    the mean over evaluated steps (area under the curve), the off-target and pool-weighted (whole distribution)
    differences at the last step, the steps the arm needs to reach the comparator's final accuracy (median over
    seeds), and the minimum detectable effect."""
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
        at_last = {name: (per_seed(arm, last, name), per_seed(other, last, name)) for name in SECONDARY_SETS}
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
                **{
                    f"{name}_points": 100 * sum(a[s] - b[s] for s in seeds) / len(seeds) if a and b else None
                    for name, (a, b) in at_last.items()
                },
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
    if row["family"] == "ceiling":
        return "descriptive: the distance to knowing which rewards are coins"
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
