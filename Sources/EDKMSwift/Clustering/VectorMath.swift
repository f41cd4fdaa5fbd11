/// Vectorised elementary functions for the DKM kernels.
enum VectorMath {
    /// 1.5 x 2^52: adding it rounds |y| < 2^51 to an integer n (no SSE4.1 roundpd needed), and n then
    /// sits in the low bits of the sum's bit pattern (bits(sum) - bits(shifter) = n).
    static var shifter: Double { 0x1.8p52 }

    /// Cody-Waite reduction of x clamped to [-708, 709]: x = n / scale + r, n = round(x scale), with
    /// 1 / scale = hi + lo (hi with trailing zero bits, so that n hi is exact); returns the shifted n
    /// (t = x scale + shifter) and r = (x - n hi) - n lo.
    @inline(__always)
    static func reduce(_ x: SIMD4<Double>, scale: Double, hi: Double, lo: Double) -> (t: SIMD4<Double>, r: SIMD4<Double>) {
        // (replace(with:where:) rather than clamped(lowerBound:upperBound:), whose generic
        // pointwiseMin/Max the compiler does not inline: a call each per exp.)
        var clamped = x.replacing(with: -708, where: x .< -708)
        clamped.replace(with: 709, where: clamped .> 709)
        let t = clamped * scale + shifter
        let n = t - shifter
        return (t, (clamped - n * hi) - n * lo)
    }

    /// e^x for four doubles, x <= 0 (softmax arguments after max subtraction) or any x < 709.
    ///
    /// Cody-Waite reduction x = n ln2 + r with |r| <= ln2/2, exp(r) by its Taylor series to degree
    /// 13 (truncation error < 2e-17 relative), then scaling by 2^n through the exponent bits.
    /// Max relative error about 2 ulp against glibc's exp (tested); results below 2^-1022 flush to 0.
    @inline(__always)
    static func exp(_ x: SIMD4<Double>) -> SIMD4<Double> {
        let (t, r) = reduce(x, scale: 1.4426950408889634, hi: 6.93147180369123816490e-01, lo: 1.90821492927058770002e-10)
        // Horner form of sum_{i=0}^{13} r^i / i!
        var p = SIMD4<Double>(repeating: 1.0 / 6227020800.0)
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        let ni = unsafeBitCast(t, to: SIMD4<Int64>.self) &- Int64(bitPattern: shifter.bitPattern)
        let scale = unsafeBitCast((ni &+ 1023) &<< 52, to: SIMD4<Double>.self)
        var result = p * scale
        result.replace(with: 0, where: x .< -708)
        return result
    }

    /// e^x for four doubles in the windowed softmax (x <= 0 there; any x < 709), about a third of
    /// `exp`'s operations and the same operations as the AVX2 build's (`window_kernels.c`), so the
    /// two builds stay bit-identical.
    ///
    /// x = m ln2/64 + r with m = round(64 x / ln2) = 64 n + j (0 <= j < 64) and |r| <= ln2/128
    /// (Cody-Waite: ln2/64 in two parts, m ln2Hi/64 exact for |m| < 2^21), e^r by its Taylor series to
    /// degree 5 (truncation r^6/720 < 3.5e-17 relative), times `table[j]` = 2^(j/64) (correctly
    /// rounded) scaled by 2^n through its exponent bits (an integer add: the result stays normal down
    /// to x = -708). Max relative error 3 ulp against glibc's exp over [-708, 0] (tested); 0 below -708.
    @inline(__always)
    static func windowExp(_ x: SIMD4<Double>, table: UnsafePointer<Double>) -> SIMD4<Double> {
        let (t, r) = reduce(x, scale: 1.4426950408889634 * 64, hi: 6.93147180369123816490e-01 / 64,
                            lo: 1.90821492927058770002e-10 / 64)
        var p = SIMD4<Double>(repeating: 1.0 / 120.0)
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        let mi = unsafeBitCast(t, to: SIMD4<Int64>.self) &- Int64(bitPattern: shifter.bitPattern)
        let j = mi & 63, n = mi &>> 6  // floor(m / 64)
        let entry = SIMD4<Int64>(Int64(bitPattern: table[Int(j[0])].bitPattern), Int64(bitPattern: table[Int(j[1])].bitPattern),
                                 Int64(bitPattern: table[Int(j[2])].bitPattern), Int64(bitPattern: table[Int(j[3])].bitPattern))
        let scale = unsafeBitCast(entry &+ (n &<< 52), to: SIMD4<Double>.self)
        var result = p * scale
        result.replace(with: 0, where: x .< -708)
        return result
    }
}
