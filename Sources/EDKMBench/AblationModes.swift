import CEDKM

/// The rows of the eDKM ablation (docs/design.md, part 2 (the saved state)), in the paper's order, plus ours.
struct AblationMode {
    var name: String
    var mode: edkm_saved_mode
    var keepWeights = false
    /// What a forward keeps (for the table).
    var what: String

    /// Keeps N x k maps: cannot run at full size, measured on slices and extrapolated.
    var dense: Bool { mode == EDKM_SAVED_DKM || mode == EDKM_SAVED_MARSHAL || mode == EDKM_SAVED_DEDUP }
    var sharded: Bool { mode == EDKM_SAVED_SHARD }

    static let all: [AblationMode] = [
        AblationMode(name: "dkm", mode: EDKM_SAVED_DKM,
                     what: "per iteration: N x k distance + softmax maps (f32) and a copy of the weights; ordinary heap"),
        AblationMode(name: "marshal", mode: EDKM_SAVED_MARSHAL, what: "the same, in the offload arena"),
        AblationMode(name: "dedup", mode: EDKM_SAVED_DEDUP, what: "the same; identical tensors (the weight copies) stored once"),
        AblationMode(name: "uniquify", mode: EDKM_SAVED_UNIQUIFY, what: "U x k tables per iteration + N-entry 16-bit index list"),
        AblationMode(name: "shard", mode: EDKM_SAVED_SHARD, what: "U x k tables + this rank's 1/L of the index list (L = world size)"),
        AblationMode(name: "histogram", mode: EDKM_SAVED_HISTOGRAM,
                     what: "ours: k-vectors per iteration + U-sized value table; weights handed back to backward"),
        AblationMode(name: "histogram+keep", mode: EDKM_SAVED_HISTOGRAM, keepWeights: true,
                     what: "ours, keep_weights = 1: + the weights' 16-bit keys (2 B/weight)"),
    ]
}

/// What one measurement of a mode on a set of matrices gives.
struct AblationResult {
    /// Weights in the measured matrices.
    var weights: Int
    /// Peak saved bytes during the forwards: (arena_peak - arena before) + (heap_saved_peak - heap before).
    var peak: UInt64 = 0
    /// Saved bytes held after the forwards (arena_allocated + heap_saved, minus before).
    var held: UInt64 = 0
    /// Sum of edkm_saved_state_bytes over the saved states (a shared tensor counts in each).
    var stateBytes: UInt64 = 0
    var forward = 0.0
    var backward = 0.0
    var dedupHits: UInt64 = 0
    var dedupMisses: UInt64 = 0
    var communicatorBytes: UInt64 = 0
    var iterations: [Int] = []
    var distinct: [Int] = []
    /// q_proj's dL/dw as bf16 bit patterns (first forward only), to compare modes.
    var gradient: [UInt16] = []
    var total: Double { forward + backward }
}

/// Least squares y = a + b x, with the largest relative residual.
struct LinearFit {
    var a: Double
    var b: Double
    var maxRelativeResidual: Double

    init(_ xs: [Double], _ ys: [Double]) {
        let n = Double(xs.count)
        let mx = xs.reduce(0, +) / n, my = ys.reduce(0, +) / n
        var sxy = 0.0, sxx = 0.0
        for (x, y) in zip(xs, ys) { sxy += (x - mx) * (y - my); sxx += (x - mx) * (x - mx) }
        b = sxx > 0 ? sxy / sxx : 0
        a = my - b * mx
        var worst = 0.0
        for (x, y) in zip(xs, ys) where y != 0 { worst = max(worst, abs(y - (a + b * x)) / abs(y)) }
        maxRelativeResidual = worst
    }

    func callAsFunction(_ x: Double) -> Double { a + b * x }
}
