#!/usr/bin/env bash
# The whole test suite: fixtures, Rust unit + integration tests, lint, and the parity tests
# against the independent numpy reference.
set -euo pipefail
cd "$(dirname "$0")/.."
export DELREC_FIXTURES="${DELREC_FIXTURES:-$PWD/target/fixtures}"
export DELREC_BIN_DIR="${DELREC_BIN_DIR:-$PWD/target/release}"
export DELREC_REPORT_DIR="${DELREC_REPORT_DIR:-$PWD/target/reports}"
python3 tests/fixtures/make_fixtures.py "$DELREC_FIXTURES"
cargo build --release --workspace --bins --lib
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
# Hostile packs and model files, mutated and run in a child process so that an abort inside
# llama.cpp is caught and counted (bounded: 90 s); exits non-zero on any crash or hang. Longer
# runs: `target/release/delrec-fuzz --seconds N`; libFuzzer targets in fuzz/ (nightly).
mkdir -p "$DELREC_REPORT_DIR"
"$DELREC_BIN_DIR/delrec-fuzz" --seconds 90 --jobs 2 --out "$DELREC_REPORT_DIR/fuzz.json" \
  --crash-dir "$DELREC_REPORT_DIR/fuzz-crashes"
python3 -m pytest -q tests/parity
# The uniffi-generated Kotlin bindings, compiled and run on the JVM against a converted model.
bash bindings/kotlin/run-tests.sh
# The uniffi-generated Python bindings: the `delrec` wheel built and installed into a venv under
# target/, then pytest against the same fixtures, with the CLI as the reference.
bash bindings/python/run-tests.sh
# The Swift bindings and ios/Sources/DelrecMobile, compiled with Debian's swiftlang in a trixie
# chroot (made once: ~100 s, 2.6 GB) and run against the same fixtures, with the CLI as the reference.
bash scripts/swift.sh
# The training recipe in its own venv (torch, transformers, RecBole): unit tests plus the bounded
# end-to-end slices (SASRec teacher through RecBole, stage-1 training with resume, evaluation).
venv=$(bash scripts/setup-train.sh | tail -n 1)
(cd train && "../$venv/bin/python" -m pytest -q tests)
# The real-data path, bounded: the real SmolLM2-135M and MovieLens-100K from PyPI through teacher
# (1 epoch), stage 1 and stage 2 (2 steps each), PyTorch evaluation (12 users), the merged GGUF at
# F16 / Q8_0 / Q4_1, the pack, the runtime and the whole-catalog ranking (2 users); exits non-zero
# when the runtime at F16 does not score like PyTorch. The full run is `bash scripts/eval-real.sh`.
DELREC_EVAL_PRESET=ci DELREC_EVAL_FORCE=1 bash scripts/eval-real.sh
