@testable import EDKMSwift
import EDKMNumerics
import Glibc
import Testing

/// The windowed d = 1 passes (`SoftKMeansKernel+Window`) against the full passes on all k centroids
/// (`+Scalar4`, the exact path the engine's other tests check against dense DKM and finite
/// differences): forward traces, outputs and every per-row gradient agree to rounding.
///
/// Tolerances: both paths compute every softmax term with the same exp; they differ in summation
/// order (a few ulp per sum), in the z-decomposition of the clamp (z times a total added once
/// instead of per row: ulp of the total) and in dropped terms below e^-50 ~ 2e-22 relative. Centroids,
/// normalisers and outputs: 1e-12 relative to the values' scale. Gradients, whose softmax Jacobian
/// divides by tau and whose T reverse iterations compound the rounding: 1e-9 relative to the largest
/// gradient (for the dimensionless h, of max(|h|, 1)). Both far below float32 output rounding (6e-8).
/// Thread counts 1/2/3 must give bit-identical results.
@Suite struct WindowedKernelTests {
    enum Distribution: String, CaseIterable { case gaussian, heavyTailed, llmLike }
    enum Keying: String, CaseIterable { case f16, bf16, f32 }
    // Test arguments are the raw values: Swift Testing names enum arguments through
    // swift_getMangledTypeName, which the ASan/TSan builds of the test runner report as a bad free.
    static let distributions = Distribution.allCases.map(\.rawValue)
    static let keyings = Keying.allCases.map(\.rawValue)

    /// One partition's rows: distinct values in key order with counts, as the uniquified path builds
    /// them (f32: every weight its own row, count 1, as the dense path reads them).
    static func rows(_ dist: Distribution, _ keying: Keying, count: Int, seed: UInt64) -> UniqueValueRows {
        var rng = SplitMix64(seed: seed)
        func gaussian() -> Double {
            let u1 = max(rng.nextUnit(), 1e-300), u2 = rng.nextUnit()
            return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
        }
        var weights: [Float] = []
        for _ in 0..<count {
            let w: Double
            switch dist {
            case .gaussian: w = 0.02 * gaussian()
            case .heavyTailed: w = 0.01 * gaussian() / max(rng.nextUnit(), 0.01)  // Gaussian / uniform: t-like tails
            case .llmLike: w = rng.next() % 2000 == 0 ? 0.3 * gaussian() : 0.02 * gaussian()  // outliers, as LLM weights
            }
            weights.append(Float(w))
        }
        var histogram: [UInt32: Double] = [:]
        switch keying {
        case .f16: for w in weights { histogram[UInt32(HalfConversion.floatToF16(w)), default: 0] += 1 }
        case .bf16: for w in weights { histogram[UInt32(HalfConversion.floatToBF16(w)), default: 0] += 1 }
        case .f32: break
        }
        let values: [Double], counts: [Double]
        if keying == .f32 {
            values = weights.map(Double.init)
            counts = [Double](repeating: 1, count: count)
        } else {
            let keys = histogram.keys.sorted()
            values = keys.map { ElementIO.keyValue(UInt16($0), type: keying == .f16 ? .f16 : .bf16) }
            counts = keys.map { histogram[$0]! }
        }
        let v = DoubleBuffer(zeros: values.count), n = DoubleBuffer(zeros: values.count)
        for m in values.indices { v[m] = values[m]; n[m] = counts[m] }
        return UniqueValueRows(valuesBuffer: v, countsBuffer: n)
    }

    struct Run {
        var traces: [PartitionTrace]
        var outputs: [[Double]]
        var last: [[Double]]
        var r: [[Double]]
    }

    /// Forward (iterations + output) and backward of every partition with the given engine.
    static func run(_ engine: DKMEngine, _ rows: [UniqueValueRows], initial: [[Double]], parameters: [EffectiveParameters],
                    gradients: [DoubleBuffer]) -> Run {
        let anyRows: [any RowBlocks] = rows
        // As the layer runs them: the output replays the windows of the iterations' last.
        let ends = engine.windowEnds(anyRows)
        var traces = try! engine.iterate(anyRows, initial: initial, parameters: parameters, windowEnds: ends)
        let outputs = rows.map { DoubleBuffer(zeros: $0.rowCount) }
        engine.output(anyRows, traces: &traces, windowEnds: ends) { p, start, count, f in
            for i in 0..<count { outputs[p][start + i] = f[i] }
        }
        let results = try! engine.backward(anyRows, traces: traces) { p, start, _, _ in UnsafePointer(gradients[p].pointer + start) }
        return Run(traces: traces, outputs: outputs.map(\.array), last: results.map(\.last.array), r: results.map(\.r.array))
    }

    static func maxAbs(_ a: [[Double]]) -> Double { a.joined().reduce(0) { max($0, abs($1)) } }

