#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// One tensor of a file being written: its header entry. Data follows in the order given.
public struct OutputTensor: Equatable, Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]

    public init(name: String, dtype: DType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }

    /// Bytes of the tensor's data; -1 when the shape is invalid or too large.
    public var byteCount: Int {
        var elements: UInt64 = 1
        for e in shape {
            guard e >= 0 else { return -1 }
            let (p, o) = elements.multipliedReportingOverflow(by: UInt64(e))
            if o { return -1 }
            elements = p
        }
        guard let b = dtype.byteCount(elements: elements), b <= UInt64(Int.max) else { return -1 }
        return Int(b)
    }
}

/// Writes a safetensors file as a stream: the header first (sizes are known up front), then each
/// tensor's bytes in order, into a temporary file in the output's directory that is renamed onto
/// the output only when every byte has been written (and synced). Until then the output path is
/// untouched; on any error, or if the writer is dropped unfinished, the temporary file is removed.
///
/// Tensors should be given largest element first (the caller's order is kept): with the header
/// padded to a multiple of 8, each tensor then starts aligned to its element size.
public final class SafetensorsWriter {
    public let path: String
    public let tensors: [OutputTensor]
    public let force: Bool
    private(set) public var tempPath: String
    private var fd: Int32
    private var next = 0           // index of the tensor being written
    private var remaining = 0      // bytes left of the current tensor
    private var buffer: [UInt8] = []
    private static let bufferCapacity = 1 << 20
    private var done = false
    /// Bytes of header (length field and padded JSON) and of data.
    public let headerBytes: Int
    public let dataBytes: Int

