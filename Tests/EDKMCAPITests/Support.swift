import CEDKM
import EDKMClient
import EDKMNumerics
import Glibc
import Testing

/// Helpers for tests that use only the C ABI.
func lastError() -> String { String(cString: edkm_last_error()) }

@discardableResult
func check(_ s: edkm_status, _ what: String = "", sourceLocation: SourceLocation = #_sourceLocation) -> edkm_status {
    #expect(s == EDKM_OK, "\(what): \(String(cString: edkm_status_name(s))) \(lastError())", sourceLocation: sourceLocation)
    return s
}

func makeRuntime(mode: edkm_saved_mode = EDKM_SAVED_HISTOGRAM, threads: UInt32 = 0, budget: UInt64 = 0,
                 keepWeights: Bool = false, communicator: UnsafePointer<edkm_communicator>? = nil) -> OpaquePointer {
    var cfg = EDKMRuntime.config(savedMode: mode, threads: threads, budgetBytes: budget, keepWeights: keepWeights,
                                 communicator: communicator)
    var rt: OpaquePointer? = nil
    check(edkm_runtime_create(&cfg, &rt), "runtime_create")
    return rt!
}

func layerConfig(bits: UInt32 = 4, tau: Double = 1e-4, group: UInt32 = 0, d: UInt32 = 1,
                 algorithm: edkm_algorithm = EDKM_ALGORITHM_AUTO, iterations: UInt32 = 3) -> edkm_layer_config {
    var c = EDKMLayer.defaultConfig()
    c.bits = bits
    c.tau = tau
    c.group_size = group
    c.cluster_dim = d
    c.algorithm = Int32(algorithm.rawValue)
    c.max_iterations = iterations
    c.temperature_mode = Int32(EDKM_TEMPERATURE_ABSOLUTE.rawValue)  // the tests' taus are absolute
    return c
}

func makeLayer(_ rt: OpaquePointer, _ shape: [Int64], _ cfg: edkm_layer_config) -> OpaquePointer {
    var c = cfg
    var layer: OpaquePointer? = nil
    check(edkm_layer_create(rt, &c, shape, shape.count, &layer), "layer_create")
    return layer!
}

func stats(_ rt: OpaquePointer) -> edkm_runtime_stats {
    var s = edkm_runtime_stats()
    s.struct_size = UInt32(MemoryLayout<edkm_runtime_stats>.size)
    check(edkm_runtime_get_stats(rt, &s), "get_stats")
    return s
}

/// Seeded normal samples: the shared SplitMix64 (EDKMNumerics).
typealias Gaussian = SplitMix64

extension SplitMix64 {
    mutating func floats(_ n: Int, std: Double) -> [Float] { normals(n, std: std) }
}

func f16Bits(_ x: [Float]) -> [UInt16] { x.map(HalfConversion.floatToF16) }
/// bfloat16 bits, rounded to nearest even.
func bf16Bits(_ x: [Float]) -> [UInt16] { x.map(HalfConversion.floatToBF16) }
func fromF16(_ b: [UInt16]) -> [Float] { b.map(HalfConversion.f16ToFloat) }

func maxRelativeDifference(_ a: [Float], _ b: [Float]) -> Double {
    let scale = b.reduce(0) { max($0, Double(abs($1))) }
    let diff = zip(a, b).reduce(0) { max($0, Double(abs($1.0 - $1.1))) }
    return scale > 0 ? diff / scale : diff
}

/// One forward (f32 output) and backward (f32 gradients) through the C ABI.
struct Step {
    var output: [Float]
    var gradient: [Float]
}

func forwardBackward(_ layer: OpaquePointer, weights: UnsafeRawPointer, dtype: edkm_dtype, count: Int,
                     grad: [Float], passWeights: Bool = true) -> Step? {
    var out = [Float](repeating: 0, count: count)
    var state: OpaquePointer? = nil
    guard check(edkm_layer_forward(layer, weights, dtype, count, &out, EDKM_DTYPE_F32, &state), "forward") == EDKM_OK else { return nil }
    var gin = [Float](repeating: 0, count: count)
    let s = edkm_saved_state_backward(state, grad, &gin, EDKM_DTYPE_F32, count, passWeights ? weights : nil)
    check(s, "backward")
    edkm_saved_state_destroy(state)
    return s == EDKM_OK ? Step(output: out, gradient: gin) : nil
}

/// Runs body(0..<count) on `count` new threads at once, waits for all of them and returns their
/// results in thread order (each thread writes only its own job; pthread_join orders the reads).
@discardableResult
func runOnThreads<T>(_ count: Int, _ body: @escaping (Int) -> T) -> [T] {
    let jobs = (0..<count).map { i in ThreadJob { body(i) } }
    var threads: [pthread_t] = []
    for job in jobs {
        var tid = pthread_t()
        pthread_create(&tid, nil, { raw in
            Unmanaged<ThreadJobBase>.fromOpaque(raw!).takeUnretainedValue().run()
            return nil
        }, Unmanaged.passUnretained(job).toOpaque())
        threads.append(tid)
    }
    for t in threads { pthread_join(t, nil) }
    return jobs.map { $0.result! }
}

/// One thread's work and result for runOnThreads (a non-generic base for the C thread entry).
class ThreadJobBase {
    func run() {}
}

final class ThreadJob<T>: ThreadJobBase {
    let body: () -> T
    var result: T?
    init(_ b: @escaping () -> T) { body = b }
    override func run() { result = body() }
}
