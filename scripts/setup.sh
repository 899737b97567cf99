#!/usr/bin/env bash
# Create .venv and install tunesmith with everything it needs (idempotent: skips what is already done).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "[setup] tunesmith needs Python >= 3.11 (transformers 5.21 and later do); $PY is" \
         "$("$PY" --version 2>/dev/null || echo 'not found'). Set PYTHON=/path/to/python3.11 and rerun." >&2
    exit 1
  fi
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.tunesmith-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing (CPU PyTorch pinned first, so nothing pulls a CUDA build)"
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  # llama-cpp-python (export --gguf's k-quants, and the GGUF tests) compiles llama.cpp: only the library, for any
  # x86-64 CPU with AVX2 rather than for this one (GGML_NATIVE=OFF), so a built wheel also runs on another machine.
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF}"
  python -m pip install -q -e ".[all]"
  echo "$want" > "$stamp"
fi
