/// An RGB pixel.
struct Colour: Equatable {
    var r: UInt8, g: UInt8, b: UInt8

    init(_ r: UInt8, _ g: UInt8, _ b: UInt8) { self.r = r; self.g = g; self.b = b }
    /// From 0xRRGGBB.
    init(hex: UInt32) { self.init(UInt8(hex >> 16), UInt8((hex >> 8) & 0xFF), UInt8(hex & 0xFF)) }

    static let white = Colour(hex: 0xFFFFFF)
    static let black = Colour(hex: 0x000000)
    static let grid = Colour(hex: 0xE6E6E6)
    static let axis = Colour(hex: 0x404040)
    /// Series colours (the usual categorical palette).
    static let palette: [Colour] = [0x1F77B4, 0xD62728, 0x2CA02C, 0xFF7F0E, 0x9467BD, 0x8C564B, 0xE377C2, 0x7F7F7F].map { Colour(hex: $0) }
}

/// A white canvas of width x height RGB pixels, (0, 0) at the top left, drawn on with clipped
/// primitives: filled rectangles, lines (solid or dashed), and text in the 5x7 bitmap font.
struct Raster {
    let width: Int, height: Int
    private(set) var rgb: [UInt8]

    init(width: Int, height: Int, background: Colour = .white) {
        self.width = width
        self.height = height
        rgb = [UInt8](repeating: 0, count: width * height * 3)
        fill(x: 0, y: 0, width: width, height: height, background)
    }

    mutating func set(_ x: Int, _ y: Int, _ c: Colour) {
        guard x >= 0, y >= 0, x < width, y < height else { return }
        let i = (y * width + x) * 3
        rgb[i] = c.r
        rgb[i + 1] = c.g
        rgb[i + 2] = c.b
    }

    func pixel(_ x: Int, _ y: Int) -> Colour {
        let i = (y * width + x) * 3
        return Colour(rgb[i], rgb[i + 1], rgb[i + 2])
    }

    mutating func fill(x: Int, y: Int, width w: Int, height h: Int, _ c: Colour) {
        for yy in max(y, 0)..<min(y + h, height) where w > 0 {
            for xx in max(x, 0)..<max(min(x + w, width), max(x, 0)) { set(xx, yy, c) }
        }
    }

    /// A line from (x0, y0) to (x1, y1) (Bresenham), `thickness` pixels wide; dash = (on, off)
    /// lengths in pixels along the line, nil for solid.
    mutating func line(_ x0: Int, _ y0: Int, _ x1: Int, _ y1: Int, _ c: Colour, thickness: Int = 1, dash: (Int, Int)? = nil) {
        var x = x0, y = y0
        let dx = abs(x1 - x0), dy = -abs(y1 - y0)
        let sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1
        var err = dx + dy
        var step = 0
        while true {
            let on = dash.map { step % ($0.0 + $0.1) < $0.0 } ?? true
            if on {
                for t in 0..<thickness {
                    let o = t - thickness / 2
                    if dx >= -dy { set(x, y + o, c) } else { set(x + o, y, c) }
                }
            }
            if x == x1 && y == y1 { break }
            let e2 = 2 * err
            if e2 >= dy { err += dy; x += sx }
            if e2 <= dx { err += dx; y += sy }
            step += 1
        }
    }

    /// Text with its top left corner at (x, y); each glyph 5x7 pixels in a 6x9 cell, times `scale`.
    /// Characters outside printable ASCII are drawn as '?'.
    mutating func text(_ s: String, x: Int, y: Int, _ c: Colour, scale: Int = 1) {
        drawGlyphs(s, scale: scale) { col, row, cell in (x + (cell + col) * scale, y + row * scale) }
            .forEach { fill(x: $0.0, y: $0.1, width: scale, height: scale, c) }
    }

    /// Text rotated a quarter turn counter-clockwise (reading upwards), its baseline's start at
    /// (x, y): for a vertical axis label.
    mutating func verticalText(_ s: String, x: Int, y: Int, _ c: Colour, scale: Int = 1) {
        drawGlyphs(s, scale: scale) { col, row, cell in (x + row * scale, y - (cell + col) * scale) }
            .forEach { fill(x: $0.0, y: $0.1, width: scale, height: scale, c) }
    }

    /// The top-left corners of the `scale`-sized squares of every lit glyph pixel of `s`, placed by
    /// `position(column in glyph, row in glyph, first column of the glyph's cell)`.
    private func drawGlyphs(_ s: String, scale: Int, position: (Int, Int, Int) -> (Int, Int)) -> [(Int, Int)] {
        var squares: [(Int, Int)] = []
        for (i, ch) in s.unicodeScalars.enumerated() {
            for (col, bits) in BitmapFont.glyph(ch).enumerated() {
                for row in 0..<7 where bits & (1 << row) != 0 { squares.append(position(col, row, i * BitmapFont.advance)) }
            }
        }
        return squares
    }

    static func textWidth(_ s: String, scale: Int = 1) -> Int { s.unicodeScalars.count * BitmapFont.advance * scale }

    func png() -> [UInt8] { PNGEncoder.encode(width: width, height: height, rgb: rgb) }
}
