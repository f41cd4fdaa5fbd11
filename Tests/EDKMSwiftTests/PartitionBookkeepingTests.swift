@testable import EDKMSwift
import EDKMNumerics
import Testing

/// The per-partition work between parallel regions, now made in parallel over partitions: the
/// saved traces' encoding against the serial encoding it replaced (same doubles, same order) and
/// at 1, 2 and 3 threads; the scalar re-spread's shortcut against the general algorithm.
@Suite struct PartitionBookkeepingTests {
    /// The serial encoding: [P, per partition: T, c^0..c^T, raw c^0..c^T, S^0..S^{T-1}, inertia, tau, prune, epsilon].
    static func serialEncoding(_ traces: [PartitionTrace]) -> [Double] {
        var out: [Double] = [Double(traces.count)]
        for t in traces {
            out.append(Double(t.iterations))
            for c in t.centroids + t.rawCentroids { out += c }
            for s in t.normalizers { out += s }
            out += [t.inertia, t.parameters.tau, t.parameters.prune, t.parameters.epsilon]
        }
        return out
    }

    @Test(arguments: [false, true])
    func traceEncodingEqualsSerial(raw: Bool) {
        var rng = SplitMix64(seed: raw ? 2 : 1)
        let k = 8, kd = 16
        let traces = (0..<300).map { _ -> PartitionTrace in
            let T = rng.below(4)
            var t = PartitionTrace(centroids: (0...T).map { _ in (0..<kd).map { _ in rng.normal() } },
                                   normalizers: (0..<T).map { _ in (0..<k).map { _ in rng.nextUnit() } },
                                   inertia: rng.nextUnit(),
                                   parameters: EffectiveParameters(tau: rng.nextUnit(), prune: -rng.nextUnit(), epsilon: 1e-4))
            if raw { t.rawCentroids = (0...T).map { _ in (0..<kd).map { _ in rng.normal() } } }
            return t
        }
        let expected = Self.serialEncoding(traces).map(\.bitPattern)
        for threads in [1, 2, 3] {
            #expect(SavedState.encodeTraces(traces, pool: ThreadPool(threads: threads)).map(\.bitPattern) == expected,
                    "threads \(threads)")
        }
    }

    /// The re-spread as it was (per-centroid arrays, first occurrences, lexicographic order).
    static func generalRespread(_ c: inout [Float], k: Int) {
        var distinct: [Float] = [], firstIndex: [Int] = [], multiplicity: [Int] = []
        for j in 0..<k {
            if let at = distinct.firstIndex(of: c[j]) { multiplicity[at] += 1 } else {
                distinct.append(c[j]); firstIndex.append(j); multiplicity.append(1)
            }
        }
        if distinct.count == k { return }
        let order = distinct.indices.sorted { distinct[$0] < distinct[$1] }
        for (rank, idx) in order.enumerated() where multiplicity[idx] > 1 {
            c[firstIndex[idx]] = 0.5 * (distinct[idx] + distinct[order[(rank + 1) % order.count]])
        }
    }

    @Test func scalarRespreadShortcutEqualsGeneral() {
        var rng = SplitMix64(seed: 9)
        for trial in 0..<2000 {
            let k = [1, 2, 4, 16][trial % 4]
            var c = (0..<k).map { _ in Float([0.0, -0.0, 0.25, -1, 3][rng.below(5)] + (trial % 3 == 0 ? rng.normal() : 0)) }
            if trial % 7 == 0 { c[rng.below(k)] = .infinity }
            var expected = c
            Self.generalRespread(&expected, k: k)
            CentroidInitialization.respreadDuplicates(&c, k: k, d: 1)
            #expect(c.map(\.bitPattern) == expected.map(\.bitPattern), "trial \(trial)")
        }
    }
}
