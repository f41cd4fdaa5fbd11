import Glibc
import Synchronization

/// The clustering of one weight tensor: its config, geometry and current centroids (the LUT).
///
/// Not internally synchronised for concurrent use: a call made while another call on the same
/// layer runs on another thread fails with `.busy` (nothing is changed).
public final class Layer: @unchecked Sendable {
    public let runtime: Runtime
    public let config: ClusteringConfig
    public let geometry: TensorGeometry

    /// Per partition, k x d centroids; nil until initialised or set.
    var centroids: [[Float]]?
    /// With a channel scale: one factor per row (`ChannelScaling`); nil until fixed from the
    /// first weights the layer sees (forward, init_centroids, export) or set.
    var channelScale: [Float]?
    var stats = Statistics()
    private let busy = Atomic<Bool>(false)

    /// Figures of the last forward.
    public struct Statistics: Sendable, Equatable {
        public var iterations = 0
        public var forwards: UInt64 = 0
        public var distinctValues = 0
        public var algorithm: ClusteringConfig.Algorithm = .automatic
        public var inertia = 0.0
        /// Mean over partitions of the temperature the last forward used.
        public var effectiveTau = 0.0
        /// Mean over weights (vectors) of the entropy, in nats, of the last forward's final
        /// softmax row (0 = hard assignment, ln k = uniform).
        public var attentionEntropy = 0.0
    }

    public init(runtime: Runtime, config: ClusteringConfig, shape: [Int]) throws(EDKMError) {
        try config.validate()
        self.runtime = runtime
        self.config = config
        geometry = try TensorGeometry(shape: shape, config: config)
        guard geometry.elementsPerPartition <= Int(UInt32.max) else {
            throw EDKMError(.shape, "a partition may hold at most \(UInt32.max) elements; use group_size")
        }
    }

