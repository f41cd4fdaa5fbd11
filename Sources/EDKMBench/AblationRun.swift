import CEDKM

/// The weights of one LLaMA-7B decoder layer (bf16) and the shared scratch of a training step.
final class DecoderLayerData {
    let shapes: [NamedShape]
    let weights: [Buffer]
    /// dL/dw~ for the largest matrix (a prefix serves the others).
    let gradOut: Buffer
    let maxCount: Int
    static let dtype = WeightDType.bf16

    init(shapes: [NamedShape], seed: UInt64 = 7000) {
        self.shapes = shapes
        weights = shapes.enumerated().map { i, s in
            Buffer(llmWeights(count: s.count, dtype: DecoderLayerData.dtype, seed: seed + UInt64(i)))
        }
        maxCount = shapes.map(\.count).max()!
        gradOut = Buffer(upstreamGradient(count: maxCount, dtype: DecoderLayerData.dtype, seed: 99))
    }

    /// The first rows of every matrix: `rows` of the base-row matrices (q, k, v, o, down), the
    /// same fraction of the others (gate, up); `rows` = shapes[0].rows gives the whole layer.
    func slice(rows: Int) -> [NamedShape] {
        let base = shapes[0].rows
        return shapes.map { s in
            var t = s
            t.rows = max(1, (s.rows * rows + base / 2) / base)
            return t
        }
    }
}

/// Measures one mode: forward of every matrix of `shapes` (`forwards` times each, saved states all
/// held, as a training step with gradient accumulation holds them), then backward of every saved
/// state in reverse order. Saved bytes from the runtime's statistics around the forwards.
func measureMode(_ spec: AblationMode, _ data: DecoderLayerData, shapes: [NamedShape], bits: Int, threads: UInt32,
                 forwards: Int, keepGradient: Bool) -> AblationResult {
    let dtype = DecoderLayerData.dtype.c
    let rt = Runtime(threads: threads, mode: spec.mode, keepWeights: spec.keepWeights)
    let layers = shapes.map { Layer(rt, rows: $0.rows, cols: $0.cols, bits: bits) }
    for (l, w) in zip(layers, data.weights) { l.initCentroids(w.pointer, dtype: dtype) }
    let maxCount = shapes.map(\.count).max()!
    let out = Buffer(bytes: maxCount * 2), gradIn = Buffer(bytes: maxCount * 2)
    var r = AblationResult(weights: shapes.reduce(0) { $0 + $1.count })

    rt.resetPeak()
    let s0 = rt.stats()
    var saved: [(Int, Saved)] = []
    let t0 = now()
    for _ in 0..<forwards {
        for i in layers.indices { saved.append((i, layers[i].forward(data.weights[i].pointer, dtype: dtype, out: out.pointer)!)) }
    }
    let t1 = now()
    let s1 = rt.stats()
    r.peak = (s1.arena_peak - s0.arena_allocated) + (s1.heap_saved_peak - s0.heap_saved)
    r.held = (s1.arena_allocated - s0.arena_allocated) + (s1.heap_saved - s0.heap_saved)
    r.stateBytes = saved.reduce(0) { $0 + $1.1.bytes }
    r.dedupHits = s1.dedup_hits - s0.dedup_hits
    r.dedupMisses = s1.dedup_misses - s0.dedup_misses
    r.iterations = layers.map { Int($0.stats().iterations) }
    r.distinct = layers.map { Int($0.stats().distinct_values) }
    let t2 = now()
    for (i, s) in saved.reversed() {
        s.backward(data.gradOut.pointer, gradIn.pointer, dtype: dtype, count: layers[i].count, weights: data.weights[i].pointer)
        if keepGradient && i == 0 && r.gradient.isEmpty { r.gradient = Array(UnsafeBufferPointer(start: gradIn.pointer.assumingMemoryBound(to: UInt16.self), count: layers[0].count)) }
    }
    let t3 = now()
    r.forward = t1 - t0
    r.backward = t3 - t2
    saved.removeAll()
    let s2 = rt.stats()
    if s2.live_saved_states != 0 { fail("\(spec.name): \(s2.live_saved_states) saved states alive after destroy") }
    if s2.arena_allocated != s0.arena_allocated || s2.heap_saved != s0.heap_saved {
        fail("\(spec.name): saved memory not returned: arena \(s0.arena_allocated) -> \(s2.arena_allocated), heap \(s0.heap_saved) -> \(s2.heap_saved)")
    }
    return r
}

