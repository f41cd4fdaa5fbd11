import CEDKM
import EDKMSafetensors

/// The per-output-channel scale of `edkm palettize --channel-scale` (libedkm's
/// edkm_layer_config.channel_scale, coremltools' enable_per_channel_scale) and the row product
/// that turns scaled values back into weights.
///
/// With a scheme, row r of a tensor (rows = shape[0]) is divided by its factor s_r before the 1-D
/// k-means and the export; the LUT is in the scaled units and row r decodes as lut[label] x s_r
/// (the palettized format's version-2 record field "scale", an F32 tensor [rows]).
enum ChannelScaleScheme: String, CaseIterable {
    /// No scale (format version 1).
    case none
    /// s_r = (max_r - min_r) / 2 (coremltools' "min_max").
    case minMax = "min_max"
    /// s_r = max_r |w| (coremltools' "abs").
    case absMax = "abs_max"

    /// Accepts the option's spellings: none, min_max, abs_max, and coremltools' "abs" for abs_max.
    init?(option: String) {
        if option == "abs" { self = .absMax } else { self.init(rawValue: option) }
    }

    /// The values --channel-scale accepts, for help and error text.
    static let optionValues = "none, min_max or abs_max (abs)"

    /// edkm_layer_config.channel_scale.
    var configValue: Int32 {
        switch self {
        case .none: return Int32(EDKM_CHANNEL_SCALE_NONE.rawValue)
        case .minMax: return Int32(EDKM_CHANNEL_SCALE_MIN_MAX.rawValue)
        case .absMax: return Int32(EDKM_CHANNEL_SCALE_ABS_MAX.rawValue)
        }
    }
}

enum ChannelScaleRows {
    /// F32 rows (bytes: factors.count rows of equal length) times their factors, as bytes of
    /// dtype: each product computed in float32 and rounded once (to nearest even), the format's
    /// decoding rule.
    static func multiplied(_ f32: [UInt8], by factors: [Float], dtype: DType) -> [UInt8] {
        let count = f32.count / 4, rowLength = count / factors.count
        var out = [UInt8](repeating: 0, count: count * dtype.alignment)
        f32.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                for i in 0..<count {
                    let v = FloatBits.load(src.baseAddress!, .f32, i) * factors[i / rowLength]
                    switch dtype {
                    case .f16: dst.storeBytes(of: FloatBits.floatToF16(v), toByteOffset: 2 * i, as: UInt16.self)
                    case .bf16: dst.storeBytes(of: FloatBits.floatToBF16(v), toByteOffset: 2 * i, as: UInt16.self)
                    default: dst.storeBytes(of: v, toByteOffset: 4 * i, as: Float.self)
                    }
                }
            }
        }
        return out
    }

    /// The factors as the bytes of an F32 tensor [rows] (little-endian, as safetensors stores it).
    static func bytes(_ factors: [Float]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 4 * factors.count)
        out.withUnsafeMutableBytes { dst in
            for (i, f) in factors.enumerated() { dst.storeBytes(of: f.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
        }
        return out
    }
}
