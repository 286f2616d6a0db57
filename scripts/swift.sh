#!/usr/bin/env bash
# Swift test of the UniFFI bindings, compiled and run on Linux, end to end:
#   1. builds the CLIs, the delrec-ffi cdylib and uniffi-bindgen (the workspace build),
#   2. makes (once) a Debian trixie chroot with Debian's `swiftlang` (Swift 6.0.3) in it:
#      debootstrap through the host's own apt mirror, then apt-get install in the chroot,
#   3. generates the Swift bindings from the built library with ios/uniffi-ios.toml (as
#      ios/build-xcframework.sh does: DelrecError's LocalizedError comes from DelrecMobile),
#   4. converts the llama-tiny fixture into a model and packs (plus a qwen2-tiny pack for the
#      mismatch, and a pack with the fixture SASRec for the cascade),
#   5. in the chroot, compiles the generated DelrecFFI.swift, ios/Sources/DelrecMobile and
#      bindings/swift/tests/main.swift with swiftc and runs the test program, which compares
#      scores with `delrec rank --json` (host-built binaries: the chroot's glibc is newer).
# Ends with the test program's "N passed, M failed"; exits non-zero on any failure.
#
# Idempotent: the chroot (~2.7 GB) is made once and reused; later runs only rebuild and test.
# Measured on 2 cores: first run ~100 s for the chroot (debootstrap ~25 s, 535 MB of packages),
# 2.6 GB on disk; then ~20 s to compile and a few seconds of tests.
# Needs root (debootstrap, chroot, mount), debootstrap (scripts/setup.sh installs it), network
# to the Debian mirror for the first run, python3 with numpy + tokenizers (the fixture generator).
# Overrides: SWIFT_ROOT (the chroot; default target/swift-root), SWIFT_SUITE (default trixie),
# SWIFT_MIRROR (default: the host's Debian mirror), DELREC_FIXTURES (fixture dir).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REL=$ROOT/target/release
OUT=$ROOT/target/swift-test
FX=${DELREC_FIXTURES:-$ROOT/target/fixtures}
CHROOT=${SWIFT_ROOT:-$ROOT/target/swift-root}
SUITE=${SWIFT_SUITE:-trixie}
PACKAGES="swiftlang libc6-dev libstdc++-14-dev libgomp1"
READY=$CHROOT/.delrec-swift-ready # holds "$SUITE $PACKAGES" once the chroot is complete

T0=$(date +%s)
LAST=$T0
step() { printf '\n== %s\n' "$*"; }
took() {
    local now
    now=$(date +%s)
    printf -- '-- %s: %ss (total %ss)\n' "$1" $((now - LAST)) $((now - T0))
    LAST=$now
}

[ "$(id -u)" = 0 ] || { echo "swift.sh needs root (debootstrap, chroot, mount)" >&2; exit 1; }

