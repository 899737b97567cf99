#!/usr/bin/env bash
# The whole test suite with every direct dependency at the floor pyproject.toml declares ("x>=1.2" installed as
# "x==1.2"), in a venv of its own. It catches a floor that no longer holds: an API tunesmith calls that the floor
# lacks, or a floor that another dependency's own floor makes unreachable (pip then names both). Not part of CI:
# it is a second install and a second full run (about 10 minutes on 2 cores).
#   bash scripts/test_floors.sh [pytest args]
#   env: FLOORS_VENV (default /tmp/tunesmith-floors), TORCH (default 2.13.0; any version >= the floor), PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FLOORS_VENV:-/tmp/tunesmith-floors}
"${PYTHON:-python3}" -m venv --clear "$venv"
py="$venv/bin/python"
# torch first and by itself: its floor build is a multi-GB CUDA wheel, and torch's floors are tested apart
# (README, "Versions").
"$py" -m pip install -q "torch==${TORCH:-2.13.0}"
"$py" - "$venv/floors.txt" <<'EOF'
import re
import sys
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
wanted = project["dependencies"] + extras["qlora"] + extras["trl"] + extras["test"]
pins = []
for requirement in wanted:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][^,;\s]*)", requirement.strip())
    if match is None:
        sys.exit(f"test_floors.sh: no plain 'name>=floor' in pyproject.toml's {requirement!r}")
    name, floor = match.groups()
    if name != "torch":
        pins.append(f"{name}=={floor}")
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
EOF
"$py" -m pip install -q -c "$venv/floors.txt" -e ".[qlora,trl,test]"
installed=$("$py" -m pip list --format freeze 2>/dev/null)
echo "[floors] installed at their floors:"
grep -iE "^($(sed 's/==.*//' "$venv/floors.txt" | paste -sd'|'))==" <<< "$installed" | paste -sd' ' | fold -s -w 118
echo "[floors] with: $(grep -iE '^(torch|numpy|tokenizers|huggingface.hub)==' <<< "$installed" | paste -sd' ')"
"$py" -m pytest -m "slow or not slow" "$@"
