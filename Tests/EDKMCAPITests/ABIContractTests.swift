import CEDKM
import Testing

/// Version, status names, config structs, handles and every null/invalid-argument path.
@Suite struct ABIContractTests {
    @Test func versionMatchesHeader() {
        #expect(edkm_version_number() == UInt32(EDKM_VERSION_MAJOR * 10000 + EDKM_VERSION_MINOR * 100 + EDKM_VERSION_PATCH))
        #expect(String(cString: edkm_version_string()) == "\(EDKM_VERSION_MAJOR).\(EDKM_VERSION_MINOR).\(EDKM_VERSION_PATCH)")
    }

    @Test func statusNames() {
        #expect(String(cString: edkm_status_name(EDKM_OK)) == "EDKM_OK")
        #expect(String(cString: edkm_status_name(EDKM_ERR_BUDGET_EXCEEDED)) == "EDKM_ERR_BUDGET_EXCEEDED")
        #expect(String(cString: edkm_status_name(edkm_status(rawValue: 77))) == "EDKM_UNKNOWN_STATUS")
    }

    @Test func configDefaults() {
        var c = edkm_layer_config()
        edkm_layer_config_init(&c)
        #expect(c.struct_size == UInt32(MemoryLayout<edkm_layer_config>.size))
        #expect(c.bits == 4 && c.cluster_dim == 1 && c.max_iterations == 3 && c.group_size == 0)
        // the temperature thresholds are unset (NaN): the layer takes its mode's defaults
        #expect(c.tau.isNaN && c.epsilon.isNaN && c.zero_threshold == 1e-7 && c.prune_threshold.isNaN)
        #expect(c.temperature_mode == Int32(EDKM_TEMPERATURE_SCALE_FREE.rawValue))
        var r = edkm_runtime_config()
        edkm_runtime_config_init(&r)
        #expect(r.struct_size == UInt32(MemoryLayout<edkm_runtime_config>.size) && r.saved_mode == 0 && r.budget_bytes == 0)
        edkm_layer_config_init(nil)  // no crash
        edkm_runtime_config_init(nil)
    }

    @Test func structSizeChecked() {
        var r = edkm_runtime_config()
        edkm_runtime_config_init(&r)
        var rt: OpaquePointer? = nil
        r.struct_size = 0
        #expect(edkm_runtime_create(&r, &rt) == EDKM_ERR_STRUCT_SIZE)
        r.struct_size = UInt32(MemoryLayout<edkm_runtime_config>.size + 8)
        #expect(edkm_runtime_create(&r, &rt) == EDKM_ERR_STRUCT_SIZE)
        #expect(lastError().contains("struct_size"))
        #expect(rt == nil)
        // An older, shorter struct: the unseen fields take defaults.
        r.struct_size = 8
        r.budget_bytes = 12345
        #expect(edkm_runtime_create(&r, &rt) == EDKM_OK)
        #expect(stats(rt!).budget_bytes == 0)
        edkm_runtime_destroy(rt)
        let rt2 = makeRuntime()
        var c = layerConfig()
        c.struct_size = 0
        var layer: OpaquePointer? = nil
        #expect(edkm_layer_create(rt2, &c, [16, 16], 2, &layer) == EDKM_ERR_STRUCT_SIZE)
        var s = edkm_runtime_stats()
        s.struct_size = 0
        #expect(edkm_runtime_get_stats(rt2, &s) == EDKM_ERR_STRUCT_SIZE)
        edkm_runtime_destroy(rt2)
    }