    /// Checks the output (exists without `force`: `.outputExists`), creates the temporary file and
    /// writes the header.
    public init(path: String, tensors: [OutputTensor], metadata: Metadata?, force: Bool) throws(SafetensorsError) {
        self.path = path
        self.tensors = tensors
        self.force = force
        try SafetensorsWriter.checkOutput(path, force: force)
        var names = Set<String>()
        var offset = 0
        var entries: [String] = []
        if let metadata {
            entries.append(JSON.quote("__metadata__") + ":{" +
                           metadata.entries.map { JSON.quote($0.key) + ":" + JSON.quote($0.value) }.joined(separator: ",") + "}")
        }
        for t in tensors {
            guard t.name != "__metadata__", names.insert(t.name).inserted else {
                throw SafetensorsError(.invalidEntry, "cannot write \(path): tensor name \(JSON.quote(t.name)) is used twice or reserved")
            }
            guard t.shape.allSatisfy({ $0 >= 0 }), t.byteCount >= 0 else {
                throw SafetensorsError(.sizeMismatch, "cannot write \(path): tensor \(JSON.quote(t.name)) has an invalid shape")
            }
            let shape = "[" + t.shape.map(String.init).joined(separator: ",") + "]"
            entries.append(JSON.quote(t.name) + ":{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":\(shape),\"data_offsets\":[\(offset),\(offset + t.byteCount)]}")
            offset += t.byteCount
        }
        var json = Array(("{" + entries.joined(separator: ",") + "}").utf8)
        while (8 + json.count) % 8 != 0 { json.append(0x20) }
        headerBytes = 8 + json.count
        dataBytes = offset

        // Temporary file next to the output (same file system, so rename is atomic). Its name is
        // registered before the file is created (O_CREAT | O_EXCL), so an interrupting signal,
        // whichever thread handles it and whenever it lands, finds the file if it exists (unlinking
        // a name not created yet is harmless). Blocking signals around mkstemp would not do: the
        // mask is per thread, and the signal may be delivered to another thread.
        let (dir, base) = SafetensorsWriter.split(path)
        var tfd: Int32 = -1
        var candidate = ""
        var createErrno: Int32 = 0
        for _ in 0..<64 {
            candidate = "\(dir)/.\(base).tmp-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
            TemporaryFiles.register(candidate)
            tfd = open(candidate, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if tfd >= 0 { break }
            createErrno = errno
            TemporaryFiles.unregister(candidate)
            if createErrno != EEXIST { break }
        }
        guard tfd >= 0 else {
            errno = createErrno
            throw SafetensorsError(.io, "cannot create a temporary file in \(dir): \(errnoText())")
        }
        fd = tfd
        tempPath = candidate

        var lengthField = [UInt8](repeating: 0, count: 8)
        for i in 0..<8 { lengthField[i] = UInt8((UInt64(json.count) >> (8 * UInt64(i))) & 0xff) }
        do throws(SafetensorsError) {
            try raw(lengthField)
            try raw(json)
            try startNextTensor()
        } catch {
            abort()
            throw error
        }
    }

    deinit { if !done { abort() } }

    /// The tensor whose bytes `append` expects now (nil when all are written).
    public var currentTensor: OutputTensor? { next < tensors.count ? tensors[next] : nil }

    /// Appends bytes of the current tensor (moving to the next when one is complete).
    public func append(_ bytes: UnsafeRawBufferPointer) throws(SafetensorsError) {
        var rest = bytes
        while !rest.isEmpty {
            guard next < tensors.count else {
                throw SafetensorsError(.io, "internal: more data than the header of \(path) declares")
            }
            let n = Swift.min(rest.count, remaining)
            try buffered(UnsafeRawBufferPointer(rebasing: rest[0..<n]))
            remaining -= n
            rest = UnsafeRawBufferPointer(rebasing: rest[n...])
            if remaining == 0 {
                next += 1
                try startNextTensor()
            }
        }
    }

    public func append(_ bytes: [UInt8]) throws(SafetensorsError) {
        var result: Result<Void, SafetensorsError> = .success(())
        bytes.withUnsafeBytes { b in
            do throws(SafetensorsError) { try append(b) } catch { result = .failure(error) }
        }
        try result.get()
    }

    /// Checks that every declared byte was written, syncs and moves the file onto the output.
    public func finish() throws(SafetensorsError) {
        guard !done else { return }
        do throws(SafetensorsError) {
            guard next == tensors.count else {
                throw SafetensorsError(.io, "internal: tensor \(JSON.quote(tensors[next].name)) of \(path) is not complete")
            }
            try flush()
            let mask = umask(0)
            umask(mask)
            _ = fchmod(fd, 0o666 & ~mask)
            guard fsync(fd) == 0 else { throw SafetensorsError(.io, "cannot write \(path): fsync: \(errnoText())") }
            close(fd)
            fd = -1
            if force {
                guard rename(tempPath, path) == 0 else {
                    throw SafetensorsError(.io, "cannot rename the temporary file onto \(path): \(errnoText())")
                }
            } else {
                // link() refuses to replace an existing file: no race with another writer.
                if link(tempPath, path) == 0 {
                    unlink(tempPath)
                } else if errno == EEXIST {
                    throw SafetensorsError(.outputExists, "\(path) already exists (use --force to overwrite)")
                } else {
                    // File systems without hard links: check, then rename.
                    try SafetensorsWriter.checkOutput(path, force: false)
                    guard rename(tempPath, path) == 0 else {
                        throw SafetensorsError(.io, "cannot rename the temporary file onto \(path): \(errnoText())")
                    }
                }
            }
            TemporaryFiles.unregister(tempPath)
            done = true
            let (dir, _) = SafetensorsWriter.split(path)
            let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dfd >= 0 { _ = fsync(dfd); close(dfd) }
        } catch {
            abort()
            throw error
        }
    }

    /// Removes the temporary file; the output stays as it was.
    public func abort() {
        if fd >= 0 { close(fd); fd = -1 }
        if !done {
            unlink(tempPath)
            TemporaryFiles.unregister(tempPath)
            done = true
        }
    }

    // MARK: - internals

    private func startNextTensor() throws(SafetensorsError) {
        while next < tensors.count && tensors[next].byteCount == 0 { next += 1 }
        remaining = next < tensors.count ? tensors[next].byteCount : 0
    }

    private func buffered(_ bytes: UnsafeRawBufferPointer) throws(SafetensorsError) {
        if bytes.count >= SafetensorsWriter.bufferCapacity / 2 {
            try flush()
            try raw(bytes)
        } else {
            if buffer.count + bytes.count > SafetensorsWriter.bufferCapacity { try flush() }
            buffer.append(contentsOf: bytes)
        }
    }

    private func flush() throws(SafetensorsError) {
        guard !buffer.isEmpty else { return }
        let b = buffer
        buffer.removeAll(keepingCapacity: true)
        try raw(b)
    }

    private func raw(_ bytes: [UInt8]) throws(SafetensorsError) {
        var result: Result<Void, SafetensorsError> = .success(())
        bytes.withUnsafeBytes { b in
            do throws(SafetensorsError) { try raw(b) } catch { result = .failure(error) }
        }
        try result.get()
    }

    private func raw(_ bytes: UnsafeRawBufferPointer) throws(SafetensorsError) {
        var offset = 0
        while offset < bytes.count {
            let n = write(fd, bytes.baseAddress! + offset, Swift.min(bytes.count - offset, 1 << 30))
            if n < 0 {
                if errno == EINTR { continue }
                // EFAULT: the bytes to copy could not be read, i.e. a memory-mapped input shrank.
                let reason = errno == EFAULT ? "the data to copy could not be read (the input file changed while it was being read: truncated by another process?)" : errnoText()
                throw SafetensorsError(.io, "cannot write \(path): \(reason)")
            }
            offset += n
        }
    }

    /// Fails with `.outputExists` when `path` exists and `force` is false, and with `.io` when it
    /// is a directory.
    /// Checks, before any work, that `path` can receive an output: a non-empty file name in an
    /// existing, writable directory; not a directory; not existing unless `force`; and never the
    /// file `input` (the same device and inode, also through symbolic or hard links), even with
    /// `force`.
    public static func checkOutput(_ path: String, force: Bool, input: String? = nil) throws(SafetensorsError) {
        let (dir, base) = split(path)
        guard !base.isEmpty && base != "." && base != ".." else {
            throw SafetensorsError(.io, "the output path \(JSON.quote(path)) does not name a file")
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            if (st.st_mode & S_IFMT) == S_IFDIR { throw SafetensorsError(.io, "\(path) is a directory") }
            if let input {
                var out = stat(), inp = stat()
                if stat(path, &out) == 0 && stat(input, &inp) == 0 && out.st_dev == inp.st_dev && out.st_ino == inp.st_ino {
                    throw SafetensorsError(.io, "the output \(path) is the input file \(input) (the same file); write to another path")
                }
            }
            if !force { throw SafetensorsError(.outputExists, "\(path) already exists (use --force to overwrite)") }
        }
        var dst = stat()
        guard stat(dir, &dst) == 0, (dst.st_mode & S_IFMT) == S_IFDIR else {
            throw SafetensorsError(.io, "cannot write \(path): directory \(dir) does not exist")
        }
        guard access(dir, W_OK | X_OK) == 0 else {
            throw SafetensorsError(.io, "cannot write \(path): directory \(dir) is not writable (\(errnoText()))")
        }
    }

    static func split(_ path: String) -> (dir: String, base: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let dir = String(path[..<slash])
        return (dir.isEmpty ? "/" : dir, String(path[path.index(after: slash)...]))
    }
}

/// Temporary files being written, removed by `removeAllForSignal` (async-signal-safe: a fixed
/// table of C strings) when the process is interrupted. register / unregister may be called from
/// several threads (a mutex orders them); the signal handler only reads.
public enum TemporaryFiles {
    private static let slots = 8
    private static let slotBytes = 4096
    nonisolated(unsafe) private static let table: UnsafeMutablePointer<CChar> = {
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: slots * slotBytes)
        p.initialize(repeating: 0, count: slots * slotBytes)
        return p
    }()
    nonisolated(unsafe) private static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    /// Records path (at most 8 at once, each under 4 KiB; beyond that it is not removed on a signal).
    static func register(_ path: String) {
        let bytes = Array(path.utf8CString)
        guard bytes.count <= slotBytes else { return }
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        for s in 0..<slots where table[s * slotBytes] == 0 {
            // The whole path, then (after a release fence) its first byte, which marks the slot used:
            // a handler that sees the first byte sees the rest.
            for (i, b) in bytes.enumerated().dropFirst() { table[s * slotBytes + i] = b }
            atomicMemoryFence(ordering: .releasing)
            table[s * slotBytes] = bytes[0]
            return
        }
    }

    static func unregister(_ path: String) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        for s in 0..<slots where table[s * slotBytes] != 0 && String(cString: table + s * slotBytes) == path {
            table[s * slotBytes] = 0
        }
    }

    /// Unlinks every registered temporary file. Safe to call from a signal handler.
    public static func removeAllForSignal() {
        for s in 0..<slots where table[s * slotBytes] != 0 {
            atomicMemoryFence(ordering: .acquiring)
            unlink(table + s * slotBytes)
        }
    }

    /// Installs SIGINT, SIGTERM and SIGHUP handlers that remove the temporary files and then die of
    /// the signal as usual. A signal ignored at startup (nohup, background jobs) stays ignored; the
    /// three are unblocked (a parent may have spawned us with them blocked).
    public static func installSignalHandlers() {
        _ = table
        var set = sigset_t()
        sigemptyset(&set)
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            let previous = signal(sig) { s in
                TemporaryFiles.removeAllForSignal()
                signal(s, SIG_DFL)
                raise(s)
            }
            if let previous, unsafeBitCast(previous, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self) {
                signal(sig, SIG_IGN)
            }
            sigaddset(&set, sig)
        }
        sigprocmask(SIG_UNBLOCK, &set, nil)
    }
}
