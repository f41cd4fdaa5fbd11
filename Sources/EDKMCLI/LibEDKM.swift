import CEDKM

/// Thin Swift owners of the C ABI handles (include/edkm.h): every call is checked, a failure
/// becomes a CLIError naming the call, the status and edkm_last_error().

func edkmCheck(_ status: edkm_status, _ what: @autoclosure () -> String) throws {
    guard status != EDKM_OK else { return }
    throw CLIError("\(what()): \(String(cString: edkm_status_name(status))): \(String(cString: edkm_last_error()))")
}

extension edkm_dtype {
    var name: String {
        switch self {
        case EDKM_DTYPE_F32: return "F32"
        case EDKM_DTYPE_F16: return "F16"
        case EDKM_DTYPE_BF16: return "BF16"
        default: return "dtype \(rawValue)"
        }
    }
}

final class EDKMRuntime {
    let handle: OpaquePointer

    init(savedMode: edkm_saved_mode = EDKM_SAVED_HISTOGRAM, threads: UInt32 = 0) throws {
        var cfg = edkm_runtime_config()
        edkm_runtime_config_init(&cfg)
        cfg.saved_mode = Int32(savedMode.rawValue)
        cfg.num_threads = threads
        var h: OpaquePointer? = nil
        try edkmCheck(edkm_runtime_create(&cfg, &h), "edkm_runtime_create")
        handle = h!
    }

    deinit { edkm_runtime_destroy(handle) }

    func stats() throws -> edkm_runtime_stats {
        var s = edkm_runtime_stats()
        s.struct_size = UInt32(MemoryLayout<edkm_runtime_stats>.size)
        try edkmCheck(edkm_runtime_get_stats(handle, &s), "edkm_runtime_get_stats")
        return s
    }

    func resetPeak() throws { try edkmCheck(edkm_runtime_reset_peak(handle), "edkm_runtime_reset_peak") }
}

final class EDKMLayer {
    let handle: OpaquePointer
    let runtime: EDKMRuntime
    let config: edkm_layer_config
    let count: Int

    static func defaultConfig() -> edkm_layer_config {
        var c = edkm_layer_config()
        edkm_layer_config_init(&c)
        return c
    }

    init(runtime: EDKMRuntime, shape: [Int], config: edkm_layer_config) throws {
        self.runtime = runtime
        self.config = config
        var c = config
        let s = shape.map { Int64($0) }
        var h: OpaquePointer? = nil
        try edkmCheck(edkm_layer_create(runtime.handle, &c, s, s.count, &h), "edkm_layer_create")
        handle = h!
        count = shape.reduce(1, *)
    }

    deinit { edkm_layer_destroy(handle) }

    func initCentroids(_ weights: UnsafeRawPointer, _ dtype: edkm_dtype) throws {
        try edkmCheck(edkm_layer_init_centroids(handle, weights, dtype, count), "edkm_layer_init_centroids")
    }

    func centroids() throws -> [Float] {
        var n = 0
        try edkmCheck(edkm_layer_centroid_count(handle, &n), "edkm_layer_centroid_count")
        var c = [Float](repeating: 0, count: n)
        try edkmCheck(edkm_layer_get_centroids(handle, &c, n), "edkm_layer_get_centroids")
        return c
    }

    func setCentroids(_ c: [Float]) throws {
        try edkmCheck(edkm_layer_set_centroids(handle, c, c.count), "edkm_layer_set_centroids")
    }

    func exportSizes() throws -> (lutCount: Int, packedBytes: Int) {
        var lut = 0, packed = 0
        try edkmCheck(edkm_layer_export_sizes(handle, &lut, &packed), "edkm_layer_export_sizes")
        return (lut, packed)
    }

    /// Writes the LUT (lutDtype F32 or F16) and the packed indices of a hard export.
    func export(_ weights: UnsafeRawPointer, _ dtype: edkm_dtype, lut: UnsafeMutableRawPointer, lutDtype: edkm_dtype,
                packed: UnsafeMutablePointer<UInt8>, packedBytes: Int) throws {
        try edkmCheck(edkm_layer_export(handle, weights, dtype, count, lut, lutDtype, packed, packedBytes), "edkm_layer_export")
    }

    func unpack(lut: UnsafeRawPointer, lutDtype: edkm_dtype, packed: UnsafePointer<UInt8>, packedBytes: Int,
                out: UnsafeMutableRawPointer, outDtype: edkm_dtype) throws {
        try edkmCheck(edkm_layer_unpack(handle, lut, lutDtype, packed, packedBytes, out, outDtype, count), "edkm_layer_unpack")
    }

    /// Training forward: writes w~ (outDtype) and returns the saved state (when `save`).
    func forward(_ weights: UnsafeRawPointer, _ dtype: edkm_dtype, out: UnsafeMutableRawPointer, outDtype: edkm_dtype,
                 save: Bool) throws -> EDKMSavedState? {
        var saved: OpaquePointer? = nil
        if save {
            try edkmCheck(edkm_layer_forward(handle, weights, dtype, count, out, outDtype, &saved), "edkm_layer_forward")
            return EDKMSavedState(handle: saved!, count: count)
        }
        try edkmCheck(edkm_layer_forward(handle, weights, dtype, count, out, outDtype, nil), "edkm_layer_forward")
        return nil
    }

    func stats() throws -> edkm_layer_stats {
        var s = edkm_layer_stats()
        s.struct_size = UInt32(MemoryLayout<edkm_layer_stats>.size)
        try edkmCheck(edkm_layer_get_stats(handle, &s), "edkm_layer_get_stats")
        return s
    }
}

final class EDKMSavedState {
    let handle: OpaquePointer
    let count: Int

    init(handle: OpaquePointer, count: Int) {
        self.handle = handle
        self.count = count
    }

    deinit { edkm_saved_state_destroy(handle) }

    func bytes() throws -> UInt64 {
        var b: UInt64 = 0
        try edkmCheck(edkm_saved_state_bytes(handle, &b), "edkm_saved_state_bytes")
        return b
    }

    /// dL/dw from dL/dw~; `weights` are the forward's.
    func backward(gradOutput: UnsafeRawPointer, gradInput: UnsafeMutableRawPointer, dtype: edkm_dtype,
                  weights: UnsafeRawPointer?) throws {
        try edkmCheck(edkm_saved_state_backward(handle, gradOutput, gradInput, dtype, count, weights),
                      "edkm_saved_state_backward")
    }
}

func edkmVersion() -> String { String(cString: edkm_version_string()) }
