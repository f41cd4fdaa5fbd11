import EDKMNumerics

/// DKM on value histograms: the U-level core shared by the buffer form of the uniquified path
/// (which first counts the weights' 16-bit keys, then gathers the results back to every weight)
/// and the histogram form (the device split: a trainer counts and gathers on its own device and
/// hands over only the per-partition histograms and per-key gradient sums).
///
/// Per partition p with distinct keys u_m (ascending) and counts n_m (m < U_p <= 65,536):
/// forward f_m = sum_j A^{T-1}_mj c^T_j (the soft value of key m); backward, given
/// G_m = sum over the elements of key m of dL/dw~, the per-key tables h and r with
/// dL/dw_i = g_i h[m_i] + r[m_i] (docs/device-split.md).

/// The U-level result of a uniquified forward.
struct HistogramCoreRun {
    var traces: [PartitionTrace]
    /// f per partition (U_p doubles each).
    var softValues: [DoubleBuffer]
    /// sum over weights of the entropy of the last softmax row (nats).
    var entropy: Double
    var distinctValues: Int
}

/// The caller's histograms of the histogram form, validated.
struct CallerHistograms {
    var histograms: [KeyHistogram]
    /// offsets[p] ..< offsets[p + 1]: partition p's rows in the concatenated arrays.
    var offsets: [Int]
    var total: Int { offsets.last ?? 0 }
}

extension Layer {
    /// The rows the engine reads: the keys' values (as `keyType`) and counts, per partition
    /// (made in parallel over partitions).
    static func histogramRows(_ hists: [KeyHistogram], keyType: ElementType, pool: ThreadPool) -> [any RowBlocks] {
        histogramRows(hists, keyType: keyType, pool: pool, inertia: nil).rows
    }

    /// `histogramRows`, and with `inertia` (an engine and each partition's initial centroids) also
    /// `engine.inertia(rows, centroids:)` in the same pass over the rows: the same sums in the same
    /// order (rows in blocks of `engine.blockRows`, each block's sum added in block order; each row's
    /// neighbours by the search the engine uses), bit-identical, without reading the rows again.
    static func histogramRows(_ hists: [KeyHistogram], keyType: ElementType, pool: ThreadPool,
                              inertia: (engine: DKMEngine, centroids: [[Double]])?) -> (rows: [any RowBlocks], inertia: [Double]?) {
        let blockRows = inertia.map { $0.engine.blockRows(rowCounts: hists.map(\.distinctCount)) } ?? 0
        let k = inertia?.engine.config.k ?? 0
        // The values as ElementIO.keyValue gives them, through the f16 table held once.
        let made = HalfConversion.f16Table.withUnsafeBufferPointer { f16 in
            pool.parallelMap(hists.count) { p -> (any RowBlocks, Double) in
                let values = DoubleBuffer(uninitialized: hists[p].distinctCount)  // every entry written below
                let counts = DoubleBuffer(uninitialized: hists[p].distinctCount)
                var total = 0.0
                hists[p].keys.withUnsafeBufferPointer { keys in
                    hists[p].counts.withUnsafeBufferPointer { n in
                        for m in 0..<keys.count {
                            let key = keys[m]
                            values[m] = keyType == .f16 ? Double(f16[Int(key)]) : Double(Float(bitPattern: UInt32(key) << 16))
                            counts[m] = Double(n[m])
                        }
                    }
                }
                if let inertia {
                    inertia.centroids[p].sorted().withUnsafeBufferPointer { c in
                        var position = 0
                        for start in stride(from: 0, to: values.count, by: blockRows) {
                            var block = 0.0
                            for m in start..<Swift.min(values.count, start + blockRows) {
                                position = SoftKMeansKernel.lowerBound(c.baseAddress!, count: k, values[m], from: position)
                                block += counts[m] * DKMEngine.nearestSquaredDistance(values[m], sorted: c, lowerBound: position)
                            }
                            total += block
                        }
                    }
                }
                return (UniqueValueRows(valuesBuffer: values, countsBuffer: counts), total)
            }
        }
        return (made.map(\.0), inertia == nil ? nil : made.map(\.1))
    }

