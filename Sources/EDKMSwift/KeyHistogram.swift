/// The distinct 16-bit keys of one partition and how often each occurs (the uniquified form of
/// the partition's weights). Keys are either bit patterns of f16/bf16 weights or row indices.
public struct KeyHistogram: Sendable, Equatable {
    /// Distinct keys, ascending.
    public var keys: [UInt16]
    /// counts[m] = occurrences of keys[m]; all >= 1.
    public var counts: [UInt32]
    public var distinctCount: Int { keys.count }
}

/// O(N) passes over 16-bit keys, split into fixed chunks (independent of the thread count) and
/// run on the pool: histograms, gathers through a 65,536-entry table, scatter-adds.
enum KeyPasses {
    /// Elements per work item.
    static let chunk = 1 << 20

    struct Item { var partition: Int; var start: Int; var count: Int }

    static func items(partitions: Int, elementsPerPartition: Int) -> [Item] {
        var out: [Item] = []
        for p in 0..<partitions {
            var s = 0
            while s < elementsPerPartition {
                let c = Swift.min(chunk, elementsPerPartition - s)
                out.append(Item(partition: p, start: p * elementsPerPartition + s, count: c))
                s += c
            }
        }
        return out
    }

    /// The histogram of every partition of `keys` (partitions of `elementsPerPartition`
    /// consecutive keys). Memory: one 256 KiB table per running item, plus one per chunk of the
    /// partitions that span several chunks.
    static func histograms(_ keys: UnsafePointer<UInt16>, partitions: Int, elementsPerPartition: Int,
                           pool: ThreadPool) -> [KeyHistogram] {
        let work = items(partitions: partitions, elementsPerPartition: elementsPerPartition)
        let singleChunk = elementsPerPartition <= chunk
        let tables = UnsafeMutablePointer<UnsafeMutablePointer<UInt32>?>.allocate(capacity: work.count)
        tables.initialize(repeating: nil, count: work.count)
        let result = UnsafeMutablePointer<KeyHistogram>.allocate(capacity: partitions)
        result.initialize(repeating: KeyHistogram(keys: [], counts: []), count: partitions)
        defer {
            for i in 0..<work.count { tables[i]?.deallocate() }
            tables.deallocate()
            result.deinitialize(count: partitions)
            result.deallocate()
        }
        pool.parallelFor(work.count) { i in
            let item = work[i]
            let t = UnsafeMutablePointer<UInt32>.allocate(capacity: 65536)
            t.initialize(repeating: 0, count: 65536)
            let k = keys + item.start
            for e in 0..<item.count { t[Int(k[e])] &+= 1 }
            if singleChunk {
                result[item.partition] = extract(t)
                t.deallocate()
            } else {
                tables[i] = t
            }
        }
        if !singleChunk {
            pool.parallelFor(partitions) { p in
                let mine = (0..<work.count).filter { work[$0].partition == p }
                let first = tables[mine[0]]!
                for other in mine.dropFirst() {
                    let t = tables[other]!
                    for key in 0..<65536 { first[key] &+= t[key] }
                }
                result[p] = extract(first)
            }
        }
        return Array(UnsafeBufferPointer(start: result, count: partitions))
    }

    private static func extract(_ table: UnsafeMutablePointer<UInt32>) -> KeyHistogram {
        var h = KeyHistogram(keys: [], counts: [])
        for key in 0..<65536 where table[key] != 0 {
            h.keys.append(UInt16(key))
            h.counts.append(table[key])
        }
        return h
    }

    /// out[e] = store(table_p, e, keys[e]) for every element e, where table_p is partition p's
    /// 65,536-entry table filled by `fill(p, table)` (only the entries of keys present need be set).
    static func gather<T>(_ keys: UnsafePointer<UInt16>, partitions: Int, elementsPerPartition: Int,
                          pool: ThreadPool, fill: (Int, UnsafeMutablePointer<T>) -> Void,
                          store: (UnsafeMutablePointer<T>, _ element: Int, _ key: UInt16) -> Void) {
        let work = items(partitions: partitions, elementsPerPartition: elementsPerPartition)
        if elementsPerPartition <= chunk {
            // One item per partition: fill its table and gather in the same item.
            pool.parallelFor(work.count) { i in
                let item = work[i]
                let table = UnsafeMutablePointer<T>.allocate(capacity: 65536)
                defer { table.deallocate() }
                fill(item.partition, table)
                for e in item.start..<(item.start + item.count) { store(table, e, keys[e]) }
            }
            return
        }
        let tables = UnsafeMutablePointer<UnsafeMutablePointer<T>>.allocate(capacity: partitions)
        for p in 0..<partitions {
            tables[p] = UnsafeMutablePointer<T>.allocate(capacity: 65536)
            fill(p, tables[p])
        }
        defer {
            for p in 0..<partitions { tables[p].deallocate() }
            tables.deallocate()
        }
        pool.parallelFor(work.count) { i in
            let item = work[i]
            let table = tables[item.partition]
            for e in item.start..<(item.start + item.count) { store(table, e, keys[e]) }
        }
    }

    /// Per partition p and m < slots[p].count: sums[p][m] = sum of value(e) over the elements e of
    /// p whose key equals slots[p][m] (every key of p must be among its slots). Chunk partials are
    /// added in chunk order, so the result does not depend on the thread count.
    static func scatterAdd(_ keys: UnsafePointer<UInt16>, slots: [[UInt16]], elementsPerPartition: Int,
                           pool: ThreadPool, value: (Int) -> Double) -> [DoubleBuffer] {
        let partitions = slots.count
        let work = items(partitions: partitions, elementsPerPartition: elementsPerPartition)
        let singleChunk = elementsPerPartition <= chunk
        let sums = slots.map { DoubleBuffer(zeros: $0.count) }
        let tables = UnsafeMutablePointer<UnsafeMutablePointer<Double>?>.allocate(capacity: work.count)
        tables.initialize(repeating: nil, count: work.count)
        defer {
            for i in 0..<work.count { tables[i]?.deallocate() }
            tables.deallocate()
        }
        pool.parallelFor(work.count) { i in
            let item = work[i]
            let mySlots = slots[item.partition]
            let t = UnsafeMutablePointer<Double>.allocate(capacity: 65536)
            for key in mySlots { t[Int(key)] = 0 }
            for e in item.start..<(item.start + item.count) { t[Int(keys[e])] += value(e) }
            if singleChunk {
                let out = sums[item.partition].pointer
                for m in 0..<mySlots.count { out[m] = t[Int(mySlots[m])] }
                t.deallocate()
            } else {
                tables[i] = t
            }
        }
        if !singleChunk {
            for (i, item) in work.enumerated() {
                let out = sums[item.partition].pointer
                let mySlots = slots[item.partition]
                let t = tables[i]!
                for m in 0..<mySlots.count { out[m] += t[Int(mySlots[m])] }
            }
        }
        return sums
    }
}
