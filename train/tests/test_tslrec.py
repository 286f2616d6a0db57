"""TSLRec stage 2 (``delrec_train.tslrec``): LLM item embeddings, SASRec over them, the export.

(a) pooling on a tiny random HF Llama against a hand computation from ``hidden_states``, and
    batch/padding invariance; (b) parity of the PyTorch embeddings with ``delrec embed --exact``
    (F32 GGUF of the same model; needs the built binaries); (c) end to end on a synthetic dataset.
"""
import csv
import json
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import write_hf  # noqa: E402
from delrec_train import tslrec  # noqa: E402
from delrec_train.export import convert_bin  # noqa: E402
from delrec_train.paths import delrec_bin  # noqa: E402

TITLES = ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty", "Copycat (1995)",
          "Shanghai Triad (Yao a yao yao dao waipo qiao) (1995)", "Twelve Monkeys (1995)", "Babe", "X"]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    import transformers

    d = tmp_path_factory.mktemp("tsl_hf")
    write_hf(d / "hf", "llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(d / "hf"), dtype=torch.float32).eval()
    tok = tslrec.make_item_tokenizer("hf", d / "hf")
    return d, model, tok


def test_pooling_matches_hidden_states_and_is_padding_invariant(hf):
    d, model, tok = hf
    texts = [tslrec.item_text(t) for t in TITLES]
    seqs = tok.encode_many(texts)
    assert len({len(s) for s in seqs}) > 3  # different lengths: batches are padded
    # hidden_states[-1] is after the final RMSNorm (= norm(last decoder layer's output))
    got = {}
    hook = model.model.layers[-1].register_forward_hook(
        lambda m, i, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        hs = model(torch.tensor([seqs[0]]), output_hidden_states=True).hidden_states
    hook.remove()
    assert torch.allclose(hs[-1], model.model.norm(got["h"]), atol=1e-6)
    assert not torch.allclose(hs[-1], got["h"], atol=1e-3)
    for pooling in ("mean", "last"):
        batched = tslrec.embed_token_seqs(model, seqs, pooling, batch_size=4)
        for s, e in zip(seqs, batched):
            with torch.no_grad():
                h = model(torch.tensor([s]), output_hidden_states=True).hidden_states[-1][0]
            ref = h.mean(0) if pooling == "mean" else h[-1]
            assert np.abs(e - ref.numpy()).max() < 1e-5
            alone = tslrec.embed_token_seqs(model, [s], pooling)[0]
            assert np.abs(e - alone).max() < 1e-5
    m, l = tslrec.embed_token_seqs(model, seqs[:3], "mean"), tslrec.embed_token_seqs(model, seqs[:3], "last")
    assert np.abs(m - l).max() > 1e-3


def run(*args):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def gguf(hf):
    """The tiny model converted to an F32 GGUF (needs the built binaries)."""
    d = hf[0]
    if not convert_bin().is_file() or not delrec_bin().is_file():
        pytest.fail("needs the built binaries: cargo build --release --bins")
    base = d / "base.f32.gguf"
    run(convert_bin(), "model", "--hf", d / "hf", "--out", base, "--outtype", "f32")
    return base


def test_embeddings_equal_runtime(hf, gguf):
    d, model, tok = hf
    base = gguf
    cat = d / "c.csv"
    with open(cat, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "title"])
        for k, t in enumerate(TITLES):
            w.writerow([f"i{k}", t])
    pack = d / "p.gguf"
    run(convert_bin(), "pack", "--model", base, "--catalog", cat, "--template", "{history}{candidate}", "--out", pack)
    texts = [tslrec.item_text(t) for t in TITLES]
    # the HF tokenizer gives llama.cpp's ids for these strings (what the pack stores)
    strings = d / "s.json"
    strings.write_text(json.dumps(texts))
    cli_ids = json.loads(run(delrec_bin(), "tokenize", "--model", base, "--strings", strings, "--json").stdout)["ids"]
    assert cli_ids == tok.encode_many(texts)
    for pooling in ("mean", "last"):
        res = json.loads(run(delrec_bin(), "embed", "--model", base, "--pack", pack, "--all-items", "--pooling", pooling,
                             "--exact", "--threads", "1", "--json").stdout)
        dev = np.asarray(res["embeddings"], dtype=np.float32)
        ours, _ = tslrec.embed_texts(model, tok, texts, pooling)
        assert res["dim"] == ours.shape[1] and dev.shape == ours.shape
        diff = float(np.abs(dev - ours).max())
        print(f"max |delrec embed - PyTorch| ({pooling}, F32, {len(texts)} items): {diff:.2e}")
        assert diff <= 1e-3


class _DS:
    def __init__(self, n):
        self.n = n

    def num(self, field):
        return self.n

    def fields(self, *a, **k):
        return []


def recbole_scores(trained, sc, prefixes):
    """The trained RecBole model's full_sort_predict on the users' histories (the last 20 items)."""
    seq = torch.zeros(len(prefixes), 20, dtype=torch.long)
    lens = torch.zeros(len(prefixes), dtype=torch.long)
    for b, p in enumerate(prefixes):
        ids = [sc.tok2id[i] for i in p[-20:]]
        seq[b, :len(ids)] = torch.tensor(ids)
        lens[b] = len(ids)
    with torch.no_grad():
        return trained.full_sort_predict({trained.ITEM_SEQ: seq, trained.ITEM_SEQ_LEN: lens}).numpy()


def device_max_diff(tmp_path, gguf, blob, pth, ds, users, prefixes, got):
    """Converts ``pth`` into a pack over the model's items and returns the largest |device - PyTorch|
    SASRec score of ``delrec recommend --llm-off`` (every item) against ``got`` (RecBole row order)."""
    n = len(blob["item_tokens"])
    cat = tmp_path / f"{pth.parent.name}.catalog.csv"
    with open(cat, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "title"])
        for i in blob["item_tokens"][1:]:
            w.writerow([i, ds.items[i].title])
    p = tmp_path / f"{pth.parent.name}.pack.gguf"
    run(convert_bin(), "pack", "--model", gguf, "--catalog", cat, "--template", "{history}{candidate}", "--out", p,
        "--seq-model", pth)
    reqs = tmp_path / f"{pth.parent.name}.requests.jsonl"
    reqs.write_text("".join(json.dumps({"user": u, "history": h}) + "\n" for u, h in zip(users, prefixes)))
    res = run(delrec_bin(), "recommend", "--model", gguf, "--pack", p, "--requests", reqs, "--n", n - 1,
              "--llm-off", "--include-history", "--threads", "1", "--json")
    worst = 0.0
    for line, row in zip(res.stdout.splitlines(), got):
        dev = {i["id"]: i["seq_score"] for i in json.loads(line)["items"]}
        assert len(dev) == n - 1
        worst = max(worst, max(abs(dev[tk] - float(row[r])) for r, tk in enumerate(blob["item_tokens"]) if r))
    return worst


