"""Answer verification for numeric answers. Model output is untrusted: it is only matched with regexes.

Mirrors lm-evaluation-harness's gsm8k filters: `strict` takes the number after "#### ", `flexible` takes the
last number in the text. Both ignore thousands separators, a leading "$" and a trailing ".", and compare as
numbers, so "1,000" equals "1000" and "3.0" equals "3".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal, Protocol

from ..storage.hashing import coin_flip

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
MAX_NUMBER_CHARS = 64  # longer "numbers" are not answers; refusing them keeps Decimal arithmetic cheap


def parse_number(text: str) -> Decimal | None:
    """A number from a matched answer string, or None when it is not one (e.g. "..." or "1.2.3")."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if not cleaned or len(cleaned) > MAX_NUMBER_CHARS:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def extract_answer(completion: str, mode: Literal["strict", "flexible"]) -> Decimal | None:
    if mode == "strict":
        match = STRICT.search(completion)
        return parse_number(match.group(1)) if match else None
    for match in reversed(FLEXIBLE.findall(completion)):
        value = parse_number(match[0] or match[1])
        if value is not None:
            return value
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, or None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
        i += 1
    return None  # unbalanced: the answer is cut off


class Verifier(Protocol):
    """Scores completions against gold answers: 1.0 correct, 0.0 otherwise (never raises on model output)."""

    name: str

    def score_batch(self, completions: list[str], golds: list[str]) -> list[float]: ...


@dataclass(frozen=True)
class NumericVerifier:
    """Binary reward: 1.0 when the extracted number equals the gold number."""

    mode: Literal["strict", "flexible"] = "flexible"
    name: str = "numeric"

    def score(self, completion: str, gold: str) -> float:
        gold_value = parse_number(gold)
        if gold_value is None:
            raise ValueError(f"gold answer {gold!r} is not a number")
        predicted = extract_answer(completion, self.mode)
        return float(predicted is not None and predicted == gold_value)

    def score_batch(self, completions: list[str], golds: list[str]) -> list[float]:
        return [self.score(c, g) for c, g in zip(completions, golds, strict=True)]


VERIFIERS = ("numeric_flexible", "numeric_strict", "math_verify")


@dataclass(frozen=True)
class RolloutRewards:
    """The one rule that decides a rollout's reward: a fair coin keyed by (problem, rollout seed) for the problems in
    `coin_flip` (unreliable rewards, GradAlign's regime 1: reproducible and independent of the completion), the
    verifier against the gold for every other problem. Every consumer scores through it: the rollout stage and the
    curriculum (`policy/rollouts.py`), GRPO through TRL in process and launched (`training/trl_engine.py`), and
    benchmarks, which build it clean (`data/noise.py` `rollout_rewards`)."""

    verifier: Verifier
    coin_flip: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.verifier.name

    def __call__(
        self, problem_ids: list[str], seeds: list[int], completions: list[str], golds: list[str]
    ) -> list[float]:
        rewards = self.verifier.score_batch(list(completions), list(golds))
        return [
            coin_flip(pid, seed) if pid in self.coin_flip else float(reward)
            for pid, seed, reward in zip(problem_ids, seeds, rewards, strict=True)
        ]


def make_verifier(name: str, timeout_s: float, workers: int = 2):
    """The verifier a dataset's config names: lm-eval numeric matching or math-verify (LaTeX, boxed answers)."""
    if name in ("numeric_flexible", "numeric_strict"):
        return NumericVerifier(mode=name.removeprefix("numeric_"), name=name)  # type: ignore[arg-type]
    if name == "math_verify":
        from .verify_math import MathVerifier  # imports nothing heavy here; SymPy loads in the workers

        return MathVerifier(timeout_s=timeout_s, workers=workers)
    raise ValueError(f"unknown verifier {name!r}; known: {list(VERIFIERS)}")
