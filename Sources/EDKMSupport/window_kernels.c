/* The d = 1 windowed DKM passes (Sources/EDKMSwift/Clustering/Kernels/SoftKMeansKernel+Window.swift,
 * docs/windowed-dkm.md) built for AVX2 and selected at run time.
 *
 * Swift's x86-64 baseline is SSE2, so the Swift passes' SIMD4<Double> lanes take two registers and
 * two instructions per operation; here one __m256d holds the four rows. The lanes are the same four
 * consecutive rows, every lane sees the same operations in the same order (no FP contraction: this
 * file is compiled without FMA and with contraction off), the window of each four rows is chosen by
 * the same comparisons, e^x is VectorMath.windowExp operation for operation, the entropy's
 * logarithm is the same libm log per lane, and the lane sums are reduced as SIMD4.sum() does (lane 0
 * to 3 in order): the results are bit-identical to the Swift passes
 * (Tests/EDKMSwiftTests/WindowKernelDispatchTests.swift checks every pass both ways). */
#include "edkm_window_kernels.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#pragma STDC FP_CONTRACT OFF
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

/* Read by every worker, written by tests: relaxed atomics (no ordering is needed, only no torn or racing access). */
static int force_scalar = 0;

void edkm_window_kernels_force_scalar(int on) { __atomic_store_n(&force_scalar, on, __ATOMIC_RELAXED); }

/* VectorMath.windowExp, operation for operation: e^x = 2^n 2^(j/64) e^r with x = m ln2/64 + r,
 * m = round(64 x / ln2) = 64 n + j (0 <= j < 64), |r| <= ln2/128 (Cody-Waite, ln2/64 split in two);
 * e^r by its Taylor series to degree 5 in Horner form (truncation < 3.5e-17 relative), times the
 * table entry 2^(j/64) whose exponent field gets n added; 0 below -708. The reduction and the
 * scaling are split out so that two exps can interleave their Horner chains (`exp4x2`). */
static const double exp_64_log2e = 1.4426950408889634 * 64;  /* 64 / ln 2 */
static const double exp_ln2Hi_64 = 6.93147180369123816490e-01 / 64;
static const double exp_ln2Lo_64 = 1.90821492927058770002e-10 / 64;
static const double exp_shifter = 0x1.8p52;
/* The Horner coefficients after the leading 1/5!: 1/4!, 1/3!, 1/2!, 1, 1. */
static const double exp_coefficients[5] = {1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};

/* 2^(j/64), j = 0 ... 63, correctly rounded (VectorMath.windowExp reads this table too). */
static const double exp_table[64] = {
    0x1.0000000000000p+0, 0x1.02c9a3e778061p+0, 0x1.059b0d3158574p+0, 0x1.0874518759bc8p+0,
    0x1.0b5586cf9890fp+0, 0x1.0e3ec32d3d1a2p+0, 0x1.11301d0125b51p+0, 0x1.1429aaea92de0p+0,
    0x1.172b83c7d517bp+0, 0x1.1a35beb6fcb75p+0, 0x1.1d4873168b9aap+0, 0x1.2063b88628cd6p+0,
    0x1.2387a6e756238p+0, 0x1.26b4565e27cddp+0, 0x1.29e9df51fdee1p+0, 0x1.2d285a6e4030bp+0,
    0x1.306fe0a31b715p+0, 0x1.33c08b26416ffp+0, 0x1.371a7373aa9cbp+0, 0x1.3a7db34e59ff7p+0,
    0x1.3dea64c123422p+0, 0x1.4160a21f72e2ap+0, 0x1.44e086061892dp+0, 0x1.486a2b5c13cd0p+0,
    0x1.4bfdad5362a27p+0, 0x1.4f9b2769d2ca7p+0, 0x1.5342b569d4f82p+0, 0x1.56f4736b527dap+0,
    0x1.5ab07dd485429p+0, 0x1.5e76f15ad2148p+0, 0x1.6247eb03a5585p+0, 0x1.6623882552225p+0,
    0x1.6a09e667f3bcdp+0, 0x1.6dfb23c651a2fp+0, 0x1.71f75e8ec5f74p+0, 0x1.75feb564267c9p+0,
    0x1.7a11473eb0187p+0, 0x1.7e2f336cf4e62p+0, 0x1.82589994cce13p+0, 0x1.868d99b4492edp+0,
    0x1.8ace5422aa0dbp+0, 0x1.8f1ae99157736p+0, 0x1.93737b0cdc5e5p+0, 0x1.97d829fde4e50p+0,
    0x1.9c49182a3f090p+0, 0x1.a0c667b5de565p+0, 0x1.a5503b23e255dp+0, 0x1.a9e6b5579fdbfp+0,
    0x1.ae89f995ad3adp+0, 0x1.b33a2b84f15fbp+0, 0x1.b7f76f2fb5e47p+0, 0x1.bcc1e904bc1d2p+0,
    0x1.c199bdd85529cp+0, 0x1.c67f12e57d14bp+0, 0x1.cb720dcef9069p+0, 0x1.d072d4a07897cp+0,
    0x1.d5818dcfba487p+0, 0x1.da9e603db3285p+0, 0x1.dfc97337b9b5fp+0, 0x1.e502ee78b3ff6p+0,
    0x1.ea4afa2a490dap+0, 0x1.efa1bee615a27p+0, 0x1.f50765b6e4540p+0, 0x1.fa7c1819e90d8p+0,
};

