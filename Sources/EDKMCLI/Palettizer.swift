import CEDKM
import EDKMClient
import EDKMSafetensors
import Foundation

/// Post-training palettization of a safetensors file through libedkm: per selected tensor, a
/// layer whose centroids are initialised by exact optimal 1-D k-means (edkm_layer_init_centroids),
/// then a hard export (edkm_layer_export: LUT + packed indices). Output written as a stream.
struct PalettizeSettings {
    enum LUTType: String { case auto, f16, f32 }
    var bits = 4
    var groupSize = 0
    var clusterDim = 1
    var minSize = 2048
    var include: Regex<AnyRegexOutput>? = nil
    var exclude: Regex<AnyRegexOutput>? = nil
    var lutType = LUTType.auto
    var threads: UInt32 = 0
    /// A per-output-channel scale (format version 2 records with a scale tensor), or none.
    var channelScale = ChannelScaleScheme.none
}

/// What happens to one input tensor.
enum TensorPlan {
    case copy(TensorInfo, reason: String)
    case palettize(TensorInfo, PalettizedTensor)

    var info: TensorInfo {
        switch self {
        case .copy(let t, _), .palettize(let t, _): return t
        }
    }
}

/// The result of palettizing one tensor.
struct PalettizedResult {
    let record: PalettizedTensor
    let layer: EDKMLayer
    let lutDtype: DType
    let lutBytes: [UInt8]
    /// The channel scale factors as an F32 tensor [rows] (the record's scale), nil without one.
    let scaleBytes: [UInt8]?
    /// Kept while the total stays small; otherwise re-exported when written.
    var packed: [UInt8]?
    let distinct: Int
    let diffNorm: Double
    let weightNorm: Double
    let seconds: Double

    var relativeError: Double { weightNorm > 0 ? diffNorm / weightNorm : (diffNorm > 0 ? .infinity : 0) }
    var bytesAfter: Int { lutBytes.count + record.packedBytes + (scaleBytes?.count ?? 0) }
}

struct Palettizer {
    let file: SafetensorsFile
    let settings: PalettizeSettings
    /// Packed indices up to this many bytes in all are kept from phase 1 to phase 2; beyond it
    /// they are exported again when written. EDKM_PACKED_CACHE_BYTES overrides it (tests use 0).
    static let packedCacheLimit: Int = {
        if let v = ProcessInfo.processInfo.environment["EDKM_PACKED_CACHE_BYTES"], let n = Int(v), n >= 0 { return n }
        return 256 << 20
    }()

    /// Decides, for every tensor of the input, whether it is palettized (and how) or copied.
    func plan() throws -> [TensorPlan] {
        if let m = file.header.metadata, PalettizedTensor.isPalettized(m) {
            throw CLIError("\(file.path) is already palettized (it has edkm.* or edkm.palettized.v1 metadata); unpack it first")
        }
        var plans: [TensorPlan] = []
        for t in file.header.tensors {
            plans.append(try planOne(t))
        }
        // Output names must be unique.
        var owner: [String: String] = [:]
        for p in plans {
            let names: [String]
            switch p {
            case .copy(let t, _): names = [t.name]
            case .palettize(_, let r): names = r.tensorNames
            }
            for n in names {
                if let other = owner[n] {
                    throw CLIError("output tensor name \(JSON.quote(n)) would be written twice (by \(JSON.quote(other)) and \(JSON.quote(p.info.name))); rename the input tensor or exclude one")
                }
                owner[n] = p.info.name
            }
        }
        return plans
    }

