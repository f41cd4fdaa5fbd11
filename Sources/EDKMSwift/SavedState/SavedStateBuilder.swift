import Glibc

/// What a forward ran on, as `SavedStateBuilder` needs it (pointers borrowed for the forward).
enum ForwardInput {
    /// The buffer forward's N weights, on the dense algorithm.
    case denseWeights(UnsafeRawPointer, ElementType)
    /// The buffer forward's N weights and their 16-bit keys, on the uniquified algorithm, with
    /// KeyPasses' hash of 16-bit weights from the histogram pass.
    case uniquifiedWeights(UnsafeRawPointer, ElementType, WeightKeys, keysHash: UInt64)
    /// The caller's histograms (the histogram form), keys of `keyType`.
    case callerHistograms(keyType: ElementType)
    /// This rank's slice [slice] of sharded weights and the slice's keys.
    case weightShard(UnsafeRawPointer, ElementType, WeightKeys, slice: Range<Int>)
}

/// Makes the saved state of one forward: the one place where the runtime's saved mode decides
/// what a forward keeps (docs/design.md, part 2 (the saved state)). Made before the iterations
/// (`prepare` and `mapSink` are the engine's hooks when the mode records per-iteration maps),
/// finished after them with the traces.
final class SavedStateBuilder {
    private let layer: Layer
    private let input: ForwardInput
    private let mode: SavedMode
    /// The per-iteration maps or tables the mode records (nil: none).
    private let maps: IterationMaps?
    /// DKM/MARSHAL/DEDUP: the weights as every iteration saved them.
    private var weightCopies: [SavedTensor] = []

    /// rowsPerPartition: the rows the engine iterates on (N/d per partition dense, U_p uniquified).
    init(layer: Layer, input: ForwardInput, rowsPerPartition: [Int]) {
        self.layer = layer
        self.input = input
        mode = layer.runtime.options.savedMode
        var rowOffset = [0]
        for rows in rowsPerPartition { rowOffset.append(rowOffset[rowOffset.count - 1] + rows) }
        let records: Bool
        switch input {
        case .denseWeights: records = mode.keepsDenseMaps
        case .uniquifiedWeights, .callerHistograms: records = mode == .uniquify || mode == .shard
        case .weightShard: records = false
        }
        maps = records ? IterationMaps(rowOffset: rowOffset, k: layer.config.k) : nil
    }

    private var store: SavedTensorStore { layer.runtime.store }
    private var pool: ThreadPool { layer.runtime.pool }

    /// The engine's per-iteration hook: what autograd keeps per iteration (the weights, the cdist
    /// input, on the dense path; then the distance and softmax maps).
    var prepare: ((Int) throws(EDKMError) -> Void)? {
        guard let maps else { return nil }
        let inArena = mode.usesArena
        return { (_: Int) throws(EDKMError) in
            if case .denseWeights(let weights, let type) = self.input {
                self.weightCopies.append(try self.saveWeights(weights, type: type, inArena: inArena,
                                                              deduplicate: self.mode.deduplicates))
            }
            try maps.appendIteration(store: self.store, inArena: inArena)
        }
    }

