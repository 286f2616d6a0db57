#!/usr/bin/env bash
# One x86-64 build whose CPU kernels are chosen at run time: llama.cpp/ggml as shared libraries
# with every CPU variant ggml knows (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS, the runtime's
# `cpu-variants` feature); at the first use the runtime loads the libggml-cpu-<variant>.so that
# scores best on this CPU (x64 … haswell, skylakex, icelake, zen4, sapphirerapids). See
# docs/platforms.md, "CPU kernels chosen at run time".
#
#   bash scripts/build-variants.sh              # CLI, converter and bench into target/variants
#   target/variants/release/delrec rank ...     # same CLI; DELREC_LLAMA_LOG=1 shows the variant
#   target/variants/release/delrec-bench --quick
#
# The rest of the program is compiled for the x86-64 baseline (`-C target-cpu=x86-64`, which
# llama-cpp-sys-2 also passes to ggml as -march): the variants add their own -m flags on top, so a
# binary from this script runs on any x86-64 CPU and still uses AVX-512/VNNI where there is one.
# (Not .cargo/config.toml's x86-64-v3: that -march would be applied to the x64/sse42/sandybridge
# variants too, which would then fault on the CPUs they exist for.)
#
# The binaries find libllama.so / libggml*.so next to themselves (rpath $ORIGIN; cargo also puts
# them in deps/ for the tests). The CPU variants are found, in this order: the directory given to
# `delrec_runtime::llm::backend::set_backend_dir` or in DELREC_BACKEND_DIR; else ggml's build
# directory (compiled in), the executable's directory and the current directory. This script
# copies them next to the binaries, so target/variants/release/ is self-contained; `dist DIR`
# copies binaries + libraries into DIR.
#
#   bash scripts/build-variants.sh --dist DIR   # also: a relocatable copy in DIR
set -euo pipefail
cd "$(dirname "$0")/.."

dist=""
args=()
while (($#)); do
  case "$1" in
    --dist) dist="${2:?--dist needs a directory}"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

# RUSTFLAGS replaces .cargo/config.toml's flags for this build only (separate target dir).
export RUSTFLAGS="${DELREC_VARIANTS_RUSTFLAGS:--C target-cpu=x86-64} -C link-arg=-Wl,-rpath,\$ORIGIN"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/variants}"
cargo build --release -p delrec-runtime -p delrec-convert -p delrec-bench \
  --features delrec-runtime/cpu-variants,delrec-bench/cpu-variants "${args[@]}"

out="$CARGO_TARGET_DIR/release"
# The CPU variants are MODULE libraries installed into the sys crate's OUT_DIR/backends (the
# newest build of it, if there are several).
backends=$(ls -td "$out"/build/llama-cpp-sys-2-*/out/backends 2>/dev/null | head -1)
if [[ -z "$backends" ]] || ! ls "$backends"/libggml-cpu-*.so >/dev/null 2>&1; then
  echo "no libggml-cpu-*.so under $out/build/llama-cpp-sys-2-*/out/backends" >&2
  exit 1
fi
cp -f "$backends"/libggml-*.so "$out"/
# The shared libraries the binaries link (hard-linked into $out by the sys crate; their sonames
# libggml.so.0 etc. are what the loader asks for).
lib=$(dirname "$backends")/lib
cp -a "$lib"/lib*.so* "$out"/ 2>/dev/null || true
cp -a "$lib"/lib*.so* "$out"/deps/ 2>/dev/null || true
echo "built (RUSTFLAGS=$RUSTFLAGS): $out/{delrec,delrec-convert,delrec-bench}"
echo "CPU variants: $(cd "$out" && ls libggml-cpu-*.so | sed 's/libggml-cpu-//; s/\.so$//' | tr '\n' ' ')"

if [[ -n "$dist" ]]; then
  mkdir -p "$dist"
  cp -f "$out"/delrec "$out"/delrec-convert "$out"/delrec-bench "$dist"/
  cp -a "$out"/lib*.so* "$dist"/
  echo "relocatable copy in $dist (run $dist/delrec; the libraries are found through \$ORIGIN)"
fi
