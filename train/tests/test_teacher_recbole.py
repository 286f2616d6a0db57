"""End-to-end RecBole teacher on a small synthetic dataset (skipped when RecBole is not installed)."""
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("recbole")

from delrec_train import teacher  # noqa: E402
from delrec_train.data import load_dataset  # noqa: E402


def test_teacher_end_to_end(synth, tmp_path):
    out = tmp_path / "work"
    rc = teacher.main(["--data-dir", str(synth), "--name", "syn", "--out", str(out), "--epochs", "2", "--hidden", "16",
                       "--batch-size", "64", "--threads", "1", "--device", "cpu", "--train-per-user", "2"])
    assert rc == 0
    ds = load_dataset(synth, "syn")
    m = json.loads((out / "teacher" / "metrics.json").read_text())
    assert m["epochs_run"] == 2 and "hit@10" in m["test_full_ranking"]
    rows = [json.loads(x) for x in (out / "teacher" / "test_scores.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    for r in rows:
        e = ds.test_example(r["user"])
        assert r["candidates"] == e.candidates and r["target"] == e.target and len(r["scores"]) == 20
    top = json.loads((out / "teacher" / "train_top1.json").read_text())
    assert len(top["users"]["1"]) == 2
    for u, lst in top["users"].items():
        n = len(ds.seqs[u]) - 2
        for j, t in enumerate(lst):
            assert t["target"] == ds.seqs[u][n - 1 - j]
            assert t["top1"] not in ds.seqs[u][:n - 1 - j]  # prefix items are excluded
    # the saved teacher reloads and reproduces its scores
    sc = teacher.load_teacher(out)
    r = rows[0]
    got = sc.scores([ds.seqs[r["user"]][:-1]], [r["candidates"]])[0]
    assert got == pytest.approx(r["scores"], abs=1e-4)
    assert not list(out.glob("teacher/SASRec-*.pth")) and not (tmp_path / "log_tensorboard").exists()


def test_time_budget_and_finish_from_checkpoint(synth, tmp_path):
    out = tmp_path / "w"
    common = ["--data-dir", str(synth), "--name", "syn", "--out", str(out), "--hidden", "16", "--batch-size", "64",
              "--threads", "1", "--device", "cpu"]
    assert teacher.main(common + ["--epochs", "5", "--max-minutes", "0.00001"]) == 0
    m = json.loads((out / "teacher" / "metrics.json").read_text())
    assert m["stopped_by_time_budget"] and m["epochs_run"] == 1
    first = (out / "teacher" / "test_scores.jsonl").read_text()
    ck = out / "teacher" / "recbole_best.pth"
    assert ck.is_file()
    out2 = tmp_path / "w2"
    common[common.index(str(out))] = str(out2)
    assert teacher.main(common + ["--from-checkpoint", str(ck)]) == 0
    assert (out2 / "teacher" / "test_scores.jsonl").read_text() == first
