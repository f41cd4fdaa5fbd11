import CEDKM

/// Owns one edkm_layer: the centroids and the configuration of one weight tensor of `shape`
/// (`count` = the product of the shape). Keeps its runtime alive.
public final class EDKMLayer {
    public let handle: OpaquePointer
    public let runtime: EDKMRuntime
    public let config: edkm_layer_config
    public let count: Int

    /// edkm_layer_config_init's defaults (the library's).
    public static func defaultConfig() -> edkm_layer_config {
        var c = edkm_layer_config()
        edkm_layer_config_init(&c)
        return c
    }

    public init(runtime: EDKMRuntime, shape: [Int], config: edkm_layer_config) throws {
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

    /// edkm_layer_init_centroids from `count` weights of `dtype`.
    public func initCentroids(_ weights: UnsafeRawPointer, _ dtype: edkm_dtype) throws {
        try edkmCheck(edkm_layer_init_centroids(handle, weights, dtype, count), "edkm_layer_init_centroids")
    }

    /// The centroids (k x cluster_dim floats, per group).
    public func centroids() throws -> [Float] {
        var n = 0
        try edkmCheck(edkm_layer_centroid_count(handle, &n), "edkm_layer_centroid_count")
        var c = [Float](repeating: 0, count: n)
        try edkmCheck(edkm_layer_get_centroids(handle, &c, n), "edkm_layer_get_centroids")
        return c
    }

    public func setCentroids(_ c: [Float]) throws {
        try edkmCheck(edkm_layer_set_centroids(handle, c, c.count), "edkm_layer_set_centroids")
    }

    /// The LUT's entry count and the packed indices' byte count of a hard export.
    public func exportSizes() throws -> (lutCount: Int, packedBytes: Int) {
        var lut = 0, packed = 0
        try edkmCheck(edkm_layer_export_sizes(handle, &lut, &packed), "edkm_layer_export_sizes")
        return (lut, packed)
    }

    /// Writes the LUT (lutCount entries of lutDtype, F32 or F16) and the packed indices of a hard export.
    public func export(_ weights: UnsafeRawPointer, _ dtype: edkm_dtype, lut: UnsafeMutableRawPointer, lutDtype: edkm_dtype,
                       lutCount: Int, packed: UnsafeMutablePointer<UInt8>, packedBytes: Int) throws {
        try edkmCheck(edkm_layer_export_sized(handle, weights, dtype, count, lut, lutDtype, lutCount, packed, packedBytes),
                      "edkm_layer_export_sized")
    }

    /// Weights (outDtype) from a LUT (lutCount entries of lutDtype) and packed indices.
    public func unpack(lut: UnsafeRawPointer, lutDtype: edkm_dtype, lutCount: Int, packed: UnsafePointer<UInt8>, packedBytes: Int,
                       out: UnsafeMutableRawPointer, outDtype: edkm_dtype) throws {
        try edkmCheck(edkm_layer_unpack_sized(handle, lut, lutDtype, lutCount, packed, packedBytes, out, outDtype, count),
                      "edkm_layer_unpack_sized")
    }

    /// Training forward: writes w~ (outDtype) and returns the saved state (when `save`).
    @discardableResult
    public func forward(_ weights: UnsafeRawPointer, _ dtype: edkm_dtype, out: UnsafeMutableRawPointer, outDtype: edkm_dtype,
                        save: Bool) throws -> EDKMSavedState? {
        var saved: OpaquePointer? = nil
        if save {
            try edkmCheck(edkm_layer_forward(handle, weights, dtype, count, out, outDtype, &saved), "edkm_layer_forward")
            return EDKMSavedState(handle: saved!, count: count)
        }
        try edkmCheck(edkm_layer_forward(handle, weights, dtype, count, out, outDtype, nil), "edkm_layer_forward")
        return nil
    }

    /// The channel scale factors, one per row (`rows` = shape[0]; edkm_layer_get_channel_scale): fixed
    /// from the first weights the layer saw, or set by setChannelScale. Throws for a layer without a
    /// channel scale, or before the factors are fixed.
    public func channelScale(rows: Int) throws -> [Float] {
        var s = [Float](repeating: 0, count: rows)
        try edkmCheck(edkm_layer_get_channel_scale(handle, &s, rows), "edkm_layer_get_channel_scale")
        return s
    }

    /// edkm_layer_get_stats (iterations, distinct values, ... of the last forward).
    public func stats() throws -> edkm_layer_stats {
        var s = edkm_layer_stats()
        s.struct_size = UInt32(MemoryLayout<edkm_layer_stats>.size)
        try edkmCheck(edkm_layer_get_stats(handle, &s), "edkm_layer_get_stats")
        return s
    }
}
