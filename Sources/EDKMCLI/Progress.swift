import Foundation

/// Progress on stderr: a redrawn bar when stderr is a terminal, plain lines otherwise (logs, CI).
final class Progress {
    let label: String
    let total: Int
    let isTerminal: Bool
    private var lastDraw = 0.0
    private var drawn = false
    private let start = Date()

    init(label: String, total: Int, forcePlain: Bool = false) {
        self.label = label
        self.total = max(total, 1)
        isTerminal = !forcePlain && isatty(2) == 1 && ProcessInfo.processInfo.environment["TERM"] != "dumb"
    }

    var elapsed: Double { Date().timeIntervalSince(start) }

    /// Redraws the bar (at most 20 times a second unless `force`); no output when not a terminal.
    func update(_ done: Int, _ detail: String = "", force: Bool = false) {
        guard isTerminal else { return }
        let now = Date().timeIntervalSinceReferenceDate
        if !force && done < total && now - lastDraw < 0.05 { return }
        lastDraw = now
        let width = terminalWidth()
        let fraction = Double(min(done, total)) / Double(total)
        let barWidth = 24
        let filled = Int((fraction * Double(barWidth)).rounded(.down))
        let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: barWidth - filled)
        var text = "\(label) \(bar) \(done)/\(total) \(String(format: "%5.1fs", elapsed))"
        if !detail.isEmpty { text += " " + detail }
        if text.count > width - 1 { text = String(text.prefix(max(width - 2, 10))) + "…" }
        printError("\r\u{1B}[2K" + text, terminator: "")
        drawn = true
    }

    /// A line that stays: printed above the bar on a terminal, as is otherwise.
    func line(_ s: String) {
        if isTerminal && drawn { printError("\r\u{1B}[2K", terminator: "") }
        printError(s)
        drawn = false
    }

    /// A line only for non-terminals (where there is no bar to show the same thing).
    func plain(_ s: String) { if !isTerminal { printError(s) } }

    func finish() {
        if isTerminal && drawn { printError("\r\u{1B}[2K", terminator: "") }
        drawn = false
    }

    private func terminalWidth() -> Int {
        var ws = winsize()
        if ioctl(2, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_col > 0 { return Int(ws.ws_col) }
        return 80
    }
}
