import CEDKM
import Testing

/// Numerics through the C ABI: dense vs uniquified, finite differences, bad input, export.
@Suite struct ForwardBackwardTests {
    /// Dense and uniquified run the same math in different summation orders (float64
    /// accumulation either way); outputs and gradients are rounded once to float32 at the end, so
    /// they agree to a few float32 ulps of the largest value: 1e-5 relative leaves margin for the
    /// float32 (h, r) tables of the uniquified gather.
    @Test(arguments: [(EDKM_DTYPE_F16, UInt32(2), UInt32(0)), (EDKM_DTYPE_BF16, UInt32(3), UInt32(0)),
                      (EDKM_DTYPE_F16, UInt32(4), UInt32(16)), (EDKM_DTYPE_BF16, UInt32(1), UInt32(8)),
                      (EDKM_DTYPE_F16, UInt32(6), UInt32(0)), (EDKM_DTYPE_F16, UInt32(8), UInt32(0))])
    func denseEqualsUniquified(dtype: edkm_dtype, bits: UInt32, group: UInt32) {
        var rng = Gaussian(seed: UInt64(bits) * 31 + UInt64(group))
        let rows = 64, cols = 96, n = rows * cols
        let w = rng.floats(n, std: 0.02)
        let bitsW = dtype == EDKM_DTYPE_F16 ? f16Bits(w) : bf16Bits(w)
        let grad = rng.floats(n, std: 1)
        var results: [Step] = []
        for alg in [EDKM_ALGORITHM_DENSE, EDKM_ALGORITHM_UNIQUIFIED] {
            let rt = makeRuntime()
            let l = makeLayer(rt, [Int64(rows), Int64(cols)], layerConfig(bits: bits, tau: 1e-5, group: group, algorithm: alg))
            if let s = forwardBackward(l, weights: bitsW, dtype: dtype, count: n, grad: grad) { results.append(s) }
            edkm_layer_destroy(l)
            edkm_runtime_destroy(rt)
        }
        #expect(results.count == 2)
        if results.count == 2 {
            #expect(maxRelativeDifference(results[1].output, results[0].output) < 1e-5)
            #expect(maxRelativeDifference(results[1].gradient, results[0].gradient) < 1e-5)
            #expect(results[0].gradient.allSatisfy { $0.isFinite })
        }
    }

    /// f32 weights keyed by rounding to bf16 equal the dense path on the bf16-rounded weights.
    @Test func f32WithRoundedKeys() {
        var rng = Gaussian(seed: 5)
        let n = 32 * 32
        let w = rng.floats(n, std: 0.05)
        let rounded = bf16Bits(w).map { Float(bitPattern: UInt32($0) << 16) }
        let grad = rng.floats(n, std: 1)
        let rt = makeRuntime()
        var c = layerConfig(bits: 3, tau: 1e-4, algorithm: EDKM_ALGORITHM_UNIQUIFIED)
        c.f32_key_dtype = Int32(EDKM_DTYPE_BF16.rawValue)
        let keyed = makeLayer(rt, [32, 32], c)
        let dense = makeLayer(rt, [32, 32], layerConfig(bits: 3, tau: 1e-4, algorithm: EDKM_ALGORITHM_DENSE))
        let c0: [Float] = [-0.08, -0.05, -0.02, 0, 0.01, 0.03, 0.06, 0.1]
        check(edkm_layer_set_centroids(keyed, c0, 8))
        check(edkm_layer_set_centroids(dense, c0, 8))
        let a = forwardBackward(keyed, weights: w, dtype: EDKM_DTYPE_F32, count: n, grad: grad)
        let b = forwardBackward(dense, weights: rounded, dtype: EDKM_DTYPE_F32, count: n, grad: grad)
        if let a, let b {
            #expect(maxRelativeDifference(a.output, b.output) < 1e-5)
            #expect(maxRelativeDifference(a.gradient, b.gradient) < 1e-5)
        }
        edkm_layer_destroy(keyed)
        edkm_layer_destroy(dense)
        edkm_runtime_destroy(rt)
    }

