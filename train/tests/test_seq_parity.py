"""The sequential model on the device against RecBole's own forward.

A SASRec trained by the recipe's teacher (RecBole 1.2.1) on a small synthetic dataset is put in a
pack by ``delrec-convert pack --seq-model`` twice: from the recipe's ``sasrec.pth`` and from
RecBole's own ``Trainer`` checkpoint (``recbole_best.pth``, with ``--seq-items``). ``delrec
recommend --llm-off`` then scores the whole catalog for every user; the scores must equal
RecBole's ``forward`` + full-sort scores within 1e-4 (F32), histories longer than the model's
``MAX_ITEM_LIST_LENGTH`` included. Needs the built binaries (``cargo build --release --bins``).
"""
import json
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("recbole")
pytest.importorskip("transformers")

from conftest import write_hf  # noqa: E402
from delrec_train import teacher  # noqa: E402
from delrec_train.data import load_dataset  # noqa: E402
from delrec_train.export import convert_bin  # noqa: E402
from delrec_train.paths import delrec_bin  # noqa: E402


def run(*args):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset, teacher work dir, base GGUF, catalog of the model's items) built once."""
    from conftest import write_items

    d = tmp_path_factory.mktemp("seq")
    write_items(d / "syn.item", 45)
    rng = np.random.default_rng(3)
    with open(d / "syn.inter", "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u in range(1, 31):
            start = int(rng.integers(1, 30))
            for k in range(int(rng.integers(5, 16))):  # 5..15 items: some histories exceed max_len 8
                f.write(f"{u}\t{start + k}\t5\t{1000 + k}\n")
    out = d / "work"
    assert teacher.main(["--data-dir", str(d), "--name", "syn", "--out", str(out), "--epochs", "1", "--hidden", "16",
                         "--max-len", "8", "--batch-size", "64", "--threads", "1", "--device", "cpu",
                         "--train-per-user", "1"]) == 0
    ds = load_dataset(d, "syn")
    write_hf(d / "hf", "llama")
    base = d / "base.f32.gguf"
    run(convert_bin(), "model", "--hf", d / "hf", "--out", base, "--outtype", "f32")
    blob = torch.load(out / "teacher" / "sasrec.pth", weights_only=False)
    model_items = blob["item_tokens"][1:]
    # The catalog in another order than RecBole's rows, so the import's reordering matters.
    catalog = d / "catalog.csv"
    with open(catalog, "w") as f:
        f.write("id,title\n")
        for i in sorted(model_items, key=int, reverse=True):
            f.write(f"{i},{ds.items[i].title.replace(',', ' ')}\n")
    (d / "items.txt").write_text("\n".join(blob["item_tokens"]) + "\n")
    return ds, out, base, catalog, d


def pack(trained, name, *seq_args):
    ds, out, base, catalog, d = trained
    p = d / f"{name}.pack.gguf"
    run(convert_bin(), "pack", "--model", base, "--catalog", catalog, "--template", "Seen:{history}\nNext:{candidate}\n",
        "--out", p, *seq_args)
    return p


def device_scores(trained, pack_path, histories):
    ds, out, base, catalog, d = trained
    reqs = d / "requests.jsonl"
    reqs.write_text("".join(json.dumps({"user": u, "history": h}) + "\n" for u, h in histories.items()))
    n = len(catalog.read_text().splitlines()) - 1
    p = run(delrec_bin(), "recommend", "--model", base, "--pack", pack_path, "--requests", reqs, "--n", n,
            "--llm-off", "--include-history", "--threads", "1", "--json")
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    return {r["user"]: {i["id"]: i["seq_score"] for i in r["items"]} for r in rows}


@pytest.mark.parametrize("source", ["sasrec.pth", "recbole_best.pth"])
def test_device_scores_equal_recbole(trained, source):
    ds, out, base, catalog, d = trained
    if source == "sasrec.pth":
        p = pack(trained, "blob", "--seq-model", out / "teacher" / "sasrec.pth")
    else:
        p = pack(trained, "recbole", "--seq-model", out / "teacher" / "recbole_best.pth", "--seq-items", d / "items.txt")
    sc = teacher.load_teacher(out)
    histories = {u: ds.seqs[u][:-1] for u in ds.users()}
    assert max(len(h) for h in histories.values()) > sc.max_len, "some history must exceed max_len"
    got = device_scores(trained, p, histories)
    worst = 0.0
    users = list(histories)
    ref = sc.full_scores([histories[u] for u in users])
    for u, row in zip(users, ref):
        dev = got[u]
        assert len(dev) == len(sc.item_tokens) - 1
        for tok, s in zip(sc.item_tokens[1:], row[1:]):
            worst = max(worst, abs(dev[tok] - float(s)))
    print(f"max |device - RecBole| over {len(users)} users x {len(sc.item_tokens) - 1} items: {worst:.2e}")
    assert worst < 1e-4


def test_recbole_checkpoint_without_item_list_is_refused(trained):
    ds, out, base, catalog, d = trained
    p = subprocess.run([str(convert_bin()), "pack", "--model", str(base), "--catalog", str(catalog), "--template",
                        "{history}{candidate}", "--out", str(d / "x.pack.gguf"), "--seq-model",
                        str(out / "teacher" / "recbole_best.pth")], capture_output=True, text=True)
    assert p.returncode == 1 and "--seq-items" in p.stderr and not (d / "x.pack.gguf").exists()
