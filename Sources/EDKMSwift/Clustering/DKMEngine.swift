/// The rows of one partition as the DKM engine reads them, in blocks: values (d per row, Double)
/// and row counts (nil = every row counts once).
protocol RowBlocks {
    var rowCount: Int { get }
    /// Values of rows [start, start + count), count * d doubles: either a pointer into the source
    /// or `scratch` (capacity count * d) filled by the call.
    func values(start: Int, count: Int, scratch: UnsafeMutablePointer<Double>) -> UnsafePointer<Double>
    /// Counts of rows [start, start + count), or nil when each row counts once.
    func counts(start: Int, count: Int) -> UnsafePointer<Double>?
}

/// What a backward needs of one partition's forward (the whole HISTOGRAM-mode saved state besides
/// the value table): every iteration's centroids and normalisers.
public struct PartitionTrace: Sendable, Equatable {
    /// c^0 ... c^T, each k x d.
    public var centroids: [[Double]]
    /// S^0 ... S^{T-1}, each k: S^t_j = sum_m n_m A^t_mj.
    public var normalizers: [[Double]]
    /// With LUT quantization: P^t / S^t before the quantization (index 0 = c^0), each k x d, which
    /// the backward differentiates (the quantizer is straight-through); empty otherwise.
    public var rawCentroids: [[Double]] = []
    /// I^{T-1} = sum_m n_m min_j D_mj at the last iteration.
    public var inertia: Double
    /// The temperature, prune bias and stop tolerance this partition ran with.
    public var parameters: EffectiveParameters
    /// sum_m n_m H_m of the last attention (H = entropy of the softmax row, nats); set by `output`.
    public var entropySum: Double = 0
    /// T, the iterations run.
    public var iterations: Int { normalizers.count }
    /// Bytes this trace occupies when saved.
    public var byteCount: Int {
        ((centroids + rawCentroids).reduce(0) { $0 + $1.count } + normalizers.reduce(0) { $0 + $1.count } + 4) * 8
    }
}

/// The DKM forward iterations and the reverse-mode backward over every partition of a tensor,
/// in blocks of rows spread over the thread pool. Each block writes its own partial sums, reduced
/// in block order, so results do not depend on the thread count.
struct DKMEngine {
    let config: ClusteringConfig
    let pool: ThreadPool
    /// d = 1 passes on centroid windows (the default) or on all k centroids (the reference they
    /// are tested against; both exact to rounding).
    var windowed = WindowKernelSelection.windowed

    /// Blocks a layer's rows should make at least: a per-tensor layer's U of 5k-25k distinct values
    /// then spreads over 64 cores.
    static let minimumBlocks = 64

    /// Rows per block: about 2048 values; for d = 1 layers with fewer than 64 x 2048 rows in all
    /// (per-tensor LUTs on the histogram path), total / 64 rows (a multiple of 4, at least 256).
    /// Fixed by the rows (never by the thread count), so results do not depend on the threads.
    func blockRows(_ rows: [any RowBlocks]) -> Int { blockRows(rowCounts: rows.map(\.rowCount)) }

    /// `blockRows` for partitions of these row counts.
    func blockRows(rowCounts: [Int]) -> Int {
        let base = max(1, 2048 / config.clusterDim)
        if config.clusterDim != 1 { return base }
        let total = rowCounts.reduce(0, +)
        let share = (total + DKMEngine.minimumBlocks - 1) / DKMEngine.minimumBlocks
        return min(base, max(256, (share + 3) & ~3))
    }

    /// The row arithmetic of one partition, with its effective temperature and prune bias.
    func kernel(_ trace: PartitionTrace) -> SoftKMeansKernel {
        SoftKMeansKernel(config: config, tau: trace.parameters.tau, prune: trace.parameters.prune, windowed: windowed)
    }

    /// The kernel of one block, recording or replaying the block's window ends in `ends` (nil:
    /// the passes choose their windows).
    func kernel(_ trace: PartitionTrace, block item: BlockItem, ends: WindowEndsBuffer?, _ mode: WindowEnds.Mode) -> SoftKMeansKernel {
        var kernel = kernel(trace)
        kernel.windowEnds = ends?.ends(partition: item.partition, start: item.start, mode)
        return kernel
    }

