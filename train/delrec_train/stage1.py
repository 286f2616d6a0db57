"""DELRec stage 1: distil SASRec's pattern into a soft prompt for a frozen SmolLM2-135M.

    python -m delrec_train.stage1 [--out DIR] [--users 200] [--max-steps 100] [--batch-size 2]
        [--resume] [--device auto] [--seed 0] [--threads 2]

Each training example (the last ``--per-user`` positions of a user's training split, history =
the H items before the target) has 20 candidates: the target, the teacher's top-1 (when
different) and random never-interacted items. Candidate scores are the delrec contract's
``logprob(c)`` (see :mod:`delrec_train.llm`); the loss is

    w_next * CE(softmax(scores / T), target) + w_teacher * CE(softmax(scores / T), teacher top-1)

i.e. DELRec's two stage-1 tasks (predict the true next item; simulate the SR model's
recommendation) as listwise softmax cross-entropy over the candidates. Only the soft prompt
(N x 576, initialised from the embeddings of a real sentence) is trained, with AdamW.

``--scoring verbalizer`` is DELRec as published: a mask template (default
:data:`~delrec_train.template.DEFAULT_MASK_TEMPLATE`, the soft tokens mid-prompt), candidate
scores from OpenPrompt's verbalizer at the mask (:class:`~delrec_train.llm.VerbalizerScorer`,
``--verbalizer-handler``, ``--label-words``), the same loss over the candidates, or over the whole
catalog (``--loss-over catalog``: DELRec's cross-entropy over every title, one pass per example).
The pack then needs ``delrec-convert pack --scoring verbalizer`` with the same handler and rule.

Token ids come from llama.cpp through ``delrec tokenize`` (cached), so they equal the phone's.
Output: a PEFT prompt-tuning directory (``--peft-out``, default DIR/soft_prompt) +
``delrec_train.json`` (template, item prefix, separator, BOS, training settings and log).
A checkpoint (DIR/stage1/checkpoint.pt) is written every ``--save-every`` steps; ``--resume``
continues from it with the same example order. Under ``torchrun --nproc_per_node=N`` (or
``accelerate launch``) the same steps run data-parallel, see :mod:`delrec_train.dist`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .data import PURPOSE_TRAIN, Example, load_dataset, write_catalog
from .paths import model_path, work_dir
from .template import (DEFAULT_CANDIDATES_SEP, DEFAULT_HISTORY_SEP, DEFAULT_ITEM_PREFIX, DEFAULT_MASK_TEMPLATE,
                       DEFAULT_TEMPLATE, LABEL_RULES, PromptTokens, parse_template, soft_names)
from .util import select_users, set_threads, write_json

DEFAULT_INIT_TEXT = ("Recommend the next movie for this user. Think about the order of the movies the user "
                     "watched and the favourite genres and years.")


def build_examples(ds, teacher_top1: dict, users: list[str], per_user: int) -> list[tuple[Example, str]]:
    out = []
    for u in users:
        tops = teacher_top1["users"].get(u)
        if tops is None:
            raise KeyError(f"user {u} has no teacher top-1 (teacher run on other data?)")
        exs = ds.train_examples(u, per_user)
        if len(exs) > len(tops):
            raise ValueError(f"teacher gave {len(tops)} top-1 items for user {u}, {len(exs)} needed "
                             f"(re-run the teacher with --train-per-user >= {per_user})")
        for j, (e, t) in enumerate(zip(exs, tops)):
            if t["target"] != e.target:
                raise ValueError(f"user {u} example {j}: teacher target {t['target']} != {e.target}")
            e.candidates = ds.candidates(u, e.target, PURPOSE_TRAIN + j, [t["top1"]])
            out.append((e, t["top1"]))
    return out


def example_order(n: int, step: int, batch: int, seed: int) -> list[int]:
    """Indices of the examples of ``step``: epoch-wise seeded permutations (resumable)."""
    idx = []
    for k in range(batch):
        g = step * batch + k
        epoch, pos = divmod(g, n)
        perm = np.random.default_rng([seed, 11, epoch]).permutation(n)
        idx.append(int(perm[pos]))
    return idx


def load_training_examples(out: Path, ds, args) -> tuple[list[tuple[Example, str]], list[str]]:
    """The teacher's top-1 file, checked against this split, -> (examples with candidates, users)."""
    with open(out / "teacher" / "train_top1.json", encoding="utf-8") as f:
        top1 = json.load(f)
    if (top1["seed"], top1["history"], top1["n_neg"]) != (args.seed, args.history, ds.n_neg):
        raise SystemExit(f"teacher outputs were made with seed/history/n_neg {top1['seed']}/{top1['history']}/"
                         f"{top1['n_neg']}, not {args.seed}/{args.history}/{ds.n_neg}")
    users = select_users(ds.users(), args.users or None, args.seed)
    examples = build_examples(ds, top1, users, args.per_user)
    if not examples:
        raise SystemExit("no training examples")
    return examples, users


