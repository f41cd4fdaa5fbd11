/*
 * device_split.c: a trainer that owns its weight tensors and runs DKM through libedkm's histogram
 * form (since 0.3), the way a GPU trainer would: the four O(N) passes are the trainer's own code
 * (here plain C loops on the host, standing in for device kernels) and only U-sized tables are
 * handed to the library.
 *
 *     "device" (trainer)                               libedkm (host)
 *     counts = per-partition histogram of the keys  ->  edkm_layer_forward_histogram
 *     w~_i = soft[slot(key_i)]                      <-  soft value per key
 *     G = per-key sums of g = dL/dw~                ->  edkm_saved_state_backward_histogram
 *     dL/dw_i = g_i h[slot] + r[slot]               <-  h, r per key
 *
 * The tensor: 256 x 512 bf16 weights, 3 bits, one LUT per 64 rows (4 partitions). The loss
 * L = 1/2 sum (w~ - w0)^2 pulls the clustered weights toward the starting ones; a few SGD steps
 * on w. The first step is checked against the buffer form (edkm_layer_forward /
 * edkm_saved_state_backward on a twin layer): soft weights bit-identical, gradients within 1e-6
 * of the largest. Exit status 1 on a mismatch or a library error.
 *
 * A data-parallel trainer whose ranks hold slices of one tensor would all-reduce (sum) `counts`
 * and `G` over its ranks right before the two library calls (NCCL, MPI: U doubles each); the
 * ranks then get identical centroids and tables. Ranks holding the whole tensor skip that.
 *
 *   cc -std=c99 -O2 -Wall -Wextra -I include examples/c/device_split.c -L .build/release -ledkm \
 *      -Wl,-rpath,$PWD/.build/release -lm -o examples/c/bin/device_split
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edkm.h"

#define ROWS 256
#define COLS 512
#define N (ROWS * COLS)
#define GROUP 64
#define P (ROWS / GROUP)
#define PER (N / P)
#define STEPS 5

static int failed(edkm_status s, const char *what) {
    if (s == EDKM_OK) return 0;
    fprintf(stderr, "%s: %s: %s\n", what, edkm_status_name(s), edkm_last_error());
    return 1;
}

static float bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t f32_to_bf16(float f) { /* round to nearest even (finite values) */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* ---------------- the trainer's "device kernels": the four O(N) passes ---------------- */

/* The histogram tables the passes share: per partition, key -> slot (index into the U-sized
 * arrays) for the keys present. 65,536 entries per partition (on a GPU: bincount + nonzero). */
typedef struct {
    uint32_t slot[P][65536];
    uint16_t keys[P * 65536];
    double counts[P * 65536];
    size_t offsets[P + 1];
} histogram;

/* Pass 1: count the keys of every partition; compact to ascending keys, counts, offsets. */
static void pass_histogram(const uint16_t *w, histogram *h) {
    static uint32_t tally[65536];
    size_t p, i, u = 0;
    for (p = 0; p < P; ++p) {
        memset(tally, 0, sizeof tally);
        for (i = 0; i < PER; ++i) tally[w[p * PER + i]]++;
        h->offsets[p] = u;
        for (i = 0; i < 65536; ++i) {
            if (!tally[i]) continue;
            h->slot[p][i] = (uint32_t)u;
            h->keys[u] = (uint16_t)i;
            h->counts[u] = tally[i];
            ++u;
        }
    }
    h->offsets[P] = u;
}

/* Pass 2: w~_i = soft[slot(key_i)], rounded to float then bf16 as the buffer form rounds. */
static void pass_gather_soft(const uint16_t *w, const histogram *h, const double *soft, uint16_t *out) {
    size_t p, i;
    for (p = 0; p < P; ++p)
        for (i = 0; i < PER; ++i) out[p * PER + i] = f32_to_bf16((float)soft[h->slot[p][w[p * PER + i]]]);
}

/* Pass 3: G[slot] = sum of g over the elements with that key, in float64. */
static void pass_gradient_sums(const uint16_t *w, const histogram *h, const float *g, double *G) {
    size_t p, i;
    memset(G, 0, h->offsets[P] * sizeof *G);
    for (p = 0; p < P; ++p)
        for (i = 0; i < PER; ++i) G[h->slot[p][w[p * PER + i]]] += g[p * PER + i];
}

/* Pass 4: dL/dw_i = g_i h[slot] + r[slot] (h, r rounded to float as the buffer form does). */
static void pass_gradients(const uint16_t *w, const histogram *h, const double *hh, const double *rr,
                           const float *g, float *out) {
    size_t p, i;
    for (p = 0; p < P; ++p)
        for (i = 0; i < PER; ++i) {
            uint32_t s = h->slot[p][w[p * PER + i]];
            out[p * PER + i] = fmaf(g[p * PER + i], (float)hh[s], (float)rr[s]);
        }
}

/* ---------------- the trainer ---------------- */

