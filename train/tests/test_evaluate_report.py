import json

import numpy as np

from conftest import write_items
from delrec_train import evaluate, report


def synth(d, n_users=12):
    write_items(d / "syn.item", 60)
    rng = np.random.default_rng(1)
    with open(d / "syn.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(1, n_users + 1):
            for k, i in enumerate(rng.choice(np.arange(1, 61), 8, replace=False)):
                f.write(f"{u}\t{i}\t{k}\n")


def test_cheap_rows_requests_and_report(tmp_path, capsys):
    synth(tmp_path)
    out = tmp_path / "w"
    assert evaluate.main(["--data-dir", str(tmp_path), "--name", "syn", "--out", str(out), "--users", "10",
                          "--rows", "random,pop", "--no-progress"]) == 0
    e = out / "eval"
    reqs = [json.loads(x) for x in (e / "requests.jsonl").read_text().splitlines()]
    assert len(reqs) == 10
    for q in reqs:
        assert set(q) == {"user", "history", "candidates", "target"}
        assert q["target"] in q["candidates"] and len(q["candidates"]) == 20 and len(q["history"]) <= 10
    scores = [json.loads(x) for x in (e / "scores.jsonl").read_text().splitlines()]
    assert [s["user"] for s in scores] == [q["user"] for q in reqs]
    assert set(scores[0]["rows"]) == {"random", "pop"}
    m = json.loads((e / "metrics.json").read_text())
    assert m["rows"]["pop"]["users"] == 10
    # a fake runtime answer for 4 users: the target ranked first -> HR@1 = 1, and the "same users" rows
    with open(tmp_path / "rt.jsonl", "w") as f:
        for q in reqs[:4]:
            items = [{"id": c, "score": 0.0 if c == q["target"] else -1.0 - j, "n_tokens": 3}
                     for j, c in enumerate(q["candidates"])]
            f.write(json.dumps({"user": q["user"], "items": items, "rank_ms": 5.0}) + "\n")
    capsys.readouterr()
    assert report.main(["--eval-dir", str(e), "--runtime", f"fake={tmp_path / 'rt.jsonl'}", "--compare-row", "pop"]) == 0
    table = capsys.readouterr().out
    fake = [ln for ln in table.splitlines() if ln.startswith("| fake |")][0]
    assert "| 4 | 1.0000 |" in fake
    assert "Random, same users | 4 |" in table
    # resume keeps finished rows
    assert evaluate.main(["--data-dir", str(tmp_path), "--name", "syn", "--out", str(out), "--users", "10",
                          "--rows", "random,pop", "--resume", "--no-progress"]) == 0
    assert json.loads((e / "metrics.json").read_text())["rows"]["pop"] == m["rows"]["pop"]


def test_report_check_compares_runtime_with_pytorch_row(tmp_path, capsys):
    synth(tmp_path)
    out = tmp_path / "w"
    assert evaluate.main(["--data-dir", str(tmp_path), "--name", "syn", "--out", str(out), "--users", "10",
                          "--rows", "random,pop", "--no-progress"]) == 0
    e = out / "eval"
    reqs = [json.loads(x) for x in (e / "requests.jsonl").read_text().splitlines()]
    scores = {s["user"]: s for s in map(json.loads, (e / "scores.jsonl").read_text().splitlines())}

    def runtime(path, noise):
        with open(path, "w") as f:
            for q in reqs:
                ref = scores[q["user"]]["rows"]["random"]["scores"]
                items = [{"id": c, "score": s + noise * (-1) ** j} for j, (c, s) in enumerate(zip(q["candidates"], ref))]
                f.write(json.dumps({"user": q["user"], "items": sorted(items, key=lambda it: -it["score"])}) + "\n")

    runtime(tmp_path / "same.jsonl", 0.0)
    runtime(tmp_path / "off.jsonl", 0.3)
    args = ["--eval-dir", str(e), "--compare-row", "random", "--max-points", "1"]
    assert report.main(args + ["--runtime", f"rt={tmp_path / 'same.jsonl'}", "--check", "rt"]) == 0
    assert "CHECK ok" in capsys.readouterr().out
    assert report.main(args + ["--runtime", f"rt={tmp_path / 'off.jsonl'}", "--check", "rt"]) == 1
    assert "CHECK FAILED" in capsys.readouterr().err
    assert report.main(args + ["--runtime", f"rt={tmp_path / 'same.jsonl'}", "--check", "other"]) == 1


def test_catalog_eval_protocol(tmp_path, capsys):
    from delrec_train import catalog_eval
    from delrec_train.data import load_dataset

    synth(tmp_path)
    ds = load_dataset(tmp_path, "syn")
    from delrec_train.util import select_users

    reqs = catalog_eval.user_requests(ds, select_users(ds.users(), 3, 0))
    pool = set(ds.item_pool())
    for q in reqs:
        seq = ds.seqs[q["user"]]
        assert q["target"] == seq[-1] and q["target"] in q["candidates"]
        assert set(q["candidates"]) == pool - set(seq[:-1]) and q["top_k"] == 10
    assert catalog_eval.full_rank({"a": 1.0, "b": 2.0, "c": 1.0}, "c") == 3  # tie: "a" sorts first
    assert catalog_eval.hr_ndcg(1) == (1.0, 1.0) and catalog_eval.hr_ndcg(11) == (0.0, 0.0)
    assert catalog_eval.hr_ndcg(None) == (0.0, 0.0) and abs(catalog_eval.hr_ndcg(3)[1] - 0.5) < 1e-12
    # runtime output: target 2nd for the first user, absent for the second; third user missing
    res = [{"user": reqs[0]["user"], "items": [{"id": "x"}, {"id": reqs[0]["target"]}], "rank_ms": 4.0},
           {"user": reqs[1]["user"], "items": [{"id": "x"}], "rank_ms": 6.0}]
    pairs, ms, extra = catalog_eval.runtime_pairs(reqs, res)
    assert pairs == [(1.0, 1 / np.log2(3)), (0.0, 0.0)] and ms == [4.0, 6.0] and extra["rank_ms_mean"] == 5.0
    (tmp_path / "rt.jsonl").write_text("\n".join(json.dumps(r) for r in res) + "\n")
    out = tmp_path / "w"
    assert catalog_eval.main(["score", "--data-dir", str(tmp_path), "--name", "syn", "--out", str(out),
                              "--users", "3", "--llm-users", "3", "--runtime", f"rt={tmp_path / 'rt.jsonl'}"]) == 0
    m = json.loads((out / "catalog" / "metrics.json").read_text())
    assert m["rows"]["rt"]["users"] == 2 and m["rows"]["Most popular (train split)"]["users"] == 3
    assert "sasrec" not in json.dumps(m).lower()  # no teacher in this work dir: no teacher row
