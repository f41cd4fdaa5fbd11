import CEDKM
import EDKMClient
import EDKMNumerics
import EDKMSafetensors
import Foundation

/// What one training step keeps for its backward, in every saved-state mode of the eDKM ablation,
/// measured from the runtime statistics (DKM: heap_saved_peak; the others: the offload arena's
/// arena_peak, i.e. jemalloc's per-arena counters).
struct SavedStateMeasurement {
    let mode: edkm_saved_mode
    let bytes: UInt64
    let place: String
    let seconds: Double
}

let ablationModes = [EDKM_SAVED_DKM, EDKM_SAVED_MARSHAL, EDKM_SAVED_DEDUP, EDKM_SAVED_UNIQUIFY, EDKM_SAVED_HISTOGRAM]

/// One training step (SavedStateStep: every layer's forward saved, then its backward with a
/// gradient of ones) in a fresh runtime of each mode. weights[i]: the raw weights of layer i (dtype).
func measureSavedState(shapes: [[Int]], configs: [edkm_layer_config], centroids: [[Float]], weights: [[UInt8]],
                       dtype: edkm_dtype, threads: UInt32) throws -> [SavedStateMeasurement] {
    let ones = [Float](repeating: 1, count: shapes.map { $0.reduce(1, *) }.max() ?? 0)
    var result: [SavedStateMeasurement] = []
    for mode in ablationModes {
        let start = Date()
        let rt = try EDKMRuntime(savedMode: mode, threads: threads)
        let layers = try shapes.indices.map { i in
            let l = try EDKMLayer(runtime: rt, shape: shapes[i], config: configs[i])
            try l.setCentroids(centroids[i])
            return l
        }
        let step = try withRawPointers(weights) { w in
            try ones.withUnsafeBytes { g in
                try SavedStateStep.run(runtime: rt, layers: layers, weights: w, dtype: dtype,
                                       gradient: g.baseAddress!, gradientDtype: EDKM_DTYPE_F32)
            }
        }
        let st = step.afterForwards
        result.append(mode == EDKM_SAVED_DKM
                      ? SavedStateMeasurement(mode: mode, bytes: st.heap_saved_peak, place: "heap", seconds: Date().timeIntervalSince(start))
                      : SavedStateMeasurement(mode: mode, bytes: st.arena_peak, place: "arena", seconds: Date().timeIntervalSince(start)))
    }
    return result
}

/// body(pointers to the bytes of each array), the pointers valid only inside body.
func withRawPointers<R>(_ arrays: [[UInt8]], _ body: ([UnsafeRawPointer]) throws -> R) throws -> R {
    func nest(_ i: Int, _ acc: [UnsafeRawPointer]) throws -> R {
        if i == arrays.count { return try body(acc) }
        return try arrays[i].withUnsafeBytes { try nest(i + 1, acc + [$0.baseAddress!]) }
    }
    return try nest(0, [])
}

/// The same measurement on one LLM-sized projection: rows x cols f16 weights of std 0.02 (random,
/// seeded), library defaults (scale-free tau 0.1, 3 iterations) at `bits`.
func measureLLMLayer(rows: Int, cols: Int, bits: Int, seed: UInt64, threads: UInt32) throws -> (measurements: [SavedStateMeasurement], distinct: UInt64) {
    var rng = SplitMix64(seed: seed)
    let n = rows * cols
    var w = [UInt8](repeating: 0, count: 2 * n)
    for i in 0..<n {
        let h = FloatBits.floatToF16(Float(rng.normal() * 0.02))
        w[2 * i] = UInt8(h & 0xff)
        w[2 * i + 1] = UInt8(h >> 8)
    }
    var cfg = EDKMLayer.defaultConfig()
    cfg.bits = UInt32(bits)
    let rt = try EDKMRuntime(threads: threads)
    let probe = try EDKMLayer(runtime: rt, shape: [rows, cols], config: cfg)
    try w.withUnsafeBytes { try probe.initCentroids($0.baseAddress!, EDKM_DTYPE_F16) }
    let c = try probe.centroids()
    var out = [UInt8](repeating: 0, count: 2 * n)
    _ = try w.withUnsafeBytes { wb in
        try out.withUnsafeMutableBytes { try probe.forward(wb.baseAddress!, EDKM_DTYPE_F16, out: $0.baseAddress!, outDtype: EDKM_DTYPE_F16, save: false) }
    }
    let distinct = try probe.stats().distinct_values
    let m = try measureSavedState(shapes: [[rows, cols]], configs: [cfg], centroids: [c], weights: [w], dtype: EDKM_DTYPE_F16, threads: threads)
    return (m, distinct)
}
