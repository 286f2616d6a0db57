#!/usr/bin/env bash
# Builds ios/delrec_ffiFFI.xcframework and ios/Sources/DelrecFFI/DelrecFFI.swift for the Swift package.
# The XCFramework is named after Package.swift's binary target (and the C module its module map
# declares); its slices are the platforms Package.swift declares: iOS 15 (device arm64, simulator
# arm64 + x86_64) and macOS 12 (arm64 + x86_64, so that `swift build` works on the Mac itself).
# macOS with Xcode (xcodebuild, lipo) and rustup only; it has never been run by this project's CI,
# which is Linux (see README.md).
#
#   bash ios/build-xcframework.sh            # every slice, Metal on
#   DELREC_FEATURES= bash ios/build-xcframework.sh   # CPU only
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IOS=$ROOT/ios
BUILD=$IOS/build
FEATURES=${DELREC_FEATURES-metal}
NAME=delrec_ffiFFI # = .binaryTarget(name:) in Package.swift
XCFRAMEWORK=$IOS/$NAME.xcframework
# = platforms: in Package.swift (llama.cpp's C/C++ and rustc's objects are built for these).
export IPHONEOS_DEPLOYMENT_TARGET=${IPHONEOS_DEPLOYMENT_TARGET:-15.0}
export MACOSX_DEPLOYMENT_TARGET=${MACOSX_DEPLOYMENT_TARGET:-12.0}

if [ "$(uname -s)" != Darwin ] || ! command -v xcodebuild >/dev/null; then
    echo "build-xcframework.sh needs macOS with Xcode (xcodebuild, lipo, the iOS SDKs)" >&2
    exit 1
fi

TARGETS=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "${TARGETS[@]}"

# 1. The Rust static library (delrec-ffi + delrec-runtime + llama.cpp/ggml) per target.
for t in "${TARGETS[@]}"; do
    cargo build --release -p delrec-ffi --lib --target "$t" ${FEATURES:+--features "$FEATURES"}
done

# 2. Swift bindings, header and module map, read from the device library's UniFFI metadata.
#    uniffi-bindgen is a host tool: build it for this Mac.
cargo build --release -p delrec-ffi --features cli --bin uniffi-bindgen
#    ios/uniffi-ios.toml: DelrecError's LocalizedError conformance comes from DelrecMobile.
rm -rf "$BUILD" && mkdir -p "$BUILD/gen" "$BUILD/headers" "$BUILD/sim" "$BUILD/macos"
"$ROOT/target/release/uniffi-bindgen" generate --library "$ROOT/target/aarch64-apple-ios/release/libdelrec_ffi.a" \
    --language swift --config "$IOS/uniffi-ios.toml" --out-dir "$BUILD/gen"
cp "$BUILD/gen/delrec_ffiFFI.h" "$BUILD/headers/"
cp "$BUILD/gen/delrec_ffiFFI.modulemap" "$BUILD/headers/module.modulemap"
cp "$BUILD/gen/DelrecFFI.swift" "$IOS/Sources/DelrecFFI/DelrecFFI.swift"

# 3. One fat library per platform that has two architectures, then the XCFramework.
lipo -create \
    "$ROOT/target/aarch64-apple-ios-sim/release/libdelrec_ffi.a" \
    "$ROOT/target/x86_64-apple-ios/release/libdelrec_ffi.a" \
    -output "$BUILD/sim/libdelrec_ffi.a"
lipo -create \
    "$ROOT/target/aarch64-apple-darwin/release/libdelrec_ffi.a" \
    "$ROOT/target/x86_64-apple-darwin/release/libdelrec_ffi.a" \
    -output "$BUILD/macos/libdelrec_ffi.a"
rm -rf "$XCFRAMEWORK" "$IOS/DelrecFFI.xcframework" # (the latter: this script's output before it was renamed)
xcodebuild -create-xcframework \
    -library "$ROOT/target/aarch64-apple-ios/release/libdelrec_ffi.a" -headers "$BUILD/headers" \
    -library "$BUILD/sim/libdelrec_ffi.a" -headers "$BUILD/headers" \
    -library "$BUILD/macos/libdelrec_ffi.a" -headers "$BUILD/headers" \
    -output "$XCFRAMEWORK"

echo "built $XCFRAMEWORK and $IOS/Sources/DelrecFFI/DelrecFFI.swift"
echo "check: (cd ios && swift build && xcodebuild -scheme DelrecMobile -destination 'generic/platform=iOS Simulator' build)"
