import EDKMSupport

/// The per-key gradient sums of f16 gradients in fixed point. Every finite f16 value is a whole
/// number of 2^-24 (the subnormal step) below 2^40 in magnitude, so a partition's sums are exact
/// 64-bit integers as long as max |g| x 2^24 x E < 2^63, and integer sums do not depend on the
/// order of the additions: the items of a partition share min(threads, items) tables
/// (LaneTables), added up per slot and rounded once to float64 (x 2^-24, an exact scaling). One
/// thread uses one table and merges nothing; any thread count gives the same sums. They are the
/// exact sums rounded once, so they equal the float64 element-order sums of the other dtypes'
/// path wherever those are exact (every partial sum below 2^29 x the smallest gradient step in
/// it: the gradients of a training step) and are closer to the true sums otherwise.
extension KeyPasses {
    /// An f16 bit pattern (finite) as a whole number of 2^-24.
    @inline(__always)
    static func f16Units(_ g: UInt16) -> Int64 {
        let exponent = Int64((g >> 10) & 31), mantissa = Int64(g & 1023)
        let magnitude = exponent == 0 ? mantissa : (mantissa | 1024) << (exponent - 1)
        return g & 0x8000 != 0 ? -magnitude : magnitude
    }

    /// The f16 gradient sums of partitions that span several items (`work` their items), with each
    /// item's keys hash in `hashes` when `hashing`. Nil when a gradient is NaN or Inf or the sums
    /// could leave 63 bits (max |g| x 2^24 x E >= 2^63): nothing usable was made and the caller runs
    /// its float64 tables (which report non-finite sums as before).
    static func f16GradientSums(_ keys: UnsafePointer<UInt16>, slots: [[UInt16]], work: [Item], elementsPerPartition E: Int,
                                pool: ThreadPool, grad: UnsafePointer<UInt16>, hashing: Bool,
                                hashes: UnsafeMutablePointer<UInt64>) -> [DoubleBuffer]? {
        let partitions = slots.count
        let lanes = (0..<partitions).map { p in
            LaneTables<Int64>(count: LaneTables<Int64>.count(items: work.count { $0.partition == p }, pool: pool)) { t in
                for key in slots[p] { t[Int(key)] = 0 }
            }
        }
        defer { withExtendedLifetime(lanes) {} }  // the tables live in `lanes`, read through `used` below
        let largest = UnsafeMutablePointer<UInt16>.allocate(capacity: work.count)
        defer { largest.deallocate() }
        pool.parallelFor(work.count) { i in
            let item = work[i]
            let g = grad + item.start
            var top: UInt16 = 0
            hashes[i] = lanes[item.partition].withTable { t in
                viaKernel(keys, item, index: i, hashing: hashing, { state, n in
                    edkm_kernel_scatter_f16_units(keys + item.start, g, n, t, state, &top)
                }, tail: { e, key in
                    top = Swift.max(top, g[e] & 0x7fff)
                    t[Int(key)] &+= f16Units(g[e])
                }) ?? forEachKey(keys, item, index: i, hashing: hashing) { e, key in
                    top = Swift.max(top, g[e] & 0x7fff)
                    t[Int(key)] &+= f16Units(g[e])
                }
            }
            largest[i] = top
        }
        let top = (0..<work.count).reduce(UInt16(0)) { Swift.max($0, largest[$1]) }
        guard top & 0x7c00 != 0x7c00, !f16Units(top).multipliedReportingOverflow(by: Int64(E)).overflow else { return nil }

        // Per partition and slice of its slots: the tables' integers added (any order), rounded once.
        let sums = slots.map { DoubleBuffer(zeros: $0.count) }
        let used = lanes.map(\.used)
        let slices = 64
        pool.parallelFor(partitions * slices) { i in
            let p = i / slices
            let mySlots = slots[p], tables = used[p]
            let lo = mySlots.count * (i % slices) / slices, hi = mySlots.count * (i % slices + 1) / slices
            let out = sums[p].pointer
            for m in lo..<hi {
                var total: Int64 = 0
                for t in tables { total &+= t[Int(mySlots[m])] }
                out[m] = Double(total) * 0x1p-24
            }
        }
        return sums
    }
}
