#!/usr/bin/env python3
"""PyTorch eager baseline for delrec-bench: the same prompts and tokens, scored with transformers.

    python3 bench/torch_baseline.py --job JOB.json --source SOURCE.json --threads 2 --reps 3 \
        --budget 30 --out OUT.json

JOB.json comes from a delrec-bench worker: the soft prompt rows, and for each (H, K) cell the prefix
rows (token ids, or ["soft", prompt, row] for a soft-prompt row fed as an input embedding), the
candidate token sequences (title + terminator) and our log-likelihoods for them.
SOURCE.json says where the same model is: {"kind": "hf", "dir": ...} or
{"kind": "gguf", "dir": ..., "file": ...} (transformers dequantizes a GGUF to float32; needs the
`gguf` package).

Two plans, both exact log-likelihoods of every candidate, float32, torch.inference_mode():
  naive  -- one forward per candidate over its full prompt (inputs_embeds);
  strong -- the prefix once (use_cache), its KV cache expanded to K rows, and all continuations in
            one batched forward (right-padded, attention-masked).
Prints `@step` lines for progress; writes {"skipped": reason} when torch/transformers are missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def log(msg):
    print(f"@step {msg}", flush=True)


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget", type=float, default=30.0, help="max estimated seconds per naive cell")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    def write(obj):
        with open(a.out, "w") as f:
            json.dump(obj, f, indent=2)

    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except Exception as e:  # noqa: BLE001 - any import failure means: no baseline
        write({"skipped": f"torch/transformers not importable: {type(e).__name__}: {e}"})
        log("PyTorch baseline skipped (torch/transformers not importable)")
        return 0

    with open(a.job) as f:
        job = json.load(f)
    with open(a.source) as f:
        src = json.load(f)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    try:
        if src["kind"] == "gguf":
            model = AutoModelForCausalLM.from_pretrained(src["dir"], gguf_file=src["file"], torch_dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(src["dir"], torch_dtype=torch.float32)
    except Exception as e:  # noqa: BLE001
        write({"skipped": f"transformers could not load the model: {type(e).__name__}: {e}"})
        log("PyTorch baseline skipped (model did not load)")
        return 0
    model.eval()
    load_s = time.perf_counter() - t0
    log(f"PyTorch model loaded in {load_s:.1f} s")
    emb = model.get_input_embeddings()
    soft = [torch.tensor(s, dtype=torch.float32).view(-1, job["n_embd"]) for s in job["soft_prompts"]]

    def prefix_embeds(rows):
        out = []
        for r in rows:
            if isinstance(r, list):
                out.append(soft[r[1]][r[2]])
            else:
                out.append(emb.weight[r])
        return torch.stack(out).unsqueeze(0)

    def naive(prefix, cands):
        scores = []
        p = prefix.shape[1]
        for c in cands:
            ids = torch.tensor(c, dtype=torch.long)
            x = torch.cat([prefix, emb(ids).unsqueeze(0)], dim=1)
            logits = model(inputs_embeds=x, use_cache=False).logits[0, p - 1 : p - 1 + len(c)]
            lp = torch.log_softmax(logits.float(), dim=-1)
            scores.append(float(lp[torch.arange(len(c)), ids].sum()))
        return scores

    def expand_cache(cache, k):
        if hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(k)
            return cache
        if hasattr(cache, "layers"):
            for layer in cache.layers:
                layer.keys = layer.keys.repeat_interleave(k, dim=0)
                layer.values = layer.values.repeat_interleave(k, dim=0)
            return cache
        legacy = tuple((kk.repeat_interleave(k, 0), vv.repeat_interleave(k, 0)) for kk, vv in cache)
        from transformers import DynamicCache

        return DynamicCache.from_legacy_cache(legacy)

    def strong(prefix, cands):
        p = prefix.shape[1]
        out = model(inputs_embeds=prefix, use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        k = len(cands)
        cache = expand_cache(out.past_key_values, k)
        L = max(len(c) for c in cands)
        ids = torch.zeros((k, L), dtype=torch.long)
        mask = torch.zeros((k, p + L), dtype=torch.long)
        mask[:, :p] = 1
        for i, c in enumerate(cands):
            ids[i, : len(c)] = torch.tensor(c)
            mask[i, p : p + len(c)] = 1
        pos = torch.arange(p, p + L).unsqueeze(0).expand(k, L)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                       use_cache=True).logits
        lp = torch.log_softmax(logits.float(), dim=-1)
        scores = []
        for i, c in enumerate(cands):
            s = float(first[c[0]])
            for j in range(1, len(c)):
                s += float(lp[i, j - 1, c[j]])
            scores.append(s)
        return scores

    def timed(f, *args):
        c0 = time.process_time()
        t0 = time.perf_counter()
        r = f(*args)
        return r, time.perf_counter() - t0, time.process_time() - c0

    def med(v):
        s = sorted(v)
        n = len(s)
        return 0.0 if n == 0 else (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)

    res = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": a.threads,
           "load_s": load_s, "dtype": "float32", "cells": []}
    with torch.inference_mode():
        for cell in job["cells"]:
            prefix = prefix_embeds(cell["prefix"])
            cands = cell["candidates"]
            ours = cell["ours_logprob"]
            entry = {"h": cell["h"], "k": cell["k"], "prefix_rows": len(cell["prefix"])}
            sc, t, _ = timed(strong, prefix, cands)  # warm-up
            walls, cpus = [], []
            for _ in range(a.reps):
                sc, t, c = timed(strong, prefix, cands)
                walls.append(t)
                cpus.append(c)
            entry["strong"] = {"wall": walls, "cpu": cpus, "p50": med(walls), "cpu_p50": med(cpus),
                               "max_abs_diff_vs_ours": max(abs(x - y) for x, y in zip(sc, ours)),
                               "scores": sc}
            # naive: estimate from one candidate first
            _, t1, _ = timed(naive, prefix, cands[:1])
            est = t1 * len(cands)
            if est > a.budget:
                entry["naive_note"] = f"skipped: estimated {est:.0f} s per call > budget"
            else:
                reps = max(1, min(a.reps, int(a.budget / max(est, 1e-6))))
                walls, cpus = [], []
                for _ in range(reps):
                    sn, t, c = timed(naive, prefix, cands)
                    walls.append(t)
                    cpus.append(c)
                entry["naive"] = {"wall": walls, "cpu": cpus, "p50": med(walls), "cpu_p50": med(cpus),
                                  "max_abs_diff_vs_ours": max(abs(x - y) for x, y in zip(sn, ours))}
            res["cells"].append(entry)
            log(f"PyTorch H={cell['h']} K={cell['k']}: strong {entry['strong']['p50'] * 1e3:.0f} ms"
                + (f", naive {entry['naive']['p50'] * 1e3:.0f} ms" if "naive" in entry else ""))
    write(res)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
