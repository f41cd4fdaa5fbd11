import CEDKM
import Glibc
import Testing

/// Threads as ranks: an in-process all-gather / all-reduce over pthread barriers.
final class ThreadGroup: @unchecked Sendable {
    let world: Int
    let barrier = UnsafeMutablePointer<pthread_barrier_t>.allocate(capacity: 1)  // stable address
    /// The all-gather's receive buffer: raw memory, so ranks can write their disjoint blocks at once
    /// (a Swift array would be one exclusive access for all of them).
    var buffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    var failNext = false
    init(world: Int) {
        self.world = world
        pthread_barrier_init(barrier, nil, UInt32(world))
    }
    deinit {
        buffer.deallocate()
        pthread_barrier_destroy(barrier)
        barrier.deallocate()
    }
}

final class RankContext {
    let group: ThreadGroup
    let rank: Int
    init(_ group: ThreadGroup, _ rank: Int) { self.group = group; self.rank = rank }
}

let gatherCallback: @convention(c) (UnsafeMutableRawPointer?, UnsafeRawPointer?, UnsafeMutableRawPointer?, Int) -> Int32 = { user, send, recv, bytes in
    let ctx = Unmanaged<RankContext>.fromOpaque(user!).takeUnretainedValue()
    let g = ctx.group
    if g.failNext { return -1 }
    if ctx.rank == 0 {
        g.buffer.deallocate()
        g.buffer = .allocate(byteCount: max(1, bytes * g.world), alignment: 16)
    }
    pthread_barrier_wait(g.barrier)
    let buffer = g.buffer.baseAddress!
    (buffer + ctx.rank * bytes).copyMemory(from: send!, byteCount: bytes)
    pthread_barrier_wait(g.barrier)
    recv!.copyMemory(from: buffer, byteCount: bytes * g.world)
    pthread_barrier_wait(g.barrier)
    return 0
}

let reduceCallback: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<Double>?, Int) -> Int32 = { _, _, _ in 0 }

@Suite(.serialized) struct SavedStateTests {
    static let rows = 48, cols = 64
    static func data() -> (w: [UInt16], grad: [Float]) {
        var rng = Gaussian(seed: 21)
        return (f16Bits(rng.floats(rows * cols, std: 0.02)), rng.floats(rows * cols, std: 1))
    }

    func run(mode: edkm_saved_mode, keepWeights: Bool = false) -> (Step, edkm_runtime_stats, UInt64)? {
        let (w, grad) = Self.data()
        let n = w.count
        let rt = makeRuntime(mode: mode, keepWeights: keepWeights)
        defer { edkm_runtime_destroy(rt) }
        let l = makeLayer(rt, [Int64(Self.rows), Int64(Self.cols)], layerConfig(bits: 3, tau: 1e-5))
        defer { edkm_layer_destroy(l) }
        let before = stats(rt)
        var out = [Float](repeating: 0, count: n)
        var state: OpaquePointer? = nil
        guard check(edkm_layer_forward(l, w, EDKM_DTYPE_F16, n, &out, EDKM_DTYPE_F32, &state)) == EDKM_OK else { return nil }
        var bytes: UInt64 = 0
        check(edkm_saved_state_bytes(state, &bytes))
        let during = stats(rt)
        var gin = [Float](repeating: 0, count: n)
        let passWeights = mode == EDKM_SAVED_HISTOGRAM && !keepWeights
        check(edkm_saved_state_backward(state, grad, &gin, EDKM_DTYPE_F32, n, passWeights ? w : nil))
        edkm_saved_state_destroy(state)
        let after = stats(rt)
        #expect(after.live_saved_states == 0 && after.arena_allocated == before.arena_allocated && after.heap_saved == 0)
        #expect(during.live_saved_states == 1)
        return (Step(output: out, gradient: gin), during, bytes)
    }

