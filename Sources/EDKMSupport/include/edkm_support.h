/* Internal C support for the Swift core (not API; hidden symbols). */
#ifndef EDKM_SUPPORT_H
#define EDKM_SUPPORT_H
#include <stddef.h>
#include <stdint.h>

#define EDKM_HIDDEN __attribute__((visibility("hidden")))

/* --- jemalloc (the library's private copy, je_ prefix), wrapped so Swift never sees its macros --- */
/** Creates a new arena; returns 0 and its index in *index, or jemalloc's error code. */
EDKM_HIDDEN int edkm_jem_arena_create(unsigned *index);
/** Destroys an arena and everything allocated in it; returns jemalloc's error code. */
EDKM_HIDDEN int edkm_jem_arena_destroy(unsigned index);
/** mallocx(size, MALLOCX_ARENA(index) | MALLOCX_TCACHE_NONE | MALLOCX_ALIGN(64)); NULL on failure. */
EDKM_HIDDEN void *edkm_jem_arena_alloc(unsigned index, size_t size);
/** sdallocx with the same flags. */
EDKM_HIDDEN void edkm_jem_arena_free(unsigned index, void *ptr, size_t size);
/** The usable size jemalloc would give to edkm_jem_arena_alloc(index, size) (nallocx). */
EDKM_HIDDEN size_t edkm_jem_arena_usable_size(unsigned index, size_t size);
/** Reads stats.arenas.<index>.{small.allocated, large.allocated, pactive * page}; returns 0 on success. */
EDKM_HIDDEN int edkm_jem_arena_stats(unsigned index, uint64_t *small_allocated, uint64_t *large_allocated,
                                    uint64_t *active_bytes);
/** 1 when jemalloc was built with statistics. */
EDKM_HIDDEN int edkm_jem_stats_enabled(void);

/* --- thread-local last-error message --- */
EDKM_HIDDEN void edkm_error_set(const char *message, size_t length);
EDKM_HIDDEN const char *edkm_error_get(void);

/* --- ordinary heap --- */
/** The bytes the C heap really holds for a block from malloc/posix_memalign (malloc_usable_size). */
EDKM_HIDDEN size_t edkm_heap_usable_size(void *ptr);

/* --- processor --- */
/** Number of processors this process may run on (sched_getaffinity), at least 1. */
EDKM_HIDDEN int edkm_available_cores(void);
/** Names the calling thread (at most 15 bytes are kept), as top, gdb and /proc show it. */
EDKM_HIDDEN void edkm_name_this_thread(const char *name);

/* --- element kernels with run-time ISA selection (kernels.c) --- */
/** out[i] = g[i] * hr[2 keys[i]] + hr[2 keys[i] + 1] in float32, g and out of dtype `type`
 *  (0 f32, 1 f16, 2 bf16; values finite). Returns 1 when run (AVX2 + F16C + FMA present), 0 when
 *  the caller must use its portable loop. */
EDKM_HIDDEN int edkm_kernel_gradients(int type, const uint16_t *keys, const void *grad, const float *hr, void *out,
                                      size_t n);
/** The O(N) sweeps of the histogram path over n keys (n a multiple of 16). When `state` is not
 *  NULL, every 32-byte block of keys is also absorbed into the content hash's lanes
 *  (ContentHash.ChunkHasher: state[0..3] the four accumulators, state[4..7] their keys).
 *  Each returns 1 when run (AVX2 + F16C + FMA present), 0 when the caller must use its portable loop;
 *  results are identical either way (same additions in element order). */
/** counts[keys[e]] += 1. */
EDKM_HIDDEN int edkm_kernel_count_keys(const uint16_t *keys, size_t n, uint32_t *counts, uint64_t *state);
/** sums[keys[e]] += (double)grad[e], grad of dtype `type` (0 f32, 1 f16, 2 bf16). */
EDKM_HIDDEN int edkm_kernel_scatter_gradients(int type, const uint16_t *keys, const void *grad, size_t n, double *sums,
                                              uint64_t *state);
/** sums[keys[e]] += grad[e] x 2^24 for f16 gradients (bit patterns), exactly, as int64 (every finite
 *  f16 is a whole number of 2^-24); *max_magnitude = max(*max_magnitude, grad[e] & 0x7fff) (NaN/Inf
 *  show as exponent bits 0x7c00; the sums are then meaningless). */
EDKM_HIDDEN int edkm_kernel_scatter_f16_units(const uint16_t *keys, const uint16_t *grad, size_t n, int64_t *sums,
                                              uint64_t *state, uint16_t *max_magnitude);
/** The histogram in a 65,536-entry count table: keys[m] (ascending) and counts[m] of its nonzero
 *  entries for m < the returned count, the table left zeroed (keys and counts need 65,536 + 8
 *  entries: whole runs of 8 are stored). Returns -1 when the caller must use its portable loop (the
 *  same result). */
EDKM_HIDDEN long edkm_kernel_extract_keys(uint32_t *table, uint16_t *keys, uint32_t *counts);
/** out[i] = (float)in[i] for binary16 bit patterns; returns 1 when run (F16C), else 0. */
EDKM_HIDDEN int edkm_kernel_f16_to_f32(const uint16_t *in, float *out, size_t n);
/** The first i in lo...hi (lo <= hi) minimising prev[i] + cost(i, j), cost(i, j) = 0 where
 *  w = s0[j] - s0[i] <= 0, else max(0, (s2[j] - s2[i]) - m * m / w) with m = s1[j] - s1[i] (one
 *  cluster's SSE from prefix sums); *best = that minimum (+inf when no value is below +inf, and
 *  then lo). Returns -1 when the caller must use its portable loop (no AVX2 + F16C + FMA, or
 *  forced off); the same result either way (split_kernels.c). */
EDKM_HIDDEN long edkm_kernel_split_argmin(const double *prev, const double *s0, const double *s1, const double *s2,
                                          long lo, long hi, long j, double *best);
/** One layer of that programme by divide and conquer over j in lo...hi with the minimiser's
 *  monotone range [opt_lo, opt_hi] (CentroidInitialization's SplitLayerSolver.solve): for every
 *  j, cur[j] and split[j] = the minimum and first minimiser over i in [opt range] clipped to j.
 *  Returns 0 when the caller must use its portable loop, 1 when done (the same results). */
EDKM_HIDDEN int edkm_kernel_split_solve(const double *prev, const double *s0, const double *s1, const double *s2,
                                        double *cur, int32_t *split, long lo, long hi, long opt_lo, long opt_hi);
/** The first i < n with (p[i] & mask) == mask, or -1 (the Inf/NaN scan of 16- and 32-bit
 *  weights; scan_kernels.c). */
EDKM_HIDDEN long edkm_first_all_bits_u16(const uint16_t *p, size_t n, uint16_t mask);
EDKM_HIDDEN long edkm_first_all_bits_u32(const uint32_t *p, size_t n, uint32_t mask);
/** Tests only: 1 = behave as on a CPU without the x86 kernels (not thread-safe; set while idle). */
EDKM_HIDDEN void edkm_kernel_force_portable(int on);
/** 1 when the x86 kernels above are available on this CPU (and not forced off). */
EDKM_HIDDEN int edkm_kernel_available(void);

#endif
