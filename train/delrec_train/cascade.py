"""The cascade (SASRec retrieves N items, the LLM re-ranks them, a fused score orders them), evaluated
over the whole catalog, with the fusion weight fitted on the validation split.

    python -m delrec_train.cascade requests --split valid|test [--users 500] [--llm-users K] [--retrieve N]
    delrec recommend --model M --pack P --requests DIR/cascade/requests-valid.jsonl --n N --retrieve N --json > valid.jsonl
    python -m delrec_train.cascade fit --valid-results valid.jsonl [--retrieve 50] [--grid 0:1:0.05]
    python -m delrec_train.cascade score --test-results test.jsonl [--pack-results F] [--latency-results F ...]
        [--llm-alone NAME=F ...] [--candidates-llm NAME=F] [--llm-check F] [--ns 20,50,100]

**Requests** (``requests``): one line per user of the seeded sample (``select_users``: the same users
as ``evaluate`` and ``catalog_eval``), ``{"user", "history", "target", "split"}`` with history = every
item before the split's target (validation target = the second-last item, test target = the last),
oldest first; ``"n"`` and ``"retrieve"`` = ``--retrieve N`` when given (N > 0); users after the first
``--llm-users`` get ``"llm_off": true`` (their lines cost only the retrieval), ``--llm-only`` leaves them
out. ``delrec recommend`` ignores ``target`` and ``split``.

**Fusion, recomputed offline exactly as the runtime does** (``runtime/src/engine/recommend.rs``): the
retrieval order is seq score descending, ties by catalog index (the row of ``catalog.csv``); over the
first N' ≤ N retrieved items both scores are standardized (``z = (s - mean) / std``, population std,
all 0 when std ≤ 1e-12; sums left to right in float64), ``fused = (1 - w) z_seq + w z_llm`` with w
rounded to float32 (the runtime's type), sorted by fused descending, ties in retrieval order. So one
``recommend --n N --retrieve N`` run gives every (N' ≤ N, w).

**Metrics**: HR@10 / NDCG@10 of the target over the whole catalog (candidates = every catalog item
except the history): its rank in the fused order of the N' retrieved items, a miss when it is not
among them. The SASRec row is the retrieval order itself (``llm_off`` lines, or the seq order of the
retrieved items). Differences against the SASRec row on the same users come with a paired bootstrap
95% interval (users resampled, seeded). ``fit`` picks the w of ``--grid`` with the best validation
NDCG@10 at N' = ``--retrieve`` (then HR@10; then the smallest w) and writes DIR/cascade/fusion.json.

**Checks**: ``fit`` and ``score`` compare every returned ``seq_score`` with the PyTorch teacher
(``teacher.load_teacher(DIR).full_scores``) and exit 1 beyond ``--seq-tol`` (1e-4; the pack stores the
SASRec in F32 unless ``--seq-f16``). ``score --pack-results`` (a run with the pack's own ``retrieve`` and
``llm_weight``, ``--n`` = that N) must carry the fitted w: each fused score recomputed from its own seq
and LLM scores (exit 1 otherwise). ``--llm-check`` compares the cascade's LLM scores with ``rank-batch``
on the 20-candidate requests (same items, same model file; shows the pack's ``--max-history``).

**20 candidates** (``score``): the teacher's ``test_scores.jsonl`` and a runtime ``rank-batch`` output for
``eval/requests.jsonl`` fused the same way over each user's 20 candidates with the fitted w, against
the SASRec teacher row (paired interval), ranks with ``metrics.target_rank``'s tie rule.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import METRIC_NAMES, metrics_from_ranks, runtime_scores, target_rank
from .paths import work_dir
from .util import read_jsonl, select_users, write_json

K = 10
DEFAULT_NS = (20, 50, 100)
SPLITS = ("valid", "test")


# ---- fusion, as the runtime computes it ------------------------------------------------------------

def standardize(x) -> list[float]:
    """``(x - mean) / std`` (population std, float64, sums left to right); all 0 when std ≤ 1e-12 or
    not finite. Python's own ``sum`` is compensated (3.12+), the runtime's is not: plain loops here."""
    x = [float(v) for v in x]
    n = len(x)
    if n == 0:
        return []
    m = 0.0
    for v in x:
        m += v
    m /= n
    var = 0.0
    for v in x:
        var += (v - m) * (v - m)
    var /= n
    sd = math.sqrt(var)
    if math.isnan(sd) or math.isinf(sd) or sd <= 1e-12:
        return [0.0] * n
    return [(v - m) / sd for v in x]


def f32(w: float) -> float:
    """The weight as the runtime holds it (f32), widened back to float64."""
    return float(np.float32(w))


def fuse(seq, llm, w: float) -> list[float]:
    """Fused scores ``(1 - w) z(seq) + w z(llm)`` over the given items."""
    ww = f32(w)
    return [(1.0 - ww) * a + ww * b for a, b in zip(standardize(seq), standardize(llm))]


def _desc(x: float):
    """Sort key for 'descending, IEEE total order' (Rust's ``total_cmp``: +0.0 before -0.0)."""
    return (-x, -math.copysign(1.0, x) if x == 0 else 0.0)


def fused_order(seq, llm, w: float) -> list[int]:
    """Positions (0 = first retrieved) in the fused order; ties keep the retrieval order."""
    f = fuse(seq, llm, w)
    return sorted(range(len(f)), key=lambda i: (*_desc(f[i]), i))


def retrieval_sort(items: list[dict], cat_index: dict[str, int]) -> list[dict]:
    """Items in retrieval order: seq score descending, ties by catalog index (the runtime's top-n)."""
    try:
        return sorted(items, key=lambda it: (*_desc(float(it["seq_score"])), cat_index[str(it["id"])]))
    except KeyError as e:
        raise ValueError(f"item {e} is not in the catalog") from None


def parse_grid(spec: str) -> list[float]:
    """``start:stop:step`` (stop included) or a comma list."""
    if ":" in spec:
        a, b, s = (float(x) for x in spec.split(":"))
        if s <= 0 or b < a:
            raise ValueError(f"--grid {spec!r}: need start <= stop and step > 0")
        n = int(math.floor((b - a) / s + 1e-9))
        vals = [round(a + k * s, 10) for k in range(n + 1)]
    else:
        vals = [float(x) for x in spec.split(",") if x.strip()]
    if not vals or any(not 0.0 <= v <= 1.0 for v in vals):
        raise ValueError(f"--grid {spec!r}: weights must lie in [0, 1]")
    return vals


# ---- runtime output ------------------------------------------------------------------------------------

@dataclass
class UserRun:
    """One ``delrec recommend --json`` line: the retrieved items in retrieval order."""
    user: str
    ids: list[str]
    seq: list[float]
    llm: list[float] | None  # None: the line ran with llm_off
    returned: list[dict] = field(default_factory=list)  # the items as printed (fused order)
    retrieved: int = 0
    recommend_ms: float = 0.0
    retrieval_us: float = 0.0
    rerank_us: float = 0.0

    def complete(self) -> bool:
        """All retrieved items were returned (run with n = retrieve)."""
        return len(self.ids) == self.retrieved


def load_catalog_index(path: Path) -> dict[str, int]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["id", "title"]:
        raise ValueError(f"{path}: expected a catalog.csv with header id,title")
    return {r[0]: k for k, r in enumerate(rows[1:]) if r}


def load_runs(path: Path, cat_index: dict[str, int]) -> dict[str, UserRun]:
    out: dict[str, UserRun] = {}
    for r in read_jsonl(Path(path)):
        if "error" in r:
            raise ValueError(f"{path}: the runtime failed on user {r.get('user')} (line {r.get('line')}): {r['error']}")
        u = str(r["user"])
        items = r["items"]
        off = any(it.get("llm_score") is None for it in items)
        if off and not all(it.get("llm_score") is None for it in items):
            raise ValueError(f"{path}: user {u}: some items have an LLM score, some not")
        ordered = retrieval_sort(items, cat_index)
        out[u] = UserRun(u, [str(it["id"]) for it in ordered], [float(it["seq_score"]) for it in ordered],
                         None if off else [float(it["llm_score"]) for it in ordered], items,
                         int(r.get("retrieved", len(items))), float(r.get("recommend_ms", 0.0)),
                         float(r.get("retrieval_us", 0.0)), float(r.get("rerank_us", 0.0)))
    return out


def hr_ndcg(rank: int | None, k: int = K) -> tuple[float, float]:
    if rank is None or rank > k:
        return 0.0, 0.0
    return 1.0, 1.0 / math.log2(rank + 1)


def seq_rank(run: UserRun, target: str, n: int | None = None) -> int | None:
    """1-based rank of the target in the retrieval order of the first n retrieved (None: not retrieved)."""
    ids = run.ids[:n] if n else run.ids
    return ids.index(target) + 1 if target in ids else None


def cascade_rank(run: UserRun, target: str, n: int, w: float) -> int | None:
    """Rank of the target in the fused order of the first n retrieved items."""
    if run.llm is None:
        raise ValueError(f"user {run.user}: no LLM scores (llm_off line)")
    if n > len(run.ids):
        raise ValueError(f"user {run.user}: N = {n} but only {len(run.ids)} items in the output "
                         f"(run recommend with --n N --retrieve N)")
    if target not in run.ids[:n]:
        return None
    order = fused_order(run.seq[:n], run.llm[:n], w)
    return order.index(run.ids.index(target)) + 1


def metric_arrays(ranks: list[int | None]) -> dict[str, np.ndarray]:
    a = np.array([hr_ndcg(r) for r in ranks], dtype=float).reshape(-1, 2)
    return {f"HR@{K}": a[:, 0], f"NDCG@{K}": a[:, 1]}


# ---- statistics --------------------------------------------------------------------------------------

def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of a - b (paired per user) and its percentile bootstrap interval (users resampled with
    replacement, ``numpy.random.default_rng([seed, 13])``: the same resamples for equal n and seed)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng([seed, 13])
    means = np.empty(n_boot)
    for s in range(0, n_boot, 256):  # chunks: n_boot x n indices at once would be large for big n
        idx = rng.integers(0, n, size=(min(256, n_boot - s), n))
        means[s:s + len(idx)] = d[idx].mean(axis=1)
    q = (1 - level) / 2
    return {"diff": float(d.mean()), "lo": float(np.quantile(means, q)), "hi": float(np.quantile(means, 1 - q)),
            "n": int(n), "resamples": int(n_boot)}


def fit_weight(runs: dict[str, UserRun], targets: dict[str, str], ns, grid, retrieve: int):
    """-> (best w at N = retrieve, {N: {w: {HR@10, NDCG@10}}}, {N: best w}). Users with LLM scores only."""
    users = [u for u in targets if u in runs and runs[u].llm is not None]
    if not users:
        raise ValueError("no validation user with LLM scores")
    table: dict[int, dict[float, dict]] = {}
    best: dict[int, float] = {}
    for n in ns:
        table[n] = {}
        for w in grid:
            m = metric_arrays([cascade_rank(runs[u], targets[u], n, w) for u in users])
            table[n][w] = {f"HR@{K}": float(m[f"HR@{K}"].mean()), f"NDCG@{K}": float(m[f"NDCG@{K}"].mean())}
        best[n] = pick_best(table[n])
    if retrieve not in table:
        raise ValueError(f"--retrieve {retrieve} is not among the evaluated N {list(ns)}")
    return best[retrieve], table, best, users


def pick_best(by_w: dict[float, dict]) -> float:
    """Highest NDCG@10, then HR@10, then the smallest w (values within 1e-12 count as equal)."""
    ws = sorted(by_w)
    top = max(by_w[w][f"NDCG@{K}"] for w in ws)
    ws = [w for w in ws if by_w[w][f"NDCG@{K}"] >= top - 1e-12]
    top_hr = max(by_w[w][f"HR@{K}"] for w in ws)
    return [w for w in ws if by_w[w][f"HR@{K}"] >= top_hr - 1e-12][0]


def latency(runs: list[UserRun]) -> dict:
    if not runs:
        return {}
    out = {"requests": len(runs), "retrieved": sorted({r.retrieved for r in runs})}
    for key, vals in (("recommend_ms", [r.recommend_ms for r in runs]),
                      ("retrieval_ms", [r.retrieval_us / 1e3 for r in runs]),
                      ("rerank_ms", [r.rerank_us / 1e3 for r in runs])):
        out[key + "_p50"] = float(np.percentile(vals, 50))
        out[key + "_p95"] = float(np.percentile(vals, 95))
        out[key + "_mean"] = float(np.mean(vals))
    return out


# ---- checks against the PyTorch teacher -------------------------------------------------------------------

def seq_check(runs: dict[str, UserRun], histories: dict[str, list[str]], teacher) -> dict:
    """Largest |device seq_score - teacher full score| over every returned item."""
    users = [u for u in histories if u in runs]
    worst, n, where = -1.0, 0, None
    for b in range(0, len(users), 256):
        us = users[b:b + 256]
        full = teacher.full_scores([histories[u] for u in us])
        for u, row in zip(us, full):
            for it in runs[u].returned:
                d = abs(float(it["seq_score"]) - float(row[teacher.tok2id[str(it["id"])]]))
                n += 1
                if d > worst or (math.isnan(d) and not math.isnan(worst)):  # NaN counts as the worst
                    worst, where = d, (u, str(it["id"]))
    worst = max(worst, 0.0) if not math.isnan(worst) else worst
    return {"max_abs_diff": worst, "items": n, "users": len(users), "worst_at": list(where) if where else None}


def teacher_catalog_ranks(teacher, histories: dict[str, list[str]], targets: dict[str, str]) -> dict[str, int]:
    """catalog_eval's protocol: candidates = the SASRec's items minus the history, ties by id."""
    from .catalog_eval import full_rank

    items = teacher.item_tokens[1:]
    users = list(histories)
    out = {}
    for b in range(0, len(users), 256):
        us = users[b:b + 256]
        full = teacher.full_scores([histories[u] for u in us])
        for u, row in zip(us, full):
            seen = set(histories[u])
            out[u] = full_rank({c: float(row[teacher.tok2id[c]]) for c in items if c not in seen}, targets[u])
    return out


def _check_seq_or_exit(runs, reqs, out: Path, tol: float, label: str) -> dict | None:
    if tol < 0:
        return None
    if not (out / "teacher" / "sasrec.pth").is_file():
        print(f"{label}: no {out / 'teacher' / 'sasrec.pth'}: the device SASRec is not checked", file=sys.stderr)
        return None
    from .teacher import load_teacher

    teacher = load_teacher(out)
    c = seq_check(runs, {q["user"]: q["history"] for q in reqs}, teacher)
    msg = (f"{label}: device SASRec vs PyTorch teacher: max |Δscore| {c['max_abs_diff']:.2e} over {c['items']} "
           f"returned items of {c['users']} users (tolerance {tol:g})")
    if not c["max_abs_diff"] <= tol:
        print(f"CHECK FAILED: {msg}; worst at user/item {c['worst_at']}", file=sys.stderr)
        raise SystemExit(1)
    print(msg, file=sys.stderr)
    c["teacher"] = teacher
    return c


# ---- commands ----------------------------------------------------------------------------------------------

def requests_path(out: Path, split: str) -> Path:
    return out / "cascade" / f"requests-{split}.jsonl"


def cmd_requests(args) -> int:
    from .data import load_dataset

    out = args.out or work_dir()
    ds = load_dataset(args.data_dir, args.name, history_len=args.history, seed=args.seed)
    users = select_users(ds.users(), args.users or None, args.seed)
    n_llm = len(users) if args.llm_users is None else min(args.llm_users, len(users))
    path = args.output or requests_path(out, args.split)
    path.parent.mkdir(parents=True, exist_ok=True)
    k = 0
    with open(path, "w", encoding="utf-8") as f:
        for j, u in enumerate(users):
            if j >= n_llm and args.llm_only:
                break
            s = ds.seqs[u]
            hist, tgt = (s[:-2], ds.valid_target(u)) if args.split == "valid" else (s[:-1], ds.test_target(u))
            q = {"user": u, "history": hist, "target": tgt, "split": args.split}
            if args.retrieve:
                q |= {"n": args.retrieve, "retrieve": args.retrieve}
            if j >= n_llm:
                q["llm_off"] = True
            f.write(json.dumps(q) + "\n")
            k += 1
    print(f"{k} {args.split} requests ({min(n_llm, k)} with the LLM) -> {path}")
    return 0


def _load_reqs(path: Path) -> list[dict]:
    reqs = read_jsonl(path)
    for q in reqs:
        q["user"] = str(q["user"])
    return reqs


def _ns(spec: str, runs: dict[str, UserRun], users: list[str]) -> list[int]:
    avail = min((len(runs[u].ids) for u in users), default=0)
    ns = sorted({int(x) for x in spec.split(",") if x.strip()})
    kept = [n for n in ns if n <= avail]
    if not kept:
        raise SystemExit(f"--ns {spec}: the results hold only {avail} items per user (run with --n N --retrieve N)")
    if kept != ns:
        print(f"N = {[n for n in ns if n > avail]} skipped: the results hold {avail} items per user", file=sys.stderr)
    return kept


def cmd_fit(args) -> int:
    out = args.out or work_dir()
    reqs = _load_reqs(args.valid_requests or requests_path(out, "valid"))
    cat = load_catalog_index(args.catalog or out / "catalog.csv")
    runs = load_runs(args.valid_results, cat)
    _check_seq_or_exit(runs, reqs, out, args.seq_tol, "validation")
    targets = {q["user"]: q["target"] for q in reqs}
    llm_users = [u for u in targets if u in runs and runs[u].llm is not None]
    bad = [u for u in llm_users if not runs[u].complete()]
    if bad:
        raise SystemExit(f"user {bad[0]}: {len(runs[bad[0]].ids)} of {runs[bad[0]].retrieved} retrieved items returned: "
                         f"run recommend with --n N --retrieve N")
    ns = _ns(args.ns, runs, llm_users)
    if args.retrieve not in ns:
        raise SystemExit(f"--retrieve {args.retrieve} must be one of the evaluated N {ns}")
    grid = parse_grid(args.grid)
    w, table, best, users = fit_weight(runs, targets, ns, grid, args.retrieve)
    seq = metric_arrays([seq_rank(runs[u], targets[u]) for u in users])
    res = {"llm_weight": w, "retrieve": args.retrieve, "metric": f"NDCG@{K}", "users": len(users),
           "grid": grid, "best_by_retrieve": {str(n): b for n, b in best.items()},
           "sasrec_valid": {k: float(v.mean()) for k, v in seq.items()},
           "valid": {str(n): {f"{x:g}": m for x, m in tw.items()} for n, tw in table.items()},
           "results": str(args.valid_results)}
    path = out / "cascade" / "fusion.json"
    write_json(path, res)
    t = table[args.retrieve]
    print(f"fitted on {len(users)} validation users: w = {w:g} at N = {args.retrieve} "
          f"(NDCG@{K} {t[w][f'NDCG@{K}']:.4f} vs SASRec {res['sasrec_valid'][f'NDCG@{K}']:.4f}, "
          f"w = {max(grid):g} {t[max(grid)][f'NDCG@{K}']:.4f}); best w per N: "
          + ", ".join(f"N={n}: {b:g}" for n, b in best.items()) + f" -> {path}", file=sys.stderr)
    print(f"{w:g}")
    return 0


def _ci_cell(c: dict | None) -> str:
    if not c:
        return ""
    return f"{c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"


def _lat_cell(lat: dict | None) -> str:
    if not lat:
        return ""
    return f"{lat['recommend_ms_p50']:.0f} / {lat['recommend_ms_p95']:.0f}"


def candidates_rows(edir: Path, teacher_scores: Path, llm_name: str, llm_file: Path, w: float,
                    n_boot: int, seed: int) -> tuple[list[tuple[str, dict]], dict]:
    """The 20-candidate protocol: teacher, LLM (runtime rank-batch scores) and both fused with w."""
    reqs = _load_reqs(edir / "requests.jsonl")
    ts = {str(r["user"]): r for r in read_jsonl(teacher_scores)}
    llm = {str(r["user"]): r for r in read_jsonl(llm_file)}
    users = [q for q in reqs if q["user"] in llm and q["user"] in ts]
    r_seq, r_llm, r_fused = [], [], []
    for q in users:
        t = ts[q["user"]]
        if t["candidates"] != q["candidates"] or t["target"] != q["target"]:
            raise SystemExit(f"{teacher_scores}: user {q['user']}: candidates differ from {edir / 'requests.jsonl'}")
        if "error" in llm[q["user"]]:
            raise SystemExit(f"{llm_file}: user {q['user']}: {llm[q['user']]['error']}")
        ls, _ = runtime_scores(llm[q["user"]], q["candidates"])
        r_seq.append(target_rank(t["scores"], q["candidates"], q["target"]))
        r_llm.append(target_rank(ls, q["candidates"], q["target"]))
        r_fused.append(target_rank(fuse(t["scores"], ls, w), q["candidates"], q["target"]))

    def per_user(ranks):
        return {"HR@1": np.array([1.0 if r <= 1 else 0.0 for r in ranks]),
                "NDCG@5": np.array([1.0 / math.log2(r + 1) if r <= 5 else 0.0 for r in ranks])}

    base = per_user(r_seq)
    rows = []
    for name, ranks in (("SASRec teacher (RecBole)", r_seq), (llm_name, r_llm),
                        (f"fused: (1 - w) z(SASRec) + w z({llm_name}), w = {w:g}", r_fused)):
        m = metrics_from_ranks(ranks)
        if ranks is not r_seq:
            pu = per_user(ranks)
            m["ΔHR@1 vs SASRec [95% CI]"] = paired_bootstrap(pu["HR@1"], base["HR@1"], n_boot, seed)
            m["ΔNDCG@5 vs SASRec [95% CI]"] = paired_bootstrap(pu["NDCG@5"], base["NDCG@5"], n_boot, seed)
        rows.append((name, m))
    return rows, {"users": len(users), "llm_file": str(llm_file)}


def cmd_score(args) -> int:
    out = args.out or work_dir()
    edir = args.eval_dir or out / "eval"
    fusion = json.loads((args.fusion or out / "cascade" / "fusion.json").read_text())
    w = float(fusion["llm_weight"])
    reqs = _load_reqs(args.test_requests or requests_path(out, "test"))
    cat = load_catalog_index(args.catalog or out / "catalog.csv")
    runs = load_runs(args.test_results, cat)
    missing = [q["user"] for q in reqs if q["user"] not in runs]
    if missing:
        raise SystemExit(f"{args.test_results}: {len(missing)} requested users missing (first {missing[0]})")
    sc = _check_seq_or_exit(runs, reqs, out, args.seq_tol, "test")
    targets = {q["user"]: q["target"] for q in reqs}
    all_users = [q["user"] for q in reqs]
    llm_users = [u for u in all_users if runs[u].llm is not None]
    ns = _ns(args.ns, runs, llm_users) if llm_users else []
    report: dict = {"llm_weight": w, "fitted_retrieve": fusion.get("retrieve"), "users": len(all_users),
                    "llm_users": len(llm_users), "k": K, "rows": [], "checks": {}}
    notes: list[str] = []

    seq_all = metric_arrays([seq_rank(runs[u], targets[u]) for u in all_users])
    seq_llm = metric_arrays([seq_rank(runs[u], targets[u]) for u in llm_users])
    off_runs = [runs[u] for u in all_users if runs[u].llm is None]
    lat_seq = latency(off_runs)
    rows: list[tuple[str, dict]] = []

    def row(name, users, m, ref=None, lat=None, extra=None):
        r = {"users": len(users), f"HR@{K}": float(m[f"HR@{K}"].mean()) if len(users) else None,
             f"NDCG@{K}": float(m[f"NDCG@{K}"].mean()) if len(users) else None}
        if ref is not None:
            for key in (f"HR@{K}", f"NDCG@{K}"):
                r[f"Δ{key} vs SASRec"] = paired_bootstrap(m[key], ref[key], args.bootstrap, args.seed)
        if lat:
            r["latency"] = lat
        r |= extra or {}
        rows.append((name, r))

    row("SASRec on device (retrieval order" + (", --llm-off)" if off_runs else ")"), all_users, seq_all, lat=lat_seq)
    teacher_row = None
    if sc is not None:
        tr = teacher_catalog_ranks(sc["teacher"], {q["user"]: q["history"] for q in reqs}, targets)
        tm = metric_arrays([tr[u] for u in all_users])
        teacher_row = {k: float(v.mean()) for k, v in tm.items()}
        row("SASRec teacher, PyTorch (same users and candidates)", all_users, tm)
        dev_hit = seq_all[f"HR@{K}"]
        differ = int(np.sum(dev_hit != tm[f"HR@{K}"]))
        report["checks"]["seq_scores"] = {k: v for k, v in sc.items() if k != "teacher"}
        report["checks"]["sasrec_hr_device_vs_pytorch"] = {"device": float(dev_hit.mean()), "pytorch": teacher_row[f"HR@{K}"],
                                                           "users_with_other_hit": differ}
        notes.append(f"Cross-check: on-device SASRec HR@{K} {dev_hit.mean():.4f} / NDCG@{K} "
                     f"{seq_all[f'NDCG@{K}'].mean():.4f} vs the PyTorch teacher {teacher_row[f'HR@{K}']:.4f} / "
                     f"{teacher_row[f'NDCG@{K}']:.4f} on the same {len(all_users)} users ({differ} users hit differently); "
                     f"seq scores max |Δ| {sc['max_abs_diff']:.1e} over {sc['items']} returned items.")
        cm = out / "catalog" / "metrics.json"
        if cm.is_file():
            cmj = json.loads(cm.read_text())
            r0 = cmj.get("rows", {}).get("SASRec teacher (RecBole)")
            if r0 and r0.get("users") == len(all_users):
                notes.append(f"catalog_eval's SASRec teacher row ({cm}): HR@{K} {r0[f'HR@{K}']:.4f}, NDCG@{K} "
                             f"{r0[f'NDCG@{K}']:.4f} ({r0['users']} users).")
    if llm_users and len(llm_users) < len(all_users):
        row(f"SASRec on device, the {len(llm_users)} LLM users", llm_users, seq_llm)

    # latency of the main run and of extra runs, by N
    lat_runs: list[tuple[int, dict, str]] = []  # (N, latency, file) of every run with the LLM
    main_llm = [runs[u] for u in llm_users]
    if main_llm:
        lat_runs.append((main_llm[0].retrieved, latency(main_llm), str(args.test_results)))
    pack_check = None
    if args.pack_results:
        pr = load_runs(args.pack_results, cat)
        pl = [r for r in pr.values() if r.llm is not None]
        pack_check = pack_weight_check(pr, w, fusion.get("retrieve"))
        report["checks"]["pack_defaults"] = pack_check
        if pl:
            lat_runs.append((pl[0].retrieved, latency(pl), str(args.pack_results)))
        if not pack_check["ok"]:
            print(f"CHECK FAILED: {args.pack_results} does not carry the fitted fusion: {pack_check}", file=sys.stderr)
            return 1
        notes.append(f"Pack defaults: {pack_check['users']} users run with the rebuilt pack's own retrieve "
                     f"(N = {pack_check['retrieved']}) and weight: every fused score equals the offline fusion with w = {w:g} "
                     f"(max |Δ| {pack_check['max_abs_diff']:.1e}), same order.")
    for f in args.latency_results:
        lr = [r for r in load_runs(f, cat).values() if r.llm is not None]
        if lr:
            lat_runs.append((lr[0].retrieved, latency(lr), str(f)))

    for n in ns:
        same_n = [x for x in lat_runs if x[0] == n]  # the run of this N with the most requests
        lat = max(same_n, key=lambda x: x[1]["requests"])[1] if same_n else None
        for label, ww in ((f"cascade N = {n}, fused (w = {w:g})", w), (f"cascade N = {n}, LLM order (w = 1)", 1.0)):
            m = metric_arrays([cascade_rank(runs[u], targets[u], n, ww) for u in llm_users])
            row(label, llm_users, m, ref=seq_llm, lat=lat)
    for spec in args.llm_alone:
        name, _, path = spec.rpartition("=")
        res = {str(r["user"]): r for r in read_jsonl(Path(path))}
        us = [u for u in all_users if u in res]
        ranks = []
        for u in us:
            if "error" in res[u]:
                raise SystemExit(f"{path}: user {u}: {res[u]['error']}")
            ids = [str(it["id"]) for it in res[u]["items"]]
            ranks.append(ids.index(targets[u]) + 1 if targets[u] in ids else None)
        ref = metric_arrays([seq_rank(runs[u], targets[u]) for u in us])
        ms = [float(res[u]["rank_ms"]) for u in us if "rank_ms" in res[u]]
        lat = {"recommend_ms_p50": float(np.percentile(ms, 50)), "recommend_ms_p95": float(np.percentile(ms, 95))} if ms else None
        row(name, us, metric_arrays(ranks), ref=ref, lat=lat)

    if args.llm_check:
        lc = llm_score_check(runs, llm_users, _load_reqs(edir / "requests.jsonl"), read_jsonl(args.llm_check))
        report["checks"]["llm_vs_rank_batch"] = lc
        if lc["pairs"]:
            notes.append(f"LLM scores in the cascade vs `rank-batch` ({args.llm_check}, 20-candidate requests, "
                         f"H = 10): max |Δ| {lc['max_abs_diff']:.2e} nats over {lc['pairs']} shared (user, item) pairs "
                         f"of {lc['users']} users (the pack's --max-history must match the LLM's training history).")

    cand = None
    spec = args.candidates_llm
    if spec is None and (edir / "runtime-f16.jsonl").is_file():
        spec = f"delrec runtime F16={edir / 'runtime-f16.jsonl'}"
    tsp = out / "teacher" / "test_scores.jsonl"
    if spec and tsp.is_file() and (edir / "requests.jsonl").is_file():
        name, _, path = spec.rpartition("=")
        cand, cinfo = candidates_rows(edir, tsp, name or "LLM", Path(path), w, args.bootstrap, args.seed)
        report["candidates20"] = {"rows": [{"name": n, **_jsonable(m)} for n, m in cand], **cinfo}

    report["rows"] = [{"name": n, **_jsonable(m)} for n, m in rows]
    report["latency_runs"] = [{"N": n, "file": f, **lat} for n, lat, f in lat_runs]
    report["notes"] = notes
    write_json(args.json_out or out / "cascade" / "report.json", report)

    print(f"Whole catalog (test split; candidates = every item except the history), top {K}. The SASRec (in the pack, "
          f"F32) retrieves N items, the LLM re-ranks them; fused = (1 - w) z(SASRec) + w z(LLM), z standardized "
          f"over the N, w = {w:g} fitted on the validation split at N = {fusion.get('retrieve')} "
          f"({fusion.get('users')} users: NDCG@{K} "
          f"{fusion['valid'][str(fusion['retrieve'])][f'{w:g}'][f'NDCG@{K}']:.4f} vs SASRec "
          f"{fusion['sasrec_valid'][f'NDCG@{K}']:.4f}). Δ: paired against the SASRec on the same users, "
          f"bootstrap 95% interval ({args.bootstrap} resamples, seed {args.seed})."
          + (f" The LLM rows use the first {len(llm_users)} of the {len(all_users)} users (the re-rank of N = "
             f"{main_llm[0].retrieved} items took {latency(main_llm)['recommend_ms_p50'] / 1e3:.1f} s per user in "
             f"this run); the SASRec rows use all." if main_llm and len(llm_users) < len(all_users) else ""))
    print()
    cols = ["users", f"HR@{K}", f"NDCG@{K}", f"ΔHR@{K} vs SASRec", f"ΔNDCG@{K} vs SASRec", "latency"]
    print("| model (whole catalog) | users | HR@10 | NDCG@10 | ΔHR@10 [95% CI] | ΔNDCG@10 [95% CI] | ms per user p50 / p95 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n, m in rows:
        cells = [str(m["users"]), f"{m[cols[1]]:.4f}", f"{m[cols[2]]:.4f}", _ci_cell(m.get(cols[3])),
                 _ci_cell(m.get(cols[4])), _lat_cell(m.get("latency"))]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print()
    if lat_runs:
        print("Latency per user (`delrec recommend`, the run's model and threads; retrieval = SASRec over the whole "
              "catalog + top N, re-rank = the LLM on the N):")
        print()
        print("| run | N | requests | total ms p50 / p95 | retrieval ms p50 / p95 | re-rank ms p50 / p95 |")
        print("|---|---:|---:|---:|---:|---:|")
        for n, lat, f in sorted(lat_runs, key=lambda x: x[0]):
            print(f"| {Path(f).name} | {n} | {lat['requests']} | {lat['recommend_ms_p50']:.0f} / {lat['recommend_ms_p95']:.0f}"
                  f" | {lat['retrieval_ms_p50']:.2f} / {lat['retrieval_ms_p95']:.2f} | "
                  f"{lat['rerank_ms_p50']:.0f} / {lat['rerank_ms_p95']:.0f} |")
        if lat_seq:
            print(f"| {Path(args.test_results).name}, --llm-off lines | {lat_seq['retrieved'][0]} | {lat_seq['requests']} | "
                  f"{lat_seq['recommend_ms_p50']:.1f} / {lat_seq['recommend_ms_p95']:.1f} | "
                  f"{lat_seq['retrieval_ms_p50']:.2f} / {lat_seq['retrieval_ms_p95']:.2f} | - |")
        print()
        print("Latency is what this run measured on this machine: with other busy processes on the same cores it "
              "includes their load.")
        no_lat = [n for n in ns if n not in {x[0] for x in lat_runs}]
        if no_lat:
            print()
            print(f"No latency for N = {', '.join(map(str, no_lat))}: those rows are recomputed from the N = "
                  f"{max(ns)} run (their latency needs runs of their own).")
        print()
    for s in notes:
        print(f"- {s}")
    if cand:
        print()
        print(f"20 candidates (target + 19 never-interacted items; eval/requests.jsonl, {report['candidates20']['users']} "
              f"users): the teacher's scores (teacher/test_scores.jsonl) and the runtime LLM's "
              f"({Path(report['candidates20']['llm_file']).name}), each standardized over the 20, fused with the same w.")
        print()
        extra = ["ΔHR@1 vs SASRec [95% CI]", "ΔNDCG@5 vs SASRec [95% CI]"]
        print("| model (20 candidates) | users | " + " | ".join(METRIC_NAMES) + " | ΔHR@1 [95% CI] | ΔNDCG@5 [95% CI] |")
        print("|---|" + "---:|" * (len(METRIC_NAMES) + 3))
        for n, m in cand:
            print(f"| {n} | {m['users']} | " + " | ".join(f"{m[c]:.4f}" for c in METRIC_NAMES) + " | "
                  + " | ".join(_ci_cell(m.get(c)) for c in extra) + " |")
    return 0


def pack_weight_check(runs: dict[str, UserRun], w: float, retrieve) -> dict:
    """A run with the pack's defaults (n = its retrieve): its fused scores must be the offline fusion with w."""
    worst, order_ok, n, complete, rets = 0.0, True, 0, True, set()
    for r in runs.values():
        if r.llm is None:
            continue
        n += 1
        rets.add(r.retrieved)
        complete &= r.complete()
        f = fuse(r.seq, r.llm, w)
        by_id = dict(zip(r.ids, f))
        worst = max([worst] + [abs(float(it["score"]) - by_id[str(it["id"])]) for it in r.returned])
        order_ok &= [r.ids[i] for i in fused_order(r.seq, r.llm, w)][:len(r.returned)] == \
            [str(it["id"]) for it in r.returned]
    ok = n > 0 and complete and worst <= 1e-9 and order_ok and (retrieve is None or rets == {int(retrieve)})
    return {"ok": bool(ok), "users": n, "retrieved": sorted(rets)[0] if rets else None, "complete": bool(complete),
            "max_abs_diff": worst, "order_equal": bool(order_ok)}


def llm_score_check(runs, llm_users, eval_reqs, rank_batch) -> dict:
    rb = {str(r["user"]): {str(it["id"]): float(it["score"]) for it in r.get("items", [])} for r in rank_batch}
    worst, pairs, users = 0.0, 0, 0
    for u in llm_users:
        if u not in rb:
            continue
        run = runs[u]
        shared = [(i, s) for i, s in zip(run.ids, run.llm) if i in rb[u]]
        users += bool(shared)
        for i, s in shared:
            worst = max(worst, abs(s - rb[u][i]))
            pairs += 1
    return {"max_abs_diff": worst, "pairs": pairs, "users": users}


def _jsonable(m: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating,)) else v) for k, v in m.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m delrec_train.cascade", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)

    def common(p):
        p.add_argument("--out", type=Path, default=None, help="work folder (default $DELREC_TRAIN_OUT or target/delrec-train)")
        p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("requests", help="recommend requests for the validation or test split")
    common(p)
    p.add_argument("--split", choices=SPLITS, required=True)
    p.add_argument("--users", type=int, default=500, help="seeded sample (the same users as evaluate); 0 = all")
    p.add_argument("--llm-users", type=int, default=None, help="the LLM only for the first K users (others: llm_off)")
    p.add_argument("--llm-only", action="store_true", help="leave out the users after --llm-users")
    p.add_argument("--retrieve", type=int, default=0, help="write n = retrieve = N into each line (0: leave both out)")
    p.add_argument("--output", type=Path, default=None, help="default DIR/cascade/requests-SPLIT.jsonl")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--name", default="ml-100k")
    p.add_argument("--history", type=int, default=10, help="the dataset's H (the requests carry every earlier item)")

    p = sub.add_parser("fit", help="fit the fusion weight on validation results")
    common(p)
    p.add_argument("--valid-results", type=Path, required=True, help="delrec recommend --json --n N --retrieve N output")
    p.add_argument("--valid-requests", type=Path, default=None, help="default DIR/cascade/requests-valid.jsonl")
    p.add_argument("--retrieve", type=int, default=50, help="the pack's N: the weight is fitted for it")
    p.add_argument("--ns", default=",".join(map(str, DEFAULT_NS)), help="N evaluated (≤ the run's N)")
    p.add_argument("--grid", default="0:1:0.05")
    p.add_argument("--catalog", type=Path, default=None, help="the pack's catalog (default DIR/catalog.csv)")
    p.add_argument("--seq-tol", type=float, default=1e-4, help="largest |device - PyTorch| SASRec score; < 0: no check")

    p = sub.add_parser("score", help="test rows, latency, checks, markdown table + JSON")
    common(p)
    p.add_argument("--test-results", type=Path, required=True)
    p.add_argument("--test-requests", type=Path, default=None, help="default DIR/cascade/requests-test.jsonl")
    p.add_argument("--fusion", type=Path, default=None, help="default DIR/cascade/fusion.json")
    p.add_argument("--pack-results", type=Path, default=None,
                   help="a run with the rebuilt pack's own retrieve and weight (--n = its retrieve): checked and timed")
    p.add_argument("--latency-results", type=Path, action="append", default=[], help="other runs, timed only")
    p.add_argument("--llm-alone", action="append", default=[], metavar="NAME=FILE",
                   help="rank-batch --json output over the whole catalog (catalog_eval requests): a row")
    p.add_argument("--llm-check", type=Path, default=None,
                   help="rank-batch output for eval/requests.jsonl with the same model file: LLM scores compared")
    p.add_argument("--candidates-llm", default=None, metavar="NAME=FILE",
                   help="runtime rank-batch output for eval/requests.jsonl (default: eval/runtime-f16.jsonl)")
    p.add_argument("--eval-dir", type=Path, default=None)
    p.add_argument("--ns", default=",".join(map(str, DEFAULT_NS)))
    p.add_argument("--catalog", type=Path, default=None)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seq-tol", type=float, default=1e-4)
    p.add_argument("--json-out", type=Path, default=None, help="default DIR/cascade/report.json")
    args = ap.parse_args(argv)
    return {"requests": cmd_requests, "fit": cmd_fit, "score": cmd_score}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
