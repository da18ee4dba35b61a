"""The settings of selection: the scoring rollouts, the projected gradient features, the alignment and the subset.
Every default lives here once; the Dagster run configs are generated from these classes (`lib/config.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..settings import require, require_finite, setting
from .capture import Scope
from .methods import METHODS
from .projection import DenseProjector, KroneckerProjector, Projector
from .scoring import GRADALIGN_NORM_FLOOR

BackendName = Literal["transformers", "vllm"]
SelectionMethod = Literal[tuple(METHODS)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class RolloutConfig:
    """K samples per pool problem from the warm-up policy, whose success rate p is the learnability signal
    (LearnAlign: K = 8 at temperature 1.0)."""

    num_samples: int = setting(8, "samples per problem (K)")
    temperature: float = setting(1.0, "sampling temperature")
    top_p: float = setting(1.0, "nucleus sampling threshold")
    seed: int = setting(0, "base seed; a problem's seed derives from it and the problem id")
    backend: BackendName = setting("transformers", "generation engine: transformers or vllm")
    problems_per_file: int = setting(64, "problems per published row-cache file: the unit a crash can lose")

    def __post_init__(self) -> None:
        require_finite(self)
        require(
            self.num_samples >= 2,
            "num_samples",
            f"learnability p(1 - p) needs >= 2 samples per problem (got {self.num_samples}; with 1, p is 0 or 1 and "
            "no problem is learnable)",
        )
        require(self.temperature > 0, "temperature", "must be > 0 (greedy samples are all alike: p is 0 or 1)")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.problems_per_file >= 1, "problems_per_file", "must be >= 1")


@dataclass(frozen=True)
class FeatureConfig:
    """How per-problem gradients are projected (LearnAlign step 3). Both projections are seeded per layer and
    never materialize the full projection matrix."""

    projection: Literal["kronecker", "dense"] = setting(
        "kronecker", "kronecker: LoGra factored projection; dense: Rademacher JL (LESS/TRAK)"
    )
    kronecker_in: int = setting(16, "kronecker: projected width of each layer's input")
    kronecker_out: int = setting(16, "kronecker: projected width of each layer's output gradient")
    output_width: int | None = setting(None, "kronecker: optional second projection to this width")
    dense_width_per_layer: int = setting(256, "dense: projected width per layer")
    scope: Scope = setting("all_linear", "which linear layers count: all_linear, last_blocks or attention")
    last_blocks: int = setting(1, "with scope=last_blocks: how many final blocks")
    seed: int = setting(0, "projection seed")
    norm_floor: float = setting(
        GRADALIGN_NORM_FLOOR,
        "normalization g / (|g| + norm_floor) wherever a method normalizes gradients (GradAlign's released code: "
        "1e-5); a gradient that is zero but for round-off (identical completions) scores about 0, not as a unit vector",
    )
    problems_per_batch: int = setting(
        4, "expected problems per batched forward/backward (content-defined batches; at most 8x this)"
    )
    on_nonfinite: Literal["fail", "exclude"] = setting(
        "fail", "NaN/inf features: fail naming the problems, or zero them (scored like p in {0,1}) and count them"
    )
    memory_budget_gib: float | None = setting(
        None,
        "activation memory of one forward/backward: batches are split into sub-batches of whole problems whose "
        "estimate (core/selection/memory.py) fits; default 80% of the free GPU memory, 4 GiB on CPU",
    )
    activation_checkpointing: bool = setting(
        False,
        "recompute each decoder layer's activations in backward instead of keeping them (~1/3 more compute; "
        "per-token memory drops from all layers' activations to one layer's plus each layer's input)",
    )

    def projector(self) -> Projector:
        if self.projection == "dense":
            return DenseProjector(self.dense_width_per_layer, self.seed)
        return KroneckerProjector(self.kronecker_in, self.kronecker_out, self.seed, self.output_width)

    def __post_init__(self) -> None:
        require_finite(self)
        for name in ("kronecker_in", "kronecker_out", "dense_width_per_layer", "last_blocks", "problems_per_batch"):
            require(getattr(self, name) >= 1, name, f"must be >= 1 (got {getattr(self, name)})")
        require(self.memory_budget_gib is None or self.memory_budget_gib > 0, "memory_budget_gib", "must be > 0")
        require(self.norm_floor > 0, "norm_floor", "must be > 0 (it keeps zero gradients zero)")
        require(self.output_width is None or self.output_width >= 1, "output_width", "must be None or >= 1")

    @property
    def scope_name(self) -> str:
        return self.scope if self.scope != "last_blocks" else f"last_blocks:{self.last_blocks}"


@dataclass(frozen=True)
class AlignmentConfig:
    """LearnAlign's row average Avg_i = V_i <u_i, mu> (and, for small pools, the explicit matrix)."""

    include_self: bool = setting(True, "keep the j = i term of LearnAlign's row average")
    max_matrix_problems: int = setting(256, "store the explicit n x n matrix only up to this n")

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.max_matrix_problems >= 0, "max_matrix_problems", "must be >= 0")


@dataclass(frozen=True)
class SelectionConfig:
    """The subset RL trains on: the top `budget` problems by a scoring rule."""

    budget: int = setting(256, "N: problems selected for RL training")
    method: SelectionMethod = setting(
        "learnalign",
        "scoring rule (core/selection/methods.py, each documented with its formula): learnalign (default), "
        "learnalign_dot, random, accgreedy, accuracy_band, zero_variance, gradient_norm, response_length, "
        "full_data here; learnalign_no_learnability, gradalign*, learnalign_no_warmup, limr, perplexity_top and ifd need "
        "the signals of the `comparison` group and are selected by its `comparison_subsets` asset",
    )
    seed: int = setting(0, "seed of the random and accuracy_band draws")

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.budget >= 1, "budget", f"must be >= 1 problem (got {self.budget})")
