@testable import EDKMSwift
import EDKMNumerics
import EDKMSupport
import Glibc
import Testing

/// The AVX2 build of the windowed d = 1 passes (`Sources/EDKMSupport/window_kernels.c`) against the
/// Swift passes it replaces (`SoftKMeansKernel+Window`), with the run-time dispatch both ways
/// (`WindowKernelSelection.forceScalar`): BIT-IDENTICAL traces (centroids, normalisers, inertia,
/// entropy), outputs and per-row gradients, since both run the same operations in the same order on
/// the same four-row lanes with the same exp (`VectorMath.windowExp`) and the same libm log. Through the engine,
/// so every pass (iterations, output, the backward's last step and reverse iterations, with and
/// without the centroid adjoint) and the row remainders (counts not a multiple of 4) are covered,
/// on Gaussian, heavy-tailed and LLM-like weights, f16 / bf16 keys (distinct values with counts)
/// and f32 (every weight a row, as the dense path), per tensor and grouped, both temperature modes
/// from tiny (hard assignments) to huge (windows cover every centroid), keep-sparsity on and off,
/// a large prune bias on centroid 0, and 1 / 2 / 3 threads. The accuracy of the windowed passes
/// against the full passes and the float64 references is `WindowedKernelTests`' and
/// `KeepSparsityKernelTests`' (they run whichever build the dispatch picks: the AVX2 one on such
/// a CPU).
///
/// Serialized: the selection is process-wide; the other suites never change it.
@Suite(.serialized) struct WindowKernelDispatchTests {
    static let avx2 = WindowKernelSelection.avx2Active

    /// Runs `body` with the Swift passes forced, then restores the dispatch.
    static func scalar<R>(_ body: () -> R) -> R {
        WindowKernelSelection.forceScalar = true
        defer { WindowKernelSelection.forceScalar = false }
        #expect(!WindowKernelSelection.avx2Active)
        return body()
    }

    static func expectIdentical(_ a: WindowedKernelTests.Run, _ b: WindowedKernelTests.Run, _ label: String) {
        #expect(a.traces == b.traces, "\(label): traces differ")
        #expect(a.outputs == b.outputs, "\(label): outputs differ (max \(WindowedKernelTests.maxDiff(a.outputs, b.outputs)))")
        #expect(a.last == b.last, "\(label): h differs (max \(WindowedKernelTests.maxDiff(a.last, b.last)))")
        #expect(a.r == b.r, "\(label): r differs (max \(WindowedKernelTests.maxDiff(a.r, b.r)))")
    }

    /// Each partition's parameters from its initial centroids' distortion (the engine's defaults).
    static func defaultParameters(_ engine: DKMEngine, _ rows: [UniqueValueRows], _ config: ClusteringConfig,
                                  initial: [[Double]]) -> [EffectiveParameters] {
        let anyRows: [any RowBlocks] = rows
        let inertia = engine.inertia(anyRows, centroids: initial)
        return rows.indices.map {
            EffectiveParameters(config: config, initial: initial[$0], distortion: inertia[$0] / Double(rows[$0].rowCount),
                                vectors: rows[$0].rowCount)
        }
    }

    /// Upstream gradients, uniform in +-5e-4 times each row's count.
    static func randomGradients(_ rows: [UniqueValueRows], seed: UInt64) -> [DoubleBuffer] {
        var rng = SplitMix64(seed: seed)
        return rows.map { r in
            let g = DoubleBuffer(zeros: r.rowCount)
            for m in 0..<r.rowCount { g[m] = (rng.nextUnit() - 0.5) * 1e-3 * r.countsBuffer[m] }
            return g
        }
    }

    /// One case: the engine with the AVX2 build at every thread count and with the Swift passes
    /// at one thread, all bit-identical.
    static func compare(_ rows: [UniqueValueRows], _ config: ClusteringConfig, initial: [[Double]],
                        parameters: [EffectiveParameters]? = nil, threads: [Int] = [1], label: String) {
        let engine = DKMEngine(config: config, pool: ThreadPool(threads: 1))
        let parameters = parameters ?? defaultParameters(engine, rows, config, initial: initial)
        let gradients = randomGradients(rows, seed: 7)
        #expect(WindowKernelSelection.avx2Active)
        let swift = scalar { WindowedKernelTests.run(engine, rows, initial: initial, parameters: parameters, gradients: gradients) }
        for t in threads {
            let got = WindowedKernelTests.run(DKMEngine(config: config, pool: ThreadPool(threads: t)), rows, initial: initial,
                                              parameters: parameters, gradients: gradients)
            expectIdentical(got, swift, "\(label) threads \(t)")
        }
    }

