@testable import EDKMSwift
import EDKMNumerics
import Testing

/// Core unit tests (no C ABI): initialisation, conversions, re-spread.
@Suite struct CoreTests {
    /// Exact 1-D k-means equals exhaustive search over all contiguous splits of the sorted values.
    @Test(arguments: 1...4)
    func optimal1DEqualsBruteForce(k: Int) {
        var rng = SplitMix64(seed: UInt64(k))
        for _ in 0..<20 {
            let U = 9
            let values = (0..<U).map { _ in rng.nextUnit() * 2 - 1 }
            let counts = (0..<U).map { _ in Double(1 + rng.next() % 5) }
            let c = CentroidInitialization.optimal1D(values: values, counts: counts, k: k)
            let got = CentroidInitialization.sse(values: values, counts: counts, centroids: c)
            // brute force over the k-1 cut points of the sorted values
            let order = values.indices.sorted { values[$0] < values[$1] }
            let u = order.map { values[$0] }, n = order.map { counts[$0] }
            var best = Double.infinity
            func search(_ start: Int, _ left: Int, _ acc: Double) {
                if left == 1 {
                    best = min(best, acc + clusterCost(u, n, start, U))
                    return
                }
                if start >= U { return }
                for end in (start + 1)...U where U - end >= left - 1 {
                    search(end, left - 1, acc + clusterCost(u, n, start, end))
                }
            }
            search(0, k, 0)
            #expect(abs(got - best) <= 1e-12 * max(1, best), "k \(k): \(got) vs \(best)")
            // never worse than k-means++
            let pp = u.withUnsafeBufferPointer {
                CentroidInitialization.kMeansPlusPlus(vectors: $0.baseAddress!, count: U, d: 1, k: k, seed: 7)
            }
            #expect(got <= CentroidInitialization.sse(values: values, counts: counts, centroids: pp) + 1e-12)
        }
    }

    func clusterCost(_ u: [Double], _ n: [Double], _ a: Int, _ b: Int) -> Double {
        let w = n[a..<b].reduce(0, +)
        let mean = zip(u[a..<b], n[a..<b]).reduce(0) { $0 + $1.0 * $1.1 } / w
        return zip(u[a..<b], n[a..<b]).reduce(0) { $0 + $1.1 * ($1.0 - mean) * ($1.0 - mean) }
    }

    @Test func fewerValuesThanCentroids() {
        let c = CentroidInitialization.optimal1D(values: [1, 3], counts: [2, 1], k: 4)
        #expect(c.count == 4 && c.contains(1) && c.contains(3))
        #expect(CentroidInitialization.optimal1D(values: [5], counts: [3], k: 2) == [5, 5])
    }

