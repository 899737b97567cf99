#!/usr/bin/env bash
# Static checks: ruff (pyflakes and pycodestyle errors) and import-linter (the package layers, rich only in the CLI;
# the contracts are in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check tunesmith tests benchmarks scripts
lint-imports
