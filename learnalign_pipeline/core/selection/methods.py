"""Every data-selection rule the LearnAlign and GradAlign papers compare, as pure scoring functions.

Each rule maps per-problem signals to one score per problem; `select` then keeps the N highest (ties by problem
id, so the result never depends on row order). Notation (see ../shared/research/methods.md §3-5):

* p_i: success rate over K rollouts; V_i = p_i (1 - p_i) (LearnAlign learnability).
* phi_i: projected per-problem GRPO gradient, u_i = phi_i / |phi_i| (0 for problems with p in {0, 1}: zero advantage).
* g_V: the trusted validation set's aggregated gradient (GradAlign), projected with the same projector and seed as
  the pool, so <phi_i, Gamma^T g_V> = <Gamma^T g_i, Gamma^T g_V> and the JL guarantees carry over.

Signals a method needs and does not get raise a `MissingSignal` naming it.

Unlearnable problems. A problem with p in {0, 1} at the scoring policy got the same reward in all K samples: its
GRPO advantage is 0, so training on it costs K rollouts per visit and moves the policy only through the KL term.
Methods that rank by learnability or by the policy gradient (`LEARNABLE_ONLY`) therefore never select such a
problem while a learnable one (0 < p < 1) remains; when the budget exceeds the learnable problems, the subset is
every learnable problem, smaller than the budget, and `Selection` says so. (LearnAlign's own scores would rank
p in {0, 1} problems, score 0, above learnable problems with negative alignment and let them fill the budget.)
The controls (random, the accuracy band, LIMR, length, perplexity, IFD, full data) keep their definitions. A
pool with no learnable problem at all is refused by every method (`NoLearnableProblems`): nothing in it can be
trained on, and every learnability or gradient score is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import polars as pl
import torch

from ..storage import hashing
from .scoring import GRADALIGN_NORM_FLOOR, learnability, learnalign_scores, normalized, top_n


class MissingSignal(ValueError):
    """The method needs a per-problem signal the caller did not provide."""


@dataclass(frozen=True)
class SelectionSignals:
    """Per-problem inputs, every tensor with rows in `problem_ids` order; optional ones default to None."""

    problem_ids: list[str]
    success_rate: torch.Tensor  # p_i at the scoring policy (warm-up)
    unit_features: torch.Tensor | None = None  # u_i, zero rows for problems without a gradient
    norms: torch.Tensor | None = None  # |phi_i|
    validation_features: torch.Tensor | None = None  # [m, d] raw projected gradients of the trusted validation problems
    cold_success_rate: torch.Tensor | None = None  # p_i at the base policy (LearnAlign w/o warm-up)
    cold_unit_features: torch.Tensor | None = None  # u_i at the base policy
    zero_variance_unit_features: torch.Tensor | None = None  # u_i of p in {0,1} problems: their KL-only gradient
    limr_trajectory: torch.Tensor | None = None  # [n, E] per-epoch accuracy in a full-data GRPO run, NaN = not seen
    response_tokens: torch.Tensor | None = None  # mean completion length of the rollouts
    perplexity: torch.Tensor | None = None  # PPL(reference answer | question) under the scoring policy
    unconditional_perplexity: torch.Tensor | None = None  # PPL(reference answer) without the question
    norm_floor: float = GRADALIGN_NORM_FLOOR  # g / (|g| + floor) wherever a rule normalizes (FeatureConfig.norm_floor)
    extra: dict = field(default_factory=dict)

    def need(self, name: str, method: str) -> torch.Tensor:
        value = getattr(self, name)
        if value is None:
            raise MissingSignal(f"method {method!r} needs the {name!r} signal")
        return value.float()


# ---- LearnAlign (§3.2, §3.4) -------------------------------------------------------------------------------------


def learnalign(signals: SelectionSignals, include_self: bool = True) -> torch.Tensor:
    """Avg_i = (1/n) sum_j V_i V_j cos(phi_i, phi_j) = V_i <u_i, mu>, mu = (1/n) sum_j V_j u_j."""
    v = learnability(signals.success_rate.float())
    return learnalign_scores(v, signals.need("unit_features", "learnalign"), include_self)[0]


def learnalign_no_learnability(signals: SelectionSignals) -> torch.Tensor:
    """Ablation "w/o data learnability V": Avg_i = <u_i, (1/n) sum_j u_j> (V_i = 1 for every problem).

    To isolate V, problems with p in {0, 1} need a direction of their own: their GRPO gradient is the KL term alone
    (zero advantage), against LearnAlign's reference, the initial model (`zero_variance_unit_features`, rows of
    learnable problems zero). Without that signal their rows are zero, so they score 0 and the ablation still
    filters by p, which is what it is meant to remove."""
    u = signals.need("unit_features", "learnalign_no_learnability")
    extra = signals.need("zero_variance_unit_features", "learnalign_no_learnability")
    u = torch.where((u.norm(dim=1, keepdim=True) > 0), u, extra)
    return learnalign_scores(torch.ones(u.shape[0]), u)[0]


def learnalign_dot(signals: SelectionSignals) -> torch.Tensor:
    """Inner-product variant: S_ij = V_i V_j <phi_i, phi_j> (unnormalized), Avg_i = V_i <phi_i, (1/n) sum_j V_j phi_j>."""
    phi = signals.need("unit_features", "learnalign_dot") * signals.need("norms", "learnalign_dot").unsqueeze(1)
    v = learnability(signals.success_rate.float())
    return v * (phi @ ((v.unsqueeze(1) * phi).sum(0) / phi.shape[0]))


def learnalign_no_warmup(signals: SelectionSignals) -> torch.Tensor:
    """Ablation "w/o warm-up": the LearnAlign score with p and phi computed at the base policy theta_0."""
    v = learnability(signals.need("cold_success_rate", "learnalign_no_warmup"))
    return learnalign_scores(v, signals.need("cold_unit_features", "learnalign_no_warmup"))[0]


# ---- GradAlign (§4.2, §4.6) --------------------------------------------------------------------------------------


def gradalign(signals: SelectionSignals) -> torch.Tensor:
    """GradAlign `sim`: s_x = cos(g_x, g_V) with g_V = sum_v g_v (raw validation gradients summed, normalized once).
    Candidates with p in {0, 1} have no gradient and score 0."""
    g_v = signals.need("validation_features", "gradalign").sum(0)
    return signals.need("unit_features", "gradalign") @ normalized(g_v, signals.norm_floor)


def gradalign_dot(signals: SelectionSignals) -> torch.Tensor:
    """GradAlign `dot`: s_x = <g_x, g_V / |g_V|> (the candidate is not normalized, so large gradients win)."""
    g_v = signals.need("validation_features", "gradalign_dot").sum(0)
    phi = signals.need("unit_features", "gradalign_dot") * signals.need("norms", "gradalign_dot").unsqueeze(1)
    return phi @ normalized(g_v, signals.norm_floor)


def gradalign_unit_mean(signals: SelectionSignals) -> torch.Tensor:
    """GradAlign with `norm_before_accumulation`: s_x = cos(g_x, sum_v g_v / |g_v|), every validation problem
    weighted equally instead of by its gradient norm; equals the mean over v of cos(g_x, g_v) up to a constant."""
    val = signals.need("validation_features", "gradalign_unit_mean")
    unit_val = val / (val.norm(dim=1, keepdim=True) + signals.norm_floor)
    return signals.need("unit_features", "gradalign_unit_mean") @ normalized(unit_val.sum(0), signals.norm_floor)


def gradalign_learnability(signals: SelectionSignals) -> torch.Tensor:
    """GradAlign `simacc`: s_x = cos(g_x, g_V) * 4 a_x (1 - a_x), a_x the candidate's accuracy."""
    return gradalign(signals) * 4 * learnability(signals.success_rate.float())


