@testable import EDKMSwift
import EDKMNumerics
import EDKMSupport
import Glibc
import Testing

/// The window choice of the windowed d = 1 passes: each group of four rows' searches start where
/// the previous group's ended (`SoftKMeansKernel.WindowCursor`, `window_cursor` in
/// `Sources/EDKMSupport/window_kernels.c`). Both builds must return, for every group, exactly the
/// window of the definition (docs/windowed-dkm.md), which this suite computes from scratch by brute
/// force for each group alone:
///
///     min D = min over all centroids of the squared distances (under keep-sparsity, for a nonzero
///             row, min(zeroDistance, the minimum over the centroids other than 0)), or with the
///             prune bias min(that, (u - c_0)^2 - p)
///     R = sqrt(min D + cut tau) (1 + 2^-30)   (rows with a NaN R are skipped)
///     left = min (u - R), right = max (u + R) over the group's rows
///     window = the centroids at sorted positions #{sorted < left} ..< #{sorted <= right}, then
///              centroid 0 if outside them; [0] alone when no row has a radius
///
/// Identical windows, with the passes otherwise unchanged, give bit-identical traces, outputs and
/// gradients to the build that searched every group from scratch. Rows in key order (f16 / bf16
/// distinct values: ascending positives, then negatives descending), in reverse and in random order
/// (f32 rows as the dense path reads them), k = 2 ... 256, tiny to huge tau, keep-sparsity, a large
/// prune bias, duplicated centroids.
@Suite struct WindowChoiceTests {
    /// The window of four rows by the definition, searched from scratch.
    static func referenceWindow(_ kernel: SoftKMeansKernel, _ u: ArraySlice<Double>, _ c: [Double]) -> [Int] {
        let k = c.count
        let index = (0..<k).sorted { (c[$0], $0) < (c[$1], $1) }
        let sorted = index.map { c[$0] }
        let position0 = index.firstIndex(of: 0)!
        var left = Double.infinity, right = -Double.infinity
        for x in u {
            var all = Double.infinity, others = Double.infinity
            for q in 0..<k {
                let diff = x - sorted[q]
                all = min(all, diff * diff)
                if q != position0 { others = min(others, diff * diff) }
            }
            let minD = kernel.keepSparsity && x != 0
                ? min(others, kernel.zeroDistance)
                : min(all, (x - c[0]) * (x - c[0]) - kernel.pruneThreshold)
            let radius = (minD + SoftKMeansKernel.windowCut * kernel.tau).squareRoot() * (1 + 0x1p-30)
            if radius.isNaN { continue }
            left = min(left, x - radius)
            right = max(right, x + radius)
        }
        guard left <= right else { return [0] }
        let lo = sorted.filter { $0 < left }.count, hi = sorted.filter { $0 <= right }.count
        var window = Array(index[lo..<max(lo, hi)])
        if position0 < lo || position0 >= hi { window.append(0) }
        return window
    }

    /// Every group's window from both builds against the reference; returns the mean window size.
    @discardableResult
    static func check(_ kernel: SoftKMeansKernel, _ values: [Double], _ c: [Double], _ label: String) -> Double {
        let groups = values.count / 4
        let want = (0..<groups).map { referenceWindow(kernel, values[(4 * $0)..<(4 * $0 + 4)], c) }
        let swift = values.withUnsafeBufferPointer { v in
            c.withUnsafeBufferPointer { kernel.chooseWindows(v.baseAddress!, values.count, $0.baseAddress!) }
        }
        let swiftMismatches = zip(swift, want).filter { $0.0 != $0.1 }.count
        #expect(swift.count == groups && swiftMismatches == 0, "\(label): Swift build, \(swiftMismatches) of \(groups) windows differ")
        // The AVX2 build where it exists (whether or not the dispatch currently selects it).
        var params = kernel.windowParameters
        var windows = [Int](repeating: -1, count: groups * (kernel.k + 1)), sizes = [Int](repeating: 0, count: groups)
        let built = edkm_window_choose(&params, values, values.count, c, &windows, &sizes)
        if built >= 0 {
            #expect(built == groups, "\(label)")
            var mismatches = 0
            for g in 0..<groups where Array(windows[(g * (kernel.k + 1))..<(g * (kernel.k + 1) + sizes[g])]) != want[g] { mismatches += 1 }
            #expect(mismatches == 0, "\(label): AVX2 build, \(mismatches) of \(groups) windows differ")
        }
        checkEnds(kernel, values, c, want, label)
        return Double(want.reduce(0) { $0 + $1.count }) / Double(max(groups, 1))
    }

