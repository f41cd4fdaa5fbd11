import EDKMSupport
import Glibc

/// One tensor kept for a backward: bytes in the offload arena or on the heap, possibly shared
/// with other saved states (dedup). Released when the last reference goes.
public final class SavedTensor: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let byteCount: Int
    let key: SavedTensorStore.Key?
    let inArena: Bool
    let store: SavedTensorStore  // keeps the store (and its arena) alive

    init(pointer: UnsafeMutableRawPointer, byteCount: Int, key: SavedTensorStore.Key?, inArena: Bool,
         store: SavedTensorStore) {
        self.pointer = pointer
        self.byteCount = byteCount
        self.key = key
        self.inArena = inArena
        self.store = store
    }

    deinit { store.release(pointer: pointer, byteCount: byteCount, key: key, inArena: inArena) }

    public func typed<T>(_ type: T.Type) -> UnsafeMutablePointer<T> { pointer.assumingMemoryBound(to: T.self) }
}

/// Where a runtime's saved tensors live, with deduplication and statistics.
///
/// Dedup: a tensor saved with `deduplicate` is looked up by (content hash, element tag, shape);
/// on a hit the contents are compared byte for byte and, when equal, the existing `SavedTensor` is
/// shared (reference-counted: freed with its last saved state) instead of copied. Thread-safe.
public final class SavedTensorStore: @unchecked Sendable {
    struct Key: Hashable {
        var hash: UInt64
        var tag: String
        var shape: [Int]
    }

    private struct Entry {
        var pointer: UnsafeMutableRawPointer
        var byteCount: Int
        weak var tensor: SavedTensor?
    }

    private struct State {
        var entries: [Key: Entry] = [:]
        var heapBytes: UInt64 = 0
        var heapPeak: UInt64 = 0
        var hits: UInt64 = 0
        var misses: UInt64 = 0
    }

    public let arena: OffloadArena
    private let state = Locked(State())

    public init(arena: OffloadArena) { self.arena = arena }

    /// Saves a copy of `byteCount` bytes at `source` (borrowed for the call), in the arena or on
    /// the heap; with `deduplicate`, an identical live tensor of the same tag and shape is shared.
    public func save(_ source: UnsafeRawPointer, byteCount: Int, tag: String, shape: [Int], inArena: Bool,
                     deduplicate: Bool, pool: ThreadPool?) throws(EDKMError) -> SavedTensor {
        let key: Key? = deduplicate ? Key(hash: ContentHash.hash(source, count: byteCount, pool: pool), tag: tag, shape: shape) : nil
        if let key {
            let existing: SavedTensor? = state.withLock { s in
                guard let e = s.entries[key], let t = e.tensor else { return nil }
                guard memcmpEqual(e.pointer, source, byteCount) else { return nil }
                s.hits += 1
                return t
            }
            if let existing { return existing }
        }
        let p = try allocate(byteCount, inArena: inArena)
        p.copyMemory(from: source, byteCount: byteCount)
        return register(p, byteCount: byteCount, key: key, inArena: inArena)
    }

    /// A fresh, uninitialised saved buffer (not deduplicated) for the caller to fill.
    public func allocateTensor(byteCount: Int, inArena: Bool) throws(EDKMError) -> SavedTensor {
        let p = try allocate(byteCount, inArena: inArena)
        return register(p, byteCount: byteCount, key: nil, inArena: inArena)
    }

    private func register(_ p: UnsafeMutableRawPointer, byteCount: Int, key: Key?, inArena: Bool) -> SavedTensor {
        let t = SavedTensor(pointer: p, byteCount: byteCount, key: key, inArena: inArena, store: self)
        state.withLock { s in
            if key != nil { s.misses += 1 }
            if let key, s.entries[key] == nil {
                s.entries[key] = Entry(pointer: p, byteCount: byteCount, tensor: t)
            }
        }
        return t
    }

    private func allocate(_ byteCount: Int, inArena: Bool) throws(EDKMError) -> UnsafeMutableRawPointer {
        if inArena { return try arena.allocate(byteCount) }
        // The DKM baseline's heap (no budget applies): a failed allocation is a status, not an abort.
        let p = try HeapAllocation.allocateBytes(byteCount, for: "a saved tensor on the heap (EDKM_SAVED_DKM)")
        // Count what the heap really holds (its size class), as the arena's statistics do.
        let held = UInt64(edkm_heap_usable_size(p))
        state.withLock { s in
            s.heapBytes += held
            s.heapPeak = Swift.max(s.heapPeak, s.heapBytes)
        }
        return p
    }

    func release(pointer: UnsafeMutableRawPointer, byteCount: Int, key: Key?, inArena: Bool) {
        state.withLock { s in
            if let key, let e = s.entries[key], e.pointer == pointer { s.entries[key] = nil }
            if !inArena { s.heapBytes -= UInt64(edkm_heap_usable_size(pointer)) }
        }
        if inArena { arena.free(pointer, bytes: byteCount) } else { free(pointer) }
    }

    public struct Statistics: Sendable {
        public var heapBytes: UInt64
        public var heapPeak: UInt64
        public var dedupHits: UInt64
        public var dedupMisses: UInt64
    }

    public func statistics() -> Statistics {
        state.withLock { Statistics(heapBytes: $0.heapBytes, heapPeak: $0.heapPeak, dedupHits: $0.hits, dedupMisses: $0.misses) }
    }

    public func resetPeak() { state.withLock { $0.heapPeak = $0.heapBytes } }
}

@inline(__always)
func memcmpEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Bool {
    var i = 0
    while i + 8 <= n {
        if a.loadUnaligned(fromByteOffset: i, as: UInt64.self) != b.loadUnaligned(fromByteOffset: i, as: UInt64.self) { return false }
        i += 8
    }
    while i < n {
        if a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) { return false }
        i += 1
    }
    return true
}
