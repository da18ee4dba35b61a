"""Loading problem files: the real GSM8K files ingest completely, and a corrupted copy reconciles row for row."""

import json
import tracemalloc
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from learnalign_pipeline.core.data.loaders import REJECTED_SCHEMA, SourceConfig, load_problems
from learnalign_pipeline.core.data.schema import PROBLEM_SCHEMA, validate_problems
from learnalign_pipeline.core.storage.hashing import problem_id
from learnalign_pipeline.core.task.verify import last_boxed, parse_number

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "gsm8k"
if not GSM8K.exists():
    GSM8K = Path("/work/shared/datasets/gsm8k")


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_real_gsm8k_row_is_accepted_and_its_gold_parses(split):
    path = GSM8K / f"{split}.jsonl"
    lines = path.read_bytes().splitlines()
    result = load_problems(SourceConfig(str(path), format="gsm8k", split=split))
    assert result.report.rows_read == len(lines) == result.problems.height
    assert result.rejected.height == 0 and result.report.duplicates_collapsed == 0
    assert validate_problems(result.problems).schema == pl.Schema(PROBLEM_SCHEMA)
    assert all(parse_number(a) is not None for a in result.problems["answer"])
    # Gold is the text after "####" with commas removed, exactly as lm-eval compares it.
    for line, row in zip(lines[:50], result.problems.head(50).iter_rows(named=True)):
        record = json.loads(line)
        assert row["answer"] == record["answer"].split("####")[-1].strip().replace(",", "")
        assert row["problem_id"] == problem_id(record["question"], row["answer"])


def _good(i: int) -> bytes:
    return json.dumps(
        {"question": f"What is {i} plus one?", "answer": f"{i}+1={i + 1}\n#### {i + 1:,}", "id": i}
    ).encode()


def test_corrupted_gsm8k_copy_reconciles_row_for_row(tmp_path):
    lines = [
        _good(1),  # 1
        b'{"question": "cut off", "answer": ',  # 2 malformed JSON
        json.dumps({"question": "Empty?", "answer": "   "}).encode(),  # 3 empty answer
        b'{"question": "bad \xff\xfe bytes", "answer": "#### 3"}',  # 4 invalid UTF-8
        _good(1),  # 5 duplicate of line 1
        json.dumps({"question": "x" * 5000, "answer": "#### 1"}).encode(),  # 6 oversized
        json.dumps({"question": "Words?", "answer": "so #### seven"}).encode(),  # 7 non-numeric gold
        json.dumps({"question": 7, "answer": "#### 7"}).encode(),  # 8 wrong type
        json.dumps({"answer": "#### 7"}).encode(),  # 9 missing prompt
        b"[1, 2]",  # 10 not an object
        b"   ",  # 11 blank line
        _good(1234),  # 12 gold "1,235" -> "1235"
        _good(2),  # 13
        _good(2),  # 14 duplicate
    ]
    path = tmp_path / "corrupt.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = load_problems(SourceConfig(str(path), format="gsm8k", max_row_chars=2000))
    report = result.report
    assert report.rows_read == len(lines) == 14
    assert (report.accepted, report.rejected, report.duplicates_collapsed) == (3, 9, 2)
    assert report.rows_read == report.accepted + report.rejected + report.duplicates_collapsed
    assert result.rejected.schema == pl.Schema(REJECTED_SCHEMA)
    kinds = dict(zip(result.rejected["location"], result.rejected["kind"]))
    assert kinds == {
        "corrupt.jsonl:2": "malformed_json",
        "corrupt.jsonl:3": "empty_answer",
        "corrupt.jsonl:4": "invalid_utf8",
        "corrupt.jsonl:6": "oversized",
        "corrupt.jsonl:7": "unparseable_gold",
        "corrupt.jsonl:8": "wrong_type",
        "corrupt.jsonl:9": "missing_field",
        "corrupt.jsonl:10": "not_an_object",
        "corrupt.jsonl:11": "blank_line",
    }
    assert result.problems["row_index"].to_list() == [0, 11, 12]  # first occurrences kept, in read order
    assert result.problems["answer"].to_list() == ["2", "1235", "3"]
    assert result.duplicates["location"].to_list() == ["corrupt.jsonl:5", "corrupt.jsonl:14"]
    assert result.duplicates["kept_location"].to_list() == ["corrupt.jsonl:1", "corrupt.jsonl:13"]
    assert json.loads(result.problems["extra"][0]) == {"id": 1}  # unmapped fields are kept
    assert all(len(r) <= 500 for r in result.rejected["raw"])