    /// The DKM iterations and the soft values on the histograms (the keys must be finite values of
    /// `keyType`; `vectors`: the weights each histogram counts). The builder, when saving, records
    /// what its mode keeps per iteration (UNIQUIFY/SHARD: the U x k tables).
    func histogramCore(_ hists: [KeyHistogram], keyType: ElementType, initial: [[Double]], vectors: Int,
                       builder: SavedStateBuilder?) throws(EDKMError) -> HistogramCoreRun {
        // The scale-free temperature's hard inertia in the same pass as the rows.
        let (rows, inertia) = Layer.histogramRows(hists, keyType: keyType, pool: runtime.pool,
                                                  inertia: config.temperatureMode == .scaleFree && config.clusterDim == 1
                                                      ? (engine, initial) : nil)
        let parameters = try effectiveParameters(rows, initial: initial, vectors: vectors, inertia: inertia)
        let mapSink = builder?.mapSink
        // Without maps the output replays the windows of each partition's last iteration.
        let ends = mapSink == nil ? engine.windowEnds(rows) : nil
        var traces = try engine.iterate(rows, initial: initial, parameters: parameters,
                                        prepare: builder?.prepare, mapSink: mapSink, windowEnds: ends)
        // Every row's soft value is written by the output's blocks, which cover all rows.
        let f = runtime.pool.parallelMap(hists.count) { DoubleBuffer(uninitialized: hists[$0].distinctCount) }
        engine.output(rows, traces: &traces, windowEnds: ends) { p, start, count, values in
            (f[p].pointer + start).update(from: values, count: count)
        }
        return HistogramCoreRun(traces: traces, softValues: f, entropy: traces.reduce(0) { $0 + $1.entropySum },
                                distinctValues: hists.reduce(0) { $0 + $1.distinctCount })
    }

    /// Makes the traces' final centroids the layer's and records the forward's statistics.
    func recordForward(_ traces: [PartitionTrace], distinctValues: Int, algorithm: ClusteringConfig.Algorithm,
                       entropy: Double) {
        centroids = traces.map { $0.centroids[$0.iterations].map { Float($0) } }
        stats.forwards += 1
        stats.iterations = traces.map(\.iterations).max() ?? 0
        stats.inertia = traces.reduce(0) { $0 + $1.inertia }
        stats.distinctValues = distinctValues
        stats.algorithm = algorithm
        stats.effectiveTau = traces.reduce(0) { $0 + $1.parameters.tau } / Double(traces.count)
        stats.attentionEntropy = entropy / Double(geometry.partitions * geometry.vectorsPerPartition)
    }

    // MARK: the histogram form

