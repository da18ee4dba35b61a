"""math-verify in worker processes: equivalent forms match, hostile outputs finish in time and score 0."""

import time

import pytest

from learnalign_pipeline.core.task.verify import NumericVerifier, make_verifier
from learnalign_pipeline.core.task.verify_math import MathVerifier

TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(timeout_s=TIMEOUT_S, workers=2) as v:
        yield v


def test_equivalent_forms_match_and_wrong_ones_do_not(verifier):
    cases = [
        ("The answer is $\\boxed{0.5}$.", "\\frac{1}{2}", 1.0),
        ("so \\boxed{\\frac{2}{4}}", "0.5", 1.0),
        ("It is \\boxed{\\sqrt{4}}", "2", 1.0),
        ("Natalia sold 72 clips.", "72", 1.0),  # plain text falls back to the last number
        ("First \\boxed{3}, finally \\boxed{4}", "4", 1.0),
        ("She pays $12 + $3 = $<<12+3=15>>15.\n#### 15", "15", 1.0),  # currency signs are not inline math
        ("Costs $5 * 4 = $20 in all.\nThe answer is 20.", "20", 1.0),
        ("So the answer is $\\frac{3}{6}$.", "\\frac{1}{2}", 1.0),
        ("\\boxed{3}", "4", 0.0),
        ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0.0),
        ("no answer here", "1", 0.0),
    ]
    before = dict(verifier.stats)
    scores = verifier.score_batch([c for c, _, _ in cases], [g for _, g, _ in cases])
    assert scores == [s for _, _, s in cases]
    assert verifier.stats["answers"] - before["answers"] == len(cases)
    assert verifier.stats["correct"] - before["correct"] == 8
    assert verifier.stats["answer_unparsed"] - before["answer_unparsed"] == 1


def test_hostile_outputs_finish_within_the_timeout_and_score_zero(verifier, tmp_path):
    marker = tmp_path / "pwned"
    hostile = [
        "\\frac{" * 10_000 + "1" + "}{2}" * 10_000,
        "\\boxed{" + "\\frac{" * 10_000 + "1" + "}{2}" * 10_000 + "}",
        "\\boxed{10^{10^{10^{10}}}}",
        "\\boxed{9^{9^{9^{9^{9}}}}!}",
        f"__import__('os').system('touch {marker}')",
        f"\\boxed{{__import__('pathlib').Path('{marker}').touch()}}",
        "\\boxed{" + "{" * 5000,
    ]
    before = dict(verifier.stats)
    start = time.monotonic()
    scores = verifier.score_batch(hostile, ["1"] * len(hostile))
    elapsed = time.monotonic() - start
    assert scores == [0.0] * len(hostile)
    # Two workers, each answer at most TIMEOUT_S plus a worker restart.
    assert elapsed < len(hostile) * TIMEOUT_S
    assert not marker.exists()  # nothing was executed
    delta = {k: verifier.stats[k] - before[k] for k in before}
    assert delta["answers"] == len(hostile) and delta["correct"] == 0
    assert delta["timeouts"] >= 1  # the tower of exponents cannot be decided in time
    outcomes = ("wrong", "timeouts", "gold_unparsed", "answer_unparsed", "errors")
    assert sum(delta[k] for k in outcomes) == len(hostile)  # every answer is accounted for exactly once
    # The pool recovers after killing stuck workers.
    assert verifier.score_batch(["\\boxed{7}"], ["7"]) == [1.0]


def test_a_timeout_counts_and_does_not_block_other_answers():
    with MathVerifier(timeout_s=1.0, workers=1) as v:
        scores = v.score_batch(["\\boxed{9^{9^{9^{9^{9}}}}!}", "\\boxed{2}"], ["1", "2"])
        assert scores == [0.0, 1.0]
        assert v.stats["timeouts"] == 1 and v.stats["answers"] == 2


def test_factory_names():
    assert make_verifier("numeric_strict", timeout_s=5.0) == NumericVerifier(mode="strict", name="numeric_strict")
    assert make_verifier("numeric_flexible", timeout_s=5.0).score("The answer is $1,000.", "1000") == 1.0
    with make_verifier("math_verify", timeout_s=2.0, workers=1) as v:
        assert v.name == "math_verify"
    with pytest.raises(ValueError, match="unknown verifier"):
        make_verifier("exact", timeout_s=5.0)


def test_no_worker_outlives_close():
    v = MathVerifier(timeout_s=2.0, workers=1)
    assert v.score("\\boxed{1}", "1") == 1.0
    processes = [w.process for w in v._workers]
    v.close()
    assert processes and not any(p.is_alive() for p in processes)
