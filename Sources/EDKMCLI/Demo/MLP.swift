import EDKMNumerics
import Foundation

/// A 2-layer perceptron dim -> hidden -> classes (ReLU, softmax cross-entropy) with all
/// parameters in one flat array: W1 (hidden x dim), b1, W2 (classes x hidden), b2.
struct MLP {
    let dim: Int, hidden: Int, classes: Int
    var params: [Float]

    var w1Offset: Int { 0 }
    var w1Count: Int { hidden * dim }
    var b1Offset: Int { w1Count }
    var w2Offset: Int { b1Offset + hidden }
    var w2Count: Int { classes * hidden }
    var b2Offset: Int { w2Offset + w2Count }
    var count: Int { b2Offset + classes }

    /// He-initialised weights, zero biases.
    init(dim: Int, hidden: Int, classes: Int, seed: UInt64) {
        self.dim = dim
        self.hidden = hidden
        self.classes = classes
        params = []
        params = [Float](repeating: 0, count: count)
        var rng = SplitMix64(seed: seed)
        for i in 0..<w1Count { params[w1Offset + i] = Float(rng.normal() * (2.0 / Double(dim)).squareRoot()) }
        for i in 0..<w2Count { params[w2Offset + i] = Float(rng.normal() * (2.0 / Double(hidden)).squareRoot()) }
    }

    /// Mean cross-entropy over `indices` of `data` (all samples when nil) with weight matrices
    /// `w1`, `w2` (the float ones, the soft-clustered w~ or the palettized ones) and this model's
    /// biases. With `grad` (count floats, accumulated into) it also backpropagates: the W
    /// entries receive dL/d(the weights used). Returns the loss and the number of correct argmaxes.
    func evaluate(w1: UnsafePointer<Float>, w2: UnsafePointer<Float>, data: SyntheticData.Split, indices: ArraySlice<Int>?,
                  grad: UnsafeMutablePointer<Float>?) -> (loss: Double, hits: Int) {
        let n = indices?.count ?? data.count
        var loss = 0.0
        var hits = 0
        var h = [Float](repeating: 0, count: hidden)
        var z = [Float](repeating: 0, count: classes)
        var dz = [Float](repeating: 0, count: classes)
        var dh = [Float](repeating: 0, count: hidden)
        params.withUnsafeBufferPointer { p in
            data.x.withUnsafeBufferPointer { xs in
                let b1 = p.baseAddress! + b1Offset, b2 = p.baseAddress! + b2Offset
                for s in 0..<n {
                    let ex = indices.map { $0[$0.startIndex + s] } ?? s
                    let x = xs.baseAddress! + ex * dim
                    let label = data.y[ex]
                    for i in 0..<hidden {
                        let row = w1 + i * dim
                        var a = b1[i]
                        for j in 0..<dim { a += row[j] * x[j] }
                        h[i] = max(a, 0)
                    }
                    var arg = 0
                    for i in 0..<classes {
                        let row = w2 + i * hidden
                        var a = b2[i]
                        for j in 0..<hidden { a += row[j] * h[j] }
                        z[i] = a
                        if a > z[arg] { arg = i }
                    }
                    if arg == label { hits += 1 }
                    let zmax = z[arg]
                    var zsum = 0.0
                    for i in 0..<classes { zsum += exp(Double(z[i] - zmax)) }
                    loss += log(zsum) - Double(z[label] - zmax)
                    guard let g = grad else { continue }
                    for i in 0..<classes {
                        dz[i] = Float((exp(Double(z[i] - zmax)) / zsum - (i == label ? 1 : 0)) / Double(n))
                    }
                    for j in 0..<hidden { dh[j] = 0 }
                    for i in 0..<classes {
                        let gw = g + w2Offset + i * hidden
                        let row = w2 + i * hidden
                        for j in 0..<hidden {
                            gw[j] += dz[i] * h[j]
                            dh[j] += dz[i] * row[j]
                        }
                        g[b2Offset + i] += dz[i]
                    }
                    for i in 0..<hidden where h[i] > 0 {
                        let gw = g + w1Offset + i * dim
                        for j in 0..<dim { gw[j] += dh[i] * x[j] }
                        g[b1Offset + i] += dh[i]
                    }
                }
            }
        }
        return (loss / Double(max(n, 1)), hits)
    }

    /// Test accuracy with the given weight matrices.
    func accuracy(w1: [Float], w2: [Float], on data: SyntheticData.Split) -> Double {
        let hits = w1.withUnsafeBufferPointer { a in
            w2.withUnsafeBufferPointer { b in
                evaluate(w1: a.baseAddress!, w2: b.baseAddress!, data: data, indices: nil, grad: nil).hits
            }
        }
        return Double(hits) / Double(data.count)
    }

    var w1: [Float] { Array(params[w1Offset..<(w1Offset + w1Count)]) }
    var w2: [Float] { Array(params[w2Offset..<(w2Offset + w2Count)]) }
}

/// Adam with bias correction.
struct Adam {
    private var m: [Float], v: [Float]
    private var t = 0
    let beta1 = 0.9, beta2 = 0.999, eps = 1e-8

    init(count: Int) {
        m = [Float](repeating: 0, count: count)
        v = m
    }

    mutating func step(_ p: inout [Float], _ g: [Float], lr: Double) {
        t += 1
        let c1 = 1 - pow(beta1, Double(t)), c2 = 1 - pow(beta2, Double(t))
        for i in 0..<p.count {
            m[i] = Float(beta1 * Double(m[i]) + (1 - beta1) * Double(g[i]))
            v[i] = Float(beta2 * Double(v[i]) + (1 - beta2) * Double(g[i]) * Double(g[i]))
            p[i] -= Float(lr * (Double(m[i]) / c1) / ((Double(v[i]) / c2).squareRoot() + eps))
        }
    }
}

/// Cosine decay from `base` to 0 over `total` steps.
func cosineLR(_ base: Double, step: Int, total: Int) -> Double {
    0.5 * base * (1 + cos(Double.pi * Double(step) / Double(max(total, 1))))
}
