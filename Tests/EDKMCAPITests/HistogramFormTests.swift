import CEDKM
import Testing

/// The histogram form (edkm_layer_forward_histogram / edkm_saved_state_backward_histogram)
/// against the buffer form on the same weights, and its input validation.
@Suite struct HistogramFormTests {
    /// Per partition, the distinct keys (ascending), their counts and each element's slot, computed
    /// here independently of the library (a dictionary count, then a sort).
    struct Histograms {
        var keys: [UInt16] = []
        var counts: [Double] = []
        var offsets: [Int] = [0]
        /// slot[i]: the index into keys/counts of element i's key.
        var slot: [Int] = []

        init(_ bits: [UInt16], partitions: Int) {
            let per = bits.count / partitions
            slot = [Int](repeating: 0, count: bits.count)
            for p in 0..<partitions {
                var tally: [UInt16: Int] = [:]
                for i in (p * per)..<((p + 1) * per) { tally[bits[i], default: 0] += 1 }
                let sorted = tally.keys.sorted()
                var index: [UInt16: Int] = [:]
                for key in sorted {
                    index[key] = keys.count
                    keys.append(key)
                    counts.append(Double(tally[key]!))
                }
                for i in (p * per)..<((p + 1) * per) { slot[i] = index[bits[i]]! }
                offsets.append(keys.count)
            }
        }

        var partitions: Int { offsets.count - 1 }
        var total: Int { keys.count }

        /// G per slot: the gradients summed per key in element order (as the buffer form sums them).
        func sums(_ grad: [Float]) -> [Double] {
            var g = [Double](repeating: 0, count: total)
            for (i, s) in slot.enumerated() { g[s] += Double(grad[i]) }
            return g
        }
    }

    func layerStats(_ l: OpaquePointer) -> edkm_layer_stats {
        var s = edkm_layer_stats()
        s.struct_size = UInt32(MemoryLayout<edkm_layer_stats>.size)
        check(edkm_layer_get_stats(l, &s), "layer_get_stats")
        return s
    }

    func savedBytes(_ state: OpaquePointer?) -> UInt64 {
        var b: UInt64 = 0
        check(edkm_saved_state_bytes(state, &b), "saved_state_bytes")
        return b
    }

    /// Two training steps each way on the same weights and upstream gradients. Forward: gathering
    /// the soft values back to the weights and rounding to float gives the buffer form's f32
    /// output bit for bit (same engine, same histogram order). Backward: fma(g, float(h),
    /// float(r)) in float32 is the buffer form's f32 gradient bit for bit, and the float64
    /// g h + r is within 1e-6 of the largest gradient (the buffer form rounds h and r to float32
    /// once: ~6e-8 relative each). Statistics are equal, and so are the saved bytes but for the
    /// buffer form's O(N) index list under UNIQUIFY.
    static let comparisons: [(edkm_dtype, UInt32, edkm_temperature_mode, edkm_saved_mode)] = [
        (EDKM_DTYPE_F16, 0, EDKM_TEMPERATURE_ABSOLUTE, EDKM_SAVED_HISTOGRAM),
        (EDKM_DTYPE_BF16, 0, EDKM_TEMPERATURE_SCALE_FREE, EDKM_SAVED_HISTOGRAM),
        (EDKM_DTYPE_F16, 8, EDKM_TEMPERATURE_SCALE_FREE, EDKM_SAVED_HISTOGRAM),
        (EDKM_DTYPE_BF16, 16, EDKM_TEMPERATURE_ABSOLUTE, EDKM_SAVED_HISTOGRAM),
        (EDKM_DTYPE_F16, 0, EDKM_TEMPERATURE_SCALE_FREE, EDKM_SAVED_UNIQUIFY),
        (EDKM_DTYPE_BF16, 8, EDKM_TEMPERATURE_ABSOLUTE, EDKM_SAVED_UNIQUIFY)]

