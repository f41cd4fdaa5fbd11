// swift-tools-version:5.9
// A Swift program that uses an installed libedkm through its C module, the way any SwiftPM package
// can: a system-library target whose module map includes <edkm.h>, found with pkg-config.
//
//   scripts/install.sh /usr/local      # or any PREFIX; then, for a PREFIX pkg-config does not search:
//   PKG_CONFIG_PATH=PREFIX/lib/pkgconfig swift build --package-path Tests/swift-client
//   LD_LIBRARY_PATH=PREFIX/lib Tests/swift-client/.build/debug/edkm-swift-client
//
// scripts/test-install.sh builds and runs it against a fresh prefix.
import PackageDescription

let package = Package(
    name: "edkm-swift-client",
    targets: [
        // The C module of libedkm: include/edkm.h and -ledkm, flags from `pkg-config edkm`.
        .systemLibrary(name: "CEDKM", pkgConfig: "edkm"),
        .executableTarget(name: "edkm-swift-client", dependencies: ["CEDKM"]),
    ]
)
