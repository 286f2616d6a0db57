"""DELRec stage 2: LoRA fine-tuning of SmolLM2-135M for ranking, with the stage-1 soft prompt frozen.

    python -m delrec_train.stage2 [--out DIR] [--soft DIR/soft_prompt | none] [--users 0] [--per-user 5]
        [--max-steps 400] [--max-minutes M] [--batch-size 4] [--lora-r 8] [--targets q_proj,...] [--resume]

Same examples, candidates, scores and listwise loss as stage 1 (:mod:`delrec_train.stage1`), but the
trainable parameters are LoRA adapters on the linear layers of every block (DELRec fine-tunes the
LLM with AdaLoRA; plain LoRA of a fixed rank is what ``delrec-convert`` merges). The scoring
(title log-likelihood or the verbalizer at a mask, DELRec as published) is the soft prompt's, as
stage 1 trained it; ``--loss-over catalog`` takes the verbalizer's loss over the whole catalog. Output: a PEFT
LoRA directory (``--lora-out``, default DIR/lora) with ``delrec_train.json`` (template, soft prompt
used, settings, log). ``python -m delrec_train.export`` merges it into a GGUF for the runtime.
``--max-minutes`` stops early (the adapter is saved); ``--resume`` continues from DIR/stage2/checkpoint.pt
(``--state-dir``).
``torchrun --nproc_per_node=N -m delrec_train.stage2`` trains data-parallel (:mod:`delrec_train.dist`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .data import load_dataset
from .paths import model_path, work_dir
from .stage1 import (accumulate_step, add_loss_over_arg, add_run_args, load_training_examples, resolve_template,
                     scoring_meta)
from .template import (DEFAULT_CANDIDATES_SEP, DEFAULT_HISTORY_SEP, DEFAULT_ITEM_PREFIX, DEFAULT_TEMPLATE, LABEL_RULES,
                       PromptTokens, soft_names, without_soft)
from .util import set_threads, write_json


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m delrec_train.stage2", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="work folder (teacher outputs are read from it)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--name", default="ml-100k")
    ap.add_argument("--model", type=Path, default=None, help="base GGUF (default: asset cache)")
    ap.add_argument("--soft", default=None, help="stage-1 PEFT soft prompt dir (default DIR/soft_prompt); "
                                                 "'none' trains without a soft prompt")
    ap.add_argument("--lora-out", type=Path, default=None)
    ap.add_argument("--state-dir", type=Path, default=None, help="checkpoint and summary (default DIR/stage2)")
    ap.add_argument("--users", type=int, default=0, help="training users (seeded sample); 0 = all")
    ap.add_argument("--per-user", type=int, default=5, help="training examples per user (last positions)")
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--max-minutes", type=float, default=0.0, help="stop after this much training time (0: no limit)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--w-next", type=float, default=1.0)
    ap.add_argument("--w-teacher", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    add_loss_over_arg(ap)
    add_run_args(ap)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    from .dist import Dist, Ranker
    from .llm import load_gguf_model, make_scorer, pick_device
    from .lora import inject, lora_parameters, parse_targets, save_lora
    from .peft_io import load_prompt
    from .tokens import make_tokenizer

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out or work_dir()
    sdir = args.state_dir or out / "stage2"
    lora_out = args.lora_out or out / "lora"
    targets = parse_targets(args.targets)
    mpath = args.model or model_path()
    ctx = Dist(pick_device(args.device))  # torchrun / accelerate launch: DDP, one rank per process
    ctx.check_batch(args.batch_size)
    dev = ctx.device
    t_start = time.time()
    if ctx.is_main:
        sdir.mkdir(parents=True, exist_ok=True)

    meta, soft, soft_dir = {}, None, None
    if args.soft != "none":
        soft_dir = (Path(args.soft) if args.soft else out / "soft_prompt").resolve()
        emb, _, meta = load_prompt(soft_dir)
        soft = {meta.get("soft_prompt_name", "default"): torch.tensor(emb, device=dev)}
    template = meta.get("template", DEFAULT_TEMPLATE)
    if soft is None:
        template = without_soft(template)
    elif set(soft_names(template)) != set(soft):
        raise SystemExit(f"soft prompt {soft_dir} names {list(soft)}, its template uses {soft_names(template)}")
    prefix = meta.get("item_prefix", DEFAULT_ITEM_PREFIX)
    sep = meta.get("history_separator", DEFAULT_HISTORY_SEP)
    bos = meta.get("bos", -1)
    scoring = meta.get("scoring", "sum")
    verb = meta.get("verbalizer", {})
    handler, rule = verb.get("handler", "first"), verb.get("label_words", "title+no-year")
    csep = meta.get("candidates_separator", DEFAULT_CANDIDATES_SEP)
    template = resolve_template(template, scoring, args.loss_over)

    ds = load_dataset(args.data_dir, args.name, history_len=args.history, seed=args.seed)
    examples, users = load_training_examples(out, ds, args)

    titles = {i: it.title for i, it in ds.items.items()}
    # tokenized on rank 0 only (one `delrec tokenize` run, one token cache writer); the others get the ids
    pt = ctx.from_main(lambda: PromptTokens(template, titles, make_tokenizer(args.tokenizer, mpath, args.delrec_bin),
                                            prefix, sep, None if bos is None or bos < 0 else bos, csep,
                                            LABEL_RULES[rule]))
    model = load_gguf_model(mpath, dev)
    mods = inject(model, targets, args.lora_r, args.lora_alpha)
    params = lora_parameters(mods)
    scorer = make_scorer(model, pt, scoring, handler, args.autocast)
    items = list(pt.item_tokens) if args.loss_over == "catalog" else None
    ranker = Ranker(scorer, soft, model)  # DDP syncs the LoRA parameters' gradients (the rest is frozen)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, args.warmup)))
    start, log = 0, []
    ckpt_path = sdir / "checkpoint.pt"
    cfg_key = {k: getattr(args, k) for k in ("users", "per_user", "batch_size", "lora_r", "lora_alpha", "targets",
                                            "history", "seed", "w_next", "w_teacher", "temperature", "lr")}
    cfg_key["soft"] = str(soft_dir) if soft_dir else None
    cfg_key["model"] = mpath.name
    cfg_key["loss_over"] = args.loss_over
    ck = ctx.from_main(lambda: torch.load(ckpt_path, map_location="cpu", weights_only=False)
                       if args.resume and ckpt_path.is_file() else None)
    if ck is not None:
        ck["cfg"].setdefault("model", cfg_key["model"])  # checkpoints written before these keys resume as before
        ck["cfg"].setdefault("loss_over", "candidates")
        diff = {k: (ck["cfg"].get(k), v) for k, v in cfg_key.items() if ck["cfg"].get(k) != v}
        if diff:
            raise SystemExit(f"--resume: settings differ from the checkpoint's: {diff}")
        with torch.no_grad():
            for p, q in zip(params, ck["params"]):
                p.copy_(q.to(dev))
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
        torch.save({"step": step, "params": [p.detach().cpu() for p in params], "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "log": log, "cfg": cfg_key}, tmp)
        os.replace(tmp, ckpt_path)

    n = len(examples)
    t_train = time.time()
    bar = tqdm(range(start, args.max_steps), initial=start, total=args.max_steps,
               disable=args.no_progress or not ctx.is_main, desc="stage2", dynamic_ncols=True)
    run = {"loss": None, "hit_next": None}
    step = start
    for step in bar:
        opt.zero_grad(set_to_none=True)
        stats = accumulate_step(ddp, examples, step, args, ctx, items)
        gn = float(torch.nn.utils.clip_grad_norm_(params, args.clip if args.clip > 0 else float("inf")))
        lr_used = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        log.append({"step": step + 1, **stats, "grad_norm": gn, "lr": lr_used})
        for k in run:
            run[k] = stats[k] if run[k] is None else 0.95 * run[k] + 0.05 * stats[k]
        bar.set_postfix(loss=f"{run['loss']:.3f}", hit_next=f"{run['hit_next']:.2f}")
        if (step + 1) % args.save_every == 0:
            save_ckpt(step + 1)
        if args.max_minutes > 0 and ctx.any(time.time() - t_train > 60 * args.max_minutes):  # all ranks stop
            ctx.print(f"\n--max-minutes {args.max_minutes} reached after step {step + 1}")
            break
    bar.close()
    done = len(log)
    if done > start:
        save_ckpt(done)
    last = log[-min(50, len(log)):]
    first = log[: min(50, len(log))]
    summary = {
        "steps": done, "examples": n, "users": len(users), "examples_seen": done * args.batch_size,
        "train_seconds_this_run": time.time() - t_train, "total_seconds_this_run": time.time() - t_start,
        "loss_first50": float(np.mean([r["loss"] for r in first])) if first else None,
        "loss_last50": float(np.mean([r["loss"] for r in last])) if last else None,
        "hit_next_first50": float(np.mean([r["hit_next"] for r in first])) if first else None,
        "hit_next_last50": float(np.mean([r["hit_next"] for r in last])) if last else None,
        "lora_parameters": int(sum(p.numel() for p in params)), "device": str(dev), "threads": torch.get_num_threads(),
        **({"world_size": ctx.world} if ctx.enabled else {}),
    }
    meta_out = {
        "template": template, "item_prefix": prefix, "history_separator": sep, "bos": bos,
        **scoring_meta(scoring, handler, rule, csep),
        "soft_prompt": str(soft_dir) if soft_dir else None, "base_model": str(mpath.name), "tokenizer": args.tokenizer,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": summary, "log": log,
    }
    if ctx.is_main:
        save_lora(lora_out, mods, targets, mpath.name, meta_out)
        write_json(sdir / "summary.json", summary)
    ctx.print(json.dumps(summary, indent=1), file=sys.stdout)
    ctx.print(f"LoRA adapter written to {lora_out}")
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
