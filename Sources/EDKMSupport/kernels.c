/* Element kernels that need instructions Swift cannot enable per function (F16C, AVX2 gathers),
 * selected at run time: on a CPU without AVX2 + F16C + FMA (or not x86-64) they report "not
 * handled" and the Swift core runs its portable loop. Results are identical either way: every
 * value is one float32 fma (g * h + r) rounded once to the output type (round to nearest even). */
#include "edkm_support.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EDKM_HAVE_X86_KERNELS 1

/* Written by tests, read by every worker: a relaxed atomic. */
static int force_portable = 0;

/* Decided once. Threads that ask first at the same time race to fill the cache: it is a relaxed
 * atomic, and they compute and store the same value. */
static int cpu_has_avx2_f16c_fma(void) {
    static int cached = -1;
    if (__atomic_load_n(&force_portable, __ATOMIC_RELAXED)) return 0;
    int value = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (value < 0) {
        __builtin_cpu_init();
        value = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
        __atomic_store_n(&cached, value, __ATOMIC_RELAXED);
    }
    return value;
}

/* The (h, r) pair of a key as one 64-bit load. */
static inline long long hr_pair(const float *hr, uint16_t key) {
    long long v;
    __builtin_memcpy(&v, hr + 2 * (size_t)key, 8);
    return v;
}

/* g * h + r for 8 elements whose (h, r) pairs are hr[2 keys[i]], hr[2 keys[i] + 1]: the 8 pairs are read
 * as 64-bit scalar loads (cheaper than two 8-lane float gathers, which are microcoded on several
 * x86 cores) and split into h and r lanes by shuffles. */
__attribute__((target("avx2,f16c,fma")))
static inline __m256 fma_lookup8(const uint16_t *keys, __m256 g, const float *hr) {
    __m256 a = _mm256_castsi256_ps(_mm256_set_epi64x(hr_pair(hr, keys[3]), hr_pair(hr, keys[2]), hr_pair(hr, keys[1]),
                                                     hr_pair(hr, keys[0])));
    __m256 b = _mm256_castsi256_ps(_mm256_set_epi64x(hr_pair(hr, keys[7]), hr_pair(hr, keys[6]), hr_pair(hr, keys[5]),
                                                     hr_pair(hr, keys[4])));
    /* a = h0 r0 h1 r1 | h2 r2 h3 r3, b = h4 r4 h5 r5 | h6 r6 h7 r7 (per 128-bit lane) */
    __m256 h = _mm256_shuffle_ps(a, b, 0x88), r = _mm256_shuffle_ps(a, b, 0xdd); /* h0 h1 h4 h5 | h2 h3 h6 h7 */
    h = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(h), 0xd8));
    r = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(r), 0xd8));
    return _mm256_fmadd_ps(g, h, r);
}

__attribute__((target("avx2,f16c,fma")))
static void gradients_avx2(int type, const uint16_t *keys, const void *grad, const float *hr, void *out, size_t n) {
    size_t i = 0;
    if (type == 0) { /* f32 */
        const float *g = (const float *)grad;
        float *o = (float *)out;
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, fma_lookup8(keys + i, _mm256_loadu_ps(g + i), hr));
        for (; i < n; i++) o[i] = __builtin_fmaf(g[i], hr[2 * keys[i]], hr[2 * keys[i] + 1]);
    } else if (type == 1) { /* f16 */
        const uint16_t *g = (const uint16_t *)grad;
        uint16_t *o = (uint16_t *)out;
        for (; i + 8 <= n; i += 8) {
            __m256 gv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + i)));
            __m256 y = fma_lookup8(keys + i, gv, hr);
            _mm_storeu_si128((__m128i *)(o + i), _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT));
        }
        for (; i < n; i++) {
            float gv = _cvtsh_ss(g[i]);
            o[i] = _cvtss_sh(__builtin_fmaf(gv, hr[2 * keys[i]], hr[2 * keys[i] + 1]), _MM_FROUND_TO_NEAREST_INT);
        }
    } else { /* bf16: values are finite, so round-to-nearest-even by integer bias is exact */
        const uint16_t *g = (const uint16_t *)grad;
        uint16_t *o = (uint16_t *)out;
        const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
        for (; i + 8 <= n; i += 8) {
            __m256i gi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(g + i))), 16);
            __m256i y = _mm256_castps_si256(fma_lookup8(keys + i, _mm256_castsi256_ps(gi), hr));
            __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(y, 16), one);
            __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(y, bias), lsb), 16);
            __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
            _mm_storeu_si128((__m128i *)(o + i), packed);
        }
        for (; i < n; i++) {
            union { float f; uint32_t u; } gv, y;
            gv.u = (uint32_t)g[i] << 16;
            y.f = __builtin_fmaf(gv.f, hr[2 * keys[i]], hr[2 * keys[i] + 1]);
            o[i] = (uint16_t)((y.u + 0x7fff + ((y.u >> 16) & 1)) >> 16);
        }
    }
}