    /// Central finite differences of L = sum_i g_i w~_i on a small f32 tensor with O(1) weights
    /// and a smooth temperature. Forward values are float32 (rounding ~6e-8 relative), so with
    /// h = 1e-3 the difference quotient carries ~1e-4 noise: tolerance 2e-3 of the largest gradient.
    @Test(arguments: [(UInt32(1), EDKM_ALGORITHM_DENSE), (UInt32(1), EDKM_ALGORITHM_UNIQUIFIED), (UInt32(2), EDKM_ALGORITHM_DENSE)])
    func finiteDifferences(d: UInt32, algorithm: edkm_algorithm) {
        var rng = Gaussian(seed: 11)
        let n = 24
        var w = rng.floats(n, std: 0.6)
        let grad = rng.floats(n, std: 1)
        let rt = makeRuntime()
        var cfg = layerConfig(bits: 2, tau: 0.08, d: d, algorithm: algorithm)
        cfg.epsilon = 0  // fixed iteration count: the early stop is not differentiable
        cfg.f32_key_dtype = Int32(EDKM_DTYPE_F16.rawValue)
        if algorithm == EDKM_ALGORITHM_UNIQUIFIED { w = fromF16(f16Bits(w)) }
        let l = makeLayer(rt, [4, 6], cfg)
        let c0: [Float] = d == 1 ? [-0.7, -0.1, 0.3, 0.9] : [-0.5, -0.5, -0.2, 0.4, 0.3, -0.1, 0.8, 0.6]
        check(edkm_layer_set_centroids(l, c0, c0.count))
        func loss(_ x: [Float]) -> Double {
            check(edkm_layer_set_centroids(l, c0, c0.count))
            var out = [Float](repeating: 0, count: n)
            check(edkm_layer_forward(l, x, EDKM_DTYPE_F32, n, &out, EDKM_DTYPE_F32, nil))
            return zip(out, grad).reduce(0) { $0 + Double($1.0) * Double($1.1) }
        }
        check(edkm_layer_set_centroids(l, c0, c0.count))
        let analytic = forwardBackward(l, weights: w, dtype: EDKM_DTYPE_F32, count: n, grad: grad)!.gradient
        let h: Float = algorithm == EDKM_ALGORITHM_UNIQUIFIED ? 1.0 / 256 : 1e-3  // f16-exact steps near these values
        var numeric = [Float](repeating: 0, count: n)
        for i in 0..<n {
            var plus = w, minus = w
            plus[i] += h
            minus[i] -= h
            numeric[i] = Float((loss(plus) - loss(minus)) / Double(plus[i] - minus[i]))
        }
        #expect(maxRelativeDifference(analytic, numeric) < 2e-3, "\(analytic) vs \(numeric)")
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    @Test func degenerateTensors() {
        let rt = makeRuntime()
        // One distinct value: every output equals it; gradients finite.
        let l = makeLayer(rt, [8, 8], layerConfig(bits: 3))
        let w = [UInt16](repeating: Float16(0.25).bitPattern, count: 64)
        let s = forwardBackward(l, weights: w, dtype: EDKM_DTYPE_F16, count: 64, grad: [Float](repeating: 1, count: 64))
        #expect(s?.output.allSatisfy { abs($0 - 0.25) < 1e-6 } == true)
        #expect(s?.gradient.allSatisfy { $0.isFinite } == true)
        // Fewer distinct values than centroids, and collapsed initial centroids.
        let l2 = makeLayer(rt, [8, 8], layerConfig(bits: 4, tau: 1e-4))
        let w2 = (0..<64).map { Float16(Float($0 % 3) * 0.1).bitPattern }
        var collapsed = (0..<16).map { Float($0) * 0.02 }
        collapsed[5] = collapsed[4]
        collapsed[9] = collapsed[8]  // 14 distinct of 16
        check(edkm_layer_set_centroids(l2, collapsed, 16))
        let s2 = forwardBackward(l2, weights: w2, dtype: EDKM_DTYPE_F16, count: 64, grad: [Float](repeating: 1, count: 64))
        #expect(s2?.output.allSatisfy { $0.isFinite } == true)
        #expect(s2?.gradient.allSatisfy { $0.isFinite } == true)
        var c = [Float](repeating: 0, count: 16)
        check(edkm_layer_get_centroids(l2, &c, 16))
        #expect(c.allSatisfy { $0.isFinite })
        edkm_layer_destroy(l)
        edkm_layer_destroy(l2)
        edkm_runtime_destroy(rt)
    }

    @Test func badInputWritesNothing() {
        let rt = makeRuntime()
        let l = makeLayer(rt, [8, 8], layerConfig(bits: 2))
        var w = [Float](repeating: 0.5, count: 64)
        for i in 0..<64 { w[i] = Float(i) / 64 }
        w[17] = .nan
        var out = [Float](repeating: -7, count: 64)
        var state: OpaquePointer? = nil
        #expect(edkm_layer_forward(l, w, EDKM_DTYPE_F32, 64, &out, EDKM_DTYPE_F32, &state) == EDKM_ERR_NON_FINITE)
        #expect(lastError().contains("17"))
        w[17] = .infinity
        #expect(edkm_layer_forward(l, w, EDKM_DTYPE_F32, 64, &out, EDKM_DTYPE_F32, &state) == EDKM_ERR_NON_FINITE)
        w[17] = 0.1
        #expect(edkm_layer_forward(l, w, EDKM_DTYPE_F32, 63, &out, EDKM_DTYPE_F32, &state) == EDKM_ERR_SHAPE)
        #expect(edkm_layer_forward(l, w, edkm_dtype(rawValue: 9), 64, &out, EDKM_DTYPE_F32, &state) == EDKM_ERR_DTYPE)
        #expect(edkm_layer_forward(l, w, EDKM_DTYPE_F32, 64, &out, EDKM_DTYPE_F16, &state) == EDKM_ERR_DTYPE)
        #expect(out.allSatisfy { $0 == -7 } && state == nil)
        var c = [Float](repeating: 0, count: 4)
        #expect(edkm_layer_get_centroids(l, &c, 4) == EDKM_ERR_STATE)  // no centroids yet
        #expect(edkm_layer_set_centroids(l, [1, 2, .nan, 3], 4) == EDKM_ERR_NON_FINITE)
        #expect(edkm_layer_set_centroids(l, [1, 2, 3], 3) == EDKM_ERR_SHAPE)
        // Backward twice, changed weights, missing weights, NaN gradients.
        check(edkm_layer_forward(l, w, EDKM_DTYPE_F32, 64, &out, EDKM_DTYPE_F32, &state))
        var g = [Float](repeating: 1, count: 64)
        var gin = [Float](repeating: -7, count: 64)
        #expect(edkm_saved_state_backward(state, g, &gin, EDKM_DTYPE_F32, 64, nil) == EDKM_ERR_STATE)
        var changed = w
        changed[3] += 0.01
        #expect(edkm_saved_state_backward(state, g, &gin, EDKM_DTYPE_F32, 64, changed) == EDKM_ERR_WEIGHTS_CHANGED)
        g[5] = .nan
        #expect(edkm_saved_state_backward(state, g, &gin, EDKM_DTYPE_F32, 64, w) == EDKM_ERR_NON_FINITE)
        #expect(gin.allSatisfy { $0 == -7 })
        g[5] = 1
        check(edkm_saved_state_backward(state, g, &gin, EDKM_DTYPE_F32, 64, w))
        #expect(edkm_saved_state_backward(state, g, &gin, EDKM_DTYPE_F32, 64, w) == EDKM_ERR_STATE)
        #expect(lastError().contains("already"))
        edkm_saved_state_destroy(state)
        #expect(edkm_saved_state_backward(state, g, &gin, EDKM_DTYPE_F32, 64, w) == EDKM_ERR_INVALID_HANDLE)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// Export: at most 2^bits distinct values, unpack = LUT lookup of the argmin, every bit width.
    @Test(arguments: 1...8)
    func exportAndUnpack(bits: Int) {
        var rng = Gaussian(seed: UInt64(bits))
        let rows = 32, cols = 40, n = rows * cols
        let w = f16Bits(rng.floats(n, std: 0.02))
        let rt = makeRuntime()
        let l = makeLayer(rt, [Int64(rows), Int64(cols)], layerConfig(bits: UInt32(bits), group: 8))
        check(edkm_layer_init_centroids(l, w, EDKM_DTYPE_F16, n))
        var lutCount = 0, packedBytes = 0
        check(edkm_layer_export_sizes(l, &lutCount, &packedBytes))
        #expect(lutCount == 4 << bits)
        #expect(packedBytes == 4 * ((8 * cols * bits + 7) / 8))
        var lut = [Float](repeating: 0, count: lutCount)
        var packed = [UInt8](repeating: 0xAA, count: packedBytes)
        check(edkm_layer_export(l, w, EDKM_DTYPE_F16, n, &lut, EDKM_DTYPE_F32, &packed, packedBytes))
        var dense = [Float](repeating: 0, count: n)
        check(edkm_layer_unpack(l, lut, EDKM_DTYPE_F32, packed, packedBytes, &dense, EDKM_DTYPE_F32, n))
        let k = 1 << bits
        for g in 0..<4 {
            let part = dense[(g * 8 * cols)..<((g + 1) * 8 * cols)]
            #expect(Set(part).count <= k)
            let groupLut = Array(lut[(g * k)..<((g + 1) * k)])
            // each value is the LUT entry nearest to the weight (prune bias 1e-7 is below f16 resolution here)
            for (i, v) in part.enumerated() {
                let x = Float(Float16(bitPattern: w[g * 8 * cols + i]))
                let best = groupLut.min { abs($0 - x) < abs($1 - x) }!
                #expect(abs(v - x) <= abs(best - x) + 1e-7)
            }
        }
        #expect(edkm_layer_export(l, w, EDKM_DTYPE_F16, n, &lut, EDKM_DTYPE_F32, &packed, packedBytes - 1) == EDKM_ERR_SHAPE)
        #expect(edkm_layer_export(l, w, EDKM_DTYPE_F16, n, &lut, EDKM_DTYPE_BF16, &packed, packedBytes) == EDKM_ERR_DTYPE)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// At a small temperature the soft output equals the LUT entry of the hard export.
    @Test func softOutputAtSmallTauIsTheExport() {
        var rng = Gaussian(seed: 99)
        let n = 64 * 64
        let w = f16Bits(rng.floats(n, std: 0.02))
        let rt = makeRuntime()
        let l = makeLayer(rt, [64, 64], layerConfig(bits: 3, tau: 1e-9, iterations: 1))
        check(edkm_layer_init_centroids(l, w, EDKM_DTYPE_F16, n))
        var out = [Float](repeating: 0, count: n)
        check(edkm_layer_forward(l, w, EDKM_DTYPE_F16, n, &out, EDKM_DTYPE_F32, nil))
        var lc = 0, pb = 0
        check(edkm_layer_export_sizes(l, &lc, &pb))
        var lut = [Float](repeating: 0, count: lc)
        var packed = [UInt8](repeating: 0, count: pb)
        check(edkm_layer_export(l, w, EDKM_DTYPE_F16, n, &lut, EDKM_DTYPE_F32, &packed, pb))
        var hard = [Float](repeating: 0, count: n)
        check(edkm_layer_unpack(l, lut, EDKM_DTYPE_F32, packed, pb, &hard, EDKM_DTYPE_F32, n))
        #expect(maxRelativeDifference(out, hard) < 1e-3)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// Results are bit-identical for 1 and 2 threads (fixed chunking, ordered reductions).
    @Test func deterministicAcrossThreadCounts() {
        var rng = Gaussian(seed: 3)
        let rows = 256, cols = 8192, n = rows * cols  // several 1 Mi-element chunks
        let w = bf16Bits(rng.floats(n, std: 0.02))
        let grad = rng.floats(n, std: 1)
        var steps: [Step] = []
        for threads in [UInt32(1), 2, 3] {
            let rt = makeRuntime(threads: threads)
            let l = makeLayer(rt, [Int64(rows), Int64(cols)], layerConfig(bits: 4))
            if let s = forwardBackward(l, weights: w, dtype: EDKM_DTYPE_BF16, count: n, grad: grad) { steps.append(s) }
            edkm_layer_destroy(l)
            edkm_runtime_destroy(rt)
        }
        #expect(steps.count == 3)
        #expect(steps.allSatisfy { $0.output == steps[0].output && $0.gradient == steps[0].gradient })
    }
}
