/// The four block passes of the DKM engine over `count` rows, in three implementations: any d, one
/// row at a time (and the only one that reads or writes saved maps); d = 1 four rows at a time
/// with SIMD4<Double> and a vectorised exp, on all k centroids (`+Scalar4`) or, by default, on the
/// window of centroids whose softmax terms can matter (`+Window`). All accumulate in Double; they
/// differ only in summation order (lane partial sums, reduced at the end of the block) and, for the
/// windows, in terms below rounding.
extension SoftKMeansKernel {
    /// One iteration's sums over the rows: acc[j] += sum_m n_m A_mj, acc[k + j d + e] +=
    /// sum_m n_m A_mj u_me. With `maps`, writes the rows' D and s maps. Returns sum_m n_m min_j D_mj.
    func iterateBlock(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                      _ c: UnsafePointer<Double>, _ acc: UnsafeMutablePointer<Double>,
                      maps: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>)?) -> Double {
        var done = 0
        var inertia = 0.0
        if d == 1 && maps == nil {
            (done, inertia) = windowed ? iterateWindowed(values, counts, count, c, acc) : iterateScalar4(values, counts, count, c, acc)
        }
        withUnsafeTemporaryAllocation(of: Double.self, capacity: k) { sb in
            let s = sb.baseAddress!
            for m in done..<count {
                let u = values + m * d
                let minD = softmax(u, c, s, distances: maps.map { $0.0 + m * k })
                if let maps { for j in 0..<k { maps.1[m * k + j] = Float(s[j]) } }
                let n = counts?[m] ?? 1
                inertia += n * minD
                for j in 0..<k {
                    let w = n * attention(s[j])
                    acc[j] += w
                    for e in 0..<d { acc[k + j * d + e] += w * u[e] }
                }
            }
        }
        return inertia
    }

    /// f_m = sum_j A_mj(cPrev) cLast_j, count x d values. Returns sum_m n_m H_m, the
    /// count-weighted entropy (nats) of the rows' softmax.
    func outputBlock(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                     _ cPrev: UnsafePointer<Double>, _ cLast: UnsafePointer<Double>,
                     _ f: UnsafeMutablePointer<Double>) -> Double {
        var (done, entropy) = d != 1 ? (0, 0.0) : windowed ? outputWindowed(values, counts, count, cPrev, cLast, f)
                                                             : outputScalar4(values, counts, count, cPrev, cLast, f)
        withUnsafeTemporaryAllocation(of: Double.self, capacity: k) { sb in
            let s = sb.baseAddress!
            var h = 0.0
            for m in done..<count {
                _ = softmax(values + m * d, cPrev, s, entropy: &h)
                entropy += (counts?[m] ?? 1) * h
                for e in 0..<d { f[m * d + e] = 0 }
                for j in 0..<k {
                    let a = attention(s[j])
                    for e in 0..<d { f[m * d + e] += a * cLast[j * d + e] }
                }
            }
        }
        return entropy
    }

    /// The output's adjoint: acc[0 ..< kd] += cbar^T (sum_m A_m G_m), acc[kd ..< 2kd] += extra
    /// (the adjoint reaching c^{T-1} through the last attention), and per row `last` (d = 1: h_m
    /// for a unit upstream gradient; d > 1: the row's gradient through the last attention).
    func backwardLastBlock(_ values: UnsafePointer<Double>, _ G: UnsafePointer<Double>, _ count: Int,
                           _ cPrev: UnsafePointer<Double>, _ cLast: UnsafePointer<Double>,
                           saved: UnsafePointer<Float>?, _ last: UnsafeMutablePointer<Double>,
                           _ acc: UnsafeMutablePointer<Double>) {
        let done = d != 1 || saved != nil ? 0 : windowed ? backwardLastWindowed(values, G, count, cPrev, cLast, last, acc)
                                                          : backwardLastScalar4(values, G, count, cPrev, cLast, last, acc)
        withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * k + d) { sb in
            let s = sb.baseAddress!, x = s + k, sv = x + k
            for m in done..<count {
                let u = values + m * d
                let g = G + m * d
                if let saved { loadSoftmax(saved + m * k, s) } else { _ = softmax(u, cPrev, s) }
                for j in 0..<k {
                    let a = attention(s[j])
                    for e in 0..<d { acc[j * d + e] += a * g[e] }
                }
                for j in 0..<k {
                    if d == 1 { x[j] = cLast[j] } else {
                        var dot = 0.0
                        for e in 0..<d { dot += g[e] * cLast[j * d + e] }
                        x[j] = dot
                    }
                }
                softmaxVJP(s, x)
                for e in 0..<d { sv[e] = 0 }
                for j in (zeroDistanceIsConstant(u) ? 1 : 0)..<k {  // a constant D_0 has no adjoint
                    for e in 0..<d {
                        let ea = 2 * (u[e] - cPrev[j * d + e]) * x[j]
                        sv[e] += ea
                        acc[k * d + j * d + e] -= (d == 1 ? g[0] : 1) * ea
                    }
                }
                for e in 0..<d { last[m * d + e] = sv[e] }
            }
        }
    }

    /// One reverse iteration t: with Pbar = cbar^{t+1} / S^t, adds to every row's r the paths
    /// through P^t and through the attention A^t, and (when `accumulate`) acc[j d + e] -= the
    /// adjoint reaching c^t.
    func backwardIterationBlock(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                                _ ct: UnsafePointer<Double>, _ cn: UnsafePointer<Double>, _ pbar: UnsafePointer<Double>,
                                saved: UnsafePointer<Float>?, _ r: UnsafeMutablePointer<Double>,
                                _ acc: UnsafeMutablePointer<Double>, accumulate: Bool) {
        let done = d != 1 || saved != nil ? 0 : windowed
            ? backwardIterationWindowed(values, counts, count, ct, cn, pbar, r, acc, accumulate: accumulate)
            : backwardIterationScalar4(values, counts, count, ct, cn, pbar, r, acc, accumulate: accumulate)
        withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * k) { sb in
            let s = sb.baseAddress!, q = s + k
            for m in done..<count {
                let u = values + m * d
                if let saved { loadSoftmax(saved + m * k, s) } else { _ = softmax(u, ct, s) }
                for j in 0..<k {
                    let a = attention(s[j])
                    var qj = 0.0
                    for e in 0..<d {
                        r[m * d + e] += a * pbar[j * d + e]
                        qj += (u[e] - cn[j * d + e]) * pbar[j * d + e]
                    }
                    q[j] = qj
                }
                softmaxVJP(s, q)
                let n = counts?[m] ?? 1
                for j in (zeroDistanceIsConstant(u) ? 1 : 0)..<k {  // a constant D_0 has no adjoint
                    for e in 0..<d {
                        let ee = 2 * (u[e] - ct[j * d + e]) * q[j]
                        r[m * d + e] += ee
                        if accumulate { acc[j * d + e] -= n * ee }
                    }
                }
            }
        }
    }
}