/* The content hash's lanes (ContentHash.ChunkHasher in the Swift core; must stay identical): four
 * 64-bit accumulators and their keys, state[0..3] and state[4..7]; per 32-byte block, lane j adds
 * rot32(w_j) + lo32(w_j ^ k_j) * hi32(w_j ^ k_j), then every key advances by HASH_KEY_STEP. */
#define HASH_KEY_STEP 0x9E3779B97F4A7C15ull

__attribute__((target("avx2,f16c,fma")))
static inline void hash_absorb(__m256i *acc, __m256i *key, __m256i block) {
    __m256i x = _mm256_xor_si256(block, *key);
    __m256i product = _mm256_mul_epu32(x, _mm256_srli_epi64(x, 32));
    *acc = _mm256_add_epi64(*acc, _mm256_add_epi64(_mm256_shuffle_epi32(block, 0xB1), product));
    *key = _mm256_add_epi64(*key, _mm256_set1_epi64x((long long)HASH_KEY_STEP));
}

/* The lanes from / to the state array (zeros / nothing when state is NULL: not hashing). */
__attribute__((target("avx2,f16c,fma")))
static inline void hash_load(const uint64_t *state, __m256i *acc, __m256i *key) {
    *acc = state ? _mm256_loadu_si256((const __m256i *)state) : _mm256_setzero_si256();
    *key = state ? _mm256_loadu_si256((const __m256i *)(state + 4)) : _mm256_setzero_si256();
}

__attribute__((target("avx2,f16c,fma")))
static inline void hash_store(uint64_t *state, __m256i acc, __m256i key) {
    if (!state) return;
    _mm256_storeu_si256((__m256i *)state, acc);
    _mm256_storeu_si256((__m256i *)(state + 4), key);
}

/* The 16-byte half of a block, 8 keys, as two little-endian 64-bit words (keys 0-3 in lo). */
static inline void load_half(const uint16_t *keys, uint64_t *lo, uint64_t *hi) {
    __builtin_memcpy(lo, keys, 8);
    __builtin_memcpy(hi, keys + 4, 8);
}

/* Key j (0-7) of a half block. */
#define BLOCK_KEY(lo, hi, j) ((uint16_t)(((j) < 4 ? (lo) : (hi)) >> (16 * ((j) & 3))))

__attribute__((target("avx2,f16c,fma")))
static void count_keys_avx2(const uint16_t *keys, size_t n, uint32_t *counts, uint64_t *state) {
    __m256i acc, key;
    hash_load(state, &acc, &key);
    for (size_t e = 0; e < n; e += 16) {
        if (state) hash_absorb(&acc, &key, _mm256_loadu_si256((const __m256i *)(keys + e)));
        for (int half = 0; half < 16; half += 8) {
            uint64_t lo, hi;
            load_half(keys + e + half, &lo, &hi);
            for (int j = 0; j < 8; j++) counts[BLOCK_KEY(lo, hi, j)] += 1;
        }
    }
    hash_store(state, acc, key);
}

