/* Variants of the histogram path's O(N) key sweeps, timed alone on LLM-like f16 keys: the
 * evidence behind the choices in docs/speed.md ("The key sweeps: what was tried"). Each variant
 * runs over 2^24 keys in items of 2^20 (a 4096 x 4096 per-tensor layer), one thread, CPU time
 * of the thread, median of 5 rounds; "memcpy 4 B/weight" is the same-run yardstick.
 *
 *   clang -O2 -o /tmp/key_pass_variants benchmarks/key_pass_variants.c -lm
 *   nice -n 10 /tmp/key_pass_variants
 *
 * Not part of the library or its tests. */
#define _GNU_SOURCE
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N (1 << 24)
#define ITEM (1 << 20)
#define ROUNDS 5
#define AVX __attribute__((target("avx2,f16c,fma"), noinline))

static double cpu_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}
static uint64_t rng_state = 12345;
static uint64_t rng(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double gauss(void) {
    double a = ((rng() >> 11) + 1) * 0x1p-53, b = (rng() >> 11) * 0x1p-53;
    return sqrt(-2 * log(a)) * cos(6.283185307179586 * b);
}

/* The previous content hash: two lanes, a multiply-xorshift chain per 16 bytes. */
static inline uint64_t mix(uint64_t h, uint64_t v) {
    uint64_t x = (h ^ v) * 0x9E3779B97F4A7C15ull;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    return x ^ (x >> 32);
}
#define KEY(lo, hi, j) ((uint16_t)(((j) < 4 ? (lo) : (hi)) >> (16 * ((j) & 3))))

static uint64_t sink;

AVX static void count_plain(const uint16_t *k, size_t n, uint32_t *c) {
    for (size_t e = 0; e < n; e += 8) {
        uint64_t lo, hi;
        memcpy(&lo, k + e, 8), memcpy(&hi, k + e + 4, 8);
        for (int j = 0; j < 8; j++) c[KEY(lo, hi, j)] += 1;
    }
}
AVX static void count_chain_hash(const uint16_t *k, size_t n, uint32_t *c) {
    uint64_t a = 1, b = 2;
    for (size_t e = 0; e < n; e += 8) {
        uint64_t lo, hi;
        memcpy(&lo, k + e, 8), memcpy(&hi, k + e + 4, 8);
        uint64_t x = mix(a, lo), y = mix(b, hi);
        __asm__("" : "+r"(x), "+r"(y));
        a = x, b = y;
        for (int j = 0; j < 8; j++) c[KEY(lo, hi, j)] += 1;
    }
    sink += a ^ b;
}
AVX static void count_lane_hash(const uint16_t *k, size_t n, uint32_t *c) {
    __m256i acc = _mm256_setzero_si256(), key = _mm256_set1_epi64x(3);
    for (size_t e = 0; e < n; e += 16) {
        __m256i d = _mm256_loadu_si256((const __m256i *)(k + e)), x = _mm256_xor_si256(d, key);
        acc = _mm256_add_epi64(acc, _mm256_add_epi64(_mm256_shuffle_epi32(d, 0xB1), _mm256_mul_epu32(x, _mm256_srli_epi64(x, 32))));
        key = _mm256_add_epi64(key, _mm256_set1_epi64x(0x9E3779B97F4A7C15ll));
        for (int h = 0; h < 16; h += 8) {
            uint64_t lo, hi;
            memcpy(&lo, k + e + h, 8), memcpy(&hi, k + e + h + 4, 8);
            for (int j = 0; j < 8; j++) c[KEY(lo, hi, j)] += 1;
        }
    }
    sink += (uint64_t)_mm256_extract_epi64(acc, 0);
}
/* Two interleaved sub-tables (breaks store-to-load chains on repeated keys). */
AVX static void count_two_tables(const uint16_t *k, size_t n, uint32_t *c) {
    uint32_t *c1 = c + 65536;
    for (size_t e = 0; e < n; e += 8) {
        uint64_t lo, hi;
        memcpy(&lo, k + e, 8), memcpy(&hi, k + e + 4, 8);
        for (int j = 0; j < 8; j += 2) c[KEY(lo, hi, j)] += 1, c1[KEY(lo, hi, j + 1)] += 1;
    }
}
/* 16-bit counters (half the cache footprint) with a 32-bit overflow table. */
AVX static void count_u16(const uint16_t *k, size_t n, uint32_t *c) {
    uint16_t *c16 = (uint16_t *)(c + 65536);
    for (size_t e = 0; e < n; e += 8) {
        uint64_t lo, hi;
        memcpy(&lo, k + e, 8), memcpy(&hi, k + e + 4, 8);
        for (int j = 0; j < 8; j++) {
            uint16_t key = KEY(lo, hi, j);
            if (__builtin_expect(++c16[key] == 0, 0)) c[key]++;
        }
    }
}
AVX static void sums_f64(const uint16_t *k, const uint16_t *g, size_t n, double *s) {
    float v[8];
    for (size_t e = 0; e < n; e += 8) {
        uint64_t lo, hi;
        memcpy(&lo, k + e, 8), memcpy(&hi, k + e + 4, 8);
        _mm256_storeu_ps(v, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + e))));
        for (int j = 0; j < 8; j++) s[KEY(lo, hi, j)] += (double)v[j];
    }
}
AVX static void sums_f64_two_tables(const uint16_t *k, const uint16_t *g, size_t n, double *s) {
    float v[8];
    double *s1 = s + 65536;
    for (size_t e = 0; e < n; e += 8) {
        uint64_t lo, hi;
        memcpy(&lo, k + e, 8), memcpy(&hi, k + e + 4, 8);
        _mm256_storeu_ps(v, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + e))));
        for (int j = 0; j < 8; j += 2) s[KEY(lo, hi, j)] += (double)v[j], s1[KEY(lo, hi, j + 1)] += (double)v[j + 1];
    }
}
/* f16 as int64 units of 2^-24 (exact), the library's fixed-point sums. */
AVX static void sums_fixed(const uint16_t *k, const uint16_t *g, size_t n, double *sd) {
    int64_t v[8], *s = (int64_t *)sd;
    const __m256d scale = _mm256_set1_pd(16777216.0), magic = _mm256_set1_pd(6755399441055744.0);
    for (size_t e = 0; e < n; e += 8) {
        uint64_t lo, hi;
        memcpy(&lo, k + e, 8), memcpy(&hi, k + e + 4, 8);
        __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + e)));
        __m256d a = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(f)), scale, magic);
        __m256d b = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)), scale, magic);
        _mm256_storeu_si256((__m256i *)v, _mm256_sub_epi64(_mm256_castpd_si256(a), _mm256_castpd_si256(magic)));
        _mm256_storeu_si256((__m256i *)(v + 4), _mm256_sub_epi64(_mm256_castpd_si256(b), _mm256_castpd_si256(magic)));
        for (int j = 0; j < 8; j++) s[KEY(lo, hi, j)] += v[j];
    }
}
AVX static void gather_scalar(const uint16_t *k, size_t n, const uint16_t *t, uint16_t *o) {
    for (size_t e = 0; e < n; e++) o[e] = t[k[e]];
}
AVX static void gather_avx2(const uint16_t *k, size_t n, const uint16_t *t, uint16_t *o) {
    const __m256i low = _mm256_set1_epi32(0xffff);
    for (size_t e = 0; e < n; e += 16) {
        __m256i k0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(k + e)));
        __m256i k1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(k + e + 8)));
        __m256i v0 = _mm256_and_si256(_mm256_i32gather_epi32((const int *)t, k0, 2), low);
        __m256i v1 = _mm256_and_si256(_mm256_i32gather_epi32((const int *)t, k1, 2), low);
        _mm256_storeu_si256((__m256i *)(o + e), _mm256_permute4x64_epi64(_mm256_packus_epi32(v0, v1), 0xd8));
    }
}

