import EDKMNumerics
import EDKMSafetensors
import Foundation
import Testing

/// Helpers shared by the CLI tests: temporary directories, hand-built safetensors files, the
/// `edkm` executable, an independent decoder of packed indices.

final class TempDir {
    let path: String

    init(_ tag: String = "edkm-test") {
        var template = Array("\(NSTemporaryDirectory())/\(tag)-XXXXXX".utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        path = String(cString: p!)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { path + "/" + name }

    /// Names in the directory (to check that no temporary or output file was left behind).
    var contents: [String] { ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() }
}

func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

func readBytes(_ path: String) -> [UInt8] { [UInt8](FileManager.default.contents(atPath: path) ?? Data()) }

func writeBytes(_ bytes: [UInt8], to path: String) {
    FileManager.default.createFile(atPath: path, contents: Data(bytes))
}

/// A safetensors file from a header JSON text and a data section (no validation: for bad files).
func rawSafetensors(header: String, data: [UInt8], declaredLength: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    let n = declaredLength ?? UInt64(h.count)
    var out = (0..<8).map { UInt8((n >> (8 * UInt64($0))) & 0xff) }
    out += h
    out += data
    return out
}

/// A tensor to put in a generated file.
struct TestTensor {
    let name: String
    let dtype: DType
    let shape: [Int]
    let bytes: [UInt8]

    /// F32 / F16 / BF16 tensor from float values (rounded to the dtype).
    static func float(_ name: String, _ dtype: DType, _ shape: [Int], _ values: [Float]) -> TestTensor {
        let bytes: [UInt8]
        switch dtype {
        case .f32: bytes = values.map { $0.bitPattern.littleEndian }.withUnsafeBytes { Array($0) }
        case .f16: bytes = values.map { FloatBits.floatToF16($0).littleEndian }.withUnsafeBytes { Array($0) }
        case .bf16: bytes = values.map { FloatBits.floatToBF16($0).littleEndian }.withUnsafeBytes { Array($0) }
        default: fatalError("not a float dtype")
        }
        return TestTensor(name: name, dtype: dtype, shape: shape, bytes: bytes)
    }
}

/// Writes tensors with the library's writer (our format, aligned).
func writeSafetensors(_ tensors: [TestTensor], metadata: Metadata? = nil, to path: String) throws {
    let w = try SafetensorsWriter(path: path, tensors: tensors.map { OutputTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape) },
                                  metadata: metadata, force: true)
    for t in tensors { try w.append(t.bytes) }
    try w.finish()
}

/// Seeded generator for test data: the shared SplitMix64 (EDKMNumerics).
typealias TestRandom = SplitMix64

extension SplitMix64 {
    init(_ seed: UInt64) { self.init(seed: seed) }
    mutating func normals(_ n: Int, scale: Float) -> [Float] { (0..<n).map { _ in Float(normal()) * scale } }
}

/// Element i of a float tensor's bytes as Float (decoded here, not by the code under test).
func floatValue(_ bytes: [UInt8], _ dtype: DType, _ i: Int) -> Float {
    switch dtype {
    case .f32:
        let b = UInt32(bytes[4 * i]) | UInt32(bytes[4 * i + 1]) << 8 | UInt32(bytes[4 * i + 2]) << 16 | UInt32(bytes[4 * i + 3]) << 24
        return Float(bitPattern: b)
    case .f16:
        return Float(Float16(bitPattern: UInt16(bytes[2 * i]) | UInt16(bytes[2 * i + 1]) << 8))
    case .bf16:
        return Float(bitPattern: (UInt32(bytes[2 * i]) | UInt32(bytes[2 * i + 1]) << 8) << 16)
    default:
        fatalError("not a float dtype")
    }
}

/// Label n of a packed stream with `bits` bits per label, least significant bit first: read bit
/// by bit (an independent decoder, deliberately unlike the library's word-based one).
func decodeLabel(_ stream: ArraySlice<UInt8>, bits: Int, index n: Int) -> Int {
    var label = 0
    for b in 0..<bits {
        let s = n * bits + b
        let byte = stream[stream.startIndex + s / 8]
        if (byte >> UInt8(s % 8)) & 1 == 1 { label |= 1 << b }
    }
    return label
}

/// Reads a whole tensor's bytes from a file through the reader under test.
func tensorBytes(_ file: SafetensorsFile, _ name: String) -> [UInt8]? {
    guard let t = file.header.tensor(named: name) else { return nil }
    return Array(file.data(t))
}

// MARK: - The edkm executable

struct CLIResult {
    let status: Int32
    let signaled: Bool
    let stdout: String
    let stderr: String
}

enum CLI {
    /// The built `edkm` executable: $EDKM_CLI, or next to the test binary.
    static let path: String? = {
        if let p = ProcessInfo.processInfo.environment["EDKM_CLI"], exists(p) { return p }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var dir = (exe as NSString).deletingLastPathComponent
        // The test binary may sit inside a .xctest bundle directory.
        for _ in 0..<3 {
            var isDir: ObjCBool = false
            let p = dir + "/edkm"
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), !isDir.boolValue,
               FileManager.default.isExecutableFile(atPath: p) { return p }
            dir = (dir as NSString).deletingLastPathComponent
        }
        return nil
    }()

    static var available: Bool { path != nil }

    static let missing = """
        the edkm executable was not found next to the test binary (nor in $EDKM_CLI): \
        `swift build` must build the executable product "edkm" (target EDKMCLI)
        """

    /// Runs edkm with arguments, optionally killing it with `signal` as soon as `killWhen` (polled
    /// every millisecond while it runs) returns true.
    static func run(_ args: [String], environment: [String: String] = [:], killWhen: (() -> Bool)? = nil,
                    signal: Int32 = SIGTERM) throws -> CLIResult {
        let exe = try #require(path, Comment(rawValue: missing))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["TERM"] = "dumb"
        env.merge(environment) { $1 }
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        if let condition = killWhen {
            while p.isRunning {
                if condition() { kill(p.processIdentifier, signal); break }
                usleep(1000)
            }
        }
        // Read before waiting so a full pipe cannot block the child.
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return CLIResult(status: p.terminationStatus, signaled: p.terminationReason == .uncaughtSignal,
                         stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }
}

/// Tests that run the executable carry this trait: skipped when it is not built (one test,
/// `ExecutableTests.executableIsBuilt`, fails then and says why).
let needsCLI = ConditionTrait.enabled(if: CLI.available, "the edkm executable is not built")

@Suite struct ExecutableTests {
    @Test func executableIsBuilt() {
        #expect(CLI.available, Comment(rawValue: CLI.missing))
    }

    @Test(needsCLI) func helpAndVersion() throws {
        let h = try CLI.run(["--help"])
        #expect(h.status == 0 && h.stdout.contains("palettize") && h.stdout.contains("unpack") && h.stdout.contains("demo"))
        let v = try CLI.run(["--version"])
        #expect(v.status == 0 && v.stdout.contains("libedkm"))
        let bad = try CLI.run(["palettize", "x", "-o", "y", "--bits", "9"])
        #expect(bad.status != 0 && bad.stderr.contains("--bits must be 1...8"))
    }
}

/// The lines of stderr that are errors ("edkm: error: ...").
func errorLines(_ r: CLIResult) -> [String] {
    r.stderr.split(separator: "\n").map(String.init).filter { $0.hasPrefix("edkm: error:") }
}