    /// A buffer for the window ends of `rows` that `iterate` records and `output` replays (nil
    /// where the passes use no windows: d > 1, windows off). Without maps only: pass nil to both
    /// when `iterate` writes maps (those passes run on all k centroids).
    func windowEnds(_ rows: [any RowBlocks]) -> WindowEndsBuffer? {
        WindowEndsBuffer(rows, config: config, windowed: windowed)
    }

    struct BlockItem { var partition: Int; var start: Int; var count: Int }

    /// For blocks made by `blocks(rows, partitions:)`: the blocks of partitions[a] are
    /// firstItem[a] ..< firstItem[a + 1].
    private static func firstItems(_ items: [BlockItem], partitions: [Int]) -> [Int] {
        var first = [Int](repeating: items.count, count: partitions.count + 1)
        var i = 0
        for (a, p) in partitions.enumerated() {
            first[a] = i
            while i < items.count && items[i].partition == p { i += 1 }
        }
        return first
    }

    private func blocks(_ rows: [any RowBlocks], partitions: [Int]) -> [BlockItem] {
        let blockRows = blockRows(rows)
        var items: [BlockItem] = []
        for p in partitions {
            var start = 0
            let n = rows[p].rowCount
            while start < n {
                let c = Swift.min(blockRows, n - start)
                items.append(BlockItem(partition: p, start: start, count: c))
                start += c
            }
        }
        return items
    }

