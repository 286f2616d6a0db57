// swift-tools-version:5.9
// DelrecMobile: the delrec runtime for iOS. `build-xcframework.sh` (macOS + Xcode) produces the
// two inputs this package needs and does not commit: DelrecFFI.xcframework (the Rust static
// library with llama.cpp and its Metal backend, for device and simulator) and
// Sources/DelrecFFI/DelrecFFI.swift (UniFFI's generated Swift API).
import PackageDescription

let package = Package(
    name: "DelrecMobile",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        // The generated API (Engine, Session, CancelToken, RankRequest, DelrecError, ...).
        .library(name: "DelrecFFI", targets: ["DelrecFFI"]),
        // Small Swift conveniences over it (async ranking off the caller's thread).
        .library(name: "DelrecMobile", targets: ["DelrecMobile"]),
    ],
    targets: [
        // C header + module map `delrec_ffiFFI` + libdelrec_ffi.a per platform.
        .binaryTarget(name: "delrec_ffiFFI", path: "DelrecFFI.xcframework"),
        .target(
            name: "DelrecFFI",
            dependencies: ["delrec_ffiFFI"],
            path: "Sources/DelrecFFI",
            linkerSettings: [
                // What llama.cpp's build asks the final link for on Apple platforms.
                .linkedFramework("Foundation"),
                .linkedFramework("Metal"),
                .linkedFramework("MetalKit"),
                .linkedFramework("Accelerate"),
                .linkedLibrary("c++"),
            ]
        ),
        .target(name: "DelrecMobile", dependencies: ["DelrecFFI"], path: "Sources/DelrecMobile"),
    ]
)
