import EDKMSupport
import Glibc
import Synchronization

/// A fixed pool of worker threads owned by a runtime.
///
/// `parallelFor(count)` runs `body(i)` for every i in 0..<count on the workers and the calling
/// thread, and returns when all are done. Work items are claimed dynamically, so results must not
/// depend on which thread runs which item: every caller in the library gives each item its own
/// output slice and reduces the slices in item order, which makes results identical for any thread
/// count. One job runs at a time; a call made while another job is running (another layer on
/// another thread) runs its items on the calling thread alone, which gives the same results.
public final class ThreadPool: @unchecked Sendable {
    /// Threads taking part in a job, the caller included.
    public let threadCount: Int

    private var threads: [pthread_t] = []
    // Heap-allocated so their addresses are stable (pthread objects must not move).
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let done = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var generation: UInt64 = 0
    private var finishedWorkers = 0
    private var shutdown = false
    private var job: ((Int) -> Void)?
    private var jobCount = 0
    private let nextItem = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)

    /// - Parameter threads: total threads including the caller; 0 = the cores this process may use.
    public init(threads: Int) {
        threadCount = max(1, threads == 0 ? Int(edkm_available_cores()) : threads)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wake, nil)
        pthread_cond_init(done, nil)
        for _ in 1..<max(1, threadCount) {
            var tid = pthread_t()
            let context = Unmanaged.passUnretained(self).toOpaque()
            let rc = pthread_create(&tid, nil, { raw in
                Unmanaged<ThreadPool>.fromOpaque(raw!).takeUnretainedValue().workerLoop()
                return nil
            }, context)
            if rc == 0 { self.threads.append(tid) }
        }
    }

    deinit {
        pthread_mutex_lock(mutex)
        shutdown = true
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(mutex)
        for t in threads { pthread_join(t, nil) }
        pthread_cond_destroy(wake)
        pthread_cond_destroy(done)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        wake.deallocate()
        done.deallocate()
    }

    /// Runs body(i) for i in 0..<count, in parallel; returns when every item has run.
    public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
        if count <= 0 { return }
        if count == 1 || threads.isEmpty || !busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
            for i in 0..<count { body(i) }
            return
        }
        withoutActuallyEscaping(body) { escapable in
            pthread_mutex_lock(mutex)
            job = escapable
            jobCount = count
            nextItem.store(0, ordering: .relaxed)
            finishedWorkers = 0
            generation &+= 1
            pthread_cond_broadcast(wake)
            pthread_mutex_unlock(mutex)
            runItems(escapable, count: count)
            pthread_mutex_lock(mutex)
            while finishedWorkers < threads.count { pthread_cond_wait(done, mutex) }
            job = nil
            pthread_mutex_unlock(mutex)
        }
        busy.store(false, ordering: .releasing)
    }

    private func runItems(_ body: (Int) -> Void, count: Int) {
        while true {
            let i = nextItem.wrappingAdd(1, ordering: .relaxed).oldValue
            if i >= count { break }
            body(i)
        }
    }

    private func workerLoop() {
        var seen: UInt64 = 0
        pthread_mutex_lock(mutex)
        while true {
            while generation == seen && !shutdown { pthread_cond_wait(wake, mutex) }
            if shutdown { break }
            seen = generation
            let body = job
            let count = jobCount
            pthread_mutex_unlock(mutex)
            if let body { runItems(body, count: count) }
            pthread_mutex_lock(mutex)
            finishedWorkers += 1
            if finishedWorkers == threads.count { pthread_cond_signal(done) }
        }
        pthread_mutex_unlock(mutex)
    }
}
