@testable import EDKMSwift
import EDKMNumerics
import EDKMSupport
import Glibc
import Testing

/// The exact 1-D k-means (`optimal1D`, flat buffers, levels in parallel with a pool) against its
/// first implementation (`optimal1DReference`): the same centroids bit for bit, on random,
/// heavy-tailed, constant and few-distinct-value inputs, with and without a pool of 1, 2 and 3
/// threads; and a layer's initialisation (keys, histograms, the solver per partition) against the
/// reference run on the layer's own histograms, for every dtype, per tensor and grouped, at 1, 2
/// and 3 threads; the AVX2 split-point kernel against the portable loop, and the CPU-feature
/// dispatch both ways.
@Suite(.serialized) struct Optimal1DTests {
    enum Values: CaseIterable {
        case normal, heavyTailed, constant, fewDistinct, nearK, signedZeros
    }

    /// Weighted values of one kind (unsorted, with repeats, as a histogram's rows come).
    static func values(_ kind: Values, count: Int, seed: UInt64) -> (values: [Double], counts: [Double]) {
        var rng = SplitMix64(seed: seed)
        let counts = (0..<count).map { _ in Double(1 + rng.below(50)) }
        let values: [Double]
        switch kind {
        case .normal: values = (0..<count).map { _ in 0.02 * rng.normal() }
        case .heavyTailed:  // Cauchy: a few values many orders of magnitude out
            values = (0..<count).map { _ in 0.02 * tan(Double.pi * (rng.nextUnitNonzero() - 0.5)) }
        case .constant: values = [Double](repeating: -0.75, count: count)
        case .fewDistinct: values = (0..<count).map { _ in [-1.5, 0.25, 3][rng.below(3)] }
        case .nearK: values = (0..<count).map { _ in Double(rng.below(20)) * 0.125 - 1 }
        case .signedZeros: values = (0..<count).map { _ in rng.below(4) == 0 ? (rng.below(2) == 0 ? 0.0 : -0.0) : rng.normal() }
        }
        return (values, counts)
    }

    static func bits(_ c: [Double]) -> [UInt64] { c.map(\.bitPattern) }

