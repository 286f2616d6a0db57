"""`delrec rank` scores == naive numpy reference (one full forward per candidate).

F32: per-candidate summed log-prob (`logprob`, or `score`) and mean within 1e-3 (llama-tiny, qwen2-tiny, each with a soft prompt).
Quantized llama-wide: Kendall tau between reference and runtime scores (>= 30 candidates),
written to $DELREC_REPORT_DIR/rank-kendall-<outtype>.json before asserting.
"""

import platform

import numpy as np
import pytest

import parity_util as pu

pytestmark = pytest.mark.requires_binaries

TOL = 1e-3

HISTORY = ["m001", "m006", "m011", "m009"]
# shared prefixes (Star Wars / Toy Story / Godfather), commas, quotes, CJK, Cyrillic, Greek,
# emoji, a one-letter title and a title that extends another one
CANDIDATES = ["m002", "m003", "m004", "m007", "m008", "m010", "m012", "m024", "m027",
              "m028", "m031", "m032", "m036", "m040", "m042"]

F32_CASES = {
    "llama-tiny": ("llama-tiny", "tokenizer-gpt2", "prompt-llama", pu.DEFAULT_TEMPLATE),
    # soft prompt in the middle of the template
    "qwen2-tiny": ("qwen2-tiny", "tokenizer-qwen2", "prompt-qwen2",
                   "Recently watched:{history}.\n{soft:default}Next:{candidate}\n"),
}

KENDALL_FLOORS = {"q8_0": 0.95, "q4_k_m": 0.90}

# F32 parity needs an F32 KV cache and classic attention end to end (the engine defaults to an F16
# cache and flash attention, whose CPU kernel accumulates in F16).
F32_ENGINE_ARGS = ["--kv", "f32", "--no-flash-attn"]


def reference_scores(ref_model, ref_tokenizer, fixtures_dir, catalog, model, tok_dir, peft, template,
                     history, candidates, settings):
    m = ref_model(model)
    softs = {"default": pu.ref.load_soft_prompt(str(fixtures_dir / peft))}
    res = pu.ref.score_candidates(m, ref_tokenizer(tok_dir), catalog, template, softs, history, candidates,
                                  item_prefix=settings["item_prefix"], history_sep=settings["history_sep"],
                                  add_bos=bool(settings["add_bos"]))
    return {r["id"]: r for r in res}


def ranking_key(out) -> str:
    """Items must come best first. With a reported scoring mode ("sum"/"mean") the item `score`
    must be that quantity; otherwise accept ranking by the sum or by the mean.
    Returns the reference key ("score" = sum, or "mean") the ranking follows."""
    items = out["items"]
    mode = out.get("scoring")
    if mode is not None:
        assert mode in ("sum", "mean"), f"unknown scoring mode {mode!r}"
        for it in items:
            want = float(it["mean"]) if mode == "mean" else pu.item_logprob(it)
            assert abs(float(it["score"]) - want) < 1e-9, f"scoring={mode} but item score != {mode}: {it}"
        keys = [("score", "sum" if mode == "sum" else "mean")]
    else:
        keys = [("logprob" if items and "logprob" in items[0] else "score", "sum"), ("mean", "mean")]
    for field, kind in keys:
        v = [float(it[field]) for it in items]
        if all(a >= b for a, b in zip(v, v[1:])):
            return "score" if kind == "sum" else "mean"
    pytest.fail(f"rank items are not sorted best first (scoring={mode}): "
                + ", ".join(f"{it['id']}:{pu.item_logprob(it):.4f}/{float(it['mean']):.4f}" for it in items),
                pytrace=False)


def check_items_shape(items, candidates, catalog):
    ids = [it.get("id") for it in items]
    assert len(ids) == len(set(ids)), f"duplicate ids in rank output: {ids}"
    assert set(ids) == set(candidates), f"rank returned {sorted(ids)}, asked for {sorted(candidates)}"
    for it in items:
        for k in ("id", "title", "score", "n_tokens", "mean"):
            assert k in it, f"item without `{k}`: {it}"
        assert it["title"] == catalog[it["id"]]["title"], f"title mismatch for {it['id']}: {it['title']!r}"


