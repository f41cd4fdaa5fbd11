import CEDKM

/// A failed libedkm call: the call's name (with what it was applied to), the status and the
/// library's message from edkm_last_error(). Its description is
/// "<call>: <EDKM_STATUS name>: <message>", one line.
public struct EDKMError: Error, CustomStringConvertible {
    public let call: String
    public let status: edkm_status
    public let message: String

    public init(call: String, status: edkm_status, message: String) {
        self.call = call
        self.status = status
        self.message = message
    }

    public var description: String { "\(call): \(String(cString: edkm_status_name(status))): \(message)" }
}

/// Throws an EDKMError for a status other than EDKM_OK (reading edkm_last_error() of this thread,
/// which the failed call has just set).
public func edkmCheck(_ status: edkm_status, _ call: @autoclosure () -> String) throws {
    guard status != EDKM_OK else { return }
    throw EDKMError(call: call(), status: status, message: String(cString: edkm_last_error()))
}

/// The library's version string, "MAJOR.MINOR.PATCH".
public func edkmVersion() -> String { String(cString: edkm_version_string()) }

extension edkm_dtype {
    /// "F32", "F16", "BF16" (as safetensors names them), or "dtype N".
    public var name: String {
        switch self {
        case EDKM_DTYPE_F32: return "F32"
        case EDKM_DTYPE_F16: return "F16"
        case EDKM_DTYPE_BF16: return "BF16"
        default: return "dtype \(rawValue)"
        }
    }

    /// Bytes per element (4 for F32, 2 for F16 and BF16).
    public var byteWidth: Int { self == EDKM_DTYPE_F32 ? 4 : 2 }
}