const double *edkm_window_exp_table(void) { return exp_table; }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* AVX2 present and EDKM_WINDOW_KERNELS is not "scalar" (decided once). Workers of several layers
 * can ask first at the same time: the cache is a relaxed atomic, and threads that race to fill it
 * compute and store the same value. */
static int avx2_selected(void) {
    static int cached = -1;
    int value = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (value < 0) {
        __builtin_cpu_init();
        const char *env = getenv("EDKM_WINDOW_KERNELS");
        value = __builtin_cpu_supports("avx2") && !(env && strcmp(env, "scalar") == 0);
        __atomic_store_n(&cached, value, __ATOMIC_RELAXED);
    }
    return value;
}

int edkm_window_kernels_available(void) { return !__atomic_load_n(&force_scalar, __ATOMIC_RELAXED) && avx2_selected(); }

#define TARGET __attribute__((target("avx2")))
/* The per-group steps of the passes: inlined into each pass (a call per group of four rows costs a
 * frame and a vzeroupper). */
#define HOT TARGET __attribute__((always_inline))
typedef __m256d v4;

/* Softmax terms with x_j < -WINDOW_CUT are dropped (SoftKMeansKernel.windowCut). */
#define WINDOW_CUT 50.0
#define MAX_K 256

TARGET static inline v4 splat(double x) { return _mm256_set1_pd(x); }
TARGET static inline v4 zero4(void) { return _mm256_setzero_pd(); }
/* a where the mask is clear, b where it is set (SIMD4.replacing(with: b, where: mask)). */
TARGET static inline v4 pick(v4 a, v4 b, v4 mask) { return _mm256_blendv_pd(a, b, mask); }
TARGET static inline v4 less(v4 a, v4 b) { return _mm256_cmp_pd(a, b, _CMP_LT_OQ); }
/* SIMD4<Double>.sum(): -0 + lane 0 + lane 1 + lane 2 + lane 3, in that order. */
TARGET static inline double lane_sum(v4 a) {
    double l[4];
    _mm256_storeu_pd(l, a);
    double s = -0.0;
    for (int i = 0; i < 4; i++) s += l[i];
    return s;
}

/* x = m ln2/64 + r: returns r, and in *t the shifted m (m sits in its low bits). */
TARGET static inline v4 exp_reduce(v4 x, v4 *t) {
    v4 clamped = pick(x, splat(-708), less(x, splat(-708)));
    clamped = pick(clamped, splat(709), _mm256_cmp_pd(clamped, splat(709), _CMP_GT_OQ));
    *t = _mm256_add_pd(_mm256_mul_pd(clamped, splat(exp_64_log2e)), splat(exp_shifter));
    v4 m = _mm256_sub_pd(*t, splat(exp_shifter));
    return _mm256_sub_pd(_mm256_sub_pd(clamped, _mm256_mul_pd(m, splat(exp_ln2Hi_64))), _mm256_mul_pd(m, splat(exp_ln2Lo_64)));
}

/* p(r) 2^(j/64) 2^n, 0 where x < -708. The integers are exact: m = bits(t) - bits(shifter);
 * m + 1023 * 64 > 0 over the clamped range, so its logical shift by 6 is n + 1023 = floor(m / 64) + 1023. */
TARGET static inline v4 exp_scale(v4 x, v4 t, v4 p) {
    __m256i ti = _mm256_castpd_si256(t);
    __m256i j = _mm256_and_si256(ti, _mm256_set1_epi64x(63));
    __m256i biased = _mm256_add_epi64(_mm256_sub_epi64(ti, _mm256_set1_epi64x((long long)0x4338000000000000LL)),
                                      _mm256_set1_epi64x(1023 * 64));
    __m256i n = _mm256_sub_epi64(_mm256_srli_epi64(biased, 6), _mm256_set1_epi64x(1023));
    __m256i entry = _mm256_i64gather_epi64((const long long *)exp_table, j, 8);
    v4 scale = _mm256_castsi256_pd(_mm256_add_epi64(entry, _mm256_slli_epi64(n, 52)));
    v4 result = _mm256_mul_pd(p, scale);
    return pick(result, zero4(), less(x, splat(-708)));
}

