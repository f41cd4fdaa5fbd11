import CEDKM

/// Owns one edkm_runtime (include/edkm.h): the worker threads, the offload arena and the saved-state
/// policy that its layers share. Destroyed when the last reference goes (after its layers and saved
/// states, which hold a reference to it).
public final class EDKMRuntime {
    public let handle: OpaquePointer

    /// edkm_runtime_config_init's defaults with the given fields set: `savedMode` (EDKM_SAVED_*),
    /// `threads` (0 = the cores available), `budgetBytes` (0 = no budget), `keepWeights`, and an
    /// optional `communicator` (which must outlive the runtime).
    public static func config(savedMode: edkm_saved_mode = EDKM_SAVED_HISTOGRAM, threads: UInt32 = 0, budgetBytes: UInt64 = 0,
                              keepWeights: Bool = false,
                              communicator: UnsafePointer<edkm_communicator>? = nil) -> edkm_runtime_config {
        var cfg = edkm_runtime_config()
        edkm_runtime_config_init(&cfg)
        cfg.saved_mode = Int32(savedMode.rawValue)
        cfg.num_threads = threads
        cfg.budget_bytes = budgetBytes
        cfg.keep_weights = keepWeights ? 1 : 0
        cfg.communicator = communicator
        return cfg
    }

    public init(config: edkm_runtime_config) throws {
        var cfg = config
        var h: OpaquePointer? = nil
        try edkmCheck(edkm_runtime_create(&cfg, &h), "edkm_runtime_create")
        handle = h!
    }

    /// A runtime of `config(savedMode:threads:budgetBytes:keepWeights:communicator:)`.
    public convenience init(savedMode: edkm_saved_mode = EDKM_SAVED_HISTOGRAM, threads: UInt32 = 0, budgetBytes: UInt64 = 0,
                            keepWeights: Bool = false, communicator: UnsafePointer<edkm_communicator>? = nil) throws {
        try self.init(config: Self.config(savedMode: savedMode, threads: threads, budgetBytes: budgetBytes,
                                          keepWeights: keepWeights, communicator: communicator))
    }

    deinit { edkm_runtime_destroy(handle) }

    /// edkm_runtime_get_stats (bytes of the arena and of the saved states, counters).
    public func stats() throws -> edkm_runtime_stats {
        var s = edkm_runtime_stats()
        s.struct_size = UInt32(MemoryLayout<edkm_runtime_stats>.size)
        try edkmCheck(edkm_runtime_get_stats(handle, &s), "edkm_runtime_get_stats")
        return s
    }

    /// edkm_runtime_reset_peak: the peaks start again from the bytes held now.
    public func resetPeak() throws { try edkmCheck(edkm_runtime_reset_peak(handle), "edkm_runtime_reset_peak") }
}
