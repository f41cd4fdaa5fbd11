import Glibc

extension SavedState {
    /// The backward of the clustering itself (`backward` without the channel scale): dL/dw from
    /// dL/dw~ through every DKM iteration (docs/design.md, part 1 (the math)). `weights`: the
    /// forward's weights (checked by hash), required when the state kept neither the weights nor an
    /// index list. On error nothing is written; a state supports one backward.
    func backwardClustering(gradOutput: UnsafeRawPointer, gradInput: UnsafeMutableRawPointer, gradType: ElementType,
                         count: Int, weights: UnsafeRawPointer?) throws(EDKMError) {
        try exclusive { () throws(EDKMError) in
            guard !isConsumed else { throw EDKMError(.state, "backward already ran on this saved state") }
            let grad = gradOutput, out = gradInput
            switch contents {
            case .histogramForm:
                throw EDKMError(.state, "this saved state comes from a histogram forward: use edkm_saved_state_backward_histogram")
            case .weightShard(let saved, let slice, let kept):
                guard count == slice.count else {
                    throw EDKMError(.shape, "expected this rank's \(slice.count) gradient elements, got \(sizeText(count))")
                }
                try backwardShard(saved.decode()[0], slice: slice, kept: kept, grad: grad, output: out, gradType: gradType,
                                  weights: weights)
            case .denseMaps(let copies, let maps):
                try checkBufferInputs(count, grad, gradType, weights, fused: false)
                try backwardDense(copies.first.map { UnsafeRawPointer($0.pointer) } ?? weights, maps, grad, out, gradType)
            case .recompute(let copy):
                try checkBufferInputs(count, grad, gradType, weights, fused: false)
                try backwardDense(copy.map { UnsafeRawPointer($0.pointer) } ?? weights, nil, grad, out, gradType)
            case .histogram(let saved, let kept):
                try checkBufferInputs(count, grad, gradType, weights, fused: weightType.is16Bit)
                try backwardUniquified(saved, keys: kept.map { UnsafePointer($0.typed(UInt16.self)) }, indices: false,
                                       tables: nil, grad, out, gradType, weights)
            case .uniquify(let saved, let tables, let index):
                try checkBufferInputs(count, grad, gradType, weights, fused: weightType.is16Bit)
                try backwardUniquified(saved, keys: UnsafePointer(index.typed(UInt16.self)), indices: true,
                                       tables: tables, grad, out, gradType, weights)
            case .shard(let saved, let tables, let shard):
                try checkBufferInputs(count, grad, gradType, weights, fused: weightType.is16Bit)
                let all = try gatherIndexList(shard, saved)
                defer { free(all) }
                try backwardUniquified(saved, keys: UnsafePointer(all), indices: true, tables: tables, grad, out, gradType, weights)
            }
            markConsumed()
        }
    }

    /// The checks of a buffer backward before its passes: the element count and, unless the
    /// uniquified pass of 16-bit weights checks them itself (`fused`), the gradients' finiteness
    /// and the weights' hash.
    private func checkBufferInputs(_ count: Int, _ grad: UnsafeRawPointer, _ gradType: ElementType,
                                   _ weights: UnsafeRawPointer?, fused: Bool) throws(EDKMError) {
        guard count == geometry.count else {
            throw EDKMError(.shape, "expected \(geometry.count) gradient elements, got \(sizeText(count))")
        }
        if !fused {
            try rejectNonFiniteGradients(grad, gradType)
            if let weights { try checkWeights(ContentHash.hash(weights, count: count * weightType.byteWidth, pool: runtime.pool)) }
        }
    }

    func rejectNonFiniteGradients(_ grad: UnsafeRawPointer, _ type: ElementType) throws(EDKMError) {
        if let bad = ElementIO.firstNonFinite(grad, type: type, count: geometry.count) {
            throw EDKMError(.nonFinite, "grad_output[\(bad)] is \(ElementIO.load(grad, type: type, at: bad))")
        }
    }

