#!/usr/bin/env bash
# Fetch what the GPU machine lacks, into benchmarks/gpu/ (ignored by git): polars wheels for its Python 3.12 and the
# bundled MiniLM's tokenizer files (no weights; the check trains random MiniLM-shaped models). Then, with the device tool:
#   run(command="bash benchmarks/gpu/run.sh", carry=["benchmarks/gpu/wheels", "benchmarks/gpu/tokenizer"], timeout_s=300)
set -euo pipefail
cd "$(dirname "$0")"
polars=$(grep -E '^polars(-runtime-32)?==' ../../constraints.txt | tr '\n' ' ')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d wheels $polars
src=$(../../.venv/bin/python -c 'from workbench.train import default_base_model; print(default_base_model())')
mkdir -p tokenizer
for f in tokenizer.json vocab.txt tokenizer_config.json special_tokens_map.json; do [ -f "$src/$f" ] && cp "$src/$f" tokenizer/; done
du -sh wheels tokenizer
