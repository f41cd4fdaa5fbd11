// swift-tools-version:6.0
import PackageDescription

// jemalloc is built from Debian's source package by scripts/build-jemalloc.sh into .deps/jemalloc
// (je_ prefix, global-dynamic TLS, static PIC) and linked into libedkm.so; see README.
let jemalloc = Context.packageDirectory + "/.deps/jemalloc"

let package = Package(
    name: "edkm",
    products: [
        // The C library: $(swift build -c release --show-bin-path)/libEDKM.so, dynamically linked to the
        // toolchain's Swift runtime (what `swift build` and the Swift tests use). The shipped
        // libedkm.so.0.MINOR.PATCH (Swift runtime linked statically, SONAME libedkm.so.0) is made from
        // this product by scripts/build-dist.sh; the product is not named "edkm" because SwiftPM
        // forbids a library and an executable product of the same name, and the binary owns that name.
        .library(name: "EDKM", type: .dynamic, targets: ["EDKMCAPI"]),
        // The command-line tool `edkm`: palettize / unpack / info / demo.
        .executable(name: "edkm", targets: ["EDKMCLI"]),
        // Benchmarks: speed against dense and a bandwidth probe; the eDKM memory ablation.
        .executable(name: "edkm-bench", targets: ["EDKMBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // The public C ABI (header only): include/edkm.h.
        .target(name: "CEDKM", path: "include", publicHeadersPath: "."),
        // C support: jemalloc wrappers, the thread-local error buffer, CPU feature probes.
        .target(
            name: "EDKMSupport",
            cSettings: [.unsafeFlags(["-I", jemalloc + "/include", "-O2"])],
            linkerSettings: [
                .unsafeFlags(["-L", jemalloc + "/lib", "-Xlinker", "--exclude-libs=libjemalloc_pic.a"]),
                .linkedLibrary("jemalloc_pic"),
                .linkedLibrary("pthread"),
            ]
        ),
        // The seeded generator (SplitMix64) and the binary16/bfloat16 conversions: one copy, used by
        // the core, the safetensors module, the tools and the tests. No dependencies, no Foundation.
        .target(name: "EDKMNumerics"),
        // The Swift core: clustering math, kernels, saved-state store. No Foundation, no C types in its API.
        .target(name: "EDKMSwift", dependencies: ["EDKMSupport", "EDKMNumerics"]),
        // The @c exports implementing include/edkm.h.
        .target(
            name: "EDKMCAPI",
            dependencies: ["EDKMSwift", "CEDKM"],
            exclude: ["exports.map"],  // the linker's version script (below), not a source file
            linkerSettings: [.unsafeFlags(["-Xlinker", "--version-script=" + Context.packageDirectory + "/Sources/EDKMCAPI/exports.map"])]
        ),
        // Safetensors reading (mmap) and streaming writing, and the palettized-file format (Foundation-free).
        .target(name: "EDKMSafetensors", dependencies: ["EDKMNumerics"]),
        // Swift owners of the C ABI's handles (runtime, layer, saved state), every call checked: what
        // the CLI, the benchmarks and the C-ABI tests call the library through.
        .target(name: "EDKMClient", dependencies: ["CEDKM", "EDKMCAPI", "EDKMNumerics"]),
        .executableTarget(
            name: "EDKMCLI",
            dependencies: ["CEDKM", "EDKMClient", "EDKMNumerics", "EDKMSafetensors", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(name: "EDKMBench", dependencies: ["CEDKM", "EDKMClient", "EDKMNumerics", "EDKMSwift"]),
        .testTarget(name: "EDKMCAPITests", dependencies: ["CEDKM", "EDKMClient", "EDKMNumerics"]),
        .testTarget(name: "EDKMSwiftTests", dependencies: ["EDKMSwift", "EDKMNumerics"]),
        .testTarget(name: "EDKMCLITests", dependencies: ["EDKMCLI", "EDKMSafetensors", "EDKMNumerics"]),
    ],
    swiftLanguageModes: [.v5]
)
