/// A fast 64-bit content hash of byte buffers, used as the dedup key and to check that the
/// weights handed to a backward are the forward's. 16-byte blocks are mixed into two lanes with
/// a multiply-xorshift; chunks are hashed independently and combined in order, so the value does
/// not depend on the thread count. Not cryptographic: a dedup hit is always verified by comparing
/// contents.
public enum ContentHash {
    static let chunkBytes = 1 << 21

    @inline(__always)
    static func mix(_ h: UInt64, _ v: UInt64) -> UInt64 {
        var x = (h ^ v) &* 0x9E37_79B9_7F4A_7C15
        x ^= x >> 29
        x = x &* 0xBF58_476D_1CE4_E5B9
        return x ^ (x >> 32)
    }

    /// The hash state of one chunk: absorb 16-byte blocks, then the tail, then finish.
    struct ChunkHasher {
        var a: UInt64 = 0x243F_6A88_85A3_08D3
        var b: UInt64 = 0x1319_8A2E_0370_7344
        let seed: UInt64

        init(seed: UInt64) { self.seed = seed }

        @inline(__always)
        mutating func absorb(_ lo: UInt64, _ hi: UInt64) {
            a = mix(a, lo)
            b = mix(b, hi)
        }

        /// Absorbs the bytes after the last whole block and returns the chunk's hash.
        func finish(tail p: UnsafeRawPointer, count: Int, totalBytes: Int) -> UInt64 {
            var h = seed ^ UInt64(totalBytes)
            for i in 0..<count { h = mix(h, UInt64(p.load(fromByteOffset: i, as: UInt8.self)) | 0x100) }
            return mix(mix(h, a), b)
        }
    }

    static func hashChunk(_ p: UnsafeRawPointer, _ count: Int, seed: UInt64) -> UInt64 {
        var hasher = ChunkHasher(seed: seed)
        var i = 0
        while i + 16 <= count {
            hasher.absorb(p.loadUnaligned(fromByteOffset: i, as: UInt64.self),
                          p.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self))
            i += 16
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