def gradalign_bottom(signals: SelectionSignals) -> torch.Tensor:
    """GradAlign `negsim` sanity check: the bottom-k by cos(g_x, g_V) (scores negated, so top-N = bottom-N)."""
    return -gradalign(signals)


def gradient_norm(signals: SelectionSignals) -> torch.Tensor:
    """GradAlign `norm` ablation: s_x = |phi_x| (the length-biased magnitude LearnAlign replaces by V)."""
    return signals.need("norms", "gradient_norm")


# ---- Accuracy-based baselines (§4.6, §5) -------------------------------------------------------------------------


def seeded_uniform(problem_ids: list[str], seed: int) -> torch.Tensor:
    """A uniform number in [0, 1) per problem from (seed, id): independent of row order and of the pool."""
    return torch.tensor(hashing.seeded_uniform(problem_ids, seed), dtype=torch.float64)


def random_scores(signals: SelectionSignals, seed: int = 0) -> torch.Tensor:
    """Random: a seeded uniform draw of N problems (the top-N of seeded uniform scores)."""
    return seeded_uniform(signals.problem_ids, seed)


def accgreedy(signals: SelectionSignals) -> torch.Tensor:
    """AccGreedy: s_x = -|a_x - 1/2| (accuracy closest to one half first)."""
    return -(signals.success_rate.double() - 0.5).abs()


