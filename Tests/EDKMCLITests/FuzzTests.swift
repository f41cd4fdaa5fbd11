import EDKMSafetensors
import Foundation
import Testing

/// A seeded corruption loop over a real palettized file: bit flips, truncations, header-length and
/// JSON edits. Every mutant is either rejected with a SafetensorsError or accepted with a header
/// whose every claim can be read safely (tensor data in bounds, palettization geometry matching
/// the LUT and index tensors, all labels decodable). A sample also goes through the executable
/// (`info` and `unpack` of palettized mutants, `palettize` of mutants of the plain model): exit
/// status 0 or 1 (never a signal), one error line, no output or temporary file left on failure.
@Suite struct FuzzTests {
    /// EDKM_FUZZ_ITERATIONS and EDKM_FUZZ_SEED override these for longer ad-hoc runs.
    static let iterations = Int(ProcessInfo.processInfo.environment["EDKM_FUZZ_ITERATIONS"] ?? "") ?? 2000
    static let seed = UInt64(ProcessInfo.processInfo.environment["EDKM_FUZZ_SEED"] ?? "") ?? 2024
    static var cliEvery: Int { max(50, iterations / 40) }

    enum Mutation: CaseIterable { case bitFlip, headerBitFlip, truncate, lengthField, deleteByte, insertByte, replaceDigit, swapBytes, duplicateRange }

    static func mutate(_ base: [UInt8], _ rng: inout TestRandom) -> (bytes: [UInt8], what: String) {
        var b = base
        let headerEnd = min(b.count, 8 + Int(b[0]) + Int(b[1]) << 8)
        let m = Mutation.allCases[rng.below(Mutation.allCases.count)]
        switch m {
        case .bitFlip:
            for _ in 0..<(1 + rng.below(4)) { let i = rng.below(b.count); b[i] ^= UInt8(1 << rng.below(8)) }
        case .headerBitFlip:
            let i = rng.below(headerEnd); b[i] ^= UInt8(1 << rng.below(8))
        case .truncate:
            b = Array(b.prefix(rng.below(b.count)))
        case .lengthField:
            let choices: [UInt64] = [0, 1, 7, UInt64(headerEnd - 8) + 1, UInt64(headerEnd - 8) - 1, UInt64(b.count), UInt64.max, 100_000_001,
                                     UInt64(rng.below(b.count * 2))]
            let n = choices[rng.below(choices.count)]
            for i in 0..<8 { b[i] = UInt8((n >> (8 * UInt64(i))) & 0xff) }
        case .deleteByte:
            b.remove(at: 8 + rng.below(headerEnd - 8))
        case .insertByte:
            let alphabet = Array(#"{}[]",:0123456789-.eE \ "#.utf8) + [0, 0xff, 0xc3]
            b.insert(alphabet[rng.below(alphabet.count)], at: 8 + rng.below(headerEnd - 8))
        case .replaceDigit:
            let digits = (8..<headerEnd).filter { b[$0] >= 0x30 && b[$0] <= 0x39 }
            if let i = digits.isEmpty ? nil : digits[rng.below(digits.count)] { b[i] = 0x30 + UInt8(rng.below(10)) }
        case .swapBytes:
            let i = 8 + rng.below(headerEnd - 8), j = 8 + rng.below(headerEnd - 8)
            b.swapAt(i, j)
        case .duplicateRange:
            let i = 8 + rng.below(headerEnd - 8), n = 1 + rng.below(16)
            b.insert(contentsOf: b[i..<min(i + n, headerEnd)], at: i)
        }
        return (b, "\(m)")
    }

    /// Everything an accepted header promises, exercised (a crash here fails the test run).
    static func exercise(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            guard let h = try? Header.parse(file: raw) else { return false }
            var sum = 0
            for t in h.tensors {
                precondition(h.dataStart + t.end <= raw.count)
                let d = UnsafeRawBufferPointer(rebasing: raw[(h.dataStart + t.begin)..<(h.dataStart + t.end)])
                sum &+= Int(d.first ?? 0) &+ Int(d.last ?? 0)
            }
            if let records = try? PalettizedTensor.records(in: h) {
                for r in records {
                    let lut = h.tensor(named: r.lutName)!, idx = h.tensor(named: r.indicesName)!
                    let stream = Array(raw[(h.dataStart + idx.begin)..<(h.dataStart + idx.end)])
                    for g in 0..<r.groups {
                        let slice = stream[(g * r.bytesPerGroup)..<((g + 1) * r.bytesPerGroup)]
                        for v in stride(from: 0, to: r.vectorsPerGroup, by: max(1, r.vectorsPerGroup / 64)) {
                            let label = decodeLabel(slice, bits: r.bits, index: v)
                            precondition(label < r.centroids)
                            precondition(((g * r.centroids + label) * r.clusterDim + r.clusterDim) * lut.dtype.alignment <= lut.byteCount)
                        }
                    }
                }
            }
            return sum >= Int.min
        }
    }

