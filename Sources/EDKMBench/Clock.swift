import Glibc

/// Monotonic wall-clock time in seconds.
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + 1e-9 * Double(ts.tv_nsec)
}

/// CPU seconds the calling thread has used (less affected than the wall clock by other jobs on
/// the machine: they take turns on the cores but do not add to this thread's time).
func threadCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + 1e-9 * Double(ts.tv_nsec)
}

/// Seconds `body` takes.
func timed(_ body: () -> Void) -> Double {
    let t0 = now()
    body()
    return now() - t0
}

/// The median of a non-empty list (mean of the middle two for an even count).
func median(_ xs: [Double]) -> Double {
    precondition(!xs.isEmpty)
    let s = xs.sorted()
    let n = s.count
    return n % 2 == 1 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2])
}
