/* Element kernels that need instructions Swift cannot enable per function (F16C, AVX2 gathers),
 * selected at run time: on a CPU without AVX2 + F16C + FMA (or not x86-64) they report "not
 * handled" and the Swift core runs its portable loop. Results are identical either way: every
 * value is one float32 fma (g * h + r) rounded once to the output type (round to nearest even). */
#include "edkm_support.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EDKM_HAVE_X86_KERNELS 1

static int force_portable = 0;

static int cpu_has_avx2_f16c_fma(void) {
    static int cached = -1;
    if (force_portable) return 0;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
    }
    return cached;
}

__attribute__((target("avx2,f16c,fma")))
static inline __m256 fma_lookup8(const uint16_t *keys, __m256 g, const float *hr) {
    __m256i idx = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)keys));
    __m256i idx2 = _mm256_slli_epi32(idx, 1);
    __m256 h = _mm256_i32gather_ps(hr, idx2, 4);
    __m256 r = _mm256_i32gather_ps(hr + 1, idx2, 4);
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

__attribute__((target("avx2,f16c")))
static void f16_to_f32_avx2(const uint16_t *in, float *out, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
    for (; i < n; i++) out[i] = _cvtsh_ss(in[i]);
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

void edkm_kernel_force_portable(int on) {
#ifdef EDKM_HAVE_X86_KERNELS
    force_portable = on;
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
