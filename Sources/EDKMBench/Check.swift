import CEDKM
import Glibc

/// Stops the benchmark with the library's message when a libedkm call fails (a benchmark has no
/// way to recover from a failed call, and a silently skipped case would make the table wrong).
func check(_ status: edkm_status, _ what: @autoclosure () -> String) {
    if status != EDKM_OK {
        let name = String(cString: edkm_status_name(status))
        let detail = String(cString: edkm_last_error())
        fail("\(what()): \(name): \(detail)")
    }
}

/// Prints `message` to stderr and exits with status 1.
func fail(_ message: String) -> Never {
    fputs("edkm-bench: \(message)\n", stderr)
    exit(1)
}
