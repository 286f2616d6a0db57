"""Side-by-side markdown table of the PyTorch rows and runtime results.

    python -m delrec_train.report [--eval-dir DIR/eval] [--runtime "delrec Q4_1=runtime.jsonl" ...]
        [--compare-row llm_soft]

Runtime files are ``delrec rank-batch --json`` outputs for ``DIR/eval/requests.jsonl``; their
metrics are computed with the same tie rule, plus top-1 agreement with the PyTorch row and the
largest metric difference from it in points (x100) on the same users.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .metrics import METRIC_NAMES, evaluate_runtime, load_scores, metrics_from_ranks, target_rank
from .paths import work_dir
from .util import read_jsonl, write_json


def format_table(rows: list[tuple[str, dict]], extra: list[str] = ()) -> str:
    cols = ["users"] + METRIC_NAMES + list(extra)
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, m in rows:
        cells = []
        for c in cols:
            v = m.get(c)
            cells.append("" if v is None else (str(v) if isinstance(v, int) else f"{v:.4f}" if isinstance(v, float) else str(v)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m delrec_train.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-dir", type=Path, default=None)
    ap.add_argument("--runtime", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument("--compare-row", default="llm_soft")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--check", default=None, metavar="NAME",
                    help="runtime row that must match --compare-row (exit 1 otherwise; e.g. the F16 one)")
    ap.add_argument("--max-score-diff", type=float, default=0.05,
                    help="--check: largest allowed mean |runtime score - PyTorch score| in nats")
    ap.add_argument("--max-points", type=float, default=None,
                    help="--check: largest allowed |metric difference| x100 (not checked when omitted)")
    args = ap.parse_args(argv)
    edir = args.eval_dir or work_dir() / "eval"
    with open(edir / "metrics.json", encoding="utf-8") as f:
        m = json.load(f)
    rows = [(v.get("label", k), v) for k, v in m["rows"].items()]
    extra = []
    if args.runtime:
        reqs = read_jsonl(edir / "requests.jsonl")
        scores = load_scores(edir / "scores.jsonl")
        has_row = any(args.compare_row in r["rows"] for r in scores.values())
        agree_key = f"top1_agreement_vs_{args.compare_row}"
        run_users = set()
        specs = []
        for spec in args.runtime:
            name, _, path = spec.rpartition("=")
            if not name:
                name, path = Path(spec).stem, spec
            res = read_jsonl(Path(path))
            specs.append((name, res))
            run_users |= {str(r["user"]) for r in res}
        common = [u for u in scores if u in run_users]
        if len(common) < len(scores):  # PyTorch rows again on exactly the runtime's users
            for key, lab in [(k, v.get("label", k)) for k, v in m["rows"].items()]:
                ranks = [target_rank(scores[u]["rows"][key]["scores"], scores[u]["candidates"], scores[u]["target"])
                         for u in common if key in scores[u]["rows"]]
                if ranks:
                    rows.append((f"{lab}, same users", metrics_from_ranks(ranks)))
        for name, res in specs:
            users = {str(r["user"]) for r in res}
            sub = [q for q in reqs if str(q["user"]) in users]
            rm = evaluate_runtime(sub, res, scores if has_row else None, args.compare_row if has_row else None)
            if has_row:
                ref = metrics_from_ranks([target_rank(scores[str(q["user"])]["rows"][args.compare_row]["scores"],
                                                      q["candidates"], q["target"])
                                          for q in sub if str(q["user"]) in scores])
                rm["max_abs_diff_points"] = max(abs(rm[k] - ref[k]) * 100 for k in METRIC_NAMES)
            rows.append((name, rm))
        extra = [c for c in (agree_key, "max_abs_diff_points", "score_absdiff_mean", "rank_ms_mean")
                 if any(c in r for _, r in rows)]
    print(format_table(rows, extra))
    if args.json_out:
        write_json(args.json_out, {"rows": [{"name": n, **m} for n, m in rows], "compare_row": args.compare_row})
    return check(dict(rows), args) if args.check else 0


def check(rows: dict[str, dict], args) -> int:
    m = rows.get(args.check)
    if m is None or "score_absdiff_mean" not in m:
        print(f"\nCHECK FAILED: no runtime row {args.check!r} compared with {args.compare_row}", file=sys.stderr)
        return 1
    problems = []
    if not m["score_absdiff_mean"] <= args.max_score_diff:
        problems.append(f"mean |score diff| {m['score_absdiff_mean']:.4f} nats > {args.max_score_diff}")
    if args.max_points is not None and not m["max_abs_diff_points"] <= args.max_points:
        problems.append(f"metrics differ by {m['max_abs_diff_points']:.2f} points > {args.max_points}")
    if m.get("missing_users"):
        problems.append(f"{m['missing_users']} users missing from the runtime output")
    what = f"{args.check} vs {args.compare_row}: mean |score diff| {m['score_absdiff_mean']:.4f} nats, " \
           f"metrics within {m['max_abs_diff_points']:.2f} points"
    if problems:
        print(f"\nCHECK FAILED ({what}): " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"\nCHECK ok: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
