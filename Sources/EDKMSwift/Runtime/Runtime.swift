
/// Owns what layers share: the offload arena and its saved-tensor store, the thread pool, the
/// saved-state mode and the communicator. Thread-safe.
public final class Runtime: @unchecked Sendable {
    public struct Options: Sendable {
        /// Worker threads (the caller included); 0 = the cores available.
        public var threads: Int = 0
        /// Arena byte budget; 0 = unlimited.
        public var budget: UInt64 = 0
        public var savedMode: SavedMode = .histogram
        /// HISTOGRAM mode: keep the weights' keys so a backward needs no weights.
        public var keepWeights: Bool = false
        public init() {}
    }

    public let options: Options
    public let arena: OffloadArena
    public let store: SavedTensorStore
    public let pool: ThreadPool
    /// The caller's communicator, serialised and guarded against re-entrant calls.
    public var communicator: Communicator { collectives }
    let collectives: SerializedCommunicator

    private struct Counters {
        var liveSavedStates: UInt64 = 0
        var communicatorBytes: UInt64 = 0
    }
    private let counters = Locked(Counters())

    public init(options: Options, communicator: Communicator? = nil) throws(EDKMError) {
        self.options = options
        arena = try OffloadArena(budget: options.budget)
        store = SavedTensorStore(arena: arena)
        pool = ThreadPool(threads: options.threads)
        collectives = SerializedCommunicator(communicator ?? SingleProcessCommunicator())
    }

    func savedStateCreated() { counters.withLock { $0.liveSavedStates += 1 } }
    func savedStateDestroyed() { counters.withLock { $0.liveSavedStates -= 1 } }
    func countCommunicatorBytes(_ n: Int) { counters.withLock { $0.communicatorBytes += UInt64(n) } }

    public struct Statistics: Sendable {
        public var threads: Int
        public var arena: OffloadArena.Statistics
        public var store: SavedTensorStore.Statistics
        public var liveSavedStates: UInt64
        public var budget: UInt64
        public var communicatorBytes: UInt64
    }

    public func statistics() -> Statistics {
        let c = counters.withLock { $0 }
        return Statistics(threads: pool.threadCount, arena: arena.statistics(), store: store.statistics(),
                          liveSavedStates: c.liveSavedStates, budget: arena.budget,
                          communicatorBytes: c.communicatorBytes)
    }

    public func resetPeak() {
        arena.resetPeak()
        store.resetPeak()
    }
}
