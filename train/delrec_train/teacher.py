"""SASRec teacher trained with RecBole 1.2.1 on the leave-one-out training split.

    python -m delrec_train.teacher [--out DIR] [--epochs 100] [--device auto] [--threads 2]

RecBole is used piece by piece (``Config``, ``create_dataset``, ``data_preparation``, ``SASRec``,
``Trainer``); ``recbole.quick_start`` is avoided because it imports ray (pinned <= 2.6.3 by RecBole,
unavailable for current Pythons). RecBole's checkpoints pickle the config, so torch >= 2.6 loads
them only with ``weights_only=False``: the best checkpoint is reloaded here with that flag and
``Trainer.evaluate`` is called with ``load_best_model=False`` (its own reload would fail).

Split agreement: RecBole gets a rewritten ``.inter`` whose timestamp column is each user's rank
under our tie rule (0, 1, 2, ...), so RecBole's own leave-one-out (``LS: valid_and_test``,
``order: TO``) produces exactly our training split / validation target / test target.

Outputs in ``DIR/teacher/``: ``recbole_best.pth`` (RecBole's own best checkpoint; ``--from-checkpoint``
finishes an interrupted run from such a file without training), ``sasrec.pth`` (state dict + item token list + config subset),
``metrics.json`` (RecBole full-ranking valid/test metrics, timings), ``test_scores.jsonl``
(per user: the 20 evaluation candidates and the teacher's scores for them, history = every item
before the target, truncated to MAX_ITEM_LIST_LENGTH), ``train_top1.json`` (per user, the
teacher's top-1 item for the last K training positions, excluding items already in the prefix:
the DELRec distillation target).
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

from .data import Dataset, load_dataset
from .paths import work_dir
from .util import set_threads, write_json

DATASET_NAME = "delrec_ml"


def write_recbole_inter(ds: Dataset, folder: Path) -> Path:
    d = Path(folder) / DATASET_NAME
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{DATASET_NAME}.inter"
    with open(p, "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in ds.users():
            for k, i in enumerate(ds.seqs[u]):
                f.write(f"{u}\t{i}\t{k}\n")
    return p


class _NullWriter:
    """Stands in for RecBole's tensorboard SummaryWriter (it would write into the cwd)."""

    def __getattr__(self, name):
        return lambda *a, **k: None


def recbole_config(data_root: Path, ckpt_dir: Path, args) -> dict:
    return {
        "data_path": str(data_root),
        "checkpoint_dir": str(ckpt_dir),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "n_layers": 2, "n_heads": 2, "hidden_size": args.hidden, "inner_size": 4 * args.hidden,
        "hidden_dropout_prob": args.dropout, "attn_dropout_prob": args.dropout,
        "epochs": args.epochs, "stopping_step": args.stopping_step,
        "train_batch_size": args.batch_size, "eval_batch_size": 1024, "learning_rate": args.lr,
        "metrics": ["Hit", "NDCG", "MRR"], "topk": [1, 5, 10], "valid_metric": "NDCG@10",
        "seed": args.seed, "reproducibility": True,
        "gpu_id": "" if args.device == "cpu" else "0",
        "show_progress": False, "log_wandb": False, "save_dataset": False, "save_dataloaders": False,
        "worker": 0,
    }


def fit_with_budget(trainer, train_data, valid_data, max_minutes: float) -> tuple[str, bool]:
    """``Trainer.fit`` (best checkpoint saved), stopped after the epoch that passes ``max_minutes``
    (0 = no budget); -> (the best checkpoint's file, whether the budget stopped it)."""
    t1 = time.time()

    class _OutOfTime(Exception):
        pass

    def budget(epoch_idx, valid_score):
        if max_minutes and time.time() - t1 > 60 * max_minutes:
            raise _OutOfTime

    stopped = False
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False, verbose=True, callback_fn=budget)
    except _OutOfTime:
        stopped = True
        logging.getLogger().info("time budget (--max-minutes %s) reached: keeping the best checkpoint so far",
                                 max_minutes)
    return trainer.saved_model_file, stopped


