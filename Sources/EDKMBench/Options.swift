/// A minimal command-line reader: `--name value` and `--flag`, with typed lists ("3,4").
struct Options {
    private var values: [String: String] = [:]
    private var flags: Set<String> = []
    private(set) var unknown: [String] = []

    /// Parses `args`; `valued` lists the options that take a value, `switches` those that do not.
    init(_ args: ArraySlice<String>, valued: Set<String>, switches: Set<String>) {
        var it = args.makeIterator()
        while let a = it.next() {
            if valued.contains(a) {
                guard let v = it.next() else { fail("\(a) needs a value") }
                values[a] = v
            } else if switches.contains(a) {
                flags.insert(a)
            } else {
                unknown.append(a)
            }
        }
    }

    func has(_ flag: String) -> Bool { flags.contains(flag) }
    func string(_ name: String) -> String? { values[name] }

    func int(_ name: String, _ fallback: Int) -> Int {
        guard let v = values[name] else { return fallback }
        guard let i = Int(v) else { fail("\(name): not an integer: \(v)") }
        return i
    }

    func list(_ name: String, _ fallback: [String]) -> [String] {
        guard let v = values[name] else { return fallback }
        return v.split(separator: ",").map { String($0) }
    }

    func ints(_ name: String, _ fallback: [Int]) -> [Int] {
        guard let v = values[name] else { return fallback }
        return v.split(separator: ",").map { s in
            guard let i = Int(s) else { fail("\(name): not an integer list: \(v)") }
            return i
        }
    }
}

/// "4096x4096" -> (4096, 4096).
func parseShape(_ s: String) -> (rows: Int, cols: Int) {
    let parts = s.split(separator: "x")
    guard parts.count == 2, let r = Int(parts[0]), let c = Int(parts[1]), r > 0, c > 0 else {
        fail("bad shape \(s) (expected ROWSxCOLS)")
    }
    // The benchmarks allocate rows x cols weights (and byte buffers of that many elements times 4).
    let (count, overflow) = r.multipliedReportingOverflow(by: c)
    guard !overflow && count <= Int(Int32.max) * 256 / 4 else {
        fail("shape \(s) is too large: \(overflow ? "rows x cols overflows 64 bits" : "\(count) elements"); at most \(Int(Int32.max) * 64) elements")
    }
    return (r, c)
}
