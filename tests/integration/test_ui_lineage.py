"""End to end in a real browser: the Dagster UI served for this code location shows every stage and edge of the
asset graph, and a materialization's metadata renders.

Starts `dagster-webserver` on a free loopback port against a fresh DAGSTER_HOME where the data stage has been
observed and materialized, then drives Debian's headless Chromium through chromedriver (selenium). Skips only
when Chromium is absent and LEARNALIGN_REQUIRE_BROWSER is unset (`.ci/run` installs it and sets the variable).
Set LEARNALIGN_SCREENSHOT=<path.png> to keep the lineage screenshot (docs/lineage.png was made that way).
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest
from testing_utils import CHROMEDRIVER, CHROMIUM, browser_available, chrome, dagster_ui, open_ui_page

ROOT = Path(__file__).resolve().parents[2]
DATA = ["benchmark_problems", "benchmark_rejected_problems", "raw_problems", "rejected_problems"]

if not browser_available() and not os.environ.get("LEARNALIGN_REQUIRE_BROWSER"):
    pytest.skip(
        f"no Chromium at {CHROMIUM} / {CHROMEDRIVER} (Debian packages chromium, chromium-driver)",
        allow_module_level=True,
    )
if not os.environ.get("LEARNALIGN_REQUIRE_BROWSER"):
    pytest.importorskip("selenium", reason="selenium (the test extra) is not installed")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.browser]

EDGES_QUERY = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A materialized data stage on an on-disk instance, served by dagster-webserver."""
    home = tmp_path_factory.mktemp("ui")
    dagster_home = home / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "LEARNALIGN_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "PYTHONPATH": str(ROOT)}
    with pytest.MonkeyPatch.context() as mp:
        for key in ("LEARNALIGN_HOME", "DAGSTER_HOME"):
            mp.setenv(key, env[key])
        for key in ("LEARNALIGN_POOL_PATH", "LEARNALIGN_BENCHMARK_PATH"):
            mp.delenv(key, raising=False)
            env.pop(key, None)
        from learnalign_pipeline.definitions import defs
        from learnalign_pipeline.defs.data.sources import benchmark_dataset, pool_dataset
        from learnalign_pipeline.lib.resources import DatasetFiles

        definitions = defs()
        with dg.DagsterInstance.get() as instance:
            sources = [pool_dataset, benchmark_dataset]
            assert dg.materialize(
                sources, selection=sources, instance=instance, resources={"datasets": DatasetFiles()}
            ).success
            job = definitions.resolve_job_def("learnalign_job")
            assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(k) for k in DATA]).success
            raw = instance.get_latest_materialization_event(dg.AssetKey("raw_problems")).asset_materialization
        graph = definitions.resolve_asset_graph()
        # The pipeline's lineage is learnalign_job's graph; the comparison and curriculum groups hang off it and are
        # checked through the served edges (the global view of all 30 assets no longer fits one screen).
        job_keys = definitions.resolve_job_def("learnalign_job").asset_layer.asset_graph.get_all_asset_keys()
        keys = {k.to_user_string() for k in job_keys}
        edges = {
            (p.to_user_string(), k.to_user_string())
            for k in graph.get_all_asset_keys()
            for p in graph.get(k).parent_keys
        }

    with dagster_ui(env, workdir=home) as url:
        yield url, keys, edges, raw


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="learnalign-chromium-")
    driver = chrome(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _matches(shown: str, key: str) -> bool:
    """The graph middle-truncates long names ("benchmar…_problems")."""
    if "…" not in shown:
        return shown == key
    head, tail = shown.split("…", 1)
    return key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail)


def test_the_asset_graph_shows_every_stage_and_edge(server, browser, tmp_path):
    url, keys, edges, _ = server
    open_ui_page(
        browser,
        f"{url}/locations/learnalign_pipeline/jobs/learnalign_job",
        "//*[contains(@class, 'GroupNode') or contains(@class, 'AssetNode_assetName')]",
    )
    ActionChains(browser).key_down(Keys.ALT).send_keys("e").key_up(Keys.ALT).perform()  # the UI's "Expand all groups"
    WebDriverWait(browser, 30).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "[class*='AssetNode_assetName']")) >= len(keys)
    )
    time.sleep(1)  # let the layout settle before the screenshot
    assert not browser.find_elements(By.XPATH, "//button[normalize-space()='Skip']")
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "[class*='AssetNode_assetName']")]
    assert len(shown) == len(keys), shown
    for key in keys:
        assert any(_matches(s, key) for s in shown), (key, shown)
    exact = {s for s in shown if "…" not in s}
    assert {"raw_problems", "selected_subset", "pool_dataset", "trained_policy", "benchmark_results"} <= exact

    # The edges the page's own GraphQL endpoint serves to the graph view.
    served = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/graphql', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({query: arguments[0]})})"
        ".then(r => r.json()).then(done).catch(e => done({error: String(e)}));",
        EDGES_QUERY,
    )
    nodes = served["data"]["assetNodes"]
    served_edges = {("/".join(d["path"]), "/".join(n["assetKey"]["path"])) for n in nodes for d in n["dependencyKeys"]}
    assert served_edges == edges
    assert ("pool_dataset", "raw_problems") in served_edges and ("alignment_scores", "selected_subset") in served_edges

    path = tmp_path / "lineage.png"
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000
    if os.environ.get("LEARNALIGN_SCREENSHOT"):
        shutil.copyfile(path, os.environ["LEARNALIGN_SCREENSHOT"])


def test_a_materialization_metadata_renders(server, browser):
    url, _, _, raw = server
    open_ui_page(browser, f"{url}/assets/raw_problems?view=events", "//*[normalize-space()='Metadata']")
    WebDriverWait(browser, 30).until(lambda d: raw.metadata["sha256"].value in d.find_element(By.TAG_NAME, "body").text)
    text = browser.find_element(By.TAG_NAME, "body").text
    for label in ["sha256", "path", "dagster/row_count", "category_counts", "preview"]:
        assert label in text, label
    assert raw.metadata["path"].value in text
    assert str(raw.metadata["dagster/row_count"].value) in text
