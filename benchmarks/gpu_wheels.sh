#!/usr/bin/env bash
# Wheels for running benchmarks/gpu_throughput.py on a GPU machine that cannot reach PyPI (the device tool's, whose
# image has Python 3.12 with torch, accelerate and an older transformers and peft, but not the rest). transformers and
# peft travel too: the image's transformers (5.17 when last listed) predates TrainingArguments.activation_checkpointing
# (5.23), which tunesmith's trainer sets. Downloads them into .whl/ at the repository root, at the versions this
# checkout's .venv has (unpinned where it lacks one), for CPython 3.12 on x86_64 Linux. About 63 MB, which with the
# working tree comes to about 62 MiB: under the device tool's 64 MiB a call. Then one device call, with `.whl` in its
# carry, runs benchmarks/gpu_check.sh (its header has the call), which installs them and runs both shapes.
# Run on the device's H200 image on 2026-11-30 (docs/benchmarks.md, GPU section); gpu_check.sh prints the versions
# and tries every import before any run.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PACKAGES="transformers peft liger-kernel bitsandbytes datasets dill multiprocess pydantic pydantic-core annotated-types
typing-inspection gguf datasketch"
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
du -sh .whl
