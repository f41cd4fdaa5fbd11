import CEDKM
import EDKMSafetensors

extension DType {
    /// The libedkm dtype of a palettizable tensor.
    var edkm: edkm_dtype? {
        switch self {
        case .f32: return EDKM_DTYPE_F32
        case .f16: return EDKM_DTYPE_F16
        case .bf16: return EDKM_DTYPE_BF16
        default: return nil
        }
    }
}

/// A tensor's bytes with the natural alignment of its element type, as the C ABI requires:
/// the mapped file's bytes when they are aligned (no copy), else an aligned copy.
final class AlignedTensor {
    let pointer: UnsafeRawPointer
    let byteCount: Int
    private let owned: UnsafeMutableRawPointer?

    init(_ bytes: UnsafeRawBufferPointer, alignment: Int) {
        byteCount = bytes.count
        if let base = bytes.baseAddress, Int(bitPattern: base) % alignment == 0 {
            pointer = base
            owned = nil
        } else {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
            if bytes.count > 0 { p.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
            pointer = UnsafeRawPointer(p)
            owned = p
        }
    }

    deinit { owned?.deallocate() }
}

enum TensorStatistics {
    /// Number of distinct values (+0 and -0 count as one) of an F32, F16 or BF16 tensor.
    static func distinctValues(_ p: UnsafeRawPointer, dtype: DType, count: Int) -> Int {
        switch dtype {
        case .f16, .bf16:
            var seen = [UInt64](repeating: 0, count: 1024)
            for i in 0..<count {
                var b = p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)
                if b == 0x8000 { b = 0 }
                seen[Int(b >> 6)] |= 1 << UInt64(b & 63)
            }
            return seen.reduce(0) { $0 + $1.nonzeroBitCount }
        case .f32:
            // Radix sort (two 16-bit passes) of the bit patterns, then count the runs.
            var a = [UInt32](unsafeUninitializedCapacity: count) { buf, n in
                for i in 0..<count {
                    let b = p.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)
                    buf[i] = b == 0x8000_0000 ? 0 : b
                }
                n = count
            }
            var tmp = [UInt32](repeating: 0, count: count)
            for shift: UInt32 in [0, 16] {
                var offsets = [Int](repeating: 0, count: 65537)
                for x in a { offsets[Int((x >> shift) & 0xFFFF) + 1] += 1 }
                for i in 1...65536 { offsets[i] += offsets[i - 1] }
                for x in a {
                    let d = Int((x >> shift) & 0xFFFF)
                    tmp[offsets[d]] = x
                    offsets[d] += 1
                }
                swap(&a, &tmp)
            }
            var distinct = 0
            var last: UInt32? = nil
            for b in a where b != last { distinct += 1; last = b }
            return distinct
        default:
            return 0
        }
    }

    /// ||w - w_hat|| and ||w|| of two tensors of the same dtype and count (w_hat: what unpack produces).
    static func reconstructionError(weights: UnsafeRawPointer, unpacked: UnsafeRawPointer, dtype: DType,
                                    count: Int) -> (diff: Double, norm: Double) {
        var diff = 0.0, norm = 0.0
        for i in 0..<count {
            let w = Double(FloatBits.load(weights, dtype, i)), x = Double(FloatBits.load(unpacked, dtype, i))
            diff += (w - x) * (w - x)
            norm += w * w
        }
        return (diff.squareRoot(), norm.squareRoot())
    }
}
