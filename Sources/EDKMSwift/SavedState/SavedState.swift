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
    static func encodeTraces(_ traces: [PartitionTrace]) -> [Double] {
        var out: [Double] = [Double(traces.count)]
        for t in traces {
            out.append(Double(t.iterations))
            for c in t.centroids + t.rawCentroids { out += c }
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
            let raw = config.lutType == .f32 ? [] : (0...T).map { _ in take(kd) }
            let ss = (0..<T).map { _ in take(k) }
            let tail = take(4)
            var trace = PartitionTrace(centroids: cs, normalizers: ss, inertia: tail[0],
                                       parameters: EffectiveParameters(tau: tail[1], prune: tail[2], epsilon: tail[3]))
            trace.rawCentroids = raw
            result.append(trace)
        }
        return result
    }
}
