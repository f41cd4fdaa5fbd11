import EDKMSupport

extension CentroidInitialization {
    /// Exact minimum-SSE k-means of weighted scalars: the k centroids minimising
    /// sum_m n_m min_j (u_m - c_j)^2.
    ///
    /// Dynamic programming over the values sorted ascending: with prefix sums of n, n u and n u^2
    /// the cost of one cluster over a run of values is O(1), and the optimal split points are
    /// monotone (the cost satisfies the quadrangle inequality), so each of the k layers is solved
    /// by divide and conquer in O(U log U): O(k U log U) overall.
    /// With fewer distinct values than k, each value is a centroid and the rest split the widest
    /// gaps (or repeat the value when there is only one).
    ///
    /// The same computation as `optimal1DReference` (same operations in the same order, the same
    /// first-minimum rule, so the same centroids bit for bit), on flat buffers without closures
    /// over arrays: the reference paid a dynamic exclusivity check and a bounds check on every
    /// access of its recursive solver. With `pool`, the nodes of each divide-and-conquer level
    /// (independent ranges of split points) run in parallel; every node's result is the same
    /// whichever thread runs it. Pass a pool only when the caller is not itself inside one of its
    /// regions (a nested region runs serially).
    /// - Returns: k centroids, ascending.
    public static func optimal1D(values: [Double], counts: [Double], k: Int, pool: ThreadPool? = nil) -> [Double] {
        precondition(values.count == counts.count && !values.isEmpty && k >= 1)
        let (u, n) = sortedDistinct(values: values, counts: counts)
        let U = u.count
        if U <= k { return fillGaps(u, k: k) }
        // Centre the values for the prefix sums to limit cancellation.
        let mean = zip(u, n).reduce(0) { $0 + $1.0 * $1.1 } / n.reduce(0, +)
        let sums = UnsafeMutablePointer<Double>.allocate(capacity: 3 * (U + 1))
        defer { sums.deallocate() }
        let s0 = sums, s1 = sums + (U + 1), s2 = sums + 2 * (U + 1)
        s0[0] = 0; s1[0] = 0; s2[0] = 0
        for i in 0..<U {
            let x = u[i] - mean
            s0[i + 1] = s0[i] + n[i]
            s1[i + 1] = s1[i] + n[i] * x
            s2[i + 1] = s2[i] + n[i] * x * x
        }
        let costs = PrefixCosts(s0: s0, s1: s1, s2: s2)
        // prev[j] = best cost of clustering the first j values into (layer) clusters.
        let rows = UnsafeMutablePointer<Double>.allocate(capacity: 2 * (U + 1))
        defer { rows.deallocate() }
        var prev = rows, cur = rows + (U + 1)
        for j in 0...U { prev[j] = costs.cost(0, j) }
        // split[layer * (U + 1) + j]: the first index of the last cluster (row 0 unused).
        let split = UnsafeMutablePointer<Int32>.allocate(capacity: k * (U + 1))
        defer { split.deallocate() }
        for layer in 1..<k {
            for j in 0..<layer { cur[j] = .infinity }
            let solver = SplitLayerSolver(costs: costs, prev: prev, cur: cur, split: split + layer * (U + 1))
            if let pool, pool.threadCount > 1, U >= parallelSplitThreshold {
                solver.solveByLevels(layer, U, pool: pool)
            } else {
                solver.solve(layer, U, layer, U)
            }
            swap(&prev, &cur)
        }
        // Backtrack the boundaries.
        var centroids = [Double](repeating: 0, count: k)
        var j = U
        for layer in stride(from: k - 1, through: 0, by: -1) {
            let i = layer == 0 ? 0 : Int(split[layer * (U + 1) + j])
            let w = s0[j] - s0[i]
            centroids[layer] = w > 0 ? mean + (s1[j] - s1[i]) / w : u[Swift.min(i, U - 1)]
            j = i
        }
        return centroids
    }

    /// Distinct values below which `optimal1D` solves a layer on one thread even with a pool.
    static let parallelSplitThreshold = 4096

    /// The values sorted ascending with equal values merged (+0 and -0, or rounding to the same
    /// double), their counts added in sorted order: the reference's sort and merge.
    static func sortedDistinct(values: [Double], counts: [Double]) -> (values: [Double], counts: [Double]) {
        let order = values.withUnsafeBufferPointer { v in values.indices.sorted { v[$0] < v[$1] } }
        var u: [Double] = [], n: [Double] = []
        u.reserveCapacity(values.count)
        n.reserveCapacity(values.count)
        for i in order {
            if let last = u.last, last == values[i] { n[n.count - 1] += counts[i] } else {
                u.append(values[i])
                n.append(counts[i])
            }
        }
        return (u, n)
    }
}

/// The one-cluster cost of a run of sorted values from prefix sums of n, n x and n x^2 (x the
/// centred values): cost(i, j) = S2 - S1^2 / S0 over the values i..<j, clamped at 0.
struct PrefixCosts {
    let s0: UnsafePointer<Double>
    let s1: UnsafePointer<Double>
    let s2: UnsafePointer<Double>