# The host's Debian mirror (deb822 .sources or a one-line sources.list).
mirror() {
    local m
    m=$(grep -hm1 -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -1 || true)
    [ -n "$m" ] || m=$(grep -hm1 -E '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}

step "build: CLIs, delrec-ffi cdylib, uniffi-bindgen"
# One workspace-wide build: a per-package build resolves features differently and rebuilds llama.cpp.
cargo build --release --workspace --bins --lib
LIB=$REL/libdelrec_ffi.so
test -f "$LIB"
took build

# Mounts into the chroot, undone on exit (also on failure): /proc, the worktree read-only at its
# own path (so that a `rm -rf target` after a killed run cannot reach the sources through it)
# and the test's output folder read-write over it. /dev is debootstrap's own (null, urandom, ...).
MOUNTS=()
cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
}
trap cleanup EXIT
mnt() { # mnt DEST MOUNT-ARGS...: mounts unless something already is there
    local dest=$1
    shift
    mkdir -p "$dest"
    if mountpoint -q "$dest"; then umount "$dest"; fi
    mount "$@" "$dest"
    MOUNTS+=("$dest")
}

step "chroot: Debian $SUITE with $PACKAGES in $CHROOT"
if [ "$(cat "$READY" 2>/dev/null)" != "$SUITE $PACKAGES" ]; then
    command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
    MIRROR=${SWIFT_MIRROR:-$(mirror)}
    if [ ! -x "$CHROOT/usr/bin/apt-get" ]; then
        rm -rf "$CHROOT"
        debootstrap --variant=minbase "$SUITE" "$CHROOT" "$MIRROR"
    fi
    mnt "$CHROOT/proc" -t proc proc
    DEBIAN_FRONTEND=noninteractive chroot "$CHROOT" apt-get update -q
    # Without recommends: swiftlang's compiler, Foundation and Dispatch, the C headers its Glibc
    # module needs (libc6-dev), and the libgomp the host-built library links.
    DEBIAN_FRONTEND=noninteractive chroot "$CHROOT" apt-get install -y -q --no-install-recommends $PACKAGES
    chroot "$CHROOT" apt-get clean
    echo "$SUITE $PACKAGES" > "$READY"
else
    echo "reusing $CHROOT"
fi
# swiftc finds its runtime through /proc/self/exe.
mnt "$CHROOT/proc" -t proc proc
chroot "$CHROOT" swiftc --version 2>&1 | grep -i 'swift version'
echo "chroot size: $(du -sxh "$CHROOT" 2>/dev/null | cut -f1); glibc host $(ldd --version | head -1 | awk '{print $NF}'), chroot $(chroot "$CHROOT" ldd --version | head -1 | awk '{print $NF}')"
took chroot

step "generate the Swift bindings from $LIB (ios/uniffi-ios.toml)"
GEN=$OUT/generated
rm -rf "$GEN"
mkdir -p "$OUT"
"$REL/uniffi-bindgen" generate --library "$LIB" --language swift --config ios/uniffi-ios.toml --out-dir "$GEN" --no-format
for f in DelrecFFI.swift delrec_ffiFFI.h delrec_ffiFFI.modulemap; do
    test -s "$GEN/$f" || { echo "missing generated file $GEN/$f"; exit 1; }
done
if grep -q 'enum DelrecError: .*LocalizedError' "$GEN/DelrecFFI.swift"; then
    echo "the generated DelrecError conforms to LocalizedError: ios/uniffi-ios.toml was not applied"
    exit 1
fi
took generate

step "fixtures: llama-tiny model + pack, qwen2-tiny pack, the SASRec pack"
bash bindings/make-test-files.sh "$OUT"
took fixtures

step "compile (swiftc in the chroot): DelrecFFI, DelrecMobile, the test"
mnt "$CHROOT$ROOT" --bind "$ROOT"
mount -o remount,bind,ro "$CHROOT$ROOT"
mnt "$CHROOT$OUT" --bind "$OUT"
in_chroot() { chroot "$CHROOT" /usr/bin/env -C "$ROOT" "$@"; }
in_chroot ldd "$LIB" | grep -q 'not found' && { echo "libdelrec_ffi.so lacks libraries in the chroot"; exit 1; }
B=$OUT/build
rm -rf "$B" && mkdir -p "$B"
# -package-name: what SwiftPM passes for the targets of one package (ios/Package.swift), so
# DelrecMobile's LocalizedError conformance on DelrecFFI's type is not a retroactive one.
# The README's Swift example, compiled into the test and run by it (less its OSLogSink line:
# os.Logger is Apple-only).
{
    echo "// Generated by scripts/swift.sh from README.md's swift block."
    echo "import DelrecFFI"
    echo "import DelrecMobile"
    echo "import Foundation"
    echo "func readmeSnippet(modelURL: URL, packURL: URL) async throws {"
    awk '/^```swift$/{on=1; next} /^```$/{if (on) exit} on' README.md | grep -v -e '^import ' -e 'OSLogSink'
    echo "}"
} > "$B/ReadmeSnippet.swift"
grep -q "Engine.open(model:" "$B/ReadmeSnippet.swift" || { echo "README.md has no Swift example"; exit 1; }
CLANG=(-Xcc "-fmodule-map-file=$GEN/delrec_ffiFFI.modulemap" -I "$GEN")
SWIFTC=(swiftc -O -package-name DelrecMobile -warnings-as-errors)
in_chroot "${SWIFTC[@]}" -parse-as-library -module-name DelrecFFI -emit-module -emit-module-path "$B/DelrecFFI.swiftmodule" \
    -emit-library -o "$B/libDelrecFFI.so" "${CLANG[@]}" -L "$REL" -ldelrec_ffi "$GEN/DelrecFFI.swift"
in_chroot "${SWIFTC[@]}" -parse-as-library -module-name DelrecMobile -emit-module -emit-module-path "$B/DelrecMobile.swiftmodule" \
    -emit-library -o "$B/libDelrecMobile.so" "${CLANG[@]}" -I "$B" -L "$B" -lDelrecFFI ios/Sources/DelrecMobile/*.swift
in_chroot "${SWIFTC[@]}" -module-name DelrecSwiftTest -o "$B/delrec-swift-test" "${CLANG[@]}" -I "$B" -L "$B" -L "$REL" \
    -lDelrecFFI -lDelrecMobile -ldelrec_ffi -Xlinker -rpath -Xlinker "$B" -Xlinker -rpath -Xlinker "$REL" \
    bindings/swift/tests/main.swift "$B/ReadmeSnippet.swift"
took compile

step "run the Swift test (in the chroot)"
in_chroot env DELREC_MODEL="$OUT/llama.gguf" DELREC_PACK="$OUT/llama.pack.gguf" DELREC_OTHER_PACK="$OUT/qwen2.pack.gguf" \
    DELREC_SEQ_PACK="$OUT/llama.seq.pack.gguf" DELREC_CLI="$REL/delrec" DELREC_CATALOG="$OUT/catalog.csv" \
    "$B/delrec-swift-test"
took test