def accuracy_band(signals: SelectionSignals, low: float = 0.2, high: float = 0.8, seed: int = 0) -> torch.Tensor:
    """Accuracy filter (GradAlign `acc`): a uniform seeded draw among problems with low <= a_x <= high. Problems
    outside the band score below every problem inside it (they fill the budget only when the band is too small)."""
    inside = (signals.success_rate.double() >= low) & (signals.success_rate.double() <= high)
    draw = seeded_uniform(signals.problem_ids, seed)
    return torch.where(inside, draw, draw - 2.0)


def visit_trajectory(rollouts: pl.DataFrame) -> pl.DataFrame:
    """Per (problem, epoch): the accuracy of its rollouts at its epoch-th visit in a GRPO run, from the run's rollout
    records (step, problem_id, reward). Training walks seeded permutations of the data, so a problem's k-th visit
    falls in the k-th epoch."""
    per_visit = rollouts.group_by("step", "problem_id").agg(pl.col("reward").mean().alias("accuracy"))
    per_visit = per_visit.sort("step", "problem_id").with_columns(
        pl.int_range(pl.len()).over("problem_id").cast(pl.Int32).alias("epoch")
    )
    return per_visit.select("problem_id", "epoch", pl.col("step").cast(pl.Int32), pl.col("accuracy").cast(pl.Float64))


def zero_variance(signals: SelectionSignals, seed: int = 0) -> torch.Tensor:
    """Negative control: a seeded uniform draw among problems with p in {0, 1} (no advantage, hence no GRPO signal
    at the scoring policy). Learnable problems score below all of them (they fill the budget only when too few
    zero-variance problems exist)."""
    p = signals.success_rate.double()
    draw = seeded_uniform(signals.problem_ids, seed)
    return torch.where((p == 0) | (p == 1), draw, draw - 2.0)


def trajectory_matrix(trajectory: pl.DataFrame, problem_ids: list[str]) -> torch.Tensor:
    """[n, E] accuracy per (problem, epoch) in `problem_ids` order; NaN where a problem was not seen that epoch.

    A trailing epoch that covers fewer problems than the first (the run's last steps spilling into a pass they do
    not finish) is dropped: LIMR's epochs are whole passes, and a partial last epoch would mark most problems missing.
    """
    coverage = trajectory.group_by("epoch").agg(pl.col("problem_id").n_unique().alias("problems")).sort("epoch")
    full = coverage["problems"].max() if coverage.height else 0
    while coverage.height > 1 and coverage["problems"][-1] < full:
        coverage = coverage.head(coverage.height - 1)
    epochs = coverage.height or 1
    trajectory = trajectory.filter(pl.col("epoch") < epochs)
    matrix = torch.full((len(problem_ids), epochs), math.nan, dtype=torch.float64)
    row_of = {pid: i for i, pid in enumerate(problem_ids)}
    for pid, epoch, accuracy in trajectory.select("problem_id", "epoch", "accuracy").iter_rows():
        if pid in row_of:
            matrix[row_of[pid], epoch] = accuracy
    return matrix


