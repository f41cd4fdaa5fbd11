/// An owned, zero-initialised, fixed-size buffer of doubles with a stable address, for per-row
/// results written from several threads (each thread its own rows).
final class DoubleBuffer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Double>
    let count: Int

    init(zeros count: Int) {
        self.count = count
        pointer = .allocate(capacity: Swift.max(count, 1))
        pointer.initialize(repeating: 0, count: Swift.max(count, 1))
    }

    deinit { pointer.deallocate() }

    /// A copy of the contents (made while the buffer is alive; prefer this to building an array
    /// from `pointer`, whose buffer may be released after its last use).
    var array: [Double] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    subscript(i: Int) -> Double {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }
}
