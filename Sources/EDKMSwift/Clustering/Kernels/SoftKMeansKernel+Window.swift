import EDKMSupport
import Glibc

/// d = 1, four rows at a time, on the window of centroids that can matter (docs/windowed-dkm.md).
///
/// Two facts make the U k T work U w T for a window of w centroids, with the same results to rounding:
///
/// 1. The clamped attention is A_j = max(s_j, z) = z + max(s_j - z, 0). Every per-centroid sum over
///    rows is therefore z times the rows' total (of n, n u, g, or, per row, of the k centroid terms)
///    plus the excess terms max(s_j - z, 0), nonzero only where s_j > z. The clamp's mask
///    M_j = [s_j >= z] passes no gradient where s_j < z, and there the softmax's own Jacobian term
///    (1/tau) s_j (sum_l s_l M_l X_l) carries the factor s_j.
/// 2. With x_j = (min D - D_j) / tau <= 0, a softmax term e^{x_j} < e^{-cut} (cut = `windowCut`,
///    e^{-50} ~ 2e-22) cannot change the float64 normaliser sum_l e^{x_l} >= 1 (ulp 2.2e-16), and every
///    output or gradient term it carries is that many times smaller than the terms of the argmin.
///
/// So only centroids with D_j <= min D + cut tau take part. In one dimension D_j = (u - c_j)^2 for
/// j > 0, so those centroids are the ones in [u - R, u + R], R = sqrt(min D + cut tau): a contiguous
/// run of the centroids in ascending order. Centroid 0 carries the prune bias (D_0 = (u - c_0)^2 - p)
/// and is always added to the window. Under keep-sparsity a nonzero row's D_0 is the constant
/// `zeroDistance` instead: its min D is then min(zeroDistance, min over the other centroids), and
/// centroid 0 is still always in the window, with each lane's own D_0. Lanes are 4 consecutive rows (the distinct values run in key
/// order, so neighbours are close) and share the union of their windows. A window that covers every
/// centroid is still exact: large tau costs the full work, never accuracy.
///
/// Against the full passes (`SoftKMeansKernel+Scalar4`), the sums differ only in summation order,
/// in the z-decomposition and in dropped terms below e^{-cut} relative: rounding (tests state 1e-12
/// relative on the centroids, 1e-10 on gradients).
///
/// On a CPU with AVX2 each pass hands its rows to the C build of the same pass
/// (`SoftKMeansKernel+WindowAVX2`, `Sources/EDKMSupport/window_kernels.c`), bit-identical to this code.
extension SoftKMeansKernel {
    /// Softmax terms with x_j < -windowCut are dropped.
    static let windowCut = 50.0

    /// The centroids in ascending order with their indices, for one block.
    struct CentroidOrder {
        /// sorted[q] = c[index[q]], ascending.
        let sorted: UnsafeMutablePointer<Double>
        let index: UnsafeMutablePointer<Int>
        /// Where centroid 0 sits in `sorted`.
        let position0: Int
    }

    /// Runs body with the ascending order of c (k values) and a window buffer of k + 1 indices.
    @inline(__always)
    func withCentroidOrder<R>(_ c: UnsafePointer<Double>, _ body: (CentroidOrder, UnsafeMutablePointer<Int>) -> R) -> R {
        withUnsafeTemporaryAllocation(of: Int.self, capacity: 2 * k + 1) { ib in
            withUnsafeTemporaryAllocation(of: Double.self, capacity: k) { sb in
                let index = ib.baseAddress!, sorted = sb.baseAddress!
                // Insertion sort by (value, index): k <= 256 and once per block.
                for j in 0..<k {
                    var q = j
                    while q > 0 && (c[index[q - 1]] > c[j] || (c[index[q - 1]] == c[j] && index[q - 1] > j)) {
                        index[q] = index[q - 1]
                        q -= 1
                    }
                    index[q] = j
                }
                var position0 = 0
                for q in 0..<k {
                    sorted[q] = c[index[q]]
                    if index[q] == 0 { position0 = q }
                }
                return body(CentroidOrder(sorted: sorted, index: index, position0: position0), index + k)
            }
        }
    }

