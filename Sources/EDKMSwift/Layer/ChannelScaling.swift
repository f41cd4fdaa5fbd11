import EDKMNumerics
import Glibc

/// The per-output-channel scale of a layer (coremltools' per_channel_scaling_factor, channel axis
/// 0): row r of a tensor of shape [rows, ...] (its rowLength consecutive elements) is clustered as
/// w / s_r, and the clustered values are multiplied back by s_r. The factors are constants (no
/// gradient flows into them), so for the clustering map f:
///   forward   w~_i = s_r f(w / s)_i
///   backward  dL/dw_i = (1 / s_r) [J_f(w / s)^T (s . dL/dw~)]_i
/// where `s .` multiplies each row's gradient by its factor. The buffers the methods take hold the
/// tensor's elements [first, first + count): the whole tensor (first 0), or a rank's slice of
/// sharded weights, whose first and last rows may be partial.
struct ChannelScaling {
    /// One factor per row, each finite and > 0.
    let factors: [Float]
    let rowLength: Int
    /// The tensor element index of the buffers' element 0.
    var first = 0

    /// The factors of `scheme` for the weights (count = factors x rowLength elements of `type`):
    /// minMax s_r = (max_r - min_r) / 2, absMax s_r = max_r |w|. A factor of 0 (a constant row
    /// under minMax, a zero row) becomes the row's largest magnitude, or 1 for a zero row, so that
    /// every row is clustered and nothing is divided by zero. Weights must be finite.
    static func factors(of weights: UnsafeRawPointer, type: ElementType, rows: Int, rowLength: Int,
                        scheme: ClusteringConfig.ChannelScale, pool: ThreadPool) -> [Float] {
        var result = [Float](repeating: 1, count: rows)
        result.withUnsafeMutableBufferPointer { out in
            let res = out.baseAddress!
            pool.parallelFor(rows) { r in
                var lo = Float.infinity, hi = -Float.infinity, peak: Float = 0
                for i in (r * rowLength)..<((r + 1) * rowLength) {
                    let w = ElementIO.load(weights, type: type, at: i)
                    lo = Swift.min(lo, w)
                    hi = Swift.max(hi, w)
                    peak = Swift.max(peak, abs(w))
                }
                res[r] = factor(low: lo, high: hi, peak: peak, scheme: scheme)
            }
        }
        return result
    }

    /// The factor of a row whose smallest, largest and largest-magnitude elements are low, high
    /// and peak (the one formula of `factors(of:)` and the sharded weights' collective factors).
    @inline(__always)
    static func factor(low lo: Float, high hi: Float, peak: Float, scheme: ClusteringConfig.ChannelScale) -> Float {
        let s = scheme == .minMax ? 0.5 * (hi - lo) : peak
        return s > 0 && s.isFinite ? s : (peak > 0 ? peak : 1)
    }

    /// Checks factors a caller sets: one per row, each finite and > 0.
    static func validate(_ factors: UnsafeBufferPointer<Float>, rows: Int) throws(EDKMError) {
        guard factors.count == rows else {
            throw EDKMError(.shape, "expected \(rows) channel scale factors (one per row, shape[0]), got \(sizeText(factors.count))")
        }
        if let bad = factors.firstIndex(where: { !($0.isFinite && $0 > 0) }) {
            throw EDKMError(.invalidArgument, "channel scale factor \(bad) is \(factors[bad]); each must be finite and > 0")
        }
    }

    /// A heap copy (release with `free`) of `count` elements of `type`, each w_i / s_r rounded to
    /// `type` (as torch divides a tensor of that dtype).
    func divided(_ weights: UnsafeRawPointer, type: ElementType, count: Int, pool: ThreadPool) throws(EDKMError)
        -> UnsafeMutableRawPointer {
        let out = try HeapAllocation.allocateBytes(
            HeapAllocation.byteCount(of: UInt8.self, count: count * type.byteWidth, for: "the channel-scaled weights"),
            for: "the channel-scaled weights")
        rowWise(count, pool: pool) { r, lo, hi in
            let s = factors[r]
            switch type {
            case .f32:
                let src = weights.assumingMemoryBound(to: Float.self), dst = out.assumingMemoryBound(to: Float.self)
                for i in lo..<hi { dst[i] = src[i] / s }
            case .f16:
                let src = weights.assumingMemoryBound(to: UInt16.self), dst = out.assumingMemoryBound(to: UInt16.self)
                for i in lo..<hi { dst[i] = HalfConversion.floatToF16(HalfConversion.f16ToFloat(src[i]) / s) }
            case .bf16:
                let src = weights.assumingMemoryBound(to: UInt16.self), dst = out.assumingMemoryBound(to: UInt16.self)
                for i in lo..<hi { dst[i] = HalfConversion.floatToBF16(HalfConversion.bf16ToFloat(src[i]) / s) }
            }
        }
        return out
    }

