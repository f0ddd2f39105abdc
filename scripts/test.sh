#!/usr/bin/env bash
# Set up (if needed) and run the checks: ruff lint, ruff format --check, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${XTF_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# set-up output (pip's and the build backend's notices) is shown only when the install fails
SETUP_LOG="$(mktemp)"
trap 'rm -f "$SETUP_LOG"' EXIT
if ! "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test]" >"$SETUP_LOG" 2>&1; then
    cat "$SETUP_LOG" >&2
    exit 1
fi
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
# One intra-op thread: the test models are tiny, and on a loaded machine torch's worker threads spin-wait for
# busy cores (measured on 2 loaded cores: the parity tests took 3-4x the CPU time with 2 threads). Set
# OMP_NUM_THREADS to run them with more; no test depends on the thread count.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Tests marked `releases` run real x-transformers releases, each installed once (pip --target) into a user
# cache that later runs and fresh clones on this machine reuse; XTF_RELEASE_TESTS=0 leaves them out
# (tests/conftest.py).
export XTF_RELEASES_DIR="${XTF_RELEASES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/xtf/x-transformers-releases}"
"$VENV/bin/python" -m pytest -q "$@"