def train_recbole(ds: Dataset, out: Path, args):
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    import recbole.trainer.trainer as rb_trainer
    from recbole.utils import init_seed

    rb_trainer.get_tensorboard = lambda logger: _NullWriter()
    data_root = out / "recbole_data"
    write_recbole_inter(ds, data_root)
    cfg = recbole_config(data_root, out, args)
    config = Config(model="SASRec", dataset=DATASET_NAME, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    set_threads(args.threads)  # init_seed/Config may touch torch settings; threads last
    t0 = time.time()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)
    t1 = time.time()

    stopped_by_budget = False
    if args.from_checkpoint:
        ckpt_file = str(args.from_checkpoint)
        logging.getLogger().info("no training: finishing from %s", ckpt_file)
    else:
        ckpt_file, stopped_by_budget = fit_with_budget(trainer, train_data, valid_data, args.max_minutes)
    train_s = time.time() - t1
    ckpt = torch.load(ckpt_file, map_location=config["device"], weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    model.load_other_parameter(ckpt.get("other_parameter"))
    valid_result = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    epochs_run = len(trainer.train_loss_dict) if not args.from_checkpoint else None
    if not args.from_checkpoint:
        os.replace(ckpt_file, out / "recbole_best.pth")
    return model, dataset, config, {
        "best_valid": {k: float(v) for k, v in dict(valid_result).items()},
        "test_full_ranking": {k: float(v) for k, v in dict(test_result).items()},
        "epochs_run": epochs_run, "best_epoch": int(ckpt.get("epoch", -1)), "stopped_by_time_budget": stopped_by_budget,
        "train_seconds": train_s, "prepare_seconds": t1 - t0,
    }


class TeacherScorer:
    """Scores arbitrary (prefix, items) with a trained SASRec; items given as catalog tokens."""

    def __init__(self, model, item_tokens: list[str], max_len: int, device):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.tok2id = {t: i for i, t in enumerate(item_tokens)}  # index 0 = [PAD]
        self.item_tokens = item_tokens
        self.max_len = max_len
        self.device = device

    def _ids(self, items: list[str]) -> list[int]:
        return [self.tok2id[i] for i in items]

    def full_scores(self, prefixes: list[list[str]]) -> np.ndarray:
        torch = self.torch
        B = len(prefixes)
        seq = torch.zeros(B, self.max_len, dtype=torch.long)
        lens = torch.zeros(B, dtype=torch.long)
        for b, p in enumerate(prefixes):
            ids = self._ids(p[-self.max_len:])
            if not ids:
                raise ValueError("empty prefix")
            seq[b, :len(ids)] = torch.tensor(ids)
            lens[b] = len(ids)
        with torch.no_grad():
            out = self.model.forward(seq.to(self.device), lens.to(self.device))
            s = out @ self.model.item_embedding.weight.T
        return s.float().cpu().numpy()

    def scores(self, prefixes: list[list[str]], items: list[list[str]]) -> list[list[float]]:
        full = self.full_scores(prefixes)
        return [[float(full[b, self.tok2id[i]]) for i in its] for b, its in enumerate(items)]

    def top1(self, prefixes: list[list[str]], exclude_prefix: bool = True) -> list[str]:
        full = self.full_scores(prefixes)
        full[:, 0] = -np.inf
        out = []
        for b, p in enumerate(prefixes):
            if exclude_prefix:
                full[b, self._ids(p)] = -np.inf
            out.append(self.item_tokens[int(np.argmax(full[b]))])
        return out


def load_teacher(out: Path, device="cpu") -> TeacherScorer:
    import torch
    from recbole.model.sequential_recommender import SASRec  # noqa: F401  (checkpoint pickles RecBole objects)

    blob = torch.load(Path(out) / "teacher" / "sasrec.pth", map_location=device, weights_only=False)
    model = _build_sasrec_from_blob(blob, device)
    return TeacherScorer(model, blob["item_tokens"], blob["max_len"], device)


def _build_sasrec_from_blob(blob, device):
    from recbole.model.sequential_recommender import SASRec

    class _DS:  # the little SASRec's constructor reads from a dataset
        def __init__(self, n_items, cfg):
            self.n = n_items
            self.uid_field, self.iid_field = "user_id", "item_id"

        def num(self, field):
            return self.n

        def fields(self, *a, **k):
            return []

    model = SASRec(blob["config"], _DS(len(blob["item_tokens"]), blob["config"]))
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m delrec_train.teacher", description="Train the SASRec teacher (RecBole).")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--name", default="ml-100k", help="dataset file stem: DATA_DIR/NAME.inter, NAME.item")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--history", type=int, default=10, help="H, used for the candidates' identity only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--stopping-step", type=int, default=3)
    ap.add_argument("--from-checkpoint", type=Path, default=None,
                    help="skip training: finish (metrics, scores, top-1) from a RecBole checkpoint of an interrupted run "
                         "made with the same settings")
    ap.add_argument("--max-minutes", type=float, default=0, help="stop after the epoch that passes this budget (0 = none)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--max-len", type=int, default=20, help="SASRec MAX_ITEM_LIST_LENGTH (training cost grows with it)")
    ap.add_argument("--train-per-user", type=int, default=5, help="training positions per user given a top-1")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    set_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    out = args.out or work_dir()
    tdir = out / "teacher"
    tdir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(args.data_dir, args.name, history_len=args.history, seed=args.seed)
    model, dataset, config, info = train_recbole(ds, tdir, args)
    item_tokens = list(dataset.field2id_token["item_id"])
    keep = ["n_layers", "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob", "attn_dropout_prob",
            "hidden_act", "layer_norm_eps", "initializer_range", "loss_type", "MAX_ITEM_LIST_LENGTH",
            "USER_ID_FIELD", "ITEM_ID_FIELD", "LIST_SUFFIX", "ITEM_LIST_LENGTH_FIELD", "NEG_PREFIX", "device"]
    small_cfg = {k: config[k] for k in keep}
    small_cfg["device"] = "cpu"
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "item_tokens": item_tokens,
                "max_len": args.max_len, "config": small_cfg}, tdir / "sasrec.pth")
    dev = torch.device(config["device"])
    scorer = TeacherScorer(model, item_tokens, args.max_len, dev)
    users = ds.users()
    t0 = time.time()
    with open(tdir / "test_scores.jsonl", "w", encoding="utf-8") as f:
        for b in range(0, len(users), 256):
            us = users[b:b + 256]
            exs = [ds.test_example(u) for u in us]
            sc = scorer.scores([ds.seqs[u][:-1] for u in us], [e.candidates for e in exs])
            for u, e, s in zip(us, exs, sc):
                f.write(json.dumps({"user": u, "target": e.target, "candidates": e.candidates, "scores": s}) + "\n")
    top1: dict[str, list] = {}
    agree = n = 0
    for u in users:
        exs = ds.train_examples(u, args.train_per_user)
        n_tr = len(ds.seqs[u]) - 2
        prefixes = [ds.seqs[u][:n_tr - 1 - j] for j in range(len(exs))]
        tops = scorer.top1(prefixes) if exs else []
        top1[u] = [{"target": e.target, "top1": t} for e, t in zip(exs, tops)]
        agree += sum(e.target == t for e, t in zip(exs, tops))
        n += len(exs)
    write_json(tdir / "train_top1.json", {"seed": args.seed, "history": args.history, "n_neg": ds.n_neg,
                                          "per_user": args.train_per_user, "users": top1})
    info.update({"score_seconds": time.time() - t0, "train_top1_equals_target": agree / max(n, 1),
                 "train_examples_with_top1": n, "device": str(dev), "threads": args.threads,
                 "recbole_config": {k: (v if isinstance(v, (int, float, str, bool, list, dict)) or v is None else str(v))
                                    for k, v in recbole_config(Path("."), Path("."), args).items()
                                    if k not in ("data_path", "checkpoint_dir")}})
    write_json(tdir / "metrics.json", info)
    print(json.dumps({k: info[k] for k in ("test_full_ranking", "best_valid", "epochs_run", "train_seconds",
                                           "train_top1_equals_target")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
