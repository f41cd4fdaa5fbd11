/*
 * budget.c: the offload arena's byte budget. 
 *
 * For each arena saved mode (MARSHAL, DEDUP, UNIQUIFY, SHARD, HISTOGRAM + keep_weights):
 *   1. measure what one saved state takes in the arena (an unlimited runtime: arena_allocated
 *      with the state alive);
 *   2. a runtime whose budget is one byte less: the forward fails cleanly with
 *      EDKM_ERR_BUDGET_EXCEEDED (nothing written to the output, *saved untouched, the layer's
 *      centroids unchanged, the arena back to its starting bytes, no live saved state), and with
 *      the budget exactly equal to the need it succeeds;
 *   3. the trainer continues in each of the three ways the header allows:
 *        a. raise the budget (edkm_runtime_set_budget) and retry: forward + backward succeed;
 *        b. lower the work: a layer with fewer bits on the same runtime fits the small budget;
 *        c. lower the work: a smaller saved mode (EDKM_SAVED_HISTOGRAM) under the same budget;
 *   4. gradient accumulation under a budget of 1.5 states: the second forward fails, the first
 *      state's backward still works; and a budget lowered below the bytes already held does not
 *      affect the live state ("bytes already held are not affected");
 * all of it --rounds times (default 200) on the same runtimes (created once per mode; see churn.c for
 * runtime create/destroy cycles), checking that the arena returns to its starting bytes after every
 * round and that RSS does not grow (no leak on the error paths).
 * Prints "budget: PASS" / "budget: FAIL".
 */
#include "rel_common.h"

enum { ROWS = 32, COLS = 64, N = ROWS * COLS };

static int failures = 0;
#define EXPECT(cond, ...) do { if (!(cond)) { failures++; fprintf(stderr, "budget: FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); } } while (0)

static edkm_runtime_stats stats(edkm_runtime *rt) {
    edkm_runtime_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    REL_CHECK(edkm_runtime_get_stats(rt, &st));
    return st;
}

static edkm_runtime *runtime(int mode, int keep, uint64_t budget, const edkm_communicator *comm) {
    edkm_runtime_config rc;
    edkm_runtime_config_init(&rc);
    rc.saved_mode = mode;
    rc.keep_weights = (uint32_t)keep;
    rc.budget_bytes = budget;
    rc.num_threads = 1;
    rc.communicator = comm;
    edkm_runtime *rt;
    REL_CHECK(edkm_runtime_create(&rc, &rt));
    return rt;
}

static edkm_layer *layer(edkm_runtime *rt, int bits) {
    edkm_layer_config lc;
    edkm_layer_config_init(&lc);
    lc.bits = (uint32_t)bits;
    int64_t shape[2] = { ROWS, COLS };
    edkm_layer *l;
    REL_CHECK(edkm_layer_create(rt, &lc, shape, 2, &l));
    return l;
}

static uint16_t w[N];
static float out[N], g[N], gi[N];

/* forward + backward + destroy; returns the status of the forward */
static edkm_status step(edkm_layer *l, edkm_saved_state **keep) {
    edkm_saved_state *s = NULL;
    edkm_status st = edkm_layer_forward(l, w, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &s);
    if (st != EDKM_OK) return st;
    if (keep) { *keep = s; return st; }
    edkm_status b = edkm_saved_state_backward(s, g, gi, EDKM_DTYPE_F32, N, w);
    EXPECT(b == EDKM_OK, "backward after a budgeted forward: %s (%s)", edkm_status_name(b), edkm_last_error());
    edkm_saved_state_destroy(s);
    return st;
}

static const char *mode_name(int m, int keep) {
    static const char *names[] = { "HISTOGRAM", "DKM", "MARSHAL", "DEDUP", "UNIQUIFY", "SHARD" };
    return keep ? "HISTOGRAM+keep_weights" : names[m];
}

