#!/usr/bin/env bash
# The GPU check, prepared to fit the device tool in one call: installs the wheels from .whl/ (benchmarks/gpu_wheels.sh)
# where they travelled, says what the machine has, checks that every import works before any run spends time, then
# runs benchmarks/head_loss.py, then benchmarks/gpu_throughput.py for both shapes within a wall-clock budget.
# Results go to $OUT as they come (head_loss.txt, gpu_throughput.txt, gpu_throughput.jsonl), so a call stopped
# part way keeps what it measured.
#
# The device tool gives a drawn session 15 minutes in all, start-up included, and 10 a call. So, with `.whl` in carry:
#   run  command: bash benchmarks/gpu_check.sh     timeout_s: 560
# BUDGET_S (default 420) is the runs' share; the rest is install, imports and slack. The install, and WHEELS and
# SITE, are in benchmarks/gpu_env.sh. Extra arguments pass through to gpu_throughput.py (`--dry-run` checks this
# script on a CPU; tests/test_benchmark_scripts.py does that in CI).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${BUDGET_S:-420}
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" - <<'EOF' || { echo "gpu_check: an import failed (above); nothing was run" >&2; exit 1; }
import importlib.metadata as metadata, platform, sys

import torch

print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}),",
      "GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
names = ("transformers", "peft", "accelerate", "datasets", "pyarrow", "fsspec", "huggingface_hub", "tokenizers",
         "bitsandbytes", "liger-kernel", "triton")


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


print(", ".join(f"{name} {version(name)}" for name in names))
sys.path.insert(0, ".")
import bitsandbytes, datasets, peft  # noqa: F401,E401  (each worker needs them; fail here, once, not eight times)
from tunesmith.training.trainer import TunesmithTrainer  # noqa: F401
if torch.cuda.is_available():
    import liger_kernel.transformers  # noqa: F401
EOF
# The head and loss alone first (a minute at most): HF's loss, Liger's and the chunked one at several chunk sizes, for
# a LoRA (bf16) head and a QLoRA (fp32) one, and for a four times larger batch.
head=(--shapes llama-3.2-1b,llama-3-8b)
[[ " $* " == *" --dry-run "* ]] && head=(--shapes tiny --repeats 2 --warmup 1)
for extra in "" "--tokens 8192" "--head-dtype fp32"; do
  # shellcheck disable=SC2086  # $extra is two words or none
  PYTHONUNBUFFERED=1 timeout 120 "$PYTHON" benchmarks/head_loss.py "${head[@]}" $extra 2>&1
done | tee "$OUT/head_loss.txt"
PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/gpu_throughput.py --budget-s "$BUDGET_S" --jsonl "$OUT/gpu_throughput.jsonl" \
  "$@" 2>&1 | tee "$OUT/gpu_throughput.txt"
exit "${PIPESTATUS[0]}"
