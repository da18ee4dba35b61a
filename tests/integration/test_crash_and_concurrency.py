"""Real processes against a real on-disk Dagster instance: two runs materializing the same assets (GRPO training
included) at once both succeed and every artifact they recorded exists and verifies; a GRPO stage killed with
SIGKILL mid-training takes its training process down with it, resumes from its last sealed checkpoint and publishes
the same bytes as an uninterrupted run."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from learnalign_pipeline.core.storage.artifacts import read_artifact
from learnalign_pipeline.presets import SMOKE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "tests" / "helpers" / "materialize.py"
DATA = ["benchmark_problems", "benchmark_rejected_problems", "raw_problems", "rejected_problems"]
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".joblib", ".npy", ".npz"}


def _run_config(
    pretrain_steps: int, warmup_steps: int = 2, checkpoint_every: int = 0, pretrain_lr: float = 3e-3
) -> dict:
    config = copy.deepcopy(SMOKE)
    ops = {
        k: v
        for k, v in config["ops"].items()
        if k in ("benchmark_problems", "raw_problems", "pretrained_policy", "warmup_policy")
    }
    ops["pretrained_policy"]["config"].update(steps=pretrain_steps, learning_rate=pretrain_lr)
    ops["warmup_policy"]["config"].update(steps=warmup_steps, checkpoint_every=checkpoint_every)
    config["ops"] = ops
    return config


def _environment(home: Path) -> dict:
    (home / "dagster_home").mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "DAGSTER_HOME": str(home / "dagster_home"),
        "LEARNALIGN_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def _command(config: dict, assets: list[str]) -> list[str]:
    return [sys.executable, str(HELPER), json.dumps(config), *assets]


def _records(stdout: str) -> dict[str, dict]:
    return {r["asset"]: r for r in (json.loads(line) for line in stdout.splitlines() if line.startswith('{"asset"'))}


def _materialize(env: dict, config: dict, assets: list[str]) -> dict[str, dict]:
    done = subprocess.run(_command(config, assets), env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    return _records(done.stdout)


def _pickled_files(root: Path, skip: Path | None = None) -> list[Path]:
    """Files that are, or could be, pickles: by suffix, by pickle/torch-zip magic bytes, or a `.safetensors`
    that safetensors' own parser refuses (outside `skip`)."""
    found = []
    for path in (p for p in root.rglob("*") if p.is_file() and not (skip and p.is_relative_to(skip))):
        head = path.read_bytes()[:4]
        if path.suffix == ".safetensors":
            try:
                with safe_open(path, "pt"):
                    continue
            except Exception:
                found.append(path)
        elif (
            path.suffix in PICKLE_SUFFIXES
            or (head[:1] == b"\x80" and head[1:2] in {b"\x02", b"\x03", b"\x04", b"\x05"})
            or head == b"PK\x03\x04"
        ):
            found.append(path)
    return found


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home / "dagster_home"))


CHAIN = [*DATA, "pretrained_policy", "warmup_policy"]
# Pre-trained just enough that some rollouts earn reward: GRPO then has gradients and the weights move.
CONFIG = _run_config(pretrain_steps=60, pretrain_lr=8e-3, warmup_steps=9, checkpoint_every=3)


@pytest.fixture(scope="module")
def two_concurrent_runs(tmp_path_factory):
    """Two processes materializing the same chain (data, pre-training, warm-up GRPO with training states) at
    once against one instance and artifact root."""
    home = tmp_path_factory.mktemp("concurrent") / "home"
    env = _environment(home)
    _instance(home).dispose()  # create the storage once, before two processes open it
    runs = [
        subprocess.Popen(_command(CONFIG, CHAIN), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=420) for run in runs]
    for run, (_, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stderr[-3000:]
    return home, env, [_records(stdout) for stdout, _ in outputs]


def test_two_runs_materializing_the_same_assets_at_once_both_succeed(two_concurrent_runs):
    home, _, records = two_concurrent_runs
    run_ids = {r["pretrained_policy"]["run_id"] for r in records}
    assert len(run_ids) == 2
    for per_run in records:
        assert set(per_run) == set(CHAIN)
        for name, record in per_run.items():
            assert read_artifact(Path(record["path"]), record["sha256"]) is not None, name  # exists and verifies
    for (
        name
    ) in CHAIN:  # deterministic steps: both runs recorded the same content (one may have resumed the other's state)
        assert records[0][name]["sha256"] == records[1][name]["sha256"], name
    with _instance(home) as instance:
        for name in CHAIN:
            events = instance.fetch_materializations(dg.AssetKey(name), limit=10).records
            assert {e.event_log_entry.run_id for e in events} == run_ids, name
        assert {r.dagster_run.status for r in instance.get_run_records()} == {dg.DagsterRunStatus.SUCCESS}
    assert not [p for p in (home / "artifacts").rglob("*") if p.name.endswith(".tmp")]
    scratch = home / "artifacts" / ".staging"
    assert not scratch.exists() or not any(scratch.iterdir())
    assert not any((home / "artifacts" / ".resume").rglob("checkpoint-*"))  # finished stages remove their checkpoints


def test_sigkilled_training_resumes_from_its_last_state_and_ends_bitwise_equal(two_concurrent_runs):
    home, env, records = two_concurrent_runs
    uninterrupted = records[0]["warmup_policy"]
    start_weights = load_file(Path(records[0]["pretrained_policy"]["path"]) / "model.safetensors")
    trained_weights = load_file(Path(uninterrupted["path"]) / "model.safetensors")
    assert any(not torch.equal(start_weights[k], trained_weights[k]) for k in start_weights)  # training changed them
    states = home / "artifacts" / ".resume" / "warmup_policy"

    # The same stage again (its upstream is materialized); kill -9 once its first checkpoint is sealed.
    killed = subprocess.Popen(
        _command(CONFIG, ["warmup_policy"]), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 400
    while not any(states.glob("*/*/checkpoint-*/complete.json")):
        assert killed.poll() is None, "the run ended before it sealed a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    time.sleep(2)
    assert not _training_processes(home), "a training process outlived its killed step"
    saved = sorted(
        int(p.parent.name.removeprefix("checkpoint-")) for p in states.glob("*/*/checkpoint-*/complete.json")
    )
    assert saved and saved[-1] in (3, 6)
    # The published artifacts hold no pickle; the checkpoints' torch files hold only tensors and plain values,
    # which resume reads weights-only (the one whole-object pickle HF writes, training_args.bin, is removed).
    assert not _pickled_files(home / "artifacts", skip=states)
    assert not any(states.rglob("training_args.bin"))
    with _instance(home) as instance:
        assert (
            len(instance.fetch_materializations(dg.AssetKey("warmup_policy"), limit=10).records) == 2
        )  # the killed run recorded none

    resumed = _materialize(env, CONFIG, ["warmup_policy"])["warmup_policy"]
    assert resumed["resumed_from"].endswith(f"/checkpoint-{saved[-1]}")
    assert resumed["sha256"] == uninterrupted["sha256"] and resumed["path"] == uninterrupted["path"]  # bitwise equal
    assert read_artifact(Path(resumed["path"]), resumed["sha256"]) is not None
    assert not any(states.rglob("checkpoint-*"))
    assert not _pickled_files(home / "artifacts")


def _training_processes(home: Path) -> list[str]:
    """Command lines of live training processes launched for this test's instance."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "trl_launch" in command and str(home) in command:
            found.append(command)
    return found
