#!/usr/bin/env bash
# A small self-contained demo on generated fixtures: generate a small Llama checkpoint (random weights, a real
# BPE tokenizer trained offline), a PEFT soft prompt, a PEFT LoRA and a 42-item catalog; convert the
# checkpoint with the LoRA merged, quantize it with llama.cpp's quantizer, build a pack, and rank.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --bins
out=target/demo
fx=$out/fixtures
bin=target/release
mkdir -p "$out"
python3 tests/fixtures/make_fixtures.py "$fx" >/dev/null
echo "== convert (LoRA merged) and quantize"
$bin/delrec-convert model --hf "$fx/llama-tiny" --lora "$fx/lora-llama" --out "$out/model.f16.gguf" --outtype f16
$bin/delrec-convert quantize --in "$out/model.f16.gguf" --out "$out/model.q8_0.gguf" --type q8_0
echo "== pack"
$bin/delrec-convert pack --model "$out/model.f16.gguf" --model "$out/model.q8_0.gguf" \
  --tokenizer "$fx/llama-tiny/tokenizer.json" --catalog "$fx/catalog.csv" \
  --soft-prompt "default=$fx/prompt-llama" \
  --template $'{soft:default}Recently watched:{history}.\nNext:{candidate}\n' \
  --out "$out/recs.pack.gguf"
$bin/delrec-convert inspect "$out/recs.pack.gguf" | head -n 30
echo "== rank the whole catalog (Q8_0 model)"
$bin/delrec rank --model "$out/model.q8_0.gguf" --pack "$out/recs.pack.gguf" \
  --history m001,m004,m010 --top-k 10 --exclude-history
