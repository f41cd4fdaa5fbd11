/// The older form edkm.torch wrote before the palettized format was one (still read, never
/// written): `__metadata__` {"format": "edkm.palettized.v1", "edkm_version": ..., "<W>": a JSON
/// object {"bits", "group_size", "cluster_dim", "shape", "dtype": "float32" | "float16" |
/// "bfloat16"}} with the tensors `<W>.lut` (the original dtype) and `<W>.indices`, laid out as in
/// the current format. A record is a metadata key W for which the tensor `<W>.lut` exists.
public enum LegacyPalettizedFormat {
    public static let formatKey = "format"
    public static let formatValue = "edkm.palettized.v1"
    public static let versionKey = "edkm_version"

    public static func matches(_ metadata: Metadata) -> Bool { metadata[formatKey] == formatValue }

    static func records(in header: Header) throws(SafetensorsError) -> [PalettizedTensor] {
        var records: [PalettizedTensor] = []
        for e in header.metadata?.entries ?? [] where header.tensor(named: e.key + ".lut") != nil {
            records.append(try PalettizedTensor.parse(name: e.key, value: e.value, legacy: true))
        }
        return records
    }

    /// Whether a metadata entry describes the palettization (dropped when a file is unpacked).
    static func isFormatEntry(_ key: String, of header: Header) -> Bool {
        key == formatKey || key == versionKey || header.tensor(named: key + ".lut") != nil
    }
}
