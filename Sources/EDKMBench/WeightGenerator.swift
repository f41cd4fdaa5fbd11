import CEDKM
import EDKMNumerics
import Glibc

/// LLM-like weight matrices from the shared seeded generator (EDKMNumerics.SplitMix64).
enum WeightDType: CaseIterable {
    case f16, bf16
    var name: String { self == .f16 ? "f16" : "bf16" }
    var c: edkm_dtype { self == .f16 ? EDKM_DTYPE_F16 : EDKM_DTYPE_BF16 }
    func bits(_ x: Float) -> UInt16 { self == .f16 ? HalfConversion.floatToF16(x) : HalfConversion.floatToBF16(x) }
    func value(_ h: UInt16) -> Float { self == .f16 ? HalfConversion.f16ToFloat(h) : HalfConversion.bf16ToFloat(h) }
    static func parse(_ s: String) -> WeightDType? { s == "f16" ? .f16 : s == "bf16" ? .bf16 : nil }
}

/// 16-bit weights drawn like a trained LLM's linear layer: normal with standard deviation `std`
/// (LLaMA-7B's projections are ~0.02) plus a few outliers (a fraction `outliers` of the weights,
/// each ~ N(0, (outlierScale * std)^2)), rounded to `dtype`.
func llmWeights(count: Int, dtype: WeightDType, seed: UInt64, std: Double = 0.02,
                outliers: Double = 1e-4, outlierScale: Double = 12) -> [UInt16] {
    var rng = SplitMix64(seed: seed)
    var out = [UInt16](repeating: 0, count: count)
    out.withUnsafeMutableBufferPointer { w in
        var i = 0
        while i < count {
            let (a, b) = rng.normalPair()
            w[i] = dtype.bits(Float(a * std))
            if i + 1 < count { w[i + 1] = dtype.bits(Float(b * std)) }
            i += 2
        }
        let nOut = Int(Double(count) * outliers)
        for _ in 0..<nOut {
            let at = Int(rng.next() % UInt64(count))
            w[at] = dtype.bits(Float(rng.normalPair().0 * std * outlierScale))
        }
    }
    return out
}

/// An upstream gradient dL/dw~ of the right scale for a training step (small, zero-mean).
func upstreamGradient(count: Int, dtype: WeightDType, seed: UInt64, std: Double = 1e-3) -> [UInt16] {
    llmWeights(count: count, dtype: dtype, seed: seed ^ 0xa5a5_5a5a, std: std, outliers: 0)
}

/// FNV-1a over 64-bit words (and the tail bytes): a fingerprint to compare results across runs.
func fingerprint(_ p: UnsafeRawPointer, bytes: Int) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    var i = 0
    while i + 8 <= bytes {
        h = (h ^ p.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0x0000_0100_0000_01b3
        i += 8
    }
    while i < bytes {
        h = (h ^ UInt64(p.load(fromByteOffset: i, as: UInt8.self))) &* 0x0000_0100_0000_01b3
        i += 1
    }
    return h
}
