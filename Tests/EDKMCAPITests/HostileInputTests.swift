import CEDKM
import Testing

/// A communicator whose callbacks are Swift closures over one rank (rank 0 of `world`).
private final class ScriptedCommunicator {
    var reduce: (UnsafeMutablePointer<Double>, Int) -> Int32 = { _, _ in 0 }
    var gather: (UnsafeRawPointer, UnsafeMutableRawPointer, Int) -> Int32 = { send, recv, bytes in
        recv.copyMemory(from: send, byteCount: bytes)
        return 0
    }
    var c = edkm_communicator()

    init(world: Int32 = 1) {
        c = edkm_communicator(struct_size: UInt32(MemoryLayout<edkm_communicator>.size), rank: 0, world_size: world, reserved: 0,
                              user_data: nil, all_gather: { user, send, recv, bytes in
                                  Unmanaged<ScriptedCommunicator>.fromOpaque(user!).takeUnretainedValue().gather(send!, recv!, bytes)
                              }, all_reduce_sum: { user, data, count in
                                  Unmanaged<ScriptedCommunicator>.fromOpaque(user!).takeUnretainedValue().reduce(data!, count)
                              })
        c.user_data = Unmanaged.passUnretained(self).toOpaque()
    }
}

/// f16 weights spread over [-1, 1) with many repeats.
private func hostileWeights(_ n: Int) -> [UInt16] {
    (0..<n).map { Float16(Float(($0 * 37) % 101) / 50 - 1).bitPattern }
}

/// Communicator callbacks that report success with impossible results, re-enter the runtime, or
/// lose memory: every call fails with a status that says what was wrong and loses nothing.
@Suite struct HostileInputTests {
    /// The forward's histogram all-reduce (65,536 counts, a flag, the element total).
    enum Corruption: String, CaseIterable, Sendable { case nan, inf, huge, negative, fraction, plusOne, zeros, flagHuge }