@pytest.mark.parametrize("case", sorted(F32_CASES))
def test_f32_rank_scores_match_reference(case, bins, gguf, pack, ref_model, ref_tokenizer, fixtures_dir, catalog):
    model, tok_dir, peft, template = F32_CASES[case]
    mg = gguf(model, "f32")
    pk = pack(mg, tok_dir, "default", peft, template)
    out = pu.runtime_rank(bins, mg, pk, HISTORY, CANDIDATES, len(CANDIDATES), F32_ENGINE_ARGS)
    items = out["items"]
    check_items_shape(items, CANDIDATES, catalog)
    ranking_key(out)

    settings = pu.engine_settings(out)
    exp = reference_scores(ref_model, ref_tokenizer, fixtures_dir, catalog, model, tok_dir, peft, template,
                           HISTORY, CANDIDATES, settings)
    bad = []
    for it in items:
        e = exp[it["id"]]
        lp = pu.item_logprob(it)
        if (it["n_tokens"] != e["n_tokens"] or abs(lp - e["score"]) >= TOL
                or abs(it["mean"] - e["mean"]) >= TOL):
            bad.append(f"  {it['id']} {it['title']!r}: runtime logprob={lp:.6f} n={it['n_tokens']} "
                       f"mean={it['mean']:.6f} | reference score={e['score']:.6f} n={e['n_tokens']} "
                       f"mean={e['mean']:.6f}")
    assert not bad, (f"{len(bad)}/{len(items)} candidates differ (settings {settings}):\n" + "\n".join(bad))


@pytest.mark.parametrize("case", sorted(F32_CASES))
def test_f32_rank_top_k(case, bins, gguf, pack, ref_model, ref_tokenizer, fixtures_dir, catalog):
    model, tok_dir, peft, template = F32_CASES[case]
    mg = gguf(model, "f32")
    pk = pack(mg, tok_dir, "default", peft, template)
    full = pu.runtime_rank(bins, mg, pk, HISTORY, CANDIDATES, len(CANDIDATES), F32_ENGINE_ARGS)
    key = ranking_key(full)
    top = pu.runtime_rank(bins, mg, pk, HISTORY, CANDIDATES, 3, F32_ENGINE_ARGS)["items"]
    assert len(top) == 3, f"--top-k 3 returned {len(top)} items"
    assert [it["id"] for it in top] == [it["id"] for it in full["items"][:3]], \
        "top-3 differs from the first 3 of the full ranking"
    exp = reference_scores(ref_model, ref_tokenizer, fixtures_dir, catalog, model, tok_dir, peft, template,
                           HISTORY, CANDIDATES, pu.engine_settings(full))
    ref_sorted = sorted(exp.values(), key=lambda r: -r[key])
    fourth = ref_sorted[3][key]
    for it in top:
        assert exp[it["id"]][key] >= fourth - 2 * TOL, \
            f"{it['id']} is in runtime top-3 but reference ranks it lower ({[r['id'] for r in ref_sorted[:4]]})"


@pytest.mark.parametrize("outtype", sorted(KENDALL_FLOORS))
def test_quantized_rank_kendall(outtype, bins, gguf, pack, ref_model, ref_tokenizer, fixtures_dir, catalog):
    model, tok_dir, peft, template = "llama-wide", "tokenizer-gpt2", "prompt-llama-wide", pu.DEFAULT_TEMPLATE
    candidates = [c for c in catalog if c not in HISTORY]
    assert len(candidates) >= 30
    mg = gguf(model, outtype)
    pk = pack(mg, tok_dir, "default", peft, template)
    out = pu.runtime_rank(bins, mg, pk, HISTORY, candidates, len(candidates))
    items = out["items"]
    check_items_shape(items, candidates, catalog)
    ranking_key(out)
    settings = pu.engine_settings(out)
    exp = reference_scores(ref_model, ref_tokenizer, fixtures_dir, catalog, model, tok_dir, peft, template,
                           HISTORY, candidates, settings)
    got = {it["id"]: it for it in items}
    r = np.array([exp[c]["score"] for c in candidates])
    g = np.array([pu.item_logprob(got[c]) for c in candidates])
    rm = np.array([exp[c]["mean"] for c in candidates])
    gm = np.array([got[c]["mean"] for c in candidates])
    tau = pu.kendall_tau_b(r, g)
    report = {
        "model": model,
        "outtype": outtype,
        "n_candidates": len(candidates),
        "kendall_tau_logprob": tau,
        "kendall_tau_mean": pu.kendall_tau_b(rm, gm),
        "spearman_score": pu.spearman(r, g),
        "max_abs_score_diff": float(np.abs(r - g).max()),
        "n_tokens_mismatch": [c for c in candidates if exp[c]["n_tokens"] != got[c]["n_tokens"]],
        "settings": settings,
        "floor": KENDALL_FLOORS[outtype],
        "host": platform.machine(),
    }
    path = pu.write_report(f"rank-kendall-{outtype}.json", report)
    print(f"\n[{model} {outtype}] kendall_tau={tau:.4f} (mean-normalized {report['kendall_tau_mean']:.4f}) "
          f"max|dscore|={report['max_abs_score_diff']:.4f} -> {path}")
    assert not report["n_tokens_mismatch"], f"token counts differ for {report['n_tokens_mismatch']}"
    assert tau >= KENDALL_FLOORS[outtype], f"{outtype}: Kendall tau {tau:.4f} < {KENDALL_FLOORS[outtype]}"
