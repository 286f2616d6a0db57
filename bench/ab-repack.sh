#!/usr/bin/env bash
# Alternating A/B of ggml's weight repacking (EngineConfig::repack_weights; `delrec --no-repack`)
# on the real SmolLM2-135M at Q4_0 and Q8_0 with the demo's MovieLens pack (run
# `bash scripts/demo.sh` first): K = 20 candidates, H = 10, one process per run; prints the rank
# time, llama.cpp's repacked-buffer size and the peak RSS of each, then medians and the largest
# score difference between the two settings.
set -euo pipefail
cd "$(dirname "$0")/.."
w=target/demo-ml
bin=target/release
out=target/bench-repack
mkdir -p "$out"
[ -f $w/movielens.pack.gguf ] || { echo "run bash scripts/demo.sh first" >&2; exit 2; }
[ -f "$out/model.q4_0.gguf" ] || $bin/delrec-convert quantize --in target/assets/SmolLM2-135M-Instruct.Q4_1.gguf \
  --out "$out/model.q4_0.gguf" --type q4_0 --allow-requantize >/dev/null
ids=($(awk -F, 'NR>1 && NR<=31 {print $1}' $w/catalog.csv))
hist=$(IFS=,; echo "${ids[*]:0:10}")
cands=$(IFS=,; echo "${ids[*]:10:20}")
: > "$out/runs.txt"
for rep in 1 2 3 4 5; do
  for model in "$out/model.q4_0.gguf" "$w/SmolLM2-135M-Instruct.Q8_0.gguf"; do
    for repack in on off; do
      extra=(); [ $repack = off ] && extra=(--no-repack)
      DELREC_LLAMA_LOG=1 /usr/bin/time -f "%M" -o "$out/rss" $bin/delrec rank --model "$model" --pack $w/movielens.pack.gguf \
        --history "$hist" --candidates "$cands" --threads "${THREADS:-2}" --no-verify --json "${extra[@]}" \
        > "$out/run.json" 2> "$out/log.txt"
      python3 - "$out" "$rep" "$(basename "$model")" "$repack" >> "$out/runs.txt" <<'PY'
import json, re, sys
d, rep, model, repack = sys.argv[1:]
v = json.load(open(f"{d}/run.json"))
log = open(f"{d}/log.txt").read()
rp = sum(float(x) for x in re.findall(r"CPU_REPACK model buffer size =\s*([\d.]+) MiB", log))
rss = int(open(f"{d}/rss").read().split()[-1]) / 1024
print(json.dumps({"rep": int(rep), "model": model, "repack": repack, "rank_ms": v["stats"]["rank_ms"],
                  "repacked_mib": rp, "peak_rss_mib": rss, "scores": {i["id"]: i["logprob"] for i in v["items"]}}))
PY
      tail -n 1 "$out/runs.txt" | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r.pop('scores'); print(r)"
    done
  done
done
python3 - "$out/runs.txt" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
for model in sorted({r["model"] for r in runs}):
    by = {k: [r for r in runs if r["model"] == model and r["repack"] == k] for k in ("on", "off")}
    med = {k: statistics.median(r["rank_ms"] for r in v) for k, v in by.items()}
    rss = {k: statistics.median(r["peak_rss_mib"] for r in v) for k, v in by.items()}
    diff = max(abs(a["scores"][i] - b["scores"][i]) for a, b in zip(by["on"], by["off"]) for i in a["scores"])
    print(f"{model}: rank ms median on {med['on']:.0f} / off {med['off']:.0f} (off/on {med['off'] / med['on']:.2f}x); "
          f"peak RSS on {rss['on']:.0f} / off {rss['off']:.0f} MiB; repacked {by['on'][0]['repacked_mib']:.1f} MiB "
          f"(off: {by['off'][0]['repacked_mib']:.1f}); max |Δscore| {diff:.2e}")
PY
