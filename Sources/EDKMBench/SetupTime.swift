import CEDKM
import EDKMClient
import EDKMSwift

/// `edkm-bench speed --setup`: a layer's setup (edkm_layer_init_centroids on fresh layers: the
/// keys, the histograms and the exact 1-D k-means per partition) against one training step,
/// with the first implementation of the 1-D k-means (`Optimal1DSelection.reference`, "before")
/// and the current one ("after") alternated in one run, and their centroids compared bit for bit.
struct SetupTimeTable {
    private var table = Table(["shape", "dtype", "bits", "LUT", "thr", "step ms", "before ms", "after ms",
                               "before / step", "after / step", "speedup", "step CPU", "before CPU", "after CPU",
                               "CPU before / step", "CPU after / step", "same"],
                              right: [false, false, true, false, true, true, true, true, true, true, true, true, true, true,
                                      true, true, false])
    private(set) var mismatches: [String] = []

    /// Times `runs` setups of each implementation (alternating; median wall time and calling
    /// thread's CPU time) for one case; `step` is the case's timing (forward + backward).
    mutating func add(_ runtime: EDKMRuntime, _ cfg: SpeedConfig, threads: String, weights: UnsafeRawPointer,
                      step: Timing, runs: Int) {
        var before: [Double] = [], after: [Double] = [], cpuBefore: [Double] = [], cpuAfter: [Double] = []
        var centroidsBefore: [Float] = [], centroidsAfter: [Float] = []
        defer { Optimal1DSelection.reference = false }
        for _ in 0..<max(1, runs) {
            for reference in [true, false] {
                Optimal1DSelection.reference = reference
                let layer = EDKMLayer.bench(runtime, rows: cfg.rows, cols: cfg.cols, bits: cfg.bits, groupSize: cfg.groupSize,
                                            scaleFreeTau: cfg.scaleFreeTau)
                let c0 = threadCPUSeconds()
                let t = timed { must { try layer.initCentroids(weights, cfg.dtype.c) } }
                let cpu = threadCPUSeconds() - c0
                let c = must { try layer.centroids() }
                if reference {
                    before.append(t); cpuBefore.append(cpu); centroidsBefore = c
                } else {
                    after.append(t); cpuAfter.append(cpu); centroidsAfter = c
                }
            }
        }
        let same = centroidsBefore.map(\.bitPattern) == centroidsAfter.map(\.bitPattern)
        if !same { mismatches.append("\(cfg.shapeText) \(cfg.dtype.name) \(cfg.bits) bits \(cfg.lutText) threads \(threads)") }
        let b = median(before), a = median(after), s = step.totalMedian
        let cb = median(cpuBefore), ca = median(cpuAfter), cs = median(step.cpu)
        table.add([cfg.shapeText, cfg.dtype.name, String(cfg.bits), cfg.lutText, threads, fmt("%.1f", 1e3 * s),
                   fmt("%.1f", 1e3 * b), fmt("%.1f", 1e3 * a), fmt("%.2f", b / s), fmt("%.2f", a / s), fmt("%.1fx", b / a),
                   fmt("%.1f", 1e3 * cs), fmt("%.1f", 1e3 * cb), fmt("%.1f", 1e3 * ca), fmt("%.2f", cb / cs), fmt("%.2f", ca / cs),
                   same ? "yes" : "NO"])
    }

    func render(markdown: Bool) -> String {
        """
        setup: edkm_layer_init_centroids on a fresh layer (keys, histograms, exact 1-D k-means per partition), median wall ms;
        before = this build with the first implementation of the 1-D k-means, after = the current one, alternated in this run;
        x / step = setup time / the case's median training step (forward + backward); CPU = the calling thread's CPU ms
        (the whole work at 1 thread, little affected by other jobs); same = identical centroids
        \(table.render(markdown: markdown))
        """
    }
}
