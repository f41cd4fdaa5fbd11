import CEDKM
import EDKMSwift

/// A C ABI struct that begins with its uint32_t struct_size (the sizeof the caller compiled
/// against). A caller's struct_size must end on a field boundary: the offset of one of the fields
/// after struct_size (the caller's struct ends before that field) or the whole size. A size that
/// ends inside a field (a truncated pointer, say) is rejected, never read or written in part.
protocol SizedStruct {
    /// Offsets of the fields after struct_size, in declaration order.
    static var fieldOffsets: [Int] { get }
}

private func offsets<T>(of type: T.Type, _ fields: [PartialKeyPath<T>]) -> [Int] {
    fields.map { MemoryLayout<T>.offset(of: $0)! }
}

extension edkm_runtime_config: SizedStruct {
    static let fieldOffsets: [Int] = offsets(of: edkm_runtime_config.self, [\.num_threads, \.budget_bytes, \.saved_mode, \.keep_weights,
                                      \.communicator])
}

extension edkm_communicator: SizedStruct {
    static let fieldOffsets: [Int] = offsets(of: edkm_communicator.self, [\.rank, \.world_size, \.reserved, \.user_data, \.all_gather,
                                      \.all_reduce_sum])
}

extension edkm_layer_config: SizedStruct {
    static let fieldOffsets: [Int] = offsets(of: edkm_layer_config.self, [\.bits, \.cluster_dim, \.group_size, \.max_iterations, \.`init`,
                                      \.tau, \.epsilon, \.zero_threshold, \.prune_threshold, \.algorithm,
                                      \.f32_key_dtype, \.seed, \.temperature_mode, \.reserved,
                                      \.enforce_zero, \.lut_dtype, \.channel_scale])
}

extension edkm_runtime_stats: SizedStruct {
    static let fieldOffsets: [Int] = offsets(of: edkm_runtime_stats.self, [\.num_threads, \.arena_allocated, \.arena_peak, \.arena_active,
                                      \.heap_saved, \.heap_saved_peak, \.live_saved_states, \.dedup_hits,
                                      \.dedup_misses, \.budget_bytes, \.communicator_bytes])
}

extension edkm_layer_stats: SizedStruct {
    static let fieldOffsets: [Int] = offsets(of: edkm_layer_stats.self, [\.iterations, \.forwards, \.distinct_values, \.algorithm,
                                      \.reserved, \.inertia, \.effective_tau, \.attention_entropy])
}

/// The caller's struct_size, checked against T's field boundaries.
private func checkedSize<T: SizedStruct>(_ pointer: UnsafeRawPointer, _ type: T.Type, name: String) throws(EDKMError) -> Int {
    let size = Int(pointer.load(as: UInt32.self))
    guard size == MemoryLayout<T>.size || T.fieldOffsets.contains(size) else {
        let known = T.fieldOffsets.map(String.init).joined(separator: ", ")
        throw EDKMError(.structSize, "\(name).struct_size is \(size); this library knows \(known) and \(MemoryLayout<T>.size) (did you call the *_init function?)")
    }
    return size
}

/// Reads a caller's sized struct: the fields its struct_size covers, over `defaults`.
func readSized<T: SizedStruct>(_ pointer: UnsafePointer<T>, defaults: T, name: String) throws(EDKMError) -> T {
    let size = try checkedSize(UnsafeRawPointer(pointer), T.self, name: name)
    var value = defaults
    withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: UnsafeRawBufferPointer(start: pointer, count: size)) }
    return value
}

/// Writes `value` into a caller's sized struct: only the fields its struct_size covers.
func writeSized<T: SizedStruct>(_ value: T, to pointer: UnsafeMutablePointer<T>, name: String) throws(EDKMError) {
    let size = try checkedSize(UnsafeRawPointer(pointer), T.self, name: name)
    var v = value
    withUnsafeBytes(of: &v) { src in
        UnsafeMutableRawPointer(pointer).advanced(by: 4).copyMemory(from: src.baseAddress! + 4, byteCount: size - 4)
    }
}
