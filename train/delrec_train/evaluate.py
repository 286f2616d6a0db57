"""PyTorch evaluation on the test targets (DELRec protocol: rank the target among 20 candidates).

    python -m delrec_train.evaluate [--out DIR] [--users 500] [--soft DIR/soft_prompt]
        [--rows random,pop,sasrec,llm_zeroshot,llm_soft] [--resume] [--threads 2] [--device auto]

Rows: ``random`` (seeded uniform scores), ``pop`` (training-split interaction counts),
``sasrec`` (the teacher's scores, DIR/teacher/test_scores.jsonl), ``llm_zeroshot`` (the template
with its ``{soft:...}`` piece removed), ``llm_soft`` (template + trained soft prompt), ``llm_lora``
(the stage-2 LoRA merged into the weights + the soft prompt it was trained with).

Writes DIR/eval/ (or ``--eval-dir``):
- ``requests.jsonl``: ``{"user", "history" (oldest first), "candidates", "target"}`` per user,
  input of ``delrec rank-batch --requests``;
- ``scores.jsonl``: ``{"user", "target", "history", "candidates", "rows": {row: {"scores": [...],
  "n_tokens": [...] (LLM rows)}}}`` in candidate order, to join with runtime results;
- ``metrics.json``: metrics per row, timings; ``parts/ROW.jsonl``: per-row progress (``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from .data import load_dataset
from .metrics import metrics_from_ranks, target_rank
from .paths import model_path, work_dir
from .report import format_table
from .template import DEFAULT_HISTORY_SEP, DEFAULT_ITEM_PREFIX, DEFAULT_TEMPLATE, without_soft
from .util import read_jsonl, select_users, set_threads, write_json

ALL_ROWS = ["random", "pop", "sasrec", "llm_zeroshot", "llm_soft", "llm_lora"]
ROW_LABELS = {"random": "Random", "pop": "Most popular (train split)", "sasrec": "SASRec teacher (RecBole)",
              "llm_zeroshot": "SmolLM2-135M zero-shot (PyTorch)", "llm_soft": "SmolLM2-135M + DELRec soft prompt (PyTorch)",
              "llm_lora": "SmolLM2-135M + soft prompt + stage-2 LoRA (PyTorch)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m delrec_train.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--eval-dir", type=Path, default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--name", default="ml-100k", help="dataset file stem: DATA_DIR/NAME.inter, NAME.item")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--soft", type=Path, default=None, help="PEFT dir (default DIR/soft_prompt)")
    ap.add_argument("--lora", type=Path, default=None, help="stage-2 LoRA dir for the llm_lora row (default DIR/lora); "
                    "the soft prompt is the one the LoRA was trained with")
    ap.add_argument("--users", type=int, default=500, help="seeded sample of users; 0 = all")
    ap.add_argument("--llm-users", type=int, default=None, help="evaluate the LLM rows on the first N of those users only")
    ap.add_argument("--rows", default=None, help="default: all; llm_lora only when the LoRA dir exists")
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--template", default=None, help="default: the soft prompt's, else the built-in one")
    ap.add_argument("--item-prefix", default=None)
    ap.add_argument("--history-sep", default=None)
    ap.add_argument("--bos", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--autocast", default="none", choices=["none", "bf16"],
                    help="LLM rows: float32 (default, closest to the runtime) or bf16 autocast (faster)")
    ap.add_argument("--tokenizer", default="llama-cli", choices=["llama-cli", "hf-gguf"])
    ap.add_argument("--delrec-bin", type=Path, default=None)
    ap.add_argument("--resume", action="store_true", help="keep parts/ROW.jsonl results of an earlier run")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    out = args.out or work_dir()
    if args.rows is None:
        has_lora = ((args.lora or out / "lora") / "adapter_config.json").is_file()
        args.rows = ",".join(r for r in ALL_ROWS if r != "llm_lora" or has_lora)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ALL_ROWS]
    if bad:
        raise SystemExit(f"unknown rows {bad}; choose from {ALL_ROWS}")
    out = args.out or work_dir()
    edir = args.eval_dir or out / "eval"
    pdir = edir / "parts"
    pdir.mkdir(parents=True, exist_ok=True)

    ds = load_dataset(args.data_dir, args.name, history_len=args.history, seed=args.seed)
    users = select_users(ds.users(), args.users or None, args.seed)
    exs = {u: ds.test_example(u) for u in users}
    with open(edir / "requests.jsonl", "w", encoding="utf-8") as f:
        for u in users:
            e = exs[u]
            f.write(json.dumps({"user": u, "history": e.history, "candidates": e.candidates, "target": e.target}) + "\n")

    timings: dict[str, float] = {}
    results: dict[str, dict[str, dict]] = {}
    for row in rows:
        part = pdir / f"{row}.jsonl"
        done: dict[str, dict] = {}
        key_file = pdir / f"{row}.key"
        key = row_key(row, args, out)
        if args.resume and part.is_file() and key_file.is_file() and key_file.read_text() == key:
            done = {r["user"]: r for r in read_jsonl(part) if r["user"] in exs and r["candidates"] == exs[r["user"]].candidates}
        elif part.exists():
            part.unlink()
        key_file.write_text(key)
        row_users = users if not row.startswith("llm") or args.llm_users is None else users[:args.llm_users]
        todo = [u for u in row_users if u not in done]
        t0 = time.time()
        new = list(score_row(row, todo, exs, ds, args, out)) if todo else []
        if todo:  # rows taken over from an earlier run (--resume) keep no timing
            timings[row] = time.time() - t0
            timings[row + "_per_user_ms"] = 1e3 * timings[row] / len(todo)
        results[row] = done
        # score_row writes each line as it goes; reload to include them
        for r in new:
            results[row][r["user"]] = r

    with open(edir / "scores.jsonl", "w", encoding="utf-8") as f:
        for u in users:
            e = exs[u]
            rr = {}
            for row in rows:
                if u in results[row]:
                    r = results[row][u]
                    rr[row] = {k: r[k] for k in ("scores", "n_tokens") if k in r}
            f.write(json.dumps({"user": u, "target": e.target, "history": e.history, "candidates": e.candidates,
                                "rows": rr}) + "\n")
    metrics = {}
    for row in rows:
        ranks = [target_rank(results[row][u]["scores"], exs[u].candidates, exs[u].target) for u in users if u in results[row]]
        metrics[row] = metrics_from_ranks(ranks) | {"label": ROW_LABELS[row]}
    write_json(edir / "metrics.json", {"rows": metrics, "seconds": timings, "users": len(users), "seed": args.seed,
                                       "history": args.history, "n_candidates": ds.n_neg + 1})
    print(format_table([(ROW_LABELS[r], metrics[r]) for r in rows]))
    return 0


def row_key(row, args, out) -> str:
    """What a row's scores depend on besides users and candidates (--resume reuses only matching parts)."""
    import hashlib

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "-"

    parts = [row, str(args.seed), str(args.history)]
    if row.startswith("llm"):
        mp = args.model or model_path()
        parts += [str(mp), str(mp.stat().st_size) if mp.exists() else "-", str(args.template), str(args.item_prefix),
                  str(args.history_sep), str(args.bos), args.autocast, args.tokenizer]
        if row == "llm_soft":
            parts.append(digest((args.soft or out / "soft_prompt") / "adapter_model.safetensors"))
        if row == "llm_lora":
            ldir = args.lora or out / "lora"
            parts += [digest(ldir / "adapter_model.safetensors"), digest(ldir / "delrec_train.json")]
    elif row == "sasrec":
        parts.append(digest(out / "teacher" / "test_scores.jsonl"))
    return "|".join(parts)