/* The gradient fma dL/dw = g h[key] + r[key] (f16 in and out). Now: (h, r) float32 pairs, 8 B/key,
 * read as 64-bit scalar loads and split by shuffles (kernels.c). */
static inline long long pair64(const float *hr, uint16_t key) {
    long long v;
    memcpy(&v, hr + 2 * (size_t)key, 8);
    return v;
}
AVX static void fma_pairs_f32(const uint16_t *k, const uint16_t *g, size_t n, const float *hr, uint16_t *o) {
    for (size_t e = 0; e < n; e += 8) {
        __m256 a = _mm256_castsi256_ps(_mm256_set_epi64x(pair64(hr, k[e + 3]), pair64(hr, k[e + 2]), pair64(hr, k[e + 1]),
                                                         pair64(hr, k[e])));
        __m256 b = _mm256_castsi256_ps(_mm256_set_epi64x(pair64(hr, k[e + 7]), pair64(hr, k[e + 6]), pair64(hr, k[e + 5]),
                                                         pair64(hr, k[e + 4])));
        __m256 h = _mm256_shuffle_ps(a, b, 0x88), r = _mm256_shuffle_ps(a, b, 0xdd);
        h = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(h), 0xd8));
        r = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(r), 0xd8));
        __m256 y = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + e))), h, r);
        _mm_storeu_si128((__m128i *)(o + e), _mm256_cvtps_ph(y, 0));
    }
}
/* Rejected candidate: (h, r) as two f16 in one 32-bit word, 4 B/key (half the table; h and r
 * rounded to f16, so not bit-identical). */