TARGET static inline v4 exp4(v4 x) {
    v4 t, r = exp_reduce(x, &t);
    v4 p = splat(1.0 / 120.0);
    for (int i = 0; i < 5; i++) p = _mm256_add_pd(_mm256_mul_pd(p, r), splat(exp_coefficients[i]));
    return exp_scale(x, t, p);
}

/* exp4 of two vectors, their Horner chains interleaved (each lane's operations unchanged). */
TARGET static inline void exp4x2(v4 x0, v4 x1, v4 *e0, v4 *e1) {
    v4 t0, t1, r0 = exp_reduce(x0, &t0), r1 = exp_reduce(x1, &t1);
    v4 p0 = splat(1.0 / 120.0), p1 = p0;
    for (int i = 0; i < 5; i++) {
        p0 = _mm256_add_pd(_mm256_mul_pd(p0, r0), splat(exp_coefficients[i]));
        p1 = _mm256_add_pd(_mm256_mul_pd(p1, r1), splat(exp_coefficients[i]));
    }
    *e0 = exp_scale(x0, t0, p0);
    *e1 = exp_scale(x1, t1, p1);
}

/* The centroids in ascending order with their indices (SoftKMeansKernel.CentroidOrder). */
typedef struct {
    double sorted[MAX_K];
    long index[MAX_K];
    long position0;
} centroid_order;

/* Insertion sort by (value, index), as withCentroidOrder. */
static void sort_centroids(const double *c, long k, centroid_order *o) {
    for (long j = 0; j < k; j++) {
        long q = j;
        while (q > 0 && (c[o->index[q - 1]] > c[j] || (c[o->index[q - 1]] == c[j] && o->index[q - 1] > j))) {
            o->index[q] = o->index[q - 1];
            q--;
        }
        o->index[q] = j;
    }
    o->position0 = 0;
    for (long q = 0; q < k; q++) {
        o->sorted[q] = c[o->index[q]];
        if (o->index[q] == 0) o->position0 = q;
    }
}

/* Swift.min / Swift.max on Double (y < x ? y : x, y >= x ? y : x). */
static inline double swift_min(double x, double y) { return y < x ? y : x; }
static inline double swift_max(double x, double y) { return y >= x ? y : x; }

/* First position q with sorted[q] >= x (k if none), for ascending sorted without NaN, searched
 * from a hint: the position of the previous, nearby x (SoftKMeansKernel.lowerBound(_:_:from:)).
 * The predicate sorted[q] < x is true then false along q (also for x = +-inf, and false throughout
 * for a NaN x), so the first false position is one number whatever the search: this returns exactly
 * the position a binary search over all k returns. It gallops away from the hint (steps 1, 2, 4, ...)
 * and bisects the last step: O(1 + log d) comparisons for an answer d positions from the hint, two
 * comparisons when the answer is the hint (rows in key order: consecutive values almost always
 * share their position among the k centroids). */
