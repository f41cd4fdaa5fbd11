import CEDKM
import EDKMClient
import EDKMSafetensors

/// The demo's use of libedkm for one weight matrix: layer configuration, hard export and unpack.
struct DemoLayerSpec {
    let name: String
    let rows: Int, cols: Int
    var count: Int { rows * cols }
    var shape: [Int] { [rows, cols] }

    /// DKM configuration for this matrix at `bits`: the library's defaults (scale-free temperature,
    /// so nothing depends on these weights' scale), f32 weights keyed by their f16 rounding so the
    /// forward and backward run on the value histogram.
    func config(bits: Int) -> edkm_layer_config {
        var c = EDKMLayer.defaultConfig()
        c.bits = UInt32(bits)
        c.f32_key_dtype = Int32(EDKM_DTYPE_F16.rawValue)
        return c
    }
}

/// Hard palettization with the layer's current centroids: export (F16 LUT, packed indices) and
/// unpack to float32. Returns the palettized weights and their size in bytes (LUT + indices).
func hardPalettize(_ layer: EDKMLayer, _ weights: [Float]) throws -> (weights: [Float], bytes: Int) {
    let sizes = try layer.exportSizes()
    var lut = [UInt16](repeating: 0, count: sizes.lutCount)
    var packed = [UInt8](repeating: 0, count: sizes.packedBytes)
    var out = [Float](repeating: 0, count: weights.count)
    try weights.withUnsafeBytes { w in
        try lut.withUnsafeMutableBytes { l in
            try packed.withUnsafeMutableBufferPointer { p in
                try layer.export(w.baseAddress!, EDKM_DTYPE_F32, lut: l.baseAddress!, lutDtype: EDKM_DTYPE_F16,
                                 lutCount: sizes.lutCount, packed: p.baseAddress!, packedBytes: p.count)
                try out.withUnsafeMutableBytes { o in
                    try layer.unpack(lut: l.baseAddress!, lutDtype: EDKM_DTYPE_F16, lutCount: sizes.lutCount, packed: p.baseAddress!, packedBytes: p.count,
                                     out: o.baseAddress!, outDtype: EDKM_DTYPE_F32)
                }
            }
        }
    }
    return (out, sizes.lutCount * 2 + sizes.packedBytes)
}

/// One training forward of a layer: w~ (f32) and the saved state.
func softForward(_ layer: EDKMLayer, _ weights: [Float], into out: inout [Float], save: Bool) throws -> EDKMSavedState? {
    try weights.withUnsafeBytes { w in
        try out.withUnsafeMutableBytes { o in
            try layer.forward(w.baseAddress!, EDKM_DTYPE_F32, out: o.baseAddress!, outDtype: EDKM_DTYPE_F32, save: save)
        }
    }
}

/// dL/dw from dL/dw~ through the saved state (weights handed back for the histogram mode's check).
func softBackward(_ saved: EDKMSavedState, gradOutput: UnsafePointer<Float>, weights: [Float]) throws -> [Float] {
    var g = [Float](repeating: 0, count: weights.count)
    try weights.withUnsafeBytes { w in
        try g.withUnsafeMutableBytes { gi in
            try saved.backward(gradOutput: gradOutput, gradInput: gi.baseAddress!, dtype: EDKM_DTYPE_F32, weights: w.baseAddress!)
        }
    }
    return g
}

extension edkm_saved_mode {
    var title: String {
        switch self {
        case EDKM_SAVED_DKM: return "DKM baseline (autograd maps)"
        case EDKM_SAVED_MARSHAL: return "+ marshal to the arena"
        case EDKM_SAVED_DEDUP: return "+ dedup"
        case EDKM_SAVED_UNIQUIFY: return "+ uniquify (eDKM)"
        case EDKM_SAVED_HISTOGRAM: return "histogram (libedkm default)"
        default: return "mode \(rawValue)"
        }
    }
}