    /// Every mode gives the same output and gradient. Modes that keep float32 softmax maps read
    /// them back instead of recomputing in float64: 1e-6 relative.
    @Test func everyModeSameGradients() {
        guard let reference = run(mode: EDKM_SAVED_HISTOGRAM) else { return }
        for mode in [EDKM_SAVED_DKM, EDKM_SAVED_MARSHAL, EDKM_SAVED_DEDUP, EDKM_SAVED_UNIQUIFY, EDKM_SAVED_SHARD] {
            guard let r = run(mode: mode) else { continue }
            #expect(maxRelativeDifference(r.0.output, reference.0.output) < 1e-6, "mode \(mode)")
            #expect(maxRelativeDifference(r.0.gradient, reference.0.gradient) < 1e-6, "mode \(mode)")
            if mode == EDKM_SAVED_DKM {
                #expect(r.1.heap_saved > 0 && r.1.arena_allocated == 0)
            } else {
                #expect(r.1.arena_allocated > 0 && r.1.heap_saved == 0)
            }
        }
        if let kept = run(mode: EDKM_SAVED_HISTOGRAM, keepWeights: true) {
            #expect(kept.0.gradient == reference.0.gradient)
        }
        // Saved bytes shrink along the ablation.
        let sizes = [EDKM_SAVED_DKM, EDKM_SAVED_DEDUP, EDKM_SAVED_UNIQUIFY, EDKM_SAVED_HISTOGRAM].compactMap { run(mode: $0)?.2 }
        #expect(sizes.count == 4 && sizes[0] >= sizes[1] && sizes[1] > sizes[2] && sizes[2] > sizes[3])
    }

    /// Dedup: the same weights forwarded twice (gradient accumulation) share their saved copy;
    /// different contents and same-pointer-changed-contents do not.
    @Test func dedupHitsAndMisses() {
        var (w, _) = Self.data()
        let n = w.count
        let rt = makeRuntime(mode: EDKM_SAVED_DEDUP)
        let l = makeLayer(rt, [Int64(Self.rows), Int64(Self.cols)], layerConfig(bits: 2, iterations: 3))
        let cfg = layerConfig(bits: 2, iterations: 3)
        var out = [Float](repeating: 0, count: n)
        var s1: OpaquePointer? = nil, s2: OpaquePointer? = nil, s3: OpaquePointer? = nil
        check(edkm_layer_forward(l, w, EDKM_DTYPE_F16, n, &out, EDKM_DTYPE_F32, &s1))
        let a = stats(rt)
        #expect(a.dedup_misses == 1 && a.dedup_hits == 2)  // 3 iterations save the same weights once
        check(edkm_layer_forward(l, w, EDKM_DTYPE_F16, n, &out, EDKM_DTYPE_F32, &s2))
        let b = stats(rt)
        #expect(b.dedup_hits == 5 && b.dedup_misses == 1)
        // A tied weight in another layer hits too.
        let tied = makeLayer(rt, [Int64(Self.rows), Int64(Self.cols)], cfg)
        var s4: OpaquePointer? = nil
        check(edkm_layer_forward(tied, w, EDKM_DTYPE_F16, n, &out, EDKM_DTYPE_F32, &s4))
        #expect(stats(rt).dedup_misses == 1)
        w[7] ^= 1  // same buffer, changed content
        check(edkm_layer_forward(l, w, EDKM_DTYPE_F16, n, &out, EDKM_DTYPE_F32, &s3))
        #expect(stats(rt).dedup_misses == 2)
        for s in [s1, s2, s3, s4] { edkm_saved_state_destroy(s) }
        let end = stats(rt)
        #expect(end.arena_allocated == 0 && end.live_saved_states == 0)
        edkm_layer_destroy(l)
        edkm_layer_destroy(tied)
        edkm_runtime_destroy(rt)
    }

    /// The runtime handle destroyed while its layer and a saved state live (allowed: they keep the
    /// runtime alive), then a backward without weights on an 8-bit layer most of whose 256 clusters
    /// get no attention (zero_threshold 0): the empty clusters' pass-through in the backward.
    /// The gradient is finite and bit-identical for 1, 2 and 3 threads and to a run whose runtime
    /// handle stays alive. (The release-build crash of this program is `known_bugs K11`.)
    @Test func runtimeDestroyedBeforeBackward() {
        let n = 384
        let w = bf16Bits((0..<n).map { Float(($0 * 37) % 101) / 50 - 1 })
        let grad = (0..<n).map { 0.01 * Float($0 % 7) }
        func step(threads: UInt32, destroyFirst: Bool) -> [Float]? {
            let rt = makeRuntime(mode: EDKM_SAVED_MARSHAL, threads: threads)
            var cfg = layerConfig(bits: 8)
            cfg.zero_threshold = 0
            cfg.epsilon = 0
            let l = makeLayer(rt, [Int64(n)], cfg)
            defer { edkm_layer_destroy(l) }
            let centroids = (0..<256).map { Float($0 - 128) / 16 }  // [-8, 8): most clusters empty
            check(edkm_layer_set_centroids(l, centroids, 256))
            var out = [Float](repeating: 0, count: n)
            var state: OpaquePointer? = nil
            guard check(edkm_layer_forward(l, w, EDKM_DTYPE_BF16, n, &out, EDKM_DTYPE_F32, &state)) == EDKM_OK else { return nil }
            if destroyFirst { edkm_runtime_destroy(rt) }
            var gin = [Float](repeating: .nan, count: n)
            let status = edkm_saved_state_backward(state, grad, &gin, EDKM_DTYPE_F32, n, nil)
            edkm_saved_state_destroy(state)
            if !destroyFirst { edkm_runtime_destroy(rt) }
            return check(status, "backward") == EDKM_OK ? gin : nil
        }
        guard let reference = step(threads: 1, destroyFirst: false) else { return }
        #expect(reference.allSatisfy(\.isFinite) && reference.contains { $0 != 0 })
        for threads: UInt32 in [1, 2, 3] {
            let g = step(threads: threads, destroyFirst: true)
            #expect(g.map { $0.map(\.bitPattern) } == reference.map(\.bitPattern), "threads \(threads)")
        }
    }

