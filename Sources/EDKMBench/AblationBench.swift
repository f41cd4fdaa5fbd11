import CEDKM
import EDKMClient
import Glibc

/// `edkm-bench ablation`: the eDKM saved-state memory ablation on one LLaMA-7B decoder
/// layer: per mode, the saved bytes from the runtime's statistics, the reduction against the DKM
/// baseline and the forward + backward time. Modes that keep N x k maps are measured on row slices
/// and extrapolated (their bytes are linear in the weights; the fit and its residual are printed).
enum AblationBench {
    static let usage = """
    usage: edkm-bench ablation [options]
      --modes LIST      dkm,marshal,dedup,uniquify,shard,histogram,histogram+keep (default all)
      --slices LIST     rows of the 4096-row matrices in each slice; gate/up get the same fraction
                        of their 11008 rows (default 64,128,256 = 1/64, 1/32, 1/16 of the layer)
      --world N         simulated ranks of the shard mode (threads with an in-process communicator; default 8)
      --threads N       runtime worker threads of the non-sharded modes (default 0 = the cores available)
      --bits N          (default 3)
      --no-full         skip the full-size measurements of the modes that fit
      --no-accumulate   skip the gradient-accumulation variant
      --divisor N       scale the layer's extents down by N (smoke runs; default 1)
      --markdown        print the tables as GitHub markdown
      --quick           CI smoke: --divisor 16 --slices 16,32,64
    """

