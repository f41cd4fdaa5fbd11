import Glibc

/// printf-style formatting of numbers (no Foundation): fmt("%.2f", x). Strings go through `pad`.
func fmt(_ format: String, _ args: CVarArg...) -> String {
    withVaList(args) { va in
        var buf = [CChar](repeating: 0, count: 256)
        _ = vsnprintf(&buf, buf.count, format, va)
        return String(cString: buf)
    }
}

/// `s` padded with spaces to `width` characters, on the right (left-aligned) or on the left.
func pad(_ s: String, _ width: Int, right: Bool = false) -> String {
    let n = s.count
    if n >= width { return s }
    let fill = String(repeating: " ", count: width - n)
    return right ? fill + s : s + fill
}

/// Bytes with a binary unit: "512 B", "3.50 KiB", "1.25 GiB".
func bytesText(_ b: Double) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = b, u = 0
    while abs(v) >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    return u == 0 ? fmt("%.0f B", v) : fmt("%.2f", v) + " " + units[u]
}

/// Milliseconds with 3 significant-ish digits.
func msText(_ seconds: Double) -> String {
    let ms = seconds * 1e3
    if ms >= 100 { return fmt("%.0f", ms) }
    if ms >= 10 { return fmt("%.1f", ms) }
    return fmt("%.2f", ms)
}

/// A ratio as "12.3x" / "1234x".
func ratioText(_ r: Double) -> String {
    if !r.isFinite { return "-" }
    if r >= 100 { return fmt("%.0fx", r) }
    if r >= 10 { return fmt("%.1fx", r) }
    return fmt("%.2fx", r)
}

/// A table printed with aligned columns; `markdown` prints it as a GitHub table (for the README).
struct Table {
    var header: [String]
    /// Per column: right-aligned (numbers) or not.
    var rightAligned: [Bool]
    var rows: [[String]] = []

    init(_ header: [String], right: [Bool]? = nil) {
        self.header = header
        self.rightAligned = right ?? header.indices.map { $0 > 0 }
    }

    mutating func add(_ row: [String]) { rows.append(row) }

    func render(markdown: Bool) -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            let parts = cells.enumerated().map { i, c in pad(c, widths[i], right: rightAligned[i]) }
            return markdown ? "| " + parts.joined(separator: " | ") + " |" : parts.joined(separator: "  ")
        }
        var out = [line(header)]
        if markdown {
            out.append("|" + widths.enumerated().map { i, w in
                rightAligned[i] ? String(repeating: "-", count: w + 1) + ":" : ":" + String(repeating: "-", count: w + 1)
            }.joined(separator: "|") + "|")
        } else {
            out.append(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "))
        }
        for r in rows { out.append(line(r)) }
        return out.joined(separator: "\n")
    }
}
