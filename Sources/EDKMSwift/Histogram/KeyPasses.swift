import EDKMNumerics
import EDKMSupport

/// The O(N) passes of the uniquified path over 16-bit keys (the weights' bit patterns or row
/// indices), split into fixed work items of at most `chunk` (reducing passes) or `elementChunk`
/// (read-only passes) elements of one partition, small partitions grouped into tasks (all
/// independent of the thread count), and run on the pool: histograms, scatter-adds of gradients,
/// gathers through 65,536-entry tables. Inner loops are specialised per element type and read 32
/// bytes of keys at a time, absorbing them into the item's content hash in the same pass.
enum KeyPasses {
    /// Elements per work item of the reducing passes (histograms, gradient sums), each with its
    /// own 65,536-entry table: 16 items for a per-tensor 4096 x 4096 layer. Smaller items would
    /// scale further but cost more tables to clear and merge: 2^18 measured 30-50 % more CPU for
    /// these two passes at one thread. The items are fixed by the geometry (never by the thread
    /// count) and their partial sums are added in item order, so results do not depend on it.
    static let chunk = 1 << 20

    /// Elements per work item of the passes that only read their partition's table (gathers,
    /// the gradient fma): a per-tensor 4096 x 4096 layer is 64 items, for 64 cores.
    static let elementChunk = 1 << 18

    /// Elements one task covers when partitions are single items (2^16: a task's table clear is
    /// about a tenth of its counting): a task runs consecutive items
    /// (whole partitions) with one set of 65,536-entry tables, so grouped layers (hundreds or
    /// thousands of partitions) neither allocate nor clear a table per partition.
    static let taskElements = 1 << 16

    struct Item { var partition: Int; var start: Int; var count: Int }

    /// The items of task `task` when every partition is one item of `elementsPerPartition`
    /// elements (a fixed grouping: it depends on the geometry only, never on the thread count).
    static func taskItems(_ task: Int, items: Int, elementsPerPartition: Int) -> Range<Int> {
        let per = itemsPerTask(elementsPerPartition)
        return (task * per)..<Swift.min(items, (task + 1) * per)
    }

    static func itemsPerTask(_ elementsPerPartition: Int) -> Int { Swift.max(1, taskElements / Swift.max(1, elementsPerPartition)) }

    static func taskCount(items: Int, elementsPerPartition: Int) -> Int {
        let per = itemsPerTask(elementsPerPartition)
        return (items + per - 1) / per
    }

