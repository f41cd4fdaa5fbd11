import Synchronization

/// What one forward keeps for its backward, as the runtime's `SavedMode` says (docs/design.md, part 2 (the saved state)).
/// Every buffer lives in the runtime's saved-tensor store (the offload arena, or the heap for the
/// DKM baseline); the Swift fields hold only sizes and flags.
public final class SavedState: @unchecked Sendable {
    let runtime: Runtime
    let config: ClusteringConfig
    let geometry: TensorGeometry
    let mode: SavedMode
    let algorithm: ClusteringConfig.Algorithm
    let weightType: ElementType
    /// The 16-bit key type of the uniquified path (the weights' type, or the f32 key type).
    let keyType: ElementType
    /// Content hash of the forward's weights.
    let weightsHash: UInt64

    /// Iterations, c^0..c^T and S^0..S^{T-1} of every partition, as doubles (see `encodeTraces`).
    let traces: SavedTensor
    /// Uniquified: distinct keys (UInt16) and counts (UInt32) of all partitions, concatenated.
    var histogramKeys: SavedTensor?
    var histogramCounts: SavedTensor?
    var distinctCounts: [Int] = []
    /// Per iteration: distance and softmax maps (rows x k floats, partitions concatenated): N/d
    /// rows on the dense path, U rows on the uniquified path.
    var distanceMaps: [SavedTensor] = []
    var softmaxMaps: [SavedTensor] = []
    /// Dense path: the weights as every iteration saved them (shared under dedup).
    var weightCopies: [SavedTensor] = []
    /// Uniquified: the keys of every element (HISTOGRAM + keep_weights), or the index list
    /// (element -> row of its partition's table; this rank's shard only in SHARD mode).
    var elementKeys: SavedTensor?
    var elementKeysAreIndices = false
    /// SHARD: the range of elements this rank's shard covers, and the padded shard length.
    var shardRange: Range<Int> = 0..<0
    var shardLength = 0
    /// Sharded weights: the slice of the tensor this rank's forward saw (nil = the whole tensor).
    var weightShard: Range<Int>? = nil
    /// Made by the histogram form (`Layer.forwardHistogram`): only its histogram backward applies.
    var isHistogramForm = false

    private var consumed = false
    private let busy = Atomic<Bool>(false)

    init(runtime: Runtime, config: ClusteringConfig, geometry: TensorGeometry, mode: SavedMode,
         algorithm: ClusteringConfig.Algorithm, weightType: ElementType, keyType: ElementType,
         weightsHash: UInt64, traces: SavedTensor) {
        self.runtime = runtime
        self.config = config
        self.geometry = geometry
        self.mode = mode
        self.algorithm = algorithm
        self.weightType = weightType
        self.keyType = keyType
        self.weightsHash = weightsHash
        self.traces = traces
        runtime.savedStateCreated()
    }

    deinit { runtime.savedStateDestroyed() }

    /// Every saved tensor of this state (shared ones once).
    var tensors: [SavedTensor] {
        var all: [SavedTensor] = [traces]
        for t in [histogramKeys, histogramCounts, elementKeys] { if let t { all.append(t) } }
        all += distanceMaps + softmaxMaps + weightCopies
        var seen = Set<ObjectIdentifier>()
        return all.filter { seen.insert(ObjectIdentifier($0)).inserted }
    }

    /// Bytes held (a tensor shared with another state counts fully here too).
    public var byteCount: Int { tensors.reduce(0) { $0 + $1.byteCount } }

    /// Whether backward has run.
    public var isConsumed: Bool { consumed }

    func exclusive<R>(_ body: () throws(EDKMError) -> R) throws(EDKMError) -> R {
        try runtime.collectives.rejectReentry()
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            throw EDKMError(.busy, "the saved state is in use by another thread")
        }
        defer { busy.store(false, ordering: .releasing) }
        return try body()
    }

    func markConsumed() { consumed = true }

    // MARK: trace encoding

    /// [P, then per partition: T, c^0..c^T (k d each), S^0..S^{T-1} (k each), inertia, tau,
    /// prune, epsilon].
    static func encodeTraces(_ traces: [PartitionTrace]) -> [Double] {
        var out: [Double] = [Double(traces.count)]
        for t in traces {
            out.append(Double(t.iterations))
            for c in t.centroids { out += c }
            for s in t.normalizers { out += s }
            out += [t.inertia, t.parameters.tau, t.parameters.prune, t.parameters.epsilon]
        }
        return out
    }

    func decodeTraces() -> [PartitionTrace] {
        let kd = config.k * config.clusterDim, k = config.k
        let p = traces.typed(Double.self)
        var i = 0
        func take(_ n: Int) -> [Double] {
            defer { i += n }
            return Array(UnsafeBufferPointer(start: p + i, count: n))
        }
        let P = Int(take(1)[0])
        var result: [PartitionTrace] = []
        for _ in 0..<P {
            let T = Int(take(1)[0])
            let cs = (0...T).map { _ in take(kd) }
            let ss = (0..<T).map { _ in take(k) }
            let tail = take(4)
            result.append(PartitionTrace(centroids: cs, normalizers: ss, inertia: tail[0],
                                         parameters: EffectiveParameters(tau: tail[1], prune: tail[2], epsilon: tail[3])))
        }
        return result
    }

    /// Per partition: (keys, counts) of the saved histogram.
    func decodeHistograms() -> [KeyHistogram] {
        guard let hk = histogramKeys, let hc = histogramCounts else { return [] }
        var offset = 0
        return distinctCounts.map { U in
            defer { offset += U }
            return KeyHistogram(keys: Array(UnsafeBufferPointer(start: hk.typed(UInt16.self) + offset, count: U)),
                                counts: Array(UnsafeBufferPointer(start: hc.typed(UInt32.self) + offset, count: U)))
        }
    }
}
