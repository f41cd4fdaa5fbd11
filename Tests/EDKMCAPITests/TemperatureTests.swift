import CEDKM
import Glibc
import Testing

/// The scale-free temperature: invariance under weight scaling, and the layer statistics.
@Suite struct TemperatureTests {
    struct Run {
        var output: [Float]
        var gradient: [Float]
        var labels: [UInt8]
        var stats: edkm_layer_stats
    }

    func run(_ w: [Float], mode: edkm_temperature_mode, tau: Double, algorithm: edkm_algorithm, grad: [Float]) -> Run? {
        let n = w.count
        let rt = makeRuntime()
        defer { edkm_runtime_destroy(rt) }
        var cfg = layerConfig(bits: 3, tau: tau, algorithm: algorithm)
        cfg.temperature_mode = Int32(mode.rawValue)
        cfg.f32_key_dtype = Int32(EDKM_DTYPE_BF16.rawValue)
        let l = makeLayer(rt, [32, Int64(n / 32)], cfg)
        defer { edkm_layer_destroy(l) }
        guard let step = forwardBackward(l, weights: w, dtype: EDKM_DTYPE_F32, count: n, grad: grad) else { return nil }
        var lc = 0, pb = 0
        check(edkm_layer_export_sizes(l, &lc, &pb))
        var lut = [Float](repeating: 0, count: lc)
        var packed = [UInt8](repeating: 0, count: pb)
        check(edkm_layer_export(l, w, EDKM_DTYPE_F32, n, &lut, EDKM_DTYPE_F32, &packed, pb))
        var s = edkm_layer_stats()
        s.struct_size = UInt32(MemoryLayout<edkm_layer_stats>.size)
        check(edkm_layer_get_stats(l, &s))
        return Run(output: step.output, gradient: step.gradient, labels: packed, stats: s)
    }

    /// Scaling the weights by a power of two scales every intermediate exactly, so in the
    /// scale-free mode outputs scale exactly, gradients and labels are bit-identical; with a
    /// non-power-of-two factor they agree to float32 rounding. The absolute mode is not invariant.
    @Test(arguments: [EDKM_ALGORITHM_DENSE, EDKM_ALGORITHM_UNIQUIFIED])
    func scaleFreeIsScaleInvariant(algorithm: edkm_algorithm) {
        var rng = Gaussian(seed: 17)
        let n = 32 * 48
        // bf16-exact values so both paths see the same weights at every scale
        let w = bf16Bits(rng.floats(n, std: 0.02)).map { Float(bitPattern: UInt32($0) << 16) }
        let grad = rng.floats(n, std: 1)
        guard let base = run(w, mode: EDKM_TEMPERATURE_SCALE_FREE, tau: 0.05, algorithm: algorithm, grad: grad) else { return }
        for alpha: Float in [0x1p-8, 0x1p6] {
            guard let scaled = run(w.map { $0 * alpha }, mode: EDKM_TEMPERATURE_SCALE_FREE, tau: 0.05, algorithm: algorithm, grad: grad)
            else { continue }
            #expect(scaled.output == base.output.map { $0 * alpha })
            #expect(scaled.gradient == base.gradient)
            #expect(scaled.labels == base.labels)
            #expect(abs(scaled.stats.effective_tau / base.stats.effective_tau - Double(alpha * alpha)) < 1e-12 * Double(alpha * alpha))
            #expect(scaled.stats.attention_entropy == base.stats.attention_entropy)
        }
        if algorithm == EDKM_ALGORITHM_DENSE {
            let alpha: Float = 3
            if let scaled = run(w.map { $0 * alpha }, mode: EDKM_TEMPERATURE_SCALE_FREE, tau: 0.05, algorithm: algorithm, grad: grad) {
                #expect(maxRelativeDifference(scaled.output, base.output.map { $0 * alpha }) < 1e-5)
                #expect(maxRelativeDifference(scaled.gradient, base.gradient) < 1e-4)
            }
        }
        // The absolute temperature depends on the scale: the same factor changes the result.
        if let a = run(w, mode: EDKM_TEMPERATURE_ABSOLUTE, tau: 1e-4, algorithm: algorithm, grad: grad),
           let b = run(w.map { $0 * 0x1p6 }, mode: EDKM_TEMPERATURE_ABSOLUTE, tau: 1e-4, algorithm: algorithm, grad: grad) {
            #expect(a.gradient != b.gradient)
        }
    }

