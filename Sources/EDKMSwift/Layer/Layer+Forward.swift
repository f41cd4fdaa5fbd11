import EDKMNumerics
import Glibc

extension Layer {
    /// The algorithm a forward runs for weights of `type` under the runtime's saved mode.
    func resolvedAlgorithm(for type: ElementType, saving: Bool) throws(EDKMError) -> ClusteringConfig.Algorithm {
        let uniquifiable = config.clusterDim == 1 && (type.is16Bit || config.f32KeyType != .f32)
        var algorithm: ClusteringConfig.Algorithm
        switch config.algorithm {
        case .dense: algorithm = .dense
        case .uniquified:
            guard uniquifiable else {
                throw EDKMError(.dtype, "the uniquified algorithm needs 16-bit keys: f16/bf16 weights, or f32 with f32_key_dtype set")
            }
            algorithm = .uniquified
        case .automatic: algorithm = uniquifiable ? .uniquified : .dense
        }
        // The DKM, marshal and dedup rows of the ablation keep N x k maps: the dense form.
        if saving && runtime.options.savedMode.keepsDenseMaps { algorithm = .dense }
        return algorithm
    }

    /// The forward of the clustering itself (`forward` without the channel scale): writes
    /// w~ = A^{T-1} c^T to `output` (count elements of `outputType`, which is f32 or the weights'
    /// type), makes c^T the layer's centroids and, with `save`, returns what the backward needs.
    /// With `outputScaling` (the weights are w / s, divided by these factors) writes s_r w~ instead,
    /// rounded once, and keeps the factors as the layer's when it has none yet.
    /// On error nothing is written and the layer is unchanged.
    func forwardClustering(weights: UnsafeRawPointer, type: ElementType, count: Int,
                        output: UnsafeMutableRawPointer, outputType: ElementType,
                        save: Bool, outputScaling: ChannelScaling? = nil) throws(EDKMError) -> SavedState? {
        guard outputType == .f32 || outputType == type else {
            throw EDKMError(.dtype, "the output dtype must be f32 or the weights' dtype (\(type.name)), got \(outputType.name)")
        }
        let algorithm = try resolvedAlgorithm(for: type, saving: save)
        let scanned = !(algorithm == .uniquified && type.is16Bit)
        try validateWeights(weights, type: type, count: count, scan: scanned)
        return try exclusive { () throws(EDKMError) -> SavedState? in
            if centroids == nil && !scanned { try rejectNonFinite(weights, type: type) }  // before initialising from them
            var initial: [[Float]]
            if let current = centroids { initial = current } else { initial = try computeInitialCentroids(weights, type: type) }
            let c0 = initialRows(initial)
            let run: ForwardRun
            if algorithm == .uniquified {
                run = try forwardUniquified(weights, type: type, initial: c0, save: save)
            } else {
                run = try forwardDense(weights, type: type, initial: c0, save: save)
            }
            let entropy = run.writeOutput(output, outputType, outputScaling)
            if let outputScaling, channelScale == nil { channelScale = outputScaling.factors }
            recordForward(run.traces, distinctValues: run.distinctValues, algorithm: algorithm, entropy: entropy)
            return run.saved
        }
    }

    /// The starting centroids as float64 rows, collapsed ones re-spread first
    /// (`respreadDuplicates`), made in parallel over partitions.
    func initialRows(_ initial: [[Float]]) -> [[Double]] {
        let k = config.k, d = config.clusterDim
        return runtime.pool.parallelMap(initial.count) { p in
            var c = initial[p]
            CentroidInitialization.respreadDuplicates(&c, k: k, d: d)
            return c.map { Double($0) }
        }
    }

    /// The result of a forward before its output is written.
    struct ForwardRun {
        var traces: [PartitionTrace]
        var distinctValues: Int
        var saved: SavedState?
        /// Writes the output (with a scaling: each value times its row's factor, rounded once);
        /// returns sum over vectors of the last softmax's entropy (nats).
        var writeOutput: (UnsafeMutableRawPointer, ElementType, ChannelScaling?) -> Double
    }

    var engine: DKMEngine { DKMEngine(config: config, pool: runtime.pool) }

    /// The temperature, prune bias and stop tolerance of each partition for its rows (n_p weight
    /// vectors each) and initial centroids; the scale-free mode measures each partition's
    /// distortion (one extra pass over the rows).
    /// A temperature whose reciprocal overflows (tau_eff below about 5.6e-309: a subnormal tau, or
    /// a scale-free factor times a tiny distortion) is rejected: the softmax exp(-(D - min D)/tau)
    /// would be 0 x Inf = NaN on the nearest centroid.
    func effectiveParameters(_ rows: [any RowBlocks], initial c0: [[Double]], vectors: Int,
                             checkTemperature: Bool = true, inertia known: [Double]? = nil) throws(EDKMError) -> [EffectiveParameters] {
        // `known`: engine.inertia(rows, centroids: c0), computed by the caller (scale-free mode).
        let inertia = config.temperatureMode == .scaleFree ? known ?? engine.inertia(rows, centroids: c0)
                                                            : [Double](repeating: 0, count: c0.count)
        let config = config
        let parameters = runtime.pool.parallelMap(c0.count) {
            EffectiveParameters(config: config, initial: c0[$0], distortion: inertia[$0] / Double(vectors), vectors: vectors)
        }
        for (p, parameter) in parameters.enumerated() where checkTemperature && !(parameter.tau > 0 && (1 / parameter.tau).isFinite) {
            throw EDKMError(.invalidArgument, "the effective temperature of partition \(p) is \(parameter.tau) (tau \(config.tau) in the \(config.temperatureMode == .scaleFree ? "scale-free" : "absolute") mode): its reciprocal overflows, the softmax would be NaN; use a larger tau")
        }
        return parameters
    }

