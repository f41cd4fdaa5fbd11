import CEDKM
import EDKMClient
import EDKMSwift

/// One timed forward + backward configuration of the speed benchmark.
struct SpeedConfig {
    var rows: Int
    var cols: Int
    var dtype: WeightDType
    var bits: Int
    /// 0 = per-tensor LUT, g = a LUT per g rows.
    var groupSize: Int
    /// nil: coremltools' absolute tau 1e-4; a factor: the library's scale-free mode.
    var scaleFreeTau: Double? = nil
    var count: Int { rows * cols }
    var shapeText: String { "\(rows)x\(cols)" }
    var lutText: String { groupSize == 0 ? "tensor" : "g\(groupSize)" }
}

/// Per-run times of one layer (forward and backward measured separately, every run starting from
/// the same centroids so that every run does the same work).
struct Timing {
    var forward: [Double] = []
    var backward: [Double] = []
    /// The calling thread's CPU seconds per run, forward + backward (the whole step's work with a
    /// one-thread runtime, whose items all run on the caller; far less affected by other jobs).
    var cpu: [Double] = []
    var iterations = 0
    var distinct = 0
    /// Fingerprints of w~ and dL/dw of the last run (to compare thread counts).
    var outputPrint: UInt64 = 0
    var gradPrint: UInt64 = 0

    var forwardMedian: Double { median(forward) }
    var backwardMedian: Double { median(backward) }
    var totalMedian: Double { median(zip(forward, backward).map { $0 + $1 }) }
}

/// The data of one layer's step: weights, upstream gradient, and where w~ and dL/dw go.
struct StepBuffers {
    var weights: UnsafeRawPointer
    var gradOut: UnsafeRawPointer
    var out: UnsafeMutableRawPointer
    var gradIn: UnsafeMutableRawPointer
}

/// Times `runs` training steps (forward with a saved state, then backward with the weights handed
/// back, as the default HISTOGRAM mode needs) after one untimed warm-up step. The saved state is
/// destroyed outside the timed regions.
func timeSteps(_ layer: EDKMLayer, _ b: StepBuffers, dtype: edkm_dtype, initial: [Float], runs: Int) -> Timing {
    var t = Timing()
    for run in -1..<runs {
        must { try layer.setCentroids(initial) }
        let t0 = now(), c0 = threadCPUSeconds()
        var saved = must { try layer.forward(b.weights, dtype, out: b.out, outDtype: dtype, save: true) }
        let t1 = now()
        must { try saved!.backward(gradOutput: b.gradOut, gradInput: b.gradIn, dtype: dtype, weights: b.weights) }
        let t2 = now(), c2 = threadCPUSeconds()
        saved = nil
        if run >= 0 {
            t.forward.append(t1 - t0)
            t.backward.append(t2 - t1)
            t.cpu.append(c2 - c0)
        }
    }
    let s = must { try layer.stats() }
    t.iterations = Int(s.iterations)
    t.distinct = Int(s.distinct_values)
    t.outputPrint = fingerprint(UnsafeRawPointer(b.out), bytes: layer.count * 2)
    t.gradPrint = fingerprint(UnsafeRawPointer(b.gradIn), bytes: layer.count * 2)
    return t
}

/// The dense path's cost per weight (forward, backward), measured on the first rows of the same
/// weights (a slice of about `elements` weights whose row count is a multiple of the group size),
/// with the same dtype, bits, LUT granularity and thread count. `cpu`: the calling thread's CPU
/// seconds per weight of a step (fwd + bwd). `windowed: false`: the engine's full d = 1 passes on
/// all k centroids per weight (the dense DKM formulation before the windows) instead of the windows.
func densePerWeight(_ runtime: EDKMRuntime, _ cfg: SpeedConfig, _ b: StepBuffers, elements: Int, runs: Int,
                    windowed: Bool = true)
    -> (forward: Double, backward: Double, cpu: Double, iterations: Int, rows: Int)
{
    WindowKernelSelection.windowed = windowed
    defer { WindowKernelSelection.windowed = true }
    let unit = max(cfg.groupSize, 1)
    var rows = max(unit, (elements / cfg.cols) / unit * unit)
    rows = min(rows, cfg.rows)
    let layer = EDKMLayer.bench(runtime, rows: rows, cols: cfg.cols, bits: cfg.bits, groupSize: cfg.groupSize,
                      algorithm: EDKM_ALGORITHM_DENSE, scaleFreeTau: cfg.scaleFreeTau)
    must { try layer.initCentroids(b.weights, cfg.dtype.c) }
    let t = timeSteps(layer, b, dtype: cfg.dtype.c, initial: must { try layer.centroids() }, runs: runs)
    let n = Double(layer.count)
    return (t.forwardMedian / n, t.backwardMedian / n, median(t.cpu) / n, t.iterations, rows)
}