    /// First position q with sorted[q] >= x (k if none), for ascending `sorted` without NaN, searched
    /// from `hint` (the previous nearby x's position).
    ///
    /// Exactly the position a binary search over all k gives: along q the predicate sorted[q] < x is
    /// true, then false (also for x = +-inf; false throughout for a NaN x), so its first false
    /// position is one number, whatever visits it. The search gallops away from the hint (steps 1, 2,
    /// 4, ...) and bisects the last step: O(1 + log d) comparisons for an answer d positions from the
    /// hint, two when the answer is the hint.
    @inline(__always)
    func lowerBound(_ sorted: UnsafePointer<Double>, _ x: Double, from hint: Int) -> Int {
        SoftKMeansKernel.lowerBound(sorted, count: k, x, from: hint)
    }

    /// `lowerBound(_:_:from:)` over `k` ascending values (also `DKMEngine.inertia`'s search).
    @inline(__always)
    static func lowerBound(_ sorted: UnsafePointer<Double>, count k: Int, _ x: Double, from hint: Int) -> Int {
        var lo: Int, hi: Int  // the answer lies in [lo, hi]; hi == k or sorted[hi] >= x
        if hint < k && sorted[hint] < x {
            lo = hint &+ 1
            hi = k
            var step = 1
            while true {
                let probe = lo &+ step &- 1
                if probe >= k { break }
                if sorted[probe] < x { lo = probe &+ 1; step &<<= 1 } else { hi = probe; break }
            }
        } else {
            lo = 0
            hi = hint
            var step = 1
            while true {
                let probe = hi &- step
                if probe < 0 { break }
                if sorted[probe] < x { lo = probe &+ 1; break } else { hi = probe; step &<<= 1 }
            }
        }
        while lo < hi {
            let mid = (lo &+ hi) >> 1
            if sorted[mid] < x { lo = mid &+ 1 } else { hi = mid }
        }
        return lo
    }

    /// min (x - sorted[q])^2 over the positions q != `excluded` (k >= 2), x's lower bound `lo` given:
    /// the nearest lie next to it, one further out on the side where the excluded position is.
    @inline(__always)
    func nearestSquaredDistance(_ x: Double, _ order: CentroidOrder, excluding excluded: Int, lowerBound lo: Int) -> Double {
        var best = Double.infinity
        for q in Swift.max(0, lo - 2)..<Swift.min(k, lo + 2) where q != excluded {
            let diff = x - order.sorted[q]
            best = Swift.min(best, diff * diff)
        }
        return best
    }

    /// min_q (x - sorted[q])^2, x's lower bound `lo` given: the nearest is at lo or lo - 1 (the same
    /// arithmetic as `DKMEngine.nearestSquaredDistance(_:sorted:)`).
    @inline(__always)
    func nearestSquaredDistance(_ x: Double, _ sorted: UnsafePointer<Double>, lowerBound lo: Int) -> Double {
        var best = Double.infinity
        if lo < k { best = (sorted[lo] - x) * (sorted[lo] - x) }
        if lo > 0 { best = Swift.min(best, (x - sorted[lo - 1]) * (x - sorted[lo - 1])) }
        return best
    }

    /// Where the previous group of four rows' searches ended: its last row's lower bound, the lower
    /// bounds of its window's two ends, and the window positions lo..<hi that `window` holds (lo = -1:
    /// none). Starting each search there makes the window choice O(1) amortised per group when the
    /// rows run in key order, and changes no window (`lowerBound(_:_:from:)` returns the same
    /// position from any hint).
    struct WindowCursor {
        var row = 0, left = 0, right = 0
        var lo = -1, hi = -1, count = 0
    }

