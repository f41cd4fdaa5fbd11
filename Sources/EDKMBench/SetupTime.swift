import CEDKM
import EDKMClient
import EDKMSwift

/// `edkm-bench speed --setup`: a layer's setup (edkm_layer_init_centroids on fresh layers: the
/// keys, the histograms and the exact 1-D k-means per partition) against one training step,
/// with the first implementation of the 1-D k-means (`Optimal1DSelection.reference`, "before")
/// and the current one ("after") alternated in one run, and their centroids compared bit for bit.
struct SetupTimeTable {
    private var table = Table(["shape", "dtype", "bits", "LUT", "thr", "step ms", "setup before ms", "setup after ms",
                               "before / step", "after / step", "speedup", "same"],
                              right: [false, false, true, false, true, true, true, true, true, true, true, false])
    private(set) var mismatches: [String] = []

    /// Times `runs` setups of each implementation (alternating, median wall time) for one case;
    /// `step` is the case's median forward + backward in seconds.
    mutating func add(_ runtime: EDKMRuntime, _ cfg: SpeedConfig, threads: String, weights: UnsafeRawPointer,
                      step: Double, runs: Int) {
        var before: [Double] = [], after: [Double] = []
        var centroidsBefore: [Float] = [], centroidsAfter: [Float] = []
        defer { Optimal1DSelection.reference = false }
        for _ in 0..<max(1, runs) {
            for reference in [true, false] {
                Optimal1DSelection.reference = reference
                let layer = EDKMLayer.bench(runtime, rows: cfg.rows, cols: cfg.cols, bits: cfg.bits, groupSize: cfg.groupSize,
                                            scaleFreeTau: cfg.scaleFreeTau)
                let t = timed { must { try layer.initCentroids(weights, cfg.dtype.c) } }
                let c = must { try layer.centroids() }
                if reference { before.append(t); centroidsBefore = c } else { after.append(t); centroidsAfter = c }
            }
        }
        let same = centroidsBefore.map(\.bitPattern) == centroidsAfter.map(\.bitPattern)
        if !same { mismatches.append("\(cfg.shapeText) \(cfg.dtype.name) \(cfg.bits) bits \(cfg.lutText) threads \(threads)") }
        let b = median(before), a = median(after)
        table.add([cfg.shapeText, cfg.dtype.name, String(cfg.bits), cfg.lutText, threads, fmt("%.1f", 1e3 * step),
                   fmt("%.1f", 1e3 * b), fmt("%.1f", 1e3 * a), fmt("%.2f", b / step), fmt("%.2f", a / step),
                   fmt("%.1fx", b / a), same ? "yes" : "NO"])
    }

    func render(markdown: Bool) -> String {
        """
        setup: edkm_layer_init_centroids on a fresh layer (keys, histograms, exact 1-D k-means per partition), median wall ms;
        before = the first implementation of the 1-D k-means, after = the current one, alternated in this run;
        x / step = setup time / the case's median training step (forward + backward); same = identical centroids
        \(table.render(markdown: markdown))
        """
    }
}
