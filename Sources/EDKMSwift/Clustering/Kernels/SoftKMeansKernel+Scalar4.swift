import Glibc

/// d = 1, four rows at a time: the same formulas as the row-at-a-time passes, lanes = rows.
/// Each returns how many leading rows it handled (a multiple of 4); the caller does the rest.
extension SoftKMeansKernel {
    typealias V4 = SIMD4<Double>

    /// s (k lanes of 4 rows) for rows u; returns min_j D_j per row. With `entropy`, also writes the
    /// rows' softmax entropy (see `softmax`).
    @inline(__always)
    func softmax4(_ u: V4, _ c: UnsafePointer<Double>, _ s: UnsafeMutablePointer<V4>,
                  entropy: UnsafeMutablePointer<V4>? = nil) -> V4 {
        softmax4(u, c, count: k, centroid: { $0 }, exp: VectorMath.exp, s, entropy: entropy)
    }

    /// softmax4 over `count` centroids, s[q] for centroid `centroid(q)` (the normaliser over those
    /// only), e^x by `exp`: all k in order with `VectorMath.exp` for the full passes, a window with
    /// `VectorMath.windowExp` for `+Window`.
    @inline(__always)
    func softmax4(_ u: V4, _ c: UnsafePointer<Double>, count: Int, centroid: (Int) -> Int, exp: (V4) -> V4,
                  _ s: UnsafeMutablePointer<V4>, entropy: UnsafeMutablePointer<V4>?) -> V4 {
        var minD = V4(repeating: .infinity)
        for q in 0..<count {
            let j = centroid(q)
            let diff = u - c[j]
            var dist = diff * diff
            if j == 0 {
                if keepSparsity { dist.replace(with: zeroDistance, where: u .!= V4(repeating: 0)) } else { dist -= pruneThreshold }
            }
            s[q] = dist
            minD.replace(with: dist, where: dist .< minD)
        }
        let invTau = 1 / tau
        var sum = V4(repeating: 0)
        var weighted = V4(repeating: 0)
        for q in 0..<count {
            let x = (minD - s[q]) * invTau
            let e = exp(x)
            s[q] = e
            sum += e
            if entropy != nil { weighted += (e * x).replacing(with: 0, where: e .== 0) }
        }
        let inv = 1 / sum
        for q in 0..<count { s[q] *= inv }
        if let entropy {
            // ln 1 = +0 exactly: a normaliser of 1 (every other term below half an ulp of the
            // argmin's, most rows at a small tau) skips the libm call, with the same value.
            let logs = sum == V4(repeating: 1) ? V4(repeating: 0)
                : V4(SoftKMeansKernel.logOfNormalizer(sum[0]), SoftKMeansKernel.logOfNormalizer(sum[1]),
                     SoftKMeansKernel.logOfNormalizer(sum[2]), SoftKMeansKernel.logOfNormalizer(sum[3]))
            entropy.pointee = logs - weighted * inv
        }
        return minD
    }

    /// log(x), with x = 1 answered without the call (+0, libm's value).
    @inline(__always)
    static func logOfNormalizer(_ x: Double) -> Double { x == 1 ? 0 : log(x) }

    /// A term of centroid j's distance adjoint for four rows u: zero in the lanes where keep-sparsity
    /// makes D_0 a constant (j = 0, nonzero u).
    @inline(__always)
    func distanceAdjoint4(_ term: V4, _ u: V4, centroid j: Int) -> V4 {
        j == 0 && keepSparsity ? term.replacing(with: 0, where: u .!= V4(repeating: 0)) : term
    }

    @inline(__always)
    func load4(_ p: UnsafePointer<Double>) -> V4 { V4(p[0], p[1], p[2], p[3]) }

    @inline(__always)
    func attention4(_ s: V4) -> V4 { s.replacing(with: zeroThreshold, where: s .< V4(repeating: zeroThreshold)) }

    /// In place X <- J(X) for four rows, on the first `count` entries (k, or a window: outside it
    /// s_j < e^{-cut} and both terms of J vanish to rounding).
    @inline(__always)
    func softmaxVJP4(_ s: UnsafePointer<V4>, _ x: UnsafeMutablePointer<V4>, count: Int) {
        var dot = V4(repeating: 0)
        let z = V4(repeating: zeroThreshold)
        for j in 0..<count {
            var sx = s[j] * x[j]
            sx.replace(with: 0, where: s[j] .< z)
            dot += sx
        }
        let scale = -1 / tau
        for j in 0..<count {
            var masked = x[j]
            masked.replace(with: 0, where: s[j] .< z)
            x[j] = scale * s[j] * (masked - dot)
        }
    }

