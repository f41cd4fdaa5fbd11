import Glibc

/// The memory-bandwidth floor of an operation: a memcpy that moves the same number of bytes the
/// operation must minimally move (half read, half written), split over `threads` threads in
/// contiguous slices (a persistent gang of threads), median of runs.
///
/// forward:  read the weights (2 B) + write w~ (2 B)                      = 4 B per weight -> memcpy of 2N bytes
/// backward: read the weights (2 B) + dL/dw~ (2 B) + write dL/dw (2 B)    = 6 B per weight -> memcpy of 3N bytes
final class BandwidthProbe {
    private let src: Buffer
    private let dst: Buffer
    private var cache: [String: Double] = [:]
    private var gangs: [Int: WorkerGang] = [:]

    /// Buffers for copies of up to `maxCopyBytes`.
    init(maxCopyBytes: Int) {
        src = Buffer(bytes: maxCopyBytes)
        dst = Buffer(bytes: maxCopyBytes)
        memset(src.pointer, 0x3c, maxCopyBytes)
    }

    /// Median seconds to move `movedBytes` (copy movedBytes / 2) with `threads` threads.
    func seconds(movedBytes: Int, threads: Int, runs: Int) -> Double {
        let key = "\(movedBytes)/\(threads)/\(runs)"
        if let t = cache[key] { return t }
        let copy = movedBytes / 2
        precondition(copy <= src.bytes, "probe buffer too small")
        let s = src.pointer, d = dst.pointer
        let gang = gangs[threads] ?? WorkerGang(threads)
        gangs[threads] = gang
        func once() -> Double {
            timed {
                gang.run { i in
                    let lo = copy * i / threads, hi = copy * (i + 1) / threads
                    memcpy(d + lo, s + lo, hi - lo)
                }
            }
        }
        _ = once()  // warm-up
        let t = median((0..<max(runs, 3)).map { _ in once() })
        cache[key] = t
        return t
    }

    /// Median CPU seconds of the calling thread to move `movedBytes` (one memcpy of half as
    /// many): the one-thread floor to set against a one-thread step's CPU time (ParallelProfile).
    func cpuSeconds(movedBytes: Int, runs: Int) -> Double {
        let key = "cpu/\(movedBytes)/\(runs)"
        if let t = cache[key] { return t }
        let copy = movedBytes / 2
        precondition(copy <= src.bytes, "probe buffer too small")
        func once() -> Double {
            let c0 = threadCPUSeconds()
            memcpy(dst.pointer, src.pointer, copy)
            return threadCPUSeconds() - c0
        }
        _ = once()  // warm-up
        let t = median((0..<max(runs, 3)).map { _ in once() })
        cache[key] = t
        return t
    }
}
