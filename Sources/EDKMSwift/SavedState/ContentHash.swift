/// A fast 64-bit content hash of byte buffers, used as the dedup key and to check that the
/// weights handed to a backward are the forward's. 32-byte blocks are accumulated into four
/// 64-bit lanes (lane j, block b with words w: acc_j += rot32(w_j) + lo32(w_j ^ k) * hi32(w_j ^ k),
/// k = K_j + b * step): no lane carries a multiply-xorshift chain from block to block, so the
/// hash costs about one 32 x 32-bit multiply per 8 bytes and runs in the shadow of the key passes
/// that fuse it (an AVX2 build in Sources/EDKMSupport/kernels.c computes the same lanes). The
/// tail bytes and the lanes are then mixed with a multiply-xorshift. Chunks are hashed
/// independently and combined in order, so the value does not depend on the thread count. Not
/// cryptographic: a dedup hit is always verified by comparing contents.
public enum ContentHash {
    static let chunkBytes = 1 << 21

    @inline(__always)
    static func mix(_ h: UInt64, _ v: UInt64) -> UInt64 {
        var x = (h ^ v) &* 0x9E37_79B9_7F4A_7C15
        x ^= x >> 29
        x = x &* 0xBF58_476D_1CE4_E5B9
        return x ^ (x >> 32)
    }

    /// The per-block increment of the lanes' keys.
    static let keyStep: UInt64 = 0x9E37_79B9_7F4A_7C15

    /// One lane's accumulation of the 8-byte word w under key k.
    @inline(__always)
    static func accumulate(_ acc: UInt64, _ w: UInt64, _ k: UInt64) -> UInt64 {
        let x = w ^ k
        return acc &+ (w << 32 | w >> 32) &+ (x & 0xFFFF_FFFF) &* (x >> 32)
    }

    /// The hash state of one chunk: absorb 32-byte blocks, then the tail, then finish. The layout
    /// (four accumulators, then the four keys) is the state array of the C kernels.
    struct ChunkHasher {
        var acc: (UInt64, UInt64, UInt64, UInt64) = (0x243F_6A88_85A3_08D3, 0x1319_8A2E_0370_7344,
                                                     0xA409_3822_299F_31D0, 0x082E_FA98_EC4E_6C89)
        var key: (UInt64, UInt64, UInt64, UInt64) = (0x4528_21E6_38D0_1377, 0xBE54_66CF_34E9_0C6C,
                                                     0xC0AC_29B7_C97C_50DD, 0x3F84_D5B5_B547_0917)
        let seed: UInt64

        init(seed: UInt64) { self.seed = seed }

        /// Absorbs the 32-byte block of little-endian words w0...w3.
        @inline(__always)
        mutating func absorb(_ w0: UInt64, _ w1: UInt64, _ w2: UInt64, _ w3: UInt64) {
            acc.0 = accumulate(acc.0, w0, key.0)
            acc.1 = accumulate(acc.1, w1, key.1)
            acc.2 = accumulate(acc.2, w2, key.2)
            acc.3 = accumulate(acc.3, w3, key.3)
            key.0 &+= keyStep
            key.1 &+= keyStep
            key.2 &+= keyStep
            key.3 &+= keyStep
        }

        /// Absorbs the 32-byte block at p.
        @inline(__always)
        mutating func absorb(_ p: UnsafeRawPointer) {
            absorb(p.loadUnaligned(as: UInt64.self), p.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
                   p.loadUnaligned(fromByteOffset: 16, as: UInt64.self), p.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
        }

        /// Absorbs the bytes after the last whole block and returns the chunk's hash.
        func finish(tail p: UnsafeRawPointer, count: Int, totalBytes: Int) -> UInt64 {
            var h = seed ^ UInt64(totalBytes)
            for i in 0..<count { h = mix(h, UInt64(p.load(fromByteOffset: i, as: UInt8.self)) | 0x100) }
            return mix(mix(mix(mix(h, acc.0), acc.1), acc.2), acc.3)
        }
    }

    static func hashChunk(_ p: UnsafeRawPointer, _ count: Int, seed: UInt64) -> UInt64 {
        var hasher = ChunkHasher(seed: seed)
        var i = 0
        while i + 32 <= count {
            hasher.absorb(p + i)
            i += 32
        }
        return hasher.finish(tail: p + i, count: count - i, totalBytes: count)
    }

    /// Combines chunk hashes, in order.
    static func combine(_ parts: [UInt64]) -> UInt64 { parts.reduce(0xCBF2_9CE4_8422_2325) { mix($0, $1) } }

    /// The hash of `count` bytes at `p` (chunks of 2 MiB from the start).
    public static func hash(_ p: UnsafeRawPointer, count: Int, pool: ThreadPool? = nil) -> UInt64 {
        let chunks = Swift.max(1, (count + chunkBytes - 1) / chunkBytes)
        var parts = [UInt64](repeating: 0, count: chunks)
        parts.withUnsafeMutableBufferPointer { buf in
            let out = buf.baseAddress!
            let body = { (c: Int) in
                let start = c * chunkBytes
                out[c] = hashChunk(p + start, Swift.min(chunkBytes, count - start), seed: UInt64(c))
            }
            if let pool { pool.parallelFor(chunks, body) } else { for c in 0..<chunks { body(c) } }
        }
        return combine(parts)
    }
}
