#!/usr/bin/env bash
# Alternating A/B of --max-outputs 64 vs 512 on the bench's real SmolLM2 Q4_0 pack (run `delrec-bench --quick` first): K = 20, H = 10; prints rank_ms, decodes, rows and peak RSS per run.
set -euo pipefail
d=target/bench-cache/v2/smollm2-135m
ids=($(awk -F, 'NR>1 && NR<=41 {print $1}' target/bench-cache/v2/catalog.csv))
hist=$(IFS=,; echo "${ids[*]:0:10}")
cands=$(IFS=,; echo "${ids[*]:10:20}")
for rep in 1 2 3 4; do
  for mo in 64 512; do
    for mode in k20; do
      extra=(--candidates "$cands"); [ $mode = cat ] && extra=(--top-k 10)
      /usr/bin/time -f "%M" -o /tmp/rss target/release/delrec rank --model $d/model.q4_0.gguf --pack $d/pack.gguf \
        --history "$hist" "${extra[@]}" --threads ${THREADS:-1} --max-outputs $mo --no-verify --json > /tmp/out.json
      python3 -c "
import json,sys; v=json.load(open('/tmp/out.json')); s=v['stats']
print('$rep $mo $mode rank_ms=%.0f decode_calls=%d rows=%d peakRSS_MiB=%.0f' % (s['rank_ms'], s['decode_calls'], s['decoded_rows'], int(open('/tmp/rss').read().split()[-1])/1024))"
    done
  done
done
