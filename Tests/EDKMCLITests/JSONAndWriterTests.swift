import EDKMSafetensors
import Foundation
import Testing

@Suite struct JSONTests {
    @Test(arguments: [
        #"{}"#, #"{"a":1}"#, #" { "a" : [ 1 , -2.5e3 , true , false , null , "x" ] } "#, #"{"\u00e9\ud83d\ude00\n\"":"\/"}"#, "[0]", "\"\"", "-0",
    ])
    func accepts(_ text: String) throws {
        let v = try JSON.parse(text)
        // Round trip through the serialiser.
        #expect(try JSON.parse(JSON.serialize(v)) == v)
    }

    @Test(arguments: [
        "", "{", "{\"a\":1,}", "[1,]", "{\"a\" 1}", "01", "1.", ".5", "1e", "+1", "NaN", "{'a':1}", "\"\\x\"", "\"\u{01}\"",
        "\"\\ud800\"", "\"\\udc00x\"", "{\"a\":1}{", "[1 2]", "tru", "nul", "{\"a\":1,\"a\":2}", String(repeating: "[", count: 200) + String(repeating: "]", count: 200),
    ])
    func rejects(_ text: String) {
        #expect(throws: JSONParseError.self) { _ = try JSON.parse(text) }
    }

    @Test func invalidUTF8IsRejected() {
        #expect(throws: JSONParseError.self) { _ = try JSON.parse([0x22, 0xC3, 0x28, 0x22]) }
        #expect(throws: JSONParseError.self) { _ = try JSON.parse([0x22, 0xED, 0xA0, 0x80, 0x22]) }  // encoded surrogate
    }

    @Test func quoteEscapes() throws {
        let s = "a\"b\\c\n\u{01}\u{7f}é😀"
        #expect(try JSON.parse(JSON.quote(s)) == .string(s))
    }

    @Test func bigIntegers() throws {
        #expect(try JSON.parse("18446744073709551615").unsignedInteger == UInt64.max)
        #expect(try JSON.parse("18446744073709551616").unsignedInteger == nil)
        #expect(try JSON.parse("1e3").unsignedInteger == nil)
        #expect(try JSON.parse("-1").unsignedInteger == nil)
    }
}

@Suite struct WriterTests {
    @Test func streamsAlignsAndReadsBack() throws {
        let dir = TempDir()
        let path = dir.file("w.safetensors")
        let tensors = [
            OutputTensor(name: "d", dtype: .f64, shape: [3]),
            OutputTensor(name: "s\"ü", dtype: .f32, shape: [2, 2]),
            OutputTensor(name: "h", dtype: .f16, shape: [3]),
            OutputTensor(name: "z", dtype: .f32, shape: [0]),
            OutputTensor(name: "b", dtype: .u8, shape: [5]),
        ]
        let w = try SafetensorsWriter(path: path, tensors: tensors, metadata: Metadata([("k", "v\"")]), force: false)
        #expect(!exists(path))
        #expect(dir.contents.count == 1 && dir.contents[0].hasPrefix(".w.safetensors.tmp-"))
        try w.append([UInt8](repeating: 1, count: 24))
        try w.append([UInt8](repeating: 2, count: 10))  // crosses into the next tensor
        try w.append([UInt8](repeating: 3, count: 12))
        try w.append([UInt8](1...5))
        try w.finish()
        #expect(dir.contents == ["w.safetensors"])
        let f = try SafetensorsFile(path: path)
        #expect(f.header.headerLength % 8 == 0)
        #expect(f.header.metadata == Metadata([("k", "v\"")]))
        #expect(f.header.tensors.map(\.name) == ["d", "s\"ü", "h", "z", "b"])
        #expect(Array(f.data(f.header.tensor(named: "b")!)) == [1, 2, 3, 4, 5])
        #expect(Array(f.data(f.header.tensor(named: "s\"ü")!)) == [UInt8](repeating: 2, count: 10) + [UInt8](repeating: 3, count: 6))
        #expect(Array(f.data(f.header.tensor(named: "h")!)) == [3, 3, 3, 3, 3, 3])
        for t in f.header.tensors where t.byteCount > 0 { #expect((f.header.dataStart + t.begin) % t.dtype.alignment == 0) }
    }

    @Test func droppedOrAbortedWriterLeavesNothing() throws {
        let dir = TempDir()
        let path = dir.file("w.safetensors")
        do {
            let w = try SafetensorsWriter(path: path, tensors: [OutputTensor(name: "a", dtype: .u8, shape: [4])], metadata: nil, force: false)
            try w.append([1, 2])
        }
        #expect(dir.contents.isEmpty)
        let w = try SafetensorsWriter(path: path, tensors: [OutputTensor(name: "a", dtype: .u8, shape: [4])], metadata: nil, force: false)
        try w.append([1, 2])
        #expect(throws: SafetensorsError.self) { try w.finish() }  // incomplete
        #expect(dir.contents.isEmpty)
        let v = try SafetensorsWriter(path: path, tensors: [OutputTensor(name: "a", dtype: .u8, shape: [4])], metadata: nil, force: false)
        #expect(throws: SafetensorsError.self) { try v.append([1, 2, 3, 4, 5]) }  // too much
        v.abort()
        #expect(dir.contents.isEmpty)
    }

    @Test func noClobberWithoutForce() throws {
        let dir = TempDir()
        let path = dir.file("w.safetensors")
        let w = try SafetensorsWriter(path: path, tensors: [OutputTensor(name: "a", dtype: .u8, shape: [1])], metadata: nil, force: false)
        try w.append([9])
        writeBytes([1, 2, 3], to: path)  // appears while writing
        #expect(throws: SafetensorsError.self) { try w.finish() }
        #expect(readBytes(path) == [1, 2, 3])
        #expect(dir.contents == ["w.safetensors"])
        #expect(throws: SafetensorsError.self) {
            _ = try SafetensorsWriter(path: path, tensors: [], metadata: nil, force: false)
        }
        let f = try SafetensorsWriter(path: path, tensors: [OutputTensor(name: "a", dtype: .u8, shape: [1])], metadata: nil, force: true)
        try f.append([9])
        try f.finish()
        #expect(try SafetensorsFile(path: path).header.tensors.count == 1)
    }

    @Test func duplicateOrReservedNames() {
        let dir = TempDir()
        for names in [["a", "a"], ["__metadata__"]] {
            #expect(throws: SafetensorsError.self) {
                _ = try SafetensorsWriter(path: dir.file("x"), tensors: names.map { OutputTensor(name: $0, dtype: .u8, shape: [1]) },
                                          metadata: nil, force: false)
            }
        }
        #expect(dir.contents.isEmpty)
    }
}
