"""The data stage on a real Dagster instance configured like `learnalign`'s: file sources, the rejected-rows table,
and refused loads (too many rows rejected, or none accepted) that never replace the last good table."""

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml

from learnalign_pipeline.cli import DAGSTER_YAML
from learnalign_pipeline.core.storage.artifacts import read_artifact
from learnalign_pipeline.presets import GSM8K_GPU

ROOT = Path(__file__).resolve().parents[2]
DATA = ["benchmark_problems", "benchmark_rejected_problems", "raw_problems", "rejected_problems"]


def _good(i: int) -> str:
    return json.dumps({"question": f"What is {i} plus one?", "answer": f"#### {i + 1}"})


@pytest.fixture
def files(tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join(_good(i) for i in range(100, 110)) + "\n")
    pool = tmp_path / "pool.jsonl"
    lines = [_good(i) for i in range(20)] + [
        '{"question": "broken',
        json.dumps({"question": "q", "answer": ""}),
        _good(3),
        _good(100),
    ]
    pool.write_text("\n".join(lines) + "\n")
    return test, pool  # pool: 24 rows = 20 accepted + 2 rejected + 2 duplicates (one repeats the benchmark)


def _run(tmp_path, monkeypatch, run_config):
    monkeypatch.setenv("LEARNALIGN_HOME", str(tmp_path / "home"))
    from learnalign_pipeline.definitions import defs

    definitions = defs()
    job = definitions.resolve_job_def("learnalign_job")
    (tmp_path / "instance").mkdir(exist_ok=True)
    overrides = yaml.safe_load(DAGSTER_YAML)
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance"), overrides=overrides) as instance:
        result = job.execute_in_process(
            run_config=run_config,
            instance=instance,
            asset_selection=[dg.AssetKey(k) for k in DATA],
            raise_on_error=False,
        )
        events = {}
        for key in DATA:
            event = instance.get_latest_materialization_event(dg.AssetKey(key))
            events[key] = event.asset_materialization if event else None
        return result, events


def _config(test, pool, limit: float) -> dict:
    source = {"source": "file", "format": "gsm8k", "max_rejected_share": limit}
    return {
        "ops": {
            "benchmark_problems": {"config": {**source, "path": str(test)}},
            "raw_problems": {"config": {**source, "path": str(pool)}},
        }
    }


def _load(materialization):
    return read_artifact(Path(materialization.metadata["path"].value), materialization.metadata["sha256"].value)


def test_file_source_loads_within_the_limit(files, tmp_path, monkeypatch):
    test, pool = files
    result, events = _run(tmp_path, monkeypatch, _config(test, pool, limit=0.10))
    assert result.success
    meta = {k: v.value for k, v in events["raw_problems"].metadata.items()}
    assert (meta["rows_read"], meta["accepted"], meta["rejected"], meta["duplicates_collapsed"]) == (24, 20, 2, 2)
    assert meta["rows_read"] == meta["accepted"] + meta["rejected"] + meta["duplicates_collapsed"]
    rejected = _load(events["rejected_problems"])
    assert rejected["location"].to_list() == ["pool.jsonl:21", "pool.jsonl:22"]
    assert rejected["kind"].to_list() == ["malformed_json", "empty_answer"]
    pool_table, test_table = _load(events["raw_problems"]), _load(events["benchmark_problems"])
    assert pool_table.height == 20 and test_table.height == 10
    assert not set(pool_table["problem_id"]) & set(test_table["problem_id"])


def _failure(result) -> str:
    return next(e for e in result.all_events if e.is_step_failure).step_failure_data.user_failure_data.description


def test_a_refused_load_never_becomes_the_latest_table(files, tmp_path, monkeypatch):
    test, pool = files
    good, events = _run(tmp_path, monkeypatch, _config(test, pool, limit=0.10))
    assert good.success
    good_pool = events["raw_problems"]

    # a file of only bad rows, and an empty file: nothing accepted (the rejected share limit is not even reached)
    for name, text in {
        "bad.jsonl": '{"question": "broken\n{"question": "q", "answer": ""}\n',
        "empty.jsonl": "",
    }.items():
        bad = tmp_path / name
        bad.write_text(text)
        result, events = _run(tmp_path, monkeypatch, _config(test, bad, limit=1.0))
        assert events["raw_problems"].metadata["sha256"] == good_pool.metadata["sha256"], name  # still the good pool
        assert not result.success and _failure(result).startswith(f"{bad}: no problem accepted")

    result, events = _run(tmp_path, monkeypatch, _config(test, pool, limit=0.05))  # 2/24 = 8.3% > 5%
    assert not result.success
    assert _failure(result) == (
        f"{pool}: 2 of 24 rows rejected (8.33%), above max_rejected_share 5.00%; raw_problems keeps its last good "
        "version. See rejected_problems for each row's location and reason, fix the file or raise max_rejected_share"
    )
    assert _load(events["raw_problems"]).height == 20
    assert _load(events["rejected_problems"])["kind"].to_list() == ["malformed_json", "empty_answer"]  # published
    assert len(_materializations(tmp_path, "raw_problems")) == 1  # only the good load was ever materialized


def _materializations(tmp_path, key: str) -> list:
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        return instance.fetch_materializations(dg.AssetKey(key), limit=10).records


def test_a_missing_file_fails_naming_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "absent.jsonl"
    config = {"ops": {"benchmark_problems": {"config": {"source": "file", "path": str(missing)}}}}
    result, _ = _run(tmp_path, monkeypatch, config)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert str(missing) in failure.step_failure_data.error.cause.message


def test_gsm8k_gpu_preset_loads_the_real_files(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the preset's paths are relative to the project root
    ops = {k: v for k, v in GSM8K_GPU["ops"].items() if k in ("benchmark_problems", "raw_problems")}
    if not (ROOT / ops["raw_problems"]["config"]["path"]).exists():
        pytest.skip("GSM8K files are not next to this checkout")
    result, events = _run(tmp_path, monkeypatch, {"ops": ops})
    assert result.success
    assert events["raw_problems"].metadata["accepted"].value == 7473
    assert events["benchmark_problems"].metadata["accepted"].value == 1319
    assert events["rejected_problems"].metadata["num_rows"].value == 0
