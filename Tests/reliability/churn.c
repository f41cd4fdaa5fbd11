/*
 * churn.c: runtime create/destroy cycles: a trainer that makes a runtime per model, per
 * epoch or per job must get all of it back when it destroys the runtime.
 *
 * --cycles times (default 3000): create a runtime (--threads worker threads, default 2), a layer,
 * a forward with a saved state and its backward, destroy everything. After warm-up it checks that
 *   - the process has no more threads than before (the runtime's worker pool is gone), and
 *   - RSS grew by less than --rss-kib KiB (default 1024) over the cycles after warm-up.
 * Bugs it shows (Tests/reliability/README.md): K5, fixed in 6214c17 (worker threads were never
 * stopped: every destroyed runtime leaked num_threads - 1 threads) and K8 (RSS grew ~4 KiB
 * per runtime whose arena was used: the private jemalloc kept the destroyed arena's memory,
 * opt.retain; fixed: it now runs with retain:false).
 * Prints the figures and "churn: PASS" / "churn: FAIL"; exit 1 on FAIL.
 */
#include "rel_common.h"


int main(int argc, char **argv) {
    long cycles = 3000;
    uint32_t threads = 2;
    double rss_kib = 1024;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cycles") && i + 1 < argc) cycles = atol(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rss-kib") && i + 1 < argc) rss_kib = atof(argv[++i]);
        else { fprintf(stderr, "usage: %s [--cycles N] [--threads T] [--rss-kib K]\n", argv[0]); return 2; }
    }
    enum { N = 2048 };
    static uint16_t w[N];
    static float out[N], g[N], gi[N];
    uint64_t seed = 3;
    for (int i = 0; i < N; i++) { w[i] = rel_float_to_f16((float)(rel_normal(&seed) * 0.02)); g[i] = 0.01f; }
    int threads0 = rel_thread_count();
    long warm = cycles / 10;
    uint64_t rss_warm = 0;
    double t0 = rel_now();
    for (long c = 1; c <= cycles; c++) {
        edkm_runtime_config rc;
        edkm_runtime_config_init(&rc);
        rc.num_threads = threads;
        rc.saved_mode = EDKM_SAVED_UNIQUIFY;
        edkm_runtime *rt;
        REL_CHECK(edkm_runtime_create(&rc, &rt));
        edkm_layer *l;
        int64_t shape[2] = { 32, 64 };
        REL_CHECK(edkm_layer_create(rt, NULL, shape, 2, &l));
        edkm_saved_state *s;
        REL_CHECK(edkm_layer_forward(l, w, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &s));
        REL_CHECK(edkm_saved_state_backward(s, g, gi, EDKM_DTYPE_F32, N, NULL));
        edkm_saved_state_destroy(s);
        edkm_layer_destroy(l);
        edkm_runtime_destroy(rt);
        if (c == warm) rss_warm = rel_rss_bytes();
    }
    double dt = rel_now() - t0;
    int threads1 = rel_thread_count();
    uint64_t rss_end = rel_rss_bytes();
    double grew = ((double)rss_end - (double)rss_warm) / 1024.0;
    int fail = 0;
    printf("churn: %ld runtimes (num_threads %u, UNIQUIFY, forward + backward each) in %.1f s\n", cycles, threads, dt);
    printf("churn: threads alive %d before, %d after (%d leaked, %.2f per runtime)\n", threads0, threads1, threads1 - threads0,
           (double)(threads1 - threads0) / (double)cycles);
    printf("churn: RSS %llu KiB after %ld runtimes, %llu KiB after %ld: %+.0f KiB (%.2f KiB per runtime)\n",
           (unsigned long long)(rss_warm / 1024), warm, (unsigned long long)(rss_end / 1024), cycles, grew,
           grew / (double)(cycles - warm));
    if (threads1 > threads0) { fprintf(stderr, "churn: worker threads of destroyed runtimes are still alive (K5)\n"); fail = 1; }
    if (grew > rss_kib) { fprintf(stderr, "churn: RSS grew %.0f KiB > %.0f KiB (K8)\n", grew, rss_kib); fail = 1; }
    printf("churn: %s\n", fail ? "FAIL" : "PASS");
    return fail;
}
