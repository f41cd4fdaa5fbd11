/*
 * edkm.h: the public C ABI of libedkm, train-time weight clustering (DKM / eDKM).
 *
 * This header is the whole contract: what is not declared here is not API. It is valid C99 and C++.
 *
 * What the library does
 * ---------------------
 * A *layer* clusters the N weights of one tensor into k = 2^bits centroids (scalar, or d-vectors
 * with cluster_dim = d) with differentiable k-means (DKM, Cho et al. 2022), with the semantics of
 * coremltools' DKMPalettizer. Its forward returns the soft-clustered weights
 *
 *     w~_i = sum_j A_ij c_j      A = clamped softmax attention of weight i to centroid j
 *
 * and its backward returns dL/dw through every k-means iteration. What the forward keeps for the
 * backward (the *saved state*) lives in the *runtime*'s offload arena, a dedicated jemalloc arena
 * with exact statistics and an optional byte budget, stored the eDKM way (Cho et al. 2023): on the
 * value histogram of the weights instead of N x k attention maps.
 *
 * Conventions
 * -----------
 * - Every fallible function returns an edkm_status. On failure nothing is written to outputs, and
 *   edkm_last_error() returns a message with the detail.
 * - Handles are opaque, created by one *_create and released by one *_destroy; *_destroy(NULL) is a
 *   no-op. A handle that was destroyed, or that was never returned by *_create, is rejected with
 *   EDKM_ERR_INVALID_HANDLE (the library keeps a registry of live handles), never dereferenced.
 * - Buffers: inputs are borrowed for the duration of the call only; outputs are allocated by the
 *   caller, with sizes given by the documented formula or a size query. Pointers need only the
 *   natural alignment of their element type.
 * - Tensors are dense, row-major (C order). Element counts are size_t, shapes int64_t arrays.
 * - Thread safety: a runtime may be used from any number of threads at once. A layer or a saved
 *   state must be used by one thread at a time; a second thread that calls into a layer or saved
 *   state while another call on it is running gets EDKM_ERR_BUSY (nothing is corrupted). Different
 *   layers on one runtime may run concurrently.
 * - The library never prints, never exits, never aborts on bad input.
 * - Each function's comment ends with "Returns:", the statuses it can give besides EDKM_OK
 *   (EDKM_ERR_INTERNAL, a bug, is possible everywhere and not listed). A NULL handle gives
 *   EDKM_ERR_NULL_POINTER, like any NULL pointer argument; a status not listed is a bug too.
 * - "(since 0.x)" marks what was added after 0.1: a program that uses it needs a library of that
 *   version or later (check edkm_version_number() at run time when it matters).
 *
 * Two tiers
 * ---------
 * The stable tier is everything above the "Experimental tier" fence near the end of this file:
 * create a runtime and layers, forward, backward, export, the histogram form for device-resident
 * weights, statistics. Its defaults (edkm_runtime_config_init, edkm_layer_config_init) are the
 * recommended settings; a binding passes them on rather than restating them, in particular the
 * temperature thresholds, which are "unset" (NaN) until the caller sets them and then follow the
 * temperature mode (see edkm_layer_config).
 * The experimental tier (below the fence) holds the knobs of the eDKM ablation and of tuning: the
 * saved modes other than the default, the forward's algorithm, f32_key_dtype. They stay ABI
 * (values and fields are never renumbered or reused), but their behaviour and figures may change
 * in a minor version; production code should leave them at their defaults.
 *
 * ABI rule
 * --------
 * Within one major version: functions, enum values and struct fields are only ever added (struct
 * fields at the end); nothing is renumbered, removed or reordered. Config and stats structs begin
 * with struct_size (the sizeof the caller compiled against): the library reads or writes only the
 * fields that size covers and gives fields beyond it their defaults, so a program built against an
 * older minor version keeps working. struct_size must end on a field boundary (the offset of one of
 * the struct's fields after struct_size, or its full size); any other value (0 to 3, one that ends
 * inside a field, or one larger than this library knows) is rejected with EDKM_ERR_STRUCT_SIZE and
 * nothing is read or written. A new major version may change anything.
 */
#ifndef EDKM_H
#define EDKM_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  define EDKM_API __declspec(dllimport)
#elif defined(__GNUC__) && (__GNUC__ >= 4)
#  define EDKM_API __attribute__((visibility("default")))
#else
#  define EDKM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ============================ Version ============================ */

#define EDKM_VERSION_MAJOR 0
#define EDKM_VERSION_MINOR 8
#define EDKM_VERSION_PATCH 1
/** MAJOR * 10000 + MINOR * 100 + PATCH, e.g. 801 for 0.8.1.
 *  0.2: the default temperature_mode became EDKM_TEMPERATURE_SCALE_FREE (tau 0.1); a program that
 *  sets an absolute tau must also set temperature_mode = EDKM_TEMPERATURE_ABSOLUTE.
 *  0.3: the histogram form (edkm_layer_forward_histogram, edkm_saved_state_backward_histogram) for
 *  trainers whose weights live on a device; nothing else changed.
 *  0.4: tau, epsilon and prune_threshold of edkm_layer_config may be unset (NaN, what
 *  edkm_layer_config_init now writes): the layer then uses its temperature mode's default, so an
 *  absolute-mode layer without a tau gets 1e-4 (coremltools') instead of the scale-free 0.1.
 *  f32 partitions of over 65,536 weights are initialised on keys of the weights scaled by a power
 *  of two when their RMS is tiny or huge. New: edkm_layer_get_config, edkm_layer_export_sized,
 *  edkm_layer_unpack_sized (edkm_layer_unpack is deprecated: its LUT has no size).
 *  0.5: the per-channel scale (edkm_layer_config.channel_scale, edkm_layer_get_channel_scale,
 *  edkm_layer_set_channel_scale).
 *  0.6: no new symbols or fields; what 0.5 refused now works: enforce_zero with prune_threshold 0
 *  (coremltools' keep-sparsity rule) and the channel scale with edkm_layer_forward_shard.
 *  0.7: edkm_layer_forward_histogram takes a layer with a channel scale (its factors fixed first).
 *  0.8: no interface change; the windowed passes use a table-driven exp (results can differ from
 *       0.7 in the last bits of float64 intermediates, within float32 rounding of the outputs).
 *  0.8.1: no interface change, the same results; calls that returned EDKM_OK with non-finite
 *       results on a channel-scaled layer (w / s overflowing in init_centroids, an infinite
 *       extremum from a peer in forward_shard's factor exchange) now return EDKM_ERR_NON_FINITE;
 *       edkm_layer_init_centroids on f32 weights with an RMS below 2^-126 gives finite centroids
 *       (it returned Inf or NaN ones with EDKM_OK). */
