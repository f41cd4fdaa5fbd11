import Foundation

/// A 2-D chart drawn into a Raster: line series, histogram bars and vertical markers, with axes,
/// "nice" ticks (1-2-5 steps, or powers of ten on a log axis), a title, axis labels and a legend.
struct Chart {
    struct Series {
        var name: String
        var points: [(x: Double, y: Double)]
        var colour: Colour
        var dashed = false
    }

    struct Marker {
        var x: Double
        var colour: Colour
        var dashed: Bool
    }

    var title: String
    var xLabel: String
    var yLabel: String
    var logY = false
    var series: [Series] = []
    /// Histogram bars: bin edges (count + 1 values, increasing) and counts.
    var bars: (edges: [Double], counts: [Double])? = nil
    var barColour = Colour(hex: 0x9ECAE1)
    var markers: [Marker] = []
    /// Legend entries for the markers: (name, colour, dashed).
    var markerLegend: [(String, Colour, Bool)] = []

    static let textScale = 2

    /// The chart alone as a PNG image.
    func png(width: Int = 1000, height: Int = 520) -> [UInt8] {
        var r = Raster(width: width, height: height)
        draw(into: &r, left: 0, top: 0, width: width, height: height)
        return r.png()
    }

    /// Draws the chart in the given rectangle of the raster.
    func draw(into r: inout Raster, left: Int, top: Int, width: Int, height: Int) {
        let s = Chart.textScale
        let lineH = BitmapFont.lineHeight * s
        // The plot area: room on the left for the y label and tick labels of up to 10 characters.
        let plot = (x: left + 24 + 11 * BitmapFont.advance * s, y: top + 2 * lineH)
        let plotW = left + width - 16 - plot.x, plotH = top + height - 3 * lineH - 8 - plot.y
        guard plotW > 40, plotH > 40 else { return }

        r.text(title, x: left + max((width - Raster.textWidth(title, scale: s)) / 2, 4), y: top + 6, .black, scale: s)
        let (xr, yr) = ranges()
        let xTicks = Chart.linearTicks(xr.lo, xr.hi)
        let yTicks = logY ? Chart.logTicks(yr.lo, yr.hi) : Chart.linearTicks(yr.lo, yr.hi)
        let xLo = min(xr.lo, xTicks.first ?? xr.lo), xHi = max(xr.hi, xTicks.last ?? xr.hi)
        let yLo = logY ? log10(yr.lo) : min(yr.lo, yTicks.first ?? yr.lo)
        let yHi = logY ? log10(yr.hi) : max(yr.hi, yTicks.last ?? yr.hi)
        func px(_ x: Double) -> Int { plot.x + Int(((x - xLo) / max(xHi - xLo, 1e-300) * Double(plotW - 1)).rounded()) }
        func py(_ y: Double) -> Int {
            let v = logY ? log10(max(y, 1e-300)) : y
            return plot.y + plotH - 1 - Int(((v - yLo) / max(yHi - yLo, 1e-300) * Double(plotH - 1)).rounded())
        }

        // Grid and tick labels.
        for t in yTicks where (logY ? log10(t) : t) >= yLo - 1e-12 && (logY ? log10(t) : t) <= yHi + 1e-12 {
            let y = py(t)
            r.line(plot.x, y, plot.x + plotW - 1, y, .grid)
            let label = Chart.tickLabel(t, step: yTicks.count > 1 ? abs(yTicks[1] - yTicks[0]) : 1, log: logY)
            r.text(label, x: plot.x - 8 - Raster.textWidth(label, scale: s), y: y - 7 * s / 2, .axis, scale: s)
        }
        for t in xTicks where t >= xLo && t <= xHi {
            let x = px(t)
            r.line(x, plot.y, x, plot.y + plotH - 1, .grid)
            let label = Chart.tickLabel(t, step: xTicks.count > 1 ? xTicks[1] - xTicks[0] : 1, log: false)
            r.text(label, x: x - Raster.textWidth(label, scale: s) / 2, y: plot.y + plotH + 6, .axis, scale: s)
        }

        // Content.
        if let bars {
            for i in 0..<bars.counts.count where bars.counts[i] > 0 {
                let x0 = px(bars.edges[i]), x1 = max(px(bars.edges[i + 1]) - 1, x0)
                let y0 = py(bars.counts[i])
                r.fill(x: x0, y: y0, width: x1 - x0 + 1, height: plot.y + plotH - y0, barColour)
            }
        }
        for m in markers {
            let x = px(m.x)
            r.line(x, plot.y, x, plot.y + plotH - 1, m.colour, thickness: m.dashed ? 1 : 2, dash: m.dashed ? (6, 4) : nil)
        }
        for sr in series where !sr.points.isEmpty {
            var last = (px(sr.points[0].x), py(sr.points[0].y))
            for p in sr.points.dropFirst() {
                let cur = (px(p.x), py(p.y))
                r.line(last.0, last.1, cur.0, cur.1, sr.colour, thickness: 2, dash: sr.dashed ? (8, 5) : nil)
                last = cur
            }
        }

        // Axes, labels, legend.
        r.line(plot.x, plot.y + plotH - 1, plot.x + plotW - 1, plot.y + plotH - 1, .axis)
        r.line(plot.x, plot.y, plot.x, plot.y + plotH - 1, .axis)
        r.text(xLabel, x: plot.x + (plotW - Raster.textWidth(xLabel, scale: s)) / 2, y: plot.y + plotH + 8 + lineH, .black, scale: s)
        r.verticalText(yLabel, x: left + 6, y: plot.y + (plotH + Raster.textWidth(yLabel, scale: s)) / 2, .black, scale: s)
        var entries = series.map { ($0.name, $0.colour, $0.dashed) }
        entries += markerLegend
        if !entries.isEmpty {
            let w = entries.map { Raster.textWidth($0.0, scale: s) }.max()! + 48
            let h = entries.count * lineH + 10
            let bx = plot.x + plotW - w - 8, by = plot.y + 8
            r.fill(x: bx, y: by, width: w, height: h, .white)
            for (i, e) in entries.enumerated() {
                let y = by + 6 + i * lineH + 7 * s / 2
                r.line(bx + 6, y, bx + 30, y, e.1, thickness: 2, dash: e.2 ? (6, 4) : nil)
                r.text(e.0, x: bx + 38, y: y - 7 * s / 2, .black, scale: s)
            }
        }
    }

