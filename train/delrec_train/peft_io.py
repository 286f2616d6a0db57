"""PEFT prompt-tuning adapter directories (what ``delrec-convert`` reads for soft prompts).

``adapter_config.json`` + ``adapter_model.safetensors`` holding ``prompt_embeddings``
[num_virtual_tokens, token_dim] float32, the layout ``peft`` itself saves for PROMPT_TUNING.
``prompt_tuning_init`` is written as RANDOM (the text init is recorded in ``delrec_train.json``):
with TEXT, ``peft`` would try to fetch a tokenizer when loading the adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

BASE_MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def adapter_config(n_virtual: int, token_dim: int, base_model: str = BASE_MODEL_NAME,
                   num_layers: int | None = None, num_heads: int | None = None) -> dict:
    return {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": int(n_virtual),
        "token_dim": int(token_dim),
        "num_transformer_submodules": 1,
        "base_model_name_or_path": base_model,
        "num_attention_heads": num_heads,
        "num_layers": num_layers,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "inference_mode": True,
        "revision": None,
    }


def save_prompt(out_dir: Path, embeddings, base_model: str = BASE_MODEL_NAME, meta: dict | None = None,
                num_layers: int | None = None, num_heads: int | None = None) -> Path:
    """embeddings: [N, D] torch tensor or numpy array; written as float32."""
    arr = embeddings.detach().float().cpu().numpy() if hasattr(embeddings, "detach") else np.asarray(embeddings)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"prompt embeddings must be [N, D], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("prompt embeddings contain NaN or inf")
    config = adapter_config(arr.shape[0], arr.shape[1], base_model, num_layers, num_heads)
    return write_adapter(out_dir, {"prompt_embeddings": arr}, config, meta)


def write_adapter(out_dir: Path, tensors: dict[str, np.ndarray], config: dict, meta: dict | None = None) -> Path:
    """A PEFT adapter directory: adapter_model.safetensors, adapter_config.json and, when given,
    our training record delrec_train.json."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "adapter_model.safetensors", 0o644)
    with open(out / "adapter_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
        f.write("\n")
    if meta is not None:
        with open(out / "delrec_train.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)
            f.write("\n")
    return out


def load_prompt(peft_dir: Path) -> tuple[np.ndarray, dict, dict]:
    """-> (embeddings [N, D] float32, adapter_config, delrec_train.json or {})."""
    from safetensors.numpy import load_file

    d = Path(peft_dir)
    with open(d / "adapter_config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "PROMPT_TUNING":
        raise ValueError(f"{d}: peft_type {cfg.get('peft_type')!r} is not PROMPT_TUNING")
    if cfg.get("num_transformer_submodules", 1) != 1:
        raise ValueError(f"{d}: num_transformer_submodules must be 1")
    t = load_file(str(d / "adapter_model.safetensors"))
    if "prompt_embeddings" not in t:
        raise ValueError(f"{d}: adapter_model.safetensors has no prompt_embeddings (has {list(t)})")
    emb = t["prompt_embeddings"].astype(np.float32)
    if emb.shape != (cfg["num_virtual_tokens"], cfg["token_dim"]):
        raise ValueError(f"{d}: prompt_embeddings shape {emb.shape} != "
                         f"({cfg['num_virtual_tokens']}, {cfg['token_dim']}) from adapter_config.json")
    meta = {}
    if (d / "delrec_train.json").is_file():
        with open(d / "delrec_train.json", encoding="utf-8") as f:
            meta = json.load(f)
    return emb, cfg, meta