def accumulate_step(ranker, examples, step: int, args, ctx, items: list[str] | None = None) -> dict:
    """One optimizer step's examples: listwise loss (both DELRec tasks) backpropagated, batch stats returned.

    ``ranker``: a :class:`~delrec_train.dist.Ranker` (DDP-wrapped under a launcher), ``ctx`` its
    :class:`~delrec_train.dist.Dist`. Each rank takes its slice of the step's examples; the gradient
    and the returned stats are those of the whole batch (mean over it) on every rank. ``items``: the
    loss is over these (the whole catalog) instead of each example's candidates."""
    import torch

    F = torch.nn.functional
    stats = {"loss": 0.0, "hit_next": 0.0, "hit_teacher": 0.0}
    mine = ctx.shard(example_order(len(examples), step, args.batch_size, args.seed))
    pos = {c: j for j, c in enumerate(items)} if items else None
    for k, i in enumerate(mine):
        ex, t1 = examples[i]
        scored = items or ex.candidates
        where = pos.__getitem__ if pos else scored.index
        with ctx.no_sync(ranker, sync=k == len(mine) - 1):  # the slice's last backward all-reduces
            scores = ranker(ex.history, scored)
            z = (scores / args.temperature)[None]
            a = torch.tensor([where(ex.target)], device=z.device)
            b = torch.tensor([where(t1)], device=z.device)
            loss = (args.w_next * F.cross_entropy(z, a) + args.w_teacher * F.cross_entropy(z, b)) / args.batch_size
            # DDP averages over the ranks: x world makes that the sum over the batch / batch_size
            (loss * ctx.world if ctx.enabled else loss).backward()
        best = int(torch.argmax(scores.detach()))
        stats["loss"] += loss.item()
        stats["hit_next"] += (best == int(a)) / args.batch_size
        stats["hit_teacher"] += (best == int(b)) / args.batch_size
    return ctx.sum(stats)


OLD_CHECKPOINT_DEFAULTS = {"scoring": "sum", "verbalizer_handler": "first", "label_words": "title+no-year",
                           "candidates_sep": DEFAULT_CANDIDATES_SEP, "loss_over": "candidates"}


