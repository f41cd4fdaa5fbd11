import Glibc

/// Runs body(0) ... body(n - 1) on n new threads (body(0) on the calling thread) and waits for all.
/// Used by the bandwidth probe (one memcpy slice per thread) and by the simulated ranks of the
/// sharded ablation (one rank per thread).
func runThreads(_ n: Int, _ body: @escaping (Int) -> Void) {
    if n <= 1 { body(0); return }
    final class Box { let run: () -> Void; init(_ run: @escaping () -> Void) { self.run = run } }
    var tids: [pthread_t] = []
    for i in 1..<n {
        let box = Unmanaged.passRetained(Box { body(i) }).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { raw in
            let b = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            b.run()
            return nil
        }, box)
        if rc != 0 { fail("pthread_create failed (\(rc))") }
        tids.append(tid)
    }
    body(0)
    for t in tids { pthread_join(t, nil) }
}

/// A reusable barrier for `count` threads.
final class Barrier {
    private let b = UnsafeMutablePointer<pthread_barrier_t>.allocate(capacity: 1)
    init(_ count: Int) { pthread_barrier_init(b, nil, UInt32(count)) }
    deinit { pthread_barrier_destroy(b); b.deallocate() }
    func wait() { _ = pthread_barrier_wait(b) }
}