/// SHARD with `world` ranks simulated by threads (each its own runtime with one worker thread, its
/// own layers and an in-process communicator); rank 0's figures are returned. The time is the wall
/// time of the whole simulated world (all ranks share this machine's cores).
func measureSharded(_ spec: AblationMode, _ data: DecoderLayerData, shapes: [NamedShape], bits: Int, world: Int,
                    forwards: Int, keepGradient: Bool) -> AblationResult {
    let dtype = DecoderLayerData.dtype.c
    let group = InProcessGroup(world: world)
    let slots = UnsafeMutablePointer<AblationResult>.allocate(capacity: world)
    slots.initialize(repeating: AblationResult(weights: 0), count: world)
    defer { slots.deinitialize(count: world); slots.deallocate() }
    let prints = UnsafeMutablePointer<UInt64>.allocate(capacity: world)
    defer { prints.deallocate() }
    runThreads(world) { rank in
        let member = InProcessGroup.Member(group, rank: rank)
        withExtendedLifetime(member) {
            let rt = withUnsafePointer(to: member.communicator) { Runtime(threads: 1, mode: spec.mode, communicator: $0) }
            let layers = shapes.map { Layer(rt, rows: $0.rows, cols: $0.cols, bits: bits) }
            for (l, w) in zip(layers, data.weights) { l.initCentroids(w.pointer, dtype: dtype) }
            let maxCount = shapes.map(\.count).max()!
            let out = Buffer(bytes: maxCount * 2), gradIn = Buffer(bytes: maxCount * 2)
            var r = AblationResult(weights: shapes.reduce(0) { $0 + $1.count })
            rt.resetPeak()
            let s0 = rt.stats()
            group.sync()
            let t0 = now()
            var saved: [(Int, Saved)] = []
            for _ in 0..<forwards {
                for i in layers.indices { saved.append((i, layers[i].forward(data.weights[i].pointer, dtype: dtype, out: out.pointer)!)) }
            }
            group.sync()
            let t1 = now()
            let s1 = rt.stats()
            r.peak = (s1.arena_peak - s0.arena_allocated) + (s1.heap_saved_peak - s0.heap_saved)
            r.held = (s1.arena_allocated - s0.arena_allocated) + (s1.heap_saved - s0.heap_saved)
            r.stateBytes = saved.reduce(0) { $0 + $1.1.bytes }
            r.dedupHits = s1.dedup_hits - s0.dedup_hits
            r.dedupMisses = s1.dedup_misses - s0.dedup_misses
            r.iterations = layers.map { Int($0.stats().iterations) }
            r.distinct = layers.map { Int($0.stats().distinct_values) }
            group.sync()
            let t2 = now()
            for (i, s) in saved.reversed() {
                s.backward(data.gradOut.pointer, gradIn.pointer, dtype: dtype, count: layers[i].count, weights: data.weights[i].pointer)
                if i == 0 && r.gradient.isEmpty {
                    prints[rank] = gradIn.fingerprint
                    if keepGradient && rank == 0 { r.gradient = Array(UnsafeBufferPointer(start: gradIn.pointer.assumingMemoryBound(to: UInt16.self), count: layers[0].count)) }
                }
            }
            group.sync()
            let t3 = now()
            r.forward = t1 - t0
            r.backward = t3 - t2
            r.communicatorBytes = rt.stats().communicator_bytes - s0.communicator_bytes
            saved.removeAll()
            slots[rank] = r
        }
    }
    for i in 1..<world where prints[i] != prints[0] { fail("shard: rank \(i)'s gradient differs from rank 0's") }
    return slots[0]
}

/// How two bf16 gradients differ: the largest distance in units in the last place (adjacent bf16
/// values are 1 apart; a rounding flip of a float32 result is 1) and the fraction of elements that differ.
/// Also max |a - b| / max |b| (small elements that cancel can differ by many ulps and still be
/// tiny against the gradient's scale).
func ulpDifference(_ a: [UInt16], _ b: [UInt16]) -> (maxULP: Int, differing: Double, relative: Double) {
    guard a.count == b.count, !a.isEmpty else { return (-1, .nan, .nan) }
    func ordered(_ h: UInt16) -> Int { h & 0x8000 != 0 ? -Int(h & 0x7fff) : Int(h) }
    var worst = 0, n = 0
    var diff: Float = 0, scale: Float = 0
    for i in a.indices {
        let y = Half.bf16ToFloat(b[i])
        scale = max(scale, abs(y))
        if a[i] != b[i] {
            worst = max(worst, abs(ordered(a[i]) - ordered(b[i])))
            diff = max(diff, abs(Half.bf16ToFloat(a[i]) - y))
            n += 1
        }
    }
    return (worst, Double(n) / Double(a.count), scale > 0 ? Double(diff / scale) : Double(diff))
}