    /// out_i = source_i x s_r (multiply) or source_i / s_r, stored as `type`; source holds count floats.
    func apply(_ source: UnsafePointer<Float>, into out: UnsafeMutableRawPointer, type: ElementType, count: Int,
               multiply: Bool, pool: ThreadPool) {
        rowWise(count, pool: pool) { r, lo, hi in
            let s = factors[r]
            switch type {
            case .f32:
                let dst = out.assumingMemoryBound(to: Float.self)
                if multiply { for i in lo..<hi { dst[i] = source[i] * s } } else { for i in lo..<hi { dst[i] = source[i] / s } }
            case .f16:
                let dst = out.assumingMemoryBound(to: UInt16.self)
                if multiply {
                    for i in lo..<hi { dst[i] = HalfConversion.floatToF16(source[i] * s) }
                } else {
                    for i in lo..<hi { dst[i] = HalfConversion.floatToF16(source[i] / s) }
                }
            case .bf16:
                let dst = out.assumingMemoryBound(to: UInt16.self)
                if multiply {
                    for i in lo..<hi { dst[i] = HalfConversion.floatToBF16(source[i] * s) }
                } else {
                    for i in lo..<hi { dst[i] = HalfConversion.floatToBF16(source[i] / s) }
                }
            }
        }
    }

    /// out_i = g_i x s_r as floats (the gradient with respect to the clustered, scaled weights).
    func multiplied(_ source: UnsafeRawPointer, type: ElementType, count: Int, into out: UnsafeMutablePointer<Float>,
                    pool: ThreadPool) {
        rowWise(count, pool: pool) { r, lo, hi in
            let s = factors[r]
            switch type {
            case .f32:
                let src = source.assumingMemoryBound(to: Float.self)
                for i in lo..<hi { out[i] = src[i] * s }
            case .f16:
                let src = source.assumingMemoryBound(to: UInt16.self)
                for i in lo..<hi { out[i] = HalfConversion.f16ToFloat(src[i]) * s }
            case .bf16:
                let src = source.assumingMemoryBound(to: UInt16.self)
                for i in lo..<hi { out[i] = HalfConversion.bf16ToFloat(src[i]) * s }
            }
        }
    }

    /// The uniquified forward's output in one pass: out_e = table_p[keys_e] x s_r rounded once to
    /// `type`, for the elements of every partition p (elementsPerPartition consecutive buffer
    /// elements each; table_p filled by `fill` with the float soft value of each key present).
    /// The same float product and rounding as a float gather followed by `apply(multiply: true)`,
    /// without the count floats in between.
    func gatherMultiplied(_ keys: UnsafePointer<UInt16>, partitions: Int, elementsPerPartition: Int, pool: ThreadPool,
                          into out: UnsafeMutableRawPointer, type: ElementType,
                          fill: (Int, UnsafeMutablePointer<Float>) -> Void) {
        KeyPasses.withPartitionTables(partitions: partitions, elementsPerPartition: elementsPerPartition, pool: pool,
                                      fill: fill) { item, table in
            var lo = item.start
            let end = item.start + item.count
            while lo < end {  // the item's rows (its first and last may be partial)
                let r = (first + lo) / rowLength
                let hi = Swift.min(end, (r + 1) * rowLength - first)
                let s = factors[r]
                switch type {
                case .f32:
                    let dst = out.assumingMemoryBound(to: Float.self)
                    for i in lo..<hi { dst[i] = table[Int(keys[i])] * s }
                case .f16:
                    let dst = out.assumingMemoryBound(to: UInt16.self)
                    for i in lo..<hi { dst[i] = HalfConversion.floatToF16(table[Int(keys[i])] * s) }
                case .bf16:
                    let dst = out.assumingMemoryBound(to: UInt16.self)
                    for i in lo..<hi { dst[i] = HalfConversion.floatToBF16(table[Int(keys[i])] * s) }
                }
                lo = hi
            }
        }
    }

    /// The factor of buffer element i (a division: for passes that are not bandwidth-bound).
    @inline(__always)
    func factor(at i: Int) -> Float { factors[(first + i) / rowLength] }

    /// body(row, first element, end element) for every row the buffers' count elements touch, in
    /// buffer indices (a slice's first and last rows may be partial), rows in parallel blocks.
    private func rowWise(_ count: Int, pool: ThreadPool, _ body: (Int, Int, Int) -> Void) {
        guard count > 0 else { return }
        let end = first + count
        let firstRow = first / rowLength, endRow = (end - 1) / rowLength + 1
        let rowsPerItem = Swift.max(1, 65536 / Swift.max(1, rowLength))
        let items = (endRow - firstRow + rowsPerItem - 1) / rowsPerItem
        pool.parallelFor(items) { item in
            let lo = firstRow + item * rowsPerItem
            for r in lo..<Swift.min(endRow, lo + rowsPerItem) {
                body(r, Swift.max(r * rowLength, first) - first, Swift.min((r + 1) * rowLength, end) - first)
            }
        }
    }
}
