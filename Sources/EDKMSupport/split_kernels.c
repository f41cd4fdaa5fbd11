/* The inner loop of the exact 1-D k-means' dynamic programme (CentroidInitialization.optimal1D),
 * four split points at a time with AVX2. Every candidate's value is computed with the same
 * operations as the Swift loop (no contraction: there is no a * b + c in it), and the first
 * minimiser is the same as a sequential scan with a strict comparison, so the result is
 * bit-identical to the portable loop. Selected at run time with the other x86 kernels. */
#include "edkm_support.h"

#include <stdlib.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* prev[i] + cost(i, j), the Swift loop's value: cost 0 where w <= 0, else Swift.max(0, t) =
 * t >= 0 ? t : 0 for t = (s2[j] - s2[i]) - m * m / w. Branch-free (the division by w <= 0 is
 * computed and discarded). */
static inline double split_value(const double *prev, const double *s0, const double *s1, const double *s2, long i,
                                 long j) {
    double w = s0[j] - s0[i], m = s1[j] - s1[i];
    double t = (s2[j] - s2[i]) - m * m / w;
    double c = t >= 0 ? t : 0;
    return prev[i] + (w <= 0 ? 0 : c);
}

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
    double bestv = __builtin_inf();
    long besti = lo;
    if (hi - lo < 3) goto tail;
    for (; i + 3 <= hi; i += 4) {
        /* v = prev + (a cost >= 0) >= prev: a lane whose prev is not below its best cannot
         * improve it, so a block where no lane can is skipped (the same lanes' results). */
        __m256d p = _mm256_loadu_pd(prev + i);
        if (_mm256_movemask_pd(_mm256_cmp_pd(p, best, _CMP_LT_OQ)) == 0) {
            idx = _mm256_add_pd(idx, four);
            continue;
        }
        __m256d w = _mm256_sub_pd(vs0j, _mm256_loadu_pd(s0 + i));
        __m256d m = _mm256_sub_pd(vs1j, _mm256_loadu_pd(s1 + i));
        __m256d q = _mm256_div_pd(_mm256_mul_pd(m, m), w);
        __m256d t = _mm256_sub_pd(_mm256_sub_pd(vs2j, _mm256_loadu_pd(s2 + i)), q);
        /* Swift.max(0, t) = t >= 0 ? t : 0; cost 0 where w <= 0 */
        __m256d c = _mm256_blendv_pd(zero, t, _mm256_cmp_pd(t, zero, _CMP_GE_OQ));
        c = _mm256_blendv_pd(c, zero, _mm256_cmp_pd(w, zero, _CMP_LE_OQ));
        __m256d v = _mm256_add_pd(p, c);
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
tail:
    for (; i <= hi; i++) {
        double v = split_value(prev, s0, s1, s2, i, j);
        if (v < bestv) { bestv = v; besti = i; }
    }
    *best_out = bestv;
    return besti;
}

/* One node of the divide and conquer (the Swift SplitLayerSolver.node): the first minimiser for
 * j = mid over i in opt_lo...min(mid, opt_hi); cur[mid] = its value, split[mid] = it. */
__attribute__((target("avx2")))
static long split_node_avx2(const double *prev, const double *s0, const double *s1, const double *s2, double *cur,
                            int32_t *split, long mid, long opt_lo, long opt_hi) {
    long upper = mid < opt_hi ? mid : opt_hi;
    double best = __builtin_inf();
    long best_i = opt_lo;
    if (upper - opt_lo >= 4) {
        best_i = split_argmin_avx2(prev, s0, s1, s2, opt_lo, upper, mid, &best);
    } else if (opt_lo <= upper) {
        /* The short ranges of the deep levels (most nodes): branch-free selects. The first value
         * is taken as it is: a sequential scan from +inf keeps +inf and opt_lo for an infinite
         * value too, and a value is never NaN (prev is finite or +inf, the cost finite). */
        best = split_value(prev, s0, s1, s2, opt_lo, mid);
        for (long i = opt_lo + 1; i <= upper; i++) {
            double v = split_value(prev, s0, s1, s2, i, mid);
            int lt = v < best;
            best = lt ? v : best;
            best_i = lt ? i : best_i;
        }
    }
    cur[mid] = best;
    split[mid] = (int32_t)best_i;
    return best_i;
}

/* The nodes of the Swift SplitLayerSolver.solve (mid of [lo, hi], then the left half with
 * minimisers up to mid's, the right half with minimisers from mid's), level by level: the nodes
 * of one level depend only on their parents, so their divisions overlap in the pipeline instead
 * of waiting on each other as in the depth-first recursion. Every node sees the same range, so
 * the results are the same. `nodes` holds room for 2 (hi - lo + 2) ranges of 4 longs. */
__attribute__((target("avx2")))
static void split_solve_avx2(const double *prev, const double *s0, const double *s1, const double *s2, double *cur,
                             int32_t *split, long lo, long hi, long opt_lo, long opt_hi, long *nodes) {
    long *level = nodes, *next = nodes + 4 * (hi - lo + 2);
    long count = 0;
    if (lo <= hi) {
        level[0] = lo; level[1] = hi; level[2] = opt_lo; level[3] = opt_hi;
        count = 1;
    }
    while (count > 0) {
        long made = 0;
        for (long t = 0; t < count; t++) {
            const long *r = level + 4 * t;
            long mid = (r[0] + r[1]) / 2;
            long best_i = split_node_avx2(prev, s0, s1, s2, cur, split, mid, r[2], r[3]);
            if (r[0] <= mid - 1) {
                long *c = next + 4 * made++;
                c[0] = r[0]; c[1] = mid - 1; c[2] = r[2]; c[3] = best_i;
            }
            if (mid + 1 <= r[1]) {
                long *c = next + 4 * made++;
                c[0] = mid + 1; c[1] = r[1]; c[2] = best_i; c[3] = r[3];
            }
        }
        long *swap = level;
        level = next;
        next = swap;
        count = made;
    }
}
#endif

int edkm_kernel_split_solve(const double *prev, const double *s0, const double *s1, const double *s2, double *cur,
                            int32_t *split, long lo, long hi, long opt_lo, long opt_hi) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (edkm_kernel_available() && lo <= hi) {
        long *nodes = malloc(sizeof(long) * 8 * (size_t)(hi - lo + 2));
        if (!nodes) return 0;
        split_solve_avx2(prev, s0, s1, s2, cur, split, lo, hi, opt_lo, opt_hi, nodes);
        free(nodes);
        return 1;
    }
#endif
    (void)prev; (void)s0; (void)s1; (void)s2; (void)cur; (void)split; (void)lo; (void)hi; (void)opt_lo; (void)opt_hi;
    return 0;
}

long edkm_kernel_split_argmin(const double *prev, const double *s0, const double *s1, const double *s2, long lo, long hi,
                              long j, double *best) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (edkm_kernel_available()) return split_argmin_avx2(prev, s0, s1, s2, lo, hi, j, best);
#endif
    (void)prev; (void)s0; (void)s1; (void)s2; (void)lo; (void)hi; (void)j; (void)best;
    return -1;
}
