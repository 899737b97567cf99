#!/usr/bin/env bash
# Set up if needed, then run the offline demo (SmolLM2-135M-Instruct learns a persona with LoRA).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec tunesmith demo "$@"
