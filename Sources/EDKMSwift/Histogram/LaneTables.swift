import Synchronization

/// The 65,536-entry tables that the work items of one partition share in a pass whose per-key sums
/// are integers (histogram counts, fixed-point gradient sums). At most `count` items run at once
/// (count = min(threads, items)); each item takes a table that no running item holds and gives it
/// back when done. Which items add into which table then depends on the scheduling, but integer
/// sums do not depend on the order of the additions, so the tables' total per key is the same for
/// any thread count. One thread: one table and nothing to merge; many threads: one table per
/// running item, each item still a separate unit of work.
final class LaneTables<T>: @unchecked Sendable {
    let tables: [UnsafeMutablePointer<T>]
    private let free: Mutex<[Int]>

    /// `count` tables of 65,536 entries, each passed to `prepare` (zero the entries the pass adds to).
    init(count: Int, prepare: (UnsafeMutablePointer<T>) -> Void) {
        tables = (0..<count).map { _ in
            let t = UnsafeMutablePointer<T>.allocate(capacity: 65536)
            prepare(t)
            return t
        }
        free = Mutex(Array(0..<count))
    }

    deinit { for t in tables { t.deallocate() } }

    /// The tables for a partition of `items` work items run on `pool`.
    static func count(items: Int, pool: ThreadPool) -> Int { Swift.max(1, Swift.min(pool.threadCount, items)) }

    /// Runs body with a table no other running item holds.
    func withTable<R>(_ body: (UnsafeMutablePointer<T>) -> R) -> R {
        let i = free.withLock { $0.removeLast() }
        defer { free.withLock { $0.append(i) } }
        return body(tables[i])
    }
}
