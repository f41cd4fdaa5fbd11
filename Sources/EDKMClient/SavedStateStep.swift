import CEDKM
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One training step of the eDKM memory ablation on the layers of one runtime, as `edkm demo` and
/// `edkm-bench ablation` measure it: reset the runtime's peaks, run `forwards` training forwards of
/// every layer holding all their saved states (a step with gradient accumulation holds them all),
/// read the runtime's statistics, then run the backward of every saved state in reverse order and
/// release them. What the forwards kept comes from the runtime's own statistics (the offload arena's
/// jemalloc counters and the heap-saved counters), never from the process's memory.
public struct SavedStateStep {
    /// Runtime statistics after reset_peak, before the first forward.
    public var before: edkm_runtime_stats
    /// Runtime statistics after the last forward (all saved states alive).
    public var afterForwards: edkm_runtime_stats
    /// Sum of edkm_saved_state_bytes over the saved states (a tensor shared by dedup counts in each).
    public var stateBytes: UInt64 = 0
    /// edkm_layer_stats of each layer after the forwards: iterations and distinct values.
    public var iterations: [Int] = []
    public var distinct: [Int] = []
    /// Wall seconds of the forwards and of the backwards (each between two `barrier` calls).
    public var forwardSeconds = 0.0
    public var backwardSeconds = 0.0

    /// Peak saved bytes during the forwards: (arena_peak - arena before) + (heap_saved_peak - heap before).
    public var peak: UInt64 {
        (afterForwards.arena_peak - before.arena_allocated) + (afterForwards.heap_saved_peak - before.heap_saved)
    }

    /// Saved bytes held after the forwards: (arena_allocated + heap_saved) minus before.
    public var held: UInt64 {
        (afterForwards.arena_allocated - before.arena_allocated) + (afterForwards.heap_saved - before.heap_saved)
    }

    /// Saved memory still held after every saved state of the step was destroyed.
    public struct Leak: Error, CustomStringConvertible {
        public let description: String
    }

    /// Runs the step. `weights[i]`: layer i's `count` weights of `dtype` (w~ goes to a scratch buffer of
    /// the same dtype); `gradient`: dL/dw~ of `gradientDtype` for the largest layer (a prefix serves the
    /// others). `barrier` runs before and after the forwards and the backwards (the simulated ranks of a
    /// sharded runtime meet there); `afterBackward(i, gradIn)` sees layer i's dL/dw right after its
    /// backward. Throws EDKMError for a failed call and Leak when memory is not returned.
    public static func run(runtime: EDKMRuntime, layers: [EDKMLayer], weights: [UnsafeRawPointer], dtype: edkm_dtype,
                           forwards: Int = 1, gradient: UnsafeRawPointer, gradientDtype: edkm_dtype,
                           barrier: () -> Void = {},
                           afterBackward: (Int, UnsafeRawPointer) -> Void = { _, _ in }) throws -> SavedStateStep {
        let maxCount = layers.map(\.count).max() ?? 0
        let out = UnsafeMutableRawPointer.allocate(byteCount: max(1, maxCount * dtype.byteWidth), alignment: 64)
        let gradIn = UnsafeMutableRawPointer.allocate(byteCount: max(1, maxCount * gradientDtype.byteWidth), alignment: 64)
        defer { out.deallocate(); gradIn.deallocate() }

        try runtime.resetPeak()
        let s0 = try runtime.stats()
        var step = SavedStateStep(before: s0, afterForwards: s0)
        var saved: [(Int, EDKMSavedState)] = []
        barrier()
        let t0 = monotonicSeconds()
        for _ in 0..<forwards {
            for i in layers.indices {
                saved.append((i, try layers[i].forward(weights[i], dtype, out: out, outDtype: dtype, save: true)!))
            }
        }
        barrier()
        let t1 = monotonicSeconds()
        step.afterForwards = try runtime.stats()
        step.stateBytes = try saved.reduce(0) { $0 + (try $1.1.bytes()) }
        let layerStats = try layers.map { try $0.stats() }
        step.iterations = layerStats.map { Int($0.iterations) }
        step.distinct = layerStats.map { Int($0.distinct_values) }
        barrier()
        let t2 = monotonicSeconds()
        for (i, s) in saved.reversed() {
            try s.backward(gradOutput: gradient, gradInput: gradIn, dtype: gradientDtype, weights: weights[i])
            afterBackward(i, UnsafeRawPointer(gradIn))
        }
        barrier()
        let t3 = monotonicSeconds()
        step.forwardSeconds = t1 - t0
        step.backwardSeconds = t3 - t2
        saved.removeAll()
        let s2 = try runtime.stats()
        if s2.live_saved_states != 0 { throw Leak(description: "\(s2.live_saved_states) saved states alive after destroy") }
        if s2.arena_allocated != s0.arena_allocated || s2.heap_saved != s0.heap_saved {
            throw Leak(description: "saved memory not returned: arena \(s0.arena_allocated) -> \(s2.arena_allocated), heap \(s0.heap_saved) -> \(s2.heap_saved)")
        }
        return step
    }
}

/// Monotonic wall-clock time in seconds.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + 1e-9 * Double(ts.tv_nsec)
}
