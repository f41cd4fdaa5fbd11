extension ThreadPool {
    /// [body(0), ..., body(count - 1)], the elements made in parallel (each by one item, so the
    /// result does not depend on the thread count). For per-partition work of grouped layers
    /// (hundreds to thousands of partitions), which would otherwise run on the calling thread.
    func parallelMap<T>(_ count: Int, file: StaticString = #fileID, function: StaticString = #function,
                        _ body: (Int) -> T) -> [T] {
        if count <= 0 { return [] }
        return [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            let base = buffer.baseAddress!
            parallelFor(count, file: file, function: function) { i in (base + i).initialize(to: body(i)) }
            initialized = count
        }
    }

    /// Whether body(i) holds for some i < count, evaluated in parallel (every i is evaluated).
    func parallelContains(_ count: Int, file: StaticString = #fileID, function: StaticString = #function,
                          _ body: (Int) -> Bool) -> Bool {
        parallelMap(count, file: file, function: function, body).contains(true)
    }
}
