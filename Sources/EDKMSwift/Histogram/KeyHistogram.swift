/// The distinct 16-bit keys of one partition and how often each occurs (the uniquified form of
/// the partition's weights). Keys are either bit patterns of f16/bf16 weights or row indices.
public struct KeyHistogram: Sendable, Equatable {
    /// Distinct keys, ascending.
    public var keys: [UInt16]
    /// counts[m] = occurrences of keys[m]; all >= 1.
    public var counts: [UInt32]
    public var distinctCount: Int { keys.count }
}
