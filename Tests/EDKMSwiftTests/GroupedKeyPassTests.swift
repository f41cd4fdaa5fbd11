@testable import EDKMSwift
import EDKMNumerics
import EDKMSupport
import Glibc
import Testing

/// The key passes of grouped layers (many partitions, each one work item; consecutive partitions
/// share a task and its reused 65,536-entry tables) against plain loops, for partition sizes on
/// both sides of the histogram extraction's switch (a bitmap of the keys present below 2^15
/// elements, a scan of the table from there), at 1, 2 and 3 threads: histograms exact, gradient
/// sums in element order, gathers exact, hashes equal to ContentHash per item, and every thread
/// count bit-identical.
@Suite struct GroupedKeyPassTests {
    /// (partitions, elements per partition): per-row LUTs of short rows (many partitions per
    /// task), a task boundary inside the partitions, the scan path, a size that is one task, and
    /// partitions of two gather items each.
    static let shapes = [(257, 1000), (37, 4099), (5, 40_000), (2, KeyPasses.taskElements), (2, KeyPasses.elementChunk + 4099)]

    @Test(arguments: shapes, KeyPassKernelTests.Keys.allCases)
    func histogramsSumsAndGathersMatchPlainLoops(shape: (Int, Int), kind: KeyPassKernelTests.Keys) {
        let (partitions, perPartition) = shape
        let keys = KeyPassKernelTests.keys(kind, count: partitions * perPartition, seed: UInt64(perPartition))
        let (bytes, values) = KeyPassKernelTests.gradient(.f16, count: keys.count, seed: 17)
        let expectedHash = KeyPassKernelTests.referenceHash(keys, partitions: partitions, perPartition: perPartition)
        var first: (hists: [KeyHistogram], sums: [[Double]], gathered: [UInt16])? = nil
        for threads in [1, 2, 3] {
            let pool = ThreadPool(threads: threads)
            let (hists, hash) = keys.withUnsafeBufferPointer {
                KeyPasses.histograms($0.baseAddress!, partitions: partitions, elementsPerPartition: perPartition, pool: pool,
                                     hashing: true)
            }
            #expect(hash == expectedHash)
            let sums = keys.withUnsafeBufferPointer { k in
                bytes.withUnsafeBytes { g in
                    KeyPasses.scatterGradients(k.baseAddress!, slots: hists.map(\.keys), elementsPerPartition: perPartition,
                                               pool: pool, grad: g.baseAddress!, gradType: .f16, hashing: false).sums.map(\.array)
                }
            }
            // Each element's row number in its partition's histogram, gathered through the tables.
            var gathered = [UInt16](repeating: 0, count: keys.count)
            keys.withUnsafeBufferPointer { k in
                gathered.withUnsafeMutableBufferPointer { out in
                    KeyPasses.gather(k.baseAddress!, partitions: partitions, elementsPerPartition: perPartition, pool: pool,
                                     into: out.baseAddress!) { p, table in
                        for (m, key) in hists[p].keys.enumerated() { table[Int(key)] = UInt16(m) }
                    }
                }
            }
            if let first {
                #expect(hists == first.hists, "threads \(threads)")
                #expect(sums == first.sums, "threads \(threads)")
                #expect(gathered == first.gathered, "threads \(threads)")
                continue
            }
            first = (hists, sums, gathered)
            for p in 0..<partitions {
                let range = (p * perPartition)..<((p + 1) * perPartition)
                var counts = [UInt32](repeating: 0, count: 65536)
                var total = [Double](repeating: 0, count: 65536)  // element order
                for e in range {
                    counts[Int(keys[e])] += 1
                    total[Int(keys[e])] += values[e]
                }
                let present = (0..<65536).filter { counts[$0] > 0 }
                #expect(hists[p].keys == present.map { UInt16($0) }, "partition \(p)")
                #expect(hists[p].counts == present.map { counts[$0] }, "partition \(p)")
                #expect(sums[p] == present.map { total[$0] }, "partition \(p)")
                let rowOf = Dictionary(uniqueKeysWithValues: present.enumerated().map { ($1, UInt16($0)) })
                #expect(range.allSatisfy { gathered[$0] == rowOf[Int(keys[$0])]! }, "partition \(p)")
            }
        }
    }

