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