int main(int argc, char **argv) {
    int rounds = 200;
    double rss_kib = 1024;   /* RSS growth bound after warm-up (ASan's quarantine needs --rss-kib 1e9) */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rss-kib") && i + 1 < argc) rss_kib = atof(argv[++i]);
        else { fprintf(stderr, "usage: %s [--rounds R] [--rss-kib K]\n", argv[0]); return 2; }
    }
    uint64_t seed = 7;
    for (int i = 0; i < N; i++) { w[i] = rel_float_to_f16((float)(rel_normal(&seed) * 0.02)); g[i] = (float)(rel_normal(&seed) * 0.01); }
    rel_comm_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    edkm_communicator comm = rel_comm_make(&ctx, 1);
    static const int modes[][2] = { { EDKM_SAVED_MARSHAL, 0 }, { EDKM_SAVED_DEDUP, 0 }, { EDKM_SAVED_UNIQUIFY, 0 },
                                    { EDKM_SAVED_SHARD, 0 }, { EDKM_SAVED_HISTOGRAM, 1 } };
    const int nmodes = (int)(sizeof modes / sizeof modes[0]);
    uint64_t rss_first = 0, rss_last = 0;
    edkm_runtime *bigs[8], *rts[8], *smalls[8];
    for (int mi = 0; mi < nmodes; mi++) {
        int mode = modes[mi][0], keep = modes[mi][1];
        bigs[mi] = runtime(mode, keep, 0, mode == EDKM_SAVED_SHARD ? &comm : NULL);
        rts[mi] = runtime(mode, keep, 0, mode == EDKM_SAVED_SHARD ? &comm : NULL);
        smalls[mi] = runtime(EDKM_SAVED_HISTOGRAM, 0, 0, NULL);
    }
    double t0 = rel_now();
    for (int round = 0; round < rounds; round++) {
        for (int mi = 0; mi < nmodes; mi++) {
            int mode = modes[mi][0], keep = modes[mi][1];
            const char *name = mode_name(mode, keep);
            /* 1. one state's arena bytes */
            edkm_runtime *big = bigs[mi];
            edkm_layer *lb = layer(big, 4);
            uint64_t base = stats(big).arena_allocated;
            edkm_saved_state *s = NULL;
            REL_CHECK(edkm_layer_forward(lb, w, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &s));
            uint64_t need = stats(big).arena_allocated - base;
            uint64_t sbytes = 0;
            REL_CHECK(edkm_saved_state_bytes(s, &sbytes));
            EXPECT(need > 0 && sbytes > 0, "%s: a saved state takes %llu arena bytes (%llu by saved_state_bytes)", name,
                   (unsigned long long)need, (unsigned long long)sbytes);
            edkm_saved_state_destroy(s);
            EXPECT(stats(big).arena_allocated == base, "%s: arena not back to base after destroy", name);
            edkm_layer_destroy(lb);
            if (round == 0) printf("budget: %-24s one saved state = %8llu arena bytes (edkm_saved_state_bytes %llu)\n", name,
                                   (unsigned long long)need, (unsigned long long)sbytes);

            /* 2. a budget one byte short: clean failure; exactly the need: success */
            edkm_runtime *rt = rts[mi];
            REL_CHECK(edkm_runtime_set_budget(rt, need - 1));
            edkm_layer *l = layer(rt, 4);
            REL_CHECK(edkm_layer_init_centroids(l, w, EDKM_DTYPE_F16, N));
            float c_before[16], c_after[16];
            REL_CHECK(edkm_layer_get_centroids(l, c_before, 16));
            uint64_t base2 = stats(rt).arena_allocated;
            for (int i = 0; i < N; i++) out[i] = -12345.0f;
            edkm_saved_state *canary = (edkm_saved_state *)(uintptr_t)0xA5A5A5A5u, *s2 = canary;
            edkm_status st = edkm_layer_forward(l, w, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &s2);
            EXPECT(st == EDKM_ERR_BUDGET_EXCEEDED, "%s: budget %llu < need %llu: forward gave %s", name,
                   (unsigned long long)(need - 1), (unsigned long long)need, edkm_status_name(st));
            EXPECT(s2 == canary, "%s: failed forward wrote *saved", name);
            int written = 0;
            for (int i = 0; i < N; i++) written += out[i] != -12345.0f;
            EXPECT(written == 0, "%s: failed forward wrote %d outputs", name, written);
            REL_CHECK(edkm_layer_get_centroids(l, c_after, 16));
            EXPECT(memcmp(c_before, c_after, sizeof c_before) == 0, "%s: failed forward changed the centroids", name);
            edkm_runtime_stats sf = stats(rt);
            EXPECT(sf.arena_allocated == base2, "%s: %llu arena bytes left by the failed forward", name,
                   (unsigned long long)(sf.arena_allocated - base2));
            EXPECT(sf.live_saved_states == 0, "%s: live saved state after a failed forward", name);
            if (round == 0 && mi == 0) printf("budget: failed forward message: %s\n", edkm_last_error());
            /* a forward that keeps nothing is not limited by the budget */
            EXPECT(edkm_layer_forward(l, w, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, NULL) == EDKM_OK,
                   "%s: forward without saved state under a small budget failed", name);
            REL_CHECK(edkm_layer_set_centroids(l, c_before, 16));
            REL_CHECK(edkm_runtime_set_budget(rt, need));
            st = step(l, NULL);
            EXPECT(st == EDKM_OK, "%s: budget == need (%llu): forward gave %s (%s)", name, (unsigned long long)need,
                   edkm_status_name(st), edkm_last_error());

            /* 3a. raise the budget and continue */
            REL_CHECK(edkm_runtime_set_budget(rt, need - 1));
            EXPECT(step(l, NULL) == EDKM_ERR_BUDGET_EXCEEDED, "%s: budget lowered again: forward did not fail", name);
            REL_CHECK(edkm_runtime_set_budget(rt, need * 4));
            EXPECT(step(l, NULL) == EDKM_OK, "%s: after raising the budget: forward failed", name);
            /* 3b. fewer bits on the same runtime, back under the small budget */
            REL_CHECK(edkm_runtime_set_budget(rt, need - 1));
            edkm_layer *l2 = layer(rt, 2);
            st = step(l2, NULL);
            if (mode == EDKM_SAVED_SHARD || mode == EDKM_SAVED_UNIQUIFY || keep) {
                /* the index list / keys do not shrink with the bits; only the k-sized tables do */
                EXPECT(st == EDKM_OK || st == EDKM_ERR_BUDGET_EXCEEDED, "%s: 2-bit layer: %s", name, edkm_status_name(st));
            } else {
                EXPECT(st == EDKM_OK, "%s: a 2-bit layer does not fit a budget of one 4-bit state: %s", name, edkm_status_name(st));
            }
            edkm_layer_destroy(l2);
            /* 4. gradient accumulation under 1.5 states */
            REL_CHECK(edkm_runtime_set_budget(rt, need + need / 2));
            edkm_saved_state *a = NULL, *b = NULL;
            EXPECT(step(l, &a) == EDKM_OK, "%s: first micro-batch under 1.5 states failed", name);
            st = edkm_layer_forward(l, w, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &b);
            if (mode == EDKM_SAVED_DEDUP || mode == EDKM_SAVED_HISTOGRAM) {
                /* the second forward of the same weights shares its saved weights: it may fit */
                EXPECT(st == EDKM_OK || st == EDKM_ERR_BUDGET_EXCEEDED, "%s: second micro-batch: %s", name, edkm_status_name(st));
            } else {
                EXPECT(st == EDKM_ERR_BUDGET_EXCEEDED, "%s: second micro-batch fit 1.5 states: %s", name, edkm_status_name(st));
            }
            /* lower the budget below what is held: the live state is not affected */
            REL_CHECK(edkm_runtime_set_budget(rt, 1));
            if (a) {
                edkm_status bs = edkm_saved_state_backward(a, g, gi, EDKM_DTYPE_F32, N, w);
                EXPECT(bs == EDKM_OK, "%s: backward of a held state after lowering the budget: %s", name, edkm_status_name(bs));
            }
            if (st == EDKM_OK && b) {
                EXPECT(edkm_saved_state_backward(b, g, gi, EDKM_DTYPE_F32, N, w) == EDKM_OK, "%s: second backward", name);
            }
            edkm_saved_state_destroy(a);
            edkm_saved_state_destroy(st == EDKM_OK ? b : NULL);
            edkm_layer_destroy(l);
            edkm_runtime_stats se = stats(rt);
            EXPECT(se.arena_allocated == base2 && se.live_saved_states == 0, "%s: end of round: arena %llu (base %llu), live %llu",
                   name, (unsigned long long)se.arena_allocated, (unsigned long long)base2, (unsigned long long)se.live_saved_states);

            /* 3c. a smaller saved mode under the same small budget */
            if (mode != EDKM_SAVED_HISTOGRAM) {
                edkm_runtime *small = smalls[mi];
                REL_CHECK(edkm_runtime_set_budget(small, need - 1));
                edkm_layer *l3 = layer(small, 4);
                st = step(l3, NULL);
                EXPECT(st == EDKM_OK, "%s -> HISTOGRAM under budget %llu: %s", name, (unsigned long long)(need - 1), edkm_status_name(st));
                edkm_layer_destroy(l3);
                EXPECT(stats(small).arena_allocated == 0, "HISTOGRAM runtime not back to 0");
            }
        }
        uint64_t rss = rel_rss_bytes();
        if (round == rounds / 5) rss_first = rss;
        rss_last = rss;
        if (failures > 20) break;
    }
    double dt = rel_now() - t0;
    for (int mi = 0; mi < nmodes; mi++) {
        EXPECT(stats(bigs[mi]).arena_allocated == 0 && stats(rts[mi]).arena_allocated == 0, "arena not empty at the end");
        edkm_runtime_destroy(bigs[mi]);
        edkm_runtime_destroy(rts[mi]);
        edkm_runtime_destroy(smalls[mi]);
    }
    printf("budget: %d rounds x %d modes in %.1f s; RSS %llu KiB after warm-up -> %llu KiB at the end\n", rounds, nmodes, dt,
           (unsigned long long)(rss_first / 1024), (unsigned long long)(rss_last / 1024));
    EXPECT(rounds < 10 || (double)rss_last <= (double)rss_first + rss_kib * 1024, "RSS grew by %lld KiB",
           ((long long)rss_last - (long long)rss_first) / 1024);
    printf("budget: %s\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
