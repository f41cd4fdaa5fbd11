import CEDKM
import EDKMClient
import Glibc

/// The LLaMA-7B decoder layer case of `edkm-bench speed`.
extension SpeedBench {
    /// The seven matrices of one LLaMA-7B decoder layer, bf16, 3 bits, per-tensor: forward of all
    /// seven (saved states held), then backward of all seven in reverse order, median of runs.
    static func llamaLayer(runtimes: [EDKMRuntime], threadNames: [String], runs: Int, divisor: Int, probe: BandwidthProbe,
                           probeRuns: Int, dense: Bool, denseElements: Int, denseRuns: Int, markdown: Bool) -> [String] {
        let shapes = llamaDecoderLayer(divisor: divisor)
        let dtype = WeightDType.bf16, bits = 3
        let totalN = shapes.reduce(0) { $0 + $1.count }
        fputs("  LLaMA-7B decoder layer\(divisor > 1 ? " / \(divisor)" : ""): generating \(totalN) bf16 weights\n", stderr)
        let weights = shapes.enumerated().map { i, s in Buffer(llmWeights(count: s.count, dtype: dtype, seed: 7000 + UInt64(i))) }
        let maxN = shapes.map(\.count).max()!
        let grad = Buffer(upstreamGradient(count: maxN, dtype: dtype, seed: 99))
        let outs = shapes.map { Buffer(bytes: $0.count * 2) }
        let gradIn = Buffer(bytes: maxN * 2)
        var lines: [String] = []
        var table = Table(["threads", "fwd ms", "bwd ms", "fwd+bwd ms", "min f+b ms", "probe ms", "x probe", "dense est s", "x dense"])
        var perShape = Table(["matrix", "shape", "U", "T", "fwd ms", "bwd ms"], right: [false, false, true, true, true, true])
        for (ti, rt) in runtimes.enumerated() {
            fputs("  LLaMA-7B decoder layer, threads \(threadNames[ti])\n", stderr)
            let layers = shapes.map { EDKMLayer.bench(rt, rows: $0.rows, cols: $0.cols, bits: bits) }
            for (l, w) in zip(layers, weights) { must { try l.initCentroids(w.pointer, dtype.c) } }
            let initial = layers.map { l in must { try l.centroids() } }
            var fwd: [Double] = [], bwd: [Double] = []
            var fwdEach = [[Double]](repeating: [], count: layers.count), bwdEach = fwdEach
            for run in -1..<runs {
                for (l, c) in zip(layers, initial) { must { try l.setCentroids(c) } }
                var saved: [EDKMSavedState] = []
                let t0 = now()
                for i in layers.indices {
                    let a = now()
                    saved.append(must { try layers[i].forward(weights[i].pointer, dtype.c, out: outs[i].pointer, outDtype: dtype.c, save: true) }!)
                    if run >= 0 { fwdEach[i].append(now() - a) }
                }
                let t1 = now()
                for i in layers.indices.reversed() {
                    let a = now()
                    must { try saved[i].backward(gradOutput: grad.pointer, gradInput: gradIn.pointer, dtype: dtype.c, weights: weights[i].pointer) }
                    if run >= 0 { bwdEach[i].append(now() - a) }
                }
                let t2 = now()
                saved.removeAll()
                if run >= 0 { fwd.append(t1 - t0); bwd.append(t2 - t1) }
            }
            let nThreads = Int(must { try rt.stats() }.num_threads)
            let p = probe.seconds(movedBytes: 4 * totalN, threads: nThreads, runs: probeRuns)
                + probe.seconds(movedBytes: 6 * totalN, threads: nThreads, runs: probeRuns)
            var denseEst: Double? = nil
            if dense {
                let q = shapes[0]
                let cfg = SpeedConfig(rows: q.rows, cols: q.cols, dtype: dtype, bits: bits, groupSize: 0)
                let b = StepBuffers(weights: weights[0].pointer, gradOut: grad.pointer, out: outs[0].pointer, gradIn: gradIn.pointer)
                let d = densePerWeight(rt, cfg, b, elements: denseElements, runs: denseRuns)
                denseEst = (d.forward + d.backward) * Double(totalN)
            }
            let totals = zip(fwd, bwd).map { $0 + $1 }
            let m = median(totals)
            table.add([threadNames[ti], msText(median(fwd)), msText(median(bwd)), msText(m), msText(totals.min()!),
                       msText(p), ratioText(m / p), denseEst.map { fmt("%.1f", $0) } ?? "-", denseEst.map { ratioText($0 / m) } ?? "-"])
            if ti == runtimes.count - 1 {
                for (i, s) in shapes.enumerated() {
                    let st = must { try layers[i].stats() }
                    perShape.add([s.name, "\(s.rows)x\(s.cols)", String(st.distinct_values), String(st.iterations),
                                  msText(median(fwdEach[i])), msText(median(bwdEach[i]))])
                }
            }
            lines.append("LLAMA-7B decoder layer\(divisor > 1 ? " (extents / \(divisor))" : "") bf16 3 bits per-tensor, 7 matrices, \(totalN) weights, "
                         + "threads \(threadNames[ti]): fwd+bwd \(fmt("%.3f", m)) s (fwd \(fmt("%.3f", median(fwd))) + bwd \(fmt("%.3f", median(bwd))) s; "
                         + "target < 2 s), \(ratioText(m / p)) the bandwidth probe"
                         + (denseEst.map { ", \(ratioText($0 / m)) faster than dense (est. \(fmt("%.3g", $0)) s)" } ?? ""))
        }
        print("\nLLaMA-7B decoder layer\(divisor > 1 ? " (extents / \(divisor))" : ""): q,k,v,o \(shapes[0].rows)x\(shapes[0].cols), "
              + "gate,up \(shapes[4].rows)x\(shapes[4].cols), down \(shapes[6].rows)x\(shapes[6].cols); bf16, 3 bits, per-tensor; "
              + "forward of all seven (saved states held), then backward in reverse; median of \(runs)")
        print(table.render(markdown: markdown))
        print("per matrix (last thread count):")
        print(perShape.render(markdown: markdown))
        return lines
    }
}
