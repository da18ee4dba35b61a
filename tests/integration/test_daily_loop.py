"""The daily loop end to end, as a user runs it: `learnalign dataset pool <file>`, `learnalign dev` (webserver, daemon
and code server; the venv's bin is NOT on PATH), an edit of the pool file that removes and adds rows, and no
manual action. The daemon observes the file (a one-minute cron here), re-runs the re-selection path in one run,
and the new selected_subset equals a fresh run on the edited pool; no run fails. Then a real browser opens
selected_subset and trained_policy and finds their charts, and Ctrl-C stops `learnalign dev` without a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from loop_harness import (
    LoopHome,
    Service,
    bootstrap,
    far_from_now_window,
    materializations,
    observations,
    run_summary,
    settled_subset,
    tiny_run_config,
    wait_for,
    wait_for_http,
)
from testing_utils import chrome, free_port, open_ui_page, requires_browser

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PATH_ASSETS = {
    "raw_problems",
    "rollouts",
    "success_rates",
    "projected_gradients",
    "alignment_scores",
    "selected_subset",
}


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    home = LoopHome(tmp_path_factory.mktemp("daily_loop"))
    env = home.env(
        PATH="/usr/bin:/bin",  # `learnalign dev` as the README writes it: .venv/bin/learnalign, no activated venv
        PYTHONPATH=str(ROOT),
        LEARNALIGN_OBSERVE_CRON="* * * * *",
        LEARNALIGN_TRAINING_WINDOW=far_from_now_window(),
    )
    del env["LEARNALIGN_POOL_PATH"]  # the pool comes from `learnalign dataset`, the benchmark from the environment
    script = Path(sys.executable).with_name("learnalign")  # .venv/bin/learnalign, as the README runs it
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "learnalign_pipeline.cli"]
    out = subprocess.run([*cli, "dataset", "pool", str(home.pool)], env=env, capture_output=True, text=True, check=True)
    assert f"{home.pool_size} problems" in out.stdout, out.stdout
    bootstrap(home, tiny_run_config())
    port = free_port()
    dev = Service([*cli, "dev", "-p", str(port)], env, home.root / "dev.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/server_info", dev)
        with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
            yield home, instance, dev, f"http://127.0.0.1:{port}"
    finally:
        dev.interrupt()


def _fresh_subset(home: LoopHome, instance: dg.DagsterInstance) -> pl.DataFrame:
    """The subset a fresh run computes on the edited pool: a new instance and a new row cache, the same policy
    checkpoints (recorded there as they are), and the configs automation runs with (none)."""
    from learnalign_pipeline.core.storage.artifacts import read_artifact

    fresh = Path(tempfile.mkdtemp(prefix="fresh-", dir=home.root))
    saved = dict(os.environ)
    os.environ.update(home.env(LEARNALIGN_HOME=str(fresh)))
    try:
        from learnalign_pipeline.definitions import defs

        definitions = defs()
        with dg.instance_for_test(temp_dir=str(fresh)) as other:
            for key in ("pretrained_policy", "warmup_policy"):
                event = instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization
                other.report_runless_asset_event(
                    dg.AssetMaterialization(key, metadata={k: event.metadata[k] for k in ("path", "sha256")})
                )
            keys = definitions.resolve_job_def("reselection_job").asset_layer.executable_asset_keys
            keys = [k for k in keys if k.to_user_string() not in ("pretrained_policy", "warmup_policy")]
            job = definitions.resolve_implicit_global_asset_job_def()
            result = job.execute_in_process(
                instance=other,
                asset_selection=keys,
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            )
            assert result.success
            event = other.get_latest_materialization_event(dg.AssetKey("selected_subset")).asset_materialization
            return read_artifact(Path(event.metadata["path"].value), event.metadata["sha256"].value)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_an_edited_pool_is_reselected_by_itself_with_no_interim_subset(loop):
    from learnalign_pipeline.core.storage.artifacts import read_artifact

    home, instance, dev, _ = loop
    before_subsets = len(materializations(instance, "selected_subset"))
    edited = time.time()
    removed, added = home.edit_pool(remove=3, add=3)

    wait_for(lambda: observations(instance, "pool_dataset", edited), 150, "the daemon observing the edited pool", dev)
    record = wait_for(
        lambda: settled_subset(instance, edited), 480, "a selected_subset built from the edited pool", dev
    )
    took = time.time() - edited
    runs = run_summary(instance, edited)
    assert not [r for r in runs if r["status"] == "FAILURE"], runs
    subset_runs = [r for r in runs if "selected_subset" in r["assets"]]
    # One automated run re-selected, and it recomputed everything the subset reads: no interim subset.
    assert len(subset_runs) == 1, runs
    assert PATH_ASSETS <= set(subset_runs[0]["assets"]) and subset_runs[0]["loop"] == "reselection", subset_runs
    assert len(materializations(instance, "selected_subset")) == before_subsets + 1

    subset = read_artifact(
        Path(record.asset_materialization.metadata["path"].value), record.asset_materialization.metadata["sha256"].value
    )
    assert not set(subset["prompt"]) & set(removed)
    fresh = _fresh_subset(home, instance)
    columns = ["problem_id", "rank", "success_rate"]
    assert subset.select(columns).equals(fresh.select(columns)), (subset.select(columns), fresh.select(columns))
    assert (subset["score"] - fresh["score"]).abs().max() <= 1e-6
    metadata = record.asset_materialization.metadata
    # The diff against the version before the edit: the removed problems that were selected left as "removed from
    # the pool"; the counts reconcile.
    assert metadata["kept"].value + metadata["entered"].value == subset.height
    print(f"edit -> settled subset: {took:.0f} s; runs: {[(r['assets'], r['status']) for r in runs]}")


def _chart(driver, key: str) -> int:
    """Click "[Show Markdown]" in the metadata row of `key`; the natural width of the PNG the dialog shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    row = driver.find_element(By.XPATH, f"//tr[td[normalize-space()='{key}']]")
    driver.execute_script(
        "arguments[0].click()", row.find_element(By.XPATH, ".//a[normalize-space()='[Show Markdown]']")
    )
    dialog = WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[role=dialog]"))[0]
    image = WebDriverWait(driver, 30).until(
        lambda d: dialog.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png']")
    )[0]
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 0)
    width = driver.execute_script("return arguments[0].naturalWidth", image)
    dialog.find_element(By.XPATH, ".//button[normalize-space()='Close']").click()
    WebDriverWait(driver, 10).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[role=dialog]"))
    return width


