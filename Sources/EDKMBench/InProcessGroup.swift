import CEDKM
import Glibc

/// A communicator for `world` ranks that are threads of this process (the sharded saved state of
/// the ablation, world size 8 simulated in-process). Collectives meet at a barrier: each rank
/// publishes its buffer, every rank reads all of them, and a second barrier keeps the buffers alive
/// until everyone has read. Every rank must make the same sequence of collective calls (as MPI).
final class InProcessGroup {
    let world: Int
    private let barrier: Barrier
    private let slots: UnsafeMutablePointer<UnsafeRawPointer?>

    init(world: Int) {
        self.world = world
        barrier = Barrier(world)
        slots = .allocate(capacity: world)
        slots.initialize(repeating: nil, count: world)
    }

    deinit { slots.deallocate() }

    func allGather(rank: Int, send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, bytes: Int) {
        slots[rank] = send
        barrier.wait()
        if bytes > 0 { for r in 0..<world { memcpy(recv + r * bytes, slots[r]!, bytes) } }
        barrier.wait()
    }

    func allReduceSum(rank: Int, data: UnsafeMutablePointer<Double>, count: Int) {
        slots[rank] = UnsafeRawPointer(data)
        barrier.wait()
        var sum = [Double](repeating: 0, count: count)
        for r in 0..<world where count > 0 {  // rank order: every rank gets bit-identical sums
            let p = slots[r]!.assumingMemoryBound(to: Double.self)
            for i in 0..<count { sum[i] += p[i] }
        }
        barrier.wait()
        if count > 0 { sum.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) } }
    }

    /// Waits for every rank (outside a collective).
    func sync() { barrier.wait() }

    /// One rank's view: the edkm_communicator to put in that rank's runtime config. Keep the
    /// returned object alive as long as the runtime (it is the callbacks' user_data).
    final class Member {
        let group: InProcessGroup
        let rank: Int
        var communicator = edkm_communicator()

        init(_ group: InProcessGroup, rank: Int) {
            self.group = group
            self.rank = rank
            communicator.struct_size = UInt32(MemoryLayout<edkm_communicator>.size)
            communicator.rank = Int32(rank)
            communicator.world_size = Int32(group.world)
            communicator.user_data = Unmanaged.passUnretained(self).toOpaque()
            communicator.all_gather = { user, send, recv, bytes in
                let m = Unmanaged<Member>.fromOpaque(user!).takeUnretainedValue()
                m.group.allGather(rank: m.rank, send: send!, recv: recv!, bytes: bytes)
                return 0
            }
            communicator.all_reduce_sum = { user, data, count in
                let m = Unmanaged<Member>.fromOpaque(user!).takeUnretainedValue()
                m.group.allReduceSum(rank: m.rank, data: data!, count: count)
                return 0
            }
        }
    }
}