    /// A struct_size that ends inside a field (here half of the communicator pointer, or of tau) is
    /// rejected, never read in part; sizes 1...3 too. Every field boundary is accepted.
    @Test func structSizeMustEndOnAFieldBoundary() {
        var r = edkm_runtime_config()
        edkm_runtime_config_init(&r)
        var comm = edkm_communicator()  // zeroed: a pointer read in part would be garbage
        withUnsafePointer(to: &comm) { cp in
            r.communicator = cp
            var rt: OpaquePointer? = nil
            let commOffset = MemoryLayout<edkm_runtime_config>.offset(of: \.communicator)!
            for size in [1, 2, 3, commOffset + 4, commOffset + 1] {
                r.struct_size = UInt32(size)
                #expect(edkm_runtime_create(&r, &rt) == EDKM_ERR_STRUCT_SIZE, "struct_size \(size)")
                #expect(rt == nil)
            }
            r.struct_size = UInt32(commOffset)  // ends before the communicator: the default (none)
            #expect(edkm_runtime_create(&r, &rt) == EDKM_OK)
            edkm_runtime_destroy(rt)
        }
        let rt = makeRuntime()
        var c = layerConfig()
        var layer: OpaquePointer? = nil
        c.struct_size = UInt32(MemoryLayout<edkm_layer_config>.offset(of: \.tau)! + 4)
        #expect(edkm_layer_create(rt, &c, [16, 16], 2, &layer) == EDKM_ERR_STRUCT_SIZE)
        let fields: [PartialKeyPath<edkm_layer_config>] = [\.bits, \.cluster_dim, \.group_size, \.max_iterations, \.`init`,
            \.tau, \.epsilon, \.zero_threshold, \.prune_threshold, \.algorithm, \.f32_key_dtype, \.seed, \.temperature_mode, \.reserved,
            \.enforce_zero, \.lut_dtype, \.channel_scale]
        for size in fields.map({ MemoryLayout<edkm_layer_config>.offset(of: $0)! }) + [MemoryLayout<edkm_layer_config>.size] {
            c.struct_size = UInt32(size)
            #expect(edkm_layer_create(rt, &c, [16, 16], 2, &layer) == EDKM_OK, "struct_size \(size)")
            edkm_layer_destroy(layer)
            layer = nil
        }
        var s = edkm_layer_stats()
        c = layerConfig()
        #expect(edkm_layer_create(rt, &c, [16, 16], 2, &layer) == EDKM_OK)
        s.struct_size = UInt32(MemoryLayout<edkm_layer_stats>.offset(of: \.inertia)! + 2)
        #expect(edkm_layer_get_stats(layer, &s) == EDKM_ERR_STRUCT_SIZE)
        edkm_layer_destroy(layer)
        edkm_runtime_destroy(rt)
    }

    /// A destroyed handle stays invalid even when a new object of the same kind is created (and may
    /// sit at the same address): handles are never reused.
    @Test func destroyedHandlesAreNeverReused() {
        var seen = Set<UInt>()
        for _ in 0..<200 {
            var rt: OpaquePointer? = nil
            #expect(edkm_runtime_create(nil, &rt) == EDKM_OK)
            let old = rt!
            #expect(seen.insert(UInt(bitPattern: UnsafeRawPointer(old))).inserted)
            edkm_runtime_destroy(old)
            var fresh: OpaquePointer? = nil
            #expect(edkm_runtime_create(nil, &fresh) == EDKM_OK)
            #expect(edkm_runtime_set_budget(old, 1) == EDKM_ERR_INVALID_HANDLE)
            #expect(edkm_runtime_set_budget(fresh, 0) == EDKM_OK)
            edkm_runtime_destroy(old)  // a stale destroy must not free the new runtime
            #expect(edkm_runtime_set_budget(fresh, 0) == EDKM_OK)
            #expect(seen.insert(UInt(bitPattern: UnsafeRawPointer(fresh!))).inserted)
            edkm_runtime_destroy(fresh)
        }
    }

