import EDKMSupport

/// A dedicated jemalloc arena holding saved state, separate from the trainer's heap, with an
/// optional byte budget and statistics read from jemalloc itself.
///
/// Allocations use `MALLOCX_ARENA(index) | MALLOCX_TCACHE_NONE | MALLOCX_ALIGN(64)`, so no thread
/// cache holds arena memory and destroying the arena releases everything in it. The budget is
/// checked against jemalloc's size-class (usable) size before allocating: an allocation that would
/// take `allocated` past the budget is refused and nothing is allocated. Thread-safe.
public final class OffloadArena: @unchecked Sendable {
    public let index: UInt32

    private struct Accounting {
        var allocated: UInt64 = 0   // sum of usable sizes of live allocations (= jemalloc's small + large)
        var peak: UInt64 = 0
        var budget: UInt64 = 0      // 0 = unlimited
    }
    private let accounting = Locked(Accounting())

    /// Creates a new jemalloc arena.
    public init(budget: UInt64 = 0) throws(EDKMError) {
        var idx: UInt32 = 0
        let rc = edkm_jem_arena_create(&idx)
        guard rc == 0 else { throw EDKMError(.allocator, "jemalloc arenas.create failed with error \(rc)") }
        index = idx
        accounting.withLock { $0.budget = budget }
    }

    deinit { _ = edkm_jem_arena_destroy(index) }

    public var budget: UInt64 {
        get { accounting.withLock { $0.budget } }
        set { accounting.withLock { $0.budget = newValue } }
    }

    /// Allocates `bytes` bytes (64-byte aligned) in the arena.
    /// - Throws: `.budgetExceeded` when the budget would be passed, `.outOfMemory` when jemalloc fails.
    public func allocate(_ bytes: Int) throws(EDKMError) -> UnsafeMutableRawPointer {
        let usable = UInt64(edkm_jem_arena_usable_size(index, bytes))
        let admitted: Result<Void, EDKMError> = accounting.withLock { a in
            if a.budget != 0 && a.allocated + usable > a.budget {
                return .failure(EDKMError(.budgetExceeded,
                    "saved state needs \(usable) more bytes in the offload arena; \(a.allocated) of the \(a.budget)-byte budget are in use"))
            }
            a.allocated += usable
            return .success(())
        }
        try admitted.get()
        guard let p = edkm_jem_arena_alloc(index, bytes) else {
            accounting.withLock { $0.allocated -= usable }
            throw EDKMError(.outOfMemory, "jemalloc could not allocate \(bytes) bytes in the offload arena")
        }
        let now = jemallocAllocated() ?? accounting.withLock { $0.allocated }
        accounting.withLock { $0.peak = max($0.peak, now, $0.allocated) }
        return p
    }

    /// Frees an allocation of `bytes` bytes made by `allocate`.
    public func free(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        let usable = UInt64(edkm_jem_arena_usable_size(index, bytes))
        edkm_jem_arena_free(index, pointer, bytes)
        accounting.withLock { $0.allocated -= usable }
    }

    /// jemalloc's own figures for this arena.
    public struct Statistics: Sendable, Equatable {
        /// small.allocated + large.allocated, bytes.
        public var allocated: UInt64
        /// pactive x page size, bytes.
        public var active: UInt64
        /// The highest `allocated` seen after any allocation since creation or `resetPeak`.
        public var peak: UInt64
        /// The library's own running sum of usable sizes; equals `allocated` (tested).
        public var accounted: UInt64
    }

    public func statistics() -> Statistics {
        var small: UInt64 = 0, large: UInt64 = 0, active: UInt64 = 0
        let ok = edkm_jem_arena_stats(index, &small, &large, &active) == 0
        let a = accounting.withLock { $0 }
        return Statistics(allocated: ok ? small + large : a.allocated, active: active,
                          peak: a.peak, accounted: a.allocated)
    }

    public func resetPeak() {
        let now = jemallocAllocated() ?? 0
        accounting.withLock { $0.peak = max(now, $0.allocated) }
    }

    private func jemallocAllocated() -> UInt64? {
        var small: UInt64 = 0, large: UInt64 = 0, active: UInt64 = 0
        return edkm_jem_arena_stats(index, &small, &large, &active) == 0 ? small + large : nil
    }
}
