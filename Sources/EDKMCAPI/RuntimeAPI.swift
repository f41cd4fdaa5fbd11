import CEDKM
import EDKMSwift

/// Adapts a caller's edkm_communicator (C callbacks) to the core's Communicator.
final class CCommunicator: Communicator {
    let c: edkm_communicator
    init(_ c: edkm_communicator) { self.c = c }
    var rank: Int { Int(c.rank) }
    var worldSize: Int { Int(c.world_size) }

    func allGather(_ send: UnsafeRawBufferPointer, into receive: UnsafeMutableRawBufferPointer) throws(EDKMError) {
        let rc = c.all_gather!(c.user_data, send.baseAddress, receive.baseAddress, send.count)
        guard rc == 0 else { throw EDKMError(.communicator, "the communicator's all_gather callback returned \(rc)") }
    }

    func allReduceSum(_ data: UnsafeMutableBufferPointer<Double>) throws(EDKMError) {
        let rc = c.all_reduce_sum!(c.user_data, data.baseAddress, data.count)
        guard rc == 0 else { throw EDKMError(.communicator, "the communicator's all_reduce_sum callback returned \(rc)") }
    }
}

func defaultRuntimeConfig() -> edkm_runtime_config {
    edkm_runtime_config(struct_size: UInt32(MemoryLayout<edkm_runtime_config>.size), num_threads: 0, budget_bytes: 0,
                        saved_mode: Int32(EDKM_SAVED_HISTOGRAM.rawValue), keep_weights: 0, communicator: nil)
}

@c @implementation
public func edkm_runtime_config_init(_ cfg: UnsafeMutablePointer<edkm_runtime_config>!) {
    cfg?.pointee = defaultRuntimeConfig()
}

@c @implementation
public func edkm_runtime_create(_ cfg: UnsafePointer<edkm_runtime_config>!,
                                _ out: UnsafeMutablePointer<OpaquePointer?>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let out = try require(out, "out")
        let config = try cfg.map { (p) throws(EDKMError) in try readSized(p, defaults: defaultRuntimeConfig(), name: "edkm_runtime_config") }
            ?? defaultRuntimeConfig()
        guard config.num_threads <= 1024 else {
            throw EDKMError(.invalidArgument, "num_threads must be at most 1024, got \(config.num_threads)")
        }
        guard let mode = SavedMode(rawValue: config.saved_mode) else {
            throw EDKMError(.invalidArgument, "saved_mode \(config.saved_mode) is not an edkm_saved_mode (0...5)")
        }
        guard config.keep_weights <= 1 else { throw EDKMError(.invalidArgument, "keep_weights must be 0 or 1") }
        var communicator: Communicator? = nil
        if let cp = config.communicator {
            let c = try readSized(cp, defaults: edkm_communicator(), name: "edkm_communicator")
            guard c.world_size >= 1 && c.rank >= 0 && c.rank < c.world_size else {
                throw EDKMError(.invalidArgument, "communicator rank \(c.rank) / world_size \(c.world_size) is invalid")
            }
            guard c.reserved == 0 else {
                throw EDKMError(.invalidArgument, "edkm_communicator.reserved must be 0, got \(c.reserved)")
            }
            guard c.all_gather != nil && c.all_reduce_sum != nil else {
                throw EDKMError(.nullPointer, "communicator callbacks all_gather and all_reduce_sum must be set")
            }
            communicator = CCommunicator(c)
        }
        var options = Runtime.Options()
        options.threads = Int(config.num_threads)
        options.budget = config.budget_bytes
        options.savedMode = mode
        options.keepWeights = config.keep_weights == 1
        let runtime = try Runtime(options: options, communicator: communicator)
        out.pointee = HandleRegistry.register(runtime, .runtime)
    }
}

@c @implementation
public func edkm_runtime_destroy(_ runtime: OpaquePointer!) {
    HandleRegistry.release(runtime, .runtime)
}

@c @implementation
public func edkm_runtime_set_budget(_ runtime: OpaquePointer!, _ budget_bytes: UInt64) -> edkm_status {
    guarded { () throws(EDKMError) in
        try HandleRegistry.object(runtime, .runtime, as: Runtime.self, name: "runtime").arena.budget = budget_bytes
    }
}

@c @implementation
public func edkm_runtime_get_stats(_ runtime: OpaquePointer!, _ out: UnsafeMutablePointer<edkm_runtime_stats>!) -> edkm_status {
    guarded { () throws(EDKMError) in
        let rt = try HandleRegistry.object(runtime, .runtime, as: Runtime.self, name: "runtime")
        let out = try require(out, "out")
        let s = rt.statistics()
        let value = edkm_runtime_stats(
            struct_size: UInt32(MemoryLayout<edkm_runtime_stats>.size), num_threads: UInt32(s.threads),
            arena_allocated: s.arena.allocated, arena_peak: s.arena.peak, arena_active: s.arena.active,
            heap_saved: s.store.heapBytes, heap_saved_peak: s.store.heapPeak, live_saved_states: s.liveSavedStates,
            dedup_hits: s.store.dedupHits, dedup_misses: s.store.dedupMisses, budget_bytes: s.budget,
            communicator_bytes: s.communicatorBytes)
        try writeSized(value, to: out, name: "edkm_runtime_stats")
    }
}

@c @implementation
public func edkm_runtime_reset_peak(_ runtime: OpaquePointer!) -> edkm_status {
    guarded { () throws(EDKMError) in
        try HandleRegistry.object(runtime, .runtime, as: Runtime.self, name: "runtime").resetPeak()
    }
}
