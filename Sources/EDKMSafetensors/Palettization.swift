/// One palettized tensor of the palettized safetensors format (include/edkm-palettized-format.md),
/// written by `edkm palettize` and `edkm.torch.export_safetensors`, read by `edkm unpack`, `edkm
/// info` and `edkm.torch.load_safetensors`.
///
/// A palettized tensor `W` (dtype F32, F16 or BF16, shape S, N elements) becomes two tensors:
///   - `W.lut`: dtype F32, F16 or BF16, shape [groups, 2^bits, cluster_dim], the centroids;
///   - `W.indices`: dtype U8, shape [groups, bytes_per_group], the packed labels: within a group,
///     label n (the n-th cluster_dim-vector in element order) occupies stream bits
///     n*bits ..< (n+1)*bits, least significant bit first, stream bit b being bit b % 8 of byte
///     b / 8; each group starts on a byte boundary (libedkm's edkm_layer_export layout).
/// groups = S[0] / group_size (1 when group_size is 0: one LUT for the tensor); a group is
/// group_size consecutive rows. Unpacked: W[element] = lut[group][label][element % cluster_dim],
/// converted to the original dtype.
///
/// The header's `__metadata__` (string values, as safetensors requires) holds
///   "edkm.format": "palettized-1" (major version 1; "palettized-1.<minor>" for later compatible revisions)
///   "edkm.tensor.<W>": a JSON object as a string: {"dtype": "F16", "shape": [4096, 4096],
///       "bits": 3, "group_size": 0, "cluster_dim": 1, "lut": "<W>.lut", "indices": "<W>.indices"}
/// and keeps the input's own metadata entries. Format version 2 ("palettized-2") adds the optional
/// record field "scale": the name of an F32 tensor [S[0]] of per-row factors (a per-output-channel
/// scale); W[element of row r] = lut[...] x scale[r], rounded once to the original dtype. A file
/// is version 2 when a record has a scale, so that readers of version 1 refuse it.
public struct PalettizedTensor: Equatable, Sendable {
    public static let formatKey = "edkm.format"
    public static let formatValue = "palettized-1"
    public static let scaledFormatValue = "palettized-2"
    /// The versions this code reads and writes: majors 1 and 2 (2 = 1 with the record field
    /// "scale"); files of another major version are refused; a newer minor version may add record
    /// fields, which are then ignored.
    public static let formatMajor = 1, formatMinor = 0, scaledFormatMajor = 2
    public static let tensorKeyPrefix = "edkm.tensor."
    public static let versionKey = "edkm.version"

    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let bits: Int
    public let groupSize: Int
    public let clusterDim: Int
    public let lutName: String
    public let indicesName: String
    /// The per-row scale tensor (format version 2), nil without one.
    public let scaleName: String?

