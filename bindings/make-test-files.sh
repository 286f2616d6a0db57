#!/usr/bin/env bash
# The files every binding test suite (Kotlin/Java, Python, Swift) runs against, made from the
# fixtures with the built converter: llama-tiny and qwen2-tiny models + packs, the llama pack with
# the fixture SASRec (the cascade), and the llama pack with a LoRA adapter (written beside it).
# Usage: bindings/make-test-files.sh OUT_DIR   (DELREC_FIXTURES: the fixture dir; needs the
# release build: target/release/delrec-convert)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: make-test-files.sh OUT_DIR}
REL=$PWD/target/release
FX=${DELREC_FIXTURES:-$PWD/target/fixtures}
mkdir -p "$OUT"
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
cp "$FX/catalog.csv" "$OUT/catalog.csv"
