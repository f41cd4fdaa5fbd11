/*
 * soak.c: a leak soak of libedkm. 
 *
 * 10,000 training cycles (--cycles) of a small layer, each cycle on two runtimes:
 *   A  saved_mode EDKM_SAVED_DEDUP, gradient accumulation: two forwards of the same weights (the
 *      second one's saved tensors are deduplicated against the first's), then both backwards,
 *      then the saved states are destroyed and the weights take an "optimizer step";
 *   B  saved_mode EDKM_SAVED_SHARD with a one-rank communicator (index list sharded, all-gather in
 *      backward), forward + backward; and a forward_shard (sharded weights, all-reduce) + backward
 *      (--no-forward-shard leaves it out).
 * Every --sample cycles (500) it records the arena bytes of both runtimes (edkm_runtime_get_stats,
 * at two fixed points: with the cycle's saved states alive and after they are destroyed), their
 * live saved states, and the process RSS (/proc/self/statm). After warm-up (--warmup, default 20 %
 * of the cycles) it fits the slope of each series (bytes per 1000 cycles) and fails when the arena
 * series are not exactly flat (arena bytes are exact jemalloc counters: same work, same bytes), when
 * a saved state outlives its cycle, or when RSS grows by more than --rss-slope-kib KiB per 1000
 * cycles (default 64) or by more than --rss-growth-kib KiB in all after warm-up (default 2048).
 * So that every sampled cycle does exactly the same work (and arena bytes can be compared
 * exactly), the weights cycle through --versions (4) versions made by real optimizer steps at the
 * start, and each cycle restores the layers' centroids (edkm_layer_set_centroids, as a checkpoint
 * restore would) before its forwards; the sample interval is a multiple of the version count.
 * It also checks that the second forward of a cycle deduplicates its weight copies (dedup hits).
 *
 * Prints the samples, the slopes and "soak: PASS" / "soak: FAIL"; exit status 0 / 1.
 */
#include "rel_common.h"

#include <stdint.h>

enum { ROWS = 32, COLS = 64, N = ROWS * COLS };

typedef struct {
    edkm_runtime *rt;
    edkm_layer *layer;
} Side;

static uint64_t arena_bytes(edkm_runtime *rt, uint64_t *live) {
    edkm_runtime_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    REL_CHECK(edkm_runtime_get_stats(rt, &st));
    if (live) *live = st.live_saved_states;
    return st.arena_allocated;
}

static void make_side(Side *s, int mode, uint32_t threads, const edkm_communicator *comm, int bits) {
    edkm_runtime_config rc;
    edkm_runtime_config_init(&rc);
    rc.saved_mode = mode;
    rc.num_threads = threads;
    rc.communicator = comm;
    REL_CHECK(edkm_runtime_create(&rc, &s->rt));
    edkm_layer_config lc;
    edkm_layer_config_init(&lc);
    lc.bits = (uint32_t)bits;
    int64_t shape[2] = { ROWS, COLS };
    REL_CHECK(edkm_layer_create(s->rt, &lc, shape, 2, &s->layer));
}

