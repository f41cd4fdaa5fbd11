import EDKMNumerics

/// Initial centroids: exact 1-D k-means for scalars, k-means++ and Lloyd for vectors.
public enum CentroidInitialization {
    /// k centroids from fewer than k distinct sorted values: the values, then midpoints of the
    /// widest gaps.
    static func fillGaps(_ sorted: [Double], k: Int) -> [Double] {
        var c = sorted
        while c.count < k {
            var widest = -1
            var gap = 0.0
            for i in 0..<(c.count - 1) where c[i + 1] - c[i] > gap {
                gap = c[i + 1] - c[i]
                widest = i
            }
            if widest < 0 { c.append(c[c.count - 1]) } else { c.insert((c[widest] + c[widest + 1]) / 2, at: widest + 1) }
        }
        return c
    }

    /// Total weighted squared error of scalar values against centroids (nearest centroid).
    public static func sse(values: [Double], counts: [Double], centroids: [Double]) -> Double {
        var total = 0.0
        for (x, n) in zip(values, counts) {
            var best = Double.infinity
            for c in centroids { best = Swift.min(best, (x - c) * (x - c)) }
            total += n * best
        }
        return total
    }

    /// Seeded k-means++ on n vectors of dimension d (row-major), followed by `lloydIterations`
    /// Lloyd steps. Returns k x d centroids. Deterministic for a given seed.
    public static func kMeansPlusPlus(vectors: UnsafePointer<Double>, count n: Int, d: Int, k: Int,
                                      seed: UInt64, lloydIterations: Int = 10) -> [Double] {
        precondition(n >= 1 && k >= 1)
        var rng = SplitMix64(seed: seed)
        var centroids = [Double](repeating: 0, count: k * d)
        var nearest = [Double](repeating: .infinity, count: n)
        func dist2(_ i: Int, _ c: Int) -> Double {
            var acc = 0.0
            for e in 0..<d {
                let diff = vectors[i * d + e] - centroids[c * d + e]
                acc += diff * diff
            }
            return acc
        }
        var chosen = Int(rng.next() % UInt64(n))
        for c in 0..<k {
            for e in 0..<d { centroids[c * d + e] = vectors[chosen * d + e] }
            var total = 0.0
            for i in 0..<n {
                nearest[i] = Swift.min(nearest[i], dist2(i, c))
                total += nearest[i]
            }
            if c == k - 1 { break }
            if total <= 0 {
                chosen = Int(rng.next() % UInt64(n))
                continue
            }
            var target = rng.nextUnit() * total
            chosen = n - 1
            for i in 0..<n {
                target -= nearest[i]
                if target <= 0 { chosen = i; break }
            }
        }
        // Lloyd iterations; an empty cluster keeps its centroid.
        var sums = [Double](repeating: 0, count: k * d)
        var sizes = [Double](repeating: 0, count: k)
        for _ in 0..<lloydIterations {
            for i in 0..<(k * d) { sums[i] = 0 }
            for j in 0..<k { sizes[j] = 0 }
            for i in 0..<n {
                var best = 0
                var bestD = Double.infinity
                for c in 0..<k {
                    let dd = dist2(i, c)
                    if dd < bestD { bestD = dd; best = c }
                }
                sizes[best] += 1
                for e in 0..<d { sums[best * d + e] += vectors[i * d + e] }
            }
            for c in 0..<k where sizes[c] > 0 {
                for e in 0..<d { centroids[c * d + e] = sums[c * d + e] / sizes[c] }
            }
        }
        return centroids
    }

    /// coremltools' enforce_zero placement: the centroid nearest the origin (smallest ||c_j||^2,
    /// the first on ties) takes the value of centroid 0, and centroid 0 becomes the zero vector.
    public static func placeZeroFirst(_ c: inout [Float], k: Int, d: Int) {
        var nearest = 0
        var best = Double.infinity
        for j in 0..<k {
            var norm = 0.0
            for e in 0..<d { norm += Double(c[j * d + e]) * Double(c[j * d + e]) }
            if norm < best { best = norm; nearest = j }
        }
        for e in 0..<d {
            c[nearest * d + e] = c[e]
            c[e] = 0
        }
    }

    /// coremltools' re-spread of collapsed centroids (scalar or vector): with the distinct
    /// centroids sorted (lexicographically), for every distinct centroid that occurs more than
    /// once, its first occurrence moves to the midpoint between it and the next distinct centroid
    /// (cyclically). A no-op when all k centroids are distinct.
    public static func respreadDuplicates(_ c: inout [Float], k: Int, d: Int) {
        // Scalars, all finite and distinct (the usual case): nothing to do, found without the
        // per-centroid arrays below. Equal values (-0 and +0 among them) sit side by side once sorted.
        if d == 1 && c.count == k && c.allSatisfy({ $0.isFinite }) {
            let sorted = c.sorted()
            if !zip(sorted, sorted.dropFirst()).contains(where: { $0 == $1 }) { return }
        }
        var distinct: [[Float]] = []
        var firstIndex: [Int] = []
        var multiplicity: [Int] = []
        for j in 0..<k {
            let v = Array(c[(j * d)..<((j + 1) * d)])
            if let at = distinct.firstIndex(of: v) { multiplicity[at] += 1 } else {
                distinct.append(v)
                firstIndex.append(j)
                multiplicity.append(1)
            }
        }
        if distinct.count == k { return }
        let order = distinct.indices.sorted { a, b in distinct[a].lexicographicallyPrecedes(distinct[b]) }
        let U = order.count
        for (rank, idx) in order.enumerated() where multiplicity[idx] > 1 {
            let next = distinct[order[(rank + 1) % U]]
            let j = firstIndex[idx]
            for e in 0..<d { c[j * d + e] = 0.5 * (distinct[idx][e] + next[e]) }
        }
    }
}