def limr(signals: SelectionSignals) -> torch.Tensor:
    """LIMR: s_i = 1 - sum_k (a_i^k - abar^k)^2 / sum_k (1 - abar^k)^2 over the epochs k of a full-data GRPO run,
    abar^k the pool-mean accuracy of epoch k. A missing epoch takes the next epoch's value; problems still
    missing (never seen, or missing at the last epoch) get -inf, so they are picked last."""
    traj = signals.need("limr_trajectory", "limr").double().clone()
    for k in range(traj.shape[1] - 2, -1, -1):  # backward fill from the next epoch
        traj[:, k] = torch.where(torch.isnan(traj[:, k]), traj[:, k + 1], traj[:, k])
    complete = ~torch.isnan(traj).any(dim=1)
    if not complete.any():
        return torch.full((traj.shape[0],), -math.inf, dtype=torch.float64)
    mean_curve = traj[complete].mean(0)
    denominator = ((1 - mean_curve) ** 2).sum().clamp(min=1e-12)
    scores = 1 - ((traj - mean_curve) ** 2).sum(1) / denominator
    return torch.where(complete, scores, torch.tensor(-math.inf, dtype=torch.float64))


# ---- SFT-style cheap baselines (§5) ------------------------------------------------------------------------------


def response_length(signals: SelectionSignals) -> torch.Tensor:
    """Token Length: the longest N by mean response length of the policy's rollouts."""
    return signals.need("response_tokens", "response_length")


def perplexity_top(signals: SelectionSignals) -> torch.Tensor:
    """PPL-Top: the N problems whose reference answer has the highest perplexity given the question."""
    return signals.need("perplexity", "perplexity_top")


def ifd(signals: SelectionSignals) -> torch.Tensor:
    """IFD (Cherry-LLM): PPL(answer | question) / PPL(answer), highest first: the question helps least."""
    return signals.need("perplexity", "ifd") / signals.need("unconditional_perplexity", "ifd").clamp(min=1e-12)


def full_data(signals: SelectionSignals) -> torch.Tensor:
    """Full data: every problem (all score 1; `select` returns the whole pool whatever the budget)."""
    return torch.ones(len(signals.problem_ids))


SEEDED = {
    "random",
    "accuracy_band",
    "zero_variance",
}  # methods whose selection depends on the seed (the others only train with it)

METHODS = {
    "learnalign": learnalign,
    "learnalign_no_learnability": learnalign_no_learnability,
    "learnalign_dot": learnalign_dot,
    "learnalign_no_warmup": learnalign_no_warmup,
    "gradalign": gradalign,
    "gradalign_dot": gradalign_dot,
    "gradalign_unit_mean": gradalign_unit_mean,
    "gradalign_learnability": gradalign_learnability,
    "gradalign_bottom": gradalign_bottom,
    "gradient_norm": gradient_norm,
    "random": random_scores,
    "accgreedy": accgreedy,
    "accuracy_band": accuracy_band,
    "zero_variance": zero_variance,
    "limr": limr,
    "response_length": response_length,
    "perplexity_top": perplexity_top,
    "ifd": ifd,
    "full_data": full_data,
}


def method_scores(method: str, signals: SelectionSignals, seed: int = 0) -> torch.Tensor:
    """The score of every problem under `method` (higher is selected first)."""
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {sorted(METHODS)}")
    rule = METHODS[method]
    return rule(signals, seed=seed) if method in SEEDED else rule(signals)


