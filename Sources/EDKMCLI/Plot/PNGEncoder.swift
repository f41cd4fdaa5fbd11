/// PNG files of 8-bit RGB images, with no library: the chunks, CRC-32, and a zlib stream whose
/// deflate blocks use the fixed Huffman code with run matches (distance 1: "repeat the previous
/// byte"). Each row is filtered with the PNG filter (None, Sub or Up) that leaves the most zero
/// bytes, so the flat areas of a chart become long runs and a typical chart compresses 20-50x.
enum PNGEncoder {
    /// The PNG bytes of `rgb` (width * height * 3 bytes, rows top to bottom).
    static func encode(width: Int, height: Int, rgb: [UInt8]) -> [UInt8] {
        precondition(width > 0 && height > 0 && rgb.count == width * height * 3, "PNGEncoder: pixel count mismatch")
        var out: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        var ihdr = bigEndian(UInt32(width)) + bigEndian(UInt32(height))
        ihdr += [8, 2, 0, 0, 0]  // depth 8, colour type 2 (RGB), deflate, filter method 0, no interlace
        chunk("IHDR", ihdr, into: &out)
        chunk("IDAT", zlib(filteredRows(width: width, height: height, rgb: rgb)), into: &out)
        chunk("IEND", [], into: &out)
        return out
    }

    /// Every row as its filter type byte followed by the filtered bytes.
    static func filteredRows(width: Int, height: Int, rgb: [UInt8]) -> [UInt8] {
        let stride = width * 3
        var out = [UInt8]()
        out.reserveCapacity(height * (stride + 1))
        var candidates = [[UInt8]](repeating: [UInt8](repeating: 0, count: stride), count: 3)
        for y in 0..<height {
            let row = y * stride
            for x in 0..<stride {
                let v = rgb[row + x]
                candidates[0][x] = v
                candidates[1][x] = v &- (x >= 3 ? rgb[row + x - 3] : 0)
                candidates[2][x] = v &- (y > 0 ? rgb[row - stride + x] : 0)
            }
            let zeros = candidates.map { $0.reduce(0) { $1 == 0 ? $0 + 1 : $0 } }
            let best = zeros.firstIndex(of: zeros.max()!)!
            out.append(UInt8(best))
            out += candidates[best]
        }
        return out
    }

    private static func chunk(_ type: String, _ body: [UInt8], into out: inout [UInt8]) {
        let kind = Array(type.utf8)
        out += bigEndian(UInt32(body.count))
        out += kind
        out += body
        out += bigEndian(CRC32.checksum(kind + body))
    }

    private static func bigEndian(_ v: UInt32) -> [UInt8] {
        [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]
    }

    /// A zlib stream (RFC 1950): header, one final fixed-Huffman deflate block (RFC 1951), Adler-32.
    static func zlib(_ data: [UInt8]) -> [UInt8] {
        var bits = BitWriter()
        bits.write(0x78, count: 8)  // CMF: deflate, 32 KiB window
        bits.write(0x01, count: 8)  // FLG: no dictionary, fastest; (0x78 * 256 + 0x01) % 31 == 0
        bits.write(1, count: 1)     // BFINAL
        bits.write(1, count: 2)     // BTYPE 01: fixed Huffman codes
        var i = 0
        while i < data.count {
            var run = 0
            if i > 0 {
                while run < 258 && i + run < data.count && data[i + run] == data[i - 1] { run += 1 }
            }
            if run >= 3 {
                bits.writeLength(run)
                bits.writeHuffman(0, length: 5)  // distance code 0 = distance 1, no extra bits
                i += run
            } else {
                bits.writeLiteral(Int(data[i]))
                i += 1
            }
        }
        bits.writeLiteral(256)  // end of block
        var out = bits.finish()
        out += bigEndian(adler32(data))
        return out
    }

    static func adler32(_ data: [UInt8]) -> UInt32 {
        var a: UInt32 = 1, b: UInt32 = 0
        for chunkStart in stride(from: 0, to: data.count, by: 5552) {  // 5552: no UInt32 overflow before the modulo
            for v in data[chunkStart..<min(chunkStart + 5552, data.count)] { a += UInt32(v); b += a }
            a %= 65521
            b %= 65521
        }
        return b << 16 | a
    }
}

/// CRC-32 (ISO 3309, polynomial 0xEDB88320 reflected), as PNG chunks use it.
enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}

/// Bits packed least significant first, as deflate stores them.
private struct BitWriter {
    private var bytes: [UInt8] = []
    private var buffer: UInt64 = 0
    private var used = 0

    /// `count` bits of `value`, least significant first (deflate's extra bits and header fields).
    mutating func write(_ value: Int, count: Int) {
        buffer |= UInt64(value) << UInt64(used)
        used += count
        while used >= 8 {
            bytes.append(UInt8(buffer & 0xFF))
            buffer >>= 8
            used -= 8
        }
    }

    /// A Huffman code: its bits most significant first.
    mutating func writeHuffman(_ code: Int, length: Int) {
        var reversed = 0
        for i in 0..<length where code & (1 << i) != 0 { reversed |= 1 << (length - 1 - i) }
        write(reversed, count: length)
    }

    /// A literal/length symbol 0...287 in the fixed code.
    mutating func writeLiteral(_ symbol: Int) {
        switch symbol {
        case 0...143: writeHuffman(0x30 + symbol, length: 8)
        case 144...255: writeHuffman(0x190 + symbol - 144, length: 9)
        case 256...279: writeHuffman(symbol - 256, length: 7)
        default: writeHuffman(0xC0 + symbol - 280, length: 8)
        }
    }

    /// Match length 3...258: its symbol (257...285) and extra bits.
    mutating func writeLength(_ length: Int) {
        if length == 258 { writeLiteral(285); return }
        var symbol = 257, base = 3, extra = 0
        // Lengths 3-10 have no extra bits; then each group of 4 symbols doubles the step.
        if length >= 11 {
            extra = 1
            base = 11
            symbol = 265
            while length >= base + 4 * (1 << extra) {
                base += 4 * (1 << extra)
                symbol += 4
                extra += 1
            }
            let within = (length - base) >> extra
            symbol += within
            base += within << extra
        } else {
            symbol = 257 + length - 3
            base = length
        }
        writeLiteral(symbol)
        if extra > 0 { write(length - base, count: extra) }
    }

    mutating func finish() -> [UInt8] {
        if used > 0 { bytes.append(UInt8(buffer & 0xFF)) }
        buffer = 0
        used = 0
        return bytes
    }
}