def score_row(row, users, exs, ds, args, out):
    part = (args.eval_dir or out / "eval") / "parts" / f"{row}.jsonl"
    with open(part, "a", encoding="utf-8") as f:
        for r in _score_row(row, users, exs, ds, args, out):
            f.write(json.dumps(r) + "\n")
            f.flush()
            yield r


def _score_row(row, users, exs, ds, args, out):
    if row == "random":
        for u in users:
            rng = np.random.default_rng([args.seed, zlib.crc32(u.encode()), 99])
            yield {"user": u, "candidates": exs[u].candidates, "scores": rng.random(len(exs[u].candidates)).tolist()}
    elif row == "pop":
        pop = ds.train_popularity()
        for u in users:
            yield {"user": u, "candidates": exs[u].candidates, "scores": [float(pop.get(c, 0)) for c in exs[u].candidates]}
    elif row == "sasrec":
        p = out / "teacher" / "test_scores.jsonl"
        if not p.is_file():
            raise SystemExit(f"{p} missing: run `python -m delrec_train.teacher` first (or drop the sasrec row)")
        ts = {r["user"]: r for r in read_jsonl(p)}
        for u in users:
            r = ts.get(u)
            if r is None or r["candidates"] != exs[u].candidates or r["target"] != exs[u].target:
                raise SystemExit(f"teacher test scores for user {u} do not match this split/candidates "
                                 f"(different seed or history?)")
            yield {"user": u, "candidates": r["candidates"], "scores": r["scores"]}
    else:
        yield from _llm_rows(row, users, exs, ds, args, out)


