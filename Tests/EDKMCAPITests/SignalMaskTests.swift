import CEDKM
import Glibc
import Testing

/// The runtime's worker threads (named "edkm-worker") block the asynchronous signals, so a host's
/// SIGINT/SIGTERM handlers run on the host's threads, and keep the synchronous ones deliverable, so
/// crash handlers and backtracers still see a fault on a worker.
@Suite struct SignalMaskTests {
    @Test func workersBlockAsynchronousSignalsOnly() throws {
        let rt = makeRuntime(threads: 3)
        defer { edkm_runtime_destroy(rt) }
        var masks = workerSignalMasks()
        for _ in 0..<200 where masks.count < 2 {  // the workers name themselves as they start
            usleep(10_000)
            masks = workerSignalMasks()
        }
        try #require(masks.count >= 2, "found \(masks.count) edkm-worker threads")
        for mask in masks {
            for sig in [SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGUSR1] {
                #expect(mask & (1 << UInt64(sig - 1)) != 0, "signal \(sig) not blocked: mask \(String(mask, radix: 16))")
            }
            for sig in [SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT] {
                #expect(mask & (1 << UInt64(sig - 1)) == 0, "signal \(sig) blocked: mask \(String(mask, radix: 16))")
            }
        }
    }

    /// SigBlk of every thread of this process named edkm-worker (/proc/self/task/<tid>/status).
    func workerSignalMasks() -> [UInt64] {
        guard let dir = opendir("/proc/self/task") else { return [] }
        defer { closedir(dir) }
        var masks: [UInt64] = []
        while let entry = readdir(dir) {
            let tid = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard tid.first?.isNumber == true else { continue }
            let status = readText("/proc/self/task/\(tid)/status")
            guard status.split(separator: "\n").contains("Name:\tedkm-worker") else { continue }
            if let line = status.split(separator: "\n").first(where: { $0.hasPrefix("SigBlk:") }),
               let mask = UInt64(line.dropFirst("SigBlk:".count).trimmingPrefix { $0 == "\t" || $0 == " " }, radix: 16) {
                masks.append(mask)
            }
        }
        return masks
    }

    func readText(_ path: String) -> String {
        guard let f = fopen(path, "r") else { return "" }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
