"""The observed data version of a dataset: file bytes, or a directory's sorted relative paths and bytes."""

import hashlib
import os

import fsspec
import pytest

from learnalign_pipeline.core.data.fingerprint import fingerprint


def test_a_file_is_the_sha256_of_its_bytes(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "#### 1"}\n')
    found = fingerprint(str(path))
    assert (
        found.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        and found.files == 1
        and found.bytes == path.stat().st_size
    )
    os.utime(path, (1, 1))  # a new timestamp alone is not a change
    assert fingerprint(str(path)) == found


def test_a_directory_changes_with_any_edit_rename_or_new_file(tmp_path):
    root = tmp_path / "saved"
    (root / "train").mkdir(parents=True)
    (root / "train" / "data-00000.arrow").write_bytes(b"a" * 100)
    (root / "dataset_dict.json").write_text('{"splits": ["train"]}')
    base = fingerprint(str(root))
    assert base.files == 2 and base.bytes == 100 + len('{"splits": ["train"]}')
    (root / "train" / "data-00000.arrow").write_bytes(b"a" * 99 + b"b")
    edited = fingerprint(str(root))
    (root / "train" / "data-00000.arrow").rename(root / "train" / "data-00001.arrow")
    renamed = fingerprint(str(root))
    (root / "train" / "extra.arrow").write_bytes(b"")
    added = fingerprint(str(root))
    assert len({base.sha256, edited.sha256, renamed.sha256, added.sha256}) == 4


def test_fsspec_urls_and_missing_paths(tmp_path):
    with fsspec.open("memory://datasets/pool.jsonl", "wb") as f:
        f.write(b"line\n")
    assert fingerprint("memory://datasets/pool.jsonl").sha256 == hashlib.sha256(b"line\n").hexdigest()
    assert fingerprint("memory://datasets").files == 1
    with pytest.raises(FileNotFoundError):
        fingerprint(str(tmp_path / "absent.jsonl"))