    /// effective_tau is tau (absolute) or tau times the distortion; the entropy lies in
    /// [0, ln k] and falls as tau shrinks.
    @Test func statisticsReportTemperatureAndEntropy() {
        var rng = Gaussian(seed: 4)
        let n = 32 * 64
        let w = rng.floats(n, std: 0.02)
        let grad = rng.floats(n, std: 1)
        let k = 8.0
        guard let soft = run(w, mode: EDKM_TEMPERATURE_ABSOLUTE, tau: 1e-3, algorithm: EDKM_ALGORITHM_DENSE, grad: grad),
              let hard = run(w, mode: EDKM_TEMPERATURE_ABSOLUTE, tau: 1e-7, algorithm: EDKM_ALGORITHM_DENSE, grad: grad),
              let free = run(w, mode: EDKM_TEMPERATURE_SCALE_FREE, tau: 0.05, algorithm: EDKM_ALGORITHM_DENSE, grad: grad)
        else { return }
        #expect(soft.stats.effective_tau == 1e-3 && hard.stats.effective_tau == 1e-7)
        #expect(soft.stats.attention_entropy > 1.5 && soft.stats.attention_entropy <= log(k) + 1e-9)
        #expect(hard.stats.attention_entropy >= 0 && hard.stats.attention_entropy < 0.1)
        // sigma^2 = 3-bit k-means distortion of std 0.02 weights: about 0.035 x 0.02^2 = 1.4e-5
        #expect(free.stats.effective_tau > 0.05 * 5e-6 && free.stats.effective_tau < 0.05 * 5e-5)
    }

    /// The scale-free tau is exactly tau x the mean squared distance of the weights to their
    /// nearest initial centroid, computed here by brute force from the layer's centroids (per
    /// group, averaged over the groups as edkm_layer_stats reports it), on both algorithms.
    @Test(arguments: [EDKM_ALGORITHM_DENSE, EDKM_ALGORITHM_UNIQUIFIED])
    func scaleFreeTauIsTauTimesDistortion(algorithm: edkm_algorithm) {
        var rng = Gaussian(seed: 23)
        let rows = 32, cols = 40, groupRows = 16
        let w = bf16Bits(rng.floats(rows * cols, std: 0.05)).map { Float(bitPattern: UInt32($0) << 16) }
        let rt = makeRuntime()
        defer { edkm_runtime_destroy(rt) }
        var cfg = layerConfig(bits: 2, tau: 0.03, group: UInt32(groupRows), algorithm: algorithm)
        cfg.temperature_mode = Int32(EDKM_TEMPERATURE_SCALE_FREE.rawValue)
        cfg.f32_key_dtype = Int32(EDKM_DTYPE_BF16.rawValue)
        let l = makeLayer(rt, [Int64(rows), Int64(cols)], cfg)
        defer { edkm_layer_destroy(l) }
        check(edkm_layer_init_centroids(l, w, EDKM_DTYPE_F32, w.count))
        var c = [Float](repeating: 0, count: 2 * 4)
        check(edkm_layer_get_centroids(l, &c, c.count))
        var expected = 0.0
        let perGroup = groupRows * cols
        for g in 0..<2 {
            var sum = 0.0
            for i in 0..<perGroup {
                let x = Double(w[g * perGroup + i])
                sum += (0..<4).map { (x - Double(c[g * 4 + $0])) * (x - Double(c[g * 4 + $0])) }.min()!
            }
            expected += 0.03 * sum / Double(perGroup) / 2
        }
        var out = [Float](repeating: 0, count: w.count)
        check(edkm_layer_forward(l, w, EDKM_DTYPE_F32, w.count, &out, EDKM_DTYPE_F32, nil))
        var s = edkm_layer_stats()
        s.struct_size = UInt32(MemoryLayout<edkm_layer_stats>.size)
        check(edkm_layer_get_stats(l, &s))
        #expect(abs(s.effective_tau / expected - 1) < 1e-12, "effective_tau \(s.effective_tau), expected \(expected)")
    }