    static func maxDiff(_ a: [[Double]], _ b: [[Double]]) -> Double {
        zip(a, b).reduce(0) { acc, pair in zip(pair.0, pair.1).reduce(acc) { max($0, abs($1.0 - $1.1)) } }
    }

    /// The temperature of a case: the scale-free mode at factors 1e-6 ... 1e3 of the distortion
    /// (tiny: hard assignments; huge: every centroid in every window), the absolute mode at
    /// coremltools' 1e-4 and at 1e3 (far wider than the weights).
    static let temperatures: [(ClusteringConfig.TemperatureMode, Double)] = [
        (.scaleFree, 0.1), (.scaleFree, 1e-6), (.scaleFree, 1e3), (.absolute, 1e-4), (.absolute, 1e3),
    ]

    /// Weights per partition: smaller in debug builds (CI's `swift test`), whose SIMD code is ~50x slower.
    #if DEBUG
    static let perTensorCount = 2_500, perGroupCount = 600
    #else
    static let perTensorCount = 6_000, perGroupCount = 1_500
    #endif

    /// Windowed (1 thread) against full; with `threads`, also the windowed path at every thread
    /// count, bit-identical to 1 thread.
    static func compare(_ dist: Distribution, _ keying: Keying, partitions: Int, bits: Int, mode: ClusteringConfig.TemperatureMode,
                        tau: Double, iterations: Int = 3, threads: [Int] = [1], count fixedCount: Int? = nil) {
        var config = ClusteringConfig()
        config.bits = bits
        config.maxIterations = iterations
        config.temperatureMode = mode
        config.tau = tau
        config.epsilon = 0  // run every iteration
        let count = fixedCount ?? (partitions == 1 ? perTensorCount : perGroupCount)
        let rows = (0..<partitions).map { Self.rows(dist, keying, count: count, seed: UInt64(partitions * 131 + $0)) }
        let pool = ThreadPool(threads: 1)
        let full = DKMEngine(config: config, pool: pool, windowed: false)
        let initial = rows.map { r in
            CentroidInitialization.optimal1D(values: r.valuesBuffer.array, counts: r.countsBuffer.array, k: config.k)
        }
        // Pass the centroids in a scrambled order so that centroid 0 (the pruned one) is not the smallest.
        let scrambled = initial.map { c in c.indices.map { c[($0 * 7 + 3) % c.count] } }
        let anyRows: [any RowBlocks] = rows
        let inertia = full.inertia(anyRows, centroids: scrambled)
        let parameters = (0..<partitions).map {
            EffectiveParameters(config: config, initial: scrambled[$0], distortion: inertia[$0] / Double(count), vectors: count)
        }
        var rng = SplitMix64(seed: 99)
        let gradients = rows.map { r in
            let g = DoubleBuffer(zeros: r.rowCount)
            for m in 0..<r.rowCount { g[m] = (rng.nextUnit() - 0.5) * 1e-3 * r.countsBuffer[m] }
            return g
        }
        let reference = run(full, rows, initial: scrambled, parameters: parameters, gradients: gradients)
        let label = "\(dist) \(keying) P=\(partitions) bits=\(bits) \(mode) tau=\(tau)"
        var first: Run? = nil
        for threads in threads {
            let windowed = DKMEngine(config: config, pool: ThreadPool(threads: threads))
            let got = run(windowed, rows, initial: scrambled, parameters: parameters, gradients: gradients)
            if let first {
                // Thread counts never change results: bit-identical.
                #expect(got.traces == first.traces, "\(label) threads \(threads): traces differ")
                #expect(got.outputs == first.outputs && got.last == first.last && got.r == first.r,
                        "\(label) threads \(threads): rows differ")
                continue
            }
            first = got
            let scale = maxAbs(rows.map { $0.valuesBuffer.array })
            for p in 0..<partitions {
                let a = got.traces[p], b = reference.traces[p]
                #expect(a.iterations == b.iterations, "\(label)")
                #expect(maxDiff(a.centroids, b.centroids) <= 1e-12 * scale, "\(label) centroids")
                let sScale = maxAbs(b.normalizers)
                #expect(maxDiff(a.normalizers, b.normalizers) <= 1e-12 * sScale, "\(label) normalisers")
                #expect(abs(a.inertia - b.inertia) <= 1e-12 * max(abs(b.inertia), 1e-300), "\(label) inertia")
                #expect(abs(a.entropySum - b.entropySum) <= 1e-12 * Double(count) + 1e-12 * abs(b.entropySum), "\(label) entropy")
            }
            #expect(maxDiff(got.outputs, reference.outputs) <= 1e-12 * scale, "\(label) outputs")
            // h is dimensionless (dw~/dw with the centroids fixed; 1 passes the gradient through): held
            // to 1e-9 of max(|h|, 1). Where every row is deep inside one cluster (tiny tau) the argmin's
            // terms cancel exactly and h is the dropped neighbours' e^{-x} (1e-80 and below), which
            // only this absolute floor can judge.
            let gScale = max(maxAbs(reference.last), 1), rScale = max(maxAbs(reference.r), 1e-300)
            #expect(maxDiff(got.last, reference.last) <= 1e-9 * gScale, "\(label) h: \(maxDiff(got.last, reference.last)) vs \(gScale)")
            #expect(maxDiff(got.r, reference.r) <= 1e-9 * rScale, "\(label) r: \(maxDiff(got.r, reference.r)) vs \(rScale)")
        }
    }

    @Test(arguments: distributions, keyings)
    func perTensorMatchesFullPath(dist: String, keying: String) {
        let (d, k) = (Distribution(rawValue: dist)!, Keying(rawValue: keying)!)
        for (mode, tau) in Self.temperatures { Self.compare(d, k, partitions: 1, bits: 4, mode: mode, tau: tau) }
    }

    @Test(arguments: distributions, keyings)
    func groupedMatchesFullPath(dist: String, keying: String) {
        let (d, k) = (Distribution(rawValue: dist)!, Keying(rawValue: keying)!)
        for (mode, tau) in Self.temperatures { Self.compare(d, k, partitions: 5, bits: 3, mode: mode, tau: tau) }
    }

    /// Thread counts never change results: 1, 2 and 3 threads bit-identical, with several blocks
    /// of rows per partition (7000 f32 rows: 28 blocks of 256) and several partitions.
    @Test(arguments: [0.1, -1e-4])
    func threadCountsBitIdentical(signedTau: Double) {
        // scale-free tau 0.1 (positive) and absolute tau 1e-4 (given negated): plain Double arguments
        let (mode, tau): (ClusteringConfig.TemperatureMode, Double) = signedTau > 0 ? (.scaleFree, signedTau) : (.absolute, -signedTau)
        Self.compare(.llmLike, .f32, partitions: 1, bits: 4, mode: mode, tau: tau, threads: [1, 2, 3], count: 7_000)
        Self.compare(.gaussian, .f16, partitions: 4, bits: 4, mode: mode, tau: tau, threads: [1, 2, 3], count: 5_000)
    }

    /// 1, 2 and 8 bits (k = 2 and 256), one iteration and many.
    @Test(arguments: [1, 2, 8])
    func otherWidths(bits: Int) {
        Self.compare(.llmLike, .f16, partitions: 2, bits: bits, mode: .scaleFree, tau: 0.1, iterations: 1)
        Self.compare(.gaussian, .bf16, partitions: 2, bits: bits, mode: .absolute, tau: 1e-4, iterations: 6)
    }

    /// A large prune bias makes centroid 0 win rows far from it: the window must add it.
    @Test func largePruneBias() {
        var config = ClusteringConfig()
        config.bits = 3
        config.temperatureMode = .absolute
        config.tau = 1e-5
        config.pruneThreshold = 2e-3
        config.epsilon = 0
        let rows = [Self.rows(.gaussian, .f16, count: 8_000, seed: 4)]
        let c = [0.03, -0.05, -0.02, -0.01, 0, 0.01, 0.02, 0.05]  // centroid 0 not the smallest
        let p = [EffectiveParameters(tau: 1e-5, prune: 2e-3, epsilon: 0)]
        let g = [DoubleBuffer(zeros: rows[0].rowCount)]
        for m in 0..<rows[0].rowCount { g[0][m] = Double(m % 7) - 3 }
        let pool = ThreadPool(threads: 1)
        let a = Self.run(DKMEngine(config: config, pool: pool), rows, initial: [c], parameters: p, gradients: g)
        let b = Self.run(DKMEngine(config: config, pool: pool, windowed: false), rows, initial: [c], parameters: p, gradients: g)
        #expect(Self.maxDiff(a.traces[0].centroids, b.traces[0].centroids) <= 1e-12 * 0.1)
        #expect(Self.maxDiff(a.outputs, b.outputs) <= 1e-12 * 0.1)
        #expect(Self.maxDiff(a.last, b.last) <= 1e-9 * max(Self.maxAbs(b.last), 1))
        #expect(Self.maxDiff(a.r, b.r) <= 1e-9 * Self.maxAbs(b.r))
        // The case does exercise the bias: many rows are nearer another centroid in plain distance,
        // yet centroid 0 has their smallest D, and lies outside their window's run unless added.
        let pulled = rows[0].valuesBuffer.array.filter { u in
            let others = c.dropFirst().map { (u - $0) * (u - $0) }.min()!
            return (u - c[0]) * (u - c[0]) - 2e-3 < others && (u - c[0]) * (u - c[0]) > others + 50 * 1e-5
        }
        #expect(pulled.count > 100, "\(pulled.count) rows pulled by the prune bias")
    }
}