#define EDKM_VERSION_NUMBER (EDKM_VERSION_MAJOR * 10000 + EDKM_VERSION_MINOR * 100 + EDKM_VERSION_PATCH)

/** The library's version as EDKM_VERSION_NUMBER computes it; compare with the header's.
 *  Returns: cannot fail. */
EDKM_API uint32_t edkm_version_number(void);
/** "MAJOR.MINOR.PATCH", static storage. Returns: cannot fail. */
EDKM_API const char *edkm_version_string(void);

/* ============================ Status ============================ */

/** Status codes. Values are ABI: never renumbered, never reused. */
typedef enum edkm_status {
    EDKM_OK = 0,
    EDKM_ERR_INVALID_ARGUMENT = 1,  /**< a value out of its documented range (bits, tau, ...) */
    EDKM_ERR_NULL_POINTER = 2,      /**< a required pointer was NULL */
    EDKM_ERR_INVALID_HANDLE = 3,    /**< handle destroyed, never created, or of another kind */
    EDKM_ERR_DTYPE = 4,             /**< unknown dtype, or dtype not allowed here */
    EDKM_ERR_SHAPE = 5,             /**< element count or shape inconsistent with the layer */
    EDKM_ERR_NON_FINITE = 6,        /**< NaN or Inf in weights, gradients or centroids */
    EDKM_ERR_OUT_OF_MEMORY = 7,     /**< the system allocator failed */
    EDKM_ERR_BUDGET_EXCEEDED = 8,   /**< the saved state would exceed the runtime's byte budget */
    EDKM_ERR_STATE = 9,             /**< call out of order: backward twice, no centroids yet, ... */
    EDKM_ERR_WEIGHTS_CHANGED = 10,  /**< backward got weights that differ from the forward's */
    EDKM_ERR_COMMUNICATOR = 11,     /**< a communicator callback returned nonzero, or results no
                                         correct collective can give (see edkm_communicator) */
    EDKM_ERR_BUSY = 12,             /**< the handle is in use by another thread, or a communicator
                                         callback called back into its own runtime */
    EDKM_ERR_STRUCT_SIZE = 13,      /**< struct_size does not end on a field boundary this library knows */
    EDKM_ERR_ALLOCATOR = 14,        /**< jemalloc could not create or use the offload arena */
    EDKM_ERR_INTERNAL = 99          /**< a bug in libedkm; please report it */
} edkm_status;

/** A static, human-readable name for a status ("EDKM_ERR_SHAPE"); "EDKM_UNKNOWN_STATUS" otherwise.
 *  Returns: cannot fail. */
EDKM_API const char *edkm_status_name(edkm_status status);

/**
 * The detail of the last failed call on the calling thread ("" when none). Thread-local; valid
 * until the next edkm_ call on this thread. Owned by the library: do not free. Successful calls
 * leave it unchanged. Returns: cannot fail.
 */
EDKM_API const char *edkm_last_error(void);

/* ============================ Types ============================ */

/** Element types of weights, gradients, outputs and LUTs. Values are ABI; struct fields carry
 *  them as int32_t. */
typedef enum edkm_dtype {
    EDKM_DTYPE_F32 = 0,   /**< IEEE binary32 */
    EDKM_DTYPE_F16 = 1,   /**< IEEE binary16, passed as its uint16_t bit pattern */
    EDKM_DTYPE_BF16 = 2   /**< bfloat16 (upper half of a binary32), as its uint16_t bit pattern */
} edkm_dtype;

/** Opaque handles. */
typedef struct edkm_runtime edkm_runtime;
typedef struct edkm_layer edkm_layer;
typedef struct edkm_saved_state edkm_saved_state;

/* ============================ Communicator ============================ */

/**
 * How a data-parallel trainer lends its collective operations (MPI, torch.distributed, ...) to
 * the library; libedkm has no network code. Every rank must make the same sequence of libedkm
 * calls, since each collective is entered by all ranks (as with MPI).
 *
 * Callbacks return 0 on success; any other value makes the libedkm call fail with
 * EDKM_ERR_COMMUNICATOR and lose nothing (a saved state stays usable, outputs stay unwritten).
 * They are called from the thread that called libedkm, never concurrently for one runtime.
 * What a callback returns with status 0 is checked before it is used: all-reduced counts must be
 * finite, integral, non-negative, add up to the ranks' element total and include this rank's own;
 * flags (ranks with non-finite or changed inputs) integral in 0..world_size; gradient sums finite;
 * a gathered index list must match the saved histogram (every index a row of its partition's
 * table, each row as often as the histogram counts it).
 * Anything else makes the call fail with EDKM_ERR_COMMUNICATOR and a message saying what was
 * wrong (outputs unwritten, arena as before). A correct collective gives every rank the same
 * results, so all ranks fail together.
 * A callback must not call into the runtime that invoked it (any layer or saved state of it):
 * such a nested call returns EDKM_ERR_BUSY at once instead of deadlocking; the outer call goes on.
 * reserved must be 0 (else EDKM_ERR_INVALID_ARGUMENT).
 */
typedef struct edkm_communicator {
    uint32_t struct_size;   /**< sizeof(edkm_communicator) */
    int32_t rank;           /**< this process's rank, 0 <= rank < world_size */
    int32_t world_size;     /**< number of ranks, >= 1 */
    int32_t reserved;       /**< must be 0 (else EDKM_ERR_INVALID_ARGUMENT) */
    void *user_data;        /**< passed back to the callbacks; borrowed: must outlive the runtime
                                 and every layer and saved state made from it */
    /**
     * All-gather of equal-sized blocks: every rank passes `bytes` bytes in `send`; on return
     * `recv` holds world_size * bytes bytes, rank r's block at offset r * bytes.
     */
    int (*all_gather)(void *user_data, const void *send, void *recv, size_t bytes);
    /** In-place element-wise sum of `count` doubles over all ranks. */
    int (*all_reduce_sum)(void *user_data, double *data, size_t count);
} edkm_communicator;

/* ============================ Runtime ============================ */

typedef struct edkm_runtime_config {
    uint32_t struct_size;      /**< sizeof(edkm_runtime_config); set by edkm_runtime_config_init */
    uint32_t num_threads;      /**< worker threads for the O(N) passes; 0 = the cores available;
                                    at most 1024. When the system cannot start that many, the runtime
                                    runs with those it started (edkm_runtime_stats.num_threads) */
    uint64_t budget_bytes;     /**< cap on the arena's allocated bytes (not EDKM_SAVED_DKM's heap);
                                    0 = unlimited */
    int32_t saved_mode;        /**< experimental tier: an edkm_saved_mode (see the end of this
                                    file); default EDKM_SAVED_HISTOGRAM (0), the stable choice */
    uint32_t keep_weights;     /**< HISTOGRAM mode: 1 = also keep the weights' 16-bit keys (2 bytes
                                    per weight) so backward may be given weights = NULL; default 0 */
    const edkm_communicator *communicator; /**< NULL = one process (default); copied at create */
} edkm_runtime_config;

