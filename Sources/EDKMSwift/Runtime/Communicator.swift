import Glibc
import Synchronization

/// The collective operations of a data-parallel trainer, lent to the library (which has no
/// network code). Every rank makes the same sequence of calls.
public protocol Communicator: AnyObject {
    var rank: Int { get }
    var worldSize: Int { get }
    /// Every rank sends `send.count` bytes; `receive` (worldSize x send.count bytes) gets rank r's
    /// block at offset r x send.count.
    func allGather(_ send: UnsafeRawBufferPointer, into receive: UnsafeMutableRawBufferPointer) throws(EDKMError)
    /// In-place element-wise sum over all ranks.
    func allReduceSum(_ data: UnsafeMutableBufferPointer<Double>) throws(EDKMError)
}

/// The communicator of a single process: rank 0 of 1.
public final class SingleProcessCommunicator: Communicator {
    public init() {}
    public var rank: Int { 0 }
    public var worldSize: Int { 1 }
    public func allGather(_ send: UnsafeRawBufferPointer, into receive: UnsafeMutableRawBufferPointer) throws(EDKMError) {
        receive.copyMemory(from: send)
    }
    public func allReduceSum(_ data: UnsafeMutableBufferPointer<Double>) throws(EDKMError) {}
}

/// Serialises a communicator's calls (the C ABI promises callbacks never run concurrently for one
/// runtime, even when several layers of it run on different threads) and detects re-entrancy: a
/// callback that calls back into the runtime that invoked it (on the same thread) would wait on
/// this lock forever; such a call fails with `.busy` instead.
final class SerializedCommunicator: Communicator, @unchecked Sendable {
    private let inner: Communicator
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// The thread running a callback now (its pthread_t), 0 when none.
    private let owner = Atomic<UInt>(0)

    init(_ inner: Communicator) {
        self.inner = inner
        pthread_mutex_init(lock, nil)
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    var rank: Int { inner.rank }
    var worldSize: Int { inner.worldSize }

    /// Whether the calling thread is inside one of this communicator's callbacks.
    var isRunningOnThisThread: Bool { owner.load(ordering: .acquiring) == UInt(pthread_self()) }

    /// Throws `.busy` when called from inside one of this communicator's callbacks.
    func rejectReentry() throws(EDKMError) {
        if isRunningOnThisThread {
            throw EDKMError(.busy, "called from inside a communicator callback of the same runtime (re-entrant call): a callback must not call into the runtime that invoked it")
        }
    }

    private func serialized(_ body: () throws(EDKMError) -> Void) throws(EDKMError) {
        try rejectReentry()
        pthread_mutex_lock(lock)
        owner.store(UInt(pthread_self()), ordering: .releasing)
        defer {
            owner.store(0, ordering: .releasing)
            pthread_mutex_unlock(lock)
        }
        try body()
    }

    func allGather(_ send: UnsafeRawBufferPointer, into receive: UnsafeMutableRawBufferPointer) throws(EDKMError) {
        try serialized { () throws(EDKMError) in try inner.allGather(send, into: receive) }
    }

    func allReduceSum(_ data: UnsafeMutableBufferPointer<Double>) throws(EDKMError) {
        try serialized { () throws(EDKMError) in try inner.allReduceSum(data) }
    }
}
