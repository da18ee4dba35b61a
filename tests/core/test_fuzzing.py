"""Property-based fuzzing (hypothesis) of ingestion and answer verification: whatever the input, every row is
accounted for, nothing raises, and a score is 0 or 1 within bounded time."""

import csv
import io
import json
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from learnalign_pipeline.core.data.loaders import SourceConfig, load_problems
from learnalign_pipeline.core.task.verify import NumericVerifier, extract_answer, last_boxed, parse_number
from learnalign_pipeline.core.task.verify_math import MathVerifier

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
# Records near the expected shape: the right keys with arbitrary values, missing keys, extra keys.
records = st.fixed_dictionaries(
    {},
    optional={
        "question": st.text(max_size=60) | json_values,
        "answer": st.text(max_size=40).map(lambda t: f"{t}\n#### {t}")
        | st.integers().map(lambda n: f"so\n#### {n:,}")
        | json_values,
        "problem": st.text(max_size=60),
        "solution": st.text(max_size=60).map(lambda t: f"\\boxed{{{t}}}") | st.text(max_size=60),
        "extra": json_values,
    },
)
jsonl_lines = st.lists(
    st.one_of(
        records.map(lambda r: json.dumps(r).encode()),
        records.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", errors="surrogatepass")),
        st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" ")),
        st.text(max_size=80).map(lambda t: t.replace("\n", " ").encode("utf-8", errors="surrogatepass")),
    ),
    max_size=25,
)


def _reconciles(result, lines: int) -> None:
    report = result.report
    assert report.rows_read == lines
    assert report.accepted + report.rejected + report.duplicates_collapsed == lines
    assert result.problems.height == report.accepted and result.rejected.height == report.rejected
    assert result.duplicates.height == report.duplicates_collapsed
    assert result.problems["problem_id"].is_unique().all()


@FUZZ
@given(lines=jsonl_lines, fmt=st.sampled_from(["gsm8k", "math"]))
@example(lines=[b"[" * 5000 + b"]" * 5000], fmt="gsm8k")  # nesting deeper than Python's recursion limit
@example(lines=[b'{"question": "\\ud800", "answer": "#### 1"}'], fmt="gsm8k")  # a lone surrogate escape
@example(lines=[b'{"problem": "\\udfff?", "answer": "2"}', b'{"problem": "x", "answer": 1e400}'], fmt="math")
def test_jsonl_rows_are_all_accounted_for(tmp_path_factory, lines, fmt):
    path = tmp_path_factory.mktemp("fuzz") / "rows.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))
    result = load_problems(SourceConfig(str(path), format=fmt, max_row_chars=20_000))
    _reconciles(result, len(lines))


csv_cells = st.text(max_size=40) | st.integers().map(str) | st.just("")


@FUZZ
@given(
    header=st.lists(st.sampled_from(["question", "answer", "q", "note", "extra"]), min_size=1, max_size=4, unique=True),
    rows=st.lists(st.lists(csv_cells, min_size=0, max_size=5), max_size=20),
)
def test_csv_rows_are_all_accounted_for(tmp_path_factory, header, rows):
    """Quoted CSV written by the csv module: arbitrary text cells, short, long and ragged rows, missing columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)  # ragged rows are rejected one by one (wrong_field_count), never the whole file
    path = tmp_path_factory.mktemp("fuzz") / "rows.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8", errors="surrogatepass")
    spec = SourceConfig(
        str(path), format="generic", prompt_column="question", answer_column="answer", numeric_gold=True
    )
    result = load_problems(spec)
    rows = [row for row in rows if row]  # an empty row is written as a blank line, which is no row
    _reconciles(result, len(rows))


@FUZZ
@given(
    text=st.text(max_size=300),
    gold=st.integers(-(10**12), 10**12).map(str)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
)
@example(text="9" * 100_000, gold="1")
@example(text="1," * 20_000, gold="1")
@example(text="#### " + "1." * 10_000, gold="1")
def test_numeric_verifier_scores_any_text_zero_or_one(text, gold):
    started = time.perf_counter()
    for mode in ("flexible", "strict"):
        assert NumericVerifier(mode).score(text, gold) in (0.0, 1.0)
        extract_answer(text, mode)
    parse_number(text)
    last_boxed(text)
    assert time.perf_counter() - started < 2.0


def test_numeric_verifier_matches_the_number_it_was_given():
    assert NumericVerifier("flexible").score("so the answer is 1,234.", "1234") == 1.0  # the property test can fail


@pytest.fixture(scope="module")
def math_verifier():
    with MathVerifier(timeout_s=3.0, workers=2) as verifier:
        yield verifier


latexish = st.text(alphabet=st.sampled_from(list("0123456789+-*/^_{}()[]\\$ .,=abcxyz")) | st.characters(), max_size=80)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    completions=st.lists(latexish.map(lambda t: t) | latexish.map(lambda t: f"\\boxed{{{t}}}"), min_size=1, max_size=4),
    gold=latexish | st.integers(-1000, 1000).map(str),
)
def test_math_verify_scores_any_text_zero_or_one_in_bounded_time(math_verifier, completions, gold):
    started = time.perf_counter()
    scores = math_verifier.score_batch(completions, [gold] * len(completions))
    assert all(s in (0.0, 1.0) for s in scores)
    # Each answer has a 3 s wall-clock limit on one of two workers; the worst case is every answer timing out.
    assert time.perf_counter() - started < 3.0 * len(completions) + 15
