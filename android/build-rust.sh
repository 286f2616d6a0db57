#!/usr/bin/env bash
# Cross-builds libdelrec_ffi.so for Android ABIs with cargo-ndk, adds the NDK's libc++_shared.so
# (llama.cpp is C++ and the NDK's default STL is the shared one), and generates the Kotlin
# bindings. Run by the :delrec Gradle module before each build, or by hand:
#   ANDROID_NDK_HOME=/path/to/ndk bash android/build-rust.sh
# Needs rustup, cargo-ndk (`cargo install cargo-ndk`), CMake and the NDK pinned in
# gradle.properties (`delrec.ndkVersion`): ANDROID_NDK_HOME, or <sdk>/ndk/<that version> with the
# SDK from ANDROID_HOME, ANDROID_SDK_ROOT or local.properties. Never run in this project's CI (no
# NDK there); see README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ABIS=${DELREC_ANDROID_ABIS:-"arm64-v8a x86_64"}
API=${ANDROID_API_LEVEL:-24}
OUT=${DELREC_ANDROID_OUT:-$ROOT/android/delrec/build/generated/uniffi}
NDK_VERSION=${DELREC_NDK_VERSION:-$(sed -n 's/^delrec\.ndkVersion=//p' "$ROOT/android/gradle.properties")}
: "${NDK_VERSION:?android/gradle.properties lacks delrec.ndkVersion}"
NDK=${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-${ANDROID_NDK:-}}}
if [ -z "$NDK" ]; then
    SDK=${ANDROID_HOME:-${ANDROID_SDK_ROOT:-$(sed -n 's/^sdk\.dir=//p' "$ROOT/android/local.properties" 2>/dev/null || true)}}
    [ -n "$SDK" ] && NDK=$SDK/ndk/$NDK_VERSION
fi
[ -n "$NDK" ] && [ -d "$NDK" ] || {
    echo "NDK $NDK_VERSION not found: sdkmanager \"ndk;$NDK_VERSION\", or set ANDROID_NDK_HOME" >&2; exit 1; }
have=$(sed -n 's/^Pkg\.Revision *= *//p' "$NDK/source.properties" 2>/dev/null || true)
[ "$have" = "$NDK_VERSION" ] ||
    echo "warning: $NDK is NDK ${have:-of unknown version}; gradle.properties pins $NDK_VERSION" >&2
command -v cargo-ndk >/dev/null || { echo "install cargo-ndk: cargo install cargo-ndk" >&2; exit 1; }
export ANDROID_NDK_HOME=$NDK ANDROID_API_LEVEL=$API

triple() {
    case $1 in
        arm64-v8a) echo aarch64-linux-android ;;
        armeabi-v7a) echo arm-linux-androideabi ;;
        x86_64) echo x86_64-linux-android ;;
        x86) echo i686-linux-android ;;
        *) echo "unknown ABI $1" >&2; exit 1 ;;
    esac
}
rust_target() { case $1 in armeabi-v7a) echo armv7-linux-androideabi ;; *) triple "$1" ;; esac; }

args=()
for abi in $ABIS; do
    rustup target add "$(rust_target "$abi")"
    args+=(-t "$abi")
done

# 1. libdelrec_ffi.so per ABI into $OUT/jniLibs/<abi>/ (llama.cpp's OpenMP is off on Android).
#    Linked for 16 KB pages (Android 15+ devices may use them; a 4 KB-aligned .so does not load
#    there): NDK r28+ does this by default, r27 needs the flag, and it is harmless on 4 KB devices.
#    RUSTFLAGS only reaches the Android target here (cargo-ndk passes --target), not build scripts.
rm -rf "$OUT/jniLibs"
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C link-arg=-Wl,-z,max-page-size=16384" \
    cargo ndk "${args[@]}" --platform "$API" -o "$OUT/jniLibs" build --release -p delrec-ffi --lib
for abi in $ABIS; do
    stl=$(find "$NDK/toolchains/llvm/prebuilt" -path "*/sysroot/usr/lib/$(triple "$abi")/libc++_shared.so" | head -1)
    [ -n "$stl" ] || { echo "libc++_shared.so for $abi not found in $NDK" >&2; exit 1; }
    cp "$stl" "$OUT/jniLibs/$abi/"
done

# Every LOAD segment of the 64-bit libraries (ours and the NDK's libc++_shared.so) must be aligned
# to at least 16 KiB; fail here rather than on a 16 KB device.
readelf=$(find "$NDK/toolchains/llvm/prebuilt" -path "*/bin/llvm-readelf" | head -1)
[ -n "$readelf" ] || { echo "llvm-readelf not found in $NDK" >&2; exit 1; }
for abi in $ABIS; do
    case $abi in arm64-v8a | x86_64) ;; *) continue ;; esac
    for so in "$OUT/jniLibs/$abi"/*.so; do
        while read -r align; do
            [ $((align)) -ge 16384 ] || { echo "$so: LOAD segment aligned to $align, not 16 KB" >&2; exit 1; }
        done < <("$readelf" -lW "$so" | awk '$1 == "LOAD" { print $NF }')
    done
done

# 2. Kotlin bindings, read from the first ABI's library (the interface is the same on every ABI).
#    uniffi-bindgen is a host tool.
first=${ABIS%% *}
cargo build --release -p delrec-ffi --features cli --bin uniffi-bindgen
rm -rf "$OUT/kotlin"
"$ROOT/target/release/uniffi-bindgen" generate --library "$OUT/jniLibs/$first/libdelrec_ffi.so" \
    --language kotlin --config "$ROOT/android/uniffi-android.toml" --out-dir "$OUT/kotlin" --no-format
echo "wrote $OUT/jniLibs/{$(echo "$ABIS" | tr ' ' ,)} and $OUT/kotlin"
