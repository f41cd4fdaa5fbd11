/// How one weight tensor is clustered: the knobs of coremltools' DKMPalettizer, with its defaults.
public struct ClusteringConfig: Sendable, Equatable {
    /// Centroid initialisation. Raw values equal the C ABI's `edkm_init`.
    public enum Initialization: Int32, Sendable {
        /// `.optimal1D` for scalar clustering, `.kMeansPlusPlus` for vectors.
        case automatic = 0
        /// Exact minimum-SSE 1-D k-means on the weighted value histogram.
        case optimal1D = 1
        /// Seeded k-means++ and a few Lloyd iterations.
        case kMeansPlusPlus = 2
    }

    /// Implementation of forward and backward. Raw values equal the C ABI's `edkm_algorithm`.
    public enum Algorithm: Int32, Sendable {
        /// Uniquified where possible (cluster_dim 1 and 16-bit keys), dense otherwise.
        case automatic = 0
        /// N x k maps, in bounded chunks.
        case dense = 1
        /// On the value histogram: O(N) + O(U k T).
        case uniquified = 2
    }

    /// k = 2^bits centroids; 1...8.
    public var bits: Int = 4
    /// Length d of the clustered vectors (consecutive elements of a row); 1...64.
    public var clusterDim: Int = 1
    /// 0 = one LUT per tensor; g > 0 = one LUT per g consecutive rows.
    public var groupSize: Int = 0
    /// DKM iterations per forward; 1...64.
    public var maxIterations: Int = 3
    public var initialization: Initialization = .automatic
    /// The thresholds as given; nil = the temperature mode's default (`TemperatureMode.defaultTau`,
    /// `.defaultEpsilon`, `.defaultPruneThreshold`), resolved when read through `tau`, `epsilon`
    /// and `pruneThreshold`, so the default follows the mode whenever it is set.
    public var givenTau: Double? = nil
    public var givenEpsilon: Double? = nil
    public var givenPruneThreshold: Double? = nil
    /// Softmax temperature tau (> 0): a factor of each partition's k-means distortion in the
    /// (default) scale-free mode, squared weight units in the absolute mode. Reads the given
    /// value, else the mode's default (scale-free 0.1, absolute 1e-4).
    public var tau: Double {
        get { givenTau ?? temperatureMode.defaultTau }
        set { givenTau = newValue }
    }
    /// Early stop when |I^{t-1} - I^t| <= epsilon (on the inertia summed over weights; in the
    /// scale-free mode a factor of the distortion times the number of vectors). Default 1e-4.
    public var epsilon: Double {
        get { givenEpsilon ?? temperatureMode.defaultEpsilon }
        set { givenEpsilon = newValue }
    }
    /// Attention clamped from below at this value.
    public var zeroThreshold: Double = 1e-7
    /// Subtracted from the squared distance to centroid 0 (scale-free: a factor of the
    /// distortion). Default 1e-7.
    public var pruneThreshold: Double {
        get { givenPruneThreshold ?? temperatureMode.defaultPruneThreshold }
        set { givenPruneThreshold = newValue }
    }
    public var algorithm: Algorithm = .automatic
    /// f32 weights on the uniquified path are keyed by rounding to this 16-bit type; `.f32` = never.
    public var f32KeyType: ElementType = .f32
    /// Seed of k-means++.
    public var seed: UInt64 = 0x5eed
    /// How `tau` (and the prune threshold and epsilon) are read.
    public var temperatureMode: TemperatureMode = .scaleFree
    /// coremltools' enforce_zero: centroid 0 of every partition is fixed at 0. The initial
    /// centroid nearest 0 is replaced by 0 and swapped to index 0 (`CentroidInitialization.placeZeroFirst`),
    /// and every iteration sets c^{t+1}_0 = 0, a constant (its adjoint is dropped in the backward).
    /// With pruneThreshold 0 this is coremltools' keep-sparsity rule (`keepsSparsity`).
    public var enforceZero: Bool = false
    /// coremltools' keep-sparsity rule, on when enforceZero holds with pruneThreshold 0: in the
    /// soft k-means of the forward, every vector with a nonzero element has the constant distance
    /// 1 / zeroThreshold to centroid 0 (in the temperature's units; no gradient through it), so its
    /// attention to the zero centroid is the clamp z at any practical temperature, while exact
    /// zeros keep their ordinary distance (`SoftKMeansKernel`, docs/keep-sparsity.md). The hard
    /// assignment (export) stays the plain argmin, as coremltools' finalize.
    @inlinable public var keepsSparsity: Bool { enforceZero && pruneThreshold == 0 }
    /// LUT quantization inside the iterations (`LUTQuantization`). Raw values equal the C ABI's `edkm_lut_dtype`.
    public enum LUTType: Int32, Sendable {
        case f32 = 0
        /// Symmetric int8, one scale per LUT.
        case int8 = 1
        /// Affine uint8, one scale and zero point per LUT.
        case uint8 = 2
    }
    public var lutType: LUTType = .f32
    /// coremltools' enable_per_channel_scale with its per_channel_scaling_factor_scheme. Raw values
    /// equal the C ABI's `edkm_channel_scale`. Each output row r (channel axis 0) is divided by its
    /// factor s_r before clustering and the clustered values multiplied by s_r after
    /// (`ChannelScaling`); s is a constant of the layer, fixed from the first weights it sees.
    public enum ChannelScale: Int32, Sendable {
        case none = 0
        /// s_r = (max_r - min_r) / 2 (coremltools' "min_max").
        case minMax = 1
        /// s_r = max_r |w| (coremltools' "abs").
        case absMax = 2
    }
    public var channelScale: ChannelScale = .none

