#!/usr/bin/env bash
# Builds ios/DelrecFFI.xcframework and ios/Sources/DelrecFFI/DelrecFFI.swift for the Swift package.
# macOS with Xcode (xcodebuild, lipo) and rustup only; it has never been run by this project's CI,
# which is Linux (see README.md).
#
#   bash ios/build-xcframework.sh            # device arm64 + simulator arm64/x86_64, Metal on
#   DELREC_FEATURES= bash ios/build-xcframework.sh   # CPU only
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IOS=$ROOT/ios
BUILD=$IOS/build
FEATURES=${DELREC_FEATURES-metal}
export IPHONEOS_DEPLOYMENT_TARGET=${IPHONEOS_DEPLOYMENT_TARGET:-15.0}

if [ "$(uname -s)" != Darwin ] || ! command -v xcodebuild >/dev/null; then
    echo "build-xcframework.sh needs macOS with Xcode (xcodebuild, lipo, the iOS SDKs)" >&2
    exit 1
fi

TARGETS=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios)
rustup target add "${TARGETS[@]}"

# 1. The Rust static library (delrec-ffi + delrec-runtime + llama.cpp/ggml) per target.
for t in "${TARGETS[@]}"; do
    cargo build --release -p delrec-ffi --lib --target "$t" ${FEATURES:+--features "$FEATURES"}
done

# 2. Swift bindings, header and module map, read from the device library's UniFFI metadata.
#    uniffi-bindgen is a host tool: build it for this Mac.
cargo build --release -p delrec-ffi --features cli --bin uniffi-bindgen
rm -rf "$BUILD" && mkdir -p "$BUILD/gen" "$BUILD/headers" "$BUILD/sim"
"$ROOT/target/release/uniffi-bindgen" generate --library "$ROOT/target/aarch64-apple-ios/release/libdelrec_ffi.a" \
    --language swift --out-dir "$BUILD/gen"
cp "$BUILD/gen/delrec_ffiFFI.h" "$BUILD/headers/"
cp "$BUILD/gen/delrec_ffiFFI.modulemap" "$BUILD/headers/module.modulemap"
cp "$BUILD/gen/DelrecFFI.swift" "$IOS/Sources/DelrecFFI/DelrecFFI.swift"

# 3. One fat simulator library (arm64 + x86_64), then the XCFramework.
lipo -create \
    "$ROOT/target/aarch64-apple-ios-sim/release/libdelrec_ffi.a" \
    "$ROOT/target/x86_64-apple-ios/release/libdelrec_ffi.a" \
    -output "$BUILD/sim/libdelrec_ffi.a"
rm -rf "$IOS/DelrecFFI.xcframework"
xcodebuild -create-xcframework \
    -library "$ROOT/target/aarch64-apple-ios/release/libdelrec_ffi.a" -headers "$BUILD/headers" \
    -library "$BUILD/sim/libdelrec_ffi.a" -headers "$BUILD/headers" \
    -output "$IOS/DelrecFFI.xcframework"

echo "built $IOS/DelrecFFI.xcframework and $IOS/Sources/DelrecFFI/DelrecFFI.swift"
echo "check: (cd ios && xcodebuild -scheme DelrecMobile -destination 'generic/platform=iOS Simulator' build)"