def test_end_to_end(hf, gguf, synth, tmp_path):
    pytest.importorskip("recbole")
    d, model, tok = hf
    out = tmp_path / "w"
    assert tslrec.main(["--data-dir", str(synth), "--name", "syn", "--out", str(out), "--model", str(d / "hf"),
                        "--epochs", "1", "--hidden", "16", "--batch-size", "64", "--threads", "1",
                        "--device", "cpu"]) == 0
    t = out / "tslrec"
    E = np.load(t / "item_llm_emb.npy")
    meta = json.loads((t / "item_llm_ids.json").read_text())
    assert E.shape == (60, 32) and len(meta["ids"]) == 60 and meta["pooling"] == "mean"
    blob = torch.load(t / "sasrec_llm.pth", weights_only=False)
    assert blob["item_source"] == "llm" and blob["item_pooling"] == "mean" and blob["item_text"] == "item_prefix+title"
    assert set(blob) >= {"state_dict", "item_tokens", "max_len", "config"} and blob["max_len"] == 20
    sd = blob["state_dict"]
    n = len(blob["item_tokens"])
    assert sd["item_embedding.weight"].shape == (n, 16)
    assert sd["item_proj.weight"].shape == (16, 32) and sd["item_proj.bias"].shape == (16,)
    assert not [k for k in sd if k.startswith("item_embedding.") and k != "item_embedding.weight"]
    # the table is item_proj of the raw LLM embeddings (row 0, padding, = proj(0))
    pos = {i: k for k, i in enumerate(meta["ids"])}
    raw = torch.zeros(n, 32)
    for r, tok_id in enumerate(blob["item_tokens"][1:], start=1):
        raw[r] = torch.from_numpy(E[pos[tok_id]])
    rec = raw @ sd["item_proj.weight"].T + sd["item_proj.bias"]
    assert (rec - sd["item_embedding.weight"]).abs().max() < 1e-5
    # the exported plain SASRec reproduces the trained RecBole model's full_sort_predict
    ck = torch.load(t / "recbole_best.pth", weights_only=False)
    trained = tslrec.tslrec_sasrec_class()(ck["config"], _DS(n), raw.numpy())
    trained.load_state_dict(ck["state_dict"])
    trained.eval()
    sc = tslrec.load_tslrec(out)
    from delrec_train.data import load_dataset

    ds = load_dataset(synth, "syn")
    users = ds.users()[:5]
    prefixes = [ds.seqs[u][:-1] for u in users]
    ref = recbole_scores(trained, sc, prefixes)
    got = sc.full_scores(prefixes)
    assert np.abs(got - ref).max() < 1e-4
    # test_scores.jsonl in the teacher's format, = the exported model's scores
    rows = [json.loads(x) for x in (t / "test_scores.jsonl").read_text().splitlines()]
    assert len(rows) == len(ds.users())
    r0 = rows[0]
    e = ds.test_example(r0["user"])
    assert r0["candidates"] == e.candidates and r0["target"] == e.target and len(r0["scores"]) == 20
    assert sc.scores([ds.seqs[r0["user"]][:-1]], [r0["candidates"]])[0] == pytest.approx(r0["scores"], abs=1e-4)
    m = json.loads((t / "metrics.json").read_text())
    assert m["epochs_run"] == 1 and "ndcg@10" in m["test_full_ranking"] and m["embedding"]["items"] == 60
    # a known item's title embeds to its own row; an unseen title becomes an item vector
    known = ds.items[blob["item_tokens"][1]].title
    kv, _ = tslrec.embed_texts(model, tok, [tslrec.item_text(known)])
    assert (sc.project(kv)[0] - sd["item_embedding.weight"][1]).abs().max() < 1e-4
    new, toks = tslrec.embed_texts(model, tok, [" New Movie (2030)"])
    u = sc.user_vectors(prefixes[:1])
    s = float((u @ sc.project(new).T)[0, 0])
    assert np.isfinite(s) and toks[0]
    # a second run reuses the cached embeddings
    assert tslrec.main(["--data-dir", str(synth), "--name", "syn", "--out", str(out), "--model", str(d / "hf"),
                        "--epochs", "1", "--hidden", "16", "--batch-size", "64", "--threads", "1",
                        "--device", "cpu"]) == 0
    assert json.loads((t / "metrics.json").read_text())["embedding"]["reused"]
    # the converter takes the export (item_proj included) and the device scores like PyTorch
    # (the pack's catalog: the model's items; the converter refuses catalog items the model lacks)
    worst = device_max_diff(tmp_path, gguf, blob, t / "sasrec_llm.pth", ds, users, prefixes, got)
    print(f"max |device recommend - PyTorch| over {len(users)} users: {worst:.2e}")
    assert worst < 1e-4


