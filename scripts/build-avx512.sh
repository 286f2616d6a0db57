#!/usr/bin/env bash
# Opt-in x86-64 AVX-512 build of the runtime, converter and bench into target/avx512 (the default
# build targets x86-64-v3 = AVX2 so that its binaries run on any recent x86 machine; ggml picks its
# kernels at compile time). Measured on this project's 2-core Xeon: SmolLM2-135M Q4_0, H = 10,
# K = 20 ranks in ~450 ms instead of ~660 ms (bench/README.md). Not `target-cpu=native`: on hosts
# with AMX, ggml's AMX weight repacking crashed on Q8_0 models here.
#
#   bash scripts/build-avx512.sh            # refuses on a CPU without AVX-512 F/BW/VL/VNNI
#   target/avx512/release/delrec rank ...   # same CLI
set -euo pipefail
cd "$(dirname "$0")/.."

flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
for f in avx512f avx512bw avx512vl avx512dq avx512cd avx512_vnni; do
  if [[ " $flags " != *" $f "* ]]; then
    echo "this CPU lacks $f: use the default build (cargo build --release)" >&2
    exit 1
  fi
done
features="+avx512vnni"
[[ " $flags " == *" avx512vbmi "* ]] && features+=",+avx512vbmi"
[[ " $flags " == *" avx512_bf16 "* ]] && features+=",+avx512bf16"

# RUSTFLAGS replaces .cargo/config.toml's x86-64-v3 flags; llama-cpp-sys-2 passes the same
# -march and features to ggml. A separate target dir keeps the default build intact.
export RUSTFLAGS="-C target-cpu=x86-64-v4 -C target-feature=$features"
export CARGO_TARGET_DIR=target/avx512
cargo build --release -p delrec-runtime -p delrec-convert -p delrec-bench "$@"
echo "built with $RUSTFLAGS: $CARGO_TARGET_DIR/release/{delrec,delrec-convert,delrec-bench}"
