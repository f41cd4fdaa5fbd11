import Glibc

/// Fallible heap allocation for buffers whose size comes from the caller's data (Swift's own
/// `allocate` aborts the process when the system allocator fails; these throw
/// `.outOfMemory` instead).
enum HeapAllocation {
    /// `count` uninitialised elements of T on the heap, 64-byte aligned; release with `free`.
    static func allocate<T>(_ type: T.Type, count: Int, for purpose: String) throws(EDKMError) -> UnsafeMutablePointer<T> {
        try allocateBytes(byteCount(of: type, count: count, for: purpose), for: purpose).assumingMemoryBound(to: T.self)
    }

    /// count x stride(T) bytes, or `.outOfMemory` when the product overflows.
    static func byteCount<T>(of type: T.Type, count: Int, for purpose: String) throws(EDKMError) -> Int {
        let (bytes, overflow) = Swift.max(count, 1).multipliedReportingOverflow(by: MemoryLayout<T>.stride)
        guard !overflow && count >= 0 else {
            throw EDKMError(.outOfMemory, "\(purpose): \(sizeText(count)) elements of \(MemoryLayout<T>.stride) bytes overflow the address space")
        }
        return bytes
    }

    /// `bytes` uninitialised bytes (at least 1), 64-byte aligned; release with `free`.
    static func allocateBytes(_ bytes: Int, for purpose: String) throws(EDKMError) -> UnsafeMutableRawPointer {
        var p: UnsafeMutableRawPointer? = nil
        guard bytes >= 0, posix_memalign(&p, 64, Swift.max(bytes, 1)) == 0, let p else {
            throw EDKMError(.outOfMemory, "\(purpose): the system allocator could not provide \(sizeText(bytes)) bytes")
        }
        return p
    }
}
