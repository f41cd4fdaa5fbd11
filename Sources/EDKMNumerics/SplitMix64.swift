#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// SplitMix64: a small, fast, seedable generator (Steele, Lea and Flood 2014). The one source of
/// seeded randomness of the core (centroid initialisation), the tools (the CLI demo, the
/// benchmarks) and the tests, so that a seed means the same stream everywhere.
public struct SplitMix64 {
    public var state: UInt64

    @inlinable public init(seed: UInt64) { state = seed }

    /// The next 64 random bits.
    @inlinable public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 53 bits times 2^-53.
    @inlinable public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// Uniform in (0, 1]: (top 53 bits + 1) times 2^-53 (never 0, so log() of it is finite).
    @inlinable public mutating func nextUnitNonzero() -> Double { (Double(next() >> 11) + 1) * 0x1.0p-53 }

    /// Uniform in 0..<n (n > 0): floor(nextUnit() * n).
    @inlinable public mutating func below(_ n: Int) -> Int { Int(nextUnit() * Double(n)) }

    /// A standard normal sample (Box-Muller, cosine branch): sqrt(-2 ln u1) cos(2 pi u2) with u1, u2
    /// from nextUnit() (u1 clamped to 1e-300 so that the logarithm is finite).
    public mutating func normal() -> Double {
        let u1 = max(nextUnit(), 1e-300), u2 = nextUnit()
        return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }

    /// Two independent standard normals from one Box-Muller draw: r cos(a), r sin(a) with
    /// r = sqrt(-2 ln u1), a = 2 pi u2, u1 and u2 from nextUnitNonzero().
    public mutating func normalPair() -> (Double, Double) {
        let r = (-2 * log(nextUnitNonzero())).squareRoot(), a = 2 * Double.pi * nextUnitNonzero()
        return (r * cos(a), r * sin(a))
    }

    /// `n` normal samples with standard deviation `std`, as Float.
    public mutating func normals(_ n: Int, std: Double) -> [Float] { (0..<n).map { _ in Float(normal() * std) } }

    /// Fisher-Yates shuffle of `a` (swaps a[i] with a[below(i + 1)], i from the end down to 1).
    public mutating func shuffle<T>(_ a: inout [T]) {
        guard a.count > 1 else { return }
        for i in stride(from: a.count - 1, to: 0, by: -1) { a.swapAt(i, below(i + 1)) }
    }
}
