/*
 * mlp.h: the small model the C examples train and compress with libedkm, shared by mlp_trainer.c
 * (one process) and mpi_trainer.c (data-parallel): a 32 -> 128 -> 10 MLP (ReLU, softmax
 * cross-entropy) on a synthetic 10-class, 32-D data set, with Adam. Plain C99, no libedkm calls.
 *
 *   - a seeded generator (splitmix64) with uniform, normal (Box-Muller) and shuffle;
 *   - float16 (IEEE binary16) bit patterns, round to nearest even;
 *   - the data set: class c has MODES Gaussian modes with means ~ N(0, 1) in R^DIM; a sample is a
 *     mode mean plus N(0, MLP_NOISE^2) noise, warped by x_j += MLP_WARP * sin(2 (R x)_j) with a
 *     fixed random R (rows of norm ~1), then standardised with the training set's mean and deviation;
 *   - the model: all parameters in one flat float array W1 (HID x DIM), b1, W2 (NCLS x HID), b2;
 *   - Adam (beta 0.9, 0.999, eps 1e-8) and a cosine learning-rate schedule.
 *
 * Everything is deterministic: the same seed gives the same data, weights and batches on every
 * machine and every rank.
 */
#ifndef EDKM_EXAMPLES_MLP_H
#define EDKM_EXAMPLES_MLP_H

#include <stddef.h>
#include <stdint.h>

/* malloc that never returns NULL: prints "out of memory" and exits with status 1 instead. */
void *xmalloc(size_t bytes);

/* ============================ Deterministic RNG (splitmix64) ============================ */

typedef struct { uint64_t s; } rng_t;

uint64_t rng_next(rng_t *r);
double rng_uniform(rng_t *r);        /* [0, 1): top 53 bits times 2^-53 */
int rng_below(rng_t *r, int n);      /* 0..n-1: floor(uniform * n) */
double rng_normal(rng_t *r);         /* standard normal, Box-Muller (cosine branch) */
void shuffle(int *a, int n, rng_t *r); /* Fisher-Yates */

/* ============================ float16 (IEEE binary16) bit patterns ============================ */

uint16_t f32_to_f16(float f); /* round to nearest even; NaN stays NaN, overflow -> infinity */
float f16_to_f32(uint16_t h); /* exact */

/* ============================ Data ============================ */

enum { DIM = 32, HID = 128, NCLS = 10, MODES = 4, NTRAIN = 8000, NTEST = 2000, BATCH = 64 };

typedef struct {
    float *x; /* n x DIM */
    int *y;   /* n */
    int n;
} dataset;

#define MLP_NOISE 1.1
#define MLP_WARP 1.2

/* NTRAIN training and NTEST test samples from `seed` (the caller frees x and y of each). */
void make_data(uint64_t seed, dataset *train, dataset *test);

/* ============================ Model ============================ */

/* Offsets in the flat parameter array: W1 (HID x DIM), b1, W2 (NCLS x HID), b2. */
enum {
    OFF_W1 = 0,
    N_W1 = HID * DIM,
    OFF_B1 = OFF_W1 + N_W1,
    OFF_W2 = OFF_B1 + HID,
    N_W2 = NCLS * HID,
    OFF_B2 = OFF_W2 + N_W2,
    NPARAM = OFF_B2 + NCLS
};

/* Weights used by a forward: the float ones, the soft-clustered w~, or the hard palettized ones. */
typedef struct {
    const float *w1, *b1, *w2, *b2;
} model_view;

model_view view_of(const float *p);

/*
 * Forward (and, if grad != NULL, backward) of the cross-entropy over the samples idx[0..n) (idx NULL:
 * samples 0..n-1). Returns the SUM of the losses; *correct (if not NULL) counts hits. grad (NPARAM
 * floats, accumulated into; the caller zeroes it) receives grad_scale times the gradient of that sum:
 * dL/dW1, dL/db1, dL/dW2, dL/db2 at the offsets above, the W gradients being with respect to the
 * weights *used* (dL/dw~ when m holds soft-clustered weights). grad_scale = 1/n gives the gradient of
 * the mean; a data-parallel rank passes 1/(global batch) and the ranks' gradients are summed.
 */
double mlp_batch(model_view m, const dataset *d, const int *idx, int n, float *grad, double grad_scale, int *correct);

/* Fraction of d's samples classified correctly. */
double accuracy(model_view m, const dataset *d);

/* He initialisation of the weights (normal, variance 2 / fan-in) from `seed`; zero biases. */
void init_params(float *p, uint64_t seed);

/* ============================ Adam ============================ */

typedef struct {
    float *m, *v;
    int n;
    long t;
} adam_t;

void adam_init(adam_t *a, int n);  /* moments of n parameters, zeroed */
void adam_reset(adam_t *a);        /* zero the moments and the step count */
void adam_free(adam_t *a);
/* One step: p -= lr * mhat / (sqrt(vhat) + 1e-8), beta1 = 0.9, beta2 = 0.999. */
void adam_step(adam_t *a, float *p, const float *g, double lr);

/* base * (1 + cos(pi step / total)) / 2. */
double cosine_lr(double base, long step, long total);

#endif