/* The f16/bf16 gradients of 8 elements as float32 (exact). */
__attribute__((target("avx2,f16c,fma")))
static inline __m256 load_grad8(int type, const void *grad, size_t e) {
    if (type == 0) return _mm256_loadu_ps((const float *)grad + e);
    __m128i bits = _mm_loadu_si128((const __m128i *)((const uint16_t *)grad + e));
    if (type == 1) return _mm256_cvtph_ps(bits);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

__attribute__((target("avx2,f16c,fma")))
static void scatter_gradients_avx2(int type, const uint16_t *keys, const void *grad, size_t n, double *sums,
                                   uint64_t *state) {
    float g[16];
    __m256i acc, key;
    hash_load(state, &acc, &key);
    for (size_t e = 0; e < n; e += 16) {
        if (state) hash_absorb(&acc, &key, _mm256_loadu_si256((const __m256i *)(keys + e)));
        _mm256_storeu_ps(g, load_grad8(type, grad, e));
        _mm256_storeu_ps(g + 8, load_grad8(type, grad, e + 8));
        for (int half = 0; half < 16; half += 8) {
            uint64_t lo, hi;
            load_half(keys + e + half, &lo, &hi);
            for (int j = 0; j < 8; j++) sums[BLOCK_KEY(lo, hi, j)] += (double)g[half + j];
        }
    }
    hash_store(state, acc, key);
}

/* sums[keys[e]] += grad[e] in units of 2^-24 (every finite f16 value is a whole number of them,
 * below 2^40 in magnitude): each f16 is widened exactly to float64, scaled by 2^24 and turned into
 * an int64 by adding 1.5 x 2^52 (the sum is a whole number in [2^52, 2^53), so exact) and
 * subtracting that constant's bit pattern. *max_magnitude becomes the largest (grad[e] & 0x7fff)
 * seen (NaN/Inf: exponent bits all set; the caller then discards the sums). */
__attribute__((target("avx2,f16c,fma")))
static void scatter_f16_units_avx2(const uint16_t *keys, const uint16_t *grad, size_t n, int64_t *sums,
                                   uint64_t *state, uint16_t *max_magnitude) {
    int64_t v[16];
    uint16_t lanes_max[8];
    __m128i largest = _mm_setzero_si128();
    const __m128i magnitude_bits = _mm_set1_epi16(0x7fff);
    const __m256d scale = _mm256_set1_pd(16777216.0), magic = _mm256_set1_pd(6755399441055744.0);
    __m256i acc, key;
    hash_load(state, &acc, &key);
    for (size_t e = 0; e < n; e += 16) {
        if (state) hash_absorb(&acc, &key, _mm256_loadu_si256((const __m256i *)(keys + e)));
        for (int half = 0; half < 16; half += 8) {
            __m128i bits = _mm_loadu_si128((const __m128i *)(grad + e + half));
            largest = _mm_max_epu16(largest, _mm_and_si128(bits, magnitude_bits));
            __m256 f = _mm256_cvtph_ps(bits);
            __m256d lo = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(f)), scale, magic);
            __m256d hi = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)), scale, magic);
            _mm256_storeu_si256((__m256i *)(v + half), _mm256_sub_epi64(_mm256_castpd_si256(lo), _mm256_castpd_si256(magic)));
            _mm256_storeu_si256((__m256i *)(v + half + 4), _mm256_sub_epi64(_mm256_castpd_si256(hi), _mm256_castpd_si256(magic)));
        }
        for (int half = 0; half < 16; half += 8) {
            uint64_t lo, hi;
            load_half(keys + e + half, &lo, &hi);
            for (int j = 0; j < 8; j++) sums[BLOCK_KEY(lo, hi, j)] += v[half + j];
        }
    }
    _mm_storeu_si128((__m128i *)lanes_max, largest);
    for (int j = 0; j < 8; j++)
        if (lanes_max[j] > *max_magnitude) *max_magnitude = lanes_max[j];
    hash_store(state, acc, key);
}

__attribute__((target("avx2,f16c")))
static void f16_to_f32_avx2(const uint16_t *in, float *out, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
    for (; i < n; i++) out[i] = _cvtsh_ss(in[i]);
}

