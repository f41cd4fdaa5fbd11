import ArgumentParser
import EDKMSafetensors
import Foundation

/// A failure the user should see as one line on stderr, with a nonzero exit status.
struct CLIError: Error, CustomStringConvertible {
    let message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

/// Runs a command body; any error becomes "edkm: error: <one line>" and exit status 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as ExitCode {
        throw e
    } catch {
        let text = "\(error)".split(whereSeparator: \.isNewline).joined(separator: " ")
        FileHandle.standardError.write(Data("edkm: error: \(text)\n".utf8))
        throw ExitCode.failure
    }
}

/// Writes to stderr (progress, notes).
func printError(_ s: String, terminator: String = "\n") {
    FileHandle.standardError.write(Data((s + terminator).utf8))
}