/** Fills cfg with the defaults above and struct_size = sizeof(edkm_runtime_config). NULL is a
 *  no-op. Returns: cannot fail. */
EDKM_API void edkm_runtime_config_init(edkm_runtime_config *cfg);

/**
 * Creates a runtime: its own jemalloc arena, its thread pool, its communicator.
 * cfg may be NULL (defaults). *out receives the handle; release it with edkm_runtime_destroy.
 * Layers and saved states keep their runtime alive: destroying the runtime handle while they live
 * is allowed; the arena goes when the last of them is destroyed.
 * Returns: EDKM_ERR_NULL_POINTER (out NULL, or a communicator without both callbacks),
 * EDKM_ERR_STRUCT_SIZE (cfg or the communicator), EDKM_ERR_INVALID_ARGUMENT (num_threads,
 * saved_mode, keep_weights, rank / world_size or reserved out of range), EDKM_ERR_ALLOCATOR.
 */
EDKM_API edkm_status edkm_runtime_create(const edkm_runtime_config *cfg, edkm_runtime **out);
/** Releases the runtime handle. NULL is a no-op. */
EDKM_API void edkm_runtime_destroy(edkm_runtime *runtime);

/** Changes the byte budget (0 = unlimited). Bytes already held are not affected.
 *  Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE. */
EDKM_API edkm_status edkm_runtime_set_budget(edkm_runtime *runtime, uint64_t budget_bytes);

/** Arena statistics, read from jemalloc's own per-arena counters (bytes) and the library's. */
typedef struct edkm_runtime_stats {
    uint32_t struct_size;          /**< in: sizeof(edkm_runtime_stats) */
    uint32_t num_threads;          /**< out: threads taking part in the passes (the workers really
                                        started plus the caller) */
    uint64_t arena_allocated;      /**< bytes allocated in the arena now (jemalloc small + large) */
    uint64_t arena_peak;           /**< highest arena_allocated seen since create or reset */
    uint64_t arena_active;         /**< bytes of active pages of the arena (jemalloc pactive) */
    uint64_t heap_saved;           /**< bytes of saved state on the ordinary heap (EDKM_SAVED_DKM) */
    uint64_t heap_saved_peak;      /**< highest heap_saved since create or reset */
    uint64_t live_saved_states;    /**< saved states not yet destroyed */
    uint64_t dedup_hits;           /**< saved tensors referenced instead of copied */
    uint64_t dedup_misses;         /**< saved tensors copied */
    uint64_t budget_bytes;         /**< the current budget (0 = unlimited) */
    uint64_t communicator_bytes;   /**< bytes this rank sent through the communicator */
} edkm_runtime_stats;

/** Writes the statistics. out->struct_size must be set by the caller.
 *  Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, EDKM_ERR_STRUCT_SIZE. */
EDKM_API edkm_status edkm_runtime_get_stats(const edkm_runtime *runtime, edkm_runtime_stats *out);
/** Sets arena_peak to arena_allocated and heap_saved_peak to heap_saved.
 *  Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE. */
EDKM_API edkm_status edkm_runtime_reset_peak(edkm_runtime *runtime);

/* ============================ Layer ============================ */

/** Centroid initialisation. Values are ABI. */
typedef enum edkm_init {
    EDKM_INIT_AUTO = 0,         /**< OPTIMAL_1D for cluster_dim 1, KMEANS_PP otherwise */
    EDKM_INIT_OPTIMAL_1D = 1,   /**< exact minimum-SSE 1-D k-means on the value histogram (f32
                                     partitions over 65,536 weights: on the values rounded to
                                     f32_key_dtype, else f16 when they fit its range, else bf16;
                                     bf16 also when an f16 key would overflow) */
    EDKM_INIT_KMEANS_PP = 2     /**< seeded k-means++ followed by Lloyd iterations */
} edkm_init;

/** How tau, prune_threshold and epsilon are read (since 0.2). Values are ABI. */
typedef enum edkm_temperature_mode {
    /** Absolute values, compared with squared weight distances (coremltools' semantics). */
    EDKM_TEMPERATURE_ABSOLUTE = 0,
    /** Dimensionless multiples of each partition's distortion sigma^2 = (1/n) sum_i min_j
     *  ||w_i - c0_j||^2, the mean squared distance of its n weight vectors to the nearest of the
     *  forward's initial centroids c0 (post-training k-means' own error, recomputed at every
     *  forward as the centroids move): tau_eff = tau sigma^2, prune_eff = prune_threshold sigma^2,
     *  epsilon_eff = epsilon sigma^2 n. When every weight sits on a centroid (sigma^2 = 0) sigma^2
     *  is the mean squared spacing of the centroids instead. Multiplying the weights by a constant
     *  changes nothing but the scale of the results. sigma^2 is detached (a stop-gradient, like
     *  c0): the backward is the exact gradient with sigma^2 held fixed, so finite differences of
     *  the forward, which move sigma^2 too, match it only in the absolute mode. The default
     *  factor 0.1 comes from the README's temperature study. */
    EDKM_TEMPERATURE_SCALE_FREE = 1
} edkm_temperature_mode;

