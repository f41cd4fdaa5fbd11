import CEDKM
import EDKMSupport
import EDKMSwift

/// The kinds of opaque handle the C ABI hands out.
enum HandleKind: UInt8 { case runtime, layer, savedState }

/// The live handles. A handle is not an object address but a token from a 64-bit counter that is
/// never reused, mapped here to its object: a destroyed, foreign or wrong-kind handle gives
/// EDKM_ERR_INVALID_HANDLE instead of a crash, and a stale handle can never reach an object created
/// later at the same address. Tokens are multiples of 16 from 2^16 up (pointer-like, never NULL).
enum HandleRegistry {
    private struct Entry {
        let kind: HandleKind
        let object: AnyObject
    }
    private struct Table {
        var lastToken: UInt = 0xFFF0
        var live: [UInt: Entry] = [:]
    }
    private static let table = Locked(Table())

    /// A new handle for `object` (the registry keeps it alive until `release`).
    static func register(_ object: AnyObject, _ kind: HandleKind) -> OpaquePointer {
        let token = table.withLock { t -> UInt in
            t.lastToken += 16  // 2^60 handles before this could overflow (and trap)
            t.live[t.lastToken] = Entry(kind: kind, object: object)
            return t.lastToken
        }
        return OpaquePointer(bitPattern: token)!
    }

    /// The object behind a live handle of `kind` (a strong reference: a concurrent destroy of the
    /// handle cannot free it while the caller uses it).
    static func object<T: AnyObject>(_ handle: OpaquePointer?, _ kind: HandleKind, as: T.Type, name: String) throws(EDKMError) -> T {
        guard let handle else { throw EDKMError(.nullPointer, "\(name) is NULL") }
        let token = UInt(bitPattern: UnsafeRawPointer(handle))
        let entry = table.withLock { $0.live[token] }
        guard let entry, entry.kind == kind, let object = entry.object as? T else {
            throw EDKMError(.invalidHandle, "\(name) is not a live \(kind) handle (destroyed, never created, or another kind)")
        }
        return object
    }

    /// Releases a live handle of `kind`; NULL and unknown handles are ignored (returns false). The
    /// object is freed here, outside the registry's lock, unless a running call still holds it.
    @discardableResult
    static func release(_ handle: OpaquePointer?, _ kind: HandleKind) -> Bool {
        guard let handle else { return false }
        let token = UInt(bitPattern: UnsafeRawPointer(handle))
        let removed: Entry? = table.withLock { t in
            guard let entry = t.live[token], entry.kind == kind else { return nil }
            t.live[token] = nil
            return entry
        }
        return removed != nil
    }
}

/// Sets the thread-local last-error message.
func setLastError(_ message: String) {
    var m = message
    m.withUTF8 { buf in
        buf.withMemoryRebound(to: CChar.self) { edkm_error_set($0.baseAddress, $0.count) }
    }
}

func status(_ code: EDKMError.Code) -> edkm_status { edkm_status(rawValue: UInt32(code.rawValue)) }

/// Runs body; maps a thrown EDKMError to its status and the thread-local message.
@inline(__always)
func guarded(_ body: () throws(EDKMError) -> Void) -> edkm_status {
    do {
        try body()
        return EDKM_OK
    } catch {
        setLastError(error.message)
        return status(error.code)
    }
}

func require<T>(_ pointer: T?, _ name: String) throws(EDKMError) -> T {
    guard let pointer else { throw EDKMError(.nullPointer, "\(name) is NULL") }
    return pointer
}

func elementType(_ raw: edkm_dtype, _ name: String) throws(EDKMError) -> ElementType {
    guard let t = ElementType(rawValue: Int32(bitPattern: raw.rawValue)) else {
        throw EDKMError(.dtype, "\(name) \(Int32(bitPattern: raw.rawValue)) is not an edkm_dtype (0 = F32, 1 = F16, 2 = BF16)")
    }
    return t
}
