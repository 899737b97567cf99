#!/usr/bin/env bash
# Set up if needed, then run the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Two workers (pytest-xdist), each test file on one of them: most of the suite's time is single-threaded Python
# (imports, subprocesses starting up), so two run side by side on two cores. TUNESMITH_TEST_WORKERS=0 runs serially.
exec python -m pytest -m "slow or not slow" -n "${TUNESMITH_TEST_WORKERS:-2}" --dist loadfile "$@"