    init(s0: UnsafeMutablePointer<Double>, s1: UnsafeMutablePointer<Double>, s2: UnsafeMutablePointer<Double>) {
        self.s0 = UnsafePointer(s0)
        self.s1 = UnsafePointer(s1)
        self.s2 = UnsafePointer(s2)
    }

    @inline(__always) func cost(_ i: Int, _ j: Int) -> Double {
        let w = s0[j] - s0[i]
        if w <= 0 { return 0 }
        let m = s1[j] - s1[i]
        return Swift.max(0, (s2[j] - s2[i]) - m * m / w)
    }
}

/// One layer of the k-means dynamic programme: cur[j] = min over i in [layer, j] of
/// prev[i] + cost(i, j), and the first minimising i in split[j], by divide and conquer over j
/// with the minimiser's monotone range.
struct SplitLayerSolver {
    let costs: PrefixCosts
    let prev: UnsafeMutablePointer<Double>
    let cur: UnsafeMutablePointer<Double>
    let split: UnsafeMutablePointer<Int32>

    /// One node: the first minimiser for j = mid over i in optLo...min(mid, optHi) (the AVX2
    /// kernel for ranges of 8 or more, with the same result).
    @inline(__always) func node(_ mid: Int, _ optLo: Int, _ optHi: Int) -> Int {
        var best = Double.infinity
        var bestI = optLo
        let upper = Swift.min(mid, optHi)
        if upper - optLo >= 7,
           case let i = edkm_kernel_split_argmin(prev, costs.s0, costs.s1, costs.s2, optLo, upper, mid, &best), i >= 0 {
            bestI = i
        } else if optLo <= upper {
            for i in optLo...upper {
                let v = prev[i] + costs.cost(i, mid)
                if v < best { best = v; bestI = i }
            }
        }
        cur[mid] = best
        split[mid] = Int32(bestI)
        return bestI
    }

    /// The reference's recursion: mid of [lo, hi], then the left half with minimisers up to
    /// mid's, the right half with minimisers from mid's.
    func solve(_ lo: Int, _ hi: Int, _ optLo: Int, _ optHi: Int) {
        if lo > hi { return }
        if edkm_kernel_split_solve(prev, costs.s0, costs.s1, costs.s2, cur, split, lo, hi, optLo, optHi) != 0 { return }
        solvePortable(lo, hi, optLo, optHi)
    }

    private func solvePortable(_ lo: Int, _ hi: Int, _ optLo: Int, _ optHi: Int) {
        if lo > hi { return }
        let mid = (lo + hi) / 2
        let bestI = node(mid, optLo, optHi)
        solvePortable(lo, mid - 1, optLo, bestI)
        solvePortable(mid + 1, hi, bestI, optHi)
    }

    /// The same nodes, level by level: the nodes of one level have disjoint j ranges and depend
    /// only on their parents, so each level is one parallel region, until a level has
    /// `parallelSubtrees` nodes; then their subtrees are solved in one parallel region.
    func solveByLevels(_ lo: Int, _ hi: Int, pool: ThreadPool) {
        var level = [NodeRange(lo: lo, hi: hi, optLo: lo, optHi: hi)]
        while !level.isEmpty {
            if level.count >= Self.parallelSubtrees {
                level.withUnsafeBufferPointer { nodes in
                    pool.parallelFor(nodes.count) { t in solve(nodes[t].lo, nodes[t].hi, nodes[t].optLo, nodes[t].optHi) }
                }
                return
            }
            var next = [NodeRange](repeating: NodeRange(lo: 1, hi: 0, optLo: 0, optHi: 0), count: 2 * level.count)
            level.withUnsafeBufferPointer { nodes in
                next.withUnsafeMutableBufferPointer { children in
                    let c = children.baseAddress!
                    pool.parallelFor(nodes.count) { t in
                        let r = nodes[t]
                        let mid = (r.lo + r.hi) / 2
                        let bestI = node(mid, r.optLo, r.optHi)
                        c[2 * t] = NodeRange(lo: r.lo, hi: mid - 1, optLo: r.optLo, optHi: bestI)
                        c[2 * t + 1] = NodeRange(lo: mid + 1, hi: r.hi, optLo: bestI, optHi: r.optHi)
                    }
                }
            }
            level = next.filter { $0.lo <= $0.hi }
        }
    }

    /// Nodes of one level from which `solveByLevels` hands out whole subtrees.
    static let parallelSubtrees = 64

    struct NodeRange {
        var lo: Int, hi: Int, optLo: Int, optHi: Int
    }
}

/// Which implementation of the exact 1-D initialisation a layer runs (benchmarks; not
/// thread-safe: set it while no layer is initialising).
public enum Optimal1DSelection {
    /// true: layers initialise with `CentroidInitialization.optimal1DReference` (the same
    /// centroids, the first implementation's speed): the bench's "before". Default false.
    nonisolated(unsafe) public static var reference = false
}