typedef struct edkm_layer_config {
    uint32_t struct_size;      /**< sizeof(edkm_layer_config); set by edkm_layer_config_init */
    uint32_t bits;             /**< k = 2^bits centroids, 1..8; default 4 */
    uint32_t cluster_dim;      /**< d: weights clustered as d-vectors of consecutive elements of a
                                    row; 1..64, must divide the row length; default 1 */
    uint32_t group_size;       /**< 0 = one LUT for the tensor (default); g > 0 = a LUT per group of
                                    g consecutive rows (shape[0] must be divisible by g) */
    uint32_t max_iterations;   /**< DKM iterations per forward, 1..64; default 3 */
    int32_t init;              /**< an edkm_init; default EDKM_INIT_AUTO */
    double tau;                /**< softmax temperature (> 0, finite), or NaN = unset: the
                                    temperature mode's default (since 0.4; what
                                    edkm_layer_config_init writes). Scale-free mode: a factor of
                                    each group's k-means distortion, default 0.1 (chosen by the
                                    temperature study, docs/temperature.md). Absolute mode: squared
                                    weight units, default 1e-4 (coremltools'). A tau whose
                                    reciprocal overflows (absolute below ~5.6e-309, or a
                                    scale-free factor times a distortion that small) gives
                                    EDKM_ERR_INVALID_ARGUMENT (at create, or at the forward) */
    double epsilon;            /**< early stop when |inertia change| <= epsilon (>= 0; scale-free:
                                    times the distortion and the group's vectors), or NaN = unset
                                    (since 0.4): default 1e-4 in both modes */
    double zero_threshold;     /**< attention clamped from below at this value (>= 0); default 1e-7 */
    double prune_threshold;    /**< subtracted from the distance to centroid 0 (>= 0; scale-free:
                                    times the distortion), or NaN = unset (since 0.4): default 1e-7
                                    in both modes */
    int32_t algorithm;         /**< experimental tier: an edkm_algorithm (see the end of this
                                    file); default EDKM_ALGORITHM_AUTO (0) */
    int32_t f32_key_dtype;     /**< experimental tier: f32 weights on the UNIQUIFIED path are keyed
                                    by rounding to this
                                    16-bit dtype (EDKM_DTYPE_F16 or BF16); EDKM_DTYPE_F32 (default)
                                    = no rounding, f32 weights take the DENSE path */
    uint64_t seed;             /**< seed of k-means++; default 0x5eed */
    int32_t temperature_mode;  /**< an edkm_temperature_mode; default EDKM_TEMPERATURE_SCALE_FREE
                                    (since 0.2) */
    uint32_t reserved;         /**< must be 0 (else EDKM_ERR_INVALID_ARGUMENT) (since 0.2) */
    /* Since 0.4 (a caller's struct_size that ends before a field leaves it at its default). */
    uint32_t enforce_zero;     /**< 1 = centroid 0 of every LUT is fixed at zero (coremltools'
                                    enforce_zero): the initial centroid nearest zero becomes 0 and
                                    moves to index 0, and every DKM iteration resets c_0 = 0 (no
                                    gradient through it). With prune_threshold 0, coremltools'
                                    keep-sparsity rule (since 0.6): in the soft k-means every vector
                                    with a nonzero element has the constant distance 1/zero_threshold
                                    to centroid 0 (scale-free mode: in units of the distortion; no
                                    gradient through it), exact zeros their ordinary distance;
                                    export labels stay the plain argmin (docs/keep-sparsity.md).
                                    0 (default) = off; other values EDKM_ERR_INVALID_ARGUMENT */
    int32_t lut_dtype;         /**< an edkm_lut_dtype: EDKM_LUT_F32 (default) keeps the centroids
                                    float; EDKM_LUT_INT8 / EDKM_LUT_UINT8 fake-quantize each LUT after
                                    every DKM iteration (forward) with one scale per LUT, the
                                    straight-through estimator in the backward (see edkm_lut_dtype) */
    /* Since 0.5. */
    int32_t channel_scale;     /**< an edkm_channel_scale: EDKM_CHANNEL_SCALE_NONE (default) or a
                                    per-output-channel scale (coremltools' enable_per_channel_scale
                                    with its per_channel_scaling_factor_scheme; see
                                    edkm_channel_scale); other values EDKM_ERR_INVALID_ARGUMENT */
} edkm_layer_config;

/**
 * LUT quantization inside the DKM iterations (edkm_layer_config.lut_dtype, since 0.4). After each
 * centroid update every LUT (a group's k x d centroids c) is replaced by its fake-quantized values,
 * with one scale per LUT derived from the LUT's own range (so no value overflows the type):
 *   INT8:  symmetric, s = max|c| / 127, q = clamp(round(c / s), -128, 127), c <- q s;
 *   UINT8: affine, lo = min(min c, 0), hi = max(max c, 0), s = (hi - lo) / 255,
 *          z = clamp(round(-lo / s), 0, 255), q = clamp(round(c / s) + z, 0, 255), c <- (q - z) s;
 * (round = to nearest even; s = 1 when the range is 0). The backward treats the quantizer as the
 * identity (straight-through, as torch's FakeQuantize inside its range). With enforce_zero, c_0 is
 * set to zero before the quantization (zero is exact in both types), so the final LUT lies on the
 * grid of its own scale and zero point (what a Core ML export quantizes it with).
 */
typedef enum edkm_lut_dtype {
    EDKM_LUT_F32 = 0,
    EDKM_LUT_INT8 = 1,
    EDKM_LUT_UINT8 = 2
} edkm_lut_dtype;

/**
 * Per-output-channel scale (edkm_layer_config.channel_scale, since 0.5; coremltools'
 * enable_per_channel_scale). Row r of the weights (shape[0] rows, channel axis 0) has one factor
 * s_r > 0; the layer clusters w / s (rounded to the weights' dtype) and returns
 * w~ = s_r f(w / s), f the clustering. The factors are constants (as coremltools, which computes
 * them once): the backward is dL/dw = (1 / s_r) J_f^T (s_r dL/dw~), with no gradient to s. They are
 * fixed from the first weights the layer sees (edkm_layer_forward, edkm_layer_init_centroids or
 * edkm_layer_export), unless edkm_layer_set_channel_scale set them before:
 *   MIN_MAX: s_r = (max_r w - min_r w) / 2 (coremltools' "min_max", its default);
 *   ABS_MAX: s_r = max_r |w| (coremltools' "abs").
 * A factor that would be 0 (a zero row; a constant row under MIN_MAX) is the row's largest
 * magnitude instead, or 1 for a zero row (coremltools divides by zero there). A quotient w / s_r
 * that is not finite in the weights' dtype (a factor set too small for its row) makes the call that
 * clusters it fail with EDKM_ERR_NON_FINITE, as does a gradient whose product s_r dL/dw~ overflows
 * float in the backward (nothing written; the saved state stays usable). The centroids, the
 * LUT of edkm_layer_export and the output of edkm_layer_unpack are in the scaled units: multiply
 * row r by s_r (edkm_layer_get_channel_scale) for the weights. Works with every group_size,
 * cluster_dim, algorithm and saved_mode, and (since 0.6) with edkm_layer_forward_shard, whose
 * ranks compute the factors of whole rows together (see there), and (since 0.7) with
 * edkm_layer_forward_histogram, whose caller keys w / s itself (see there).
 */
typedef enum edkm_channel_scale {
    EDKM_CHANNEL_SCALE_NONE = 0,
    EDKM_CHANNEL_SCALE_MIN_MAX = 1,
    EDKM_CHANNEL_SCALE_ABS_MAX = 2
} edkm_channel_scale;

/** Fills cfg with the defaults above and struct_size = sizeof(edkm_layer_config); tau, epsilon and
 *  prune_threshold unset (NaN) since 0.4, so they follow whatever temperature_mode the caller
 *  sets. NULL is a no-op. Returns: cannot fail. */
