/// What a forward keeps for its backward: the rows of the eDKM ablation (docs/design.md, part 2 (the saved state)).
/// Raw values equal the C ABI's `edkm_saved_mode`. `SavedStateBuilder` turns a mode and what the
/// forward ran on into one `SavedContents` case (DKM/MARSHAL/DEDUP: `denseMaps`; HISTOGRAM,
/// UNIQUIFY, SHARD: the case of that name, or `recompute` on the dense algorithm; the histogram
/// form and sharded weights have their own cases).
public enum SavedMode: Int32, Sendable, CaseIterable {
    /// Only the k-sized centroid and normaliser vectors of every iteration and the U-sized value
    /// table; the backward is handed the weights again and checks them by hash.
    case histogram = 0
    /// DKM as autograd runs it: every iteration's N x k distance and softmax maps and its copy of
    /// the weights, on the ordinary heap.
    case dkm = 1
    /// The same tensors in the offload arena.
    case marshal = 2
    /// ... with duplicate tensors referenced instead of copied.
    case dedup = 3
    /// ... with U x k tables and a 16-bit index list instead of N x k maps.
    case uniquify = 4
    /// ... with each rank keeping 1/world_size of the index list.
    case shard = 5

    /// Whether saved tensors go to the offload arena (all but the DKM baseline).
    public var usesArena: Bool { self != .dkm }
    /// Whether identical saved tensors are shared.
    public var deduplicates: Bool { rawValue >= SavedMode.dedup.rawValue || self == .histogram }
    /// Whether the forward keeps N x k maps (so it runs the dense form).
    public var keepsDenseMaps: Bool { self == .dkm || self == .marshal || self == .dedup }
}