    /// A budget smaller than one saved state: forward fails cleanly, nothing leaks, and raising
    /// the budget lets training continue.
    @Test func budgetExceeded() {
        let (w, grad) = Self.data()
        let n = w.count
        let rt = makeRuntime(mode: EDKM_SAVED_MARSHAL, budget: 64 * 1024)
        let l = makeLayer(rt, [Int64(Self.rows), Int64(Self.cols)], layerConfig(bits: 3))
        var out = [Float](repeating: -1, count: n)
        var state: OpaquePointer? = nil
        #expect(edkm_layer_forward(l, w, EDKM_DTYPE_F16, n, &out, EDKM_DTYPE_F32, &state) == EDKM_ERR_BUDGET_EXCEEDED)
        #expect(lastError().contains("budget"))
        #expect(state == nil && out.allSatisfy { $0 == -1 })
        #expect(stats(rt).arena_allocated == 0 && stats(rt).live_saved_states == 0)
        check(edkm_runtime_set_budget(rt, 0))
        #expect(forwardBackward(l, weights: w, dtype: EDKM_DTYPE_F16, count: n, grad: grad, passWeights: false) != nil)
        #expect(stats(rt).arena_allocated == 0)
        #expect(stats(rt).arena_peak > 64 * 1024)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// Shard mode with threads as ranks: every rank's gradient equals the single-process one,
    /// for world sizes with an uneven last shard.
    @Test(arguments: [1, 2, 3, 8])
    func shardedAcrossRanks(world: Int) {
        guard let reference = run(mode: EDKM_SAVED_HISTOGRAM) else { return }
        let (w, grad) = Self.data()
        let n = w.count
        let group = ThreadGroup(world: world)
        let contexts = (0..<world).map { RankContext(group, $0) }
        let results = runOnThreads(world) { r -> (gradient: [Float], shardBytes: UInt64) in
                var comm = edkm_communicator(struct_size: UInt32(MemoryLayout<edkm_communicator>.size), rank: Int32(r),
                                             world_size: Int32(world), reserved: 0,
                                             user_data: Unmanaged.passUnretained(contexts[r]).toOpaque(),
                                             all_gather: gatherCallback, all_reduce_sum: reduceCallback)
                let rt = makeRuntime(mode: EDKM_SAVED_SHARD, threads: 1, communicator: &comm)
                let l = makeLayer(rt, [Int64(Self.rows), Int64(Self.cols)], layerConfig(bits: 3, tau: 1e-5))
                var out = [Float](repeating: 0, count: n)
                var state: OpaquePointer? = nil
                check(edkm_layer_forward(l, w, EDKM_DTYPE_F16, n, &out, EDKM_DTYPE_F32, &state))
                var gin = [Float](repeating: 0, count: n)
                check(edkm_saved_state_backward(state, grad, &gin, EDKM_DTYPE_F32, n, nil))
                let bytes = stats(rt).communicator_bytes
                edkm_saved_state_destroy(state)
                edkm_layer_destroy(l)
                edkm_runtime_destroy(rt)
                return (gin, bytes)
        }
        for r in 0..<world {
            #expect(maxRelativeDifference(results[r].gradient, reference.0.gradient) < 1e-6, "rank \(r)")
            #expect(results[r].shardBytes == UInt64((n + world - 1) / world * 2))
        }
    }

    /// A failing communicator: backward reports EDKM_ERR_COMMUNICATOR, writes nothing, and the
    /// saved state stays usable for a retry.
    @Test func failingCommunicator() {
        let (w, grad) = Self.data()
        let n = w.count
        let group = ThreadGroup(world: 1)
        let ctx = RankContext(group, 0)
        var comm = edkm_communicator(struct_size: UInt32(MemoryLayout<edkm_communicator>.size), rank: 0, world_size: 1,
                                     reserved: 0, user_data: Unmanaged.passUnretained(ctx).toOpaque(),
                                     all_gather: gatherCallback, all_reduce_sum: reduceCallback)
        let rt = makeRuntime(mode: EDKM_SAVED_SHARD, communicator: &comm)
        let l = makeLayer(rt, [Int64(Self.rows), Int64(Self.cols)], layerConfig(bits: 3))
        var out = [Float](repeating: 0, count: n)
        var state: OpaquePointer? = nil
        check(edkm_layer_forward(l, w, EDKM_DTYPE_F16, n, &out, EDKM_DTYPE_F32, &state))
        var gin = [Float](repeating: -3, count: n)
        group.failNext = true
        #expect(edkm_saved_state_backward(state, grad, &gin, EDKM_DTYPE_F32, n, nil) == EDKM_ERR_COMMUNICATOR)
        #expect(gin.allSatisfy { $0 == -3 })
        group.failNext = false
        check(edkm_saved_state_backward(state, grad, &gin, EDKM_DTYPE_F32, n, nil))
        edkm_saved_state_destroy(state)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// Different layers on one runtime from different threads at once.
    @Test func concurrentLayers() {
        let (w, grad) = Self.data()
        let n = w.count
        let rt = makeRuntime(threads: 2)
        guard let single = run(mode: EDKM_SAVED_HISTOGRAM) else { return }
        let results = runOnThreads(4) { _ -> [Float] in
            let l = makeLayer(rt, [Int64(Self.rows), Int64(Self.cols)], layerConfig(bits: 3, tau: 1e-5))
            defer { edkm_layer_destroy(l) }
            return forwardBackward(l, weights: w, dtype: EDKM_DTYPE_F16, count: n, grad: grad)?.gradient ?? []
        }
        for r in results { #expect(r == single.0.gradient) }
        #expect(stats(rt).arena_allocated == 0)
        edkm_runtime_destroy(rt)
    }
}

/// In-process all-reduce for threads as ranks: ranks add their buffers into a shared sum in rank
/// order (deterministic), then every rank copies the result.
final class ReduceGroup: @unchecked Sendable {
    let world: Int
    let barrier = UnsafeMutablePointer<pthread_barrier_t>.allocate(capacity: 1)
    var sum: [Double] = []
    var gatherBuffer: [UInt8] = []
    init(world: Int) {
        self.world = world
        pthread_barrier_init(barrier, nil, UInt32(world))
    }
    deinit {
        pthread_barrier_destroy(barrier)
        barrier.deallocate()
    }
}

final class ReduceRank {
    let group: ReduceGroup
    let rank: Int
    init(_ g: ReduceGroup, _ r: Int) { group = g; rank = r }
}

let allReduceCallback: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<Double>?, Int) -> Int32 = { user, data, n in
    let me = Unmanaged<ReduceRank>.fromOpaque(user!).takeUnretainedValue()
    let g = me.group
    if me.rank == 0 { g.sum = [Double](repeating: 0, count: n) }
    pthread_barrier_wait(g.barrier)
    for r in 0..<g.world {
        if r == me.rank { for i in 0..<n { g.sum[i] += data![i] } }
        pthread_barrier_wait(g.barrier)
    }
    for i in 0..<n { data![i] = g.sum[i] }
    pthread_barrier_wait(g.barrier)
    return 0
}

let noGatherCallback: @convention(c) (UnsafeMutableRawPointer?, UnsafeRawPointer?, UnsafeMutableRawPointer?, Int) -> Int32 = { _, _, _, _ in -1 }

/// Weights sharded across ranks (histogram-native): every rank's slice equals the single-process
/// forward and backward of the whole tensor (gradient sums are added in another order: 1e-6).
@Suite(.serialized) struct ShardedWeightsTests {
    @Test(arguments: [1, 2, 3, 5])
    func slicesEqualTheWholeTensor(world: Int) {
        var rng = Gaussian(seed: 8)
        let rows = 40, cols = 64, n = rows * cols
        let w = f16Bits(rng.floats(n, std: 0.02))
        let grad = rng.floats(n, std: 1)
        let rt = makeRuntime()
        let whole = makeLayer(rt, [Int64(rows), Int64(cols)], layerConfig(bits: 3, tau: 1e-5))
        guard let reference = forwardBackward(whole, weights: w, dtype: EDKM_DTYPE_F16, count: n, grad: grad) else { return }
        edkm_layer_destroy(whole)
        edkm_runtime_destroy(rt)
        // Uneven slices, one of them empty when world > 3.
        var bounds = (0...world).map { $0 * n / world }
        if world > 3 { bounds[2] = bounds[1] }
        let group = ReduceGroup(world: world)
        let ranks = (0..<world).map { ReduceRank(group, $0) }
        let results = runOnThreads(world) { r -> (output: [Float], gradient: [Float], traffic: UInt64) in
            var comm = edkm_communicator(struct_size: UInt32(MemoryLayout<edkm_communicator>.size), rank: Int32(r),
                                         world_size: Int32(world), reserved: 0,
                                         user_data: Unmanaged.passUnretained(ranks[r]).toOpaque(),
                                         all_gather: noGatherCallback, all_reduce_sum: allReduceCallback)
            let rt = makeRuntime(threads: 1, communicator: &comm)
            let l = makeLayer(rt, [Int64(rows), Int64(cols)], layerConfig(bits: 3, tau: 1e-5))
            let lo = bounds[r], count = bounds[r + 1] - bounds[r]
            let slice = Array(w[lo..<(lo + count)])
            var out = [Float](repeating: 0, count: max(count, 1))
            var state: OpaquePointer? = nil
            check(edkm_layer_forward_shard(l, slice.isEmpty ? [0] : slice, EDKM_DTYPE_F16, lo, count, &out, EDKM_DTYPE_F32, &state))
            var gin = [Float](repeating: 0, count: max(count, 1))
            let g = Array(grad[lo..<(lo + count)])
            check(edkm_saved_state_backward(state, g.isEmpty ? [0] : g, &gin, EDKM_DTYPE_F32, count, slice.isEmpty ? [0] : slice))
            let traffic = stats(rt).communicator_bytes
            edkm_saved_state_destroy(state)
            edkm_layer_destroy(l)
            edkm_runtime_destroy(rt)
            return (Array(out.prefix(count)), Array(gin.prefix(count)), traffic)
        }
        let traffic = results.map(\.traffic)
        #expect(results.flatMap(\.output) == reference.output)
        #expect(maxRelativeDifference(results.flatMap(\.gradient), reference.gradient) < 1e-6)
        // (65,536 + 1) counts + (U + 2) gradient sums, 8 bytes each, whatever the slice size.
        #expect(traffic.allSatisfy { $0 == traffic[0] && $0 > 65537 * 8 && $0 < (65537 + 3000) * 8 })
    }

    @Test func nonFiniteSliceFailsEveryRank() {
        let world = 2, n = 64 * 16
        var w = [UInt16](repeating: Float16(0.01).bitPattern, count: n)
        for i in 0..<n { w[i] = Float16(Float(i % 17) * 0.001).bitPattern }
        w[n - 3] = Float16.nan.bitPattern  // in rank 1's slice
        let group = ReduceGroup(world: world)
        let ranks = (0..<world).map { ReduceRank(group, $0) }
        let statuses = runOnThreads(world) { r -> edkm_status in
            var comm = edkm_communicator(struct_size: UInt32(MemoryLayout<edkm_communicator>.size), rank: Int32(r),
                                         world_size: Int32(world), reserved: 0,
                                         user_data: Unmanaged.passUnretained(ranks[r]).toOpaque(),
                                         all_gather: noGatherCallback, all_reduce_sum: allReduceCallback)
            let rt = makeRuntime(threads: 1, communicator: &comm)
            let l = makeLayer(rt, [64, 16], layerConfig(bits: 2))
            let lo = r * n / 2
            var out = [Float](repeating: 0, count: n / 2)
            var state: OpaquePointer? = nil
            let status = edkm_layer_forward_shard(l, Array(w[lo..<(lo + n / 2)]), EDKM_DTYPE_F16, lo, n / 2, &out,
                                                  EDKM_DTYPE_F32, &state)
            edkm_layer_destroy(l)
            edkm_runtime_destroy(rt)
            return status
        }
        #expect(statuses == [EDKM_ERR_NON_FINITE, EDKM_ERR_NON_FINITE])
    }
}