EDKM_API void edkm_layer_config_init(edkm_layer_config *cfg);

/**
 * Creates a layer for a weight tensor of the given shape (1 <= ndim <= 16; shape[0] = output rows;
 * every extent >= 1; at most 2^31 x 256 - 256 elements in all, else EDKM_ERR_SHAPE). Each partition
 * must hold at least 2^bits vectors (else EDKM_ERR_SHAPE).
 * cfg may be NULL (defaults). The layer has no centroids until
 * edkm_layer_init_centroids, edkm_layer_set_centroids or its first forward (which initialises
 * them from the weights with cfg->init).
 * Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE (runtime), EDKM_ERR_STRUCT_SIZE,
 * EDKM_ERR_INVALID_ARGUMENT (a config field out of range, or an enum value unknown),
 * EDKM_ERR_DTYPE (f32_key_dtype not an edkm_dtype), EDKM_ERR_SHAPE (ndim, an extent, the
 * element count, or a geometry the config does not fit).
 */
EDKM_API edkm_status edkm_layer_create(edkm_runtime *runtime, const edkm_layer_config *cfg,
                                       const int64_t *shape, size_t ndim, edkm_layer **out);
/** Releases the layer handle. NULL is a no-op. Its saved states stay valid. */
EDKM_API void edkm_layer_destroy(edkm_layer *layer);

/**
 * The configuration the layer runs with (since 0.4), every default resolved: unset thresholds
 * hold the values the temperature mode gave them (e.g. tau = 0.1 scale-free, 1e-4 absolute).
 * out->struct_size must be set by the caller (edkm_layer_config_init sets it); only the fields it
 * covers are written. Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, EDKM_ERR_STRUCT_SIZE.
 */
EDKM_API edkm_status edkm_layer_get_config(const edkm_layer *layer, edkm_layer_config *out);

/**
 * Number of floats in the layer's centroids: groups * 2^bits * cluster_dim, where groups =
 * shape[0] / group_size (1 when group_size is 0). Layout [group][centroid][dim].
 * Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE.
 */
EDKM_API edkm_status edkm_layer_centroid_count(const edkm_layer *layer, size_t *count);
/** Copies the current centroids (layout above) into out[count].
 *  Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, EDKM_ERR_SHAPE (count), EDKM_ERR_STATE
 *  (no centroids yet), EDKM_ERR_BUSY. */
EDKM_API edkm_status edkm_layer_get_centroids(const edkm_layer *layer, float *out, size_t count);
/** Replaces the centroids (layout above), e.g. to restore a checkpoint. Must be finite.
 *  Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, EDKM_ERR_SHAPE (count),
 *  EDKM_ERR_NON_FINITE, EDKM_ERR_BUSY. */
EDKM_API edkm_status edkm_layer_set_centroids(edkm_layer *layer, const float *centroids, size_t count);
/** Copies the channel scale factors (see edkm_channel_scale; since 0.5) into out[count], count =
 *  shape[0]. Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, EDKM_ERR_SHAPE (count),
 *  EDKM_ERR_INVALID_ARGUMENT (a layer with channel_scale NONE), EDKM_ERR_STATE (not fixed yet: no
 *  forward, init_centroids or export so far), EDKM_ERR_BUSY. */
EDKM_API edkm_status edkm_layer_get_channel_scale(const edkm_layer *layer, float *out, size_t count);
/** Replaces the channel scale factors (since 0.5), e.g. to restore a checkpoint or to fix them
 *  from weights the layer has not seen: count = shape[0] factors, each finite and > 0.
 *  Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, EDKM_ERR_SHAPE (count),
 *  EDKM_ERR_INVALID_ARGUMENT (a factor not finite or <= 0; a layer with channel_scale NONE),
 *  EDKM_ERR_BUSY. */
EDKM_API edkm_status edkm_layer_set_channel_scale(edkm_layer *layer, const float *scale, size_t count);
/** (Re)initialises the centroids from weights[count] (count = the tensor's element count).
 *  Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, EDKM_ERR_DTYPE, EDKM_ERR_SHAPE (count),
 *  EDKM_ERR_NON_FINITE, EDKM_ERR_BUSY, EDKM_ERR_OUT_OF_MEMORY. */
EDKM_API edkm_status edkm_layer_init_centroids(edkm_layer *layer, const void *weights,
                                               edkm_dtype dtype, size_t count);

/**
 * Training forward. weights: count elements of `dtype` (count = the tensor's element count);
 * out: count elements of out_dtype (EDKM_DTYPE_F32, or the weights' dtype), written with the
 * soft-clustered weights w~ = A^{T-1} c^T (times the row's factor with a channel scale, see
 * edkm_channel_scale). Internal arithmetic is float64 on the uniquified path and
 * float64 accumulation on the dense path, whatever the dtypes.
 * The layer's centroids become c^T (the warm start of the next forward).
 * saved: NULL = nothing is kept (no backward possible); otherwise *saved receives a new saved state
 * (release with edkm_saved_state_destroy), stored as the runtime's saved_mode says.
 * Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE,
 * EDKM_ERR_DTYPE (dtype; out_dtype neither F32 nor the weights'; EDKM_ALGORITHM_UNIQUIFIED
 * without 16-bit keys), EDKM_ERR_SHAPE (count), EDKM_ERR_NON_FINITE (weights),
 * EDKM_ERR_INVALID_ARGUMENT (a scale-free temperature too small for these weights), EDKM_ERR_BUSY,
 * EDKM_ERR_BUDGET_EXCEEDED, EDKM_ERR_OUT_OF_MEMORY, EDKM_ERR_ALLOCATOR.
 */
EDKM_API edkm_status edkm_layer_forward(edkm_layer *layer, const void *weights, edkm_dtype dtype,
                                        size_t count, void *out, edkm_dtype out_dtype,
                                        edkm_saved_state **saved);

