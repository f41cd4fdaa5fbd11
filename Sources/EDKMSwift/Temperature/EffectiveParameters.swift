/// The softmax temperature, prune bias and early-stop tolerance one partition's forward uses.
public struct EffectiveParameters: Sendable, Equatable {
    public var tau: Double
    public var prune: Double
    public var epsilon: Double

    public init(tau: Double, prune: Double, epsilon: Double) {
        self.tau = tau
        self.prune = prune
        self.epsilon = epsilon
    }

    /// For a partition of `vectors` weight vectors at mean squared distance `distortion` from
    /// their nearest initial centroid (c0, k x d; the distortion is read in the scale-free mode only).
    public init(config: ClusteringConfig, initial c0: [Double], distortion: Double, vectors: Int) {
        switch config.temperatureMode {
        case .absolute:
            tau = config.tau
            prune = config.pruneThreshold
            epsilon = config.epsilon
        case .scaleFree:
            let scale = EffectiveParameters.temperatureScale(distortion: distortion, initial: c0, k: config.k, d: config.clusterDim)
            tau = config.tau * scale
            prune = config.pruneThreshold * scale
            epsilon = config.epsilon * scale * Double(vectors)
        }
    }

    /// The scale-free mode's sigma^2: the distortion when it is positive and finite; when every
    /// weight sits on a centroid (at most k distinct values) the centroids' own scale.
    public static func temperatureScale(distortion: Double, initial c0: [Double], k: Int, d: Int) -> Double {
        distortion > 0 && distortion.isFinite ? distortion : centroidScale(c0, k: k, d: d)
    }

    /// The mean over centroids of the squared distance to the nearest other centroid
    /// (ignoring coincident ones). When all centroids coincide (a constant partition) their
    /// softmax is uniform at any temperature: the scale is then their mean squared norm (still
    /// scale-equivariant), or 1 when they are all zero.
    public static func centroidScale(_ c: [Double], k: Int, d: Int) -> Double {
        var total = 0.0
        var counted = 0
        for j in 0..<k {
            var best = Double.infinity
            for l in 0..<k where l != j {
                var dist = 0.0
                for e in 0..<d {
                    let diff = c[j * d + e] - c[l * d + e]
                    dist += diff * diff
                }
                if dist > 0 { best = Swift.min(best, dist) }
            }
            if best.isFinite { total += best; counted += 1 }
        }
        if counted > 0 && total > 0 { return total / Double(counted) }
        let norm = c.reduce(0) { $0 + $1 * $1 } / Double(Swift.max(1, k))
        return norm > 0 && norm.isFinite ? norm : 1
    }
}
