import EDKMNumerics
import Foundation

/// A generated classification problem: `classes` classes, each a mixture of `modes` Gaussian
/// blobs in `dim` dimensions, then warped by x_j += warp * sin(2 (R x)_j) with a fixed random R,
/// so that a linear classifier falls clearly short and the MLP's hidden layer matters.
/// Features are standardised with the training set's mean and deviation.
struct SyntheticData {
    struct Split {
        var x: [Float]  // n x dim
        var y: [Int]
        var count: Int { y.count }
    }

    static let dim = 32, classes = 10, modes = 4
    static let noise = 1.1, warp = 1.2

    let train: Split
    let test: Split

    init(seed: UInt64, trainCount: Int = 8000, testCount: Int = 2000) {
        let dim = Self.dim
        var rng = SplitMix64(seed: seed)
        let means = (0..<(Self.classes * Self.modes * dim)).map { _ in rng.normal() }
        let r = (0..<(dim * dim)).map { _ in rng.normal() / Double(dim).squareRoot() }
        func sample(_ n: Int) -> Split {
            var s = Split(x: [Float](repeating: 0, count: n * dim), y: [Int](repeating: 0, count: n))
            var z = [Double](repeating: 0, count: dim)
            for i in 0..<n {
                let c = rng.below(Self.classes), m = rng.below(Self.modes)
                let base = (c * Self.modes + m) * dim
                for j in 0..<dim { z[j] = means[base + j] + Self.noise * rng.normal() }
                for j in 0..<dim {
                    var a = 0.0
                    for k in 0..<dim { a += r[j * dim + k] * z[k] }
                    s.x[i * dim + j] = Float(z[j] + Self.warp * sin(2 * a))
                }
                s.y[i] = c
            }
            return s
        }
        var tr = sample(trainCount)
        var te = sample(testCount)
        for j in 0..<dim {
            var mean = 0.0, sq = 0.0
            for i in 0..<tr.count { mean += Double(tr.x[i * dim + j]) }
            mean /= Double(tr.count)
            for i in 0..<tr.count { let d = Double(tr.x[i * dim + j]) - mean; sq += d * d }
            let sd = (sq / Double(tr.count)).squareRoot() + 1e-12
            for i in 0..<tr.count { tr.x[i * dim + j] = Float((Double(tr.x[i * dim + j]) - mean) / sd) }
            for i in 0..<te.count { te.x[i * dim + j] = Float((Double(te.x[i * dim + j]) - mean) / sd) }
        }
        train = tr
        test = te
    }
}
