import EDKMSafetensors
import Foundation
import Testing

/// `edkm palettize --channel-scale`: the per-output-channel scale (coremltools'
/// enable_per_channel_scale) in the CLI. Checked here independently of the code under test: the
/// factors against each row's range or largest magnitude computed from the input, every unpacked
/// weight against lut[label] x scale[row] decoded bit by bit, every label against the nearest
/// centroid of the scaled weight, the file against palettized format version 2.
@Suite struct ChannelScaleCLITests {
    /// The factor of one row (Float arithmetic, as the format's reference): min_max (max - min) / 2,
    /// abs_max max |w|; 0 becomes the row's largest magnitude, or 1 for a zero row.
    static func factor(_ row: [Float], minMax: Bool) -> Float {
        let peak = row.map(abs).max()!
        let s = minMax ? 0.5 * (row.max()! - row.min()!) : peak
        return s > 0 ? s : (peak > 0 ? peak : 1)
    }

    /// Checks the version-2 records of P against O and the unpacked file U; returns the names.
    @discardableResult
    static func verifyScaled(original o: String, palettized p: String, unpacked u: String, minMax: Bool,
                             bits: Int, group: Int) throws -> [String] {
        let O = try SafetensorsFile(path: o), P = try SafetensorsFile(path: p), U = try SafetensorsFile(path: u)
        let md = try #require(P.header.metadata)
        #expect(md[PalettizedTensor.formatKey] == PalettizedTensor.scaledFormatValue)
        var names: [String] = []
        for e in md.entries where e.key.hasPrefix(PalettizedTensor.tensorKeyPrefix) {
            let name = String(e.key.dropFirst(PalettizedTensor.tensorKeyPrefix.count))
            names.append(name)
            let rec = try #require(try JSONSerialization.jsonObject(with: Data(e.value.utf8)) as? [String: Any])
            #expect(rec["bits"] as? Int == bits && rec["group_size"] as? Int == group && rec["cluster_dim"] as? Int == 1)
            let scaleName = try #require(rec["scale"] as? String)
            #expect(scaleName == name + ".scale")
            let orig = try #require(O.header.tensor(named: name)), dtype = orig.dtype
            let rows = orig.shape[0], n = orig.elementCount, rowLength = n / rows, k = 1 << bits
            let scaleT = try #require(P.header.tensor(named: scaleName))
            #expect(scaleT.dtype == .f32 && scaleT.shape == [rows])
            let lutName = try #require(rec["lut"] as? String), idxName = try #require(rec["indices"] as? String)
            let lutT = try #require(P.header.tensor(named: lutName))
            let idxT = try #require(P.header.tensor(named: idxName))
            let restored = try #require(U.header.tensor(named: name))
            let w = Array(O.data(orig)), lut = Array(P.data(lutT)), idx = Array(P.data(idxT))
            let scale = Array(P.data(scaleT)), out = Array(U.data(restored))
            let groups = group == 0 ? 1 : rows / group, perGroup = n / groups, bytesPerGroup = (perGroup * bits + 7) / 8
            var mismatches = 0, notNearest = 0, diff2 = 0.0, norm2 = 0.0
            for r in 0..<rows {
                let row = (0..<rowLength).map { floatValue(w, dtype, r * rowLength + $0) }
                let s = floatValue(scale, .f32, r)
                #expect(s == factor(row, minMax: minMax), "\(name) row \(r): factor \(s)")
                let g = r * rowLength / perGroup
                let stream = idx[(g * bytesPerGroup)..<((g + 1) * bytesPerGroup)]
                let centroids = (0..<k).map { floatValue(lut, lutT.dtype, g * k + $0) }
                for c in 0..<rowLength {
                    let i = r * rowLength + c
                    let label = decodeLabel(stream, bits: bits, index: i - g * perGroup)
                    let expected = RoundTripTests.encode(centroids[label] * s, as: dtype)
                    if Array(out[(i * dtype.alignment)..<((i + 1) * dtype.alignment)]) != expected { mismatches += 1 }
                    let x = Double(row[c] / s)  // the label is that of the scaled weight
                    let d = centroids.map { (x - Double($0)) * (x - Double($0)) }
                    if d[label] > d.min()! * (1 + 1e-3) + 1e-12 { notNearest += 1 }
                    let y = Double(floatValue(out, dtype, i))
                    diff2 += (Double(row[c]) - y) * (Double(row[c]) - y)
                    norm2 += Double(row[c]) * Double(row[c])
                }
            }
            #expect(mismatches == 0, "\(name): \(mismatches) unpacked weights differ from lut[label] x scale[row]")
            #expect(notNearest <= n / 100, "\(name): \(notNearest) labels are not the nearest centroid of w / s")
            #expect((diff2 / norm2).squareRoot() < 2.5 * pow(2, -Double(bits)), "\(name): relative error")
        }
        return names.sorted()
    }

