/// Recognises the files people hand to a safetensors tool by mistake, from their first bytes, so
/// that the error says what the file is and what to do instead of "header length 85966670672 is
/// over the limit".
public enum OtherFormat {
    /// A one-line description of the file's real format and the way to a safetensors file (with
    /// `path` in the command it suggests), or nil when the bytes are not a format this knows.
    public static func recognise(_ bytes: UnsafeRawBufferPointer, path: String) -> String? {
        let input = quotedForPython(path)
        let output = quotedForPython(safetensorsName(for: path))
        let head = Array(bytes.prefix(4096))
        func starts(_ magic: [UInt8]) -> Bool { head.count >= magic.count && Array(head.prefix(magic.count)) == magic }
        let text = String(decoding: head.prefix(512), as: UTF8.self)
        let lowered = text.lowercased().drop { $0 == " " || $0 == "\n" || $0 == "\r" || $0 == "\t" || $0 == "\u{FEFF}" }

        if starts([0x50, 0x4B, 0x03, 0x04]) || starts([0x50, 0x4B, 0x05, 0x06]) {
            let names = zipEntryNames(bytes)
            if names.contains(where: { $0.hasSuffix("data.pkl") || $0.hasSuffix("/version") }) {
                return "this is a PyTorch checkpoint (torch.save zip archive), not safetensors; convert it first: "
                    + torchConversion(input, output)
            }
            if !names.isEmpty && names.allSatisfy({ $0.hasSuffix(".npy") }) {
                return "this is a NumPy .npz archive, not safetensors; convert it with "
                    + "python3 -c \"import numpy as np, safetensors.numpy as s; s.save_file(dict(np.load(\(input))), \(output))\""
            }
            return "this is a zip archive, not a safetensors file (a safetensors file starts with an 8-byte header length and a JSON header)"
        }
        if starts([0x80]) && head.count > 1 && (2...5).contains(head[1]) {
            return "this is a Python pickle (a PyTorch checkpoint in the legacy format?), not safetensors; convert it first: "
                + torchConversion(input, output)
        }
        if starts(Array("GGUF".utf8)) {
            return "this is a GGUF file (llama.cpp), not safetensors; its tensors are block-quantized: dequantize them "
                + "(the gguf Python package: gguf.GGUFReader and gguf.dequantize) and save them with safetensors"
        }
        if starts([0x93] + Array("NUMPY".utf8)) {
            return "this is a NumPy .npy array, not safetensors; convert it with "
                + "python3 -c \"import numpy as np, safetensors.numpy as s; s.save_file({'weight': np.load(\(input))}, \(output))\""
        }
        if starts([0x1F, 0x8B]) {
            return "this file is gzip-compressed; decompress it (gunzip) and try again"
        }
        if lowered.hasPrefix("<!doctype html") || lowered.hasPrefix("<html") || lowered.hasPrefix("<?xml") {
            return "this is an HTML/XML page, not a model: the download probably failed (an error or login page was saved); "
                + "download the file again"
        }
        if lowered.hasPrefix("version https://git-lfs") {
            return "this is a Git LFS pointer, not the model: fetch the real file (git lfs pull) and try again"
        }
        // '{' could also be the low byte of a safetensors header length; JSON text has a quote or
        // whitespace after it where a length has zero bytes.
        if lowered.hasPrefix("{"), let brace = head.firstIndex(of: 0x7B), brace + 8 <= head.count,
           head[(brace + 1)..<(brace + 8)].contains(where: { $0 != 0 }),
           [0x22, 0x20, 0x0A, 0x0D, 0x09, 0x7D].contains(head[brace + 1]) {
            return "this is a JSON text, not a safetensors file (maybe a model's index or config: *.safetensors.index.json lists the real files)"
        }
        return nil
    }

    private static func torchConversion(_ input: String, _ output: String) -> String {
        "python3 -c \"import torch, safetensors.torch as s; s.save_file({k: v.contiguous() for k, v in "
            + "torch.load(\(input), map_location='cpu', weights_only=True).items()}, \(output))\""
    }

    /// The path with its extension replaced by .safetensors.
    public static func safetensorsName(for path: String) -> String {
        let slash = path.lastIndex(of: "/").map { path.index(after: $0) } ?? path.startIndex
        let name = path[slash...]
        let stem = name.lastIndex(of: ".").map { name[..<$0] } ?? name
        return String(path[..<slash]) + (stem.isEmpty ? name : stem) + ".safetensors"
    }

    /// A Python single-quoted string literal of s (for a command the user copies into a shell's
    /// double quotes: backslashes, quotes and shell specials escaped).
    static func quotedForPython(_ s: String) -> String {
        var out = "'"
        for c in s {
            switch c {
            case "\\": out += "\\\\\\\\"  // shell double quotes halve it, Python halves it again
            case "'": out += "\\'"
            case "\"", "$", "`": out += "\\" + String(c)
            default: out.append(c)
            }
        }
        return out + "'"
    }

    /// The entry names of a zip archive's local file headers found in its first 64 KiB (enough to
    /// tell a PyTorch checkpoint from a NumPy archive; nothing is decompressed).
    static func zipEntryNames(_ bytes: UnsafeRawBufferPointer) -> [String] {
        var names: [String] = []
        var at = 0
        let end = min(bytes.count, 1 << 16)
        func u16(_ i: Int) -> Int { Int(bytes[i]) | Int(bytes[i + 1]) << 8 }
        func u32(_ i: Int) -> Int { u16(i) | u16(i + 2) << 16 }
        while at + 30 <= end, u32(at) == 0x0403_4B50, names.count < 64 {
            let compressed = u32(at + 18), nameLength = u16(at + 26), extraLength = u16(at + 28)
            let flags = u16(at + 6)
            guard at + 30 + nameLength <= bytes.count else { break }
            names.append(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[(at + 30)..<(at + 30 + nameLength)]), as: UTF8.self))
            // With a data descriptor (flag bit 3) the size is not in the header: stop there.
            if flags & 0x8 != 0 && compressed == 0 { break }
            at += 30 + nameLength + extraLength + compressed
        }
        return names
    }
}
