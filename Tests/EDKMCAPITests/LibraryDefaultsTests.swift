import CEDKM
import Glibc
import Testing

/// The library owns the defaults: edkm_layer_config_init leaves the temperature thresholds unset
/// (NaN) and the layer resolves them from its temperature mode (edkm_layer_get_config reports what
/// it runs with); an unset threshold gives exactly the run of the default written out.
@Suite struct LibraryDefaultsTests {
    func config(_ mode: edkm_temperature_mode) -> edkm_layer_config {
        var c = edkm_layer_config()
        edkm_layer_config_init(&c)
        c.temperature_mode = Int32(mode.rawValue)
        return c
    }

    func resolved(_ layer: OpaquePointer) -> edkm_layer_config {
        var c = edkm_layer_config()
        edkm_layer_config_init(&c)
        check(edkm_layer_get_config(layer, &c), "get_config")
        return c
    }

    @Test func configInitLeavesTheThresholdsUnset() {
        var c = edkm_layer_config()
        edkm_layer_config_init(&c)
        #expect(c.tau.isNaN && c.epsilon.isNaN && c.prune_threshold.isNaN)
        #expect(c.temperature_mode == Int32(EDKM_TEMPERATURE_SCALE_FREE.rawValue))
        #expect(c.zero_threshold == 1e-7 && c.bits == 4 && c.max_iterations == 3)
    }

    /// Scale-free: tau 0.1 (the temperature study's factor); absolute: coremltools' 1e-4. Both:
    /// epsilon 1e-4, prune_threshold 1e-7. Given values are kept as given.
    @Test(arguments: [(0, 1e-4), (1, 0.1)])
    func unsetThresholdsResolvePerMode(mode: Int32, tau: Double) {
        let rt = makeRuntime()
        defer { edkm_runtime_destroy(rt) }
        var c = config(edkm_temperature_mode(rawValue: UInt32(mode)))
        let l = makeLayer(rt, [64, 16], c)
        defer { edkm_layer_destroy(l) }
        let r = resolved(l)
        #expect(r.tau == tau && r.epsilon == 1e-4 && r.prune_threshold == 1e-7)
        #expect(r.temperature_mode == mode && r.bits == 4 && r.struct_size == UInt32(MemoryLayout<edkm_layer_config>.size))
        c.tau = 0.25
        c.epsilon = 0
        c.prune_threshold = 0
        let given = makeLayer(rt, [64, 16], c)
        defer { edkm_layer_destroy(given) }
        let g = resolved(given)
        #expect(g.tau == 0.25 && g.epsilon == 0 && g.prune_threshold == 0)
    }

    /// Unset is NaN only: Inf, 0 and negative thresholds stay errors.
    @Test func otherNonPositiveOrInfiniteValuesAreStillRejected() {
        let rt = makeRuntime()
        defer { edkm_runtime_destroy(rt) }
        let cases: [(WritableKeyPath<edkm_layer_config, Double>, Double)] = [
            (\.tau, 0), (\.tau, -1), (\.tau, .infinity), (\.epsilon, -1), (\.epsilon, .infinity),
            (\.prune_threshold, -1), (\.prune_threshold, -.infinity),
        ]
        for (field, value) in cases {
            var c = config(EDKM_TEMPERATURE_ABSOLUTE)
            c[keyPath: field] = value
            var l: OpaquePointer? = nil
            let s = edkm_layer_create(rt, &c, [64, 16], 2, &l)
            #expect(s == EDKM_ERR_INVALID_ARGUMENT, "\(field) = \(value): \(String(cString: edkm_status_name(s)))")
            #expect(l == nil)
        }
    }

    /// A caller compiled before tau existed in the struct (struct_size = offsetof(tau)) gets the
    /// defaults of the fields beyond, resolved for the (default) scale-free mode.
    @Test func aShortStructGetsTheResolvedDefaults() {
        let rt = makeRuntime()
        defer { edkm_runtime_destroy(rt) }
        var c = config(EDKM_TEMPERATURE_SCALE_FREE)
        c.struct_size = UInt32(MemoryLayout<edkm_layer_config>.offset(of: \.tau)!)
        c.tau = 7  // beyond struct_size: not read
        let l = makeLayer(rt, [64, 16], c)
        defer { edkm_layer_destroy(l) }
        let r = resolved(l)
        #expect(r.tau == 0.1 && r.epsilon == 1e-4 && r.prune_threshold == 1e-7)
    }

    /// edkm_layer_get_config writes only the fields the caller's struct_size covers.
    @Test func getConfigRespectsStructSize() {
        let rt = makeRuntime()
        defer { edkm_runtime_destroy(rt) }
        let l = makeLayer(rt, [64, 16], config(EDKM_TEMPERATURE_ABSOLUTE))
        defer { edkm_layer_destroy(l) }
        var c = edkm_layer_config()
        c.struct_size = UInt32(MemoryLayout<edkm_layer_config>.offset(of: \.tau)!)
        c.tau = 42
        check(edkm_layer_get_config(l, &c))
        #expect(c.tau == 42 && c.bits == 4)
        c.struct_size = 3
        #expect(edkm_layer_get_config(l, &c) == EDKM_ERR_STRUCT_SIZE)
        #expect(edkm_layer_get_config(l, nil) == EDKM_ERR_NULL_POINTER)
        #expect(edkm_layer_get_config(nil, &c) == EDKM_ERR_NULL_POINTER)
    }

