/// Conversions between float32 and the 16-bit float formats, as bit patterns, and loads of
/// floating elements from possibly unaligned bytes (safetensors data need not be aligned).
public enum FloatBits {
    @inline(__always) public static func f16ToFloat(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }
    /// Round to nearest even.
    @inline(__always) public static func floatToF16(_ x: Float) -> UInt16 { Float16(x).bitPattern }
    @inline(__always) public static func bf16ToFloat(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }
    /// Round to nearest even; NaN stays a (quiet) NaN.
    @inline(__always) public static func floatToBF16(_ x: Float) -> UInt16 {
        let b = x.bitPattern
        if x.isNaN { return UInt16(b >> 16) | 0x0040 }
        let rounding = 0x7FFF + ((b >> 16) & 1)
        return UInt16((b &+ rounding) >> 16)
    }

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
