"""Load a user's problem file into the normalized problem table, rejecting bad rows instead of crashing.

Sources: JSONL (read line by line, so one malformed line or one invalid UTF-8 byte rejects that line only),
Parquet, CSV, and a directory written by HF `datasets.save_to_disk` (its `.arrow` files are Arrow IPC streams,
read with pyarrow, so the `datasets` package is not needed). Paths may be local or any fsspec URL.

Memory is bounded by the row limit, not by the file: JSONL and CSV are read in blocks, and of a line longer than
the limit only its first `limit` bytes are kept (the rest is counted and dropped), so a hostile 300 MB single-line
row costs a few MB. CSV rows go through Python's `csv` module over those bounded lines (all values stay strings;
an empty cell is ""). Parquet and Arrow files are read a table (or record batch) at a time.

A load is atomic with respect to the file: the source's size and modification time are taken before and after the
read, and the digest of the bytes a JSONL or CSV read consumed is compared with the file's digest afterwards
(Parquet and Arrow, read out of order, compare the digest before and after), so a file rewritten while it was read
is detected, the load is retried, and after `LOAD_ATTEMPTS` changed reads it is refused; rows of two versions are
never mixed.

Every row read ends up in exactly one place: the accepted table, the rejected table (with its location and
reason), or the duplicate count, so `rows_read == accepted + rejected + duplicates_collapsed` always holds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import fsspec
import polars as pl

from ..settings import require, require_finite, setting
from ..storage.hashing import problem_id
from ..task.verify import last_boxed, parse_number
from .fingerprint import fingerprint
from .schema import PROBLEM_SCHEMA

Format = Literal["gsm8k", "math", "generic"]

REJECTED_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),  # the path the row was read from
    "split": pl.String(),
    "location": pl.String(),  # "<file>:<line>" for JSONL, "<file>:row <n>" otherwise
    "row_index": pl.Int64(),  # 0-based position in the source
    "kind": pl.String(),  # machine-readable reason, e.g. "malformed_json"
    "reason": pl.String(),  # human-readable detail
    "raw": pl.String(),  # the row as read, truncated to RAW_PREVIEW_CHARS
}
DUPLICATE_SCHEMA: dict[str, pl.DataType] = {
    "problem_id": pl.String(),
    "location": pl.String(),  # the collapsed occurrence
    "kept_location": pl.String(),  # the occurrence that was kept ("excluded" when it was in `exclude_ids`)
}
RAW_PREVIEW_CHARS = 500
BATCH_ROWS = 1024  # Parquet rows decoded at a time
LOAD_ATTEMPTS = 3  # reads of a source that keeps changing before the load is refused


@dataclass(frozen=True)
class SourceConfig:
    """Where a problem set lives and how its columns map onto the problem table."""

    path: str = setting("", "local path or fsspec URL (.jsonl, .parquet, .csv, save_to_disk dir)")
    format: Format = setting(
        "gsm8k", "column layout: gsm8k (question, answer '#### N'), math (problem, solution), generic"
    )
    split: str = setting("pool", "the split the rows belong to: pool or test")
    prompt_column: str | None = setting(None, "generic format: column holding the question (required)")
    answer_column: str | None = setting(None, "generic format: column holding the gold answer (required)")
    solution_column: str | None = setting(None, "generic format: optional worked solution column")
    category_column: str | None = setting(
        None,
        "column holding each problem's family (any format); without it gsm8k rows get steps_<n> (lines of the worked "
        "solution), math rows their subject/type, generic rows none",
    )
    numeric_gold: bool = setting(False, "generic format: reject gold answers that are not numbers")
    max_row_chars: int = setting(20_000, "rows longer than this are rejected as oversized; they are not problems")

    def __post_init__(self) -> None:
        require_finite(self)
        require(self.max_row_chars >= 1, "max_row_chars", f"must be >= 1 (got {self.max_row_chars})")
        if self.format == "generic":
            require(bool(self.prompt_column), "prompt_column", "the generic format needs the question's column")
            require(bool(self.answer_column), "answer_column", "the generic format needs the gold answer's column")


@dataclass(frozen=True)
class LoadReport:
    rows_read: int
    accepted: int
    rejected: int
    duplicates_collapsed: int

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("rows_read", "accepted", "rejected", "duplicates_collapsed")}


@dataclass(frozen=True)
class LoadResult:
    problems: pl.DataFrame  # PROBLEM_SCHEMA, unique problem ids, in read order
    rejected: pl.DataFrame  # REJECTED_SCHEMA
    duplicates: pl.DataFrame  # DUPLICATE_SCHEMA
    report: LoadReport


class SourceChangedError(OSError):
    """The source file changed while it was read, on every attempt."""


class _Consumed:
    """The digest of the bytes a sequential reader consumed, in order."""

    def __init__(self):
        self.sha256, self.sequential = hashlib.sha256(), False


class _HashingStream:
    """A binary stream whose bytes, as they are read, go into a `_Consumed` digest."""

    def __init__(self, stream, consumed: _Consumed):
        self.stream, self.consumed = stream, consumed
        consumed.sequential = True

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.consumed.sha256.update(data)
        return data


class RowError(ValueError):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class _RawRow:
    location: str
    row_index: int
    record: dict | None  # None when the row could not be decoded
    raw: str
    error: RowError | None = None


# ---- reading ---------------------------------------------------------------------------------------------


def _fs(path: str):
    fs, fs_path = fsspec.core.url_to_fs(path)
    if not fs.exists(fs_path):
        raise FileNotFoundError(f"problem source not found: {path}")
    return fs, fs_path


def _open(fs, fs_path: str, original: str):
    try:
        return fs.open(fs_path, "rb")
    except OSError as error:
        raise OSError(f"cannot read problem source {original}: {error}") from error


@dataclass(frozen=True)
class _Line:
    data: bytes  # the line without its newline; only its first `limit` bytes when `length > limit`
    length: int  # the line's full length in bytes


def _bounded_lines(stream, limit: int, block: int = 1 << 16) -> Iterator[_Line]:
    """The lines of a binary stream, keeping at most `limit` bytes of each: memory never exceeds a block plus
    `limit`, whatever the file holds."""
    kept, length = bytearray(), 0
    while chunk := stream.read(block):
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            piece = chunk[start:end]
            kept += piece[: max(0, limit - len(kept))]
            yield _Line(bytes(kept), length + len(piece))
            kept, length, start = bytearray(), 0, end + 1
        piece = chunk[start:]
        kept += piece[: max(0, limit - len(kept))]
        length += len(piece)
    if length:
        yield _Line(bytes(kept), length)


def _read_jsonl(fs, fs_path: str, spec: SourceConfig, consumed: _Consumed) -> Iterator[_RawRow]:
    name = posixpath.basename(fs_path)
    with _open(fs, fs_path, spec.path) as raw:
        handle = _HashingStream(raw, consumed)
        for index, bounded in enumerate(_bounded_lines(handle, spec.max_row_chars)):
            line = bounded.data
            location = f"{name}:{index + 1}"
            preview = line[: RAW_PREVIEW_CHARS * 4].decode("utf-8", errors="replace")[:RAW_PREVIEW_CHARS]
            if bounded.length > spec.max_row_chars:
                yield _RawRow(
                    location,
                    index,
                    None,
                    preview,
                    RowError("oversized", f"row has {bounded.length} bytes > {spec.max_row_chars}"),
                )
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                yield _RawRow(
                    location, index, None, preview, RowError("invalid_utf8", f"invalid UTF-8 at byte {error.start}")
                )
                continue
            if not text.strip():
                yield _RawRow(location, index, None, preview, RowError("blank_line", "blank line"))
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                yield _RawRow(
                    location,
                    index,
                    None,
                    preview,
                    RowError("malformed_json", f"malformed JSON: {error.msg} at column {error.colno}"),
                )
                continue
            except RecursionError:  # found by fuzzing: "[[[[..." deeper than Python's recursion limit
                yield _RawRow(
                    location, index, None, preview, RowError("malformed_json", "malformed JSON: nested too deeply")
                )
                continue
            if _has_lone_surrogate(record):  # found by fuzzing: "\ud800" escapes decode to text UTF-8 cannot hold
                yield _RawRow(
                    location, index, None, preview, RowError("invalid_utf8", "a \\u escape encodes a lone surrogate")
                )
                continue
            if not isinstance(record, dict):
                yield _RawRow(
                    location,
                    index,
                    None,
                    preview,
                    RowError("not_an_object", f"a JSON {type(record).__name__}, not an object"),
                )
                continue
            yield _RawRow(location, index, record, preview)


def _has_lone_surrogate(value) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _records_as_rows(records: list[dict], name: str, start: int, spec: SourceConfig) -> Iterator[_RawRow]:
    for offset, record in enumerate(records):
        index = start + offset
        raw = json.dumps(record, ensure_ascii=False, default=str)
        error = (
            RowError("oversized", f"row has {len(raw)} chars > {spec.max_row_chars}")
            if len(raw) > spec.max_row_chars
            else None
        )
        yield _RawRow(f"{name}:row {index}", index, None if error else record, raw[:RAW_PREVIEW_CHARS], error)


def _read_parquet(fs, fs_path: str, spec: SourceConfig, consumed: _Consumed) -> Iterator[_RawRow]:
    import pyarrow.parquet as pq

    name, start = posixpath.basename(fs_path), 0
    with _open(fs, fs_path, spec.path) as handle:
        try:
            batches = pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS)
            for batch in batches:  # a record batch at a time, not the whole table
                yield from _records_as_rows(batch.to_pylist(), name, start, spec)
                start += batch.num_rows
        except (OSError, ValueError, TypeError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"cannot read Parquet file {spec.path}: {error}") from error


def _read_csv(fs, fs_path: str, spec: SourceConfig, consumed: _Consumed) -> Iterator[_RawRow]:
    """Rows of a CSV file with a header, all values strings (type inference would turn "007" into 7 and change
    the content hash). A physical line longer than 4 x max_row_chars bytes (so certainly longer than max_row_chars
    characters) is never held whole: the row it belongs to is rejected as oversized."""
    name = posixpath.basename(fs_path)
    limit = 4 * spec.max_row_chars  # UTF-8: at most 4 bytes per character
    with _open(fs, fs_path, spec.path) as raw:
        handle = _HashingStream(raw, consumed)
        bad_lines: dict[int, RowError] = {}  # physical line number -> why the row holding it is rejected

        def text_lines() -> Iterator[str]:
            for number, line in enumerate(_bounded_lines(handle, limit), start=1):
                if line.length > limit:
                    bad_lines[number] = RowError("oversized", f"a line of {line.length} bytes > {limit}")
                    yield "\n"
                    continue
                try:
                    yield line.data.decode("utf-8") + "\n"
                except UnicodeDecodeError as error:
                    bad_lines[number] = RowError(
                        "invalid_utf8", f"invalid UTF-8 at byte {error.start} of line {number}"
                    )
                    yield "\n"

        previous_limit = csv.field_size_limit(limit)
        try:
            reader = csv.reader(text_lines())
            try:
                header = next(reader)
            except StopIteration:
                return  # an empty file: no rows
            except csv.Error as error:
                raise ValueError(f"cannot parse the CSV header of {spec.path}: {error}") from error
            if 1 in bad_lines or not header:
                raise ValueError(f"cannot parse the CSV header of {spec.path}: {bad_lines.get(1, 'empty first line')}")
            header[0] = header[0].removeprefix("\ufeff")  # a UTF-8 byte-order mark
            index, first = 0, reader.line_num + 1
            while True:
                error = None
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as failure:  # a field longer than the limit, or malformed quoting
                    row, error = None, RowError("malformed_csv", f"unreadable CSV: {failure}")
                    if "field larger than field limit" in str(failure):
                        error = RowError("oversized", f"a field longer than {limit} characters")
                lines = range(first, reader.line_num + 1)
                first = reader.line_num + 1
                error = error or next((bad_lines[n] for n in lines if n in bad_lines), None)
                if error is None and row == []:
                    continue  # a blank line is no row
                location = f"{name}:row {index}"
                if error is None and len(row) != len(header):
                    error = RowError("wrong_field_count", f"{len(row)} fields, the header has {len(header)}")
                if error is not None:
                    preview = "" if row is None else ",".join(row)[:RAW_PREVIEW_CHARS]
                    yield _RawRow(location, index, None, preview, error)
                else:
                    yield from _records_as_rows([dict(zip(header, row, strict=True))], name, index, spec)
                index += 1
        finally:
            csv.field_size_limit(previous_limit)


def _read_saved_dataset(fs, fs_path: str, spec: SourceConfig, consumed: _Consumed) -> Iterator[_RawRow]:
    import pyarrow as pa

    state_path = posixpath.join(fs_path, "state.json")
    if not fs.exists(state_path):
        if fs.exists(posixpath.join(fs_path, "dataset_dict.json")):
            splits = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(fs_path, detail=False) if fs.isdir(p))
            raise ValueError(f"{spec.path} is a DatasetDict; point the path at one split directory: {splits}")
        raise ValueError(f"{spec.path} is a directory without state.json; not a `save_to_disk` dataset")
    with _open(fs, state_path, spec.path) as handle:
        files = [entry["filename"] for entry in json.load(handle)["_data_files"]]
    start = 0
    for filename in files:
        with _open(fs, posixpath.join(fs_path, filename), spec.path) as handle:
            try:
                for batch in pa.ipc.open_stream(handle):  # a record batch at a time
                    yield from _records_as_rows(batch.to_pylist(), filename, start, spec)
                    start += batch.num_rows
            except pa.ArrowException as error:
                raise ValueError(f"cannot read Arrow shard {filename} of {spec.path}: {error}") from error


def read_rows(spec: SourceConfig, consumed: _Consumed | None = None) -> Iterator[_RawRow]:
    """The rows of `spec`'s source, in order; a JSONL or CSV read puts the bytes it consumed into `consumed`."""
    consumed = consumed or _Consumed()
    fs, fs_path = _fs(spec.path)
    if fs.isdir(fs_path):
        return _read_saved_dataset(fs, fs_path, spec, consumed)
    suffix = fs_path.lower().rsplit(".", 1)[-1]
    readers = {"jsonl": _read_jsonl, "json": _read_jsonl, "parquet": _read_parquet, "csv": _read_csv}
    if suffix not in readers:
        raise ValueError(
            f"cannot tell the format of {spec.path}: expected .jsonl, .parquet, .csv or a save_to_disk directory"
        )
    return readers[suffix](fs, fs_path, spec, consumed)


