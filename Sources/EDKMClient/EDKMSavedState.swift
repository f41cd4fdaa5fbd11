import CEDKM

/// Owns one edkm_saved_state: what a training forward kept for its backward. `count` is the number
/// of weights of the layer that made it.
public final class EDKMSavedState {
    public let handle: OpaquePointer
    public let count: Int

    /// Takes ownership of `handle` (destroyed with this object).
    public init(handle: OpaquePointer, count: Int) {
        self.handle = handle
        self.count = count
    }

    deinit { edkm_saved_state_destroy(handle) }

    /// edkm_saved_state_bytes: the bytes this state holds.
    public func bytes() throws -> UInt64 {
        var b: UInt64 = 0
        try edkmCheck(edkm_saved_state_bytes(handle, &b), "edkm_saved_state_bytes")
        return b
    }

    /// dL/dw into `gradInput` from dL/dw~ `gradOutput` (`count` elements of `dtype` each); `weights`
    /// are the forward's (nil only where the runtime kept them).
    public func backward(gradOutput: UnsafeRawPointer, gradInput: UnsafeMutableRawPointer, dtype: edkm_dtype,
                         weights: UnsafeRawPointer?) throws {
        try edkmCheck(edkm_saved_state_backward(handle, gradOutput, gradInput, dtype, count, weights),
                      "edkm_saved_state_backward")
    }
}