    var mapSink: ((Int, Int, Int, Int) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>))? {
        maps.map { $0.sink }
    }

    /// The saved state, after the iterations. `histograms`: what the uniquified paths iterated on.
    func finish(traces: [PartitionTrace], histograms: [KeyHistogram]) throws(EDKMError) -> SavedState {
        let geometry = layer.geometry
        let weightType: ElementType, keyType: ElementType, weightsHash: UInt64
        switch input {
        case .denseWeights(let w, let type):
            (weightType, keyType) = (type, type)
            weightsHash = ContentHash.hash(w, count: geometry.count * type.byteWidth, pool: pool)
        case .uniquifiedWeights(let w, let type, let keys, let keysHash):
            (weightType, keyType) = (type, keys.keyType)
            weightsHash = type.is16Bit ? keysHash : ContentHash.hash(w, count: geometry.count * type.byteWidth, pool: pool)
        case .callerHistograms(let type):
            (weightType, keyType, weightsHash) = (type, type, 0)
        case .weightShard(let w, let type, let keys, let slice):
            (weightType, keyType) = (type, keys.keyType)
            weightsHash = ContentHash.hash(w, count: slice.count * type.byteWidth, pool: pool)
        }
        let tracesInArena: Bool
        if case .denseWeights = input { tracesInArena = mode.usesArena } else { tracesInArena = true }
        let encoded = SavedState.encodeTraces(traces, pool: pool)
        let savedTraces = try save(encoded, tag: "trace", inArena: tracesInArena)
        let contents = try contents(histograms)
        return SavedState(runtime: layer.runtime, config: layer.config, geometry: geometry, weightType: weightType,
                          keyType: keyType, weightsHash: weightsHash, traces: savedTraces, contents: contents)
    }

    /// The mode's contents (after the traces: the arena sees the same allocations in the same order).
    private func contents(_ histograms: [KeyHistogram]) throws(EDKMError) -> SavedContents {
        let geometry = layer.geometry, keepWeights = layer.runtime.options.keepWeights
        switch input {
        case .denseWeights(let weights, let type):
            if let maps { return .denseMaps(weightCopies: weightCopies, maps: maps) }
            // Without maps the backward recomputes from the weights: keep a copy when the caller
            // will not hand them back (keep_weights, or the index-list modes, which need none).
            let keep = keepWeights || mode == .uniquify || mode == .shard
            return .recompute(weights: keep ? try saveWeights(weights, type: type, inArena: true, deduplicate: true) : nil)
        case .uniquifiedWeights(_, _, let keys, _):
            let saved = try save(histograms)
            switch mode {
            case .uniquify, .shard:
                let index = try HeapAllocation.allocate(UInt16.self, count: geometry.count, for: "the index list")
                defer { free(index) }
                KeyPasses.gather(keys.pointer, partitions: geometry.partitions, elementsPerPartition: geometry.elementsPerPartition,
                                 pool: pool, into: index) { p, table in
                    for (m, key) in histograms[p].keys.enumerated() { table[Int(key)] = UInt16(m) }
                }
                if mode == .uniquify {
                    return .uniquify(saved, tables: maps!, indexList: try store.save(
                        index, byteCount: geometry.count * 2, tag: "index", shape: geometry.shape,
                        inArena: true, deduplicate: true, pool: pool))
                }
                let world = layer.runtime.communicator.worldSize, rank = layer.runtime.communicator.rank
                let length = (geometry.count + world - 1) / world
                let lo = Swift.min(geometry.count, rank * length), hi = Swift.min(geometry.count, lo + length)
                let entries = try store.save(index + lo, byteCount: Swift.max(0, hi - lo) * 2, tag: "index-shard",
                                             shape: [rank, world] + geometry.shape, inArena: true, deduplicate: true, pool: pool)
                return .shard(saved, tables: maps!, indexList: IndexListShard(entries: entries, range: lo..<hi, length: length))
            default:
                return .histogram(saved, keys: keepWeights ? try store.save(
                    keys.pointer, byteCount: geometry.count * 2, tag: "keys", shape: geometry.shape,
                    inArena: true, deduplicate: true, pool: pool) : nil)
            }
        case .callerHistograms:
            return .histogramForm(try save(histograms), tables: maps)
        case .weightShard(_, _, let keys, let slice):
            return .weightShard(try save(histograms), slice: slice, keys: keepWeights ? try store.save(
                keys.pointer, byteCount: slice.count * 2, tag: "keys-shard", shape: [slice.lowerBound, slice.count],
                inArena: true, deduplicate: true, pool: pool) : nil)
        }
    }

    /// The forward's N weights, as a saved tensor.
    private func saveWeights(_ weights: UnsafeRawPointer, type: ElementType, inArena: Bool,
                             deduplicate: Bool) throws(EDKMError) -> SavedTensor {
        try store.save(weights, byteCount: layer.geometry.count * type.byteWidth, tag: "weights-\(type.name)",
                       shape: layer.geometry.shape, inArena: inArena, deduplicate: deduplicate, pool: pool)
    }

    private func save(_ histograms: [KeyHistogram]) throws(EDKMError) -> SavedHistograms {
        SavedHistograms(keys: try concatenated(histograms, \.keys), counts: try concatenated(histograms, \.counts),
                        distinctCounts: histograms.map(\.distinctCount))
    }

    /// A saved buffer (in the arena, not deduplicated) holding the partitions' arrays one after
    /// another, copied into it in parallel over partitions.
    private func concatenated<T>(_ histograms: [KeyHistogram], _ part: (KeyHistogram) -> [T]) throws(EDKMError) -> SavedTensor {
        var offsets = [0]
        offsets.reserveCapacity(histograms.count + 1)
        for h in histograms { offsets.append(offsets[offsets.count - 1] + h.distinctCount) }
        let tensor = try store.allocateTensor(byteCount: offsets[histograms.count] * MemoryLayout<T>.stride, inArena: true)
        let base = tensor.pointer.bindMemory(to: T.self, capacity: offsets[histograms.count])
        pool.parallelFor(histograms.count) { p in
            part(histograms[p]).withUnsafeBufferPointer { b in
                if let from = b.baseAddress { (base + offsets[p]).initialize(from: from, count: b.count) }
            }
        }
        return tensor
    }

    /// A copy of `array` (shape [count], not deduplicated).
    private func save<T>(_ array: [T], tag: String, inArena: Bool) throws(EDKMError) -> SavedTensor {
        let store = store
        let result = array.withUnsafeBytes { b in
            Result { () throws(EDKMError) in
                try store.save(b.baseAddress ?? UnsafeRawPointer(bitPattern: 64)!, byteCount: b.count, tag: tag,
                               shape: [array.count], inArena: inArena, deduplicate: false, pool: nil)
            }
        }
        return try result.get()
    }
}
