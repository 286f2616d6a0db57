"""Small shared helpers: threads, JSON lines, user selection, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def set_threads(n: int) -> None:
    import torch

    if n and n > 0:
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set once in this process


def read_jsonl(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e})") from None
    return out


def write_json(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def select_users(users: list[str], n: int | None, seed: int) -> list[str]:
    """A seeded sample of ``n`` users (all when n is None or >= len), in the input order."""
    if n is None or n >= len(users):
        return list(users)
    idx = np.sort(np.random.default_rng([seed, 7]).permutation(len(users))[:n])
    return [users[i] for i in idx]