def test_excluded_ids_count_as_duplicates(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\n".join([_good(1), _good(2)]) + b"\n")
    first = load_problems(SourceConfig(str(path)))
    again = load_problems(SourceConfig(str(path)), exclude_ids=frozenset(first.problems["problem_id"][:1]))
    assert again.report.as_dict() == {"rows_read": 2, "accepted": 1, "rejected": 0, "duplicates_collapsed": 1}
    assert again.duplicates["kept_location"].to_list() == ["excluded"]


def test_missing_or_unreadable_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_problems(SourceConfig(str(missing)))
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match=str(damaged)):
        load_problems(SourceConfig(str(damaged)))
    unknown = tmp_path / "problems.txt"
    unknown.write_text("x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_problems(SourceConfig(str(unknown)))


MATH_ROWS = [
    {"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "type": "Algebra", "level": "Level 1"},
    {
        "problem": "Nested?",
        "solution": "So \\boxed{1} then \\boxed{\\sqrt{\\frac{a}{b}}}",
        "type": "Algebra",
        "level": "Level 2",
    },
    {"problem": "Cut off?", "solution": "\\boxed{\\frac{1}{2}", "type": "Algebra", "level": "Level 3"},
    {"problem": "Given answer", "solution": "no box", "answer": "42", "type": "Number Theory", "level": "Level 1"},
]


def test_math_format_takes_the_last_complete_boxed_answer(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in MATH_ROWS) + "\n")
    result = load_problems(SourceConfig(str(path), format="math", split="test"))
    assert result.problems["answer"].to_list() == ["\\frac{1}{2}", "\\sqrt{\\frac{a}{b}}", "42"]
    assert result.problems["category"].to_list() == ["Algebra", "Algebra", "Number Theory"]
    assert json.loads(result.problems["extra"][0]) == {"level": "Level 1"}
    assert result.rejected["kind"].to_list() == ["unparseable_gold"]
    assert last_boxed("\\fbox{3} and \\boxed{{x}+1}") == "{x}+1"
    assert last_boxed("nothing") is None


def _gsm8k_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {"question": ["A?", "B?", "A?", ""], "answer": ["#### 1", "#### 2", "#### 1", "#### 4"], "k": [1, 2, 3, 4]}
    )


def _assert_round_trip(result, location_prefix: str):
    assert result.report.as_dict() == {"rows_read": 4, "accepted": 2, "rejected": 1, "duplicates_collapsed": 1}
    assert result.problems["prompt"].to_list() == ["A?", "B?"]
    assert result.rejected["location"].to_list() == [f"{location_prefix}:row 3"]
    assert result.rejected["kind"].to_list() == ["empty_prompt"]


def test_parquet_and_csv_round_trips(tmp_path):
    frame = _gsm8k_frame()
    frame.write_parquet(tmp_path / "p.parquet")
    frame.write_csv(tmp_path / "p.csv")
    parquet = load_problems(SourceConfig(str(tmp_path / "p.parquet")))
    _assert_round_trip(parquet, "p.parquet")
    assert json.loads(parquet.problems["extra"][0]) == {"k": 1}
    csv = load_problems(SourceConfig(str(tmp_path / "p.csv")))
    _assert_round_trip(csv, "p.csv")
    assert json.loads(csv.problems["extra"][0]) == {"k": "1"}  # CSV columns stay strings
    # fsspec URLs work the same as local paths.
    assert load_problems(SourceConfig(f"file://{tmp_path / 'p.parquet'}")).report == parquet.report