    func iterateScalar4(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                        _ c: UnsafePointer<Double>, _ acc: UnsafeMutablePointer<Double>) -> (Int, Double) {
        let rows = count & ~3
        if rows == 0 { return (0, 0) }
        var inertia = V4(repeating: 0)
        withUnsafeTemporaryAllocation(of: V4.self, capacity: 3 * k) { buf in
            let s = buf.baseAddress!, sumS = s + k, sumP = sumS + k
            for j in 0..<(2 * k) { sumS[j] = V4(repeating: 0) }
            var m = 0
            while m < rows {
                let u = load4(values + m)
                let n = counts.map { load4($0 + m) } ?? V4(repeating: 1)
                let minD = softmax4(u, c, s)
                inertia += n * minD
                for j in 0..<k {
                    let w = n * attention4(s[j])
                    sumS[j] += w
                    sumP[j] += w * u
                }
                m += 4
            }
            for j in 0..<k {
                acc[j] += sumS[j].sum()
                acc[k + j] += sumP[j].sum()
            }
        }
        return (rows, inertia.sum())
    }

    func outputScalar4(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                       _ cPrev: UnsafePointer<Double>, _ cLast: UnsafePointer<Double>,
                       _ f: UnsafeMutablePointer<Double>) -> (Int, Double) {
        let rows = count & ~3
        var entropy = V4(repeating: 0)
        withUnsafeTemporaryAllocation(of: V4.self, capacity: k) { buf in
            let s = buf.baseAddress!
            var m = 0
            var h = V4(repeating: 0)
            while m < rows {
                _ = softmax4(load4(values + m), cPrev, s, entropy: &h)
                entropy += (counts.map { load4($0 + m) } ?? V4(repeating: 1)) * h
                var out = V4(repeating: 0)
                for j in 0..<k { out += attention4(s[j]) * cLast[j] }
                for l in 0..<4 { f[m + l] = out[l] }
                m += 4
            }
        }
        return (rows, entropy.sum())
    }

    func backwardLastScalar4(_ values: UnsafePointer<Double>, _ G: UnsafePointer<Double>, _ count: Int,
                             _ cPrev: UnsafePointer<Double>, _ cLast: UnsafePointer<Double>,
                             _ last: UnsafeMutablePointer<Double>, _ acc: UnsafeMutablePointer<Double>) -> Int {
        let rows = count & ~3
        if rows == 0 { return 0 }
        withUnsafeTemporaryAllocation(of: V4.self, capacity: 4 * k) { buf in
            let s = buf.baseAddress!, x = s + k, cbar = x + k, extra = cbar + k
            for j in 0..<(2 * k) { cbar[j] = V4(repeating: 0) }
            var m = 0
            while m < rows {
                let u = load4(values + m)
                let g = load4(G + m)
                _ = softmax4(u, cPrev, s)
                for j in 0..<k {
                    cbar[j] += attention4(s[j]) * g
                    x[j] = V4(repeating: cLast[j])
                }
                softmaxVJP4(s, x, count: k)
                var h = V4(repeating: 0)
                for j in 0..<k {
                    let ea = distanceAdjoint4(2 * (u - cPrev[j]) * x[j], u, centroid: j)
                    h += ea
                    extra[j] -= g * ea
                }
                for l in 0..<4 { last[m + l] = h[l] }
                m += 4
            }
            for j in 0..<k {
                acc[j] += cbar[j].sum()
                acc[k + j] += extra[j].sum()
            }
        }
        return rows
    }

    func backwardIterationScalar4(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                                  _ ct: UnsafePointer<Double>, _ cn: UnsafePointer<Double>, _ pbar: UnsafePointer<Double>,
                                  _ r: UnsafeMutablePointer<Double>, _ acc: UnsafeMutablePointer<Double>,
                                  accumulate: Bool) -> Int {
        let rows = count & ~3
        if rows == 0 { return 0 }
        withUnsafeTemporaryAllocation(of: V4.self, capacity: 3 * k) { buf in
            let s = buf.baseAddress!, q = s + k, cbar = q + k
            for j in 0..<k { cbar[j] = V4(repeating: 0) }
            var m = 0
            while m < rows {
                let u = load4(values + m)
                _ = softmax4(u, ct, s)
                var rr = load4(r + m)
                for j in 0..<k {
                    rr += attention4(s[j]) * pbar[j]
                    q[j] = (u - cn[j]) * pbar[j]
                }
                softmaxVJP4(s, q, count: k)
                let n = counts.map { load4($0 + m) } ?? V4(repeating: 1)
                for j in 0..<k {
                    let ee = distanceAdjoint4(2 * (u - ct[j]) * q[j], u, centroid: j)
                    rr += ee
                    if accumulate { cbar[j] -= n * ee }
                }
                for l in 0..<4 { r[m + l] = rr[l] }
                m += 4
            }
            if accumulate { for j in 0..<k { acc[j] += cbar[j].sum() } }
        }
        return rows
    }
}
