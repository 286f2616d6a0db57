// swift-tools-version:5.9
// DelrecMobile: the delrec runtime for iOS (and macOS). `build-xcframework.sh` (macOS + Xcode)
// produces the two inputs this package needs and does not commit: delrec_ffiFFI.xcframework (the
// Rust static library with llama.cpp and its Metal backend; one slice per platform below: iOS
// device, iOS simulator, macOS) and Sources/DelrecFFI/DelrecFFI.swift (UniFFI's generated Swift API).
import PackageDescription

let package = Package(
    name: "DelrecMobile",
    // Keep in sync with build-xcframework.sh (its slices and deployment targets).
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        // The generated API (Engine, Session, CancelToken, RankRequest, DelrecError, ...).
        .library(name: "DelrecFFI", targets: ["DelrecFFI"]),
        // Swift conveniences over it: async calls with task cancellation, readable errors, an os.Logger log sink.
        .library(name: "DelrecMobile", targets: ["DelrecMobile"]),
    ],
    targets: [
        // C header + module map `delrec_ffiFFI` + libdelrec_ffi.a per platform. The XCFramework
        // carries the target's name (build-xcframework.sh writes it so).
        .binaryTarget(name: "delrec_ffiFFI", path: "delrec_ffiFFI.xcframework"),
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
