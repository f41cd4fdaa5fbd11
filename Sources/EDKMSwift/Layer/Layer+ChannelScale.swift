import Glibc

/// The per-output-channel scale around the clustering (`ClusteringConfig.channelScale`,
/// `ChannelScaling`): the layer clusters w / s and returns s f(w / s). The factors s are fixed
/// the first time the layer sees weights (forward, init_centroids or export: coremltools computes
/// them once, at the first forward) and stay constants, unless `setChannelScale` replaces them.
/// The centroids, the LUT of an export and `unpack`'s output are in the scaled units (multiply
/// row r by s_r for the weights). The buffer forms and sharded weights (their factors computed
/// collectively: `Layer+ShardedChannelScale.swift`) scale here; the histogram form takes the keys
/// of w / s from its caller (who divides with the layer's fixed factors, rounding as `divided`
/// does, and multiplies the soft values back: docs/device-split.md).
extension Layer {
    /// The scaling for these weights (count and finiteness checked by the caller): the layer's
    /// factors, else the factors of these weights, which the caller stores once its call has
    /// succeeded. nil without a channel scale.
    func channelScaling(for weights: UnsafeRawPointer, type: ElementType) throws(EDKMError) -> ChannelScaling? {
        guard config.channelScale != .none else { return nil }
        let stored = try exclusive { channelScale }
        let factors = stored ?? ChannelScaling.factors(of: weights, type: type, rows: geometry.rows,
                                                       rowLength: geometry.rowLength, scheme: config.channelScale,
                                                       pool: runtime.pool)
        return ChannelScaling(factors: factors, rowLength: geometry.rowLength)
    }

    /// body(the weights to cluster, the scaling): the weights themselves and nil without a
    /// channel scale, else a copy divided row-wise by the factors (freed when body returns), every
    /// element finite (weights checked finite by the caller; a quotient that overflows the dtype
    /// is rejected here with `dividedError`).
    func withChannelScaling<R>(_ weights: UnsafeRawPointer, type: ElementType,
                               _ body: (UnsafeRawPointer, ChannelScaling?) throws(EDKMError) -> R) throws(EDKMError) -> R {
        guard let scaling = try channelScaling(for: weights, type: type) else { return try body(weights, nil) }
        let divided = try scaling.divided(weights, type: type, count: geometry.count, pool: runtime.pool)
        defer { free(divided) }
        if let error = dividedError(divided, weights: weights, type: type, count: geometry.count, scaling: scaling) { throw error }
        return try body(UnsafeRawPointer(divided), scaling)
    }

    /// The error for a divided copy (v_i = w_i / s_r in the weights' dtype) holding NaN or Inf, nil
    /// when every v_i is finite: the weight itself is not finite, or a finite weight over a factor
    /// too small for it overflows the dtype (e.g. a subnormal factor set by the caller). The
    /// clustering would otherwise report the quotient as if it were the caller's weight.
    func dividedError(_ divided: UnsafeRawPointer, weights: UnsafeRawPointer, type: ElementType, count: Int,
                      scaling: ChannelScaling) -> EDKMError? {
        guard let bad = ElementIO.firstNonFinite(divided, type: type, count: count) else { return nil }
        let w = ElementIO.load(weights, type: type, at: bad)
        guard w.isFinite else { return EDKMError(.nonFinite, "weight \(bad) is \(w) (NaN or Inf)") }
        return EDKMError(.nonFinite, "weight \(bad) = \(w) divided by its row's channel scale factor \(scaling.factor(at: bad)) "
                         + "is \(ElementIO.load(divided, type: type, at: bad)) in \(type.name): the factor is too small for "
                         + "the weights (see edkm_layer_set_channel_scale)")
    }

    /// Stores the factors a call used when the layer had none yet.
    private func keepChannelScale(_ scaling: ChannelScaling?) throws(EDKMError) {
        guard let scaling else { return }
        try exclusive { if channelScale == nil { channelScale = scaling.factors } }
    }