/**
 * Training forward on weights sharded across the communicator's ranks (each rank holds a slice,
 * as with FSDP / ZeRO-3): weights[0 .. count) are the tensor's elements [offset, offset + count)
 * and out[0 .. count) receives their w~. A collective: every rank calls it (slices may differ in
 * size, including 0). The ranks all-reduce the 65,536-entry key histogram (and backward the
 * U-entry gradient sums), run the same O(U k T) math and write only their slice, so per-rank
 * memory and traffic do not grow with N: (65,538 + U + 2) x 8 bytes per forward+backward.
 * Requires per-tensor granularity, cluster_dim 1 and 16-bit keys. A rank whose slice holds NaN/Inf
 * makes every rank fail with EDKM_ERR_NON_FINITE. The saved state's backward takes this rank's
 * slice of grad_output, grad_input and weights (count elements); such a state keeps only the
 * histogram whatever the saved_mode, so its backward needs the weights unless keep_weights was
 * set (NULL weights give EDKM_ERR_STATE). (since 0.2)
 * With a channel scale (since 0.6; see edkm_channel_scale) a slice may split rows anywhere: each
 * forward first all-gathers 16 bytes per rank (whether the rank's layer holds factors, and their
 * hash); while no rank holds factors it all-gathers every rank's smallest and largest element of
 * each row within its slice (rows x 8 bytes per rank), from which every rank derives the same
 * factors, bit for bit those of the whole tensor (a row no slice touches gets 1). They are kept
 * once the forward succeeds. Ranks of which only some hold factors, or different ones, all fail
 * with EDKM_ERR_STATE (set the same factors on every rank with edkm_layer_set_channel_scale).
 * Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE,
 * EDKM_ERR_DTYPE (dtype; out_dtype neither F32 nor the weights'; no 16-bit keys or cluster_dim > 1),
 * EDKM_ERR_SHAPE (a slice outside the tensor; every slice empty), EDKM_ERR_NON_FINITE (weights of
 * any rank), EDKM_ERR_INVALID_ARGUMENT (group_size > 0; a scale-free temperature too small for
 * these weights), EDKM_ERR_STATE (ranks disagree on the channel scale factors, since 0.6),
 * EDKM_ERR_COMMUNICATOR, EDKM_ERR_BUSY, EDKM_ERR_BUDGET_EXCEEDED,
 * EDKM_ERR_OUT_OF_MEMORY, EDKM_ERR_ALLOCATOR.
 */
EDKM_API edkm_status edkm_layer_forward_shard(edkm_layer *layer, const void *weights, edkm_dtype dtype,
                                              size_t offset, size_t count, void *out, edkm_dtype out_dtype,
                                              edkm_saved_state **saved);

/** Per-layer figures of the last forward. */
typedef struct edkm_layer_stats {
    uint32_t struct_size;         /**< in: sizeof(edkm_layer_stats) */
    uint32_t iterations;          /**< DKM iterations run by the last forward (max over groups) */
    uint64_t forwards;            /**< forwards run since create */
    uint64_t distinct_values;     /**< distinct keys U of the last forward (sum over groups; 0 on the
                                       dense path) */
    int32_t algorithm;            /**< the edkm_algorithm the last forward used */
    int32_t reserved;
    double inertia;               /**< sum over weights of the squared distance to the nearest
                                       centroid, at the last iteration (sum over groups) */
    double effective_tau;         /**< the temperature the last forward used (mean over groups)
                                       (since 0.2) */
    double attention_entropy;     /**< mean over weights (vectors) of the entropy, in nats, of the
                                       last forward's final softmax row: 0 = hard assignment,
                                       ln(2^bits) = uniform; near ln(2^bits) means too soft
                                       (since 0.2) */
} edkm_layer_stats;

/** Writes the statistics of the last forward. out->struct_size must be set by the caller.
 *  Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, EDKM_ERR_STRUCT_SIZE, EDKM_ERR_BUSY. */
EDKM_API edkm_status edkm_layer_get_stats(const edkm_layer *layer, edkm_layer_stats *out);

/* ============================ Saved state ============================ */

/**
 * Backward: given grad_output = dL/dw~ (count elements of grad_dtype) writes grad_input = dL/dw
 * (count elements of grad_dtype) through every DKM iteration (no gradient to the initial
 * centroids). weights: the weights given to the forward (same dtype), needed in
 * EDKM_SAVED_HISTOGRAM mode (and for a state of edkm_layer_forward_shard in every mode) unless
 * keep_weights was set (then, and otherwise, it may be NULL; when given it is checked). NULL
 * weights where they are needed give EDKM_ERR_STATE; weights that differ from the forward's give
 * EDKM_ERR_WEIGHTS_CHANGED. A saved state supports one backward; a second gives EDKM_ERR_STATE.
 * Gradients are computed in float64 and rounded to grad_dtype: a value beyond its range becomes
 * +-Inf (an f16 gradient above 65,504, say), as in PyTorch, where a loss scaler detects it. A
 * non-finite grad_output is rejected with EDKM_ERR_NON_FINITE (nothing written; the state stays
 * usable). Its memory is released by edkm_saved_state_destroy (not by backward).
 * Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, EDKM_ERR_DTYPE, EDKM_ERR_SHAPE (count),
 * EDKM_ERR_NON_FINITE (grad_output), EDKM_ERR_STATE, EDKM_ERR_WEIGHTS_CHANGED, EDKM_ERR_BUSY,
 * EDKM_ERR_COMMUNICATOR (EDKM_SAVED_SHARD, and states of edkm_layer_forward_shard),
 * EDKM_ERR_OUT_OF_MEMORY.
 */
EDKM_API edkm_status edkm_saved_state_backward(edkm_saved_state *state, const void *grad_output,
                                               void *grad_input, edkm_dtype grad_dtype,
                                               size_t count, const void *weights);
/** Bytes this saved state holds (arena or heap; a deduplicated tensor counts fully in each).
 *  Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE. */
EDKM_API edkm_status edkm_saved_state_bytes(const edkm_saved_state *state, uint64_t *bytes);
/** Releases the saved state and its memory. NULL is a no-op. */
EDKM_API void edkm_saved_state_destroy(edkm_saved_state *state);

/* ============================ Export ============================ */

/**
 * Sizes of the hard-palettized export of the layer: lut_count = groups * 2^bits * cluster_dim
 * values; packed_bytes = groups * ceil(n_per_group / cluster_dim * bits / 8), where each group's
 * indices start on a byte boundary.
 * Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE.
 */
EDKM_API edkm_status edkm_layer_export_sizes(const edkm_layer *layer, size_t *lut_count,
                                             size_t *packed_bytes);

/**
 * Hard assignment: label = argmin_j (||w - c_j||^2 - prune_threshold * [j == 0]) per weight (per
 * d-vector), with the layer's current centroids. lut: lut_count values of lut_dtype (F32 or F16),
 * layout [group][centroid][dim]. packed: the labels of each group in element order, `bits` bits
 * each, least significant bit first: label n of a group occupies stream bits n*bits .. n*bits+bits-1,
 * stream bit b being bit (b % 8) of byte b / 8 of that group's slice.
 * An F16 LUT needs every centroid within the f16 range (|c| <= 65504 after rounding): otherwise
 * EDKM_ERR_INVALID_ARGUMENT and nothing is written (export with an F32 LUT).
 * edkm_layer_export_sized is the same with the LUT's size given (and checked).
 * Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE,
 * EDKM_ERR_DTYPE (dtype; lut_dtype neither F32 nor F16), EDKM_ERR_SHAPE (count, packed_bytes),
 * EDKM_ERR_NON_FINITE (weights), EDKM_ERR_STATE (no centroids yet), EDKM_ERR_INVALID_ARGUMENT (a
 * centroid beyond the F16 range), EDKM_ERR_BUSY, EDKM_ERR_OUT_OF_MEMORY (the divided copy of the
 * weights of a layer with a channel scale, since 0.5).
 */
