"""Ranking metrics over a candidate list, from PyTorch scores or from the runtime's output.

Rank of the target (1-based): 1 + #candidates scoring strictly higher + #candidates scoring the
same that come earlier in the request's candidate list (candidate lists are shuffled, so this tie
rule is a seeded random one; NaN counts as -inf). HR@k = [rank <= k];
NDCG@k = 1/log2(rank + 1) if rank <= k else 0 (one relevant item); MRR = 1/rank (not truncated).

    python -m delrec_train.metrics --requests requests.jsonl --results runtime.jsonl \
        [--scores eval/scores.jsonl --row llm_soft] [--json]

``runtime.jsonl``: one line per request, ``{"user", "items": [{"id", "score", "logprob",
"n_tokens"}, ...] (ranked), "rank_ms"}`` as printed by ``delrec rank-batch --json``. With
``--scores``, also reports top-1 agreement and score differences with that PyTorch row.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from .util import read_jsonl

KS = (1, 5, 10)
METRIC_NAMES = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR"]


def _v(x) -> float:
    x = float(x)
    return -math.inf if math.isnan(x) else x


def target_rank(scores, candidates: list[str], target: str) -> int:
    if len(scores) != len(candidates):
        raise ValueError(f"{len(scores)} scores for {len(candidates)} candidates")
    t = candidates.index(target)
    st = _v(scores[t])
    r = 1
    for j, s in enumerate(scores):
        s = _v(s)
        if s > st or (s == st and j < t):
            r += 1
    return r


def top1_index(scores) -> int:
    """argmax, first on ties (same rule as target_rank)."""
    best, bi = -math.inf, 0
    for j, s in enumerate(scores):
        s = _v(s)
        if s > best or j == 0:
            best, bi = s, j
    return bi


def hr_at(rank: int, k: int) -> float:
    return 1.0 if rank <= k else 0.0


def ndcg_at(rank: int, k: int) -> float:
    return 1.0 / math.log2(rank + 1) if rank <= k else 0.0


def mrr(rank: int) -> float:
    return 1.0 / rank


def metrics_from_ranks(ranks: list[int]) -> dict[str, float]:
    if not ranks:
        return {m: float("nan") for m in METRIC_NAMES} | {"users": 0}
    r = np.asarray(ranks)
    out = {f"HR@{k}": float(np.mean([hr_at(x, k) for x in r])) for k in KS}
    for k in (5, 10):
        out[f"NDCG@{k}"] = float(np.mean([ndcg_at(x, k) for x in r]))
    out["MRR"] = float(np.mean([mrr(x) for x in r]))
    out["users"] = int(len(r))
    return out


def runtime_scores(result: dict, candidates: list[str]) -> tuple[list[float], list[int | None]]:
    """Scores in request candidate order from one runtime output line."""
    by_id = {str(it["id"]): it for it in result["items"]}
    missing = [c for c in candidates if c not in by_id]
    if missing:
        raise ValueError(f"user {result.get('user')}: runtime result lacks candidates {missing[:5]}")
    extra = set(by_id) - set(candidates)
    if extra:
        raise ValueError(f"user {result.get('user')}: runtime result has items not in the request: {sorted(extra)[:5]}")
    return [float(by_id[c]["score"]) for c in candidates], [by_id[c].get("n_tokens") for c in candidates]


def evaluate_runtime(requests: list[dict], results: list[dict], scores_rows: dict | None = None,
                     row: str | None = None) -> dict:
    res_by_user = {str(r["user"]): r for r in results}
    ranks, ms, agree, n_agree, dmax, dmean, tok_mismatch = [], [], 0, 0, 0.0, [], 0
    missing = []
    for q in requests:
        u = str(q["user"])
        if u not in res_by_user:
            missing.append(u)
            continue
        r = res_by_user[u]
        sc, nt = runtime_scores(r, q["candidates"])
        ranks.append(target_rank(sc, q["candidates"], q["target"]))
        if "rank_ms" in r:
            ms.append(float(r["rank_ms"]))
        if scores_rows is not None and u in scores_rows:
            ref = scores_rows[u]
            if ref["candidates"] != q["candidates"]:
                raise ValueError(f"user {u}: candidates differ between requests and scores")
            rs = ref["rows"][row]
            n_agree += 1
            agree += int(top1_index(sc) == top1_index(rs["scores"]))
            d = np.abs(np.asarray(sc) - np.asarray(rs["scores"]))
            dmax = max(dmax, float(d.max()))
            dmean.append(float(d.mean()))
            if "n_tokens" in rs and any(a is not None and a != b for a, b in zip(nt, rs["n_tokens"])):
                tok_mismatch += 1
    out = metrics_from_ranks(ranks)
    out["missing_users"] = len(missing)
    if ms:
        out["rank_ms_mean"] = float(np.mean(ms))
        out["rank_ms_p50"] = float(np.percentile(ms, 50))
        out["rank_ms_p90"] = float(np.percentile(ms, 90))
    if n_agree:
        out[f"top1_agreement_vs_{row}"] = agree / n_agree
        out["score_absdiff_mean"] = float(np.mean(dmean))
        out["score_absdiff_max"] = dmax
        out["users_with_token_count_mismatch"] = tok_mismatch
    return out


def load_scores(path: Path) -> dict[str, dict]:
    return {str(r["user"]): r for r in read_jsonl(path)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m delrec_train.metrics",
                                 description="Ranking metrics from the runtime's rank-batch output.")
    ap.add_argument("--requests", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--scores", type=Path, default=None, help="eval/scores.jsonl to compare with")
    ap.add_argument("--row", default="llm_soft", help="PyTorch row of --scores to compare with")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    reqs = read_jsonl(args.requests)
    res = read_jsonl(args.results)
    rows = load_scores(args.scores) if args.scores else None
    if rows is not None and not any(args.row in r["rows"] for r in rows.values()):
        raise SystemExit(f"--row {args.row}: not in {args.scores}")
    m = evaluate_runtime(reqs, res, rows, args.row if rows else None)
    if args.json:
        print(json.dumps(m, indent=1))
    else:
        for k, v in m.items():
            print(f"{k:32s} {v:.4f}" if isinstance(v, float) else f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
