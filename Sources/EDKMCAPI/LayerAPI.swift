import CEDKM
import EDKMSwift

/// The C form of a config. Thresholds not given (nil) are written as NaN, the ABI's "unset";
/// `resolved` writes what the layer reads instead (the mode's defaults filled in).
func cLayerConfig(_ d: ClusteringConfig, resolved: Bool) -> edkm_layer_config {
    let tau = resolved ? d.tau : d.givenTau ?? .nan
    let epsilon = resolved ? d.epsilon : d.givenEpsilon ?? .nan
    let prune = resolved ? d.pruneThreshold : d.givenPruneThreshold ?? .nan
    return edkm_layer_config(
        struct_size: UInt32(MemoryLayout<edkm_layer_config>.size), bits: UInt32(d.bits), cluster_dim: UInt32(d.clusterDim),
        group_size: UInt32(d.groupSize), max_iterations: UInt32(d.maxIterations), init: d.initialization.rawValue,
        tau: tau, epsilon: epsilon, zero_threshold: d.zeroThreshold, prune_threshold: prune,
        algorithm: d.algorithm.rawValue, f32_key_dtype: d.f32KeyType.rawValue, seed: d.seed,
        temperature_mode: d.temperatureMode.rawValue, reserved: 0,
        enforce_zero: d.enforceZero ? 1 : 0, lut_dtype: d.lutType.rawValue, channel_scale: d.channelScale.rawValue)
}

/// What edkm_layer_config_init writes: the thresholds unset (NaN), so they follow the mode.
func defaultLayerConfig() -> edkm_layer_config { cLayerConfig(ClusteringConfig(), resolved: false) }

/// A threshold field of edkm_layer_config: NaN = unset (the mode's default); anything else is
/// the value (checked by ClusteringConfig.validate).
private func given(_ value: Double) -> Double? { value.isNaN ? nil : value }

func clusteringConfig(_ c: edkm_layer_config) throws(EDKMError) -> ClusteringConfig {
    guard c.reserved == 0 else { throw EDKMError(.invalidArgument, "edkm_layer_config.reserved must be 0, got \(c.reserved)") }
    var config = ClusteringConfig()
    config.bits = Int(c.bits)
    config.clusterDim = Int(c.cluster_dim)
    config.groupSize = Int(c.group_size)
    config.maxIterations = Int(c.max_iterations)
    guard let initialization = ClusteringConfig.Initialization(rawValue: c.`init`) else {
        throw EDKMError(.invalidArgument, "init \(c.`init`) is not an edkm_init (0...2)")
    }
    config.initialization = initialization
    config.givenTau = given(c.tau)
    config.givenEpsilon = given(c.epsilon)
    config.zeroThreshold = c.zero_threshold
    config.givenPruneThreshold = given(c.prune_threshold)
    guard let algorithm = ClusteringConfig.Algorithm(rawValue: c.algorithm) else {
        throw EDKMError(.invalidArgument, "algorithm \(c.algorithm) is not an edkm_algorithm (0...2)")
    }
    config.algorithm = algorithm
    guard let key = ElementType(rawValue: c.f32_key_dtype) else {
        throw EDKMError(.dtype, "f32_key_dtype \(c.f32_key_dtype) is not an edkm_dtype")
    }
    config.f32KeyType = key
    config.seed = c.seed
    guard let mode = ClusteringConfig.TemperatureMode(rawValue: c.temperature_mode) else {
        throw EDKMError(.invalidArgument, "temperature_mode \(c.temperature_mode) is not an edkm_temperature_mode (0...1)")
    }
    config.temperatureMode = mode
    guard c.enforce_zero <= 1 else { throw EDKMError(.invalidArgument, "enforce_zero must be 0 or 1, got \(c.enforce_zero)") }
    guard let lutType = ClusteringConfig.LUTType(rawValue: c.lut_dtype) else {
        throw EDKMError(.invalidArgument, "lut_dtype \(c.lut_dtype) is not an edkm_lut_dtype (0...2)")
    }
    config.lutType = lutType
    guard let channelScale = ClusteringConfig.ChannelScale(rawValue: c.channel_scale) else {
        throw EDKMError(.invalidArgument, "channel_scale \(c.channel_scale) is not an edkm_channel_scale (0...2)")
    }
    config.channelScale = channelScale
    config.enforceZero = c.enforce_zero == 1
    try config.validate()
    return config
}

@c @implementation
public func edkm_layer_config_init(_ cfg: UnsafeMutablePointer<edkm_layer_config>!) {
    cfg?.pointee = defaultLayerConfig()
}

