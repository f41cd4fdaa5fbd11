import Glibc

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
/// runtime, even when several layers of it run on different threads).
final class SerializedCommunicator: Communicator, @unchecked Sendable {
    private let inner: Communicator
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

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

    func allGather(_ send: UnsafeRawBufferPointer, into receive: UnsafeMutableRawBufferPointer) throws(EDKMError) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        try inner.allGather(send, into: receive)
    }

    func allReduceSum(_ data: UnsafeMutableBufferPointer<Double>) throws(EDKMError) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        try inner.allReduceSum(data)
    }
}