int main(int argc, char **argv) {
    long cycles = 10000, sample = 500, warmup = -1;
    uint32_t threads = 1;
    int forward_shard = 1;
    double rss_slope_kib = 64, rss_growth_kib = 2048;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cycles") && i + 1 < argc) cycles = atol(argv[++i]);
        else if (!strcmp(argv[i], "--sample") && i + 1 < argc) sample = atol(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = atol(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rss-slope-kib") && i + 1 < argc) rss_slope_kib = atof(argv[++i]);
        else if (!strcmp(argv[i], "--rss-growth-kib") && i + 1 < argc) rss_growth_kib = atof(argv[++i]);
        else if (!strcmp(argv[i], "--no-forward-shard")) forward_shard = 0;
        else {
            fprintf(stderr, "usage: %s [--cycles N] [--sample K] [--warmup W] [--threads T] [--no-forward-shard]\n"
                            "          [--rss-slope-kib S] [--rss-growth-kib G]\n", argv[0]);
            return 2;
        }
    }
    if (sample < 4) sample = 4;
    if (sample % 4) sample += 4 - sample % 4;   /* a multiple of the weight versions (4) */
    if (warmup < 0) warmup = cycles / 5;
    int nsamples = (int)(cycles / sample) + 1;
    printf("soak: %ld cycles (sample every %ld, warm-up %ld), %u thread(s), %dx%d f16 layer, runtime A DEDUP "
           "(2 forwards + 2 backwards per cycle), runtime B SHARD + 1-rank communicator%s\n",
           cycles, sample, warmup, threads, ROWS, COLS, forward_shard ? " (+ forward_shard)" : "");

    rel_comm_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    edkm_communicator comm = rel_comm_make(&ctx, 1);
    Side A, B;
    make_side(&A, EDKM_SAVED_DEDUP, threads, NULL, 3);
    make_side(&B, EDKM_SAVED_SHARD, threads, &comm, 3);

    enum { VERSIONS = 4 };
    uint16_t *wv[VERSIONS], *wsoft = malloc(N * 2);
    float *wf = malloc(N * 4), *g = malloc(N * 4), *g1 = malloc(N * 4), *g2 = malloc(N * 4), *out = malloc(N * 4);
    uint64_t seed = 42;
    for (int i = 0; i < N; i++) wf[i] = (float)(rel_normal(&seed) * 0.02);
    /* the weight versions: a few real optimizer steps of 0.5 |w~ - w_target|^2 on runtime A */
    float *target = malloc(N * 4);
    for (int i = 0; i < N; i++) target[i] = (float)(rel_normal(&seed) * 0.02);
    size_t ncent = 0;
    REL_CHECK(edkm_layer_centroid_count(A.layer, &ncent));
    float *c0a = malloc(ncent * 4), *c0b = malloc(ncent * 4);
    for (int v = 0; v < VERSIONS; v++) {
        wv[v] = malloc(N * 2);
        for (int i = 0; i < N; i++) wv[v][i] = rel_float_to_f16(wf[i]);
        edkm_saved_state *s = NULL;
        REL_CHECK(edkm_layer_forward(A.layer, wv[v], EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &s));
        for (int i = 0; i < N; i++) g[i] = out[i] - target[i];
        REL_CHECK(edkm_saved_state_backward(s, g, g1, EDKM_DTYPE_F32, N, wv[v]));
        edkm_saved_state_destroy(s);
        for (int i = 0; i < N; i++) wf[i] -= 0.5f * g1[i];
    }
    REL_CHECK(edkm_layer_init_centroids(A.layer, wv[0], EDKM_DTYPE_F16, N));
    REL_CHECK(edkm_layer_get_centroids(A.layer, c0a, ncent));
    REL_CHECK(edkm_layer_init_centroids(B.layer, wv[0], EDKM_DTYPE_F16, N));
    REL_CHECK(edkm_layer_get_centroids(B.layer, c0b, ncent));

    double *xs = calloc((size_t)nsamples + 1, sizeof(double));
    double *ya_live = calloc((size_t)nsamples + 1, sizeof(double)), *ya_idle = calloc((size_t)nsamples + 1, sizeof(double));
    double *yb_live = calloc((size_t)nsamples + 1, sizeof(double)), *yb_idle = calloc((size_t)nsamples + 1, sizeof(double));
    double *yrss = calloc((size_t)nsamples + 1, sizeof(double));
    int ns = 0, failures = 0;
    edkm_runtime_stats st0;
    memset(&st0, 0, sizeof st0);
    st0.struct_size = sizeof st0;
    double t0 = rel_now();
    uint64_t dedup_before = 0;

    printf("%8s %14s %14s %14s %14s %12s\n", "cycle", "A arena live", "A arena idle", "B arena live", "B arena idle", "RSS KiB");
    for (long c = 1; c <= cycles; c++) {
        uint16_t *w = wv[c % VERSIONS];
        REL_CHECK(edkm_layer_set_centroids(A.layer, c0a, ncent));   /* checkpoint restore: same work every VERSIONS cycles */
        REL_CHECK(edkm_layer_set_centroids(B.layer, c0b, ncent));
        /* --- A: gradient accumulation over two micro-batches with the same weights (dedup) --- */
        edkm_saved_state *s1 = NULL, *s2 = NULL;
        REL_CHECK(edkm_layer_forward(A.layer, w, EDKM_DTYPE_F16, N, wsoft, EDKM_DTYPE_F16, &s1));
        REL_CHECK(edkm_layer_forward(A.layer, w, EDKM_DTYPE_F16, N, wsoft, EDKM_DTYPE_F16, &s2));
        for (int i = 0; i < N; i++) g[i] = rel_f16_to_float(wsoft[i]) - target[i];   /* d/dw~ of 0.5 |w~ - target|^2 */
        /* --- B: SHARD saved mode, and sharded weights --- */
        edkm_saved_state *s3 = NULL, *s4 = NULL;
        REL_CHECK(edkm_layer_forward(B.layer, w, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &s3));
        if (forward_shard) REL_CHECK(edkm_layer_forward_shard(B.layer, w, EDKM_DTYPE_F16, 0, N, out, EDKM_DTYPE_F32, &s4));
        int sampling = (c % sample) == 0;
        uint64_t a_live = 0, b_live = 0, live_a = 0, live_b = 0;
        if (sampling) {
            a_live = arena_bytes(A.rt, &live_a);
            b_live = arena_bytes(B.rt, &live_b);
            if (live_a != 2 || live_b != (uint64_t)(forward_shard ? 2 : 1)) {
                fprintf(stderr, "soak: cycle %ld: live_saved_states A %llu B %llu mid-cycle\n", c,
                        (unsigned long long)live_a, (unsigned long long)live_b);
                failures++;
            }
        }
        REL_CHECK(edkm_saved_state_backward(s2, g, g2, EDKM_DTYPE_F32, N, w));
        REL_CHECK(edkm_saved_state_backward(s1, g, g1, EDKM_DTYPE_F32, N, w));
        REL_CHECK(edkm_saved_state_backward(s3, g, g2, EDKM_DTYPE_F32, N, NULL));   /* index list: weights not needed */
        if (s4) REL_CHECK(edkm_saved_state_backward(s4, g, g2, EDKM_DTYPE_F32, N, w));
        edkm_saved_state_destroy(s1);
        edkm_saved_state_destroy(s2);
        edkm_saved_state_destroy(s3);
        edkm_saved_state_destroy(s4);
        if (c == 1) {
            edkm_runtime_get_stats(A.rt, &st0);
            dedup_before = st0.dedup_hits;
            if (dedup_before == 0) { fprintf(stderr, "soak: no dedup hit in DEDUP mode after the first cycle\n"); failures++; }
        }
        if (sampling) {
            uint64_t la = 0, lb = 0;
            uint64_t a_idle = arena_bytes(A.rt, &la), b_idle = arena_bytes(B.rt, &lb);
            if (la || lb) { fprintf(stderr, "soak: cycle %ld: %llu/%llu saved states alive after destroy\n", c,
                                    (unsigned long long)la, (unsigned long long)lb); failures++; }
            uint64_t rss = rel_rss_bytes();
            printf("%8ld %14llu %14llu %14llu %14llu %12llu\n", c, (unsigned long long)a_live, (unsigned long long)a_idle,
                   (unsigned long long)b_live, (unsigned long long)b_idle, (unsigned long long)(rss / 1024));
            fflush(stdout);
            xs[ns] = (double)c;
            ya_live[ns] = (double)a_live; ya_idle[ns] = (double)a_idle;
            yb_live[ns] = (double)b_live; yb_idle[ns] = (double)b_idle;
            yrss[ns] = (double)rss;
            ns++;
        }
    }
    double dt = rel_now() - t0;
    edkm_runtime_stats sa;
    memset(&sa, 0, sizeof sa);
    sa.struct_size = sizeof sa;
    edkm_runtime_get_stats(A.rt, &sa);

    /* slopes after warm-up */
    int first = 0;
    while (first < ns && xs[first] <= (double)warmup) first++;
    int m = ns - first;
    if (m < 2) { fprintf(stderr, "soak: too few samples after warm-up (%d)\n", m); failures++; }
    double k = 1000.0;
    double sl_al = m >= 2 ? rel_slope(xs + first, ya_live + first, m) * k : 0;
    double sl_ai = m >= 2 ? rel_slope(xs + first, ya_idle + first, m) * k : 0;
    double sl_bl = m >= 2 ? rel_slope(xs + first, yb_live + first, m) * k : 0;
    double sl_bi = m >= 2 ? rel_slope(xs + first, yb_idle + first, m) * k : 0;
    double sl_rss = m >= 2 ? rel_slope(xs + first, yrss + first, m) * k : 0;
    double amin[4] = { 1e300, 1e300, 1e300, 1e300 }, amax[4] = { -1e300, -1e300, -1e300, -1e300 }, rmin = 1e300, rmax = -1e300;
    for (int i = first; i < ns; i++) {
        double v[4] = { ya_live[i], ya_idle[i], yb_live[i], yb_idle[i] };
        for (int j = 0; j < 4; j++) { if (v[j] < amin[j]) amin[j] = v[j]; if (v[j] > amax[j]) amax[j] = v[j]; }
        if (yrss[i] < rmin) rmin = yrss[i];
        if (yrss[i] > rmax) rmax = yrss[i];
    }
    printf("soak: %ld cycles in %.1f s (%.2f ms/cycle); dedup hits %llu, misses %llu on runtime A\n", cycles, dt,
           1e3 * dt / (double)cycles, (unsigned long long)sa.dedup_hits, (unsigned long long)sa.dedup_misses);
    printf("soak: slopes after warm-up (%d samples), bytes per 1000 cycles:\n", m);
    printf("  arena A (DEDUP) with states alive: %+.1f (range %.0f..%.0f)\n", sl_al, amin[0], amax[0]);
    printf("  arena A (DEDUP) after destroy:     %+.1f (range %.0f..%.0f)\n", sl_ai, amin[1], amax[1]);
    printf("  arena B (SHARD) with states alive: %+.1f (range %.0f..%.0f)\n", sl_bl, amin[2], amax[2]);
    printf("  arena B (SHARD) after destroy:     %+.1f (range %.0f..%.0f)\n", sl_bi, amin[3], amax[3]);
    printf("  process RSS:                       %+.1f (%.1f KiB per 1000 cycles; range %.0f..%.0f KiB)\n", sl_rss,
           sl_rss / 1024.0, rmin / 1024.0, rmax / 1024.0);
    for (int j = 0; j < 4; j++) {
        if (m >= 2 && amax[j] != amin[j]) {
            fprintf(stderr, "soak: arena series %d not flat after warm-up (%.0f..%.0f bytes)\n", j, amin[j], amax[j]);
            failures++;
        }
    }
    if (m >= 2 && amax[1] != 0) { fprintf(stderr, "soak: arena A holds %.0f bytes with no saved state\n", amax[1]); failures++; }
    if (m >= 2 && amax[3] != 0) { fprintf(stderr, "soak: arena B holds %.0f bytes with no saved state\n", amax[3]); failures++; }
    if (sl_rss / 1024.0 > rss_slope_kib) {
        fprintf(stderr, "soak: RSS grows %.1f KiB per 1000 cycles (bound %.0f)\n", sl_rss / 1024.0, rss_slope_kib);
        failures++;
    }
    if (m >= 2 && (yrss[ns - 1] - yrss[first]) / 1024.0 > rss_growth_kib) {
        fprintf(stderr, "soak: RSS grew %.0f KiB after warm-up (bound %.0f)\n", (yrss[ns - 1] - yrss[first]) / 1024.0, rss_growth_kib);
        failures++;
    }
    edkm_layer_destroy(A.layer);
    edkm_layer_destroy(B.layer);
    edkm_runtime_destroy(A.rt);
    edkm_runtime_destroy(B.rt);
    for (int v = 0; v < VERSIONS; v++) free(wv[v]);
    free(wsoft); free(wf); free(g); free(g1); free(g2); free(out); free(target); free(c0a); free(c0b);
    free(xs); free(ya_live); free(ya_idle); free(yb_live); free(yb_idle); free(yrss);
    printf("soak: %s\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
