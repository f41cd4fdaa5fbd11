import Glibc

extension SavedState {
    /// dL/dw from dL/dw~ (docs/design.md, part 1 (the math)). With the forward's channel scale s
    /// (constants): dL/dw_i = (1 / s_r) [J^T (s . dL/dw~)]_i, J the clustering's Jacobian at w / s
    /// (`ChannelScaling`); the scaled gradient and the clustering's gradient are held as count
    /// floats each, and given weights are divided by s again (a copy of their type) for the
    /// clustering's checks. `weights`: the forward's weights (checked by hash), required when the
    /// state kept neither the weights nor an index list. A sharded forward's state takes this
    /// rank's slices (count = the slice's elements); its non-finite gradients are flagged in the
    /// backward's all-reduce, so every rank fails together. On error nothing is written; a state
    /// supports one backward.
    public func backward(gradOutput: UnsafeRawPointer, gradInput: UnsafeMutableRawPointer, gradType: ElementType,
                         count: Int, weights: UnsafeRawPointer?) throws(EDKMError) {
        guard let factors = channelScale else {
            return try backwardClustering(gradOutput: gradOutput, gradInput: gradInput, gradType: gradType, count: count,
                                          weights: weights)
        }
        // A call from inside a communicator callback of this runtime fails at once, before the
        // scaled copies below read the caller's buffers (as the clustering's backward does).
        try runtime.collectives.rejectReentry()
        var elements = 0..<geometry.count, sharded = false
        if case .weightShard(_, let slice, _) = contents { (elements, sharded) = (slice, true) }
        guard count == elements.count else {
            throw EDKMError(.shape, "expected \(sharded ? "this rank's " : "")\(elements.count) gradient elements, got \(sizeText(count))")
        }
        // No scan of the gradient here: a NaN or Inf in g stays one in g s (s finite and > 0),
        // which the clustering's backward rejects (its scan, or its check of the per-key sums)
        // before writing anything, with the same index and value.
        let pool = runtime.pool
        let scaling = ChannelScaling(factors: factors, rowLength: geometry.rowLength, first: elements.lowerBound)
        let scaledGrad = try HeapAllocation.allocate(Float.self, count: count, for: "the channel-scaled gradient")
        defer { free(scaledGrad) }
        scaling.multiplied(gradOutput, type: gradType, count: count, into: scaledGrad, pool: pool)
        let source = try weights.map { (w) throws(EDKMError) in try scaling.divided(w, type: weightType, count: count, pool: pool) }
        defer { if let source { free(source) } }
        let clusteringGrad = try HeapAllocation.allocate(Float.self, count: count, for: "the clustering's gradient")
        defer { free(clusteringGrad) }
        do {
            try backwardClustering(gradOutput: scaledGrad, gradInput: clusteringGrad, gradType: .f32, count: count,
                                   weights: source.map { UnsafeRawPointer($0) })
        } catch {
            // a finite gradient whose product with its factor overflows float: say so, not "grad_output is inf"
            guard error.code == .nonFinite, let bad = ElementIO.firstNonFinite(scaledGrad, type: .f32, count: count),
                  ElementIO.load(gradOutput, type: gradType, at: bad).isFinite else { throw error }
            throw EDKMError(.nonFinite, "grad_output[\(bad)] = \(ElementIO.load(gradOutput, type: gradType, at: bad)) times its row's "
                            + "channel scale factor \(scaling.factor(at: bad)) overflows float (the gradient of the scaled weights)")
        }
        scaling.apply(clusteringGrad, into: gradInput, type: gradType, count: count, multiply: false, pool: pool)
    }
}
