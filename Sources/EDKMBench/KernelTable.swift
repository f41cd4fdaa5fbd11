import CEDKM
import EDKMClient
import EDKMSwift
import Glibc

/// `edkm-bench speed --scalar-kernels --full-dense`: the AVX2 build of the windowed d = 1 passes
/// against the Swift (SSE2) build in the same process, and the step against the dense path with
/// the windows (what `x dense` compares with) and with the full passes on all k centroids per
/// weight (the dense DKM formulation). With a one-thread runtime every figure is the stepping
/// thread's CPU time (all items run on it; other jobs on the machine hardly change it); with more
/// threads, wall time.
struct KernelTable {
    private var table = Table(["shape", "dtype", "bits", "LUT", "thr", "clock", "U", "step ms", "Swift passes ms", "x AVX2",
                               "identical", "dense est ms", "x dense", "full dense est ms", "x full dense"],
                              right: [false, false, true, false, true, false, true, true, true, true, false, true, true, true, true])
    /// The cases whose results differed between the two builds of the passes (the run then fails).
    private(set) var mismatches: [String] = []

    /// The case's steps with the Swift build of the windowed passes forced (restored after).
    static func scalarSteps(_ layer: EDKMLayer, _ b: StepBuffers, dtype: edkm_dtype, initial: [Float], runs: Int) -> Timing? {
        guard WindowKernelSelection.avx2Active else {
            fputs("    the AVX2 build of the window passes is not active on this CPU: no comparison\n", stderr)
            return nil
        }
        WindowKernelSelection.forceScalar = true
        defer { WindowKernelSelection.forceScalar = false }
        let t = timeSteps(layer, b, dtype: dtype, initial: initial, runs: runs)
        fputs("    fingerprints (Swift window passes): w~ \(String(t.outputPrint, radix: 16)) dL/dw \(String(t.gradPrint, radix: 16))\n", stderr)
        return t
    }

    mutating func add(_ cfg: SpeedConfig, threads: Int, _ t: Timing, swift: Timing?,
                      dense: (forward: Double, backward: Double, cpu: Double, iterations: Int, rows: Int)?,
                      fullDense: (forward: Double, backward: Double, cpu: Double, iterations: Int, rows: Int)?) {
        let cpu = threads == 1
        func step(_ x: Timing) -> Double { cpu ? median(x.cpu) : x.totalMedian }
        func perWeight(_ d: (forward: Double, backward: Double, cpu: Double, iterations: Int, rows: Int)) -> Double {
            (cpu ? d.cpu : d.forward + d.backward) * Double(cfg.count)
        }
        let m = step(t)
        var cells = [cfg.shapeText, cfg.dtype.name, String(cfg.bits), cfg.lutText, String(threads), cpu ? "CPU" : "wall",
                     String(t.distinct), msText(m)]
        if let swift {
            let same = swift.outputPrint == t.outputPrint && swift.gradPrint == t.gradPrint
            cells += [msText(step(swift)), ratioText(step(swift) / m), same ? "yes" : "NO"]
            if !same { mismatches.append("\(cfg.shapeText) \(cfg.dtype.name) \(cfg.bits) bits \(cfg.lutText) threads \(threads)") }
        } else {
            cells += ["-", "-", "-"]
        }
        for d in [dense, fullDense] {
            if let d { cells += [msText(perWeight(d)), ratioText(perWeight(d) / m)] } else { cells += ["-", "-"] }
        }
        table.add(cells)
    }

    func render(markdown: Bool) -> String {
        """
        window kernels: one step (fwd+bwd), median; clock CPU = the stepping thread's CPU time (1 thread), wall otherwise
        \(table.render(markdown: markdown))
        step = the default path (the AVX2 build of the windowed passes where the CPU has AVX2); Swift passes = the same
        steps with the Swift (SSE2) build forced; x AVX2 = Swift passes / step; identical = w~ and dL/dw bit-identical.
        dense est = EDKM_ALGORITHM_DENSE (the windowed passes on every weight) on a slice, per weight x the case's weights;
        full dense est = the same with the full passes on all k centroids per weight (the dense DKM formulation).
        """
    }
}
