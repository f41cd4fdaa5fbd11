@testable import EDKMSwift
import EDKMNumerics
import Testing

/// The blocked scan for the first non-finite weight against a plain loop: every dtype, Inf and
/// NaN patterns of either sign at block boundaries, inside blocks, several per block, none.
@Suite struct NonFiniteScanTests {
    @Test(arguments: [ElementType.f16, .bf16, .f32])
    func firstNonFiniteEqualsPlainLoop(type: ElementType) {
        let bad: [UInt32] = switch type {
        case .f16: [0x7c00, 0xfc00, 0x7e00, 0xffff]
        case .bf16: [0x7f80, 0xff80, 0x7fc0, 0xffff]
        case .f32: [0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0xffff_ffff]
        }
        let mask: UInt32 = type == .f32 ? 0x7f80_0000 : (type == .f16 ? 0x7c00 : 0x7f80)
        var rng = SplitMix64(seed: 3)
        let count = 3 * 4096 + 123
        for positions in [[], [0], [4095], [4096], [count - 1], [5000, 4097], [8191, 12000], [rng.below(count)]] {
            var words = (0..<count).map { _ in UInt32(truncatingIfNeeded: rng.next()) & ~mask | (mask & 0x3000_3000) }
            for (n, at) in positions.enumerated() { words[at] = bad[n % bad.count] }
            let expected = words.firstIndex { $0 & mask == mask }
            let got: Int? = type == .f32
                ? words.withUnsafeBytes { ElementIO.firstNonFinite($0.baseAddress!, type: type, count: count) }
                : words.map { UInt16(truncatingIfNeeded: $0) }.withUnsafeBytes {
                    ElementIO.firstNonFinite($0.baseAddress!, type: type, count: count)
                }
            #expect(got == expected, "\(type) \(positions)")
        }
    }
}
