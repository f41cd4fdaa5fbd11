import Glibc

/// The per-row arithmetic of DKM (docs/design.md, part 1 (the math)), in Double, for rows that are either distinct
/// values with a count (uniquified) or the weights themselves (dense, count 1).
///
/// For a row value u (d-vector) and centroids c (k x d, row-major):
///
///     D_j = ||u - c_j||^2 - p [j = 0]          p = prune threshold
///     s   = softmax(-D / tau),  A_j = max(s_j, z),  M_j = [s_j >= z]     z = zero threshold
///
/// and the vector-Jacobian product of the clamped softmax, for an adjoint X on A:
///
///     J(X)_j = -(1/tau) s_j (M_j X_j - sum_l s_l M_l X_l)      (the adjoint on D)
///
/// Keep-sparsity (coremltools' rule for enforce_zero with prune threshold 0, docs/keep-sparsity.md):
/// for a row u with any nonzero element (-0.0 counts as zero), D_0 = `zeroDistance` (1/z in the
/// temperature's units), a constant: the softmax, its min D and its clamp take it as it is, and
/// the backward drops its adjoint (no 2 (u - c_0) J(X)_0 term for such rows). An all-zero row keeps
/// its ordinary D_0 = ||u - c_0||^2.
///
/// All functions take raw pointers to caller-owned buffers of the documented sizes.
@usableFromInline
struct SoftKMeansKernel {
    @usableFromInline let k: Int
    @usableFromInline let d: Int
    @usableFromInline let tau: Double
    @usableFromInline let zeroThreshold: Double
    @usableFromInline let pruneThreshold: Double
    /// Whether the d = 1 passes without saved maps run on centroid windows
    /// (`SoftKMeansKernel+Window`) instead of on all k centroids (`+Scalar4`).
    @usableFromInline let windowed: Bool
    /// Whether the keep-sparsity rule holds (`ClusteringConfig.keepsSparsity`).
    @usableFromInline let keepSparsity: Bool
    /// D_0 of a row with a nonzero element under keep-sparsity: 1 / z in the absolute mode
    /// (coremltools' constant), sigma^2 / z in the scale-free mode (1 / z in units of the
    /// partition's distortion sigma^2 = tau / config.tau, as tau and the prune threshold are);
    /// +infinity when z = 0. Unused otherwise.
    @usableFromInline let zeroDistance: Double
    /// The block's window ends, recorded or replayed by the windowed d = 1 passes
    /// (`SoftKMeansKernel+WindowEnds`); nil: every pass chooses its windows.
    var windowEnds: WindowEnds?

    init(config: ClusteringConfig, tau: Double, prune: Double, windowed: Bool = true) {
        k = config.k
        d = config.clusterDim
        self.tau = tau
        zeroThreshold = config.zeroThreshold
        pruneThreshold = prune
        self.windowed = windowed
        keepSparsity = config.keepsSparsity
        let unit = config.temperatureMode == .absolute ? 1 : tau / config.tau
        zeroDistance = unit / config.zeroThreshold
    }

    /// Whether row u (d values) has a nonzero element (-0.0 is zero).
    @inline(__always)
    func isNonzero(_ u: UnsafePointer<Double>) -> Bool {
        for e in 0..<d where u[e] != 0 { return true }
        return false
    }

    /// Whether the distance to centroid 0 is the constant `zeroDistance` for row u (keep-sparsity
    /// and a nonzero element): then D_0 has no adjoint.
    @inline(__always)
    func zeroDistanceIsConstant(_ u: UnsafePointer<Double>) -> Bool { keepSparsity && isNonzero(u) }

    /// Writes D (k, when `distances` is given) and s (k) for row u; returns min_j D_j. With
    /// `entropy`, also writes H = -sum_j s_j ln s_j = ln(sum_l e^{x_l}) - sum_j s_j x_j, where
    /// x_j = (min D - D_j) / tau.
    @inline(__always)
    func softmax(_ u: UnsafePointer<Double>, _ c: UnsafePointer<Double>, _ s: UnsafeMutablePointer<Double>,
                 distances: UnsafeMutablePointer<Float>? = nil, entropy: UnsafeMutablePointer<Double>? = nil) -> Double {
        var minD = Double.infinity
        if d == 1 {
            let x = u[0]
            for j in 0..<k {
                let diff = x - c[j]
                s[j] = diff * diff
            }
        } else {
            for j in 0..<k {
                var acc = 0.0
                let cj = c + j * d
                for e in 0..<d {
                    let diff = u[e] - cj[e]
                    acc += diff * diff
                }
                s[j] = acc
            }
        }
        if zeroDistanceIsConstant(u) { s[0] = zeroDistance } else { s[0] -= pruneThreshold }
        for j in 0..<k { minD = Swift.min(minD, s[j]) }
        if let distances { for j in 0..<k { distances[j] = Float(s[j]) } }
        var sum = 0.0
        var weighted = 0.0
        let invTau = 1 / tau
        for j in 0..<k {
            let x = (minD - s[j]) * invTau
            let e = exp(x)
            s[j] = e
            sum += e
            if e > 0 { weighted += e * x }
        }
        let inv = 1 / sum
        for j in 0..<k { s[j] *= inv }
        entropy?.pointee = log(sum) - weighted * inv
        return minD
    }

    /// Loads s for a row from a saved float map instead of recomputing it.
    @inline(__always)
    func loadSoftmax(_ saved: UnsafePointer<Float>, _ s: UnsafeMutablePointer<Double>) {
        for j in 0..<k { s[j] = Double(saved[j]) }
    }

    /// The attention A_j = max(s_j, z).
    @inline(__always) func attention(_ s: Double) -> Double { Swift.max(s, zeroThreshold) }

    /// In place: X <- J(X) for softmax row s.
    @inline(__always)
    func softmaxVJP(_ s: UnsafePointer<Double>, _ x: UnsafeMutablePointer<Double>) {
        var dot = 0.0
        for j in 0..<k where s[j] >= zeroThreshold { dot += s[j] * x[j] }
        let scale = -1 / tau
        for j in 0..<k {
            let masked = s[j] >= zeroThreshold ? x[j] : 0
            x[j] = scale * s[j] * (masked - dot)
        }
    }
}