    /// Float -> f16/bf16 conversions round to nearest even exactly as the hardware types do.
    @Test func halfConversionsExact() {
        var rng = SplitMix64(seed: 1)
        var samples: [Float] = [0, -0, 65504, 65519.99, 65520, 1e-8, 6e-8, -3e-5, .infinity, -.infinity, .nan, 1.0009765625]
        for _ in 0..<200_000 { samples.append(Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))) }
        for x in samples {
            let ours = HalfConversion.floatToF16(x)
            let ref = Float16(x).bitPattern
            if x.isNaN { #expect(Float16(bitPattern: ours).isNaN) } else { #expect(ours == ref, "\(x)") }
        }
        for bits in 0..<65536 {
            let h = Float16(bitPattern: UInt16(bits))
            if !h.isNaN { #expect(HalfConversion.f16ToFloat(UInt16(bits)) == Float(h)) }
            let b = HalfConversion.bf16ToFloat(UInt16(bits))
            if !b.isNaN { #expect(HalfConversion.floatToBF16(b) == UInt16(bits)) }
        }
        #expect(HalfConversion.floatToBF16(1.00390625) == 0x3F80)  // tie to even
        #expect(HalfConversion.floatToBF16(1.01171875) == 0x3F82)
    }

    @Test func respreadMovesDuplicates() {
        var c: [Float] = [0.5, 0.1, 0.5, 0.9]
        CentroidInitialization.respreadDuplicates(&c, k: 4, d: 1)
        #expect(c == [0.7, 0.1, 0.5, 0.9])  // first 0.5 -> midpoint with the next distinct (0.9)
        var distinct: [Float] = [1, 2, 3, 4]
        CentroidInitialization.respreadDuplicates(&distinct, k: 4, d: 1)
        #expect(distinct == [1, 2, 3, 4])
    }
}

import EDKMSupport

/// The AVX2/F16C gradient kernel and the portable loop give bit-identical results.
@Suite(.serialized) struct KernelSelectionTests {
    @Test(arguments: ElementType.allCases)
    func gradientKernelMatchesPortableLoop(type: ElementType) {
        var rng = SplitMix64(seed: 5)
        let n = 4099  // not a multiple of 8: exercises the tails
        let keys = (0..<n).map { _ in UInt16(truncatingIfNeeded: rng.next() % 700) }
        let gradF = (0..<n).map { _ in Float(rng.nextUnit() * 4 - 2) }
        let grad: [UInt16] = type == .f16 ? gradF.map { HalfConversion.floatToF16($0) } : gradF.map { HalfConversion.floatToBF16($0) }
        let table = (0..<700).map { _ in SIMD2<Float>(Float(rng.nextUnit() * 3 - 1.5), Float(rng.nextUnit() - 0.5)) }
        let pool = ThreadPool(threads: 1)
        func run() -> [UInt8] {
            var out = [UInt8](repeating: 0, count: n * type.byteWidth)
            keys.withUnsafeBufferPointer { k in
                out.withUnsafeMutableBytes { o in
                    let body = { (g: UnsafeRawPointer) in
                        KeyPasses.gradients(k.baseAddress!, partitions: 1, elementsPerPartition: n, pool: pool, grad: g,
                                            output: o.baseAddress!, type: type) { _, t in
                            for i in 0..<700 { t[i] = table[i] }
                        }
                    }
                    if type == .f32 { gradF.withUnsafeBytes { body($0.baseAddress!) } } else { grad.withUnsafeBytes { body($0.baseAddress!) } }
                }
            }
            return out
        }
        let fast = run()
        edkm_kernel_force_portable(1)
        let portable = run()
        edkm_kernel_force_portable(0)
        #expect(fast == portable)
    }
}

/// The key passes on partitions of several 1 Mi-element work items (their tables merged in
/// parallel over slices of keys or slots) against plain loops: histograms exact, gradient sums
/// in the documented order (per item in element order, items added in item order), bit-identical.
@Suite struct KeyPassMergeTests {
    @Test(arguments: [1, 3])
    func multiItemPartitionsMatchPlainLoops(threads: Int) {
        let perPartition = 2 * KeyPasses.chunk + 12_345, partitions = 2
        var rng = SplitMix64(seed: 11)
        let keys = (0..<(perPartition * partitions)).map { _ in UInt16(truncatingIfNeeded: rng.next() % 3000 + 60000 * (rng.next() % 2)) }
        let grad = (0..<keys.count).map { _ in Float(rng.nextUnit() * 2 - 1) }
        let pool = ThreadPool(threads: threads)
        let hists = keys.withUnsafeBufferPointer {
            KeyPasses.histograms($0.baseAddress!, partitions: partitions, elementsPerPartition: perPartition, pool: pool).histograms
        }
        for p in 0..<partitions {
            var counts = [UInt32](repeating: 0, count: 65536)
            for e in (p * perPartition)..<((p + 1) * perPartition) { counts[Int(keys[e])] += 1 }
            let present = (0..<65536).filter { counts[$0] > 0 }
            #expect(hists[p].keys == present.map { UInt16($0) })
            #expect(hists[p].counts == present.map { counts[$0] })
        }
        let sums = keys.withUnsafeBufferPointer { k in
            grad.withUnsafeBytes { g in
                KeyPasses.scatterGradients(k.baseAddress!, slots: hists.map(\.keys), elementsPerPartition: perPartition, pool: pool,
                                           grad: g.baseAddress!, gradType: .f32, hashing: false).sums.map(\.array)
            }
        }
        for p in 0..<partitions {
            var total = [Double](repeating: 0, count: 65536)
            var start = p * perPartition
            while start < (p + 1) * perPartition {
                var item = [Double](repeating: 0, count: 65536)
                let end = min(start + KeyPasses.chunk, (p + 1) * perPartition)
                for e in start..<end { item[Int(keys[e])] += Double(grad[e]) }
                for key in hists[p].keys { total[Int(key)] += item[Int(key)] }
                start = end
            }
            #expect(sums[p] == hists[p].keys.map { total[Int($0)] })
        }
    }
}
