#!/usr/bin/env bash
# The training recipe's environment (PyTorch, transformers, RecBole; ~7 GB, ~2 min from PyPI) in a
# private venv: RecBole 1.2.1 needs numpy<2 and pandas<2.3, which must not leak into the system.
#   bash scripts/setup-train.sh [VENV]      (default target/train-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-target/train-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r train/requirements.txt
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps recbole==1.2.1
echo "$venv"
