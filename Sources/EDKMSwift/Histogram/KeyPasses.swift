import EDKMNumerics
import EDKMSupport

/// The O(N) passes of the uniquified path over 16-bit keys (the weights' bit patterns or row
/// indices), split into fixed work items of at most `chunk` elements of one partition (independent
/// of the thread count) and run on the pool: histograms, scatter-adds of gradients, gathers through
/// 65,536-entry tables. Inner loops are specialised per element type and read 16 bytes of keys at a
/// time, absorbing them into the item's content hash in the same pass.
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

    /// Runs body(k) for the keys of an item, 8 at a time, absorbing each 16-byte block into
    /// `hasher`; returns the item's hash (the same as ContentHash.hashChunk of its bytes).
    @inline(__always)
    static func forEachKey(_ keys: UnsafePointer<UInt16>, _ item: Item, index: Int, hashing: Bool,
                           _ body: (Int, UInt16) -> Void) -> UInt64 {
        var hasher = ContentHash.ChunkHasher(seed: UInt64(index))
        let base = keys + item.start
        let raw = UnsafeRawPointer(base)
        var e = 0
        while e + 8 <= item.count {
            let lo = raw.loadUnaligned(fromByteOffset: e * 2, as: UInt64.self)
            let hi = raw.loadUnaligned(fromByteOffset: e * 2 + 8, as: UInt64.self)
            if hashing { hasher.absorb(lo, hi) }
            body(e, UInt16(truncatingIfNeeded: lo))
            body(e + 1, UInt16(truncatingIfNeeded: lo >> 16))
            body(e + 2, UInt16(truncatingIfNeeded: lo >> 32))
            body(e + 3, UInt16(truncatingIfNeeded: lo >> 48))
            body(e + 4, UInt16(truncatingIfNeeded: hi))
            body(e + 5, UInt16(truncatingIfNeeded: hi >> 16))
            body(e + 6, UInt16(truncatingIfNeeded: hi >> 32))
            body(e + 7, UInt16(truncatingIfNeeded: hi >> 48))
            e += 8
        }
        let tailStart = e
        while e < item.count {
            body(e, base[e])
            e += 1
        }
        return hashing ? hasher.finish(tail: raw + tailStart * 2, count: (item.count - tailStart) * 2,
                                       totalBytes: item.count * 2) : 0
    }

    /// Runs an item's whole 8-key blocks through a C kernel (`kernel(lanes, n)`, lanes nil when not
    /// hashing; it returns 0 when the CPU lacks its instructions) and the remaining keys through
    /// body(e, key); returns the item's hash as forEachKey does, or nil when the kernel did not run
    /// (nothing was touched; the caller runs forEachKey).
    @inline(__always)
    static func viaKernel(_ keys: UnsafePointer<UInt16>, _ item: Item, index: Int, hashing: Bool,
                          _ kernel: (UnsafeMutablePointer<UInt64>?, Int) -> Int32,
                          tail body: (Int, UInt16) -> Void) -> UInt64? {
        var hasher = ContentHash.ChunkHasher(seed: UInt64(index))
        let blocks = item.count & ~7
        var lanes: (UInt64, UInt64) = (hasher.a, hasher.b)
        let ran = withUnsafeMutablePointer(to: &lanes) { l in
            l.withMemoryRebound(to: UInt64.self, capacity: 2) { kernel(hashing ? $0 : nil, blocks) }
        }
        if ran == 0 { return nil }
        (hasher.a, hasher.b) = lanes
        let base = keys + item.start
        for e in blocks..<item.count { body(e, base[e]) }
        return hashing ? hasher.finish(tail: UnsafeRawPointer(base + blocks), count: (item.count - blocks) * 2,
                                       totalBytes: item.count * 2) : 0
    }

    /// The histogram of every partition of `keys` (partitions of `elementsPerPartition`
    /// consecutive keys) and the hash of the keys (item hashes combined in item order).
    /// Memory: one 256 KiB table per running item, plus one per item of partitions that span
    /// several items.
    static func histograms(_ keys: UnsafePointer<UInt16>, partitions: Int, elementsPerPartition: Int,
                           pool: ThreadPool, hashing: Bool = false) -> (histograms: [KeyHistogram], hash: UInt64) {
        let work = items(partitions: partitions, elementsPerPartition: elementsPerPartition)
        let singleChunk = elementsPerPartition <= chunk
        let tables = UnsafeMutablePointer<UnsafeMutablePointer<UInt32>?>.allocate(capacity: work.count)
        tables.initialize(repeating: nil, count: work.count)
        let result = UnsafeMutablePointer<KeyHistogram>.allocate(capacity: partitions)
        result.initialize(repeating: KeyHistogram(keys: [], counts: []), count: partitions)
        let hashes = UnsafeMutablePointer<UInt64>.allocate(capacity: work.count)
        defer {
            for i in 0..<work.count { tables[i]?.deallocate() }
            tables.deallocate()
            result.deinitialize(count: partitions)
            result.deallocate()
            hashes.deallocate()
        }
        pool.parallelFor(work.count) { i in
            let item = work[i]
            let t = UnsafeMutablePointer<UInt32>.allocate(capacity: 65536)
            t.initialize(repeating: 0, count: 65536)
            hashes[i] = viaKernel(keys, item, index: i, hashing: hashing, { lanes, n in
                edkm_kernel_count_keys(keys + item.start, n, t, lanes)
            }, tail: { _, key in t[Int(key)] &+= 1 })
                ?? forEachKey(keys, item, index: i, hashing: hashing) { _, key in t[Int(key)] &+= 1 }
            if singleChunk {
                result[item.partition] = extract(t)
                t.deallocate()
            } else {
                tables[i] = t
            }
        }
        if !singleChunk {
            // Merge the items' tables into each partition's first, in parallel over (partition,
            // slice of 4096 keys): integer sums, so the order does not matter; no serial O(65,536
            // x items) section (a per-tensor layer is one partition).
            let itemsOf = (0..<partitions).map { p in (0..<work.count).filter { work[$0].partition == p } }
            let slices = 16, sliceKeys = 65536 / slices
            pool.parallelFor(partitions * slices) { i in
                let mine = itemsOf[i / slices]
                let first = tables[mine[0]]!
                let lo = (i % slices) * sliceKeys
                for other in mine.dropFirst() {
                    let t = tables[other]!
                    for key in lo..<(lo + sliceKeys) { first[key] &+= t[key] }
                }
            }
            pool.parallelFor(partitions) { p in result[p] = extract(tables[itemsOf[p][0]]!) }
        }
        let hash = hashing ? ContentHash.combine(Array(UnsafeBufferPointer(start: hashes, count: work.count))) : 0
        return (Array(UnsafeBufferPointer(start: result, count: partitions)), hash)
    }

    /// The hash `histograms(..., hashing: true)` computes, alone.
    static func hash(_ keys: UnsafePointer<UInt16>, partitions: Int, elementsPerPartition: Int, pool: ThreadPool) -> UInt64 {
        let work = items(partitions: partitions, elementsPerPartition: elementsPerPartition)
        var parts = [UInt64](repeating: 0, count: work.count)
        parts.withUnsafeMutableBufferPointer { out in
            let o = out.baseAddress!
            pool.parallelFor(work.count) { i in
                let item = work[i]
                o[i] = ContentHash.hashChunk(UnsafeRawPointer(keys + item.start), item.count * 2, seed: UInt64(i))
            }
        }
        return ContentHash.combine(parts)
    }

    private static func extract(_ table: UnsafeMutablePointer<UInt32>) -> KeyHistogram {
        var h = KeyHistogram(keys: [], counts: [])
        for key in 0..<65536 where table[key] != 0 {
            h.keys.append(UInt16(key))
            h.counts.append(table[key])
        }
        return h
    }

    /// Runs body(item, table) for every item, where table is the item's partition's 65,536-entry
    /// table filled by `fill(p, table)` (only the entries of keys present need be set): filled
    /// inside the item when a partition is one item, up front otherwise.
    static func withPartitionTables<T>(partitions: Int, elementsPerPartition: Int, pool: ThreadPool,
                                       fill: (Int, UnsafeMutablePointer<T>) -> Void,
                                       _ body: (Item, UnsafeMutablePointer<T>) -> Void) {
        let work = items(partitions: partitions, elementsPerPartition: elementsPerPartition)
        if elementsPerPartition <= chunk {
            pool.parallelFor(work.count) { i in
                let table = UnsafeMutablePointer<T>.allocate(capacity: 65536)
                defer { table.deallocate() }
                fill(work[i].partition, table)
                body(work[i], table)
            }
            return
        }
        let tables = UnsafeMutablePointer<UnsafeMutablePointer<T>>.allocate(capacity: partitions)
        for p in 0..<partitions { tables[p] = UnsafeMutablePointer<T>.allocate(capacity: 65536) }
        pool.parallelFor(partitions) { p in fill(p, tables[p]) }
        defer {
            for p in 0..<partitions { tables[p].deallocate() }
            tables.deallocate()
        }
        pool.parallelFor(work.count) { i in body(work[i], tables[work[i].partition]) }
    }

    /// out[e] = table_p[keys[e]] for every element e.
    static func gather<T>(_ keys: UnsafePointer<UInt16>, partitions: Int, elementsPerPartition: Int, pool: ThreadPool,
                          into out: UnsafeMutablePointer<T>, fill: (Int, UnsafeMutablePointer<T>) -> Void) {
        withPartitionTables(partitions: partitions, elementsPerPartition: elementsPerPartition, pool: pool, fill: fill) { item, table in
            let k = keys + item.start
            let o = out + item.start
            for e in 0..<item.count { o[e] = table[Int(k[e])] }
        }
    }

    /// Per partition p and m < slots[p].count: sums[p][m] = the sum of the gradients of the
    /// elements of p whose key is slots[p][m] (every key of p must be among its slots), plus the
    /// keys' hash when `hashing`. Item partials are added in item order, so the result does not
    /// depend on the thread count.
    static func scatterGradients(_ keys: UnsafePointer<UInt16>, slots: [[UInt16]], elementsPerPartition: Int,
                                 pool: ThreadPool, grad: UnsafeRawPointer, gradType: ElementType,
                                 hashing: Bool) -> (sums: [DoubleBuffer], hash: UInt64) {
        let partitions = slots.count
        let work = items(partitions: partitions, elementsPerPartition: elementsPerPartition)
        let singleChunk = elementsPerPartition <= chunk
        let sums = slots.map { DoubleBuffer(zeros: $0.count) }
        let tables = UnsafeMutablePointer<UnsafeMutablePointer<Double>?>.allocate(capacity: work.count)
        tables.initialize(repeating: nil, count: work.count)
        let hashes = UnsafeMutablePointer<UInt64>.allocate(capacity: work.count)
        defer {
            for i in 0..<work.count { tables[i]?.deallocate() }
            tables.deallocate()
            hashes.deallocate()
        }
        HalfConversion.f16Table.withUnsafeBufferPointer { f16b in
            let f16 = f16b.baseAddress!
            pool.parallelFor(work.count) { i in
                let item = work[i]
                let mySlots = slots[item.partition]
                let t = UnsafeMutablePointer<Double>.allocate(capacity: 65536)
                for key in mySlots { t[Int(key)] = 0 }
                let g = grad + item.start * gradType.byteWidth
                if let h = viaKernel(keys, item, index: i, hashing: hashing, { lanes, n in
                    edkm_kernel_scatter_gradients(gradType.rawValue, keys + item.start, g, n, t, lanes)
                }, tail: { e, key in t[Int(key)] += gradientValue(g, e, type: gradType, f16: f16) }) {
                    hashes[i] = h
                } else {
                    switch gradType {
                    case .f32:
                        let g = grad.assumingMemoryBound(to: Float.self) + item.start
                        hashes[i] = forEachKey(keys, item, index: i, hashing: hashing) { e, key in t[Int(key)] += Double(g[e]) }
                    case .f16:
                        let g = grad.assumingMemoryBound(to: UInt16.self) + item.start
                        hashes[i] = forEachKey(keys, item, index: i, hashing: hashing) { e, key in t[Int(key)] += Double(f16[Int(g[e])]) }
                    case .bf16:
                        let g = grad.assumingMemoryBound(to: UInt16.self) + item.start
                        hashes[i] = forEachKey(keys, item, index: i, hashing: hashing) { e, key in
                            t[Int(key)] += Double(Float(bitPattern: UInt32(g[e]) << 16))
                        }
                    }
                }
                if singleChunk {
                    let out = sums[item.partition].pointer
                    for m in 0..<mySlots.count { out[m] = t[Int(mySlots[m])] }
                    t.deallocate()
                } else {
                    tables[i] = t
                }
            }
        }
        if !singleChunk {
            // Per partition and slice of its slots, the items' tables added in item order (so the
            // sums do not depend on the thread count), in parallel over (partition, slice).
            let itemsOf = (0..<partitions).map { p in (0..<work.count).filter { work[$0].partition == p } }
            let slices = 16
            pool.parallelFor(partitions * slices) { i in
                let p = i / slices
                let mySlots = slots[p]
                let lo = mySlots.count * (i % slices) / slices, hi = mySlots.count * (i % slices + 1) / slices
                let out = sums[p].pointer
                for item in itemsOf[p] {
                    let t = tables[item]!
                    for m in lo..<hi { out[m] += t[Int(mySlots[m])] }
                }
            }
        }
        let hash = hashing ? ContentHash.combine(Array(UnsafeBufferPointer(start: hashes, count: work.count))) : 0
        return (sums, hash)
    }

    /// Element e of a gradient of dtype `type` as a Double (exact).
    @inline(__always)
    static func gradientValue(_ g: UnsafeRawPointer, _ e: Int, type: ElementType, f16: UnsafePointer<Float>) -> Double {
        switch type {
        case .f32: return Double(g.load(fromByteOffset: e * 4, as: Float.self))
        case .f16: return Double(f16[Int(g.load(fromByteOffset: e * 2, as: UInt16.self))])
        case .bf16: return Double(Float(bitPattern: UInt32(g.load(fromByteOffset: e * 2, as: UInt16.self)) << 16))
        }
    }

    /// dL/dw for every element: out[e] = fma(g[e], h[key], r[key]) in float32, rounded once to
    /// `type`, with (h, r) from partition p's table filled by `fill`. Runs the AVX2/F16C kernel
    /// where the CPU has it, the portable loop (same results) otherwise.
    static func gradients(_ keys: UnsafePointer<UInt16>, partitions: Int, elementsPerPartition: Int, pool: ThreadPool,
                          grad: UnsafeRawPointer, output: UnsafeMutableRawPointer, type: ElementType,
                          fill: (Int, UnsafeMutablePointer<SIMD2<Float>>) -> Void) {
        HalfConversion.f16Table.withUnsafeBufferPointer { f16b in
            let f16 = f16b.baseAddress!
            withPartitionTables(partitions: partitions, elementsPerPartition: elementsPerPartition, pool: pool, fill: fill) { item, table in
                let k = keys + item.start
                let width = type.byteWidth
                let handled = table.withMemoryRebound(to: Float.self, capacity: 2 * 65536) { hr in
                    edkm_kernel_gradients(type.rawValue, k, grad + item.start * width, hr,
                                          output + item.start * width, item.count) != 0
                }
                if handled { return }
                switch type {
                case .f32:
                    let g = grad.assumingMemoryBound(to: Float.self) + item.start
                    let o = output.assumingMemoryBound(to: Float.self) + item.start
                    for e in 0..<item.count {
                        let hr = table[Int(k[e])]
                        o[e] = hr.y.addingProduct(g[e], hr.x)
                    }
                case .f16:
                    let g = grad.assumingMemoryBound(to: UInt16.self) + item.start
                    let o = output.assumingMemoryBound(to: UInt16.self) + item.start
                    for e in 0..<item.count {
                        let hr = table[Int(k[e])]
                        o[e] = HalfConversion.floatToF16(hr.y.addingProduct(f16[Int(g[e])], hr.x))
                    }
                case .bf16:
                    let g = grad.assumingMemoryBound(to: UInt16.self) + item.start
                    let o = output.assumingMemoryBound(to: UInt16.self) + item.start
                    for e in 0..<item.count {
                        let hr = table[Int(k[e])]
                        o[e] = HalfConversion.floatToBF16(hr.y.addingProduct(Float(bitPattern: UInt32(g[e]) << 16), hr.x))
                    }
                }
            }
        }
    }
}
