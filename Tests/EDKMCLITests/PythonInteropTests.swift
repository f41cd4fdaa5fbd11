import EDKMSafetensors
import Foundation
import Testing

/// Interoperability with Python's `safetensors` package (skipped where python3 lacks it): a file it
/// writes is read here and palettized; our palettized and unpacked files are read back by it and
/// checked there (indices decoded with numpy, unpacked == lut[labels]).
@Suite struct PythonInteropTests {
    static func python(_ args: [String]) -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3"] + args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        do { try p.run() } catch { return (-1, "\(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static let available: Bool = python(["-c", "import safetensors, numpy"]).status == 0

    static let script = #"""
    import json, sys
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file
    try:
        import torch
        from safetensors.torch import save_file as save_torch
    except Exception:
        torch = None

    def values(n):  # the same formula as the Swift side
        return np.array([((i * 37) % 1000 - 500) / 1000.0 for i in range(n)], dtype=np.float64)

    def write(path):
        t = {
            "py.f32": values(64 * 64).astype(np.float32).reshape(64, 64),
            "py.f16": values(32 * 128).astype(np.float16).reshape(32, 128),
            "py.f64": values(6).reshape(2, 3),
            "py.i64": np.arange(10, dtype=np.int64),
            "py.u8": np.arange(15, dtype=np.uint8).reshape(3, 5),
            "py.bool": np.array([True, False, True]),
        }
        meta = {"format": "np", "writer": "python safetensors"}
        if torch is not None:
            tt = {k: torch.from_numpy(v) for k, v in t.items()}
            tt["py.bf16"] = torch.from_numpy(values(48 * 64).astype(np.float32)).to(torch.bfloat16).reshape(48, 64)
            save_torch(tt, path, metadata=meta)
        else:
            save_file(t, path, metadata=meta)

    def load(path):
        fw = "pt" if torch is not None else "numpy"
        out = {}
        with safe_open(path, framework=fw) as f:
            md = f.metadata() or {}
            for k in f.keys():
                x = f.get_tensor(k)
                out[k] = x.float().numpy() if (torch is not None and x.dtype == torch.bfloat16) else (x.numpy() if torch is not None else x)
                if torch is not None and x.dtype == torch.bfloat16:
                    out[k + "#bf16bits"] = x.view(torch.int16).numpy()
        return md, out

    def check(orig, pal, unp):
        omd, o = load(orig)
        pmd, p = load(pal)
        umd, u = load(unp)
        assert pmd["edkm.format"] == "palettized-1", pmd
        assert pmd["format"] == "np" and umd == omd, (pmd, umd, omd)
        recs = {k[len("edkm.tensor."):]: json.loads(v) for k, v in pmd.items() if k.startswith("edkm.tensor.")}
        assert len(recs) >= 2, recs
        for name, r in recs.items():
            lut = p[r["lut"]].astype(np.float32)
            idx = p[r["indices"]]
            bits, d = r["bits"], r["cluster_dim"]
            groups, k, _ = lut.shape
            n = int(np.prod(r["shape"])); per = n // groups; vec = per // d
            labels = []
            for g in range(groups):
                b = np.unpackbits(idx[g], bitorder="little")[: vec * bits].reshape(vec, bits)
                labels.append((b.astype(np.int64) << np.arange(bits)).sum(1))
            labels = np.stack(labels)                       # groups x vec
            dense = lut[np.arange(groups)[:, None], labels]  # groups x vec x d
            dense = dense.reshape(r["shape"])
            got = u[name]
            if r["dtype"] == "BF16":
                exp_bits = torch.from_numpy(dense).to(torch.bfloat16).view(torch.int16).numpy()
                assert np.array_equal(u[name + "#bf16bits"], exp_bits), name
            else:
                exp = dense.astype({"F16": np.float16, "F32": np.float32}[r["dtype"]])
                assert got.dtype == exp.dtype and np.array_equal(got, exp), name
            assert list(got.shape) == r["shape"], name
            rel = np.linalg.norm(got.astype(np.float64) - o[name].astype(np.float64)) / np.linalg.norm(o[name].astype(np.float64))
            assert rel < 0.3, (name, rel)
        for name in o:
            if name not in recs and not name.endswith("#bf16bits"):
                assert np.array_equal(o[name], p[name]) and np.array_equal(o[name], u[name]), name
        print("python: checked %d palettized tensors, %d tensors in all" % (len(recs), len(o)))

    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3], sys.argv[4])
    """#

    static func values(_ n: Int) -> [Double] { (0..<n).map { Double(($0 * 37) % 1000 - 500) / 1000 } }

    @Test(needsCLI, .enabled(if: available, "python3 with safetensors and numpy is not installed"))
    func pythonWritesWeReadAndBack() throws {
        let dir = TempDir()
        let script = dir.file("interop.py")
        try Self.script.write(toFile: script, atomically: true, encoding: .utf8)
        let orig = dir.file("py.safetensors"), pal = dir.file("pal.safetensors"), unp = dir.file("unp.safetensors")
        let w = Self.python([script, "write", orig])
        try #require(w.status == 0, "\(w.output)")

        // Read Python's file with our reader.
        let f = try SafetensorsFile(path: orig)
        #expect(f.header.metadata?["writer"] == "python safetensors")
        let f32 = try #require(f.header.tensor(named: "py.f32"))
        #expect(f32.dtype == .f32 && f32.shape == [64, 64])
        let bytes = Array(f.data(f32))
        let expected = Self.values(4096).map { Float($0) }
        #expect((0..<4096).allSatisfy { floatValue(bytes, .f32, $0) == expected[$0] })
        let f16 = try #require(f.header.tensor(named: "py.f16"))
        let h = Array(f.data(f16))
        #expect((0..<(32 * 128)).allSatisfy { floatValue(h, .f16, $0) == Float(Float16(Self.values(4096)[$0])) })
        #expect(f.header.tensor(named: "py.i64")?.dtype == .i64 && f.header.tensor(named: "py.bool")?.dtype == .bool)
        if let bf = f.header.tensor(named: "py.bf16") { #expect(bf.dtype == .bf16 && bf.shape == [48, 64]) }

        // Ours, read back by Python.
        let r1 = try CLI.run(["palettize", orig, "-o", pal, "--bits", "4", "--min-size", "1024"])
        #expect(r1.status == 0, "\(r1.stderr)")
        let r2 = try CLI.run(["unpack", pal, "-o", unp])
        #expect(r2.status == 0, "\(r2.stderr)")
        let c = Self.python([script, "check", orig, pal, unp])
        #expect(c.status == 0, "\(c.output)")
        #expect(c.output.contains("python: checked"))
    }
}