def test_beside_the_ids(hf, gguf, synth, tmp_path):
    """``--items llm+id``: the LLM embeddings beside a learned ID table. The export folds both into
    ``item_embedding.weight`` (= the trained model's own table), keeps ``item_proj`` for items added
    on the device (their content part alone), shares the LLM embeddings' cache with the in-place
    variant, and the device scores like PyTorch."""
    pytest.importorskip("recbole")
    d, model, tok = hf
    out = tmp_path / "w"
    common = ["--data-dir", str(synth), "--name", "syn", "--out", str(out), "--model", str(d / "hf"),
              "--epochs", "1", "--hidden", "16", "--batch-size", "64", "--threads", "1", "--device", "cpu"]
    assert tslrec.main(common) == 0
    assert tslrec.main(common + ["--items", "llm+id"]) == 0
    t = out / "tslrec-id"
    m = json.loads((t / "metrics.json").read_text())
    assert m["items"] == "llm+id" and m["embedding"]["reused"] and not (t / "item_llm_emb.npy").exists()
    blob = torch.load(t / "sasrec_llm.pth", weights_only=False)
    assert blob["item_combination"] == "llm+id" and blob["item_source"] == "llm"
    sd = blob["state_dict"]
    n = len(blob["item_tokens"])
    E = np.load(out / "tslrec" / "item_llm_emb.npy")
    pos = {i: k for k, i in enumerate(json.loads((out / "tslrec" / "item_llm_ids.json").read_text())["ids"])}
    raw = torch.zeros(n, 32)
    for r, tok_id in enumerate(blob["item_tokens"][1:], start=1):
        raw[r] = torch.from_numpy(E[pos[tok_id]])
    content = raw @ sd["item_proj.weight"].T + sd["item_proj.bias"]
    ck = torch.load(t / "recbole_best.pth", weights_only=False)
    trained = tslrec.tslrec_sasrec_class()(ck["config"], _DS(n), raw.numpy())
    trained.load_state_dict(ck["state_dict"])
    trained.eval()
    id_part = trained.item_embedding.ids.weight.detach()
    assert float(id_part[1:].abs().max()) > 0
    assert (content + id_part - sd["item_embedding.weight"]).abs().max() < 1e-5
    # the exported plain SASRec = the trained model's full_sort_predict
    from delrec_train.data import load_dataset

    ds = load_dataset(synth, "syn")
    sc = tslrec.load_tslrec(out, items="llm+id")
    users = ds.users()[:4]
    prefixes = [ds.seqs[u][:-1] for u in users]
    want = recbole_scores(trained, sc, prefixes)
    got = sc.full_scores(prefixes)
    assert np.abs(got - want).max() < 1e-4
    # an added item: its content part only (a known title projects to its row minus its ID part)
    known = ds.items[blob["item_tokens"][1]].title
    kv, _ = tslrec.embed_texts(model, tok, [tslrec.item_text(known)])
    assert (sc.project(kv)[0] - (sd["item_embedding.weight"][1] - id_part[1])).abs().max() < 1e-4
    # the device: the same pack path as the in-place variant, scores = PyTorch
    assert device_max_diff(tmp_path, gguf, blob, t / "sasrec_llm.pth", ds, users, prefixes, got) < 1e-4
    with pytest.raises(SystemExit):
        tslrec.main(common + ["--items", "id"])
