import ArgumentParser
import CEDKM
import EDKMClient
import EDKMSafetensors
import Foundation

struct UnpackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unpack",
        abstract: "Restore the dense tensors of a palettized safetensors file (original dtypes).",
        discussion: """
        Every <name>.lut / <name>.indices pair described in the header's metadata becomes the dense \
        tensor <name> of its original shape and dtype, each weight being its LUT entry \
        (libedkm's edkm_layer_unpack); other tensors and metadata are copied unchanged.
        """)

    @Argument(help: "The palettized input .safetensors file.")
    var input: String

    @Option(name: .shortAndLong, help: "The output .safetensors file.")
    var output: String

    @Flag(help: "Overwrite the output if it exists.")
    var force = false

    @Flag(help: "Plain progress lines even on a terminal.")
    var plain = false

    func run() throws {
        try reportingErrors {
            TemporaryFiles.installSignalHandlers()
            TruncatedInputGuard.install()
            try unpack()
        }
    }

    private func unpack() throws {
        try SafetensorsWriter.checkOutput(output, force: force, input: input)
        let file = try SafetensorsFile(path: input)
        let records = try PalettizedTensor.records(in: file.header)
        guard !records.isEmpty else {
            throw CLIError("\(input) holds no palettized tensors (no edkm.tensor.* metadata): nothing to unpack")
        }
        enum Source { case copy(TensorInfo), dense(PalettizedTensor) }
        var claimedBy: [String: PalettizedTensor] = [:]
        for r in records {
            for n in r.tensorNames { claimedBy[n] = r }
        }
        var entries: [(OutputTensor, Source)] = []
        var emitted = Set<String>()
        for t in file.header.tensors {
            if let r = claimedBy[t.name] {
                if emitted.insert(r.name).inserted {
                    entries.append((OutputTensor(name: r.name, dtype: r.dtype, shape: r.shape), .dense(r)))
                }
            } else {
                entries.append((OutputTensor(name: t.name, dtype: t.dtype, shape: t.shape), .copy(t)))
            }
        }
        entries = alignmentOrdered(entries) { $0.0.dtype }
        let kept = PalettizedTensor.plainMetadata(of: file.header)
        let metadata = kept.isEmpty ? nil : Metadata(kept)

        let runtime = try EDKMRuntime()
        let writer = try SafetensorsWriter(path: output, tensors: entries.map(\.0), metadata: metadata, force: force)
        let progress = Progress(label: "unpack", total: writer.dataBytes, unit: .bytes, forcePlain: plain, plainUpdates: true)
        var doneBytes = 0
        for (i, (out, source)) in entries.enumerated() {
            progress.update(doneBytes, out.name, inFlight: out.byteCount, force: true)
            switch source {
            case .copy(let t):
                try writer.append(file.data(t))
                file.release(t)
            case .dense(let r):
                let dense = try UnpackCommand.restore(r, file: file, runtime: runtime)
                try writer.append(dense)
                progress.plain("[\(i + 1)/\(entries.count)] \(r.name): \(Format.shape(r.shape)) \(r.dtype.rawValue) from \(r.bits)-bit indices")
            }
            doneBytes += out.byteCount
            progress.update(doneBytes)
        }
        try writer.finish()
        progress.finish()
        print("unpacked \(records.count) palettized tensors (\(entries.count) tensors in all): \(Format.bytes(file.fileSize)) -> \(Format.bytes(writer.headerBytes + writer.dataBytes))")
        print("wrote \(output)")
    }

    /// The dense bytes of one palettized tensor, through edkm_layer_unpack (a BF16 LUT widened to
    /// F32 first, exactly: the library reads F32 and F16 LUTs); with a scale tensor, unpacked as F32,
    /// each row multiplied by its factor and rounded once to the original dtype.
    static func restore(_ r: PalettizedTensor, file: SafetensorsFile, runtime: EDKMRuntime) throws -> [UInt8] {
        let lutInfo = file.header.tensor(named: r.lutName)!
        let idxInfo = file.header.tensor(named: r.indicesName)!
        var cfg = EDKMLayer.defaultConfig()
        cfg.bits = UInt32(r.bits)
        cfg.group_size = UInt32(r.groupSize)
        cfg.cluster_dim = UInt32(r.clusterDim)
        do {
            let layer = try EDKMLayer(runtime: runtime, shape: r.shape, config: cfg)
            let packed = file.data(idxInfo)
            let scale = try r.scaleName.map { try rowFactors(file, $0, rows: r.shape[0]) }
            let outDtype: DType = scale == nil ? r.dtype : .f32
            var out = [UInt8](repeating: 0, count: r.elementCount * outDtype.alignment)
            func unpack(_ lut: UnsafeRawPointer, _ lutDtype: DType) throws {
                try out.withUnsafeMutableBytes { o in
                    try layer.unpack(lut: lut, lutDtype: lutDtype.edkm!, lutCount: lutInfo.elementCount,
                                     packed: packed.baseAddress!.assumingMemoryBound(to: UInt8.self), packedBytes: packed.count,
                                     out: o.baseAddress!, outDtype: outDtype.edkm!)
                }
            }
            if lutInfo.dtype == .bf16 {
                let bytes = file.data(lutInfo)
                let widened = (0..<lutInfo.elementCount).map { FloatBits.load(bytes.baseAddress!, .bf16, $0) }
                try widened.withUnsafeBytes { try unpack($0.baseAddress!, .f32) }
            } else {
                let lut = AlignedTensor(file.data(lutInfo), alignment: lutInfo.dtype.alignment)
                try withExtendedLifetime(lut) { try unpack(lut.pointer, lutInfo.dtype) }
            }
            file.release(idxInfo)
            if let scale { return ChannelScaleRows.multiplied(out, by: scale, dtype: r.dtype) }
            return out
        } catch let e as CLIError {
            throw CLIError("palettized tensor \(JSON.quote(r.name)): \(e.message)")
        } catch let e as EDKMError {
            throw CLIError("palettized tensor \(JSON.quote(r.name)): \(e)")
        }
    }

    /// The per-row factors of a scale tensor (F32 [rows], checked by the reader), each finite and > 0.
    private static func rowFactors(_ file: SafetensorsFile, _ name: String, rows: Int) throws -> [Float] {
        let info = file.header.tensor(named: name)!
        let bytes = file.data(info)
        let factors = (0..<rows).map { FloatBits.load(bytes.baseAddress!, .f32, $0) }
        if let bad = factors.firstIndex(where: { !($0.isFinite && $0 > 0) }) {
            throw CLIError("scale factor \(bad) is \(factors[bad]); each must be finite and > 0")
        }
        return factors
    }
}
