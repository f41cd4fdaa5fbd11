import ArgumentParser
import CEDKM
import EDKMClient
import EDKMNumerics
import Foundation

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Train a small model on generated data and compress it with eDKM: accuracy, size, memory.",
        discussion: """
        Builds a 32 -> 128 -> 10 MLP, trains it in float32 on a generated 10-class problem, then \
        for 4 and 3 bits compares post-training palettization (exact 1-D k-means) with eDKM \
        fine-tuning through libedkm (every step: edkm_layer_forward gives the soft-clustered \
        weights w~ that the model uses, the model's backward gives dL/dw~, \
        edkm_saved_state_backward gives dL/dw, Adam updates w). It ends with the memory of what \
        the forwards kept for their backwards, measured for every row of the eDKM ablation from \
        the runtime's statistics, for the MLP and for one step on an LLM-sized 1024x1024 f16 layer \
        (the DKM baseline row holds ~200 MB for a moment). Deterministic (seeded), no files, no \
        downloads; a few seconds.
        """)

    @Option(help: "Seed of the data, the initialisation and the batch order.")
    var seed: UInt64 = 42

    @Option(help: "Float32 training epochs.")
    var epochs: Int = 20

    @Option(name: .customLong("ft-epochs"), help: "eDKM fine-tuning epochs per bit width.")
    var ftEpochs: Int = 4

    @Option(help: "Bit widths, comma separated.")
    var bits: String = "4,3"

    @Option(help: "libedkm worker threads (0 = the cores available).")
    var threads: Int = 0

    @Flag(help: "Plain progress lines even on a terminal.")
    var plain = false

    @Option(help: "Write pictures of the run (PNG) into this directory: training loss, reconstruction error, weight histograms with centroids.")
    var plots: String?

    @Option(name: .customLong("train-samples"), help: ArgumentHelp("Training samples (for quick test runs).", visibility: .hidden))
    var trainSamples: Int = 8000

    @Option(name: .customLong("llm-layer"), help: "Side of the square f16 layer of the last memory table (0 = skip it).")
    var llmLayer: Int = 1024

    func validate() throws {
        guard llmLayer == 0 || (llmLayer >= 16 && llmLayer <= 8192) else { throw ValidationError("--llm-layer must be 0 or 16...8192") }
        guard trainSamples >= Demo.batch && trainSamples <= 1_000_000 else { throw ValidationError("--train-samples must be 64...1000000") }
        guard epochs >= 1 && epochs <= 1000 else { throw ValidationError("--epochs must be 1...1000") }
        guard ftEpochs >= 0 && ftEpochs <= 1000 else { throw ValidationError("--ft-epochs must be 0...1000") }
        guard let list = bitList, !list.isEmpty, list.allSatisfy({ (1...8).contains($0) }) else {
            throw ValidationError("--bits must be a comma-separated list of 1...8")
        }
        guard threads >= 0 && threads <= 4096 else { throw ValidationError("--threads must be 0...4096") }
    }

    var bitList: [Int]? {
        let parts = bits.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        return parts.contains(nil) ? nil : parts.map { $0! }
    }

    func run() throws {
        try reportingErrors {
            if let plots { try DemoPlots.prepare(directory: plots) }
            var demo = Demo(seed: seed, epochs: epochs, ftEpochs: ftEpochs, bits: bitList!, threads: UInt32(threads), plain: plain,
                            trainSamples: trainSamples, llmLayer: llmLayer, plotDirectory: plots)
            try demo.run()
        }
    }
}

/// The demo itself.
struct Demo {
    let seed: UInt64
    let epochs: Int
    let ftEpochs: Int
    let bits: [Int]
    let threads: UInt32
    let plain: Bool
    let trainSamples: Int
    let llmLayer: Int
    let plotDirectory: String?

    static let hidden = 128
    static let batch = 64
    static let floatLR = 3e-3
    static let fineTuneLR = 2e-3

    struct ResultRow { let model: String; let bits: Int; let accuracy: Double; let bytes: Int }

