import EDKMSafetensors
import Foundation
import Testing

/// Every kind of malformed safetensors file: the reader names the problem (kind and message), and
/// every command exits nonzero with one error line and leaves no output (or temporary) file.
@Suite struct MalformedFileTests {
    /// A valid file: a (F32 2x2) at [0, 16), b (U8 [4]) at [16, 20).
    static let goodHeader = #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}}"#
    static let goodData = [UInt8](repeating: 0, count: 16) + [1, 2, 3, 4]

    struct Case: CustomTestStringConvertible, Sendable {
        let label: String
        let bytes: [UInt8]
        let kind: SafetensorsError.Kind
        let words: String  // a phrase the message must contain
        var testDescription: String { label }
    }

    static func entry(_ name: String, _ body: String) -> String { "\"\(name)\":{\(body)}" }

    static let cases: [Case] = {
        let d = goodData
        func file(_ header: String, _ data: [UInt8] = d) -> [UInt8] { rawSafetensors(header: header, data: data) }
        let a = #""a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"#
        return [
            Case(label: "empty file", bytes: [], kind: .fileTooShort, words: "shorter than the 8-byte header length"),
            Case(label: "5-byte file", bytes: [1, 2, 3, 4, 5], kind: .fileTooShort, words: "5 bytes"),
            Case(label: "header length beyond the file", bytes: rawSafetensors(header: goodHeader, data: d, declaredLength: 1000),
                 kind: .headerLength, words: "goes beyond the end of the file"),
            Case(label: "header length 0", bytes: rawSafetensors(header: "", data: d, declaredLength: 0), kind: .headerLength, words: "header length is 0"),
            Case(label: "header length over the limit", bytes: rawSafetensors(header: goodHeader, data: d, declaredLength: 200_000_000),
                 kind: .headerLength, words: "over the limit"),
            Case(label: "header not starting with {", bytes: file("[1,2]"), kind: .malformedJSON, words: "does not start with '{'"),
            Case(label: "truncated JSON", bytes: file(#"{"a":{"dtype":"F32","#), kind: .malformedJSON, words: "malformed header JSON"),
            Case(label: "trailing comma", bytes: file("{\(a),}"), kind: .malformedJSON, words: "malformed header JSON"),
            Case(label: "duplicate tensor name", bytes: file("{\(a),\(a)}"), kind: .malformedJSON, words: "duplicate key"),
            Case(label: "invalid UTF-8 in a name", bytes: rawSafetensors(header: "{\"\u{FFFD}\":1}", data: []).map { $0 == 0xEF ? 0xFF : $0 },
                 kind: .malformedJSON, words: "UTF-8"),
            Case(label: "garbage after the JSON", bytes: file(goodHeader + "xx"), kind: .malformedJSON, words: "after the JSON value"),
            Case(label: "missing dtype", bytes: file(#"{"a":{"shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}}"#),
                 kind: .invalidEntry, words: "missing field \"dtype\""),
            Case(label: "missing shape", bytes: file(#"{"a":{"dtype":"F32","data_offsets":[0,16]},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}}"#),
                 kind: .invalidEntry, words: "missing field \"shape\""),
            Case(label: "missing data_offsets", bytes: file(#"{"a":{"dtype":"F32","shape":[2,2]},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}}"#),
                 kind: .invalidEntry, words: "missing field \"data_offsets\""),
            Case(label: "unknown field", bytes: file(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16],"x":1},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}}"#),
                 kind: .invalidEntry, words: "unknown field \"x\""),
            Case(label: "entry not an object", bytes: file(#"{"a":[1,2]}"#, []), kind: .invalidEntry, words: "not an object"),
            Case(label: "negative shape", bytes: file(#"{"a":{"dtype":"F32","shape":[-2,2],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}}"#),
                 kind: .invalidEntry, words: "shape entries must be non-negative integers"),
            Case(label: "fractional shape", bytes: file(#"{"a":{"dtype":"F32","shape":[2.0,2],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}}"#),
                 kind: .invalidEntry, words: "shape entries must be non-negative integers"),
            Case(label: "three data_offsets", bytes: file(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16,20]},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}}"#),
                 kind: .invalidEntry, words: "data_offsets must be [begin, end]"),
            Case(label: "metadata value not a string", bytes: file(#"{"__metadata__":{"k":1},"# + String(goodHeader.dropFirst())),
                 kind: .invalidEntry, words: "__metadata__ value for \"k\""),
            Case(label: "unknown dtype", bytes: file(#"{"a":{"dtype":"F17","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}}"#),
                 kind: .unknownDType, words: "unknown dtype \"F17\""),
            Case(label: "offsets beyond the data", bytes: file(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,100]}}"#),
                 kind: .offsetsOutOfRange, words: "beyond the data section"),
            Case(label: "reversed offsets", bytes: file(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}}"#),
                 kind: .offsetsOutOfRange, words: "end before they begin"),
            Case(label: "overlapping offsets", bytes: file(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[4],"data_offsets":[12,16]}}"#),
                 kind: .overlappingOffsets, words: "overlap"),
            Case(label: "same offsets twice", bytes: file(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, [UInt8](repeating: 0, count: 16)),
                 kind: .overlappingOffsets, words: "overlap"),
            Case(label: "gap between tensors", bytes: file(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[4],"data_offsets":[17,21]}}"#, d + [0]),
                 kind: .nonContiguousOffsets, words: "belong to no tensor"),
            Case(label: "gap before the first tensor", bytes: file(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[4,20]}}"#),
                 kind: .nonContiguousOffsets, words: "before the first tensor"),
            Case(label: "trailing bytes", bytes: file(goodHeader, d + [9, 9, 9]), kind: .nonContiguousOffsets, words: "trailing bytes"),
            Case(label: "shape/byte-size mismatch", bytes: file(#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[4],"data_offsets":[16,20]}}"#),
                 kind: .sizeMismatch, words: "needs 24 bytes but data_offsets [0, 16] span 16"),
            Case(label: "element count overflow", bytes: file(#"{"a":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],"data_offsets":[0,0]},"b":{"dtype":"U8","shape":[20],"data_offsets":[0,20]}}"#),
                 kind: .sizeMismatch, words: "fits in 64 bits"),
            Case(label: "sub-byte size", bytes: file(#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[18],"data_offsets":[2,20]}}"#),
                 kind: .sizeMismatch, words: "whole number of bytes"),
        ]
    }()

    @Test(arguments: cases)
    func readerNamesTheProblem(_ c: Case) throws {
        let dir = TempDir()
        let path = dir.file("bad.safetensors")
        writeBytes(c.bytes, to: path)
        do {
            _ = try SafetensorsFile(path: path)
            Issue.record("\(c.label): accepted")
        } catch {
            #expect(error.kind == c.kind, "\(c.label): \(error.message)")
            #expect(error.message.contains(c.words), "\(c.label): \(error.message)")
            #expect(!error.message.contains("\n"))
        }
    }

    @Test(needsCLI, arguments: cases)
    func commandsFailWithOneLineAndNoOutput(_ c: Case) throws {
        let dir = TempDir()
        let bad = dir.file("bad.safetensors")
        writeBytes(c.bytes, to: bad)
        for args in [["info", bad], ["palettize", bad, "-o", dir.file("out.safetensors")], ["unpack", bad, "-o", dir.file("out.safetensors")]] {
            let r = try CLI.run(args)
            #expect(r.status == 1 && !r.signaled, "\(c.label) \(args[0]): status \(r.status)")
            let lines = errorLines(r)
            #expect(lines.count == 1, "\(c.label) \(args[0]): \(r.stderr)")
            #expect(lines.first?.contains(c.words) == true, "\(c.label) \(args[0]): \(r.stderr)")
            #expect(dir.contents == ["bad.safetensors"], "\(c.label) \(args[0]): left \(dir.contents)")
        }
    }

    @Test func validFileIsAccepted() throws {
        let dir = TempDir()
        let path = dir.file("good.safetensors")
        writeBytes(rawSafetensors(header: Self.goodHeader, data: Self.goodData), to: path)
        let f = try SafetensorsFile(path: path)
        #expect(f.header.tensors.map(\.name) == ["a", "b"])
        #expect(Array(f.data(f.header.tensor(named: "b")!)) == [1, 2, 3, 4])
        // Trailing spaces (the padding writers add) and zero-size tensors are fine.
        let padded = #"{"e":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]},"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}   "#
        writeBytes(rawSafetensors(header: padded, data: [1, 2, 3, 4]), to: path)
        let g = try SafetensorsFile(path: path)
        #expect(g.header.tensor(named: "e")?.byteCount == 0)
        #expect(Array(g.data(g.header.tensor(named: "b")!)) == [1, 2, 3, 4])
    }

    @Test(needsCLI) func existingOutputNeedsForce() throws {
        let dir = TempDir()
        let input = dir.file("in.safetensors"), output = dir.file("out.safetensors")
        var rng = TestRandom(3)
        try writeSafetensors([.float("w", .f16, [64, 64], rng.normals(4096, scale: 0.02))], to: input)
        writeBytes([42], to: output)
        for args in [["palettize", input, "-o", output, "--bits", "3"], ["unpack", input, "-o", output]] {
            let r = try CLI.run(args)
            #expect(r.status == 1)
            #expect(errorLines(r).count == 1 && errorLines(r)[0].contains("already exists (use --force to overwrite)"), "\(r.stderr)")
            #expect(readBytes(output) == [42])
            #expect(dir.contents == ["in.safetensors", "out.safetensors"])
        }
        let ok = try CLI.run(["palettize", input, "-o", output, "--bits", "3", "--force"])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(try SafetensorsFile(path: output).header.tensor(named: "w.indices") != nil)
    }

    @Test(needsCLI) func missingInputAndBadOutputDirectory() throws {
        let dir = TempDir()
        let r = try CLI.run(["info", dir.file("nope.safetensors")])
        #expect(r.status == 1 && errorLines(r).count == 1 && r.stderr.contains("cannot open"))
        let d = try CLI.run(["info", dir.path])
        #expect(d.status == 1 && d.stderr.contains("not a regular file"))
        let input = dir.file("in.safetensors")
        var rng = TestRandom(4)
        try writeSafetensors([.float("w", .f32, [64, 64], rng.normals(4096, scale: 1))], to: input)
        let o = try CLI.run(["palettize", input, "-o", dir.file("no/such/dir/out.safetensors")])
        #expect(o.status == 1 && errorLines(o).count == 1 && o.stderr.contains("does not exist"), "\(o.stderr)")
        #expect(dir.contents == ["in.safetensors"])
    }
}

/// Palettization metadata that does not match the tensors: `unpack` refuses it, writing nothing.
@Suite struct MalformedPalettizationTests {
    static func file(metadata: [(String, String)], lutShape: [Int] = [1, 8, 1], lutDtype: String = "F16",
                     indicesDtype: String = "U8", indicesShape: [Int] = [1, 96]) -> [UInt8] {
        let lutBytes = lutShape.reduce(1, *) * (lutDtype == "F32" ? 4 : 2)
        let idxBytes = indicesShape.reduce(1, *) * (indicesDtype == "U8" ? 1 : 2)
        let md = metadata.map { JSON.quote($0.0) + ":" + JSON.quote($0.1) }.joined(separator: ",")
        let header = "{\"__metadata__\":{\(md)},\"w.lut\":{\"dtype\":\"\(lutDtype)\",\"shape\":\(lutShape),\"data_offsets\":[0,\(lutBytes)]},"
            + "\"w.indices\":{\"dtype\":\"\(indicesDtype)\",\"shape\":\(indicesShape),\"data_offsets\":[\(lutBytes),\(lutBytes + idxBytes)]}}"
        return rawSafetensors(header: header, data: [UInt8](repeating: 0, count: lutBytes + idxBytes))
    }

    static let format = (PalettizedTensor.formatKey, PalettizedTensor.formatValue)
    static func record(_ body: String) -> (String, String) { ("edkm.tensor.w", body) }
    static let good = #"{"dtype":"F16","shape":[16,16],"bits":3,"group_size":0,"cluster_dim":1,"lut":"w.lut","indices":"w.indices"}"#

    @Test(needsCLI) func goodRecordUnpacks() throws {
        let dir = TempDir()
        writeBytes(Self.file(metadata: [Self.format, Self.record(Self.good)]), to: dir.file("p.safetensors"))
        let r = try CLI.run(["unpack", dir.file("p.safetensors"), "-o", dir.file("u.safetensors")])
        #expect(r.status == 0, "\(r.stderr)")
        let u = try SafetensorsFile(path: dir.file("u.safetensors"))
        #expect(u.header.tensors.map(\.name) == ["w"] && u.header.tensors[0].shape == [16, 16] && u.header.tensors[0].dtype == .f16)
        #expect(u.header.metadata == nil)
    }

    @Test(needsCLI, arguments: [
        ("unsupported format", [(PalettizedTensor.formatKey, "palettized-9"), record(good)], "unsupported edkm.format"),
        ("next major version", [(PalettizedTensor.formatKey, "palettized-3.0"), record(good)], "format major version 3, this edkm reads major versions 1 and 2"),
        ("not a version", [(PalettizedTensor.formatKey, "palettized-1.x"), record(good)], "not \"palettized-<major>[.<minor>]\""),
        ("unknown field, same minor", [format, record(good.replacingOccurrences(of: "}", with: ",\"note\":1}"))], "unknown metadata field \"note\""),
        ("record without format", [record(good)], "no edkm.format"),
        ("record not JSON", [format, record("{bits:3}")], "not valid JSON"),
        ("bits 9", [format, record(good.replacingOccurrences(of: "\"bits\":3", with: "\"bits\":9"))], "bits must be 1...8"),
        ("missing bits", [format, record(good.replacingOccurrences(of: "\"bits\":3,", with: ""))], "missing metadata field \"bits\""),
        ("unknown original dtype", [format, record(good.replacingOccurrences(of: "F16", with: "F8"))], "unknown original dtype"),
        ("integer original dtype", [format, record(good.replacingOccurrences(of: "F16", with: "I32"))], "not F32, F16 or BF16"),
        ("group size does not divide", [format, record(good.replacingOccurrences(of: "\"group_size\":0", with: "\"group_size\":5"))], "does not divide"),
        ("shape does not fit the indices", [format, record(good.replacingOccurrences(of: "[16,16]", with: "[16,32]"))], "indices shape is [1, 96], expected [1, 192]"),
        ("missing LUT tensor", [format, record(good.replacingOccurrences(of: "\"lut\":\"w.lut\"", with: "\"lut\":\"v.lut\""))], "LUT tensor \"v.lut\" is missing"),
        ("LUT and indices the same", [format, record(good.replacingOccurrences(of: "\"lut\":\"w.lut\"", with: "\"lut\":\"w.indices\""))], "the same tensor"),
        ("too few vectors per group", [format, record(good.replacingOccurrences(of: "\"bits\":3", with: "\"bits\":8").replacingOccurrences(of: "[16,16]", with: "[2,8]"))], "fewer than the 2^8 centroids"),
    ])
    func unpackRefuses(_ label: String, _ metadata: [(String, String)], _ words: String) throws {
        let dir = TempDir()
        writeBytes(Self.file(metadata: metadata), to: dir.file("p.safetensors"))
        let r = try CLI.run(["unpack", dir.file("p.safetensors"), "-o", dir.file("u.safetensors")])
        #expect(r.status == 1, "\(label)")
        #expect(errorLines(r).count == 1 && r.stderr.contains(words), "\(label): \(r.stderr)")
        #expect(dir.contents == ["p.safetensors"], "\(label)")
        let f = try SafetensorsFile(path: dir.file("p.safetensors"))
        #expect(throws: SafetensorsError.self) { _ = try PalettizedTensor.records(in: f.header) }
    }

    @Test(needsCLI) func wrongTensorDtypesAndShapes() throws {
        let dir = TempDir()
        let cases: [([UInt8], String)] = [
            (Self.file(metadata: [Self.format, Self.record(Self.good)], lutDtype: "I16"), "LUT dtype is I16"),
            (Self.file(metadata: [Self.format, Self.record(Self.good)], lutShape: [1, 8, 2]), "LUT shape is [1, 8, 2]"),
            (Self.file(metadata: [Self.format, Self.record(Self.good)], indicesDtype: "I16", indicesShape: [1, 48]), "indices dtype is I16"),
        ]
        for (bytes, words) in cases {
            writeBytes(bytes, to: dir.file("p.safetensors"))
            let r = try CLI.run(["unpack", dir.file("p.safetensors"), "-o", dir.file("u.safetensors")])
            #expect(r.status == 1 && r.stderr.contains(words), "\(r.stderr)")
            #expect(dir.contents == ["p.safetensors"])
        }
    }

    @Test(needsCLI) func plainFileHasNothingToUnpack() throws {
        let dir = TempDir()
        writeBytes(rawSafetensors(header: MalformedFileTests.goodHeader, data: MalformedFileTests.goodData), to: dir.file("p.safetensors"))
        let r = try CLI.run(["unpack", dir.file("p.safetensors"), "-o", dir.file("u.safetensors")])
        #expect(r.status == 1 && r.stderr.contains("nothing to unpack"))
        #expect(dir.contents == ["p.safetensors"])
    }
}