static uint64_t rng_state = 0x1234567;
static double uniform01(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return ((rng_state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
static double normal(void) { return sqrt(-2 * log(uniform01())) * cos(6.283185307179586 * uniform01()); }

int main(void) {
    static uint16_t w[N], w0[N], soft_w[N], buf_out[N];
    static float g[N], grad[N], buf_grad[N];
    static histogram hist;
    static double soft[P * 65536], G[P * 65536], hh[P * 65536], rr[P * 65536];
    const int64_t shape[2] = {ROWS, COLS};
    edkm_runtime *rt = NULL;
    edkm_layer *layer = NULL, *twin = NULL;
    edkm_layer_config cfg;
    edkm_layer_stats stats;
    float centroids[P * 8];
    size_t i, bytes_step = 0;
    int step, bad = 0;
    const float lr = 0.002f;

    for (i = 0; i < N; ++i) w0[i] = w[i] = f32_to_bf16((float)(0.02 * normal()));
    edkm_layer_config_init(&cfg);
    cfg.bits = 3;
    cfg.group_size = GROUP;
    if (failed(edkm_runtime_create(NULL, &rt), "runtime_create") ||
        failed(edkm_layer_create(rt, &cfg, shape, 2, &layer), "layer_create") ||
        failed(edkm_layer_create(rt, &cfg, shape, 2, &twin), "layer_create (buffer-form twin)") ||
        failed(edkm_layer_init_centroids(layer, w, EDKM_DTYPE_BF16, N), "layer_init_centroids") ||
        failed(edkm_layer_get_centroids(layer, centroids, P * 8), "layer_get_centroids") ||
        failed(edkm_layer_set_centroids(twin, centroids, P * 8), "layer_set_centroids"))
        return 1;

    for (step = 0; step < STEPS; ++step) {
        edkm_saved_state *state = NULL;
        double loss = 0;
        size_t U;
        /* forward */
        pass_histogram(w, &hist);
        U = hist.offsets[P];
        /* (data parallel with sliced tensors: all-reduce hist.counts here) */
        if (failed(edkm_layer_forward_histogram(layer, EDKM_DTYPE_BF16, hist.keys, hist.counts, hist.offsets, P,
                                                soft, &state), "layer_forward_histogram"))
            return 1;
        pass_gather_soft(w, &hist, soft, soft_w);
        /* loss and upstream gradient */
        for (i = 0; i < N; ++i) {
            float d = bf16_to_f32(soft_w[i]) - bf16_to_f32(w0[i]);
            loss += 0.5 * d * d;
            g[i] = d;
        }
        /* backward */
        pass_gradient_sums(w, &hist, g, G);
        /* (data parallel with sliced tensors: all-reduce G here) */
        if (failed(edkm_saved_state_backward_histogram(state, G, U, hh, rr), "saved_state_backward_histogram")) return 1;
        edkm_saved_state_destroy(state);
        pass_gradients(w, &hist, hh, rr, g, grad);
        /* what a GPU trainer moves per step: keys (2 B) + counts (4 B as uint32) up, soft values (2 B)
         * down, G (8 B) up, h and r (4 B each as float) down, plus the offsets */
        bytes_step = U * (2 + 4 + 2 + 8 + 8) + (P + 1) * 8;
        stats.struct_size = sizeof stats;
        if (failed(edkm_layer_get_stats(layer, &stats), "layer_get_stats")) return 1;

        if (step == 0) { /* the buffer form on the same weights and upstream gradient */
            edkm_saved_state *bs = NULL;
            double worst = 0, scale = 0;
            int same = 1;
            if (failed(edkm_layer_forward(twin, w, EDKM_DTYPE_BF16, N, buf_out, EDKM_DTYPE_BF16, &bs), "layer_forward") ||
                failed(edkm_saved_state_backward(bs, g, buf_grad, EDKM_DTYPE_F32, N, w), "saved_state_backward"))
                return 1;
            edkm_saved_state_destroy(bs);
            for (i = 0; i < N; ++i) {
                same &= buf_out[i] == soft_w[i];
                if (fabs(buf_grad[i]) > scale) scale = fabs(buf_grad[i]);
                if (fabs(buf_grad[i] - grad[i]) > worst) worst = fabs(buf_grad[i] - grad[i]);
            }
            printf("check against the buffer form: soft weights %s, gradients max |diff| %.3g of max %.3g\n",
                   same ? "bit-identical" : "DIFFER", worst, scale);
            bad |= !same || worst > 1e-6 * scale;
        }
        for (i = 0; i < N; ++i) w[i] = f32_to_bf16(bf16_to_f32(w[i]) - lr * grad[i]);
        printf("step %d: loss %.6e, U = %zu distinct keys over %d LUTs, %d iterations; bytes crossed %zu "
               "vs 4 x 2N = %d (%.0fx less)\n",
               step, loss, U, P, (int)stats.iterations, bytes_step, 8 * N, 8.0 * N / (double)bytes_step);
    }
    edkm_layer_destroy(layer);
    edkm_layer_destroy(twin);
    edkm_runtime_destroy(rt);
    printf("%s\n", bad ? "FAIL" : "OK");
    return bad;
}