    /// The window ends one pass records and a later pass replays (`WindowEnds`): recorded while
    /// choosing (the windows still those of the definition), then replayed on rows that are all
    /// NaN (choosing on them would give [0] for every group, so a replay that chose again would
    /// fail), in both builds and across them (Swift records, C replays, and the reverse).
    static func checkEnds(_ kernel: SoftKMeansKernel, _ values: [Double], _ c: [Double], _ want: [[Int]], _ label: String) {
        let groups = values.count / 4
        let nan = [Double](repeating: .nan, count: values.count)
        let swiftEnds = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, 2 * groups))
        let cEnds = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, 2 * groups))
        defer { swiftEnds.deallocate(); cEnds.deallocate() }
        func swiftWindows(_ rows: [Double], _ ends: UnsafeMutablePointer<UInt8>, _ mode: WindowEnds.Mode) -> [[Int]] {
            var k = kernel
            k.windowEnds = WindowEnds(ends, mode)
            return rows.withUnsafeBufferPointer { v in c.withUnsafeBufferPointer { k.chooseWindows(v.baseAddress!, rows.count, $0.baseAddress!) } }
        }
        /// The C build's windows, nil where it is not built.
        func cWindows(_ rows: [Double], _ ends: UnsafeMutablePointer<UInt8>, _ mode: WindowEnds.Mode) -> [[Int]]? {
            var k = kernel
            k.windowEnds = WindowEnds(ends, mode)
            var params = k.windowParameters
            var windows = [Int](repeating: -1, count: groups * (kernel.k + 1)), sizes = [Int](repeating: 0, count: groups)
            guard edkm_window_choose(&params, rows, rows.count, c, &windows, &sizes) >= 0 else { return nil }
            return (0..<groups).map { Array(windows[($0 * (kernel.k + 1))..<($0 * (kernel.k + 1) + sizes[$0])]) }
        }
        #expect(swiftWindows(values, swiftEnds, .record) == want, "\(label): Swift build, windows while recording")
        #expect(swiftWindows(nan, swiftEnds, .replay) == want, "\(label): Swift build, replayed windows")
        guard let recorded = cWindows(values, cEnds, .record) else { return }
        #expect(recorded == want, "\(label): AVX2 build, windows while recording")
        #expect(memcmp(swiftEnds, cEnds, 2 * groups) == 0, "\(label): the builds record different ends")
        #expect(cWindows(nan, cEnds, .replay) == want, "\(label): AVX2 build, replayed windows")
        #expect(cWindows(nan, swiftEnds, .replay) == want, "\(label): AVX2 build, the Swift build's ends replayed")
        #expect(swiftWindows(nan, cEnds, .replay) == want, "\(label): Swift build, the AVX2 build's ends replayed")
    }

    static func kernel(bits: Int, tau: Double, keepSparsity: Bool = false, zeroThreshold: Double = 1e-7,
                       prune: Double = 0) -> SoftKMeansKernel {
        var config = ClusteringConfig()
        config.bits = bits
        config.temperatureMode = .absolute
        config.tau = tau
        config.zeroThreshold = zeroThreshold
        if keepSparsity {
            config.enforceZero = true
            config.pruneThreshold = 0
        }
        return SoftKMeansKernel(config: config, tau: tau, prune: prune)
    }

    /// Centroids of the rows (optimal 1-D k-means), scrambled so that centroid 0 is not the smallest.
    static func centroids(_ r: UniqueValueRows, k: Int) -> [Double] {
        let c = CentroidInitialization.optimal1D(values: r.valuesBuffer.array, counts: r.countsBuffer.array, k: k)
        return c.indices.map { c[($0 * 7 + 3) % c.count] }
    }

    /// Absolute temperatures against weights of scale 0.02: hard assignments (1e-12) to windows
    /// wider than the weights (1 and 1e3).
    static let taus = [1e-12, 1e-8, 1e-6, 1e-5, 1e-4, 1e-2, 1, 1e3]

    #if DEBUG
    static let count = 1_600
    #else
    static let count = 6_000
    #endif

    /// Key order, reversed and shuffled, every distribution and keying, 1 ... 8 bits.
    @Test(arguments: WindowedKernelTests.distributions, WindowedKernelTests.keyings)
    func windowsMatchTheDefinition(dist: String, keying: String) {
        let r = WindowedKernelTests.rows(.init(rawValue: dist)!, .init(rawValue: keying)!, count: Self.count, seed: 17)
        var rng = SplitMix64(seed: 23)
        let keyOrder = Array(r.valuesBuffer.array.prefix(r.rowCount & ~3))
        var shuffled = keyOrder
        for i in stride(from: shuffled.count - 1, to: 0, by: -1) { shuffled.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        for bits in [1, 2, 4, 8] {
            let c = Self.centroids(r, k: 1 << bits)
            for tau in Self.taus {
                let kernel = Self.kernel(bits: bits, tau: tau)
                for (order, values) in [("key order", keyOrder), ("reversed", Array(keyOrder.reversed())), ("shuffled", shuffled)] {
                    Self.check(kernel, values, c, "\(dist) \(keying) bits \(bits) tau \(tau) \(order)")
                }
            }
        }
    }

    /// The case the cursors are for: at the scale-free temperature the windows are narrow, so the
    /// window changes within the block and every search moves.
    @Test func narrowWindowsMove() {
        let r = WindowedKernelTests.rows(.llmLike, .f16, count: Self.count, seed: 5)
        let values = Array(r.valuesBuffer.array.prefix(r.rowCount & ~3))
        let c = Self.centroids(r, k: 16)
        let mean = Self.check(Self.kernel(bits: 4, tau: 2e-7), values, c, "narrow")
        #expect(mean < 6, "mean window \(mean): not the narrow case")
    }

    /// Keep-sparsity (exact zeros, -0.0 among them; D_0 constant for nonzero rows) with a small and
    /// a large zero threshold, in key and in random order.
    @Test(arguments: WindowedKernelTests.keyings)
    func keepSparsity(keying: String) {
        let r = KeepSparsityKernelTests.rows(.init(rawValue: keying)!, count: Self.count, seed: 9)
        let keyOrder = Array(r.valuesBuffer.array.prefix(r.rowCount & ~3))
        var rng = SplitMix64(seed: 3)
        var shuffled = keyOrder
        for i in stride(from: shuffled.count - 1, to: 0, by: -1) { shuffled.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        var c = CentroidInitialization.optimal1D(values: r.valuesBuffer.array, counts: r.countsBuffer.array, k: 8).map { Float($0) }
        CentroidInitialization.placeZeroFirst(&c, k: 8, d: 1)
        for tau in Self.taus {
            for z in [1e-7, 1e-3] {
                let kernel = Self.kernel(bits: 3, tau: tau, keepSparsity: true, zeroThreshold: z)
                #expect(kernel.keepSparsity)
                for (order, values) in [("key order", keyOrder), ("shuffled", shuffled)] {
                    Self.check(kernel, values, c.map(Double.init), "keep-sparsity \(keying) tau \(tau) z \(z) \(order)")
                }
            }
        }
    }

    /// A large prune bias (min D + cut tau < 0 for rows near centroid 0: no radius, only centroid 0),
    /// and centroids with equal values (ties broken by index; the right edge takes every equal one).
    @Test func pruneBiasAndDuplicates() {
        let r = WindowedKernelTests.rows(.gaussian, .f16, count: Self.count, seed: 4)
        let values = Array(r.valuesBuffer.array.prefix(r.rowCount & ~3))
        let c = [0.03, -0.05, -0.02, -0.01, 0, 0.01, 0.02, 0.05]
        for tau in [1e-8, 1e-5, 1e-3] {
            for prune in [2e-3, 1.0] {
                Self.check(Self.kernel(bits: 3, tau: tau, prune: prune), values, c, "prune \(prune) tau \(tau)")
            }
        }
        let duplicated = [0.01, -0.02, 0.01, 0.0, -0.02, 0.03, 0.01, 0.0]
        for tau in Self.taus {
            Self.check(Self.kernel(bits: 3, tau: tau), values, duplicated, "duplicates tau \(tau)")
            Self.check(Self.kernel(bits: 3, tau: tau), values.reversed(), duplicated, "duplicates reversed tau \(tau)")
        }
    }

    /// The hard k-means inertia (`DKMEngine.inertia`, which sets the scale-free temperature) searches
    /// each row's neighbours from the previous row's position: the same positions, so the same sum,
    /// bit for bit, as a binary search per row, summed in the engine's block order; rows in key
    /// order, reversed and shuffled, with +-0, rows beyond the outer centroids and duplicated centroids.
    @Test func hardInertiaMatchesBinarySearch() {
        var config = ClusteringConfig()
        config.bits = 4
        let engine = DKMEngine(config: config, pool: ThreadPool(threads: 3))
        var rng = SplitMix64(seed: 23)
        var c = (0..<16).map { _ in (rng.nextUnit() - 0.5) * 0.1 }
        c[5] = c[9]
        c[3] = 0
        var ascending = (0..<5_000).map { _ in (rng.nextUnit() - 0.5) * 0.12 }
        ascending += [0, -0.0, c[9], c[3], 1, -1]
        ascending.sort()
        var shuffled = ascending
        for i in stride(from: shuffled.count - 1, to: 0, by: -1) { shuffled.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        for (values, label) in [(ascending, "key order"), (Array(ascending.reversed()), "reversed"), (shuffled, "shuffled")] {
            let v = DoubleBuffer(zeros: values.count), n = DoubleBuffer(zeros: values.count)
            for m in values.indices { v[m] = values[m]; n[m] = Double(1 + rng.next() % 7) }
            let rows: [any RowBlocks] = [UniqueValueRows(valuesBuffer: v, countsBuffer: n)]
            let sorted = c.sorted()
            let blockRows = engine.blockRows(rows)
            var expected = 0.0
            sorted.withUnsafeBufferPointer { cb in
                for start in stride(from: 0, to: values.count, by: blockRows) {
                    var block = 0.0
                    for m in start..<min(values.count, start + blockRows) {
                        block += n[m] * DKMEngine.nearestSquaredDistance(values[m], sorted: cb)
                    }
                    expected += block
                }
            }
            let got = engine.inertia(rows, centroids: [c])[0]
            #expect(got.bitPattern == expected.bitPattern, "\(label): \(got) against \(expected)")
        }
    }

    /// The histogram form's value rows compute the same hard inertia in their pass over the rows
    /// (`Layer.histogramRows(_:keyType:pool:inertia:)`) as `DKMEngine.inertia` in its own pass:
    /// bit-identical, for f16 and bf16 keys, partitions of several blocks and of one, 1 and 3 threads.
    @Test(arguments: [ElementType.f16, .bf16])
    func histogramRowsInertiaMatchesTheEngine(keyType: ElementType) {
        var config = ClusteringConfig()
        config.bits = 4
        var rng = SplitMix64(seed: keyType == .f16 ? 31 : 37)
        // Distinct values over 16 binades (bf16 has 128 per binade and sign).
        let sizes = keyType == .f16 ? [3, 700, 2_500, 9_001] : [3, 700, 2_500]
        let hists = sizes.map { size -> KeyHistogram in
            var present = Set<UInt16>()
            while present.count < size {
                let value = Float((rng.nextUnit() - 0.5) * 0.2 * Double(sign: .plus, exponent: -Int(rng.next() % 16), significand: 1))
                let key = keyType == .f16 ? HalfConversion.floatToF16(value) : HalfConversion.floatToBF16(value)
                if ElementIO.keyValue(key, type: keyType).isFinite { present.insert(key) }
            }
            let keys = present.sorted()
            return KeyHistogram(keys: keys, counts: keys.map { _ in UInt32(1 + rng.next() % 9) })
        }
        let initial = sizes.map { _ in (0..<16).map { _ in (rng.nextUnit() - 0.5) * 0.15 } }
        for threads in [1, 3] {
            let pool = ThreadPool(threads: threads)
            let engine = DKMEngine(config: config, pool: pool)
            let (rows, fused) = Layer.histogramRows(hists, keyType: keyType, pool: pool, inertia: (engine, initial))
            let separate = engine.inertia(rows, centroids: initial)
            #expect(fused?.map(\.bitPattern) == separate.map(\.bitPattern), "\(keyType.name), \(threads) threads")
        }
    }
}
