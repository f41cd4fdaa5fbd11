/// Checks of what a communicator's collectives return. A callback that reports success but hands
/// back impossible numbers (NaN, Inf, negative or fractional counts, counts that do not add up,
/// corrupt gathered blocks) makes the call fail with `.communicator` before anything is written,
/// instead of trapping on a conversion or computing from garbage. A correct all-reduce gives every
/// rank the same numbers, so every rank fails the same way.
enum CollectiveChecks {
    /// A value of an all-reduced sum of per-rank counts: finite, integral, 0 <= value <= limit.
    static func count(_ value: Double, limit: Double, _ what: @autoclosure () -> String) throws(EDKMError) -> Int {
        guard value.isFinite && value >= 0 && value <= limit && value == value.rounded(.towardZero) else {
            throw EDKMError(.communicator, "all_reduce_sum returned \(value) for \(what()): expected an integral count in 0...\(Int(limit))")
        }
        return Int(value)
    }

    /// The all-reduced key histogram of a sharded forward: table[0 ..< 65536] = counts per key,
    /// table[65536] = ranks flagging non-finite weights, table[65537] = elements of all slices.
    /// Every key of this rank's `local` histogram must be there at least as often. Returns the
    /// global histogram; throws `.nonFinite` when a rank flagged its weights.
    static func keyHistogram(_ table: UnsafeBufferPointer<Double>, local: KeyHistogram, keyType: ElementType,
                             worldSize: Int) throws(EDKMError) -> KeyHistogram {
        let flagged = try count(table[65536], limit: Double(worldSize), "the number of ranks with non-finite weights")
        if flagged > 0 {
            throw EDKMError(.nonFinite, "\(flagged) rank(s) hold non-finite weights (or f32 weights outside the key range)")
        }
        let elements = try count(table[65537], limit: 0x1p53, "the number of elements of all slices")
        var global = KeyHistogram(keys: [], counts: [])
        var total = 0
        for key in 0..<65536 where table[key] != 0 {
            let n = try count(table[key], limit: Double(UInt32.max), "the histogram count of key 0x\(String(key, radix: 16))")
            guard ElementIO.keyValue(UInt16(key), type: keyType).isFinite else {
                throw EDKMError(.communicator, "all_reduce_sum returned a count of \(n) for key 0x\(String(key, radix: 16)), which is not a finite \(keyType.name) value, while no rank flagged non-finite weights")
            }
            global.keys.append(UInt16(key))
            global.counts.append(UInt32(n))
            total += n
        }
        for (key, n) in zip(local.keys, local.counts) where table[Int(key)] < Double(n) {
            throw EDKMError(.communicator, "all_reduce_sum returned a count of \(table[Int(key)]) for key 0x\(String(key, radix: 16)), of which this rank alone holds \(n)")
        }
        guard total == elements else {
            throw EDKMError(.communicator, "all_reduce_sum returned histogram counts adding up to \(total), but the ranks' slices hold \(elements) elements (an inconsistent or corrupted all-reduce)")
        }
        return global
    }

    /// The all-reduced gradient sums of a sharded backward (finite on every rank, else the rank
    /// flagged them): every entry must be finite.
    static func gradientSums(_ sums: UnsafeBufferPointer<Double>) throws(EDKMError) {
        if let bad = sums.firstIndex(where: { !$0.isFinite }) {
            throw EDKMError(.communicator, "all_reduce_sum returned \(sums[bad]) for gradient sum \(bad), though every rank's gradients were finite")
        }
    }

    /// An all-gathered index list of a SHARD saved state: per partition, the index of every element
    /// must be a row of its partition's table and each row must occur as often as the saved
    /// histogram counts (which also catches valid-looking but wrong indices in most cases).
    static func gatheredIndices(_ indices: UnsafePointer<UInt16>, histograms: [KeyHistogram], elementsPerPartition: Int,
                                pool: ThreadPool) throws(EDKMError) {
        let found = KeyPasses.histograms(indices, partitions: histograms.count, elementsPerPartition: elementsPerPartition,
                                         pool: pool).histograms
        for (p, h) in histograms.enumerated() {
            let expectedKeys = (0..<h.distinctCount).map { UInt16($0) }
            guard found[p].keys == expectedKeys && found[p].counts == h.counts else {
                let beyond = found[p].keys.first { Int($0) >= h.distinctCount }
                let detail = beyond.map { "index \($0) beyond the partition's \(h.distinctCount) distinct values" }
                    ?? "index counts that differ from the forward's histogram"
                throw EDKMError(.communicator, "all_gather returned a corrupt index list for partition \(p): \(detail)")
            }
        }
    }
}