    /// Unset thresholds and the defaults written out give bit-identical forwards, backwards and
    /// exports, in both modes and on both algorithms.
    @Test(arguments: [(0, 1), (0, 2), (1, 1), (1, 2)])
    func unsetEqualsTheDefaultWrittenOut(mode: Int32, algorithm: Int32) {
        var rng = Gaussian(seed: 99)
        let n = 4096
        let w = rng.floats(n, std: 0.02)
        let grad = rng.floats(n, std: 1)
        let m = edkm_temperature_mode(rawValue: UInt32(mode))
        func run(_ c: edkm_layer_config) -> ([Float], [Float], [UInt8])? {
            let rt = makeRuntime()
            defer { edkm_runtime_destroy(rt) }
            var c = c
            c.algorithm = algorithm
            c.f32_key_dtype = Int32(EDKM_DTYPE_F16.rawValue)
            let l = makeLayer(rt, [64, 64], c)
            defer { edkm_layer_destroy(l) }
            guard let step = forwardBackward(l, weights: w, dtype: EDKM_DTYPE_F32, count: n, grad: grad) else { return nil }
            var lut = [Float](repeating: 0, count: 16)
            var packed = [UInt8](repeating: 0, count: n / 2)
            check(edkm_layer_export_sized(l, w, EDKM_DTYPE_F32, n, &lut, EDKM_DTYPE_F32, 16, &packed, n / 2))
            return (step.output, step.gradient, packed)
        }
        let unset = run(config(m))
        var written = config(m)
        written.tau = m == EDKM_TEMPERATURE_ABSOLUTE ? 1e-4 : 0.1
        written.epsilon = 1e-4
        written.prune_threshold = 1e-7
        let explicit = run(written)
        #expect(unset != nil && explicit != nil)
        #expect(unset?.0 == explicit?.0 && unset?.1 == explicit?.1 && unset?.2 == explicit?.2)
        // An absolute tau of 0.1 (the scale-free number, what an unset absolute tau gave before
        // 0.4) is a different, far softer run: the default really moved.
        if m == EDKM_TEMPERATURE_ABSOLUTE {
            var soft = config(m)
            soft.tau = 0.1
            #expect(run(soft)?.0 != unset?.0)
        }
    }

    /// f32 partitions of over 65,536 weights are initialised on f16 keys of the weights scaled by
    /// a power of two when their RMS is tiny or huge: the centroids of w * 2^e are those of w
    /// (RMS in [1, 2), keyed as it is) times 2^e exactly. Without the scaling, the f16 keys of the
    /// tiny weights would be subnormal (few distinct values) and the huge ones would overflow f16
    /// (bf16 keys, 8 significant bits): other centroids.
    @Test(arguments: [-20, 16])
    func initialisationOfTinyOrHugeF32WeightsIsScaleEquivariant(exponent: Int) {
        var rng = Gaussian(seed: 5)
        let n = 1 << 17
        let w = rng.floats(n, std: 1.5)
        let factor = Float(sign: .plus, exponent: exponent, significand: 1)
        let scaled = w.map { $0 * factor }
        func centroids(_ x: [Float]) -> [Float] {
            let rt = makeRuntime()
            defer { edkm_runtime_destroy(rt) }
            let l = makeLayer(rt, [256, 512], config(EDKM_TEMPERATURE_SCALE_FREE))
            defer { edkm_layer_destroy(l) }
            check(edkm_layer_init_centroids(l, x, EDKM_DTYPE_F32, n))
            var c = [Float](repeating: 0, count: 16)
            check(edkm_layer_get_centroids(l, &c, 16))
            return c
        }
        let base = centroids(w)
        #expect(Set(base).count == 16)
        #expect(centroids(scaled) == base.map { $0 * factor })
    }

    /// The sized export / unpack check the LUT's size; the deprecated unpack gives the same values.
    @Test func sizedExportAndUnpackCheckTheLUT() {
        var rng = Gaussian(seed: 3)
        let n = 1024
        let w = f16Bits(rng.floats(n, std: 0.02))
        let rt = makeRuntime()
        defer { edkm_runtime_destroy(rt) }
        let l = makeLayer(rt, [32, 32], config(EDKM_TEMPERATURE_SCALE_FREE))
        defer { edkm_layer_destroy(l) }
        check(edkm_layer_init_centroids(l, w, EDKM_DTYPE_F16, n))
        var lut = [UInt16](repeating: 0, count: 17)
        var packed = [UInt8](repeating: 0xA5, count: n / 2)
        #expect(edkm_layer_export_sized(l, w, EDKM_DTYPE_F16, n, &lut, EDKM_DTYPE_F16, 17, &packed, n / 2) == EDKM_ERR_SHAPE)
        #expect(packed.allSatisfy { $0 == 0xA5 } && lut.allSatisfy { $0 == 0 })
        check(edkm_layer_export_sized(l, w, EDKM_DTYPE_F16, n, &lut, EDKM_DTYPE_F16, 16, &packed, n / 2))
        var sized = [Float](repeating: -1, count: n)
        #expect(edkm_layer_unpack_sized(l, lut, EDKM_DTYPE_F16, 15, packed, n / 2, &sized, EDKM_DTYPE_F32, n) == EDKM_ERR_SHAPE)
        #expect(sized.allSatisfy { $0 == -1 })
        check(edkm_layer_unpack_sized(l, lut, EDKM_DTYPE_F16, 16, packed, n / 2, &sized, EDKM_DTYPE_F32, n))
        var old = [Float](repeating: -1, count: n)
        check(edkm_layer_unpack(l, lut, EDKM_DTYPE_F16, packed, n / 2, &old, EDKM_DTYPE_F32, n))
        #expect(sized == old)
        let values = Set(lut.map { Float(Float16(bitPattern: $0)) })
        #expect(sized.allSatisfy { values.contains($0) })
    }
}
