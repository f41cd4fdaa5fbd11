import EDKMSafetensors
import Foundation
import Testing

/// What a person sees: progress in a pipe and on a terminal (a pseudo-terminal), `info --json`
/// against the file, `info --histogram`, the other formats people pass by mistake, "did you mean",
/// a palettize that would select nothing, and the demo's pictures.
@Suite struct LookAndFeelTests {
    /// A checkpoint with one large tensor (70 % of the bytes) and a few small ones.
    static func model(_ dir: TempDir) throws -> String {
        var rng = TestRandom(7)
        let path = dir.file("model.safetensors")
        try writeSafetensors([
            .float("big", .f16, [512, 512], rng.normals(512 * 512, scale: 0.02)),
            .float("mid", .bf16, [128, 256], rng.normals(128 * 256, scale: 0.05)),
            .float("small", .f32, [64, 64], rng.normals(64 * 64, scale: 0.1)),
            .float("bias", .f32, [64], rng.normals(64, scale: 0.1)),
        ], metadata: Metadata([("format", "pt")]), to: path)
        return path
    }

    // MARK: progress

    @Test(needsCLI) func progressInAPipeIsPlainLinesWithRate() throws {
        let dir = TempDir()
        let input = try Self.model(dir)
        let r = try CLI.run(["palettize", input, "-o", dir.file("out.safetensors"), "--bits", "3"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stderr.split(separator: "\n").map(String.init)
        #expect(!r.stderr.contains("\u{1B}["), "no terminal control sequences in a pipe")
        let percent = lines.filter { $0.hasPrefix("palettize: ") && $0.contains("%") }
        #expect(!percent.isEmpty && percent.last!.hasPrefix("palettize: 100% ("), "\(lines)")
        #expect(percent.last!.contains("of ") && percent.last!.contains("elapsed"))
        #expect(lines.contains { $0.hasPrefix("write: 100% (") })
        #expect(lines.contains { $0.hasPrefix("[3/3] big 512x512 F16") } || lines.contains { $0.contains("big 512x512 F16: 3 bits") })
        let u = try CLI.run(["unpack", dir.file("out.safetensors"), "-o", dir.file("dense.safetensors")])
        #expect(u.status == 0 && u.stderr.contains("unpack: 100% ("), "\(u.stderr)")
    }

    @Test(needsCLI) func progressOnATerminalIsABarWithBytesAndRate() throws {
        let dir = TempDir()
        let input = try Self.model(dir)
        let r = try PseudoTerminal.run(try #require(CLI.path), ["palettize", input, "-o", dir.file("out.safetensors"), "--bits", "3"])
        #expect(r.status == 0, "\(r.output)")
        #expect(r.output.contains("\r\u{1B}[2Kpalettize "), "the bar is redrawn in place")
        #expect(r.output.contains("█") || r.output.contains("░"))
        #expect(r.output.contains("KiB/") || r.output.contains("MiB/"), "amounts in bytes")
        #expect(r.output.contains("\r\u{1B}[2Kwrite "))
        #expect(!r.output.contains("palettize: 100% ("), "no plain progress lines on a terminal")
    }

    // MARK: info

    @Test(needsCLI) func infoJSONDescribesTheFile() throws {
        let dir = TempDir()
        let input = try Self.model(dir)
        let out = dir.file("p.safetensors")
        #expect(try CLI.run(["palettize", input, "-o", out, "--bits", "4", "--group-size", "64", "--min-size", "1000"]).status == 0)
        let r = try CLI.run(["info", out, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let f = try SafetensorsFile(path: out)
        #expect(obj["file_bytes"] as? Int == f.fileSize)
        #expect(obj["header_bytes"] as? Int == f.header.headerLength + 8)
        #expect(obj["data_bytes"] as? Int == f.header.dataSize)
        #expect(obj["format"] as? String == PalettizedTensor.formatValue)
        #expect((obj["metadata"] as? [String: String])?["format"] == "pt")
        let tensors = try #require(obj["tensors"] as? [[String: Any]])
        #expect(tensors.count == f.header.tensors.count)
        for (j, t) in zip(tensors, f.header.tensors) {
            #expect(j["name"] as? String == t.name && j["dtype"] as? String == t.dtype.rawValue)
            #expect(j["shape"] as? [Int] == t.shape && j["bytes"] as? Int == t.byteCount)
            #expect(j["data_offsets"] as? [Int] == [t.begin, t.end])
        }
        let pal = try #require(obj["palettized"] as? [[String: Any]])
        let records = try PalettizedTensor.records(in: f.header)
        #expect(pal.count == records.count && pal.count == 3)
        for (j, rec) in zip(pal, records) {
            #expect(j["name"] as? String == rec.name && j["bits"] as? Int == 4 && j["group_size"] as? Int == rec.groupSize)
            #expect(j["shape"] as? [Int] == rec.shape)
            let lut = try #require(j["lut"] as? [String: Any])
            #expect(lut["shape"] as? [Int] == rec.lutShape)
            let ratio = try #require(j["ratio"] as? Double)
            #expect(ratio > 3 && ratio < 9)
        }
        let dtypes = try #require(obj["dtypes"] as? [String: [String: Int]])
        #expect(dtypes.values.reduce(0) { $0 + $1["bytes"]! } == f.header.dataSize)
    }

    @Test(needsCLI) func infoHistogramMarksTheLUT() throws {
        let dir = TempDir()
        let input = try Self.model(dir)
        let dense = try CLI.run(["info", input, "--histogram", "big", "--bits", "3", "--bins", "60"])
        #expect(dense.status == 0, "\(dense.stderr)")
        let lines = dense.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines[0].hasPrefix("big: 262,144 values in ["))
        let markerRow = try #require(lines.first { $0.count == 60 && $0.contains("▲") && $0.allSatisfy { $0 == " " || $0 == "▲" } })
        #expect(markerRow.count == 60)
        let marks = markerRow.filter { $0 == "▲" }.count
        #expect(marks >= 6 && marks <= 8, "8 centroids, at most two sharing a bin of 60")
        #expect(lines.contains { $0.hasPrefix("▲ LUT entries (8):") })
        let bars = lines.filter { $0.count == 60 && $0.unicodeScalars.allSatisfy { $0 == " " || (0x2581...0x2588).contains($0.value) } }
        #expect(bars.count == 12)

        let out = dir.file("p.safetensors")
        #expect(try CLI.run(["palettize", input, "-o", out, "--bits", "2"]).status == 0)
        let pal = try CLI.run(["info", out, "--histogram", "mid", "--bins", "40"])
        #expect(pal.status == 0 && pal.stdout.contains("palettized 2-bit, one LUT") && pal.stdout.contains("LUT entries (4)"), "\(pal.stdout)")
        // A palettized tensor holds only its 4 LUT values: 4 occupied bins, each marked.
        let palLines = pal.stdout.split(separator: "\n").map(String.init)
        let markerIndex = try #require(palLines.firstIndex { $0.count == 40 && $0.contains("▲") && $0.allSatisfy { $0 == " " || $0 == "▲" } })
        let bottom = palLines[markerIndex - 1]
        #expect(bottom.count == 40 && bottom.filter { $0 != " " }.count == 4, "\(bottom)")
        #expect(palLines[markerIndex].filter { $0 == "▲" }.count == 4)

        let missing = try CLI.run(["info", input, "--histogram", "bigg"])
        #expect(missing.status == 1 && errorLines(missing).first?.contains("did you mean \"big\"") == true, "\(missing.stderr)")
        let tooFew = try CLI.run(["info", input, "--histogram", "bias", "--bits", "8"])
        #expect(tooFew.status == 1 && tooFew.stderr.contains("fewer than the 2^8 centroids"))
    }

    // MARK: wrong inputs

    /// A zip archive of stored (uncompressed) entries, built here by hand.
    static func zipArchive(_ entries: [(String, [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        func u16(_ v: Int) { out += [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }
        func u32(_ v: Int) { u16(v & 0xFFFF); u16(v >> 16 & 0xFFFF) }
        for (name, data) in entries {
            u32(0x0403_4B50); u16(20); u16(0); u16(0); u16(0); u16(0)
            u32(0)  // CRC (not checked by the recogniser)
            u32(data.count); u32(data.count); u16(name.utf8.count); u16(0)
            out += Array(name.utf8) + data
        }
        return out
    }

    static let wrongInputs: [(file: String, bytes: [UInt8], says: String)] = [
        ("model.bin", zipArchive([("archive/data.pkl", [0x80, 0x02, 0x7D, 0x71]), ("archive/version", Array("3\n".utf8))]), "PyTorch checkpoint"),
        ("legacy.pt", [0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19], "Python pickle"),
        ("model.gguf", Array("GGUF".utf8) + [3, 0, 0, 0] + [UInt8](repeating: 0, count: 24), "GGUF file"),
        ("weights.npz", zipArchive([("a.npy", [0x93] + Array("NUMPY".utf8)), ("b.npy", [0x93] + Array("NUMPY".utf8))]), "NumPy .npz archive"),
        ("weights.npy", [0x93] + Array("NUMPY".utf8) + [1, 0, 0x76, 0] + Array("{'descr': '<f4'}".utf8), "NumPy .npy array"),
        ("model.safetensors", Array("<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n".utf8), "HTML/XML page"),
        ("lfs.safetensors", Array("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 99\n".utf8), "Git LFS pointer"),
        ("model.safetensors.gz", [0x1F, 0x8B, 0x08, 0x00] + [UInt8](repeating: 0, count: 20), "gzip-compressed"),
        ("model.safetensors.index.json", Array("{\n  \"metadata\": {\"total_size\": 1},\n  \"weight_map\": {}\n}\n".utf8), "JSON text"),
    ]

    @Test(needsCLI, arguments: wrongInputs.indices) func wrongInputsAreRecognised(_ i: Int) throws {
        let c = Self.wrongInputs[i]
        let dir = TempDir()
        let path = dir.file(c.file)
        writeBytes(c.bytes, to: path)
        for args in [["info", path], ["palettize", path, "-o", dir.file("out.safetensors")], ["unpack", path, "-o", dir.file("out.safetensors")]] {
            let r = try CLI.run(args)
            let errors = errorLines(r)
            #expect(r.status == 1 && errors.count == 1, "\(args): \(r.stderr)")
            #expect(errors.first?.contains(c.says) == true, "\(c.file) \(args[0]): \(r.stderr)")
            #expect(!exists(dir.file("out.safetensors")))
        }
        #expect(readBytes(path) == c.bytes, "the input is untouched")
    }

    @Test func recogniserSuggestsACommandForTheFile() {
        let torch = Self.zipArchive([("archive/data.pkl", [0x80])])
        let text = torch.withUnsafeBytes { OtherFormat.recognise($0, path: "dir/it's.bin") }
        #expect(text?.contains("torch.load('dir/it\\'s.bin'") == true, "\(text ?? "nil")")
        #expect(text?.contains("'dir/it\\'s.safetensors'") == true)
        // A real safetensors header whose length's low byte is '{' (123) is not taken for JSON.
        let fake = rawSafetensors(header: "{" + String(repeating: " ", count: 122), data: [])
        #expect(fake.withUnsafeBytes { OtherFormat.recognise($0, path: "x") } == nil)
        #expect(OtherFormat.safetensorsName(for: "a/b.c/model") == "a/b.c/model.safetensors")
        #expect(OtherFormat.safetensorsName(for: ".hidden") == ".hidden.safetensors")
    }

    // MARK: command line

    @Test(needsCLI) func misspelledCommandsAndOptionsGetSuggestions() throws {
        for (word, suggestion) in [("palettze", "palettize"), ("unpak", "unpack"), ("inf", "info"), ("dmeo", "demo")] {
            let r = try CLI.run([word, "x"])
            #expect(r.status == 64 && r.stderr.contains("unknown command '\(word)'") && r.stderr.contains("did you mean '\(suggestion)'"),
                    "\(word): \(r.stderr)")
        }
        let unknown = try CLI.run(["frobnicate"])
        #expect(unknown.status == 64 && !unknown.stderr.contains("did you mean") && unknown.stderr.contains("Commands: palettize"))
        let option = try CLI.run(["palettize", "x", "-o", "y", "--bitz", "3"])
        #expect(option.status != 0 && option.stderr.contains("--bits"), "\(option.stderr)")
        #expect(try CLI.run(["help", "info"]).status == 0)
    }

    @Test(needsCLI) func palettizeThatSelectsNothingFailsUnlessAllowed() throws {
        let dir = TempDir()
        let input = try Self.model(dir)
        let out = dir.file("out.safetensors")
        let r = try CLI.run(["palettize", input, "-o", out, "--include", "^nothing$"])
        #expect(r.status == 1 && errorLines(r).first?.contains("no tensor of") == true && r.stderr.contains("--allow-none"), "\(r.stderr)")
        #expect(!exists(out) && dir.contents == ["model.safetensors"])
        let allowed = try CLI.run(["palettize", input, "-o", out, "--include", "^nothing$", "--allow-none"])
        #expect(allowed.status == 0 && allowed.stderr.contains("warning: no tensor was selected"), "\(allowed.stderr)")
        let a = try SafetensorsFile(path: input), b = try SafetensorsFile(path: out)
        #expect(a.header.tensors.map(\.name).sorted() == b.header.tensors.map(\.name).sorted())
        for t in a.header.tensors { #expect(tensorBytes(a, t.name) == tensorBytes(b, t.name)) }
    }

    // MARK: pictures

    @Test(needsCLI) func demoWritesPNGPictures() throws {
        let dir = TempDir()
        let plots = dir.file("plots/sub")
        let r = try CLI.run(["demo", "--plots", plots, "--train-samples", "640", "--epochs", "1", "--ft-epochs", "1",
                             "--bits", "3", "--llm-layer", "0", "--plain"])
        #expect(r.status == 0, "\(r.stderr)")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: plots)) ?? []).sorted()
        #expect(names == ["histogram-W1-3bit.png", "reconstruction-error.png", "training-loss.png"])
        #expect(r.stdout.contains("pictures: "))
        for n in names {
            let png = readBytes(plots + "/" + n)
            let chunks = try PNGChunks.parse(png)
            #expect(chunks.first?.type == "IHDR" && chunks.last?.type == "IEND" && chunks.contains { $0.type == "IDAT" })
            let ihdr = chunks[0].body
            let width = ihdr[0..<4].reduce(0) { $0 << 8 | Int($1) }, height = ihdr[4..<8].reduce(0) { $0 << 8 | Int($1) }
            #expect(width == 1000 && height == 520 && ihdr[8] == 8 && ihdr[9] == 2)
            #expect(png.count > 2000 && png.count < 400_000, "\(n): \(png.count) bytes")
        }
        let notDir = dir.file("file")
        writeBytes([1], to: notDir)
        let bad = try CLI.run(["demo", "--plots", notDir, "--llm-layer", "0"])
        #expect(bad.status == 1 && bad.stderr.contains("is not a directory"))
    }
}

/// PNG chunks with their CRCs checked, for the tests (CRC-32 computed bit by bit here, not with
/// the table the encoder uses).
enum PNGChunks {
    struct Chunk { let type: String; let body: [UInt8] }
    struct Malformed: Error, CustomStringConvertible { let description: String }

    static func crc(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            c ^= UInt32(b)
            for _ in 0..<8 { c = (c >> 1) ^ (c & 1 == 1 ? 0xEDB8_8320 : 0) }
        }
        return ~c
    }

    static func parse(_ png: [UInt8]) throws -> [Chunk] {
        guard png.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) else { throw Malformed(description: "no PNG signature") }
        var chunks: [Chunk] = []
        var at = 8
        func u32(_ i: Int) -> Int { png[i..<(i + 4)].reduce(0) { $0 << 8 | Int($1) } }
        while at + 12 <= png.count {
            let n = u32(at)
            guard at + 12 + n <= png.count else { throw Malformed(description: "truncated chunk at \(at)") }
            let typeAndBody = Array(png[(at + 4)..<(at + 8 + n)])
            guard crc(typeAndBody) == UInt32(u32(at + 8 + n)) else { throw Malformed(description: "bad CRC at \(at)") }
            chunks.append(Chunk(type: String(decoding: typeAndBody[0..<4], as: UTF8.self), body: Array(typeAndBody[4...])))
            at += 12 + n
        }
        guard at == png.count else { throw Malformed(description: "trailing bytes") }
        return chunks
    }
}

/// Runs a program with its stdout and stderr on a pseudo-terminal (as a person's shell would),
/// collecting everything it writes there.
enum PseudoTerminal {
    static func run(_ executable: String, _ args: [String]) throws -> (status: Int32, output: String) {
        var master: Int32 = -1, slave: Int32 = -1
        var size = winsize(ws_row: 40, ws_col: 160, ws_xpixel: 0, ws_ypixel: 0)
        guard openpty(&master, &slave, nil, nil, &size) == 0 else { throw CLIFailure("openpty failed: errno \(errno)") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["TERM"] = "xterm"
        p.environment = env
        let terminal = FileHandle(fileDescriptor: slave, closeOnDealloc: false)
        p.standardOutput = terminal
        p.standardError = terminal
        try p.run()
        close(slave)
        var output = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {  // read until the child's side is closed (EIO on Linux)
            let n = read(master, &buffer, buffer.count)
            if n <= 0 { break }
            output += buffer[0..<n]
        }
        p.waitUntilExit()
        close(master)
        return (p.terminationStatus, String(decoding: output, as: UTF8.self))
    }
}

struct CLIFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