    // Indices, not tuples, as arguments: Swift Testing names tuple and enum arguments through
    // swift_getMangledTypeName, which the ASan/TSan test runs report as a bad free.
    @Test(arguments: comparisons.indices)
    func equalsBufferForm(_ index: Int) {
        let (dtype, group, temperature, mode) = Self.comparisons[index]
        var rng = Gaussian(seed: UInt64(dtype.rawValue) * 7 + UInt64(group) + UInt64(mode.rawValue) * 100)
        let rows = 64, cols = 96, n = rows * cols
        let w = rng.floats(n, std: 0.02)
        let bits = dtype == EDKM_DTYPE_F16 ? f16Bits(w) : bf16Bits(w)
        var cfg = layerConfig(bits: 3, tau: temperature == EDKM_TEMPERATURE_ABSOLUTE ? 1e-5 : 0.1, group: group)
        cfg.temperature_mode = Int32(temperature.rawValue)
        let rtBuffer = makeRuntime(mode: mode), rtHist = makeRuntime(mode: mode)
        let buffer = makeLayer(rtBuffer, [Int64(rows), Int64(cols)], cfg)
        let hist = makeLayer(rtHist, [Int64(rows), Int64(cols)], cfg)
        let H = Histograms(bits, partitions: group == 0 ? 1 : rows / Int(group))
        for step in 0..<2 {
            let grad = rng.floats(n, std: 1)
            var out = [Float](repeating: 0, count: n)
            var bufferState: OpaquePointer? = nil
            check(edkm_layer_forward(buffer, bits, dtype, n, &out, EDKM_DTYPE_F32, &bufferState), "buffer forward")
            var soft = [Double](repeating: .nan, count: H.total)
            var histState: OpaquePointer? = nil
            check(edkm_layer_forward_histogram(hist, dtype, H.keys, H.counts, H.offsets, H.partitions, &soft, &histState),
                  "histogram forward")
            let gathered = H.slot.map { Float(soft[$0]) }
            #expect(gathered.map(\.bitPattern) == out.map(\.bitPattern), "step \(step): forward bit-identical")
            let a = layerStats(buffer), b = layerStats(hist)
            #expect(a.iterations == b.iterations && a.distinct_values == b.distinct_values && a.algorithm == b.algorithm)
            #expect(a.inertia == b.inertia && a.effective_tau == b.effective_tau && a.attention_entropy == b.attention_entropy)
            #expect(b.distinct_values == UInt64(H.total))
            // The same U-sized data; UNIQUIFY's buffer form also keeps its N-entry 16-bit index list.
            let indexList = mode == EDKM_SAVED_UNIQUIFY ? UInt64(2 * n) : 0
            #expect(savedBytes(bufferState) == savedBytes(histState) + indexList, "the same U-sized saved data")
            var gin = [Float](repeating: 0, count: n)
            check(edkm_saved_state_backward(bufferState, grad, &gin, EDKM_DTYPE_F32, n, bits), "buffer backward")
            var h = [Double](repeating: .nan, count: H.total), r = [Double](repeating: .nan, count: H.total)
            check(edkm_saved_state_backward_histogram(histState, H.sums(grad), H.total, &h, &r), "histogram backward")
            let fused = (0..<n).map { i in Float(r[H.slot[i]]).addingProduct(grad[i], Float(h[H.slot[i]])) }
            #expect(fused.map(\.bitPattern) == gin.map(\.bitPattern), "step \(step): float32 gradient bit-identical")
            let exact = (0..<n).map { i in Float(Double(grad[i]) * h[H.slot[i]] + r[H.slot[i]]) }
            #expect(maxRelativeDifference(exact, gin) < 1e-6)
            #expect(gin.contains { $0 != 0 })
            edkm_saved_state_destroy(bufferState)
            edkm_saved_state_destroy(histState)
        }
        var cb = [Float](repeating: 0, count: 3 * 8 * 8 * 8), ch = cb
        var count = 0
        check(edkm_layer_centroid_count(buffer, &count))
        check(edkm_layer_get_centroids(buffer, &cb, count))
        check(edkm_layer_get_centroids(hist, &ch, count))
        #expect(cb == ch, "the same centroids after two steps")
        #expect(stats(rtHist).arena_allocated == 0, "saved states released")
        edkm_layer_destroy(buffer)
        edkm_layer_destroy(hist)
        edkm_runtime_destroy(rtBuffer)
        edkm_runtime_destroy(rtHist)
    }

    /// A valid per-tensor f16 histogram to corrupt.
    struct Valid {
        var keys: [UInt16] = [0x2000, 0x2400, 0x2800, 0x3000]  // 0.0078, 0.0156, 0.0313, 0.125
        var counts: [Double] = [16, 16, 16, 16]
        var offsets: [Int] = [0, 4]
    }

