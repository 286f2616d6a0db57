"""TSLRec stage 2: SASRec over frozen LLM item embeddings (arXiv 2406.00333).

    python -m delrec_train.tslrec --out DIR [--model GGUF_OR_HF_DIR] [--pooling mean|last] [--epochs 15]
        [--max-minutes M] [--hidden 64] [--max-len 20] [--threads 2] [--device cpu]

TSLRec ("A Practice-Friendly Two-Stage LLM-Enhanced Paradigm in Sequential Recommendation", no
released code) feeds every item's text to the LLM and trains an ordinary sequential recommender on
the resulting item embeddings; the small model is what serves. Stage 1 of the paper (a user-level
SFT of the LLM) is not implemented: the base LLM is used as is. ``--items llm`` (default) puts the
LLM embeddings *in place of* the ID embeddings; ``--items llm+id`` puts them *beside* a learned ID
table (item vector = proj(whiten(E)) + ID embedding), written to ``DIR/tslrec-id``.

1. **LLM item embeddings.** For every catalog item (``data.write_catalog`` order) the text is
   ``item_prefix + title`` with the pack's default item prefix ``" "``, tokenized without special
   tokens / BOS: exactly the token ids ``delrec-convert pack`` stores (``--tokenizer llama-cli``,
   the default for a GGUF model, asks llama.cpp itself through ``delrec tokenize``). The frozen base
   LLM runs over the items in right-padded batches; the final hidden states *after the final norm*
   (what llama.cpp's pooled embeddings read, and transformers' ``hidden_states[-1]``: its
   ``check_model_inputs`` overwrites the last entry with ``last_hidden_state``, i.e. after
   ``model.norm``) are pooled over the item's own tokens: the mean (padding excluded) or the last
   token. The runtime computes the same: ``delrec embed --model M --pack P --all-items --pooling mean``.
   Cached in ``DIR/tslrec/item_llm_emb.npy`` (float32 [n_catalog, n_embd], catalog order) +
   ``item_llm_ids.json`` (ids, token ids, model digest, pooling); reused when all of these match.

2. **SASRec on them.** RecBole 1.2.1's ``SASRec`` with ``item_embedding`` replaced by
   ``LLMItemEmbedding`` (:func:`make_item_module`): a ``weight`` property ``proj(whiten(E))`` and
   ``forward(ids) = weight[ids]``, where ``E`` is the frozen LLM table in RecBole's row order (row
   0 = [PAD] = zeros), ``whiten`` a PCA whitening fitted on the real items (fixed buffers, not
   learned) and ``proj = nn.Linear(k, hidden)`` learned (k = kept components, ``--whiten-dims``,
   default all). The whitening and ``k`` travel in the RecBole config
   (``tslrec_whiten_dims``). RecBole's ``forward`` calls
   ``self.item_embedding(item_seq)``; ``calculate_loss`` (CE), ``full_sort_predict`` and ``predict``
   use ``self.item_embedding.weight`` / ``self.item_embedding(ids)``, so every path goes through
   the projection. Everything else (config, split, Trainer, early stopping on valid NDCG@10, time
   budget, seeds) is the teacher's (``teacher.recbole_config``, ``write_recbole_inter``).

3. **Export** ``DIR/tslrec/sasrec_llm.pth``: the teacher's ``sasrec.pth`` layout
   (``state_dict``, ``item_tokens``, ``max_len``, ``config``) with the plain SASRec tensors, where
   ``item_embedding.weight`` = ``proj(whiten(E))`` [n_items, hidden], plus
   ``item_proj.weight`` [hidden, n_embd] and ``item_proj.bias`` [hidden] with the whitening
   folded in, so that ``item_embedding.weight == E @ item_proj.weight.T + item_proj.bias`` on the
   *raw* LLM embeddings (row 0 = proj(0), padding). Extra keys: ``item_source: "llm"``,
   ``item_pooling``, ``item_text: "item_prefix+title"``, ``item_prefix``. A new item gets
   ``item_proj(embed(" " + title))`` and is scored like any other (dot product with the user vector).
   With ``--items llm+id`` the exported ``item_embedding.weight`` also holds the learned ID part
   (``item_combination: "llm+id"``); an item added on the device has no ID row, so its vector is
   the content part ``item_proj(embed(" " + title))`` alone (an ID row of zeros).
   Also ``metrics.json`` (RecBole full-ranking valid/test metrics, the 20-candidate test metrics,
   timings, embedding cost) and ``test_scores.jsonl`` in the teacher's format
   (``{"user", "target", "candidates", "scores"}``, history = every item before the test target).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from .data import Dataset, load_dataset, write_catalog
from .paths import model_path, work_dir
from .teacher import DATASET_NAME, TeacherScorer, _build_sasrec_from_blob, _NullWriter, fit_with_budget, \
    recbole_config, write_recbole_inter
from .util import set_threads, write_json

ITEM_PREFIX = " "  # the pack's default --item-prefix
SMALL_CFG_KEYS = ["n_layers", "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob", "attn_dropout_prob",
                  "hidden_act", "layer_norm_eps", "initializer_range", "loss_type", "MAX_ITEM_LIST_LENGTH",
                  "USER_ID_FIELD", "ITEM_ID_FIELD", "LIST_SUFFIX", "ITEM_LIST_LENGTH_FIELD", "NEG_PREFIX", "device"]


# ---- 1. LLM item embeddings ---------------------------------------------------------------------

def item_text(title: str, item_prefix: str = ITEM_PREFIX) -> str:
    return item_prefix + title


def make_item_tokenizer(kind: str, model: Path, tokenizer_model: Path | None = None, binary: Path | None = None):
    """kind: auto (llama-cli for a GGUF file, the HF directory's own tokenizer otherwise), llama-cli
    (``delrec tokenize`` on ``tokenizer_model`` or ``model``: the pack's ids), hf, hf-gguf."""
    from .tokens import HFTokenizer, LlamaCliTokenizer, make_tokenizer

    model = Path(model)
    if kind == "auto":
        kind = "hf" if model.is_dir() and tokenizer_model is None else "llama-cli"
    if kind == "llama-cli":
        src = Path(tokenizer_model or model)
        if src.is_dir():
            raise SystemExit(f"--tokenizer llama-cli needs a GGUF file ({src} is a directory): pass --tokenizer-model")
        return LlamaCliTokenizer(src, binary)
    if kind == "hf":
        from transformers import AutoTokenizer
        return HFTokenizer(AutoTokenizer.from_pretrained(str(tokenizer_model or model)))
    return make_tokenizer(kind, tokenizer_model or model, binary)


def embed_token_seqs(model, seqs: list[list[int]], pooling: str = "mean", batch_size: int = 64):
    """Final-norm hidden states of a causal LM pooled per sequence -> float32 numpy [N, n_embd].

    Each sequence alone from position 0, no BOS; batches are right-padded (a causal model's real
    tokens never attend to later pads, and positions start at 0 for every row), so the result does
    not depend on the batch. mean: average over the sequence's own tokens; last: its last token."""
    import torch

    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling {pooling!r}: mean or last")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("an item tokenizes to nothing")
    dev = model.get_input_embeddings().weight.device
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    n_embd = model.get_input_embeddings().weight.shape[1]
    out = np.zeros((len(seqs), n_embd), dtype=np.float32)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: little padding
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        L = max(len(seqs[i]) for i in idx)
        ids = torch.zeros(len(idx), L, dtype=torch.long)
        mask = torch.zeros(len(idx), L, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, :len(seqs[i])] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = torch.arange(L, device=dev)[None].expand(len(idx), L)
        with torch.no_grad():
            h = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state.float()
        if pooling == "mean":
            m = mask[..., None].to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1)
        else:
            pooled = h[torch.arange(len(idx), device=dev), mask.sum(1) - 1]
        out[idx] = pooled.cpu().numpy()
    return out


def embed_texts(model, tokenizer, texts: list[str], pooling: str = "mean", batch_size: int = 64):
    """-> (embeddings [N, n_embd], token ids per text). Texts are tokenized exactly (no BOS)."""
    seqs = tokenizer.encode_many(texts)
    return embed_token_seqs(model, seqs, pooling, batch_size), seqs


def item_embeddings(ds: Dataset, model_file: Path, tdir: Path, pooling: str, tokenizer, model=None,
                    device="cpu", batch_size: int = 64):
    """The catalog's LLM embeddings (catalog order), cached in ``tdir``. -> (ids, E, info)."""
    from .tokens import file_sha256

    ids = list(ds.items)
    texts = [item_text(ds.items[i].title) for i in ids]
    t0 = time.time()
    seqs = tokenizer.encode_many(texts)
    tok_s = time.time() - t0
    meta = {"model": str(model_file), "model_sha256": file_sha256(model_file), "pooling": pooling,
            "item_text": "item_prefix+title", "item_prefix": ITEM_PREFIX, "ids": ids, "tokens": seqs}
    npy, js = tdir / "item_llm_emb.npy", tdir / "item_llm_ids.json"
    if npy.is_file() and js.is_file():
        old = json.loads(js.read_text(encoding="utf-8"))
        if all(old.get(k) == meta[k] for k in ("model_sha256", "pooling", "item_prefix", "ids", "tokens")):
            E = np.load(npy)
            logging.getLogger().info("LLM item embeddings reused from %s", npy)
            return ids, E, {**old.get("info", {}), "reused": True}
    from .llm import load_gguf_model

    t1 = time.time()
    if model is None:
        model = load_gguf_model(model_file, device)
    load_s = time.time() - t1
    t2 = time.time()
    E = embed_token_seqs(model, seqs, pooling, batch_size)
    emb_s = time.time() - t2
    if not np.isfinite(E).all():
        raise RuntimeError("non-finite LLM item embeddings")
    info = {"items": len(ids), "tokens": int(sum(len(s) for s in seqs)), "max_tokens": max(len(s) for s in seqs),
            "dim": int(E.shape[1]), "pooling": pooling, "tokenize_seconds": tok_s, "load_seconds": load_s,
            "embed_seconds": emb_s, "reused": False}
    tdir.mkdir(parents=True, exist_ok=True)
    tmp = tdir / "item_llm_emb.part.npy"
    np.save(tmp, E)
    os.replace(tmp, npy)
    write_json(js, meta | {"info": info})
    return ids, E, info


# ---- 2. SASRec on the LLM table -----------------------------------------------------------------

def _torch_nn():
    import torch
    from torch import nn
    return torch, nn


ITEM_MODES = ("llm", "llm+id")


def make_item_module(table, hidden: int, max_dims: int = 0, init_std: float = 0.02, beside: bool = False):
    """``LLMItemEmbedding``: ids -> proj(whiten(table))[ids]; ``.weight`` = the whole projected table
    (``beside``: plus a learned ID table, RecBole's init).

    whiten(x) = (x - mu) @ P: PCA whitening fitted on the real items (rows 1..; row 0 is [PAD]),
    P = V_k / s_k * sqrt(n) so every kept component has unit variance over the catalog; k = the
    components above 1e-5 of the largest singular value, at most ``max_dims`` (0 = all). Fixed
    buffers, not learned. Raw final-norm states are badly conditioned for a learned linear map (mean
    pairwise cosine ~0.93 on SmolLM2, a few outlier dimensions); whitened, the first epochs' loss
    drops like the ID model's. proj is initialised N(0, init_std^2 / k) (bias 0), so the item vectors
    start at the scale of RecBole's ID embeddings (std ``initializer_range``)."""
    torch, nn = _torch_nn()

    class LLMItemEmbedding(nn.Module):
        def __init__(self, table, hidden):
            super().__init__()
            table = torch.as_tensor(np.asarray(table), dtype=torch.float32)
            real = table[1:].double()
            mu = real.mean(0)
            _, S, Vh = torch.linalg.svd(real - mu, full_matrices=False)
            k = int((S > 1e-5 * S[0]).sum())
            if max_dims:
                k = min(k, max_dims)
            P = Vh[:k].T / S[:k] * real.shape[0] ** 0.5
            self.register_buffer("table", table)  # raw, for the export's fold
            self.register_buffer("mu", mu)  # float64, like P: only the export's fold reads them
            self.register_buffer("P", P)
            self.register_buffer("Z", ((table.double() - mu) @ P).float())  # whitened in float64 once
            self.proj = nn.Linear(k, hidden)
            nn.init.normal_(self.proj.weight, std=init_std / k ** 0.5)
            nn.init.zeros_(self.proj.bias)
            self.ids = None
            if beside:
                # RecBole's init (the [PAD] row starts at zero; like RecBole's own table it is then
                # trained through the full-catalog loss, which reads the whole table)
                self.ids = nn.Embedding(table.shape[0], hidden)
                nn.init.normal_(self.ids.weight, std=init_std)
                with torch.no_grad():
                    self.ids.weight[0].zero_()

        @property
        def weight(self):
            w = self.proj(self.Z)
            return w if self.ids is None else w + self.ids.weight

        def forward(self, ids):
            # project the table once, then gather: n_items rows instead of B x L (same values)
            return nn.functional.embedding(ids, self.weight)

        def folded(self):
            """(W, b) with proj(whiten(x)) == x @ W.T + b on raw LLM embeddings x (float64)."""
            W = self.proj.weight.double() @ self.P.T
            b = self.proj.bias.double() - W @ self.mu
            return W, b

    return LLMItemEmbedding(table, hidden)


_CLASS = None


def tslrec_sasrec_class():
    """RecBole's SASRec with the item embedding replaced by the projected frozen LLM table."""
    global _CLASS
    if _CLASS is None:
        from recbole.model.sequential_recommender import SASRec

        class TSLRecSASRec(SASRec):
            def __init__(self, config, dataset, item_table):
                super().__init__(config, dataset)
                if tuple(item_table.shape[:1]) != (self.n_items,):
                    raise ValueError(f"LLM table has {item_table.shape[0]} rows, the model {self.n_items} items")
                del self.item_embedding
                dims = int(config["tslrec_whiten_dims"] or 0)
                beside = (config["tslrec_items"] or "llm") == "llm+id"
                self.item_embedding = make_item_module(item_table, self.hidden_size, dims, self.initializer_range,
                                                       beside)

        _CLASS = TSLRecSASRec
    return _CLASS


def recbole_table(item_tokens: list[str], ids: list[str], E: np.ndarray) -> np.ndarray:
    """The LLM table in RecBole's row order; row 0 ([PAD]) = zeros."""
    pos = {i: k for k, i in enumerate(ids)}
    missing = [t for t in item_tokens[1:] if t not in pos]
    if missing:
        raise ValueError(f"{len(missing)} RecBole items have no LLM embedding, first: {missing[:5]}")
    T = np.zeros((len(item_tokens), E.shape[1]), dtype=np.float32)
    for r, t in enumerate(item_tokens[1:], start=1):
        T[r] = E[pos[t]]
    return T


def train_recbole_llm(ds: Dataset, tdir: Path, args, ids: list[str], E: np.ndarray):
    """teacher.train_recbole with the TSLRec model (the teacher's code builds a plain SASRec inline)."""
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    import recbole.trainer.trainer as rb_trainer
    from recbole.utils import init_seed

    rb_trainer.get_tensorboard = lambda logger: _NullWriter()
    data_root = tdir / "recbole_data"
    write_recbole_inter(ds, data_root)
    cfg = recbole_config(data_root, tdir, args)
    cfg["tslrec_whiten_dims"] = args.whiten_dims  # read by TSLRecSASRec (and kept in RecBole's checkpoint)
    cfg["tslrec_items"] = args.items
    config = Config(model="SASRec", dataset=DATASET_NAME, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    set_threads(args.threads)
    t0 = time.time()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    item_tokens = list(dataset.field2id_token["item_id"])
    table = recbole_table(item_tokens, ids, E)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = tslrec_sasrec_class()(config, train_data._dataset, table).to(config["device"])
    trainer = Trainer(config, model)
    t1 = time.time()
    ckpt_file, stopped_by_budget = fit_with_budget(trainer, train_data, valid_data, args.max_minutes)
    train_s = time.time() - t1
    ckpt = torch.load(ckpt_file, map_location=config["device"], weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    model.load_other_parameter(ckpt.get("other_parameter"))
    t2 = time.time()
    valid_result = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    os.replace(ckpt_file, tdir / "recbole_best.pth")
    return model.eval(), item_tokens, config, test_data, {
        "best_valid": {k: float(v) for k, v in dict(valid_result).items()},
        "test_full_ranking": {k: float(v) for k, v in dict(test_result).items()},
        "epochs_run": len(trainer.train_loss_dict), "best_epoch": int(ckpt.get("epoch", -1)),
        "stopped_by_time_budget": stopped_by_budget, "train_seconds": train_s, "prepare_seconds": t1 - t0,
        "eval_seconds": time.time() - t2,
        "train_loss": {int(k): float(v) for k, v in trainer.train_loss_dict.items()},
    }


# ---- 3. export / reload -------------------------------------------------------------------------

def export_blob(model, item_tokens: list[str], max_len: int, config, pooling: str) -> dict:
    import torch

    emb = model.item_embedding
    with torch.no_grad():
        W, b = emb.folded()
        # the table through the folded map, as the device projects a new item (float64, then float32:
        # equals the trained model's own weight up to float32 rounding)
        table = emb.table.double() @ W.T + b
        if emb.ids is not None:  # beside: the learned ID part, which a new item does not have
            table = table + emb.ids.weight.double()
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("item_embedding.")}
    sd["item_embedding.weight"] = table.float().cpu()
    sd["item_proj.weight"] = W.float().cpu()
    sd["item_proj.bias"] = b.float().cpu()
    small = {k: config[k] for k in SMALL_CFG_KEYS}
    small["device"] = "cpu"
    return {"state_dict": sd, "item_tokens": list(item_tokens), "max_len": max_len, "config": small,
            "item_source": "llm", "item_pooling": pooling, "item_text": "item_prefix+title", "item_prefix": ITEM_PREFIX,
            "item_combination": "llm" if emb.ids is None else "llm+id"}


class TSLRecScorer(TeacherScorer):
    """The exported model: a plain SASRec (``TeacherScorer``) + ``item_proj`` for items it never saw."""

    def __init__(self, blob: dict, device="cpu"):
        import torch

        sd = blob["state_dict"]
        plain = {**blob, "state_dict": {k: v for k, v in sd.items() if not k.startswith("item_proj.")}}
        super().__init__(_build_sasrec_from_blob(plain, device), blob["item_tokens"], blob["max_len"], device)
        self.proj_w = sd["item_proj.weight"].to(device)
        self.proj_b = sd["item_proj.bias"].to(device)
        self.blob = blob
        self.torch = torch

    def user_vectors(self, prefixes: list[list[str]]):
        torch = self.torch
        seq = torch.zeros(len(prefixes), self.max_len, dtype=torch.long)
        lens = torch.zeros(len(prefixes), dtype=torch.long)
        for b, p in enumerate(prefixes):
            ids = self._ids(p[-self.max_len:])
            seq[b, :len(ids)] = torch.tensor(ids)
            lens[b] = len(ids)
        with torch.no_grad():
            return self.model.forward(seq.to(self.device), lens.to(self.device))

    def project(self, llm_emb):
        """Item vectors [N, hidden] of raw LLM embeddings [N, n_embd] (e.g. of unseen titles)."""
        x = self.torch.as_tensor(np.asarray(llm_emb), dtype=self.torch.float32, device=self.device)
        return x @ self.proj_w.T + self.proj_b


def tslrec_dir(out: Path, items: str = "llm") -> Path:
    """Where a variant's outputs live: DIR/tslrec (in place of the IDs) or DIR/tslrec-id (beside them)."""
    if items not in ITEM_MODES:
        raise ValueError(f"--items {items!r}: one of {', '.join(ITEM_MODES)}")
    return Path(out) / ("tslrec" if items == "llm" else "tslrec-id")


def load_tslrec(out: Path, device="cpu", items: str = "llm") -> TSLRecScorer:
    import torch
    from recbole.model.sequential_recommender import SASRec  # noqa: F401

    blob = torch.load(tslrec_dir(out, items) / "sasrec_llm.pth", map_location=device, weights_only=False)
    return TSLRecScorer(blob, device)


# ---- CLI ----------------------------------------------------------------------------------------

def check_device(argv) -> int:
    """``check --out DIR --results FILE``: the device's TSLRec scores (``delrec recommend --llm-off
    --include-history --json`` with every item, requests ``{"user", "history"}`` = the users'
    test histories) against the PyTorch scores of ``DIR/tslrec/test_scores.jsonl``; exit 1 past
    ``--tol``. Prints the largest difference."""
    ap = argparse.ArgumentParser(prog="python -m delrec_train.tslrec check")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--items", default="llm", choices=ITEM_MODES)
    a = ap.parse_args(argv)
    want = {}
    with open(tslrec_dir(a.out, a.items) / "test_scores.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            want[str(r["user"])] = dict(zip(r["candidates"], r["scores"]))
    worst, n = 0.0, 0
    with open(a.results, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if "error" in r:
                print(f"device error: {r['error']}", file=sys.stderr)
                return 1
            got = {i["id"]: i["seq_score"] for i in r["items"]}
            for item, s in want[str(r["user"])].items():
                worst, n = max(worst, abs(got[item] - s)), n + 1
    print(f"TSLRec on the device vs PyTorch: max |Δ| {worst:.2e} over {n} scores")
    return 0 if n and worst <= a.tol else 1


def requests_for(argv) -> int:
    """``requests --out DIR --users K``: ``{"user", "history"}`` lines for the first K test users
    of ``DIR/tslrec/test_scores.jsonl`` (the histories its scores were computed from)."""
    ap = argparse.ArgumentParser(prog="python -m delrec_train.tslrec requests")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--name", default="ml-100k")
    ap.add_argument("--items", default="llm", choices=ITEM_MODES)
    a = ap.parse_args(argv)
    ds = load_dataset(a.data_dir, a.name)
    users = []
    with open(tslrec_dir(a.out, a.items) / "test_scores.jsonl", encoding="utf-8") as f:
        for line in f:
            users.append(str(json.loads(line)["user"]))
            if len(users) == a.users:
                break
    for u in users:
        print(json.dumps({"user": u, "history": ds.seqs[u][:-1]}))
    return 0


def report(argv) -> int:
    """``report --out DIR``: a markdown table of RecBole's full-ranking test metrics of the ID
    SASRec (``DIR/teacher``) and TSLRec (``DIR/tslrec``; ``DIR/tslrec-id``, the LLM embeddings
    beside the IDs, where it was trained), with their training budgets."""
    ap = argparse.ArgumentParser(prog="python -m delrec_train.tslrec report")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    keys = ["hit@10", "ndcg@10", "mrr@10", "hit@1"]
    print("| model | " + " | ".join(k.replace("hit", "HR").replace("ndcg", "NDCG").replace("mrr", "MRR") for k in keys)
          + " | epochs | training s |")
    print("|---|" + "---:|" * (len(keys) + 2))
    for name, sub in [("SASRec, ID embeddings (the teacher)", "teacher"),
                      ("TSLRec: SASRec over proj(LLM item embeddings)", "tslrec"),
                      ("TSLRec beside the IDs: SASRec over proj(LLM item embeddings) + ID embeddings", "tslrec-id")]:
        if sub == "tslrec-id" and not (a.out / sub / "metrics.json").is_file():
            continue
        with open(a.out / sub / "metrics.json", encoding="utf-8") as f:
            m = json.load(f)
        t = m["test_full_ranking"]
        print(f"| {name} | " + " | ".join(f"{t[k]:.4f}" for k in keys)
              + f" | {m.get('epochs_run', '')} | {m.get('train_seconds', 0):.0f} |")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        return report(argv[1:])
    if argv[:1] == ["check"]:
        return check_device(argv[1:])
    if argv[:1] == ["requests"]:
        return requests_for(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m delrec_train.tslrec",
                                 description="TSLRec stage 2: SASRec (RecBole) over frozen LLM item embeddings.")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--name", default="ml-100k")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=None, help="base LLM: GGUF (default: the asset model) or HF directory")
    ap.add_argument("--tokenizer", default="auto", choices=["auto", "llama-cli", "hf", "hf-gguf"],
                    help="auto: llama.cpp's ids (delrec tokenize, = the pack) for a GGUF, the HF tokenizer for a directory")
    ap.add_argument("--tokenizer-model", type=Path, default=None, help="GGUF whose tokenizer gives the ids (llama-cli)")
    ap.add_argument("--delrec-bin", type=Path, default=None)
    ap.add_argument("--pooling", default="mean", choices=["mean", "last"])
    ap.add_argument("--items", default="llm", choices=ITEM_MODES,
                    help="llm: the LLM embeddings in place of the ID table; llm+id: beside it (DIR/tslrec-id)")
    ap.add_argument("--embed-batch", type=int, default=64)
    ap.add_argument("--whiten-dims", type=int, default=0, help="PCA components kept by the whitening (0 = all)")
    ap.add_argument("--history", type=int, default=10, help="H, used for the candidates' identity only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--stopping-step", type=int, default=3)
    ap.add_argument("--max-minutes", type=float, default=0, help="stop after the epoch that passes this budget (0 = none)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    from .metrics import metrics_from_ranks, target_rank

    set_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    t_start = time.time()
    out = args.out or work_dir()
    tdir = tslrec_dir(out, args.items)
    edir = tslrec_dir(out)  # the LLM embeddings' cache, shared by both variants
    tdir.mkdir(parents=True, exist_ok=True)
    edir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(args.data_dir, args.name, history_len=args.history, seed=args.seed)
    write_catalog(ds, edir / "catalog.csv")  # the items embedded, in the order of item_llm_emb.npy
    mpath = args.model or model_path()
    tok = make_item_tokenizer(args.tokenizer, mpath, args.tokenizer_model, args.delrec_bin)
    ids, E, emb_info = item_embeddings(ds, mpath, edir, args.pooling, tok, device=args.device,
                                       batch_size=args.embed_batch)
    logging.getLogger().info("LLM item embeddings: %s", json.dumps(emb_info))
    model, item_tokens, config, _, info = train_recbole_llm(ds, tdir, args, ids, E)
    blob = export_blob(model, item_tokens, args.max_len, config, args.pooling)
    torch.save(blob, tdir / "sasrec_llm.pth")

    scorer = TSLRecScorer(blob, "cpu")
    users = ds.users()
    t0 = time.time()
    ranks = []
    with open(tdir / "test_scores.jsonl", "w", encoding="utf-8") as f:
        for b in range(0, len(users), 256):
            us = users[b:b + 256]
            exs = [ds.test_example(u) for u in us]
            sc = scorer.scores([ds.seqs[u][:-1] for u in us], [e.candidates for e in exs])
            for u, e, s in zip(us, exs, sc):
                ranks.append(target_rank(s, e.candidates, e.target))
                f.write(json.dumps({"user": u, "target": e.target, "candidates": e.candidates, "scores": s}) + "\n")
    info.update({"test_20_candidates": metrics_from_ranks(ranks), "score_seconds": time.time() - t0,
                 "embedding": emb_info, "model": str(mpath), "pooling": args.pooling, "tokenizer": args.tokenizer,
                 "items": args.items,
                 "device": args.device, "threads": args.threads, "total_seconds": time.time() - t_start,
                 "recbole_config": {k: (v if isinstance(v, (int, float, str, bool, list, dict)) or v is None else str(v))
                                    for k, v in recbole_config(Path("."), Path("."), args).items()
                                    if k not in ("data_path", "checkpoint_dir")}})
    write_json(tdir / "metrics.json", info)
    print(json.dumps({k: info[k] for k in ("test_full_ranking", "best_valid", "epochs_run", "best_epoch",
                                           "train_seconds", "test_20_candidates")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
