#!/usr/bin/env bash
# Builds the `delrec` Python package from the delrec-ffi crate:
#   1. the whole workspace (the cdylib libdelrec_ffi.so and uniffi-bindgen among it),
#   2. the Python module generated from the built library (uniffi-bindgen --language python)
#      into bindings/python/delrec/, and the library copied beside it (the generated loader
#      opens lib<cdylib>.so from the module's own directory),
#   3. a wheel in target/python/dist/, installed into the venv target/python/venv
#      (created with --system-site-packages; its python is printed last).
# Needs: cargo, python3 with setuptools and wheel (scripts/setup.sh installs them).
# Overrides: DELREC_PY_VENV (the venv to install into).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
REL=$ROOT/target/release
PKG=$ROOT/bindings/python/delrec
DIST=$ROOT/target/python/dist
VENV=${DELREC_PY_VENV:-$ROOT/target/python/venv}

# One workspace-wide build: a per-package build resolves features differently and rebuilds llama.cpp.
cargo build --release --workspace --bins --lib >&2
LIB=$REL/libdelrec_ffi.so
test -f "$LIB"

GEN=$ROOT/target/python/generated
rm -rf "$GEN"
"$REL/uniffi-bindgen" generate --library "$LIB" --language python --out-dir "$GEN" --no-format >&2
test -s "$GEN/delrec_ffi.py" || { echo "uniffi-bindgen wrote no $GEN/delrec_ffi.py" >&2; exit 1; }
cp "$GEN/delrec_ffi.py" "$PKG/delrec_ffi.py"
cp "$LIB" "$PKG/libdelrec_ffi.so"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv --system-site-packages "$VENV" >&2
fi
rm -rf "$DIST" "$ROOT/bindings/python/build" "$ROOT/bindings/python/"*.egg-info
# No build isolation: setuptools and wheel come from the machine (offline after setup).
"$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$DIST" "$ROOT/bindings/python" >&2
rm -rf "$ROOT/bindings/python/build" "$ROOT/bindings/python/"*.egg-info
WHEEL=$(ls "$DIST"/delrec-*.whl)
"$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$WHEEL" >&2
echo "built $WHEEL" >&2
echo "$VENV/bin/python"
