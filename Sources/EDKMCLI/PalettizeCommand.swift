import ArgumentParser
import CEDKM
import EDKMClient
import EDKMSafetensors
import Foundation

struct PalettizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "palettize",
        abstract: "Palettize the weights of a safetensors file (post-training, exact 1-D k-means).",
        discussion: """
        Every F32/F16/BF16 tensor of rank >= 2 with at least --min-size elements that the filters \
        select becomes a LUT of 2^bits centroids (per tensor, or per group of --group-size rows) \
        and packed bits-per-weight indices: <name>.lut and <name>.indices (U8), described in the \
        header's __metadata__ ("edkm.tensor.<name>"). Centroids are the exact minimum-squared-error \
        1-D k-means of each partition (libedkm's edkm_layer_init_centroids); other tensors are \
        copied unchanged. `edkm unpack` restores dense tensors of the original dtype.

        --channel-scale min_max|abs_max divides each row (output channel, axis 0) by its factor \
        before clustering, as coremltools' enable_per_channel_scale with \
        per_channel_scaling_factor_scheme "min_max" (half the row's range) or "abs" (the row's \
        largest magnitude); a zero row gets factor 1. The LUT is then in the scaled units and the \
        factors are written as <name>.scale (F32 [rows]); the file is palettized format version 2.
        """)

    @Argument(help: "The input .safetensors file.")
    var input: String

    @Option(name: .shortAndLong, help: "The output .safetensors file.")
    var output: String

    @Option(help: "Bits per weight (index width), 1...8: 2^bits centroids.")
    var bits: Int = 4

    @Option(name: .customLong("group-size"), help: "A LUT per group of N consecutive rows (0 = one LUT per tensor).")
    var groupSize: Int = 0

    @Option(name: .customLong("cluster-dim"), help: "Cluster d-vectors of consecutive row elements (1 = scalars).")
    var clusterDim: Int = 1

    @Option(name: .customLong("min-size"), help: "Palettize only tensors with at least N elements.")
    var minSize: Int = 2048

    @Option(help: "Palettize only tensors whose name matches this regular expression (searched, not anchored).")
    var include: String?

    @Option(help: "Do not palettize tensors whose name matches this regular expression.")
    var exclude: String?

    @Option(name: .customLong("lut-dtype"), help: "LUT dtype: auto (F16 for 16-bit tensors, F32 for F32), f16 or f32.")
    var lutDtype: String = "auto"

    @Option(name: .customLong("channel-scale"),
            help: "Per-output-channel scale: none, min_max (half the row's range) or abs_max (the row's largest magnitude; also 'abs').")
    var channelScale: String = "none"

    @Option(help: "Worker threads for libedkm (0 = the cores available).")
    var threads: Int = 0

    @Flag(help: "Overwrite the output if it exists.")
    var force = false

    @Flag(help: "Plain progress lines even on a terminal.")
    var plain = false

    @Flag(name: .customLong("allow-none"), help: "Write the output even when no tensor is selected for palettization (a copy, with a warning).")
    var allowNone = false

    func validate() throws {
        guard (1...8).contains(bits) else { throw ValidationError("--bits must be 1...8") }
        guard groupSize >= 0 else { throw ValidationError("--group-size must be >= 0") }
        guard (1...64).contains(clusterDim) else { throw ValidationError("--cluster-dim must be 1...64") }
        guard minSize >= 0 else { throw ValidationError("--min-size must be >= 0") }
        guard threads >= 0 && threads <= 4096 else { throw ValidationError("--threads must be 0...4096") }
        guard PalettizeSettings.LUTType(rawValue: lutDtype) != nil else { throw ValidationError("--lut-dtype must be auto, f16 or f32") }
        guard ChannelScaleScheme(option: channelScale) != nil else {
            throw ValidationError("--channel-scale must be \(ChannelScaleScheme.optionValues), got \(JSON.quote(channelScale))")
        }
    }

    func run() throws {
        try reportingErrors {
            TemporaryFiles.installSignalHandlers()
            TruncatedInputGuard.install()
            var settings = PalettizeSettings()
            settings.bits = bits
            settings.groupSize = groupSize
            settings.clusterDim = clusterDim
            settings.minSize = minSize
            settings.lutType = PalettizeSettings.LUTType(rawValue: lutDtype)!
            settings.threads = UInt32(threads)
            settings.channelScale = ChannelScaleScheme(option: channelScale)!
            do { settings.include = try include.map { try Regex($0) } } catch { throw CLIError("invalid --include regular expression: \(error)") }
            do { settings.exclude = try exclude.map { try Regex($0) } } catch { throw CLIError("invalid --exclude regular expression: \(error)") }
            try palettize(settings)
        }
    }

    private func palettize(_ settings: PalettizeSettings) throws {
        try SafetensorsWriter.checkOutput(output, force: force, input: input)  // fail before any work
        let file = try SafetensorsFile(path: input)
        let palettizer = Palettizer(file: file, settings: settings)
        let plans = try palettizer.plan()
        let runtime = try EDKMRuntime(threads: settings.threads)

        // Phase 1: cluster every selected tensor (LUTs and statistics; indices kept if small).
        let work = plans.compactMap { p -> (TensorInfo, PalettizedTensor)? in
            if case .palettize(let t, let r) = p { return (t, r) } else { return nil }
        }
        if work.isEmpty {
            let reasons = plans.prefix(5).map { p -> String in
                if case .copy(let t, let why) = p { return "\(t.name): \(why)" } else { return "" }
            }
            let more = plans.count > 5 ? "; ... (\(plans.count - 5) more)" : ""
            let detail = plans.isEmpty ? "the file holds no tensors" : reasons.joined(separator: "; ") + more
            guard allowNone else {
                throw CLIError("no tensor of \(input) was selected for palettization (\(detail)); nothing written. "
                               + "Check --min-size, --include and --exclude, or pass --allow-none to write a copy anyway")
            }
            printError("edkm: warning: no tensor was selected for palettization (\(detail)); writing an unchanged copy (--allow-none)")
        }
        var results: [String: PalettizedResult] = [:]
        var cached = 0
        let workBytes = work.reduce(0) { $0 + $1.0.byteCount }
        let progress = Progress(label: "palettize", total: workBytes, unit: .bytes, forcePlain: plain, plainUpdates: true)
        var doneBytes = 0
        for (i, (t, r)) in work.enumerated() {
            progress.update(doneBytes, "\(t.name) \(Format.shape(t.shape)) \(t.dtype.rawValue)", inFlight: t.byteCount, force: true)
            let keep = cached + r.packedBytes <= Palettizer.packedCacheLimit
            let result = try palettizer.palettize(t, r, runtime: runtime, keepPacked: keep)
            if keep { cached += r.packedBytes }
            results[t.name] = result
            doneBytes += t.byteCount
            progress.plain("[\(i + 1)/\(work.count)] \(t.name) \(Format.shape(t.shape)) \(t.dtype.rawValue): \(r.bits) bits, relative error \(Format.scientific(result.relativeError)), \(Format.seconds(result.seconds))")
        }
        progress.update(workBytes, force: true)
        progress.finish()

        // Phase 2: write the output as a stream.
        enum Source { case copy(TensorInfo), lut(TensorInfo), indices(TensorInfo), scale(TensorInfo) }
        var entries: [(OutputTensor, Source)] = []
        for p in plans {
            switch p {
            case .copy(let t, _):
                entries.append((OutputTensor(name: t.name, dtype: t.dtype, shape: t.shape), .copy(t)))
            case .palettize(let t, let r):
                let res = results[t.name]!
                entries.append((OutputTensor(name: r.lutName, dtype: res.lutDtype, shape: r.lutShape), .lut(t)))
                entries.append((OutputTensor(name: r.indicesName, dtype: .u8, shape: r.indicesShape), .indices(t)))
                if let scaleName = r.scaleName {
                    entries.append((OutputTensor(name: scaleName, dtype: .f32, shape: [r.shape[0]]), .scale(t)))
                }
            }
        }
        entries = alignmentOrdered(entries) { $0.0.dtype }
        var metadata = file.header.metadata ?? Metadata()
        let scaled = work.contains { $0.1.scaleName != nil }  // format version 2 only when a record has a scale
        metadata.entries.append((PalettizedTensor.formatKey, scaled ? PalettizedTensor.scaledFormatValue : PalettizedTensor.formatValue))
        metadata.entries.append((PalettizedTensor.versionKey, "libedkm \(edkmVersion())"))
        for (t, _) in work { metadata.entries.append((results[t.name]!.record.metadataKey, results[t.name]!.record.metadataValue)) }

        let writer = try SafetensorsWriter(path: output, tensors: entries.map(\.0), metadata: metadata, force: force)
        let writing = Progress(label: "write", total: writer.dataBytes, unit: .bytes, forcePlain: plain, plainUpdates: true)
        var written = 0
        for (out, source) in entries {
            switch source {
            case .copy(let t):
                try writer.append(file.data(t))
                file.release(t)
            case .lut(let t):
                try writer.append(results[t.name]!.lutBytes)
            case .indices(let t):
                try writer.append(try palettizer.packedIndices(results[t.name]!, t))
            case .scale(let t):
                try writer.append(results[t.name]!.scaleBytes!)
            }
            written += out.byteCount
            writing.update(written, out.name)
        }
        try writer.finish()
        writing.finish()
        printReport(file: file, plans: plans, results: results, outputBytes: writer.headerBytes + writer.dataBytes, seconds: progress.elapsed)
    }

    private func printReport(file: SafetensorsFile, plans: [TensorPlan], results: [String: PalettizedResult],
                             outputBytes: Int, seconds: Double) {
        var table = TextTable([("tensor", .left), ("shape", .left), ("dtype", .left), ("distinct", .right), ("bits", .right),
                               ("rel. error", .right), ("bytes before", .right), ("bytes after", .right), ("note", .left)])
        var before = 0, after = 0, pBefore = 0, pAfter = 0, nPal = 0
        var diff2 = 0.0, norm2 = 0.0
        for p in plans {
            let t = p.info
            before += t.byteCount
            switch p {
            case .copy(_, let reason):
                after += t.byteCount
                table.add([t.name, Format.shape(t.shape), t.dtype.rawValue, "-", "-", "-", Format.grouped(t.byteCount),
                           Format.grouped(t.byteCount), "copied: " + reason])
            case .palettize(_, let r):
                let res = results[t.name]!
                nPal += 1
                after += res.bytesAfter
                pBefore += t.byteCount
                pAfter += res.bytesAfter
                diff2 += res.diffNorm * res.diffNorm
                norm2 += res.weightNorm * res.weightNorm
                var note = "LUT \(res.lutDtype.rawValue)"
                if r.groupSize > 0 { note += ", \(r.groups) groups of \(r.groupSize) rows" }
                if r.clusterDim > 1 { note += ", \(r.clusterDim)-vectors" }
                if r.scaleName != nil { note += ", scale \(ChannelScaleScheme(option: channelScale)!.rawValue)" }
                table.add([t.name, Format.shape(t.shape), t.dtype.rawValue, Format.grouped(res.distinct), String(r.bits),
                           Format.scientific(res.relativeError), Format.grouped(t.byteCount), Format.grouped(res.bytesAfter), note])
            }
        }
        table.separator()
        let overall = norm2 > 0 ? (diff2 / norm2).squareRoot() : 0
        table.add(["total (\(plans.count) tensors)", "", "", "", "", nPal > 0 ? Format.scientific(overall) : "-",
                   Format.grouped(before), Format.grouped(after), ""])
        print(table.render())
        print("")
        let ratio = pAfter > 0 ? Double(pBefore) / Double(pAfter) : 1
        print("palettized \(nPal) of \(plans.count) tensors: \(Format.bytes(pBefore)) -> \(Format.bytes(pAfter)) (\(String(format: "%.2f", ratio))x); relative error over them \(Format.scientific(overall))")
        print("file: \(Format.bytes(file.fileSize)) -> \(Format.bytes(outputBytes)) (\(Format.grouped(file.fileSize)) -> \(Format.grouped(outputBytes)) bytes), \(Format.seconds(seconds))")
        print("wrote \(output)")
    }
}