    /// Validates the geometry (the same rules as edkm_layer_create).
    public init(name: String, dtype: DType, shape: [Int], bits: Int, groupSize: Int, clusterDim: Int,
                lutName: String? = nil, indicesName: String? = nil, scaleName: String? = nil) throws(SafetensorsError) {
        let q = JSON.quote(name)
        func bad(_ why: String) -> SafetensorsError { SafetensorsError(.invalidPalettization, "palettized tensor \(q): \(why)") }
        guard dtype.isPalettizable else { throw bad("original dtype \(dtype.rawValue) is not F32, F16 or BF16") }
        guard !shape.isEmpty, shape.count <= 16 else { throw bad("shape must have 1 to 16 dimensions") }
        guard shape.allSatisfy({ $0 >= 1 && $0 <= 1 << 40 }) else { throw bad("shape extents must be in 1...2^40") }
        var n = 1
        for e in shape {
            let (p, o) = n.multipliedReportingOverflow(by: e)
            guard !o, p <= 1 << 48 else { throw bad("shape has too many elements") }
            n = p
        }
        guard (1...8).contains(bits) else { throw bad("bits must be 1...8, got \(bits)") }
        guard (1...64).contains(clusterDim) else { throw bad("cluster_dim must be 1...64, got \(clusterDim)") }
        let row = n / shape[0]
        guard row % clusterDim == 0 else { throw bad("cluster_dim \(clusterDim) does not divide the row length \(row)") }
        guard groupSize >= 0, groupSize == 0 || shape[0] % groupSize == 0 else {
            throw bad("group_size \(groupSize) does not divide shape[0] = \(shape[0])")
        }
        let groups = groupSize == 0 ? 1 : shape[0] / groupSize
        guard n / groups / clusterDim >= 1 << bits else {
            throw bad("a group holds \(n / groups / clusterDim) vectors, fewer than the 2^\(bits) centroids")
        }
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bits = bits
        self.groupSize = groupSize
        self.clusterDim = clusterDim
        self.lutName = lutName ?? name + ".lut"
        self.indicesName = indicesName ?? name + ".indices"
        guard self.lutName != self.indicesName else { throw bad("lut and indices are the same tensor") }
        self.scaleName = scaleName
        guard scaleName != self.lutName && scaleName != self.indicesName else {
            throw bad("scale is the same tensor as lut or indices")
        }
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var groups: Int { groupSize == 0 ? 1 : shape[0] / groupSize }
    public var centroids: Int { 1 << bits }
    public var vectorsPerGroup: Int { elementCount / groups / clusterDim }
    public var bytesPerGroup: Int { (vectorsPerGroup * bits + 7) / 8 }
    public var lutShape: [Int] { [groups, centroids, clusterDim] }
    public var indicesShape: [Int] { [groups, bytesPerGroup] }
    public var packedBytes: Int { groups * bytesPerGroup }
    /// The tensors the record claims: LUT, indices and, with a scale, the scale.
    public var tensorNames: [String] { [lutName, indicesName] + (scaleName.map { [$0] } ?? []) }

    public var metadataKey: String { PalettizedTensor.tensorKeyPrefix + name }

    /// The metadata value: a compact JSON object.
    public var metadataValue: String {
        JSON.serialize(.object([
            JSONMember(key: "dtype", value: .string(dtype.rawValue)),
            JSONMember(key: "shape", value: .array(shape.map { .number(String($0)) })),
            JSONMember(key: "bits", value: .number(String(bits))),
            JSONMember(key: "group_size", value: .number(String(groupSize))),
            JSONMember(key: "cluster_dim", value: .number(String(clusterDim))),
            JSONMember(key: "lut", value: .string(lutName)),
            JSONMember(key: "indices", value: .string(indicesName)),
        ] + (scaleName.map { [JSONMember(key: "scale", value: .string($0))] } ?? [])))
    }

    /// Parses one "edkm.tensor.<name>" entry; `ignoringUnknownFields` for a file of a newer minor version.
    /// `major`: the file's format major version (2 knows the field "scale").
    public static func parse(key: String, value: String, ignoringUnknownFields: Bool = false,
                             major: Int = formatMajor) throws(SafetensorsError) -> PalettizedTensor {
        try parse(name: String(key.dropFirst(tensorKeyPrefix.count)), value: value,
                  ignoringUnknownFields: ignoringUnknownFields, major: major)
    }

    /// Parses a record's JSON object. `legacy`: the older edkm.torch form, {"bits", "group_size",
    /// "cluster_dim", "shape", "dtype": "float32" | "float16" | "bfloat16"}, its tensors <name>.lut
    /// and <name>.indices.
    static func parse(name: String, value: String, legacy: Bool = false, ignoringUnknownFields: Bool = false,
                      major: Int = formatMajor) throws(SafetensorsError) -> PalettizedTensor {
        let q = JSON.quote(name)
        func bad(_ why: String) -> SafetensorsError { SafetensorsError(.invalidPalettization, "palettized tensor \(q): \(why)") }
        let v: JSONValue
        do throws(JSONParseError) { v = try JSON.parse(value) } catch {
            throw bad("metadata is not valid JSON (byte \(error.offset): \(error.reason))")
        }
        guard case .object(let fields) = v else { throw bad("metadata is \(v.typeName), not an object") }
        let scaled = !legacy && major >= scaledFormatMajor
        let known = ["dtype", "shape", "bits", "group_size", "cluster_dim"] + (legacy ? [] : ["lut", "indices"])
            + (scaled ? ["scale"] : [])
        for f in fields where !known.contains(f.key) && !ignoringUnknownFields { throw bad("unknown metadata field \(JSON.quote(f.key))") }
        func integer(_ field: String) throws(SafetensorsError) -> Int {
            guard let x = v[field] else { throw bad("missing metadata field \"\(field)\"") }
            guard let u = x.unsignedInteger, u <= 1 << 40 else { throw bad("\(field) must be a non-negative integer, got \(JSON.serialize(x))") }
            return Int(u)
        }
        func string(_ field: String) throws(SafetensorsError) -> String {
            guard let x = v[field] else { throw bad("missing metadata field \"\(field)\"") }
            guard case .string(let s) = x else { throw bad("\(field) must be a string, got \(x.typeName)") }
            return s
        }
        let dtypeName = try string("dtype")
        let legacyNames: [String: DType] = ["float32": .f32, "float16": .f16, "bfloat16": .bf16]
        guard let dtype = legacy ? legacyNames[dtypeName] : DType(rawValue: dtypeName) else { throw bad("unknown original dtype \(JSON.quote(dtypeName))") }
        guard let shapeValue = v["shape"] else { throw bad("missing metadata field \"shape\"") }
        guard case .array(let extents) = shapeValue else { throw bad("shape must be an array, got \(shapeValue.typeName)") }
        var shape: [Int] = []
        for e in extents {
            guard let u = e.unsignedInteger, u <= 1 << 40 else { throw bad("shape entries must be integers in 1...2^40, got \(JSON.serialize(e))") }
            shape.append(Int(u))
        }
        return try PalettizedTensor(name: name, dtype: dtype, shape: shape, bits: try integer("bits"),
                                    groupSize: try integer("group_size"), clusterDim: try integer("cluster_dim"),
                                    lutName: legacy ? nil : try string("lut"), indicesName: legacy ? nil : try string("indices"),
                                    scaleName: scaled && v["scale"] != nil ? try string("scale") : nil)
    }

    /// The metadata entries of a file that do not describe its palettization (the ones unpack keeps).
    public static func plainMetadata(of header: Header) -> [(key: String, value: String)] {
        guard let metadata = header.metadata else { return [] }
        if metadata[formatKey] == nil, LegacyPalettizedFormat.matches(metadata) {
            return metadata.entries.filter { !LegacyPalettizedFormat.isFormatEntry($0.key, of: header) }
        }
        return metadata.entries.filter { !$0.key.hasPrefix("edkm.") }
    }

    /// The format a file's metadata names: "edkm.format", or the older edkm.torch form's name.
    public static func formatName(of metadata: Metadata?) -> String? {
        guard let metadata else { return nil }
        return metadata[formatKey] ?? (LegacyPalettizedFormat.matches(metadata) ? LegacyPalettizedFormat.formatValue : nil)
    }

    /// Whether a file's metadata says it is palettized (any edkm.* entry, or the older edkm.torch form).
    public static func isPalettized(_ metadata: Metadata) -> Bool {
        metadata.entries.contains { $0.key.hasPrefix("edkm.") } || LegacyPalettizedFormat.matches(metadata)
    }

    /// Checks that the header holds this tensor's LUT and indices with the right dtypes and shapes
    /// (`flatIndices`: the older edkm.torch form's [packed bytes] accepted for the indices).
    public func validate(in header: Header, flatIndices: Bool = false) throws(SafetensorsError) {
        let q = JSON.quote(name)
        func bad(_ why: String) -> SafetensorsError { SafetensorsError(.invalidPalettization, "palettized tensor \(q): \(why)") }
        guard let lut = header.tensor(named: lutName) else { throw bad("its LUT tensor \(JSON.quote(lutName)) is missing") }
        guard lut.dtype.isPalettizable else { throw bad("LUT dtype is \(lut.dtype.rawValue), not F32, F16 or BF16") }
        guard lut.shape == lutShape else {
            throw bad("LUT shape is \(lut.shapeDescription), expected \(TensorInfo.describe(lutShape))")
        }
        guard let idx = header.tensor(named: indicesName) else { throw bad("its indices tensor \(JSON.quote(indicesName)) is missing") }
        guard idx.dtype == .u8 else { throw bad("indices dtype is \(idx.dtype.rawValue), not U8") }
        guard idx.shape == indicesShape || (flatIndices && idx.shape == [packedBytes]) else {
            throw bad("indices shape is \(idx.shapeDescription), expected \(TensorInfo.describe(indicesShape))")
        }
        if let scaleName {
            guard let scale = header.tensor(named: scaleName) else { throw bad("its scale tensor \(JSON.quote(scaleName)) is missing") }
            guard scale.dtype == .f32 else { throw bad("scale dtype is \(scale.dtype.rawValue), not F32") }
            guard scale.shape == [shape[0]] else {
                throw bad("scale shape is \(scale.shapeDescription), expected \(TensorInfo.describe([shape[0]]))")
            }
        }
    }

    /// The palettized tensors a file's metadata describes (empty for an ordinary file), checked
    /// against its header: each record's LUT and indices exist and fit, no tensor is claimed twice
    /// and no restored name collides with a tensor that stays as it is. Reads format major version 1
    /// and the older edkm.torch form (LegacyPalettizedFormat); refuses other versions.
    public static func records(in header: Header) throws(SafetensorsError) -> [PalettizedTensor] {
        guard let metadata = header.metadata else { return [] }
        var records: [PalettizedTensor] = []
        let legacy = metadata[formatKey] == nil && LegacyPalettizedFormat.matches(metadata)
        if legacy {
            records = try LegacyPalettizedFormat.records(in: header)
        } else {
            let version = metadata[formatKey].map(FormatVersion.init)
            for e in metadata.entries where e.key.hasPrefix(tensorKeyPrefix) {
                guard let version else {
                    throw SafetensorsError(.invalidPalettization, "metadata has edkm.tensor.* entries but no \(formatKey)")
                }
                try version.check()
                records.append(try parse(key: e.key, value: e.value, ignoringUnknownFields: version.minor ?? 0 > formatMinor,
                                         major: version.major ?? formatMajor))
            }
            if records.isEmpty { try version?.check() }
        }
        var claimed = Set<String>()
        for r in records {
            try r.validate(in: header, flatIndices: legacy)
            for n in r.tensorNames {
                guard claimed.insert(n).inserted else {
                    throw SafetensorsError(.invalidPalettization, "tensor \(JSON.quote(n)) is claimed by two palettized tensors")
                }
            }
        }
        var outputNames = Set(header.tensors.map(\.name)).subtracting(claimed)
        for r in records {
            guard outputNames.insert(r.name).inserted else {
                throw SafetensorsError(.invalidPalettization, "palettized tensor \(JSON.quote(r.name)) would collide with another tensor of that name")
            }
        }
        return records
    }
}

/// The value of "edkm.format": "palettized-<major>" or "palettized-<major>.<minor>".
struct FormatVersion {
    let text: String
    let major: Int?
    let minor: Int?