    /// Writes into `window` the indices of the centroids that can matter for any of the four rows u
    /// (ascending positions, then centroid 0 if it lies outside them); returns how many. When the
    /// positions are the previous group's, `window` already holds them (the passes only read it)
    /// and is not rewritten.
    @inline(__always)
    func window4(_ u: V4, _ order: CentroidOrder, _ c0: Double, _ window: UnsafeMutablePointer<Int>,
                 _ cursor: inout WindowCursor) -> Int {
        var left = Double.infinity, right = -Double.infinity
        let reach = SoftKMeansKernel.windowCut * tau
        var position = cursor.row
        for l in 0..<4 {
            let x = u[l]
            position = lowerBound(order.sorted, x, from: position)
            let minD: Double
            if keepSparsity && x != 0 {  // D_0 is the constant zeroDistance, not (x - c_0)^2
                minD = Swift.min(nearestSquaredDistance(x, order, excluding: order.position0, lowerBound: position), zeroDistance)
            } else {
                let near = nearestSquaredDistance(x, order.sorted, lowerBound: position)
                minD = Swift.min(near, (x - c0) * (x - c0) - pruneThreshold)
            }
            // The margin (relative 2^-30) covers the rounding of the square and the root, so the
            // argmin is always inside.
            let radius = (minD + reach).squareRoot() * (1 + 0x1p-30)
            if radius.isNaN { continue }  // min D + reach < 0: only centroid 0 (pruned) can matter
            left = Swift.min(left, x - radius)
            right = Swift.max(right, x + radius)
        }
        cursor.row = position
        guard left <= right else {
            window[0] = 0
            cursor.lo = -1
            return 1
        }
        let lo = lowerBound(order.sorted, left, from: cursor.left)
        var hi = lowerBound(order.sorted, right, from: cursor.right)
        cursor.left = lo
        cursor.right = hi
        while hi < k && order.sorted[hi] <= right { hi += 1 }  // equal values at the right edge
        return windowRun(lo, hi, order, window, &cursor)
    }

    /// Writes into `window` the centroids at the sorted positions lo ..< hi, then centroid 0 if it
    /// lies outside them; returns how many. When the positions are the cursor's (the previous
    /// group's), `window` already holds them and is not rewritten.
    @inline(__always)
    func windowRun(_ lo: Int, _ hi: Int, _ order: CentroidOrder, _ window: UnsafeMutablePointer<Int>,
                _ cursor: inout WindowCursor) -> Int {
        if lo == cursor.lo && hi == cursor.hi { return cursor.count }
        var count = 0
        for q in lo..<Swift.max(lo, hi) {
            window[count] = order.index[q]
            count += 1
        }
        if order.position0 < lo || order.position0 >= hi {
            window[count] = 0
            count += 1
        }
        cursor.lo = lo
        cursor.hi = hi
        cursor.count = count
        return count
    }

    /// The windows `window4` chooses for the groups of four rows of `values` (the leading count & ~3),
    /// in order, with the centroids c: each group's centroid indices (tests). With `windowEnds`,
    /// recorded or replayed as the passes do.
    func chooseWindows(_ values: UnsafePointer<Double>, _ count: Int, _ c: UnsafePointer<Double>) -> [[Int]] {
        withCentroidOrder(c) { order, window in
            var cursor = WindowCursor()
            return stride(from: 0, to: count & ~3, by: 4).map { m in
                let w = window4(load4(values + m), order, c[0], window, &cursor, group: m / 4)
                return Array(UnsafeBufferPointer(start: window, count: w))
            }
        }
    }

    /// softmax4 on a window: s[q] for centroid window[q], the normaliser over the window only, e^x
    /// by `VectorMath.windowExp` with `expTable` (`edkm_window_exp_table()`). Returns min_j D_j (the
    /// argmin is in the window). With `entropy`, the rows' entropy.
    @inline(__always)
    func windowSoftmax4(_ u: V4, _ c: UnsafePointer<Double>, _ window: UnsafePointer<Int>, _ w: Int,
                        _ s: UnsafeMutablePointer<V4>, _ expTable: UnsafePointer<Double>,
                        entropy: UnsafeMutablePointer<V4>? = nil) -> V4 {
        softmax4(u, c, count: w, centroid: { window[$0] }, exp: { VectorMath.windowExp($0, table: expTable) }, s, entropy: entropy)
    }

