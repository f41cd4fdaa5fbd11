import EDKMNumerics

/// Conversions between float32 and the 16-bit float formats, as bit patterns, and loads of
/// floating elements from possibly unaligned bytes (safetensors data need not be aligned).
public enum FloatBits {
    // The conversions are EDKMNumerics.HalfConversion's (exact, round to nearest even, NaN stays a
    // quiet NaN), under the names this module's callers use.
    @inline(__always) public static func f16ToFloat(_ bits: UInt16) -> Float { HalfConversion.f16ToFloat(bits) }
    @inline(__always) public static func floatToF16(_ x: Float) -> UInt16 { HalfConversion.floatToF16(x) }
    @inline(__always) public static func bf16ToFloat(_ bits: UInt16) -> Float { HalfConversion.bf16ToFloat(bits) }
    @inline(__always) public static func floatToBF16(_ x: Float) -> UInt16 { HalfConversion.floatToBF16(x) }

    /// Element i of an F32, F16 or BF16 buffer, as Float.
    @inline(__always) public static func load(_ p: UnsafeRawPointer, _ dtype: DType, _ i: Int) -> Float {
        switch dtype {
        case .f32: return Float(bitPattern: p.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))
        case .f16: return f16ToFloat(p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
        case .bf16: return bf16ToFloat(p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
        default: preconditionFailure("FloatBits.load of \(dtype.rawValue)")
        }
    }

    /// Float value `x` rounded to `dtype` (F32, F16 or BF16) and back.
    @inline(__always) public static func round(_ x: Float, to dtype: DType) -> Float {
        switch dtype {
        case .f16: return f16ToFloat(floatToF16(x))
        case .bf16: return bf16ToFloat(floatToBF16(x))
        default: return x
        }
    }
}