    static func config(bits: Int, mode: ClusteringConfig.TemperatureMode, tau: Double, keepSparsity: Bool,
                       zeroThreshold: Double = 1e-7) -> ClusteringConfig {
        var config = ClusteringConfig()
        config.bits = bits
        config.temperatureMode = mode
        config.tau = tau
        config.epsilon = 0
        config.zeroThreshold = zeroThreshold
        if keepSparsity {
            config.enforceZero = true
            config.pruneThreshold = 0
        }
        return config
    }

    /// Initial centroids in a scrambled order (centroid 0 not the smallest); under keep-sparsity
    /// with the zero centroid first.
    static func initial(_ r: UniqueValueRows, k: Int, keepSparsity: Bool) -> [Double] {
        let c = CentroidInitialization.optimal1D(values: r.valuesBuffer.array, counts: r.countsBuffer.array, k: k)
        if keepSparsity {
            var f = c.map { Float($0) }
            CentroidInitialization.placeZeroFirst(&f, k: k, d: 1)
            return f.map { Double($0) }
        }
        return c.indices.map { c[($0 * 7 + 3) % c.count] }
    }

    /// Temperatures: tiny, the scale-free default, huge; coremltools' absolute 1e-4, tiny and huge absolute.
    static let temperatures: [(ClusteringConfig.TemperatureMode, Double)] = [
        (.scaleFree, 1e-6), (.scaleFree, 0.1), (.scaleFree, 1e3), (.absolute, 1e-8), (.absolute, 1e-4), (.absolute, 1e3),
    ]

    /// Rows per partition (odd: a remainder after the groups of four); smaller in debug builds (CI's
    /// `swift test`), whose Swift SIMD passes are ~50x slower.
    #if DEBUG
    static let perTensorCount = 1_201, perGroupCount = 303
    #else
    static let perTensorCount = 6_001, perGroupCount = 1_503
    #endif

    @Test(.enabled(if: avx2, "this CPU has no AVX2: only the Swift passes exist here"),
          arguments: WindowedKernelTests.distributions, WindowedKernelTests.keyings)
    func avx2MatchesSwiftPasses(dist: String, keying: String) {
        let (d, k) = (WindowedKernelTests.Distribution(rawValue: dist)!, WindowedKernelTests.Keying(rawValue: keying)!)
        for (partitions, bits) in [(1, 4), (4, 3)] {
            let count = partitions == 1 ? Self.perTensorCount : Self.perGroupCount
            let rows = (0..<partitions).map { WindowedKernelTests.rows(d, k, count: count, seed: UInt64(31 * partitions + $0)) }
            for (mode, tau) in Self.temperatures {
                let config = Self.config(bits: bits, mode: mode, tau: tau, keepSparsity: false)
                Self.compare(rows, config, initial: rows.map { Self.initial($0, k: config.k, keepSparsity: false) },
                             label: "\(dist) \(keying) P=\(partitions) \(mode) tau=\(tau)")
            }
        }
    }

    /// Keep-sparsity (40 % exact zeros, half of them -0.0): D_0 constant for nonzero rows, its
    /// adjoint dropped; z = 1e-3 with huge tau gives centroid 0 weight in every window.
    @Test(.enabled(if: avx2, "this CPU has no AVX2: only the Swift passes exist here"),
          arguments: WindowedKernelTests.keyings)
    func avx2MatchesSwiftPassesKeepSparsity(keying: String) {
        let k = WindowedKernelTests.Keying(rawValue: keying)!
        for partitions in [1, 3] {
            let count = partitions == 1 ? Self.perTensorCount : Self.perGroupCount
            let rows = (0..<partitions).map { KeepSparsityKernelTests.rows(k, count: count, seed: UInt64(5 * partitions + $0)) }
            for (mode, tau) in Self.temperatures {
                for z in [1e-7, 1e-3] {
                    let config = Self.config(bits: 3, mode: mode, tau: tau, keepSparsity: true, zeroThreshold: z)
                    #expect(config.keepsSparsity)
                    Self.compare(rows, config, initial: rows.map { Self.initial($0, k: config.k, keepSparsity: true) },
                                 label: "keep-sparsity \(keying) P=\(partitions) \(mode) tau=\(tau) z=\(z)")
                }
            }
        }
    }

