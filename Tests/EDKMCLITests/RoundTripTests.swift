import EDKMSafetensors
import Foundation
import Testing

/// palettize -> unpack through the `edkm` executable; every unpacked weight is checked against an
/// independent decode of the packed indices and the LUT (bit-exact), and everything else against
/// the input.
@Suite struct RoundTripTests {
    static let oddName = "layer \"0\"/ünïcode\\weight"

    /// A small checkpoint with every kind of tensor.
    static func makeModel(at path: String, seed: UInt64 = 1) throws {
        var rng = TestRandom(seed)
        var ids: [UInt8] = []
        for i in 0..<16 { withUnsafeBytes(of: Int64(i).littleEndian) { ids += $0 } }
        try writeSafetensors([
            .float("f16.w", .f16, [64, 96], rng.normals(64 * 96, scale: 0.02)),
            .float("bf16.w", .bf16, [128, 48], rng.normals(128 * 48, scale: 0.05)),
            .float("f32.w", .f32, [96, 64], rng.normals(96 * 64, scale: 1)),
            .float("f32.tiny", .f32, [64, 64], rng.normals(64 * 64, scale: 1e-6)),
            .float("f32.conv", .f32, [32, 8, 3, 3], rng.normals(32 * 72, scale: 0.1)),
            .float(oddName, .f16, [32, 64], rng.normals(32 * 64, scale: 0.5)),
            .float("bias", .f32, [96], rng.normals(96, scale: 0.1)),
            .float("small", .f16, [8, 8], rng.normals(64, scale: 1)),
            TestTensor(name: "ids", dtype: .i64, shape: [2, 8], bytes: ids),
            TestTensor(name: "empty", dtype: .f32, shape: [0, 4], bytes: []),
        ], metadata: Metadata([("format", "pt"), ("note", "made by the tests")]), to: path)
    }

    /// Checks P (palettized) and U (unpacked) against O (original); returns the palettized names.
    @discardableResult
    static func verify(original o: String, palettized p: String, unpacked u: String,
                       expectBits: Int, expectGroup: Int = 0, expectDim: Int = 1) throws -> [String] {
        let O = try SafetensorsFile(path: o), P = try SafetensorsFile(path: p), U = try SafetensorsFile(path: u)
        // Alignment of every tensor of the palettized and unpacked files.
        for f in [P, U] {
            for t in f.header.tensors where t.byteCount > 0 {
                #expect((f.header.dataStart + t.begin) % t.dtype.alignment == 0, "\(t.name) misaligned")
            }
        }
        #expect(U.header.metadata == O.header.metadata)
        let md = try #require(P.header.metadata)
        #expect(md["format"] == "pt" && md["note"] == "made by the tests")
        #expect(md[PalettizedTensor.formatKey] == PalettizedTensor.formatValue)

        var palettized: [String] = []
        for e in md.entries where e.key.hasPrefix(PalettizedTensor.tensorKeyPrefix) {
            let name = String(e.key.dropFirst(PalettizedTensor.tensorKeyPrefix.count))
            palettized.append(name)
            // Read the record with Foundation's JSON parser (independent of the library's).
            let rec = try #require(try JSONSerialization.jsonObject(with: Data(e.value.utf8)) as? [String: Any])
            let bits = try #require(rec["bits"] as? Int), group = try #require(rec["group_size"] as? Int)
            let d = try #require(rec["cluster_dim"] as? Int), shape = try #require(rec["shape"] as? [Int])
            let dtypeName = try #require(rec["dtype"] as? String)
            let dtype = try #require(DType(rawValue: dtypeName))
            #expect(bits == expectBits && group == expectGroup && d == expectDim)
            let orig = try #require(O.header.tensor(named: name))
            #expect(shape == orig.shape && dtype == orig.dtype)
            let lutName = try #require(rec["lut"] as? String), idxName = try #require(rec["indices"] as? String)
            let lutT = try #require(P.header.tensor(named: lutName))
            let idxT = try #require(P.header.tensor(named: idxName))
            let restored = try #require(U.header.tensor(named: name))
            #expect(restored.dtype == dtype && restored.shape == shape)

            let n = shape.reduce(1, *), k = 1 << bits
            let groups = group == 0 ? 1 : shape[0] / group
            let perGroup = n / groups, vectors = perGroup / d
            let bytesPerGroup = (vectors * bits + 7) / 8
            #expect(lutT.shape == [groups, k, d] && (lutT.dtype == .f16 || lutT.dtype == .f32))
            #expect(idxT.dtype == .u8 && idxT.shape == [groups, bytesPerGroup])
            let lut = Array(P.data(lutT)), idx = Array(P.data(idxT))
            let w = Array(O.data(orig)), out = Array(U.data(restored))
            var mismatches = 0, notNearest = 0
            var diff2 = 0.0, norm2 = 0.0
            for g in 0..<groups {
                let stream = idx[(g * bytesPerGroup)..<((g + 1) * bytesPerGroup)]
                let centroids = (0..<(k * d)).map { floatValue(lut, lutT.dtype, g * k * d + $0) }
                for v in 0..<vectors {
                    let label = decodeLabel(stream, bits: bits, index: v)
                    var dist = [Double](repeating: 0, count: k)
                    for e in 0..<d {
                        let i = g * perGroup + v * d + e
                        let expected = encode(centroids[label * d + e], as: dtype)
                        let got = Array(out[(i * dtype.alignment)..<((i + 1) * dtype.alignment)])
                        if got != expected { mismatches += 1 }
                        let wi = Double(floatValue(w, dtype, i))
                        for j in 0..<k { dist[j] += (wi - Double(centroids[j * d + e])) * (wi - Double(centroids[j * d + e])) }
                        let x = Double(floatValue(out, dtype, i))
                        diff2 += (wi - x) * (wi - x)
                        norm2 += wi * wi
                    }
                    // The label is a nearest centroid (up to the LUT's rounding).
                    if dist[label] > dist.min()! * (1 + 1e-3) + 1e-30 { notNearest += 1 }
                }
            }
            #expect(mismatches == 0, "\(name): \(mismatches) unpacked weights differ from lut[label]")
            #expect(notNearest <= vectors * groups / 100, "\(name): \(notNearest) labels are not a nearest centroid")
            let rel = (diff2 / norm2).squareRoot()
            let bound = 2.5 * pow(2, -Double(bits) / Double(d))  // ~2x the Gaussian optimum: catches gross failures
            #expect(rel < bound, "\(name): relative error \(rel) at \(bits) bits")
        }
        // Everything not palettized is copied byte for byte, into both files.
        for t in O.header.tensors where !palettized.contains(t.name) {
            #expect(tensorBytes(P, t.name) == Array(O.data(t)), "\(t.name) not copied into the palettized file")
            #expect(tensorBytes(U, t.name) == Array(O.data(t)), "\(t.name) not copied into the unpacked file")
        }
        #expect(Set(U.header.tensors.map(\.name)) == Set(O.header.tensors.map(\.name)))
        return palettized.sorted()
    }

