# Sourced by benchmarks/gpu_check.sh and scripts/gpu_smoke.sh, from the repository root: the Python (PYTHON), the
# results folder (OUT), and the packages the device image lacks. Those are wheels from benchmarks/gpu_wheels.sh in
# WHEELS (.whl/), installed into SITE (/tmp/gpu-site), which goes first on PYTHONPATH. If the image's pyarrow is too
# old for the carried datasets (5.2 needs pyarrow 19 at import), the wheels in $WHEELS/old-pyarrow/ go in front too.
# Unsloth's wheels ($WHEELS/unsloth/) go into UNSLOTH_SITE with the shared ones it needs (bitsandbytes, pydantic,
# dill, multiprocess), not on PYTHONPATH: only the unsloth run uses it, over the image's transformers.
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/gpu-site}
# install_in_front TARGET FOLDER: the folder's wheels into TARGET, which goes first on PYTHONPATH
install_in_front() {
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$1" "$2"/*.whl \
    || { echo "${0##*/}: installing $2/ failed" >&2; exit 1; }
  export PYTHONPATH=$1${PYTHONPATH:+:$PYTHONPATH}
}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  install_in_front "$SITE" "$WHEELS"
else
  echo "${0##*/}: no wheels in $WHEELS/, so the installed packages are used"
fi
UNSLOTH_SITE=${UNSLOTH_SITE:-/tmp/gpu-site-unsloth}
if compgen -G "$WHEELS/unsloth/*.whl" > /dev/null; then
  shared=$(ls "$WHEELS"/{bitsandbytes,pydantic,annotated_types,typing_inspection,dill,multiprocess}-*.whl 2>/dev/null)
  # shellcheck disable=SC2086  # one wheel per word
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$UNSLOTH_SITE" \
    "$WHEELS"/unsloth/*.whl $shared || { echo "${0##*/}: installing $WHEELS/unsloth/ failed" >&2; UNSLOTH_SITE=; }
else
  UNSLOTH_SITE=
fi
if compgen -G "$WHEELS/old-pyarrow/*.whl" > /dev/null && ! why=$("$PYTHON" -c "import datasets" 2>&1); then
  pyarrow=$("$PYTHON" -c 'import pyarrow; print(pyarrow.__version__)' 2>&1 | tail -1)
  echo "${0##*/}: datasets does not import (${why##*$'\n'}; pyarrow $pyarrow), so $WHEELS/old-pyarrow/ goes in front"
  install_in_front "$SITE-old" "$WHEELS/old-pyarrow"
fi
