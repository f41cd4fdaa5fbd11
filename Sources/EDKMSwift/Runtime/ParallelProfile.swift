import Glibc
import Synchronization

/// A record of the parallel structure of the work one thread starts (benchmarks only; off unless
/// started): for every `ThreadPool.parallelFor` the calling thread makes, its call site, its item
/// count, the caller's CPU seconds and the wall seconds inside it, and the caller's CPU seconds
/// since the previous region (code that runs on one thread: the serial part).
///
/// With a one-thread pool every item runs on the caller, so the caller's CPU time inside a region
/// is the region's whole work, measured without the time the operating system gives to other
/// processes. From one such run, `predictedSeconds(threads:)` gives the time at P threads of a
/// machine where each region's items take equal time: sum over regions of work x ceil(items / P)
/// / items, plus the serial part; Amdahl's serial fraction is serial / total.
///
/// Only the thread that called `start()` is recorded; calls nested inside an item (which run
/// inline) count as part of that item.
public enum ParallelProfile {
    /// One parallel region (or the serial work after the last region: items 0).
    public struct Region: Sendable {
        /// `file function` of the parallelFor call.
        public var site: String
        /// Work items of the region.
        public var items: Int
        /// Caller's CPU seconds inside the region.
        public var cpuSeconds: Double
        /// Wall seconds inside the region.
        public var wallSeconds: Double
        /// Caller's CPU seconds between the previous region (or start) and this one.
        public var serialBefore: Double
    }

    private static let active = Atomic<Bool>(false)
    nonisolated(unsafe) private static var owner: pthread_t? = nil
    nonisolated(unsafe) private static var regions: [Region] = []
    nonisolated(unsafe) private static var lastMark = 0.0
    nonisolated(unsafe) private static var depth = 0

    /// Starts recording the calling thread's parallel regions (clears an earlier record).
    public static func start() {
        regions = []
        depth = 0
        owner = pthread_self()
        lastMark = cpuSeconds()
        active.store(true, ordering: .releasing)
    }

    /// Stops recording; returns the regions in call order, the serial work after the last one as a
    /// final region with site "serial (after the last region)" and 0 items.
    public static func stop() -> [Region] {
        active.store(false, ordering: .releasing)
        let tail = cpuSeconds() - lastMark
        owner = nil
        return regions + [Region(site: "serial (after the last region)", items: 0, cpuSeconds: 0, wallSeconds: 0,
                                 serialBefore: tail)]
    }

    /// Seconds at `threads` threads predicted from a one-thread record (see the type's comment).
    public static func predictedSeconds(_ record: [Region], threads: Int) -> Double {
        record.reduce(0) { t, r in
            let waves = r.items > 0 ? Double((r.items + threads - 1) / threads) / Double(r.items) : 0
            return t + r.serialBefore + r.cpuSeconds * waves
        }
    }

    /// Wraps one parallelFor: records it when this thread is being profiled and not inside an item.
    @inline(__always)
    static func region(_ site: @autoclosure () -> String, items: Int, _ body: () -> Void) {
        guard active.load(ordering: .acquiring), let o = owner, pthread_equal(o, pthread_self()) != 0, depth == 0 else {
            body()
            return
        }
        let c0 = cpuSeconds(), w0 = wallSeconds()
        depth += 1
        body()
        depth -= 1
        let c1 = cpuSeconds(), w1 = wallSeconds()
        regions.append(Region(site: site(), items: items, cpuSeconds: c1 - c0, wallSeconds: w1 - w0, serialBefore: c0 - lastMark))
        lastMark = c1
    }

    private static func cpuSeconds() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }

    private static func wallSeconds() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }
}