    func checkWeights(_ hash: UInt64) throws(EDKMError) {
        guard hash == weightsHash else {
            throw EDKMError(.weightsChanged, "the weights given to backward differ from the forward's (hash mismatch)")
        }
    }

    private func missingWeights() -> EDKMError {
        EDKMError(.state, "this saved state needs the forward's weights: pass them to backward (or create the runtime with keep_weights)")
    }

    /// The 16-bit key of each of `count` elements: the kept keys, or those of `weights` (the
    /// rounded copy of f32 weights is owned by the returned `WeightKeys`); `missing` without either.
    func elementKeys(kept: UnsafePointer<UInt16>?, weights: UnsafeRawPointer?, count: Int,
                     missing: EDKMError) throws(EDKMError) -> (UnsafePointer<UInt16>, WeightKeys?) {
        if let kept { return (kept, nil) }
        guard let weights else { throw missing }
        let keys = try WeightKeys(weights, type: weightType, count: count, f32KeyType: keyType, pool: runtime.pool)
        return (keys.pointer, keys)
    }

    /// The uniquified backward of a buffer forward. `keys`: the kept keys or index list (nil: the
    /// weights' own keys); `indices`: whether they are row indices into the partition's table.
    private func backwardUniquified(_ saved: SavedHistograms, keys kept: UnsafePointer<UInt16>?, indices: Bool,
                                    tables: IterationMaps?, _ grad: UnsafeRawPointer, _ out: UnsafeMutableRawPointer,
                                    _ gradType: ElementType, _ weights: UnsafeRawPointer?) throws(EDKMError) {
        let P = geometry.partitions, E = geometry.elementsPerPartition
        let (keys, keyHolder) = try elementKeys(kept: kept, weights: weights, count: geometry.count, missing: missingWeights())
        // The keys are the weights themselves: their hash comes out of the scatter pass.
        let keysAreWeights = weightType.is16Bit && weights != nil && UnsafeRawPointer(keys) == weights
        if weightType.is16Bit, let weights, !keysAreWeights {
            try checkWeights(KeyPasses.hash(weights.assumingMemoryBound(to: UInt16.self), partitions: P,
                                            elementsPerPartition: E, pool: runtime.pool))
        }
        try backwardOnKeys(saved.decode(pool: runtime.pool), keys: keys, indices: indices, elementsPerPartition: E, tables: tables,
                           grad: grad, output: out, gradType: gradType, hashing: keysAreWeights) { (G, keysHash) throws(EDKMError) in
            if keysAreWeights { try checkWeights(keysHash) }
            if runtime.pool.parallelContains(G.count, { p in (0..<G[p].count).contains { !G[p][$0].isFinite } }) {
                try rejectNonFiniteGradients(grad, gradType)
            }
            return G
        }
        withExtendedLifetime(keyHolder) {}  // the rounded f32 keys are read until here
    }

    /// The uniquified backward once each element's key is known (shared by the buffer backward and
    /// the sharded one): scatter-add dL/dw~ per key into G, the step `reduce` (the checks; the
    /// all-reduce of sharded weights) given G and the keys' hash (when `hashing`), the per-key
    /// tables h and r, and dL/dw_i = g_i h[key_i] + r[key_i] into `output`. `keys`: elements
    /// [p E, (p + 1) E) of partition p; with `indices` they are row numbers of its table.
    func backwardOnKeys(_ hists: [KeyHistogram], keys: UnsafePointer<UInt16>, indices: Bool, elementsPerPartition E: Int,
                        tables: IterationMaps?, grad: UnsafeRawPointer, output: UnsafeMutableRawPointer,
                        gradType: ElementType, hashing: Bool,
                        reduce: ([DoubleBuffer], UInt64) throws(EDKMError) -> [DoubleBuffer]) throws(EDKMError) {
        let pool = runtime.pool
        let slots: [[UInt16]] = indices ? pool.parallelMap(hists.count) { p in (0..<hists[p].distinctCount).map { UInt16($0) } }
                                        : hists.map(\.keys)
        let (local, keysHash) = KeyPasses.scatterGradients(keys, slots: slots, elementsPerPartition: E, pool: pool,
                                                           grad: grad, gradType: gradType, hashing: hashing)
        let G = try reduce(local, keysHash)
        let results = try histogramAdjoints(decodeTraces(), hists, gradientSums: G, tables: tables)
        KeyPasses.gradients(keys, partitions: hists.count, elementsPerPartition: E, pool: pool, grad: grad, output: output,
                            type: gradType) { p, table in
            for (m, slot) in slots[p].enumerated() {
                table[Int(slot)] = SIMD2(Float(results[p].last[m]), Float(results[p].r[m]))
            }
        }
    }

