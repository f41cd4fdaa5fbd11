/// Fake quantization of one LUT (a partition's k x d centroids) to 8-bit integers with one scale per
/// LUT taken from the LUT's own range, so that no value overflows the type:
///
///     int8:  s = max|c| / 127,                               q = clamp(round(c / s), -128, 127),  c <- q s
///     uint8: lo = min(min c, 0), hi = max(max c, 0), s = (hi - lo) / 255,
///            z = clamp(round(-lo / s), 0, 255),             q = clamp(round(c / s) + z, 0, 255), c <- (q - z) s
///
/// round is to nearest, ties to even (torch's fake quantization); s = 1 when the range is 0. The
/// backward treats it as the identity (the straight-through estimator of torch's FakeQuantize, whose
/// range here always covers the LUT).
enum LUTQuantization {
    /// The scale and zero point of `lut` for `type` (zero point 0 for int8).
    static func parameters(_ type: ClusteringConfig.LUTType, _ lut: [Double]) -> (scale: Double, zeroPoint: Double) {
        switch type {
        case .f32:
            return (1, 0)
        case .int8:
            let peak = lut.reduce(0) { Swift.max($0, abs($1)) }
            return (peak > 0 ? peak / 127 : 1, 0)
        case .uint8:
            let lo = Swift.min(lut.min() ?? 0, 0), hi = Swift.max(lut.max() ?? 0, 0)
            let scale = hi > lo ? (hi - lo) / 255 : 1
            return (scale, Swift.min(Swift.max((-lo / scale).rounded(.toNearestOrEven), 0), 255))
        }
    }

    /// Replaces every value of `lut` by its fake-quantized value (a no-op for `.f32`).
    static func apply(_ type: ClusteringConfig.LUTType, to lut: inout [Double]) {
        if type == .f32 { return }
        let (scale, zeroPoint) = parameters(type, lut)
        let (qmin, qmax): (Double, Double) = type == .int8 ? (-128, 127) : (0, 255)
        for i in lut.indices {
            let q = Swift.min(Swift.max((lut[i] / scale).rounded(.toNearestOrEven) + zeroPoint, qmin), qmax)
            lut[i] = (q - zeroPoint) * scale
        }
    }
}
