import EDKMSafetensors

/// `edkm info --json`: everything `info` prints, as one JSON object (sizes in bytes).
///
///     {"file": path, "file_bytes": n, "header_bytes": n, "data_bytes": n,
///      "metadata": {key: value, ...} (edkm.tensor.* entries excluded: they are in "palettized"),
///      "dtypes": {dtype: {"tensors": n, "bytes": n}},
///      "palettized": [{"name", "shape", "dtype", "bits", "group_size" (0 = per tensor),
///                      "cluster_dim", "lut": {"name", "dtype", "shape"}, "indices": {...},
///                      "dense_bytes", "palettized_bytes", "ratio"}],
///      "format": the palettized format's name or null,
///      "tensors": [{"name", "dtype", "shape", "bytes", "data_offsets": [begin, end]}] (file order)}
enum InfoJSON {
    static func render(path: String, file: SafetensorsFile, records: [PalettizedTensor]) -> String {
        let h = file.header
        func q(_ s: String) -> String { JSON.quote(s) }
        func shape(_ s: [Int]) -> String { "[" + s.map(String.init).joined(separator: ",") + "]" }
        func tensorRef(_ t: TensorInfo) -> String { "{\"name\":\(q(t.name)),\"dtype\":\(q(t.dtype.rawValue)),\"shape\":\(shape(t.shape))}" }

        var fields: [String] = []
        fields.append("\"file\":\(q(path))")
        fields.append("\"file_bytes\":\(file.fileSize)")
        fields.append("\"header_bytes\":\(h.headerLength + 8)")
        fields.append("\"data_bytes\":\(h.dataSize)")
        let meta = (h.metadata?.entries ?? []).filter { !$0.key.hasPrefix(PalettizedTensor.tensorKeyPrefix) }
        fields.append("\"metadata\":{" + meta.map { "\(q($0.key)):\(q($0.value))" }.joined(separator: ",") + "}")
        var dtypes: [String: (count: Int, bytes: Int)] = [:]
        for t in h.tensors { dtypes[t.dtype.rawValue, default: (0, 0)].count += 1; dtypes[t.dtype.rawValue]!.bytes += t.byteCount }
        fields.append("\"dtypes\":{" + dtypes.sorted { $0.key < $1.key }
            .map { "\(q($0.key)):{\"tensors\":\($0.value.count),\"bytes\":\($0.value.bytes)}" }.joined(separator: ",") + "}")
        let pal = records.map { r -> String in
            let lut = h.tensor(named: r.lutName)!, idx = h.tensor(named: r.indicesName)!
            let dense = r.elementCount * r.dtype.alignment, packed = r.tensorNames.reduce(0) { $0 + h.tensor(named: $1)!.byteCount }  // LUT, indices, scale
            return "{\"name\":\(q(r.name)),\"shape\":\(shape(r.shape)),\"dtype\":\(q(r.dtype.rawValue)),\"bits\":\(r.bits),"
                + "\"group_size\":\(r.groupSize),\"cluster_dim\":\(r.clusterDim),\"lut\":\(tensorRef(lut)),\"indices\":\(tensorRef(idx)),"
                + "\"dense_bytes\":\(dense),\"palettized_bytes\":\(packed),\"ratio\":\(Double(dense) / Double(max(packed, 1)))}"
        }
        fields.append("\"palettized\":[" + pal.joined(separator: ",") + "]")
        fields.append("\"format\":" + (PalettizedTensor.formatName(of: h.metadata).map(q) ?? "null"))
        let tensors = h.tensors.map {
            "{\"name\":\(q($0.name)),\"dtype\":\(q($0.dtype.rawValue)),\"shape\":\(shape($0.shape)),\"bytes\":\($0.byteCount),"
                + "\"data_offsets\":[\($0.begin),\($0.end)]}"
        }
        fields.append("\"tensors\":[" + tensors.joined(separator: ",") + "]")
        return "{" + fields.joined(separator: ",") + "}"
    }
}
