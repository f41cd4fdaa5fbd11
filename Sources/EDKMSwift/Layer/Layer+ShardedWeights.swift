import EDKMNumerics

/// Histogram-native DKM on weights sharded across data-parallel ranks (each rank holds a
/// contiguous slice of one tensor, as with FSDP/ZeRO-3): the ranks all-reduce the 65,536-entry
/// key histogram in forward and the U-entry gradient sums in backward, run the identical O(U k T)
/// math, and each writes only its slice. Traffic per forward+backward: (65,536 + 2 + U + 2) x 8
/// bytes per rank, whatever N is. Per-tensor granularity, scalar clustering, 16-bit keys. What the
/// all-reduces return is checked (`CollectiveChecks`) before it is used.
///
/// Every rank must make the call (it is a collective). A rank whose input is invalid (non-finite
/// weights or gradients, changed weights) still takes part in the all-reduce and flags it, so all
/// ranks fail together with the same status instead of one waiting forever.
extension Layer {
    /// Forward on this rank's slice weights[0 ..< count] = tensor elements [offset, offset + count).
    public func forwardShard(weights: UnsafeRawPointer, type: ElementType, offset: Int, count: Int,
                             output: UnsafeMutableRawPointer, outputType: ElementType,
                             save: Bool) throws(EDKMError) -> SavedState? {
        guard geometry.partitions == 1 else {
            throw EDKMError(.invalidArgument, "sharded weights need per-tensor granularity (group_size 0)")
        }
        guard config.clusterDim == 1 && (type.is16Bit || config.f32KeyType != .f32) && config.algorithm != .dense else {
            throw EDKMError(.dtype, "sharded weights need the uniquified algorithm: cluster_dim 1 and 16-bit keys")
        }
        guard outputType == .f32 || outputType == type else {
            throw EDKMError(.dtype, "the output dtype must be f32 or the weights' dtype (\(type.name)), got \(outputType.name)")
        }
        // (overflow-safe: offset and count come from size_t)
        guard offset >= 0 && count >= 0 && count <= geometry.count && offset <= geometry.count - count else {
            throw EDKMError(.shape, "slice at offset \(UInt(bitPattern: offset)) of \(UInt(bitPattern: count)) elements is outside the tensor's \(geometry.count) elements")
        }
        return try exclusive { () throws(EDKMError) -> SavedState? in
            let pool = runtime.pool
            let comm = runtime.communicator
            let keys = try WeightKeys(weights, type: type, count: count, f32KeyType: config.f32KeyType, pool: pool)
            let local = KeyPasses.histograms(keys.pointer, partitions: 1, elementsPerPartition: count, pool: pool,
                                             hashing: type.is16Bit).0
            // 65,536 counts, a flag (this rank's slice has a non-finite weight) and the slice's
            // element count (the counts must add up to the sum of these).
            var table = [Double](repeating: 0, count: 65538)
            for (key, n) in zip(local[0].keys, local[0].counts) { table[Int(key)] = Double(n) }
            let badKey = local[0].keys.contains { !ElementIO.keyValue($0, type: keys.keyType).isFinite }
            if badKey || (type == .f32 && ElementIO.firstNonFinite(weights, type: type, count: count) != nil) { table[65536] = 1 }
            table[65537] = Double(count)
            try table.withUnsafeMutableBufferPointer { (b) throws(EDKMError) in try comm.allReduceSum(b) }
            runtime.countCommunicatorBytes(65538 * 8)
            let global = try table.withUnsafeBufferPointer { (b) throws(EDKMError) -> KeyHistogram in
                try CollectiveChecks.keyHistogram(b, local: local[0], keyType: keys.keyType, worldSize: comm.worldSize)
            }
            guard global.distinctCount > 0 else { throw EDKMError(.shape, "the ranks' slices hold no weights (every slice is empty)") }
            let values = DoubleBuffer(zeros: global.distinctCount), counts = DoubleBuffer(zeros: global.distinctCount)
            for m in 0..<global.distinctCount {
                values[m] = ElementIO.keyValue(global.keys[m], type: keys.keyType)
                counts[m] = Double(global.counts[m])
            }
            var initial = centroids?[0] ?? CentroidInitialization.optimal1D(
                values: values.array, counts: counts.array, k: config.k).map { Float($0) }
            CentroidInitialization.respreadDuplicates(&initial, k: config.k, d: 1)
            let c0 = initial.map { Double($0) }
            let rows: [any RowBlocks] = [UniqueValueRows(valuesBuffer: values, countsBuffer: counts)]
            let held = global.counts.reduce(0) { $0 + Int($1) }  // the weights all ranks' slices hold
            let parameters = try effectiveParameters(rows, initial: [c0], vectors: held)
            let engine = DKMEngine(config: config, pool: pool)
            var traces = try engine.iterate(rows, initial: [c0], parameters: parameters)
            let f = DoubleBuffer(zeros: global.distinctCount)
            engine.output(rows, traces: &traces) { _, start, n, v in (f.pointer + start).update(from: v, count: n) }
            var saved: SavedState? = nil
            if save {
                let encoded = SavedState.encodeTraces(traces)
                let trace = try encoded.withUnsafeBytes { b in
                    Result { () throws(EDKMError) in
                        try runtime.store.save(b.baseAddress!, byteCount: b.count, tag: "trace", shape: [encoded.count],
                                               inArena: true, deduplicate: false, pool: nil)
                    }
                }.get()
                let state = SavedState(runtime: runtime, config: config, geometry: geometry, mode: .histogram,
                                       algorithm: .uniquified, weightType: type, keyType: keys.keyType,
                                       weightsHash: ContentHash.hash(weights, count: count * type.byteWidth, pool: pool),
                                       traces: trace)
                state.distinctCounts = [global.distinctCount]
                state.histogramKeys = try global.keys.withUnsafeBytes { b in
                    Result { () throws(EDKMError) in
                        try runtime.store.save(b.baseAddress!, byteCount: b.count, tag: "keys", shape: [b.count / 2],
                                               inArena: true, deduplicate: false, pool: nil)
                    }
                }.get()
                state.histogramCounts = try global.counts.withUnsafeBytes { b in
                    Result { () throws(EDKMError) in
                        try runtime.store.save(b.baseAddress!, byteCount: b.count, tag: "counts", shape: [b.count / 4],
                                               inArena: true, deduplicate: false, pool: nil)
                    }
                }.get()
                state.weightShard = offset..<(offset + count)
                if runtime.options.keepWeights {
                    state.elementKeys = try runtime.store.save(keys.pointer, byteCount: count * 2, tag: "keys-shard",
                                                               shape: [offset, count], inArena: true, deduplicate: true, pool: pool)
                }
                saved = state
            }
            // Output: this rank's slice only.
            let toF16 = outputType == .f16
            if outputType == .f32 {
                KeyPasses.gather(keys.pointer, partitions: 1, elementsPerPartition: count, pool: pool,
                                 into: output.assumingMemoryBound(to: Float.self)) { _, t in
                    for (m, key) in global.keys.enumerated() { t[Int(key)] = Float(f[m]) }
                }
            } else {
                KeyPasses.gather(keys.pointer, partitions: 1, elementsPerPartition: count, pool: pool,
                                 into: output.assumingMemoryBound(to: UInt16.self)) { _, t in
                    for (m, key) in global.keys.enumerated() {
                        let v = Float(f[m])
                        t[Int(key)] = toF16 ? HalfConversion.floatToF16(v) : HalfConversion.floatToBF16(v)
                    }
                }
            }
            withExtendedLifetime(keys) {}
            centroids = [traces[0].centroids[traces[0].iterations].map { Float($0) }]
            stats.forwards += 1
            stats.iterations = traces[0].iterations
            stats.inertia = traces[0].inertia
            stats.distinctValues = global.distinctCount
            stats.algorithm = .uniquified
            stats.effectiveTau = parameters[0].tau
            stats.attentionEntropy = traces[0].entropySum / Double(geometry.count)
            return saved
        }
    }
}

