"""The embedded default problem pool: procedural arithmetic word problems.

Each family is a word-problem template with a verifiable integer answer, a correct worked solution
("23+5=28. #### 28") and, for some families, a *shortcut* solution: a plausible but wrong line of reasoning
(stopping after the first step, adding instead of subtracting). The supervised pre-training corpus mixes in
shortcuts at per-family rates, which models a pretrained policy that knows how to solve a family but does not
do so reliably. That is the regime RL with verifiable rewards fixes, and where learnability p(1-p) separates
families the policy has mastered (p near 1), cannot do (p near 0) and can learn (p in between).

Numbers are small so that the arithmetic facts themselves are learnable by a tiny model on 2 CPU cores in
about a minute. Everything is drawn from a seeded `random.Random`: a (count, seed, mix) triple always gives the
same problems.

A *mix* (`MIXES`) says which problems are drawn and which shortcuts pre-training shows. Each family has three
phrasings ("variants"); the `default` mix draws families uniformly in today's phrasing (variant 0), with one
shortcut rate per family. The `realistic` mix weights (family, variant) cells and sets the shortcut rate per cell,
so learnability varies inside a family: the policy has to read the phrasing to know whether it has mastered a
problem, botches it half the time, or always takes the shortcut (docs/results.md records its calibration).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import polars as pl

from ..settings import require, require_finite, setting
from ..storage.hashing import problem_id
from .schema import PROBLEM_SCHEMA

NAMES = ["Ann", "Ben", "Cal", "Dee", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim", "Leo", "Mia", "Ned", "Oz", "Pam", "Sam"]
ITEMS = ["apple", "book", "coin", "card", "egg", "pen", "shell", "stamp", "marble", "cookie", "ticket", "sticker"]


@dataclass(frozen=True)
class WordProblem:
    family: str
    prompt: str
    answer: int
    solution: str  # correct worked steps ending in "#### <answer>"
    shortcut: str | None  # a wrong line of reasoning the pre-training corpus may contain, or None
    variant: int = 0  # which phrasing of the family (0: the original template)


# Three phrasings per family; index 0 is the original template, so variant 0 reproduces the default problems.
PHRASINGS: dict[str, tuple[str, str, str]] = {
    "add": (
        "{name} has {a} {item}s and gets {b} more. How many {item}s does {name} have?",
        "{name} picks up {a} {item}s, then finds {b} more. How many {item}s does {name} hold now?",
        "A box holds {a} {item}s and a bag holds {b} {item}s. How many {item}s are there in total?",
    ),
    "sub": (
        "{name} had {a} {item}s and gave away {b}. How many {item}s are left?",
        "{name} bought {a} {item}s and lost {b} on the way home. How many {item}s does {name} still have?",
        "There were {a} {item}s on a shelf until {name} took {b}. How many {item}s remain on the shelf?",
    ),
    "mul": (
        "{name} buys {a} bags with {b} {item}s each. How many {item}s does {name} buy?",
        "{name} fills {a} rows with {b} {item}s per row. How many {item}s are in the rows?",
        "Each of {a} friends gives {name} {b} {item}s. How many {item}s does {name} get?",
    ),
    "two_step": (
        "{name} has {a} {item}s, gets {b} more and then loses {c}. How many {item}s are left?",
        "{name} starts with {a} {item}s, receives {b} more, and gives {c} away. How many {item}s remain?",
        "A jar has {a} {item}s. {name} adds {b} and later removes {c}. How many {item}s are in the jar?",
    ),
    "mul_add": (
        "{name} has {a} boxes of {b} {item}s and {c} loose {item}s. How many {item}s in all?",
        "{name} packs {a} crates of {b} {item}s and keeps {c} extra {item}s. How many {item}s altogether?",
        "There are {a} shelves with {b} {item}s on each and {c} more {item}s on the floor. How many {item}s in total?",
    ),
}


# Every family draws its numbers first, then a name and an item, in the same order whatever the variant: the
# phrasing never changes which numbers a seed gives.


def _add(rng: random.Random, variant: int = 0) -> WordProblem:
    a, b = rng.randint(1, 12), rng.randint(1, 12)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    prompt = PHRASINGS["add"][variant].format(name=name, a=a, b=b, item=item)
    return WordProblem("add", prompt, a + b, f"{a}+{b}={a + b}. #### {a + b}", None, variant)


def _sub(rng: random.Random, variant: int = 0) -> WordProblem:
    b = rng.randint(1, 12)
    a = b + rng.randint(1, 12)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    prompt = PHRASINGS["sub"][variant].format(name=name, a=a, b=b, item=item)
    shortcut = f"{a}+{b}={a + b}. #### {a + b}"  # adds instead of subtracting
    return WordProblem("sub", prompt, a - b, f"{a}-{b}={a - b}. #### {a - b}", shortcut, variant)


def _mul(rng: random.Random, variant: int = 0) -> WordProblem:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    prompt = PHRASINGS["mul"][variant].format(name=name, a=a, b=b, item=item)
    return WordProblem("mul", prompt, a * b, f"{a}*{b}={a * b}. #### {a * b}", None, variant)


def _two_step(rng: random.Random, variant: int = 0) -> WordProblem:
    a, b = rng.randint(1, 12), rng.randint(1, 12)
    c = rng.randint(1, min(12, a + b - 1))
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    t, r = a + b, a + b - c
    prompt = PHRASINGS["two_step"][variant].format(name=name, a=a, b=b, c=c, item=item)
    shortcut = f"{a}+{b}={t}. #### {t}"  # stops after the first step
    return WordProblem("two_step", prompt, r, f"{a}+{b}={t}. {t}-{c}={r}. #### {r}", shortcut, variant)


def _mul_add(rng: random.Random, variant: int = 0) -> WordProblem:
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 9)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    t, r = a * b, a * b + c
    prompt = PHRASINGS["mul_add"][variant].format(name=name, a=a, b=b, c=c, item=item)
    shortcut = f"{a}*{b}={t}. #### {t}"  # stops after the first step
    return WordProblem("mul_add", prompt, r, f"{a}*{b}={t}. {t}+{c}={r}. #### {r}", shortcut, variant)


FAMILIES: dict[str, Callable[[random.Random, int], WordProblem]] = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "two_step": _two_step,
    "mul_add": _mul_add,
}

# Share of pre-training examples of each family that show the shortcut instead of the correct solution.
DEFAULT_SHORTCUT_RATES: dict[str, float] = {"sub": 0.3, "two_step": 0.7, "mul_add": 0.7}


@dataclass(frozen=True)
class ArithmeticMix:
    """Which problems the generator draws and which shortcuts the pre-training corpus shows.

    `cells` maps "family/variant" to a relative weight (None: every family uniformly, variant 0, drawn exactly as
    before mixes existed). `shortcut_rates` maps "family/variant" or "family" (every variant) to the share of that
    cell's pre-training examples that show the shortcut; a cell key wins over its family key. The corpus draws the
    mix's cells uniformly, so every phrasing is learned from the same number of examples. `target_cells` are the
    cells whose pre-training leaves room for RL (a shortcut at an intermediate rate): the held-out problems an
    experiment measures learning on.
    """

    cells: dict[str, float] | None = None
    shortcut_rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHORTCUT_RATES))
    target_cells: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require_finite(self)
        for key in list(self.cells or {}) + list(self.shortcut_rates):
            family, _, variant = key.partition("/")
            require(family in FAMILIES, "cells", f"unknown family in {key!r}; known: {sorted(FAMILIES)}")
            require(
                variant == "" or variant.isdigit() and int(variant) < len(PHRASINGS[family]),
                "cells",
                f"unknown variant in {key!r}; variants are 0..{len(PHRASINGS[family]) - 1}",
            )
        require(all(w >= 0 for w in (self.cells or {}).values()), "cells", "weights must be >= 0")

    def rate(self, problem: WordProblem) -> float:
        key = f"{problem.family}/{problem.variant}"
        return self.shortcut_rates.get(key, self.shortcut_rates.get(problem.family, 0.0))


# The realistic mix (calibrated in docs/results.md on the demo's pre-training and warm-up, K=8 rollouts at T=1):
# about half of the pool always solved (add and mul have no shortcut; their failures are sampling slips), a sixth
# never solved (variant 2 of the shortcut families: the corpus shows only the shortcut), a third learnable, and
# every family holds part of the learnable third, so selecting by learnability is not selecting a family.
REALISTIC_MIX = ArithmeticMix(
    cells={
        "add/0": 0.067,
        "add/1": 0.067,
        "add/2": 0.066,
        "mul/0": 0.114,
        "mul/1": 0.113,
        "mul/2": 0.113,
        "mul_add/0": 0.06,
        "mul_add/1": 0.08,
        "mul_add/2": 0.04,
        "sub/0": 0.045,
        "sub/1": 0.055,
        "sub/2": 0.04,
        "two_step/0": 0.045,
        "two_step/1": 0.055,
        "two_step/2": 0.04,
    },
    shortcut_rates={
        **{f"{family}/0": 0.0 for family in ("sub", "two_step", "mul_add")},
        **{f"{family}/1": 0.5 for family in ("sub", "two_step", "mul_add")},
        **{f"{family}/2": 1.0 for family in ("sub", "two_step", "mul_add")},
    },
    target_cells=("sub/0", "sub/1", "two_step/0", "two_step/1", "mul_add/1"),
)

MixName = Literal["default", "realistic"]
MIXES: dict[str, ArithmeticMix] = {"default": ArithmeticMix(), "realistic": REALISTIC_MIX}


@dataclass(frozen=True)
class ArithmeticConfig:
    """The embedded generator, shared by the pool, the benchmark and the pre-training corpus so they agree."""

    mix: MixName = setting(
        "default",
        "default: five families drawn uniformly, one phrasing, shortcuts per family (48% learnable after warm-up); "
        "realistic: three phrasings per family, shortcuts per phrasing, about two thirds of the pool always or never "
        "solved after warm-up and a third learnable, spread over every family",
    )

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.mix in MIXES, "mix", f"unknown mix {self.mix!r}; known: {sorted(MIXES)}")


def generate_problems(
    count: int, seed: int, families: tuple[str, ...] = tuple(FAMILIES), mix: ArithmeticMix | None = None
) -> list[WordProblem]:
    """`count` problems, identical for identical arguments: families drawn uniformly in their first phrasing, or
    the cells of `mix` by weight."""
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown arithmetic families {sorted(unknown)}; known: {sorted(FAMILIES)}")
    rng = random.Random(seed)
    if mix is None or mix.cells is None:
        return [FAMILIES[rng.choice(families)](rng) for _ in range(count)]
    cells = sorted(c for c, w in mix.cells.items() if w > 0 and c.partition("/")[0] in families)
    weights = [mix.cells[c] for c in cells]
    problems = []
    for _ in range(count):
        family, _, variant = rng.choices(cells, weights)[0].partition("/")
        problems.append(FAMILIES[family](rng, int(variant)))
    return problems


def pretraining_targets(problems: list[WordProblem], shortcut_rates: dict[str, float], seed: int) -> list[str]:
    """The supervised target of each problem: its shortcut at its cell's rate (a "family/variant" key wins over a
    "family" key), else its solution. The RNG is drawn only for problems with a shortcut and a nonzero rate."""
    rates = ArithmeticMix(shortcut_rates=shortcut_rates)
    rng = random.Random(seed)
    targets = []
    for p in problems:
        rate = rates.rate(p)
        targets.append(p.shortcut if p.shortcut is not None and rate > 0 and rng.random() < rate else p.solution)
    return targets


def arithmetic_frame(
    count: int, seed: int, split: str, exclude_ids: frozenset[str] = frozenset(), mix: ArithmeticMix | None = None
) -> pl.DataFrame:
    """The problem table (see `schema.PROBLEM_SCHEMA`) of `count` generated problems.

    Problems whose id is in `exclude_ids` (e.g. the pool, when building the test split) and repeats are
    dropped, so splits are disjoint by content; the table may then hold slightly fewer than `count` rows. With a
    mix of cells, `extra` records each problem's variant ({"variant": v}).
    """
    with_cells = mix is not None and mix.cells is not None
    rows, seen = [], set(exclude_ids)
    for index, p in enumerate(generate_problems(count, seed, mix=mix)):
        pid = problem_id(p.prompt, str(p.answer))
        if pid in seen:
            continue
        seen.add(pid)
        extra = json.dumps({"variant": p.variant}) if with_cells else "{}"
        rows.append((pid, "arithmetic", split, index, p.prompt, str(p.answer), p.solution, p.family, extra))
    return pl.DataFrame(rows, schema=PROBLEM_SCHEMA, orient="row")


def pretraining_corpus(
    count: int,
    seed: int,
    shortcut_rates: dict[str, float],
    exclude_ids: frozenset[str] = frozenset(),
    mix: ArithmeticMix | None = None,
) -> tuple[list[str], list[str]]:
    """(questions, supervised targets) for pre-training, disjoint from `exclude_ids` (pool and benchmark). With a
    mix of cells the corpus draws its cells uniformly, and the mix's shortcut rates take precedence over
    `shortcut_rates` for the keys it sets."""
    corpus_mix = None
    if mix is not None and mix.cells is not None:
        corpus_mix = ArithmeticMix(cells={c: 1.0 for c in mix.cells if mix.cells[c] > 0})
        shortcut_rates = {**shortcut_rates, **mix.shortcut_rates}
    problems = [
        p
        for p in generate_problems(count, seed, mix=corpus_mix)
        if problem_id(p.prompt, str(p.answer)) not in exclude_ids
    ]
    return [p.prompt for p in problems], pretraining_targets(problems, shortcut_rates, seed)


def cell_of(problems: pl.DataFrame) -> pl.Series:
    """Each problem's "family/variant" cell (variant 0 when the table does not record one)."""
    variant = problems["extra"].str.json_path_match("$.variant").fill_null("0")
    return (problems["category"].fill_null("?") + "/" + variant).alias("cell")
