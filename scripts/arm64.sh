#!/usr/bin/env bash
# The runtime on aarch64 Linux without an ARM machine: cross-built with Debian's aarch64 gcc/g++
# and run under qemu-user (qemu-aarch64, no binfmt needed: cargo's runner and small wrapper
# scripts exec qemu-aarch64 -L /usr/aarch64-linux-gnu). docs/platforms.md has the numbers.
#
#   bash scripts/arm64.sh              # full: setup, cross-build, proofs, the runtime's unit tests,
#                                      #   all cross-crate tests, parity tests, x86 vs aarch64 rankings
#   bash scripts/arm64.sh --quick      # CI slice: cross-build, proofs, the runtime's unit tests,
#                                      #   the engine tests and the F32 rank parity test under qemu
#   bash scripts/arm64.sh --build-only # setup and cross-build only
#   bash scripts/arm64.sh --i8mm       # also: ggml built for armv8.6-a+dotprod+fp16+i8mm (phones
#                                      #   since ~2021) into target/arm64-i8mm, its rankings vs x86
#                                      #   under -cpu max, and the SIGILL proof under -cpu cortex-a53
#   DELREC_QEMU_CPU=cortex-a53 bash scripts/arm64.sh ...   # the CPU qemu emulates (default: max)
#
# llama-cpp-sys-2 pins ggml to -march=armv8-a for every non-native aarch64 Linux build (plain NEON:
# no dotprod, fp16 arithmetic or i8mm kernels; ggml picks its kernels at compile time), so the
# default build runs the same code on any qemu CPU; --i8mm raises that with a compiler wrapper.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
MODE=full I8MM=0
for a in "$@"; do
    case $a in
        --quick) MODE=quick ;;
        --build-only) MODE=build ;;
        --i8mm) I8MM=1 ;;
        *) echo "usage: $0 [--quick|--build-only] [--i8mm]" >&2; exit 2 ;;
    esac
done
QCPU=${DELREC_QEMU_CPU:-max}
LOGS=$ROOT/target/arm64-logs
mkdir -p "$LOGS"
T0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - T0 ))s] $*"; }

# --- 1. setup (idempotent) -----------------------------------------------------------------------
step setup
need=()
for p in qemu-user gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross libgomp1-arm64-cross \
         binutils-aarch64-linux-gnu file; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
