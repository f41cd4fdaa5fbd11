import ArgumentParser
import EDKMClient
import Foundation

/// `edkm`: train-time weight clustering (DKM / eDKM) with libedkm, from the command line.
@main
struct EDKM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edkm",
        abstract: "Weight palettization with libedkm (DKM / eDKM): compress safetensors checkpoints, or see it train.",
        discussion: "Start with `edkm demo` (no arguments, no downloads).",
        version: "edkm (libedkm \(edkmVersion()))",
        subcommands: [PalettizeCommand.self, UnpackCommand.self, InfoCommand.self, DemoCommand.self])

    /// ArgumentParser's entry point, after a check of the subcommand name: a word that is not one
    /// gets "unknown command" with the nearest names (ArgumentParser already suggests options).
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        if let first = args.first, !first.hasPrefix("-"), first != "help" {
            let names = configuration.subcommands.map { $0._commandName }
            if !names.contains(first) {
                var text = "edkm: error: unknown command '\(first)'"
                let close = Suggestions.nearest(to: first, among: names + ["help"])
                if !close.isEmpty { text += "; did you mean " + close.map { "'\($0)'" }.joined(separator: " or ") + "?" }
                text += "\nCommands: " + names.joined(separator: ", ") + " (edkm --help)"
                printError(text)
                Foundation.exit(ExitCode.validationFailure.rawValue)
            }
        }
        main(nil)
    }
}

/// "Did you mean" candidates by edit distance.
enum Suggestions {
    /// The candidates within an edit distance of max(1, a third of the word's length) of the
    /// word, nearest first; a candidate that starts with the word counts as near too.
    static func nearest(to word: String, among candidates: [String]) -> [String] {
        let w = Array(word.lowercased())
        let limit = max(1, w.count / 3)
        let scored = candidates.map { c -> (String, Int) in
            let d = distance(w, Array(c.lowercased()))
            return (c, c.lowercased().hasPrefix(word.lowercased()) && w.count >= 2 ? min(d, limit) : d)
        }
        return scored.filter { $0.1 <= limit }.sorted { $0.1 < $1.1 }.map(\.0)
    }

    /// Levenshtein distance with adjacent transpositions (optimal string alignment).
    static func distance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var d = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in 0...a.count { d[i][0] = i }
        for j in 0...b.count { d[0][j] = j }
        for i in 1...a.count {
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] { d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1) }
            }
        }
        return d[a.count][b.count]
    }
}
