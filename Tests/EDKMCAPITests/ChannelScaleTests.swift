import CEDKM
import Glibc
import Testing

/// The per-channel scale (edkm_layer_config.channel_scale) through the C ABI, against the same
/// library's unscaled layer applied to the scaled rows: w~ = s_r f(w / s) and
/// dL/dw = (1 / s_r) J_f^T (s_r dL/dw~), with f the unscaled clustering from the same centroids.
/// The float64 autograd reference and finite differences are in Tests/python/test_core_channel_scale.py.
/// Tolerance 1e-6 relative: both sides compute in float64 and round to float32; the scaled side
/// rounds twice more (the product and the quotient by s_r).
@Suite struct ChannelScaleTests {
    static let rows = 16, cols = 24

    /// Rows of very different magnitudes, row 2 all zero (factor 1), row 5 constant (MIN_MAX factor |c|).
    static func weights() -> [Float] {
        var g = Gaussian(seed: 11)
        var w = g.floats(rows * cols, std: 1)
        for r in 0..<rows {
            let magnitude = Float(pow(10.0, Double(r % 4) - 2))
            for c in 0..<cols { w[r * cols + c] *= magnitude }
        }
        for c in 0..<cols { w[2 * cols + c] = 0; w[5 * cols + c] = -0.25 }
        return w
    }

    /// The factors of MIN_MAX written here: half the row's range, else its largest magnitude, else 1.
    static func minMaxFactors(_ w: [Float]) -> [Float] {
        (0..<rows).map { r in
            let row = w[(r * cols)..<((r + 1) * cols)]
            let s = 0.5 * (row.max()! - row.min()!), peak = row.map(abs).max()!
            return s > 0 ? s : (peak > 0 ? peak : 1)
        }
    }

    @Test(arguments: [UInt32(0), 8])
    func forwardAndBackwardEqualTheUnscaledLayerOnScaledRows(group: UInt32) {
        let w = Self.weights(), n = w.count
        let s = Self.minMaxFactors(w)
        let scaledWeights = (0..<n).map { w[$0] / s[$0 / Self.cols] }
        var g = Gaussian(seed: 12)
        let grad = g.floats(n, std: 1)
        let scaledGrad = (0..<n).map { grad[$0] * s[$0 / Self.cols] }
        let partitions = group == 0 ? 1 : Self.rows / Int(group)
        let centroids = (0..<partitions).flatMap { _ in [-0.9, -0.3, 0.2, 0.8] as [Float] }
        let rt = makeRuntime()
        defer { edkm_runtime_destroy(rt) }
        var cfg = layerConfig(bits: 2, tau: 3e-3, group: group)
        cfg.channel_scale = Int32(EDKM_CHANNEL_SCALE_MIN_MAX.rawValue)
        let scaled = makeLayer(rt, [Int64(Self.rows), Int64(Self.cols)], cfg)
        let plain = makeLayer(rt, [Int64(Self.rows), Int64(Self.cols)], layerConfig(bits: 2, tau: 3e-3, group: group))
        defer { edkm_layer_destroy(scaled); edkm_layer_destroy(plain) }
        check(edkm_layer_set_centroids(scaled, centroids, centroids.count))
        check(edkm_layer_set_centroids(plain, centroids, centroids.count))
        guard let a = forwardBackward(scaled, weights: w, dtype: EDKM_DTYPE_F32, count: n, grad: grad),
              let b = forwardBackward(plain, weights: scaledWeights, dtype: EDKM_DTYPE_F32, count: n, grad: scaledGrad)
        else { return }
        var factors = [Float](repeating: 0, count: Self.rows)
        check(edkm_layer_get_channel_scale(scaled, &factors, Self.rows))
        #expect(factors == s)
        #expect(factors[2] == 1 && factors[5] == 0.25)
        let expectedOutput = (0..<n).map { b.output[$0] * s[$0 / Self.cols] }
        let expectedGradient = (0..<n).map { b.gradient[$0] / s[$0 / Self.cols] }
        #expect(maxRelativeDifference(a.output, expectedOutput) < 1e-6)
        #expect(maxRelativeDifference(a.gradient, expectedGradient) < 1e-6)
        #expect(a.output.allSatisfy(\.isFinite) && a.gradient.allSatisfy(\.isFinite))
        // the scale matters: the unscaled layer on the raw weights gives another output
        let plainRaw = makeLayer(rt, [Int64(Self.rows), Int64(Self.cols)], layerConfig(bits: 2, tau: 3e-3, group: group))
        defer { edkm_layer_destroy(plainRaw) }
        check(edkm_layer_set_centroids(plainRaw, centroids, centroids.count))
        var raw = [Float](repeating: 0, count: n)
        check(edkm_layer_forward(plainRaw, w, EDKM_DTYPE_F32, n, &raw, EDKM_DTYPE_F32, nil))
        #expect(maxRelativeDifference(raw, expectedOutput) > 1e-2)
    }

    @Test func badInputChangesNothing() {
        let rt = makeRuntime()
        defer { edkm_runtime_destroy(rt) }
        var cfg = layerConfig(bits: 2)
        cfg.channel_scale = 3
        var layer: OpaquePointer? = nil
        #expect(edkm_layer_create(rt, &cfg, [16, 24], 2, &layer) == EDKM_ERR_INVALID_ARGUMENT)
        #expect(lastError().contains("channel_scale 3") && layer == nil)
        cfg.channel_scale = Int32(EDKM_CHANNEL_SCALE_ABS_MAX.rawValue)
        let l = makeLayer(rt, [16, 24], cfg)
        defer { edkm_layer_destroy(l) }
        var w = Self.weights()
        w[7] = .nan
        var out = [Float](repeating: 7, count: w.count)
        #expect(edkm_layer_forward(l, w, EDKM_DTYPE_F32, w.count, &out, EDKM_DTYPE_F32, nil) == EDKM_ERR_NON_FINITE)
        #expect(out.allSatisfy { $0 == 7 })
        var factors = [Float](repeating: 0, count: 16)
        #expect(edkm_layer_get_channel_scale(l, &factors, 16) == EDKM_ERR_STATE)  // nothing fixed by the failed call
        factors = [Float](repeating: 1, count: 16)
        factors[4] = -1
        #expect(edkm_layer_set_channel_scale(l, factors, 16) == EDKM_ERR_INVALID_ARGUMENT)
        #expect(edkm_layer_get_channel_scale(l, &factors, 16) == EDKM_ERR_STATE)
    }
}