EDKM_API edkm_status edkm_layer_export(const edkm_layer *layer, const void *weights, edkm_dtype dtype,
                                       size_t count, void *lut, edkm_dtype lut_dtype,
                                       uint8_t *packed, size_t packed_bytes);

/** edkm_layer_export with every buffer sized (since 0.4): lut holds lut_count values of lut_dtype
 *  and lut_count must equal edkm_layer_export_sizes' (else EDKM_ERR_SHAPE, nothing written).
 *  Returns: those of edkm_layer_export. */
EDKM_API edkm_status edkm_layer_export_sized(const edkm_layer *layer, const void *weights, edkm_dtype dtype,
                                             size_t count, void *lut, edkm_dtype lut_dtype, size_t lut_count,
                                             uint8_t *packed, size_t packed_bytes);

/**
 * The inverse of export (since 0.4): out[count] (F32, F16 or BF16) = lut[label] for every weight
 * (with a channel scale: in the scaled units, see edkm_channel_scale).
 * lut holds lut_count values of lut_dtype (F32 or F16), all finite (else EDKM_ERR_NON_FINITE,
 * nothing written); lut_count, packed_bytes and count must be exactly the layer's
 * (edkm_layer_export_sizes, the tensor's element count). Arguments in the order of
 * edkm_layer_export_sized: each buffer, its dtype, its size.
 * Returns: EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, EDKM_ERR_DTYPE (lut_dtype, out_dtype),
 * EDKM_ERR_SHAPE (lut_count, packed_bytes, count), EDKM_ERR_NON_FINITE (a LUT entry).
 */
EDKM_API edkm_status edkm_layer_unpack_sized(const edkm_layer *layer, const void *lut, edkm_dtype lut_dtype,
                                             size_t lut_count, const uint8_t *packed, size_t packed_bytes,
                                             void *out, edkm_dtype out_dtype, size_t count);

/** Deprecated since 0.4 (kept for programs built against 0.1-0.3): edkm_layer_unpack_sized
 *  without lut_count; lut must hold edkm_layer_export_sizes' lut_count values, which this call
 *  cannot check. Returns: those of edkm_layer_unpack_sized. */
EDKM_API edkm_status edkm_layer_unpack(const edkm_layer *layer, const void *lut, edkm_dtype lut_dtype,
                                       const uint8_t *packed, size_t packed_bytes,
                                       void *out, edkm_dtype out_dtype, size_t count);

/* ============================ Histogram form (since 0.3) ============================ */

/*
 * The device split, for trainers whose weights live on a GPU (or anywhere the library cannot
 * read them). With 16-bit keys (f16/bf16 weights: their bit patterns; f32 weights: the bit
 * patterns of their f16 or bf16 rounding), everything DKM does that grows with N is one of four
 * bandwidth-bound passes the trainer runs on its own device, next to the weights:
 *
 *     forward   counts = bincount(keys) per partition           -> edkm_layer_forward_histogram
 *               w~_i = soft_values[slot of key_i]                <- (a gather)
 *     backward  G = bincount(keys, weights = dL/dw~) per key     -> edkm_saved_state_backward_histogram
 *               dL/dw_i = g_i h[slot of key_i] + r[slot of key_i] <- (two gathers)
 *
 * Everything else (the O(U k T) soft k-means, its reverse mode, the saved state) is U-sized,
 * U <= 65,536 per partition, and runs here: per step only the histograms and the per-key tables
 * cross to the host (a few hundred kilobytes per tensor), never the weights. The results are
 * those of edkm_layer_forward / edkm_saved_state_backward on the uniquified algorithm (same
 * temperature modes, early stop, statistics): gathering soft_values back to the weights and
 * rounding each value to float then to the weights' dtype gives the buffer forward's out
 * bit for bit; g_i h + r (float64) is the buffer backward's gradient before its float32 rounding.
 *
 * Data parallelism: a trainer whose ranks hold slices of one tensor (FSDP / ZeRO-3) sums the
 * counts and the gradient sums over its ranks itself (all-reduce with NCCL, MPI, gloo: 65,536
 * counts per partition, then U sums) before these calls; every rank then gets the same
 * centroids and tables (no communicator is involved). Ranks that each hold the whole tensor
 * (plain data parallelism) pass their own counts and gradient sums unreduced: r is linear in G,
 * so averaging the resulting weight gradients over the ranks, as the trainer does anyway, is
 * exact.
 */

