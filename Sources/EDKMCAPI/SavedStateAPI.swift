import CEDKM
import EDKMSwift

func savedStateObject(_ h: OpaquePointer?) throws(EDKMError) -> SavedState {
    try HandleRegistry.object(h, .savedState, as: SavedState.self, name: "state")
}

@c @implementation
public func edkm_saved_state_backward(_ state: OpaquePointer!, _ grad_output: UnsafeRawPointer!,
                                      _ grad_input: UnsafeMutableRawPointer!, _ grad_dtype: edkm_dtype, _ count: Int,
                                      _ weights: UnsafeRawPointer!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let s = try savedStateObject(state)
        try s.backward(gradOutput: try require(grad_output, "grad_output"), gradInput: try require(grad_input, "grad_input"),
                       gradType: try elementType(grad_dtype, "grad_dtype"), count: count, weights: weights)
    }
}

@c @implementation
public func edkm_saved_state_bytes(_ state: OpaquePointer!, _ bytes: UnsafeMutablePointer<UInt64>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let s = try savedStateObject(state)
        try require(bytes, "bytes").pointee = UInt64(s.byteCount)
    }
}

@c @implementation
public func edkm_saved_state_destroy(_ state: OpaquePointer!) {
    HandleRegistry.release(state, .savedState)
}