    /// Checks the caller's histograms: one per partition, U_p in 1...65,536 strictly increasing
    /// finite keys of `keyType`, counts positive whole numbers adding up to the partition's
    /// element count. Reads keys[0 ..< offsets[P]] and counts[0 ..< offsets[P]] only after the
    /// offsets are checked.
    func validateHistograms(keyType: ElementType, keys: UnsafePointer<UInt16>, counts: UnsafePointer<Double>,
                            offsets: UnsafePointer<Int>, partitions: Int) throws(EDKMError) -> CallerHistograms {
        guard keyType.is16Bit else {
            throw EDKMError(.dtype, "the key dtype must be f16 or bf16, got \(keyType.name)")
        }
        guard config.clusterDim == 1 else {
            throw EDKMError(.invalidArgument, "the histogram form clusters scalars: cluster_dim must be 1, the layer has \(config.clusterDim) (vectors stay on the buffer form)")
        }
        guard config.algorithm != .dense else {
            throw EDKMError(.invalidArgument, "the histogram form is the uniquified algorithm; the layer is configured with the dense one")
        }
        guard partitions == geometry.partitions else {
            throw EDKMError(.shape, "the layer has \(geometry.partitions) LUT partition(s), got \(UInt(bitPattern: partitions)) histogram(s)")
        }
        guard offsets[0] == 0 else { throw EDKMError(.invalidArgument, "partition_offsets[0] must be 0, got \(UInt(bitPattern: offsets[0]))") }
        var offs = [0]
        for p in 0..<partitions {
            let lo = offsets[p], hi = offsets[p + 1]
            // (unsigned: the offsets come from size_t)
            guard UInt(bitPattern: hi) > UInt(bitPattern: lo) && UInt(bitPattern: hi - lo) <= 65536 else {
                throw EDKMError(.shape, "partition \(p) has \(Int64(hi) - Int64(lo)) distinct keys (offsets \(UInt(bitPattern: lo))...\(UInt(bitPattern: hi))); each partition needs 1...65,536")
            }
            offs.append(hi)
        }
        let E = Double(geometry.elementsPerPartition)
        var hists: [KeyHistogram] = []
        for p in 0..<partitions {
            var h = KeyHistogram(keys: [], counts: [])
            var sum = 0.0
            for i in offs[p]..<offs[p + 1] {
                let key = keys[i], n = counts[i]
                if let last = h.keys.last, key <= last {
                    throw EDKMError(.invalidArgument, "partition \(p): keys must be strictly increasing (as unsigned bit patterns); key \(i - offs[p]) is 0x\(String(key, radix: 16)) after 0x\(String(last, radix: 16))")
                }
                guard ElementIO.keyValue(key, type: keyType).isFinite else {
                    throw EDKMError(.nonFinite, "partition \(p): key 0x\(String(key, radix: 16)) is NaN or Inf as \(keyType.name)")
                }
                guard n.isFinite else { throw EDKMError(.nonFinite, "partition \(p): count \(i - offs[p]) is \(n)") }
                guard n >= 1 && n == n.rounded() && n <= E else {
                    throw EDKMError(.invalidArgument, "partition \(p): count \(i - offs[p]) is \(n); counts must be whole numbers in 1...\(geometry.elementsPerPartition)")
                }
                sum += n
                h.keys.append(key)
                h.counts.append(UInt32(n))
            }
            guard sum == E else {
                throw EDKMError(.shape, "partition \(p): the counts add up to \(sum), the partition holds \(geometry.elementsPerPartition) elements")
            }
            hists.append(h)
        }
        return CallerHistograms(histograms: hists, offsets: offs)
    }

    /// With a channel scale, the histogram form's keys are those of the caller's w / s (rounded
    /// to the weights' dtype, as `ChannelScaling.divided` rounds it) and its soft values are in
    /// the scaled units: the caller needs the factors before it can key anything, so they must be
    /// fixed already (set, or fixed by init_centroids, a buffer forward or an export).
    private func requireFixedChannelScale() throws(EDKMError) {
        guard config.channelScale != .none, channelScale == nil else { return }
        throw EDKMError(.state, "the layer's channel scale factors are not fixed yet: the histogram form's keys are those of w / s, so fix them first (edkm_layer_set_channel_scale, edkm_layer_init_centroids, or a buffer forward)")
    }

