/// The partition geometry of one weight tensor under a config.
///
/// A tensor of shape [rows, ...] (row-major) has rowLength = product of the other extents. With
/// group size g the partitions are the blocks of g consecutive rows, each contiguous in memory;
/// without, the whole tensor is one partition. A partition's n elements form n/d vectors of d
/// consecutive elements.
public struct TensorGeometry: Sendable, Equatable {
    public let shape: [Int]
    public let count: Int
    public let rows: Int
    public let rowLength: Int
    public let partitions: Int
    public let elementsPerPartition: Int
    public let d: Int
    public var vectorsPerPartition: Int { elementsPerPartition / d }

    public init(shape: [Int], config: ClusteringConfig) throws(EDKMError) {
        guard !shape.isEmpty else { throw EDKMError(.shape, "shape must have at least one dimension") }
        var total = 1
        for (i, e) in shape.enumerated() {
            guard e >= 1 else { throw EDKMError(.shape, "shape[\(i)] must be >= 1, got \(e)") }
            let (p, overflow) = total.multipliedReportingOverflow(by: e)
            guard !overflow && p <= Int(Int32.max) * 256 else { throw EDKMError(.shape, "tensor too large") }
            total = p
        }
        self.shape = shape
        count = total
        rows = shape[0]
        rowLength = total / shape[0]
        d = config.clusterDim
        guard rowLength % d == 0 else {
            throw EDKMError(.shape, "cluster_dim \(d) must divide the row length \(rowLength)")
        }
        if config.groupSize > 0 {
            guard rows % config.groupSize == 0 else {
                throw EDKMError(.shape, "group_size \(config.groupSize) must divide shape[0] = \(rows)")
            }
            partitions = rows / config.groupSize
            elementsPerPartition = config.groupSize * rowLength
        } else {
            partitions = 1
            elementsPerPartition = total
        }
        guard vectorsPerPartition >= config.k else {
            throw EDKMError(.shape, "each partition has \(vectorsPerPartition) vectors, fewer than the \(config.k) centroids of \(config.bits) bits")
        }
    }
}
