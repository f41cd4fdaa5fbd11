import Glibc

/// An owned, zero-initialised (unless made `uninitialized`), fixed-size buffer of doubles with a stable address, for per-row
/// results written from several threads (each thread its own rows).
final class DoubleBuffer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Double>
    let count: Int

    /// For small, bounded counts (at most the 65,536 distinct keys of a partition): aborts if the
    /// system allocator fails, as Swift's own allocations do.
    init(zeros count: Int) {
        self.count = count
        pointer = .allocate(capacity: Swift.max(count, 1))
        pointer.initialize(repeating: 0, count: Swift.max(count, 1))
    }

    /// Like `init(zeros:)` without the zeros, for a buffer whose every element the caller writes
    /// before reading it (saves a pass over fresh memory).
    init(uninitialized count: Int) {
        self.count = count
        pointer = .allocate(capacity: Swift.max(count, 1))
    }

    /// For counts that grow with the tensor: `.outOfMemory` when the allocator fails.
    init(checkedZeros count: Int, for purpose: String) throws(EDKMError) {
        self.count = count
        let p = try HeapAllocation.allocate(Double.self, count: count, for: purpose)
        p.initialize(repeating: 0, count: Swift.max(count, 1))
        pointer = p
    }

    deinit { free(pointer) }  // both initialisers allocate with the C allocator

    /// A copy of the contents (made while the buffer is alive; prefer this to building an array
    /// from `pointer`, whose buffer may be released after its last use).
    var array: [Double] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    subscript(i: Int) -> Double {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }
}
