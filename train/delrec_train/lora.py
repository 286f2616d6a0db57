"""LoRA for DELRec stage 2: injection into a frozen llama model, PEFT I/O, merging.

Our own ~100 lines instead of the ``peft`` package: the adapter is the plain PEFT LoRA layout
(``adapter_config.json`` with ``peft_type: LORA``; ``adapter_model.safetensors`` with
``base_model.model.<module>.lora_A.weight`` [r, in] and ``lora_B.weight`` [out, r]), which is what
``delrec-convert model --lora`` and ``peft`` read. The update is ``W + (alpha / r) * B @ A``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

# HF module name -> (block attribute, GGUF tensor name stem) for llama/qwen2 blocks.
TARGETS = {
    "q_proj": ("self_attn", "attn_q"),
    "k_proj": ("self_attn", "attn_k"),
    "v_proj": ("self_attn", "attn_v"),
    "o_proj": ("self_attn", "attn_output"),
    "gate_proj": ("mlp", "ffn_gate"),
    "up_proj": ("mlp", "ffn_up"),
    "down_proj": ("mlp", "ffn_down"),
}
PREFIX = "base_model.model."


def parse_targets(spec: str) -> list[str]:
    names = [t.strip() for t in spec.split(",") if t.strip()]
    bad = [t for t in names if t not in TARGETS]
    if bad or not names:
        raise ValueError(f"LoRA targets {bad or spec!r}: choose from {', '.join(TARGETS)}")
    return names


def _lora_linear_cls():
    import torch

    class LoraLinear(torch.nn.Module):
        """``base(x) + scale * (x @ A^T) @ B^T``; B starts at zero, so training starts at the base model."""

        def __init__(self, base: torch.nn.Linear, r: int, alpha: float):
            super().__init__()
            self.base = base
            self.r, self.alpha, self.scale = r, alpha, alpha / r
            dev = base.weight.device
            self.lora_A = torch.nn.Parameter(torch.empty(r, base.in_features, device=dev))
            self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, r, device=dev))
            torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

        def forward(self, x):
            return self.base(x) + (x @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype) * self.scale

    return LoraLinear


def inject(model, targets: list[str], r: int, alpha: float) -> dict:
    """Wraps the target linears of every block; -> {HF module name: LoraLinear}."""
    if r <= 0:
        raise ValueError(f"LoRA rank must be positive, got {r}")
    cls = _lora_linear_cls()
    out = {}
    for i, layer in enumerate(model.model.layers):
        for t in targets:
            parent = getattr(layer, TARGETS[t][0])
            lin = cls(getattr(parent, t), r, alpha)
            setattr(parent, t, lin)
            out[f"model.layers.{i}.{TARGETS[t][0]}.{t}"] = lin
    return out


def lora_parameters(mods: dict) -> list:
    return [p for m in mods.values() for p in (m.lora_A, m.lora_B)]


def adapter_config(r: int, alpha: float, targets: list[str], base_model: str) -> dict:
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(r), "lora_alpha": float(alpha),
            "lora_dropout": 0.0, "target_modules": list(targets), "bias": "none", "fan_in_fan_out": False,
            "use_dora": False, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {},
            "modules_to_save": None, "base_model_name_or_path": base_model, "inference_mode": True}


def save_lora(out_dir: Path, mods: dict, targets: list[str], base_model: str, meta: dict | None = None) -> Path:
    from .peft_io import write_adapter

    if not mods:
        raise ValueError("no LoRA modules to save")
    first = next(iter(mods.values()))
    tensors = {}
    for name, m in mods.items():
        a = m.lora_A.detach().float().cpu().numpy()
        b = m.lora_B.detach().float().cpu().numpy()
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ValueError(f"LoRA {name} contains NaN or inf")
        tensors[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(a)
        tensors[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(b)
    return write_adapter(out_dir, tensors, adapter_config(first.r, first.alpha, targets, base_model), meta)


def load_lora(d: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """-> (adapter_config, {HF weight name ``model.layers.N.x.y.weight``: delta [out, in] float32})."""
    from safetensors.numpy import load_file

    d = Path(d)
    with open(d / "adapter_config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{d}: peft_type {cfg.get('peft_type')!r} is not LORA")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, (int, float)):
        raise ValueError(f"{d}: r / lora_alpha missing or invalid")
    t = load_file(str(d / "adapter_model.safetensors"))
    deltas = {}
    for k, a in t.items():
        if not k.endswith(".lora_A.weight"):
            continue
        stem = k[: -len(".lora_A.weight")]
        b = t.get(stem + ".lora_B.weight")
        if b is None:
            raise ValueError(f"{d}: {k} has no lora_B partner")
        if a.shape[0] != r or b.shape[1] != r:
            raise ValueError(f"{d}: {stem}: A {a.shape} / B {b.shape} do not have rank {r}")
        name = stem[len(PREFIX):] if stem.startswith(PREFIX) else stem
        deltas[name + ".weight"] = (alpha / r) * (b.astype(np.float32) @ a.astype(np.float32))
    if not deltas:
        raise ValueError(f"{d}: no lora_A/lora_B tensors")
    return cfg, deltas


def merge_into_model(model, deltas: dict[str, np.ndarray]) -> None:
    """W += delta for every adapted weight of a transformers model (in place)."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, dlt in deltas.items():
            p = params.get(name)
            if p is None:
                raise KeyError(f"LoRA targets {name}, which the model does not have")
            if tuple(p.shape) != dlt.shape:
                raise ValueError(f"LoRA delta for {name} is {dlt.shape}, weight is {tuple(p.shape)}")
            p.add_(torch.from_numpy(dlt).to(device=p.device, dtype=p.dtype))