    /// Runs a forward that must fail with `expected`: a message, soft_values untouched, nothing
    /// kept in the arena, no saved state, the layer's forward count unchanged.
    func expectRejected(_ layer: OpaquePointer, _ rt: OpaquePointer, _ expected: edkm_status, _ what: String,
                        sourceLocation: SourceLocation = #_sourceLocation,
                        _ call: (UnsafeMutablePointer<Double>, UnsafeMutablePointer<OpaquePointer?>) -> edkm_status) {
        let before = stats(rt).arena_allocated
        let forwards = layerStats(layer).forwards
        var out = [Double](repeating: 42, count: 70000)
        var state: OpaquePointer? = nil
        let status = out.withUnsafeMutableBufferPointer { call($0.baseAddress!, &state) }
        #expect(status == expected, "\(what): got \(String(cString: edkm_status_name(status))) \(lastError())",
                sourceLocation: sourceLocation)
        #expect(!lastError().isEmpty, sourceLocation: sourceLocation)
        #expect(out.allSatisfy { $0 == 42 }, "\(what): output written", sourceLocation: sourceLocation)
        #expect(state == nil, sourceLocation: sourceLocation)
        #expect(stats(rt).arena_allocated == before, "\(what): arena grew", sourceLocation: sourceLocation)
        #expect(layerStats(layer).forwards == forwards, sourceLocation: sourceLocation)
    }

    @Test func hostileForwardInputs() {
        let rt = makeRuntime()
        let layer = makeLayer(rt, [8, 8], layerConfig(bits: 2))  // 64 elements, one partition
        let v = Valid()
        func run(_ x: Valid, dtype: edkm_dtype = EDKM_DTYPE_F16, partitions: Int = 1, on l: OpaquePointer? = nil)
            -> (UnsafeMutablePointer<Double>, UnsafeMutablePointer<OpaquePointer?>) -> edkm_status {
            { out, saved in edkm_layer_forward_histogram(l ?? layer, dtype, x.keys, x.counts, x.offsets, partitions, out, saved) }
        }
        expectRejected(layer, rt, EDKM_ERR_NULL_POINTER, "NULL keys") { edkm_layer_forward_histogram(layer, EDKM_DTYPE_F16, nil, v.counts, v.offsets, 1, $0, $1) }
        expectRejected(layer, rt, EDKM_ERR_NULL_POINTER, "NULL counts") { edkm_layer_forward_histogram(layer, EDKM_DTYPE_F16, v.keys, nil, v.offsets, 1, $0, $1) }
        expectRejected(layer, rt, EDKM_ERR_NULL_POINTER, "NULL offsets") { edkm_layer_forward_histogram(layer, EDKM_DTYPE_F16, v.keys, v.counts, nil, 1, $0, $1) }
        expectRejected(layer, rt, EDKM_ERR_NULL_POINTER, "NULL soft_values") { _, s in edkm_layer_forward_histogram(layer, EDKM_DTYPE_F16, v.keys, v.counts, v.offsets, 1, nil, s) }
        expectRejected(layer, rt, EDKM_ERR_INVALID_HANDLE, "bogus layer") { edkm_layer_forward_histogram(OpaquePointer(bitPattern: 0x1230), EDKM_DTYPE_F16, v.keys, v.counts, v.offsets, 1, $0, $1) }
        expectRejected(layer, rt, EDKM_ERR_DTYPE, "f32 keys", run(v, dtype: EDKM_DTYPE_F32))
        expectRejected(layer, rt, EDKM_ERR_DTYPE, "unknown dtype", run(v, dtype: edkm_dtype(rawValue: 9)))
        expectRejected(layer, rt, EDKM_ERR_SHAPE, "two histograms for one partition", run(Valid(offsets: [0, 2, 4]), partitions: 2))
        expectRejected(layer, rt, EDKM_ERR_SHAPE, "zero partitions", run(v, partitions: 0))
        expectRejected(layer, rt, EDKM_ERR_INVALID_ARGUMENT, "offsets[0] != 0", run(Valid(offsets: [1, 4])))
        expectRejected(layer, rt, EDKM_ERR_SHAPE, "empty partition", run(Valid(offsets: [0, 0])))
        expectRejected(layer, rt, EDKM_ERR_SHAPE, "U > 65,536", run(Valid(offsets: [0, 65537])))
        expectRejected(layer, rt, EDKM_ERR_SHAPE, "offsets going back (size_t wrap)", run(Valid(offsets: [0, -1])))
        expectRejected(layer, rt, EDKM_ERR_INVALID_ARGUMENT, "duplicate key", run(Valid(keys: [0x2000, 0x2400, 0x2400, 0x3000])))
        expectRejected(layer, rt, EDKM_ERR_INVALID_ARGUMENT, "keys not increasing", run(Valid(keys: [0x2400, 0x2000, 0x2800, 0x3000])))
        expectRejected(layer, rt, EDKM_ERR_INVALID_ARGUMENT, "negative values before positive are fine, unsigned order is not",
                       run(Valid(keys: [0xA000, 0x2000, 0x2800, 0x3000])))
        expectRejected(layer, rt, EDKM_ERR_NON_FINITE, "f16 Inf key", run(Valid(keys: [0x2000, 0x2400, 0x2800, 0x7c00])))
        expectRejected(layer, rt, EDKM_ERR_NON_FINITE, "f16 NaN key", run(Valid(keys: [0x2000, 0x2400, 0x2800, 0x7e00])))
        expectRejected(layer, rt, EDKM_ERR_NON_FINITE, "bf16 Inf key",
                       run(Valid(keys: [0x3c00, 0x3c80, 0x3d00, 0x7f80]), dtype: EDKM_DTYPE_BF16))
        expectRejected(layer, rt, EDKM_ERR_NON_FINITE, "NaN count", run(Valid(counts: [16, .nan, 16, 16])))
        expectRejected(layer, rt, EDKM_ERR_NON_FINITE, "Inf count", run(Valid(counts: [16, .infinity, 16, 16])))
        expectRejected(layer, rt, EDKM_ERR_INVALID_ARGUMENT, "negative count", run(Valid(counts: [33, -1, 16, 16])))
        expectRejected(layer, rt, EDKM_ERR_INVALID_ARGUMENT, "zero count", run(Valid(counts: [32, 0, 16, 16])))
        expectRejected(layer, rt, EDKM_ERR_INVALID_ARGUMENT, "fractional count", run(Valid(counts: [15.5, 16.5, 16, 16])))
        expectRejected(layer, rt, EDKM_ERR_SHAPE, "counts add up to 63", run(Valid(counts: [16, 15, 16, 16])))
        expectRejected(layer, rt, EDKM_ERR_SHAPE, "counts add up to 65", run(Valid(counts: [16, 17, 16, 16])))
        var vcfg = layerConfig(bits: 1, d: 2)
        let vectors = makeLayer(rt, [8, 8], vcfg)
        expectRejected(vectors, rt, EDKM_ERR_INVALID_ARGUMENT, "cluster_dim 2", run(v, on: vectors))
        vcfg = layerConfig(bits: 2, algorithm: EDKM_ALGORITHM_DENSE)
        let dense = makeLayer(rt, [8, 8], vcfg)
        expectRejected(dense, rt, EDKM_ERR_INVALID_ARGUMENT, "dense algorithm", run(v, on: dense))
        let grouped = makeLayer(rt, [8, 8], layerConfig(bits: 2, group: 4))  // 2 partitions of 32
        expectRejected(grouped, rt, EDKM_ERR_SHAPE, "one histogram for two partitions", run(v, on: grouped))
        expectRejected(grouped, rt, EDKM_ERR_SHAPE, "grouped counts of the whole tensor",
                       run(Valid(counts: [32, 32, 32, 32], offsets: [0, 2, 4]), partitions: 2, on: grouped))
        // The same grouped histograms with correct counts are accepted.
        var ok = [Double](repeating: 0, count: 4)
        check(edkm_layer_forward_histogram(grouped, EDKM_DTYPE_F16, v.keys, [16, 16, 16, 16], [0, 2, 4], 2, &ok, nil))
        #expect(ok.allSatisfy { $0.isFinite && $0 > 0 })
        // A budget too small for the saved state: nothing kept, the layer unchanged.
        let tight = makeRuntime(budget: 64)
        let small = makeLayer(tight, [8, 8], layerConfig(bits: 2))
        expectRejected(small, tight, EDKM_ERR_BUDGET_EXCEEDED, "budget", run(v, on: small))
        var c = [Float](repeating: 0, count: 4)
        #expect(edkm_layer_get_centroids(small, &c, 4) == EDKM_ERR_STATE, "still no centroids")
        for l in [vectors, dense, grouped, small, layer] { edkm_layer_destroy(l) }
        edkm_runtime_destroy(tight)
        edkm_runtime_destroy(rt)
    }

    /// The backward's hostile inputs: wrong count, NULLs, non-finite sums (state stays usable),
    /// a second backward, and each form's backward on the other form's state.
    @Test func hostileBackwardInputs() {
        let rt = makeRuntime()
        let layer = makeLayer(rt, [8, 8], layerConfig(bits: 2))
        let v = Valid()
        var soft = [Double](repeating: 0, count: 4)
        var state: OpaquePointer? = nil
        check(edkm_layer_forward_histogram(layer, EDKM_DTYPE_F16, v.keys, v.counts, v.offsets, 1, &soft, &state))
        var h = [Double](repeating: 42, count: 5), r = h
        func untouched() -> Bool { h.allSatisfy { $0 == 42 } && r.allSatisfy { $0 == 42 } }
        let sums: [Double] = [0.5, -1, 2, 0.25]
        #expect(edkm_saved_state_backward_histogram(state, sums, 3, &h, &r) == EDKM_ERR_SHAPE)
        #expect(edkm_saved_state_backward_histogram(state, sums, 5, &h, &r) == EDKM_ERR_SHAPE)
        #expect(edkm_saved_state_backward_histogram(state, nil, 4, &h, &r) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_saved_state_backward_histogram(state, sums, 4, nil, &r) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_saved_state_backward_histogram(state, sums, 4, &h, nil) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_saved_state_backward_histogram(nil, sums, 4, &h, &r) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_saved_state_backward_histogram(state, [0.5, .nan, 2, 0.25], 4, &h, &r) == EDKM_ERR_NON_FINITE)
        #expect(edkm_saved_state_backward_histogram(state, [0.5, 1, -.infinity, 0.25], 4, &h, &r) == EDKM_ERR_NON_FINITE)
        var g = [UInt16](repeating: 0, count: 64)
        #expect(edkm_saved_state_backward(state, g, &g, EDKM_DTYPE_F16, 64, nil) == EDKM_ERR_STATE, "buffer backward")
        #expect(untouched())
        check(edkm_saved_state_backward_histogram(state, sums, 4, &h, &r), "valid backward after the failures")
        #expect(h[0..<4].allSatisfy(\.isFinite) && r[0..<4].allSatisfy(\.isFinite) && h[4] == 42)
        h = [Double](repeating: 42, count: 5); r = h
        #expect(edkm_saved_state_backward_histogram(state, sums, 4, &h, &r) == EDKM_ERR_STATE, "backward twice")
        #expect(untouched())
        edkm_saved_state_destroy(state)
        // A buffer state refuses the histogram backward.
        let w = [UInt16](repeating: 0x2000, count: 32) + [UInt16](repeating: 0x3000, count: 32)
        var out = [UInt16](repeating: 0, count: 64)
        var bufferState: OpaquePointer? = nil
        check(edkm_layer_forward(layer, w, EDKM_DTYPE_F16, 64, &out, EDKM_DTYPE_F16, &bufferState))
        #expect(edkm_saved_state_backward_histogram(bufferState, sums, 2, &h, &r) == EDKM_ERR_STATE)
        edkm_saved_state_destroy(bufferState)
        #expect(stats(rt).arena_allocated == 0)
        edkm_layer_destroy(layer)
        edkm_runtime_destroy(rt)
    }

    /// h does not depend on G and r is linear in G (same forward twice from the same centroids).
    @Test func linearInGradientSums() {
        let rt = makeRuntime()
        let layer = makeLayer(rt, [8, 8], layerConfig(bits: 2, tau: 1e-3))
        let v = Valid()
        let c0: [Float] = [0.0078, 0.0156, 0.0313, 0.125]
        let sums: [Double] = [0.5, -1, 2, 0.25]
        var tables: [([Double], [Double])] = []
        for scale in [1.0, 3.0] {
            check(edkm_layer_set_centroids(layer, c0, 4))
            var soft = [Double](repeating: 0, count: 4)
            var state: OpaquePointer? = nil
            check(edkm_layer_forward_histogram(layer, EDKM_DTYPE_F16, v.keys, v.counts, v.offsets, 1, &soft, &state))
            var h = [Double](repeating: 0, count: 4), r = h
            check(edkm_saved_state_backward_histogram(state, sums.map { scale * $0 }, 4, &h, &r))
            edkm_saved_state_destroy(state)
            tables.append((h, r))
        }
        #expect(tables[0].0 == tables[1].0)
        for m in 0..<4 {
            #expect(abs(3 * tables[0].1[m] - tables[1].1[m]) <= 1e-12 * max(1, abs(tables[1].1[m])))
        }
        edkm_layer_destroy(layer)
        edkm_runtime_destroy(rt)
    }
}
