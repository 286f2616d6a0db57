"""Token ids for prompt pieces and titles.

The phone runtime tokenizes with llama.cpp, so the training recipe takes its ids from the same
code: ``delrec tokenize --model M.gguf --strings strings.json --json`` prints
``{"ids": [[...], ...]}`` (no special tokens). Results are cached per model file in
``<assets>/tokcache/<model sha256[:16]>.json`` ({string: ids}), so the binary runs once per new
set of strings.

``HFTokenizer`` wraps a Hugging Face tokenizer (tests; ``--tokenizer hf-gguf`` fallback when the
runtime binary is not built, which may differ from llama.cpp on rare strings).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

from .paths import assets_dir, delrec_bin


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    path = Path(path)
    if path.is_dir():  # a Hugging Face model directory: key on its config
        path = path / "config.json"
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LlamaCliTokenizer:
    def __init__(self, model: Path, binary: Path | None = None, cache_dir: Path | None = None):
        self.model = Path(model)
        self.binary = Path(binary) if binary else delrec_bin()
        key = file_sha256(self.model)[:16]
        self.cache_path = Path(cache_dir or assets_dir() / "tokcache") / f"{key}.json"
        self.cache: dict[str, list[int]] = {}
        if self.cache_path.is_file():
            with open(self.cache_path, encoding="utf-8") as f:
                self.cache = json.load(f)

    def encode_many(self, strings: list[str]) -> list[list[int]]:
        todo = list(dict.fromkeys(s for s in strings if s not in self.cache and s != ""))
        if todo:
            if not self.binary.is_file():
                raise FileNotFoundError(
                    f"{self.binary}: the delrec runtime CLI is needed for llama.cpp token ids "
                    f"(build it with `cargo build --release`, set DELREC_BIN, or pass --tokenizer hf-gguf)")
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
                json.dump(todo, f, ensure_ascii=False)
                tmp = f.name
            try:
                r = subprocess.run([str(self.binary), "tokenize", "--model", str(self.model), "--strings", tmp, "--json"],
                                   capture_output=True, text=True)
            finally:
                os.unlink(tmp)
            if r.returncode != 0:
                raise RuntimeError(f"delrec tokenize failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
            ids = json.loads(r.stdout)["ids"]
            if len(ids) != len(todo):
                raise RuntimeError(f"delrec tokenize returned {len(ids)} results for {len(todo)} strings")
            self.cache.update(zip(todo, ids))
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmpc = self.cache_path.with_suffix(".part")
            with open(tmpc, "w", encoding="utf-8") as f:
                json.dump(self.cache, f, ensure_ascii=False)
            os.replace(tmpc, self.cache_path)
        return [[] if s == "" else list(self.cache[s]) for s in strings]


class HFTokenizer:
    def __init__(self, tok):
        self.tok = tok

    def encode_many(self, strings: list[str]) -> list[list[int]]:
        return [[] if s == "" else list(self.tok.encode(s, add_special_tokens=False)) for s in strings]


def make_tokenizer(kind: str, model: Path, binary: Path | None = None):
    if kind == "llama-cli":
        return LlamaCliTokenizer(model, binary)
    if kind == "hf-gguf":
        from transformers import AutoTokenizer
        return HFTokenizer(AutoTokenizer.from_pretrained(str(Path(model).parent), gguf_file=Path(model).name))
    raise ValueError(f"unknown tokenizer {kind!r} (llama-cli or hf-gguf)")
