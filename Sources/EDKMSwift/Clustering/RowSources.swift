import EDKMSupport
import EDKMNumerics

/// Rows that are the distinct values of a partition with their counts (the uniquified form).
struct UniqueValueRows: RowBlocks {
    let valuesBuffer: DoubleBuffer   // U
    let countsBuffer: DoubleBuffer   // U
    var rowCount: Int { valuesBuffer.count }

    func values(start: Int, count: Int, scratch: UnsafeMutablePointer<Double>) -> UnsafePointer<Double> {
        UnsafePointer(valuesBuffer.pointer + start)
    }
    func counts(start: Int, count: Int) -> UnsafePointer<Double>? { UnsafePointer(countsBuffer.pointer + start) }
}

/// Rows that are the elements (d = 1) or d-vectors of a partition of a dense tensor, converted
/// to Double block by block; every row counts once.
struct DenseElementRows: RowBlocks {
    let base: UnsafeRawPointer      // the partition's first element
    let type: ElementType
    let d: Int
    let rowCount: Int

    func values(start: Int, count: Int, scratch: UnsafeMutablePointer<Double>) -> UnsafePointer<Double> {
        ElementIO.loadDoubles(base, type: type, from: start * d, count: count * d, into: scratch)
        return UnsafePointer(scratch)
    }
    func counts(start: Int, count: Int) -> UnsafePointer<Double>? { nil }
}

/// Reading and writing elements of the API's element types.
enum ElementIO {
    @inline(__always)
    static func load(_ base: UnsafeRawPointer, type: ElementType, at i: Int) -> Float {
        switch type {
        case .f32: return base.load(fromByteOffset: i &* 4, as: Float.self)
        case .f16: return HalfConversion.f16ToFloat(base.load(fromByteOffset: i &* 2, as: UInt16.self))
        case .bf16: return HalfConversion.bf16ToFloat(base.load(fromByteOffset: i &* 2, as: UInt16.self))
        }
    }

    @inline(__always)
    static func store(_ value: Float, _ base: UnsafeMutableRawPointer, type: ElementType, at i: Int) {
        switch type {
        case .f32: base.storeBytes(of: value, toByteOffset: i &* 4, as: Float.self)
        case .f16: base.storeBytes(of: HalfConversion.floatToF16(value), toByteOffset: i &* 2, as: UInt16.self)
        case .bf16: base.storeBytes(of: HalfConversion.floatToBF16(value), toByteOffset: i &* 2, as: UInt16.self)
        }
    }

    static func loadDoubles(_ base: UnsafeRawPointer, type: ElementType, from start: Int, count: Int,
                            into out: UnsafeMutablePointer<Double>) {
        switch type {
        case .f32:
            let p = base.assumingMemoryBound(to: Float.self) + start
            for i in 0..<count { out[i] = Double(p[i]) }
        case .f16:
            let p = base.assumingMemoryBound(to: UInt16.self) + start
            for i in 0..<count { out[i] = Double(HalfConversion.f16ToFloat(p[i])) }
        case .bf16:
            let p = base.assumingMemoryBound(to: UInt16.self) + start
            for i in 0..<count { out[i] = Double(HalfConversion.bf16ToFloat(p[i])) }
        }
    }

    /// The value of a 16-bit key of the given type, as Double.
    @inline(__always)
    static func keyValue(_ key: UInt16, type: ElementType) -> Double {
        type == .f16 ? Double(HalfConversion.f16ToFloat(key)) : Double(HalfConversion.bf16ToFloat(key))
    }

    /// Index of the first non-finite element (an all-ones exponent), or nil.
    static func firstNonFinite(_ base: UnsafeRawPointer, type: ElementType, count: Int) -> Int? {
        let i = switch type {
        case .f32: edkm_first_all_bits_u32(base.assumingMemoryBound(to: UInt32.self), count, 0x7f80_0000)
        case .f16: edkm_first_all_bits_u16(base.assumingMemoryBound(to: UInt16.self), count, 0x7c00)
        case .bf16: edkm_first_all_bits_u16(base.assumingMemoryBound(to: UInt16.self), count, 0x7f80)
        }
        return i < 0 ? nil : i
    }
}
