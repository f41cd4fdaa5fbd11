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
///
/// The workers hold only the pool's shared state, never the pool itself, so releasing the pool
/// (with its runtime) stops and joins them.
public final class ThreadPool: @unchecked Sendable {
    /// Threads taking part in a job, the caller included: the workers really started plus one
    /// (fewer than asked when the system cannot start more threads).
    public var threadCount: Int { threads.count + 1 }

    private let state: State
    private var threads: [pthread_t] = []
    private let busy = Atomic<Bool>(false)

    /// What the workers share with the pool; heap-allocated pthread objects so addresses are stable.
    private final class State: @unchecked Sendable {
        let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        let done = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        var generation: UInt64 = 0
        var finishedWorkers = 0
        var workers = 0
        var shutdown = false
        var job: ((Int) -> Void)?
        var jobCount = 0
        let nextItem = Atomic<Int>(0)

        init() {
            pthread_mutex_init(mutex, nil)
            pthread_cond_init(wake, nil)
            pthread_cond_init(done, nil)
        }

        deinit {
            pthread_cond_destroy(wake)
            pthread_cond_destroy(done)
            pthread_mutex_destroy(mutex)
            mutex.deallocate()
            wake.deallocate()
            done.deallocate()
        }

        func runItems(_ body: (Int) -> Void, count: Int) {
            while true {
                let i = nextItem.wrappingAdd(1, ordering: .relaxed).oldValue
                if i >= count { break }
                body(i)
            }
        }

        func workerLoop() {
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
                if finishedWorkers == workers { pthread_cond_signal(done) }
            }
            pthread_mutex_unlock(mutex)
        }
    }

    /// - Parameter threads: total threads including the caller; 0 = the cores this process may use.
    public init(threads: Int) {
        let requested = max(1, threads == 0 ? Int(edkm_available_cores()) : threads)
        state = State()
        // Workers start with the asynchronous signals blocked (they inherit the creating thread's
        // mask): the host's handlers for SIGINT, SIGTERM, SIGCHLD... then run on the host's own
        // threads, never on a library worker. The synchronous ones (a fault or trap on the worker
        // itself) stay deliverable, so crash handlers and backtracers still run.
        var blocked = sigset_t(), previous = sigset_t()
        sigfillset(&blocked)
        for sig in [SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT] { sigdelset(&blocked, sig) }
        pthread_sigmask(SIG_SETMASK, &blocked, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        for _ in 1..<requested {
            var tid = pthread_t()
            let context = Unmanaged.passRetained(state).toOpaque()  // released when the worker exits
            let rc = pthread_create(&tid, nil, { raw in
                let shared = Unmanaged<State>.fromOpaque(raw!)
                edkm_name_this_thread("edkm-worker")
                shared.takeUnretainedValue().workerLoop()
                shared.release()
                return nil
            }, context)
            if rc == 0 { self.threads.append(tid) } else {
                Unmanaged<State>.fromOpaque(context).release()
                break  // the system cannot start more: run with the workers started
            }
        }
        state.workers = self.threads.count
    }

    deinit {
        pthread_mutex_lock(state.mutex)
        state.shutdown = true
        pthread_cond_broadcast(state.wake)
        pthread_mutex_unlock(state.mutex)
        for t in threads { pthread_join(t, nil) }
    }

    /// Runs body(i) for i in 0..<count, in parallel; returns when every item has run. `file` and
    /// `function` name the call site in a ParallelProfile record.
    public func parallelFor(_ count: Int, file: StaticString = #fileID, function: StaticString = #function,
                            _ body: (Int) -> Void) {
        ParallelProfile.region("\(file) \(function)", items: count) { run(count, body) }
    }

    private func run(_ count: Int, _ body: (Int) -> Void) {
        if count <= 0 { return }
        if count == 1 || threads.isEmpty || !busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
            for i in 0..<count { body(i) }
            return
        }
        let s = state
        withoutActuallyEscaping(body) { escapable in
            pthread_mutex_lock(s.mutex)
            s.job = escapable
            s.jobCount = count
            s.nextItem.store(0, ordering: .relaxed)
            s.finishedWorkers = 0
            s.generation &+= 1
            pthread_cond_broadcast(s.wake)
            pthread_mutex_unlock(s.mutex)
            s.runItems(escapable, count: count)
            pthread_mutex_lock(s.mutex)
            while s.finishedWorkers < s.workers { pthread_cond_wait(s.done, s.mutex) }
            s.job = nil
            pthread_mutex_unlock(s.mutex)
        }
        busy.store(false, ordering: .releasing)
    }
}