    /// Raw values equal the C ABI's `edkm_temperature_mode`.
    public enum TemperatureMode: Int32, Sendable {
        /// tau, prune_threshold and epsilon are absolute (coremltools' semantics).
        case absolute = 0
        /// tau, prune_threshold and epsilon are multiples of the partition's distortion
        /// sigma^2 = (1/n) sum_i min_j ||w_i - c0_j||^2 (the mean squared distance of its n weight
        /// vectors to the nearest of the forward's initial centroids c0: post-training k-means' own
        /// error; epsilon also times n), so multiplying the weights by any constant changes nothing
        /// but the scale of the results. sigma^2 is detached (a stop-gradient, like c0): the
        /// backward is exact with sigma^2 held fixed.
        case scaleFree = 1
    }

    public init() {}

    /// Number of centroids, 2^bits.
    @inlinable public var k: Int { 1 << bits }

    /// Checks every field's range.
    public func validate() throws(EDKMError) {
        guard (1...8).contains(bits) else { throw EDKMError(.invalidArgument, "bits must be in 1...8, got \(bits)") }
        guard (1...64).contains(clusterDim) else {
            throw EDKMError(.invalidArgument, "cluster_dim must be in 1...64, got \(clusterDim)")
        }
        guard groupSize >= 0 else { throw EDKMError(.invalidArgument, "group_size must be >= 0, got \(groupSize)") }
        guard (1...64).contains(maxIterations) else {
            throw EDKMError(.invalidArgument, "max_iterations must be in 1...64, got \(maxIterations)")
        }
        guard tau.isFinite && tau > 0 else { throw EDKMError(.invalidArgument, "tau must be finite and > 0, got \(tau)") }
        guard (1 / tau).isFinite else {
            throw EDKMError(.invalidArgument, "tau \(tau) is too small: its reciprocal overflows (tau must be >= 5.6e-309)")
        }
        guard epsilon.isFinite && epsilon >= 0 else {
            throw EDKMError(.invalidArgument, "epsilon must be finite and >= 0, got \(epsilon)")
        }
        guard zeroThreshold.isFinite && zeroThreshold >= 0 && zeroThreshold < 1 else {
            throw EDKMError(.invalidArgument, "zero_threshold must be in [0, 1), got \(zeroThreshold)")
        }
        guard pruneThreshold.isFinite && pruneThreshold >= 0 else {
            throw EDKMError(.invalidArgument, "prune_threshold must be finite and >= 0, got \(pruneThreshold)")
        }
        guard temperatureMode == .absolute || temperatureMode == .scaleFree else {
            throw EDKMError(.invalidArgument, "unknown temperature mode")
        }
        if clusterDim > 1 && algorithm == .uniquified {
            throw EDKMError(.invalidArgument, "the uniquified algorithm clusters scalars only (cluster_dim 1), got cluster_dim \(clusterDim)")
        }
        if clusterDim > 1 && initialization == .optimal1D {
            throw EDKMError(.invalidArgument, "optimal 1-D initialisation needs cluster_dim 1, got \(clusterDim)")
        }
    }
}
