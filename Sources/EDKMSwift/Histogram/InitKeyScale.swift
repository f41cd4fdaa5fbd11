/// The power of two that f32 weights are multiplied by before they are rounded to f16 keys for
/// the 1-D initialisation's histogram (when no f32_key_dtype is configured).
///
/// f16 keeps 11 significant bits only between 2^-14 and 65504: weights whose RMS is far below
/// (tiny weights, e.g. ~1e-5) fall among the subnormals and lose their precision; weights far
/// above overflow. With the RMS r = 2^l * m (1 <= m < 2) outside [2^-12, 2^9), the weights are
/// multiplied by 2^-l (exact in f32), which brings the RMS into [1, 2); usual weights (RMS about
/// 2^-6) are left as they are, so their keys, and the initialisation, do not change.
struct InitKeyScale {
    /// What the weights are multiplied by before rounding (a power of two).
    let factor: Float
    /// What the keys' values are multiplied by to give weight units: 1 / factor, exactly.
    let inverse: Double

    static let one = InitKeyScale(factor: 1, inverse: 1)

    private init(factor: Float, inverse: Double) {
        self.factor = factor
        self.inverse = inverse
    }

    init(_ f: UnsafePointer<Float>, count: Int) {
        var sum = 0.0
        for i in 0..<count { sum += Double(f[i]) * Double(f[i]) }
        let rms = count > 0 ? (sum / Double(count)).squareRoot() : 0
        guard rms.isFinite && rms > 0 else { self = .one; return }
        // floor(log2(rms)) for a positive finite double; at least -126 so that 2^-l stays a finite
        // Float (RMS below 2^-126, e.g. subnormal weights or w / s with a large channel scale
        // factor, would make it +Inf and every key Inf): such weights get 2^126, which takes even
        // the smallest float (2^-149) to 2^-23, above f16's smallest subnormal (2^-24)
        let l = max(rms.exponent, -126)
        guard l < -12 || l > 8 else { self = .one; return }
        factor = Float(sign: .plus, exponent: -l, significand: 1)
        inverse = Double(sign: .plus, exponent: l, significand: 1)
    }
}
