@testable import EDKMSwift
import EDKMNumerics
import EDKMSupport
import Testing

/// The key passes of partitions that span several work items, whose items share min(threads,
/// items) tables (LaneTables): histogram counts, and f16 gradient sums in 64-bit fixed point,
/// against plain loops (counts exact; sums equal to the float64 element-order sums, which are
/// exact for these gradients), at 1, 2 and 3 threads bit-identical, with the CPU-feature dispatch
/// both ways; the fixed point's fallback to float64 tables for gradients that could overflow it
/// and for NaN; the content hash against its definition and its sensitivity to every byte.
@Suite(.serialized) struct SharedTableKeyPassTests {
    /// Two partitions of two reducing items each; not a multiple of 16 (kernel blocks plus a tail).
    static let partitions = 2, perPartition = KeyPasses.chunk + 40_003

    @Test(arguments: [KeyPassKernelTests.Keys.realF16, .uniform, .runs])
    func histogramsMatchPlainCountsAtEveryThreadCount(kind: KeyPassKernelTests.Keys) {
        let (P, E) = (Self.partitions, Self.perPartition)
        let keys = KeyPassKernelTests.keys(kind, count: P * E, seed: 21)
        let expectedHash = KeyPassKernelTests.referenceHash(keys, partitions: P, perPartition: E)
        var first: [KeyHistogram]? = nil
        for threads in [1, 2, 3] {
            let pool = ThreadPool(threads: threads)
            let (kernel, portable) = KeyPassKernelTests.bothWays {
                keys.withUnsafeBufferPointer {
                    KeyPasses.histograms($0.baseAddress!, partitions: P, elementsPerPartition: E, pool: pool, hashing: true)
                }
            }
            #expect(kernel.histograms == portable.histograms, "threads \(threads)")
            #expect(kernel.hash == expectedHash && portable.hash == expectedHash, "threads \(threads)")
            if let first {
                #expect(kernel.histograms == first, "threads \(threads)")
                continue
            }
            first = kernel.histograms
            for p in 0..<P {
                var counts = [UInt32](repeating: 0, count: 65536)
                for e in (p * E)..<((p + 1) * E) { counts[Int(keys[e])] += 1 }
                let present = (0..<65536).filter { counts[$0] > 0 }
                #expect(kernel.histograms[p].keys == present.map { UInt16($0) })
                #expect(kernel.histograms[p].counts == present.map { counts[$0] })
            }
        }
    }

    /// The sums of scatterGradients at 1, 2 and 3 threads, kernel and portable (hashes checked).
    static func sums(_ keys: [UInt16], _ bytes: [UInt8], type: ElementType, slots: [[UInt16]], perPartition E: Int) -> [[[Double]]] {
        var out: [[[Double]]] = []
        let expectedHash = KeyPassKernelTests.referenceHash(keys, partitions: slots.count, perPartition: E)
        for threads in [1, 2, 3] {
            let pool = ThreadPool(threads: threads)
            let (kernel, portable) = KeyPassKernelTests.bothWays { () -> ([[Double]], UInt64) in
                keys.withUnsafeBufferPointer { k in
                    bytes.withUnsafeBytes { g in
                        let r = KeyPasses.scatterGradients(k.baseAddress!, slots: slots, elementsPerPartition: E,
                                                           pool: pool, grad: g.baseAddress!, gradType: type, hashing: true)
                        return (r.sums.map(\.array), r.hash)
                    }
                }
            }
            #expect(kernel.1 == expectedHash && portable.1 == expectedHash, "threads \(threads)")
            out.append(kernel.0)
            out.append(portable.0)
        }
        return out
    }

    /// The float64 tables' sums: per work item in element order, the items added in item order
    /// (for f16 and bf16 here every partial sum is exact, so this is also the element-order sum).
    static func itemOrderSums(_ keys: [UInt16], _ values: [Double], slots: [[UInt16]], perPartition E: Int) -> [[Double]] {
        var total = [[Double]](repeating: [Double](repeating: 0, count: 65536), count: slots.count)
        for item in KeyPasses.items(partitions: slots.count, elementsPerPartition: E) {
            var part = [Double](repeating: 0, count: 65536)
            for e in item.start..<(item.start + item.count) { part[Int(keys[e])] += values[e] }
            for key in slots[item.partition] { total[item.partition][Int(key)] += part[Int(key)] }
        }
        return (0..<slots.count).map { p in slots[p].map { total[p][Int($0)] } }
    }

    static func slots(_ keys: [UInt16], partitions: Int, perPartition E: Int) -> [[UInt16]] {
        (0..<partitions).map { p in Array(Set(keys[(p * E)..<((p + 1) * E)])).sorted() }
    }

