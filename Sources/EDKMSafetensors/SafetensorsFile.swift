#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A safetensors file opened for reading: memory-mapped (read-only, private), header validated.
/// Tensor data is read straight from the mapping, so a file of any size costs only the pages
/// touched, which the kernel may drop again (see `release`).
public final class SafetensorsFile {
    public let path: String
    public let header: Header
    public let fileSize: Int
    private let base: UnsafeMutableRawPointer?

    public init(path: String) throws(SafetensorsError) {
        self.path = path
        // Non-blocking: opening a FIFO without a writer (or a device) must not hang; the file type
        // is checked on the descriptor before anything is read.
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw SafetensorsError(.io, "cannot open \(path): \(errnoText())") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SafetensorsError(.io, "cannot stat \(path): \(errnoText())") }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw SafetensorsError(.io, "\(path) is not a regular file (it is \(fileTypeName(st.st_mode))); give a .safetensors file")
        }
        let size = Int(st.st_size)
        fileSize = size
        if size == 0 {
            base = nil
        } else {
            TruncatedInputGuard.watch(path)  // the file may be truncated while mapped: name it in the error
            let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
            guard let p, p != MAP_FAILED else { throw SafetensorsError(.io, "cannot map \(path): \(errnoText())") }
            base = p
        }
        let all = UnsafeRawBufferPointer(start: base.map { UnsafeRawPointer($0) }, count: size)
        do throws(SafetensorsError) { header = try Header.parse(file: all) } catch {
            let other = OtherFormat.recognise(all, path: path)
            if let base { munmap(base, size) }
            if let other { throw SafetensorsError(.otherFormat, "\(path): \(other)") }
            throw SafetensorsError(error.kind, "\(path): \(error.message)")
        }
    }

    deinit { if let base { munmap(base, fileSize) } }

    /// The bytes of a tensor of this file's header (borrowed: valid while the file is open).
    public func data(_ t: TensorInfo) -> UnsafeRawBufferPointer {
        guard t.byteCount > 0, let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + header.dataStart + t.begin, count: t.byteCount)
    }

    /// Tells the kernel that a tensor's pages will not be needed again soon (they stay readable).
    public func release(_ t: TensorInfo) {
        guard let base, t.byteCount > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = header.dataStart + t.begin
        let alignedStart = start / page * page
        madvise(base + alignedStart, start + t.byteCount - alignedStart, MADV_DONTNEED)
    }

    /// Advises sequential access of the whole mapping.
    public func adviseSequential() {
        guard let base else { return }
        madvise(base, fileSize, MADV_SEQUENTIAL)
    }
}

func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

/// "a directory", "a FIFO", ... for a st_mode.
func fileTypeName(_ mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFDIR: return "a directory"
    case S_IFIFO: return "a FIFO"
    case S_IFCHR: return "a character device"
    case S_IFBLK: return "a block device"
    case S_IFSOCK: return "a socket"
    case S_IFLNK: return "a symbolic link"
    case S_IFREG: return "a regular file"
    default: return "not a regular file"
    }
}