    /// max(s - z, 0): the attention above its clamp.
    @inline(__always)
    func excess4(_ s: V4) -> V4 {
        let e = s - zeroThreshold
        return e.replacing(with: 0, where: e .< V4(repeating: 0))
    }

    /// iterateScalar4 on windows: acc[j] += z sum n + sum n (A_j - z), acc[k + j] likewise with n u.
    func iterateWindowed(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                         _ c: UnsafePointer<Double>, _ acc: UnsafeMutablePointer<Double>) -> (Int, Double) {
        if let done = avx2Iterate(values, counts, count, c, acc) { return done }
        let rows = count & ~3
        if rows == 0 { return (0, 0) }
        var inertia = V4(repeating: 0)
        var totalN = V4(repeating: 0), totalNU = V4(repeating: 0)
        withCentroidOrder(c) { order, window in
            withUnsafeTemporaryAllocation(of: V4.self, capacity: 3 * k + 1) { buf in
                let sumS = buf.baseAddress!, sumP = sumS + k, s = sumP + k
                for j in 0..<(2 * k) { sumS[j] = V4(repeating: 0) }
                var m = 0
                var cursor = WindowCursor()
                let expTable = edkm_window_exp_table()!
                while m < rows {
                    let u = load4(values + m)
                    let n = counts.map { load4($0 + m) } ?? V4(repeating: 1)
                    let w = window4(u, order, c[0], window, &cursor, group: m / 4)
                    inertia += n * windowSoftmax4(u, c, window, w, s, expTable)
                    totalN += n
                    totalNU += n * u
                    for q in 0..<w {
                        let j = window[q]
                        let a = n * excess4(s[q])
                        sumS[j] += a
                        sumP[j] += a * u
                    }
                    m += 4
                }
                let zN = zeroThreshold * totalN.sum(), zNU = zeroThreshold * totalNU.sum()
                for j in 0..<k {
                    acc[j] += sumS[j].sum() + zN
                    acc[k + j] += sumP[j].sum() + zNU
                }
            }
        }
        return (rows, inertia.sum())
    }

    /// outputScalar4 on windows: f = z sum_j cLast_j + sum_window (A_j - z) cLast_j.
    func outputWindowed(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                        _ cPrev: UnsafePointer<Double>, _ cLast: UnsafePointer<Double>,
                        _ f: UnsafeMutablePointer<Double>) -> (Int, Double) {
        if let done = avx2Output(values, counts, count, cPrev, cLast, f) { return done }
        let rows = count & ~3
        if rows == 0 { return (0, 0) }
        var entropy = V4(repeating: 0)
        var cSum = 0.0
        for j in 0..<k { cSum += cLast[j] }
        let zc = zeroThreshold * cSum
        withCentroidOrder(cPrev) { order, window in
            withUnsafeTemporaryAllocation(of: V4.self, capacity: k + 1) { buf in
                let s = buf.baseAddress!
                var h = V4(repeating: 0)
                var m = 0
                var cursor = WindowCursor()
                let expTable = edkm_window_exp_table()!
                while m < rows {
                    let u = load4(values + m)
                    let w = window4(u, order, cPrev[0], window, &cursor, group: m / 4)
                    _ = windowSoftmax4(u, cPrev, window, w, s, expTable, entropy: &h)
                    entropy += (counts.map { load4($0 + m) } ?? V4(repeating: 1)) * h
                    var out = V4(repeating: 0)
                    for q in 0..<w { out += excess4(s[q]) * cLast[window[q]] }
                    out += zc
                    for l in 0..<4 { f[m + l] = out[l] }
                    m += 4
                }
            }
        }
        return (rows, entropy.sum())
    }

