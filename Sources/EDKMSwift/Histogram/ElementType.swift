/// The element types of tensors crossing the API. Raw values equal the C ABI's `edkm_dtype`.
public enum ElementType: Int32, Sendable, CaseIterable {
    /// IEEE binary32.
    case f32 = 0
    /// IEEE binary16, carried as its 16-bit pattern.
    case f16 = 1
    /// bfloat16 (the upper 16 bits of a binary32), carried as its 16-bit pattern.
    case bf16 = 2

    /// Bytes per element.
    @inlinable public var byteWidth: Int { self == .f32 ? 4 : 2 }

    /// True for the two 16-bit types, whose bit patterns can key a 65,536-entry histogram.
    @inlinable public var is16Bit: Bool { self != .f32 }

    public var name: String {
        switch self {
        case .f32: return "f32"
        case .f16: return "f16"
        case .bf16: return "bf16"
        }
    }
}