    /// Training forward: writes w~ = s_r f(w / s) (f: the clustering, `forwardClustering`; without
    /// a channel scale w~ = f(w)) to `output` (count elements of `outputType`, which is f32 or the
    /// weights' type), makes the final centroids the layer's and, with `save`, returns what the
    /// backward needs. With a channel scale the forward holds a divided copy of the weights (count
    /// elements of their type), clusters it and multiplies each row's factor into the output as
    /// the output is gathered (one rounding, no float copy in between). On error nothing is
    /// written and the layer is unchanged.
    public func forward(weights: UnsafeRawPointer, type: ElementType, count: Int,
                        output: UnsafeMutableRawPointer, outputType: ElementType,
                        save: Bool) throws(EDKMError) -> SavedState? {
        guard config.channelScale != .none else {
            return try forwardClustering(weights: weights, type: type, count: count, output: output,
                                         outputType: outputType, save: save)
        }
        guard outputType == .f32 || outputType == type else {
            throw EDKMError(.dtype, "the output dtype must be f32 or the weights' dtype (\(type.name)), got \(outputType.name)")
        }
        // No scan of w here: a NaN or Inf weight stays one in w / s (s finite and > 0, or Inf
        // from an Inf weight), which the clustering's own check of the divided copy rejects.
        try validateWeights(weights, type: type, count: count, scan: false)
        let scaling = try channelScaling(for: weights, type: type)!
        let divided = try scaling.divided(weights, type: type, count: count, pool: runtime.pool)
        defer { free(divided) }
        let state: SavedState?
        do {
            state = try forwardClustering(weights: UnsafeRawPointer(divided), type: type, count: count, output: output,
                                          outputType: outputType, save: save, outputScaling: scaling)
        } catch {
            // a rejected quotient is reported as what it is (the success path scans nothing extra)
            guard error.code == .nonFinite else { throw error }
            throw dividedError(divided, weights: weights, type: type, count: count, scaling: scaling) ?? error
        }
        state?.channelScale = scaling.factors
        return state
    }

    /// w~ = s_r f(w / s) around a forward of the clustering, `cluster(w / s, f32 output)`, on count
    /// elements (the tensor, or a rank's slice: `scaling.first`): divides a copy of the weights,
    /// multiplies the clustered values into `output` (f32 in place; a 16-bit output through count
    /// heap floats), and once the clustering succeeded keeps the factors (layer and saved state).
    func forwardScaled(_ weights: UnsafeRawPointer, type: ElementType, count: Int, scaling: ChannelScaling,
                       output: UnsafeMutableRawPointer, outputType: ElementType,
                       cluster: (UnsafeRawPointer, UnsafeMutableRawPointer) throws(EDKMError) -> SavedState?)
        throws(EDKMError) -> SavedState? {
        let divided = try scaling.divided(weights, type: type, count: count, pool: runtime.pool)
        defer { free(divided) }
        let values = outputType == .f32 ? output.assumingMemoryBound(to: Float.self)
            : try HeapAllocation.allocate(Float.self, count: count, for: "the clustered scaled weights")
        defer { if outputType != .f32 { free(values) } }
        let state = try cluster(UnsafeRawPointer(divided), UnsafeMutableRawPointer(values))
        try keepChannelScale(scaling)
        state?.channelScale = scaling.factors
        scaling.apply(values, into: output, type: outputType, count: count, multiply: true, pool: runtime.pool)
        return state
    }

    /// Writes the LUT (the current centroids, as `lutType`: f32 or f16) and the packed labels
    /// argmin_j (||w / s - c_j||^2 - prune [j = 0]) (without a channel scale, of w; in the
    /// scale-free temperature mode prune is relative to the distortion of these weights under the
    /// layer's centroids). lutCount: the LUT buffer's size in values, checked when given (it must
    /// be `exportSizes.lutCount`).
    public func exportPalette(weights: UnsafeRawPointer, type: ElementType, count: Int,
                              lut: UnsafeMutableRawPointer, lutType: ElementType, lutCount: Int? = nil,
                              packed: UnsafeMutablePointer<UInt8>, packedBytes: Int) throws(EDKMError) {
        guard config.channelScale != .none else {
            return try exportClustering(weights: weights, type: type, count: count, lut: lut, lutType: lutType,
                                        lutCount: lutCount, packed: packed, packedBytes: packedBytes)
        }
        try validateWeights(weights, type: type, count: count)
        try withChannelScaling(weights, type: type) { (source, scaling) throws(EDKMError) in
            try exportClustering(weights: source, type: type, count: count, lut: lut, lutType: lutType,
                                 lutCount: lutCount, packed: packed, packedBytes: packedBytes)
            try keepChannelScale(scaling)
        }
    }

    /// The channel scale factors, one per row (shape[0]).
    public func getChannelScale() throws(EDKMError) -> [Float] {
        guard config.channelScale != .none else {
            throw EDKMError(.invalidArgument, "the layer has no channel scale (created with channel_scale NONE)")
        }
        return try exclusive { () throws(EDKMError) -> [Float] in
            guard let factors = channelScale else {
                throw EDKMError(.state, "the layer has no channel scale yet: run a forward, init_centroids or export first, or set it")
            }
            return factors
        }
    }

    /// Replaces the channel scale factors: one per row (shape[0]), each finite and > 0.
    public func setChannelScale(_ values: UnsafeBufferPointer<Float>) throws(EDKMError) {
        guard config.channelScale != .none else {
            throw EDKMError(.invalidArgument, "the layer has no channel scale (created with channel_scale NONE)")
        }
        try ChannelScaling.validate(values, rows: geometry.rows)
        let factors = Array(values)
        try exclusive { channelScale = factors }
    }
}
