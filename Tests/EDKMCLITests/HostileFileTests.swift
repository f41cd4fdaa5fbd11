import EDKMSafetensors
import Foundation
import Testing

/// Odd inputs and outputs: special files (FIFO, directory, character device), a file truncated
/// while it is mapped, the output naming the input (also through links), output paths that cannot
/// work, LUT values an f16 LUT cannot hold and LUTs holding NaN. Every case ends with exit status 1
/// (never a signal, never a hang), one error line that names the problem, the input intact and no
/// output or temporary file left.
@Suite struct HostileFileTests {
    /// Runs edkm, killing it after `seconds` (a hang is reported as a failure, not waited on).
    static func runBounded(_ args: [String], seconds: Double = 20) throws -> (CLIResult, hung: Bool) {
        let start = Date()
        var hung = false
        let r = try CLI.run(args, killWhen: {
            hung = Date().timeIntervalSince(start) > seconds
            return hung
        }, signal: SIGKILL)
        return (r, hung)
    }

    static func model(_ dir: TempDir, _ name: String = "m") throws -> String {
        var rng = TestRandom(5)
        try writeSafetensors([.float("w", .f32, [64, 64], rng.normals(64 * 64, scale: 1))], to: dir.file(name))
        return dir.file(name)
    }

    @Test(needsCLI, arguments: ["fifo", "directory", "device"])
    func specialInputsAreRejected(_ kind: String) throws {
        let dir = TempDir()
        let input: String
        switch kind {
        case "fifo":
            input = dir.file("pipe")
            try #require(mkfifo(input, 0o600) == 0)
        case "directory":
            input = dir.file("d")
            try FileManager.default.createDirectory(atPath: input, withIntermediateDirectories: false)
        default:
            input = "/dev/zero"
        }
        let before = dir.contents
        for args in [["info", input], ["palettize", input, "-o", dir.file("p")], ["unpack", input, "-o", dir.file("u")]] {
            let (r, hung) = try Self.runBounded(args)
            #expect(!hung, "\(args[0]) of a \(kind) hung")
            #expect(r.status == 1 && !r.signaled && errorLines(r).count == 1, "\(args[0]) \(kind): \(r.status) \(r.stderr)")
            #expect(r.stderr.contains("not a regular file"), "\(r.stderr)")
            #expect(dir.contents == before, "left \(dir.contents)")
        }
    }