    static func run(_ args: ArraySlice<String>) {
        let o = Options(args, valued: ["--modes", "--slices", "--world", "--threads", "--bits", "--divisor"],
                        switches: ["--no-full", "--no-accumulate", "--markdown", "--quick", "--help"])
        if o.has("--help") { print(usage); return }
        if !o.unknown.isEmpty { fail("ablation: unknown arguments \(o.unknown)\n\(usage)") }
        let quick = o.has("--quick")
        let divisor = max(1, o.int("--divisor", quick ? 16 : 1))
        let slices = o.ints("--slices", quick ? [16, 32, 64] : [64, 128, 256])
        let names = o.list("--modes", AblationMode.all.map(\.name))
        let modes = names.map { n -> AblationMode in
            guard let m = AblationMode.all.first(where: { $0.name == n }) else { fail("unknown mode \(n)") }
            return m
        }
        let world = max(1, o.int("--world", 8))
        let threads = UInt32(max(0, o.int("--threads", 0)))
        let bits = o.int("--bits", 3)
        let full = !o.has("--no-full")
        let accumulate = !o.has("--no-accumulate")
        let markdown = o.has("--markdown")
        if slices.count < 2 { fail("--slices needs at least two slice sizes for the linear fit") }

        let shapes = llamaDecoderLayer(divisor: divisor)
        let fullN = shapes.reduce(0) { $0 + $1.count }
        fputs("  generating \(fullN) bf16 weights\n", stderr)
        let data = DecoderLayerData(shapes: shapes)
        let runtimeThreads = must { try EDKMRuntime(threads: threads).stats() }.num_threads

        print("edkm-bench ablation: libedkm \(String(cString: edkm_version_string())); one LLaMA-7B decoder layer"
              + (divisor > 1 ? " with extents / \(divisor)" : "") + ": "
              + shapes.map { "\($0.name) \($0.rows)x\($0.cols)" }.joined(separator: ", "))
        print("N = \(fullN) bf16 weights ~ N(0, 0.02^2) + 0.01% outliers (x12); \(bits) bits (k = \(1 << bits)), per-tensor LUT, "
              + "coremltools' layer defaults (absolute tau 1e-4, <= 3 iterations, epsilon 1e-4); runtime threads \(runtimeThreads); shard: world size \(world) "
              + "simulated in-process (\(world) threads as ranks, 1 worker each, in-process all-gather), rank 0's figures")
        print("saved bytes = peak of the runtime's stats during one forward of all seven matrices with their saved states held "
              + "(edkm_runtime_reset_peak, then arena_peak + heap_saved_peak minus what was allocated before); "
              + "fwd+bwd = those forwards, then every backward in reverse order\n")

        // ---- measurements ----
        var sliceResults: [String: [AblationResult]] = [:]   // mode -> per slice
        var fullResults: [String: AblationResult] = [:]
        var gradCheck: [String: (String, String)] = [:]       // mode -> (difference vs histogram, where)
        func compare(_ a: [UInt16], _ b: [UInt16]) -> String {
            let d = ulpDifference(a, b)
            return d.maxULP == 0 ? "identical"
                : "max |diff| / max |grad| \(fmt("%.1e", d.relative)) (\(fmt("%.2g", 100 * d.differing))% of elements differ)"
        }
        func measure(_ m: AblationMode, _ set: [NamedShape], forwards: Int, keepGradient: Bool) -> AblationResult {
            m.sharded ? measureSharded(m, data, shapes: set, bits: bits, world: world, forwards: forwards, keepGradient: keepGradient)
                      : measureMode(m, data, shapes: set, bits: bits, threads: threads, forwards: forwards, keepGradient: keepGradient)
        }
        let reference = AblationMode.all.first { $0.name == "histogram" }!
        let largest = slices.max()!
        for s in slices {
            let set = data.slice(rows: s)
            let ref = measure(reference, set, forwards: 1, keepGradient: s == largest)
            for m in modes {
                fputs("  \(m.name): slice \(s) rows\n", stderr)
                let r = m.name == reference.name ? ref : measure(m, set, forwards: 1, keepGradient: s == largest)
                sliceResults[m.name, default: []].append(r)
                if s == largest && m.name != reference.name {
                    gradCheck[m.name] = (compare(r.gradient, ref.gradient), "\(s)-row slice")
                }
            }
        }
        if full {
            let ref = measure(reference, shapes, forwards: 1, keepGradient: true)
            for m in modes where !m.dense {
                fputs("  \(m.name): full layer\n", stderr)
                let r = m.name == reference.name ? ref : measure(m, shapes, forwards: 1, keepGradient: true)
                fullResults[m.name] = r
                if m.name != reference.name { gradCheck[m.name] = (compare(r.gradient, ref.gradient), "full") }
            }
        }

        // ---- slices, fit, extrapolation ----
        let sliceN = slices.map { s in data.slice(rows: s).reduce(0) { $0 + $1.count } }
        var header = ["mode"] + zip(slices, sliceN).map { "\($0.0) rows (\($0.1) w)" }
        header += ["fit: B/weight", "fit: const B", "max residual", "full: extrapolated", "full: measured"]
        var t1 = Table(header)
        var fullBytes: [String: (Double, Bool)] = [:]          // mode -> (bytes, measured)
        var fullTime: [String: (Double, Bool)] = [:]
        for m in modes {
            let rs = sliceResults[m.name]!
            let fit = LinearFit(sliceN.map(Double.init), rs.map { Double($0.peak) })
            let tfit = LinearFit(sliceN.map(Double.init), rs.map(\.total))
            let extrapolated = fit(Double(fullN))
            var row = [m.name] + rs.map { bytesText(Double($0.peak)) }
            row += [fmt("%.4g", fit.b), bytesText(fit.a), fmt("%.2g%%", 100 * fit.maxRelativeResidual), bytesText(extrapolated)]
            if let f = fullResults[m.name] {
                row.append(bytesText(Double(f.peak)))
                fullBytes[m.name] = (Double(f.peak), true)
                fullTime[m.name] = (f.total, true)
            } else {
                row.append("does not fit")
                fullBytes[m.name] = (extrapolated, false)
                fullTime[m.name] = (tfit(Double(fullN)), false)
            }
            t1.add(row)
        }
        print("Saved bytes measured on row slices of every matrix (slice = the first rows; bytes vs weights fitted by least squares):")
        print(t1.render(markdown: markdown))
        print("(the dense modes are linear in the weights: their full-layer bytes are extrapolated from the fit; the other modes "
              + "hold U- and k-sized tables, U grows sublinearly with the slice, so they are measured at full size instead)")
        let k = Double(1 << bits)
        if let dkm = sliceResults["dkm"] {
            let T = Double(dkm.last!.iterations.max() ?? 3)
            print(fmt("DKM model: 2 T k x 4 B (D and softmax maps) + T x 2 B (weight copies) = %.0f B/weight at T = %.0f, k = %.0f",
                      2 * T * k * 4 + T * 2, T, k))
        }

        // ---- the README table ----
        let dkmFull = fullBytes["dkm"]?.0
        var t2 = Table(["mode", "saved per forward", "saved bytes, full layer", "x smaller than DKM", "fwd+bwd s"],
                       right: [false, false, true, true, true])
        for m in modes {
            let (b, measured) = fullBytes[m.name]!
            let (t, tMeasured) = fullTime[m.name]!
            t2.add([m.name, m.what, bytesText(b) + (measured ? "" : " (extrapolated)"),
                    dkmFull.map { ratioText($0 / b) } ?? "-",
                    fmt("%.2f", t) + (tMeasured ? "" : " (extrapolated)") + (m.sharded ? " (\(world) ranks on \(runtimeThreads) cores)" : "")])
        }
        print("\neDKM memory ablation, one LLaMA-7B decoder layer\(divisor > 1 ? " / \(divisor)" : "") (\(fullN) bf16 weights, \(bits) bits):")
        print(t2.render(markdown: markdown))
        if let dkm = sliceResults["dkm"] {
            let i = slices.firstIndex(of: largest)!
            var parts: [String] = []
            for m in modes where m.name != "dkm" {
                parts.append("\(m.name) \(ratioText(Double(dkm[i].peak) / Double(sliceResults[m.name]![i].peak)))")
            }
            print("measured on the \(largest)-row slice, no extrapolation, x smaller than DKM: " + parts.joined(separator: ", "))
        }
        if let ref = fullResults["histogram"] ?? sliceResults["histogram"]?.last {
            print("per matrix (histogram run): " + zip(shapes, zip(ref.distinct, ref.iterations)).map {
                "\($0.0.name) U=\($0.1.0) T=\($0.1.1)" }.joined(separator: ", "))
        }
        if let shard = fullResults["shard"] ?? sliceResults["shard"]?.last {
            print("shard rank 0: communicator_bytes \(shard.communicatorBytes) sent in backward (its index-list shards)")
        }
        print("gradients (q_proj dL/dw, bf16; one bf16 rounding step is up to 3.9e-3 of an element) vs the histogram mode: "
              + modes.compactMap { m in gradCheck[m.name].map { "\(m.name) \($0.0) (\($0.1))" } }.joined(separator: "; "))

        if accumulate { accumulation(modes, data, slice: slices.min()!, full: full, measure: measure, markdown: markdown) }
    }