/* For each 8-bit mask: the positions of its set bits, ascending, then zeros (the lanes a run of 8
 * table entries keeps when compacted). */
static const uint8_t compress_positions[256][8] = {
    {0,0,0,0,0,0,0,0}, {0,0,0,0,0,0,0,0}, {1,0,0,0,0,0,0,0}, {0,1,0,0,0,0,0,0}, {2,0,0,0,0,0,0,0}, {0,2,0,0,0,0,0,0}, {1,2,0,0,0,0,0,0}, {0,1,2,0,0,0,0,0},
    {3,0,0,0,0,0,0,0}, {0,3,0,0,0,0,0,0}, {1,3,0,0,0,0,0,0}, {0,1,3,0,0,0,0,0}, {2,3,0,0,0,0,0,0}, {0,2,3,0,0,0,0,0}, {1,2,3,0,0,0,0,0}, {0,1,2,3,0,0,0,0},
    {4,0,0,0,0,0,0,0}, {0,4,0,0,0,0,0,0}, {1,4,0,0,0,0,0,0}, {0,1,4,0,0,0,0,0}, {2,4,0,0,0,0,0,0}, {0,2,4,0,0,0,0,0}, {1,2,4,0,0,0,0,0}, {0,1,2,4,0,0,0,0},
    {3,4,0,0,0,0,0,0}, {0,3,4,0,0,0,0,0}, {1,3,4,0,0,0,0,0}, {0,1,3,4,0,0,0,0}, {2,3,4,0,0,0,0,0}, {0,2,3,4,0,0,0,0}, {1,2,3,4,0,0,0,0}, {0,1,2,3,4,0,0,0},
    {5,0,0,0,0,0,0,0}, {0,5,0,0,0,0,0,0}, {1,5,0,0,0,0,0,0}, {0,1,5,0,0,0,0,0}, {2,5,0,0,0,0,0,0}, {0,2,5,0,0,0,0,0}, {1,2,5,0,0,0,0,0}, {0,1,2,5,0,0,0,0},
    {3,5,0,0,0,0,0,0}, {0,3,5,0,0,0,0,0}, {1,3,5,0,0,0,0,0}, {0,1,3,5,0,0,0,0}, {2,3,5,0,0,0,0,0}, {0,2,3,5,0,0,0,0}, {1,2,3,5,0,0,0,0}, {0,1,2,3,5,0,0,0},
    {4,5,0,0,0,0,0,0}, {0,4,5,0,0,0,0,0}, {1,4,5,0,0,0,0,0}, {0,1,4,5,0,0,0,0}, {2,4,5,0,0,0,0,0}, {0,2,4,5,0,0,0,0}, {1,2,4,5,0,0,0,0}, {0,1,2,4,5,0,0,0},
    {3,4,5,0,0,0,0,0}, {0,3,4,5,0,0,0,0}, {1,3,4,5,0,0,0,0}, {0,1,3,4,5,0,0,0}, {2,3,4,5,0,0,0,0}, {0,2,3,4,5,0,0,0}, {1,2,3,4,5,0,0,0}, {0,1,2,3,4,5,0,0},
    {6,0,0,0,0,0,0,0}, {0,6,0,0,0,0,0,0}, {1,6,0,0,0,0,0,0}, {0,1,6,0,0,0,0,0}, {2,6,0,0,0,0,0,0}, {0,2,6,0,0,0,0,0}, {1,2,6,0,0,0,0,0}, {0,1,2,6,0,0,0,0},
    {3,6,0,0,0,0,0,0}, {0,3,6,0,0,0,0,0}, {1,3,6,0,0,0,0,0}, {0,1,3,6,0,0,0,0}, {2,3,6,0,0,0,0,0}, {0,2,3,6,0,0,0,0}, {1,2,3,6,0,0,0,0}, {0,1,2,3,6,0,0,0},
    {4,6,0,0,0,0,0,0}, {0,4,6,0,0,0,0,0}, {1,4,6,0,0,0,0,0}, {0,1,4,6,0,0,0,0}, {2,4,6,0,0,0,0,0}, {0,2,4,6,0,0,0,0}, {1,2,4,6,0,0,0,0}, {0,1,2,4,6,0,0,0},
    {3,4,6,0,0,0,0,0}, {0,3,4,6,0,0,0,0}, {1,3,4,6,0,0,0,0}, {0,1,3,4,6,0,0,0}, {2,3,4,6,0,0,0,0}, {0,2,3,4,6,0,0,0}, {1,2,3,4,6,0,0,0}, {0,1,2,3,4,6,0,0},
    {5,6,0,0,0,0,0,0}, {0,5,6,0,0,0,0,0}, {1,5,6,0,0,0,0,0}, {0,1,5,6,0,0,0,0}, {2,5,6,0,0,0,0,0}, {0,2,5,6,0,0,0,0}, {1,2,5,6,0,0,0,0}, {0,1,2,5,6,0,0,0},
    {3,5,6,0,0,0,0,0}, {0,3,5,6,0,0,0,0}, {1,3,5,6,0,0,0,0}, {0,1,3,5,6,0,0,0}, {2,3,5,6,0,0,0,0}, {0,2,3,5,6,0,0,0}, {1,2,3,5,6,0,0,0}, {0,1,2,3,5,6,0,0},
    {4,5,6,0,0,0,0,0}, {0,4,5,6,0,0,0,0}, {1,4,5,6,0,0,0,0}, {0,1,4,5,6,0,0,0}, {2,4,5,6,0,0,0,0}, {0,2,4,5,6,0,0,0}, {1,2,4,5,6,0,0,0}, {0,1,2,4,5,6,0,0},
    {3,4,5,6,0,0,0,0}, {0,3,4,5,6,0,0,0}, {1,3,4,5,6,0,0,0}, {0,1,3,4,5,6,0,0}, {2,3,4,5,6,0,0,0}, {0,2,3,4,5,6,0,0}, {1,2,3,4,5,6,0,0}, {0,1,2,3,4,5,6,0},
    {7,0,0,0,0,0,0,0}, {0,7,0,0,0,0,0,0}, {1,7,0,0,0,0,0,0}, {0,1,7,0,0,0,0,0}, {2,7,0,0,0,0,0,0}, {0,2,7,0,0,0,0,0}, {1,2,7,0,0,0,0,0}, {0,1,2,7,0,0,0,0},
    {3,7,0,0,0,0,0,0}, {0,3,7,0,0,0,0,0}, {1,3,7,0,0,0,0,0}, {0,1,3,7,0,0,0,0}, {2,3,7,0,0,0,0,0}, {0,2,3,7,0,0,0,0}, {1,2,3,7,0,0,0,0}, {0,1,2,3,7,0,0,0},
    {4,7,0,0,0,0,0,0}, {0,4,7,0,0,0,0,0}, {1,4,7,0,0,0,0,0}, {0,1,4,7,0,0,0,0}, {2,4,7,0,0,0,0,0}, {0,2,4,7,0,0,0,0}, {1,2,4,7,0,0,0,0}, {0,1,2,4,7,0,0,0},
    {3,4,7,0,0,0,0,0}, {0,3,4,7,0,0,0,0}, {1,3,4,7,0,0,0,0}, {0,1,3,4,7,0,0,0}, {2,3,4,7,0,0,0,0}, {0,2,3,4,7,0,0,0}, {1,2,3,4,7,0,0,0}, {0,1,2,3,4,7,0,0},
    {5,7,0,0,0,0,0,0}, {0,5,7,0,0,0,0,0}, {1,5,7,0,0,0,0,0}, {0,1,5,7,0,0,0,0}, {2,5,7,0,0,0,0,0}, {0,2,5,7,0,0,0,0}, {1,2,5,7,0,0,0,0}, {0,1,2,5,7,0,0,0},
    {3,5,7,0,0,0,0,0}, {0,3,5,7,0,0,0,0}, {1,3,5,7,0,0,0,0}, {0,1,3,5,7,0,0,0}, {2,3,5,7,0,0,0,0}, {0,2,3,5,7,0,0,0}, {1,2,3,5,7,0,0,0}, {0,1,2,3,5,7,0,0},
    {4,5,7,0,0,0,0,0}, {0,4,5,7,0,0,0,0}, {1,4,5,7,0,0,0,0}, {0,1,4,5,7,0,0,0}, {2,4,5,7,0,0,0,0}, {0,2,4,5,7,0,0,0}, {1,2,4,5,7,0,0,0}, {0,1,2,4,5,7,0,0},
    {3,4,5,7,0,0,0,0}, {0,3,4,5,7,0,0,0}, {1,3,4,5,7,0,0,0}, {0,1,3,4,5,7,0,0}, {2,3,4,5,7,0,0,0}, {0,2,3,4,5,7,0,0}, {1,2,3,4,5,7,0,0}, {0,1,2,3,4,5,7,0},
    {6,7,0,0,0,0,0,0}, {0,6,7,0,0,0,0,0}, {1,6,7,0,0,0,0,0}, {0,1,6,7,0,0,0,0}, {2,6,7,0,0,0,0,0}, {0,2,6,7,0,0,0,0}, {1,2,6,7,0,0,0,0}, {0,1,2,6,7,0,0,0},
    {3,6,7,0,0,0,0,0}, {0,3,6,7,0,0,0,0}, {1,3,6,7,0,0,0,0}, {0,1,3,6,7,0,0,0}, {2,3,6,7,0,0,0,0}, {0,2,3,6,7,0,0,0}, {1,2,3,6,7,0,0,0}, {0,1,2,3,6,7,0,0},
    {4,6,7,0,0,0,0,0}, {0,4,6,7,0,0,0,0}, {1,4,6,7,0,0,0,0}, {0,1,4,6,7,0,0,0}, {2,4,6,7,0,0,0,0}, {0,2,4,6,7,0,0,0}, {1,2,4,6,7,0,0,0}, {0,1,2,4,6,7,0,0},
    {3,4,6,7,0,0,0,0}, {0,3,4,6,7,0,0,0}, {1,3,4,6,7,0,0,0}, {0,1,3,4,6,7,0,0}, {2,3,4,6,7,0,0,0}, {0,2,3,4,6,7,0,0}, {1,2,3,4,6,7,0,0}, {0,1,2,3,4,6,7,0},
    {5,6,7,0,0,0,0,0}, {0,5,6,7,0,0,0,0}, {1,5,6,7,0,0,0,0}, {0,1,5,6,7,0,0,0}, {2,5,6,7,0,0,0,0}, {0,2,5,6,7,0,0,0}, {1,2,5,6,7,0,0,0}, {0,1,2,5,6,7,0,0},
    {3,5,6,7,0,0,0,0}, {0,3,5,6,7,0,0,0}, {1,3,5,6,7,0,0,0}, {0,1,3,5,6,7,0,0}, {2,3,5,6,7,0,0,0}, {0,2,3,5,6,7,0,0}, {1,2,3,5,6,7,0,0}, {0,1,2,3,5,6,7,0},
    {4,5,6,7,0,0,0,0}, {0,4,5,6,7,0,0,0}, {1,4,5,6,7,0,0,0}, {0,1,4,5,6,7,0,0}, {2,4,5,6,7,0,0,0}, {0,2,4,5,6,7,0,0}, {1,2,4,5,6,7,0,0}, {0,1,2,4,5,6,7,0},
    {3,4,5,6,7,0,0,0}, {0,3,4,5,6,7,0,0}, {1,3,4,5,6,7,0,0}, {0,1,3,4,5,6,7,0}, {2,3,4,5,6,7,0,0}, {0,2,3,4,5,6,7,0}, {1,2,3,4,5,6,7,0}, {0,1,2,3,4,5,6,7},
};