def _stat(path: str) -> tuple:
    """(file, size, modification time or version tag) of every file of a source, sorted."""
    fs, root = fsspec.core.url_to_fs(path)
    files = sorted(fs.find(root)) if fs.isdir(root) else [root]
    infos = [(f, fs.info(f)) for f in files]
    return tuple((f, i.get("size"), i.get("mtime") or i.get("LastModified") or i.get("ETag")) for f, i in infos)


def _change(spec: SourceConfig, before: tuple, before_sha256: str | None, consumed: _Consumed) -> str | None:
    """How the source changed while it was read, or None when the rows read are exactly its current content."""
    after = _stat(spec.path)
    if after != before:
        return "its size or modification time changed"
    current = fingerprint(spec.path).sha256
    if consumed.sequential and consumed.sha256.hexdigest() != current:
        return "the bytes read differ from its content after the read"
    if before_sha256 is not None and before_sha256 != current:
        return "its digest changed"
    return None


# ---- normalizing -----------------------------------------------------------------------------------------


def _field(record: dict, column: str, *, allow_number: bool = False) -> str:
    if column not in record or record[column] is None:
        raise RowError("missing_field", f"missing field {column!r}")
    value = record[column]
    if allow_number and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RowError("wrong_type", f"field {column!r} is {type(value).__name__}, expected string")
    return value


