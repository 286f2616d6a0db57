#!/usr/bin/env python3
"""Benchmark fixtures for delrec-bench, generated offline and deterministically.

    python3 bench/fixtures.py catalog     --out C.csv [--n 1682] [--seed 7]
    python3 bench/fixtures.py soft-prompt --out DIR --hidden 576 [--n-virtual 32] [--seed 11]
    python3 bench/fixtures.py random-model --out DIR --shape qwen2.5-0.5b [--vocab 151936] [--seed 13]

The catalog holds generated movie-like titles ("Silent River (1994)"), not MovieLens data.
Random models have the exact shapes of the named real model (random N(0, 0.02) weights, F16
safetensors) and a byte-level BPE tokenizer trained on the catalog titles with the Qwen2
pre-tokenizer (digits split one by one, like the real one); the model's embedding matrix keeps the
real vocabulary size (the converter pads the tokenizer with [PAD] tokens), so the output layer costs
what it costs in the real model. Needs numpy and `tokenizers` only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import struct
import sys

import numpy as np

SHAPES = {
    # hidden, layers, heads, kv heads, intermediate, vocab, tied, rope theta, arch
    "qwen2.5-0.5b": dict(hidden=896, layers=24, heads=14, kv=2, inter=4864, vocab=151936, tied=True,
                         theta=1000000.0, arch="qwen2"),
    "smollm2-135m": dict(hidden=576, layers=30, heads=9, kv=3, inter=1536, vocab=49152, tied=True,
                         theta=100000.0, arch="llama"),
    "smollm2-360m": dict(hidden=960, layers=32, heads=15, kv=5, inter=2560, vocab=49152, tied=True,
                         theta=100000.0, arch="llama"),
}

WORDS = (
    "silent river night city king queen shadow dark light love war star last first lost blue red "
    "golden black white summer winter spring autumn storm fire ice stone iron glass paper moon sun "
    "heart mind dream ghost angel devil hunter runner killer stranger lady man woman boy girl child "
    "family brother sister father mother house road street bridge island ocean sea mountain desert "
    "forest garden valley river lake harbor station hotel palace prison school hospital church "
    "secret hidden broken wild lonely crazy deadly perfect great little big long short high low "
    "time day morning evening midnight tomorrow yesterday forever story tale legend song dance "
    "game party wedding funeral journey return escape revenge promise kiss touch voice letter "
    "crime justice law money gold diamond treasure empire kingdom republic nation army soldier "
    "captain doctor professor detective agent spy pilot sailor cowboy outlaw sheriff judge "
    "american french english italian german russian chinese mexican african western eastern "
    "northern southern space planet alien robot machine future past dead living fast furious "
    "sweet bitter cold hot strange curious dangerous beautiful ugly good bad happy sad"
).split()
SEQUEL = ["II", "III", "2", "3", "Part II", "Returns", "Reloaded"]


def make_titles(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    while len(out) < n:
        k = rng.choices([1, 2, 3, 4], weights=[3, 5, 3, 1])[0]
        words = [rng.choice(WORDS).capitalize() for _ in range(k)]
        r = rng.random()
        if r < 0.12:
            words = ["The"] + words
        elif r < 0.16:
            words = words + ["of", "the", rng.choice(WORDS).capitalize()]
        if rng.random() < 0.05:
            words.append(rng.choice(SEQUEL))
        title = " ".join(words)
        if rng.random() < 0.06:
            title += ": " + " ".join(rng.choice(WORDS).capitalize() for _ in range(rng.randint(1, 3)))
        title += f" ({rng.randint(1922, 1998)})"
        if title not in seen:
            seen.add(title)
            out.append(title)
    return out


def write_catalog(path: str, n: int, seed: int) -> None:
    titles = make_titles(n, seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "title"])
        for i, t in enumerate(titles):
            w.writerow([f"i{i + 1:04d}", t])
    os.replace(tmp, path)


def write_safetensors(path: str, tensors: list[tuple[str, tuple, str, object]]) -> None:
    """tensors: (name, shape, dtype "F16"|"F32", producer() -> ndarray). Streams one at a time."""
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    size = {"F16": 2, "F32": 4}
    for name, shape, dt, _ in tensors:
        n = int(np.prod(shape)) * size[dt]
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for name, shape, dt, make in tensors:
            arr = np.ascontiguousarray(make(), dtype="<f2" if dt == "F16" else "<f4")
            assert arr.shape == tuple(shape), (name, arr.shape, shape)
            f.write(arr.tobytes())
    os.replace(tmp, path)


def write_soft_prompt(out: str, hidden: int, n_virtual: int, seed: int, std: float) -> None:
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    emb = (rng.standard_normal((n_virtual, hidden)) * std).astype(np.float32)
    write_safetensors(os.path.join(out, "adapter_model.safetensors"),
                      [("prompt_embeddings", (n_virtual, hidden), "F32", lambda: emb)])
    cfg = {
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": n_virtual,
        "token_dim": hidden, "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM",
        "inference_mode": True, "base_model_name_or_path": None,
    }
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_tokenizer(out: str, corpus: list[str], vocab_size: int) -> int:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False,
                                  special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tok.add_special_tokens(SPECIAL)
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg = {
        "add_prefix_space": False, "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "clean_up_tokenization_spaces": False, "model_max_length": 32768,
        "tokenizer_class": "Qwen2Tokenizer", "errors": "replace", "split_special_tokens": False,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "added_tokens_decoder": {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for i, s in enumerate(SPECIAL)},
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return tok.get_vocab_size(with_added_tokens=True)


def tokenizer_corpus(seed: int) -> list[str]:
    titles = make_titles(1682, 7) + make_titles(3000, seed)
    rng = random.Random(seed)
    lines = []
    for _ in range(3000):
        lines.append("The user watched these movies in order: " + ", ".join(rng.sample(titles, 5))
                     + ".\nRecommend the next movie: " + rng.choice(titles) + "\n")
    lines += [" " + t for t in titles]
    lines += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "." for _ in range(3000)]
    return lines


def write_random_model(out: str, shape: str, vocab: int | None, seed: int, tok_vocab: int) -> None:
    s = dict(SHAPES[shape])
    if vocab:
        s["vocab"] = vocab
    os.makedirs(out, exist_ok=True)
    n_tok = write_tokenizer(out, tokenizer_corpus(seed), tok_vocab)
    if n_tok > s["vocab"]:
        raise SystemExit(f"tokenizer has {n_tok} tokens, more than the vocabulary {s['vocab']}")
    H, L, nh, kv, I, V = s["hidden"], s["layers"], s["heads"], s["kv"], s["inter"], s["vocab"]
    hd = H // nh
    common = {
        "hidden_act": "silu", "hidden_size": H, "intermediate_size": I, "num_attention_heads": nh,
        "num_hidden_layers": L, "num_key_value_heads": kv, "rms_norm_eps": 1e-6, "rope_theta": s["theta"],
        "tie_word_embeddings": s["tied"], "vocab_size": V, "max_position_embeddings": 32768,
        "torch_dtype": "float16", "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 0.02,
        "use_cache": True, "attention_dropout": 0.0, "rope_scaling": None, "transformers_version": "4.44.2",
    }
    if s["arch"] == "qwen2":
        cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "max_window_layers": L,
               "sliding_window": 32768, "use_sliding_window": False, **common}
    else:
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
               "mlp_bias": False, "pretraining_tp": 1, **common}
    cfg["delrec_bench"] = {"shape": shape, "random_weights": True, "seed": seed, "tokenizer_tokens": n_tok}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    rng = np.random.default_rng(seed)

    def normal(*shp):
        return lambda: (rng.standard_normal(shp, dtype=np.float32) * 0.02).astype(np.float16)

    def ones_ish(n):
        return lambda: (1.0 + 0.05 * rng.standard_normal(n, dtype=np.float32)).astype(np.float16)

    t = [("model.embed_tokens.weight", (V, H), "F16", normal(V, H))]
    for i in range(L):
        p = f"model.layers.{i}."
        t += [
            (p + "input_layernorm.weight", (H,), "F16", ones_ish(H)),
            (p + "self_attn.q_proj.weight", (nh * hd, H), "F16", normal(nh * hd, H)),
            (p + "self_attn.k_proj.weight", (kv * hd, H), "F16", normal(kv * hd, H)),
            (p + "self_attn.v_proj.weight", (kv * hd, H), "F16", normal(kv * hd, H)),
            (p + "self_attn.o_proj.weight", (H, nh * hd), "F16", normal(H, nh * hd)),
            (p + "post_attention_layernorm.weight", (H,), "F16", ones_ish(H)),
            (p + "mlp.gate_proj.weight", (I, H), "F16", normal(I, H)),
            (p + "mlp.up_proj.weight", (I, H), "F16", normal(I, H)),
            (p + "mlp.down_proj.weight", (H, I), "F16", normal(H, I)),
        ]
        if s["arch"] == "qwen2":
            t += [(p + f"self_attn.{x}_proj.bias", (n,), "F16", normal(n))
                  for x, n in (("q", nh * hd), ("k", kv * hd), ("v", kv * hd))]
    t.append(("model.norm.weight", (H,), "F16", ones_ish(H)))
    if not s["tied"]:
        t.append(("lm_head.weight", (V, H), "F16", normal(V, H)))
    write_safetensors(os.path.join(out, "model.safetensors"), t)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("catalog")
    c.add_argument("--out", required=True)
    c.add_argument("--n", type=int, default=1682)
    c.add_argument("--seed", type=int, default=7)
    sp = sub.add_parser("soft-prompt")
    sp.add_argument("--out", required=True)
    sp.add_argument("--hidden", type=int, required=True)
    sp.add_argument("--n-virtual", type=int, default=32)
    sp.add_argument("--seed", type=int, default=11)
    sp.add_argument("--std", type=float, default=0.05)
    m = sub.add_parser("random-model")
    m.add_argument("--out", required=True)
    m.add_argument("--shape", choices=sorted(SHAPES), required=True)
    m.add_argument("--vocab", type=int, default=None, help="shrink the vocabulary (default: the real size)")
    m.add_argument("--tokenizer-vocab", type=int, default=8192)
    m.add_argument("--seed", type=int, default=13)
    a = ap.parse_args(argv)
    if a.cmd == "catalog":
        write_catalog(a.out, a.n, a.seed)
    elif a.cmd == "soft-prompt":
        write_soft_prompt(a.out, a.hidden, a.n_virtual, a.seed, a.std)
    else:
        write_random_model(a.out, a.shape, a.vocab, a.seed, a.tokenizer_vocab)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
