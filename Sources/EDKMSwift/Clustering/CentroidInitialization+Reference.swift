extension CentroidInitialization {
    /// The first implementation of `optimal1D` (closures over Swift arrays), kept as the reference that
    /// the fast one is tested against bit for bit and as the bench's "before". Exact minimum-SSE
    /// k-means of weighted scalars: the k centroids minimising
    /// sum_m n_m min_j (u_m - c_j)^2.
    ///
    /// Dynamic programming over the values sorted ascending: with prefix sums of n, n u and n u^2
    /// the cost of one cluster over a run of values is O(1), and the optimal split points are
    /// monotone (the cost satisfies the quadrangle inequality), so each of the k layers is solved
    /// by divide and conquer in O(U log U): O(k U log U) overall.
    /// With fewer distinct values than k, each value is a centroid and the rest split the widest
    /// gaps (or repeat the value when there is only one).
    /// - Returns: k centroids, ascending.
    public static func optimal1DReference(values: [Double], counts: [Double], k: Int) -> [Double] {
        precondition(values.count == counts.count && !values.isEmpty && k >= 1)
        // Sort by value and merge equal values (+0 and -0, or rounding to the same double).
        let order = values.indices.sorted { values[$0] < values[$1] }
        var u: [Double] = []
        var n: [Double] = []
        for i in order {
            if let last = u.last, last == values[i] { n[n.count - 1] += counts[i] } else {
                u.append(values[i])
                n.append(counts[i])
            }
        }
        let U = u.count
        if U <= k { return fillGaps(u, k: k) }
        var s0 = [Double](repeating: 0, count: U + 1)
        var s1 = s0, s2 = s0
        // Centre the values for the prefix sums to limit cancellation.
        let mean = zip(u, n).reduce(0) { $0 + $1.0 * $1.1 } / n.reduce(0, +)
        for i in 0..<U {
            let x = u[i] - mean
            s0[i + 1] = s0[i] + n[i]
            s1[i + 1] = s1[i] + n[i] * x
            s2[i + 1] = s2[i] + n[i] * x * x
        }
        // cost(i, j): SSE of the values i..<j as one cluster.
        func cost(_ i: Int, _ j: Int) -> Double {
            let w = s0[j] - s0[i]
            if w <= 0 { return 0 }
            let m = s1[j] - s1[i]
            return Swift.max(0, (s2[j] - s2[i]) - m * m / w)
        }
        // prev[j] = best cost of clustering the first j values into (layer) clusters.
        var prev = (0...U).map { cost(0, $0) }
        var split = [[Int32]](repeating: [Int32](repeating: 0, count: U + 1), count: k)
        var cur = [Double](repeating: .infinity, count: U + 1)
        for layer in 1..<k {
            // cur[j] = min_{i in [layer, j]} prev[i] + cost(i, j), for j in layer...U
            func solve(_ lo: Int, _ hi: Int, _ optLo: Int, _ optHi: Int) {
                if lo > hi { return }
                let mid = (lo + hi) / 2
                var best = Double.infinity
                var bestI = optLo
                let upper = Swift.min(mid, optHi)
                if optLo <= upper {
                    for i in optLo...upper {
                        let v = prev[i] + cost(i, mid)
                        if v < best { best = v; bestI = i }
                    }
                }
                cur[mid] = best
                split[layer][mid] = Int32(bestI)
                solve(lo, mid - 1, optLo, bestI)
                solve(mid + 1, hi, bestI, optHi)
            }
            for j in 0..<layer { cur[j] = .infinity }
            solve(layer, U, layer, U)
            swap(&prev, &cur)
        }
        // Backtrack the boundaries.
        var centroids = [Double](repeating: 0, count: k)
        var j = U
        for layer in stride(from: k - 1, through: 0, by: -1) {
            let i = layer == 0 ? 0 : Int(split[layer][j])
            let w = s0[j] - s0[i]
            centroids[layer] = w > 0 ? mean + (s1[j] - s1[i]) / w : u[Swift.min(i, U - 1)]
            j = i
        }
        return centroids
    }
}
