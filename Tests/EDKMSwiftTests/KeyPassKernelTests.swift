@testable import EDKMSwift
import EDKMNumerics
import EDKMSupport
import Glibc
import Testing

/// The C kernels of the key passes (counting and gradient scatter-adds fused with the content
/// hash; the gradient fma with 64-bit pair loads) against plain Swift loops and ContentHash, and
/// with the CPU-feature dispatch both ways (kernel and forced portable loop): bit-identical.
@Suite(.serialized) struct KeyPassKernelTests {
    enum Keys: CaseIterable { case uniform, realF16, realBF16, runs }

    /// Keys of one distribution: uniform over all 65,536 patterns (table ends included), the bit
    /// patterns of LLM-like weights (N(0, 0.02^2) with 0.1 % outliers at 15x), or long runs of one
    /// key (repeated read-modify-writes of one table entry).
    static func keys(_ kind: Keys, count: Int, seed: UInt64) -> [UInt16] {
        var rng = SplitMix64(seed: seed)
        func weight() -> Float {
            let u = max(rng.nextUnit(), 1e-300), v = rng.nextUnit()
            let z = Float((-2 * log(u)).squareRoot() * cos(2 * Double.pi * v)) * 0.02
            return rng.next() % 1000 == 0 ? z * 15 : z
        }
        switch kind {
        case .uniform:
            var k = (0..<count).map { _ in UInt16(truncatingIfNeeded: rng.next()) }
            k[0] = 65535
            k[count - 1] = 0
            return k
        case .realF16: return (0..<count).map { _ in HalfConversion.floatToF16(weight()) }
        case .realBF16: return (0..<count).map { _ in HalfConversion.floatToBF16(weight()) }
        case .runs: return (0..<count).map { UInt16(truncatingIfNeeded: ($0 / 37) % 5) }
        }
    }

    static func gradient(_ type: ElementType, count: Int, seed: UInt64) -> (bytes: [UInt8], values: [Double]) {
        var rng = SplitMix64(seed: seed)
        // heavy-tailed: a Gaussian-like body times 2^(-8...8)
        let f = (0..<count).map { _ in Float((rng.nextUnit() - 0.5) * 2) * Float(1 << (rng.next() % 17)) / 256 }
        switch type {
        case .f32:
            return (f.withUnsafeBytes { Array($0) }, f.map { Double($0) })
        case .f16:
            let h = f.map { HalfConversion.floatToF16($0) }
            return (h.withUnsafeBytes { Array($0) }, h.map { Double(HalfConversion.f16ToFloat($0)) })
        case .bf16:
            let h = f.map { HalfConversion.floatToBF16($0) }
            return (h.withUnsafeBytes { Array($0) }, h.map { Double(HalfConversion.bf16ToFloat($0)) })
        }
    }

    /// Runs body with the x86 kernels on, then forced off; returns both results.
    static func bothWays<T>(_ body: () -> T) -> (kernel: T, portable: T) {
        let kernel = body()
        edkm_kernel_force_portable(1)
        defer { edkm_kernel_force_portable(0) }
        return (kernel, body())
    }

    /// The hash the passes must return: ContentHash.hashChunk of each item's bytes (seed = item
    /// index), combined in item order.
    static func referenceHash(_ keys: [UInt16], partitions: Int, perPartition: Int) -> UInt64 {
        let work = KeyPasses.items(partitions: partitions, elementsPerPartition: perPartition)
        return keys.withUnsafeBytes { b in
            ContentHash.combine(work.enumerated().map { i, item in
                ContentHash.hashChunk(b.baseAddress! + item.start * 2, item.count * 2, seed: UInt64(i))
            })
        }
    }

