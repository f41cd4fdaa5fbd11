/*
 * mlp_trainer.c: a small, real trainer in plain C99 that compresses a 2-layer MLP with libedkm.
 *
 *   1. Generates a synthetic 10-class, 32-D classification data set deterministically (seeded RNG):
 *      four Gaussian modes per class, then a nonlinear warp, so that a linear classifier falls
 *      short and the MLP's hidden layer matters.
 *   2. Trains a 32 -> 128 -> 10 MLP (ReLU, softmax cross-entropy) with Adam in float32.
 *   3. For each bit width (4 and 3 by default):
 *      a. post-training k-means: one edkm layer per weight matrix, edkm_layer_init_centroids on the
 *         float weights, edkm_layer_export + edkm_layer_unpack -> hard palettized weights, test acc.
 *      b. DKM fine-tuning: from the float weights, every step runs edkm_layer_forward on each weight
 *         matrix (f32 in, f32 out) with a saved state, uses the soft-clustered weights w~ in the MLP
 *         forward, backpropagates to dL/dw~, edkm_saved_state_backward gives dL/dw, the saved state
 *         is destroyed and Adam updates the float weights (Adam also copes with the scale of DKM
 *         gradients, which grows like 1/tau). At the end one more forward without a saved state
 *         re-fits the centroids to the final weights (--no-refresh skips it), then export + unpack,
 *         test acc.
 *   4. Prints the table model | bits | test accuracy | weight bytes, and the runtime's arena stats.
 *
 * Only the two weight matrices are clustered; the biases (138 floats) stay float32 in every row of
 * the table and are not counted in "weight bytes". Palettized bytes = LUT (2^bits centroids stored
 * as float16, as exported with lut_dtype EDKM_DTYPE_F16) + the bits-per-weight packed indices.
 *
 * Weights are float32 throughout. By default they take the library's DENSE path (f32_key_dtype =
 * EDKM_DTYPE_F32: no rounding); `--keys f16` (or bf16) keys them by their 16-bit rounding so that
 * the forward and backward take the eDKM UNIQUIFIED (value-histogram) path instead. `--saved-mode`
 * picks what a forward keeps for its backward (the rows of the eDKM ablation: histogram, dkm,
 * marshal, dedup, uniquify); the math is the same, only the memory (printed per run) differs.
 *
 * Temperature. By default the layers keep the library's scale-free temperature (tau = 0.1 times each
 * tensor's k-means distortion), so nothing depends on the weights' scale. `--tau X` sets one
 * absolute tau (EDKM_TEMPERATURE_ABSOLUTE, coremltools' semantics: squared weight units) for every
 * layer, and `--tau-scale S` an absolute tau = S * var(w) per layer.
 *
 * Before training it runs a quick self-check (skip with --no-selfcheck): the gradient returned by
 * edkm_saved_state_backward against central finite differences, on the dense f32 path and on the
 * uniquified f16 path, and (during the run) every export is checked against the header's contract:
 * the F32 LUT equals edkm_layer_get_centroids, the F16 LUT is its rounding, the packed stream decodes
 * (LSB first) to labels = argmin_j (w - c_j)^2 - prune_threshold [j == 0], and unpack = lut[label].
 *
 * Build (from the repository root, after `scripts/build-dist.sh`):
 *   cc -std=c99 -O2 -Wall -Wextra -I include examples/c/mlp_trainer.c examples/c/mlp/mlp.c \
 *      -L .build-dist/lib -ledkm -Wl,-rpath,$PWD/.build-dist/lib -lm -o examples/c/bin/mlp_trainer
 * or examples/c/build.sh. Run: examples/c/bin/mlp_trainer [--help]
 * Exit status: 0 on success, 1 on an edkm error or a failed check (including two generous sanity
 * bounds: the float MLP must beat the linear classifier by 5 points, and no >= 3-bit palettized
 * model may lose more than 8 points), 2 on bad usage.
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime, for wall-clock timings only */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edkm.h"
#include "mlp/mlp.h"

/* ============================ Errors ============================ */