    /// Runs body with the layer marked busy; a concurrent call gets `.busy`.
    func exclusive<R>(_ body: () throws(EDKMError) -> R) throws(EDKMError) -> R {
        try runtime.collectives.rejectReentry()
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            throw EDKMError(.busy, "the layer is in use by another thread")
        }
        defer { busy.store(false, ordering: .releasing) }
        return try body()
    }

    /// Number of centroid floats: partitions x k x d.
    public var centroidCount: Int { geometry.partitions * config.k * config.clusterDim }

    public var statistics: Statistics {
        get throws(EDKMError) { try exclusive { stats } }
    }

    /// The centroids, layout [partition][centroid][dim].
    public func getCentroids() throws(EDKMError) -> [Float] {
        try exclusive { () throws(EDKMError) -> [Float] in
            guard let c = centroids else {
                throw EDKMError(.state, "the layer has no centroids yet: run a forward, init_centroids or set_centroids first")
            }
            return c.flatMap { $0 }
        }
    }

    /// Replaces the centroids, layout [partition][centroid][dim]; all must be finite.
    public func setCentroids(_ values: UnsafeBufferPointer<Float>) throws(EDKMError) {
        guard values.count == centroidCount else {
            throw EDKMError(.shape, "expected \(centroidCount) centroid values (partitions x k x d), got \(values.count)")
        }
        if let bad = values.firstIndex(where: { !$0.isFinite }) {
            throw EDKMError(.nonFinite, "centroid \(bad) is \(values[bad])")
        }
        let per = config.k * config.clusterDim
        let parts = (0..<geometry.partitions).map { Array(values[($0 * per)..<(($0 + 1) * per)]) }
        try exclusive { centroids = parts }
    }

    /// (Re)initialises the centroids from the weights with the configured method.
    /// With a channel scale, from the weights divided by it (the layer's, else fixed from these weights).
    public func initializeCentroids(weights: UnsafeRawPointer, type: ElementType, count: Int) throws(EDKMError) {
        try validateWeights(weights, type: type, count: count)
        try withChannelScaling(weights, type: type) { (source, scale) throws(EDKMError) in
            try exclusive { () throws(EDKMError) in
                centroids = try computeInitialCentroids(source, type: type)
                if let scale { channelScale = scale.factors }
            }
        }
    }

    /// Checks element count and (with `scan`) finiteness of weights. The uniquified forward of
    /// 16-bit weights skips the scan and checks the keys of its histogram instead.
    func validateWeights(_ weights: UnsafeRawPointer, type: ElementType, count: Int, scan: Bool = true) throws(EDKMError) {
        guard count == geometry.count else {
            throw EDKMError(.shape, "expected \(geometry.count) weights for shape \(geometry.shape), got \(sizeText(count))")
        }
        if scan { try rejectNonFinite(weights, type: type) }
    }

    func rejectNonFinite(_ weights: UnsafeRawPointer, type: ElementType) throws(EDKMError) {
        if let bad = ElementIO.firstNonFinite(weights, type: type, count: geometry.count) {
            throw EDKMError(.nonFinite, "weight \(bad) is \(ElementIO.load(weights, type: type, at: bad)) (NaN or Inf)")
        }
    }

    /// The configured initialisation from the weights, with the zero centroid placed first under enforceZero.
    func computeInitialCentroids(_ weights: UnsafeRawPointer, type: ElementType) throws(EDKMError) -> [[Float]] {
        var result = try initialCentroidsFromWeights(weights, type: type)
        if config.enforceZero {
            for p in result.indices { CentroidInitialization.placeZeroFirst(&result[p], k: config.k, d: config.clusterDim) }
        }
        return result
    }

    private func initialCentroidsFromWeights(_ weights: UnsafeRawPointer, type: ElementType) throws(EDKMError) -> [[Float]] {
        let k = config.k, d = config.clusterDim
        let E = geometry.elementsPerPartition
        let useOptimal = d == 1 && config.initialization != .kMeansPlusPlus
        var result = [[Float]](repeating: [], count: geometry.partitions)
        if useOptimal {
            let hists = try scalarHistograms(weights, type: type)
            // One partition: the solver's levels run in parallel; several: the partitions do.
            let pool = geometry.partitions == 1 ? runtime.pool : nil
            let reference = Optimal1DSelection.reference
            result.withUnsafeMutableBufferPointer { out in
                let res = out.baseAddress!
                runtime.pool.parallelFor(geometry.partitions) { p in
                    let c = reference
                        ? CentroidInitialization.optimal1DReference(values: hists[p].values, counts: hists[p].counts, k: k)
                        : CentroidInitialization.optimal1D(values: hists[p].values, counts: hists[p].counts, k: k, pool: pool)
                    res[p] = c.map { Float($0) }
                }
            }
            return result
        }
        // k-means++ on the partition's vectors (a strided sample of at most 65,536 of them).
        result.withUnsafeMutableBufferPointer { out in
            let res = out.baseAddress!
            runtime.pool.parallelFor(geometry.partitions) { p in
                let n = E / d
                let stride = Swift.max(1, n / 65536)
                let sampled = (n + stride - 1) / stride
                var v = [Double](repeating: 0, count: sampled * d)
                let base = weights + p * E * type.byteWidth
                for s in 0..<sampled {
                    for e in 0..<d { v[s * d + e] = Double(ElementIO.load(base, type: type, at: s * stride * d + e)) }
                }
                let c = v.withUnsafeBufferPointer {
                    CentroidInitialization.kMeansPlusPlus(vectors: $0.baseAddress!, count: sampled, d: d, k: k,
                                                          seed: config.seed &+ UInt64(p))
                }
                res[p] = c.map { Float($0) }
            }
        }
        return result
    }

    /// Distinct scalar values and counts per partition, for the 1-D initialisation: exact for
    /// 16-bit weights and for f32 partitions of at most 65,536 elements; larger f32 partitions
    /// are keyed by rounding to f32_key_dtype when set (the forward's keys), else to f16 of the
    /// weights scaled by `InitKeyScale` (a power of two bringing a tiny or huge RMS near 1, so
    /// the keys keep f16's relative precision), else to bf16 when even those overflow f16; an f16
    /// key that would overflow falls back to bf16 too. The values are the keys' times the inverse
    /// scale, so the initialisation is exact on the rounded values.
    func scalarHistograms(_ weights: UnsafeRawPointer, type: ElementType) throws(EDKMError) -> [(values: [Double], counts: [Double])] {
        let E = geometry.elementsPerPartition
        if type == .f32 && E <= 65536 {
            return runtime.pool.parallelMap(geometry.partitions) { p in
                let f = (weights + p * E * 4).assumingMemoryBound(to: Float.self)
                let sorted = (0..<E).map { Double(f[$0]) }.sorted()
                var values: [Double] = [], counts: [Double] = []
                for x in sorted {
                    if let last = values.last, last == x { counts[counts.count - 1] += 1 } else { values.append(x); counts.append(1) }
                }
                return (values, counts)
            }
        }
        // f32 keys: bf16 when configured; else (f16 configured, or none) f16 when every weight
        // rounds to a finite f16 (|w| < 65520), else bf16: an initialisation never sees Inf keys.
        var keyType = config.f32KeyType
        let scale = type == .f32 && keyType == .f32
            ? InitKeyScale(weights.assumingMemoryBound(to: Float.self), count: geometry.count) : InitKeyScale.one
        if type == .f32 && keyType != .bf16 {
            let f = weights.assumingMemoryBound(to: Float.self)
            keyType = (0..<geometry.count).allSatisfy { abs(f[$0] * scale.factor) < 65520 } ? .f16 : .bf16
        }
        let keys = try WeightKeys(weights, type: type, count: geometry.count, f32KeyType: keyType, f32Scale: scale.factor,
                                  pool: runtime.pool)
        let hists = KeyPasses.histograms(keys.pointer, partitions: geometry.partitions, elementsPerPartition: E,
                                         pool: runtime.pool).histograms
        return runtime.pool.parallelMap(hists.count) { p in
            (hists[p].keys.map { ElementIO.keyValue($0, type: keys.keyType) * scale.inverse }, hists[p].counts.map { Double($0) })
        }
    }
}
