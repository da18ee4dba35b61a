"""The dataset settings file (`LEARNALIGN_HOME/datasets.json`): written per split, read back as the loaders'
settings objects, refused with a clear message when damaged; its observed version moves with the mapping."""

import pytest

from learnalign_pipeline.core.data.datasets import observed_version, read_datasets, write_dataset
from learnalign_pipeline.core.data.loaders import SourceConfig


def test_entries_round_trip_per_split_and_can_be_cleared(tmp_path):
    path = tmp_path / "datasets.json"
    assert read_datasets(path) == {}
    write_dataset(path, "pool", SourceConfig("/data/train.jsonl", format="math", category_column="level"))
    write_dataset(
        path, "benchmark", SourceConfig("/data/test.csv", format="generic", prompt_column="q", answer_column="a")
    )
    read = read_datasets(path)
    assert read["pool"] == SourceConfig("/data/train.jsonl", format="math", split="pool", category_column="level")
    assert read["test"].prompt_column == "q" and read["test"].split == "test"
    write_dataset(path, "pool", None)
    assert set(read_datasets(path)) == {"test"}
    with pytest.raises(ValueError, match="expected one of"):
        write_dataset(path, "train", SourceConfig("/x"))


def test_a_damaged_file_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "datasets.json"
    path.write_text('{"pool": {"path": "/x", "colour": "red"}}')
    with pytest.raises(ValueError, match="rerun `learnalign dataset`"):
        read_datasets(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid dataset settings file"):
        read_datasets(path)


def test_the_observed_version_changes_with_the_mapping_and_the_content():
    base = SourceConfig("/data/a.jsonl", format="gsm8k")
    version = observed_version(base, "c0ffee")
    assert observed_version(SourceConfig("/data/a.jsonl", format="gsm8k", split="test"), "c0ffee") == version
    assert observed_version(SourceConfig("/data/a.jsonl", format="gsm8k", category_column="topic"), "c0ffee") != version
    assert observed_version(SourceConfig("/data/b.jsonl", format="gsm8k"), "c0ffee") != version
    assert observed_version(base, "beef") != version