    /// backwardLastScalar4 on windows: cbar_j += z sum g + sum_window (A_j - z) g; the VJP and the
    /// extra term on the window only.
    func backwardLastWindowed(_ values: UnsafePointer<Double>, _ G: UnsafePointer<Double>, _ count: Int,
                              _ cPrev: UnsafePointer<Double>, _ cLast: UnsafePointer<Double>,
                              _ last: UnsafeMutablePointer<Double>, _ acc: UnsafeMutablePointer<Double>) -> Int {
        if let done = avx2BackwardLast(values, G, count, cPrev, cLast, last, acc) { return done }
        let rows = count & ~3
        if rows == 0 { return 0 }
        withCentroidOrder(cPrev) { order, window in
            withUnsafeTemporaryAllocation(of: V4.self, capacity: 4 * k + 2) { buf in
                let cbar = buf.baseAddress!, extra = cbar + k, s = extra + k, x = s + k + 1
                for j in 0..<(2 * k) { cbar[j] = V4(repeating: 0) }
                var totalG = V4(repeating: 0)
                var m = 0
                var cursor = WindowCursor()
                let expTable = edkm_window_exp_table()!
                while m < rows {
                    let u = load4(values + m)
                    let g = load4(G + m)
                    let w = window4(u, order, cPrev[0], window, &cursor, group: m / 4)
                    _ = windowSoftmax4(u, cPrev, window, w, s, expTable)
                    totalG += g
                    for q in 0..<w {
                        let j = window[q]
                        cbar[j] += excess4(s[q]) * g
                        x[q] = V4(repeating: cLast[j])
                    }
                    softmaxVJP4(s, x, count: w)
                    var h = V4(repeating: 0)
                    for q in 0..<w {
                        let j = window[q]
                        let ea = distanceAdjoint4(2 * (u - cPrev[j]) * x[q], u, centroid: j)
                        h += ea
                        extra[j] -= g * ea
                    }
                    for l in 0..<4 { last[m + l] = h[l] }
                    m += 4
                }
                let zG = zeroThreshold * totalG.sum()
                for j in 0..<k {
                    acc[j] += cbar[j].sum() + zG
                    acc[k + j] += extra[j].sum()
                }
            }
        }
        return rows
    }

    /// backwardIterationScalar4 on windows: r += z sum_j pbar_j + sum_window (A_j - z) pbar_j plus
    /// the attention path on the window.
    func backwardIterationWindowed(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                                   _ ct: UnsafePointer<Double>, _ cn: UnsafePointer<Double>, _ pbar: UnsafePointer<Double>,
                                   _ r: UnsafeMutablePointer<Double>, _ acc: UnsafeMutablePointer<Double>,
                                   accumulate: Bool) -> Int {
        if let done = avx2BackwardIteration(values, counts, count, ct, cn, pbar, r, acc, accumulate: accumulate) { return done }
        let rows = count & ~3
        if rows == 0 { return 0 }
        var pSum = 0.0
        for j in 0..<k { pSum += pbar[j] }
        let zp = zeroThreshold * pSum
        withCentroidOrder(ct) { order, window in
            withUnsafeTemporaryAllocation(of: V4.self, capacity: 3 * k + 2) { buf in
                let cbar = buf.baseAddress!, s = cbar + k, q = s + k + 1
                for j in 0..<k { cbar[j] = V4(repeating: 0) }
                var m = 0
                var cursor = WindowCursor()
                let expTable = edkm_window_exp_table()!
                while m < rows {
                    let u = load4(values + m)
                    let w = window4(u, order, ct[0], window, &cursor, group: m / 4)
                    _ = windowSoftmax4(u, ct, window, w, s, expTable)
                    var rr = load4(r + m) + zp
                    for i in 0..<w {
                        let j = window[i]
                        rr += excess4(s[i]) * pbar[j]
                        q[i] = (u - cn[j]) * pbar[j]
                    }
                    softmaxVJP4(s, q, count: w)
                    let n = counts.map { load4($0 + m) } ?? V4(repeating: 1)
                    for i in 0..<w {
                        let j = window[i]
                        let ee = distanceAdjoint4(2 * (u - ct[j]) * q[i], u, centroid: j)
                        rr += ee
                        if accumulate { cbar[j] -= n * ee }
                    }
                    for l in 0..<4 { r[m + l] = rr[l] }
                    m += 4
                }
                if accumulate { for j in 0..<k { acc[j] += cbar[j].sum() } }
            }
        }
        return rows
    }
}
