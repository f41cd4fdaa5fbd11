import CEDKM

/// Thin owners of libedkm handles, used only through the C ABI (include/edkm.h). Every failed call
/// stops the benchmark with the library's message.

final class Runtime {
    let handle: OpaquePointer

    init(threads: UInt32 = 0, mode: edkm_saved_mode = EDKM_SAVED_HISTOGRAM, keepWeights: Bool = false,
         communicator: UnsafePointer<edkm_communicator>? = nil) {
        var cfg = edkm_runtime_config()
        edkm_runtime_config_init(&cfg)
        cfg.num_threads = threads
        cfg.saved_mode = Int32(mode.rawValue)
        cfg.keep_weights = keepWeights ? 1 : 0
        cfg.communicator = communicator
        var h: OpaquePointer? = nil
        check(edkm_runtime_create(&cfg, &h), "edkm_runtime_create")
        handle = h!
    }

    deinit { edkm_runtime_destroy(handle) }

    func stats() -> edkm_runtime_stats {
        var s = edkm_runtime_stats()
        s.struct_size = UInt32(MemoryLayout<edkm_runtime_stats>.size)
        check(edkm_runtime_get_stats(handle, &s), "edkm_runtime_get_stats")
        return s
    }

    func resetPeak() { check(edkm_runtime_reset_peak(handle), "edkm_runtime_reset_peak") }
}

/// One saved state (a forward awaiting its backward).
final class Saved {
    let handle: OpaquePointer
    init(_ h: OpaquePointer) { handle = h }
    deinit { edkm_saved_state_destroy(handle) }

    var bytes: UInt64 {
        var b: UInt64 = 0
        check(edkm_saved_state_bytes(handle, &b), "edkm_saved_state_bytes")
        return b
    }

    /// dL/dw into `gradIn` from dL/dw~ `gradOut` (count elements of dtype); weights handed back.
    func backward(_ gradOut: UnsafeRawPointer, _ gradIn: UnsafeMutableRawPointer, dtype: edkm_dtype, count: Int,
                  weights: UnsafeRawPointer?) {
        check(edkm_saved_state_backward(handle, gradOut, gradIn, dtype, count, weights), "edkm_saved_state_backward")
    }
}

final class Layer {
    let handle: OpaquePointer
    let runtime: Runtime
    let count: Int
    let config: edkm_layer_config

    /// A layer over a [rows, cols] weight tensor.
    init(_ runtime: Runtime, rows: Int, cols: Int, bits: Int, groupSize: Int = 0,
         algorithm: edkm_algorithm = EDKM_ALGORITHM_AUTO, epsilon: Double? = nil, scaleFreeTau: Double? = nil) {
        var cfg = edkm_layer_config()
        edkm_layer_config_init(&cfg)
        cfg.bits = UInt32(bits)
        cfg.group_size = UInt32(groupSize)
        cfg.algorithm = Int32(algorithm.rawValue)
        // coremltools' DKMPalettizer defaults (absolute tau 1e-4), so every comparison with it and
        // with the dense baseline runs the same arithmetic.
        // With `scaleFreeTau`: the library's default scale-free mode with that factor instead.
        if let scaleFreeTau {
            cfg.temperature_mode = Int32(EDKM_TEMPERATURE_SCALE_FREE.rawValue)
            cfg.tau = scaleFreeTau
        } else {
            cfg.temperature_mode = Int32(EDKM_TEMPERATURE_ABSOLUTE.rawValue)
            cfg.tau = 1e-4
        }
        if let epsilon { cfg.epsilon = epsilon }
        let shape: [Int64] = [Int64(rows), Int64(cols)]
        var h: OpaquePointer? = nil
        check(edkm_layer_create(runtime.handle, &cfg, shape, 2, &h), "edkm_layer_create \(rows)x\(cols)")
        handle = h!
        self.runtime = runtime
        count = rows * cols
        config = cfg
    }

    deinit { edkm_layer_destroy(handle) }

    func initCentroids(_ weights: UnsafeRawPointer, dtype: edkm_dtype) {
        check(edkm_layer_init_centroids(handle, weights, dtype, count), "edkm_layer_init_centroids")
    }

    var centroids: [Float] {
        get {
            var n = 0
            check(edkm_layer_centroid_count(handle, &n), "edkm_layer_centroid_count")
            var c = [Float](repeating: 0, count: n)
            check(edkm_layer_get_centroids(handle, &c, n), "edkm_layer_get_centroids")
            return c
        }
        set { check(edkm_layer_set_centroids(handle, newValue, newValue.count), "edkm_layer_set_centroids") }
    }

    /// Training forward: w~ into `out` (same dtype as the weights); returns the saved state when `save`.
    @discardableResult
    func forward(_ weights: UnsafeRawPointer, dtype: edkm_dtype, out: UnsafeMutableRawPointer, save: Bool = true) -> Saved? {
        var s: OpaquePointer? = nil
        if save {
            check(edkm_layer_forward(handle, weights, dtype, count, out, dtype, &s), "edkm_layer_forward")
            return Saved(s!)
        }
        check(edkm_layer_forward(handle, weights, dtype, count, out, dtype, nil), "edkm_layer_forward")
        return nil
    }

    func stats() -> edkm_layer_stats {
        var s = edkm_layer_stats()
        s.struct_size = UInt32(MemoryLayout<edkm_layer_stats>.size)
        check(edkm_layer_get_stats(handle, &s), "edkm_layer_get_stats")
        return s
    }
}

/// A 64-byte aligned, zero-filled (so every page is touched) byte buffer.
final class Buffer {
    let pointer: UnsafeMutableRawPointer
    let bytes: Int
    init(bytes: Int) {
        self.bytes = bytes
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: max(bytes, 1))
    }
    convenience init(_ values: [UInt16]) {
        self.init(bytes: values.count * 2)
        values.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
    deinit { pointer.deallocate() }
    var fingerprint: UInt64 { EDKMBench.fingerprint(pointer, bytes: bytes) }
}