    /// Training forward on the caller's histograms (the histogram form): writes f (offsets[P]
    /// doubles, the soft value of every key, partitions concatenated), makes c^T the layer's
    /// centroids and, with `save`, returns a saved state holding only U-sized data. A layer
    /// without centroids is initialised by optimal 1-D k-means on the histogram. On error nothing
    /// is written and the layer is unchanged.
    public func forwardHistogram(keyType: ElementType, keys: UnsafePointer<UInt16>, counts: UnsafePointer<Double>,
                                 offsets: UnsafePointer<Int>, partitions: Int,
                                 softValues: UnsafeMutablePointer<Double>, save: Bool) throws(EDKMError) -> SavedState? {
        let input = try validateHistograms(keyType: keyType, keys: keys, counts: counts, offsets: offsets,
                                           partitions: partitions)
        let hists = input.histograms
        return try exclusive { () throws(EDKMError) -> SavedState? in
            try requireFixedChannelScale()
            // In parallel over partitions; one partition: the solver's levels run in parallel.
            let config = config, pool = runtime.pool
            let solverPool = hists.count == 1 ? pool : nil
            var initial = centroids ?? pool.parallelMap(hists.count) { p in
                let h = hists[p]
                var c = CentroidInitialization.optimal1D(values: h.keys.map { ElementIO.keyValue($0, type: keyType) },
                                                         counts: h.counts.map { Double($0) }, k: config.k,
                                                         pool: solverPool).map { Float($0) }
                if config.enforceZero { CentroidInitialization.placeZeroFirst(&c, k: config.k, d: 1) }
                return c
            }
            for p in 0..<initial.count { CentroidInitialization.respreadDuplicates(&initial[p], k: config.k, d: 1) }
            let builder = save ? SavedStateBuilder(layer: self, input: .callerHistograms(keyType: keyType),
                                                   rowsPerPartition: hists.map(\.distinctCount)) : nil
            let run = try histogramCore(hists, keyType: keyType, initial: initial.map { $0.map { Double($0) } },
                                        vectors: geometry.vectorsPerPartition, builder: builder)
            let saved = try builder?.finish(traces: run.traces, histograms: hists)
            for p in 0..<partitions {
                (softValues + input.offsets[p]).update(from: run.softValues[p].pointer, count: hists[p].distinctCount)
            }
            recordForward(run.traces, distinctValues: run.distinctValues, algorithm: .uniquified, entropy: run.entropy)
            return saved
        }
    }
}

extension SavedState {
    /// The per-key tables of the backward from the per-key gradient sums G (U_p per
    /// partition): h (`last`) and r of every key; the softmax is read from `tables` when the
    /// forward kept them (UNIQUIFY/SHARD), recomputed otherwise.
    func histogramAdjoints(_ traces: [PartitionTrace], _ hists: [KeyHistogram], gradientSums G: [DoubleBuffer],
                           tables: IterationMaps?) throws(EDKMError) -> [DKMEngine.RowGradients] {
        try DKMEngine(config: config, pool: runtime.pool)
            .backward(Layer.histogramRows(hists, keyType: keyType, pool: runtime.pool), traces: traces,
                      gradients: { p, start, _, _ in UnsafePointer(G[p].pointer + start) }, savedSoftmax: tables?.savedSoftmax)
    }

    /// Backward of the histogram form: from the per-key sums of dL/dw~ (`count` = the forward's
    /// total U doubles, partitions concatenated in the forward's order) writes h and r (count
    /// doubles each), with dL/dw_i = g_i h[key_i] + r[key_i]. Non-finite sums are rejected and
    /// leave the state usable; a state supports one backward.
    public func backwardHistogram(gradientSums: UnsafePointer<Double>, count: Int,
                                  h: UnsafeMutablePointer<Double>, r: UnsafeMutablePointer<Double>) throws(EDKMError) {
        try exclusive { () throws(EDKMError) in
            guard case .histogramForm(let saved, let tables) = contents else {
                throw EDKMError(.state, "this saved state comes from a buffer forward: use edkm_saved_state_backward")
            }
            guard !isConsumed else { throw EDKMError(.state, "backward already ran on this saved state") }
            let total = saved.total
            guard count == total else {
                throw EDKMError(.shape, "expected \(total) gradient sums (the forward's distinct keys), got \(UInt(bitPattern: count))")
            }
            if let bad = (0..<count).first(where: { !gradientSums[$0].isFinite }) {
                throw EDKMError(.nonFinite, "grad_sums[\(bad)] is \(gradientSums[bad])")
            }
            let hists = saved.decode()
            var offset = 0
            let G = hists.map { hist in
                let b = DoubleBuffer(zeros: hist.distinctCount)
                b.pointer.update(from: gradientSums + offset, count: hist.distinctCount)
                offset += hist.distinctCount
                return b
            }
            let results = try histogramAdjoints(decodeTraces(), hists, gradientSums: G, tables: tables)
            offset = 0
            for (p, hist) in hists.enumerated() {
                (h + offset).update(from: results[p].last.pointer, count: hist.distinctCount)
                (r + offset).update(from: results[p].r.pointer, count: hist.distinctCount)
                offset += hist.distinctCount
            }
            markConsumed()
        }
    }
}
