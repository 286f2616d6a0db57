"""Default locations: everything generated lives under the repository's ``target/``."""

from __future__ import annotations

import os
from pathlib import Path

TRAIN_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TRAIN_DIR.parent


def assets_dir() -> Path:
    """Asset cache: ``$DELREC_ASSETS`` or ``<repo>/target/assets``."""
    env = os.environ.get("DELREC_ASSETS")
    return Path(env) if env else REPO_ROOT / "target" / "assets"


def work_dir() -> Path:
    """Default output folder for splits, teacher, soft prompts and evaluations."""
    env = os.environ.get("DELREC_TRAIN_OUT")
    return Path(env) if env else REPO_ROOT / "target" / "delrec-train"


def delrec_bin() -> Path:
    """The runtime CLI (``delrec tokenize`` is used for token ids): ``$DELREC_BIN`` or the release build."""
    env = os.environ.get("DELREC_BIN")
    return Path(env) if env else REPO_ROOT / "target" / "release" / "delrec"


MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path() -> Path:
    return assets_dir() / MODEL_FILE


def ml100k_dir() -> Path:
    return assets_dir() / "ml-100k"