    /// The bytes of `x` in a float dtype (round to nearest even), computed here.
    static func encode(_ x: Float, as dtype: DType) -> [UInt8] {
        switch dtype {
        case .f32: return withUnsafeBytes(of: x.bitPattern.littleEndian) { Array($0) }
        case .f16: return withUnsafeBytes(of: Float16(x).bitPattern.littleEndian) { Array($0) }
        case .bf16:
            let b = x.bitPattern
            let r = UInt16(truncatingIfNeeded: (b + 0x7FFF + ((b >> 16) & 1)) >> 16)
            return withUnsafeBytes(of: r.littleEndian) { Array($0) }
        default: fatalError()
        }
    }

    struct Setting: CustomTestStringConvertible, Sendable {
        let args: [String]
        let bits: Int, group: Int, dim: Int
        let palettized: [String]
        var testDescription: String { args.joined(separator: " ") }
    }

    static let all = ["bf16.w", "f16.w", "f32.conv", "f32.tiny", "f32.w", oddName].sorted()

    @Test(needsCLI, arguments: [
        Setting(args: ["--bits", "3"], bits: 3, group: 0, dim: 1, palettized: all),
        Setting(args: ["--bits", "4", "--group-size", "16"], bits: 4, group: 16, dim: 1, palettized: all),
        Setting(args: ["--bits", "2", "--cluster-dim", "2"], bits: 2, group: 0, dim: 2, palettized: all),
        Setting(args: ["--bits", "1"], bits: 1, group: 0, dim: 1, palettized: all),
        Setting(args: ["--bits", "8", "--lut-dtype", "f32"], bits: 8, group: 0, dim: 1, palettized: all),
        Setting(args: ["--bits", "5", "--min-size", "4000"], bits: 5, group: 0, dim: 1, palettized: ["bf16.w", "f16.w", "f32.tiny", "f32.w"]),
        Setting(args: ["--bits", "3", "--include", "^f32\\.", "--exclude", "tiny"], bits: 3, group: 0, dim: 1, palettized: ["f32.conv", "f32.w"]),
        Setting(args: ["--bits", "6", "--group-size", "32", "--cluster-dim", "3"], bits: 6, group: 32, dim: 3, palettized: ["bf16.w", "f16.w", "f32.conv"]),
    ])
    func palettizeUnpackRoundTrip(_ s: Setting) throws {
        let dir = TempDir()
        let o = dir.file("model.safetensors"), p = dir.file("pal.safetensors"), u = dir.file("unpacked.safetensors")
        try Self.makeModel(at: o)
        let r1 = try CLI.run(["palettize", o, "-o", p] + s.args)
        #expect(r1.status == 0, "\(r1.stderr)")
        #expect(r1.stdout.contains("rel. error") && r1.stdout.contains("total"))
        let r2 = try CLI.run(["unpack", p, "-o", u])
        #expect(r2.status == 0, "\(r2.stderr)")
        let names = try Self.verify(original: o, palettized: p, unpacked: u, expectBits: s.bits, expectGroup: s.group, expectDim: s.dim)
        #expect(names == s.palettized.sorted())
        #expect(dir.contents == ["model.safetensors", "pal.safetensors", "unpacked.safetensors"])
        let info = try CLI.run(["info", p])
        #expect(info.status == 0 && info.stdout.contains("palettized") && info.stdout.contains(s.palettized[0] + ".indices"))
    }