    /// SHARD: the whole index list, all-gathered from every rank's shard (world_size x the padded
    /// shard length entries; release with `free`), checked against the saved histograms.
    private func gatherIndexList(_ shard: IndexListShard, _ saved: SavedHistograms) throws(EDKMError) -> UnsafeMutablePointer<UInt16> {
        let world = runtime.communicator.worldSize, shardLength = shard.length
        let (entries, overflow) = world.multipliedReportingOverflow(by: shardLength)
        guard !overflow else {
            throw EDKMError(.outOfMemory, "the gathered index list of \(world) ranks x \(shardLength) entries overflows the address space")
        }
        let send = try HeapAllocation.allocate(UInt16.self, count: Swift.max(1, shardLength), for: "the index shard to send")
        defer { free(send) }
        send.initialize(repeating: 0, count: Swift.max(1, shardLength))
        send.update(from: shard.entries.typed(UInt16.self), count: shard.range.count)
        let all = try HeapAllocation.allocate(UInt16.self, count: Swift.max(1, entries),
                                              for: "the gathered index list (world_size x shard bytes)")
        do {
            try runtime.communicator.allGather(UnsafeRawBufferPointer(start: send, count: shardLength * 2),
                                               into: UnsafeMutableRawBufferPointer(start: all, count: entries * 2))
            runtime.countCommunicatorBytes(shardLength * 2)
            try CollectiveChecks.gatheredIndices(all, histograms: saved.decode(),
                                                 elementsPerPartition: geometry.elementsPerPartition, pool: runtime.pool)
        } catch {
            free(all)
            throw error
        }
        return all
    }

    /// The dense backward: recomputes the iterations from `source` (the kept copy or the caller's
    /// weights), reading the softmax from `maps` when the forward kept them.
    private func backwardDense(_ source: UnsafeRawPointer?, _ maps: IterationMaps?, _ grad: UnsafeRawPointer,
                               _ out: UnsafeMutableRawPointer, _ gradType: ElementType) throws(EDKMError) {
        let P = geometry.partitions, E = geometry.elementsPerPartition, d = config.clusterDim
        guard let source else { throw missingWeights() }
        let width = weightType.byteWidth
        let rowsPerPartition = E / d
        let rows: [any RowBlocks] = (0..<P).map {
            DenseElementRows(base: source + $0 * E * width, type: weightType, d: d, rowCount: rowsPerPartition)
        }
        let traces = decodeTraces()
        let results = try DKMEngine(config: config, pool: runtime.pool).backward(rows, traces: traces, gradients: { p, start, count, scratch in
            ElementIO.loadDoubles(grad, type: gradType, from: p * E + start * d, count: count * d, into: scratch)
            return UnsafePointer(scratch)
        }, savedSoftmax: maps?.savedSoftmax)
        let chunk = 65536
        let chunksPerPartition = (E + chunk - 1) / chunk
        runtime.pool.parallelFor(P * chunksPerPartition) { item in
            let p = item / chunksPerPartition
            let lo = (item % chunksPerPartition) * chunk, hi = Swift.min(E, lo + chunk)
            let last = results[p].last.pointer, r = results[p].r.pointer
            for i in lo..<hi {
                let e = p * E + i
                let value: Double
                if d == 1 {
                    value = Double(ElementIO.load(grad, type: gradType, at: e)) * last[i] + r[i]
                } else {
                    value = last[i] + r[i]
                }
                ElementIO.store(Float(value), out, type: gradType, at: e)
            }
        }
    }
}