    mutating func run() throws {
        let start = Date()
        setvbuf(stdout, nil, _IOLBF, 0)
        print("edkm demo: train-time weight clustering (eDKM) with libedkm \(edkmVersion()); data generated here (seed \(seed)), nothing downloaded")
        let data = SyntheticData(seed: seed, trainCount: trainSamples)
        let linear = linearBaselineAccuracy(data, epochs: 10, seed: seed + 1)
        var model = MLP(dim: SyntheticData.dim, hidden: Demo.hidden, classes: SyntheticData.classes, seed: seed + 2)
        let specs = [DemoLayerSpec(name: "W1", rows: model.hidden, cols: model.dim),
                     DemoLayerSpec(name: "W2", rows: model.classes, cols: model.hidden)]
        let nWeights = specs.reduce(0) { $0 + $1.count }
        print("data:  \(SyntheticData.classes) classes x \(SyntheticData.modes) Gaussian modes in \(SyntheticData.dim)-D, warped; \(Format.grouped(data.train.count)) train / \(Format.grouped(data.test.count)) test samples (a linear classifier gets \(Format.percent(linear)))")
        print("model: MLP \(model.dim) -> \(model.hidden) -> \(model.classes) (ReLU); W1 \(Format.shape(specs[0].shape)) + W2 \(Format.shape(specs[1].shape)) = \(Format.grouped(nWeights)) weights to compress; \(model.hidden + model.classes) biases stay float32")

        // 1. Float training.
        var rng = SplitMix64(seed: seed &* 31 &+ 5)
        var order = Array(0..<data.train.count)
        let steps = data.train.count / Demo.batch
        var adam = Adam(count: model.count)
        var grad = [Float](repeating: 0, count: model.count)
        var record = DemoRecord(layerNames: specs.map(\.name))
        let floatBar = Progress(label: "float32 training", total: epochs * steps, forcePlain: plain)
        var step = 0
        for e in 0..<epochs {
            rng.shuffle(&order)
            var loss = 0.0
            for b in 0..<steps {
                for i in 0..<grad.count { grad[i] = 0 }
                let m = model
                let r = m.params.withUnsafeBufferPointer { p in
                    grad.withUnsafeMutableBufferPointer { g in
                        m.evaluate(w1: p.baseAddress! + m.w1Offset, w2: p.baseAddress! + m.w2Offset, data: data.train,
                                   indices: order[(b * Demo.batch)..<((b + 1) * Demo.batch)], grad: g.baseAddress!)
                    }
                }
                loss += r.loss
                record.floatLoss.append(r.loss)
                adam.step(&model.params, grad, lr: cosineLR(Demo.floatLR, step: step, total: epochs * steps))
                step += 1
                floatBar.update(step, "epoch \(e + 1)/\(epochs) loss \(String(format: "%.4f", loss / Double(b + 1)))")
            }
            if (e + 1) % 5 == 0 || e + 1 == epochs {
                floatBar.plain("float32 epoch \(e + 1)/\(epochs): train loss \(String(format: "%.4f", loss / Double(steps))), test accuracy \(Format.percent(model.accuracy(w1: model.w1, w2: model.w2, on: data.test)))")
            }
        }
        floatBar.finish()
        let floatAccuracy = model.accuracy(w1: model.w1, w2: model.w2, on: data.test)
        print("float32 training: \(epochs) epochs, \(Format.seconds(floatBar.elapsed)); test accuracy \(Format.percent(floatAccuracy))")

        var rows = [ResultRow(model: "float32", bits: 32, accuracy: floatAccuracy, bytes: nWeights * 4)]
        let runtime = try EDKMRuntime(savedMode: EDKM_SAVED_HISTOGRAM, threads: threads)
        var fineTunePeaks: [(bits: Int, arenaPeak: UInt64, maxStep: UInt64, algorithm: Int32, distinct: UInt64)] = []
        var ablation: [(bits: Int, bytes: [SavedStateMeasurement], formula: Int)] = []

        for b in bits {
            let floatWeights = [model.w1, model.w2]
            let configs = specs.map { $0.config(bits: b) }

            // 2. Post-training palettization: exact 1-D k-means of the float weights.
            var initial: [[Float]] = []
            var hard: [[Float]] = []
            var bytes = 0
            for i in specs.indices {
                let layer = try EDKMLayer(runtime: runtime, shape: specs[i].shape, config: configs[i])
                try floatWeights[i].withUnsafeBytes { try layer.initCentroids($0.baseAddress!, EDKM_DTYPE_F32) }
                initial.append(try layer.centroids())
                let h = try hardPalettize(layer, floatWeights[i])
                hard.append(h.weights)
                bytes += h.bytes
            }
            let ptq = model.accuracy(w1: hard[0], w2: hard[1], on: data.test)
            rows.append(ResultRow(model: "post-training palettization", bits: b, accuracy: ptq, bytes: bytes))
            print("\n\(b) bits (k = \(1 << b) centroids per matrix): post-training palettization, test accuracy \(Format.percent(ptq))")

            // 3. eDKM fine-tuning: the model trains through the soft clustering.
            var ft = model
            let layers = try specs.indices.map { i in
                let l = try EDKMLayer(runtime: runtime, shape: specs[i].shape, config: configs[i])
                try l.setCentroids(initial[i])
                return l
            }
            try runtime.resetPeak()
            var ftAdam = Adam(count: ft.count)
            var maxStep: UInt64 = 0
            var soft = specs.map { [Float](repeating: 0, count: $0.count) }
            var run = DemoRecord.FineTune(bits: b, initialCentroids: initial[0])
            let total = ftEpochs * steps
            let bar = Progress(label: "eDKM \(b)-bit fine-tuning", total: max(total, 1), forcePlain: plain)
            step = 0
            for e in 0..<ftEpochs {
                rng.shuffle(&order)
                var loss = 0.0
                for s in 0..<steps {
                    let w = [ft.w1, ft.w2]
                    var saved: [EDKMSavedState] = []
                    for i in specs.indices {
                        saved.append(try softForward(layers[i], w[i], into: &soft[i], save: true)!)
                    }
                    maxStep = max(maxStep, try saved.reduce(0) { $0 + (try $1.bytes()) })
                    for i in 0..<grad.count { grad[i] = 0 }
                    let m = ft
                    let r = soft[0].withUnsafeBufferPointer { s0 in
                        soft[1].withUnsafeBufferPointer { s1 in
                            grad.withUnsafeMutableBufferPointer { g in
                                m.evaluate(w1: s0.baseAddress!, w2: s1.baseAddress!, data: data.train,
                                           indices: order[(s * Demo.batch)..<((s + 1) * Demo.batch)], grad: g.baseAddress!)
                            }
                        }
                    }
                    loss += r.loss
                    run.loss.append(r.loss)
                    // grad holds dL/dw~ for W1 and W2: back through the clustering to dL/dw.
                    let offsets = [ft.w1Offset, ft.w2Offset]
                    for i in specs.indices {
                        let gw = try grad.withUnsafeBufferPointer { g in
                            try softBackward(saved[i], gradOutput: g.baseAddress! + offsets[i], weights: w[i])
                        }
                        for j in 0..<gw.count { grad[offsets[i] + j] = gw[j] }
                    }
                    saved.removeAll()  // destroys the saved states, releasing their arena memory
                    ftAdam.step(&ft.params, grad, lr: cosineLR(Demo.fineTuneLR, step: step, total: total))
                    if plotDirectory != nil && step % DemoRecord.errorEvery == 0 {
                        try run.recordErrors(step: step, layers: layers, weights: [ft.w1, ft.w2])
                    }
                    step += 1
                    bar.update(step, "epoch \(e + 1)/\(ftEpochs) loss \(String(format: "%.4f", loss / Double(s + 1)))")
                }
                bar.plain("eDKM \(b)-bit epoch \(e + 1)/\(ftEpochs): train loss (soft weights) \(String(format: "%.4f", loss / Double(steps)))")
            }
            bar.finish()
            // Centroids for the final weights (one forward, nothing saved), then hard export.
            let wFinal = [ft.w1, ft.w2]
            for i in specs.indices { _ = try softForward(layers[i], wFinal[i], into: &soft[i], save: false) }
            var ftHard: [[Float]] = []
            bytes = 0
            for i in specs.indices {
                let h = try hardPalettize(layers[i], wFinal[i])
                ftHard.append(h.weights)
                bytes += h.bytes
            }
            let ftAcc = ft.accuracy(w1: ftHard[0], w2: ftHard[1], on: data.test)
            run.finalCentroids = try layers[0].centroids()
            run.finalWeights = wFinal[0]
            run.entropy = try layers[0].stats().attention_entropy
            record.fineTunes.append(run)
            rows.append(ResultRow(model: "eDKM fine-tuned", bits: b, accuracy: ftAcc, bytes: bytes))
            let st = try runtime.stats()
            let ls = try layers[0].stats()
            let distinct = try layers.reduce(UInt64(0)) { $0 + (try $1.stats()).distinct_values }
            fineTunePeaks.append((b, st.arena_peak, maxStep, ls.algorithm, distinct))
            print("eDKM fine-tuning: \(ftEpochs) epochs (\(total) steps), \(Format.seconds(bar.elapsed)); test accuracy \(Format.percent(ftAcc)) with hard \(b)-bit weights")

            // 4. Memory: one training step in every saved-state mode of the eDKM ablation.
            let measured = try measureSavedState(
                shapes: specs.map(\.shape), configs: configs, centroids: initial,
                weights: wFinal.map { w in w.withUnsafeBytes { Array($0) } }, dtype: EDKM_DTYPE_F32, threads: threads)
            let iterations = Int(configs[0].max_iterations)
            ablation.append((b, measured, 2 * iterations * nWeights * (1 << b) * 4))
        }

        // Summary.
        print("")
        var table = TextTable([("model", .left), ("bits", .right), ("test accuracy", .right), ("weight bytes", .right), ("compression", .right)])
        for r in rows {
            table.add([r.model, String(r.bits), Format.percent(r.accuracy), Format.grouped(r.bytes),
                       String(format: "%.1fx", Double(rows[0].bytes) / Double(r.bytes))])
        }
        print(table.render())
        print("(weight bytes: W1 and W2; float32 = 4 bytes per weight, palettized = float16 LUT + packed \(bits.map(String.init).joined(separator: "/"))-bit indices)")

        print("\nsaved state kept for backward by one training step (both matrices, N = \(Format.grouped(nWeights)) weights, T = 3 iterations):")
        var columns: [(String, TextTable.Align)] = [("saved_mode", .left), ("where", .left)]
        for a in ablation { columns.append(("\(a.bits) bits (k = \(1 << a.bits))", .right)) }
        var mem = TextTable(columns)
        for (m, entry) in ablation[0].bytes.enumerated() {
            var row = [entry.mode.title, entry.place]
            for a in ablation { row.append(Format.grouped(a.bytes[m].bytes)) }
            mem.add(row)
        }
        mem.separator()
        var formulaRow = ["DKM formula 2 T N k x 4 bytes", ""]
        for a in ablation { formulaRow.append(Format.grouped(a.formula)) }
        mem.add(formulaRow)
        print(mem.render())
        print("(measured: DKM from heap_saved_peak, the others from the offload arena's arena_peak (jemalloc per-arena stats), edkm_runtime_get_stats)")

        print("")
        for (i, p) in fineTunePeaks.enumerated() {
            let dkm = ablation[i].bytes[0].bytes
            let algorithm = p.algorithm == Int32(EDKM_ALGORITHM_UNIQUIFIED.rawValue) ? "uniquified (value histogram)" : "dense"
            print("eDKM \(p.bits)-bit fine-tuning run: arena peak \(Format.grouped(p.arenaPeak)) bytes over \(ftEpochs * steps) steps (largest step \(Format.grouped(p.maxStep)) bytes; \(algorithm), \(Format.grouped(Int(p.distinct))) distinct f16 keys); the DKM baseline keeps \(Format.grouped(dkm)) bytes per step: \(String(format: "%.0fx", Double(dkm) / Double(max(p.arenaPeak, 1)))) less")
        }

        // 5. The same on an LLM-sized layer, where the weights are 16-bit and N >> 65,536.
        if llmLayer > 0 {
            let b = bits.min()!
            let (m, distinct) = try measureLLMLayer(rows: llmLayer, cols: llmLayer, bits: b, seed: seed &+ 3, threads: threads)
            let n = llmLayer * llmLayer
            print("\none training step on an LLM-sized layer: \(llmLayer)x\(llmLayer) f16 weights (std 0.02, \(Format.grouped(Int(distinct))) distinct values), \(b) bits, library defaults:")
            var t = TextTable([("saved_mode", .left), ("where", .left), ("saved bytes", .right), ("vs DKM", .right), ("step time", .right)])
            for x in m {
                t.add([x.mode.title, x.place, Format.grouped(x.bytes) + " (" + Format.bytes(x.bytes) + ")",
                       String(format: "%.0fx", Double(m[0].bytes) / Double(max(x.bytes, 1))), Format.seconds(x.seconds)])
            }
            t.separator()
            t.add(["DKM formula 2 T N k x 4 bytes", "", Format.grouped(2 * 3 * n * (1 << b) * 4), "", ""])
            print(t.render())
        }
        if let plotDirectory {
            let files = try DemoPlots(record: record, floatSteps: epochs * steps).write(to: plotDirectory)
            print("\npictures: " + files.joined(separator: ", "))
        }
        print("total \(Format.seconds(Date().timeIntervalSince(start)))")
    }
}