def init_soft(embed_weight, text_ids: list[int], n: int):
    """The soft prompt's first value: the embeddings of ``--init-text``'s token ids, repeated to n rows."""
    import torch

    ids = list(text_ids)
    if not ids:
        raise ValueError("--init-text tokenizes to nothing")
    ids = (ids * ((n + len(ids) - 1) // len(ids)))[:n]
    return embed_weight[torch.tensor(ids, device=embed_weight.device)].detach().clone().float(), ids


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m delrec_train.stage1", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="work folder (teacher outputs are read from it)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--name", default="ml-100k", help="dataset file stem: DATA_DIR/NAME.inter, NAME.item")
    ap.add_argument("--model", type=Path, default=None, help="base GGUF (default: asset cache)")
    ap.add_argument("--peft-out", type=Path, default=None)
    ap.add_argument("--users", type=int, default=200, help="training users (seeded sample); 0 = all")
    ap.add_argument("--per-user", type=int, default=1, help="training examples per user")
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--w-next", type=float, default=1.0, help="weight of task (a): true next item")
    ap.add_argument("--w-teacher", type=float, default=1.0, help="weight of task (b): teacher's top-1")
    ap.add_argument("--temperature", type=float, default=1.0, help="scores are divided by this before softmax")
    ap.add_argument("--n-virtual", type=int, default=16)
    ap.add_argument("--init-text", default=DEFAULT_INIT_TEXT)
    ap.add_argument("--template", default=None, help="default: the built-in title template, or with --scoring "
                                                    "verbalizer the built-in mask template")
    add_scoring_args(ap)
    ap.add_argument("--item-prefix", default=DEFAULT_ITEM_PREFIX)
    ap.add_argument("--history-sep", default=DEFAULT_HISTORY_SEP)
    ap.add_argument("--bos", type=int, default=-1, help="token id put before everything, -1 for none (as the pack)")
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    add_run_args(ap)
    return ap.parse_args(argv)


def add_loss_over_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--loss-over", default="candidates", choices=["candidates", "catalog"],
                    help="verbalizer: softmax over each example's candidates or over the whole catalog")


def add_scoring_args(ap: argparse.ArgumentParser) -> None:
    """DELRec as published: the verbalizer at a mask (stage 2 takes them from the soft prompt)."""
    ap.add_argument("--scoring", default="sum", choices=["sum", "verbalizer"],
                    help="title log-likelihood (sum) or OpenPrompt's verbalizer at {mask}")
    ap.add_argument("--verbalizer-handler", default="first", choices=["first", "mean", "max"])
    ap.add_argument("--label-words", default="title+no-year", choices=sorted(LABEL_RULES))
    ap.add_argument("--candidates-sep", default=DEFAULT_CANDIDATES_SEP, help="between the titles {candidates} lists")
    add_loss_over_arg(ap)


def scoring_meta(scoring: str, handler: str, label_words: str, candidates_sep: str) -> dict:
    """What the pack must be built with (``delrec-convert pack --scoring verbalizer ...``)."""
    if scoring != "verbalizer":
        return {"scoring": scoring}
    return {"scoring": "verbalizer", "candidates_separator": candidates_sep,
            "verbalizer": {"handler": handler, "label_words": label_words, "prefix": " "}}


def resolve_template(template: str | None, scoring: str, loss_over: str) -> str:
    """The template for ``scoring``, checked: a mask template exactly when scoring with the verbalizer."""
    template = template or (DEFAULT_MASK_TEMPLATE if scoring == "verbalizer" else DEFAULT_TEMPLATE)
    kinds = [k for k, _ in parse_template(template)]
    mask = "mask" in kinds
    if mask != (scoring == "verbalizer"):
        raise SystemExit(f"--scoring {scoring} needs a {'mask' if scoring == 'verbalizer' else 'title'} template "
                         f"(one with {{{'mask' if scoring == 'verbalizer' else 'candidate'}}}), got {template!r}")
    if loss_over == "catalog" and (not mask or "candidates" in kinds):
        raise SystemExit("--loss-over catalog: verbalizer scoring with a template that does not list {candidates}")
    return template


def add_run_args(ap: argparse.ArgumentParser) -> None:
    """Options every training stage shares: device, threads, precision, checkpoints, tokenizer."""
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--autocast", default="bf16", choices=["bf16", "none"],
                    help="bf16 autocast for the frozen trunk (default; ~2.5x faster on AMX CPUs) or none (float32)")
    ap.add_argument("--save-every", type=int, default=20)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--tokenizer", default="llama-cli", choices=["llama-cli", "hf-gguf"])
    ap.add_argument("--delrec-bin", type=Path, default=None)
    ap.add_argument("--no-progress", action="store_true")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    from .dist import Dist, Ranker
    from .llm import load_gguf_model, make_scorer, pick_device
    from .peft_io import save_prompt
    from .tokens import make_tokenizer

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out or work_dir()
    sdir = out / "stage1"
    peft_out = args.peft_out or out / "soft_prompt"
    args.template = resolve_template(args.template, args.scoring, args.loss_over)
    names = soft_names(args.template)
    if len(set(names)) != 1:
        raise SystemExit(f"--template must use exactly one soft prompt name (has {names})")
    name = names[0]
    mpath = args.model or model_path()
    ctx = Dist(pick_device(args.device))  # torchrun / accelerate launch: DDP, one rank per process
    ctx.check_batch(args.batch_size)
    dev = ctx.device
    t_start = time.time()
    if ctx.is_main:
        sdir.mkdir(parents=True, exist_ok=True)

    ds = load_dataset(args.data_dir, args.name, history_len=args.history, seed=args.seed)
    examples, users = load_training_examples(out, ds, args)
    if ctx.is_main:
        write_catalog(ds, out / "catalog.csv")  # the converter's catalog, same titles as trained on
    n_same = sum(e.target == t for e, t in examples)

    def tokenize():  # on rank 0 only (one `delrec tokenize` run, one token cache writer); the others get the ids
        tok = make_tokenizer(args.tokenizer, mpath, args.delrec_bin)
        titles = {i: it.title for i, it in ds.items.items()}
        pt = PromptTokens(args.template, titles, tok, args.item_prefix, args.history_sep,
                          None if args.bos < 0 else args.bos, args.candidates_sep, LABEL_RULES[args.label_words])
        return pt, tok.encode_many([args.init_text])[0]

    pt, init_text_ids = ctx.from_main(tokenize)
    model = load_gguf_model(mpath, dev)
    scorer = make_scorer(model, pt, args.scoring, args.verbalizer_handler, args.autocast)
    items = list(pt.item_tokens) if args.loss_over == "catalog" else None
    init, init_ids = init_soft(model.get_input_embeddings().weight, init_text_ids, args.n_virtual)
    soft = torch.nn.Parameter(init.to(dev))
    ranker = Ranker(scorer, {name: soft})
    opt = torch.optim.AdamW([soft], lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, args.warmup)))
    start, log = 0, []
    ckpt_path = sdir / "checkpoint.pt"
    cfg_key = {k: getattr(args, k) for k in ("users", "per_user", "batch_size", "n_virtual", "template", "item_prefix",
                                            "history_sep", "bos", "history", "seed", "w_next", "w_teacher",
                                            "temperature", "lr", "scoring", "verbalizer_handler", "label_words",
                                            "candidates_sep", "loss_over")}
    ck = ctx.from_main(lambda: torch.load(ckpt_path, map_location="cpu", weights_only=False)
                       if args.resume and ckpt_path.is_file() else None)
    if ck is not None:
        for k, v in OLD_CHECKPOINT_DEFAULTS.items():  # checkpoints written before these keys resume as before
            ck["cfg"].setdefault(k, v)
        diff = {k: (ck["cfg"].get(k), v) for k, v in cfg_key.items() if ck["cfg"].get(k) != v}
        if diff:
            raise SystemExit(f"--resume: settings differ from the checkpoint's: {diff}")
        with torch.no_grad():
            soft.copy_(ck["soft"].to(dev))
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        start, log = ck["step"], ck["log"]
        ctx.print(f"resumed from {ckpt_path} at step {start}")
    elif args.resume:
        ctx.print(f"--resume: no checkpoint at {ckpt_path}, starting fresh")
    ddp = ctx.wrap(ranker)

    def save_ckpt(step):
        if not ctx.is_main:
            return
        tmp = ckpt_path.with_suffix(".part")
        torch.save({"step": step, "soft": soft.detach().cpu(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "log": log, "cfg": cfg_key}, tmp)
        os.replace(tmp, ckpt_path)

    n = len(examples)
    t_train = time.time()
    bar = tqdm(range(start, args.max_steps), initial=start, total=args.max_steps,
               disable=args.no_progress or not ctx.is_main, desc="stage1", dynamic_ncols=True)
    run = {"loss": None, "hit_next": None, "hit_teacher": None}
    for step in bar:
        opt.zero_grad(set_to_none=True)
        stats = accumulate_step(ddp, examples, step, args, ctx, items)
        if args.clip > 0:
            gn = float(torch.nn.utils.clip_grad_norm_([soft], args.clip))
        else:
            gn = float(soft.grad.norm())
        lr_used = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        log.append({"step": step + 1, **stats, "grad_norm": gn, "lr": lr_used})
        for k in run:
            run[k] = stats[k] if run[k] is None else 0.9 * run[k] + 0.1 * stats[k]
        bar.set_postfix(loss=f"{run['loss']:.3f}", hit_next=f"{run['hit_next']:.2f}", hit_t=f"{run['hit_teacher']:.2f}")
        if (step + 1) % args.save_every == 0:
            save_ckpt(step + 1)
    bar.close()
    if args.max_steps > start:
        save_ckpt(args.max_steps)
    train_s = time.time() - t_train
    first = log[: min(10, len(log))]
    last = log[-min(10, len(log)):]
    summary = {
        "steps": args.max_steps, "examples": n, "users": len(users), "teacher_top1_equals_target": n_same / n,
        "train_seconds_this_run": train_s, "total_seconds_this_run": time.time() - t_start,
        "loss_first10": float(np.mean([r["loss"] for r in first])) if first else None,
        "loss_last10": float(np.mean([r["loss"] for r in last])) if last else None,
        "hit_next_last10": float(np.mean([r["hit_next"] for r in last])) if last else None,
        "device": str(dev), "threads": torch.get_num_threads(),
        **({"world_size": ctx.world} if ctx.enabled else {}),
    }
    meta = {
        "soft_prompt_name": name, "template": args.template, "item_prefix": args.item_prefix,
        "history_separator": args.history_sep, "bos": args.bos,
        **scoring_meta(args.scoring, args.verbalizer_handler, args.label_words, args.candidates_sep),
        "init_text": args.init_text, "init_token_ids": init_ids, "tokenizer": args.tokenizer,
        "base_model": str(mpath.name), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": summary, "log": log,
    }
    cfg = model.config
    if ctx.is_main:
        save_prompt(peft_out, soft.detach(), mpath.name, meta, getattr(cfg, "num_hidden_layers", None),
                    getattr(cfg, "num_attention_heads", None))
        write_json(sdir / "summary.json", summary)
    ctx.print(json.dumps(summary, indent=1), file=sys.stdout)
    ctx.print(f"soft prompt written to {peft_out}")
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