    @Test func nullPointers() {
        #expect(edkm_runtime_create(nil, nil) == EDKM_ERR_NULL_POINTER)
        let rt = makeRuntime()
        var layer: OpaquePointer? = nil
        var c = layerConfig()
        #expect(edkm_layer_create(nil, &c, [4, 4], 2, &layer) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_layer_create(rt, &c, nil, 2, &layer) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_layer_create(rt, &c, [4, 4], 2, nil) == EDKM_ERR_NULL_POINTER)
        let l = makeLayer(rt, [8, 8], layerConfig(bits: 2))
        var out = [Float](repeating: 0, count: 64)
        let w = [Float](repeating: 0.5, count: 64)
        #expect(edkm_layer_forward(l, nil, EDKM_DTYPE_F32, 64, &out, EDKM_DTYPE_F32, nil) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_layer_forward(l, w, EDKM_DTYPE_F32, 64, nil, EDKM_DTYPE_F32, nil) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_saved_state_backward(nil, w, &out, EDKM_DTYPE_F32, 64, nil) == EDKM_ERR_NULL_POINTER)
        var n = 0
        #expect(edkm_layer_centroid_count(l, nil) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_layer_centroid_count(nil, &n) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_runtime_get_stats(rt, nil) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_layer_get_stats(l, nil) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_saved_state_bytes(nil, nil) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_layer_export_sizes(l, nil, &n) == EDKM_ERR_NULL_POINTER)
        edkm_layer_destroy(nil)
        edkm_runtime_destroy(nil)
        edkm_saved_state_destroy(nil)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    @Test func destroyedAndForeignHandles() {
        let rt = makeRuntime()
        let l = makeLayer(rt, [8, 8], layerConfig(bits: 2))
        edkm_layer_destroy(l)
        edkm_layer_destroy(l)  // twice: guarded, a no-op
        var n = 0
        #expect(edkm_layer_centroid_count(l, &n) == EDKM_ERR_INVALID_HANDLE)
        // A runtime handle used as a layer.
        #expect(edkm_layer_centroid_count(rt, &n) == EDKM_ERR_INVALID_HANDLE)
        edkm_runtime_destroy(rt)
        #expect(edkm_runtime_set_budget(rt, 1) == EDKM_ERR_INVALID_HANDLE)
        var bogus = 42
        withUnsafeMutablePointer(to: &bogus) { p in
            #expect(edkm_runtime_reset_peak(OpaquePointer(p)) == EDKM_ERR_INVALID_HANDLE)
        }
    }

    @Test(arguments: [UInt32(0), 9, 100])
    func bitsOutOfRange(bits: UInt32) {
        let rt = makeRuntime()
        var c = layerConfig(bits: bits)
        var layer: OpaquePointer? = nil
        #expect(edkm_layer_create(rt, &c, [16, 16], 2, &layer) == EDKM_ERR_INVALID_ARGUMENT)
        #expect(lastError().contains("bits"))
        #expect(layer == nil)
        edkm_runtime_destroy(rt)
    }

    @Test func badConfigsAndShapes() {
        let rt = makeRuntime()
        var layer: OpaquePointer? = nil
        var c = layerConfig()
        c.tau = 0
        #expect(edkm_layer_create(rt, &c, [16, 16], 2, &layer) == EDKM_ERR_INVALID_ARGUMENT)
        c = layerConfig()
        c.tau = .infinity  // (NaN is "unset": the mode's default)
        #expect(edkm_layer_create(rt, &c, [16, 16], 2, &layer) == EDKM_ERR_INVALID_ARGUMENT)
        c = layerConfig(group: 5)
        #expect(edkm_layer_create(rt, &c, [16, 16], 2, &layer) == EDKM_ERR_SHAPE)  // 5 does not divide 16
        c = layerConfig(bits: 8)
        #expect(edkm_layer_create(rt, &c, [4, 4], 2, &layer) == EDKM_ERR_SHAPE)  // 16 weights < 256 centroids
        c = layerConfig(d: 3)
        #expect(edkm_layer_create(rt, &c, [4, 8], 2, &layer) == EDKM_ERR_SHAPE)  // 3 does not divide 8
        c = layerConfig()
        #expect(edkm_layer_create(rt, &c, [0, 8], 2, &layer) == EDKM_ERR_SHAPE)
        #expect(edkm_layer_create(rt, &c, [8, 8], 0, &layer) == EDKM_ERR_SHAPE)
        c.`init` = 7
        #expect(edkm_layer_create(rt, &c, [8, 8], 2, &layer) == EDKM_ERR_INVALID_ARGUMENT)
        for mode: Int32 in [2, -1, 1 << 30] {  // not an edkm_temperature_mode
            c = layerConfig()
            c.temperature_mode = mode
            #expect(edkm_layer_create(rt, &c, [8, 8], 2, &layer) == EDKM_ERR_INVALID_ARGUMENT)
            #expect(lastError().contains("temperature"))
        }
        #expect(layer == nil)
        c = layerConfig(d: 2, algorithm: EDKM_ALGORITHM_UNIQUIFIED)
        #expect(edkm_layer_create(rt, &c, [8, 8], 2, &layer) == EDKM_ERR_INVALID_ARGUMENT)
        var r = edkm_runtime_config()
        edkm_runtime_config_init(&r)
        r.saved_mode = 17
        var rt2: OpaquePointer? = nil
        #expect(edkm_runtime_create(&r, &rt2) == EDKM_ERR_INVALID_ARGUMENT)
        #expect(layer == nil && rt2 == nil)
        edkm_runtime_destroy(rt)
    }
}
