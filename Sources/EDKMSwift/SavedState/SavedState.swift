import Synchronization

/// What one forward keeps for its backward (docs/design.md, part 2 (the saved state)): the traces
/// every mode keeps, and the mode's `SavedContents`. Every buffer lives in the runtime's
/// saved-tensor store (the offload arena, or the heap for the DKM baseline); the Swift fields
/// hold only sizes, types and the hash. Made by `Layer.makeSavedState`; one backward consumes it;
/// destroying it (the last reference) returns its tensors to the store.
public final class SavedState: @unchecked Sendable {
    let runtime: Runtime
    let config: ClusteringConfig
    let geometry: TensorGeometry
    let weightType: ElementType
    /// The 16-bit key type of the uniquified paths (the weights' type, or the f32 key type).
    let keyType: ElementType
    /// Content hash of the forward's weights (KeyPasses' hash for 16-bit weights on the buffer
    /// uniquified path, ContentHash otherwise; 0 for the histogram form).
    let weightsHash: UInt64
    /// Per partition: T, c^0..c^T and S^0..S^{T-1} as doubles (see `encodeTraces`).
    let traces: SavedTensor
    let contents: SavedContents
    /// The channel scale factors of the forward (one per row), nil without a channel scale: the
    /// backward multiplies the gradient by them before the clustering's backward and divides after.
    var channelScale: [Float]?

    private var consumed = false
    private let busy = Atomic<Bool>(false)

    init(runtime: Runtime, config: ClusteringConfig, geometry: TensorGeometry, weightType: ElementType,
         keyType: ElementType, weightsHash: UInt64, traces: SavedTensor, contents: SavedContents) {
        self.runtime = runtime
        self.config = config
        self.geometry = geometry
        self.weightType = weightType
        self.keyType = keyType
        self.weightsHash = weightsHash
        self.traces = traces
        self.contents = contents
        runtime.savedStateCreated()
    }

    deinit { runtime.savedStateDestroyed() }

    /// Every saved tensor of this state (shared ones once).
    var tensors: [SavedTensor] {
        var seen = Set<ObjectIdentifier>()
        return ([traces] + contents.tensors).filter { seen.insert(ObjectIdentifier($0)).inserted }
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

    /// [P, then per partition: T, c^0..c^T (k d each), (with LUT quantization: the raw c^0..c^T,
    /// k d each), S^0..S^{T-1} (k each), inertia, tau, prune, epsilon].
    static func encodeTraces(_ traces: [PartitionTrace], pool: ThreadPool) -> [Double] {
        // Each partition's doubles at its offset, written in parallel over partitions.
        var offsets = [1]
        offsets.reserveCapacity(traces.count + 1)
        for t in traces {
            let arrays = (t.centroids + t.rawCentroids).reduce(0) { $0 + $1.count } + t.normalizers.reduce(0) { $0 + $1.count }
            offsets.append(offsets[offsets.count - 1] + 1 + arrays + 4)
        }
        return [Double](unsafeUninitializedCapacity: offsets[traces.count]) { buffer, initialized in
            let base = buffer.baseAddress!
            base.initialize(to: Double(traces.count))
            pool.parallelFor(traces.count) { p in
                let t = traces[p]
                var at = base + offsets[p]
                func put(_ values: [Double]) {
                    for v in values {
                        at.initialize(to: v)
                        at += 1
                    }
                }
                put([Double(t.iterations)])
                for c in t.centroids { put(c) }
                for c in t.rawCentroids { put(c) }
                for s in t.normalizers { put(s) }
                put([t.inertia, t.parameters.tau, t.parameters.prune, t.parameters.epsilon])
            }
            initialized = offsets[traces.count]
        }
    }

    func decodeTraces() -> [PartitionTrace] {
        let kd = config.k * config.clusterDim, k = config.k
        let p = traces.typed(Double.self)
        let P = Int(p[0])
        let rawSets = config.lutType == .f32 ? 0 : 1
        // Each partition's offset from the iteration counts (one read per partition), then the
        // traces made in parallel over partitions.
        var offsets: [Int] = []
        offsets.reserveCapacity(P)
        var i = 1
        for _ in 0..<P {
            offsets.append(i)
            let T = Int(p[i])
            i += 1 + (1 + rawSets) * (T + 1) * kd + T * k + 4
        }
        return runtime.pool.parallelMap(P) { partition in
            var i = offsets[partition]
            func take(_ n: Int) -> [Double] {
                defer { i += n }
                return Array(UnsafeBufferPointer(start: p + i, count: n))
            }
            let T = Int(p[i])
            i += 1
            let cs = (0...T).map { _ in take(kd) }
            let raw = rawSets == 0 ? [] : (0...T).map { _ in take(kd) }
            let ss = (0..<T).map { _ in take(k) }
            let tail = take(4)
            var trace = PartitionTrace(centroids: cs, normalizers: ss, inertia: tail[0],
                                       parameters: EffectiveParameters(tau: tail[1], prune: tail[2], epsilon: tail[3]))
            trace.rawCentroids = raw
            return trace
        }
    }
}
