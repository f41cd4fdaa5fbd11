import EDKMClient
import Foundation

/// What the demo records for its pictures: the float32 training loss per step and, per bit width,
/// the eDKM fine-tuning loss per step, each layer's reconstruction error over the steps, and the
/// first layer's centroids before and after fine-tuning.
struct DemoRecord {
    /// Reconstruction errors are measured every this many fine-tuning steps (an export and an
    /// unpack per layer; cheap at the demo's size, but not free).
    static let errorEvery = 5

    struct FineTune {
        let bits: Int
        /// W1's centroids from post-training k-means (the fine-tuning's start).
        let initialCentroids: [Float]
        var loss: [Double] = []
        /// Per layer: (step, ||hard(w) - w|| / ||w||) with the layer's centroids at that step.
        var error: [[(step: Int, value: Double)]] = []
        var finalCentroids: [Float] = []
        var finalWeights: [Float] = []
        /// W1's mean attention entropy (nats) at the last forward.
        var entropy = 0.0

        init(bits: Int, initialCentroids: [Float]) {
            self.bits = bits
            self.initialCentroids = initialCentroids
        }

        /// Appends every layer's relative reconstruction error of its hard palettization.
        mutating func recordErrors(step: Int, layers: [EDKMLayer], weights: [[Float]]) throws {
            if error.isEmpty { error = Array(repeating: [], count: layers.count) }
            for i in layers.indices {
                let hard = try hardPalettize(layers[i], weights[i]).weights
                var d2 = 0.0, n2 = 0.0
                for j in hard.indices {
                    let w = Double(weights[i][j])
                    d2 += (Double(hard[j]) - w) * (Double(hard[j]) - w)
                    n2 += w * w
                }
                error[i].append((step, n2 > 0 ? (d2 / n2).squareRoot() : 0))
            }
        }
    }

    let layerNames: [String]
    var floatLoss: [Double] = []
    var fineTunes: [FineTune] = []
}

/// The demo's pictures, drawn with the CLI's own chart code (no plotting library needed).
struct DemoPlots {
    let record: DemoRecord
    let floatSteps: Int

    /// Creates the directory (and parents) if needed; fails before any training if it cannot.
    static func prepare(directory: String) throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) {
            guard isDir.boolValue else { throw CLIError("--plots \(directory) exists and is not a directory") }
        } else {
            do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
                throw CLIError("--plots: cannot create \(directory): \(error.localizedDescription)")
            }
        }
        guard access(directory, W_OK) == 0 else { throw CLIError("--plots: \(directory) is not writable") }
    }

    /// Writes every picture; returns the paths written.
    func write(to directory: String) throws -> [String] {
        var files: [(String, [UInt8])] = [("training-loss.png", lossChart().png())]
        if !record.fineTunes.isEmpty && record.fineTunes.contains(where: { !$0.error.isEmpty }) {
            files.append(("reconstruction-error.png", errorChart().png()))
        }
        for run in record.fineTunes where !run.finalWeights.isEmpty {
            files.append(("histogram-\(record.layerNames[0])-\(run.bits)bit.png", histogramChart(run).png()))
        }
        var written: [String] = []
        for (name, bytes) in files {
            let path = directory + "/" + name
            guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
                throw CLIError("--plots: cannot write \(path)")
            }
            written.append(path)
        }
        return written
    }

    /// Mean of each window of `width` values, at the window's middle step (+ offset).
    private func windowMeans(_ v: [Double], width: Int, offset: Int) -> [(x: Double, y: Double)] {
        stride(from: 0, to: v.count, by: width).map { s in
            let w = v[s..<min(s + width, v.count)]
            return (Double(offset + s) + Double(w.count) / 2, w.reduce(0, +) / Double(w.count))
        }
    }

    func lossChart() -> Chart {
        var c = Chart(title: "training loss (mean per 25 steps)", xLabel: "step", yLabel: "cross-entropy", logY: true)
        c.series.append(.init(name: "float32", points: windowMeans(record.floatLoss, width: 25, offset: 0), colour: Colour.palette[0]))
        for (i, run) in record.fineTunes.enumerated() {
            c.series.append(.init(name: "eDKM \(run.bits)-bit (soft weights)", points: windowMeans(run.loss, width: 25, offset: floatSteps),
                                  colour: Colour.palette[1 + i % 7]))
        }
        return c
    }

    func errorChart() -> Chart {
        var c = Chart(title: "hard palettization error during eDKM fine-tuning", xLabel: "fine-tuning step",
                      yLabel: "||hard(w) - w|| / ||w||", logY: true)
        for (i, run) in record.fineTunes.enumerated() {
            for (l, points) in run.error.enumerated() {
                c.series.append(.init(name: "\(record.layerNames[l]) \(run.bits)-bit", points: points.map { (Double($0.step), $0.value) },
                                      colour: Colour.palette[(i * run.error.count + l) % Colour.palette.count]))
            }
        }
        return c
    }

    /// W1's fine-tuned weights as a histogram, the post-training centroids dashed, the fine-tuned ones solid.
    func histogramChart(_ run: DemoRecord.FineTune, bins: Int = 120) -> Chart {
        let w = run.finalWeights.map(Double.init)
        let lo = min(w.min()!, Double(run.initialCentroids.min()!), Double(run.finalCentroids.min()!))
        let hi = max(w.max()!, Double(run.initialCentroids.max()!), Double(run.finalCentroids.max()!))
        let width = max(hi - lo, 1e-12) / Double(bins)
        var counts = [Double](repeating: 0, count: bins)
        for v in w { counts[min(Int((v - lo) / width), bins - 1)] += 1 }
        var c = Chart(title: "\(record.layerNames[0]) after eDKM \(run.bits)-bit fine-tuning (attention entropy \(String(format: "%.3f", run.entropy)) nats)",
                      xLabel: "weight value", yLabel: "weights per bin")
        c.bars = ((0...bins).map { lo + Double($0) * width }, counts)
        c.markers = run.initialCentroids.map { .init(x: Double($0), colour: Colour(hex: 0x636363), dashed: true) }
            + run.finalCentroids.map { .init(x: Double($0), colour: Colour.palette[1], dashed: false) }
        c.markerLegend = [("post-training centroids", Colour(hex: 0x636363), true), ("fine-tuned centroids", Colour.palette[1], false)]
        return c
    }
}
