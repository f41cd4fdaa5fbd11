import CEDKM
import EDKMClient
import EDKMSwift
import Glibc

/// `edkm-bench speed`: the uniquified path against the dense path and a bandwidth probe.
enum SpeedBench {
    static let usage = """
    usage: edkm-bench speed [options]
      --shapes LIST        ROWSxCOLS list (default 4096x4096,11008x4096)
      --dtypes LIST        f16,bf16 (default both)
      --bits LIST          (default 3,4)
      --luts LIST          tensor,g16 (per-tensor and grouped, g<N> = group size N; default both)
      --threads LIST       runtime num_threads: numbers or 'all' (= 0, the cores available; default 1,all)
      --runs N             timed steps per case, median reported (default 5)
      --dense-runs N       timed steps of the dense reference (default 3)
      --dense-elements N   weights in the dense reference slice (default 262144 = 64 rows of 4096)
      --probe-runs N       bandwidth probe copies (default 7)
      --no-dense           skip the dense reference
      --full-dense         also time the dense path with the full d = 1 passes on all k centroids per weight
                           (the dense DKM formulation without the windows): table "window kernels"
      --scalar-kernels     also time every case with the Swift (SSE2) build of the windowed passes forced
                           instead of the AVX2 one, and check the results are bit-identical: table "window kernels"
      --no-cases           only the LLaMA-7B decoder layer
      --no-llama           skip the LLaMA-7B decoder layer
      --llama-divisor N    scale the LLaMA layer's extents down by N (smoke runs; default 1)
      --scale-free TAU     the library's default scale-free temperature (tau = TAU x the k-means
                           distortion; the default is 0.1) instead of coremltools' absolute tau 1e-4
                           (the cases table; the LLaMA layer keeps the absolute tau)
      --phases             per-phase timing of every case: one step with the library's parallel-region
                           record (1-thread CPU time per phase, predicted 2- and 64-thread times,
                           measured wall time at the other thread count); needs a thread count of 1
      --setup              time every case's layer setup (init_centroids: keys, histograms, exact 1-D k-means)
                           before/after the current 1-D k-means, as a ratio to one step: table "setup"
      --setup-runs N       setups of each implementation per case (default 3)
      --markdown           print the tables as GitHub markdown
      --quick              CI smoke: 512x512,1024x512, 1 run, small dense slice, LLaMA layer / 16
    """

