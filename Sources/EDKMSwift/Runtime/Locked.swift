import Glibc

/// A value guarded by a pthread mutex; `withLock` gives a closure exclusive inout access to it.
///
/// Used for the library's registries and counters instead of `Synchronization.Mutex`, whose
/// futex-based lock ThreadSanitizer cannot see on Linux (every access under it is then reported as
/// a race, and a real race there would be hidden among them); TSan intercepts pthread_mutex_*, so
/// the code this guards stays checked. Not recursive: `body` must not call `withLock` on the same
/// instance.
public final class Locked<Value>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    public func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
