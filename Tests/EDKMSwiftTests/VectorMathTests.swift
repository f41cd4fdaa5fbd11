@testable import EDKMSwift
import EDKMNumerics
import EDKMSupport
import Glibc
import Testing

/// The kernels' exps against an extended-precision reference (x87 80-bit expl, 64-bit mantissa,
/// where Float80 exists; glibc's double exp, < 1 ulp, elsewhere), relative error in units of
/// 2^-52, over the whole range the softmax feeds them, x in [-708, 0] (x = (min D - D_j) / tau
/// <= 0; below -708 both return 0), dense near 0 where the softmax terms that matter lie, and at
/// the reduction's boundaries (x near multiples of ln2/64 and ln2/128).
@Suite struct VectorMathTests {
    static func reference(_ x: Double) -> Double {
        #if arch(x86_64) || arch(i386)
        return Double(expl(Float80(x)))
        #else
        return Glibc.exp(x)
        #endif
    }

    static func relativeError(_ got: Double, _ x: Double) -> Double {
        #if arch(x86_64) || arch(i386)
        let want = expl(Float80(x))
        return Double(abs(Float80(got) - want) / want) / 0x1p-52
        #else
        let want = Glibc.exp(x)
        return abs(got - want) / want / 0x1p-52
        #endif
    }

    static func inputs() -> [Double] {
        var rng = SplitMix64(seed: 12)
        var xs: [Double] = [0, -0.0, -708, -707.999, -1e-300, -0x1p-60, -50]
        for _ in 0..<100_000 { xs.append(-708 * rng.nextUnit()) }
        for _ in 0..<100_000 { xs.append(-60 * rng.nextUnit()) }
        let step = log(2.0) / 128
        for i in 0..<20_000 {
            let x = -Double(i) * step * 7
            xs += [x, x.nextUp, x.nextDown]
        }
        while xs.count % 4 != 0 { xs.append(-1) }
        return xs.filter { $0 >= -708 && $0 <= 0 }
    }

    static func maxError(_ exp4: (SIMD4<Double>) -> SIMD4<Double>) -> Double {
        var xs = inputs()
        while xs.count % 4 != 0 { xs.append(-1) }
        var worst = 0.0
        for i in stride(from: 0, to: xs.count, by: 4) {
            let e = exp4(SIMD4(xs[i], xs[i + 1], xs[i + 2], xs[i + 3]))
            for l in 0..<4 { worst = max(worst, relativeError(e[l], xs[i + l])) }
        }
        return worst
    }

    /// The windowed passes' exp: degree-5 polynomial on |r| <= ln2/128 times a 64-entry table.
    /// Bound 3 (2^-52 units, 6.7e-16 relative): truncation 3.5e-17, the table entry's rounding
    /// 1/4, the Horner chain's last steps about 1/2 each, the scaling product 1/2. Measured: 1.45 (`exp`: 0.80).
    @Test func windowExpAccuracy() {
        let table = edkm_window_exp_table()!
        let worst = Self.maxError { VectorMath.windowExp($0, table: table) }
        print("VectorMathTests: windowExp max relative error \(worst) x 2^-52")
        #expect(worst <= 3, "windowExp: max relative error \(worst) x 2^-52")
        #expect(worst > 0)  // the reference differs somewhere: it is a different computation
    }

    /// The full passes' exp (degree-13 Taylor on |r| <= ln2/2): the same bound.
    @Test func expAccuracy() {
        let worst = Self.maxError { VectorMath.exp($0) }
        print("VectorMathTests: exp max relative error \(worst) x 2^-52")
        #expect(worst <= 3, "exp: max relative error \(worst) x 2^-52")
    }

    /// The table: 2^(j/64) correctly rounded (the extended-precision value rounded once).
    @Test func windowExpTable() {
        let table = edkm_window_exp_table()!
        for j in 0..<64 {
            #if arch(x86_64) || arch(i386)
            let want = Double(exp2l(Float80(j) / 64))
            #else
            let want = Glibc.exp2(Double(j) / 64)
            #endif
            #expect(table[j] == want, "entry \(j): \(table[j]) against \(want)")
        }
    }

    /// Below -708 and at -infinity both exps return 0; at 0 exactly 1.
    @Test func edges() {
        let table = edkm_window_exp_table()!
        let x = SIMD4<Double>(-708.5, -1e300, -.infinity, 0)
        for e in [VectorMath.windowExp(x, table: table), VectorMath.exp(x)] {
            #expect(e[0] == 0 && e[1] == 0 && e[2] == 0 && e[3] == 1)
        }
    }
}
