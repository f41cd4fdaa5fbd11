@testable import EDKMSwift
import EDKMNumerics
import Glibc
import Testing

/// Keep-sparsity (enforce_zero with prune threshold 0) in the d = 1 kernels: the windowed passes
/// against the full passes on all k centroids, on weights with 40 % exact zeros (half -0.0, a key
/// of its own on the 16-bit paths), at temperatures from hard assignments to windows that cover
/// every centroid, per tensor and grouped, 1 and 2 threads bit-identical. The full passes are the
/// ones the float64 autograd reference checks (Tests/python/test_keep_sparsity.py); the tolerances
/// are `WindowedKernelTests`' (summation order and terms below e^-50: rounding).
///
/// The windowed kernel must take a nonzero row's min D without centroid 0 (its D_0 is the constant
/// 1/z) and still add centroid 0 for the zero rows of the same lanes: with tiny tau a window built
/// from min D = (u - c_0)^2 would leave out the nearest other centroid of small weights.
@Suite struct KeepSparsityKernelTests {
    /// f16 / bf16: distinct values with counts as the uniquified path builds them; f32: every
    /// weight a row (the dense path).
    static func rows(_ keying: WindowedKernelTests.Keying, count: Int, seed: UInt64) -> UniqueValueRows {
        var rng = SplitMix64(seed: seed)
        var weights: [Float] = []
        for _ in 0..<count {
            let u1 = max(rng.nextUnit(), 1e-300), u2 = rng.nextUnit()
            let gaussian = Float(0.02 * (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2))
            let r = rng.nextUnit()
            weights.append(r < 0.2 ? 0 : r < 0.4 ? -0.0 : gaussian)
        }
        if keying == .f32 {
            let v = DoubleBuffer(zeros: count), n = DoubleBuffer(zeros: count)
            for m in 0..<count { v[m] = Double(weights[m]); n[m] = 1 }
            return UniqueValueRows(valuesBuffer: v, countsBuffer: n)
        }
        var histogram: [UInt16: Double] = [:]
        for w in weights {
            histogram[keying == .f16 ? HalfConversion.floatToF16(w) : HalfConversion.floatToBF16(w), default: 0] += 1
        }
        // key order as the histogram path (0x0000 and 0x8000 are separate rows of value 0)
        let keys = histogram.keys.sorted()
        let v = DoubleBuffer(zeros: keys.count), n = DoubleBuffer(zeros: keys.count)
        for (m, key) in keys.enumerated() {
            v[m] = ElementIO.keyValue(key, type: keying == .f16 ? .f16 : .bf16)
            n[m] = histogram[key]!
        }
        return UniqueValueRows(valuesBuffer: v, countsBuffer: n)
    }

