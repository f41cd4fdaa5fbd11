/// An error of the core library: a code (mirrored 1:1 by `edkm_status` in the C ABI) and a message
/// that names the offending value.
public struct EDKMError: Error, Equatable, CustomStringConvertible {
    /// The kinds of failure. Raw values equal the C ABI's `edkm_status` values.
    public enum Code: Int32, Sendable {
        case invalidArgument = 1
        case nullPointer = 2
        case invalidHandle = 3
        case dtype = 4
        case shape = 5
        case nonFinite = 6
        case outOfMemory = 7
        case budgetExceeded = 8
        case state = 9
        case weightsChanged = 10
        case communicator = 11
        case busy = 12
        case structSize = 13
        case allocator = 14
        case `internal` = 99
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}

/// A size that came from a C size_t, printed as the unsigned value the caller passed (SIZE_MAX,
/// not -1).
public func sizeText(_ n: Int) -> String { String(UInt(bitPattern: n)) }
