import CEDKM
import EDKMSupport
import EDKMSwift
import Synchronization

/// The kinds of opaque handle the C ABI hands out.
enum HandleKind: UInt8 { case runtime, layer, savedState }

/// The live handles: every handle is checked here before it is dereferenced, so a destroyed,
/// foreign or wrong-kind handle gives EDKM_ERR_INVALID_HANDLE instead of a crash.
enum HandleRegistry {
    private static let live = Mutex<[UInt: HandleKind]>([:])

    static func register(_ object: AnyObject, _ kind: HandleKind) -> OpaquePointer {
        let raw = Unmanaged.passRetained(object).toOpaque()
        live.withLock { $0[UInt(bitPattern: raw)] = kind }
        return OpaquePointer(raw)
    }

    /// The object behind a live handle of `kind` (retained for the caller's use).
    static func object<T: AnyObject>(_ handle: OpaquePointer?, _ kind: HandleKind, as: T.Type, name: String) throws(EDKMError) -> T {
        guard let handle else { throw EDKMError(.nullPointer, "\(name) is NULL") }
        let key = UInt(bitPattern: UnsafeRawPointer(handle))
        let object: T? = live.withLock { map in
            guard map[key] == kind else { return nil }
            return Unmanaged<T>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
        }
        guard let object else {
            throw EDKMError(.invalidHandle, "\(name) is not a live \(kind) handle (destroyed, never created, or another kind)")
        }
        return object
    }

    /// Releases a live handle of `kind`; NULL and unknown handles are ignored (returns false).
    @discardableResult
    static func release(_ handle: OpaquePointer?, _ kind: HandleKind) -> Bool {
        guard let handle else { return false }
        let key = UInt(bitPattern: UnsafeRawPointer(handle))
        let removed = live.withLock { map -> Bool in
            guard map[key] == kind else { return false }
            map[key] = nil
            return true
        }
        if removed { Unmanaged<AnyObject>.fromOpaque(UnsafeRawPointer(handle)).release() }
        return removed
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

/// Reads a caller's struct whose first field is its uint32_t struct_size: the bytes it covers
/// over `defaults`. Rejects 0 and sizes beyond this library's struct.
func readSized<T>(_ pointer: UnsafePointer<T>, defaults: T, name: String) throws(EDKMError) -> T {
    let size = Int(UnsafeRawPointer(pointer).load(as: UInt32.self))
    guard size >= 4 && size <= MemoryLayout<T>.size else {
        throw EDKMError(.structSize, "\(name).struct_size is \(size); this library knows sizes 4...\(MemoryLayout<T>.size) (did you call the *_init function?)")
    }
    var value = defaults
    withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: UnsafeRawBufferPointer(start: pointer, count: size)) }
    return value
}

/// Writes `value` into a caller's sized struct: only the bytes its struct_size covers.
func writeSized<T>(_ value: T, to pointer: UnsafeMutablePointer<T>, name: String) throws(EDKMError) {
    let size = Int(UnsafeRawPointer(pointer).load(as: UInt32.self))
    guard size >= 4 && size <= MemoryLayout<T>.size else {
        throw EDKMError(.structSize, "\(name).struct_size is \(size); this library knows sizes 4...\(MemoryLayout<T>.size)")
    }
    var v = value
    withUnsafeBytes(of: &v) { src in
        UnsafeMutableRawPointer(pointer).advanced(by: 4).copyMemory(from: src.baseAddress! + 4, byteCount: size - 4)
    }
}