/* The nonzero entries of a 65,536-entry count table in key order: keys[m], counts[m] for m < the
 * returned count, the table left zeroed; runs of 8 entries, an all-zero run skipped by one test, the
 * others compacted by a permutation (8 lanes stored, so keys and counts need 8 entries of slack). */
__attribute__((target("avx2,f16c,fma")))
static long extract_keys_avx2(uint32_t *table, uint16_t *keys, uint32_t *counts) {
    long m = 0;
    const __m256i zero = _mm256_setzero_si256();
    for (long run = 0; run < 65536; run += 8) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(table + run));
        if (_mm256_testz_si256(v, v)) continue;
        int mask = ~_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, zero))) & 0xff;
        __m128i positions = _mm_loadl_epi64((const __m128i *)compress_positions[mask]);
        _mm256_storeu_si256((__m256i *)(counts + m), _mm256_permutevar8x32_epi32(v, _mm256_cvtepu8_epi32(positions)));
        _mm_storeu_si128((__m128i *)(keys + m), _mm_add_epi16(_mm_cvtepu8_epi16(positions), _mm_set1_epi16((short)run)));
        _mm256_storeu_si256((__m256i *)(table + run), zero);
        m += __builtin_popcount((unsigned)mask);
    }
    return m;
}
#endif