    private func planOne(_ t: TensorInfo) throws -> TensorPlan {
        guard t.dtype.isPalettizable else { return .copy(t, reason: "\(t.dtype.rawValue) is not F32/F16/BF16") }
        guard t.shape.count >= 2 else { return .copy(t, reason: "rank \(t.shape.count) < 2") }
        guard t.elementCount >= settings.minSize else {
            return .copy(t, reason: "\(t.elementCount) elements < --min-size \(settings.minSize)")
        }
        if let inc = settings.include, (try? inc.firstMatch(in: t.name)) == nil {
            return .copy(t, reason: "not matched by --include")
        }
        if let exc = settings.exclude, (try? exc.firstMatch(in: t.name)) != nil {
            return .copy(t, reason: "matched by --exclude")
        }
        do {
            let r = try PalettizedTensor(name: t.name, dtype: t.dtype, shape: t.shape, bits: settings.bits,
                                         groupSize: settings.groupSize, clusterDim: settings.clusterDim,
                                         scaleName: settings.channelScale == .none ? nil : t.name + ".scale")
            return .palettize(t, r)
        } catch {
            // The geometry does not fit this tensor (e.g. group size vs rows): keep it dense.
            let why = error.message.replacingOccurrences(of: "palettized tensor \(JSON.quote(t.name)): ", with: "")
            return .copy(t, reason: why)
        }
    }

    /// Palettizes one tensor: layer, optimal 1-D k-means, export, statistics.
    ///
    /// With a channel scale the layer divides every row by its factor (fixed by the library from
    /// these weights at init) before the k-means and the export; the LUT and the error's unpack are
    /// in the scaled units until each row is multiplied back (ChannelScaleRows, the format's rule).
    ///
    /// prune_threshold is 0 here: post-training palettization wants the plain nearest centroid,
    /// not DKM training's bias towards centroid 0. Every other setting is the library's default;
    /// F32 tensors are handed over as they are (the library keys tiny or huge F32 weights for its
    /// 1-D k-means on a power-of-two scaled copy, and by bf16 when f16 overflows).
    func palettize(_ t: TensorInfo, _ r: PalettizedTensor, runtime: EDKMRuntime, keepPacked: Bool) throws -> PalettizedResult {
        let start = Date()
        let q = JSON.quote(t.name)
        let dtype = t.dtype.edkm!
        let original = AlignedTensor(file.data(t), alignment: t.dtype.alignment)
        var cfg = EDKMLayer.defaultConfig()
        cfg.bits = UInt32(r.bits)
        cfg.group_size = UInt32(r.groupSize)
        cfg.cluster_dim = UInt32(r.clusterDim)
        cfg.prune_threshold = 0
        cfg.`init` = Int32(EDKM_INIT_AUTO.rawValue)
        cfg.channel_scale = settings.channelScale.configValue
        do {
            let layer = try EDKMLayer(runtime: runtime, shape: r.shape, config: cfg)
            try layer.initCentroids(original.pointer, dtype)
            let factors = r.scaleName == nil ? nil : try layer.channelScale(rows: r.shape[0])
            let sizes = try layer.exportSizes()
            guard sizes.lutCount == r.lutShape.reduce(1, *), sizes.packedBytes == r.packedBytes else {
                throw CLIError("edkm_layer_export_sizes gave \(sizes) but the format expects (\(r.lutShape.reduce(1, *)), \(r.packedBytes))")
            }
            let centroids = try layer.centroids()
            guard centroids.allSatisfy(\.isFinite) else {
                throw CLIError("libedkm produced non-finite centroids (weights out of the range it keys them in); try --group-size")
            }
            let lutDtype = chooseLUT(for: t.dtype, centroids: centroids)
            var packed = [UInt8](repeating: 0, count: sizes.packedBytes)
            let lut = try export(layer, original, dtype: t.dtype, lutDtype: lutDtype, lutCount: sizes.lutCount, packed: &packed)
            // The error of what unpack will restore: lut[label] (times the row's factor) rounded to the tensor's dtype.
            let unpackDtype: DType = factors == nil ? t.dtype : .f32
            var unpacked = [UInt8](repeating: 0, count: t.elementCount * unpackDtype.alignment)
            try unpacked.withUnsafeMutableBytes { o in
                try lut.withUnsafeBytes { l in
                    try layer.unpack(lut: l.baseAddress!, lutDtype: lutDtype.edkm!, lutCount: sizes.lutCount, packed: packed, packedBytes: packed.count,
                                     out: o.baseAddress!, outDtype: unpackDtype.edkm!)
                }
            }
            if let factors { unpacked = ChannelScaleRows.multiplied(unpacked, by: factors, dtype: t.dtype) }
            let err = unpacked.withUnsafeBytes {
                TensorStatistics.reconstructionError(weights: original.pointer, unpacked: $0.baseAddress!, dtype: t.dtype, count: t.elementCount)
            }
            let distinct = TensorStatistics.distinctValues(original.pointer, dtype: t.dtype, count: t.elementCount)
            file.release(t)
            return PalettizedResult(record: r, layer: layer, lutDtype: lutDtype, lutBytes: lut,
                                    scaleBytes: factors.map(ChannelScaleRows.bytes),
                                    packed: keepPacked ? packed : nil, distinct: distinct, diffNorm: err.diff,
                                    weightNorm: err.norm, seconds: Date().timeIntervalSince(start))
        } catch let e as CLIError {
            throw CLIError("tensor \(q): \(e.message)")
        } catch let e as EDKMError {
            throw CLIError("tensor \(q): \(e)")
        }
    }

