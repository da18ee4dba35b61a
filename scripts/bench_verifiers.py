"""Throughput (answers/s) of the numeric and the math-verify verifier on the same GSM8K-derived completions.

Completions are built from GSM8K test gold answers in the forms models write: the lm-eval "#### N" line, a
\\boxed{N} answer, a plain "The answer is N." sentence, and wrong answers, so both verifiers see identical input.

    python scripts/bench_verifiers.py [--limit 400] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from learnalign_pipeline.core.data.loaders import SourceConfig, load_problems
from learnalign_pipeline.core.task.verify import NumericVerifier
from learnalign_pipeline.core.task.verify_math import MathVerifier

GSM8K_TEST = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "gsm8k" / "test.jsonl"


def completions(limit: int) -> tuple[list[str], list[str]]:
    problems = load_problems(SourceConfig(str(GSM8K_TEST), split="test")).problems.head(limit)
    texts, golds = [], []
    for i, (solution, gold) in enumerate(zip(problems["solution"], problems["answer"])):
        reasoning = solution.split("####")[0].strip()
        answer = gold if i % 4 else str(int(float(gold)) + 1)  # every fourth answer is wrong
        texts.append(
            [
                f"{reasoning}\n#### {answer}",
                f"{reasoning}\nSo the answer is $\\boxed{{{answer}}}$.",
                f"{reasoning}\nThe answer is {answer}.",
            ][i % 3]
        )
        golds.append(gold)
    return texts, golds


def throughput(verifier, texts: list[str], golds: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    scores = verifier.score_batch(texts, golds)
    return len(texts) / (time.perf_counter() - start), sum(scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=400, help="GSM8K test problems to use")
    parser.add_argument("--workers", type=int, default=2, help="math-verify worker processes")
    args = parser.parse_args()
    texts, golds = completions(args.limit)
    numeric_rate, numeric_accuracy = throughput(NumericVerifier(mode="flexible", name="numeric_flexible"), texts, golds)
    with MathVerifier(timeout_s=5.0, workers=args.workers) as math_verifier:
        math_verifier.score_batch(texts[:2], golds[:2])  # start the workers outside the timed run
        math_rate, math_accuracy = throughput(math_verifier, texts, golds)
        stats = dict(math_verifier.stats)
    print(f"completions: {len(texts)} (GSM8K test, 3 answer styles, 1 in 4 wrong)")
    print(f"numeric_flexible: {numeric_rate:,.0f} answers/s, mean reward {numeric_accuracy:.3f}")
    print(
        f"math_verify ({args.workers} workers): {math_rate:,.1f} answers/s, mean reward {math_accuracy:.3f}, stats {stats}"
    )
    print(f"ratio numeric/math_verify: {numeric_rate / math_rate:,.0f}x")


if __name__ == "__main__":
    main()
