import Glibc

/// `count` threads (the caller is member 0) that run one job together: every call of `run` wakes
/// the gang at a barrier, runs body(i) on member i and meets again at a barrier. Persistent, so
/// that a timed job pays a barrier wake-up, not a thread creation (the library's own pool also
/// wakes parked workers). Used by the bandwidth probe.
final class WorkerGang {
    let count: Int
    private let start: Barrier
    private let end: Barrier
    private var job: ((Int) -> Void)? = nil
    private var quit = false
    private var tids: [pthread_t] = []

    init(_ count: Int) {
        self.count = max(1, count)
        start = Barrier(self.count)
        end = Barrier(self.count)
        for i in 1..<self.count {
            final class Box { let run: () -> Void; init(_ run: @escaping () -> Void) { self.run = run } }
            let box = Unmanaged.passRetained(Box { [unowned self] in self.member(i) }).toOpaque()
            var tid = pthread_t()
            let rc = pthread_create(&tid, nil, { raw in
                Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().run()
                return nil
            }, box)
            if rc != 0 { fail("pthread_create failed (\(rc))") }
            tids.append(tid)
        }
    }

    private func member(_ i: Int) {
        while true {
            start.wait()
            if quit { return }
            job!(i)
            end.wait()
        }
    }

    /// Runs body(0..<count) on the gang; returns when every member is done.
    func run(_ body: @escaping (Int) -> Void) {
        job = body
        start.wait()
        body(0)
        end.wait()
        job = nil
    }

    deinit {
        quit = true
        start.wait()
        for t in tids { pthread_join(t, nil) }
    }
}
