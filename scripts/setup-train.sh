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
# The real OpenPrompt 1.0.1 (the DELRec authors' library), which train/tests/test_openprompt_ref.py
# checks the verbalizer reference against: its declared dependencies pin versions without Python
# 3.11 wheels and pull in datasets/nltk, so it goes --no-deps into a private directory the test
# puts on sys.path ($DELREC_OPENPROMPT_PATH, default target/op-site).
op=target/op-site
if [ ! -f "$op/.installed" ]; then
  rm -rf "$op"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --target "$op" openprompt==1.0.1 \
    yacs==0.1.8 dill==0.4.1 rouge==1.0.0 six==1.17.0 tensorboardX==2.6.5 sentencepiece==0.2.3
  touch "$op/.installed"
fi
echo "$venv"