    static func run(_ args: ArraySlice<String>) {
        let o = Options(args, valued: ["--shapes", "--dtypes", "--bits", "--luts", "--threads", "--runs",
                                       "--dense-runs", "--dense-elements", "--probe-runs", "--llama-divisor", "--scale-free",
                                       "--setup-runs"],
                        switches: ["--no-dense", "--no-cases", "--no-llama", "--markdown", "--quick", "--help", "--phases",
                                   "--full-dense", "--scalar-kernels", "--setup"])
        if o.has("--help") { print(usage); return }
        if !o.unknown.isEmpty { fail("speed: unknown arguments \(o.unknown)\n\(usage)") }
        let quick = o.has("--quick")
        let shapes = o.list("--shapes", quick ? ["512x512", "1024x512"] : ["4096x4096", "11008x4096"]).map(parseShape)
        let dtypes = o.list("--dtypes", ["f16", "bf16"]).map { s -> WeightDType in
            guard let d = WeightDType.parse(s) else { fail("bad dtype \(s)") }
            return d
        }
        let bitsList = o.ints("--bits", [3, 4])
        let luts = o.list("--luts", ["tensor", "g16"]).map { s -> Int in
            if s == "tensor" { return 0 }
            guard s.hasPrefix("g"), let g = Int(s.dropFirst()), g > 0 else { fail("bad LUT granularity \(s)") }
            return g
        }
        let threads = o.list("--threads", ["1", "all"]).map { s -> UInt32 in
            if s == "all" { return 0 }
            guard let t = UInt32(s) else { fail("bad thread count \(s)") }
            return t
        }
        let runs = max(1, o.int("--runs", quick ? 1 : 5))
        let denseRuns = max(1, o.int("--dense-runs", quick ? 1 : 3))
        let denseElements = o.int("--dense-elements", quick ? 16384 : 262_144)
        let probeRuns = o.int("--probe-runs", quick ? 3 : 7)
        let dense = !o.has("--no-dense")
        let fullDense = o.has("--full-dense"), scalarKernels = o.has("--scalar-kernels")
        let markdown = o.has("--markdown")
        let divisor = max(1, o.int("--llama-divisor", quick ? 16 : 1))
        let scaleFreeTau: Double? = o.string("--scale-free").map { s in
            guard let t = Double(s), t > 0 else { fail("bad --scale-free \(s)") }
            return t
        }

        let runtimes = threads.map { n in must { try EDKMRuntime(threads: n) } }
        let threadNames = runtimes.map { rt in String(must { try rt.stats() }.num_threads) }
        let maxCount = max(shapes.map { $0.rows * $0.cols }.max() ?? 0,
                           o.has("--no-llama") ? 0 : llamaDecoderLayer(divisor: divisor).reduce(0) { $0 + $1.count })
        let probe = BandwidthProbe(maxCopyBytes: 3 * maxCount)

        print("edkm-bench speed: libedkm \(String(cString: edkm_version_string())), runtime threads \(threadNames.joined(separator: ", ")); "
              + "\(runs) timed steps per case (median), dense reference \(dense ? "\(denseRuns) steps on a ~\(denseElements)-weight slice" : "off"), "
              + "bandwidth probe median of \(max(probeRuns, 3)) memcpys")
        let temperature = scaleFreeTau.map { "the library's scale-free tau \($0) x the k-means distortion" }
            ?? "coremltools' layer defaults (absolute tau 1e-4"
        print("weights ~ N(0, 0.02^2) + 0.01% outliers; upstream gradient ~ N(0, 0.001^2); \(temperature), 3 iterations max, "
              + "epsilon 1e-4); saved mode HISTOGRAM; every step starts from the same centroids")
        print("probe: memcpy moving the bytes the step must move: forward 4 B/weight (read w, write w~), "
              + "backward 6 B/weight (read w and dL/dw~, write dL/dw)\n")

        var summary: [String] = []
        var phaseReports: [String] = []
        var kernelTable = KernelTable()
        var setupTable = o.has("--setup") ? SetupTimeTable() : nil
        if !o.has("--no-cases") {
            var table = Table(["shape", "dtype", "bits", "LUT", "dir", "thr", "median ms", "min ms", "GB/s",
                               "probe ms", "x probe", "dense est ms", "x dense", "T", "U", "same", "serial f"],
                              right: [false, false, true, false, false, true, true, true, true, true, true, true, true, true, true, false, true])
            let total = shapes.count * dtypes.count * bitsList.count * luts.count * runtimes.count
            var done = 0
            for shape in shapes {
                for dtype in dtypes {
                    let n = shape.rows * shape.cols
                    let w = Buffer(llmWeights(count: n, dtype: dtype, seed: UInt64(n) &* 31 &+ (dtype == .f16 ? 1 : 2)))
                    let g = Buffer(upstreamGradient(count: n, dtype: dtype, seed: UInt64(n)))
                    let out = Buffer(bytes: n * 2), gradIn = Buffer(bytes: n * 2)
                    let buffers = StepBuffers(weights: w.pointer, gradOut: g.pointer, out: out.pointer, gradIn: gradIn.pointer)
                    for bits in bitsList {
                        for group in luts {
                            let cfg = SpeedConfig(rows: shape.rows, cols: shape.cols, dtype: dtype, bits: bits, groupSize: group,
                                                  scaleFreeTau: scaleFreeTau)
                            var initial: [Float] = []
                            var reference: Timing? = nil
                            var referenceThreads = 0
                            var profileOne: [ParallelProfile.Region]? = nil, profileMany: [ParallelProfile.Region]? = nil
                            var threadsMany = 0
                            defer {
                                if let profileOne {
                                    phaseReports.append(PhaseProfile.report("\(cfg.shapeText) \(dtype.name) \(bits) bits \(cfg.lutText)",
                                                                            one: profileOne, many: profileMany, threadsN: threadsMany,
                                                                            probeCPU: probe.cpuSeconds(movedBytes: 4 * n, runs: probeRuns)
                                                                                + probe.cpuSeconds(movedBytes: 6 * n, runs: probeRuns),
                                                                            markdown: markdown))
                                }
                            }
                            for (ti, rt) in runtimes.enumerated() {
                                done += 1
                                fputs("  [\(done)/\(total)] \(cfg.shapeText) \(dtype.name) \(bits) bits \(cfg.lutText) threads \(threadNames[ti])\n", stderr)
                                let layer = EDKMLayer.bench(rt, rows: cfg.rows, cols: cfg.cols, bits: bits, groupSize: group,
                                                  scaleFreeTau: scaleFreeTau)
                                if initial.isEmpty {
                                    must { try layer.initCentroids(w.pointer, dtype.c) }
                                    initial = must { try layer.centroids() }
                                }
                                let t = timeSteps(layer, buffers, dtype: dtype.c, initial: initial, runs: runs)
                                // The results' fingerprints, to compare two builds of the library.
                                fputs("    fingerprints: w~ \(String(t.outputPrint, radix: 16)) dL/dw \(String(t.gradPrint, radix: 16))\n", stderr)
                                let same: String
                                if let r = reference {
                                    same = (r.outputPrint == t.outputPrint && r.gradPrint == t.gradPrint) ? "yes" : "NO"
                                } else {
                                    reference = t
                                    same = "ref"
                                }
                                let nThreads = Int(must { try rt.stats() }.num_threads)
                                setupTable?.add(rt, cfg, threads: threadNames[ti], weights: w.pointer, step: t,
                                                runs: o.int("--setup-runs", 3))
                                if o.has("--phases") {
                                    let record = PhaseProfile.record(layer, buffers, dtype: dtype.c, initial: initial)
                                    if nThreads == 1 { profileOne = record } else { profileMany = record; threadsMany = nThreads }
                                }
                                if referenceThreads == 0 { referenceThreads = nThreads }
                                // Amdahl's law fitted to the one-thread and N-thread steps.
                                let serial = referenceThreads == 1 && nThreads > 1 && reference != nil && same != "ref"
                                    ? amdahlSerialFraction(reference!.totalMedian, t.totalMedian, threads: nThreads) : nil
                                let d = dense ? densePerWeight(rt, cfg, buffers, elements: denseElements, runs: denseRuns) : nil
                                if scalarKernels || fullDense {
                                    let swift = scalarKernels ? KernelTable.scalarSteps(layer, buffers, dtype: dtype.c, initial: initial, runs: runs) : nil
                                    let full = fullDense ? densePerWeight(rt, cfg, buffers, elements: denseElements, runs: denseRuns,
                                                                          windowed: false) : nil
                                    kernelTable.add(cfg, threads: nThreads, t, swift: swift, dense: d, fullDense: full)
                                }
                                let pf = probe.seconds(movedBytes: 4 * n, threads: nThreads, runs: probeRuns)
                                let pb = probe.seconds(movedBytes: 6 * n, threads: nThreads, runs: probeRuns)
                                let rowsOut: [(String, [Double], Double, Double?, Int)] = [
                                    ("fwd", t.forward, pf, d.map { $0.forward * Double(n) }, 4 * n),
                                    ("bwd", t.backward, pb, d.map { $0.backward * Double(n) }, 6 * n),
                                    ("f+b", zip(t.forward, t.backward).map { $0 + $1 }, pf + pb,
                                     d.map { ($0.forward + $0.backward) * Double(n) }, 10 * n),
                                ]
                                for (dir, times, p, de, moved) in rowsOut {
                                    var iters = "", distinct = "", sameText = ""
                                    if dir == "fwd" {
                                        iters = String(t.iterations)
                                        if let d, d.iterations != t.iterations { iters += "/\(d.iterations)d" }
                                        distinct = String(t.distinct)
                                        sameText = same
                                    }
                                    let serialText = dir == "f+b" ? serial.map { fmt("%.3f", $0) } ?? "-" : ""
                                    table.add(caseRow(cfg, dir: dir, threads: threadNames[ti], times: times, probe: p, dense: de,
                                                      moved: moved) + [iters, distinct, sameText, serialText])
                                }
                                if cfg.rows == 4096 && cfg.cols == 4096 && dtype == .f16 && bits == 4 && group == 0 {
                                    summary.append(targetLine(t, threads: threadNames[ti], probe: pf + pb,
                                                              dense: d.map { ($0.forward + $0.backward) * Double(n) }))
                                    if let serial {
                                        summary.append("AMDAHL 4096x4096 f16 4 bits per-tensor fwd+bwd: serial fraction \(fmt("%.3f", serial)) "
                                                       + "(1 vs \(nThreads) threads) -> speedup at 64 cores \(fmt("%.1f", amdahlSpeedup(serial, threads: 64)))x")
                                    }
                                }
                            }
                        }
                    }
                }
            }
            print(table.render(markdown: markdown))
            if scalarKernels || fullDense { print("\n" + kernelTable.render(markdown: markdown)) }
            if !kernelTable.mismatches.isEmpty {
                fail("the AVX2 and the Swift builds of the window passes gave different results: \(kernelTable.mismatches)")
            }
            for r in phaseReports { print("\n" + r) }
            if let setupTable {
                print("\n" + setupTable.render(markdown: markdown))
                if !setupTable.mismatches.isEmpty { fail("the two 1-D k-means gave different centroids: \(setupTable.mismatches)") }
            }
            print("""

            GB/s = bytes the step must move (4, 6 or 10 B/weight) / median time. x probe = median / probe (1.00x = memory-bandwidth speed).
            dense est = the dense path (EDKM_ALGORITHM_DENSE, same dtype/bits/LUT/threads) timed on a slice of the same weights,
            per weight, times the weights of the case; x dense = how many times faster the default (uniquified) path is.
            T = DKM iterations run (/Nd: the dense slice ran N); U = distinct 16-bit values (summed over groups);
            same = w~ and dL/dw bit-identical to the first thread count's (ref).
            serial f = Amdahl's serial fraction from the 1-thread and N-thread f+b medians: f = (N t_N / t_1 - 1) / (N - 1)
            (on a machine shared with other jobs the N-thread time is inflated, so f is an upper bound).
            """)
        }
        if !o.has("--no-llama") {
            summary += llamaLayer(runtimes: runtimes, threadNames: threadNames, runs: runs, divisor: divisor,
                                  probe: probe, probeRuns: probeRuns, dense: dense, denseElements: denseElements,
                                  denseRuns: denseRuns, markdown: markdown)
        }
        print("")
        for s in summary { print(s) }
    }

