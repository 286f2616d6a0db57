"""The cascade's offline fusion (delrec_train.cascade) against hand computations and against the runtime.

The unit tests need numpy only. The end-to-end tests reuse test_seq_parity's ``trained`` fixture (a
RecBole SASRec on synthetic data, a tiny random llama GGUF, a catalog in another order than the
SASRec's rows) and need the built binaries (``cargo build --release --bins``): ``delrec recommend``
asked directly for a weight w and N' must return the order and scores recomputed offline from one
``--n N --retrieve N`` run, and the recipe's requests -> fit -> score path must run on it.
"""
import json
import math
import subprocess

import numpy as np
import pytest

from delrec_train import cascade
from delrec_train.cascade import (UserRun, cascade_rank, fit_weight, fuse, fused_order, paired_bootstrap,
                                  parse_grid, pick_best, retrieval_sort, standardize)

S = math.sqrt(1.5)  # z of (2, 1, 0) is (S, 0, -S)


def test_standardize_by_hand():
    sd = math.sqrt(3.5)  # [1, 2, 3, 6]: mean 3, population variance (4 + 1 + 0 + 9) / 4
    assert standardize([1, 2, 3, 6]) == pytest.approx([-2 / sd, -1 / sd, 0.0, 3 / sd], abs=1e-15)
    assert standardize([2.5, 2.5]) == [0.0, 0.0]
    assert standardize([7.0]) == [0.0]
    assert standardize([1.0, float("nan")]) == [0.0, 0.0]
    assert standardize([]) == []
    z = standardize([2, 1, 0])
    assert z == pytest.approx([S, 0.0, -S], abs=1e-15)


def test_fuse_by_hand_and_ties():
    # z(seq) = (S, 0, -S); llm (-1, -3, -2): mean -2, variance 2/3 -> z = (S, -S, 0)
    f = fuse([3, 2, 1], [-1, -3, -2], 0.5)
    assert f == pytest.approx([S, -S / 2, -S / 2], abs=1e-12)
    assert fused_order([3, 2, 1], [-1, -3, -2], 0.5) == [0, 1, 2]  # positions 1 and 2 tie: retrieval order
    f = fuse([3, 2, 1], [-1, -3, -2], 0.25)  # w held as float32, as in the runtime
    w = float(np.float32(0.25))
    assert f == pytest.approx([(1 - w) * S + w * S, -w * S, -(1 - w) * S], abs=1e-12)
    assert fused_order([5, 5, 5], [1, 1, 1], 0.3) == [0, 1, 2]  # all constant: z = 0, retrieval order
    assert fused_order([3, 2, 1], [1, 2, 3], 0.5) == [0, 1, 2]  # opposite orders cancel: all 0
    assert fused_order([3, 2, 1], [1, 2, 3], 0.55) == [2, 1, 0]


def test_weights_0_and_1_give_the_seq_and_the_llm_order():
    rng = np.random.default_rng(5)
    for _ in range(20):
        seq = sorted(rng.normal(size=12).tolist(), reverse=True)  # retrieval order: seq descending
        llm = rng.normal(size=12).round(1).tolist()  # rounded: ties among LLM scores
        assert fused_order(seq, llm, 0.0) == list(range(12))
        assert fused_order(seq, llm, 1.0) == sorted(range(12), key=lambda i: (-llm[i], i))


def test_top_n_prime_is_restandardized():
    seq, llm = [4.0, 3.0, 2.0, 1.0], [0.0, 1.0, 0.0, 10.0]
    # N' = 3: z over the first three only. seq (4, 3, 2) -> (S, 0, -S); llm (0, 1, 0): mean 1/3,
    # variance 2/9 -> z = (-1/sqrt(2), sqrt(2), -1/sqrt(2))
    r2 = math.sqrt(2)
    assert fuse(seq[:3], llm[:3], 0.5) == pytest.approx([(S - 1 / r2) / 2, r2 / 2, (-S - 1 / r2) / 2], abs=1e-12)
    run = UserRun("u", ["a", "b", "c", "d"], seq, llm, retrieved=4)
    assert cascade_rank(run, "b", 3, 0.5) == 1
    assert cascade_rank(run, "d", 3, 0.5) is None  # not among the 3 retrieved: a miss
    # over all 4: z(seq) = (3, 1, -1, -3) / sqrt(5); the LLM's outlier 10 squeezes the others' z together
    assert cascade_rank(run, "d", 4, 0.5) == 2 and cascade_rank(run, "b", 4, 0.5) == 3
    assert cascade_rank(run, "d", 4, 0.8) == 1
    with pytest.raises(ValueError):
        cascade_rank(run, "a", 5, 0.5)