    @Test(arguments: Corruption.allCases.map(\.rawValue))  // raw values: see WindowedKernelTests
    func forwardShardRejectsImpossibleHistogram(_ name: String) {
        let corruption = Corruption(rawValue: name)!
        let comm = ScriptedCommunicator()
        comm.reduce = { data, count in
            let key = (0..<65536).first { data[$0] > 0 }!
            switch corruption {
            case .nan: data[key] = .nan
            case .inf: data[key] = .infinity
            case .huge: data[key] = 1e300
            case .negative: data[key] = -data[key]
            case .fraction: data[key] += 0.5
            case .plusOne: data[key] += 1
            case .zeros: for i in 0..<count { data[i] = 0 }
            case .flagHuge: data[65536] = 1e300
            }
            return 0
        }
        let rt = makeRuntime(communicator: &comm.c)
        let l = makeLayer(rt, [256], layerConfig(bits: 3))
        let base = stats(rt).arena_allocated
        let w = hostileWeights(256)
        var out = [Float](repeating: -7, count: 256)
        var state: OpaquePointer? = nil
        let s = edkm_layer_forward_shard(l, w, EDKM_DTYPE_F16, 0, 256, &out, EDKM_DTYPE_F32, &state)
        #expect(s == EDKM_ERR_COMMUNICATOR, "\(corruption): \(lastError())")
        #expect(lastError().contains("all_reduce_sum"))
        #expect(state == nil && out.allSatisfy { $0 == -7 })
        #expect(stats(rt).arena_allocated == base)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// The sharded backward's gradient all-reduce: non-finite sums and impossible flags.
    static let impossibleSums: [(value: Double, entry: Int)] = [(.infinity, 0), (.nan, 0), (1e300, 1), (0.5, 2), (-1, 1)]

    @Test(arguments: impossibleSums.indices)  // indices, not tuples: see WindowedKernelTests
    func shardBackwardRejectsImpossibleSums(_ index: Int) {
        let (value, entry) = Self.impossibleSums[index]
        let comm = ScriptedCommunicator()
        let rt = makeRuntime(communicator: &comm.c)
        let l = makeLayer(rt, [256], layerConfig(bits: 3))
        let w = hostileWeights(256)
        let grad = (0..<256).map { Float($0 % 7) * 0.01 }
        var out = [Float](repeating: 0, count: 256)
        var state: OpaquePointer? = nil
        check(edkm_layer_forward_shard(l, w, EDKM_DTYPE_F16, 0, 256, &out, EDKM_DTYPE_F32, &state))
        // entry 0: the first gradient sum; 1, 2: the weights-changed and non-finite flags (after the U sums)
        comm.reduce = { data, count in
            data[entry == 0 ? 0 : count - 3 + entry] = value
            return 0
        }
        var gin = [Float](repeating: -3, count: 256)
        #expect(edkm_saved_state_backward(state, grad, &gin, EDKM_DTYPE_F32, 256, w) == EDKM_ERR_COMMUNICATOR, "\(lastError())")
        #expect(gin.allSatisfy { $0 == -3 })
        comm.reduce = { _, _ in 0 }
        check(edkm_saved_state_backward(state, grad, &gin, EDKM_DTYPE_F32, 256, w), "honest retry")
        #expect(gin.allSatisfy { $0.isFinite })
        edkm_saved_state_destroy(state)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// SHARD backward: peers' gathered index blocks of 0xFF bytes, random bytes, or this rank's
    /// own block altered are rejected (the index list must match the saved histogram).
    @Test(arguments: [0, 1, 2])
    func garbageGatheredIndicesAreRejected(kind: Int) {
        let comm = ScriptedCommunicator(world: 2)
        var rng: UInt64 = 0x1234
        comm.gather = { send, recv, bytes in
            for r in 0..<2 { (recv + r * bytes).copyMemory(from: send, byteCount: bytes) }
            let p = recv.assumingMemoryBound(to: UInt8.self)
            switch kind {
            case 0: for b in bytes..<(2 * bytes) { p[b] = 0xFF }
            case 1: for b in bytes..<(2 * bytes) { rng = rng &* 6364136223846793005 &+ 1442695040888963407; p[b] = UInt8(truncatingIfNeeded: rng >> 56) }
            default: for b in 0..<bytes { p[b] ^= 0x5A }
            }
            return 0
        }
        let rt = makeRuntime(mode: EDKM_SAVED_SHARD, communicator: &comm.c)
        let l = makeLayer(rt, [256], layerConfig(bits: 3))
        let base = stats(rt).arena_allocated
        let w = hostileWeights(256)
        var out = [Float](repeating: 0, count: 256)
        var state: OpaquePointer? = nil
        check(edkm_layer_forward(l, w, EDKM_DTYPE_F16, 256, &out, EDKM_DTYPE_F32, &state))
        let grad = [Float](repeating: 0.25, count: 256)
        var gin = [Float](repeating: -3, count: 256)
        #expect(edkm_saved_state_backward(state, grad, &gin, EDKM_DTYPE_F32, 256, nil) == EDKM_ERR_COMMUNICATOR)
        #expect(lastError().contains("all_gather"))
        #expect(gin.allSatisfy { $0 == -3 })
        edkm_saved_state_destroy(state)
        #expect(stats(rt).arena_allocated == base)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// A callback that calls into the runtime that invoked it gets EDKM_ERR_BUSY (no deadlock);
    /// the outer call completes.
    @Test func reentrantCallbackGetsBusy() {
        let comm = ScriptedCommunicator()
        let rt = makeRuntime(communicator: &comm.c)
        let l = makeLayer(rt, [64], layerConfig(bits: 2))
        let other = makeLayer(rt, [64], layerConfig(bits: 2))
        let w = hostileWeights(64)
        var nested: [edkm_status] = []
        comm.reduce = { _, _ in
            var o = [Float](repeating: 0, count: 64)
            nested.append(edkm_layer_forward_shard(other, w, EDKM_DTYPE_F16, 0, 64, &o, EDKM_DTYPE_F32, nil))
            nested.append(edkm_layer_forward(l, w, EDKM_DTYPE_F16, 64, &o, EDKM_DTYPE_F32, nil))
            return 0
        }
        var out = [Float](repeating: 0, count: 64)
        check(edkm_layer_forward_shard(l, w, EDKM_DTYPE_F16, 0, 64, &out, EDKM_DTYPE_F32, nil), "outer call")
        #expect(nested == [EDKM_ERR_BUSY, EDKM_ERR_BUSY])
        comm.reduce = { _, _ in 0 }
        check(edkm_layer_forward_shard(other, w, EDKM_DTYPE_F16, 0, 64, &out, EDKM_DTYPE_F32, nil), "after the callback")
        edkm_layer_destroy(other)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// A tau whose reciprocal overflows: absolute 1e-310 is rejected at create; scale-free 1e-308
    /// (tau x distortion underflows) at forward, on both algorithms, with nothing written.
    @Test(arguments: [EDKM_ALGORITHM_DENSE, EDKM_ALGORITHM_UNIQUIFIED])
    func tinyTau(algorithm: edkm_algorithm) {
        let rt = makeRuntime()
        var absolute = layerConfig(bits: 3, tau: 1e-310, algorithm: algorithm)
        var layer: OpaquePointer? = nil
        #expect(edkm_layer_create(rt, &absolute, [256], 1, &layer) == EDKM_ERR_INVALID_ARGUMENT)
        var scaleFree = layerConfig(bits: 3, tau: 1e-308, algorithm: algorithm)
        scaleFree.temperature_mode = Int32(EDKM_TEMPERATURE_SCALE_FREE.rawValue)
        let l = makeLayer(rt, [256], scaleFree)
        var out = [Float](repeating: -7, count: 256)
        var state: OpaquePointer? = nil
        #expect(edkm_layer_forward(l, hostileWeights(256), EDKM_DTYPE_F16, 256, &out, EDKM_DTYPE_F32, &state) == EDKM_ERR_INVALID_ARGUMENT)
        #expect(lastError().contains("effective temperature"))
        #expect(out.allSatisfy { $0 == -7 } && state == nil)
        // 1e-300 is small but safe: finite outputs and gradients
        let small = makeLayer(rt, [256], layerConfig(bits: 3, tau: 1e-300, algorithm: algorithm))
        check(edkm_layer_forward(small, hostileWeights(256), EDKM_DTYPE_F16, 256, &out, EDKM_DTYPE_F32, &state))
        var gin = [Float](repeating: 0, count: 256)
        check(edkm_saved_state_backward(state, [Float](repeating: 0.1, count: 256), &gin, EDKM_DTYPE_F32, 256, hostileWeights(256)))
        #expect(out.allSatisfy { $0.isFinite } && gin.allSatisfy { $0.isFinite })
        edkm_saved_state_destroy(state)
        edkm_layer_destroy(small)
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// Centroids beyond the f16 range cannot be exported to an f16 LUT; a LUT holding NaN is not
    /// unpacked.
    @Test func lutRangeAndNaN() {
        let rt = makeRuntime()
        let l = makeLayer(rt, [64], layerConfig(bits: 2))
        let w = (0..<64).map { Float(1e5) * Float($0 % 4 + 1) }
        check(edkm_layer_init_centroids(l, w, EDKM_DTYPE_F32, 64))
        var lut = [UInt16](repeating: 0xA5A5, count: 4)
        var packed = [UInt8](repeating: 0xA5, count: 16)
        #expect(edkm_layer_export(l, w, EDKM_DTYPE_F32, 64, &lut, EDKM_DTYPE_F16, &packed, 16) == EDKM_ERR_INVALID_ARGUMENT)
        #expect(lastError().contains("f16 LUT"))
        #expect(lut.allSatisfy { $0 == 0xA5A5 } && packed.allSatisfy { $0 == 0xA5 })
        var flut = [Float](repeating: 0, count: 4)
        check(edkm_layer_export(l, w, EDKM_DTYPE_F32, 64, &flut, EDKM_DTYPE_F32, &packed, 16), "f32 LUT")
        flut[1] = .nan
        var out = [Float](repeating: -7, count: 64)
        #expect(edkm_layer_unpack(l, flut, EDKM_DTYPE_F32, packed, 16, &out, EDKM_DTYPE_F32, 64) == EDKM_ERR_NON_FINITE)
        #expect(out.allSatisfy { $0 == -7 })
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }

    /// Sizes print as the unsigned values passed; a shape whose element count overflows says so;
    /// non-zero reserved fields are rejected.
    @Test func messagesAndReservedFields() {
        let rt = makeRuntime()
        var layer: OpaquePointer? = nil
        #expect(edkm_layer_create(rt, nil, [Int64.max, 2], 2, &layer) == EDKM_ERR_SHAPE)
        #expect(lastError().contains("element count"))
        #expect(edkm_layer_create(rt, nil, [1 << 38, 1 << 38], 2, &layer) == EDKM_ERR_SHAPE)
        #expect(lastError().contains("overflows"))
        var cfg = layerConfig()
        cfg.reserved = 3
        #expect(edkm_layer_create(rt, &cfg, [64], 1, &layer) == EDKM_ERR_INVALID_ARGUMENT)
        #expect(lastError().contains("reserved"))
        let l = makeLayer(rt, [64], layerConfig(bits: 2))
        var out = [Float](repeating: 0, count: 64)
        #expect(edkm_layer_forward(l, hostileWeights(64), EDKM_DTYPE_F16, Int(bitPattern: UInt.max), &out, EDKM_DTYPE_F32, nil) == EDKM_ERR_SHAPE)
        #expect(lastError().contains("18446744073709551615"))
        var lut = [Float](repeating: 0, count: 4), packed = [UInt8](repeating: 0, count: 16)
        check(edkm_layer_forward(l, hostileWeights(64), EDKM_DTYPE_F16, 64, &out, EDKM_DTYPE_F32, nil))
        #expect(edkm_layer_export(l, hostileWeights(64), EDKM_DTYPE_F16, 64, &lut, EDKM_DTYPE_F32, &packed, Int(bitPattern: UInt.max)) == EDKM_ERR_SHAPE)
        #expect(lastError().contains("18446744073709551615"))
        let comm = ScriptedCommunicator()
        comm.c.reserved = 1
        var rcfg = edkm_runtime_config()
        edkm_runtime_config_init(&rcfg)
        var rt2: OpaquePointer? = nil
        withUnsafePointer(to: &comm.c) { p in
            rcfg.communicator = p
            #expect(edkm_runtime_create(&rcfg, &rt2) == EDKM_ERR_INVALID_ARGUMENT)
        }
        #expect(lastError().contains("reserved"))
        edkm_layer_destroy(l)
        edkm_runtime_destroy(rt)
    }
}