    /// The table cells of one direction of one case (without T, U, same).
    static func caseRow(_ cfg: SpeedConfig, dir: String, threads: String, times: [Double], probe: Double,
                        dense: Double?, moved: Int) -> [String] {
        let m = median(times)
        let gbs = fmt("%.1f", Double(moved) / m / 1e9)
        var cells = [cfg.shapeText, cfg.dtype.name, String(cfg.bits), cfg.lutText, dir, threads]
        cells += [msText(m), msText(times.min()!), gbs, msText(probe), ratioText(m / probe)]
        if let dense {
            cells += [msText(dense), ratioText(dense / m)]
        } else {
            cells += ["-", "-"]
        }
        return cells
    }

    /// The summary line of the headline case (4096x4096 f16, 4 bits, per-tensor) against its targets.
    static func targetLine(_ t: Timing, threads: String, probe: Double, dense: Double?) -> String {
        let m = t.totalMedian
        var line = "TARGET 4096x4096 f16 4 bits per-tensor fwd+bwd, threads \(threads): \(msText(m)) ms"
        line += " (fwd \(msText(t.forwardMedian)) + bwd \(msText(t.backwardMedian))) = \(ratioText(m / probe)) the bandwidth probe"
        line += " (\(msText(probe)) ms; target <= 3x), "
        if let dense {
            line += "\(ratioText(dense / m)) faster than dense (est. \(msText(dense)) ms; target >= 100x)"
        } else {
            line += "dense not measured"
        }
        return line
    }

    /// Amdahl's law t_N = t_1 (f + (1 - f) / N) solved for the serial fraction f.
    static func amdahlSerialFraction(_ t1: Double, _ tN: Double, threads: Int) -> Double {
        let n = Double(threads)
        return (n * tN / t1 - 1) / (n - 1)
    }

    /// The speedup over one thread that Amdahl's law predicts at `threads` for serial fraction f.
    static func amdahlSpeedup(_ f: Double, threads: Int) -> Double { 1 / (max(f, 0) + (1 - max(f, 0)) / Double(threads)) }
}