command -v cmake >/dev/null || need+=(cmake)   # the host pieces, as scripts/setup.sh checks them
command -v clang >/dev/null || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
if ((${#need[@]})); then
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup target list --installed | grep -qx $T || rustup target add $T

# Cross toolchain for cc/cmake (llama.cpp, onig_sys), bindgen, the linker and the test runner.
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $QCPU -L $SYSROOT"
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=$SYSROOT"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export DELREC_FIXTURES=${DELREC_FIXTURES:-$ROOT/target/fixtures}
export DELREC_REPORT_DIR=${DELREC_REPORT_DIR:-$ROOT/target/reports/arm64}
export QEMU_LD_PREFIX=$SYSROOT
OUT=$ROOT/target/$T/release
QBIN=$ROOT/target/$T/qemu-bin

# --- 2. cross-build ------------------------------------------------------------------------------
step "cross-build for $T (runtime + CLI, converter, test binaries)"
nice cargo build --release --target $T -p delrec-runtime -p delrec-convert --bins --lib
tests=(--test engine)
[ $MODE = full ] && tests=(--tests)
nice cargo test --release --target $T -p delrec-runtime --lib --no-run
nice cargo test --release --target $T -p delrec-tests "${tests[@]}" --no-run

# Wrappers so that anything that runs "$DELREC_BIN_DIR/delrec" runs the aarch64 one under qemu.
mkdir -p "$QBIN"
for b in delrec delrec-convert; do
    printf '#!/bin/sh\nexec qemu-aarch64 -cpu "${DELREC_QEMU_CPU:-%s}" -L %s %s "$@"\n' "$QCPU" "$SYSROOT" "$OUT/$b" >"$QBIN/$b"
    chmod +x "$QBIN/$b"
done

step "proof: aarch64 binaries, ggml's ARM kernels in them, and they run"
file "$OUT/delrec" "$OUT/delrec-convert"
file -L "$OUT/delrec" | grep -q 'ARM aarch64' || { echo "delrec is not an aarch64 ELF" >&2; exit 1; }
isa() {  # $1 label, $2 binary: instruction counts that name ggml's ARM paths
    aarch64-linux-gnu-objdump -d --no-show-raw-insn "$2" >"$LOGS/objdump.txt"
    c() { grep -cE "$1" "$LOGS/objdump.txt" || true; }
    echo "$1: NEON f32 fmla .4s=$(c 'fmla\s+v[0-9]+\.4s') int8 smull .8h=$(c 'smull2?\s+v[0-9]+\.8h')" \
        "dotprod sdot=$(c '\ssdot\s') i8mm smmla=$(c '\ssmmla\s') fp16 fmla .8h=$(c 'fmla\s+v[0-9]+\.8h')" \
        "SVE z-regs=$(c '\sz[0-9]+\.[bhsd]')"
}
isa "armv8-a build" "$OUT/delrec"
"$QBIN/delrec" --version

[ $MODE = build ] && { step "done (build only)"; exit 0; }

# --- 3. tests under qemu -------------------------------------------------------------------------
step fixtures
python3 tests/fixtures/make_fixtures.py "$DELREC_FIXTURES" >/dev/null
# The cross-crate tests convert their models and packs in process into target/test-artifacts: start
# from none, so that the aarch64 converter makes them (not a host run before).
rm -rf "$ROOT/target/test-artifacts"

step "runtime unit tests under qemu-aarch64 -cpu $QCPU"
nice cargo test --release --target $T -p delrec-runtime --lib 2>&1 | tee "$LOGS/unit.log" | grep -E '^test result|FAILED|panicked' 

step "cross-crate tests (delrec-tests ${tests[*]}) under qemu-aarch64 -cpu $QCPU"
DELREC_BIN_DIR=$QBIN nice cargo test --release --target $T -p delrec-tests "${tests[@]}" 2>&1 | tee "$LOGS/tests.log" \
    | grep -E '^test result|FAILED|panicked|Running'

step "parity tests: the aarch64 delrec/delrec-convert (qemu wrappers) vs the numpy reference"
if [ $MODE = quick ]; then
    parity=("tests/parity/test_rank_parity.py::test_f32_rank_scores_match_reference")
else
    parity=(tests/parity/test_rank_parity.py tests/parity/test_logits_parity.py tests/parity/test_tokenizer_parity.py
            tests/parity/test_embed_parity.py tests/parity/test_seq_parity.py tests/parity/test_quant_parity.py)
fi
DELREC_BIN_DIR=$QBIN DELREC_CLI_TIMEOUT=1800 nice python3 -m pytest -q -p no:cacheprovider "${parity[@]}" 2>&1 | tee "$LOGS/parity.log" | tail -n 15
grep -qE '(failed|error)' "$LOGS/parity.log" && { echo "parity tests failed" >&2; exit 1; }

# --- 4. rankings: aarch64 vs x86-64 --------------------------------------------------------------
if [ $MODE = full ] || [ $I8MM = 1 ]; then
    step "host x86-64 build (for the comparison)"
    nice cargo build --release -p delrec-runtime -p delrec-convert --bins
    step "rankings: x86-64 delrec vs aarch64 delrec (qemu -cpu $QCPU, ggml armv8-a)"
    nice python3 scripts/arm64-compare.py --x86 target/release --arm "$QBIN" --fixtures "$DELREC_FIXTURES" \
        --work target/arm64-compare --report "$DELREC_REPORT_DIR/compare-armv8-a.json" --label "armv8-a, qemu -cpu $QCPU" \
        | tee "$LOGS/compare-armv8-a.log" | tail -n 20
fi

# --- 5. ggml for armv8.6-a + dotprod + fp16 + i8mm -----------------------------------------------
if [ $I8MM = 1 ]; then
    step "ggml for armv8.6-a+dotprod+fp16+i8mm (target/arm64-i8mm)"
    ARCH=armv8.6-a+dotprod+fp16+i8mm
    W=$ROOT/target/arm64-tools
    mkdir -p "$W"
    for c in gcc g++; do  # llama-cpp-sys-2 appends GGML_CPU_ARM_ARCH=armv8-a after any GGML_* override
        printf '#!/bin/sh\nfor a; do shift; case $a in -march=armv8-a) set -- "$@" -march=%s ;; *) set -- "$@" "$a" ;; esac; done\nexec aarch64-linux-gnu-%s "$@"\n' \
            "$ARCH" "$c" >"$W/aarch64-$c-i8mm"
        chmod +x "$W/aarch64-$c-i8mm"
    done
    CC_aarch64_unknown_linux_gnu=$W/aarch64-gcc-i8mm CXX_aarch64_unknown_linux_gnu=$W/aarch64-g++-i8mm \
        CARGO_TARGET_DIR=$ROOT/target/arm64-i8mm nice cargo build --release --target $T -p delrec-runtime --bin delrec
    I8=$ROOT/target/arm64-i8mm/$T/release/delrec
    isa "$ARCH build" "$I8"
    Q8=$ROOT/target/arm64-i8mm/qemu-bin
    mkdir -p "$Q8"
    printf '#!/bin/sh\nexec qemu-aarch64 -cpu "${DELREC_QEMU_CPU:-max}" -L %s %s "$@"\n' "$SYSROOT" "$I8" >"$Q8/delrec"
    chmod +x "$Q8/delrec"
    g=target/arm64-compare/llama-wide.q8_0.gguf p=target/arm64-compare/llama-wide.q8_0.pack.gguf
    for cpu in cortex-a53 cortex-a76 max; do  # a53: armv8.0; a76: +dotprod +fp16, no i8mm; max: all
        rc=0
        DELREC_QEMU_CPU=$cpu "$Q8/delrec" rank --model $g --pack $p --history m001,m006 --top-k 3 --json \
            >/dev/null 2>"$LOGS/i8mm-$cpu.err" || rc=$?
        echo "i8mm build under qemu -cpu $cpu: rc=$rc $(grep -m1 -o 'Illegal instruction' "$LOGS/i8mm-$cpu.err" || true)"
    done
    step "rankings: x86-64 delrec vs aarch64 delrec (qemu -cpu max, ggml $ARCH)"
    nice python3 scripts/arm64-compare.py --x86 target/release --arm "$Q8" --fixtures "$DELREC_FIXTURES" \
        --work target/arm64-compare --report "$DELREC_REPORT_DIR/compare-i8mm.json" --label "$ARCH, qemu -cpu max" \
        | tee "$LOGS/compare-i8mm.log" | tail -n 20
fi
step "done ($MODE$([ $I8MM = 1 ] && echo ' + i8mm'))"