    /// The data's x and y ranges (bars, markers and series), padded so that nothing is empty.
    private func ranges() -> (x: (lo: Double, hi: Double), y: (lo: Double, hi: Double)) {
        var xs: [Double] = [], ys: [Double] = []
        for s in series { for p in s.points where p.x.isFinite && p.y.isFinite && (!logY || p.y > 0) { xs.append(p.x); ys.append(p.y) } }
        if let bars {
            xs += [bars.edges.first!, bars.edges.last!]
            ys += [0, bars.counts.max() ?? 1]
        }
        xs += markers.map(\.x).filter(\.isFinite)
        var x = (lo: xs.min() ?? 0, hi: xs.max() ?? 1)
        var y = (lo: ys.min() ?? 0, hi: ys.max() ?? 1)
        if x.hi <= x.lo { x = (x.lo - 0.5, x.hi + 0.5) }
        if logY {
            y.lo = max(y.lo, 1e-300)
            if y.hi <= y.lo { y = (y.lo / 2, y.lo * 2) }
        } else if y.hi <= y.lo {
            y = (y.lo - 0.5, y.hi + 0.5)
        }
        return (x, y)
    }

    /// Ticks at multiples of 1, 2 or 5 times a power of ten covering [lo, hi], the step chosen to
    /// give the count nearest to `target`.
    static func linearTicks(_ lo: Double, _ hi: Double, target: Int = 6) -> [Double] {
        guard lo.isFinite, hi.isFinite, hi > lo else { return [lo] }
        let magnitude = pow(10, floor(log10((hi - lo) / Double(target))))
        let step = [1.0, 2, 5, 10].map { $0 * magnitude }.min { abs((hi - lo) / $0 - Double(target)) < abs((hi - lo) / $1 - Double(target)) }!
        var ticks: [Double] = []
        var t = floor(lo / step) * step
        while t <= hi + step * 1e-9 && ticks.count < 50 {
            if t >= lo - step * 1e-9 { ticks.append(abs(t) < step * 1e-9 ? 0 : t) }
            t += step
        }
        return ticks
    }

    /// Ticks of a log axis within [lo, hi]: powers of ten, with 2x and 5x when the range spans
    /// less than three decades and more mantissas when it spans less than one and a half.
    static func logTicks(_ lo: Double, _ hi: Double) -> [Double] {
        let decades = log10(hi / lo)
        let mantissas: [Double] = decades < 1.5 ? [1, 1.5, 2, 3, 5, 7] : decades < 3 ? [1, 2, 5] : [1]
        var ticks: [Double] = []
        for e in Int(floor(log10(lo)))...Int(ceil(log10(hi))) {
            for m in mantissas {
                let t = m * pow(10, Double(e))
                if t >= lo * 0.999 && t <= hi * 1.001 { ticks.append(t) }
            }
        }
        return ticks.isEmpty ? [lo] : ticks
    }

    /// A tick label with the decimals it needs ("0.25", "1500", "1e-4").
    static func tickLabel(_ v: Double, step: Double, log: Bool) -> String {
        if v == 0 { return "0" }
        if abs(v) >= 1e6 || abs(v) < 1e-3 {
            let e = Int(floor(log10(abs(v))))
            let m = v / pow(10, Double(e))
            let mant = abs(m - m.rounded()) < 1e-9 ? String(Int(m.rounded())) : String(format: "%.1f", m)
            return mant == "1" ? "1e\(e)" : "\(mant)e\(e)"
        }
        // A log axis's ticks are not evenly spaced: each label gets the decimals of its own value.
        let decimals = max(0, min(6, -Int(floor(log10(log ? abs(v) / 10 : step))) ))
        var text = String(format: "%.\(decimals)f", v)
        if log && text.contains(".") {
            while text.hasSuffix("0") { text.removeLast() }
            if text.hasSuffix(".") { text.removeLast() }
        }
        return text
    }
}
