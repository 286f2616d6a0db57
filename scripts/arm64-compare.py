#!/usr/bin/env python3
"""Rankings of the aarch64 `delrec` (under qemu-aarch64) against the host x86-64 one.

Both CLIs rank the same requests over the same files (models and packs converted once by the
host's `delrec-convert`; the aarch64 converter's outputs are hashed against them too). For every
model type and engine setting it reports max |Δ score| and max |Δ logprob| per request, whether the
orders are identical, and (when they differ) whether every swapped pair is a near tie (score gap
within the tolerance). Exits non-zero when a |Δ| exceeds the tolerance (see `tolerance`) or an
order differs beyond a near tie.

  python3 scripts/arm64-compare.py --x86 target/release --arm target/aarch64-unknown-linux-gnu/qemu-bin \
      --fixtures target/fixtures --work target/arm64-compare --report target/reports/arm64-compare.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

TEMPLATE = "{soft:default}Recently watched:{history}.\nNext:{candidate}\n"
# (model fixture, tokenizer, soft prompt) per case; llama-wide (hidden 256) also takes the K-quants.
MODELS = {
    "llama-tiny": ("tokenizer-gpt2", "prompt-llama"),
    "llama-wide": ("tokenizer-gpt2", "prompt-llama-wide"),
}
HISTORIES = [
    ["m001", "m006", "m011", "m009"],
    ["m002"],
    ["m024", "m027", "m028", "m031", "m032", "m036"],
    ["m040", "m042", "m003"],
    ["m010", "m012", "m004", "m007", "m008"],
]
CANDIDATES = ["m002", "m003", "m004", "m007", "m008", "m010", "m012", "m024", "m027",
              "m028", "m031", "m032", "m036", "m040", "m042"]
ENGINES = {"default": [], "exact": ["--kv", "f32", "--no-flash-attn"]}


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(argv, what):
    argv = [str(a) for a in argv]
    t0 = time.time()
    p = subprocess.run(argv, capture_output=True, timeout=1800)
    if p.returncode != 0:
        sys.exit(f"{what} failed (rc={p.returncode}): {argv}\n{p.stderr.decode(errors='replace')[-3000:]}")
    return p.stdout, time.time() - t0


def catalog_ids(fixtures: Path) -> list[str]:
    ids = []
    for line in (fixtures / "catalog.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            ids.append(json.loads(line)["id"])
    return ids


def tolerance(ty: str, engine: str, args) -> tuple[float, float]:
    """(absolute, per scored token) bound on |Δ| of an item's summed log-prob. F32 weights on the
    exact path (F32 KV, classic attention) stay in F32 end to end: only summation order differs.
    Every other path rounds through F16 or 8/4-bit somewhere (F16 KV and flash attention's F16
    accumulation; F16 weights, whose x86 AVX2 kernel rounds the activations to F16 while armv8-a
    NEON multiplies them in F32 and FP16-arithmetic NEON accumulates in F16; quantized
    activations), so a last-bit difference upstream can flip one rounding: bounded per token by
    the parity suite's F16 logit tolerance. Quantized types (q*): none; the x86 and ARM kernels
    are different approximations (activation quantization, repacked layouts) whose differences
    stay below each type's own error against the F32 reference, which the parity suite bounds by
    Kendall tau: reported here (with tau between the platforms), not judged."""
    if ty.startswith("q"):
        return float("inf"), 0.0
    if ty == "f32" and engine == "exact":
        return args.tol_exact, 0.0
    return 0.0, args.tol_token


def kendall(a, b) -> float:
    """Kendall tau-b of two equally indexed score lists."""
    s = na = nb = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da = (a[i] > a[j]) - (a[i] < a[j])
            db = (b[i] > b[j]) - (b[i] < b[j])
            s += da * db
            na += da != 0
            nb += db != 0
    return s / (na * nb) ** 0.5 if na and nb else float("nan")


def compare(x, a, tol):
    """x, a: `delrec rank --json` outputs; tol: (absolute, per token). The per-request record."""
    xi, ai = x["items"], a["items"]
    xo, ao = [i["id"] for i in xi], [i["id"] for i in ai]
    xs = {i["id"]: i for i in xi}
    asd = {i["id"]: i for i in ai}
    same_set = set(xo) == set(ao)
    common = [k for k in xo if k in asd]
    abs_tol, tok_tol = tol
    bound = {k: abs_tol + tok_tol * xs[k]["n_tokens"] for k in common}
    within = all(abs(xs[k]["logprob"] - asd[k]["logprob"]) <= bound[k] for k in common)
    d_score = max((abs(xs[k]["score"] - asd[k]["score"]) for k in common), default=0.0)
    d_lp = max((abs(xs[k]["logprob"] - asd[k]["logprob"]) for k in common), default=0.0)
    tokens_equal = all(xs[k]["n_tokens"] == asd[k]["n_tokens"] for k in common)
    # Pairs ordered one way by x86 and the other by aarch64: each must be a near tie on x86.
    pos = {k: n for n, k in enumerate(ao)}
    swapped = []
    for m in range(len(common)):
        for n in range(m + 1, len(common)):
            p, q = common[m], common[n]
            if pos[p] > pos[q]:
                swapped.append((p, q, abs(xs[p]["score"] - xs[q]["score"])))
    return {
        "n": len(xo),
        "same_ids": same_set,
        "same_order": xo == ao,
        "max_abs_dscore": d_score,
        "max_abs_dlogprob": d_lp,
        "n_tokens_equal": tokens_equal,
        "swapped_pairs": [{"a": p, "b": q, "x86_gap": g} for p, q, g in swapped],
        "within_tolerance": within,
        "kendall_tau": kendall([xs[k]["score"] for k in common], [asd[k]["score"] for k in common]),
        "ok": same_set and tokens_equal and within and all(g <= bound[p] + bound[q] for p, q, g in swapped),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--x86", type=Path, required=True, help="directory with the host delrec, delrec-convert")
    ap.add_argument("--arm", type=Path, required=True, help="directory with the aarch64 ones (or qemu wrappers)")
    ap.add_argument("--fixtures", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--types", default="f32,f16,q8_0,q4_0,q4_k_m")
    ap.add_argument("--tol-exact", type=float, default=1e-4,
                    help="max |Δ| of an item's summed log-prob (nats), F32 weights on the exact path")
    ap.add_argument("--tol-token", type=float, default=2e-2,
                    help="max |Δ| per scored token on paths that round through F16 or quantize")
    ap.add_argument("--quick", action="store_true", help="one model type, two requests, default engine")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--histories", type=int, default=3, help="how many candidate-list requests")
    ap.add_argument("--label", default="", help="names the aarch64 build/CPU in the report")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    types = args.types.split(",")
    histories = HISTORIES[: args.histories]
    engines = {e: ENGINES[e] for e in args.engines.split(",")}
    if args.quick:
        types, histories, engines = ["q8_0"], HISTORIES[:1], {"default": []}
    ids = catalog_ids(args.fixtures)
    report = {"label": args.label, "tolerance": {"f32_exact_abs": args.tol_exact, "per_token": args.tol_token},
              "cases": [], "converter": []}
    t_x86 = t_arm = 0.0
    failed = False
    for model in args.models.split(","):
        tok, peft = MODELS[model]
        for ty in types:
            if ty == "q4_k_m" and model != "llama-wide":
                continue  # K-quants need rows of 256
            gg = args.work / f"{model}.{ty}.gguf"
            pk = args.work / f"{model}.{ty}.pack.gguf"
            if not gg.exists():
                run([args.x86 / "delrec-convert", "model", "--hf", args.fixtures / model, "--out", gg,
                     "--outtype", ty], "x86 convert model")
            if not pk.exists():
                run([args.x86 / "delrec-convert", "pack", "--model", gg,
                     "--tokenizer", args.fixtures / tok / "tokenizer.json", "--catalog", args.fixtures / "catalog.csv",
                     "--soft-prompt", f"default={args.fixtures / peft}", "--template", TEMPLATE, "--out", pk],
                    "x86 convert pack")
            if not args.quick and (args.arm / "delrec-convert").exists():
                # The aarch64 converter on the same input: byte-identical output expected.
                ag = args.work / f"{model}.{ty}.arm.gguf"
                run([args.arm / "delrec-convert", "model", "--hf", args.fixtures / model, "--out", ag,
                     "--outtype", ty], "aarch64 convert model")
                same = sha256(ag) == sha256(gg)
                report["converter"].append({"model": model, "type": ty, "identical": same})
                print(f"converter {model} {ty}: aarch64 output {'==' if same else '!='} x86 output")
            for eng, eflags in engines.items():
                reqs = [(",".join(h), ["--candidates", ",".join(c for c in CANDIDATES if c not in h)],
                         "candidates") for h in histories]
                reqs.append((",".join(histories[0]), ["--top-k", str(len(ids))], "catalog"))
                if not args.quick:
                    reqs.append((",".join(histories[-1]), ["--top-k", "5", "--exclude-history"], "catalog-top5"))
                for hist, extra, kind in reqs:
                    argv = ["rank", "--model", gg, "--pack", pk, "--history", hist, *extra, *eflags,
                            "--threads", "2", "--json"]
                    xo, tx = run([args.x86 / "delrec", *argv], "x86 delrec rank")
                    ao, ta = run([args.arm / "delrec", *argv], "aarch64 delrec rank")
                    t_x86 += tx
                    t_arm += ta
                    rec = compare(json.loads(xo), json.loads(ao), tolerance(ty, eng, args))
                    rec.update({"model": model, "type": ty, "engine": eng, "request": kind, "history": hist,
                                "x86_s": round(tx, 3), "arm_s": round(ta, 3)})
                    report["cases"].append(rec)
                    failed |= not rec["ok"]
                    print(f"{model:10} {ty:6} {eng:7} {kind:12} n={rec['n']:2} order={'same' if rec['same_order'] else 'DIFF'}"
                          f" max|dscore|={rec['max_abs_dscore']:.2e} max|dlogprob|={rec['max_abs_dlogprob']:.2e}"
                          f" swapped={len(rec['swapped_pairs'])} tau={rec['kendall_tau']:.4f}"
                          f" {'ok' if rec['ok'] else 'FAIL'}{' (not judged)' if ty.startswith('q') else ''}"
                          f" ({tx:.2f}s x86, {ta:.2f}s aarch64)")
    cases = report["cases"]
    report["summary"] = {
        "n_rankings": len(cases),
        "all_orders_identical": all(c["same_order"] for c in cases),
        "max_abs_dscore": max(c["max_abs_dscore"] for c in cases),
        "max_abs_dlogprob": max(c["max_abs_dlogprob"] for c in cases),
        "max_abs_dscore_by_type_engine": {f"{t}/{e}": max(c["max_abs_dscore"] for c in cases
                                                          if c["type"] == t and c["engine"] == e)
                                          for t in sorted({c["type"] for c in cases})
                                          for e in sorted({c["engine"] for c in cases})
                                          if any(c["type"] == t and c["engine"] == e for c in cases)},
        "converter_identical": all(c["identical"] for c in report["converter"]) if report["converter"] else None,
        "x86_rank_seconds": round(t_x86, 2),
        "aarch64_rank_seconds": round(t_arm, 2),
        "ok": not failed,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["summary"], indent=2))
    print(f"report: {args.report}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