    static func items(partitions: Int, elementsPerPartition: Int, chunk: Int = chunk) -> [Item] {
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

    /// Runs body(k) for the keys of an item, 16 at a time, absorbing each 32-byte block into
    /// `hasher`; returns the item's hash (the same as ContentHash.hashChunk of its bytes).
    @inline(__always)
    static func forEachKey(_ keys: UnsafePointer<UInt16>, _ item: Item, index: Int, hashing: Bool,
                           _ body: (Int, UInt16) -> Void) -> UInt64 {
        var hasher = ContentHash.ChunkHasher(seed: UInt64(index))
        let base = keys + item.start
        let raw = UnsafeRawPointer(base)
        @inline(__always) func four(_ e: Int, _ w: UInt64) {
            body(e, UInt16(truncatingIfNeeded: w))
            body(e + 1, UInt16(truncatingIfNeeded: w >> 16))
            body(e + 2, UInt16(truncatingIfNeeded: w >> 32))
            body(e + 3, UInt16(truncatingIfNeeded: w >> 48))
        }
        var e = 0
        while e + 16 <= item.count {
            let w0 = raw.loadUnaligned(fromByteOffset: e * 2, as: UInt64.self)
            let w1 = raw.loadUnaligned(fromByteOffset: e * 2 + 8, as: UInt64.self)
            let w2 = raw.loadUnaligned(fromByteOffset: e * 2 + 16, as: UInt64.self)
            let w3 = raw.loadUnaligned(fromByteOffset: e * 2 + 24, as: UInt64.self)
            if hashing { hasher.absorb(w0, w1, w2, w3) }
            four(e, w0)
            four(e + 4, w1)
            four(e + 8, w2)
            four(e + 12, w3)
            e += 16
        }
        let tailStart = e
        while e < item.count {
            body(e, base[e])
            e += 1
        }
        return hashing ? hasher.finish(tail: raw + tailStart * 2, count: (item.count - tailStart) * 2,
                                       totalBytes: item.count * 2) : 0
    }

    /// Runs an item's whole 16-key blocks through a C kernel (`kernel(state, n)`: state the
    /// hasher's 8 words, nil when not hashing; it returns 0 when the CPU lacks its instructions)
    /// and the remaining keys through body(e, key); returns the item's hash as forEachKey does, or
    /// nil when the kernel did not run (nothing was touched; the caller runs forEachKey).
    @inline(__always)
    static func viaKernel(_ keys: UnsafePointer<UInt16>, _ item: Item, index: Int, hashing: Bool,
                          _ kernel: (UnsafeMutablePointer<UInt64>?, Int) -> Int32,
                          tail body: (Int, UInt16) -> Void) -> UInt64? {
        var hasher = ContentHash.ChunkHasher(seed: UInt64(index))
        let blocks = item.count & ~15
        var state = (hasher.acc, hasher.key)
        let ran = withUnsafeMutablePointer(to: &state) { l in
            l.withMemoryRebound(to: UInt64.self, capacity: 8) { kernel(hashing ? $0 : nil, blocks) }
        }
        if ran == 0 { return nil }
        (hasher.acc, hasher.key) = state
        let base = keys + item.start
        for e in blocks..<item.count { body(e, base[e]) }
        return hashing ? hasher.finish(tail: UnsafeRawPointer(base + blocks), count: (item.count - blocks) * 2,
                                       totalBytes: item.count * 2) : 0
    }

    /// The histogram of every partition of `keys` (partitions of `elementsPerPartition`
    /// consecutive keys) and the hash of the keys (item hashes combined in item order).
    /// Memory: one 256 KiB table per running task of small partitions, and min(threads, items)
    /// per partition that spans several items.
    static func histograms(_ keys: UnsafePointer<UInt16>, partitions: Int, elementsPerPartition: Int,
                           pool: ThreadPool, hashing: Bool = false) -> (histograms: [KeyHistogram], hash: UInt64) {
        let work = items(partitions: partitions, elementsPerPartition: elementsPerPartition)
        let singleChunk = elementsPerPartition <= chunk
        let result = UnsafeMutablePointer<KeyHistogram>.allocate(capacity: partitions)
        result.initialize(repeating: KeyHistogram(keys: [], counts: []), count: partitions)
        let hashes = UnsafeMutablePointer<UInt64>.allocate(capacity: work.count)
        defer {
            result.deinitialize(count: partitions)
            result.deallocate()
            hashes.deallocate()
        }
        /// Counts item i into the zeroed table t; returns the item's hash.
        func count(_ i: Int, into t: UnsafeMutablePointer<UInt32>) -> UInt64 {
            let item = work[i]
            return viaKernel(keys, item, index: i, hashing: hashing, { lanes, n in
                edkm_kernel_count_keys(keys + item.start, n, t, lanes)
            }, tail: { _, key in t[Int(key)] &+= 1 })
                ?? forEachKey(keys, item, index: i, hashing: hashing) { _, key in t[Int(key)] &+= 1 }
        }
        if singleChunk {
            // One zeroed table per task, cleared again by each partition's extraction.
            pool.parallelFor(taskCount(items: work.count, elementsPerPartition: elementsPerPartition)) { task in
                let t = UnsafeMutablePointer<UInt32>.allocate(capacity: 65536)
                t.initialize(repeating: 0, count: 65536)
                defer { t.deallocate() }
                for i in taskItems(task, items: work.count, elementsPerPartition: elementsPerPartition) {
                    hashes[i] = count(i, into: t)
                    result[work[i].partition] = extractClearing(t, keys + work[i].start, count: work[i].count)
                }
            }
        } else {
            // Counts are integers: the items of a partition share min(threads, items) tables
            // (LaneTables), which are added up per key. One thread: one table, no merge.
            let itemsOf = (0..<partitions).map { p in (0..<work.count).filter { work[$0].partition == p } }
            let lanes = itemsOf.map { mine in
                LaneTables<UInt32>(count: LaneTables<UInt32>.count(items: mine.count, pool: pool)) {
                    $0.initialize(repeating: 0, count: 65536)
                }
            }
            defer { withExtendedLifetime(lanes) {} }  // the tables live in `lanes`, read through `used` below
            pool.parallelFor(work.count) { i in hashes[i] = lanes[work[i].partition].withTable { count(i, into: $0) } }

            // Merge each partition's tables into its first, in parallel over (partition, slice of
            // 1024 keys): no serial O(65,536 x tables) section.
            let used = lanes.map(\.used)
            let slices = 64, sliceKeys = 65536 / slices
            pool.parallelFor(partitions * slices) { i in
                let mine = used[i / slices]
                let lo = (i % slices) * sliceKeys
                for t in mine.dropFirst() {
                    for key in lo..<(lo + sliceKeys) { mine[0][key] &+= t[key] }
                }
            }
            pool.parallelFor(partitions) { p in result[p] = extract(used[p][0]) }
        }
        let hash = hashing ? ContentHash.combine(Array(UnsafeBufferPointer(start: hashes, count: work.count))) : 0
        return (Array(UnsafeBufferPointer(start: result, count: partitions)), hash)
    }

    /// The first key, in partition and key order, that is NaN or Inf as `type` (f16 or bf16: its
    /// exponent bits all set), checked in parallel over the partitions.
    static func firstNonFiniteKey(_ hists: [KeyHistogram], type: ElementType, pool: ThreadPool) -> UInt16? {
        let exponent: UInt16 = type == .f16 ? 0x7c00 : 0x7f80
        return pool.parallelMap(hists.count) { p in hists[p].keys.first { $0 & exponent == exponent } }
            .lazy.compactMap { $0 }.first
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

    /// The nonzero entries of a full 65,536-entry table, keys ascending, into found and counts (65,536
    /// entries each), the table left zeroed; returns how many (the portable loop of
    /// `edkm_kernel_extract_keys`, the same result): runs of 8 entries, an empty run skipped by one
    /// test, the others compacted without branches.
    static func extractFullTable(_ table: UnsafeMutablePointer<UInt32>, _ found: UnsafeMutablePointer<UInt16>,
                                 _ counts: UnsafeMutablePointer<UInt32>) -> Int {
        var m = 0  // <= the key written below, so every write is in bounds
        for run in stride(from: 0, to: 65536, by: 8) {
            let t = table + run
            if (t[0] | t[1] | t[2] | t[3] | t[4] | t[5] | t[6] | t[7]) == 0 { continue }
            for e in 0..<8 {
                let n = t[e]
                found[m] = UInt16(truncatingIfNeeded: run &+ e)
                counts[m] = n
                t[e] = 0
                m &+= n != 0 ? 1 : 0
            }
        }
        return m
    }

    /// The histogram in `table` of the `count` keys at `keys` (the keys counted into it), leaving
    /// the table zeroed. Many keys: one pass over the table in runs of 8 entries, a run without keys
    /// skipped by one test (most of the table for weights of one scale), the others compacted
    /// (`edkm_kernel_extract_keys`, AVX2, or `extractFullTable`). Few keys: a 65,536-bit
    /// map of the keys present, built in one pass over them, is scanned instead of the table
    /// (O(count + 1024 + U) rather than O(65,536)).
    static func extractClearing(_ table: UnsafeMutablePointer<UInt32>, _ keys: UnsafePointer<UInt16>,
                                count: Int) -> KeyHistogram {
        if count >= 1 << 15 {
            return withUnsafeTemporaryAllocation(of: UInt16.self, capacity: 65536 + 8) { kb in
                withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 65536 + 8) { cb in
                    let found = kb.baseAddress!, counts = cb.baseAddress!
                    var m = edkm_kernel_extract_keys(table, found, counts)
                    if m < 0 { m = extractFullTable(table, found, counts) }
                    return KeyHistogram(keys: Array(UnsafeBufferPointer(start: found, count: m)),
                                        counts: Array(UnsafeBufferPointer(start: counts, count: m)))
                }
            }
        }
        return withUnsafeTemporaryAllocation(of: UInt64.self, capacity: 1024) { bits in
            let map = bits.baseAddress!
            map.initialize(repeating: 0, count: 1024)
            for e in 0..<count {
                let key = Int(keys[e])
                map[key &>> 6] |= 1 &<< UInt64(key & 63)
            }
            var distinct = 0
            for w in 0..<1024 { distinct += map[w].nonzeroBitCount }
            var counts = [UInt32](repeating: 0, count: distinct)
            let found = counts.withUnsafeMutableBufferPointer { c in
                [UInt16](unsafeUninitializedCapacity: distinct) { b, n in
                    var m = 0
                    for w in 0..<1024 {
                        var word = map[w]
                        while word != 0 {
                            let key = w &<< 6 | word.trailingZeroBitCount
                            b[m] = UInt16(key)
                            c[m] = table[key]
                            table[key] = 0
                            m += 1
                            word &= word &- 1
                        }
                    }
                    n = distinct
                }
            }
            return KeyHistogram(keys: found, counts: counts)
        }
    }

    /// Runs body(item, table) for every item, where table is the item's partition's 65,536-entry
    /// table filled by `fill(p, table)` (only the entries of keys present need be set): filled
    /// inside the item when a partition is one item, up front otherwise.
    static func withPartitionTables<T>(partitions: Int, elementsPerPartition: Int, pool: ThreadPool,
                                       fill: (Int, UnsafeMutablePointer<T>) -> Void,
                                       _ body: (Item, UnsafeMutablePointer<T>) -> Void) {
        let work = items(partitions: partitions, elementsPerPartition: elementsPerPartition, chunk: elementChunk)
        if elementsPerPartition <= elementChunk {
            pool.parallelFor(taskCount(items: work.count, elementsPerPartition: elementsPerPartition)) { task in
                let table = UnsafeMutablePointer<T>.allocate(capacity: 65536)
                defer { table.deallocate() }
                for i in taskItems(task, items: work.count, elementsPerPartition: elementsPerPartition) {
                    fill(work[i].partition, table)
                    body(work[i], table)
                }
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
    /// depend on the thread count; f16 gradients of partitions that span several items are summed
    /// exactly in fixed point instead (`f16GradientSums`), any order giving the same sums.
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
        func combinedHash() -> UInt64 {
            hashing ? ContentHash.combine(Array(UnsafeBufferPointer(start: hashes, count: work.count))) : 0
        }
        if !singleChunk && gradType == .f16,
           let exact = f16GradientSums(keys, slots: slots, work: work, elementsPerPartition: elementsPerPartition, pool: pool,
                                       grad: grad.assumingMemoryBound(to: UInt16.self), hashing: hashing, hashes: hashes) {
            return (exact, combinedHash())
        }
        HalfConversion.f16Table.withUnsafeBufferPointer { f16b in
            let f16 = f16b.baseAddress!
            /// Adds item i's gradients into t (its partition's slots zeroed); sets its hash.
            func scatter(_ i: Int, into t: UnsafeMutablePointer<Double>) {
                let item = work[i]
                for key in slots[item.partition] { t[Int(key)] = 0 }
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
            }
            if singleChunk {
                // One table per task, reused by its partitions.
                pool.parallelFor(taskCount(items: work.count, elementsPerPartition: elementsPerPartition)) { task in
                    let t = UnsafeMutablePointer<Double>.allocate(capacity: 65536)
                    defer { t.deallocate() }
                    for i in taskItems(task, items: work.count, elementsPerPartition: elementsPerPartition) {
                        scatter(i, into: t)
                        let mySlots = slots[work[i].partition], out = sums[work[i].partition].pointer
                        for m in 0..<mySlots.count { out[m] = t[Int(mySlots[m])] }
                    }
                }
            } else {
                pool.parallelFor(work.count) { i in
                    let t = UnsafeMutablePointer<Double>.allocate(capacity: 65536)
                    scatter(i, into: t)
                    tables[i] = t
                }
            }
        }
        if !singleChunk {
            // Per partition and slice of its slots, the items' tables added in item order (so the
            // sums do not depend on the thread count), in parallel over (partition, slice).
            let itemsOf = (0..<partitions).map { p in (0..<work.count).filter { work[$0].partition == p } }
            let slices = 64
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
        return (sums, combinedHash())
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
