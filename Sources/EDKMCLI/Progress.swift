import Foundation

/// Progress on stderr, weighted by work (bytes, or steps): on a terminal a bar redrawn in place with
/// the amount done, the rate and the time left; elsewhere (pipes, logs, CI) plain lines, one per
/// tenth of the work (when `plainUpdates`), so a long run shows it is moving either way.
///
/// Work that is handed over in large pieces (one tensor at a time) is reported with
/// `update(done, inFlight:)`: while a piece is in flight the terminal bar advances through it at
/// the rate measured so far (never past 95 % of the piece) and a ticker redraws it four times a
/// second, so the bar moves during a tensor that is 70 % of the file.
final class Progress {
    enum Unit { case bytes, steps }

    let label: String
    let total: Int
    let unit: Unit
    let isTerminal: Bool
    /// Plain mode prints a line per tenth of the work.
    let plainUpdates: Bool

    private let lock = NSLock()
    private let start = Date()
    private var done = 0
    private var inFlight = 0
    private var inFlightSince = Date()
    private var detail = ""
    private var lastDraw = 0.0
    private var drawn = false
    private var nextPlainTenth = 1
    private var ticker: Thread?
    private var finished = false

    init(label: String, total: Int, unit: Unit = .steps, forcePlain: Bool = false, plainUpdates: Bool = false) {
        self.label = label
        self.total = max(total, 1)
        self.unit = unit
        self.plainUpdates = plainUpdates
        isTerminal = !forcePlain && isatty(2) == 1 && ProcessInfo.processInfo.environment["TERM"] != "dumb"
    }

    var elapsed: Double { Date().timeIntervalSince(start) }

    /// `done` units are complete; `inFlight` more are being worked on now (e.g. the bytes of the
    /// tensor being clustered). Redraws at most 20 times a second unless `force`.
    func update(_ done: Int, _ detail: String = "", inFlight: Int = 0, force: Bool = false) {
        lock.lock()
        defer { lock.unlock() }
        let newPiece = done != self.done || inFlight != self.inFlight
        self.done = min(max(done, 0), total)
        self.inFlight = max(0, min(inFlight, total - self.done))
        if newPiece { inFlightSince = Date() }
        self.detail = detail
        if isTerminal {
            if inFlight > 0 && ticker == nil { startTicker() }
            drawLocked(force: force)
        } else if plainUpdates {
            let tenths = self.done * 10 / total
            if tenths >= nextPlainTenth {  // one line for the highest tenth reached
                printError(plainLine(tenths: tenths))
                nextPlainTenth = tenths + 1
            }
        }
    }

    /// A line that stays: printed above the bar on a terminal, as is otherwise.
    func line(_ s: String) {
        lock.lock()
        defer { lock.unlock() }
        if isTerminal && drawn { printError("\r\u{1B}[2K", terminator: "") }
        printError(s)
        drawn = false
    }

    /// A line only for non-terminals (where there is no bar to show the same thing).
    func plain(_ s: String) { if !isTerminal { printError(s) } }

    /// Clears the bar (terminal) and stops the ticker.
    func finish() {
        lock.lock()
        finished = true
        if isTerminal && drawn { printError("\r\u{1B}[2K", terminator: "") }
        drawn = false
        lock.unlock()
    }

    deinit { finished = true }

    // MARK: - Drawing

    /// done + the estimated part of the piece in flight, at the rate measured so far.
    private func estimatedDone(now: Date) -> Double {
        guard inFlight > 0, done > 0 else { return Double(done) }
        let rate = Double(done) / max(inFlightSince.timeIntervalSince(start), 1e-3)
        return Double(done) + min(rate * now.timeIntervalSince(inFlightSince), 0.95 * Double(inFlight))
    }

    private func amount(_ v: Double) -> String {
        switch unit {
        case .bytes: return Format.bytes(Int(v))
        case .steps: return Format.grouped(Int(v))
        }
    }

    private func rateAndLeft(_ d: Double, seconds: Double) -> String {
        guard d > 0, seconds > 0.2 else { return "" }
        let rate = d / seconds
        let left = Double(total) - d
        let rateText = unit == .bytes ? Format.bytes(Int(rate)) + "/s" : String(format: "%.0f/s", rate)
        return left > 0 ? "\(rateText), \(Progress.clock(left / rate)) left" : rateText
    }

    private func drawLocked(force: Bool) {
        let now = Date()
        let t = now.timeIntervalSinceReferenceDate
        if !force && done < total && t - lastDraw < 0.05 { return }
        lastDraw = t
        let d = estimatedDone(now: now)
        let fraction = d / Double(total)
        let barWidth = 24
        let filled = Int((fraction * Double(barWidth)).rounded(.down))
        let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: barWidth - filled)
        var text = "\(label) \(bar) \(String(format: "%3.0f%%", 100 * fraction)) \(amount(d))/\(amount(Double(total)))"
        let speed = rateAndLeft(d, seconds: now.timeIntervalSince(start))
        text += " " + (speed.isEmpty ? Progress.clock(now.timeIntervalSince(start)) : speed)
        if !detail.isEmpty { text += "  " + detail }
        let width = terminalWidth()
        if text.count > width - 1 { text = String(text.prefix(max(width - 2, 10))) + "…" }
        printError("\r\u{1B}[2K" + text, terminator: "")
        drawn = true
    }

    private func plainLine(tenths: Int) -> String {
        let seconds = elapsed
        var s = "\(label): \(tenths * 10)% (\(amount(Double(done))) of \(amount(Double(total)))), \(Progress.clock(seconds)) elapsed"
        let speed = rateAndLeft(Double(done), seconds: seconds)
        if !speed.isEmpty { s += ", " + speed }
        return s
    }

    /// Redraws the bar four times a second while a piece is in flight (terminal only).
    private func startTicker() {
        let thread = Thread { [weak self] in
            while true {
                usleep(250_000)
                guard let self else { return }
                self.lock.lock()
                let stop = self.finished
                if !stop && self.inFlight > 0 { self.drawLocked(force: true) }
                self.lock.unlock()
                if stop { return }
            }
        }
        thread.name = "edkm-progress"
        ticker = thread
        thread.start()
    }

    /// 75 -> "1:15", 3725 -> "1:02:05"
    static func clock(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
    }

    private func terminalWidth() -> Int {
        var ws = winsize()
        if ioctl(2, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_col > 0 { return Int(ws.ws_col) }
        return 80
    }
}
