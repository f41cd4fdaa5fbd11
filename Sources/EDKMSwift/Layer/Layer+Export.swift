import EDKMNumerics

/// Hard palettization: LUT + packed indices, and the inverse.
///
/// Packing: per partition, label n (n-th d-vector in element order) occupies stream bits
/// n*bits ..< n*bits+bits, least significant bit first; stream bit b is bit b % 8 of byte b / 8
/// of the partition's slice; each partition's slice starts on a byte boundary.
extension Layer {
    /// LUT values (partitions x k x d) and packed bytes of an export.
    public var exportSizes: (lutCount: Int, packedBytes: Int) {
        let perPartition = (geometry.vectorsPerPartition * config.bits + 7) / 8
        return (centroidCount, perPartition * geometry.partitions)
    }

    /// Writes the LUT (the current centroids, as `lutType`: f32 or f16) and the packed labels
    /// argmin_j (||w - c_j||^2 - prune [j = 0]) (in the scale-free temperature mode prune is
    /// relative to the distortion of these weights under the layer's centroids).
    /// lutCount: the LUT buffer's size in values, checked when given (it must be `exportSizes.lutCount`).
    /// (`exportPalette` without the channel scale: the weights as clustered.)
    func exportClustering(weights: UnsafeRawPointer, type: ElementType, count: Int,
                              lut: UnsafeMutableRawPointer, lutType: ElementType, lutCount: Int? = nil,
                              packed: UnsafeMutablePointer<UInt8>, packedBytes: Int) throws(EDKMError) {
        let sizes = try checkExportBuffers(lutType: lutType, lutCount: lutCount, packedBytes: packedBytes)
        try validateWeights(weights, type: type, count: count)
        let c = try getCentroids()
        if lutType == .f16, let bad = c.firstIndex(where: { !HalfConversion.f16ToFloat(HalfConversion.floatToF16($0)).isFinite }) {
            throw EDKMError(.invalidArgument, "centroid \(bad) = \(c[bad]) does not fit an f16 LUT (largest finite f16: 65504); export with an f32 LUT")
        }
        let k = config.k, d = config.clusterDim, bits = config.bits
        let E = geometry.elementsPerPartition, V = geometry.vectorsPerPartition
        let slice = sizes.packedBytes / geometry.partitions
        // The prune bias of each partition (relative to the distortion of these weights under these
        // centroids in the scale-free mode).
        let c0 = (0..<geometry.partitions).map { p in c[(p * k * d)..<((p + 1) * k * d)].map { Double($0) } }
        let prunes = try effectiveParameters(
            (0..<geometry.partitions).map { DenseElementRows(base: weights + $0 * E * type.byteWidth, type: type, d: d, rowCount: V) },
            initial: c0, vectors: V, checkTemperature: false).map(\.prune)
        let chunkVectors = 1 << 16  // a multiple of 8: chunks start on byte boundaries
        let chunks = (V + chunkVectors - 1) / chunkVectors
        c.withUnsafeBufferPointer { cb in
            runtime.pool.parallelFor(geometry.partitions * chunks) { item in
                let p = item / chunks
                let lo = (item % chunks) * chunkVectors, hi = Swift.min(V, lo + chunkVectors)
                let cp = cb.baseAddress! + p * k * d
                let prune = prunes[p]
                let out = packed + p * slice
                // Clear this chunk's bytes, then OR the labels in.
                let firstByte = lo * bits / 8, endByte = Swift.min(slice, (hi * bits + 7) / 8)
                for b in firstByte..<endByte { out[b] = 0 }
                for v in lo..<hi {
                    var best = 0
                    var bestD = Double.infinity
                    for j in 0..<k {
                        var dist = 0.0
                        for e in 0..<d {
                            let diff = Double(ElementIO.load(weights, type: type, at: p * E + v * d + e)) - Double(cp[j * d + e])
                            dist += diff * diff
                        }
                        if j == 0 { dist -= prune }
                        if dist < bestD { bestD = dist; best = j }
                    }
                    var bit = v * bits
                    for b in 0..<bits where (best >> b) & 1 == 1 {
                        out[(bit + b) >> 3] |= UInt8(1 << ((bit + b) & 7))
                    }
                    bit += bits
                }
            }
        }
        for i in 0..<c.count { ElementIO.store(c[i], lut, type: lutType, at: i) }
    }

    /// out[element] = lut[label] for every element, from an export of this layer's geometry.
    /// lutCount: the LUT buffer's size in values, checked when given (it must be `exportSizes.lutCount`).
    public func unpack(lut: UnsafeRawPointer, lutType: ElementType, lutCount: Int? = nil, packed: UnsafePointer<UInt8>,
                       packedBytes: Int, output: UnsafeMutableRawPointer, outputType: ElementType, count: Int) throws(EDKMError) {
        let sizes = try checkExportBuffers(lutType: lutType, lutCount: lutCount, packedBytes: packedBytes)
        guard count == geometry.count else {
            throw EDKMError(.shape, "expected \(geometry.count) output elements, got \(sizeText(count))")
        }
        if let bad = ElementIO.firstNonFinite(lut, type: lutType, count: sizes.lutCount) {
            throw EDKMError(.nonFinite, "LUT entry \(bad) is \(ElementIO.load(lut, type: lutType, at: bad)) (NaN or Inf)")
        }
        let k = config.k, d = config.clusterDim, bits = config.bits
        let E = geometry.elementsPerPartition, V = geometry.vectorsPerPartition
        let slice = sizes.packedBytes / geometry.partitions
        let mask = (1 << bits) - 1
        runtime.pool.parallelFor(geometry.partitions) { p in
            let src = packed + p * slice
            for v in 0..<V {
                let bit = v * bits
                var word = Int(src[bit >> 3])
                if (bit & 7) + bits > 8 { word |= Int(src[(bit >> 3) + 1]) << 8 }
                let label = (word >> (bit & 7)) & mask
                for e in 0..<d {
                    let value = ElementIO.load(lut, type: lutType, at: (p * k + label) * d + e)
                    ElementIO.store(value, output, type: outputType, at: p * E + v * d + e)
                }
            }
        }
    }

    /// The export's sizes, after checking the buffers a caller passes for a LUT and packed labels:
    /// the LUT dtype (f32 or f16), the LUT's value count when given, the packed byte count.
    private func checkExportBuffers(lutType: ElementType, lutCount: Int?, packedBytes: Int) throws(EDKMError)
        -> (lutCount: Int, packedBytes: Int) {
        guard lutType == .f32 || lutType == .f16 else {
            throw EDKMError(.dtype, "the LUT dtype must be f32 or f16, got \(lutType.name)")
        }
        let sizes = exportSizes
        if let lutCount, lutCount != sizes.lutCount {
            throw EDKMError(.shape, "the LUT must hold \(sizes.lutCount) values (partitions x 2^bits x cluster_dim), got \(sizeText(lutCount))")
        }
        guard packedBytes == sizes.packedBytes else {
            throw EDKMError(.shape, "packed buffer must be \(sizes.packedBytes) bytes, got \(sizeText(packedBytes))")
        }
        return sizes
    }
}
