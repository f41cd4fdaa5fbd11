import CEDKM
import EDKMClient
import Glibc

/// The value of a libedkm call through EDKMClient, or the end of the benchmark with the library's
/// message when it fails (a benchmark has no way to recover from a failed call, and a silently
/// skipped case would make the table wrong).
func must<T>(_ value: () throws -> T) -> T {
    do { return try value() } catch { fail("\(error)") }
}

/// Prints `message` to stderr and exits with status 1.
func fail(_ message: String) -> Never {
    fputs("edkm-bench: \(message)\n", stderr)
    exit(1)
}

extension EDKMLayer {
    /// A layer over a [rows, cols] weight tensor with coremltools' DKMPalettizer defaults (absolute
    /// tau 1e-4), so that every comparison with it and with the dense baseline runs the same
    /// arithmetic; with `scaleFreeTau`, the library's default scale-free mode with that factor instead.
    static func bench(_ runtime: EDKMRuntime, rows: Int, cols: Int, bits: Int, groupSize: Int = 0,
                      algorithm: edkm_algorithm = EDKM_ALGORITHM_AUTO, epsilon: Double? = nil,
                      scaleFreeTau: Double? = nil) -> EDKMLayer {
        var cfg = EDKMLayer.defaultConfig()
        cfg.bits = UInt32(bits)
        cfg.group_size = UInt32(groupSize)
        cfg.algorithm = Int32(algorithm.rawValue)
        if let scaleFreeTau {
            cfg.temperature_mode = Int32(EDKM_TEMPERATURE_SCALE_FREE.rawValue)
            cfg.tau = scaleFreeTau
        } else {
            cfg.temperature_mode = Int32(EDKM_TEMPERATURE_ABSOLUTE.rawValue)
            cfg.tau = 1e-4
        }
        if let epsilon { cfg.epsilon = epsilon }
        return must { try EDKMLayer(runtime: runtime, shape: [rows, cols], config: cfg) }
    }
}

/// A 64-byte aligned, zero-filled (so every page is touched) byte buffer.
final class Buffer {
    let pointer: UnsafeMutableRawPointer
    let bytes: Int
    init(bytes: Int) {
        self.bytes = bytes
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: max(bytes, 1))
    }
    convenience init(_ values: [UInt16]) {
        self.init(bytes: values.count * 2)
        values.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
    deinit { pointer.deallocate() }
    var fingerprint: UInt64 { EDKMBench.fingerprint(pointer, bytes: bytes) }
}
