/* Internal C support for the Swift core (not API; hidden symbols): the d = 1 windowed DKM passes
 * (Sources/EDKMSwift/Clustering/Kernels/SoftKMeansKernel+Window.swift) built for AVX2, selected at
 * run time (window_kernels.c). */
#ifndef EDKM_WINDOW_KERNELS_H
#define EDKM_WINDOW_KERNELS_H
#include <stddef.h>

#define EDKM_WINDOW_HIDDEN __attribute__((visibility("hidden")))

/** The per-partition constants of SoftKMeansKernel (d = 1). */
typedef struct {
    /** Centroids, 2 ... 256. */
    long k;
    /** Temperature tau > 0, zero threshold z, prune bias p, keep-sparsity's constant D_0. */
    double tau, zero_threshold, prune_threshold, zero_distance;
    /** 1 when keep-sparsity holds (a nonzero row's D_0 is zero_distance and has no adjoint). */
    int keep_sparsity;
    /** The window ends of the block's groups of four rows, 2 bytes per group (group g at ends[2 g]):
     *  EDKM_WINDOW_ENDS_NONE (ends unused), _RECORD (each pass that chooses windows writes them) or
     *  _REPLAY (the passes read them instead of choosing; they must have been recorded on the same
     *  rows with the same centroids and parameters). Encoding: group g's window is the sorted
     *  positions lo ..< hi (lo = ends[2 g], hi = ends[2 g + 1] + 1), then centroid 0 if it sits
     *  outside them; (1, 0) is the window {0} alone. */
    unsigned char *ends;
    int ends_mode;
} edkm_window_params;

#define EDKM_WINDOW_ENDS_NONE 0
#define EDKM_WINDOW_ENDS_RECORD 1
#define EDKM_WINDOW_ENDS_REPLAY 2

/* Every pass handles the leading count & ~3 rows, four at a time (lanes = rows), with the same
 * operations in the same order as the Swift passes of the same name, so results are bit-identical;
 * each returns the rows it handled (the caller does the rest), or -1 when the AVX2 build is not
 * selected (no AVX2, not x86-64, or forced off) and the caller must run its Swift pass.
 * Arrays: values, counts (NULL = every row counts once), G, r, f, last: `count` doubles; c, cPrev,
 * cLast, ct, cn, pbar: k doubles; acc: 2k doubles (k for the backward iteration). */

/** iterateWindowed: acc[j] += z sum n + sum n (A_j - z), acc[k + j] likewise with n u;
 *  *inertia = sum n min D over the rows handled. */
EDKM_WINDOW_HIDDEN long edkm_window_iterate(const edkm_window_params *p, const double *values, const double *counts,
                                            long count, const double *c, double *acc, double *inertia);
/** outputWindowed: f = z sum_j cLast_j + sum_window (A_j - z) cLast_j; *entropy = sum n H. */
EDKM_WINDOW_HIDDEN long edkm_window_output(const edkm_window_params *p, const double *values, const double *counts,
                                           long count, const double *cPrev, const double *cLast, double *f,
                                           double *entropy);
/** backwardLastWindowed: acc[j] += cbar_j, acc[k + j] += the extra adjoint of c^{T-1}; last = h. */
EDKM_WINDOW_HIDDEN long edkm_window_backward_last(const edkm_window_params *p, const double *values, const double *G,
                                                  long count, const double *cPrev, const double *cLast, double *last,
                                                  double *acc);
/** backwardIterationWindowed: r += the paths through P^t and A^t; with `accumulate`, acc[j] -= the
 *  adjoint reaching c^t. */
EDKM_WINDOW_HIDDEN long edkm_window_backward_iteration(const edkm_window_params *p, const double *values,
                                                       const double *counts, long count, const double *ct,
                                                       const double *cn, const double *pbar, double *r, double *acc,
                                                       int accumulate);

/** 1 when the AVX2 build runs (AVX2 present, not forced off by edkm_window_kernels_force_scalar or
 *  by the environment variable EDKM_WINDOW_KERNELS=scalar), else 0. */
EDKM_WINDOW_HIDDEN int edkm_window_kernels_available(void);
/** 1: run the Swift passes even where AVX2 is present (tests and benchmarks; set while idle). */
EDKM_WINDOW_HIDDEN void edkm_window_kernels_force_scalar(int on);
/** Tests: the windows the AVX2 passes choose for the groups of four rows of `values` (the leading
 *  count & ~3) with centroids c: group g's centroid indices in windows[g (k + 1) ...], how many in
 *  sizes[g] (arrays of (count / 4) (k + 1) and count / 4); returns the groups, or -1 when not built. */
EDKM_WINDOW_HIDDEN long edkm_window_choose(const edkm_window_params *p, const double *values, long count,
                                           const double *c, long *windows, long *sizes);
/** Tests: e^x of the AVX2 build for four lanes (VectorMath.windowExp's operations); 0 when not built. */
EDKM_WINDOW_HIDDEN int edkm_window_exp4(const double *x, double *out);

/** The 64 entries 2^(j/64) (correctly rounded) that the windowed softmax's exp scales by, in both
 *  builds (VectorMath.windowExp, window_kernels.c); static storage. */
EDKM_WINDOW_HIDDEN const double *edkm_window_exp_table(void);

#endif
