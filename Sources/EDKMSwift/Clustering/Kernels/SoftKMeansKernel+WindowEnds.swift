import EDKMSupport
import Glibc

/// The window ends of a block's groups of four rows, kept by one windowed pass for a later pass on
/// the same rows with the same centroids (docs/windowed-dkm.md, "Keeping the window ends").
///
/// Group g (rows 4g ..< 4g + 4 of the block) takes 2 bytes at pointer[2g]: its window is the sorted
/// positions lo ..< hi with lo = pointer[2g], hi = pointer[2g + 1] + 1, then centroid 0 if it sits
/// outside them; (1, 0) stands for the window {0} alone. k <= 256, so both fit a byte. A window is
/// a function of its ends and of the block's centroid order only, so a pass that replays the ends
/// visits exactly the centroids that choosing would: bit-identical results. Both builds (the Swift
/// passes and `Sources/EDKMSupport/window_kernels.c`) read and write the same encoding.
struct WindowEnds {
    enum Mode {
        /// The pass chooses each group's window and writes its ends.
        case record
        /// The pass reads each group's ends instead of choosing (recorded on the same rows, with
        /// the same centroids and parameters).
        case replay
    }

    /// 2 bytes per group of four rows, owned by the caller (`WindowEndsBuffer`).
    let pointer: UnsafeMutablePointer<UInt8>
    let mode: Mode

    init(_ pointer: UnsafeMutablePointer<UInt8>, _ mode: Mode) {
        self.pointer = pointer
        self.mode = mode
    }

    /// The C passes' `ends_mode`.
    var cMode: Int32 { mode == .record ? EDKM_WINDOW_ENDS_RECORD : EDKM_WINDOW_ENDS_REPLAY }

    /// Writes group g's ends: the window's run of sorted positions lo ..< hi (the cursor's; lo < 0
    /// or an empty run: the window {0} alone).
    @inline(__always)
    func record(group g: Int, lo: Int, hi: Int) {
        let run = lo >= 0 && hi > lo
        pointer[2 * g] = UInt8(truncatingIfNeeded: run ? lo : 1)
        pointer[2 * g + 1] = UInt8(truncatingIfNeeded: run ? hi - 1 : 0)
    }

    /// Group g's run of sorted positions (lo, hi).
    @inline(__always)
    func run(group g: Int) -> (Int, Int) { (Int(pointer[2 * g]), Int(pointer[2 * g + 1]) + 1) }
}

/// The window ends of every partition's rows for one layer call (2 bytes per group of four rows,
/// about U / 2 bytes for U distinct values), on the heap for the call's duration: the forward's
/// iterations record them and its output replays the last iteration's; the backward's last-output
/// pass records them and its first reverse iteration (the same centroids c^{T-1}) replays them.
/// Not part of any saved state: the backward of a later call chooses its windows again.
final class WindowEndsBuffer: @unchecked Sendable {
    private let storage: UnsafeMutablePointer<UInt8>
    /// offsets[p]: partition p's first group; partition p has rows / 4 groups.
    private let offsets: [Int]

    /// nil when the passes do not use windows (d > 1, windows off) or the allocation fails (the
    /// passes then choose their windows again: same results).
    init?(_ rows: [any RowBlocks], config: ClusteringConfig, windowed: Bool) {
        guard windowed && config.clusterDim == 1 && config.k <= 256 else { return nil }
        var offsets = [0]
        offsets.reserveCapacity(rows.count + 1)
        for r in rows { offsets.append(offsets[offsets.count - 1] + r.rowCount / 4) }
        guard let storage = malloc(Swift.max(1, 2 * offsets[rows.count])) else { return nil }
        self.storage = storage.assumingMemoryBound(to: UInt8.self)
        self.offsets = offsets
    }

    deinit { free(storage) }

    /// The ends of partition p's rows from `start` (a multiple of 4) in the given mode.
    func ends(partition p: Int, start: Int, _ mode: WindowEnds.Mode) -> WindowEnds {
        WindowEnds(storage + 2 * (offsets[p] + start / 4), mode)
    }
}

extension SoftKMeansKernel {
    /// `window4` for the group of rows 4g ..< 4g + 4 of the block, with `windowEnds`: chosen and
    /// recorded, or replayed; without, chosen.
    @inline(__always)
    func window4(_ u: V4, _ order: CentroidOrder, _ c0: Double, _ window: UnsafeMutablePointer<Int>,
                 _ cursor: inout WindowCursor, group g: Int) -> Int {
        guard let ends = windowEnds else { return window4(u, order, c0, window, &cursor) }
        if ends.mode == .replay {
            let (lo, hi) = ends.run(group: g)
            return windowRun(lo, hi, order, window, &cursor)
        }
        let w = window4(u, order, c0, window, &cursor)
        ends.record(group: g, lo: cursor.lo, hi: cursor.hi)
        return w
    }
}