    /// The output is the input: the same path, a symbolic link to it, a hard link to it. Refused
    /// even with --force; the input is unchanged.
    @Test(needsCLI, arguments: ["same", "symlink", "hardlink"])
    func outputIsInputIsRefused(_ how: String) throws {
        let dir = TempDir()
        let input = try Self.model(dir)
        let original = readBytes(input)
        var output = input
        if how == "symlink" { output = dir.file("link"); try #require(symlink(input, output) == 0) }
        if how == "hardlink" { output = dir.file("hard"); try #require(link(input, output) == 0) }
        let before = dir.contents
        for cmd in ["palettize", "unpack"] {
            let r = try CLI.run([cmd, input, "-o", output, "--force"])
            #expect(r.status == 1 && errorLines(r).count == 1 && r.stderr.contains("is the input file"), "\(cmd) \(how): \(r.stderr)")
            #expect(readBytes(input) == original)
            #expect(dir.contents == before)
        }
    }

    /// Output paths that cannot receive a file are refused before any work.
    @Test(needsCLI) func badOutputPathsFailFirst() throws {
        let dir = TempDir()
        let input = try Self.model(dir)
        try FileManager.default.createDirectory(atPath: dir.file("sub"), withIntermediateDirectories: false)
        let cases: [(String, String)] = [("", "does not name a file"), (dir.file("sub"), "is a directory"),
                                         (dir.file("sub") + "/", "does not name a file"), (dir.file("none/p"), "does not exist")]
        for (output, words) in cases {
            let r = try CLI.run(["palettize", input, "-o", output, "--force"])
            #expect(r.status == 1 && errorLines(r).count == 1 && r.stderr.contains(words), "-o \(JSON.quote(output)): \(r.stderr)")
            #expect(!r.stdout.contains("palettized"), "the work ran before the output check")
        }
        if geteuid() != 0 {  // root may write anywhere
            try #require(chmod(dir.file("sub"), 0o500) == 0)
            let r = try CLI.run(["palettize", input, "-o", dir.file("sub/p")])
            #expect(r.status == 1 && r.stderr.contains("not writable"), "\(r.stderr)")
            chmod(dir.file("sub"), 0o700)
        }
        #expect(dir.contents == ["m", "sub"])
    }

    /// A file truncated by another process while it is mapped: SIGBUS becomes exit status 1 with
    /// an error naming the file, and the temporary output is removed.
    @Test(needsCLI) func inputTruncatedWhileMapped() throws {
        let dir = TempDir()
        var rng = TestRandom(9)
        // A large tensor that is copied (rank 1) keeps the writer busy reading the mapping.
        let big = TestTensor(name: "big", dtype: .u8, shape: [96 << 20], bytes: [UInt8](repeating: 0x5A, count: 96 << 20))
        try writeSafetensors([.float("w", .f32, [64, 64], rng.normals(64 * 64, scale: 1)), big], to: dir.file("m"))
        var truncated = false
        let r = try CLI.run(["palettize", dir.file("m"), "-o", dir.file("p"), "--plain"], killWhen: {
            if !truncated && dir.contents.contains(where: { $0.hasPrefix(".p.tmp-") }) {
                truncated = truncate(dir.file("m"), 4096) == 0
            }
            return false
        })
        print("truncated while mapped: \(truncated), status \(r.status), stderr \(r.stderr.suffix(200))")
        #expect(!r.signaled, "the tool died of a signal")
        if truncated {
            // SIGBUS (a mapped page read by the tool) or EFAULT (read by write(2) from the mapping)
            #expect(r.status == 1 && errorLines(r).count == 1 && r.stderr.contains("changed while it was being read"), "\(r.stderr)")
            #expect(dir.contents == ["m"], "left \(dir.contents)")
        } else {
            #expect(r.status == 0)  // it finished before the temporary file was seen
        }
    }

    /// f32 weights of magnitude ~1e5 with --lut-dtype f16: a clear error, no output (the
    /// default, auto, picks f32 and works).
    @Test(needsCLI) func f16LUTOverflowIsAnError() throws {
        let dir = TempDir()
        var rng = TestRandom(3)
        try writeSafetensors([.float("w", .f32, [64, 64], rng.normals(64 * 64, scale: 1).map { $0 * 1e5 })], to: dir.file("m"))
        let r = try CLI.run(["palettize", dir.file("m"), "-o", dir.file("p"), "--lut-dtype", "f16", "--min-size", "16"])
        #expect(r.status == 1 && errorLines(r).count == 1 && r.stderr.contains("f16 LUT"), "\(r.stderr)")
        #expect(dir.contents == ["m"])
        let ok = try CLI.run(["palettize", dir.file("m"), "-o", dir.file("p"), "--min-size", "16"])
        #expect(ok.status == 0, "\(ok.stderr)")
    }

    /// A palettized file whose LUT holds NaN is not unpacked.
    @Test(needsCLI) func nanLUTIsRejectedByUnpack() throws {
        let dir = TempDir()
        _ = try Self.model(dir)
        let p = try CLI.run(["palettize", dir.file("m"), "-o", dir.file("p"), "--min-size", "16", "--lut-dtype", "f32"])
        try #require(p.status == 0, "\(p.stderr)")
        var bytes = readBytes(dir.file("p"))
        let f = try SafetensorsFile(path: dir.file("p"))
        let lut = try #require(f.header.tensors.first { $0.name.hasSuffix(".lut") || $0.name.contains("lut") })
        let at = f.header.dataStart + lut.begin + 4  // the second LUT value
        withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { for i in 0..<4 { bytes[at + i] = $0[i] } }
        writeBytes(bytes, to: dir.file("p"))
        let r = try CLI.run(["unpack", dir.file("p"), "-o", dir.file("u")])
        #expect(r.status == 1 && errorLines(r).count == 1 && r.stderr.contains("NON_FINITE"), "\(r.stderr)")
        #expect(!exists(dir.file("u")))
    }

    /// Files that change while they are read: a seeded loop runs info, palettize and unpack while
    /// the input is truncated, overwritten or extended at a random moment. Every run ends with
    /// exit status 0 or 1 (never a signal), and a failed palettize/unpack leaves no output or
    /// temporary file. EDKM_FUZZ_ITERATIONS scales the loop (default 12 runs).
    @Test(needsCLI) func filesChangingWhileRead() throws {
        let runs = max(12, (Int(ProcessInfo.processInfo.environment["EDKM_FUZZ_ITERATIONS"] ?? "") ?? 0) / 200)
        var rng = TestRandom(77)
        var outcomes: [String: Int] = [:]
        for i in 0..<runs {
            let dir = TempDir()
            let cols = [64, 1024, 8192][rng.below(3)]
            try writeSafetensors([.float("w", .f32, [64, cols], rng.normals(64 * cols, scale: 1)),
                                  TestTensor(name: "b", dtype: .u8, shape: [cols * 256], bytes: [UInt8](repeating: 7, count: cols * 256))],
                                 to: dir.file("m"))
            var input = dir.file("m")
            let command = ["info", "palettize", "unpack"][rng.below(3)]
            if command == "unpack" {
                let p = try CLI.run(["palettize", input, "-o", dir.file("p"), "--min-size", "16"])
                try #require(p.status == 0, "\(p.stderr)")
                input = dir.file("p")
            }
            let size = readBytes(input).count
            let change = rng.below(3), after = rng.below(40), cut = rng.below(size)
            var polls = 0
            let args = command == "info" ? [command, input] : [command, input, "-o", dir.file("out")]
            let r = try CLI.run(args, killWhen: {
                polls += 1
                if polls == after {
                    switch change {
                    case 0: _ = truncate(input, off_t(cut))
                    case 1:
                        let fd = open(input, O_WRONLY)
                        if fd >= 0 { var junk = [UInt8](repeating: 0xEE, count: 4096); _ = pwrite(fd, &junk, junk.count, off_t(cut)); close(fd) }
                    default:
                        let fd = open(input, O_WRONLY | O_APPEND)
                        if fd >= 0 { var junk = [UInt8](repeating: 0, count: 65536); _ = write(fd, &junk, junk.count); close(fd) }
                    }
                }
                return polls > 60_000  // a minute: a hang
            }, signal: SIGKILL)
            outcomes["\(command) exit \(r.signaled ? "signal" : String(r.status))", default: 0] += 1
            #expect(!r.signaled, "run \(i): \(command) with change \(change) at poll \(after) died of a signal: \(r.stderr)")
            #expect(r.status == 0 || r.status == 1, "run \(i): \(r.status) \(r.stderr)")
            if r.status == 1 && command != "info" {
                #expect(!dir.contents.contains { $0.hasPrefix(".out.tmp-") || $0 == "out" }, "run \(i) left \(dir.contents)")
            }
        }
        print("files changing while read: \(outcomes.sorted { $0.key < $1.key })")
    }
}

