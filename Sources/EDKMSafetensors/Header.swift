/// The parsed, validated header of a safetensors file.
///
/// Layout: an 8-byte little-endian header length N, N bytes of JSON (an object mapping tensor names
/// to {"dtype", "shape", "data_offsets"} plus an optional "__metadata__" object of strings), then
/// the data section. data_offsets are relative to the data section; the tensors must tile it
/// exactly (no overlap, no gap, nothing after the last tensor), as the reference implementation
/// requires.

public struct TensorInfo: Equatable, Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range in the data section.
    public let begin: Int
    public let end: Int

    public init(name: String, dtype: DType, shape: [Int], begin: Int, end: Int) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.begin = begin
        self.end = end
    }

    public var byteCount: Int { end - begin }
    public var elementCount: Int { shape.reduce(1, *) }
    /// "[4096, 4096]"
    public var shapeDescription: String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }
}

/// `__metadata__`: string keys to string values, in file order.
public struct Metadata: Equatable, Sendable {
    public var entries: [(key: String, value: String)]

    public init(_ entries: [(key: String, value: String)] = []) { self.entries = entries }

    public subscript(key: String) -> String? { entries.first { $0.key == key }?.value }
    public var isEmpty: Bool { entries.isEmpty }

    public static func == (a: Metadata, b: Metadata) -> Bool {
        a.entries.count == b.entries.count && zip(a.entries, b.entries).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }
}

public struct Header: Sendable {
    /// The reference implementation's limit on the header length.
    public static let maxHeaderLength = 100_000_000

    /// Tensors in data order (by offset).
    public let tensors: [TensorInfo]
    /// nil when the header has no "__metadata__".
    public let metadata: Metadata?
    /// N, the JSON's byte length (padding included).
    public let headerLength: Int
    private let index: [String: Int]

    /// File offset of the data section.
    public var dataStart: Int { 8 + headerLength }
    public var dataSize: Int { tensors.last?.end ?? 0 }

    public func tensor(named name: String) -> TensorInfo? { index[name].map { tensors[$0] } }

