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
python3 tests/fixtures/make_fixtures.py "$FX" >/dev/null
TEMPLATE=$'{soft:default}Recently watched:{history}.\nNext:{candidate}\n'
for m in llama qwen2; do
    "$REL/delrec-convert" model --hf "$FX/$m-tiny" --out "$OUT/$m.gguf" --outtype f32
    "$REL/delrec-convert" pack --model "$OUT/$m.gguf" --tokenizer "$FX/$m-tiny/tokenizer.json" \
        --catalog "$FX/catalog.csv" --soft-prompt "default=$FX/prompt-$m" --template "$TEMPLATE" \
        --out "$OUT/$m.pack.gguf"
done
"$REL/delrec-convert" pack --model "$OUT/llama.gguf" --tokenizer "$FX/llama-tiny/tokenizer.json" \
    --catalog "$FX/catalog.csv" --soft-prompt "default=$FX/prompt-llama" --template "$TEMPLATE" \
    --seq-model "$FX/sasrec-tiny.pth" --out "$OUT/llama.seq.pack.gguf"
"$REL/delrec-convert" adapter --base "$OUT/llama.gguf" --lora "$FX/lora-llama" --out "$OUT/llama.lora.gguf"
"$REL/delrec-convert" pack --model "$OUT/llama.gguf" --tokenizer "$FX/llama-tiny/tokenizer.json" \
    --catalog "$FX/catalog.csv" --soft-prompt "default=$FX/prompt-llama" --template "$TEMPLATE" \
    --adapter "$OUT/llama.lora.gguf" --out "$OUT/llama.lora.pack.gguf"

step "pytest bindings/python/tests"
cd "$OUT"
DELREC_MODEL=$OUT/llama.gguf DELREC_PACK=$OUT/llama.pack.gguf DELREC_OTHER_PACK=$OUT/qwen2.pack.gguf \
    DELREC_SEQ_PACK=$OUT/llama.seq.pack.gguf DELREC_ADAPTER_PACK=$OUT/llama.lora.pack.gguf \
    DELREC_CLI=$REL/delrec DELREC_CATALOG=$FX/catalog.csv \
    "$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT/bindings/python" "$ROOT/bindings/python/tests" "$@"
