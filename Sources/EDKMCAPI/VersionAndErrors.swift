import CEDKM
import EDKMSupport

/// NUL-terminated strings with static lifetime (no Foundation).
enum StaticStrings {
    static func make(_ s: String) -> UnsafePointer<CChar> {
        let bytes = Array(s.utf8CString)
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count)
        p.initialize(from: bytes, count: bytes.count)
        return UnsafePointer(p)
    }
    nonisolated(unsafe) static let version = make("\(EDKM_VERSION_MAJOR).\(EDKM_VERSION_MINOR).\(EDKM_VERSION_PATCH)")
    nonisolated(unsafe) static let statusNames: [UInt32: UnsafePointer<CChar>] = {
        let names: [(edkm_status, String)] = [
            (EDKM_OK, "EDKM_OK"), (EDKM_ERR_INVALID_ARGUMENT, "EDKM_ERR_INVALID_ARGUMENT"),
            (EDKM_ERR_NULL_POINTER, "EDKM_ERR_NULL_POINTER"), (EDKM_ERR_INVALID_HANDLE, "EDKM_ERR_INVALID_HANDLE"),
            (EDKM_ERR_DTYPE, "EDKM_ERR_DTYPE"), (EDKM_ERR_SHAPE, "EDKM_ERR_SHAPE"),
            (EDKM_ERR_NON_FINITE, "EDKM_ERR_NON_FINITE"), (EDKM_ERR_OUT_OF_MEMORY, "EDKM_ERR_OUT_OF_MEMORY"),
            (EDKM_ERR_BUDGET_EXCEEDED, "EDKM_ERR_BUDGET_EXCEEDED"), (EDKM_ERR_STATE, "EDKM_ERR_STATE"),
            (EDKM_ERR_WEIGHTS_CHANGED, "EDKM_ERR_WEIGHTS_CHANGED"), (EDKM_ERR_COMMUNICATOR, "EDKM_ERR_COMMUNICATOR"),
            (EDKM_ERR_BUSY, "EDKM_ERR_BUSY"), (EDKM_ERR_STRUCT_SIZE, "EDKM_ERR_STRUCT_SIZE"),
            (EDKM_ERR_ALLOCATOR, "EDKM_ERR_ALLOCATOR"), (EDKM_ERR_INTERNAL, "EDKM_ERR_INTERNAL"),
        ]
        return Dictionary(uniqueKeysWithValues: names.map { ($0.0.rawValue, make($0.1)) })
    }()
    nonisolated(unsafe) static let unknownStatus = make("EDKM_UNKNOWN_STATUS")
}

@c @implementation
public func edkm_version_number() -> UInt32 {
    UInt32(EDKM_VERSION_MAJOR * 10000 + EDKM_VERSION_MINOR * 100 + EDKM_VERSION_PATCH)
}

@c @implementation
public func edkm_version_string() -> UnsafePointer<CChar>! { StaticStrings.version }

@c @implementation
public func edkm_status_name(_ status: edkm_status) -> UnsafePointer<CChar>! {
    StaticStrings.statusNames[status.rawValue] ?? StaticStrings.unknownStatus
}

@c @implementation
public func edkm_last_error() -> UnsafePointer<CChar>! { edkm_error_get() }