int edkm_kernel_gradients(int type, const uint16_t *keys, const void *grad, const float *hr, void *out, size_t n) {
#ifdef EDKM_HAVE_X86_KERNELS
    if (cpu_has_avx2_f16c_fma()) {
        gradients_avx2(type, keys, grad, hr, out, n);
        return 1;
    }
#endif
    (void)type; (void)keys; (void)grad; (void)hr; (void)out; (void)n;
    return 0;
}

int edkm_kernel_count_keys(const uint16_t *keys, size_t n, uint32_t *counts, uint64_t *state) {
#ifdef EDKM_HAVE_X86_KERNELS
    if (cpu_has_avx2_f16c_fma()) {
        count_keys_avx2(keys, n, counts, state);
        return 1;
    }
#endif
    (void)keys; (void)n; (void)counts; (void)state;
    return 0;
}

int edkm_kernel_scatter_gradients(int type, const uint16_t *keys, const void *grad, size_t n, double *sums,
                                  uint64_t *state) {
#ifdef EDKM_HAVE_X86_KERNELS
    if (cpu_has_avx2_f16c_fma()) {
        scatter_gradients_avx2(type, keys, grad, n, sums, state);
        return 1;
    }
#endif
    (void)type; (void)keys; (void)grad; (void)n; (void)sums; (void)state;
    return 0;
}

