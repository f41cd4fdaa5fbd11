/// A small, strict JSON (RFC 8259) parser and string escaper for safetensors headers.
///
/// Strict: the whole input must be one value (surrounded only by JSON whitespace); no trailing
/// commas, comments, NaN, leading zeros or lone surrogates; control characters in strings must be
/// escaped; duplicate keys in an object are an error (a header must name each tensor once).
/// Numbers keep their literal text, so that integers of any size can be checked exactly.

public struct JSONMember: Equatable, Sendable {
    public let key: String
    public let value: JSONValue
}

public indirect enum JSONValue: Equatable, Sendable {
    case object([JSONMember])
    case array([JSONValue])
    case string(String)
    /// The number's literal text, e.g. "12", "-0.5", "1e3".
    case number(String)
    case bool(Bool)
    case null

    /// The name of the value's type, for messages.
    public var typeName: String {
        switch self {
        case .object: return "an object"
        case .array: return "an array"
        case .string: return "a string"
        case .number: return "a number"
        case .bool: return "a boolean"
        case .null: return "null"
        }
    }

    /// The value as a non-negative integer that fits in UInt64 (a number literal of digits only).
    public var unsignedInteger: UInt64? {
        guard case .number(let text) = self, !text.isEmpty,
              text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return UInt64(text)
    }

    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }
}

public struct JSONParseError: Error, Sendable {
    /// Byte offset in the input.
    public let offset: Int
    public let reason: String
}

public enum JSON {
    static let maxDepth = 128

    /// Parses `bytes` as exactly one JSON value.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONParseError) -> JSONValue {
        var p = Parser(bytes: bytes)
        p.skipWhitespace()
        let v = try p.parseValue(depth: 0)
        p.skipWhitespace()
        if p.pos != bytes.count { throw p.error("unexpected data after the JSON value") }
        return v
    }

    public static func parse(_ bytes: [UInt8]) throws(JSONParseError) -> JSONValue {
        // withUnsafeBytes does not carry typed throws through; re-throw the captured error.
        var result: Result<JSONValue, JSONParseError> = .failure(JSONParseError(offset: 0, reason: "empty"))
        bytes.withUnsafeBytes { raw in
            do throws(JSONParseError) { result = .success(try parse(raw)) } catch { result = .failure(error) }
        }
        return try result.get()
    }

    public static func parse(_ text: String) throws(JSONParseError) -> JSONValue { try parse(Array(text.utf8)) }

    /// `s` as a JSON string literal, quotes included.
    public static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    /// Compact serialisation (keys in the given order).
    public static func serialize(_ v: JSONValue) -> String {
        switch v {
        case .object(let members):
            return "{" + members.map { quote($0.key) + ":" + serialize($0.value) }.joined(separator: ",") + "}"
        case .array(let items): return "[" + items.map(serialize).joined(separator: ",") + "]"
        case .string(let s): return quote(s)
        case .number(let n): return n
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        }
    }
}

private struct Parser {
    let bytes: UnsafeRawBufferPointer
    var pos = 0

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    func error(_ reason: String) -> JSONParseError { JSONParseError(offset: pos, reason: reason) }

    var atEnd: Bool { pos >= bytes.count }
    var current: UInt8 { bytes[pos] }

    mutating func skipWhitespace() {
        while pos < bytes.count {
            switch bytes[pos] {
            case 0x20, 0x09, 0x0A, 0x0D: pos += 1
            default: return
            }
        }
    }

    mutating func expect(_ c: UInt8, _ what: String) throws(JSONParseError) {
        guard !atEnd else { throw error("unexpected end, expected \(what)") }
        guard current == c else { throw error("expected \(what), found \(describe(current))") }
        pos += 1
    }

    func describe(_ c: UInt8) -> String {
        if c >= 0x21 && c < 0x7f { return "'\(Character(Unicode.Scalar(c)))'" }
        return "byte 0x" + String(c, radix: 16)
    }

    mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
        guard depth < JSON.maxDepth else { throw error("nesting deeper than \(JSON.maxDepth)") }
        guard !atEnd else { throw error("unexpected end, expected a value") }
        switch current {
        case UInt8(ascii: "{"): return try parseObject(depth: depth)
        case UInt8(ascii: "["): return try parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw error("expected a value, found \(describe(current))")
        }
    }

    mutating func literal(_ word: StaticString) throws(JSONParseError) {
        let start = pos
        let n = word.utf8CodeUnitCount
        let w = UnsafeRawBufferPointer(start: word.utf8Start, count: n)
        guard pos + n <= bytes.count, (0..<n).allSatisfy({ bytes[pos + $0] == w[$0] }) else {
            pos = start
            throw error("invalid literal")
        }
        pos += n
    }

    mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
        pos += 1  // {
        var members: [JSONMember] = []
        var seen = Set<String>()
        skipWhitespace()
        if !atEnd && current == UInt8(ascii: "}") { pos += 1; return .object(members) }
        while true {
            skipWhitespace()
            guard !atEnd else { throw error("unexpected end inside an object") }
            guard current == UInt8(ascii: "\"") else { throw error("expected a string key, found \(describe(current))") }
            let keyOffset = pos
            let key = try parseString()
            guard seen.insert(key).inserted else {
                throw JSONParseError(offset: keyOffset, reason: "duplicate key \(JSON.quote(key))")
            }
            skipWhitespace()
            try expect(UInt8(ascii: ":"), "':'")
            skipWhitespace()
            let value = try parseValue(depth: depth + 1)
            members.append(JSONMember(key: key, value: value))
            skipWhitespace()
            guard !atEnd else { throw error("unexpected end inside an object") }
            if current == UInt8(ascii: ",") { pos += 1; continue }
            if current == UInt8(ascii: "}") { pos += 1; return .object(members) }
            throw error("expected ',' or '}', found \(describe(current))")
        }
    }

    mutating func parseArray(depth: Int) throws(JSONParseError) -> JSONValue {
        pos += 1  // [
        var items: [JSONValue] = []
        skipWhitespace()
        if !atEnd && current == UInt8(ascii: "]") { pos += 1; return .array(items) }
        while true {
            skipWhitespace()
            items.append(try parseValue(depth: depth + 1))
            skipWhitespace()
            guard !atEnd else { throw error("unexpected end inside an array") }
            if current == UInt8(ascii: ",") { pos += 1; continue }
            if current == UInt8(ascii: "]") { pos += 1; return .array(items) }
            throw error("expected ',' or ']', found \(describe(current))")
        }
    }

    mutating func parseNumber() throws(JSONParseError) -> String {
        let start = pos
        func digit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }
        if current == UInt8(ascii: "-") { pos += 1 }
        guard !atEnd, digit(current) else { throw error("invalid number") }
        if current == UInt8(ascii: "0") {
            pos += 1
            if !atEnd && digit(current) { throw error("leading zero in a number") }
        } else {
            while !atEnd && digit(current) { pos += 1 }
        }
        if !atEnd && current == UInt8(ascii: ".") {
            pos += 1
            guard !atEnd, digit(current) else { throw error("invalid number: no digit after '.'") }
            while !atEnd && digit(current) { pos += 1 }
        }
        if !atEnd && (current == UInt8(ascii: "e") || current == UInt8(ascii: "E")) {
            pos += 1
            if !atEnd && (current == UInt8(ascii: "+") || current == UInt8(ascii: "-")) { pos += 1 }
            guard !atEnd, digit(current) else { throw error("invalid number: no digit in the exponent") }
            while !atEnd && digit(current) { pos += 1 }
        }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
    }

    mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard pos + 4 <= bytes.count else { throw error("unexpected end in a \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = current
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw error("invalid hex digit in a \\u escape")
            }
            v = v << 4 | d
            pos += 1
        }
        return v
    }

    /// A string starting at the opening quote. Raw bytes must be valid UTF-8 (checked by decoding
    /// each run of unescaped bytes strictly).
    mutating func parseString() throws(JSONParseError) -> String {
        pos += 1  // "
        var out = ""
        var runStart = pos
        func flush(_ p: inout Parser, _ out: inout String, _ runStart: Int) throws(JSONParseError) {
            if runStart < p.pos {
                let run = UnsafeRawBufferPointer(rebasing: p.bytes[runStart..<p.pos])
                guard let s = String(validating: run, as: UTF8.self) else {
                    throw JSONParseError(offset: runStart, reason: "invalid UTF-8 in a string")
                }
                out += s
            }
        }
        while true {
            guard !atEnd else { throw error("unterminated string") }
            let c = current
            if c == UInt8(ascii: "\"") {
                try flush(&self, &out, runStart)
                pos += 1
                return out
            }
            if c < 0x20 { throw error("unescaped control character in a string") }
            if c != UInt8(ascii: "\\") { pos += 1; continue }
            try flush(&self, &out, runStart)
            pos += 1
            guard !atEnd else { throw error("unterminated escape") }
            let e = current
            pos += 1
            switch e {
            case UInt8(ascii: "\""): out += "\""
            case UInt8(ascii: "\\"): out += "\\"
            case UInt8(ascii: "/"): out += "/"
            case UInt8(ascii: "b"): out += "\u{08}"
            case UInt8(ascii: "f"): out += "\u{0C}"
            case UInt8(ascii: "n"): out += "\n"
            case UInt8(ascii: "r"): out += "\r"
            case UInt8(ascii: "t"): out += "\t"
            case UInt8(ascii: "u"):
                var code = try hex4()
                if code >= 0xD800 && code < 0xDC00 {
                    guard pos + 2 <= bytes.count, bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u") else {
                        throw error("lone high surrogate in a \\u escape")
                    }
                    pos += 2
                    let low = try hex4()
                    guard low >= 0xDC00 && low < 0xE000 else { throw error("invalid low surrogate in a \\u escape") }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                } else if code >= 0xDC00 && code < 0xE000 {
                    throw error("lone low surrogate in a \\u escape")
                }
                guard let scalar = Unicode.Scalar(code) else { throw error("invalid \\u escape") }
                out.unicodeScalars.append(scalar)
            default:
                pos -= 1
                throw error("invalid escape \\\(describe(e))")
            }
            runStart = pos
        }
    }
}
