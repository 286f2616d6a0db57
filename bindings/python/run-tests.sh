#!/usr/bin/env bash
# Python test of the UniFFI bindings, end to end:
#   1. build.sh: the workspace, the generated Python module + libdelrec_ffi.so in
#      bindings/python/delrec/, a wheel installed into the venv target/python/venv,
#   2. converts the llama-tiny fixture and builds its packs (plain, with a SASRec for the
#      cascade, with a LoRA adapter; a qwen2-tiny pack for the mismatch), as the Kotlin test does,
#   3. runs bindings/python/tests with pytest in that venv, from outside the source tree so that
#      `import delrec` is the installed wheel.
# Exits non-zero on any failure. Extra arguments go to pytest (e.g. `-k session`).
#
# Needs: cargo, python3 with setuptools, wheel, pytest, numpy and tokenizers (the fixture
# generator); scripts/setup.sh installs them. Overrides: DELREC_FIXTURES (fixture dir).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
REL=$ROOT/target/release
OUT=$ROOT/target/python/test
FX=${DELREC_FIXTURES:-$ROOT/target/fixtures}
mkdir -p "$OUT"

step() { printf '\n== %s\n' "$*"; }

step "build and install the delrec wheel"
PY=$(bash bindings/python/build.sh | tail -n 1)
"$PY" -c 'import delrec, sys; print("delrec from", delrec.__file__)'

step "fixtures: llama-tiny model + packs, qwen2-tiny pack"
bash bindings/make-test-files.sh "$OUT"

step "pytest bindings/python/tests"
cd "$OUT"
DELREC_MODEL=$OUT/llama.gguf DELREC_PACK=$OUT/llama.pack.gguf DELREC_OTHER_PACK=$OUT/qwen2.pack.gguf \
    DELREC_SEQ_PACK=$OUT/llama.seq.pack.gguf DELREC_ADAPTER_PACK=$OUT/llama.lora.pack.gguf \
    DELREC_CLI=$REL/delrec DELREC_CATALOG=$FX/catalog.csv \
    "$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT/bindings/python" "$ROOT/bindings/python/tests" "$@"
