import EDKMNumerics
import Glibc

/// The 16-bit keys of a weight tensor: the weights' own bit patterns for f16/bf16, or a rounded
/// copy (owned, freed with this value) for f32: the key of w is the rounding of w * f32Scale
/// (a power of two, so the product is exact; 1 everywhere but the initialisation's histogram).
final class WeightKeys {
    let pointer: UnsafePointer<UInt16>
    let keyType: ElementType
    private let owned: UnsafeMutablePointer<UInt16>?

    init(_ weights: UnsafeRawPointer, type: ElementType, count: Int, f32KeyType: ElementType, f32Scale: Float = 1,
         pool: ThreadPool) throws(EDKMError) {
        if type.is16Bit {
            pointer = weights.assumingMemoryBound(to: UInt16.self)
            keyType = type
            owned = nil
            return
        }
        let buf = try HeapAllocation.allocate(UInt16.self, count: count, for: "the 16-bit keys of f32 weights")
        let f = weights.assumingMemoryBound(to: Float.self)
        let chunks = (count + 65535) / 65536
        let toF16 = f32KeyType == .f16
        pool.parallelFor(chunks) { c in
            let lo = c * 65536, hi = Swift.min(count, lo + 65536)
            if f32Scale != 1 {
                if toF16 { for i in lo..<hi { buf[i] = HalfConversion.floatToF16(f[i] * f32Scale) } }
                else { for i in lo..<hi { buf[i] = HalfConversion.floatToBF16(f[i] * f32Scale) } }
            } else if toF16 { for i in lo..<hi { buf[i] = HalfConversion.floatToF16(f[i]) } }
            else { for i in lo..<hi { buf[i] = HalfConversion.floatToBF16(f[i]) } }
        }
        owned = buf
        pointer = UnsafePointer(buf)
        keyType = f32KeyType
    }

    deinit { free(owned) }
}
