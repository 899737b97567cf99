#!/usr/bin/env bash
# Wheels for the GPU checks (benchmarks/gpu_check.sh, scripts/gpu_smoke.sh) on a GPU machine that cannot reach PyPI
# (the device tool's, whose image has Python 3.12 with torch, accelerate and an older transformers and peft, but not
# the rest). Downloads them into .whl/ at the repository root, for CPython 3.12 on x86_64 Linux:
# - .whl/: tunesmith's side at the versions this checkout's .venv has (transformers and peft too: the image's
#   transformers predates TrainingArguments.activation_checkpointing, which tunesmith's trainer sets), plus TRL and
#   Liger for the comparisons. bitsandbytes keeps only its CUDA 13 libraries (the image's torch is built for CUDA
#   13; the wheel's others are 110 MB of the call's 64 MiB).
# - .whl/unsloth/: Unsloth and what it needs beside the image, at the versions it accepts (transformers <= 5.17, the
#   image's; trl <= 1.15; datasets < 5), installed apart and put first only for the unsloth run. Its wheel's
#   "studio" web app (27 MB) is left out: training does not import it.
# About 45 MB in all. Then one device call with `.whl` and `.gpu-data` in its carry (gpu_check.sh's header).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PACKAGES="transformers peft trl liger-kernel bitsandbytes datasets dill multiprocess pydantic pydantic-core
annotated-types typing-inspection gguf datasketch"
for name in $PACKAGES; do
  version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d .whl "${name}${version:+==$version}"
done
# datasets 5.2 calls pyarrow.json_ (pyarrow 19) at import; the image's pyarrow version was never read. Should it be
# older, gpu_check.sh falls back to datasets 4.0, the last that accepts pyarrow 15, with the dill and multiprocess it
# pins. They wait in their own folder: two versions of one package in one install stop it.
mkdir -p .whl/old-pyarrow
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform any \
  -d .whl/old-pyarrow datasets==4.0.0 dill==0.3.8 multiprocess==0.70.16
# bitsandbytes: only the CUDA 13 libraries (and the CPU one) stay in the wheel.
for wheel in .whl/bitsandbytes-*.whl; do
  python3 - "$wheel" <<'PY'
import re, sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path) as src:
    items = [(i, src.read(i)) for i in src.infolist()
             if not re.search(r"libbitsandbytes_(cuda(?!13)\d+|rocm\d+)", i.filename)]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
    for info, data in items:
        out.writestr(info, data)
PY
done
mkdir -p .whl/unsloth
for spec in unsloth==2026.10.9 unsloth-zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 xformers==0.0.35 torchao cut-cross-entropy tyro docstring-parser typeguard msgspec; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl/unsloth "$spec"
done
for wheel in .whl/unsloth/unsloth-2*.whl; do
  python3 - "$wheel" <<'PY'
import sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path) as src:
    items = [(i, src.read(i)) for i in src.infolist() if not i.filename.startswith("studio/")]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
    for info, data in items:
        out.writestr(info, data)
PY
done
du -sh .whl
