import ArgumentParser
import EDKMClient
import EDKMSafetensors
import Foundation

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show what a safetensors file holds: tensors, dtypes, shapes, bytes, metadata, palettization.")

    @Argument(help: "A .safetensors file.")
    var file: String

    @Flag(help: "Print everything as one JSON object (sizes in bytes) instead of tables.")
    var json = false

    @Option(help: "Draw the value histogram of this tensor with its LUT entries marked (a palettized tensor: its LUT; a dense one: the exact k-means LUT at --bits).")
    var histogram: String?

    @Option(help: "With --histogram: the bit width of the k-means LUT marked on a dense tensor.")
    var bits: Int = 4

    @Option(help: "With --histogram: number of bins (default: the terminal's width).")
    var bins: Int?

    @Flag(help: "With --histogram: log(1 + count) bar heights (shows the tails).")
    var log = false

    func validate() throws {
        guard (1...8).contains(bits) else { throw ValidationError("--bits must be 1...8") }
        if let bins { guard (8...4096).contains(bins) else { throw ValidationError("--bins must be 8...4096") } }
        guard !(json && histogram != nil) else { throw ValidationError("--json and --histogram cannot be combined") }
    }

    func run() throws {
        try reportingErrors {
            TruncatedInputGuard.install()
            let f = try SafetensorsFile(path: file)
            let h = f.header
            let records = try PalettizedTensor.records(in: h)
            if json {
                print(InfoJSON.render(path: file, file: f, records: records))
                return
            }
            if let histogram {
                try drawHistogram(of: histogram, in: f, records: records)
                return
            }
            print("\(file): \(Format.bytes(f.fileSize)) (\(Format.grouped(f.fileSize)) bytes): header \(Format.grouped(h.headerLength + 8)) bytes, \(h.tensors.count) tensors, data \(Format.grouped(h.dataSize)) bytes")

            if let m = h.metadata {
                let plain = m.entries.filter { !$0.key.hasPrefix(PalettizedTensor.tensorKeyPrefix) }
                if !plain.isEmpty {
                    print("\nmetadata:")
                    for e in plain { print("  \(e.key): \(e.value)") }
                }
            }

            var dtypes: [String: (count: Int, bytes: Int)] = [:]
            for t in h.tensors { dtypes[t.dtype.rawValue, default: (0, 0)].count += 1; dtypes[t.dtype.rawValue]!.bytes += t.byteCount }
            print("\ndtypes: " + (dtypes.isEmpty ? "none" : "") + dtypes.sorted { $0.value.bytes > $1.value.bytes }
                .map { "\($0.key) \($0.value.count) tensors \(Format.bytes($0.value.bytes))" }.joined(separator: ", "))

            if !records.isEmpty {
                var t = TextTable([("palettized tensor", .left), ("shape", .left), ("dtype", .left), ("bits", .right),
                                   ("group size", .right), ("cluster dim", .right), ("LUT", .left), ("dense bytes", .right),
                                   ("palettized bytes", .right), ("ratio", .right)])
                var dense = 0, packed = 0
                for r in records {
                    let lut = h.tensor(named: r.lutName)!
                    let d = r.elementCount * r.dtype.alignment, p = r.tensorNames.reduce(0) { $0 + h.tensor(named: $1)!.byteCount }  // LUT, indices, scale
                    dense += d
                    packed += p
                    t.add([r.name, Format.shape(r.shape), r.dtype.rawValue, String(r.bits), r.groupSize == 0 ? "tensor" : String(r.groupSize),
                           String(r.clusterDim), "\(lut.dtype.rawValue) \(Format.shape(lut.shape))", Format.grouped(d), Format.grouped(p),
                           String(format: "%.2fx", Double(d) / Double(max(p, 1)))])
                }
                t.separator()
                t.add(["total (\(records.count))", "", "", "", "", "", "", Format.grouped(dense), Format.grouped(packed),
                       String(format: "%.2fx", Double(dense) / Double(max(packed, 1)))])
                print("\npalettized (\(PalettizedTensor.formatName(of: h.metadata) ?? "")):")
                print(t.render())
            }

            var t = TextTable([("tensor", .left), ("dtype", .left), ("shape", .left), ("bytes", .right), ("data offsets", .left)])
            for x in h.tensors {
                t.add([x.name, x.dtype.rawValue, Format.shape(x.shape), Format.grouped(x.byteCount), "[\(x.begin), \(x.end))"])
            }
            print("\ntensors (in file order):")
            print(t.render())
        }
    }

    /// The value histogram of one tensor, drawn on stdout, with its LUT entries marked.
    private func drawHistogram(of name: String, in f: SafetensorsFile, records: [PalettizedTensor]) throws {
        let h = f.header
        var values: [Float]
        var markers: [Float]
        var what: String
        if let r = records.first(where: { $0.name == name }) {
            let runtime = try EDKMRuntime(threads: 1)
            let dense = try UnpackCommand.restore(r, file: f, runtime: runtime)
            values = dense.withUnsafeBytes { b in (0..<r.elementCount).map { FloatBits.load(b.baseAddress!, r.dtype, $0) } }
            let lut = h.tensor(named: r.lutName)!
            let lutBytes = f.data(lut)
            markers = (0..<lut.elementCount).map { FloatBits.load(lutBytes.baseAddress!, lut.dtype, $0) }
            what = "palettized \(r.bits)-bit, \(r.groups == 1 ? "one LUT" : "\(r.groups) LUTs of \(r.groupSize) rows (all entries marked)")"
                + (r.clusterDim > 1 ? ", \(r.clusterDim)-vectors (each component marked)" : "")
        } else if let t = h.tensor(named: name) {
            guard t.dtype.isPalettizable else { throw CLIError("tensor \(JSON.quote(name)) is \(t.dtype.rawValue); --histogram draws F32/F16/BF16 tensors") }
            guard t.elementCount >= 1 << bits else {
                throw CLIError("tensor \(JSON.quote(name)) has \(t.elementCount) elements, fewer than the 2^\(bits) centroids of --bits \(bits)")
            }
            let data = AlignedTensor(f.data(t), alignment: t.dtype.alignment)
            values = (0..<t.elementCount).map { FloatBits.load(data.pointer, t.dtype, $0) }
            let settings = PalettizeSettings()
            var one = settings
            one.bits = bits
            let record = try PalettizedTensor(name: t.name, dtype: t.dtype, shape: [t.elementCount, 1], bits: bits, groupSize: 0, clusterDim: 1)
            let flat = TensorInfo(name: t.name, dtype: t.dtype, shape: [t.elementCount, 1], begin: t.begin, end: t.end)
            let result = try Palettizer(file: f, settings: one).palettize(flat, record, runtime: try EDKMRuntime(threads: 1), keepPacked: false)
            markers = result.lutBytes.withUnsafeBytes { b in (0..<(1 << bits)).map { FloatBits.load(b.baseAddress!, result.lutDtype, $0) } }
            what = "dense \(t.dtype.rawValue); marked: the exact \(bits)-bit k-means LUT (per tensor), relative error \(Format.scientific(result.relativeError))"
        } else {
            let names = h.tensors.map(\.name) + records.map(\.name)
            let close = Suggestions.nearest(to: name, among: names)
            throw CLIError("no tensor named \(JSON.quote(name)) in \(file)" + (close.isEmpty ? "" : "; did you mean " + close.prefix(3).map { JSON.quote($0) }.joined(separator: " or ") + "?"))
        }
        let finite = values.filter(\.isFinite)
        guard let lo = finite.min(), let hi = finite.max() else { throw CLIError("tensor \(JSON.quote(name)) holds no finite value") }
        let lower = Double(min(lo, markers.filter(\.isFinite).min() ?? lo)), upper = Double(max(hi, markers.filter(\.isFinite).max() ?? hi))
        var width = 80
        var ws = winsize()
        if isatty(1) == 1, ioctl(1, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_col > 20 { width = Int(ws.ws_col) }
        var picture = TerminalHistogram(lo: lower, hi: upper, bins: bins ?? max(width - 2, 16))
        for v in values { picture.add(Double(v)) }
        print("\(name): \(Format.grouped(values.count)) values in [\(TerminalHistogram.number(Double(lo))), \(TerminalHistogram.number(Double(hi)))]; \(what)")
        if finite.count < values.count { print("(\(values.count - finite.count) non-finite values left out)") }
        for line in picture.render(height: 12, markers: markers.map(Double.init), log: log) { print(line) }
        let shown = markers.prefix(16).map { TerminalHistogram.number(Double($0)) }.joined(separator: " ")
        print("▲ LUT entries (\(markers.count)): " + shown + (markers.count > 16 ? " ..." : ""))
        print("bar height: \(log ? "log(1 + count)" : "count"); tallest bin \(Format.grouped(picture.counts.max() ?? 0)) values")
    }
}
