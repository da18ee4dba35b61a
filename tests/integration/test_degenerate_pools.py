"""Selection on pools where learnability runs out, through `learnalign`'s run path on the instance it configures
(smoke preset, real files):

- on the smoke pool, no problem with p in {0, 1} is selected while a learnable one remains (they used to fill the
  budget, ranked above learnable problems with negative alignment), the metadata counts the learnable problems,
  and a budget larger than the learnable problems shrinks the subset and says so;
- a pool with no learnable problem (gold answers the policy never produces) fails `selected_subset` with the
  counts, so nothing is trained on it (it used to select the first N ids and train on reward 0).
"""

import copy
import json

import dagster as dg
import pytest

from learnalign_pipeline import cli
from learnalign_pipeline.core.data.arithmetic import generate_problems
from learnalign_pipeline.presets import SMOKE

pytestmark = pytest.mark.slow

SELECTION = [
    "benchmark_problems",
    "benchmark_rejected_problems",
    "raw_problems",
    "rejected_problems",
    "pretrained_policy",
    "warmup_policy",
    "rollouts",
    "success_rates",
    "projected_gradients",
    "learnability_scores",
    "alignment_scores",
    "alignment_matrix",
    "selected_subset",
]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("degenerate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNALIGN_HOME", str(home))
        mp.delenv("DAGSTER_HOME", raising=False)
        cli.prepare_environment()  # the instance `learnalign` writes: gpu pool limited to 1
        mp.setenv("DAGSTER_HOME", str(home / "dagster_home"))
        yield home


def smoke(**ops) -> dict:
    config = copy.deepcopy(SMOKE)
    for name, values in ops.items():
        config["ops"].setdefault(name, {"config": {}})["config"].update(values)
    return config


def metadata(asset: str) -> dict:
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def materializations(asset: str) -> int:
    with dg.DagsterInstance.get() as instance:
        return len(instance.fetch_materializations(dg.AssetKey(asset), limit=100).records)


@pytest.fixture(scope="module")
def selected(home):
    assert cli.run_job("learnalign_job", smoke(), assets=SELECTION)
    return home


def test_unlearnable_problems_never_fill_the_budget_and_a_larger_budget_says_so(selected):
    rates = {r["problem_id"]: r["success_rate"] for r in _table("success_rates")}
    learnable = sum(0 < p < 1 for p in rates.values())
    budget = SMOKE["ops"]["selected_subset"]["config"]["budget"]
    assert 4 < learnable < budget < len(rates)  # the smoke pool: fewer learnable problems than the budget
    subset = _table("selected_subset")
    assert len(subset) == learnable and all(0 < row["success_rate"] < 1 for row in subset)  # no V = 0 problem
    meta = metadata("selected_subset")
    assert meta["learnable_selected"] == meta["learnable_in_pool"] == learnable
    assert meta["budget_shortfall"].startswith(
        f"budget {budget} > {learnable} learnable problems (0 < p < 1) in the pool of {len(rates)}: selected {learnable}"
    )

    small = learnable - 3  # within the learnable problems: the top ones by score, none unlearnable
    assert cli.run_job("learnalign_job", smoke(selected_subset={"budget": small}), assets=["selected_subset"])
    meta = metadata("selected_subset")
    assert meta["selected"] == meta["learnable_selected"] == small and meta["budget_shortfall"] == ""
    scores = [row["score"] for row in _table("selected_subset")]
    assert scores == sorted(scores, reverse=True)


def test_a_corrupted_selected_subset_is_repaired_by_rematerializing_it(selected):
    """Issue 25: the asset reads its own previous version (for the diff), and that read refused the corrupted file,
    so following the consumer's advice ("rematerialize the asset that wrote it") failed the same way."""
    from pathlib import Path

    from learnalign_pipeline.core.storage.artifacts import read_artifact

    assert cli.run_job("learnalign_job", smoke(), assets=["selected_subset"])
    meta = metadata("selected_subset")
    path, digest = Path(meta["path"]), meta["sha256"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped on disk
    path.write_bytes(bytes(data))

    assert cli.run_job("learnalign_job", smoke(), assets=["selected_subset"])
    meta = metadata("selected_subset")
    assert (Path(meta["path"]), meta["sha256"]) == (path, digest)  # the same subset, its file rewritten
    assert read_artifact(path, digest).height == meta["selected"]


def test_a_pool_without_learnable_problems_fails_selection_with_the_counts(home, tmp_path, capsys):
    pool = tmp_path / "impossible.jsonl"  # the policy never answers -987654321
    with open(pool, "w") as f:
        for problem in generate_problems(40, seed=77):
            f.write(json.dumps({"question": problem.prompt, "answer": f"{problem.solution}\n#### -987654321"}) + "\n")
    before = materializations("selected_subset")
    config = smoke(raw_problems={"source": "file", "path": str(pool), "format": "gsm8k"})
    assert cli.run_job("learnalign_job", config, assets=SELECTION) is False
    assert materializations("selected_subset") == before  # nothing selected, so nothing can be trained on it
    assert metadata("raw_problems")["accepted"] == 40 and metadata("success_rates")["learnable_share"] == 0
    out = capsys.readouterr().out
    failure = next(line for line in out.splitlines() if line.startswith("✗ selected_subset failed: "))
    assert "no learnable problem in the pool: all 40 problems have p = 0 or 1 at the scoring policy" in failure
    assert "(40 never solved, 0 always solved)" in failure
    warmup = next(line for line in out.splitlines() if line.startswith("✓ warmup_policy"))
    assert "NO REWARD SIGNAL: all 16 groups (2 steps x 8 problems) had equal rewards (mean reward 0.00)" in warmup


def _table(asset: str) -> list[dict]:
    from pathlib import Path

    from learnalign_pipeline.core.storage.artifacts import read_artifact

    meta = metadata(asset)
    return read_artifact(Path(meta["path"]), meta["sha256"]).to_dicts()