    /// edkm_layer_export of the weights; returns the LUT bytes in lutDtype.
    private func export(_ layer: EDKMLayer, _ w: AlignedTensor, dtype: DType, lutDtype: DType, lutCount: Int,
                        packed: inout [UInt8]) throws -> [UInt8] {
        var lut = [UInt8](repeating: 0, count: lutCount * lutDtype.alignment)
        try lut.withUnsafeMutableBytes { l in
            try packed.withUnsafeMutableBufferPointer { p in
                try layer.export(w.pointer, dtype.edkm!, lut: l.baseAddress!, lutDtype: lutDtype.edkm!,
                                 lutCount: lutCount, packed: p.baseAddress!, packedBytes: p.count)
            }
        }
        return lut
    }

    /// F16 LUTs for 16-bit tensors (F32 for BF16 tensors whose centroids F16 cannot hold
    /// accurately), F32 for F32 tensors, unless --lut-dtype says otherwise.
    private func chooseLUT(for dtype: DType, centroids: [Float]) -> DType {
        switch settings.lutType {
        case .f16: return .f16
        case .f32: return .f32
        case .auto:
            switch dtype {
            case .f16: return .f16
            case .bf16:
                let fits = centroids.allSatisfy { $0 == 0 || (abs($0) >= 6.103515625e-05 && abs($0) <= 65504) }
                return fits ? .f16 : .f32
            default: return .f32
            }
        }
    }

    /// The packed indices of a result: cached, or exported again (same centroids, same labels).
    func packedIndices(_ result: PalettizedResult, _ t: TensorInfo) throws -> [UInt8] {
        if let p = result.packed { return p }
        let original = AlignedTensor(file.data(t), alignment: t.dtype.alignment)
        var packed = [UInt8](repeating: 0, count: result.record.packedBytes)
        let lut = try export(result.layer, original, dtype: t.dtype, lutDtype: result.lutDtype,
                             lutCount: result.record.lutShape.reduce(1, *), packed: &packed)
        guard lut == result.lutBytes else { throw CLIError("tensor \(JSON.quote(t.name)): the second export gave a different LUT") }
        file.release(t)
        return packed
    }
}

/// Entries of an output file in data order: largest element size first (so every tensor is
/// aligned to its element size), input order within a size.
func alignmentOrdered<T>(_ items: [T], dtype: (T) -> DType) -> [T] {
    items.enumerated().sorted { a, b in
        let x = dtype(a.element).alignment, y = dtype(b.element).alignment
        return x != y ? x > y : a.offset < b.offset
    }.map(\.element)
}