def test_save_to_disk_layout_and_generic_mapping(tmp_path):
    # The layout `datasets.save_to_disk` writes: Arrow IPC stream shards listed in state.json.
    table = pa.table({"q": ["A?", "B?", "A?", ""], "gold": [1, 2, 1, 4], "notes": ["x", "y", "z", "w"]})
    root = tmp_path / "ds"
    root.mkdir()
    shards = [table.slice(0, 2), table.slice(2, 2)]
    for i, shard in enumerate(shards):
        with (
            pa.OSFile(str(root / f"data-0000{i}-of-00002.arrow"), "wb") as sink,
            pa.ipc.new_stream(sink, shard.schema) as writer,
        ):
            writer.write_table(shard)
    (root / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": f"data-0000{i}-of-00002.arrow"} for i in range(2)]})
    )
    (root / "dataset_info.json").write_text("{}")
    spec = SourceConfig(str(root), format="generic", prompt_column="q", answer_column="gold", numeric_gold=True)
    result = load_problems(spec)
    assert result.report.as_dict() == {"rows_read": 4, "accepted": 2, "rejected": 1, "duplicates_collapsed": 1}
    assert result.problems["answer"].to_list() == ["1", "2"]
    assert result.rejected["location"].to_list() == ["data-00001-of-00002.arrow:row 3"]
    assert json.loads(result.problems["extra"][1]) == {"notes": "y"}
    pq.write_table(table, tmp_path / "t.parquet")  # the same table as Parquet gives the same problems
    assert (
        load_problems(
            SourceConfig(str(tmp_path / "t.parquet"), format="generic", prompt_column="q", answer_column="gold")
        )
        .problems["problem_id"]
        .to_list()
        == result.problems["problem_id"].to_list()
    )


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_huge_row_is_rejected_without_being_read_whole(tmp_path, suffix):
    """Memory is bounded by the row limit, not by the row: a 48 MiB single-line row used to be read whole (JSONL:
    130 MiB traced for a 64 MiB row; CSV: the whole file, 264 MiB) before it was rejected as oversized."""
    huge = "x" * (48 << 20)
    path = tmp_path / f"hostile.{suffix}"
    good = [("What is 2 plus 3?", "#### 5"), ("What is 4 plus 4?", "#### 8")]
    if suffix == "jsonl":
        lines = [json.dumps({"question": q, "answer": a}) for q, a in [good[0], (huge, "#### 1"), good[1]]]
    else:
        lines = ["question,answer"] + [f'"{q}","{a}"' for q, a in [good[0], (huge, "#### 1"), good[1]]]
    path.write_text("\n".join(lines) + "\n")
    del huge, lines
    tracemalloc.start()
    try:
        result = load_problems(SourceConfig(str(path), format="gsm8k", max_row_chars=20_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB"
    assert result.report.as_dict() == {"rows_read": 3, "accepted": 2, "rejected": 1, "duplicates_collapsed": 0}
    assert result.rejected["kind"].to_list() == ["oversized"]
    assert result.rejected["location"].to_list() == ["hostile.jsonl:2" if suffix == "jsonl" else "hostile.csv:row 1"]
    assert len(result.rejected["raw"][0]) <= 500  # a preview, not the row


def test_every_format_takes_a_family_column_and_gsm8k_rows_get_their_step_count(tmp_path):
    gsm8k = tmp_path / "gsm8k.jsonl"
    rows = [
        {"question": "Two steps?", "answer": "1+1=2\n2+2=4\n#### 4", "topic": "sums"},
        {"question": "Seven steps?", "answer": "a\nb\nc\nd\ne\nf\ng\n#### 7", "topic": "long"},
    ]
    gsm8k.write_text("".join(json.dumps(r) + "\n" for r in rows))
    default = load_problems(SourceConfig(str(gsm8k), format="gsm8k"))
    assert default.problems["category"].to_list() == ["steps_2", "steps_6+"]
    assert json.loads(default.problems["extra"][0]) == {"topic": "sums"}
    mapped = load_problems(SourceConfig(str(gsm8k), format="gsm8k", category_column="topic"))
    assert mapped.problems["category"].to_list() == ["sums", "long"]
    assert json.loads(mapped.problems["extra"][0]) == {}  # the column became the family, not an extra field

    math = tmp_path / "math.jsonl"
    math.write_text("\n".join(json.dumps(r) for r in MATH_ROWS) + "\n")
    by_level = load_problems(SourceConfig(str(math), format="math", category_column="level"))
    assert by_level.problems["category"].to_list() == ["Level 1", "Level 2", "Level 1"]


def test_real_gsm8k_families_are_step_counts():
    result = load_problems(SourceConfig(str(GSM8K / "test.jsonl"), format="gsm8k", split="test"))
    counts = dict(result.problems.group_by("category").len().iter_rows())
    assert set(counts) <= {"steps_1", "steps_2", "steps_3", "steps_4", "steps_5", "steps_6+"}
    assert counts["steps_2"] > 100 and counts["steps_6+"] > 10 and None not in counts


def _rewrite_once_reading_started(path: Path, data: bytes, done: list) -> None:
    """Rewrite `path` in place (as `cat new > path` does) once this process has an open handle on it that has
    read past its start: a writer racing the load."""
    import os
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") != str(path):
                    continue
                position = int(Path(f"/proc/self/fdinfo/{fd}").read_text().split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if position > 0:
                with open(path, "wb") as f:
                    f.write(data)
                done.append(position)
                return
        time.sleep(0.001)


@pytest.mark.skipif(not Path("/proc/self/fdinfo").exists(), reason="needs Linux /proc to see the read start")
def test_a_file_rewritten_while_it_is_read_is_never_loaded_mixed(tmp_path):
    """Issue 25: a pool rewritten in place during the load gave 77,093 old rows plus 226,418 new ones, no error."""
    import threading

    def pool(offset: int) -> bytes:
        rows = [{"question": f"What is {i} + {offset}?", "answer": f"#### {i + offset}"} for i in range(20_000)]
        return "".join(json.dumps(r) + "\n" for r in rows).encode()

    path = tmp_path / "pool.jsonl"
    old, new = pool(1), pool(2)
    path.write_bytes(old)
    done: list = []
    writer = threading.Thread(target=_rewrite_once_reading_started, args=(path, new, done))
    writer.start()
    result = load_problems(SourceConfig(path=str(path)))
    writer.join()
    assert done and done[0] < len(old)  # the rewrite landed while the first read was under way
    prompts = set(result.problems["prompt"].to_list())
    assert result.report.accepted == 20_000 and all(p.endswith("+ 2?") for p in prompts)  # the new file, whole
    assert result.problems.equals(load_problems(SourceConfig(path=str(path))).problems)
