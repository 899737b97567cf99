#!/usr/bin/env bash
# tunesmith's own CLI on a GPU, end to end, in about two minutes of device time: `tunesmith train` fine-tunes the tiny
# real Llama (stories260K) with LoRA, LoRA + Liger (speed.loss: liger) and QLoRA; then each adapter folder loads
# with PeftModel.from_pretrained on the GPU, generates, and its loss must have fallen. CI has no GPU; on the device
# tool, after `bash benchmarks/gpu_wheels.sh` here:
#   mkdir -p .gpu-model && cp -r ../shared/models/stories260K .gpu-model/   (.gpu-model/ is ignored: .gitignore)
#   run  command: bash scripts/gpu_smoke.sh   carry: [".whl", ".gpu-model"]   timeout_s: 240
# Each run's log is kept in $OUT (smoke-NAME.log). On a CPU, with WHEELS naming a folder without wheels (the
# installed packages are then used), it runs the same way less the Liger run: tests/test_benchmark_scripts.py.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
MODEL=${MODEL:-.gpu-model/stories260K}
[[ -d $MODEL ]] || MODEL=../shared/models/stories260K
RUNS=${RUNS:-$(mktemp -d)}
NAMES=()
run() {  # run NAME OVERRIDES...: one `tunesmith train`, its log in $OUT
  local name=$1
  shift
  NAMES+=("$name")
  PYTHONUNBUFFERED=1 "$PYTHON" -m tunesmith.cli.main train examples/full.yaml "model.name_or_path=$MODEL" \
    training.max_steps=30 training.save_steps=15 training.tensorboard=false "training.output_dir=$RUNS/$name" "$@" \
    > "$OUT/smoke-$name.log" 2>&1
  local rc=$?
  grep -v "Loading weights" "$OUT/smoke-$name.log" | sed "s/^/[$name] /"
  [[ $rc == 0 ]] || { echo "gpu_smoke: $name exited $rc" >&2; exit 1; }
}
run lora method.name=lora method.r=8
if "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  run lora-liger method.name=lora method.r=8 speed.loss=liger
else
  echo "gpu_smoke: no CUDA GPU, so no Liger run (its kernels are Triton GPU kernels)"
fi
run qlora method.name=qlora method.r=8
"$PYTHON" - "$MODEL" "$RUNS" "${NAMES[@]}" <<'PY'
import json, sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

model_path, runs, names = sys.argv[1], sys.argv[2], sys.argv[3:]
device = "cuda" if torch.cuda.is_available() else "cpu"
for name in names:
    folder = f"{runs}/{name}"
    losses = [row["loss"] for row in map(json.loads, open(f"{folder}/metrics.jsonl")) if "loss" in row]
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).to(device)
    model = PeftModel.from_pretrained(base, folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("Once upon a time", return_tensors="pt").to(device)
    text = tokenizer.decode(model.generate(**prompt, max_new_tokens=16, do_sample=False)[0], skip_special_tokens=True)
    print(f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} logged steps; loads with "
          f"PeftModel on {device}: {text!r}")
    assert losses[-1] < losses[0], f"{name}: the loss did not fall"
PY
