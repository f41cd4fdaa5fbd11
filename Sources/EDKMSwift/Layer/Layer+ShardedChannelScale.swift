import Glibc

/// The per-output-channel scale on sharded weights (`forwardShard` with a channel scale). A rank's
/// slice [offset, offset + count) is any contiguous run of elements, so a row may be split across
/// ranks (its first and last rows partial, a row spanning several ranks). The factors are
/// computed from whole rows, identically on every rank, by two collectives:
///
/// 1. agreement (every sharded forward with a channel scale; 16 bytes per rank, all-gathered):
///    whether each rank's layer already holds factors, and a hash of them. All ranks hold them
///    and the hashes agree: they are used. No rank holds them: step 2. Otherwise (a rank failed
///    alone after a collective, or factors were set on some ranks only) every rank fails with
///    `.state`, before any other collective, so that none waits for the others.
/// 2. exchange (until the factors are fixed, normally the first forward; rows x 8 bytes per rank,
///    all-gathered): each rank's smallest and largest element of every row within its slice
///    (+inf / -inf for rows it does not touch; NaN is skipped, as by `ChannelScaling.factors`).
///    The minimum and maximum over ranks are exact, so every rank derives the same factors, equal
///    bit for bit to those of the whole tensor (`ChannelScaling.factor`; the largest magnitude is
///    max(-low, high)). A row no slice touches gets factor 1.
///
/// The factors are kept by the layer only when the forward succeeds (as the buffer forward), so a
/// failure every rank shares (non-finite weights, flagged in the histogram all-reduce) fixes
/// nothing anywhere.
extension Layer {
    /// The scaling of this rank's slice (a collective: every rank calls it in its sharded forward).
    func shardedChannelScaling(_ weights: UnsafeRawPointer, type: ElementType, offset: Int,
                               count: Int) throws(EDKMError) -> ChannelScaling {
        let stored = try exclusive { channelScale }
        var factors = try agreedChannelScale(stored)
        if factors == nil { factors = try exchangedChannelScale(weights, type: type, offset: offset, count: count) }
        return ChannelScaling(factors: factors!, rowLength: geometry.rowLength, first: offset)
    }

    /// Step 1: the stored factors when every rank holds the same, nil when no rank holds any.
    private func agreedChannelScale(_ stored: [Float]?) throws(EDKMError) -> [Float]? {
        let comm = runtime.communicator, world = comm.worldSize
        let hash = stored.map { f in f.withUnsafeBytes { ContentHash.hash($0.baseAddress!, count: $0.count) } } ?? 0
        let buffer = try HeapAllocation.allocate(UInt64.self, count: 2 * (world + 1), for: "the channel scale agreement")
        defer { free(buffer) }
        let mine = buffer, all = buffer + 2
        mine[0] = stored == nil ? 0 : 1
        mine[1] = hash
        try comm.allGather(UnsafeRawBufferPointer(start: mine, count: 16),
                           into: UnsafeMutableRawBufferPointer(start: all, count: 16 * world))
        runtime.countCommunicatorBytes(16)
        guard all[2 * comm.rank] == mine[0] && all[2 * comm.rank + 1] == mine[1],
              (0..<world).allSatisfy({ all[2 * $0] <= 1 }) else {
            throw EDKMError(.communicator, "all_gather returned blocks no correct all-gather of the channel scale agreement gives")
        }
        let holding = (0..<world).filter { all[2 * $0] == 1 }
        if holding.isEmpty { return nil }
        guard holding.count == world, holding.allSatisfy({ all[2 * $0 + 1] == hash }) else {
            throw EDKMError(.state, "the ranks disagree on the channel scale factors (\(holding.count) of \(world) hold factors"
                            + (holding.count == world ? ", not all the same" : "") + "): set the same factors on every rank "
                            + "(edkm_layer_set_channel_scale) before the sharded forward")
        }
        return stored
    }

    /// Step 2: the factors of the whole rows from every rank's per-row extrema.
    private func exchangedChannelScale(_ weights: UnsafeRawPointer, type: ElementType, offset: Int,
                                       count: Int) throws(EDKMError) -> [Float] {
        let comm = runtime.communicator, world = comm.worldSize
        let rows = geometry.rows, rowLength = geometry.rowLength
        let extrema = try HeapAllocation.allocate(Float.self, count: 2 * rows, for: "the channel scale exchange")
        defer { free(extrema) }  // (low, high) per row
        for r in 0..<rows { extrema[2 * r] = .infinity; extrema[2 * r + 1] = -.infinity }
        var i = 0
        while i < count {
            let r = (offset + i) / rowLength, end = Swift.min(count, (r + 1) * rowLength - offset)
            var lo = extrema[2 * r], hi = extrema[2 * r + 1]
            for j in i..<end {
                let w = ElementIO.load(weights, type: type, at: j)
                lo = Swift.min(lo, w)
                hi = Swift.max(hi, w)
            }
            extrema[2 * r] = lo
            extrema[2 * r + 1] = hi
            i = end
        }
        let blockBytes = 2 * rows * MemoryLayout<Float>.size
        let (bytes, overflow) = blockBytes.multipliedReportingOverflow(by: world)
        guard !overflow else { throw EDKMError(.outOfMemory, "the channel scale exchange of \(rows) rows over \(world) ranks is too large") }
        let all = try HeapAllocation.allocateBytes(bytes, for: "the channel scale exchange")
        defer { free(all) }
        try comm.allGather(UnsafeRawBufferPointer(start: extrema, count: blockBytes),
                           into: UnsafeMutableRawBufferPointer(start: all, count: bytes))
        runtime.countCommunicatorBytes(blockBytes)
        let gathered = all.assumingMemoryBound(to: Float.self)
        guard memcmp(gathered + 2 * rows * comm.rank, extrema, blockBytes) == 0 else {
            throw EDKMError(.communicator, "all_gather returned another block for this rank than it sent (channel scale exchange)")
        }
        var factors = [Float](repeating: 1, count: rows)
        for r in 0..<rows {
            var lo = Float.infinity, hi = -Float.infinity
            for k in 0..<world {
                lo = Swift.min(lo, gathered[2 * rows * k + 2 * r])
                hi = Swift.max(hi, gathered[2 * rows * k + 2 * r + 1])
            }
            if lo <= hi {  // some rank holds an element of row r
                // An infinite extremum (a rank's Inf weight, or a gather's garbage) would give an
                // infinite factor that the layer keeps. Every rank sees the same gathered extrema,
                // so every rank fails here together (nothing kept), as for a non-finite weight.
                guard lo.isFinite && hi.isFinite else {
                    throw EDKMError(.nonFinite, "row \(r) holds an infinite weight on some rank (its \(lo.isFinite ? "largest" : "smallest") "
                                    + "element in the channel scale exchange is \(lo.isFinite ? hi : lo))")
                }
                factors[r] = ChannelScaling.factor(low: lo, high: hi, peak: Swift.max(-lo, hi), scheme: config.channelScale)
            }
        }
        return factors
    }
}
