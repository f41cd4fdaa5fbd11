// One DKM forward, backward, export and unpack through libedkm's C ABI from Swift, checked against
// an independent reference: weights in two well separated clusters (-1 and +1, each with a small
// deterministic spread), clustered to 1 bit. Exact 1-D k-means puts the two centroids at the two
// cluster means and the soft assignment is then practically hard (the clusters are 2 apart, their
// spread 0.01), so every soft weight, and every unpacked weight, must equal its cluster's mean
// (computed here in Float64) within 1e-5 (float32 rounding near 1 is 6e-8; the other cluster's soft
// weight is below exp(-3.9 / tau)). Exit status 1 on any mismatch or non-OK status.
import CEDKM
#if canImport(Glibc)
import Glibc
#endif

func check(_ status: edkm_status, _ what: String) {
    if status != EDKM_OK {
        let message = edkm_last_error().map { String(cString: $0) } ?? ""
        print("FAIL: \(what): \(String(cString: edkm_status_name(status))) \(message)")
        exit(1)
    }
}

let expectedVersion = UInt32(EDKM_VERSION_MAJOR * 10000 + EDKM_VERSION_MINOR * 100 + EDKM_VERSION_PATCH)
guard edkm_version_number() == expectedVersion else {
    print("FAIL: library version \(edkm_version_number()) is not the header's \(expectedVersion)")
    exit(1)
}

let rows = 16, cols = 32, n = rows * cols
var weights = [Float](repeating: 0, count: n)
for i in 0..<n {
    let spread = Float((i * 37) % 21 - 10) * 0.001          // -0.01 ... 0.01
    weights[i] = (i % 3 == 0 ? -1 : 1) + spread
}
func mean(_ sign: Float) -> Double {
    let members = weights.filter { ($0 < 0) == (sign < 0) }
    return members.reduce(0.0) { $0 + Double($1) } / Double(members.count)
}
let reference = (negative: mean(-1), positive: mean(1))
func expected(_ w: Float) -> Double { w < 0 ? reference.negative : reference.positive }

var runtime: OpaquePointer?
check(edkm_runtime_create(nil, &runtime), "edkm_runtime_create")
var config = edkm_layer_config()
edkm_layer_config_init(&config)
config.bits = 1
var layer: OpaquePointer?
var shape: [Int64] = [Int64(rows), Int64(cols)]
check(edkm_layer_create(runtime, &config, &shape, 2, &layer), "edkm_layer_create")

var soft = [Float](repeating: .nan, count: n)
var saved: OpaquePointer?
check(edkm_layer_forward(layer, weights, EDKM_DTYPE_F32, n, &soft, EDKM_DTYPE_F32, &saved), "edkm_layer_forward")
var worst = 0.0
for i in 0..<n { worst = max(worst, abs(Double(soft[i]) - expected(weights[i]))) }
guard worst < 1e-5 else { print("FAIL: soft weights differ from the cluster means by \(worst)"); exit(1) }

var gradOut = [Float](repeating: 1, count: n)
var gradIn = [Float](repeating: .nan, count: n)
check(edkm_saved_state_backward(saved, &gradOut, &gradIn, EDKM_DTYPE_F32, n, weights), "edkm_saved_state_backward")
guard gradIn.allSatisfy({ $0.isFinite }) else { print("FAIL: non-finite gradient"); exit(1) }
edkm_saved_state_destroy(saved)

var lutCount = 0, packedBytes = 0
check(edkm_layer_export_sizes(layer, &lutCount, &packedBytes), "edkm_layer_export_sizes")
var lut = [Float](repeating: 0, count: lutCount)
var packed = [UInt8](repeating: 0, count: packedBytes)
check(edkm_layer_export(layer, weights, EDKM_DTYPE_F32, n, &lut, EDKM_DTYPE_F32, &packed, packedBytes), "edkm_layer_export")
var hard = [Float](repeating: .nan, count: n)
check(edkm_layer_unpack(layer, lut, EDKM_DTYPE_F32, packed, packedBytes, &hard, EDKM_DTYPE_F32, n), "edkm_layer_unpack")
var worstHard = 0.0
for i in 0..<n { worstHard = max(worstHard, abs(Double(hard[i]) - expected(weights[i]))) }
guard lutCount == 2, worstHard < 1e-5 else {
    print("FAIL: export gave \(lutCount) LUT entries, unpacked weights off by \(worstHard)"); exit(1)
}
edkm_layer_destroy(layer)
edkm_runtime_destroy(runtime)
print("swift client: libedkm \(String(cString: edkm_version_string())): forward, backward, export and unpack of a 16x32 layer ok "
      + "(largest difference to the cluster means: soft \(worst), hard \(worstHard))")
