#!/usr/bin/env bash
# Installs learnalign_pipeline into .venv with exactly the locked versions (locks/), then checks the environment.
# Nothing is resolved afresh: the lock is the whole dependency tree and pip installs it as written (--no-deps),
# so a user gets the set CI tested. Refresh the locks on purpose with scripts/lock.sh.
#
#   scripts/install.sh        base: what `learnalign demo` needs (README command 1)
#   scripts/install.sh ci     base + test tools + vLLM's CPU build (.ci/run)
#   scripts/install.sh gpu    base + vLLM for CUDA machines (CUDA torch; never installed on our CPU machines)
#
# LEARNALIGN_VENV names another venv folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-base}" in
    base | ci | gpu) lock="locks/${1:-base}.txt" ;;
    *) echo "install.sh: unknown install set '$1': choose base, ci or gpu" >&2; exit 2 ;;
esac
venv="${LEARNALIGN_VENV:-.venv}"
# This machine's pip also looks in local mirror folders and warns for every package they lack: keep that off the console.
pip_quiet() { "$venv/bin/pip" "$@" 2> >(grep -v "is neither a file nor a directory" >&2); }

# A venv made here must equal the lock exactly; one that existed may hold more (a ci install, say).
exact=""
if [ ! -d "$venv" ]; then exact="--exact"; fi
python3 -m venv "$venv"
pip_quiet install -q --no-deps -r "$lock"
# The build backend comes from the lock too, so the project's own install resolves nothing either.
pip_quiet install -q --no-deps --no-build-isolation -e .
"$venv/bin/python" scripts/check_environment.py --lock "$lock" $exact
