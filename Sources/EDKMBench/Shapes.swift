/// The seven weight matrices of one LLaMA-7B decoder layer ([out, in], row-major).
struct NamedShape {
    var name: String
    var rows: Int
    var cols: Int
    var count: Int { rows * cols }
}

/// q, k, v, o: 4096 x 4096; gate, up: 11008 x 4096; down: 4096 x 11008. `divisor` scales both
/// extents down (for smoke runs).
func llamaDecoderLayer(divisor: Int = 1) -> [NamedShape] {
    let d = 4096 / divisor, f = 11008 / divisor
    return [
        NamedShape(name: "q_proj", rows: d, cols: d),
        NamedShape(name: "k_proj", rows: d, cols: d),
        NamedShape(name: "v_proj", rows: d, cols: d),
        NamedShape(name: "o_proj", rows: d, cols: d),
        NamedShape(name: "gate_proj", rows: f, cols: d),
        NamedShape(name: "up_proj", rows: f, cols: d),
        NamedShape(name: "down_proj", rows: d, cols: f),
    ]
}
