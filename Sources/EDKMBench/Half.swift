/// 16-bit float bit patterns, as the C ABI takes them (EDKM_DTYPE_F16 / EDKM_DTYPE_BF16).
enum Half {
    /// IEEE binary16, round to nearest even (Float16 is available on x86_64 and arm64 Linux).
    static func f16(_ x: Float) -> UInt16 { Float16(x).bitPattern }

    /// bfloat16 (upper half of a binary32), round to nearest even; NaN stays NaN.
    static func bf16(_ x: Float) -> UInt16 {
        let b = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: b >> 16) | 0x40 }
        let rounded = b &+ 0x7fff &+ ((b >> 16) & 1)
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }

    static func f16ToFloat(_ h: UInt16) -> Float { Float(Float16(bitPattern: h)) }
    static func bf16ToFloat(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }
}