    /// Weights with at most k distinct values sit on their centroids (distortion 0): the scale falls
    /// back to the centroids' spacing, and the forward and backward stay finite.
    @Test func scaleFreeZeroDistortionFallsBackToSpacing() {
        let values: [Float] = [-0.5, -0.25, 0.25, 0.5]
        let w = (0..<256).map { values[$0 % 4] }
        let rt = makeRuntime()
        defer { edkm_runtime_destroy(rt) }
        var cfg = layerConfig(bits: 2, tau: 0.01, algorithm: EDKM_ALGORITHM_DENSE)
        cfg.temperature_mode = Int32(EDKM_TEMPERATURE_SCALE_FREE.rawValue)
        let l = makeLayer(rt, [16, 16], cfg)
        defer { edkm_layer_destroy(l) }
        let step = forwardBackward(l, weights: w, dtype: EDKM_DTYPE_F32, count: w.count, grad: [Float](repeating: 1, count: w.count))
        #expect(step.map { zip($0.output, w).allSatisfy { abs($0 - $1) < 1e-5 } } == true)  // attention floor 1e-7
        #expect(step?.gradient.allSatisfy { $0.isFinite } == true)
        var s = edkm_layer_stats()
        s.struct_size = UInt32(MemoryLayout<edkm_layer_stats>.size)
        check(edkm_layer_get_stats(l, &s))
        #expect(abs(s.effective_tau / (0.01 * 0.0625) - 1) < 1e-12)  // nearest spacings 0.25, 0.25, 0.25, 0.25
    }
}

/// Regressions found by the ABI fuzz driver.
@Suite struct FuzzRegressionTests {
    /// A constant tensor in the scale-free mode: all centroids coincide, the scale falls back to
    /// their squared norm, and outputs and gradients are finite (were NaN).
    @Test func scaleFreeConstantTensorIsFinite() {
        let rt = makeRuntime()
        var cfg = layerConfig(bits: 2, tau: 0.05)
        cfg.temperature_mode = Int32(EDKM_TEMPERATURE_SCALE_FREE.rawValue)
        let l = makeLayer(rt, [8, 8], cfg)
        let w = [UInt16](repeating: Float16(0.3).bitPattern, count: 64)
        let s = forwardBackward(l, weights: w, dtype: EDKM_DTYPE_F16, count: 64, grad: [Float](repeating: 1, count: 64))
        #expect(s?.output.allSatisfy { abs($0 - 0.3) < 1e-3 } == true)
        #expect(s?.gradient.allSatisfy { $0.isFinite } == true)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// Destroying a runtime stops its worker threads (they were never joined).
    @Test func destroyedRuntimesLeaveNoThreads() {
        func threads() -> Int { (try? FileManagerFree.count("/proc/self/task")) ?? -1 }
        let before = threads()
        for _ in 0..<40 {
            let rt = makeRuntime(threads: 3)
            edkm_runtime_destroy(rt)
        }
        #expect(threads() <= before + 2, "threads before \(before), after \(threads())")
    }

    /// Sizes beyond Int64.max (size_t from C) are errors, not traps.
    @Test func hugeCountsAreErrors() {
        let rt = makeRuntime()
        let l = makeLayer(rt, [8, 8], layerConfig(bits: 2))
        let c = [Float](repeating: 0, count: 4)
        #expect(edkm_layer_set_centroids(l, c, Int(bitPattern: UInt(1) << 63)) == EDKM_ERR_SHAPE)
        var out = [Float](repeating: 0, count: 64)
        let w = [UInt16](repeating: 0x3c00, count: 64)
        var state: OpaquePointer? = nil
        #expect(edkm_layer_forward_shard(l, w, EDKM_DTYPE_F16, Int(bitPattern: UInt(1) << 62), Int(bitPattern: UInt(1) << 62) + 5,
                                         &out, EDKM_DTYPE_F32, &state) == EDKM_ERR_SHAPE)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }
}

/// Counting directory entries without Foundation.
enum FileManagerFree {
    static func count(_ path: String) throws -> Int {
        guard let d = opendir(path) else { return -1 }
        defer { closedir(d) }
        var n = 0
        while let e = readdir(d) {
            let first = withUnsafeBytes(of: e.pointee.d_name) { $0.first ?? 0 }
            if first != UInt8(ascii: ".") { n += 1 }
        }
        return n
    }
}