_LLM = {}


def _llm_rows(row, users, exs, ds, args, out):
    import torch
    from tqdm import tqdm

    from .llm import load_gguf_model, make_scorer, pick_device
    from .peft_io import load_prompt
    from .template import DEFAULT_CANDIDATES_SEP, LABEL_RULES, PromptTokens, is_mask_template
    from .tokens import make_tokenizer

    set_threads(args.threads)
    mpath = args.model or model_path()
    dev = pick_device(args.device)
    meta, soft, deltas = {}, None, None
    if row == "llm_lora":
        from .lora import load_lora

        ldir = args.lora or out / "lora"
        _, deltas = load_lora(ldir)
        with open(ldir / "delrec_train.json", encoding="utf-8") as f:
            lmeta = json.load(f)
        sdir = Path(lmeta["soft_prompt"]) if lmeta.get("soft_prompt") else None
    else:
        sdir = (args.soft or out / "soft_prompt") if row == "llm_soft" else None
    if sdir is not None:
        emb, cfg, meta = load_prompt(sdir)
        soft = {meta.get("soft_prompt_name", "default"): torch.tensor(emb, device=dev)}
    template = args.template or meta.get("template", DEFAULT_TEMPLATE)
    if soft is None:
        template = without_soft(template)
    prefix = args.item_prefix if args.item_prefix is not None else meta.get("item_prefix", DEFAULT_ITEM_PREFIX)
    sep = args.history_sep if args.history_sep is not None else meta.get("history_separator", DEFAULT_HISTORY_SEP)
    bos = args.bos if args.bos is not None else meta.get("bos", -1)
    if "tok" not in _LLM:
        _LLM["tok"] = make_tokenizer(args.tokenizer, mpath, args.delrec_bin)
    key = "model_lora" if deltas is not None else "model"
    if key not in _LLM:
        _LLM[key] = load_gguf_model(mpath, dev)
        if deltas is not None:
            from .lora import merge_into_model

            merge_into_model(_LLM[key], deltas)
    titles = {i: it.title for i, it in ds.items.items()}
    # a mask template (DELRec as published) is scored by the verbalizer the soft prompt was trained with
    verb = meta.get("verbalizer", {})
    rule = LABEL_RULES[verb.get("label_words", "title+no-year")]
    pt = PromptTokens(template, titles, _LLM["tok"], prefix, sep, None if bos is None or bos < 0 else bos,
                      meta.get("candidates_separator", DEFAULT_CANDIDATES_SEP), rule)
    scoring = "verbalizer" if is_mask_template(template) else "sum"
    scorer = make_scorer(_LLM[key], pt, scoring, verb.get("handler", "first"), args.autocast)
    with torch.no_grad():
        for u in tqdm(users, desc=row, disable=args.no_progress, dynamic_ncols=True):
            e = exs[u]
            s, n = scorer.score(e.history, e.candidates, soft)
            yield {"user": u, "candidates": e.candidates, "scores": s.cpu().tolist(), "n_tokens": n}


if __name__ == "__main__":
    sys.exit(main())
