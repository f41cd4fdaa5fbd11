/// What one saved state keeps besides its traces (docs/design.md, part 2 (the saved state)): one
/// case per kind of saved state, each holding exactly the tensors its backward reads. Every tensor
/// is a `SavedTensor` owned by the store (arena, or the heap for the DKM baseline) and released
/// with its last reference; N = elements of the tensor (of the slice for `weightShard`), U = the
/// distinct keys of all partitions, T = iterations, k = centroids, d = cluster_dim.
/// Made only by `Layer.makeSavedState` (SavedState+Build.swift), read only by the switch of
/// `SavedState.backward` / `backwardHistogram`.
enum SavedContents {
    /// DKM, MARSHAL, DEDUP (the dense algorithm): per iteration, the weights as autograd saves them
    /// (N elements of the weights' type; under DEDUP the T copies are one shared tensor) and the
    /// N/d x k f32 distance and softmax maps. Heap for DKM, arena otherwise: ~ T (2 N k x 4 + N x width) bytes.
    case denseMaps(weightCopies: [SavedTensor], maps: IterationMaps)
    /// HISTOGRAM, UNIQUIFY or SHARD when the dense algorithm runs (cluster_dim > 1, or f32 weights
    /// without a key type): the backward recomputes the maps from the weights. A copy of the
    /// weights (N x width bytes, arena, deduplicated) only under keep_weights or the index-list
    /// modes (whose backward is not handed the weights); otherwise nothing.
    case recompute(weights: SavedTensor?)
    /// HISTOGRAM (uniquified buffer forward): the histograms, and under keep_weights the N 16-bit
    /// keys of the elements (2 N bytes, arena, deduplicated); without them backward re-reads the
    /// caller's weights. ~ 6 U bytes (+ 2 N).
    case histogram(SavedHistograms, keys: SavedTensor?)
    /// UNIQUIFY: the histograms, per iteration the U x k tables, and the index list (N UInt16:
    /// element -> row of its partition's table; arena, deduplicated). ~ 6 U + 2 T U k x 4 + 2 N bytes.
    case uniquify(SavedHistograms, tables: IterationMaps, indexList: SavedTensor)
    /// SHARD: as UNIQUIFY, with only this rank's shard of the index list (all-gathered in backward).
    case shard(SavedHistograms, tables: IterationMaps, indexList: IndexListShard)
    /// The histogram form (the caller's histograms): the histograms and, under UNIQUIFY or SHARD,
    /// the U x k tables. Only `backwardHistogram` reads it.
    case histogramForm(SavedHistograms, tables: IterationMaps?)
    /// Sharded weights: the all-reduced histogram (one partition), the slice of the tensor this
    /// rank's forward saw and, under keep_weights, the slice's 16-bit keys (2 x slice bytes).
    case weightShard(SavedHistograms, slice: Range<Int>, keys: SavedTensor?)

    /// Every tensor of these contents (a shared one may appear more than once).
    var tensors: [SavedTensor] {
        switch self {
        case .denseMaps(let copies, let maps): return maps.tensors + copies
        case .recompute(let weights): return weights.map { [$0] } ?? []
        case .histogram(let h, let keys): return h.tensors + (keys.map { [$0] } ?? [])
        case .uniquify(let h, let tables, let index): return h.tensors + tables.tensors + [index]
        case .shard(let h, let tables, let shard): return h.tensors + tables.tensors + [shard.entries]
        case .histogramForm(let h, let tables): return h.tensors + (tables?.tensors ?? [])
        case .weightShard(let h, _, let keys): return h.tensors + (keys.map { [$0] } ?? [])
        }
    }

}

/// The per-partition key histograms of a uniquified forward: distinct keys (U UInt16) and their
/// counts (U UInt32), partitions concatenated, in the arena (6 U bytes).
struct SavedHistograms {
    let keys: SavedTensor
    let counts: SavedTensor
    /// U_p of every partition.
    let distinctCounts: [Int]

    var tensors: [SavedTensor] { [keys, counts] }
    var total: Int { distinctCounts.reduce(0, +) }

    /// The histograms, one per partition (copied in parallel over partitions with a pool).
    func decode(pool: ThreadPool? = nil) -> [KeyHistogram] {
        var offsets = [0]
        for U in distinctCounts { offsets.append(offsets[offsets.count - 1] + U) }
        let one = { (p: Int) -> KeyHistogram in
            let offset = offsets[p], U = distinctCounts[p]
            return KeyHistogram(keys: Array(UnsafeBufferPointer(start: keys.typed(UInt16.self) + offset, count: U)),
                                counts: Array(UnsafeBufferPointer(start: counts.typed(UInt32.self) + offset, count: U)))
        }
        if let pool { return pool.parallelMap(distinctCounts.count, one) }
        return (0..<distinctCounts.count).map(one)
    }
}

/// SHARD's part of the index list: entries [range] of the N-entry list (range.count UInt16, arena,
/// deduplicated); every rank's shard is padded to `length` entries for the all-gather.
struct IndexListShard {
    let entries: SavedTensor
    let range: Range<Int>
    let length: Int
}

/// Per iteration, the distance and softmax maps the engine writes while it iterates: rows x k f32
/// each, partitions concatenated (rows = N/d on the dense path, U on the uniquified one). The
/// backward reads only the softmax maps; the distance maps are what autograd would keep.
final class IterationMaps: @unchecked Sendable {
    private(set) var distance: [SavedTensor] = []
    private(set) var softmax: [SavedTensor] = []
    private var distancePointers: [UnsafeMutablePointer<Float>] = []
    private var softmaxPointers: [UnsafeMutablePointer<Float>] = []
    /// rowOffset[p]: partition p's first row.
    let rowOffset: [Int]
    let k: Int

    init(rowOffset: [Int], k: Int) {
        self.rowOffset = rowOffset
        self.k = k
    }

    var tensors: [SavedTensor] { distance + softmax }

    /// Allocates the next iteration's two maps (rowOffset.last x k floats each).
    func appendIteration(store: SavedTensorStore, inArena: Bool) throws(EDKMError) {
        let bytes = rowOffset[rowOffset.count - 1] * k * 4
        distance.append(try store.allocateTensor(byteCount: bytes, inArena: inArena))
        softmax.append(try store.allocateTensor(byteCount: bytes, inArena: inArena))
        distancePointers.append(distance[distance.count - 1].typed(Float.self))
        softmaxPointers.append(softmax[softmax.count - 1].typed(Float.self))
    }

    /// The engine's map sink: where the maps of partition p's rows from `start` go in iteration t.
    func sink(_ p: Int, _ t: Int, _ start: Int, _: Int) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) {
        (distancePointers[t] + (rowOffset[p] + start) * k, softmaxPointers[t] + (rowOffset[p] + start) * k)
    }

    /// The engine's saved-softmax reader for the backward (nil when no maps were kept).
    var savedSoftmax: ((Int, Int, Int, Int) -> UnsafePointer<Float>)? {
        if softmaxPointers.isEmpty { return nil }
        let pointers = softmaxPointers, offsets = rowOffset, k = k
        return { p, t, start, _ in UnsafePointer(pointers[t] + (offsets[p] + start) * k) }
    }
}
