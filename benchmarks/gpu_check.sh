#!/usr/bin/env bash
# The GPU check, prepared to fit the device tool in one call: installs the wheels from .whl/ (benchmarks/gpu_wheels.sh)
# where they travelled, says what the machine has, checks that every import works before any run spends time, then
# runs benchmarks/gpu_varlen.py (the varlen attention: exact, and its cost against SDPA), a `tunesmith train` of
# stories260K on the GPU defaults, and benchmarks/gpu_throughput.py (tunesmith against HF, TRL and Unsloth on real
# data) within a wall-clock budget. Results go to $OUT as they come (gpu_varlen.txt, smoke.log, gpu_throughput.txt,
# gpu_throughput.jsonl), so a call stopped part way keeps what it measured.
#
# The device tool gives a drawn session 15 minutes in all, start-up included, and 10 a call. So, here first:
#   bash benchmarks/gpu_wheels.sh
#   mkdir -p .gpu-model && cp -r ../shared/models/stories260K ../shared/data/instruct/alpaca_en_demo.json .gpu-model/
#   cp -r ~/.cache/tunesmith/models/smollm2-135m-instruct .gpu-model/smollm2   (its tokenizer; weights not needed)
# then  run  command: bash benchmarks/gpu_check.sh   carry: [".whl", ".gpu-model"]   timeout_s: 580
# BUDGET_S (default 420) is gpu_throughput.py's share; the rest is install, imports, the checks and slack. Extra
# arguments pass through to gpu_throughput.py (`--dry-run` checks this script on a CPU; tests/test_benchmark_scripts.py
# does that in CI).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${BUDGET_S:-420}
MODELS=${MODELS:-.gpu-model}
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" - <<'PY' || { echo "gpu_check: an import failed (above); nothing was run" >&2; exit 1; }
import importlib.metadata as metadata, platform, sys

import torch

print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}),",
      "GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
names = ("transformers", "peft", "trl", "accelerate", "datasets", "pyarrow", "bitsandbytes", "liger-kernel", "triton")


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


print(", ".join(f"{name} {version(name)}" for name in names))
sys.path.insert(0, ".")
import bitsandbytes, datasets, peft, trl  # noqa: F401,E401  (each worker needs them; fail here, once)
from tunesmith.training.trainer import TunesmithTrainer  # noqa: F401
PY
data=(); tokenizer=()
[[ -f $MODELS/alpaca_en_demo.json ]] && data=(--data "$MODELS/alpaca_en_demo.json")
[[ -d $MODELS/smollm2 ]] && tokenizer=(--tokenizer "$MODELS/smollm2")
stories=$MODELS/stories260K
[[ -d $stories ]] || stories=../shared/models/stories260K
if [[ " $* " != *" --dry-run "* ]]; then
  PYTHONUNBUFFERED=1 timeout 90 "$PYTHON" benchmarks/gpu_varlen.py --model "$stories" 2>&1 | tee "$OUT/gpu_varlen.txt"
  # The CLI on the GPU defaults: packing on the varlen kernel must be what the run log says it chose.
  runs=$(mktemp -d)
  PYTHONUNBUFFERED=1 timeout 90 "$PYTHON" -m tunesmith.cli.main train examples/lora.yaml "model.name_or_path=$stories" \
    "data.train.0.path=${data[1]:-../shared/data/instruct/alpaca_en_demo.json}" data.train.0.max_samples=200 \
    data.max_length=256 training.max_steps=20 "training.output_dir=$runs/smoke" > "$OUT/smoke.log" 2>&1
  echo "smoke: exit $?; $(grep -hE 'packing:|varlen FlashAttention|pre-flight' "$runs/smoke/train.log" | tr '\n' ' ')"
  tail -3 "$OUT/smoke.log"
fi
unsloth=()
[[ -n ${UNSLOTH_SITE:-} ]] && unsloth=(--unsloth-path "$UNSLOTH_SITE")
PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/gpu_throughput.py --budget-s "$BUDGET_S" --jsonl "$OUT/gpu_throughput.jsonl" \
  "${data[@]}" "${tokenizer[@]}" "${unsloth[@]}" "$@" 2>&1 | tee "$OUT/gpu_throughput.txt"
exit "${PIPESTATUS[0]}"
