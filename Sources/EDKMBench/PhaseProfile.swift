import CEDKM
import EDKMClient
import EDKMSwift

/// Per-phase timing of one training step (forward + backward) from the library's parallel-region
/// record (ParallelProfile): each phase is one parallelFor call site; the serial phases are the
/// caller's CPU time between regions, named after the region they precede.
enum PhaseProfile {
    /// One step with the profile on (same centroids as the timed steps).
    static func record(_ layer: EDKMLayer, _ b: StepBuffers, dtype: edkm_dtype, initial: [Float]) -> [ParallelProfile.Region] {
        must { try layer.setCentroids(initial) }
        ParallelProfile.start()
        var saved = must { try layer.forward(b.weights, dtype, out: b.out, outDtype: dtype, save: true) }
        must { try saved!.backward(gradOutput: b.gradOut, gradInput: b.gradIn, dtype: dtype, weights: b.weights) }
        let record = ParallelProfile.stop()
        saved = nil
        return record
    }

    /// "KeyPasses.histograms" from "EDKMSwift/KeyPasses.swift histograms(_:partitions:...)".
    static func phaseName(_ site: String) -> String {
        guard let space = site.firstIndex(of: " ") else { return site }
        let file = site[..<space].split(separator: "/").last.map { $0.replacingSuffix(".swift") } ?? ""
        let function = site[site.index(after: space)...].split(separator: "(").first.map(String.init) ?? ""
        return file + "." + function
    }

    struct Phase {
        var name: String
        var items: [Int] = []
        var cpu1 = 0.0, pred2 = 0.0, pred64 = 0.0, wallN = 0.0
    }

    /// Phases in order of first appearance: parallel ones with their work (1 thread, CPU),
    /// predicted times at 2 and 64 threads, and measured wall time with N threads; serial ones.
    static func phases(one: [ParallelProfile.Region], many: [ParallelProfile.Region]) -> [Phase] {
        var order: [String] = []
        var byName: [String: Phase] = [:]
        func add(_ name: String, _ update: (inout Phase) -> Void) {
            if byName[name] == nil { order.append(name); byName[name] = Phase(name: name) }
            update(&byName[name]!)
        }
        for r in one {
            let name = r.items > 0 ? phaseName(r.site) : "tail"
            if r.serialBefore > 0 {
                add("serial before " + name) { $0.cpu1 += r.serialBefore; $0.pred2 += r.serialBefore; $0.pred64 += r.serialBefore }
            }
            if r.items > 0 {
                add(name) { p in
                    if !p.items.contains(r.items) { p.items.append(r.items) }
                    p.cpu1 += r.cpuSeconds
                    p.pred2 += ParallelProfile.predictedSeconds([r], threads: 2) - r.serialBefore
                    p.pred64 += ParallelProfile.predictedSeconds([r], threads: 64) - r.serialBefore
                }
            }
        }
        for r in many where r.items > 0 { add(phaseName(r.site)) { $0.wallN += r.wallSeconds } }
        return order.map { byName[$0]! }
    }

    /// The phase table of one case and its summary line.
    /// `probeCPU`: the one-thread CPU seconds of memcpys moving the step's minimum bytes (10 B/weight).
    static func report(_ caseText: String, one: [ParallelProfile.Region], many: [ParallelProfile.Region]?, threadsN: Int,
                       probeCPU: Double, markdown: Bool) -> String {
        let list = phases(one: one, many: many ?? [])
        let total = list.reduce(0) { $0 + $1.cpu1 }
        let serial = list.filter { $0.name.hasPrefix("serial") }.reduce(0) { $0 + $1.cpu1 }
        var table = Table(["phase", "items", "1 thr CPU ms", "share", "pred 2 thr ms", many == nil ? "-" : "\(threadsN) thr wall ms",
                           "pred 64 thr ms"], right: [false, true, true, true, true, true, true])
        for p in list where p.cpu1 >= total * 0.002 || p.wallN > 0 {
            table.add([p.name, p.items.map(String.init).joined(separator: ","), fmt("%.2f", p.cpu1 * 1e3),
                       fmt("%.1f%%", 100 * p.cpu1 / max(total, 1e-12)), fmt("%.2f", p.pred2 * 1e3),
                       many == nil ? "-" : fmt("%.2f", p.wallN * 1e3), fmt("%.2f", p.pred64 * 1e3)])
        }
        let t2 = list.reduce(0) { $0 + $1.pred2 }, t64 = list.reduce(0) { $0 + $1.pred64 }
        let f = serial / max(total, 1e-12)
        return "PHASES \(caseText) (one step, fwd+bwd; phases under 0.2 % of the work not listed)\n" + table.render(markdown: markdown)
            + "\nPHASES \(caseText): 1-thread work \(fmt("%.1f", total * 1e3)) ms, serial \(fmt("%.2f", serial * 1e3)) ms "
            + "(Amdahl f = \(fmt("%.4f", f)); Amdahl bound at 64 cores \(fmt("%.1f", amdahlSpeedup(f, threads: 64)))x); "
            + "predicted with the regions' item counts: 2 threads \(fmt("%.2f", total / t2))x, 64 threads \(fmt("%.1f", total / t64))x; "
            + "1-thread work = \(fmt("%.2f", total / max(probeCPU, 1e-12)))x the 1-thread CPU time of the bandwidth probe "
            + "(\(fmt("%.2f", probeCPU * 1e3)) ms: memcpys moving 4 + 6 B/weight)\n"
    }

    static func amdahlSpeedup(_ f: Double, threads: Int) -> Double { 1 / (max(f, 0) + (1 - max(f, 0)) / Double(threads)) }
}

private extension Substring {
    func replacingSuffix(_ suffix: String) -> String { hasSuffix(suffix) ? String(dropLast(suffix.count)) : String(self) }
}