    /// Thread counts 1 / 2 / 3 with several blocks per partition, and 1, 2 and 8 bits.
    @Test(.enabled(if: avx2, "this CPU has no AVX2: only the Swift passes exist here"))
    func threadCountsAndWidths() {
        let perTensor = [WindowedKernelTests.rows(.llmLike, .f32, count: 7_002, seed: 3)]
        for (mode, tau) in [(ClusteringConfig.TemperatureMode.scaleFree, 0.1), (.absolute, 1e-4)] {
            let config = Self.config(bits: 4, mode: mode, tau: tau, keepSparsity: false)
            Self.compare(perTensor, config, initial: perTensor.map { Self.initial($0, k: 16, keepSparsity: false) },
                         threads: [1, 2, 3], label: "threads \(mode)")
        }
        let grouped = (0..<3).map { WindowedKernelTests.rows(.heavyTailed, .bf16, count: 2_000, seed: UInt64(40 + $0)) }
        for bits in [1, 2, 8] {
            let config = Self.config(bits: bits, mode: .scaleFree, tau: 0.1, keepSparsity: false)
            Self.compare(grouped, config, initial: grouped.map { Self.initial($0, k: config.k, keepSparsity: false) },
                         threads: [1, 3], label: "bits \(bits)")
        }
    }

    /// A large prune bias pulls rows far from centroid 0 to it: the window adds centroid 0.
    @Test(.enabled(if: avx2, "this CPU has no AVX2: only the Swift passes exist here"))
    func largePruneBias() {
        var config = Self.config(bits: 3, mode: .absolute, tau: 1e-5, keepSparsity: false)
        config.pruneThreshold = 2e-3
        let rows = [WindowedKernelTests.rows(.gaussian, .f16, count: 8_000, seed: 4)]
        let c = [0.03, -0.05, -0.02, -0.01, 0, 0.01, 0.02, 0.05]
        Self.compare(rows, config, initial: [c], parameters: [EffectiveParameters(tau: 1e-5, prune: 2e-3, epsilon: 0)],
                     threads: [1, 2], label: "prune bias")
    }

    /// The C exp is VectorMath.windowExp bit for bit, over the whole range the softmax feeds it and beyond.
    @Test(.enabled(if: avx2, "this CPU has no AVX2: only the Swift passes exist here"))
    func expMatchesVectorMath() {
        var rng = SplitMix64(seed: 11)
        var xs: [Double] = [0, -0.0, -708, -708.0000001, -707.9999, -709, -745, -1e300, 709, 709.5, 1, -1,
                            -.infinity, 1e-300, -1e-300, -50, -0.5 * log(2), 0.5 * log(2)]
        for _ in 0..<40_000 { xs.append(-760 * rng.nextUnit() + 10) }
        for _ in 0..<10_000 { xs.append(-2 * rng.nextUnit()) }
        while xs.count % 4 != 0 { xs.append(-3) }
        var mismatches = 0
        for i in stride(from: 0, to: xs.count, by: 4) {
            let x = SIMD4<Double>(xs[i], xs[i + 1], xs[i + 2], xs[i + 3])
            let want = VectorMath.windowExp(x, table: edkm_window_exp_table()!)
            var got = [Double](repeating: 0, count: 4)
            #expect(edkm_window_exp4(Array(xs[i..<(i + 4)]), &got) == 1)
            for l in 0..<4 where got[l].bitPattern != want[l].bitPattern { mismatches += 1 }
        }
        #expect(mismatches == 0, "\(mismatches) of \(xs.count) exp values differ")
    }

    /// The dispatch: forcing the Swift passes turns the AVX2 build off and back on.
    @Test func dispatchSwitches() {
        let before = WindowKernelSelection.avx2Active
        WindowKernelSelection.forceScalar = true
        #expect(!WindowKernelSelection.avx2Active)
        WindowKernelSelection.forceScalar = false
        #expect(WindowKernelSelection.avx2Active == before)
        #expect(WindowKernelSelection.avx2Active == (edkm_window_kernels_available() != 0))
    }
}