/**
 * Training forward of the histogram form (since 0.3).
 *
 * Layout: the layer's P = edkm_layer_centroid_count / (2^bits) LUT partitions (1 per tensor,
 * shape[0] / group_size with groups), each with its own histogram, concatenated:
 * partition p owns entries partition_offsets[p] ..< partition_offsets[p + 1] of keys, counts
 * and soft_values; partition_offsets has partitions + 1 entries, partition_offsets[0] = 0, and
 * total U = partition_offsets[partitions].
 * - key_dtype: EDKM_DTYPE_F16 or EDKM_DTYPE_BF16, the type the keys are bit patterns of (else
 *   EDKM_ERR_DTYPE).
 * - keys: per partition its distinct keys, strictly increasing as unsigned 16-bit integers (as
 *   bincount's nonzero bins come out); each a finite value of key_dtype (+0 and -0 are distinct
 *   keys). Duplicates or disorder: EDKM_ERR_INVALID_ARGUMENT; a NaN/Inf key: EDKM_ERR_NON_FINITE.
 * - counts: how many of the partition's elements have each key, whole numbers >= 1 as doubles
 *   (exact up to 2^53; what an all-reduce in float64 sums); NaN/Inf: EDKM_ERR_NON_FINITE;
 *   zero, negative or fractional: EDKM_ERR_INVALID_ARGUMENT; a partition's counts must add up
 *   to its element count (N / P) or EDKM_ERR_SHAPE.
 * - partitions must equal the layer's P, and every partition must have 1 ..= 65,536 keys
 *   (EDKM_ERR_SHAPE otherwise).
 * - soft_values: total U doubles, written with f_m = sum_j A^{T-1}_mj c^T_j, the soft value of
 *   each key (same order as keys).
 * - saved: NULL = nothing kept; otherwise *saved receives a saved state for
 *   edkm_saved_state_backward_histogram (not edkm_saved_state_backward). It holds only U-sized
 *   data in the runtime's arena whatever the saved_mode: every iteration's centroids and
 *   normalisers, the keys and counts (6 bytes per key), and under EDKM_SAVED_UNIQUIFY/SHARD the
 *   U x k softmax and distance tables (8 k bytes per key per iteration) as the buffer form keeps
 *   them; edkm_saved_state_bytes reports the total.
 * The layer must have cluster_dim 1 and an algorithm other than EDKM_ALGORITHM_DENSE
 * (EDKM_ERR_INVALID_ARGUMENT). A layer with a channel scale (since 0.7; before, refused) needs its
 * factors fixed first (edkm_layer_set_channel_scale, edkm_layer_init_centroids, a buffer forward or
 * an export; else EDKM_ERR_STATE): the keys are those of v = w / s_r rounded to the weights' dtype
 * (float32 division: v = round(float(w) / s_r)), the soft values and centroids are in the scaled
 * units, and the caller forms w~_i = s_r f[m_i] in float, then rounds to the weights' dtype (the
 * buffer forward's out bit for bit); in the backward it passes the sums of s_r dL/dw~ and forms
 * dL/dw_i = (g'_i h + r) / s_r with g'_i = s_r dL/dw~_i in float (the factors are constants).
 * A layer without centroids is initialised by optimal 1-D k-means
 * on the histogram (whatever cfg->init says; set or init the centroids first for another start).
 * The layer's centroids become c^T and edkm_layer_get_stats reports the forward as the buffer
 * form does (distinct_values = total U, algorithm = EDKM_ALGORITHM_UNIQUIFIED).
 * On any failure nothing is written, the layer is unchanged and the arena holds what it held
 * before. Returns: EDKM_ERR_NULL_POINTER (layer, keys, counts, partition_offsets or soft_values
 * NULL), EDKM_ERR_INVALID_HANDLE, EDKM_ERR_DTYPE, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_NON_FINITE,
 * EDKM_ERR_SHAPE (all as above), EDKM_ERR_STATE (a channel scale not fixed yet), EDKM_ERR_BUSY,
 * EDKM_ERR_BUDGET_EXCEEDED, EDKM_ERR_OUT_OF_MEMORY, EDKM_ERR_ALLOCATOR.
 */
EDKM_API edkm_status edkm_layer_forward_histogram(edkm_layer *layer, edkm_dtype key_dtype,
                                                  const uint16_t *keys, const double *counts,
                                                  const size_t *partition_offsets, size_t partitions,
                                                  double *soft_values, edkm_saved_state **saved);

/**
 * Backward of the histogram form (since 0.3). grad_sums: count doubles, count = the forward's
 * total U, in the forward's key order: G_m = the sum of dL/dw~_i over the elements i of key m
 * (after any all-reduce, see above). Writes h and r (count doubles each) such that
 *
 *     dL/dw_i = g_i * h[m_i] + r[m_i]       (g_i = dL/dw~_i, m_i = the slot of w_i's key)
 *
 * through every DKM iteration (no gradient to the initial centroids); h does not depend on G.
 * Returns: EDKM_ERR_NULL_POINTER (a NULL argument), EDKM_ERR_INVALID_HANDLE, EDKM_ERR_BUSY,
 * EDKM_ERR_SHAPE (count is not the forward's total U), EDKM_ERR_NON_FINITE (a NaN/Inf sum: the
 * state stays usable), EDKM_ERR_STATE (backward already ran, or the state came from a buffer
 * forward). On failure nothing is written. edkm_saved_state_backward on a state of this form
 * gives EDKM_ERR_STATE. Release the state with edkm_saved_state_destroy.
 */
EDKM_API edkm_status edkm_saved_state_backward_histogram(edkm_saved_state *state, const double *grad_sums,
                                                         size_t count, double *h, double *r);

/* ==================================================================================== */
/* ============================ Experimental tier ===================================== */
/* ==================================================================================== */

/*
 * The knobs of the eDKM memory ablation and of tuning. Values are ABI, like everything in this
 * header (never renumbered or reused), but what they do and what they cost may change in a minor
 * version, and some combinations only make sense for measurements (EDKM_SAVED_DKM keeps N x k maps
 * on the heap on purpose). Leave runtime_config.saved_mode, layer_config.algorithm and
 * layer_config.f32_key_dtype at the defaults *_config_init writes unless you are measuring.
 */

/** What a forward keeps for its backward: the rows of the eDKM ablation. Values are ABI. */
typedef enum edkm_saved_mode {
    /** Ours (default): only the k-sized centroid/normaliser vectors of every iteration and the
     *  U-sized value table; the weights are handed back to backward and checked by hash. */
    EDKM_SAVED_HISTOGRAM = 0,
    /** The DKM baseline: every iteration's N x k distance and attention maps and its copy of the
     *  weights, as autograd keeps them, on the ordinary heap (not the arena, so budget_bytes does
     *  not apply: heap_saved reports it; a failed heap allocation gives EDKM_ERR_OUT_OF_MEMORY).
     *  This mode and the
     *  next two keep N x k maps, so their forwards run EDKM_ALGORITHM_DENSE whatever the layer's
     *  algorithm (f32_key_dtype does not apply); edkm_layer_stats reports the algorithm run. */
    EDKM_SAVED_DKM = 1,
    /** DKM + marshal: the same tensors, in the offload arena. */
    EDKM_SAVED_MARSHAL = 2,
    /** + dedup: a tensor whose content is already in the arena is referenced, not copied. */
    EDKM_SAVED_DEDUP = 3,
    /** + uniquify: U x k attention tables and an N-entry 16-bit index list instead of N x k maps. */
    EDKM_SAVED_UNIQUIFY = 4,
    /** + shard: each rank keeps 1/world_size of the index list; backward all-gathers it.
     *  UNIQUIFY and SHARD need the uniquified algorithm (16-bit keys: f16/bf16 weights, or f32 with
     *  f32_key_dtype set; cluster_dim 1). A layer that runs EDKM_ALGORITHM_DENSE under them keeps
     *  one deduplicated copy of its weights instead (N x dtype bytes, not sharded);
     *  edkm_layer_stats.algorithm tells which ran. */
    EDKM_SAVED_SHARD = 5
} edkm_saved_mode;

/** Implementation of the forward and backward. Values are ABI. */
typedef enum edkm_algorithm {
    EDKM_ALGORITHM_AUTO = 0,        /**< UNIQUIFIED where possible (cluster_dim 1 and 16-bit keys) */
    EDKM_ALGORITHM_DENSE = 1,       /**< N x k maps, computed in bounded chunks */
    EDKM_ALGORITHM_UNIQUIFIED = 2   /**< on the value histogram: O(N) + O(U k T) */
} edkm_algorithm;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* EDKM_H */