extension SavedState {
    /// Backward of a sharded forward: grad and output are this rank's slice.
    func backwardShard(_ slice: Range<Int>, traces: [PartitionTrace], grad: UnsafeRawPointer,
                       output: UnsafeMutableRawPointer, gradType: ElementType, weights: UnsafeRawPointer?) throws(EDKMError) {
        let pool = runtime.pool
        let count = slice.count
        let hist = decodeHistograms()[0]
        var holder: WeightKeys? = nil
        let keys: UnsafePointer<UInt16>
        if let kept = elementKeys { keys = UnsafePointer(kept.typed(UInt16.self)) } else if let weights {
            holder = try WeightKeys(weights, type: weightType, count: count, f32KeyType: keyType, pool: pool)
            keys = holder!.pointer
        } else {
            throw EDKMError(.state, "this saved state needs this rank's weight slice: pass it to backward (or set keep_weights)")
        }
        // Flags: this rank's weights changed, its gradients are not finite.
        let changed = weights.map { ContentHash.hash($0, count: count * weightType.byteWidth, pool: pool) != weightsHash } ?? false
        let (local, _) = KeyPasses.scatterGradients(keys, slots: [hist.keys], elementsPerPartition: count, pool: pool,
                                                    grad: grad, gradType: gradType, hashing: false)
        var buffer = local[0].array + [0, 0]
        if changed { buffer[hist.distinctCount] = 1 }
        if (0..<hist.distinctCount).contains(where: { !buffer[$0].isFinite }) {
            buffer[hist.distinctCount + 1] = 1
            for m in 0..<hist.distinctCount { buffer[m] = 0 }
        }
        try buffer.withUnsafeMutableBufferPointer { (b) throws(EDKMError) in try runtime.communicator.allReduceSum(b) }
        runtime.countCommunicatorBytes(buffer.count * 8)
        let world = Double(runtime.communicator.worldSize)
        let changedRanks = try CollectiveChecks.count(buffer[hist.distinctCount], limit: world, "the number of ranks with changed weights")
        let nonFiniteRanks = try CollectiveChecks.count(buffer[hist.distinctCount + 1], limit: world, "the number of ranks with non-finite gradients")
        if changedRanks > 0 {
            throw EDKMError(.weightsChanged, "\(changedRanks) rank(s) passed weights that differ from the forward's")
        }
        if nonFiniteRanks > 0 {
            throw EDKMError(.nonFinite, "\(nonFiniteRanks) rank(s) passed non-finite gradients")
        }
        try buffer.withUnsafeBufferPointer { (b) throws(EDKMError) in
            try CollectiveChecks.gradientSums(UnsafeBufferPointer(rebasing: b[0..<hist.distinctCount]))
        }
        let G = DoubleBuffer(zeros: hist.distinctCount)
        for m in 0..<hist.distinctCount { G[m] = buffer[m] }
        let values = DoubleBuffer(zeros: hist.distinctCount), counts = DoubleBuffer(zeros: hist.distinctCount)
        for m in 0..<hist.distinctCount {
            values[m] = ElementIO.keyValue(hist.keys[m], type: keyType)
            counts[m] = Double(hist.counts[m])
        }
        let rows: [any RowBlocks] = [UniqueValueRows(valuesBuffer: values, countsBuffer: counts)]
        let results = try DKMEngine(config: config, pool: pool).backward(rows, traces: traces,
                                                                    gradients: { _, start, _, _ in UnsafePointer(G.pointer + start) })
        KeyPasses.gradients(keys, partitions: 1, elementsPerPartition: count, pool: pool, grad: grad, output: output,
                            type: gradType) { _, table in
            for (m, key) in hist.keys.enumerated() { table[Int(key)] = SIMD2(Float(results[0].last[m]), Float(results[0].r[m])) }
        }
        withExtendedLifetime(holder) {}
    }
}