def _text(record: dict, column: str, kind: str, **kwargs) -> str:
    value = _field(record, column, **kwargs).strip()
    if not value:
        raise RowError(kind, f"field {column!r} is empty")
    return value


def gsm8k_gold(answer: str) -> str:
    """The number after the last `####`, commas removed; RowError when there is none."""
    if "####" not in answer:
        raise RowError("unparseable_gold", "answer has no '#### N' final line")
    gold = answer.split("####")[-1].strip().replace(",", "")
    if parse_number(gold) is None:
        raise RowError("unparseable_gold", f"gold {gold[:50]!r} is not a number")
    return gold


GSM8K_MAX_STEPS = 6  # GSM8K train: 2-5 lines for 90% of solutions; 6 or more share one family


def gsm8k_family(solution: str) -> str:
    """A GSM8K problem's family: the number of reasoning steps of its worked solution (one calculation per line
    before '####'), e.g. "steps_3"; GSM8K itself has no family column."""
    steps = sum(1 for line in solution.split("####")[0].splitlines() if line.strip())
    return f"steps_{steps}" if steps < GSM8K_MAX_STEPS else f"steps_{GSM8K_MAX_STEPS}+"


def _category(record: dict, column: str | None) -> str | None:
    value = record.get(column) if column else None
    return None if value is None else str(value)


