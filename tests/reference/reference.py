#!/usr/bin/env python3
"""Independent numpy reference for delrec-mobile parity tests.

Implements the Hugging Face LlamaForCausalLM / Qwen2ForCausalLM forward pass (float64
internally), PEFT LoRA merging, PEFT prompt-tuning soft prompts and the delrec scoring
template contract.  Depends only on numpy (+ `tokenizers` for text).

CLI (every subcommand prints one JSON object on stdout):

  reference.py logits   --model-dir D --tokens 1,2,3 [--lora-dir L]
        -> {"logits": [[vocab floats] per position]}
  reference.py embed    --model-dir D --tokens 1,2,3 [--tokens 4,5 ...] [--pooling mean|last] [--lora-dir L]
        -> {"pooling", "dim", "embeddings": [[hidden floats] per --tokens]}
           (final hidden state after the final RMSNorm, pooled over the sequence's positions:
           mean = average, last = the last position; each sequence its own forward, no BOS)
  reference.py sasrec   --ckpt sasrec.pth --history id,id,...
        -> {"scores": {item token: score}}     (RecBole SASRec forward, from torch.save's zip, no torch)
  reference.py tokenize --tokenizer T/tokenizer.json --strings FILE.json
        -> {"ids": [[...], ...]}                       (add_special_tokens=False)
  reference.py score    --model-dir D --tokenizer T/tokenizer.json --catalog catalog.csv|.jsonl
                        --template TEMPLATE [--soft NAME=PEFT_DIR ...] [--lora-dir L]
                        [--item-prefix " "] [--history-sep ","] [--add-bos]
                        --history id,id,... --candidates id,id,...
        -> {"scores": [{"id", "score", "n_tokens", "mean"}, ...]}   (candidate order)

Template contract: literal text with placeholders {soft:NAME}, {history}, {candidate};
{history} exactly once, {candidate} exactly once and after {history}, soft placeholders
only before {candidate}.  Input rows = [BOS if --add-bos] + for each part in order:
literal -> encode(text) (each literal part separately, no special tokens); {soft:NAME} ->
the prompt_embeddings rows as input embeddings; {history} -> for item i (oldest first):
encode(history_sep) if i > 0, then encode(item_prefix + title); {candidate} ->
encode(item_prefix + title); the literal after {candidate} is the terminator.
score = sum over candidate-title tokens + terminator tokens of
log_softmax(logits[previous position])[token].  "{{" / "}}" are literal braces; any other
brace use is an error (as in docs/format.md).  Soft prompt names match [A-Za-z0-9_.-]{1,64}.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import struct
import sys

import numpy as np

# --------------------------------------------------------------------------------------
# safetensors reading (own decoder: handles BF16 without torch)
# --------------------------------------------------------------------------------------

_ST_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """name -> float32 ndarray (BF16/F16 decoded exactly)."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen].decode("utf-8"))
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_DTYPES:
            raise ValueError(f"{path}: unsupported dtype {dt} for {name}")
        s, e = info["data_offsets"]
        arr = np.frombuffer(data, dtype=_ST_DTYPES[dt], count=(e - s) // _ST_DTYPES[dt].itemsize, offset=base + s)
        if dt == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        arr = arr.astype(np.float32).reshape(info["shape"])
        out[name] = arr
    return out


def load_hf_weights(model_dir: str) -> dict[str, np.ndarray]:
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(idx):
        with open(idx, encoding="utf-8") as f:
            wmap = json.load(f)["weight_map"]
        weights = {}
        for fn in sorted(set(wmap.values())):
            part = read_safetensors(os.path.join(model_dir, fn))
            for k, v in part.items():
                if wmap.get(k) != fn:
                    raise ValueError(f"{fn}: tensor {k} not mapped to this shard in the index")
                weights[k] = v
        missing = set(wmap) - set(weights)
        if missing:
            raise ValueError(f"index names tensors missing from shards: {sorted(missing)[:5]}")
        return weights
    if os.path.exists(single):
        return read_safetensors(single)
    raise FileNotFoundError(f"no model.safetensors(.index.json) in {model_dir}")


# --------------------------------------------------------------------------------------
# PEFT adapters
# --------------------------------------------------------------------------------------


def merge_lora(weights: dict[str, np.ndarray], lora_dir: str) -> dict[str, np.ndarray]:
    """W += scale * B @ A for every lora_A/lora_B pair; scale = alpha/r (rslora: alpha/sqrt(r))."""
    with open(os.path.join(lora_dir, "adapter_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{lora_dir}: peft_type {cfg.get('peft_type')} is not LORA")
    if cfg.get("fan_in_fan_out"):
        raise NotImplementedError("fan_in_fan_out LoRA")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise NotImplementedError("rank_pattern/alpha_pattern")
    if cfg.get("use_dora"):
        raise NotImplementedError("DoRA")
    if cfg.get("bias", "none") != "none":
        raise NotImplementedError("LoRA bias")
    r = cfg["r"]
    alpha = cfg["lora_alpha"]
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    ad = read_safetensors(os.path.join(lora_dir, "adapter_model.safetensors"))
    out = {k: v.astype(np.float64) for k, v in weights.items()}
    pat = re.compile(r"^(?:base_model\.model\.)?(.*)\.lora_A(?:\.[^.]+)?\.weight$")
    n = 0
    for name, a in ad.items():
        m = pat.match(name)
        if not m:
            if ".lora_B" in name:
                continue
            raise ValueError(f"unexpected adapter tensor {name}")
        target = m.group(1) + ".weight"
        b_name = name.replace(".lora_A", ".lora_B")
        b = ad[b_name]
        if target not in out:
            raise KeyError(f"LoRA target {target} not in base model")
        delta = scale * (b.astype(np.float64) @ a.astype(np.float64))
        if delta.shape != out[target].shape:
            raise ValueError(f"LoRA delta shape {delta.shape} != {out[target].shape} for {target}")
        out[target] = out[target] + delta
        n += 1
    if n == 0:
        raise ValueError(f"{lora_dir}: no LoRA pairs found")
    return out


def load_soft_prompt(peft_dir: str) -> np.ndarray:
    with open(os.path.join(peft_dir, "adapter_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "PROMPT_TUNING":
        raise ValueError(f"{peft_dir}: peft_type {cfg.get('peft_type')} is not PROMPT_TUNING")
    if cfg.get("num_transformer_submodules", 1) != 1:
        raise NotImplementedError("num_transformer_submodules != 1")
    t = read_safetensors(os.path.join(peft_dir, "adapter_model.safetensors"))["prompt_embeddings"]
    nv = cfg["num_virtual_tokens"]
    if t.shape[0] != nv:
        raise ValueError(f"prompt_embeddings rows {t.shape[0]} != num_virtual_tokens {nv}")
    return t.astype(np.float64)


# --------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------


class Model:
    SUPPORTED = {"llama", "qwen2"}

    def __init__(self, model_dir: str, lora_dir: str | None = None):
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            self.cfg = cfg = json.load(f)
        if cfg["model_type"] not in self.SUPPORTED:
            raise NotImplementedError(cfg["model_type"])
        if cfg.get("rope_scaling"):
            raise NotImplementedError("rope_scaling")
        if cfg.get("hidden_act", "silu") != "silu":
            raise NotImplementedError(cfg.get("hidden_act"))
        if cfg.get("use_sliding_window"):
            raise NotImplementedError("sliding window attention")
        w = load_hf_weights(model_dir)
        if lora_dir:
            w = merge_lora(w, lora_dir)
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}
        self.hidden = cfg["hidden_size"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg.get("head_dim") or self.hidden // self.n_heads
        self.n_layers = cfg["num_hidden_layers"]
        self.eps = float(cfg["rms_norm_eps"])
        self.theta = float(cfg.get("rope_theta", 10000.0))
        self.vocab = cfg["vocab_size"]
        self.embed = self.w["model.embed_tokens.weight"]
        if self.embed.shape[0] != self.vocab:
            raise ValueError(f"embed rows {self.embed.shape[0]} != vocab_size {self.vocab}")
        tied = cfg.get("tie_word_embeddings", False)
        if tied:
            if "lm_head.weight" in self.w:
                raise ValueError("tie_word_embeddings=true but lm_head.weight present")
            self.lm_head = self.embed
        else:
            self.lm_head = self.w["lm_head.weight"]
        self.bos_token_id = cfg.get("bos_token_id")

    # -- pieces -------------------------------------------------------------------------
    def rmsnorm(self, x, weight):
        var = np.mean(x * x, axis=-1, keepdims=True)
        return weight * (x / np.sqrt(var + self.eps))

    def linear(self, x, name):
        y = x @ self.w[name + ".weight"].T
        b = self.w.get(name + ".bias")
        if b is not None:
            y = y + b
        return y

    def rope(self, x):
        """x: [heads, n, d]; HF rotate_half convention, positions 0..n-1."""
        d = self.head_dim
        n = x.shape[1]
        inv_freq = 1.0 / (self.theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float64) / d))
        pos = np.arange(n, dtype=np.float64)
        freqs = np.outer(pos, inv_freq)  # [n, d/2]
        emb = np.concatenate([freqs, freqs], axis=-1)  # [n, d]
        cos, sin = np.cos(emb), np.sin(emb)
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        rot = np.concatenate([-x2, x1], axis=-1)
        return x * cos + rot * sin

    def attention(self, h, i):
        n = h.shape[0]
        p = f"model.layers.{i}.self_attn."
        q = self.linear(h, p + "q_proj").reshape(n, self.n_heads, self.head_dim).transpose(1, 0, 2)
        k = self.linear(h, p + "k_proj").reshape(n, self.n_kv, self.head_dim).transpose(1, 0, 2)
        v = self.linear(h, p + "v_proj").reshape(n, self.n_kv, self.head_dim).transpose(1, 0, 2)
        q, k = self.rope(q), self.rope(k)
        rep = self.n_heads // self.n_kv
        k = np.repeat(k, rep, axis=0)  # head j uses kv head j // rep (HF repeat_kv)
        v = np.repeat(v, rep, axis=0)
        s = (q @ k.transpose(0, 2, 1)) / math.sqrt(self.head_dim)
        mask = np.triu(np.ones((n, n), dtype=bool), k=1)
        s = np.where(mask[None], -np.inf, s)
        s = s - s.max(axis=-1, keepdims=True)
        pr = np.exp(s)
        pr /= pr.sum(axis=-1, keepdims=True)
        o = (pr @ v).transpose(1, 0, 2).reshape(n, self.n_heads * self.head_dim)
        return self.linear(o, p + "o_proj")

    def mlp(self, h, i):
        p = f"model.layers.{i}.mlp."
        g = self.linear(h, p + "gate_proj")
        u = self.linear(h, p + "up_proj")
        return self.linear((g / (1.0 + np.exp(-g))) * u, p + "down_proj")

    # -- forward ------------------------------------------------------------------------
    def embed_tokens(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab):
            raise ValueError(f"token id out of range [0, {self.vocab})")
        return self.embed[ids]

    def final_hidden_embeds(self, x):
        """x: [n, hidden] input embeddings -> final hidden states after the final RMSNorm
        [n, hidden] (float64): what the LM head reads."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.hidden:
            raise ValueError(f"input embeddings shape {x.shape}, hidden {self.hidden}")
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            x = x + self.attention(self.rmsnorm(x, self.w[p + "input_layernorm.weight"]), i)
            x = x + self.mlp(self.rmsnorm(x, self.w[p + "post_attention_layernorm.weight"]), i)
        return self.rmsnorm(x, self.w["model.norm.weight"])

    def forward_embeds(self, x):
        """x: [n, hidden] input embeddings -> logits [n, vocab] (float64)."""
        return self.final_hidden_embeds(x) @ self.lm_head.T

    def forward_tokens(self, ids):
        return self.forward_embeds(self.embed_tokens(ids))

    def embed_pooled(self, ids, pooling: str = "mean"):
        """One token sequence -> its pooled final-norm hidden state [hidden] (float64)."""
        if len(ids) == 0:
            raise ValueError("an empty token sequence has no embedding")
        h = self.final_hidden_embeds(self.embed_tokens(ids))
        if pooling == "mean":
            return h.mean(axis=0)
        if pooling == "last":
            return h[-1]
        raise ValueError(f"unknown pooling {pooling!r} (mean or last)")


def log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------------------
# tokenizer, catalog, template
# --------------------------------------------------------------------------------------


def load_tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def encode(tok, text: str) -> list[int]:
    if text == "":
        return []
    return list(tok.encode(text, add_special_tokens=False).ids)


def load_catalog(path: str) -> dict[str, dict]:
    items = {}
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    for r in rows:
        if r["id"] in items:
            raise ValueError(f"duplicate catalog id {r['id']}")
        items[r["id"]] = r
    return items


_SOFT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def parse_template(template: str) -> list[tuple[str, str]]:
    """-> list of (kind, value) with kind in {"text","soft","history","candidate"}.

    `{{` and `}}` are literal braces; any other `{...}` than the three placeholders, and any
    unpaired brace, is an error.  Adjacent literal text is merged into one part."""
    parts: list[tuple[str, str]] = []
    buf: list[str] = []
    i, n = 0, len(template)

    def flush():
        if buf:
            parts.append(("text", "".join(buf)))
            buf.clear()

    while i < n:
        c = template[i]
        if c == "{" and template.startswith("{{", i):
            buf.append("{")
            i += 2
        elif c == "}" and template.startswith("}}", i):
            buf.append("}")
            i += 2
        elif c == "{":
            j = template.find("}", i)
            if j < 0:
                raise ValueError(f"unclosed '{{' at offset {i}")
            body = template[i + 1 : j]
            flush()
            if body == "history":
                parts.append(("history", ""))
            elif body == "candidate":
                parts.append(("candidate", ""))
            elif body.startswith("soft:") and _SOFT_NAME.fullmatch(body[5:]):
                parts.append(("soft", body[5:]))
            else:
                raise ValueError(f"unknown placeholder {{{body}}} (use {{{{ and }}}} for literal braces)")
            i = j + 1
        elif c == "}":
            raise ValueError(f"unpaired '}}' at offset {i} (use }}}} for a literal brace)")
        else:
            buf.append(c)
            i += 1
    flush()
    kinds = [k for k, _ in parts]
    if kinds.count("history") != 1:
        raise ValueError("template must contain {history} exactly once")
    if kinds.count("candidate") != 1:
        raise ValueError("template must contain {candidate} exactly once")
    ci = kinds.index("candidate")
    if kinds.index("history") > ci:
        raise ValueError("{history} must come before {candidate}")
    if any(k != "text" for k in kinds[ci + 1 :]):
        raise ValueError("only literal text may follow {candidate} ({soft:NAME} must come before it)")
    return parts


def build_rows(model: Model, tok, parts, softs, history_titles, cand_title,
               item_prefix=" ", history_sep=",", add_bos=False):
    """Returns (embeds [n, hidden] float64, ids_or_None per row, scored_positions)."""
    rows: list[np.ndarray] = []
    ids: list[int | None] = []

    def add_tokens(t):
        for x in t:
            rows.append(model.embed_tokens([x])[0])
            ids.append(x)

    if add_bos:
        if model.bos_token_id is None:
            raise ValueError("--add-bos but config has no bos_token_id")
        add_tokens([model.bos_token_id])
    scored: list[int] = []
    seen_candidate = False
    for kind, val in parts:
        if kind == "text":
            t = encode(tok, val)
            if seen_candidate:
                scored.extend(range(len(ids), len(ids) + len(t)))
            add_tokens(t)
        elif kind == "soft":
            if val not in softs:
                raise KeyError(f"template uses {{soft:{val}}} but no --soft {val}=DIR given")
            sp = softs[val]
            if sp.shape[1] != model.hidden:
                raise ValueError(f"soft prompt {val} width {sp.shape[1]} != hidden {model.hidden}")
            for r in sp:
                rows.append(r)
                ids.append(None)
        elif kind == "history":
            for i, title in enumerate(history_titles):
                if i > 0:
                    add_tokens(encode(tok, history_sep))
                add_tokens(encode(tok, item_prefix + title))
        elif kind == "candidate":
            t = encode(tok, item_prefix + cand_title)
            scored.extend(range(len(ids), len(ids) + len(t)))
            add_tokens(t)
            seen_candidate = True
    if scored and scored[0] == 0:
        raise ValueError("nothing precedes the candidate: its first token has no previous position")
    if not scored:
        raise ValueError("candidate and terminator tokenize to nothing")
    return np.stack(rows), ids, scored


def score_candidates(model: Model, tok, catalog, template, softs, history, candidates,
                     item_prefix=" ", history_sep=",", add_bos=False):
    parts = parse_template(template)
    hist_titles = [catalog[h]["title"] for h in history]
    res = []
    for c in candidates:
        emb, ids, scored = build_rows(model, tok, parts, softs, hist_titles, catalog[c]["title"],
                                      item_prefix, history_sep, add_bos)
        lp = log_softmax(model.forward_embeds(emb))  # naive: one full forward per candidate
        s = float(sum(lp[p - 1, ids[p]] for p in scored))
        res.append({"id": c, "score": s, "n_tokens": len(scored), "mean": s / len(scored)})
    return res


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _ids(s: str) -> list[str]:
    return [x for x in s.split(",") if x != ""] if s else []


# --------------------------------------------------------------------------------------
# SASRec (RecBole 1.2.1's forward, inference mode) from a torch.save file, without torch
# --------------------------------------------------------------------------------------


def load_torch_blob(path: str):
    """torch.save's zip format read with the standard pickle module: tensors become float64
    numpy arrays (storage + offset + shape + stride), no torch code is imported or run."""
    import pickle
    import zipfile

    z = zipfile.ZipFile(path)
    pkl = [n for n in z.namelist() if n.endswith("/data.pkl")]
    if len(pkl) != 1:
        raise ValueError(f"{path}: not a torch.save zip")
    prefix = pkl[0][: -len("data.pkl")]
    dtypes = {"FloatStorage": "<f4", "HalfStorage": "<f2", "DoubleStorage": "<f8", "LongStorage": "<i8"}

    def rebuild(storage, offset, shape, stride, *_):
        n = 1 + sum((d - 1) * st for d, st in zip(shape, stride)) if all(shape) else 0
        flat = storage[offset:offset + n]
        return np.lib.stride_tricks.as_strided(flat, shape=shape, strides=[st * flat.itemsize for st in stride]).astype(np.float64)

    class U(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild
            if (module, name) == ("collections", "OrderedDict"):
                return dict
            if module == "torch" and name in dtypes:
                return name
            raise pickle.UnpicklingError(f"refusing {module}.{name}")

        def persistent_load(self, pid):
            _, cls, key, _, numel = pid
            return np.frombuffer(z.read(f"{prefix}data/{key}"), dtype=dtypes[cls])[:numel]

    return U(io.BytesIO(z.read(pkl[0]))).load()


def _layer_norm(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def q8_0_round_trip(table: np.ndarray) -> np.ndarray:
    """ggml's Q8_0 (quantize_row_q8_0_ref, then dequantize), written from ggml's C: per 32
    values d = amax / 127 in f32, q = roundf(x * (1 / d)) (halves away from zero), d stored as f16."""
    x = np.asarray(table, dtype=np.float32).reshape(-1, 32)
    amax = np.abs(x).max(axis=1)
    d = (amax / np.float32(127.0)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1.0) / np.where(d != 0, d, np.float32(1.0)), np.float32(0.0)).astype(np.float32)
    v = (x * inv[:, None]).astype(np.float32)
    q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return (d.astype(np.float16).astype(np.float64)[:, None] * q.astype(np.float64)).reshape(np.shape(table))


def sasrec_scores(blob, history: list[str], q8_items: bool = False) -> dict[str, float]:
    """RecBole SASRec: item+position embeddings, LayerNorm, post-norm blocks with causal
    attention, the last position's output dotted with every item row (the padding row excluded).
    `q8_items`: the item table as a Q8_0 pack stores it (history rows and scores alike)."""
    sd, cfg, tokens = dict(blob["state_dict"]), blob["config"], blob["item_tokens"]
    if q8_items:
        sd["item_embedding.weight"] = q8_0_round_trip(sd["item_embedding.weight"])
    row = {t: i for i, t in enumerate(tokens)}
    max_len = sd["position_embedding.weight"].shape[0]
    ids = [row[h] for h in history][-max_len:]
    eps, heads = cfg.get("layer_norm_eps", 1e-12), cfg["n_heads"]
    x = sd["item_embedding.weight"][ids] + sd["position_embedding.weight"][: len(ids)]
    x = _layer_norm(x, sd["LayerNorm.weight"], sd["LayerNorm.bias"], eps)
    L, H = x.shape
    d = H // heads
    mask = np.tril(np.ones((L, L), dtype=bool))
    erf = np.vectorize(math.erf)
    for i in range(cfg["n_layers"]):
        a, f = f"trm_encoder.layer.{i}.multi_head_attention", f"trm_encoder.layer.{i}.feed_forward"
        lin = lambda name, v: v @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]  # noqa: E731
        q, k, v = (lin(f"{a}.{n}", x).reshape(L, heads, d).transpose(1, 0, 2) for n in ("query", "key", "value"))
        att = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        att = np.where(mask, att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(L, H)
        x = _layer_norm(lin(f"{a}.dense", ctx) + x, sd[f"{a}.LayerNorm.weight"], sd[f"{a}.LayerNorm.bias"], eps)
        u = lin(f"{f}.dense_1", x)
        if cfg.get("hidden_act", "gelu") == "gelu":
            u = u * 0.5 * (1.0 + erf(u / math.sqrt(2.0)))
        else:
            u = np.maximum(u, 0.0)
        x = _layer_norm(lin(f"{f}.dense_2", u) + x, sd[f"{f}.LayerNorm.weight"], sd[f"{f}.LayerNorm.bias"], eps)
    s = sd["item_embedding.weight"] @ x[-1]
    return {t: float(s[i]) for i, t in enumerate(tokens) if i > 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("logits")
    a.add_argument("--model-dir", required=True)
    a.add_argument("--tokens", required=True)
    a.add_argument("--lora-dir")

    e = sub.add_parser("embed")
    e.add_argument("--model-dir", required=True)
    e.add_argument("--tokens", required=True, action="append", help="comma-separated ids; repeat for more sequences")
    e.add_argument("--pooling", choices=["mean", "last"], default="mean")
    e.add_argument("--lora-dir")

    t = sub.add_parser("tokenize")
    t.add_argument("--tokenizer", required=True)
    t.add_argument("--strings", required=True)

    s = sub.add_parser("score")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--catalog", required=True)
    s.add_argument("--template", required=True)
    s.add_argument("--soft", action="append", default=[], metavar="NAME=PEFT_DIR")
    s.add_argument("--lora-dir")
    s.add_argument("--item-prefix", default=" ")
    s.add_argument("--history-sep", default=",")
    s.add_argument("--add-bos", action="store_true")
    s.add_argument("--history", required=True)
    s.add_argument("--candidates", required=True)

    q = sub.add_parser("sasrec")
    q.add_argument("--ckpt", required=True, help="a torch.save blob {state_dict, item_tokens, config}")
    q.add_argument("--history", required=True)

    args = ap.parse_args(argv)
    if args.cmd == "sasrec":
        out = {"scores": sasrec_scores(load_torch_blob(args.ckpt), _ids(args.history))}
    elif args.cmd == "logits":
        m = Model(args.model_dir, args.lora_dir)
        toks = [int(x) for x in args.tokens.split(",") if x.strip() != ""]
        out = {"logits": m.forward_tokens(toks).tolist()}
    elif args.cmd == "embed":
        m = Model(args.model_dir, args.lora_dir)
        seqs = [[int(x) for x in spec.split(",") if x.strip() != ""] for spec in args.tokens]
        out = {"pooling": args.pooling, "dim": m.hidden,
               "embeddings": [m.embed_pooled(s, args.pooling).tolist() for s in seqs]}
    elif args.cmd == "tokenize":
        tok = load_tokenizer(args.tokenizer)
        with open(args.strings, encoding="utf-8") as f:
            strings = json.load(f)
        out = {"ids": [encode(tok, x) for x in strings]}
    else:
        m = Model(args.model_dir, args.lora_dir)
        tok = load_tokenizer(args.tokenizer)
        cat = load_catalog(args.catalog)
        softs = {}
        for spec in args.soft:
            name, _, d = spec.partition("=")
            if not d:
                raise SystemExit(f"--soft expects NAME=PEFT_DIR, got {spec!r}")
            softs[name] = load_soft_prompt(d)
        out = {"scores": score_candidates(m, tok, cat, args.template, softs, _ids(args.history),
                                          _ids(args.candidates), args.item_prefix, args.history_sep,
                                          args.add_bos)}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