    /// Runs up to maxIterations DKM iterations on every partition from its initial centroids
    /// (k x d, Double), with coremltools' early stop. `prepare(t)` (optional) runs before
    /// iteration t (to allocate where its maps go; an error stops the forward) and
    /// `mapSink(p, t, start, count)` returns where to store the D and s maps (count x k floats
    /// each) of those rows. `windowEnds` (optional, without maps): where each partition's windows
    /// of its last iteration are left for `output`.
    func iterate(_ rows: [any RowBlocks], initial: [[Double]], parameters: [EffectiveParameters],
                 prepare: ((Int) throws(EDKMError) -> Void)? = nil,
                 mapSink: ((Int, Int, Int, Int) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>))? = nil,
                 windowEnds: WindowEndsBuffer? = nil)
        throws(EDKMError) -> [PartitionTrace]
    {
        let ends = mapSink == nil ? windowEnds : nil
        let k = config.k, d = config.clusterDim
        let P = rows.count
        var traces = (0..<P).map { PartitionTrace(centroids: [initial[$0]], normalizers: [], inertia: 0, parameters: parameters[$0]) }
        if config.lutType != .f32 { for p in 0..<P { traces[p].rawCentroids = [initial[p]] } }
        var active = Array(0..<P)
        var lastInertia = [Double](repeating: 0, count: P)
        let stride = k + k * d + 1  // S, P, inertia
        for t in 0..<config.maxIterations {
            if active.isEmpty { break }
            try prepare?(t)
            let items = blocks(rows, partitions: active)
            var partials = [Double](repeating: 0, count: items.count * stride)
            partials.withUnsafeMutableBufferPointer { partialsBuf in
                let out = partialsBuf.baseAddress!
                traces.withUnsafeBufferPointer { tracesBuf in
                    pool.parallelFor(items.count) { i in
                        let item = items[i]
                        let c = tracesBuf[item.partition].centroids[t]
                        let acc = out + i * stride
                        withUnsafeTemporaryAllocation(of: Double.self, capacity: item.count * d) { scratch in
                            let values = rows[item.partition].values(start: item.start, count: item.count, scratch: scratch.baseAddress!)
                            let counts = rows[item.partition].counts(start: item.start, count: item.count)
                            let maps = mapSink?(item.partition, t, item.start, item.count)
                            c.withUnsafeBufferPointer { cb in
                                acc[stride - 1] = kernel(tracesBuf[item.partition], block: item, ends: ends, .record)
                                    .iterateBlock(values, counts, item.count, cb.baseAddress!, acc, maps: maps)
                            }
                        }
                    }
                }
            }
            // Each active partition's block partials, added in block order, in parallel over partitions.
            let firstItem = DKMEngine.firstItems(items, partitions: active)
            let stops = traces.withUnsafeMutableBufferPointer { tracesBuf in
                lastInertia.withUnsafeMutableBufferPointer { lastBuf in
                    pool.parallelMap(active.count) { a -> Bool in
                        let p = active[a]
                        var S = [Double](repeating: 0, count: k)
                        var Psum = [Double](repeating: 0, count: k * d)
                        var inertia = 0.0
                        for itemIndex in firstItem[a]..<firstItem[a + 1] {
                            let base = itemIndex * stride
                            for j in 0..<k { S[j] += partials[base + j] }
                            for j in 0..<(k * d) { Psum[j] += partials[base + k + j] }
                            inertia += partials[base + stride - 1]
                        }
                        let c = tracesBuf[p].centroids[t]
                        var next = [Double](repeating: 0, count: k * d)
                        for j in 0..<k {
                            for e in 0..<d { next[j * d + e] = S[j] > 0 ? Psum[j * d + e] / S[j] : c[j * d + e] }
                        }
                        if config.lutType != .f32 { tracesBuf[p].rawCentroids.append(next) }
                        if config.enforceZero { for e in 0..<d { next[e] = 0 } }  // coremltools: c_0 reset to zero
                        // after the zero: the LUT's scale (and zero point) then hold for the LUT as it stays,
                        // and zero is exact in both types
                        LUTQuantization.apply(config.lutType, to: &next)  // straight-through in the backward
                        tracesBuf[p].normalizers.append(S)
                        tracesBuf[p].centroids.append(next)
                        tracesBuf[p].inertia = inertia
                        // coremltools: stop after iteration t if t > 0, the previous inertia is nonzero and
                        // the change is within epsilon.
                        let last = lastBuf[p]
                        lastBuf[p] = inertia
                        return t > 0 && last != 0 && abs(last - inertia) <= tracesBuf[p].parameters.epsilon
                    }
                }
            }
            active = active.indices.filter { !stops[$0] }.map { active[$0] }
        }
        return traces
    }

    /// Per partition p: sum over rows m of n_m min_j ||v_m - c_j||^2 (no prune bias) for the
    /// centroids c[p] (k x d): the hard k-means inertia. Blocked like `iterate`, so the result
    /// does not depend on the thread count. d = 1: each row's neighbours by a search started from the
    /// previous row's position (the same position as a binary search: `SoftKMeansKernel.lowerBound`),
    /// O(1) per row for rows in key order, O(log k) otherwise; O(rows k d) for d > 1.
    func inertia(_ rows: [any RowBlocks], centroids: [[Double]]) -> [Double] {
        let k = config.k, d = config.clusterDim
        let sorted = d == 1 ? centroids.map { $0.sorted() } : centroids
        let items = blocks(rows, partitions: Array(0..<rows.count))
        var partials = [Double](repeating: 0, count: items.count)
        partials.withUnsafeMutableBufferPointer { partialsBuf in
            let out = partialsBuf.baseAddress!
            pool.parallelFor(items.count) { i in
                let item = items[i]
                withUnsafeTemporaryAllocation(of: Double.self, capacity: item.count * d) { scratch in
                    let v = rows[item.partition].values(start: item.start, count: item.count, scratch: scratch.baseAddress!)
                    let n = rows[item.partition].counts(start: item.start, count: item.count)
                    out[i] = sorted[item.partition].withUnsafeBufferPointer { c in
                        var sum = 0.0
                        var position = 0
                        for r in 0..<item.count {
                            let best: Double
                            if d == 1 {
                                position = SoftKMeansKernel.lowerBound(c.baseAddress!, count: k, v[r], from: position)
                                best = DKMEngine.nearestSquaredDistance(v[r], sorted: c, lowerBound: position)
                            } else {
                                best = DKMEngine.nearestSquaredDistance(v + r * d, c, k: k, d: d)
                            }
                            sum += (n?[r] ?? 1) * best
                        }
                        return sum
                    }
                }
            }
        }
        var result = [Double](repeating: 0, count: rows.count)
        for (i, item) in items.enumerated() { result[item.partition] += partials[i] }
        return result
    }

    /// min_j (x - c_j)^2 for ascending c (binary search for the neighbours of x).
    @inline(__always)
    static func nearestSquaredDistance(_ x: Double, sorted c: UnsafeBufferPointer<Double>) -> Double {
        var lo = 0, hi = c.count  // first index with c >= x
        while lo < hi {
            let mid = (lo + hi) / 2
            if c[mid] < x { lo = mid + 1 } else { hi = mid }
        }
        return nearestSquaredDistance(x, sorted: c, lowerBound: lo)
    }

    /// min_j (x - c_j)^2 for ascending c, given lo = the first index with c >= x (c.count if none).
    @inline(__always)
    static func nearestSquaredDistance(_ x: Double, sorted c: UnsafeBufferPointer<Double>, lowerBound lo: Int) -> Double {
        var best = Double.infinity
        if lo < c.count { best = (c[lo] - x) * (c[lo] - x) }
        if lo > 0 { best = Swift.min(best, (x - c[lo - 1]) * (x - c[lo - 1])) }
        return best
    }

    /// min_j ||x - c_j||^2 over k centroids of dimension d.
    @inline(__always)
    static func nearestSquaredDistance(_ x: UnsafePointer<Double>, _ c: UnsafeBufferPointer<Double>, k: Int, d: Int) -> Double {
        var best = Double.infinity
        for j in 0..<k {
            var dist = 0.0
            for e in 0..<d {
                let diff = x[e] - c[j * d + e]
                dist += diff * diff
            }
            best = Swift.min(best, dist)
        }
        return best
    }

    /// Soft output rows f_m = sum_j A^{T-1}_mj c^T_j; `sink(p, start, count, f)` receives count x d values.
    /// Also sets every trace's `entropySum`. `windowEnds`: the buffer `iterate` recorded into on the
    /// same rows (its last iterations' windows are the ones the output needs), or nil.
    func output(_ rows: [any RowBlocks], traces: inout [PartitionTrace], windowEnds: WindowEndsBuffer? = nil,
                sink: (Int, Int, Int, UnsafePointer<Double>) -> Void)
    {
        let d = config.clusterDim
        let items = blocks(rows, partitions: Array(0..<rows.count))
        var entropy = [Double](repeating: 0, count: items.count)
        let snapshot = traces
        entropy.withUnsafeMutableBufferPointer { eb in
            let entropyOut = eb.baseAddress!
            pool.parallelFor(items.count) { i in
                let item = items[i]
                let trace = snapshot[item.partition]
                let T = trace.iterations
                withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * item.count * d) { scratch in
                    let vbuf = scratch.baseAddress!
                    let f = vbuf + item.count * d
                    let values = rows[item.partition].values(start: item.start, count: item.count, scratch: vbuf)
                    let counts = rows[item.partition].counts(start: item.start, count: item.count)
                    trace.centroids[T - 1].withUnsafeBufferPointer { cPrev in
                        trace.centroids[T].withUnsafeBufferPointer { cLast in
                            entropyOut[i] = kernel(trace, block: item, ends: windowEnds, .replay)
                                .outputBlock(values, counts, item.count, cPrev.baseAddress!, cLast.baseAddress!, f)
                        }
                    }
                    sink(item.partition, item.start, item.count, f)
                }
            }
        }
        for p in traces.indices { traces[p].entropySum = 0 }
        for (i, item) in items.enumerated() { traces[item.partition].entropySum += entropy[i] }
    }

    /// The per-row results of a backward for one partition.
    struct RowGradients {
        /// d = 1: h_m, the derivative of the output with respect to the value with the centroids
        /// held fixed (the element gradient is g_i h_m + r_m). d > 1 (count-1 rows): the row's
        /// whole gradient through the last attention (the element gradient is last_m + r_m).
        let last: DoubleBuffer
        /// r_m per element of the row (count x d): every path through the centroid updates.
        let r: DoubleBuffer
    }

    /// Reverse mode through every iteration (docs/design.md, part 1 (the math), docs/histogram-adjoints.md).
    /// `gradients(p, start, count, scratch)` returns G for those rows (count x d: the upstream
    /// gradient summed over the elements of each row). `savedSoftmax(p, t, start, count)` (optional)
    /// returns the forward's saved s map of those rows at iteration t instead of recomputing it.
    func backward(_ rows: [any RowBlocks], traces: [PartitionTrace],
                  gradients: (Int, Int, Int, UnsafeMutablePointer<Double>) -> UnsafePointer<Double>,
                  savedSoftmax: ((Int, Int, Int, Int) -> UnsafePointer<Float>)? = nil) throws(EDKMError) -> [RowGradients]
    {
        let k = config.k, d = config.clusterDim
        let P = rows.count
        // N x d doubles each on the dense path: fallible; allocated and zeroed in parallel over partitions.
        let made = pool.parallelMap(P) { p in
            Result { () throws(EDKMError) -> RowGradients in
                RowGradients(last: try DoubleBuffer(checkedZeros: rows[p].rowCount * d, for: "the backward's per-row gradients"),
                             r: try DoubleBuffer(checkedZeros: rows[p].rowCount * d, for: "the backward's per-row gradients"))
            }
        }
        var results: [RowGradients] = []
        results.reserveCapacity(P)
        for result in made { results.append(try result.get()) }
        let lastPtrs = results.map { $0.last.pointer }
        let rPtrs = results.map { $0.r.pointer }
        let items = blocks(rows, partitions: Array(0..<P))
        // The windows of c^{T-1}: chosen by pass 1, replayed by the first reverse iteration.
        let ends = savedSoftmax == nil ? windowEnds(rows) : nil
        // Pass 1: the output y = A^{T-1} c^T. Per block: cbar^T partial (k x d) and extra (k x d).
        let stride1 = 2 * k * d
        var partials = [Double](repeating: 0, count: items.count * stride1)
        do {
            partials.withUnsafeMutableBufferPointer { pb in
                let out = pb.baseAddress!
                pool.parallelFor(items.count) { i in
                    let item = items[i]
                    let trace = traces[item.partition]
                    let T = trace.iterations
                    let acc = out + i * stride1
                    withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * item.count * d) { scratch in
                        let vbuf = scratch.baseAddress!
                        let gbuf = vbuf + item.count * d
                        let values = rows[item.partition].values(start: item.start, count: item.count, scratch: vbuf)
                        let G = gradients(item.partition, item.start, item.count, gbuf)
                        let saved = savedSoftmax?(item.partition, T - 1, item.start, item.count)
                        let last = lastPtrs[item.partition] + item.start * d
                        trace.centroids[T - 1].withUnsafeBufferPointer { cPrevB in
                            trace.centroids[T].withUnsafeBufferPointer { cLastB in
                                kernel(trace, block: item, ends: ends, .record)
                                    .backwardLastBlock(values, G, item.count, cPrevB.baseAddress!, cLastB.baseAddress!,
                                                       saved: saved, last, acc)
                            }
                        }
                    }
                }
            }
        }
        // cbar (adjoint of the newest centroids) and the extra term on c^{T-1}, per partition (k x d
        // each, flat): each partition's block partials added in block order, in parallel over partitions.
        let kd = k * d
        var cbar = [Double](repeating: 0, count: P * kd)
        var extra = cbar
        let firstAll = DKMEngine.firstItems(items, partitions: Array(0..<P))
        cbar.withUnsafeMutableBufferPointer { cb in
            extra.withUnsafeMutableBufferPointer { eb in
                let c = cb.baseAddress!, e = eb.baseAddress!
                partials.withUnsafeBufferPointer { pb in
                    pool.parallelFor(P) { p in
                        for i in firstAll[p]..<firstAll[p + 1] {
                            for j in 0..<kd {
                                c[p * kd + j] += pb[i * stride1 + j]
                                e[p * kd + j] += pb[i * stride1 + kd + j]
                            }
                        }
                    }
                }
            }
        }
        // Iterations t = T-1 ... 0, all partitions in step (each with its own T).
        let maxT = traces.map(\.iterations).max() ?? 0
        let stride2 = kd
        for step in 0..<maxT {
            // Partition p processes t = T_p - 1 - step when that is >= 0.
            let live = (0..<P).filter { traces[$0].iterations - 1 - step >= 0 }
            let liveItems = blocks(rows, partitions: live)
            let firstLive = DKMEngine.firstItems(liveItems, partitions: live)
            var pbar = [Double](repeating: 0, count: P * kd)
            cbar.withUnsafeMutableBufferPointer { cb in
                pbar.withUnsafeMutableBufferPointer { pb in
                    let c = cb.baseAddress!, pbarOut = pb.baseAddress!
                    pool.parallelFor(live.count) { a in
                        let p = live[a]
                        // With enforceZero, c^{t+1}_0 = 0 is a constant: its adjoint goes nowhere.
                        if config.enforceZero { for e in 0..<d { c[p * kd + e] = 0 } }
                        // Pbar_j = cbar_j / S^t_j (0 where S^t_j = 0: there c^{t+1}_j = c^t_j passes cbar through).
                        let S = traces[p].normalizers[traces[p].iterations - 1 - step]
                        for j in 0..<k {
                            for e in 0..<d { pbarOut[p * kd + j * d + e] = S[j] > 0 ? c[p * kd + j * d + e] / S[j] : 0 }
                        }
                    }
                }
            }
            var partials2 = [Double](repeating: 0, count: liveItems.count * stride2)
            partials2.withUnsafeMutableBufferPointer { pb in
                let out = pb.baseAddress!
                pbar.withUnsafeBufferPointer { pbarB in
                    let pbarAll = pbarB.baseAddress!
                    pool.parallelFor(liveItems.count) { i in
                        let item = liveItems[i]
                        let trace = traces[item.partition]
                        let t = trace.iterations - 1 - step
                        let acc = out + i * stride2
                        let r = rPtrs[item.partition] + item.start * d
                        withUnsafeTemporaryAllocation(of: Double.self, capacity: item.count * d) { scratch in
                            let values = rows[item.partition].values(start: item.start, count: item.count, scratch: scratch.baseAddress!)
                            let counts = rows[item.partition].counts(start: item.start, count: item.count)
                            let saved = savedSoftmax?(item.partition, t, item.start, item.count)
                            trace.centroids[t].withUnsafeBufferPointer { ctB in
                                // the update P/S itself (before any LUT quantization: straight-through)
                                (trace.rawCentroids.isEmpty ? trace.centroids : trace.rawCentroids)[t + 1].withUnsafeBufferPointer { cnB in
                                    kernel(trace, block: item, ends: step == 0 ? ends : nil, .replay)
                                        .backwardIterationBlock(values, counts, item.count, ctB.baseAddress!, cnB.baseAddress!,
                                                                         pbarAll + item.partition * kd, saved: saved, r, acc,
                                                                         accumulate: t > 0)
                                }
                            }
                        }
                    }
                }
            }
            // The next cbar per live partition: its block partials in block order, plus the
            // pass-through of empty clusters and (first step) the extra term; in parallel over
            // partitions, each item writing its partition's slice of a new array (a partition at
            // t = 0 keeps its cbar). Written in place, not through a temporary copied back at the end
            // of a closure: see "Compiler hazards" in Tests/reliability/README.md.
            var nextCbar = cbar
            nextCbar.withUnsafeMutableBufferPointer { nb in
                cbar.withUnsafeBufferPointer { cb in
                    extra.withUnsafeBufferPointer { eb in
                        partials2.withUnsafeBufferPointer { pb in
                            let nextAll = nb.baseAddress!, c = cb.baseAddress!, e = eb.baseAddress!
                            pool.parallelFor(live.count) { a in
                                let p = live[a]
                                let t = traces[p].iterations - 1 - step
                                if t == 0 { return }
                                let next = nextAll + p * kd
                                for j in 0..<kd { next[j] = 0 }
                                for i in firstLive[a]..<firstLive[a + 1] {
                                    for j in 0..<kd { next[j] += pb[i * stride2 + j] }
                                }
                                let S = traces[p].normalizers[t]
                                for j in 0..<k where !(S[j] > 0) {
                                    for x in 0..<d { next[j * d + x] += c[p * kd + j * d + x] }
                                }
                                if t == traces[p].iterations - 1 {
                                    for j in 0..<kd { next[j] += e[p * kd + j] }
                                }
                            }
                        }
                    }
                }
            }
            cbar = nextCbar
        }
        return results
    }
}