@c @implementation
public func edkm_layer_create(_ runtime: OpaquePointer!, _ cfg: UnsafePointer<edkm_layer_config>!,
                              _ shape: UnsafePointer<Int64>!, _ ndim: Int, _ out: UnsafeMutablePointer<OpaquePointer?>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let rt = try HandleRegistry.object(runtime, .runtime, as: Runtime.self, name: "runtime")
        let out = try require(out, "out")
        let shape = try require(shape, "shape")
        guard ndim >= 1 && ndim <= 16 else { throw EDKMError(.shape, "ndim must be in 1...16, got \(sizeText(ndim))") }
        var extents: [Int] = []
        var elements = 1
        for i in 0..<ndim {
            guard shape[i] >= 1 else { throw EDKMError(.shape, "shape[\(i)] must be >= 1, got \(shape[i])") }
            let (product, overflow) = elements.multipliedReportingOverflow(by: Int(shape[i]))
            guard !overflow && product <= Int(Int32.max) * 256 else {
                throw EDKMError(.shape, "the element count of the shape (product of its extents, through shape[\(i)] = \(shape[i])) \(overflow ? "overflows 64 bits" : "is \(product)"); a tensor holds at most \(Int(Int32.max) * 256) elements")
            }
            elements = product
            extents.append(Int(shape[i]))
        }
        let raw = try cfg.map { (p) throws(EDKMError) in try readSized(p, defaults: defaultLayerConfig(), name: "edkm_layer_config") }
            ?? defaultLayerConfig()
        let layer = try Layer(runtime: rt, config: try clusteringConfig(raw), shape: extents)
        out.pointee = HandleRegistry.register(layer, .layer)
    }
}

@c @implementation
public func edkm_layer_destroy(_ layer: OpaquePointer!) {
    HandleRegistry.release(layer, .layer)
}

func layerObject(_ h: OpaquePointer?) throws(EDKMError) -> Layer {
    try HandleRegistry.object(h, .layer, as: Layer.self, name: "layer")
}

@c @implementation
public func edkm_layer_centroid_count(_ layer: OpaquePointer!, _ count: UnsafeMutablePointer<Int>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        try require(count, "count").pointee = l.centroidCount
    }
}

@c @implementation
public func edkm_layer_get_centroids(_ layer: OpaquePointer!, _ out: UnsafeMutablePointer<Float>!, _ count: Int) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        try copyOut(out, count, expected: l.centroidCount, what: "centroid values") { () throws(EDKMError) in try l.getCentroids() }
    }
}

/// Copies a layer's floats to the caller's out[count] (count checked against `expected` first).
private func copyOut(_ out: UnsafeMutablePointer<Float>?, _ count: Int, expected: Int, what: String,
                     _ values: () throws(EDKMError) -> [Float]) throws(EDKMError) {
    let out = try require(out, "out")
    guard count == expected else { throw EDKMError(.shape, "expected room for \(expected) \(what), got \(sizeText(count))") }
    let v = try values()
    out.update(from: v, count: v.count)
}

/// The caller's input[count] as a buffer, count checked against `expected` before it is formed
/// (count comes from size_t).
private func callerFloats(_ input: UnsafePointer<Float>?, _ name: String, _ count: Int, expected: Int,
                          what: String) throws(EDKMError) -> UnsafeBufferPointer<Float> {
    let p = try require(input, name)
    guard count == expected else { throw EDKMError(.shape, "expected \(expected) \(what), got \(UInt(bitPattern: count))") }
    return UnsafeBufferPointer(start: p, count: count)
}

@c @implementation
public func edkm_layer_set_centroids(_ layer: OpaquePointer!, _ centroids: UnsafePointer<Float>!, _ count: Int) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        try l.setCentroids(try callerFloats(centroids, "centroids", count, expected: l.centroidCount,
                                            what: "centroid values (partitions x k x d)"))
    }
}

@c @implementation
public func edkm_layer_get_channel_scale(_ layer: OpaquePointer!, _ out: UnsafeMutablePointer<Float>!, _ count: Int) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        try copyOut(out, count, expected: l.geometry.rows, what: "channel scale factors (shape[0])") { () throws(EDKMError) in
            try l.getChannelScale()
        }
    }
}

@c @implementation
public func edkm_layer_set_channel_scale(_ layer: OpaquePointer!, _ scale: UnsafePointer<Float>!, _ count: Int) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        try l.setChannelScale(try callerFloats(scale, "scale", count, expected: l.geometry.rows,
                                               what: "channel scale factors (shape[0])"))
    }
}

@c @implementation
public func edkm_layer_init_centroids(_ layer: OpaquePointer!, _ weights: UnsafeRawPointer!, _ dtype: edkm_dtype,
                                      _ count: Int) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        let w = try require(weights, "weights")
        try l.initializeCentroids(weights: w, type: try elementType(dtype, "dtype"), count: count)
    }
}

@c @implementation
public func edkm_layer_forward(_ layer: OpaquePointer!, _ weights: UnsafeRawPointer!, _ dtype: edkm_dtype, _ count: Int,
                               _ out: UnsafeMutableRawPointer!, _ out_dtype: edkm_dtype,
                               _ saved: UnsafeMutablePointer<OpaquePointer?>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        let w = try require(weights, "weights")
        let o = try require(out, "out")
        let state = try l.forward(weights: w, type: try elementType(dtype, "dtype"), count: count, output: o,
                                  outputType: try elementType(out_dtype, "out_dtype"), save: saved != nil)
        if let saved, let state { saved.pointee = HandleRegistry.register(state, .savedState) }
    }
}