/// A softmax-regression baseline: shows that the data needs the MLP's hidden layer.
func linearBaselineAccuracy(_ data: SyntheticData, epochs: Int, seed: UInt64) -> Double {
    let dim = SyntheticData.dim, classes = SyntheticData.classes
    var p = [Float](repeating: 0, count: classes * dim + classes)
    var g = p
    var adam = Adam(count: p.count)
    var rng = SplitMix64(seed: seed)
    var order = Array(0..<data.train.count)
    let steps = data.train.count / Demo.batch
    var z = [Double](repeating: 0, count: classes)
    for e in 0..<epochs {
        rng.shuffle(&order)
        for b in 0..<steps {
            for i in 0..<g.count { g[i] = 0 }
            for s in 0..<Demo.batch {
                let ex = order[b * Demo.batch + s]
                let x = ex * dim
                var zm = -Double.infinity
                for c in 0..<classes {
                    var a = Double(p[classes * dim + c])
                    for j in 0..<dim { a += Double(p[c * dim + j]) * Double(data.train.x[x + j]) }
                    z[c] = a
                    zm = max(zm, a)
                }
                let zs = z.reduce(0.0) { $0 + exp($1 - zm) }
                for c in 0..<classes {
                    let dz = Float((exp(z[c] - zm) / zs - (c == data.train.y[ex] ? 1 : 0)) / Double(Demo.batch))
                    for j in 0..<dim { g[c * dim + j] += dz * data.train.x[x + j] }
                    g[classes * dim + c] += dz
                }
            }
            adam.step(&p, g, lr: cosineLR(3e-3, step: e * steps + b, total: epochs * steps))
        }
    }
    var hits = 0
    for s in 0..<data.test.count {
        var best = -Double.infinity, arg = 0
        for c in 0..<classes {
            var a = Double(p[classes * dim + c])
            for j in 0..<dim { a += Double(p[c * dim + j]) * Double(data.test.x[s * dim + j]) }
            if a > best { best = a; arg = c }
        }
        if arg == data.test.y[s] { hits += 1 }
    }
    return Double(hits) / Double(data.test.count)
}