static inline long lower_bound_from(const double *sorted, long k, double x, long hint) {
    long lo, hi;  /* the answer lies in [lo, hi]; hi == k or sorted[hi] >= x */
    if (hint < k && sorted[hint] < x) {
        lo = hint + 1;
        long step = 1;
        for (;;) {
            long probe = lo + step - 1;
            if (probe >= k) { hi = k; break; }
            if (sorted[probe] < x) { lo = probe + 1; step <<= 1; } else { hi = probe; break; }
        }
    } else {
        hi = hint;
        long step = 1;
        for (;;) {
            long probe = hi - step;
            if (probe < 0) { lo = 0; break; }
            if (sorted[probe] < x) { lo = probe + 1; break; } else { hi = probe; step <<= 1; }
        }
    }
    while (lo < hi) {
        long mid = (lo + hi) >> 1;
        if (sorted[mid] < x) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* min (x - sorted[q])^2 over q != excluded (SoftKMeansKernel.nearestSquaredDistance), x's lower
 * bound `lo` given: the nearest lie next to it, one further out on the excluded position's side. */
static inline double nearest_excluding(double x, const centroid_order *o, long k, long excluded, long lo) {
    double best = INFINITY;
    long end = lo + 2 < k ? lo + 2 : k;
    for (long q = lo - 2 > 0 ? lo - 2 : 0; q < end; q++) {
        if (q == excluded) continue;
        double diff = x - o->sorted[q];
        best = swift_min(best, diff * diff);
    }
    return best;
}

/* min_j (x - c_j)^2 for ascending c, x's lower bound `lo` given (DKMEngine.nearestSquaredDistance(_:sorted:)). */
static inline double nearest_sorted(double x, const double *c, long k, long lo) {
    double best = INFINITY;
    if (lo < k) best = (c[lo] - x) * (c[lo] - x);
    if (lo > 0) best = swift_min(best, (x - c[lo - 1]) * (x - c[lo - 1]));
    return best;
}

/* Where the previous group's searches ended (SoftKMeansKernel.WindowCursor): the last row's lower
 * bound, the window's two bounds, and the window they gave (lo = -1: none yet). */
typedef struct {
    long row, left, right;
    long lo, hi, count;
} window_cursor;

/* The first half of SoftKMeansKernel.window4 for the rows u[0..3]: each row's radius
 * sqrt(min D + cut tau) (1 + 2^-30), NaN where min D + cut tau < 0. Each row's nearest centroids
 * come from its lower bound, searched from the previous row's. The four radii take one vector
 * square root (correctly rounded, as the scalar one). */
HOT static inline v4 window_radii(const edkm_window_params *p, const double *u, const centroid_order *o, double c0,
                                     window_cursor *cursor) {
    const long k = p->k;
    long lo = cursor->row;
    if (!p->keep_sparsity && lo > 0 && lo < k) {
        /* The common case in key order: all four rows have the previous row's lower bound
         * (sorted[lo - 1] < u <= sorted[lo]; false for a NaN u). Then each lane's min D is the
         * scalar code's, operation for operation, as one vector. */
        const v4 x = _mm256_loadu_pd(u), below = splat(o->sorted[lo - 1]), above = splat(o->sorted[lo]);
        if (_mm256_movemask_pd(_mm256_and_pd(less(below, x), _mm256_cmp_pd(above, x, _CMP_GE_OQ))) == 15) {
            v4 da = _mm256_sub_pd(above, x), db = _mm256_sub_pd(x, below);
            v4 best = _mm256_mul_pd(da, da), other = _mm256_mul_pd(db, db);
            best = pick(best, other, less(other, best));  /* swift_min(best, (x - c[lo - 1])^2) */
            v4 d0 = _mm256_sub_pd(x, splat(c0));
            v4 pruned = _mm256_sub_pd(_mm256_mul_pd(d0, d0), splat(p->prune_threshold));
            v4 minD = pick(best, pruned, less(pruned, best));  /* swift_min(near, (x - c0)^2 - p) */
            return _mm256_mul_pd(_mm256_sqrt_pd(_mm256_add_pd(minD, splat(WINDOW_CUT * p->tau))), splat(1 + 0x1p-30));
        }
    }
    double minD[4];
    for (int l = 0; l < 4; l++) {
        double x = u[l];
        lo = lower_bound_from(o->sorted, k, x, lo);
        if (p->keep_sparsity && x != 0) {
            minD[l] = swift_min(nearest_excluding(x, o, k, o->position0, lo), p->zero_distance);
        } else {
            double near = nearest_sorted(x, o->sorted, k, lo);
            minD[l] = swift_min(near, (x - c0) * (x - c0) - p->prune_threshold);
        }
    }
    cursor->row = lo;
    return _mm256_mul_pd(_mm256_sqrt_pd(_mm256_add_pd(_mm256_loadu_pd(minD), splat(WINDOW_CUT * p->tau))),
                         splat(1 + 0x1p-30));
}

/* The window of sorted positions lo ..< hi, then centroid 0 if outside them; `window` is left as it
 * is when the positions are the previous group's (window_from_radii's rule). */
static inline long window_from_ends(const centroid_order *o, long lo, long hi, long *window, window_cursor *cursor) {
    if (lo == cursor->lo && hi == cursor->hi) return cursor->count;
    long count = 0;
    for (long q = lo; q < (hi > lo ? hi : lo); q++) window[count++] = o->index[q];
    if (o->position0 < lo || o->position0 >= hi) window[count++] = 0;
    cursor->lo = lo;
    cursor->hi = hi;
    cursor->count = count;
    return count;
}

/* The second half of window4: the indices of the centroids within the radii of any of the rows
 * u[0..3] (ascending positions, then centroid 0 if outside them); returns how many. The bounds are
 * searched from the previous group's; when they are the previous group's, `window` already holds
 * that window (the passes only read it) and is left as it is. */
HOT static inline long window_from_radii(const edkm_window_params *p, const double *u, v4 radii,
                                            const centroid_order *o, long *window, window_cursor *cursor) {
    const long k = p->k;
    double left = INFINITY, right = -INFINITY, radius[4];
    _mm256_storeu_pd(radius, radii);
    for (int l = 0; l < 4; l++) {
        double x = u[l];
        if (isnan(radius[l])) continue;
        left = swift_min(left, x - radius[l]);
        right = swift_max(right, x + radius[l]);
    }
    if (!(left <= right)) {
        window[0] = 0;
        cursor->lo = -1;
        return 1;
    }
    long lo = lower_bound_from(o->sorted, k, left, cursor->left);
    long hi = lower_bound_from(o->sorted, k, right, cursor->right);
    cursor->left = lo;
    cursor->right = hi;
    while (hi < k && o->sorted[hi] <= right) hi++;
    return window_from_ends(o, lo, hi, window, cursor);
}

/* The windows of a block's groups of four rows in order, with the block's centroid order (sorted
 * once, at the start). Chosen from the rows, the radii of the next group computed one group ahead
 * (its square root's latency then overlaps the current group's softmax); with the parameters' ends
 * in EDKM_WINDOW_ENDS_RECORD mode each group's ends are written too, and in _REPLAY mode they are
 * read instead of choosing (same window: it is a function of the ends and the order alone). */
typedef struct {
    const edkm_window_params *p;
    const double *values;
    long rows;
    centroid_order order;
    double c0;
    window_cursor cursor;
    v4 next;
} window_stream;

TARGET static inline void window_stream_start(window_stream *s, const edkm_window_params *p, const double *values, long rows,
                                              const double *c) {
    s->p = p;
    s->values = values;
    s->rows = rows;
    sort_centroids(c, p->k, &s->order);
    s->c0 = c[0];
    s->cursor = (window_cursor){.row = 0, .left = 0, .right = 0, .lo = -1, .hi = -1, .count = 0};
    s->next = rows > 0 && p->ends_mode != EDKM_WINDOW_ENDS_REPLAY ? window_radii(p, values, &s->order, s->c0, &s->cursor)
                                                                  : zero4();
}

/* The window of rows m ... m + 3 (m = 0, 4, 8, ... in turn). */
HOT static inline long window_stream_next(window_stream *s, long m, long *window) {
    const int mode = s->p->ends_mode;
    unsigned char *ends = mode == EDKM_WINDOW_ENDS_NONE ? NULL : s->p->ends + 2 * (m / 4);
    if (mode == EDKM_WINDOW_ENDS_REPLAY) return window_from_ends(&s->order, ends[0], (long)ends[1] + 1, window, &s->cursor);
    long w = window_from_radii(s->p, s->values + m, s->next, &s->order, window, &s->cursor);
    if (m + 4 < s->rows) s->next = window_radii(s->p, s->values + m + 4, &s->order, s->c0, &s->cursor);
    if (mode == EDKM_WINDOW_ENDS_RECORD) {
        /* The positions the window holds (cursor.lo < 0: the window {0} alone, as an empty run). */
        int run = s->cursor.lo >= 0 && s->cursor.hi > s->cursor.lo;
        ends[0] = (unsigned char)(run ? s->cursor.lo : 1);
        ends[1] = (unsigned char)(run ? s->cursor.hi - 1 : 0);
    }
    return w;
}

/* log(x), with x = 1 answered without the call (+0, libm's value). */
static inline double log_of_normalizer(double x) { return x == 1 ? 0.0 : log(x); }

/* softmax4 on a window: s[q] for centroid window[q], the normaliser over the window; returns
 * min_j D_j. With `entropy`, writes the rows' entropy ln(sum) - sum_q s_q x_q. */
HOT static inline v4 window_softmax4(const edkm_window_params *p, v4 u, const double *c, const long *window, long w,
                                        v4 *s, v4 *entropy) {
    v4 minD = splat(INFINITY);
    const v4 nonzero = _mm256_cmp_pd(u, zero4(), _CMP_NEQ_UQ);
    for (long q = 0; q < w; q++) {
        long j = window[q];
        v4 diff = _mm256_sub_pd(u, splat(c[j]));
        v4 dist = _mm256_mul_pd(diff, diff);
        if (j == 0) {
            if (p->keep_sparsity) dist = pick(dist, splat(p->zero_distance), nonzero);
            else dist = _mm256_sub_pd(dist, splat(p->prune_threshold));
        }
        s[q] = dist;
        minD = pick(minD, dist, less(dist, minD));
    }
    const v4 invTau = splat(1 / p->tau);
    v4 sum = zero4(), weighted = zero4();
    long q = 0;
    for (; q + 2 <= w; q += 2) {  /* two exps at a time; the sums still add term q, then q + 1 */
        v4 x0 = _mm256_mul_pd(_mm256_sub_pd(minD, s[q]), invTau), x1 = _mm256_mul_pd(_mm256_sub_pd(minD, s[q + 1]), invTau);
        v4 e0, e1;
        exp4x2(x0, x1, &e0, &e1);
        s[q] = e0;
        s[q + 1] = e1;
        sum = _mm256_add_pd(_mm256_add_pd(sum, e0), e1);
        if (entropy) {
            weighted = _mm256_add_pd(weighted, pick(_mm256_mul_pd(e0, x0), zero4(), _mm256_cmp_pd(e0, zero4(), _CMP_EQ_OQ)));
            weighted = _mm256_add_pd(weighted, pick(_mm256_mul_pd(e1, x1), zero4(), _mm256_cmp_pd(e1, zero4(), _CMP_EQ_OQ)));
        }
    }
    for (; q < w; q++) {
        v4 x = _mm256_mul_pd(_mm256_sub_pd(minD, s[q]), invTau);
        v4 e = exp4(x);
        s[q] = e;
        sum = _mm256_add_pd(sum, e);
        if (entropy) weighted = _mm256_add_pd(weighted, pick(_mm256_mul_pd(e, x), zero4(), _mm256_cmp_pd(e, zero4(), _CMP_EQ_OQ)));
    }
    v4 inv = _mm256_div_pd(splat(1), sum);
    for (long q = 0; q < w; q++) s[q] = _mm256_mul_pd(s[q], inv);
    if (entropy) {
        /* ln 1 = +0 exactly: a normaliser of 1 skips the libm call, with the same value (the Swift
         * passes' logOfNormalizer). */
        v4 logs = zero4();
        if (_mm256_movemask_pd(_mm256_cmp_pd(sum, splat(1), _CMP_EQ_OQ)) != 15) {
            double l[4];
            _mm256_storeu_pd(l, sum);
            logs = _mm256_setr_pd(log_of_normalizer(l[0]), log_of_normalizer(l[1]), log_of_normalizer(l[2]),
                                  log_of_normalizer(l[3]));
        }
        *entropy = _mm256_sub_pd(logs, _mm256_mul_pd(weighted, inv));
    }
    return minD;
}

/* max(s - z, 0): the attention above its clamp. */
TARGET static inline v4 excess4(v4 s, double z) {
    v4 e = _mm256_sub_pd(s, splat(z));
    return pick(e, zero4(), less(e, zero4()));
}

/* A term of centroid j's distance adjoint: zero in the lanes where keep-sparsity makes D_0 a
 * constant (j = 0, nonzero u). */
TARGET static inline v4 distance_adjoint4(const edkm_window_params *p, v4 term, v4 u, long j) {
    if (j == 0 && p->keep_sparsity) return pick(term, zero4(), _mm256_cmp_pd(u, zero4(), _CMP_NEQ_UQ));
    return term;
}

/* In place x <- J(x) on the first `count` window entries (SoftKMeansKernel.softmaxVJP4). */
TARGET static inline void softmax_vjp4(const edkm_window_params *p, const v4 *s, v4 *x, long count) {
    v4 dot = zero4();
    const v4 z = splat(p->zero_threshold);
    for (long j = 0; j < count; j++) {
        v4 sx = pick(_mm256_mul_pd(s[j], x[j]), zero4(), less(s[j], z));
        dot = _mm256_add_pd(dot, sx);
    }
    const v4 scale = splat(-1 / p->tau);
    for (long j = 0; j < count; j++) {
        v4 masked = pick(x[j], zero4(), less(s[j], z));
        x[j] = _mm256_mul_pd(_mm256_mul_pd(scale, s[j]), _mm256_sub_pd(masked, dot));
    }
}

TARGET static inline v4 counts4(const double *counts, long m) {
    return counts ? _mm256_loadu_pd(counts + m) : splat(1);
}

static int usable(const edkm_window_params *p) { return p->k >= 1 && p->k <= MAX_K && edkm_window_kernels_available(); }

TARGET static long iterate_avx2(const edkm_window_params *p, const double *values, const double *counts, long count,
                                const double *c, double *acc, double *inertiaOut) {
    const long k = p->k, rows = count & ~3L;
    const double z = p->zero_threshold;
    *inertiaOut = 0;
    if (rows == 0) return 0;
    long window[MAX_K + 1];
    window_stream stream;
    window_stream_start(&stream, p, values, rows, c);
    v4 sumS[k], sumP[k], s[k + 1];
    for (long j = 0; j < k; j++) sumS[j] = sumP[j] = zero4();
    v4 inertia = zero4(), totalN = zero4(), totalNU = zero4();
    for (long m = 0; m < rows; m += 4) {
        v4 u = _mm256_loadu_pd(values + m), n = counts4(counts, m);
        long w = window_stream_next(&stream, m, window);
        inertia = _mm256_add_pd(inertia, _mm256_mul_pd(n, window_softmax4(p, u, c, window, w, s, NULL)));
        totalN = _mm256_add_pd(totalN, n);
        totalNU = _mm256_add_pd(totalNU, _mm256_mul_pd(n, u));
        for (long q = 0; q < w; q++) {
            long j = window[q];
            v4 a = _mm256_mul_pd(n, excess4(s[q], z));
            sumS[j] = _mm256_add_pd(sumS[j], a);
            sumP[j] = _mm256_add_pd(sumP[j], _mm256_mul_pd(a, u));
        }
    }
    double zN = z * lane_sum(totalN), zNU = z * lane_sum(totalNU);
    for (long j = 0; j < k; j++) {
        acc[j] += lane_sum(sumS[j]) + zN;
        acc[k + j] += lane_sum(sumP[j]) + zNU;
    }
    *inertiaOut = lane_sum(inertia);
    return rows;
}

TARGET static long output_avx2(const edkm_window_params *p, const double *values, const double *counts, long count,
                               const double *cPrev, const double *cLast, double *f, double *entropyOut) {
    const long k = p->k, rows = count & ~3L;
    const double z = p->zero_threshold;
    *entropyOut = 0;
    if (rows == 0) return 0;
    double cSum = 0;
    for (long j = 0; j < k; j++) cSum += cLast[j];
    const v4 zc = splat(z * cSum);
    long window[MAX_K + 1];
    window_stream stream;
    window_stream_start(&stream, p, values, rows, cPrev);
    v4 s[k + 1];
    v4 entropy = zero4(), h = zero4();
    for (long m = 0; m < rows; m += 4) {
        v4 u = _mm256_loadu_pd(values + m);
        long w = window_stream_next(&stream, m, window);
        (void)window_softmax4(p, u, cPrev, window, w, s, &h);
        entropy = _mm256_add_pd(entropy, _mm256_mul_pd(counts4(counts, m), h));
        v4 out = zero4();
        for (long q = 0; q < w; q++) out = _mm256_add_pd(out, _mm256_mul_pd(excess4(s[q], z), splat(cLast[window[q]])));
        out = _mm256_add_pd(out, zc);
        _mm256_storeu_pd(f + m, out);
    }
    *entropyOut = lane_sum(entropy);
    return rows;
}

TARGET static long backward_last_avx2(const edkm_window_params *p, const double *values, const double *G, long count,
                                      const double *cPrev, const double *cLast, double *last, double *acc) {
    const long k = p->k, rows = count & ~3L;
    const double z = p->zero_threshold;
    if (rows == 0) return 0;
    long window[MAX_K + 1];
    window_stream stream;
    window_stream_start(&stream, p, values, rows, cPrev);
    v4 cbar[k], extra[k], s[k + 1], x[k + 1];
    for (long j = 0; j < k; j++) cbar[j] = extra[j] = zero4();
    v4 totalG = zero4();
    const v4 two = splat(2);
    for (long m = 0; m < rows; m += 4) {
        v4 u = _mm256_loadu_pd(values + m), g = _mm256_loadu_pd(G + m);
        long w = window_stream_next(&stream, m, window);
        (void)window_softmax4(p, u, cPrev, window, w, s, NULL);
        totalG = _mm256_add_pd(totalG, g);
        for (long q = 0; q < w; q++) {
            long j = window[q];
            cbar[j] = _mm256_add_pd(cbar[j], _mm256_mul_pd(excess4(s[q], z), g));
            x[q] = splat(cLast[j]);
        }
        softmax_vjp4(p, s, x, w);
        v4 h = zero4();
        for (long q = 0; q < w; q++) {
            long j = window[q];
            v4 term = _mm256_mul_pd(_mm256_mul_pd(two, _mm256_sub_pd(u, splat(cPrev[j]))), x[q]);
            v4 ea = distance_adjoint4(p, term, u, j);
            h = _mm256_add_pd(h, ea);
            extra[j] = _mm256_sub_pd(extra[j], _mm256_mul_pd(g, ea));
        }
        _mm256_storeu_pd(last + m, h);
    }
    double zG = z * lane_sum(totalG);
    for (long j = 0; j < k; j++) {
        acc[j] += lane_sum(cbar[j]) + zG;
        acc[k + j] += lane_sum(extra[j]);
    }
    return rows;
}

TARGET static long backward_iteration_avx2(const edkm_window_params *p, const double *values, const double *counts,
                                           long count, const double *ct, const double *cn, const double *pbar, double *r,
                                           double *acc, int accumulate) {
    const long k = p->k, rows = count & ~3L;
    const double z = p->zero_threshold;
    if (rows == 0) return 0;
    double pSum = 0;
    for (long j = 0; j < k; j++) pSum += pbar[j];
    const v4 zp = splat(z * pSum);
    long window[MAX_K + 1];
    window_stream stream;
    window_stream_start(&stream, p, values, rows, ct);
    v4 cbar[k], s[k + 1], q[k + 1];
    for (long j = 0; j < k; j++) cbar[j] = zero4();
    const v4 two = splat(2);
    for (long m = 0; m < rows; m += 4) {
        v4 u = _mm256_loadu_pd(values + m);
        long w = window_stream_next(&stream, m, window);
        (void)window_softmax4(p, u, ct, window, w, s, NULL);
        v4 rr = _mm256_add_pd(_mm256_loadu_pd(r + m), zp);
        for (long i = 0; i < w; i++) {
            long j = window[i];
            rr = _mm256_add_pd(rr, _mm256_mul_pd(excess4(s[i], z), splat(pbar[j])));
            q[i] = _mm256_mul_pd(_mm256_sub_pd(u, splat(cn[j])), splat(pbar[j]));
        }
        softmax_vjp4(p, s, q, w);
        v4 n = counts4(counts, m);
        for (long i = 0; i < w; i++) {
            long j = window[i];
            v4 term = _mm256_mul_pd(_mm256_mul_pd(two, _mm256_sub_pd(u, splat(ct[j]))), q[i]);
            v4 ee = distance_adjoint4(p, term, u, j);
            rr = _mm256_add_pd(rr, ee);
            if (accumulate) cbar[j] = _mm256_sub_pd(cbar[j], _mm256_mul_pd(n, ee));
        }
        _mm256_storeu_pd(r + m, rr);
    }
    if (accumulate) for (long j = 0; j < k; j++) acc[j] += lane_sum(cbar[j]);
    return rows;
}

TARGET static long choose_avx2(const edkm_window_params *p, const double *values, long count, const double *c,
                               long *windows, long *sizes) {
    const long k = p->k, rows = count & ~3L;
    long window[MAX_K + 1];
    window_stream stream;
    window_stream_start(&stream, p, values, rows, c);
    for (long m = 0; m < rows; m += 4) {
        long w = window_stream_next(&stream, m, window);
        sizes[m / 4] = w;
        memcpy(windows + (m / 4) * (k + 1), window, (size_t)w * sizeof(long));
    }
    return rows / 4;
}

TARGET static void exp4_avx2(const double *x, double *out) { _mm256_storeu_pd(out, exp4(_mm256_loadu_pd(x))); }

long edkm_window_iterate(const edkm_window_params *p, const double *values, const double *counts, long count,
                         const double *c, double *acc, double *inertia) {
    return usable(p) ? iterate_avx2(p, values, counts, count, c, acc, inertia) : -1;
}

long edkm_window_output(const edkm_window_params *p, const double *values, const double *counts, long count,
                        const double *cPrev, const double *cLast, double *f, double *entropy) {
    return usable(p) ? output_avx2(p, values, counts, count, cPrev, cLast, f, entropy) : -1;
}

long edkm_window_backward_last(const edkm_window_params *p, const double *values, const double *G, long count,
                               const double *cPrev, const double *cLast, double *last, double *acc) {
    return usable(p) ? backward_last_avx2(p, values, G, count, cPrev, cLast, last, acc) : -1;
}

long edkm_window_backward_iteration(const edkm_window_params *p, const double *values, const double *counts, long count,
                                    const double *ct, const double *cn, const double *pbar, double *r, double *acc,
                                    int accumulate) {
    return usable(p) ? backward_iteration_avx2(p, values, counts, count, ct, cn, pbar, r, acc, accumulate) : -1;
}

long edkm_window_choose(const edkm_window_params *p, const double *values, long count, const double *c, long *windows,
                        long *sizes) {
    return p->k >= 1 && p->k <= MAX_K && avx2_selected() ? choose_avx2(p, values, count, c, windows, sizes) : -1;
}

int edkm_window_exp4(const double *x, double *out) {
    if (!avx2_selected()) return 0;
    exp4_avx2(x, out);
    return 1;
}

#else /* not x86-64: the Swift passes run */

int edkm_window_kernels_available(void) { return 0; }
long edkm_window_iterate(const edkm_window_params *p, const double *values, const double *counts, long count,
                         const double *c, double *acc, double *inertia) {
    (void)p; (void)values; (void)counts; (void)count; (void)c; (void)acc; (void)inertia;
    return -1;
}
long edkm_window_output(const edkm_window_params *p, const double *values, const double *counts, long count,
                        const double *cPrev, const double *cLast, double *f, double *entropy) {
    (void)p; (void)values; (void)counts; (void)count; (void)cPrev; (void)cLast; (void)f; (void)entropy;
    return -1;
}
long edkm_window_backward_last(const edkm_window_params *p, const double *values, const double *G, long count,
                               const double *cPrev, const double *cLast, double *last, double *acc) {
    (void)p; (void)values; (void)G; (void)count; (void)cPrev; (void)cLast; (void)last; (void)acc;
    return -1;
}
long edkm_window_backward_iteration(const edkm_window_params *p, const double *values, const double *counts, long count,
                                    const double *ct, const double *cn, const double *pbar, double *r, double *acc,
                                    int accumulate) {
    (void)p; (void)values; (void)counts; (void)count; (void)ct; (void)cn; (void)pbar; (void)r; (void)acc; (void)accumulate;
    return -1;
}
long edkm_window_choose(const edkm_window_params *p, const double *values, long count, const double *c, long *windows,
                        long *sizes) {
    (void)p; (void)values; (void)count; (void)c; (void)windows; (void)sizes;
    return -1;
}
int edkm_window_exp4(const double *x, double *out) {
    (void)x; (void)out;
    return 0;
}
#endif
