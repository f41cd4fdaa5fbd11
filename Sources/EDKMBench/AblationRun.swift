import CEDKM
import EDKMClient
import EDKMNumerics

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

/// Measures one mode: SavedStateStep (forward of every matrix of `shapes` `forwards` times each, saved
/// states all held, as a training step with gradient accumulation holds them; then backward of every
/// saved state in reverse order) in a fresh runtime of the mode.
func measureMode(_ spec: AblationMode, _ data: DecoderLayerData, shapes: [NamedShape], bits: Int, threads: UInt32,
                 forwards: Int, keepGradient: Bool) -> AblationResult {
    let rt = must { try EDKMRuntime(savedMode: spec.mode, threads: threads, keepWeights: spec.keepWeights) }
    var r = AblationResult(weights: shapes.reduce(0) { $0 + $1.count })
    let step = measureStep(spec, data, rt, shapes: shapes, bits: bits, forwards: forwards) { i, gradIn in
        if keepGradient && i == 0 && r.gradient.isEmpty { r.gradient = bf16Array(gradIn, count: shapes[0].count) }
    }
    r.record(step)
    return r
}

/// SavedStateStep of `spec` on new layers of `shapes` in `rt` (centroids from the weights); a failed
/// call or memory not returned ends the benchmark.
func measureStep(_ spec: AblationMode, _ data: DecoderLayerData, _ rt: EDKMRuntime, shapes: [NamedShape], bits: Int,
                 forwards: Int, barrier: () -> Void = {},
                 afterBackward: (Int, UnsafeRawPointer) -> Void) -> SavedStateStep {
    let dtype = DecoderLayerData.dtype.c
    let layers = shapes.map { EDKMLayer.bench(rt, rows: $0.rows, cols: $0.cols, bits: bits) }
    for (l, w) in zip(layers, data.weights) { must { try l.initCentroids(w.pointer, dtype) } }
    do {
        return try SavedStateStep.run(runtime: rt, layers: layers, weights: data.weights.prefix(layers.count).map { UnsafeRawPointer($0.pointer) },
                                      dtype: dtype, forwards: forwards, gradient: data.gradOut.pointer, gradientDtype: dtype,
                                      barrier: barrier, afterBackward: afterBackward)
    } catch {
        fail("\(spec.name): \(error)")
    }
}

/// `count` bf16 bit patterns from `p`.
func bf16Array(_ p: UnsafeRawPointer, count: Int) -> [UInt16] {
    Array(UnsafeBufferPointer(start: p.assumingMemoryBound(to: UInt16.self), count: count))
}

extension AblationResult {
    /// The figures of one measured step.
    mutating func record(_ step: SavedStateStep) {
        peak = step.peak
        held = step.held
        stateBytes = step.stateBytes
        dedupHits = step.afterForwards.dedup_hits - step.before.dedup_hits
        dedupMisses = step.afterForwards.dedup_misses - step.before.dedup_misses
        iterations = step.iterations
        distinct = step.distinct
        forward = step.forwardSeconds
        backward = step.backwardSeconds
    }
}

/// SHARD with `world` ranks simulated by threads (each its own runtime with one worker thread, its
/// own layers and an in-process communicator); rank 0's figures are returned. The time is the wall
/// time of the whole simulated world (all ranks share this machine's cores).
func measureSharded(_ spec: AblationMode, _ data: DecoderLayerData, shapes: [NamedShape], bits: Int, world: Int,
                    forwards: Int, keepGradient: Bool) -> AblationResult {
    let group = InProcessGroup(world: world)
    let slots = UnsafeMutablePointer<AblationResult>.allocate(capacity: world)
    slots.initialize(repeating: AblationResult(weights: 0), count: world)
    defer { slots.deinitialize(count: world); slots.deallocate() }
    let prints = UnsafeMutablePointer<UInt64>.allocate(capacity: world)
    defer { prints.deallocate() }
    runThreads(world) { rank in
        let member = InProcessGroup.Member(group, rank: rank)
        withExtendedLifetime(member) {
            let rt = withUnsafePointer(to: member.communicator) { c in must { try EDKMRuntime(savedMode: spec.mode, threads: 1, communicator: c) } }
            var r = AblationResult(weights: shapes.reduce(0) { $0 + $1.count })
            var fingerprinted = false
            let step = measureStep(spec, data, rt, shapes: shapes, bits: bits, forwards: forwards, barrier: group.sync) { i, gradIn in
                if i == 0 && !fingerprinted {
                    fingerprinted = true
                    prints[rank] = fingerprint(gradIn, bytes: shapes[0].count * 2)
                    if keepGradient && rank == 0 { r.gradient = bf16Array(gradIn, count: shapes[0].count) }
                }
            }
            r.record(step)
            r.communicatorBytes = must { try rt.stats() }.communicator_bytes - step.before.communicator_bytes
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
        let y = HalfConversion.bf16ToFloat(b[i])
        scale = max(scale, abs(y))
        if a[i] != b[i] {
            worst = max(worst, abs(ordered(a[i]) - ordered(b[i])))
            diff = max(diff, abs(HalfConversion.bf16ToFloat(a[i]) - y))
            n += 1
        }
    }
    return (worst, Double(n) / Double(a.count), scale > 0 ? Double(diff / scale) : Double(diff))
}
