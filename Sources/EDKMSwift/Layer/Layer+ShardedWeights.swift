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
///
/// With a channel scale the slice is divided by its rows' factors (computed collectively from
/// whole rows: `Layer+ShardedChannelScale.swift`) before the keys are taken, and w~ multiplied
/// back, as the buffer forward does for the whole tensor.
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
        guard config.channelScale != .none else {
            return try forwardShardClustering(weights: weights, type: type, offset: offset, count: count, output: output,
                                              outputType: outputType, save: save)
        }
        let scaling = try shardedChannelScaling(weights, type: type, offset: offset, count: count)
        return try forwardScaled(weights, type: type, count: count, scaling: scaling, output: output,
                                 outputType: outputType) { (source, values) throws(EDKMError) -> SavedState? in
            try forwardShardClustering(weights: source, type: type, offset: offset, count: count, output: values,
                                       outputType: .f32, save: save)
        }
    }

    /// The sharded forward of the clustering itself (checked inputs; the weights are the scaled
    /// slice with a channel scale).
    private func forwardShardClustering(weights: UnsafeRawPointer, type: ElementType, offset: Int, count: Int,
                                        output: UnsafeMutableRawPointer, outputType: ElementType,
                                        save: Bool) throws(EDKMError) -> SavedState? {
        try exclusive { () throws(EDKMError) -> SavedState? in
            let keys = try WeightKeys(weights, type: type, count: count, f32KeyType: config.f32KeyType, pool: runtime.pool)
            let local = KeyPasses.histograms(keys.pointer, partitions: 1, elementsPerPartition: count, pool: runtime.pool,
                                             hashing: false).0[0]
            let global = try allReduceHistogram(local, weights: weights, type: type, keyType: keys.keyType, count: count)
            let values = global.keys.map { ElementIO.keyValue($0, type: keys.keyType) }
            var initial: [Float]
            if let current = centroids?[0] { initial = current } else {
                initial = CentroidInitialization.optimal1D(values: values, counts: global.counts.map { Double($0) },
                                                           k: config.k).map { Float($0) }
                if config.enforceZero { CentroidInitialization.placeZeroFirst(&initial, k: config.k, d: 1) }
            }
            CentroidInitialization.respreadDuplicates(&initial, k: config.k, d: 1)
            let held = global.counts.reduce(0) { $0 + Int($1) }  // the weights all ranks' slices hold
            let run = try uniquifiedRun(keys, [global], elementsPerPartition: count, initial: [initial.map { Double($0) }],
                                        vectors: held, saving: save ? .weightShard(weights, type, keys, slice: offset..<(offset + count)) : nil)
            let entropy = run.writeOutput(output, outputType, nil)  // this rank's slice only
            recordForward(run.traces, distinctValues: run.distinctValues, algorithm: .uniquified, entropy: entropy)
            return run.saved
        }
    }

    /// The collective step of the forward: all-reduces the 65,536 key counts of every rank's slice,
    /// with a flag (this rank's slice has a non-finite weight) and the slice's element count (the
    /// counts must add up to the sum of these), and checks what comes back.
    private func allReduceHistogram(_ local: KeyHistogram, weights: UnsafeRawPointer, type: ElementType,
                                    keyType: ElementType, count: Int) throws(EDKMError) -> KeyHistogram {
        let comm = runtime.communicator
        var table = [Double](repeating: 0, count: 65538)
        for (key, n) in zip(local.keys, local.counts) { table[Int(key)] = Double(n) }
        let badKey = local.keys.contains { !ElementIO.keyValue($0, type: keyType).isFinite }
        if badKey || (type == .f32 && ElementIO.firstNonFinite(weights, type: type, count: count) != nil) { table[65536] = 1 }
        table[65537] = Double(count)
        try table.withUnsafeMutableBufferPointer { (b) throws(EDKMError) in try comm.allReduceSum(b) }
        runtime.countCommunicatorBytes(65538 * 8)
        let global = try table.withUnsafeBufferPointer { (b) throws(EDKMError) -> KeyHistogram in
            try CollectiveChecks.keyHistogram(b, local: local, keyType: keyType, worldSize: comm.worldSize)
        }
        guard global.distinctCount > 0 else { throw EDKMError(.shape, "the ranks' slices hold no weights (every slice is empty)") }
        return global
    }
}

extension SavedState {
    /// Backward of a sharded forward: grad and output are this rank's slice; the step between the
    /// scatter and the adjoints all-reduces the U gradient sums with two flags (this rank's
    /// weights changed, its gradients are not finite) so that every rank fails together.
    func backwardShard(_ hist: KeyHistogram, slice: Range<Int>, kept: SavedTensor?, grad: UnsafeRawPointer,
                       output: UnsafeMutableRawPointer, gradType: ElementType, weights: UnsafeRawPointer?) throws(EDKMError) {
        let count = slice.count, U = hist.distinctCount
        let (keys, holder) = try elementKeys(
            kept: kept.map { UnsafePointer($0.typed(UInt16.self)) }, weights: weights, count: count,
            missing: EDKMError(.state, "this saved state needs this rank's weight slice: pass it to backward (or set keep_weights)"))
        let changed = weights.map { ContentHash.hash($0, count: count * weightType.byteWidth, pool: runtime.pool) != weightsHash } ?? false
        try backwardOnKeys([hist], keys: keys, indices: false, elementsPerPartition: count, tables: nil, grad: grad,
                           output: output, gradType: gradType, hashing: false) { (local, _) throws(EDKMError) in
            var buffer = local[0].array + [0, 0]
            if changed { buffer[U] = 1 }
            if (0..<U).contains(where: { !buffer[$0].isFinite }) {
                buffer[U + 1] = 1
                for m in 0..<U { buffer[m] = 0 }
            }
            try buffer.withUnsafeMutableBufferPointer { (b) throws(EDKMError) in try runtime.communicator.allReduceSum(b) }
            runtime.countCommunicatorBytes(buffer.count * 8)
            let world = Double(runtime.communicator.worldSize)
            let changedRanks = try CollectiveChecks.count(buffer[U], limit: world, "the number of ranks with changed weights")
            let nonFiniteRanks = try CollectiveChecks.count(buffer[U + 1], limit: world, "the number of ranks with non-finite gradients")
            if changedRanks > 0 {
                throw EDKMError(.weightsChanged, "\(changedRanks) rank(s) passed weights that differ from the forward's")
            }
            if nonFiniteRanks > 0 {
                throw EDKMError(.nonFinite, "\(nonFiniteRanks) rank(s) passed non-finite gradients")
            }
            try buffer.withUnsafeBufferPointer { (b) throws(EDKMError) in
                try CollectiveChecks.gradientSums(UnsafeBufferPointer(rebasing: b[0..<U]))
            }
            let G = DoubleBuffer(zeros: U)
            for m in 0..<U { G[m] = buffer[m] }
            return [G]
        }
        withExtendedLifetime(holder) {}
    }
}