    /// Parses and validates the header of a whole file's bytes.
    public static func parse(file: UnsafeRawBufferPointer) throws(SafetensorsError) -> Header {
        guard file.count >= 8 else {
            throw SafetensorsError(.fileTooShort, "file is \(file.count) bytes, shorter than the 8-byte header length that starts a safetensors file")
        }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(file[i]) << (8 * UInt64(i)) }
        guard n > 0 else { throw SafetensorsError(.headerLength, "header length is 0") }
        guard n <= UInt64(maxHeaderLength) else {
            throw SafetensorsError(.headerLength, "header length \(n) is over the limit of \(maxHeaderLength) bytes")
        }
        let length = Int(n)
        guard 8 + length <= file.count else {
            throw SafetensorsError(.headerLength, "header length \(length) goes beyond the end of the file (\(file.count) bytes, \(file.count - 8) after the length field)")
        }
        let json = UnsafeRawBufferPointer(rebasing: file[8..<(8 + length)])
        return try parse(json: json, dataSize: file.count - 8 - length)
    }

    /// Parses and validates header JSON whose data section holds `dataSize` bytes.
    public static func parse(json: UnsafeRawBufferPointer, dataSize: Int) throws(SafetensorsError) -> Header {
        guard json.first == UInt8(ascii: "{") else {
            throw SafetensorsError(.malformedJSON, "malformed header: it does not start with '{'")
        }
        let root: JSONValue
        do throws(JSONParseError) { root = try JSON.parse(json) } catch {
            throw SafetensorsError(.malformedJSON, "malformed header JSON at byte \(error.offset) of the header (file offset \(8 + error.offset)): \(error.reason)")
        }
        guard case .object(let members) = root else {
            throw SafetensorsError(.malformedJSON, "malformed header: the JSON is not an object")
        }
        var metadata: Metadata? = nil
        var tensors: [TensorInfo] = []
        for member in members {
            if member.key == "__metadata__" {
                metadata = try parseMetadata(member.value)
            } else {
                tensors.append(try parseTensor(member.key, member.value, dataSize: dataSize))
            }
        }
        tensors.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        // The tensors must tile [0, dataSize) exactly.
        var expected = 0
        var previous: TensorInfo? = nil
        for t in tensors {
            if t.begin < expected, let p = previous {
                throw SafetensorsError(.overlappingOffsets, "tensors \(JSON.quote(p.name)) [\(p.begin), \(p.end)) and \(JSON.quote(t.name)) [\(t.begin), \(t.end)) overlap in the data section")
            }
            if t.begin > expected {
                let after = previous.map { " (after \(JSON.quote($0.name)))" } ?? " (before the first tensor)"
                throw SafetensorsError(.nonContiguousOffsets, "bytes [\(expected), \(t.begin)) of the data section belong to no tensor\(after): data_offsets must be contiguous")
            }
            if t.end > expected { expected = t.end; previous = t }
        }
        if expected != dataSize {
            throw SafetensorsError(.nonContiguousOffsets, "the data section is \(dataSize) bytes but the tensors end at byte \(expected): \(dataSize - expected) trailing bytes belong to no tensor")
        }
        var index: [String: Int] = [:]
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        return Header(tensors: tensors, metadata: metadata, headerLength: json.count, index: index)
    }

    private init(tensors: [TensorInfo], metadata: Metadata?, headerLength: Int, index: [String: Int]) {
        self.tensors = tensors
        self.metadata = metadata
        self.headerLength = headerLength
        self.index = index
    }

    private static func parseMetadata(_ v: JSONValue) throws(SafetensorsError) -> Metadata {
        guard case .object(let members) = v else {
            throw SafetensorsError(.invalidEntry, "__metadata__ is \(v.typeName), not an object of strings")
        }
        var entries: [(key: String, value: String)] = []
        for m in members {
            guard case .string(let s) = m.value else {
                throw SafetensorsError(.invalidEntry, "__metadata__ value for \(JSON.quote(m.key)) is \(m.value.typeName), not a string")
            }
            entries.append((m.key, s))
        }
        return Metadata(entries)
    }

    private static func parseTensor(_ name: String, _ v: JSONValue, dataSize: Int) throws(SafetensorsError) -> TensorInfo {
        let q = JSON.quote(name)
        guard case .object(let fields) = v else {
            throw SafetensorsError(.invalidEntry, "tensor \(q) is \(v.typeName), not an object with dtype, shape and data_offsets")
        }
        for f in fields where !["dtype", "shape", "data_offsets"].contains(f.key) {
            throw SafetensorsError(.invalidEntry, "tensor \(q): unknown field \(JSON.quote(f.key))")
        }
        guard let dtypeValue = v["dtype"] else { throw SafetensorsError(.invalidEntry, "tensor \(q): missing field \"dtype\"") }
        guard let shapeValue = v["shape"] else { throw SafetensorsError(.invalidEntry, "tensor \(q): missing field \"shape\"") }
        guard let offsetsValue = v["data_offsets"] else {
            throw SafetensorsError(.invalidEntry, "tensor \(q): missing field \"data_offsets\"")
        }
        guard case .string(let dtypeName) = dtypeValue else {
            throw SafetensorsError(.invalidEntry, "tensor \(q): dtype is \(dtypeValue.typeName), not a string")
        }
        guard let dtype = DType(rawValue: dtypeName) else {
            throw SafetensorsError(.unknownDType, "tensor \(q): unknown dtype \(JSON.quote(dtypeName))")
        }
        guard case .array(let extents) = shapeValue else {
            throw SafetensorsError(.invalidEntry, "tensor \(q): shape is \(shapeValue.typeName), not an array")
        }
        var shape: [Int] = []
        var elements: UInt64 = 1
        var elementsOverflow = false
        for e in extents {
            guard let x = e.unsignedInteger, x <= UInt64(Int.max) else {
                throw SafetensorsError(.invalidEntry, "tensor \(q): shape entries must be non-negative integers, got \(JSON.serialize(e))")
            }
            shape.append(Int(x))
            let (p, o) = elements.multipliedReportingOverflow(by: x)
            elements = p
            elementsOverflow = elementsOverflow || o
        }
        guard case .array(let offsets) = offsetsValue, offsets.count == 2,
              let b = offsets[0].unsignedInteger, let e = offsets[1].unsignedInteger else {
            throw SafetensorsError(.invalidEntry, "tensor \(q): data_offsets must be [begin, end] of non-negative integers, got \(JSON.serialize(offsetsValue))")
        }
        guard b <= e else {
            throw SafetensorsError(.offsetsOutOfRange, "tensor \(q): data_offsets [\(b), \(e)] end before they begin")
        }
        guard e <= UInt64(dataSize) else {
            throw SafetensorsError(.offsetsOutOfRange, "tensor \(q): data_offsets [\(b), \(e)] go beyond the data section (\(dataSize) bytes)")
        }
        let span = e - b
        let shapeText = "[" + shape.map(String.init).joined(separator: ", ") + "]"
        guard !elementsOverflow, let bytes = dtype.byteCount(elements: elements) else {
            throw SafetensorsError(.sizeMismatch, "tensor \(q): shape \(shapeText) of \(dtype.rawValue) is not a whole number of bytes that fits in 64 bits, but data_offsets span \(span)")
        }
        guard bytes == span else {
            throw SafetensorsError(.sizeMismatch, "tensor \(q): shape \(shapeText) of \(dtype.rawValue) needs \(bytes) bytes but data_offsets [\(b), \(e)] span \(span)")
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape, begin: Int(b), end: Int(e))
    }
}
