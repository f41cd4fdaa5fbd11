import Synchronization

/// The 65,536-entry tables that the work items of one partition share in a pass whose per-key sums
/// are integers (histogram counts, fixed-point gradient sums). At most `count` items run at once
/// (count = min(threads, items)); each item takes a table that no running item holds and gives it
/// back when done. Which items add into which table then depends on the scheduling, but integer
/// sums do not depend on the order of the additions, so the tables' total per key is the same for
/// any thread count. One thread: one table and nothing to merge; many threads: one table per
/// running item, each item still a separate unit of work. A table is prepared (zeroed where the
/// pass adds) by the first item that takes it, inside the parallel region.
final class LaneTables<T>: @unchecked Sendable {
    private let tables: [UnsafeMutablePointer<T>]
    private let prepared: UnsafeMutablePointer<Bool>
    private let prepare: (UnsafeMutablePointer<T>) -> Void
    private let free: Mutex<[Int]>

    /// `count` tables of 65,536 entries (allocated, not touched); `prepare` readies one for adding.
    init(count: Int, prepare: @escaping (UnsafeMutablePointer<T>) -> Void) {
        tables = (0..<count).map { _ in UnsafeMutablePointer<T>.allocate(capacity: 65536) }
        prepared = UnsafeMutablePointer<Bool>.allocate(capacity: count)
        prepared.initialize(repeating: false, count: count)
        self.prepare = prepare
        free = Mutex(Array(0..<count))
    }

    deinit {
        for t in tables { t.deallocate() }
        prepared.deallocate()
    }

    /// The tables for a partition of `items` work items run on `pool`.
    static func count(items: Int, pool: ThreadPool) -> Int { Swift.max(1, Swift.min(pool.threadCount, items)) }

    /// Runs body with a table no other running item holds (prepared on its first use).
    func withTable<R>(_ body: (UnsafeMutablePointer<T>) -> R) -> R {
        let i = free.withLock { $0.removeLast() }
        defer { free.withLock { $0.append(i) } }
        if !prepared[i] {
            prepare(tables[i])
            prepared[i] = true
        }
        return body(tables[i])
    }

    /// The tables some item used (at least one once an item ran), after the parallel region.
    var used: [UnsafeMutablePointer<T>] { (0..<tables.count).filter { prepared[$0] }.map { tables[$0] } }
}