int edkm_kernel_scatter_f16_units(const uint16_t *keys, const uint16_t *grad, size_t n, int64_t *sums, uint64_t *state,
                                  uint16_t *max_magnitude) {
#ifdef EDKM_HAVE_X86_KERNELS
    if (cpu_has_avx2_f16c_fma()) {
        scatter_f16_units_avx2(keys, grad, n, sums, state, max_magnitude);
        return 1;
    }
#endif
    (void)keys; (void)grad; (void)n; (void)sums; (void)state; (void)max_magnitude;
    return 0;
}

int edkm_kernel_f16_to_f32(const uint16_t *in, float *out, size_t n) {
#ifdef EDKM_HAVE_X86_KERNELS
    if (cpu_has_avx2_f16c_fma()) {
        f16_to_f32_avx2(in, out, n);
        return 1;
    }
#endif
    (void)in; (void)out; (void)n;
    return 0;
}

long edkm_kernel_extract_keys(uint32_t *table, uint16_t *keys, uint32_t *counts) {
#ifdef EDKM_HAVE_X86_KERNELS
    if (cpu_has_avx2_f16c_fma()) return extract_keys_avx2(table, keys, counts);
#endif
    (void)table; (void)keys; (void)counts;
    return -1;
}

void edkm_kernel_force_portable(int on) {
#ifdef EDKM_HAVE_X86_KERNELS
    __atomic_store_n(&force_portable, on, __ATOMIC_RELAXED);
#else
    (void)on;
#endif
}

int edkm_kernel_available(void) {
#ifdef EDKM_HAVE_X86_KERNELS
    return cpu_has_avx2_f16c_fma();
#else
    return 0;
#endif
}
