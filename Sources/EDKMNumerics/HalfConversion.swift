/// Conversions between binary32 and the two 16-bit formats, portable (no F16C needed) and exact:
/// round-to-nearest-even, NaN stays NaN (quietened), overflow goes to infinity.
public enum HalfConversion {
    /// binary16 bits -> Float, through a 65,536-entry table (256 KiB, built once).
    @inlinable @inline(__always)
    public static func f16ToFloat(_ bits: UInt16) -> Float { f16Table[Int(bits)] }

    /// bfloat16 bits -> Float: exact, a shift.
    @inlinable @inline(__always)
    public static func bf16ToFloat(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    /// Float -> bfloat16 bits, round to nearest even; NaN -> quiet NaN of the same sign.
    @inlinable @inline(__always)
    public static func floatToBF16(_ value: Float) -> UInt16 {
        let x = value.bitPattern
        if (x & 0x7fff_ffff) > 0x7f80_0000 { return UInt16(truncatingIfNeeded: (x >> 16) | 0x0040) }
        let rounded = x &+ 0x7fff &+ ((x >> 16) & 1)
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }

    /// Float -> binary16 bits, round to nearest even (the classic magic-number method: subnormal
    /// results are rounded by one float addition, normal results by an integer bias).
    @inlinable @inline(__always)
    public static func floatToF16(_ value: Float) -> UInt16 {
        var x = value.bitPattern
        let sign = x & 0x8000_0000
        x ^= sign
        let signBits = UInt16(truncatingIfNeeded: sign >> 16)
        if x >= 0x4780_0000 {  // |value| >= 65536 (or Inf/NaN): Inf, or quiet NaN
            return signBits | (x > 0x7f80_0000 ? 0x7e00 : 0x7c00)
        }
        if x < 0x3880_0000 {  // |value| < 2^-14: the result is subnormal or zero
            let magic = Float(bitPattern: 0x3f00_0000)  // 0.5: aligns the 10 result bits at the bottom
            let shifted = Float(bitPattern: x) + magic
            return signBits | UInt16(truncatingIfNeeded: shifted.bitPattern &- magic.bitPattern)
        }
        let mantissaOdd = (x >> 13) & 1
        x = x &+ 0xc800_0fff  // rebias the exponent (15 - 127) << 23, plus the rounding bias 0xfff
        x = x &+ mantissaOdd
        return signBits | UInt16(truncatingIfNeeded: x >> 13)
    }

    public static let f16Table: [Float] = (0..<65536).map { Float(Float16(bitPattern: UInt16($0))) }
}
