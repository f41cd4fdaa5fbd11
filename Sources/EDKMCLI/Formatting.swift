import Foundation

/// Number and size formatting for tables and messages.
enum Format {
    /// 1234567 -> "1,234,567"
    static func grouped(_ n: Int) -> String {
        let s = String(n.magnitude)
        var out = ""
        for (i, c) in s.enumerated() {
            if i > 0 && (s.count - i) % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return n < 0 ? "-" + out : out
    }

    static func grouped(_ n: UInt64) -> String { n <= UInt64(Int.max) ? grouped(Int(n)) : String(n) }

    /// 1536 -> "1.5 KiB"
    static func bytes(_ n: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n)
        var u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        return u == 0 ? "\(n) B" : String(format: v >= 100 ? "%.0f %@" : v >= 10 ? "%.1f %@" : "%.2f %@", v, units[u])
    }

    static func bytes(_ n: UInt64) -> String { bytes(Int(clamping: n)) }

    /// [4096, 4096] -> "4096x4096"; [] -> "scalar"
    static func shape(_ s: [Int]) -> String { s.isEmpty ? "scalar" : s.map(String.init).joined(separator: "x") }

    static func percent(_ x: Double) -> String { String(format: "%.2f%%", 100 * x) }

    static func scientific(_ x: Double) -> String { String(format: "%.3e", x) }

    static func seconds(_ x: Double) -> String { String(format: x < 10 ? "%.2f s" : "%.1f s", x) }
}

/// A plain-text table: columns sized to their content, numbers right-aligned.
struct TextTable {
    enum Align { case left, right }
    let headers: [String]
    let align: [Align]
    private(set) var rows: [[String]] = []
    private var separators: Set<Int> = []

    init(_ columns: [(String, Align)]) {
        headers = columns.map(\.0)
        align = columns.map(\.1)
    }

    mutating func add(_ row: [String]) { rows.append(row) }
    /// A rule before the next row.
    mutating func separator() { separators.insert(rows.count) }

    func render() -> String {
        var widths = headers.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in
                let pad = String(repeating: " ", count: max(0, widths[i] - c.count))
                return align[i] == .left ? c + pad : pad + c
            }.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }
        let rule = widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")
        var out = [line(headers), rule]
        for (i, r) in rows.enumerated() {
            if separators.contains(i) { out.append(rule) }
            out.append(line(r))
        }
        if separators.contains(rows.count) { out.append(rule) }
        return out.joined(separator: "\n")
    }
}