    @Test(arguments: Keys.allCases)
    func histogramsAndHashMatchPlainLoops(kind: Keys) {
        let partitions = 3, perPartition = 20_003  // not a multiple of 8: kernel blocks plus a tail
        let keys = Self.keys(kind, count: partitions * perPartition, seed: 3)
        let pool = ThreadPool(threads: 2)
        let (kernel, portable) = Self.bothWays {
            keys.withUnsafeBufferPointer {
                KeyPasses.histograms($0.baseAddress!, partitions: partitions, elementsPerPartition: perPartition, pool: pool,
                                     hashing: true)
            }
        }
        #expect(kernel.histograms == portable.histograms)
        #expect(kernel.hash == portable.hash)
        #expect(kernel.hash == Self.referenceHash(keys, partitions: partitions, perPartition: perPartition))
        for p in 0..<partitions {
            var counts = [UInt32](repeating: 0, count: 65536)
            for e in (p * perPartition)..<((p + 1) * perPartition) { counts[Int(keys[e])] += 1 }
            let present = (0..<65536).filter { counts[$0] > 0 }
            #expect(kernel.histograms[p].keys == present.map { UInt16($0) })
            #expect(kernel.histograms[p].counts == present.map { counts[$0] })
        }
    }

    @Test(arguments: ElementType.allCases, Keys.allCases)
    func gradientSumsAndHashMatchPlainLoops(type: ElementType, kind: Keys) {
        let partitions = 2, perPartition = 30_005
        let keys = Self.keys(kind, count: partitions * perPartition, seed: 4)
        let (bytes, values) = Self.gradient(type, count: keys.count, seed: 6)
        let pool = ThreadPool(threads: 3)
        let slots = (0..<partitions).map { p in Array(Set(keys[(p * perPartition)..<((p + 1) * perPartition)])).sorted() }
        for hashing in [false, true] {
            let (kernel, portable) = Self.bothWays {
                keys.withUnsafeBufferPointer { k in
                    bytes.withUnsafeBytes { g in
                        let r = KeyPasses.scatterGradients(k.baseAddress!, slots: slots, elementsPerPartition: perPartition, pool: pool,
                                                           grad: g.baseAddress!, gradType: type, hashing: hashing)
                        return (r.sums.map(\.array), r.hash)
                    }
                }
            }
            #expect(kernel.0 == portable.0)
            #expect(kernel.1 == portable.1)
            #expect(kernel.1 == (hashing ? Self.referenceHash(keys, partitions: partitions, perPartition: perPartition) : 0))
            for p in 0..<partitions {
                var sums = [Double](repeating: 0, count: 65536)  // element order, one item per partition
                for e in (p * perPartition)..<((p + 1) * perPartition) { sums[Int(keys[e])] += values[e] }
                #expect(kernel.0[p] == slots[p].map { sums[Int($0)] })
            }
        }
    }

    /// dL/dw = fma(g, h[key], r[key]) over the whole key range (the last table pair included):
    /// kernel and portable loop bit-identical, and equal to a float32 fma rounded once.
    @Test(arguments: ElementType.allCases)
    func gradientsOverTheWholeTable(type: ElementType) {
        let n = 70_001
        let keys = Self.keys(.uniform, count: n, seed: 8)
        let (bytes, values) = Self.gradient(type, count: n, seed: 9)
        var rng = SplitMix64(seed: 10)
        let table = (0..<65536).map { _ in SIMD2<Float>(Float(rng.nextUnit() * 3 - 1.5), Float(rng.nextUnit() - 0.5)) }
        let pool = ThreadPool(threads: 2)
        let (kernel, portable) = Self.bothWays { () -> [UInt8] in
            var out = [UInt8](repeating: 0, count: n * type.byteWidth)
            keys.withUnsafeBufferPointer { k in
                bytes.withUnsafeBytes { g in
                    out.withUnsafeMutableBytes { o in
                        KeyPasses.gradients(k.baseAddress!, partitions: 1, elementsPerPartition: n, pool: pool, grad: g.baseAddress!,
                                            output: o.baseAddress!, type: type) { _, t in
                            for i in 0..<65536 { t[i] = table[i] }
                        }
                    }
                }
            }
            return out
        }
        #expect(kernel == portable)
        let expected: [UInt8] = (0..<n).map { e -> Float in
            let hr = table[Int(keys[e])]
            return hr.y.addingProduct(Float(values[e]), hr.x)
        }.withUnsafeBufferPointer { y in
            switch type {
            case .f32: return Array(UnsafeRawBufferPointer(y))
            case .f16: return y.map { HalfConversion.floatToF16($0) }.withUnsafeBytes { Array($0) }
            case .bf16: return y.map { HalfConversion.floatToBF16($0) }.withUnsafeBytes { Array($0) }
            }
        }
        #expect(kernel == expected)
    }
}
