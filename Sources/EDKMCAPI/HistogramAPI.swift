import CEDKM
import EDKMSwift

// The histogram form of the C ABI (edkm.h, "Histogram form"): the device split's host half.

@c @implementation
public func edkm_layer_forward_histogram(_ layer: OpaquePointer!, _ key_dtype: edkm_dtype, _ keys: UnsafePointer<UInt16>!,
                                         _ counts: UnsafePointer<Double>!, _ partition_offsets: UnsafePointer<Int>!,
                                         _ partitions: Int, _ soft_values: UnsafeMutablePointer<Double>!,
                                         _ saved: UnsafeMutablePointer<OpaquePointer?>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let l = try layerObject(layer)
        let k = try require(keys, "keys"), c = try require(counts, "counts")
        let offsets = try require(partition_offsets, "partition_offsets")
        let out = try require(soft_values, "soft_values")
        let state = try l.forwardHistogram(keyType: try elementType(key_dtype, "key_dtype"), keys: k, counts: c,
                                           offsets: offsets, partitions: partitions, softValues: out, save: saved != nil)
        if let saved, let state { saved.pointee = HandleRegistry.register(state, .savedState) }
    }
}

@c @implementation
public func edkm_saved_state_backward_histogram(_ state: OpaquePointer!, _ grad_sums: UnsafePointer<Double>!, _ count: Int,
                                                _ h: UnsafeMutablePointer<Double>!, _ r: UnsafeMutablePointer<Double>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let s = try savedStateObject(state)
        try s.backwardHistogram(gradientSums: try require(grad_sums, "grad_sums"), count: count,
                                h: try require(h, "h"), r: try require(r, "r"))
    }
}