@c @implementation
public func edkm_layer_forward_shard(_ layer: OpaquePointer!, _ weights: UnsafeRawPointer!, _ dtype: edkm_dtype,
                                     _ offset: Int, _ count: Int, _ out: UnsafeMutableRawPointer!, _ out_dtype: edkm_dtype,
                                     _ saved: UnsafeMutablePointer<OpaquePointer?>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        let w = try require(weights, "weights")
        let o = try require(out, "out")
        let state = try l.forwardShard(weights: w, type: try elementType(dtype, "dtype"), offset: offset, count: count,
                                       output: o, outputType: try elementType(out_dtype, "out_dtype"), save: saved != nil)
        if let saved, let state { saved.pointee = HandleRegistry.register(state, .savedState) }
    }
}

@c @implementation
public func edkm_layer_get_config(_ layer: OpaquePointer!, _ out: UnsafeMutablePointer<edkm_layer_config>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        try writeSized(cLayerConfig(l.config, resolved: true), to: try require(out, "out"), name: "edkm_layer_config")
    }
}

@c @implementation
public func edkm_layer_get_stats(_ layer: OpaquePointer!, _ out: UnsafeMutablePointer<edkm_layer_stats>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        let out = try require(out, "out")
        let s = try l.statistics
        let value = edkm_layer_stats(struct_size: UInt32(MemoryLayout<edkm_layer_stats>.size), iterations: UInt32(s.iterations),
                                     forwards: s.forwards, distinct_values: UInt64(s.distinctValues),
                                     algorithm: s.algorithm.rawValue, reserved: 0, inertia: s.inertia,
                                     effective_tau: s.effectiveTau, attention_entropy: s.attentionEntropy)
        try writeSized(value, to: out, name: "edkm_layer_stats")
    }
}

@c @implementation
public func edkm_layer_export_sizes(_ layer: OpaquePointer!, _ lut_count: UnsafeMutablePointer<Int>!,
                                    _ packed_bytes: UnsafeMutablePointer<Int>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        let lc = try require(lut_count, "lut_count"), pb = try require(packed_bytes, "packed_bytes")
        let sizes = l.exportSizes
        lc.pointee = sizes.lutCount
        pb.pointee = sizes.packedBytes
    }
}

@c @implementation
public func edkm_layer_export(_ layer: OpaquePointer!, _ weights: UnsafeRawPointer!, _ dtype: edkm_dtype, _ count: Int,
                              _ lut: UnsafeMutableRawPointer!, _ lut_dtype: edkm_dtype,
                              _ packed: UnsafeMutablePointer<UInt8>!, _ packed_bytes: Int) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        try l.exportPalette(weights: try require(weights, "weights"), type: try elementType(dtype, "dtype"), count: count,
                            lut: try require(lut, "lut"), lutType: try elementType(lut_dtype, "lut_dtype"),
                            packed: try require(packed, "packed"), packedBytes: packed_bytes)
    }
}

@c @implementation
public func edkm_layer_unpack(_ layer: OpaquePointer!, _ lut: UnsafeRawPointer!, _ lut_dtype: edkm_dtype,
                              _ packed: UnsafePointer<UInt8>!, _ packed_bytes: Int,
                              _ out: UnsafeMutableRawPointer!, _ out_dtype: edkm_dtype, _ count: Int) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        try l.unpack(lut: try require(lut, "lut"), lutType: try elementType(lut_dtype, "lut_dtype"),
                     packed: try require(packed, "packed"), packedBytes: packed_bytes,
                     output: try require(out, "out"), outputType: try elementType(out_dtype, "out_dtype"), count: count)
    }
}

@c @implementation
public func edkm_layer_export_sized(_ layer: OpaquePointer!, _ weights: UnsafeRawPointer!, _ dtype: edkm_dtype, _ count: Int,
                                    _ lut: UnsafeMutableRawPointer!, _ lut_dtype: edkm_dtype, _ lut_count: Int,
                                    _ packed: UnsafeMutablePointer<UInt8>!, _ packed_bytes: Int) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        try l.exportPalette(weights: try require(weights, "weights"), type: try elementType(dtype, "dtype"), count: count,
                            lut: try require(lut, "lut"), lutType: try elementType(lut_dtype, "lut_dtype"), lutCount: lut_count,
                            packed: try require(packed, "packed"), packedBytes: packed_bytes)
    }
}

@c @implementation
public func edkm_layer_unpack_sized(_ layer: OpaquePointer!, _ lut: UnsafeRawPointer!, _ lut_dtype: edkm_dtype, _ lut_count: Int,
                                    _ packed: UnsafePointer<UInt8>!, _ packed_bytes: Int,
                                    _ out: UnsafeMutableRawPointer!, _ out_dtype: edkm_dtype, _ count: Int) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        try l.unpack(lut: try require(lut, "lut"), lutType: try elementType(lut_dtype, "lut_dtype"), lutCount: lut_count,
                     packed: try require(packed, "packed"), packedBytes: packed_bytes,
                     output: try require(out, "out"), outputType: try elementType(out_dtype, "out_dtype"), count: count)
    }
}
