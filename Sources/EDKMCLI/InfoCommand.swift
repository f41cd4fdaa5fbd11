import ArgumentParser
import EDKMSafetensors
import Foundation

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show what a safetensors file holds: tensors, dtypes, shapes, bytes, metadata, palettization.")

    @Argument(help: "A .safetensors file.")
    var file: String

    func run() throws {
        try reportingErrors {
            let f = try SafetensorsFile(path: file)
            let h = f.header
            let records = try PalettizedTensor.records(in: h)
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
                    let lut = h.tensor(named: r.lutName)!, idx = h.tensor(named: r.indicesName)!
                    let d = r.elementCount * r.dtype.alignment, p = lut.byteCount + idx.byteCount
                    dense += d
                    packed += p
                    t.add([r.name, Format.shape(r.shape), r.dtype.rawValue, String(r.bits), r.groupSize == 0 ? "tensor" : String(r.groupSize),
                           String(r.clusterDim), "\(lut.dtype.rawValue) \(Format.shape(lut.shape))", Format.grouped(d), Format.grouped(p),
                           String(format: "%.2fx", Double(d) / Double(max(p, 1)))])
                }
                t.separator()
                t.add(["total (\(records.count))", "", "", "", "", "", "", Format.grouped(dense), Format.grouped(packed),
                       String(format: "%.2fx", Double(dense) / Double(max(packed, 1)))])
                print("\npalettized (\(h.metadata?[PalettizedTensor.formatKey] ?? "")):")
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
}