@requires_browser
def test_the_subset_and_policy_pages_show_their_charts(loop, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, _, _, url = loop
    driver = chrome(str(tmp_path / "profile"))
    try:
        open_ui_page(
            driver, f"{url}/assets/selected_subset?view=events", "//td[normalize-space()='subset_vs_pool_by_family']"
        )
        for key in ("subset_vs_pool_by_p", "subset_vs_pool_by_family", "score_histogram"):
            assert _chart(driver, key) > 200, key
        text = driver.find_element(By.TAG_NAME, "body").text
        for label in ("cutoff_score", "by_family", "entered", "changes"):
            assert label in text, label
        driver.save_screenshot(str(tmp_path / "selected_subset.png"))
        # Numbers are plotted across materializations (two here: the bootstrap's and the re-selection's): the
        # Overview's Metadata "Plots" view draws them.
        open_ui_page(driver, f"{url}/assets/selected_subset", "//button[normalize-space()='Plots']")
        driver.find_element(By.XPATH, "//button[normalize-space()='Plots']").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.TAG_NAME, "canvas"))
        driver.save_screenshot(str(tmp_path / "selected_subset_plots.png"))

        open_ui_page(driver, f"{url}/assets/trained_policy?view=events", "//td[normalize-space()='training_curves']")
        assert _chart(driver, "training_curves") > 200
        text = driver.find_element(By.TAG_NAME, "body").text
        for label in ("last_reward_mean", "last_kl", "last_grad_norm", "last_frac_reward_zero_std", "training_log"):
            assert label in text, label
        driver.save_screenshot(str(tmp_path / "trained_policy.png"))
        if os.environ.get("LEARNALIGN_SCREENSHOT_DIR"):
            for name in ("selected_subset.png", "selected_subset_plots.png", "trained_policy.png"):
                Path(os.environ["LEARNALIGN_SCREENSHOT_DIR"], name).write_bytes((tmp_path / name).read_bytes())
    finally:
        driver.quit()


def test_ctrl_c_stops_learnalign_dev_without_a_traceback(loop):
    _, _, dev, _ = loop
    code = dev.interrupt()
    output = dev.output()
    assert code in (0, 130), (code, output[-2000:])
    assert "Traceback" not in output, output[-4000:]
