/* The inner loop of the exact 1-D k-means' dynamic programme (CentroidInitialization.optimal1D),
 * four split points at a time with AVX2. Every candidate's value is computed with the same
 * operations as the Swift loop (no contraction: there is no a * b + c in it), and the first
 * minimiser is the same as a sequential scan with a strict comparison, so the result is
 * bit-identical to the portable loop. Selected at run time with the other x86 kernels. */
#include "edkm_support.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("avx2")))
static long split_argmin_avx2(const double *prev, const double *s0, const double *s1, const double *s2, long lo, long hi,
                              long j, double *best_out) {
    const double s0j = s0[j], s1j = s1[j], s2j = s2[j];
    const __m256d zero = _mm256_setzero_pd(), inf = _mm256_set1_pd(__builtin_inf());
    const __m256d vs0j = _mm256_set1_pd(s0j), vs1j = _mm256_set1_pd(s1j), vs2j = _mm256_set1_pd(s2j);
    __m256d best = inf, best_idx = _mm256_set1_pd(-1.0);
    __m256d idx = _mm256_setr_pd((double)lo, (double)lo + 1, (double)lo + 2, (double)lo + 3);
    const __m256d four = _mm256_set1_pd(4.0);
    long i = lo;
    for (; i + 3 <= hi; i += 4) {
        __m256d w = _mm256_sub_pd(vs0j, _mm256_loadu_pd(s0 + i));
        __m256d m = _mm256_sub_pd(vs1j, _mm256_loadu_pd(s1 + i));
        __m256d q = _mm256_div_pd(_mm256_mul_pd(m, m), w);
        __m256d t = _mm256_sub_pd(_mm256_sub_pd(vs2j, _mm256_loadu_pd(s2 + i)), q);
        /* Swift.max(0, t) = t >= 0 ? t : 0; cost 0 where w <= 0 */
        __m256d c = _mm256_blendv_pd(zero, t, _mm256_cmp_pd(t, zero, _CMP_GE_OQ));
        c = _mm256_blendv_pd(c, zero, _mm256_cmp_pd(w, zero, _CMP_LE_OQ));
        __m256d v = _mm256_add_pd(_mm256_loadu_pd(prev + i), c);
        __m256d lt = _mm256_cmp_pd(v, best, _CMP_LT_OQ);
        best = _mm256_blendv_pd(best, v, lt);
        best_idx = _mm256_blendv_pd(best_idx, idx, lt);
        idx = _mm256_add_pd(idx, four);
    }
    /* Each lane holds its first minimiser; the first overall is the smallest index among the
     * lanes whose minimum equals the least lane minimum. */
    double b[4], bi[4];
    _mm256_storeu_pd(b, best);
    _mm256_storeu_pd(bi, best_idx);
    double bestv = __builtin_inf();
    long besti = lo;
    for (int l = 0; l < 4; l++) if (b[l] < bestv) bestv = b[l];
    if (bestv < __builtin_inf()) {
        double first = 0;
        int found = 0;
        for (int l = 0; l < 4; l++) {
            if (b[l] == bestv && (!found || bi[l] < first)) { first = bi[l]; found = 1; }
        }
        besti = (long)first;
        for (int l = 0; l < 4; l++) if ((double)besti == bi[l]) bestv = b[l];
    }
    for (; i <= hi; i++) {
        double w = s0j - s0[i], c = 0;
        if (!(w <= 0)) {
            double m = s1j - s1[i];
            double t = (s2j - s2[i]) - m * m / w;
            c = t >= 0 ? t : 0;
        }
        double v = prev[i] + c;
        if (v < bestv) { bestv = v; besti = i; }
    }
    *best_out = bestv;
    return besti;
}
#endif

long edkm_kernel_split_argmin(const double *prev, const double *s0, const double *s1, const double *s2, long lo, long hi,
                              long j, double *best) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (edkm_kernel_available()) return split_argmin_avx2(prev, s0, s1, s2, lo, hi, j, best);
#endif
    (void)prev; (void)s0; (void)s1; (void)s2; (void)lo; (void)hi; (void)j; (void)best;
    return -1;
}