# Methods that rank by learnability or by the policy gradient: they select only learnable problems (see above).
# Not the ablation without V: it ranks p in {0, 1} problems by their KL-only gradient, since filtering them out is
# part of what V does and the ablation is meant to remove it.
LEARNABLE_ONLY = {
    "learnalign",
    "learnalign_dot",
    "learnalign_no_warmup",
    "gradalign",
    "gradalign_dot",
    "gradalign_unit_mean",
    "gradalign_learnability",
    "gradalign_bottom",
    "gradient_norm",
    "accgreedy",
}


class NoLearnableProblems(ValueError):
    """Every pool problem has p in {0, 1}: no selection can give GRPO anything to learn from."""


def learnable_mask(success_rate: torch.Tensor) -> torch.Tensor:
    """0 < p < 1: the problems whose rollouts disagree, so their GRPO advantages are not all 0."""
    p = success_rate.double()
    return (p > 0) & (p < 1)


@dataclass(frozen=True)
class Selection:
    picked: list[int]  # row indices of the selected problems, best first
    scores: torch.Tensor  # every problem's score under the method
    budget: int  # N as requested
    pool: int  # problems in the pool
    learnable_in_pool: int  # 0 < p < 1 at the scoring policy
    learnable_selected: int
    learnable_only: bool  # whether the method may select only learnable problems

    @property
    def shortfall(self) -> str | None:
        """Why fewer problems than the budget were selected, or None."""
        if len(self.picked) >= self.budget:
            return None
        if self.learnable_only and self.learnable_in_pool < min(self.budget, self.pool):
            return (
                f"budget {self.budget} > {self.learnable_in_pool} learnable problems (0 < p < 1) in the pool of "
                f"{self.pool}: selected {len(self.picked)}; the others have the same reward in every sample, so GRPO "
                "would learn nothing from them"
            )
        return f"budget {self.budget} > the pool's {self.pool} problems: selected {len(self.picked)}"


def no_learnable_message(success_rate: torch.Tensor) -> str:
    p = success_rate.double()
    never, always = int((p == 0).sum()), int((p == 1).sum())
    return (
        f"no learnable problem in the pool: all {p.numel()} problems have p = 0 or 1 at the scoring policy "
        f"({never} never solved, {always} always solved), so GRPO would get zero advantage on every one. Check the "
        "gold answers (rejected_problems, a sample of rollouts), sample more rollouts per problem, or use a policy "
        "that solves some of them"
    )


def select(
    method: str, signals: SelectionSignals, budget: int, seed: int = 0, scores: torch.Tensor | None = None
) -> Selection:
    """The top `budget` problems by `method` (`scores`, when given, replace the method's own: e.g. LearnAlign with
    a configured alignment). Learnability and gradient methods select only learnable problems; `full_data` takes
    the whole pool. Raises NoLearnableProblems when the pool has no learnable problem."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    learnable = learnable_mask(signals.success_rate)
    if not learnable.any():
        raise NoLearnableProblems(no_learnable_message(signals.success_rate))
    scores = method_scores(method, signals, seed) if scores is None else scores
    ids = signals.problem_ids
    only = method in LEARNABLE_ONLY
    if method == "learnalign_no_warmup":  # its learnability is measured at the base policy
        eligible = learnable_mask(signals.need("cold_success_rate", method))
    else:
        eligible = learnable if only else torch.ones(len(ids), dtype=torch.bool)
    candidates = [i for i in range(len(ids)) if eligible[i]]
    n = len(candidates) if method == "full_data" else budget
    picked = [candidates[j] for j in top_n(scores[candidates], [ids[i] for i in candidates], n)]
    return Selection(
        picked=picked,
        scores=scores,
        budget=budget,
        pool=len(ids),
        learnable_in_pool=int(learnable.sum()),
        learnable_selected=int(learnable[picked].sum()) if picked else 0,
        learnable_only=only,
    )