#define EDKM_CHECK(call)                                                                     \
    do {                                                                                     \
        edkm_status st_ = (call);                                                            \
        if (st_ != EDKM_OK) {                                                                \
            fprintf(stderr, "%s:%d: %s\n  failed: %s: %s\n", __FILE__, __LINE__, #call,      \
                    edkm_status_name(st_), edkm_last_error());                               \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static void fail(const char *what) {
    fprintf(stderr, "mlp_trainer: check failed: %s\n", what);
    exit(1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ============================ Linear baseline (shows the data needs the hidden layer) ============================ */

static double linear_baseline(const dataset *tr, const dataset *te, int epochs, uint64_t seed) {
    enum { NW = NCLS * DIM + NCLS };
    float p[NW], g[NW];
    adam_t a;
    rng_t r;
    int *order = (int *)xmalloc(sizeof(int) * (size_t)tr->n);
    int e, b, s, i, j, hits = 0;
    long step = 0, total = (long)epochs * (tr->n / BATCH);
    memset(p, 0, sizeof p);
    adam_init(&a, NW);
    r.s = seed;
    for (i = 0; i < tr->n; ++i) order[i] = i;
    for (e = 0; e < epochs; ++e) {
        shuffle(order, tr->n, &r);
        for (b = 0; b + BATCH <= tr->n; b += BATCH) {
            memset(g, 0, sizeof g);
            for (s = 0; s < BATCH; ++s) {
                const float *x = tr->x + (size_t)order[b + s] * DIM;
                double z[NCLS], zs = 0, zm = -1e300;
                for (i = 0; i < NCLS; ++i) {
                    z[i] = p[NCLS * DIM + i];
                    for (j = 0; j < DIM; ++j) z[i] += p[i * DIM + j] * x[j];
                    if (z[i] > zm) zm = z[i];
                }
                for (i = 0; i < NCLS; ++i) zs += exp(z[i] - zm);
                for (i = 0; i < NCLS; ++i) {
                    float dz = (float)((exp(z[i] - zm) / zs - (i == tr->y[order[b + s]])) / BATCH);
                    for (j = 0; j < DIM; ++j) g[i * DIM + j] += dz * x[j];
                    g[NCLS * DIM + i] += dz;
                }
            }
            adam_step(&a, p, g, cosine_lr(3e-3, step++, total));
        }
    }
    for (s = 0; s < te->n; ++s) {
        const float *x = te->x + (size_t)s * DIM;
        int arg = 0;
        double best = -1e300;
        for (i = 0; i < NCLS; ++i) {
            double z = p[NCLS * DIM + i];
            for (j = 0; j < DIM; ++j) z += p[i * DIM + j] * x[j];
            if (z > best) best = z, arg = i;
        }
        hits += arg == te->y[s];
    }
    adam_free(&a);
    free(order);
    return (double)hits / te->n;
}

/* ============================ Options ============================ */

typedef struct {
    int float_epochs, ft_epochs;
    double float_lr, ft_lr;
    int tau_mode;        /* 0 = absolute, scaled by variance; 1 = absolute; 2 = library default (scale-free) */
    double tau_scale, tau_abs;
    int key_dtype;       /* f32_key_dtype */
    int max_iterations;  /* 0 = library default */
    int refresh;         /* run a final forward (no saved state) before export */
    int selfcheck;
    unsigned num_threads;
    int saved_mode;      /* edkm_saved_mode of the runtime */
    unsigned bits[8];
    int nbits;
    uint64_t seed;
} options;

static void usage(FILE *f) {
    fprintf(f,
            "usage: mlp_trainer [options]\n"
            "  --bits LIST        bit widths to palettize to, comma separated (default 4,3)\n"
            "  --epochs N         float training epochs (default 20)\n"
            "  --ft-epochs N      DKM fine-tuning epochs (default 4)\n"
            "  --lr X             float Adam learning rate (default 3e-3, cosine decay)\n"
            "  --ft-lr X          DKM fine-tuning Adam learning rate (default 2e-3, cosine decay)\n"
            "  --tau-scale S      absolute tau = S * var(w) per layer\n"
            "  --tau X            one absolute tau for every layer (coremltools' default: 1e-4)\n"
            "  --tau-default      the library's default temperature (scale-free, tau 0.1; the default)\n"
            "  --keys f32|f16|bf16  f32_key_dtype: f32 = DENSE path (default); f16/bf16 = UNIQUIFIED\n"
            "  --iters N          DKM iterations per forward (max_iterations; default: library's, 3)\n"
            "  --no-refresh       export with the centroids of the last training forward\n"
            "  --threads N        runtime worker threads (default 0 = the cores available)\n"
            "  --saved-mode M     histogram (default) | dkm | marshal | dedup | uniquify: what a forward\n"
            "                     keeps for backward (the eDKM ablation); training is the same math\n"
            "  --no-selfcheck     skip the finite-difference gradient check\n"
            "  --seed N           data / init seed (default 42)\n");
}

static int parse_options(int argc, char **argv, options *o) {
    int i;
    o->float_epochs = 20;
    o->ft_epochs = 4;
    o->float_lr = 3e-3;
    o->ft_lr = 2e-3;
    o->tau_mode = 2;
    o->tau_scale = 0.01;
    o->tau_abs = 0;
    o->key_dtype = EDKM_DTYPE_F32;
    o->max_iterations = 0;
    o->refresh = 1;
    o->selfcheck = 1;
    o->num_threads = 0;
    o->saved_mode = EDKM_SAVED_HISTOGRAM;
    o->bits[0] = 4;
    o->bits[1] = 3;
    o->nbits = 2;
    o->seed = 42;
    for (i = 1; i < argc; ++i) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV() do { if (!v) { fprintf(stderr, "%s needs a value\n", a); return 0; } ++i; } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--bits")) {
            const char *s;
            NEEDV();
            o->nbits = 0;
            for (s = v; *s && o->nbits < 8;) {
                char *end;
                long b = strtol(s, &end, 10);
                if (end == s || b < 1 || b > 8) { fprintf(stderr, "bad --bits %s\n", v); return 0; }
                o->bits[o->nbits++] = (unsigned)b;
                s = *end == ',' ? end + 1 : end;
                if (*end && *end != ',') { fprintf(stderr, "bad --bits %s\n", v); return 0; }
            }
            if (!o->nbits) return 0;
        } else if (!strcmp(a, "--epochs")) { NEEDV(); o->float_epochs = atoi(v);
        } else if (!strcmp(a, "--ft-epochs")) { NEEDV(); o->ft_epochs = atoi(v);
        } else if (!strcmp(a, "--lr")) { NEEDV(); o->float_lr = strtod(v, NULL);
        } else if (!strcmp(a, "--ft-lr")) { NEEDV(); o->ft_lr = strtod(v, NULL);
        } else if (!strcmp(a, "--tau-scale")) { NEEDV(); o->tau_mode = 0; o->tau_scale = strtod(v, NULL);
        } else if (!strcmp(a, "--tau")) { NEEDV(); o->tau_mode = 1; o->tau_abs = strtod(v, NULL);
        } else if (!strcmp(a, "--tau-default")) { o->tau_mode = 2;
        } else if (!strcmp(a, "--keys")) {
            NEEDV();
            if (!strcmp(v, "f32")) o->key_dtype = EDKM_DTYPE_F32;
            else if (!strcmp(v, "f16")) o->key_dtype = EDKM_DTYPE_F16;
            else if (!strcmp(v, "bf16")) o->key_dtype = EDKM_DTYPE_BF16;
            else { fprintf(stderr, "bad --keys %s\n", v); return 0; }
        } else if (!strcmp(a, "--iters")) { NEEDV(); o->max_iterations = atoi(v);
        } else if (!strcmp(a, "--no-refresh")) { o->refresh = 0;
        } else if (!strcmp(a, "--threads")) { NEEDV(); o->num_threads = (unsigned)atoi(v);
        } else if (!strcmp(a, "--saved-mode")) {
            static const char *const names[] = {"histogram", "dkm", "marshal", "dedup", "uniquify", "shard"};
            int m;
            NEEDV();
            o->saved_mode = -1;
            for (m = 0; m < 6; ++m)
                if (!strcmp(v, names[m])) o->saved_mode = m;
            if (o->saved_mode < 0 || o->saved_mode == EDKM_SAVED_SHARD) {
                fprintf(stderr, "bad --saved-mode %s (shard needs a communicator)\n", v);
                return 0;
            }
        } else if (!strcmp(a, "--no-selfcheck")) { o->selfcheck = 0;
        } else if (!strcmp(a, "--seed")) { NEEDV(); o->seed = (uint64_t)strtoull(v, NULL, 10);
        } else {
            fprintf(stderr, "unknown option %s\n", a);
            return 0;
        }
#undef NEEDV
    }
    if (o->float_epochs < 1 || o->ft_epochs < 0) return 0;
    return 1;
}

/* ============================ edkm helpers ============================ */

static const char *algorithm_name(int a) {
    switch (a) {
    case EDKM_ALGORITHM_AUTO: return "auto";
    case EDKM_ALGORITHM_DENSE: return "dense";
    case EDKM_ALGORITHM_UNIQUIFIED: return "uniquified";
    default: return "?";
    }
}

static double variance(const float *w, size_t n) {
    double s = 0, ss = 0;
    size_t i;
    for (i = 0; i < n; ++i) s += w[i];
    s /= (double)n;
    for (i = 0; i < n; ++i) ss += (w[i] - s) * (w[i] - s);
    return ss / (double)n;
}

/* One layer per weight matrix, shape {rows, cols}, per-tensor LUT, scalar clustering. */
static edkm_layer *make_layer(edkm_runtime *rt, const options *o, unsigned bits, const float *w,
                              int64_t rows, int64_t cols, edkm_layer_config *cfg_out) {
    edkm_layer_config cfg;
    edkm_layer *layer = NULL;
    int64_t shape[2];
    shape[0] = rows;
    shape[1] = cols;
    edkm_layer_config_init(&cfg);
    cfg.bits = bits;
    if (o->tau_mode != 2) cfg.temperature_mode = EDKM_TEMPERATURE_ABSOLUTE;
    if (o->tau_mode == 0) cfg.tau = o->tau_scale * variance(w, (size_t)(rows * cols));
    else if (o->tau_mode == 1) cfg.tau = o->tau_abs;
    /* else: keep the library default */
    if (o->max_iterations > 0) cfg.max_iterations = (uint32_t)o->max_iterations;
    cfg.f32_key_dtype = o->key_dtype;
    EDKM_CHECK(edkm_layer_create(rt, &cfg, shape, 2, &layer));
    if (cfg_out) { /* what the layer runs with: unset thresholds resolved by the library */
        *cfg_out = cfg;
        EDKM_CHECK(edkm_layer_get_config(layer, cfg_out));
    }
    return layer;
}

/*
 * Hard export of one layer: export (F16 LUT) + unpack to float32 `hard`, and check the result
 * against the header's contract. Returns the palettized bytes (LUT + packed indices).
 */
static size_t export_layer(edkm_layer *layer, const edkm_layer_config *cfg, const float *w, size_t n,
                           float *hard) {
    const unsigned bits = cfg->bits, k = 1u << bits;
    size_t lut_count = 0, packed_bytes = 0, count = 0, i, ties = 0;
    uint16_t *lut16;
    float *lut32, *centroids, *hard32;
    uint8_t *packed, *packed32;

    EDKM_CHECK(edkm_layer_export_sizes(layer, &lut_count, &packed_bytes));
    if (lut_count != k || packed_bytes != (n * bits + 7) / 8) fail("export sizes differ from the header's formula");
    lut16 = (uint16_t *)xmalloc(lut_count * 2);
    lut32 = (float *)xmalloc(lut_count * 4);
    packed = (uint8_t *)xmalloc(packed_bytes);
    packed32 = (uint8_t *)xmalloc(packed_bytes);
    hard32 = (float *)xmalloc(n * 4);
    EDKM_CHECK(edkm_layer_export(layer, w, EDKM_DTYPE_F32, n, lut16, EDKM_DTYPE_F16, packed, packed_bytes));
    EDKM_CHECK(edkm_layer_unpack(layer, lut16, EDKM_DTYPE_F16, packed, packed_bytes, hard, EDKM_DTYPE_F32, n));

    /* --- contract checks --- */
    EDKM_CHECK(edkm_layer_centroid_count(layer, &count));
    if (count != k) fail("centroid count != 2^bits");
    centroids = (float *)xmalloc(count * 4);
    EDKM_CHECK(edkm_layer_get_centroids(layer, centroids, count));
    EDKM_CHECK(edkm_layer_export(layer, w, EDKM_DTYPE_F32, n, lut32, EDKM_DTYPE_F32, packed32, packed_bytes));
    if (memcmp(packed, packed32, packed_bytes) != 0) fail("F16 and F32 exports packed different labels");
    for (i = 0; i < k; ++i) {
        if (lut32[i] != centroids[i]) fail("F32 LUT != edkm_layer_get_centroids");
        if (lut16[i] != f32_to_f16(centroids[i])) fail("F16 LUT != float16 rounding of the centroids");
    }
    EDKM_CHECK(edkm_layer_unpack(layer, lut32, EDKM_DTYPE_F32, packed32, packed_bytes, hard32, EDKM_DTYPE_F32, n));
    for (i = 0; i < n; ++i) {
        unsigned label = 0, b, j, best = 0;
        double dbest = 1e300, dlabel;
        for (b = 0; b < bits; ++b) { /* stream bit i*bits+b is bit (s%8) of byte s/8 */
            size_t s = i * bits + b;
            label |= (unsigned)((packed[s / 8] >> (s % 8)) & 1u) << b;
        }
        if (hard[i] != f16_to_f32(lut16[label])) fail("unpack (F16 LUT) != lut[label] of the packed stream");
        if (hard32[i] != lut32[label]) fail("unpack (F32 LUT) != lut[label] of the packed stream");
        for (j = 0; j < k; ++j) {
            double d = ((double)w[i] - centroids[j]) * ((double)w[i] - centroids[j]) - (j == 0 ? cfg->prune_threshold : 0);
            if (d < dbest) dbest = d, best = j;
        }
        dlabel = ((double)w[i] - centroids[label]) * ((double)w[i] - centroids[label]) - (label == 0 ? cfg->prune_threshold : 0);
        if (label != best) {
            if (dlabel - dbest > 1e-6 * (fabs(dbest) + 1e-12)) {
                fprintf(stderr, "weight %lu = %.9g: label %u (d %.9g), argmin %u (d %.9g)\n", (unsigned long)i,
                        (double)w[i], label, dlabel, best, dbest);
                fail("export label is not the argmin of the distance");
            }
            ++ties;
        }
    }
    /* unused bits at the end of the last byte are not specified: not checked */
    if (ties) printf("    (export: %lu near-ties resolved differently from double precision)\n", (unsigned long)ties);
    free(lut16);
    free(lut32);
    free(packed);
    free(packed32);
    free(hard32);
    free(centroids);
    return lut_count * 2 + packed_bytes;
}

/* ============================ Self-check: gradient vs finite differences ============================ */

/*
 * L(w) = sum_i g_i w~_i(w) with fixed random g and fixed starting centroids c0 (restored before
 * every forward, since a forward warm-starts the next one), epsilon = 0 so that every forward runs
 * exactly max_iterations. Compares edkm_saved_state_backward with central differences.
 *  f16 = 0: f32 weights, f32_key_dtype F32 (DENSE path), step 1e-3.
 *  f16 = 1: f16 weights (UNIQUIFIED path), values on a grid with repeats, step = 8 f16 ulps (exact).
 */
static double gradcheck(edkm_runtime *rt, int f16, int *algorithm) {
    enum { N = 64, ROWS = 8 };
    const double h = f16 ? 1.0 / 256 : 1e-3;
    float w32[N], g[N], out[N], grad[N], c0[4];
    uint16_t w16[N];
    edkm_layer_config cfg;
    edkm_layer *layer;
    edkm_saved_state *saved = NULL;
    edkm_layer_stats st;
    int64_t shape[2];
    rng_t r;
    int i, j;
    double maxg = 0, maxerr = 0;
    const void *wptr = f16 ? (const void *)w16 : (const void *)w32;
    const edkm_dtype dt = f16 ? EDKM_DTYPE_F16 : EDKM_DTYPE_F32;

    r.s = 7 + (uint64_t)f16;
    for (i = 0; i < N; ++i) { /* |w| in [67/128, 125/128]: w +- h stays in one f16 binade */
        double v = (67.0 + rng_below(&r, 59)) / 128.0;
        w32[i] = (float)(i % 2 ? v : -v);
        w16[i] = f32_to_f16(w32[i]);
        if (f16_to_f32(w16[i]) != w32[i]) fail("gradcheck grid not representable in f16");
        g[i] = (float)rng_normal(&r);
    }
    shape[0] = ROWS;
    shape[1] = N / ROWS;
    edkm_layer_config_init(&cfg);
    cfg.bits = 2;
    cfg.temperature_mode = EDKM_TEMPERATURE_ABSOLUTE;
    cfg.tau = 0.01;
    cfg.epsilon = 0;
    cfg.max_iterations = 3;
    EDKM_CHECK(edkm_layer_create(rt, &cfg, shape, 2, &layer));
    EDKM_CHECK(edkm_layer_init_centroids(layer, wptr, dt, N));
    EDKM_CHECK(edkm_layer_get_centroids(layer, c0, 4));

    EDKM_CHECK(edkm_layer_forward(layer, wptr, dt, N, out, EDKM_DTYPE_F32, &saved));
    st.struct_size = sizeof st;
    EDKM_CHECK(edkm_layer_get_stats(layer, &st));
    *algorithm = st.algorithm;
    if (st.iterations != 3) fail("gradcheck: forward did not run max_iterations with epsilon = 0");
    EDKM_CHECK(edkm_saved_state_backward(saved, g, grad, EDKM_DTYPE_F32, N, wptr)); /* f32 gradients */
    edkm_saved_state_destroy(saved);

    for (i = 0; i < N; ++i) {
        double lp = 0, lm = 0, fd;
        int s;
        for (s = 0; s < 2; ++s) {
            const float save32 = w32[i];
            const uint16_t save16 = w16[i];
            double l = 0;
            w32[i] = (float)(save32 + (s ? -h : h));
            w16[i] = f32_to_f16(w32[i]);
            EDKM_CHECK(edkm_layer_set_centroids(layer, c0, 4));
            EDKM_CHECK(edkm_layer_forward(layer, wptr, dt, N, out, EDKM_DTYPE_F32, NULL));
            for (j = 0; j < N; ++j) l += (double)g[j] * out[j];
            if (s) lm = l; else lp = l;
            w32[i] = save32;
            w16[i] = save16;
        }
        fd = (lp - lm) / (2 * h);
        if (fabs(fd) > maxg) maxg = fabs(fd);
        if (fabs(fd - grad[i]) > maxerr) maxerr = fabs(fd - grad[i]);
    }
    edkm_layer_destroy(layer);
    return maxerr / (maxg > 0 ? maxg : 1);
}

/* ============================ main ============================ */

typedef struct {
    const char *model;
    unsigned bits;
    double acc;
    size_t bytes;
} row_t;

int main(int argc, char **argv) {
    options o;
    dataset train, test;
    float *p_float, *p, *grad, *gw, *hard1, *hard2, *soft1, *soft2;
    int *order;
    edkm_runtime_config rcfg;
    edkm_runtime *rt = NULL;
    edkm_runtime_stats rs;
    row_t rows[1 + 2 * 8];
    int nrows = 0, bi, e, b, i, hits;
    long step, total;
    adam_t adam;
    rng_t r;
    double t0 = now_s(), t, acc_lin;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!parse_options(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    printf("libedkm %s (header %d.%d.%d)\n", edkm_version_string(), EDKM_VERSION_MAJOR, EDKM_VERSION_MINOR,
           EDKM_VERSION_PATCH);
    if (edkm_version_number() != EDKM_VERSION_NUMBER) fail("library version != header version");

    edkm_runtime_config_init(&rcfg);
    rcfg.num_threads = o.num_threads;
    rcfg.saved_mode = o.saved_mode;
    EDKM_CHECK(edkm_runtime_create(&rcfg, &rt));

    if (o.selfcheck) {
        int alg_dense, alg_uniq;
        double e32 = gradcheck(rt, 0, &alg_dense), e16 = gradcheck(rt, 1, &alg_uniq);
        printf("self-check: backward vs finite differences, max error / max |grad|: "
               "f32 %s %.2e, f16 %s %.2e\n", algorithm_name(alg_dense), e32, algorithm_name(alg_uniq), e16);
        if (!(e32 < 2e-2) || !(e16 < 2e-2)) fail("gradient self-check");
    }

    make_data(o.seed, &train, &test);
    acc_lin = linear_baseline(&train, &test, 10, o.seed + 1);
    printf("data: %d classes x %d modes in %d-D, %d train / %d test; a linear classifier gets %.2f %%\n", NCLS,
           MODES, DIM, train.n, test.n, 100 * acc_lin);

    /* ---------------- float training ---------------- */
    p_float = (float *)xmalloc(sizeof(float) * NPARAM);
    p = (float *)xmalloc(sizeof(float) * NPARAM);
    grad = (float *)xmalloc(sizeof(float) * NPARAM);
    gw = (float *)xmalloc(sizeof(float) * N_W1);
    hard1 = (float *)xmalloc(sizeof(float) * N_W1);
    hard2 = (float *)xmalloc(sizeof(float) * N_W2);
    soft1 = (float *)xmalloc(sizeof(float) * N_W1);
    soft2 = (float *)xmalloc(sizeof(float) * N_W2);
    order = (int *)xmalloc(sizeof(int) * NTRAIN);
    for (i = 0; i < NTRAIN; ++i) order[i] = i;
    r.s = o.seed * 31 + 5;

    init_params(p_float, o.seed + 2);
    adam_init(&adam, NPARAM);
    total = (long)o.float_epochs * (NTRAIN / BATCH);
    step = 0;
    t = now_s();
    for (e = 0; e < o.float_epochs; ++e) {
        double loss = 0;
        int nb = 0;
        shuffle(order, NTRAIN, &r);
        for (b = 0; b + BATCH <= NTRAIN; b += BATCH, ++nb) {
            memset(grad, 0, sizeof(float) * NPARAM);
            loss += mlp_batch(view_of(p_float), &train, order + b, BATCH, grad, 1.0 / BATCH, &hits) / BATCH;
            adam_step(&adam, p_float, grad, cosine_lr(o.float_lr, step++, total));
        }
        if (e == o.float_epochs - 1 || e % 5 == 4)
            printf("float epoch %2d: train loss %.4f, test acc %.2f %%\n", e + 1, loss / nb,
                   100 * accuracy(view_of(p_float), &test));
    }
    adam_free(&adam);
    rows[nrows].model = "float32";
    rows[nrows].bits = 32;
    rows[nrows].acc = accuracy(view_of(p_float), &test);
    rows[nrows].bytes = (size_t)(N_W1 + N_W2) * 4;
    ++nrows;
    printf("float training: %.2f s; weight std: W1 %.4f, W2 %.4f\n", now_s() - t,
           sqrt(variance(p_float + OFF_W1, N_W1)), sqrt(variance(p_float + OFF_W2, N_W2)));

    for (bi = 0; bi < o.nbits; ++bi) {
        const unsigned bits = o.bits[bi];
        edkm_layer_config c1, c2;
        edkm_layer *l1, *l2;
        edkm_layer_stats s1, s2;
        size_t bytes;
        uint64_t max_saved = 0;
        model_view v;

        /* ---------------- (a) post-training k-means ---------------- */
        l1 = make_layer(rt, &o, bits, p_float + OFF_W1, HID, DIM, &c1);
        l2 = make_layer(rt, &o, bits, p_float + OFF_W2, NCLS, HID, &c2);
        EDKM_CHECK(edkm_layer_init_centroids(l1, p_float + OFF_W1, EDKM_DTYPE_F32, N_W1));
        EDKM_CHECK(edkm_layer_init_centroids(l2, p_float + OFF_W2, EDKM_DTYPE_F32, N_W2));
        bytes = export_layer(l1, &c1, p_float + OFF_W1, N_W1, hard1);
        bytes += export_layer(l2, &c2, p_float + OFF_W2, N_W2, hard2);
        v = view_of(p_float);
        v.w1 = hard1;
        v.w2 = hard2;
        rows[nrows].model = "post-training k-means";
        rows[nrows].bits = bits;
        rows[nrows].acc = accuracy(v, &test);
        rows[nrows].bytes = bytes;
        ++nrows;
        printf("\n%u bits: tau W1 %.3g, W2 %.3g; post-training k-means test acc %.2f %%\n", bits, c1.tau, c2.tau,
               100 * rows[nrows - 1].acc);

        /* ---------------- (b) DKM fine-tuning ---------------- */
        /* Fresh layers whose centroids start from the same k-means of the float weights. */
        edkm_layer_destroy(l1);
        edkm_layer_destroy(l2);
        l1 = make_layer(rt, &o, bits, p_float + OFF_W1, HID, DIM, &c1);
        l2 = make_layer(rt, &o, bits, p_float + OFF_W2, NCLS, HID, &c2);
        memcpy(p, p_float, sizeof(float) * NPARAM);
        EDKM_CHECK(edkm_layer_init_centroids(l1, p + OFF_W1, EDKM_DTYPE_F32, N_W1));
        EDKM_CHECK(edkm_layer_init_centroids(l2, p + OFF_W2, EDKM_DTYPE_F32, N_W2));
        EDKM_CHECK(edkm_runtime_reset_peak(rt));
        adam_init(&adam, NPARAM);
        total = (long)o.ft_epochs * (NTRAIN / BATCH);
        step = 0;
        t = now_s();
        for (e = 0; e < o.ft_epochs; ++e) {
            double loss = 0;
            int nb = 0, soft_hits = 0;
            shuffle(order, NTRAIN, &r);
            for (b = 0; b + BATCH <= NTRAIN; b += BATCH, ++nb) {
                edkm_saved_state *sv1 = NULL, *sv2 = NULL;
                uint64_t sb1 = 0, sb2 = 0;
                /* w~ = DKM(w), keeping what the backward needs */
                EDKM_CHECK(edkm_layer_forward(l1, p + OFF_W1, EDKM_DTYPE_F32, N_W1, soft1, EDKM_DTYPE_F32, &sv1));
                EDKM_CHECK(edkm_layer_forward(l2, p + OFF_W2, EDKM_DTYPE_F32, N_W2, soft2, EDKM_DTYPE_F32, &sv2));
                EDKM_CHECK(edkm_saved_state_bytes(sv1, &sb1));
                EDKM_CHECK(edkm_saved_state_bytes(sv2, &sb2));
                if (sb1 + sb2 > max_saved) max_saved = sb1 + sb2;
                /* MLP forward/backward with w~: grad holds dL/dw~ for W1, W2 and dL/db */
                memset(grad, 0, sizeof(float) * NPARAM);
                v = view_of(p);
                v.w1 = soft1;
                v.w2 = soft2;
                loss += mlp_batch(v, &train, order + b, BATCH, grad, 1.0 / BATCH, &hits) / BATCH;
                soft_hits += hits;
                /* dL/dw through every DKM iteration; the weights go back for the hash check */
                EDKM_CHECK(edkm_saved_state_backward(sv1, grad + OFF_W1, gw, EDKM_DTYPE_F32, N_W1, p + OFF_W1));
                memcpy(grad + OFF_W1, gw, sizeof(float) * N_W1);
                EDKM_CHECK(edkm_saved_state_backward(sv2, grad + OFF_W2, gw, EDKM_DTYPE_F32, N_W2, p + OFF_W2));
                memcpy(grad + OFF_W2, gw, sizeof(float) * N_W2);
                edkm_saved_state_destroy(sv1);
                edkm_saved_state_destroy(sv2);
                adam_step(&adam, p, grad, cosine_lr(o.ft_lr, step++, total));
            }
            /* progress: hard-export accuracy with the current centroids (no refresh) */
            v = view_of(p);
            v.w1 = hard1;
            v.w2 = hard2;
            export_layer(l1, &c1, p + OFF_W1, N_W1, hard1);
            export_layer(l2, &c2, p + OFF_W2, N_W2, hard2);
            printf("  DKM epoch %d: train loss %.4f (soft w~, train acc %.2f %%), hard test acc %.2f %%\n", e + 1,
                   loss / nb, 100.0 * soft_hits / (nb * BATCH), 100 * accuracy(v, &test));
        }
        adam_free(&adam);
        if (o.refresh) { /* centroids for the final weights: one forward, nothing saved */
            EDKM_CHECK(edkm_layer_forward(l1, p + OFF_W1, EDKM_DTYPE_F32, N_W1, soft1, EDKM_DTYPE_F32, NULL));
            EDKM_CHECK(edkm_layer_forward(l2, p + OFF_W2, EDKM_DTYPE_F32, N_W2, soft2, EDKM_DTYPE_F32, NULL));
        }
        s1.struct_size = sizeof s1;
        s2.struct_size = sizeof s2;
        EDKM_CHECK(edkm_layer_get_stats(l1, &s1));
        EDKM_CHECK(edkm_layer_get_stats(l2, &s2));
        bytes = export_layer(l1, &c1, p + OFF_W1, N_W1, hard1);
        bytes += export_layer(l2, &c2, p + OFF_W2, N_W2, hard2);
        v = view_of(p); /* fine-tuned biases, hard palettized weights */
        v.w1 = hard1;
        v.w2 = hard2;
        rows[nrows].model = "DKM fine-tuned";
        rows[nrows].bits = bits;
        rows[nrows].acc = accuracy(v, &test);
        rows[nrows].bytes = bytes;
        ++nrows;
        rs.struct_size = sizeof rs;
        EDKM_CHECK(edkm_runtime_get_stats(rt, &rs));
        printf("  DKM fine-tuning: %.2f s, %lu forwards per layer, last forward: %s, %u iterations, inertia "
               "W1 %.4g W2 %.4g, distinct values %lu/%lu; saved state max %lu bytes/step, arena peak %lu bytes\n",
               now_s() - t, (unsigned long)s1.forwards, algorithm_name(s1.algorithm), s1.iterations, s1.inertia,
               s2.inertia, (unsigned long)s1.distinct_values, (unsigned long)s2.distinct_values,
               (unsigned long)max_saved, (unsigned long)rs.arena_peak);
        edkm_layer_destroy(l1);
        edkm_layer_destroy(l2);
    }

    printf("\n%-24s %4s %10s %14s\n", "model", "bits", "test acc", "weight bytes");
    for (i = 0; i < nrows; ++i)
        printf("%-24s %4u %9.2f%% %14lu\n", rows[i].model, rows[i].bits, 100 * rows[i].acc,
               (unsigned long)rows[i].bytes);
    printf("(weight bytes: W1 %dx%d + W2 %dx%d; float32 = 4 B/weight, palettized = float16 LUT + packed "
           "indices; the %d biases stay float32 everywhere)\n", HID, DIM, NCLS, HID, HID + NCLS);

    rs.struct_size = sizeof rs;
    EDKM_CHECK(edkm_runtime_get_stats(rt, &rs));
    printf("\nruntime stats: threads %u, saved_mode %d, arena_allocated %lu, arena_peak %lu, arena_active %lu,\n"
           "  heap_saved %lu, heap_saved_peak %lu, live_saved_states %lu, dedup hits/misses %lu/%lu, budget %lu, communicator_bytes %lu\n",
           rs.num_threads, o.saved_mode, (unsigned long)rs.arena_allocated, (unsigned long)rs.arena_peak,
           (unsigned long)rs.arena_active, (unsigned long)rs.heap_saved, (unsigned long)rs.heap_saved_peak,
           (unsigned long)rs.live_saved_states, (unsigned long)rs.dedup_hits, (unsigned long)rs.dedup_misses,
           (unsigned long)rs.budget_bytes, (unsigned long)rs.communicator_bytes);
    if (rs.live_saved_states != 0) fail("live_saved_states != 0 after every saved state was destroyed");
    /* Sanity (generous: catches a broken library, not run-to-run noise). */
    if (rows[0].acc < acc_lin + 0.05) fail("the float32 MLP does not beat the linear classifier");
    for (i = 1; i < nrows; ++i)
        if (rows[i].bits >= 3 && rows[i].acc < rows[0].acc - 0.08) fail("a >= 3-bit palettized model lost > 8 points");
    if (rs.arena_allocated != 0) printf("note: arena_allocated is %lu with no saved state alive\n",
                                        (unsigned long)rs.arena_allocated);
    edkm_runtime_destroy(rt);

    free(p_float); free(p); free(grad); free(gw); free(hard1); free(hard2); free(soft1); free(soft2); free(order);
    free(train.x); free(train.y); free(test.x); free(test.y);
    printf("total %.2f s\n", now_s() - t0);
    return 0;
}
