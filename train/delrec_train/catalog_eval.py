"""Whole-catalog evaluation: rank every item the user has not interacted with before the test item.

    python -m delrec_train.catalog_eval requests [--users 500] [--llm-users 50]      # writes requests
    python -m delrec_train.catalog_eval score [--runtime "NAME=rank-batch.jsonl" ...]  # metrics table

Protocol (RecBole's full-sort protocol on our leave-one-out split): for each user of the seeded
sample (the same users as ``evaluate``), the candidates are all items of the interaction file
except the user's earlier interactions (training and validation items); the target is the test
item; history = the H items before it. HR@10 / NDCG@10 of the target, plus latency for the
runtime. Rows: random (seeded), most popular, the SASRec teacher over all items, and ``delrec
rank-batch --json`` outputs for ``catalog/requests.jsonl`` (``top_k`` 10, exact top-k). The LLM
rows run on the first ``--llm-users`` users only (about 10 s per user on 2 cores); baselines are
reported on both user sets.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np

from .data import load_dataset
from .paths import work_dir
from .util import read_jsonl, select_users, write_json

K = 10


def hr_ndcg(rank: int | None, k: int = K) -> tuple[float, float]:
    """rank: 1-based rank of the target, None when it is not in the top k."""
    if rank is None or rank > k:
        return 0.0, 0.0
    return 1.0, 1.0 / math.log2(rank + 1)


def full_rank(scores: dict[str, float], target: str) -> int:
    """1 + #items scoring higher + #items tying that sort before the target by id (deterministic)."""
    st = scores[target]
    return 1 + sum(1 for i, s in scores.items() if s > st or (s == st and i < target))


def user_requests(ds, users: list[str]) -> list[dict]:
    pool = ds.item_pool()
    out = []
    for u in users:
        seen = set(ds.seqs[u][:-1])
        e = ds.test_example(u)
        cands = [i for i in pool if i not in seen]
        out.append({"user": u, "history": e.history, "candidates": cands, "target": e.target, "top_k": K})
    return out


def _summ(pairs: list[tuple[float, float]], extra: dict | None = None) -> dict:
    a = np.array(pairs, dtype=float).reshape(-1, 2)
    return {"users": len(pairs), f"HR@{K}": float(a[:, 0].mean()) if len(a) else None,
            f"NDCG@{K}": float(a[:, 1].mean()) if len(a) else None, **(extra or {})}


def baseline_rows(ds, reqs: list[dict], out: Path, seed: int) -> dict[str, dict]:
    pop = ds.train_popularity()
    rows: dict[str, list] = {"random": [], "pop": [], "sasrec": []}
    teacher = None
    if (out / "teacher" / "sasrec.pth").is_file():
        from .teacher import load_teacher

        teacher = load_teacher(out)
    else:
        del rows["sasrec"]
    for q in reqs:
        u, t, cands = q["user"], q["target"], q["candidates"]
        rng = np.random.default_rng([seed, zlib.crc32(u.encode()), 98])
        rows["random"].append(hr_ndcg(full_rank(dict(zip(cands, rng.random(len(cands)))), t)))
        rows["pop"].append(hr_ndcg(full_rank({c: float(pop.get(c, 0)) for c in cands}, t)))
        if teacher is not None:
            full = teacher.full_scores([ds.seqs[u][:-1]])[0]
            rows["sasrec"].append(hr_ndcg(full_rank({c: float(full[teacher.tok2id[c]]) for c in cands}, t)))
    return rows


def runtime_pairs(reqs: list[dict], results: list[dict]) -> tuple[list, list[float], dict]:
    by_user = {str(r.get("user")): r for r in results}
    pairs, ms = [], []
    for q in reqs:
        r = by_user.get(q["user"])
        if r is None:
            continue
        if "error" in r:
            raise ValueError(f"runtime failed on user {q['user']}: {r['error']}")
        ids = [it["id"] for it in r["items"]]
        rank = ids.index(q["target"]) + 1 if q["target"] in ids else None
        pairs.append(hr_ndcg(rank))
        if "rank_ms" in r:
            ms.append(float(r["rank_ms"]))
    extra = {}
    if ms:
        extra = {"rank_ms_mean": float(np.mean(ms)), "rank_ms_p50": float(np.median(ms)),
                 "rank_ms_p95": float(np.percentile(ms, 95))}
    return pairs, ms, extra


LABELS = {"random": "Random", "pop": "Most popular (train split)", "sasrec": "SASRec teacher (RecBole)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m delrec_train.catalog_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["requests", "score"])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--name", default="ml-100k")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--llm-users", type=int, default=50)
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runtime", action="append", default=[], metavar="NAME=FILE")
    args = ap.parse_args(argv)
    out = args.out or work_dir()
    cdir = out / "catalog"
    cdir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(args.data_dir, args.name, history_len=args.history, seed=args.seed)
    users = select_users(ds.users(), args.users or None, args.seed)
    reqs = user_requests(ds, users)
    n_llm = min(args.llm_users, len(reqs))
    if args.what == "requests":
        with open(cdir / "requests.jsonl", "w", encoding="utf-8") as f:
            for q in reqs[:n_llm]:
                f.write(json.dumps({k: q[k] for k in ("user", "history", "candidates", "top_k")}) + "\n")
        sizes = [len(q["candidates"]) for q in reqs]
        print(f"{n_llm} whole-catalog requests -> {cdir / 'requests.jsonl'} "
              f"({min(sizes)}-{max(sizes)} candidates per user)")
        return 0
    base = baseline_rows(ds, reqs, out, args.seed)
    table = []
    for key, pairs in base.items():
        table.append((LABELS[key], _summ(pairs)))
        if n_llm < len(reqs):
            table.append((f"{LABELS[key]}, first {n_llm} users", _summ(pairs[:n_llm])))
    for spec in args.runtime:
        name, _, path = spec.rpartition("=")
        pairs, _, extra = runtime_pairs(reqs[:n_llm], read_jsonl(Path(path)))
        table.append((name, _summ(pairs, extra)))
    write_json(cdir / "metrics.json", {"rows": {n: m for n, m in table}, "users": len(reqs), "llm_users": n_llm,
                                       "k": K, "candidates_mean": float(np.mean([len(q["candidates"]) for q in reqs]))})
    cols = ["users", f"HR@{K}", f"NDCG@{K}", "rank_ms_mean", "rank_ms_p95"]
    print("| model (whole catalog) | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for n, m in table:
        cells = [("" if m.get(c) is None else str(m[c]) if isinstance(m[c], int) else
                  f"{m[c]:.0f}" if c.startswith("rank_ms") else f"{m[c]:.4f}") for c in cols]
        print(f"| {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
