#!/usr/bin/env bash
# GPU smoke check of workbench training + inference. Run from the repo root on the GPU machine:
#   bash benchmarks/gpu/run.sh            (extra args go to check.py, e.g. --cpu-ok --small for a CPU dry run)
# Env: PY (default python3), OUT (default /tmp/gpucheck_out), SITE (default /tmp/gpucheck_site).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpucheck_out}; export OUT; mkdir -p "$OUT"
SITE=${SITE:-/tmp/gpucheck_site}
echo "python: $(command -v "$PY") $("$PY" --version 2>&1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "no nvidia-smi"
# the carried wheels (polars + its runtime) go to a private --target folder: the image's venv stays untouched
if ! "$PY" -c 'import polars' 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" benchmarks/gpu/wheels/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -c 'import polars, workbench.train, workbench.infer, workbench.data; print("imports ok: polars", polars.__version__)'
timeout -k 10 240 "$PY" benchmarks/gpu/check.py "$@" 2>&1 | tee "$OUT/log.txt"