    @Test(needsCLI) func deterministic() throws {
        let dir = TempDir()
        let o = dir.file("m.safetensors")
        try Self.makeModel(at: o, seed: 9)
        for name in ["a", "b"] {
            let r = try CLI.run(["palettize", o, "-o", dir.file("\(name).p"), "--bits", "4", "--threads", name == "a" ? "1" : "3"])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(try CLI.run(["unpack", dir.file("\(name).p"), "-o", dir.file("\(name).u")]).status == 0)
        }
        #expect(readBytes(dir.file("a.p")) == readBytes(dir.file("b.p")))
        // Without the phase-1 cache of packed indices they are exported again: same file.
        let c = try CLI.run(["palettize", o, "-o", dir.file("c.p"), "--bits", "4"], environment: ["EDKM_PACKED_CACHE_BYTES": "0"])
        #expect(c.status == 0, "\(c.stderr)")
        #expect(readBytes(dir.file("a.p")) == readBytes(dir.file("c.p")))
        #expect(readBytes(dir.file("a.u")) == readBytes(dir.file("b.u")))
    }

    @Test(needsCLI) func alreadyPalettizedInputIsRefused() throws {
        let dir = TempDir()
        try Self.makeModel(at: dir.file("m"))
        #expect(try CLI.run(["palettize", dir.file("m"), "-o", dir.file("p")]).status == 0)
        let r = try CLI.run(["palettize", dir.file("p"), "-o", dir.file("pp")])
        #expect(r.status == 1 && r.stderr.contains("already palettized"))
        #expect(!exists(dir.file("pp")))
    }

    @Test(needsCLI) func nameCollisionIsRefused() throws {
        let dir = TempDir()
        var rng = TestRandom(5)
        try writeSafetensors([.float("w", .f16, [64, 64], rng.normals(4096, scale: 1)),
                              TestTensor(name: "w.lut", dtype: .u8, shape: [1], bytes: [7])], to: dir.file("m"))
        let r = try CLI.run(["palettize", dir.file("m"), "-o", dir.file("p")])
        #expect(r.status == 1 && r.stderr.contains("would be written twice"), "\(r.stderr)")
        #expect(!exists(dir.file("p")))
    }

    @Test(needsCLI) func nonFiniteWeightsAreAnError() throws {
        let dir = TempDir()
        var w = [Float](repeating: 0.5, count: 4096)
        for i in 0..<4096 { w[i] = Float(i % 17) / 17 }
        w[100] = .nan
        try writeSafetensors([.float("w", .f32, [64, 64], w)], to: dir.file("m"))
        let r = try CLI.run(["palettize", dir.file("m"), "-o", dir.file("p")])
        #expect(r.status == 1 && errorLines(r).count == 1 && r.stderr.contains("\"w\"") && r.stderr.contains("NON_FINITE"), "\(r.stderr)")
        #expect(dir.contents == ["m"])
    }

    /// SIGTERM while the output is being written (its temporary file exists): neither the output
    /// nor the temporary file remains.
    @Test(needsCLI, arguments: [SIGTERM, SIGINT])
    func interruptedWriteLeavesNothingBehind(_ sig: Int32) throws {
        let dir = TempDir()
        var rng = TestRandom(11)
        let w = rng.normals(512 * 512, scale: 1)
        try writeSafetensors((0..<8).map { .float("w\($0)", .f32, [512, 512], w) }, to: dir.file("m"))
        let p = try CLI.run(["palettize", dir.file("m"), "-o", dir.file("p"), "--bits", "4"])
        try #require(p.status == 0, "\(p.stderr)")
        var sawTemporary = false
        let r = try CLI.run(["unpack", dir.file("p"), "-o", dir.file("u")], killWhen: {
            sawTemporary = dir.contents.contains { $0.hasPrefix(".u.tmp-") }
            return sawTemporary
        }, signal: sig)
        print("interrupted unpack with signal \(sig): killed \(r.signaled)")
        if r.signaled {
            #expect(sawTemporary)
            #expect(dir.contents == ["m", "p"], "left \(dir.contents)")
        } else {
            // It finished before the temporary file was seen: then the output must be complete.
            #expect(r.status == 0)
            #expect(try SafetensorsFile(path: dir.file("u")).header.tensors.count == 8)
        }
    }

    @Test(needsCLI) func demoRunsShort() throws {
        let r = try CLI.run(["demo", "--epochs", "2", "--ft-epochs", "1", "--bits", "3", "--train-samples", "640", "--llm-layer", "64"])
        #expect(r.status == 0, "\(r.stderr)")
        for words in ["float32", "post-training palettization", "eDKM fine-tuned", "DKM baseline", "histogram", "arena peak", "LLM-sized layer: 64x64"] {
            #expect(r.stdout.contains(words), "demo output lacks \(words)")
        }
    }
}
