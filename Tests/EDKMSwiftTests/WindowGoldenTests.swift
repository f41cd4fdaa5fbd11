@testable import EDKMSwift
import EDKMNumerics
import Testing

/// Pinned bits of the windowed d = 1 passes: FNV-1a hashes of the centroids, normalisers, outputs
/// and per-row gradients (h, r) of fixed cases, through the engine with whichever build the dispatch
/// picks (the AVX2 and Swift builds are bit-identical: `WindowKernelDispatchTests`). A change to
/// the passes that is meant to keep every bit (the window cursors did: the pins were taken before
/// them and held after) must leave these hashes as they are; a change that is meant to move the last
/// bits (a different exp) must re-pin them, with its accuracy shown against the float64 references
/// (`WindowedKernelTests`, `VectorMathTests`). The entropy is not hashed: it goes through libm's
/// log, which may round differently on another platform.
@Suite struct WindowGoldenTests {
    static func fnv(_ hash: inout UInt64, _ values: [Double]) {
        for v in values {
            var bits = v.bitPattern
            for _ in 0..<8 {
                hash = (hash ^ (bits & 0xff)) &* 0x100000001b3
                bits >>= 8
            }
        }
    }

    /// One case's hash: forward and backward with fixed rows, centroids and gradients.
    static func hash(_ dist: WindowedKernelTests.Distribution, _ keying: WindowedKernelTests.Keying, partitions: Int,
                     bits: Int, mode: ClusteringConfig.TemperatureMode, tau: Double, keepSparsity: Bool = false,
                     zeroThreshold: Double = 1e-7) -> UInt64 {
        let rows = (0..<partitions).map { p in
            keepSparsity ? KeepSparsityKernelTests.rows(keying, count: 1_203, seed: UInt64(70 + p))
                         : WindowedKernelTests.rows(dist, keying, count: 1_203, seed: UInt64(60 + p))
        }
        let config = WindowKernelDispatchTests.config(bits: bits, mode: mode, tau: tau, keepSparsity: keepSparsity,
                                                      zeroThreshold: zeroThreshold)
        let initial = rows.map { WindowKernelDispatchTests.initial($0, k: config.k, keepSparsity: keepSparsity) }
        let engine = DKMEngine(config: config, pool: ThreadPool(threads: 1))
        let parameters = WindowKernelDispatchTests.defaultParameters(engine, rows, config, initial: initial)
        let gradients = WindowKernelDispatchTests.randomGradients(rows, seed: 8)
        let run = WindowedKernelTests.run(engine, rows, initial: initial, parameters: parameters, gradients: gradients)
        var h: UInt64 = 0xcbf29ce484222325
        for t in run.traces {
            for c in t.centroids { fnv(&h, c) }
            for n in t.normalizers { fnv(&h, n) }
        }
        for o in run.outputs { fnv(&h, o) }
        for l in run.last { fnv(&h, l) }
        for r in run.r { fnv(&h, r) }
        return h
    }

    /// (label, hash of the case): per tensor and grouped, f16 / bf16 / f32 rows, both temperature
    /// modes from tiny to huge tau, keep-sparsity.
    static func cases() -> [(String, UInt64)] {
        [
            ("f16 grouped scale-free 0.1", hash(.llmLike, .f16, partitions: 3, bits: 4, mode: .scaleFree, tau: 0.1)),
            ("bf16 grouped absolute 1e-4", hash(.gaussian, .bf16, partitions: 3, bits: 4, mode: .absolute, tau: 1e-4)),
            ("f16 per tensor absolute 1e-4", hash(.heavyTailed, .f16, partitions: 1, bits: 3, mode: .absolute, tau: 1e-4)),
            ("f32 per tensor scale-free 0.1", hash(.llmLike, .f32, partitions: 1, bits: 4, mode: .scaleFree, tau: 0.1)),
            ("bf16 tiny tau", hash(.heavyTailed, .bf16, partitions: 2, bits: 3, mode: .scaleFree, tau: 1e-6)),
            ("f16 huge tau", hash(.gaussian, .f16, partitions: 2, bits: 3, mode: .absolute, tau: 1e3)),
            ("keep-sparsity f16", hash(.gaussian, .f16, partitions: 2, bits: 3, mode: .scaleFree, tau: 0.1, keepSparsity: true,
                                       zeroThreshold: 1e-3)),
        ]
    }

    /// Taken with `VectorMath.windowExp` (the table-driven exp). With the previous exp (`VectorMath.exp`
    /// in the windowed passes too) the first four and the last were 0x5b89a7c1920820bc,
    /// 0x5579c083f9da48fd, 0x1c362c99b85558b0, 0x4dab5c191540641a and 0xe37dd1d595f7931f; the tiny
    /// and huge tau cases (every e^x exactly 0 or 1, or |x| below ln2/128 where both exps round
    /// alike) kept their bits.
    static let pinned: [UInt64] = [
        0xb481a3c3e4f6f9ec, 0xcebc1ea52b4484dd, 0x7c194ca069a98f8b, 0xa6703f62b04f9ee7, 0x2a1531cdd4b754b4, 0xfac733ac37888189,
        0x80991577951f9159,
    ]

    @Test func pinnedBits() {
        let got = Self.cases()
        print("WindowGoldenTests: " + got.map { "0x" + String($0.1, radix: 16) }.joined(separator: ", "))
        #expect(got.count == Self.pinned.count)
        for (i, (label, h)) in got.enumerated() where i < Self.pinned.count {
            #expect(h == Self.pinned[i], "\(label): 0x\(String(h, radix: 16)), pinned 0x\(String(Self.pinned[i], radix: 16))")
        }
    }
}
