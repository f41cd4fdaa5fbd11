/// A problem with a safetensors file or with reading or writing one. `description` is one line
/// that names the problem (and the tensor, field or path involved); `kind` is for programs.
public struct SafetensorsError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: String, Sendable {
        /// The file is shorter than the 8-byte header length.
        case fileTooShort
        /// The header length is 0, over the 100 MB limit, or beyond the end of the file.
        case headerLength
        /// The header is not UTF-8, does not start with '{' or is not valid JSON.
        case malformedJSON
        /// A tensor entry (or __metadata__) lacks a field, has an unknown one or a wrong type.
        case invalidEntry
        /// A dtype not in the safetensors set.
        case unknownDType
        /// data_offsets out of the data section or reversed.
        case offsetsOutOfRange
        /// Two tensors claim the same bytes.
        case overlappingOffsets
        /// Bytes of the data section that belong to no tensor (between tensors or at the end).
        case nonContiguousOffsets
        /// The shape and dtype do not give the byte size of data_offsets.
        case sizeMismatch
        /// Palettization metadata (edkm.*) that is inconsistent with the tensors.
        case invalidPalettization
        /// A file-system error (open, stat, mmap, write, rename).
        case io
        /// The output exists and --force was not given.
        case outputExists
        /// Not a safetensors file but a recognised other format (PyTorch, GGUF, NumPy, HTML, ...).
        case otherFormat
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}