    // MARK: uniquified

    private func forwardUniquified(_ weights: UnsafeRawPointer, type: ElementType, initial: [[Double]],
                                   save: Bool) throws(EDKMError) -> ForwardRun {
        let pool = runtime.pool
        let P = geometry.partitions, E = geometry.elementsPerPartition
        let keys = try WeightKeys(weights, type: type, count: geometry.count, f32KeyType: config.f32KeyType, pool: pool)
        let (hists, keysHash) = KeyPasses.histograms(keys.pointer, partitions: P, elementsPerPartition: E, pool: pool,
                                                     hashing: save && type.is16Bit)
        if let bad = KeyPasses.firstNonFiniteKey(hists, type: keys.keyType, pool: pool) {
            if type.is16Bit { try rejectNonFinite(weights, type: type) }
            throw EDKMError(.nonFinite, "an f32 weight does not fit the \(keys.keyType.name) key (key 0x\(String(bad, radix: 16))); use bf16 keys or the dense algorithm")
        }
        return try uniquifiedRun(keys, hists, elementsPerPartition: E, initial: initial, vectors: geometry.vectorsPerPartition,
                                 saving: save ? .uniquifiedWeights(weights, type, keys, keysHash: keysHash) : nil)
    }

    /// The uniquified forward from the histograms of `keys` on (shared by the buffer forward and
    /// the sharded one, whose histogram is the all-reduced one): DKM on the histograms, the saved
    /// state when `saving`, and an output that gathers each element's soft value by its key.
    /// `keys`: elementsPerPartition per histogram (partitions concatenated); `vectors`: the
    /// weights each partition's histogram counts (more than its keys for sharded weights).
    func uniquifiedRun(_ keys: WeightKeys, _ hists: [KeyHistogram], elementsPerPartition E: Int, initial: [[Double]], vectors: Int,
                       saving input: ForwardInput?) throws(EDKMError) -> ForwardRun {
        let builder = input.map { SavedStateBuilder(layer: self, input: $0, rowsPerPartition: hists.map(\.distinctCount)) }
        let core = try histogramCore(hists, keyType: keys.keyType, initial: initial, vectors: vectors, builder: builder)
        let saved = try builder?.finish(traces: core.traces, histograms: hists)
        let pool = runtime.pool, f = core.softValues, entropy = core.entropy
        return ForwardRun(traces: core.traces, distinctValues: core.distinctValues, saved: saved) { output, outputType, scaling in
            let keysPointer = keys.pointer  // the keys (a rounded copy for f32) live until the output is written
            if let scaling {
                scaling.gatherMultiplied(keysPointer, partitions: hists.count, elementsPerPartition: E, pool: pool,
                                         into: output, type: outputType) { p, table in
                    for (m, key) in hists[p].keys.enumerated() { table[Int(key)] = Float(f[p][m]) }
                }
            } else if outputType == .f32 {
                KeyPasses.gather(keysPointer, partitions: hists.count, elementsPerPartition: E, pool: pool,
                                 into: output.assumingMemoryBound(to: Float.self)) { p, table in
                    for (m, key) in hists[p].keys.enumerated() { table[Int(key)] = Float(f[p][m]) }
                }
            } else {
                let toF16 = outputType == .f16
                KeyPasses.gather(keysPointer, partitions: hists.count, elementsPerPartition: E, pool: pool,
                                 into: output.assumingMemoryBound(to: UInt16.self)) { p, table in
                    for (m, key) in hists[p].keys.enumerated() {
                        let v = Float(f[p][m])
                        table[Int(key)] = toF16 ? HalfConversion.floatToF16(v) : HalfConversion.floatToBF16(v)
                    }
                }
            }
            return entropy
        }
    }

    // MARK: dense

    private func forwardDense(_ weights: UnsafeRawPointer, type: ElementType, initial: [[Double]],
                              save: Bool) throws(EDKMError) -> ForwardRun {
        let P = geometry.partitions, E = geometry.elementsPerPartition, d = config.clusterDim
        let width = type.byteWidth
        let rowsPerPartition = E / d
        let rows: [any RowBlocks] = (0..<P).map {
            DenseElementRows(base: weights + $0 * E * width, type: type, d: d, rowCount: rowsPerPartition)
        }
        let parameters = try effectiveParameters(rows, initial: initial, vectors: rowsPerPartition)
        let builder = save ? SavedStateBuilder(layer: self, input: .denseWeights(weights, type),
                                               rowsPerPartition: [Int](repeating: rowsPerPartition, count: P)) : nil
        let traces = try engine.iterate(rows, initial: initial, parameters: parameters,
                                        prepare: builder?.prepare, mapSink: builder?.mapSink)
        let saved = try builder?.finish(traces: traces, histograms: [])
        let eng = engine
        return ForwardRun(traces: traces, distinctValues: 0, saved: saved) { output, outputType, scaling in
            var withEntropy = traces
            eng.output(rows, traces: &withEntropy) { p, start, count, values in
                let base = p * E + start * d
                if let scaling {
                    for i in 0..<(count * d) {
                        ElementIO.store(Float(values[i]) * scaling.factor(at: base + i), output, type: outputType, at: base + i)
                    }
                } else {
                    for i in 0..<(count * d) { ElementIO.store(Float(values[i]), output, type: outputType, at: base + i) }
                }
            }
            return withEntropy.reduce(0) { $0 + $1.entropySum }
        }
    }
}