static inline int word32(const uint32_t *t, uint16_t key) { return (int)t[key]; }
AVX static void fma_pairs_f16(const uint16_t *k, const uint16_t *g, size_t n, const uint32_t *t, uint16_t *o) {
    const __m256i low = _mm256_set1_epi32(0xffff);
    for (size_t e = 0; e < n; e += 8) {
        __m256i w = _mm256_set_epi32(word32(t, k[e + 7]), word32(t, k[e + 6]), word32(t, k[e + 5]), word32(t, k[e + 4]),
                                     word32(t, k[e + 3]), word32(t, k[e + 2]), word32(t, k[e + 1]), word32(t, k[e]));
        __m256i hr16 = _mm256_packus_epi32(_mm256_and_si256(w, low), _mm256_srli_epi32(w, 16)); /* h0-3 r0-3 | h4-7 r4-7 */
        hr16 = _mm256_permute4x64_epi64(hr16, 0xd8);                                             /* h0-7 | r0-7 */
        __m256 h = _mm256_cvtph_ps(_mm256_castsi256_si128(hr16)), r = _mm256_cvtph_ps(_mm256_extracti128_si256(hr16, 1));
        __m256 y = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + e))), h, r);
        _mm_storeu_si128((__m128i *)(o + e), _mm256_cvtps_ph(y, 0));
    }
}

static int by_value(const void *a, const void *b) { return *(const double *)a < *(const double *)b ? -1 : 1; }

AVX int main(void) {
    uint16_t *keys = aligned_alloc(64, N * 2), *grad = aligned_alloc(64, N * 2), *out = aligned_alloc(64, N * 2);
    uint16_t *gtable = aligned_alloc(64, 2 * 65536 + 64);
    void *table = aligned_alloc(64, 2 * 65536 * 8);
    for (size_t i = 0; i < N; i++) {
        keys[i] = _cvtss_sh((float)(gauss() * 0.02), 0);  /* LLM-like: N(0, 0.02^2) */
        grad[i] = _cvtss_sh((float)(gauss() * 1e-3), 0);
    }
    for (size_t i = 0; i < N / 10000; i++) keys[rng() % N] = _cvtss_sh((float)(gauss() * 0.24), 0);  /* outliers */
    for (int i = 0; i < 65536 + 32; i++) gtable[i] = (uint16_t)(i * 7);
    float *hr = aligned_alloc(64, 65536 * 8);
    uint32_t *hr16 = aligned_alloc(64, 65536 * 4);
    for (int i = 0; i < 65536; i++) {
        hr[2 * i] = 1.0f + (float)(i & 255) / 1024.0f;
        hr[2 * i + 1] = (float)(i & 1023) * 1e-6f;
        hr16[i] = (uint32_t)_cvtss_sh(hr[2 * i], 0) | (uint32_t)_cvtss_sh(hr[2 * i + 1], 0) << 16;
    }
    enum { V = 13 };
    const char *names[V] = {"count, no hash", "count + chain hash (before)", "count + lane hash (now)",
                            "count, 2 sub-tables", "count, 16-bit counters", "f16 sums in float64",
                            "f16 sums, 2 float64 sub-tables", "f16 sums, int64 fixed point (now)",
                            "gather w~, scalar", "gather w~, AVX2 vpgatherdd",
                            "gradient fma, f32 (h, r) 8 B/key (now)", "gradient fma, f16 (h, r) 4 B/key",
                            "memcpy 4 B/weight"};
    double t[V][ROUNDS];
    for (int r = 0; r < ROUNDS; r++)
        for (int v = 0; v < V; v++) {
            double t0 = cpu_ms();
            for (size_t s = 0; s < N; s += ITEM) {
                if (v < 5) memset(table, 0, 2 * 65536 * 4);
                else if (v < 8) memset(table, 0, 2 * 65536 * 8);
                switch (v) {
                case 0: count_plain(keys + s, ITEM, table); break;
                case 1: count_chain_hash(keys + s, ITEM, table); break;
                case 2: count_lane_hash(keys + s, ITEM, table); break;
                case 3: count_two_tables(keys + s, ITEM, table); break;
                case 4: count_u16(keys + s, ITEM, table); break;
                case 5: sums_f64(keys + s, grad + s, ITEM, table); break;
                case 6: sums_f64_two_tables(keys + s, grad + s, ITEM, table); break;
                case 7: sums_fixed(keys + s, grad + s, ITEM, table); break;
                case 8: gather_scalar(keys + s, ITEM, gtable, out + s); break;
                case 9: gather_avx2(keys + s, ITEM, gtable, out + s); break;
                case 10: fma_pairs_f32(keys + s, grad + s, ITEM, hr, out + s); break;
                case 11: fma_pairs_f16(keys + s, grad + s, ITEM, hr16, out + s); break;
                default: memcpy(out + s, keys + s, ITEM * 2); __asm__ volatile("" ::"r"(out) : "memory");
                }
            }
            t[v][r] = cpu_ms() - t0;
        }
    printf("%-36s %s\n", "sweep over 2^24 f16 keys", "median CPU ms");
    for (int v = 0; v < V; v++) {
        qsort(t[v], ROUNDS, sizeof(double), by_value);
        printf("%-36s %8.2f\n", names[v], t[v][ROUNDS / 2]);
    }
    return (int)(sink & 0);
}
