import EDKMSupport

/// The AVX2 build of the windowed d = 1 passes (`Sources/EDKMSupport/window_kernels.c`), chosen at
/// run time: each `avx2*` call returns what its Swift pass of the same name returns, or nil when
/// the C build is not selected (no AVX2, not x86-64, `WindowKernelSelection.forceScalar`, or the
/// environment variable `EDKM_WINDOW_KERNELS=scalar`) and the Swift pass must run. Same rows in the
/// lanes, same operations in the same order, same exp and log: bit-identical results
/// (`Tests/EDKMSwiftTests/WindowKernelDispatchTests.swift`).
extension SoftKMeansKernel {
    /// The constants the C passes read.
    var windowParameters: edkm_window_params {
        edkm_window_params(k: k, tau: tau, zero_threshold: zeroThreshold, prune_threshold: pruneThreshold,
                           zero_distance: zeroDistance, keep_sparsity: keepSparsity ? 1 : 0,
                           ends: windowEnds?.pointer, ends_mode: windowEnds?.cMode ?? EDKM_WINDOW_ENDS_NONE)
    }

    func avx2Iterate(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                     _ c: UnsafePointer<Double>, _ acc: UnsafeMutablePointer<Double>) -> (Int, Double)? {
        var p = windowParameters
        var inertia = 0.0
        let rows = edkm_window_iterate(&p, values, counts, count, c, acc, &inertia)
        return rows < 0 ? nil : (rows, inertia)
    }

    func avx2Output(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                    _ cPrev: UnsafePointer<Double>, _ cLast: UnsafePointer<Double>,
                    _ f: UnsafeMutablePointer<Double>) -> (Int, Double)? {
        var p = windowParameters
        var entropy = 0.0
        let rows = edkm_window_output(&p, values, counts, count, cPrev, cLast, f, &entropy)
        return rows < 0 ? nil : (rows, entropy)
    }

    func avx2BackwardLast(_ values: UnsafePointer<Double>, _ G: UnsafePointer<Double>, _ count: Int,
                          _ cPrev: UnsafePointer<Double>, _ cLast: UnsafePointer<Double>,
                          _ last: UnsafeMutablePointer<Double>, _ acc: UnsafeMutablePointer<Double>) -> Int? {
        var p = windowParameters
        let rows = edkm_window_backward_last(&p, values, G, count, cPrev, cLast, last, acc)
        return rows < 0 ? nil : rows
    }

    func avx2BackwardIteration(_ values: UnsafePointer<Double>, _ counts: UnsafePointer<Double>?, _ count: Int,
                               _ ct: UnsafePointer<Double>, _ cn: UnsafePointer<Double>, _ pbar: UnsafePointer<Double>,
                               _ r: UnsafeMutablePointer<Double>, _ acc: UnsafeMutablePointer<Double>,
                               accumulate: Bool) -> Int? {
        var p = windowParameters
        let rows = edkm_window_backward_iteration(&p, values, counts, count, ct, cn, pbar, r, acc, accumulate ? 1 : 0)
        return rows < 0 ? nil : rows
    }
}

/// Which build of the windowed d = 1 passes runs (benchmarks and tests; not thread-safe: set it
/// while no layer is stepping).
public enum WindowKernelSelection {
    /// Whether this CPU has the AVX2 build and it is selected (false on a CPU without AVX2, off
    /// x86-64, with `forceScalar`, or with `EDKM_WINDOW_KERNELS=scalar` in the environment).
    public static var avx2Active: Bool { edkm_window_kernels_available() != 0 }

    /// true: the Swift passes run even where the AVX2 build could (same results, the SSE2 speed).
    nonisolated(unsafe) public static var forceScalar = false {
        didSet { edkm_window_kernels_force_scalar(forceScalar ? 1 : 0) }
    }

    /// false: the engine runs the full d = 1 passes on all k centroids instead of the windows
    /// (`DKMEngine.windowed`): the formulation the windows are measured against. Default true.
    nonisolated(unsafe) public static var windowed = true
}