    @Test(arguments: ElementType.allCases, [KeyPassKernelTests.Keys.realF16, .realBF16, .runs])
    func gradientSumsMatchThePlainSumsAtEveryThreadCount(type: ElementType, kind: KeyPassKernelTests.Keys) {
        let (P, E) = (Self.partitions, Self.perPartition)
        let keys = KeyPassKernelTests.keys(kind, count: P * E, seed: 22)
        // Heavy-tailed (uniform x 2^(-8...8)): for f16 every float64 partial sum is exact (below
        // 2^27, steps of 2^-24 or more), so the fixed-point sums must equal the float64 ones bit for bit.
        let (bytes, values) = KeyPassKernelTests.gradient(type, count: keys.count, seed: 23)
        let slots = Self.slots(keys, partitions: P, perPartition: E)
        let expected = Self.itemOrderSums(keys, values, slots: slots, perPartition: E)
        for (run, sums) in Self.sums(keys, bytes, type: type, slots: slots, perPartition: E).enumerated() {
            #expect(sums == expected, "run \(run) (threads \(run / 2 + 1), \(run % 2 == 0 ? "kernel" : "portable"))")
        }
    }

    /// Gradients of +-65,504 (the largest f16, 2^40 units of 2^-24) in a partition of over 2^23
    /// elements could overflow 63 bits: the pass uses the float64 tables instead (the same sums
    /// here: all exact). A NaN gradient gives a NaN sum (which the backward reports) rather than a
    /// wrapped integer.
    @Test func f16SumsFallBackToFloat64WhenTheFixedPointCouldOverflowOrSeesNaN() {
        let E = (1 << 23) + (1 << 17)
        let keys = KeyPassKernelTests.keys(.runs, count: E, seed: 24)
        var bits = [UInt16](repeating: HalfConversion.floatToF16(1 / 1024), count: E)
        for e in stride(from: 5, to: E, by: 1000) { bits[e] = e % 2000 == 5 ? 0x7bff : 0xfbff }
        #expect(KeyPasses.f16Units(0x7bff).multipliedReportingOverflow(by: Int64(E)).overflow)
        let slots = Self.slots(keys, partitions: 1, perPartition: E)
        let expected = Self.itemOrderSums(keys, bits.map { Double(HalfConversion.f16ToFloat($0)) }, slots: slots, perPartition: E)
        for sums in Self.sums(keys, bits.withUnsafeBytes { Array($0) }, type: .f16, slots: slots, perPartition: E) {
            #expect(sums == expected)
        }

        let (P, PE) = (Self.partitions, Self.perPartition)
        let keys2 = KeyPassKernelTests.keys(.realF16, count: P * PE, seed: 26)
        var withNaN = [UInt16](repeating: HalfConversion.floatToF16(0.5), count: keys2.count)
        withNaN[PE + 77] = 0x7e00
        let slots2 = Self.slots(keys2, partitions: P, perPartition: PE)
        let m = slots2[1].firstIndex(of: keys2[PE + 77])!
        for sums in Self.sums(keys2, withNaN.withUnsafeBytes { Array($0) }, type: .f16, slots: slots2, perPartition: PE) {
            #expect(sums[0].allSatisfy { $0.isFinite })
            #expect(sums[1][m].isNaN)
            #expect(sums[1].enumerated().allSatisfy { $0.offset == m || $0.element.isFinite })
        }
    }

    /// Every finite f16 pattern is f16Units(g) x 2^-24 exactly.
    @Test func f16UnitsAreExact() {
        for g in 0...UInt16.max where g & 0x7c00 != 0x7c00 {
            #expect(Double(KeyPasses.f16Units(g)) * 0x1p-24 == Double(HalfConversion.f16ToFloat(g)), "0x\(String(g, radix: 16))")
        }
    }

    /// hashChunk against a direct transcription of the lane formula, and a change of any one byte
    /// (in a block or in the tail) changes the hash.
    @Test func contentHashFollowsItsDefinitionAndSeesEveryByte() {
        var rng = SplitMix64(seed: 25)
        var bytes = (0..<1000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }  // 31 blocks and an 8-byte tail
        func word(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) } }
        var acc: [UInt64] = [0x243F_6A88_85A3_08D3, 0x1319_8A2E_0370_7344, 0xA409_3822_299F_31D0, 0x082E_FA98_EC4E_6C89]
        var key: [UInt64] = [0x4528_21E6_38D0_1377, 0xBE54_66CF_34E9_0C6C, 0xC0AC_29B7_C97C_50DD, 0x3F84_D5B5_B547_0917]
        for b in 0..<31 {
            for j in 0..<4 {
                let w = word(32 * b + 8 * j), x = w ^ key[j]
                acc[j] = acc[j] &+ (w << 32 | w >> 32) &+ (x & 0xFFFF_FFFF) &* (x >> 32)
                key[j] &+= 0x9E37_79B9_7F4A_7C15
            }
        }
        var h = UInt64(7) ^ 1000
        for i in 992..<1000 { h = ContentHash.mix(h, UInt64(bytes[i]) | 0x100) }
        let expected = acc.reduce(h) { ContentHash.mix($0, $1) }
        let original = bytes.withUnsafeBytes { ContentHash.hashChunk($0.baseAddress!, 1000, seed: 7) }
        #expect(original == expected)
        for i in 0..<1000 {
            bytes[i] ^= 1 << UInt8(i % 8)
            #expect(bytes.withUnsafeBytes { ContentHash.hashChunk($0.baseAddress!, 1000, seed: 7) } != original, "byte \(i)")
            bytes[i] ^= 1 << UInt8(i % 8)
        }
    }
}