    @Test(needsCLI, arguments: [(["--channel-scale", "min_max", "--bits", "3"], true, 3, 0),
                                (["--channel-scale", "abs_max", "--bits", "4", "--group-size", "16"], false, 4, 16),
                                (["--channel-scale", "abs", "--bits", "2"], false, 2, 0)])
    func scaledRoundTrip(_ args: [String], _ minMax: Bool, _ bits: Int, _ group: Int) throws {
        let dir = TempDir()
        let o = dir.file("model.safetensors"), p = dir.file("pal.safetensors"), u = dir.file("unpacked.safetensors")
        try RoundTripTests.makeModel(at: o)
        let r1 = try CLI.run(["palettize", o, "-o", p] + args)
        #expect(r1.status == 0, "\(r1.stderr)")
        #expect(r1.stdout.contains("scale " + (minMax ? "min_max" : "abs_max")))
        let r2 = try CLI.run(["unpack", p, "-o", u])
        #expect(r2.status == 0, "\(r2.stderr)")
        let names = try Self.verifyScaled(original: o, palettized: p, unpacked: u, minMax: minMax, bits: bits, group: group)
        #expect(names == RoundTripTests.all)
        // Everything else is copied unchanged.
        let O = try SafetensorsFile(path: o), U = try SafetensorsFile(path: u)
        for t in O.header.tensors where !names.contains(t.name) { #expect(tensorBytes(U, t.name) == Array(O.data(t))) }
        let info = try CLI.run(["info", p])
        #expect(info.status == 0 && info.stdout.contains("f16.w.scale"), "\(info.stdout)")
    }

    /// Rows whose factor would be 0: a zero row gets 1, a constant row under min_max its magnitude
    /// (no NaN, no division by zero); each comes back as one value, near its own.
    @Test(needsCLI) func zeroAndConstantRows() throws {
        let dir = TempDir()
        var rng = TestRandom(21)
        var w = rng.normals(64 * 64, scale: 0.3)
        for c in 0..<64 { w[5 * 64 + c] = 0; w[9 * 64 + c] = -0.75 }
        try writeSafetensors([.float("w", .f32, [64, 64], w)], to: dir.file("m"))
        let r = try CLI.run(["palettize", dir.file("m"), "-o", dir.file("p"), "--channel-scale", "min_max", "--bits", "3"])
        #expect(r.status == 0, "\(r.stderr)")
        let P = try SafetensorsFile(path: dir.file("p"))
        let scale = try #require(tensorBytes(P, "w.scale"))
        #expect(floatValue(scale, .f32, 5) == 1 && floatValue(scale, .f32, 9) == 0.75)
        #expect(try CLI.run(["unpack", dir.file("p"), "-o", dir.file("u")]).status == 0)
        try Self.verifyScaled(original: dir.file("m"), palettized: dir.file("p"), unpacked: dir.file("u"), minMax: true, bits: 3, group: 0)
        let out = try #require(tensorBytes(try SafetensorsFile(path: dir.file("u")), "w"))
        let zero = floatValue(out, .f32, 5 * 64), constant = floatValue(out, .f32, 9 * 64)
        #expect((0..<64).allSatisfy { floatValue(out, .f32, 5 * 64 + $0) == zero && floatValue(out, .f32, 9 * 64 + $0) == constant })
        #expect(abs(zero) < 0.25 && abs(constant + 0.75) < 0.25 * 0.75, "zero row -> \(zero), constant row -> \(constant)")
    }

    /// --channel-scale none (the default) writes format version 1, byte for byte the file without it.
    @Test(needsCLI) func noneIsTheDefaultAndVersion1() throws {
        let dir = TempDir()
        try RoundTripTests.makeModel(at: dir.file("m"))
        #expect(try CLI.run(["palettize", dir.file("m"), "-o", dir.file("a")]).status == 0)
        #expect(try CLI.run(["palettize", dir.file("m"), "-o", dir.file("b"), "--channel-scale", "none"]).status == 0)
        #expect(readBytes(dir.file("a")) == readBytes(dir.file("b")))
        let md = try #require(try SafetensorsFile(path: dir.file("a")).header.metadata)
        #expect(md[PalettizedTensor.formatKey] == PalettizedTensor.formatValue)
        #expect(!md.entries.contains { $0.value.contains("\"scale\"") })
    }

    @Test(needsCLI, arguments: ["", "MIN_MAX", "minmax", "abs-max", "per_channel", "1"])
    func badValuesAreRefusedBeforeAnyWork(_ value: String) throws {
        let dir = TempDir()
        try RoundTripTests.makeModel(at: dir.file("m"))
        let r = try CLI.run(["palettize", dir.file("m"), "-o", dir.file("p"), "--channel-scale", value])
        #expect(r.status != 0 && r.stderr.contains("--channel-scale must be none, min_max or abs_max"), "\(r.stderr)")
        #expect(r.stderr.contains("\"\(value)\""))
        #expect(dir.contents == ["m"])
    }

    @Test(needsCLI) func helpNamesTheOption() throws {
        let h = try CLI.run(["palettize", "--help"])
        #expect(h.status == 0 && h.stdout.contains("--channel-scale") && h.stdout.contains("min_max")
                && h.stdout.contains("abs_max") && h.stdout.contains("version 2"))
    }
}
