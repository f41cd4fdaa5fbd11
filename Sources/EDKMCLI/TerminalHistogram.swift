import Foundation

/// A histogram drawn with text: columns of eighth-blocks (▁▂▃▄▅▆▇█) `height` rows tall, a row of
/// markers (▲) under the bins that hold a marked value (the LUT entries), and an axis row with
/// the range's ends and zero.
struct TerminalHistogram {
    let lo: Double, hi: Double
    private(set) var counts: [Int]

    /// Bins of equal width over [lo, hi] (hi > lo).
    init(lo: Double, hi: Double, bins: Int) {
        self.lo = lo
        self.hi = hi > lo ? hi : lo + 1
        counts = [Int](repeating: 0, count: max(bins, 1))
    }

    func bin(of v: Double) -> Int { min(max(Int((v - lo) / (hi - lo) * Double(counts.count)), 0), counts.count - 1) }

    mutating func add(_ v: Double) { if v.isFinite { counts[bin(of: v)] += 1 } }

    /// The picture's lines: `height` rows of bars (linear counts, or log(1 + count) when `log`),
    /// the marker row, the axis row.
    func render(height: Int, markers: [Double], log: Bool) -> [String] {
        let scaled = counts.map { log ? Foundation.log(1 + Double($0)) : Double($0) }
        let top = max(scaled.max() ?? 1, 1e-300)
        let eighths = scaled.map { Int(($0 / top * Double(height * 8)).rounded(.up)) }
        let blocks = [" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]
        var lines: [String] = []
        for row in stride(from: height - 1, through: 0, by: -1) {
            lines.append(String(eighths.map { e -> String in blocks[min(max(e - row * 8, 0), 8)] }.joined()))
        }
        var markRow = [Character](repeating: " ", count: counts.count)
        for m in markers where m.isFinite { markRow[bin(of: m)] = "▲" }
        lines.append(String(markRow))
        let left = TerminalHistogram.number(lo), right = TerminalHistogram.number(hi)
        var axis = [Character](repeating: " ", count: counts.count)
        for (i, c) in left.enumerated() where i < axis.count { axis[i] = c }
        for (i, c) in right.reversed().enumerated() where axis.count - 1 - i >= 0 { axis[axis.count - 1 - i] = c }
        if lo < 0 && hi > 0 {
            let z = bin(of: 0)
            if z > left.count + 1 && z < axis.count - right.count - 1 { axis[z] = "0" }
        }
        lines.append(String(axis))
        return lines
    }

    static func number(_ v: Double) -> String { String(format: "%.4g", v) }
}
