"""The embedded default problem pool: procedural arithmetic word problems.

Each family is a word-problem template with a verifiable integer answer, a correct worked solution
("23+5=28. #### 28") and, for some families, a *shortcut* solution: a plausible but wrong line of reasoning
(stopping after the first step, adding instead of subtracting). The supervised pre-training corpus mixes in
shortcuts at per-family rates, which models a pretrained policy that knows how to solve a family but does not
do so reliably. That is the regime RL with verifiable rewards fixes, and where learnability p(1-p) separates
families the policy has mastered (p near 1), cannot do (p near 0) and can learn (p in between).

Numbers are small so that the arithmetic facts themselves are learnable by a tiny model on 2 CPU cores in
about a minute. Everything is drawn from a seeded `random.Random`: a (count, seed) pair always gives the same
problems.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

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


def _add(rng: random.Random) -> WordProblem:
    a, b = rng.randint(1, 12), rng.randint(1, 12)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    prompt = f"{name} has {a} {item}s and gets {b} more. How many {item}s does {name} have?"
    return WordProblem("add", prompt, a + b, f"{a}+{b}={a + b}. #### {a + b}", None)


def _sub(rng: random.Random) -> WordProblem:
    b = rng.randint(1, 12)
    a = b + rng.randint(1, 12)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    prompt = f"{name} had {a} {item}s and gave away {b}. How many {item}s are left?"
    return WordProblem("sub", prompt, a - b, f"{a}-{b}={a - b}. #### {a - b}", f"{a}+{b}={a + b}. #### {a + b}")


def _mul(rng: random.Random) -> WordProblem:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    prompt = f"{name} buys {a} bags with {b} {item}s each. How many {item}s does {name} buy?"
    return WordProblem("mul", prompt, a * b, f"{a}*{b}={a * b}. #### {a * b}", None)


def _two_step(rng: random.Random) -> WordProblem:
    a, b = rng.randint(1, 12), rng.randint(1, 12)
    c = rng.randint(1, min(12, a + b - 1))
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    t, r = a + b, a + b - c
    prompt = f"{name} has {a} {item}s, gets {b} more and then loses {c}. How many {item}s are left?"
    return WordProblem("two_step", prompt, r, f"{a}+{b}={t}. {t}-{c}={r}. #### {r}", f"{a}+{b}={t}. #### {t}")


def _mul_add(rng: random.Random) -> WordProblem:
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 9)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    t, r = a * b, a * b + c
    prompt = f"{name} has {a} boxes of {b} {item}s and {c} loose {item}s. How many {item}s in all?"
    return WordProblem("mul_add", prompt, r, f"{a}*{b}={t}. {t}+{c}={r}. #### {r}", f"{a}*{b}={t}. #### {t}")


FAMILIES: dict[str, Callable[[random.Random], WordProblem]] = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "two_step": _two_step,
    "mul_add": _mul_add,
}

# Share of pre-training examples of each family that show the shortcut instead of the correct solution.
DEFAULT_SHORTCUT_RATES: dict[str, float] = {"sub": 0.3, "two_step": 0.7, "mul_add": 0.7}


def generate_problems(count: int, seed: int, families: tuple[str, ...] = tuple(FAMILIES)) -> list[WordProblem]:
    """`count` problems with families drawn uniformly; identical for identical (count, seed, families)."""
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown arithmetic families {sorted(unknown)}; known: {sorted(FAMILIES)}")
    rng = random.Random(seed)
    return [FAMILIES[rng.choice(families)](rng) for _ in range(count)]


def pretraining_targets(problems: list[WordProblem], shortcut_rates: dict[str, float], seed: int) -> list[str]:
    """The supervised target of each problem: its shortcut with the family's rate, else its solution."""
    rng = random.Random(seed)
    return [
        p.shortcut if p.shortcut is not None and rng.random() < shortcut_rates.get(p.family, 0.0) else p.solution
        for p in problems
    ]


def arithmetic_frame(count: int, seed: int, split: str, exclude_ids: frozenset[str] = frozenset()) -> pl.DataFrame:
    """The problem table (see `schema.PROBLEM_SCHEMA`) of `count` generated problems.

    Problems whose id is in `exclude_ids` (e.g. the pool, when building the test split) and repeats are
    dropped, so splits are disjoint by content; the table may then hold slightly fewer than `count` rows.
    """
    rows, seen = [], set(exclude_ids)
    for index, p in enumerate(generate_problems(count, seed)):
        pid = problem_id(p.prompt, str(p.answer))
        if pid in seen:
            continue
        seen.add(pid)
        rows.append((pid, "arithmetic", split, index, p.prompt, str(p.answer), p.solution, p.family, "{}"))
    return pl.DataFrame(rows, schema=PROBLEM_SCHEMA, orient="row")


def pretraining_corpus(
    count: int, seed: int, shortcut_rates: dict[str, float], exclude_ids: frozenset[str] = frozenset()
) -> tuple[list[str], list[str]]:
    """(questions, supervised targets) for pre-training, disjoint from `exclude_ids` (pool and benchmark)."""
    problems = [p for p in generate_problems(count, seed) if problem_id(p.prompt, str(p.answer)) not in exclude_ids]
    return [p.prompt for p in problems], pretraining_targets(problems, shortcut_rates, seed)