    /// The first non-finite key over partitions, in partition and key order, for both key types.
    @Test func firstNonFiniteKeyInPartitionOrder() {
        let pool = ThreadPool(threads: 3)
        func hist(_ keys: [UInt16]) -> KeyHistogram { KeyHistogram(keys: keys, counts: keys.map { _ in 1 }) }
        let finiteF16 = hist([0x0000, 0x3c00, 0x7bff, 0x8000, 0xfbff])
        #expect(KeyPasses.firstNonFiniteKey([finiteF16, finiteF16], type: .f16, pool: pool) == nil)
        #expect(KeyPasses.firstNonFiniteKey([finiteF16, hist([0x3c00, 0x7c00, 0xfc01]), hist([0x7e00])], type: .f16, pool: pool)
                == 0x7c00)
        #expect(KeyPasses.firstNonFiniteKey([hist([0x7bff, 0xfc00])], type: .f16, pool: pool) == 0xfc00)
        // 0x7c00 is a finite bf16 (2^121); 0x7f80 is +Inf, 0xffc0 a NaN.
        #expect(KeyPasses.firstNonFiniteKey([hist([0x3f80, 0x7c00, 0x7f7f])], type: .bf16, pool: pool) == nil)
        #expect(KeyPasses.firstNonFiniteKey([hist([0x0001]), hist([0x7f80, 0xffc0])], type: .bf16, pool: pool) == 0x7f80)
    }
}

/// The histogram extraction from a full 65,536-entry table (partitions of at least 2^15 keys: runs
/// of 8 entries, empty runs skipped, the others compacted; the AVX2 kernel and the portable loop) against a scan of every
/// entry: keys ascending with their counts, the table left zeroed; keys at both ends of the table,
/// at run boundaries, dense blocks and isolated keys.
@Suite struct HistogramExtractionTests {
    @Test(arguments: [UInt64(1), 2, 3])
    func fullTableExtractionMatchesAScan(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let count = 1 << 15 + Int(rng.next() % 1000)
        let fixed: [UInt16] = [0, 7, 8, 15, 16, 65527, 65528, 65535]
        let keys = (0..<count).map { e -> UInt16 in
            if e < fixed.count { return fixed[e] }
            switch rng.next() % 3 {
            case 0: return UInt16(truncatingIfNeeded: 15_000 + rng.next() % 2_000)  // a dense block
            case 1: return UInt16(truncatingIfNeeded: rng.next())  // anywhere
            default: return UInt16(truncatingIfNeeded: 48_000 + 64 * (rng.next() % 100))  // isolated
            }
        }
        let table = UnsafeMutablePointer<UInt32>.allocate(capacity: 65536)
        let found = UnsafeMutablePointer<UInt16>.allocate(capacity: 65536 + 8)
        let counts = UnsafeMutablePointer<UInt32>.allocate(capacity: 65536 + 8)
        defer { table.deallocate(); found.deallocate(); counts.deallocate() }
        func fill() {
            table.initialize(repeating: 0, count: 65536)
            for key in keys { table[Int(key)] += 1 }
        }
        fill()
        let present = (0..<65536).filter { table[$0] != 0 }
        let expectedKeys = present.map { UInt16($0) }, expectedCounts = present.map { table[$0] }
        // The layer's path (the AVX2 kernel where the CPU has it).
        let h = keys.withUnsafeBufferPointer { KeyPasses.extractClearing(table, $0.baseAddress!, count: count) }
        #expect(h.keys == expectedKeys && h.counts == expectedCounts, "extractClearing")
        #expect((0..<65536).allSatisfy { table[$0] == 0 }, "extractClearing leaves the table zeroed")
        // The portable loop and the kernel, each on its own.
        fill()
        let m = KeyPasses.extractFullTable(table, found, counts)
        #expect(Array(UnsafeBufferPointer(start: found, count: m)) == expectedKeys, "portable loop: keys")
        #expect(Array(UnsafeBufferPointer(start: counts, count: m)) == expectedCounts, "portable loop: counts")
        #expect((0..<65536).allSatisfy { table[$0] == 0 }, "portable loop leaves the table zeroed")
        fill()
        let n = edkm_kernel_extract_keys(table, found, counts)
        if n >= 0 {
            #expect(Array(UnsafeBufferPointer(start: found, count: n)) == expectedKeys, "AVX2 kernel: keys")
            #expect(Array(UnsafeBufferPointer(start: counts, count: n)) == expectedCounts, "AVX2 kernel: counts")
            #expect((0..<65536).allSatisfy { table[$0] == 0 }, "AVX2 kernel leaves the table zeroed")
        }
    }
}