    /// Gradient accumulation: the same (unchanged) weights forwarded twice before the backward.
    static func accumulation(_ modes: [AblationMode], _ data: DecoderLayerData, slice: Int, full: Bool,
                             measure: (AblationMode, [NamedShape], Int, Bool) -> AblationResult, markdown: Bool) {
        var t = Table(["mode", "size", "1 forward", "2 forwards", "2 fwd / 1 fwd", "dedup hits", "dedup misses", "fwd+bwd s"])
        for m in modes {
            let onFull = full && !m.dense
            let set = onFull ? data.shapes : data.slice(rows: slice)
            fputs("  accumulation: \(m.name)\n", stderr)
            let one = measure(m, set, 1, false)
            let two = measure(m, set, 2, false)
            t.add([m.name, onFull ? "full" : "\(slice) rows", bytesText(Double(one.peak)), bytesText(Double(two.peak)),
                   fmt("%.2f", Double(two.peak) / Double(one.peak)), String(two.dedupHits), String(two.dedupMisses),
                   fmt("%.2f", two.total)])
        }
        print("\nGradient accumulation: every matrix forwarded twice with the same weights, both saved states held, then both backwards:")
        print(t.render(markdown: markdown))
        print("(dedup hits: saved tensors referenced instead of copied; the second forward starts from the centroids the first one "
              + "updated, so its maps differ, but the weights, keys and index lists are the same)")
    }
}
