import Glibc

extension SavedState {
    /// dL/dw from dL/dw~ through every DKM iteration (docs/design.md, part 1 (the math)). `weights`: the forward's
    /// weights (checked by hash), required when the state kept neither the weights nor an index
    /// list. On error nothing is written; a state supports one backward.
    public func backward(gradOutput: UnsafeRawPointer, gradInput: UnsafeMutableRawPointer, gradType: ElementType,
                         count: Int, weights: UnsafeRawPointer?) throws(EDKMError) {
        try exclusive { () throws(EDKMError) in
            guard !isConsumed else { throw EDKMError(.state, "backward already ran on this saved state") }
            guard !isHistogramForm else {
                throw EDKMError(.state, "this saved state comes from a histogram forward: use edkm_saved_state_backward_histogram")
            }
            if let slice = weightShard {
                guard count == slice.count else {
                    throw EDKMError(.shape, "expected this rank's \(slice.count) gradient elements, got \(sizeText(count))")
                }
                try backwardShard(slice, traces: decodeTraces(), grad: gradOutput, output: gradInput, gradType: gradType,
                                  weights: weights)
                markConsumed()
                return
            }
            guard count == geometry.count else {
                throw EDKMError(.shape, "expected \(geometry.count) gradient elements, got \(sizeText(count))")
            }
            // The uniquified path of 16-bit weights checks gradients and weights inside its scatter pass.
            let fused = algorithm == .uniquified && weightType.is16Bit
            if !fused {
                try rejectNonFiniteGradients(gradOutput, gradType)
                if let weights { try checkWeights(ContentHash.hash(weights, count: count * weightType.byteWidth, pool: runtime.pool)) }
            }
            let traces = decodeTraces()
            if algorithm == .uniquified {
                try backwardUniquified(traces, gradOutput, gradInput, gradType, weights)
            } else {
                try backwardDense(traces, gradOutput, gradInput, gradType, weights)
            }
            markConsumed()
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

    private var engine: DKMEngine { DKMEngine(config: config, pool: runtime.pool) }

    private func missingWeights() -> EDKMError {
        EDKMError(.state, "this saved state needs the forward's weights: pass them to backward (or create the runtime with keep_weights)")
    }

    private func backwardUniquified(_ traces: [PartitionTrace], _ grad: UnsafeRawPointer, _ out: UnsafeMutableRawPointer,
                                    _ gradType: ElementType, _ weights: UnsafeRawPointer?) throws(EDKMError) {
        let pool = runtime.pool
        let P = geometry.partitions, E = geometry.elementsPerPartition, N = geometry.count
        let hists = decodeHistograms()
        // The key of every element: the weights' own, a kept copy, the index list or its shards.
        var keyHolder: WeightKeys? = nil
        var gathered: UnsafeMutablePointer<UInt16>? = nil
        defer { free(gathered) }
        let keys: UnsafePointer<UInt16>
        var indices = elementKeysAreIndices
        if mode == .shard, let shard = elementKeys {
            let all = try gatherIndexList(shard)
            gathered = all
            keys = UnsafePointer(all)
        } else if let kept = elementKeys {
            keys = UnsafePointer(kept.typed(UInt16.self))
        } else if let weights {
            let wk = try WeightKeys(weights, type: weightType, count: N, f32KeyType: keyType, pool: pool)
            keyHolder = wk
            keys = wk.pointer
            indices = false
        } else {
            throw missingWeights()
        }
        // The keys are the weights themselves: their hash comes out of the scatter pass.
        let keysAreWeights = weightType.is16Bit && weights != nil && UnsafeRawPointer(keys) == weights
        if weightType.is16Bit, let weights, !keysAreWeights {
            try checkWeights(KeyPasses.hash(weights.assumingMemoryBound(to: UInt16.self), partitions: P,
                                            elementsPerPartition: E, pool: pool))
        }
        let slots: [[UInt16]] = hists.map { h in indices ? (0..<h.distinctCount).map { UInt16($0) } : h.keys }
        let (G, keysHash) = KeyPasses.scatterGradients(keys, slots: slots, elementsPerPartition: E, pool: pool,
                                                       grad: grad, gradType: gradType, hashing: keysAreWeights)
        if keysAreWeights { try checkWeights(keysHash) }
        if G.contains(where: { g in (0..<g.count).contains { !g[$0].isFinite } }) {
            try rejectNonFiniteGradients(grad, gradType)
        }
        let results = try histogramAdjoints(traces, hists, gradientSums: G)
        KeyPasses.gradients(keys, partitions: P, elementsPerPartition: E, pool: pool, grad: grad, output: out,
                            type: gradType) { p, table in
            for (m, slot) in slots[p].enumerated() {
                table[Int(slot)] = SIMD2(Float(results[p].last[m]), Float(results[p].r[m]))
            }
        }
        withExtendedLifetime(keyHolder) {}  // the rounded f32 keys are read until here
    }

    /// SHARD: the whole index list, all-gathered from every rank's shard (world_size x the padded
    /// shard length entries; release with `free`), checked against the saved histograms.
    private func gatherIndexList(_ shard: SavedTensor) throws(EDKMError) -> UnsafeMutablePointer<UInt16> {
        let world = runtime.communicator.worldSize
        let (entries, overflow) = world.multipliedReportingOverflow(by: shardLength)
        guard !overflow else {
            throw EDKMError(.outOfMemory, "the gathered index list of \(world) ranks x \(shardLength) entries overflows the address space")
        }
        let send = try HeapAllocation.allocate(UInt16.self, count: Swift.max(1, shardLength), for: "the index shard to send")
        defer { free(send) }
        send.initialize(repeating: 0, count: Swift.max(1, shardLength))
        send.update(from: shard.typed(UInt16.self), count: shardRange.count)
        let all = try HeapAllocation.allocate(UInt16.self, count: Swift.max(1, entries),
                                              for: "the gathered index list (world_size x shard bytes)")
        do {
            try runtime.communicator.allGather(UnsafeRawBufferPointer(start: send, count: shardLength * 2),
                                               into: UnsafeMutableRawBufferPointer(start: all, count: entries * 2))
            runtime.countCommunicatorBytes(shardLength * 2)
            try CollectiveChecks.gatheredIndices(all, histograms: decodeHistograms(),
                                                 elementsPerPartition: geometry.elementsPerPartition, pool: runtime.pool)
        } catch {
            free(all)
            throw error
        }
        return all
    }

    private func backwardDense(_ traces: [PartitionTrace], _ grad: UnsafeRawPointer, _ out: UnsafeMutableRawPointer,
                               _ gradType: ElementType, _ weights: UnsafeRawPointer?) throws(EDKMError) {
        let P = geometry.partitions, E = geometry.elementsPerPartition, k = config.k, d = config.clusterDim
        let source: UnsafeRawPointer
        if let copy = weightCopies.first { source = UnsafeRawPointer(copy.pointer) } else if let weights { source = weights } else {
            throw missingWeights()
        }
        let width = weightType.byteWidth
        let rowsPerPartition = E / d
        let rows: [any RowBlocks] = (0..<P).map {
            DenseElementRows(base: source + $0 * E * width, type: weightType, d: d, rowCount: rowsPerPartition)
        }
        let sPointers = softmaxMaps.map { $0.typed(Float.self) }
        let saved: ((Int, Int, Int, Int) -> UnsafePointer<Float>)? = sPointers.isEmpty ? nil : { p, t, start, _ in
            UnsafePointer(sPointers[t] + (p * rowsPerPartition + start) * k)
        }
        let results = try engine.backward(rows, traces: traces, gradients: { p, start, count, scratch in
            ElementIO.loadDoubles(grad, type: gradType, from: p * E + start * d, count: count * d, into: scratch)
            return UnsafePointer(scratch)
        }, savedSoftmax: saved)
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
