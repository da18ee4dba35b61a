from decimal import Decimal

import pytest

from learnalign_pipeline.core.task.verify import NumericVerifier, extract_answer, parse_number


@pytest.mark.parametrize(
    "completion, gold, strict, flexible",
    [
        ("3+4=7. #### 7", "7", 1.0, 1.0),
        ("3+4=8. #### 8", "7", 0.0, 0.0),
        ("The answer is 1,234.", "1234", 0.0, 1.0),  # no "####": strict fails, flexible takes the last number
        ("#### $1,000", "1000", 0.0, 1.0),  # strict's pattern starts with a digit, so "$" defeats it (as in lm-eval)
        ("#### -5", "-5", 1.0, 1.0),
        ("#### 2.50", "2.5", 1.0, 1.0),
        ("#### 7.", "7", 1.0, 1.0),  # trailing period
        ("I think 7 but really 9", "7", 0.0, 0.0),
        ("", "7", 0.0, 0.0),
        ("#### 7 and then #### 8", "7", 1.0, 0.0),  # strict takes the first "####", flexible the last number
    ],
)
def test_numeric_verifier_accepts_and_rejects(completion, gold, strict, flexible):
    assert NumericVerifier(mode="strict").score(completion, gold) == strict
    assert NumericVerifier(mode="flexible").score(completion, gold) == flexible


@pytest.mark.parametrize(
    "hostile",
    [
        "__import__('os').system('touch /tmp/pwned') #### 8",
        "#### " + "9" * 10_000,  # too long to be an answer: refused, not converted
        "#### 7" + "," * 5_000 + "0",
        "1e999999999",
        "\\boxed{" * 500 + "7",
    ],
)
def test_hostile_text_is_only_matched_never_evaluated(hostile, tmp_path):
    assert NumericVerifier(mode="strict").score(hostile, "7") == 0.0
    assert NumericVerifier(mode="flexible").score(hostile, "7") in (0.0, 1.0)  # last number may legitimately be 7


def test_oversized_numbers_are_refused():
    assert extract_answer("#### " + "9" * 100, "strict") is None
    assert parse_number("9" * 65) is None


def test_gold_that_is_not_a_number_is_an_error():
    with pytest.raises(ValueError, match="not a number"):
        NumericVerifier().score("#### 7", "seven")


def test_parse_number_normalizes():
    assert parse_number("1,000") == parse_number("1000.") == Decimal(1000)
    assert parse_number("1.2.3") is None