    @Test(needsCLI) func corruptionLoop() throws {
        let dir = TempDir()
        let model = dir.file("m.safetensors"), base = dir.file("base.safetensors")
        var rng = TestRandom(Self.seed)
        var ids: [UInt8] = []
        for i in 0..<8 { withUnsafeBytes(of: Int32(i).littleEndian) { ids += $0 } }
        try writeSafetensors([
            .float("a.w", .f16, [32, 64], rng.normals(2048, scale: 0.1)),
            .float("b.w", .bf16, [16, 128], rng.normals(2048, scale: 0.1)),
            .float("c.w", .f32, [64, 32], rng.normals(2048, scale: 0.1)),
            .float("bias", .f32, [8], rng.normals(8, scale: 1)),
            TestTensor(name: "ids", dtype: .i32, shape: [8], bytes: ids),
        ], metadata: Metadata([("format", "pt")]), to: model)
        let r = try CLI.run(["palettize", model, "-o", base, "--bits", "3", "--group-size", "8"])
        try #require(r.status == 0, "\(r.stderr)")
        let original = readBytes(base)
        let plainModel = readBytes(model)
        #expect(Self.exercise(original))

        var accepted = 0, rejected = 0, cliRuns = 0
        let start = Date()
        for i in 0..<Self.iterations {
            let (bytes, what) = Self.mutate(original, &rng)
            if Self.exercise(bytes) { accepted += 1 } else { rejected += 1 }
            if i % Self.cliEvery == 0 {
                cliRuns += 1
                let path = dir.file("mutant.safetensors"), out = dir.file("out.safetensors")
                writeBytes(bytes, to: path)
                for args in [["info", path], ["unpack", path, "-o", out, "--force"]] {
                    let c = try CLI.run(args)
                    #expect(!c.signaled && (c.status == 0 || c.status == 1), "mutant \(i) (\(what)) \(args[0]): status \(c.status) \(c.stderr)")
                    if c.status == 1 { #expect(errorLines(c).count == 1, "mutant \(i): \(c.stderr)") }
                    if args[0] == "unpack" {
                        if c.status == 0 { #expect(throws: Never.self) { _ = try SafetensorsFile(path: out) } }
                        try? FileManager.default.removeItem(atPath: out)
                        #expect(dir.contents == ["base.safetensors", "m.safetensors", "mutant.safetensors"], "mutant \(i): left \(dir.contents)")
                    }
                }
            }
        }
        // Mutants of the unpalettized model through `palettize`.
        for i in 0..<(Self.iterations / Self.cliEvery) {
            let (bytes, what) = Self.mutate(plainModel, &rng)
            let path = dir.file("mutant.safetensors"), out = dir.file("out.safetensors")
            writeBytes(bytes, to: path)
            let c = try CLI.run(["palettize", path, "-o", out, "--force", "--bits", "2", "--min-size", "1024"])
            cliRuns += 1
            #expect(!c.signaled && (c.status == 0 || c.status == 1), "model mutant \(i) (\(what)): status \(c.status) \(c.stderr)")
            if c.status == 1 { #expect(errorLines(c).count == 1, "model mutant \(i): \(c.stderr)") }
            if c.status == 0 { #expect(throws: Never.self) { _ = try SafetensorsFile(path: out) } }
            try? FileManager.default.removeItem(atPath: out)
            #expect(dir.contents == ["base.safetensors", "m.safetensors", "mutant.safetensors"], "model mutant \(i): left \(dir.contents)")
        }
        #expect(accepted + rejected == Self.iterations)
        #expect(rejected > Self.iterations / 2)
        print("fuzz: \(Self.iterations) mutants, \(accepted) accepted, \(rejected) rejected, \(cliRuns) through the executable, \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
    }
}