    static func compare(_ keying: WindowedKernelTests.Keying, partitions: Int, bits: Int,
                        mode: ClusteringConfig.TemperatureMode, tau: Double, zeroThreshold: Double = 1e-7, count: Int = 3_000) {
        var config = ClusteringConfig()
        config.bits = bits
        config.temperatureMode = mode
        config.tau = tau
        config.epsilon = 0
        config.enforceZero = true
        config.pruneThreshold = 0
        config.zeroThreshold = zeroThreshold
        #expect(config.keepsSparsity)
        let rows = (0..<partitions).map { Self.rows(keying, count: count, seed: UInt64(17 * partitions + $0)) }
        let anyRows: [any RowBlocks] = rows
        let initial: [[Double]] = rows.map { r in
            var c = CentroidInitialization.optimal1D(values: r.valuesBuffer.array, counts: r.countsBuffer.array, k: config.k)
                .map { Float($0) }
            CentroidInitialization.placeZeroFirst(&c, k: config.k, d: 1)
            return c.map { Double($0) }
        }
        let full = DKMEngine(config: config, pool: ThreadPool(threads: 1), windowed: false)
        let inertia = full.inertia(anyRows, centroids: initial)
        let parameters = (0..<partitions).map {
            EffectiveParameters(config: config, initial: initial[$0], distortion: inertia[$0] / Double(count), vectors: count)
        }
        var rng = SplitMix64(seed: 5)
        let gradients = rows.map { r in
            let g = DoubleBuffer(zeros: r.rowCount)
            for m in 0..<r.rowCount { g[m] = (rng.nextUnit() - 0.5) * r.countsBuffer[m] }
            return g
        }
        let reference = WindowedKernelTests.run(full, rows, initial: initial, parameters: parameters, gradients: gradients)
        let one = WindowedKernelTests.run(DKMEngine(config: config, pool: ThreadPool(threads: 1)), rows, initial: initial,
                                          parameters: parameters, gradients: gradients)
        let two = WindowedKernelTests.run(DKMEngine(config: config, pool: ThreadPool(threads: 2)), rows, initial: initial,
                                          parameters: parameters, gradients: gradients)
        let label = "\(keying) P=\(partitions) bits=\(bits) \(mode) tau=\(tau) z=\(zeroThreshold)"
        #expect(one.traces == two.traces && one.outputs == two.outputs && one.last == two.last && one.r == two.r,
                "\(label): 1 and 2 threads differ")
        let scale = WindowedKernelTests.maxAbs(rows.map { $0.valuesBuffer.array })
        for p in 0..<partitions {
            #expect(one.traces[p].iterations == reference.traces[p].iterations, "\(label)")
            #expect(one.traces[p].centroids.allSatisfy { $0[0] == 0 }, "\(label): c_0 not zero")
            #expect(WindowedKernelTests.maxDiff(one.traces[p].centroids, reference.traces[p].centroids) <= 1e-12 * scale,
                    "\(label) centroids")
            let sScale = WindowedKernelTests.maxAbs(reference.traces[p].normalizers)
            #expect(WindowedKernelTests.maxDiff(one.traces[p].normalizers, reference.traces[p].normalizers) <= 1e-12 * sScale,
                    "\(label) normalisers")
            let i = reference.traces[p].inertia
            #expect(abs(one.traces[p].inertia - i) <= 1e-12 * abs(i), "\(label) inertia")
        }
        // A row near a tie of two centroids has s_j sensitive to their rounding: the paths' centroids
        // differ by ~ulp(scale) (summation order), D by scale ulp(scale), s by that / tau, the output
        // by that times the centroids' spread: scale^3 2^-52 / tau (2e-13 measured at absolute 1e-8).
        let tauMin = parameters.map(\.tau).min()!
        let tieRounding = scale * scale * scale * 0x1p-52 / tauMin
        #expect(WindowedKernelTests.maxDiff(one.outputs, reference.outputs) <= 1e-12 * scale + tieRounding, "\(label) outputs")
        let gScale = max(WindowedKernelTests.maxAbs(reference.last), 1)
        let rScale = max(WindowedKernelTests.maxAbs(reference.r), 1e-300)
        #expect(WindowedKernelTests.maxDiff(one.last, reference.last) <= 1e-9 * gScale, "\(label) h")
        #expect(WindowedKernelTests.maxDiff(one.r, reference.r) <= 1e-9 * rScale, "\(label) r")
    }

    /// Scale-free 1e-6 and absolute 1e-8: hard assignments, windows of one or two centroids;
    /// coremltools' 1e-4 and the scale-free default; huge temperatures with z = 1e-3 (D_0 = 1e3 in
    /// the temperature's units, a few tau above min D: centroid 0 carries weight for nonzero rows
    /// and every window covers all centroids).
    static let temperatures: [(ClusteringConfig.TemperatureMode, Double, Double)] = [
        (.scaleFree, 1e-6, 1e-7), (.scaleFree, 0.1, 1e-7), (.scaleFree, 1e4, 1e-3),
        (.absolute, 1e-8, 1e-7), (.absolute, 1e-4, 1e-7), (.absolute, 300, 1e-3), (.absolute, 1e-4, 0),
    ]

    @Test(arguments: WindowedKernelTests.keyings)
    func windowedMatchesFullPathPerTensor(keying: String) {
        let k = WindowedKernelTests.Keying(rawValue: keying)!
        for (mode, tau, z) in Self.temperatures { Self.compare(k, partitions: 1, bits: 4, mode: mode, tau: tau, zeroThreshold: z) }
    }

    @Test(arguments: WindowedKernelTests.keyings)
    func windowedMatchesFullPathGrouped(keying: String) {
        let k = WindowedKernelTests.Keying(rawValue: keying)!
        for (mode, tau, z) in Self.temperatures {
            Self.compare(k, partitions: 3, bits: 2, mode: mode, tau: tau, zeroThreshold: z, count: 800)
        }
    }

    /// The rule changes the forward: with tiny tau a small nonzero weight nearest the zero centroid
    /// goes to the nearest other centroid (its soft value is not ~0), an exact zero stays ~0. Both
    /// kernels (the windowed one would otherwise build a window around min D = (u - c_0)^2 ~ 1e-8
    /// that holds no other centroid).
    @Test func nonzeroWeightsLeaveTheZeroCentroid() {
        var config = ClusteringConfig()
        config.bits = 2
        config.temperatureMode = .absolute
        config.tau = 1e-8
        config.enforceZero = true
        config.pruneThreshold = 0
        let values: [Double] = [-0.0, 0, 1e-4, -1e-4, 0.01, 0.02, -0.01, 0.03]
        let v = DoubleBuffer(zeros: values.count), n = DoubleBuffer(zeros: values.count)
        for m in values.indices { v[m] = values[m]; n[m] = 1 }
        let rows = [UniqueValueRows(valuesBuffer: v, countsBuffer: n)]
        let c: [Double] = [0, -0.01, 0.01, 0.025]
        let p = [EffectiveParameters(tau: 1e-8, prune: 0, epsilon: 0)]
        for windowed in [true, false] {
            let engine = DKMEngine(config: config, pool: ThreadPool(threads: 1), windowed: windowed)
            let got = WindowedKernelTests.run(engine, rows, initial: [c], parameters: p, gradients: [DoubleBuffer(zeros: 8)])
            let f = got.outputs[0]
            // zeros: attention ~1 to c_0 = 0 and the clamp z = 1e-7 to the others (|c| < 0.03)
            #expect(abs(f[0]) < 1e-8 && abs(f[1]) < 1e-8, "zeros stay at the zero centroid: \(f)")
            // +-1e-4 go with +-0.01 to the centroids +-0.00505 (hard assignments at this tau)
            #expect(abs(f[2] - 0.00505) < 1e-6 && abs(f[3] + 0.00505) < 1e-6, "small weights leave zero: \(f)")
        }
    }
}
