#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Turns a SIGBUS into a clear error: safetensors inputs are memory-mapped, and a page of a file
/// that another process truncated while it was mapped raises SIGBUS when read. The handler (async-
/// signal-safe: write, unlink, _exit) prints which input was being read, removes the temporary
/// output files and exits with status 1, so the tool fails like on any other bad input instead of
/// dying of the signal. For command-line tools only: it replaces the process's SIGBUS handler.
public enum TruncatedInputGuard {
    private static let capacity = 4096
    /// The message, a NUL-terminated C string written by `watch` before any mapped byte is read.
    nonisolated(unsafe) private static let message: UnsafeMutablePointer<CChar> = {
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: capacity)
        p.initialize(repeating: 0, count: capacity)
        return p
    }()

    /// Installs the SIGBUS handler.
    public static func install() {
        watch(nil)
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in
            let m = TruncatedInputGuard.message
            _ = write(2, m, strlen(m))
            TemporaryFiles.removeAllForSignal()
            _exit(1)
        }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        sigaction(SIGBUS, &action, nil)
    }

    /// Names the mapped input the next SIGBUS is reported for.
    public static func watch(_ path: String?) {
        let text = "edkm: error: " + (path.map { "\($0) changed while it was being read (truncated by another process?)" }
            ?? "a memory-mapped input file changed while it was being read (truncated by another process?)")
            + "; no output was written\n"
        let bytes = Array(text.utf8.prefix(capacity - 1))
        message[0] = 0  // never a half-written message: the first byte last
        for (i, b) in bytes.enumerated().dropFirst() { message[i] = CChar(bitPattern: b) }
        message[bytes.count] = 0
        atomicMemoryFence(ordering: .releasing)
        message[0] = CChar(bitPattern: bytes[0])
    }
}