    init(_ text: String) {
        self.text = text
        let prefix = "palettized-"
        let parts = text.hasPrefix(prefix) ? text.dropFirst(prefix.count).split(separator: ".", omittingEmptySubsequences: false) : []
        let numbers = parts.map { p in p.allSatisfy(\.isASCII) && p.count <= 6 ? Int(p) : nil }
        major = numbers.count == 1 || numbers.count == 2 ? numbers[0] : nil
        minor = numbers.count == 2 ? numbers[1] : (numbers.count == 1 ? 0 : nil)
    }

    /// Throws unless this is major version PalettizedTensor.formatMajor or scaledFormatMajor.
    func check() throws(SafetensorsError) {
        let key = PalettizedTensor.formatKey, ours = JSON.quote(PalettizedTensor.formatValue)
        guard let major, minor != nil else {
            throw SafetensorsError(.invalidPalettization, "unsupported \(key) \(JSON.quote(text)) (not \"palettized-<major>[.<minor>]\"; this edkm reads \(ours))")
        }
        guard major == PalettizedTensor.formatMajor || major == PalettizedTensor.scaledFormatMajor else {
            throw SafetensorsError(.invalidPalettization, "unsupported \(key) \(JSON.quote(text)): format major version \(major), this edkm reads major versions \(PalettizedTensor.formatMajor) and \(PalettizedTensor.scaledFormatMajor) (\(ours), \(JSON.quote(PalettizedTensor.scaledFormatValue)))")
        }
    }
}

extension TensorInfo {
    static func describe(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }
}