def _normalize(record: dict, spec: SourceConfig) -> tuple[str, str, str | None, str | None, set[str]]:
    """(prompt, gold, solution, category, columns used) of one record; RowError when it is not a problem."""
    chosen = _category(record, spec.category_column)
    if spec.format == "gsm8k":
        prompt = _text(record, "question", "empty_prompt")
        solution = _text(record, "answer", "empty_answer")
        category = chosen if spec.category_column else gsm8k_family(solution)
        return prompt, gsm8k_gold(solution), solution, category, {"question", "answer", spec.category_column} - {None}
    if spec.format == "math":
        prompt = _text(record, "problem", "empty_prompt")
        solution = record.get("solution") if isinstance(record.get("solution"), str) else None
        if record.get("answer") not in (None, ""):
            gold = _text(record, "answer", "empty_answer", allow_number=True)
        elif solution is None or not solution.strip():
            raise RowError("empty_answer", "neither an 'answer' nor a 'solution' field")
        else:
            gold = (last_boxed(solution) or "").strip()
            if not gold:
                raise RowError("unparseable_gold", "solution has no complete \\boxed{} answer")
        if gold.count("{") != gold.count("}"):
            raise RowError("unparseable_gold", f"gold {gold[:50]!r} has unbalanced braces")
        if spec.category_column:
            return prompt, gold, solution, chosen, {"problem", "answer", "solution", spec.category_column}
        category = next((record[c] for c in ("subject", "type") if isinstance(record.get(c), str)), None)
        used = {"problem", "answer", "solution"} | (
            {"subject"} if "subject" in record else {"type"} if category else set()
        )
        return prompt, gold, solution, category, used
    if not spec.prompt_column or not spec.answer_column:
        raise ValueError("generic format needs prompt_column and answer_column")
    prompt = _text(record, spec.prompt_column, "empty_prompt")
    gold = _text(record, spec.answer_column, "empty_answer", allow_number=True)
    if spec.numeric_gold:
        gold = gold.replace(",", "")
        if parse_number(gold) is None:
            raise RowError("unparseable_gold", f"gold {gold[:50]!r} is not a number")
    solution = record.get(spec.solution_column) if spec.solution_column else None
    used = {spec.prompt_column, spec.answer_column, spec.solution_column, spec.category_column} - {None}
    return (
        prompt,
        gold,
        solution if isinstance(solution, str) else None,
        chosen,
        used,
    )