def test_retrieval_order_ties_by_catalog_index():
    items = [{"id": "x", "seq_score": 1.0}, {"id": "y", "seq_score": 2.0}, {"id": "z", "seq_score": 1.0}]
    cat = {"z": 0, "y": 1, "x": 2}
    assert [i["id"] for i in retrieval_sort(items, cat)] == ["y", "z", "x"]


def test_parse_grid():
    g = parse_grid("0:1:0.05")
    assert len(g) == 21 and g[0] == 0.0 and g[-1] == 1.0 and g[7] == 0.35
    assert parse_grid("0,0.5,1") == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError):
        parse_grid("0:2:0.5")


def test_fit_picks_the_known_best_weight():
    # z(seq) = (S, 0, -S) for both users.
    # A: llm (0, 1, 2), target at position 2: fused = ((1-2w)S, 0, (2w-1)S) -> rank 1 iff w > 1/2 (3 at 1/2: tie).
    # B: llm (0, 2, 1), target at position 0: fused = ((1-2w)S, wS, -(1-w)S) -> rank 1 iff w < 1/3,
    #    2 while w < 2/3, then 3. Mean NDCG@10 is best (1 + 1/log2(3)) / 2 for 1/2 < w < 2/3.
    runs = {"A": UserRun("A", ["a0", "a1", "a2"], [2, 1, 0], [0, 1, 2], retrieved=3),
            "B": UserRun("B", ["b0", "b1", "b2"], [2, 1, 0], [0, 2, 1], retrieved=3)}
    targets = {"A": "a2", "B": "b0"}
    w, table, best, users = fit_weight(runs, targets, [3], parse_grid("0:1:0.05"), 3)
    assert w == 0.55 and best == {3: 0.55} and users == ["A", "B"]
    assert table[3][0.55]["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert table[3][0.5]["NDCG@10"] == pytest.approx((0.5 + 1 / math.log2(3)) / 2)
    assert table[3][0.0]["NDCG@10"] == pytest.approx(0.75)
    assert table[3][0.7]["NDCG@10"] == pytest.approx(0.75)
    assert max(table[3], key=lambda x: (table[3][x]["NDCG@10"], -x)) == 0.55
    # equal NDCG: the higher HR@10 wins, then the smaller weight
    assert pick_best({0.2: {"NDCG@10": 0.5, "HR@10": 0.5}, 0.1: {"NDCG@10": 0.5, "HR@10": 0.7},
                      0.0: {"NDCG@10": 0.4, "HR@10": 0.9}, 0.3: {"NDCG@10": 0.5, "HR@10": 0.7}}) == 0.1


def test_bootstrap_contains_the_true_difference_and_is_seeded():
    rng = np.random.default_rng(11)
    b = rng.random(600)
    a = b + rng.normal(0.2, 1.0, 600)  # true paired difference 0.2
    c = paired_bootstrap(a, b, 2000, seed=0)
    assert c["lo"] < 0.2 < c["hi"] and c["lo"] < c["diff"] < c["hi"]
    assert c["diff"] == pytest.approx(float(np.mean(a - b)))
    se = np.std(a - b) / math.sqrt(600)  # the interval is about mean ± 1.96 standard errors
    assert c["hi"] - c["lo"] == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert paired_bootstrap(a, b, 2000, seed=0) == c
    assert paired_bootstrap(a, b, 2000, seed=1) != c
    z = paired_bootstrap(b, b, 500, seed=0)
    assert z["diff"] == z["lo"] == z["hi"] == 0.0
    assert paired_bootstrap([], [], 10)["n"] == 0


# ---- against the runtime ----------------------------------------------------------------------------------

try:
    import recbole  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch, RecBole and transformers")
if HAVE_TORCH:
    from test_seq_parity import run, trained  # noqa: E402,F401  (the module-scoped fixture)
from delrec_train.export import convert_bin  # noqa: E402
from delrec_train.paths import delrec_bin  # noqa: E402

TEMPLATE = "Seen:{history}\nNext:{candidate}\n"


@pytest.fixture(scope="module")
def cpack(trained):
    ds, out, base, catalog, d = trained
    p = d / "cascade.pack.gguf"
    run(convert_bin(), "pack", "--model", base, "--catalog", catalog, "--template", TEMPLATE, "--out", p,
        "--seq-model", out / "teacher" / "sasrec.pth", "--max-history", "4", "--fusion-weight", "0.3", "--retrieve", "8")
    return p


def recommend(trained, pack, requests, *flags):
    ds, out, base, catalog, d = trained
    p = run(delrec_bin(), "recommend", "--model", base, "--pack", pack, "--requests", requests, "--threads", "1",
            "--json", *flags)
    return [json.loads(x) for x in p.stdout.splitlines()]


@needs_torch
def test_offline_fusion_equals_the_runtime(trained, cpack, tmp_path):
    ds, out, base, catalog, d = trained
    cat = cascade.load_catalog_index(catalog)
    users = ds.users()[:8]
    reqs = tmp_path / "r.jsonl"
    reqs.write_text("".join(json.dumps({"user": u, "history": ds.seqs[u][:-1]}) + "\n" for u in users))
    full = tmp_path / "full.jsonl"
    full.write_text("".join(json.dumps(r) + "\n" for r in recommend(trained, cpack, reqs, "--n", "12", "--retrieve", "12",
                                                                     "--llm-weight", "0.5")))
    runs = cascade.load_runs(full, cat)
    assert all(r.complete() and r.retrieved == 12 and r.llm is not None for r in runs.values())
    checked, llm_diff = 0, 0.0
    for w, n in [(0.0, 5), (0.3, 8), (0.5, 12), (0.7, 12), (1.0, 5), (0.85, 3)]:
        got = {str(r["user"]): r for r in recommend(trained, cpack, reqs, "--n", str(n), "--retrieve", str(n),
                                                     "--llm-weight", str(w))}
        for u in users:
            r = runs[u]
            order = fused_order(r.seq[:n], r.llm[:n], w)
            f = fuse(r.seq[:n], r.llm[:n], w)
            items = got[u]["items"]
            assert [it["id"] for it in items] == [r.ids[i] for i in order], (u, w, n)
            # the fused scores are the offline formula on the run's own scores, to rounding ...
            own = fuse([it["seq_score"] for it in items], [it["llm_score"] for it in items], w)
            assert [it["score"] for it in items] == pytest.approx(own, abs=1e-12)
            assert [it["seq_score"] for it in items] == [r.seq[i] for i in order]
            # ... and the LLM scores an item alike whatever the other retrieved items are (to ~1e-4: the
            # candidates share other trie rows and batches), so the N = 12 run predicts them closely
            llm_diff = max([llm_diff] + [abs(it["llm_score"] - r.llm[i]) for it, i in zip(items, order)])
            assert [it["score"] for it in items] == pytest.approx([f[i] for i in order], abs=1e-3)
            assert {it["id"] for it in items} == set(r.ids[:n])  # the top N' of the N
            checked += 1
    assert checked == 6 * len(users)
    print(f"max |LLM score, N' run - N = 12 run| {llm_diff:.2e}")
    assert llm_diff < 1e-3
    # the pack's own defaults (retrieve 8, w 0.3): every fused score is the offline one
    pack_run = tmp_path / "pack.jsonl"
    pack_run.write_text("".join(json.dumps(r) + "\n" for r in recommend(trained, cpack, reqs, "--n", "8")))
    chk = cascade.pack_weight_check(cascade.load_runs(pack_run, cat), 0.3, 8)
    assert chk["ok"] and chk["users"] == len(users), chk
    assert not cascade.pack_weight_check(cascade.load_runs(pack_run, cat), 0.35, 8)["ok"]
    # --llm-off: the retrieval order, no LLM score
    off = recommend(trained, cpack, reqs, "--n", "12", "--retrieve", "12", "--llm-off")
    for r in off:
        assert [it["id"] for it in r["items"]] == runs[str(r["user"])].ids
        assert all(it["llm_score"] is None for it in r["items"])


@needs_torch
def test_requests_fit_score_on_the_runtime(trained, cpack, capsys):
    """The recipe's path on the synthetic data: requests -> recommend -> fit -> score (with the checks)."""
    ds, out, base, catalog, d = trained
    common = ["--out", str(out), "--data-dir", str(d), "--name", "syn"]
    files = {}
    for split in ("valid", "test"):
        assert cascade.main(["requests", *common, "--split", split, "--users", "0", "--llm-users", "12",
                             "--retrieve", "12"]) == 0
        req = out / "cascade" / f"requests-{split}.jsonl"
        lines = [json.loads(x) for x in req.read_text().splitlines()]
        assert len(lines) == len(ds.users()) and sum(1 for q in lines if q.get("llm_off")) == len(lines) - 12
        u = lines[0]["user"]
        assert lines[0]["target"] == (ds.valid_target(u) if split == "valid" else ds.test_target(u))
        assert lines[0]["history"] == ds.seqs[u][:-2 if split == "valid" else -1]
        files[split] = out / "cascade" / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in recommend(trained, cpack, req)))
    capsys.readouterr()
    assert cascade.main(["fit", "--out", str(out), "--valid-results", str(files["valid"]), "--retrieve", "8",
                         "--ns", "5,8,12", "--catalog", str(catalog)]) == 0
    w = float(capsys.readouterr().out.strip())
    fusion = json.loads((out / "cascade" / "fusion.json").read_text())
    assert fusion["llm_weight"] == w and fusion["retrieve"] == 8 and set(fusion["valid"]) == {"5", "8", "12"}
    assert len(fusion["valid"]["8"]) == 21 and fusion["users"] == 12
    # the rebuilt pack carries w; a run with its defaults is checked by score
    p2 = d / "cascade-fitted.pack.gguf"
    run(convert_bin(), "pack", "--model", base, "--catalog", catalog, "--template", TEMPLATE, "--out", p2,
        "--seq-model", out / "teacher" / "sasrec.pth", "--max-history", "4", "--fusion-weight", str(w), "--retrieve", "8")
    assert cascade.main(["requests", *common, "--split", "test", "--users", "0", "--llm-users", "5", "--llm-only",
                         "--output", str(out / "cascade" / "requests-pack.jsonl")]) == 0
    pr = out / "cascade" / "pack.jsonl"
    pr.write_text("".join(json.dumps(r) + "\n" for r in recommend(trained, p2, out / "cascade" / "requests-pack.jsonl",
                                                                   "--n", "8")))
    # the 20-candidate protocol: rank-batch on evaluate's kind of requests
    edir = out / "eval"
    edir.mkdir(exist_ok=True)
    users = ds.users()
    with open(edir / "requests.jsonl", "w") as f:
        for u in users:
            e = ds.test_example(u)
            f.write(json.dumps({"user": u, "history": e.history, "candidates": e.candidates, "target": e.target}) + "\n")
    rb = run(delrec_bin(), "rank-batch", "--model", base, "--pack", cpack, "--requests", edir / "requests.jsonl",
             "--threads", "1")
    (edir / "runtime-f16.jsonl").write_text(rb.stdout)
    capsys.readouterr()
    assert cascade.main(["score", "--out", str(out), "--test-results", str(files["test"]), "--pack-results", str(pr),
                         "--ns", "5,8,12", "--catalog", str(catalog), "--bootstrap", "200",
                         "--llm-check", str(edir / "runtime-f16.jsonl")]) == 0
    text = capsys.readouterr().out
    rep = json.loads((out / "cascade" / "report.json").read_text())
    names = [r["name"] for r in rep["rows"]]
    assert names[0].startswith("SASRec on device") and "SASRec teacher, PyTorch (same users and candidates)" in names
    assert sum(n.startswith("cascade N = ") for n in names) == 6
    assert rep["checks"]["seq_scores"]["max_abs_diff"] < 1e-4
    assert rep["checks"]["pack_defaults"]["ok"]
    # same retrieval, same candidates: the device SASRec's hits are PyTorch's
    hr = rep["checks"]["sasrec_hr_device_vs_pytorch"]
    assert hr["users_with_other_hit"] == 0 and hr["device"] == hr["pytorch"]
    # the template keeps the last 4 history items in both runs, so the LLM scores agree
    assert rep["checks"]["llm_vs_rank_batch"]["pairs"] > 0 and rep["checks"]["llm_vs_rank_batch"]["max_abs_diff"] < 1e-3
    c20 = rep["candidates20"]
    assert c20["users"] == len(users) and len(c20["rows"]) == 3
    assert "| model (whole catalog) |" in text and "| model (20 candidates) |" in text
    # a broken seq score fails the check
    bad = out / "cascade" / "bad.jsonl"
    rows = [json.loads(x) for x in files["test"].read_text().splitlines()]
    rows[0]["items"][0]["seq_score"] += 1e-3
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit) as e:
        cascade.main(["score", "--out", str(out), "--test-results", str(bad), "--ns", "5", "--catalog", str(catalog)])
    assert e.value.code == 1