    @Test(arguments: Values.allCases, [1, 2, 5, 16, 64])
    func equalsReferenceBitForBit(kind: Values, k: Int) {
        for (count, seed) in [(1, 1), (7, 2), (300, 3), (2500, 4)] {
            let (v, n) = Self.values(kind, count: count, seed: UInt64(seed * 100 + k))
            let expected = Self.bits(CentroidInitialization.optimal1DReference(values: v, counts: n, k: k))
            #expect(Self.bits(CentroidInitialization.optimal1D(values: v, counts: n, k: k)) == expected,
                    "\(kind) k \(k) count \(count)")
            for threads in [1, 2, 3] {
                let pool = ThreadPool(threads: threads)
                #expect(Self.bits(CentroidInitialization.optimal1D(values: v, counts: n, k: k, pool: pool)) == expected,
                        "\(kind) k \(k) count \(count) threads \(threads)")
            }
        }
    }

    /// More distinct values than the parallel levels' threshold, so the pool's path runs.
    @Test(arguments: [Values.normal, .heavyTailed])
    func parallelLevelsEqualReference(kind: Values) {
        let (v, n) = Self.values(kind, count: 3 * CentroidInitialization.parallelSplitThreshold, seed: 9)
        let expected = Self.bits(CentroidInitialization.optimal1DReference(values: v, counts: n, k: 16))
        for threads in [1, 2, 3] {
            let pool = ThreadPool(threads: threads)
            #expect(Self.bits(CentroidInitialization.optimal1D(values: v, counts: n, k: 16, pool: pool)) == expected,
                    "threads \(threads)")
        }
    }

    /// Weights of one dtype as bytes: N(0, 0.02^2) with 0.1 % outliers of 50 sigma.
    static func weights(_ type: ElementType, count: Int, seed: UInt64) -> [UInt8] {
        var rng = SplitMix64(seed: seed)
        let w = (0..<count).map { _ in Float(0.02 * rng.normal() * (rng.below(1000) == 0 ? 50 : 1)) }
        switch type {
        case .f16: return w.flatMap { x in withUnsafeBytes(of: HalfConversion.floatToF16(x)) { Array($0) } }
        case .bf16: return w.flatMap { x in withUnsafeBytes(of: HalfConversion.floatToBF16(x)) { Array($0) } }
        default: return w.flatMap { x in withUnsafeBytes(of: x) { Array($0) } }
        }
    }

    /// (rows, cols, group size): per tensor with more distinct values than the parallel threshold,
    /// per tensor small, grouped LUTs of 4 and 16 rows.
    static let shapes = [(256, 512, 0), (16, 64, 0), (64, 128, 4), (64, 256, 16)]

    @Test(arguments: [ElementType.f16, .bf16, .f32], shapes)
    func layerInitialisationEqualsReference(type: ElementType, shape: (Int, Int, Int)) throws {
        let (rows, cols, group) = shape
        let bytes = Self.weights(type, count: rows * cols, seed: UInt64(rows * cols + group))
        var config = ClusteringConfig()
        config.bits = 4
        config.groupSize = group
        var expected: [[UInt32]]? = nil
        for threads in [1, 2, 3] {
            var options = Runtime.Options()
            options.threads = threads
            let layer = try Layer(runtime: try Runtime(options: options), config: config, shape: [rows, cols])
            let p = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 64)
            defer { p.deallocate() }
            p.copyMemory(from: bytes, byteCount: bytes.count)
            let got = try layer.computeInitialCentroids(p, type: type).map { $0.map(\.bitPattern) }
            if let expected {
                #expect(got == expected, "\(type) \(shape) threads \(threads)")
            } else {
                // The reference on the layer's own histograms (keys, scale and counts as the layer makes them).
                let reference = try layer.scalarHistograms(p, type: type).map { h in
                    CentroidInitialization.optimal1DReference(values: h.values, counts: h.counts, k: config.k).map { Float($0).bitPattern }
                }
                #expect(got == reference, "\(type) \(shape)")
                expected = reference
            }
        }
    }

    /// The portable loop (kernels forced off) gives the reference's centroids too.
    @Test func portablePathEqualsReference() {
        edkm_kernel_force_portable(1)
        defer { edkm_kernel_force_portable(0) }
        for kind in Values.allCases {
            let (v, n) = Self.values(kind, count: 5000, seed: 77)
            let expected = Self.bits(CentroidInitialization.optimal1DReference(values: v, counts: n, k: 16))
            #expect(Self.bits(CentroidInitialization.optimal1D(values: v, counts: n, k: 16)) == expected, "\(kind)")
            #expect(Self.bits(CentroidInitialization.optimal1D(values: v, counts: n, k: 16, pool: ThreadPool(threads: 2)))
                    == expected, "\(kind)")
        }
    }

    /// The split-point kernel against a sequential scan with a strict comparison, on prefix sums
    /// with ties (repeated prefix values: zero-weight runs, equal candidates), zero and negative
    /// cluster weights, and every range length from 1 to 40 at every offset mod 4.
    @Test func splitKernelEqualsSequentialScan() {
        var rng = SplitMix64(seed: 5)
        let U = 64
        for trial in 0..<200 {
            var s0 = [0.0], s1 = [0.0], s2 = [0.0], prev: [Double] = []
            for _ in 0..<U {
                let n = trial % 3 == 0 ? Double(rng.below(3)) : Double(1 + rng.below(4))  // zero counts: w = 0
                let x = trial % 5 == 0 ? Double(rng.below(3)) : rng.normal()              // repeated values: ties
                s0.append(s0.last! + n)
                s1.append(s1.last! + n * x)
                s2.append(s2.last! + n * x * x)
            }
            for i in 0...U { prev.append(trial % 7 == 0 ? Double(rng.below(2)) : Double(i) * 0.01 * rng.nextUnit()) }
            if trial % 11 == 0 { prev[rng.below(U)] = -0.0 }
            let costs = s0.withUnsafeBufferPointer { a in s1.withUnsafeBufferPointer { b in s2.withUnsafeBufferPointer { c in
                (a.baseAddress!, b.baseAddress!, c.baseAddress!)
            } } }
            for lo in 0..<8 {
                for length in 1...40 where lo + length - 1 <= U {
                    let hi = lo + length - 1
                    let j = Swift.min(U, hi + rng.below(4))
                    let pc = PrefixCosts(s0: UnsafeMutablePointer(mutating: costs.0), s1: UnsafeMutablePointer(mutating: costs.1),
                                         s2: UnsafeMutablePointer(mutating: costs.2))
                    var best = Double.infinity, bestI = lo
                    for i in lo...hi {
                        let v = prev[i] + pc.cost(i, j)
                        if v < best { best = v; bestI = i }
                    }
                    var kernelBest = 0.0
                    let i = edkm_kernel_split_argmin(prev, costs.0, costs.1, costs.2, lo, hi, j, &kernelBest)
                    if edkm_kernel_available() == 0 { continue }  // no AVX2 here: the portable loop is the only path
                    #expect(i == bestI && kernelBest.bitPattern == best.bitPattern, "trial \(trial) lo \(lo) hi \(hi) j \(j)")
                }
            }
        }
    }
}
