/// The defaults of the thresholds a temperature mode reads: the one place they are written (the
/// C ABI, the CLI and the bindings pass "unset" and get these).
extension ClusteringConfig.TemperatureMode {
    /// Softmax temperature when none is given. Absolute: coremltools DKMPalettizer's palett_tau
    /// 1e-4 (squared weight units). Scale-free: 0.1 x the partition's k-means distortion, chosen by
    /// the temperature study (docs/temperature.md).
    public var defaultTau: Double {
        switch self {
        case .absolute: return 1e-4
        case .scaleFree: return 0.1
        }
    }

    /// Early-stop tolerance on the inertia when none is given: coremltools' palett_epsilon 1e-4 in
    /// the absolute mode; in the scale-free mode the same number as a factor of the distortion
    /// times the vectors (a relative inertia change of 1e-4).
    public var defaultEpsilon: Double { 1e-4 }

    /// Prune bias of centroid 0 when none is given: coremltools' prune_threshold 1e-7 in the
    /// absolute mode; the same number as a factor of the distortion in the scale-free mode.
    public var defaultPruneThreshold: Double { 1e-7 }
}
