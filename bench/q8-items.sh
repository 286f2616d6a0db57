#!/usr/bin/env bash
# A Q8_0 item table on a trained SASRec: the same SASRec packed with an F32 and with a Q8_0 item
# table (`pack --seq-q8-items`), `delrec recommend --llm-off` for every MovieLens-100K user
# (history = every item before the user's last, target = the last, history items excluded),
# then HR@10 / HR@100 of both and how much of the F32 top N the Q8_0 table keeps.
# Needs what `bash scripts/demo.sh` leaves in target/demo-ml (its SASRec, catalog, model).
set -euo pipefail
cd "$(dirname "$0")/.."
w=target/demo-ml
bin=target/release
sasrec=${1:-$w/teacher/sasrec.pth}
[ -f "$sasrec" ] || { echo "no SASRec at $sasrec: run bash scripts/demo.sh first" >&2; exit 2; }
out=target/bench-q8-items
mkdir -p "$out"
tmpl=$'A user watched:{history}.\nThe user will next watch:{candidate}\n'
for t in f32 q8_0; do
  extra=(); [ $t = q8_0 ] && extra=(--seq-q8-items)
  $bin/delrec-convert pack --model $w/SmolLM2-135M-Instruct.Q8_0.gguf --catalog $w/catalog.csv --template "$tmpl" \
    --max-history 10 --seq-model "$sasrec" "${extra[@]}" --out "$out/$t.pack.gguf" >/dev/null
done
PYTHONPATH=train python3 - "$out" <<'PY'
import json, sys
from delrec_train.data import load_dataset
ds = load_dataset()
with open(f"{sys.argv[1]}/requests.jsonl", "w") as f:
    for u, s in ds.seqs.items():
        f.write(json.dumps({"user": u, "history": s[:-1], "target": s[-1]}) + "\n")
PY
for t in f32 q8_0; do
  $bin/delrec recommend --model $w/SmolLM2-135M-Instruct.Q8_0.gguf --pack "$out/$t.pack.gguf" \
    --requests "$out/requests.jsonl" --n 100 --llm-off --json --threads 1 > "$out/$t.jsonl"
done
python3 - "$out" <<'PY'
import json, statistics, sys
d = sys.argv[1]
reqs = [json.loads(l) for l in open(f"{d}/requests.jsonl")]
a = [json.loads(l) for l in open(f"{d}/f32.jsonl")]
b = [json.loads(l) for l in open(f"{d}/q8_0.jsonl")]
hit = {k: [0, 0] for k in (10, 100)}
ov = {10: [], 100: []}
worst = 0.0
for r, x, y in zip(reqs, a, b, strict=True):
    ix, iy = [i["id"] for i in x["items"]], [i["id"] for i in y["items"]]
    for k in hit:
        hit[k][0] += r["target"] in ix[:k]
        hit[k][1] += r["target"] in iy[:k]
        ov[k].append(len(set(ix[:k]) & set(iy[:k])) / k)
    sx, sy = {i["id"]: i["seq_score"] for i in x["items"]}, {i["id"]: i["seq_score"] for i in y["items"]}
    spread = statistics.pstdev(sx.values()) or 1.0
    worst = max(worst, max(abs(sx[i] - sy[i]) for i in set(sx) & set(sy)) / spread)
n = len(reqs)
print(f"{n} users: HR@10 F32 {hit[10][0] / n:.4f} / Q8_0 {hit[10][1] / n:.4f}; "
      f"HR@100 F32 {hit[100][0] / n:.4f} / Q8_0 {hit[100][1] / n:.4f}")
for k in ov:
    print(f"top {k} kept by Q8_0: mean {sum(ov[k]) / n:.3f}, worst user {min(ov[k]):.2f}")
print(f"largest |score change| / spread of the user's top-100 scores: {worst:.3f}")
PY