def load_problems(spec: SourceConfig, exclude_ids: frozenset[str] = frozenset()) -> LoadResult:
    """Read and normalize `spec`; rows whose id is in `exclude_ids` (e.g. the benchmark) count as duplicates. A
    source that changes while it is read is read again, and refused (SourceChangedError) after LOAD_ATTEMPTS."""
    changes = []
    for _ in range(LOAD_ATTEMPTS):
        before = _stat(spec.path)
        sequential = spec.path.lower().rsplit(".", 1)[-1] in ("jsonl", "json", "csv") and len(before) == 1
        before_sha256 = None if sequential else fingerprint(spec.path).sha256  # read out of order: digest it first
        consumed = _Consumed()
        result = _load_once(spec, exclude_ids, consumed)
        change = _change(spec, before, before_sha256, consumed)
        if change is None:
            return result
        changes.append(change)
    raise SourceChangedError(
        f"problem source {spec.path} changed while it was read, {LOAD_ATTEMPTS} times ({'; '.join(changes)}): "
        "nothing was loaded. Write a new version to another name and rename it over the old one (an atomic "
        "replace), or wait until the writer is done"
    )


def _load_once(spec: SourceConfig, exclude_ids: frozenset[str], consumed: _Consumed) -> LoadResult:
    accepted, rejected, duplicates = [], [], []
    kept: dict[str, str] = {pid: "excluded" for pid in exclude_ids}
    rows_read = 0
    for row in read_rows(spec, consumed):
        rows_read += 1
        try:
            if row.error is not None:
                raise row.error
            prompt, gold, solution, category, used = _normalize(row.record, spec)
        except RowError as error:
            rejected.append((spec.path, spec.split, row.location, row.row_index, error.kind, str(error), row.raw))
            continue
        pid = problem_id(prompt, gold)
        if pid in kept:
            duplicates.append((pid, row.location, kept[pid]))
            continue
        kept[pid] = row.location
        extra = {k: v for k, v in row.record.items() if k not in used}
        accepted.append(
            (
                pid,
                spec.path,
                spec.split,
                row.row_index,
                prompt,
                gold,
                solution,
                category,
                json.dumps(extra, ensure_ascii=False, sort_keys=True, default=str),
            )
        )
    report = LoadReport(rows_read, len(accepted), len(rejected), len(duplicates))
    assert report.rows_read == report.accepted + report.rejected + report.duplicates_collapsed
    return LoadResult(
        pl.DataFrame(accepted, schema=PROBLEM_SCHEMA, orient="row"),
        pl.DataFrame(rejected, schema=REJECTED_SCHEMA, orient="row"),
        pl.DataFrame(duplicates, schema=DUPLICATE_SCHEMA, orient="row"),
        report,
    )
