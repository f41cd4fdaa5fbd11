/*
 * known_bugs.c: minimal reproductions of the library bugs found by the reliability work,
 * one check each; prints PRESENT or FIXED per bug (see Tests/reliability/README.md for the analysis
 * and the suggested fixes). Crashing checks run in a forked child.
 *
 *   known_bugs            run every check
 *   known_bugs K1 K4 ...  run some
 * Exit status: the number of bugs still present (0 = all fixed).
 */
#include "rel_common.h"
#include "hostile_comm.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

typedef int (*check_fn)(char *detail, size_t n);   /* 1 = bug present */

/* Runs fn in a child; a crash counts as "present" with the signal in detail. */
static int in_child(check_fn fn, char *detail, size_t n) {
    int pipefd[2];
    if (pipe(pipefd) != 0) return fn(detail, n);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        char d[512] = "";
        int r = fn(d, sizeof d);
        ssize_t w = write(pipefd[1], d, strlen(d));
        (void)w;
        _exit(r);
    }
    close(pipefd[1]);
    ssize_t got = read(pipefd[0], detail, n - 1);
    detail[got > 0 ? got : 0] = 0;
    close(pipefd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFSIGNALED(st)) { snprintf(detail, n, "the call crashed the process (signal %d)", WTERMSIG(st)); return 1; }
    return WEXITSTATUS(st);
}

static uint16_t h16(float f) { return rel_float_to_f16(f); }

/* K1: forward_shard with offset + count > INT64_MAX traps (Swift arithmetic overflow). */
static int k1(char *d, size_t n) {
    edkm_runtime *rt; edkm_layer *l;
    edkm_runtime_create(NULL, &rt);
    edkm_layer_config c; edkm_layer_config_init(&c); c.bits = 2;
    int64_t shape[1] = { 64 };
    edkm_layer_create(rt, &c, shape, 1, &l);
    uint16_t w[64]; float out[64];
    for (int i = 0; i < 64; i++) w[i] = h16((float)i / 64);
    edkm_status s = edkm_layer_forward_shard(l, w, EDKM_DTYPE_F16, (size_t)INT64_MAX, 1, out, EDKM_DTYPE_F32, NULL);
    snprintf(d, n, "forward_shard(offset INT64_MAX, count 1) -> %s", edkm_status_name(s));
    return s != EDKM_ERR_SHAPE;
}

/* K2: set_centroids with count >= 2^63 forms UnsafeBufferPointer(count: negative): trap in debug
 * builds, undefined behaviour in release. */
static int k2(char *d, size_t n) {
    edkm_runtime *rt; edkm_layer *l;
    edkm_runtime_create(NULL, &rt);
    int64_t shape[1] = { 64 };
    edkm_layer_create(rt, NULL, shape, 1, &l);
    float c[16] = { 0 };
    edkm_status s = edkm_layer_set_centroids(l, c, (size_t)-1);
    snprintf(d, n, "set_centroids(count SIZE_MAX) -> %s (a release build may return SHAPE by luck: the check is after the UB)", edkm_status_name(s));
    return s != EDKM_ERR_SHAPE;
}

/* K3: scale-free temperature, all weights of a partition equal: NaN soft weights with EDKM_OK. */
static int k3(char *d, size_t n) {
    edkm_runtime *rt; edkm_layer *l;
    edkm_runtime_create(NULL, &rt);
    edkm_layer_config c; edkm_layer_config_init(&c);
    c.bits = 2; c.temperature_mode = EDKM_TEMPERATURE_SCALE_FREE;
    int64_t shape[2] = { 16, 16 };
    edkm_layer_create(rt, &c, shape, 2, &l);
    uint16_t w[256]; float out[256], g[256], gi[256];
    for (int i = 0; i < 256; i++) { w[i] = h16(0.25f); g[i] = 1.0f; }
    edkm_saved_state *s = NULL;
    edkm_status st = edkm_layer_forward(l, w, EDKM_DTYPE_F16, 256, out, EDKM_DTYPE_F32, &s);
    int bad = 0, gbad = 0;
    for (int i = 0; i < 256; i++) bad += !isfinite(out[i]);
    edkm_status b = s ? edkm_saved_state_backward(s, g, gi, EDKM_DTYPE_F32, 256, w) : EDKM_ERR_STATE;
    for (int i = 0; i < 256 && b == EDKM_OK; i++) gbad += !isfinite(gi[i]);
    snprintf(d, n, "forward %s with %d non-finite outputs, backward %s with %d non-finite gradients", edkm_status_name(st), bad,
             edkm_status_name(b), gbad);
    return (st == EDKM_OK && bad) || (b == EDKM_OK && gbad);
}

/* K4: backward of a forward_shard state reads a freed buffer (release builds): wrong gradients
 * for the two smallest keys and NaN gradients accepted. */
static int k4(char *d, size_t n) {
    edkm_runtime *rt; edkm_layer *a, *b;
    edkm_runtime_create(NULL, &rt);
    edkm_layer_config c; edkm_layer_config_init(&c); c.bits = 2;
    int64_t shape[1] = { 64 };
    edkm_layer_create(rt, &c, shape, 1, &a);
    edkm_layer_create(rt, &c, shape, 1, &b);
    uint16_t w[64]; float oa[64], ob[64], g[64], ga[64], gb[64];
    for (int i = 0; i < 64; i++) { w[i] = h16((float)(i % 7) * 0.125f); g[i] = 0.01f * (float)(i % 5) - 0.02f; }
    edkm_saved_state *sa, *sb;
    edkm_layer_forward(a, w, EDKM_DTYPE_F16, 64, oa, EDKM_DTYPE_F32, &sa);
    edkm_layer_forward_shard(b, w, EDKM_DTYPE_F16, 0, 64, ob, EDKM_DTYPE_F32, &sb);
    edkm_saved_state_backward(sa, g, ga, EDKM_DTYPE_F32, 64, w);
    edkm_saved_state_backward(sb, g, gb, EDKM_DTYPE_F32, 64, w);
    double maxd = 0;
    for (int i = 0; i < 64; i++) maxd = fmax(maxd, fabs((double)ga[i] - (double)gb[i]));
    edkm_saved_state_destroy(sa); edkm_saved_state_destroy(sb);
    /* NaN gradient on an element with the smallest key (w = 0) */
    edkm_layer_forward_shard(b, w, EDKM_DTYPE_F16, 0, 64, ob, EDKM_DTYPE_F32, &sb);
    g[0] = NAN;
    edkm_status s = edkm_saved_state_backward(sb, g, gb, EDKM_DTYPE_F32, 64, w);
    snprintf(d, n, "forward vs forward_shard (1 rank, whole tensor): gradient max |diff| %g; NaN gradient -> %s", maxd, edkm_status_name(s));
    edkm_saved_state_destroy(sb); edkm_layer_destroy(a); edkm_layer_destroy(b); edkm_runtime_destroy(rt);
    return maxd > 1e-6 || s == EDKM_OK;
}


/* K5: destroying a runtime does not stop its worker threads. */
static int k5(char *d, size_t n) {
    int before = rel_thread_count();
    for (int i = 0; i < 10; i++) {
        edkm_runtime_config rc; edkm_runtime_config_init(&rc); rc.num_threads = 4;
        edkm_runtime *rt; edkm_runtime_create(&rc, &rt);
        edkm_runtime_destroy(rt);
    }
    struct timespec ts = { 0, 50000000L };
    nanosleep(&ts, NULL);
    int after = rel_thread_count();
    snprintf(d, n, "10 runtimes with num_threads 4 created and destroyed: threads %d -> %d", before, after);
    return after > before;
}

/* K6: 1-D init of f32 weights beyond the f16 range, partition > 65,536, f32_key_dtype F16: NaN centroids. */
static int k6(char *d, size_t n) {
    enum { N = 70000 };
    static float w[N];
    for (int i = 0; i < N; i++) w[i] = (float)((i % 1000) - 500) * 200.0f;
    edkm_runtime *rt; edkm_runtime_create(NULL, &rt);
    edkm_layer_config c; edkm_layer_config_init(&c); c.bits = 2; c.f32_key_dtype = EDKM_DTYPE_F16;
    int64_t shape[1] = { N };
    edkm_layer *l; edkm_layer_create(rt, &c, shape, 1, &l);
    float cent[4] = { 0 };
    edkm_status s = edkm_layer_init_centroids(l, w, EDKM_DTYPE_F32, N);
    edkm_layer_get_centroids(l, cent, 4);
    int bad = 0;
    for (int i = 0; i < 4; i++) bad += !isfinite(cent[i]);
    snprintf(d, n, "init_centroids -> %s, centroids %g %g %g %g", edkm_status_name(s), cent[0], cent[1], cent[2], cent[3]);
    return s == EDKM_OK && bad;
}

/* K7: communicator callbacks run concurrently for one runtime (header: never). */
static atomic_int k7_in, k7_max;
static int k7_gather(void *u, const void *s, void *r, size_t b) {
    (void)u;
    int now = atomic_fetch_add(&k7_in, 1) + 1, m = atomic_load(&k7_max);
    while (now > m && !atomic_compare_exchange_weak(&k7_max, &m, now)) {}
    struct timespec ts = { 0, 2000000L };
    nanosleep(&ts, NULL);
    if (b) memcpy(r, s, b);
    atomic_fetch_sub(&k7_in, 1);
    return 0;
}
static int k7_reduce(void *u, double *x, size_t c) { (void)x; (void)c; return k7_gather(u, NULL, NULL, 0); }
typedef struct { edkm_runtime *rt; int seed; } K7Arg;
static void *k7_thread(void *p) {
    K7Arg *a = p;
    edkm_layer *l; int64_t shape[1] = { 256 };
    edkm_layer_create(a->rt, NULL, shape, 1, &l);
    uint16_t w[256]; float out[256], g[256], gi[256];
    for (int i = 0; i < 256; i++) { w[i] = h16((float)((i * (a->seed + 3)) % 97) / 97.0f); g[i] = 0.1f; }
    for (int it = 0; it < 10; it++) {
        edkm_saved_state *s = NULL;
        if (edkm_layer_forward(l, w, EDKM_DTYPE_F16, 256, out, EDKM_DTYPE_F32, &s) == EDKM_OK) {
            edkm_saved_state_backward(s, g, gi, EDKM_DTYPE_F32, 256, w);
            edkm_saved_state_destroy(s);
        }
    }
    edkm_layer_destroy(l);
    return NULL;
}
static int k7(char *d, size_t n) {
    edkm_communicator comm; memset(&comm, 0, sizeof comm);
    comm.struct_size = sizeof comm; comm.world_size = 1; comm.all_gather = k7_gather; comm.all_reduce_sum = k7_reduce;
    edkm_runtime_config rc; edkm_runtime_config_init(&rc); rc.saved_mode = EDKM_SAVED_SHARD; rc.communicator = &comm; rc.num_threads = 1;
    edkm_runtime *rt; edkm_runtime_create(&rc, &rt);
    pthread_t t[4]; K7Arg a[4];
    for (int i = 0; i < 4; i++) { a[i].rt = rt; a[i].seed = i; pthread_create(&t[i], NULL, k7_thread, &a[i]); }
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    edkm_runtime_destroy(rt);
    snprintf(d, n, "4 threads, 4 layers, one SHARD runtime: up to %d communicator callbacks at once", atomic_load(&k7_max));
    return atomic_load(&k7_max) > 1;
}

/* K8: RSS grows ~4 KiB per runtime whose arena was used (the private jemalloc retains the destroyed
 * arenas' memory: opt.retain). */
static int k8(char *d, size_t n) {
    enum { N = 2048 };
    static uint16_t w[N]; static float out[N];
    for (int i = 0; i < N; i++) w[i] = h16((float)(i % 500) / 1000.0f);
    uint64_t r0 = 0;
    for (int i = 0; i < 3000; i++) {
        edkm_runtime_config rc; edkm_runtime_config_init(&rc); rc.num_threads = 1; rc.saved_mode = EDKM_SAVED_UNIQUIFY;
        edkm_runtime *rt; edkm_runtime_create(&rc, &rt);
        edkm_layer *l; int64_t shape[1] = { N };
        edkm_layer_create(rt, NULL, shape, 1, &l);
        edkm_saved_state *s = NULL;
        edkm_layer_forward(l, w, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &s);
        edkm_saved_state_destroy(s);
        edkm_layer_destroy(l);
        edkm_runtime_destroy(rt);
        if (i == 300) r0 = rel_rss_bytes();
    }
    double grew = ((double)rel_rss_bytes() - (double)r0) / 1024.0;
    snprintf(d, n, "2,700 runtime lifetimes (num_threads 1): RSS %+.0f KiB (%.2f KiB each)", grew, grew / 2700.0);
    return grew > 2048;
}

/* K9: a destroyed handle whose address is reused by a new handle is accepted (and acts on the new
 * object) instead of EDKM_ERR_INVALID_HANDLE. */
static int k9(char *d, size_t n) {
    edkm_runtime *rt; edkm_runtime_create(NULL, &rt);
    int64_t s64[1] = { 64 }, s128[1] = { 128 };
    int aliased = 0, tries = 0;
    for (; tries < 100 && !aliased; tries++) {
        edkm_layer *old, *fresh;
        edkm_layer_create(rt, NULL, s64, 1, &old);
        edkm_layer_destroy(old);
        edkm_layer_create(rt, NULL, s128, 1, &fresh);
        if (fresh == old) {
            size_t cc = 0;
            edkm_status s = edkm_layer_centroid_count(old, &cc);   /* the destroyed handle */
            snprintf(d, n, "destroyed layer handle %p, reused by a new layer: centroid_count on the destroyed handle -> %s",
                     (void *)old, edkm_status_name(s));
            aliased = s != EDKM_ERR_INVALID_HANDLE;
            if (!aliased) break;
        }
        edkm_layer_destroy(fresh);
    }
    if (!d[0]) snprintf(d, n, "no address reuse in %d tries", tries);
    edkm_runtime_destroy(rt);
    return aliased;
}

/* K10: a runtime config struct_size that ends inside the communicator pointer makes the library
 * read a truncated pointer (the header: only the fields that size covers are read). */
static int k10(char *d, size_t n) {
    rel_comm_ctx ctx; memset(&ctx, 0, sizeof ctx);
    edkm_communicator *comm = malloc(sizeof *comm);
    *comm = rel_comm_make(&ctx, 1);
    edkm_runtime_config rc; edkm_runtime_config_init(&rc);
    rc.communicator = comm;
    size_t off = offsetof(edkm_runtime_config, communicator);
    rc.struct_size = (uint32_t)(off + 4);   /* covers half of the pointer */
    edkm_runtime *rt = NULL;
    edkm_status s = edkm_runtime_create(&rc, &rt);
    snprintf(d, n, "struct_size %u (ends inside the communicator field) -> %s", rc.struct_size, edkm_status_name(s));
    if (s == EDKM_OK) edkm_runtime_destroy(rt);
    free(comm);
    /* fixed: the partial field is ignored (defaults: no communicator) or the size is rejected */
    return !(s == EDKM_OK || s == EDKM_ERR_STRUCT_SIZE);
}

/* K11: the dense backward's update of the centroid adjoints ended a closure with a memmove that the
 * optimizer made a tail call, skipping the restore of the Swift error register (release builds): with
 * 256 centroids of which some receive no attention, the caller saw a "thrown" error and ran into
 * unreachable code (SIGSEGV). The fuzz program that found it (seed 1411715473, iteration 137):
 * a one-thread MARSHAL runtime, bf16 weights, 8 bits, per tensor, its runtime handle destroyed
 * while the layer and state live, then a backward without weights. */
static int k11(char *d, size_t n) {
    edkm_runtime_config rc; edkm_runtime_config_init(&rc);
    rc.num_threads = 1; rc.saved_mode = EDKM_SAVED_MARSHAL;
    edkm_runtime *rt; REL_CHECK(edkm_runtime_create(&rc, &rt));
    edkm_layer_config lc; edkm_layer_config_init(&lc);
    lc.bits = 8; lc.max_iterations = 3; lc.epsilon = 0; lc.zero_threshold = 0;
    lc.temperature_mode = EDKM_TEMPERATURE_ABSOLUTE; lc.tau = 1e-4;
    int64_t n384 = 384;
    edkm_layer *l; REL_CHECK(edkm_layer_create(rt, &lc, &n384, 1, &l));
    float c[256];
    for (int j = 0; j < 256; j++) c[j] = (float)(j - 128) / 16.0f;   /* [-8, 8): most get no weight */
    REL_CHECK(edkm_layer_set_centroids(l, c, 256));
    uint16_t w[384]; float out[384], g[384], gi[384];
    for (int i = 0; i < 384; i++) { w[i] = rel_float_to_bf16((float)((i * 37) % 101) / 50.0f - 1.0f); g[i] = 0.01f * (float)(i % 7); }
    edkm_saved_state *s = NULL;
    REL_CHECK(edkm_layer_forward(l, w, EDKM_DTYPE_BF16, 384, out, EDKM_DTYPE_F32, &s));
    edkm_runtime_destroy(rt);   /* allowed: the layer and the state keep the runtime alive */
    edkm_status b = edkm_saved_state_backward(s, g, gi, EDKM_DTYPE_F32, 384, NULL);
    int nonfinite = 0;
    for (int i = 0; i < 384; i++) nonfinite += !isfinite(gi[i]);
    snprintf(d, n, "8 bits, 384 bf16 weights, most clusters empty, runtime handle destroyed, backward(weights NULL) -> %s, %d non-finite",
             edkm_status_name(b), nonfinite);
    edkm_saved_state_destroy(s); edkm_layer_destroy(l);
    return b != EDKM_OK || nonfinite;
}

/* D1: the header said weights may be NULL in backward in every saved mode but HISTOGRAM, while a
 * forward_shard state needs them in every mode unless keep_weights. Resolved by documenting it
 * (edkm_layer_forward_shard, edkm_saved_state_backward): NULL weights give EDKM_ERR_STATE. */
static int d1(char *d, size_t n) {
    edkm_runtime_config rc; edkm_runtime_config_init(&rc); rc.saved_mode = EDKM_SAVED_DEDUP;
    edkm_runtime *rt; edkm_runtime_create(&rc, &rt);
    int64_t shape[1] = { 64 };
    edkm_layer *l; edkm_layer_create(rt, NULL, shape, 1, &l);
    uint16_t w[64]; float out[64], g[64], gi[64];
    for (int i = 0; i < 64; i++) { w[i] = h16((float)i / 64); g[i] = 0.1f; }
    edkm_saved_state *s = NULL;
    edkm_layer_forward_shard(l, w, EDKM_DTYPE_F16, 0, 64, out, EDKM_DTYPE_F32, &s);
    edkm_status b = edkm_saved_state_backward(s, g, gi, EDKM_DTYPE_F32, 64, NULL);
    snprintf(d, n, "DEDUP runtime, forward_shard state, backward(weights NULL) -> %s", edkm_status_name(b));
    edkm_saved_state_destroy(s); edkm_layer_destroy(l); edkm_runtime_destroy(rt);
    return !(b == EDKM_OK || b == EDKM_ERR_STATE);
}

/* ---- Hostile input (communicator results, allocation failure, extreme values). Each check is
 * "present" when the call crashes, hangs or returns EDKM_OK with a wrong or non-finite result. */

/* A one-layer runtime (f16 weights, 4 bits, N = n) with a hostile communicator of `world` ranks. */
typedef struct { hostile_comm h; edkm_communicator c; edkm_runtime *rt; edkm_layer *l; uint64_t base; } hostile_setup;

static void hs_open(hostile_setup *s, int world, int mode, int64_t n) {
    s->c = hc_make(&s->h, world, 0x5eed);
    edkm_runtime_config rc; edkm_runtime_config_init(&rc);
    rc.communicator = &s->c; rc.saved_mode = mode; rc.num_threads = 2;
    REL_CHECK(edkm_runtime_create(&rc, &s->rt));
    edkm_layer_config lc; edkm_layer_config_init(&lc); lc.bits = 4;
    REL_CHECK(edkm_layer_create(s->rt, &lc, &n, 1, &s->l));
    edkm_runtime_stats st; memset(&st, 0, sizeof st); st.struct_size = sizeof st;
    REL_CHECK(edkm_runtime_get_stats(s->rt, &st));
    s->base = st.arena_allocated;
}
static uint64_t hs_arena(hostile_setup *s) {
    edkm_runtime_stats st; memset(&st, 0, sizeof st); st.struct_size = sizeof st;
    edkm_runtime_get_stats(s->rt, &st);
    return st.arena_allocated;
}
static void hs_close(hostile_setup *s) { edkm_layer_destroy(s->l); edkm_runtime_destroy(s->rt); }
static void hs_weights(uint16_t *w, size_t n) { for (size_t i = 0; i < n; i++) w[i] = h16((float)((i * 37) % 101) / 50.0f - 1.0f); }
static int all_bytes(const void *p, size_t n, unsigned char b) {
    for (size_t i = 0; i < n; i++) if (((const unsigned char *)p)[i] != b) return 0;
    return 1;
}

/* H1/H9: forward_shard whose histogram all-reduce returns 0 with impossible sums: every kind must
 * give EDKM_ERR_COMMUNICATOR, the output unwritten, no saved state, the arena at its start. */
static int h1(char *d, size_t n) {
    static const int kinds[] = { HC_NAN, HC_INF, HC_NEG_INF, HC_HUGE, HC_NEGATIVE, HC_FRACTION, HC_PLUS_ONE, HC_ZERO_ALL };
    hostile_setup s; hs_open(&s, 2, EDKM_SAVED_HISTOGRAM, 256);
    uint16_t w[256]; float out[256]; hs_weights(w, 256);
    int bad = 0;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0] && !bad; k++) {
        hc_arm(&s.h, kinds[k], 0, -1);
        memset(out, 0xA5, sizeof out);
        edkm_saved_state *st = NULL;
        edkm_status r = edkm_layer_forward_shard(s.l, w, EDKM_DTYPE_F16, 0, 256, out, EDKM_DTYPE_F32, &st);
        if (r != EDKM_ERR_COMMUNICATOR || st || !all_bytes(out, sizeof out, 0xA5) || hs_arena(&s) != s.base) {
            bad = 1;
            snprintf(d, n, "%s -> %s (%s)", s.h.what, edkm_status_name(r), edkm_last_error());
        }
    }
    if (!bad) snprintf(d, n, "NaN, Inf, -Inf, 1e300, negative, fractional, +1 and all-zero histogram sums -> EDKM_ERR_COMMUNICATOR (%s)", edkm_last_error());
    hs_close(&s);
    return bad;
}

/* H2/H10: the sharded backward's gradient all-reduce returns Inf, NaN or 1e300 (in a sum or a flag). */
static int h2(char *d, size_t n) {
    static const struct { int kind; int flag; edkm_status want; } cases[] = {
        { HC_INF, 0, EDKM_ERR_COMMUNICATOR }, { HC_NAN, 0, EDKM_ERR_COMMUNICATOR }, { HC_NEG_INF, 0, EDKM_ERR_COMMUNICATOR },
        { HC_HUGE, 1, EDKM_ERR_COMMUNICATOR }, { HC_NAN, 1, EDKM_ERR_COMMUNICATOR }, { HC_FRACTION, 1, EDKM_ERR_COMMUNICATOR },
        { HC_INF, 2, EDKM_ERR_COMMUNICATOR } };
    hostile_setup s; hs_open(&s, 1, EDKM_SAVED_HISTOGRAM, 256);
    uint16_t w[256]; float out[256], g[256], gi[256]; hs_weights(w, 256);
    for (int i = 0; i < 256; i++) g[i] = 0.01f * (float)(i % 7);
    int bad = 0;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0] && !bad; k++) {
        edkm_saved_state *st = NULL;
        hc_arm(&s.h, HC_HONEST, 0, -1);
        REL_CHECK(edkm_layer_forward_shard(s.l, w, EDKM_DTYPE_F16, 0, 256, out, EDKM_DTYPE_F32, &st));
        edkm_layer_stats ls; memset(&ls, 0, sizeof ls); ls.struct_size = sizeof ls;
        REL_CHECK(edkm_layer_get_stats(s.l, &ls));
        int U = (int)ls.distinct_values;
        hc_arm(&s.h, cases[k].kind, 0, cases[k].flag == 0 ? 0 : U - 1 + cases[k].flag);
        memset(gi, 0xA5, sizeof gi);
        edkm_status r = edkm_saved_state_backward(st, g, gi, EDKM_DTYPE_F32, 256, w);
        if (r != cases[k].want || !all_bytes(gi, sizeof gi, 0xA5)) {
            bad = 1;
            snprintf(d, n, "%s -> %s (%s)", s.h.what, edkm_status_name(r), edkm_last_error());
        }
        /* the state stays usable: an honest retry succeeds */
        hc_arm(&s.h, HC_HONEST, 0, -1);
        if (!bad && edkm_saved_state_backward(st, g, gi, EDKM_DTYPE_F32, 256, w) != EDKM_OK) {
            bad = 1;
            snprintf(d, n, "the honest retry after %s failed: %s", s.h.what, edkm_last_error());
        }
        edkm_saved_state_destroy(st);
    }
    if (!bad) snprintf(d, n, "Inf/NaN gradient sums and 1e300/NaN/0.5 flags -> EDKM_ERR_COMMUNICATOR; the state stays usable");
    hs_close(&s);
    return bad;
}

/* H3: EDKM_SAVED_DKM (heap maps) of a 2048 x 2048 f16 layer under a small address-space limit. */
static int h3(char *d, size_t n) {
    edkm_runtime_config rc; edkm_runtime_config_init(&rc);
    rc.saved_mode = EDKM_SAVED_DKM; rc.num_threads = 1;
    edkm_runtime *rt; REL_CHECK(edkm_runtime_create(&rc, &rt));
    int64_t shape[2] = { 2048, 2048 };
    edkm_layer *l; REL_CHECK(edkm_layer_create(rt, NULL, shape, 2, &l));
    size_t N = (size_t)2048 * 2048;
    uint16_t *w = malloc(N * 2), *out = malloc(N * 2);
    hs_weights(w, N);
    memset(out, 0xA5, N * 2);
    struct rlimit lim;
    getrlimit(RLIMIT_AS, &lim);
    lim.rlim_cur = hc_vm_bytes() + ((rlim_t)96 << 20);   /* 96 MiB more: one 256 MiB map cannot fit */
    setrlimit(RLIMIT_AS, &lim);
    edkm_saved_state *st = NULL;
    edkm_status s = edkm_layer_forward(l, w, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F16, &st);
    edkm_runtime_stats rs; memset(&rs, 0, sizeof rs); rs.struct_size = sizeof rs;
    edkm_runtime_get_stats(rt, &rs);
    snprintf(d, n, "forward under RLIMIT_AS = VM + 96 MiB -> %s (%s); heap_saved %llu", edkm_status_name(s), edkm_last_error(),
             (unsigned long long)rs.heap_saved);
    int bad = !(s == EDKM_ERR_OUT_OF_MEMORY && st == NULL && all_bytes(out, N * 2, 0xA5) && rs.heap_saved == 0);
    return bad;
}

/* H4: SHARD backward with world_size 2^31 - 1: the gathered buffer (world x shard bytes) must be
 * checked and its allocation failure reported (here under an address-space limit). */
static int h4(char *d, size_t n) {
    hostile_setup s; hs_open(&s, 0x7fffffff, EDKM_SAVED_SHARD, 1 << 20);
    size_t N = 1 << 20;
    uint16_t *w = malloc(N * 2), *out = malloc(N * 2);
    float *g = malloc(N * 4), *gi = malloc(N * 4);
    hs_weights(w, N);
    for (size_t i = 0; i < N; i++) g[i] = 0.5f;
    edkm_saved_state *st = NULL;
    REL_CHECK(edkm_layer_forward(s.l, w, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F16, &st));
    struct rlimit lim;
    getrlimit(RLIMIT_AS, &lim);
    lim.rlim_cur = hc_vm_bytes() + ((rlim_t)256 << 20);
    setrlimit(RLIMIT_AS, &lim);
    memset(gi, 0xA5, N * 4);
    edkm_status r = edkm_saved_state_backward(st, g, gi, EDKM_DTYPE_F32, N, NULL);
    snprintf(d, n, "backward with world_size 2^31-1 (gather of %llu bytes) -> %s (%s)",
             (unsigned long long)0x7fffffffull * 2, edkm_status_name(r), edkm_last_error());
    return !(r == EDKM_ERR_OUT_OF_MEMORY && all_bytes(gi, N * 4, 0xA5));
}

/* H7: a callback that calls into the same runtime (another layer, the same layer, a saved state)
 * must get EDKM_ERR_BUSY, not deadlock; the outer call then completes. */
static int h7(char *d, size_t n) {
    hostile_setup s; hs_open(&s, 1, EDKM_SAVED_SHARD, 64);
    edkm_layer *other; int64_t n64 = 64;
    REL_CHECK(edkm_layer_create(s.rt, NULL, &n64, 1, &other));
    uint16_t w[64]; float out[64], g[64], gi[64]; hs_weights(w, 64);
    for (int i = 0; i < 64; i++) g[i] = 0.1f;
    edkm_saved_state *held = NULL;
    REL_CHECK(edkm_layer_forward(other, w, EDKM_DTYPE_F16, 64, out, EDKM_DTYPE_F32, &held));
    int bad = 0;
    const char *which[3] = { "another layer", "the same layer", "a saved state" };
    for (int t = 0; t < 3 && !bad; t++) {
        hc_arm(&s.h, HC_REENTER, 0, -1);
        s.h.reenter_n = 64;
        s.h.reenter_layer = t == 0 ? other : t == 1 ? s.l : NULL;
        s.h.reenter_state = t == 2 ? held : NULL;
        edkm_saved_state *st = NULL;
        edkm_status r = edkm_layer_forward_shard(s.l, w, EDKM_DTYPE_F16, 0, 64, out, EDKM_DTYPE_F32, &st);
        if (!s.h.reentered || s.h.reenter_status != EDKM_ERR_BUSY || r != EDKM_OK) {
            bad = 1;
            snprintf(d, n, "callback calling %s -> nested %s, outer %s (%s)", which[t], edkm_status_name(s.h.reenter_status),
                     edkm_status_name(r), edkm_last_error());
        }
        edkm_saved_state_destroy(st);
    }
    /* the saved state the callback tried to use is still usable */
    hc_arm(&s.h, HC_HONEST, 0, -1);
    if (!bad && edkm_saved_state_backward(held, g, gi, EDKM_DTYPE_F32, 64, NULL) != EDKM_OK) {
        bad = 1; snprintf(d, n, "the saved state was damaged by the rejected nested call: %s", edkm_last_error());
    }
    if (!bad) snprintf(d, n, "nested calls from a callback -> EDKM_ERR_BUSY (%s)", edkm_last_error());
    edkm_saved_state_destroy(held);
    edkm_layer_destroy(other);
    hs_close(&s);
    return bad;
}

/* H11: SHARD backward whose gathered index blocks are garbage (0xFF, random, own block changed). */
static int h11(char *d, size_t n) {
    static const int kinds[] = { HC_GATHER_FF, HC_GATHER_RANDOM, HC_GATHER_OWN, HC_STATUS };
    hostile_setup s; hs_open(&s, 2, EDKM_SAVED_SHARD, 256);
    uint16_t w[256], out[256]; float g[256], gi[256]; hs_weights(w, 256);
    for (int i = 0; i < 256; i++) g[i] = 0.25f;
    int bad = 0;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0] && !bad; k++) {
        hc_arm(&s.h, HC_HONEST, 0, -1);
        edkm_saved_state *st = NULL;
        REL_CHECK(edkm_layer_forward(s.l, w, EDKM_DTYPE_F16, 256, out, EDKM_DTYPE_F16, &st));
        hc_arm(&s.h, kinds[k], 0, -1);
        memset(gi, 0xA5, sizeof gi);
        edkm_status r = edkm_saved_state_backward(st, g, gi, EDKM_DTYPE_F32, 256, NULL);
        if (r != EDKM_ERR_COMMUNICATOR || !all_bytes(gi, sizeof gi, 0xA5)) {
            bad = 1; snprintf(d, n, "%s -> %s (%s)", s.h.what, edkm_status_name(r), edkm_last_error());
        }
        edkm_saved_state_destroy(st);
    }
    if (!bad) snprintf(d, n, "garbage gathered index blocks -> EDKM_ERR_COMMUNICATOR (%s)", edkm_last_error());
    hs_close(&s);
    return bad;
}

/* H12: a tiny but positive tau (absolute 1e-310, scale-free 1e-308), dense and uniquified: finite
 * outputs and gradients, or a status. */
static int h12(char *d, size_t n) {
    static const struct { int mode; double tau; int alg; } cases[] = {
        { EDKM_TEMPERATURE_ABSOLUTE, 1e-310, EDKM_ALGORITHM_UNIQUIFIED }, { EDKM_TEMPERATURE_ABSOLUTE, 1e-310, EDKM_ALGORITHM_DENSE },
        { EDKM_TEMPERATURE_SCALE_FREE, 1e-308, EDKM_ALGORITHM_UNIQUIFIED }, { EDKM_TEMPERATURE_SCALE_FREE, 1e-308, EDKM_ALGORITHM_DENSE },
        { EDKM_TEMPERATURE_ABSOLUTE, 1e-300, EDKM_ALGORITHM_UNIQUIFIED }, { EDKM_TEMPERATURE_SCALE_FREE, 1e-300, EDKM_ALGORITHM_DENSE } };
    edkm_runtime *rt; REL_CHECK(edkm_runtime_create(NULL, &rt));
    uint16_t w[256]; float out[256], g[256], gi[256]; hs_weights(w, 256);
    for (int i = 0; i < 256; i++) g[i] = 0.01f * (float)(i % 5);
    int bad = 0;
    char summary[256] = "";
    for (size_t k = 0; k < sizeof cases / sizeof cases[0] && !bad; k++) {
        edkm_layer_config lc; edkm_layer_config_init(&lc);
        lc.temperature_mode = cases[k].mode; lc.tau = cases[k].tau; lc.algorithm = cases[k].alg; lc.bits = 3;
        int64_t shape = 256;
        edkm_layer *l = NULL;
        edkm_status c = edkm_layer_create(rt, &lc, &shape, 1, &l);
        if (c != EDKM_OK) {
            if (c != EDKM_ERR_INVALID_ARGUMENT) { bad = 1; snprintf(d, n, "create tau %g -> %s", cases[k].tau, edkm_status_name(c)); }
            snprintf(summary + strlen(summary), sizeof summary - strlen(summary), " tau %g: create %s;", cases[k].tau, edkm_status_name(c));
            continue;
        }
        edkm_saved_state *st = NULL;
        memset(out, 0xA5, sizeof out);
        edkm_status f = edkm_layer_forward(l, w, EDKM_DTYPE_F16, 256, out, EDKM_DTYPE_F32, &st);
        edkm_status b = EDKM_ERR_STATE;
        if (f == EDKM_OK) b = edkm_saved_state_backward(st, g, gi, EDKM_DTYPE_F32, 256, w);
        int finite = 1;
        for (int i = 0; i < 256; i++) {
            if (f == EDKM_OK && !isfinite(out[i])) finite = 0;
            if (b == EDKM_OK && !isfinite(gi[i])) finite = 0;
        }
        if (f == EDKM_OK ? (b != EDKM_OK || !finite) : (f != EDKM_ERR_INVALID_ARGUMENT || !all_bytes(out, sizeof out, 0xA5))) {
            bad = 1;
            snprintf(d, n, "mode %d tau %g alg %d: forward %s, backward %s, finite %d (%s)", cases[k].mode, cases[k].tau,
                     cases[k].alg, edkm_status_name(f), edkm_status_name(b), finite, edkm_last_error());
        }
        snprintf(summary + strlen(summary), sizeof summary - strlen(summary), " tau %g: forward %s;", cases[k].tau, edkm_status_name(f));
        edkm_saved_state_destroy(st);
        edkm_layer_destroy(l);
    }
    if (!bad) snprintf(d, n, "%s", summary);
    edkm_runtime_destroy(rt);
    return bad;
}

/* H13: f32 weights of magnitude ~1e5 exported with an f16 LUT. H15: unpack of a LUT holding NaN. */
static int h13(char *d, size_t n) {
    edkm_runtime *rt; REL_CHECK(edkm_runtime_create(NULL, &rt));
    edkm_layer_config lc; edkm_layer_config_init(&lc); lc.bits = 2;
    int64_t shape = 64;
    edkm_layer *l; REL_CHECK(edkm_layer_create(rt, &lc, &shape, 1, &l));
    float w[64], out[64]; uint16_t lut[4]; uint8_t packed[16];
    for (int i = 0; i < 64; i++) w[i] = 1e5f * (float)(i % 4 + 1);
    REL_CHECK(edkm_layer_init_centroids(l, w, EDKM_DTYPE_F32, 64));
    memset(lut, 0xA5, sizeof lut); memset(packed, 0xA5, sizeof packed);
    edkm_status e = edkm_layer_export(l, w, EDKM_DTYPE_F32, 64, lut, EDKM_DTYPE_F16, packed, 16);
    int bad = e == EDKM_OK || !all_bytes(lut, sizeof lut, 0xA5) || !all_bytes(packed, sizeof packed, 0xA5);
    char first[200];
    snprintf(first, sizeof first, "%s (%s)", edkm_status_name(e), edkm_last_error());
    float flut[4] = { 0.f, NAN, 1.f, 2.f };
    memset(packed, 0x55, sizeof packed);
    memset(out, 0xA5, sizeof out);
    edkm_status u = edkm_layer_unpack(l, flut, EDKM_DTYPE_F32, packed, 16, out, EDKM_DTYPE_F32, 64);
    bad |= u != EDKM_ERR_NON_FINITE || !all_bytes(out, sizeof out, 0xA5);
    snprintf(d, n, "f16 LUT of 1e5 centroids -> %s; unpack of a NaN LUT -> %s (%s)", first, edkm_status_name(u), edkm_last_error());
    edkm_layer_destroy(l); edkm_runtime_destroy(rt);
    return bad;
}

/* H14: num_threads 1024 where the process can start only ~30 more threads (an address-space limit
 * leaves room for about 30 thread stacks of 8 MiB): the stats report the workers really started. */
static int h14(char *d, size_t n) {
    struct rlimit lim;
    getrlimit(RLIMIT_AS, &lim);
    lim.rlim_cur = hc_vm_bytes() + ((rlim_t)256 << 20);
    setrlimit(RLIMIT_AS, &lim);
    int before = rel_thread_count();
    edkm_runtime_config rc; edkm_runtime_config_init(&rc); rc.num_threads = 1024;
    edkm_runtime *rt = NULL;
    edkm_status s = edkm_runtime_create(&rc, &rt);
    int started = rel_thread_count() - before;
    edkm_runtime_stats st; memset(&st, 0, sizeof st); st.struct_size = sizeof st;
    if (s == EDKM_OK) edkm_runtime_get_stats(rt, &st);
    snprintf(d, n, "num_threads 1024 under RLIMIT_AS = VM + 256 MiB -> %s, stats.num_threads %u, workers started %d",
             edkm_status_name(s), st.num_threads, started);
    int bad = s == EDKM_OK ? st.num_threads != (uint32_t)started + 1 : !(s == EDKM_ERR_OUT_OF_MEMORY || s == EDKM_ERR_ALLOCATOR);
    if (s == EDKM_OK) edkm_runtime_destroy(rt);
    return bad;
}

/* M1: misleading messages and silently accepted fields. */
static int m1(char *d, size_t n) {
    edkm_runtime *rt; REL_CHECK(edkm_runtime_create(NULL, &rt));
    int64_t shape[2] = { INT64_MAX, 2 };
    edkm_layer *l = NULL;
    edkm_status a = edkm_layer_create(rt, NULL, shape, 2, &l);
    int bad = a != EDKM_ERR_SHAPE || !strstr(edkm_last_error(), "element count");
    char m_shape[200]; snprintf(m_shape, sizeof m_shape, "%s", edkm_last_error());
    edkm_layer_config lc; edkm_layer_config_init(&lc); lc.reserved = 7;
    int64_t s64 = 64;
    edkm_status b = edkm_layer_create(rt, &lc, &s64, 1, &l);
    bad |= b != EDKM_ERR_INVALID_ARGUMENT;
    REL_CHECK(edkm_layer_create(rt, NULL, &s64, 1, &l));
    uint16_t w[64]; float out[64]; hs_weights(w, 64);
    edkm_status c = edkm_layer_forward(l, w, EDKM_DTYPE_F16, SIZE_MAX, out, EDKM_DTYPE_F32, NULL);
    bad |= c != EDKM_ERR_SHAPE || !strstr(edkm_last_error(), "18446744073709551615");
    char m_size[200]; snprintf(m_size, sizeof m_size, "%s", edkm_last_error());
    rel_comm_ctx ctx; edkm_communicator comm = rel_comm_make(&ctx, 1); comm.reserved = 1;
    edkm_runtime_config rc; edkm_runtime_config_init(&rc); rc.communicator = &comm;
    edkm_runtime *rt2 = NULL;
    edkm_status e = edkm_runtime_create(&rc, &rt2);
    bad |= e != EDKM_ERR_INVALID_ARGUMENT;
    snprintf(d, n, "{INT64_MAX, 2}: %s | count SIZE_MAX: %s | reserved 7: %s, communicator reserved 1: %s", m_shape, m_size,
             edkm_status_name(b), edkm_status_name(e));
    if (e == EDKM_OK) edkm_runtime_destroy(rt2);
    edkm_layer_destroy(l); edkm_runtime_destroy(rt);
    return bad;
}

/* ---- Channel scale (found by the fuzz driver's channel scale model, fuzz_channel_scale.h). */

/* A runtime and an 8 x 16 layer (2 bits, the given channel scale), f32 weights in [-1, 1]. */
static void cs_open(edkm_runtime **rt, edkm_layer **l, const edkm_communicator *comm, int scheme, float *w) {
    edkm_runtime_config rc; edkm_runtime_config_init(&rc); rc.num_threads = 1; rc.communicator = comm;
    REL_CHECK(edkm_runtime_create(&rc, rt));
    edkm_layer_config lc; edkm_layer_config_init(&lc); lc.bits = 2; lc.channel_scale = scheme; lc.f32_key_dtype = EDKM_DTYPE_F16;
    int64_t shape[2] = { 8, 16 };
    REL_CHECK(edkm_layer_create(*rt, &lc, shape, 2, l));
    for (int i = 0; i < 128; i++) w[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
}

/* S1: init_centroids of a layer whose factors are too small for the weights (w / s overflows, here
 * a subnormal factor set by the caller) returned EDKM_OK and left NaN centroids: the layer's next
 * forwards returned NaN with EDKM_OK. Now EDKM_ERR_NON_FINITE naming the quotient, nothing changed. */
static int s1(char *d, size_t n) {
    edkm_runtime *rt; edkm_layer *l; float w[128], f[8], c[4];
    cs_open(&rt, &l, NULL, EDKM_CHANNEL_SCALE_ABS_MAX, w);
    for (int r = 0; r < 8; r++) f[r] = 1e-42f;
    REL_CHECK(edkm_layer_set_channel_scale(l, f, 8));
    edkm_status s = edkm_layer_init_centroids(l, w, EDKM_DTYPE_F32, 128);
    char msg[240]; snprintf(msg, sizeof msg, "%s", edkm_last_error());
    edkm_status g = edkm_layer_get_centroids(l, c, 4);
    snprintf(d, n, "init_centroids with factors 1e-42 -> %s (%s); get_centroids -> %s%s", edkm_status_name(s), s ? msg : "",
             edkm_status_name(g), g == EDKM_OK && !isfinite(c[0]) ? " with NaN centroids" : "");
    int bad = s != EDKM_ERR_NON_FINITE || !strstr(msg, "channel scale factor") || g != EDKM_ERR_STATE;
    edkm_layer_destroy(l); edkm_runtime_destroy(rt);
    return bad;
}

/* S2: forward_shard of a layer with a channel scale whose factor exchange gathers an infinite row
 * extremum (a peer's Inf weight, or garbage) with status 0: the row's factor became Inf and the layer
 * kept it (get_channel_scale returned Inf; the next buffer forward returned -Inf with EDKM_OK). Now
 * every rank fails with EDKM_ERR_NON_FINITE and nothing is kept. */
static int s2_calls = 0;
static int s2_gather(void *u, const void *send, void *recv, size_t bytes) {
    (void)u;
    memcpy(recv, send, bytes);
    memcpy((char *)recv + bytes, send, bytes);
    if (s2_calls++ == 1) { float *peer = (float *)((char *)recv + bytes); peer[2 * 7] = -INFINITY; peer[2 * 7 + 1] = 1.0f; }
    return 0;
}
static int s2_reduce(void *u, double *x, size_t c) { (void)u; for (size_t i = 0; i < c; i++) x[i] *= 2; return 0; }
static int s2(char *d, size_t n) {
    edkm_communicator comm = rel_comm_struct(2, NULL, s2_gather, s2_reduce);
    edkm_runtime *rt; edkm_layer *l; float w[128], out[128], f[8];
    cs_open(&rt, &l, &comm, EDKM_CHANNEL_SCALE_MIN_MAX, w);
    s2_calls = 0;
    edkm_status s = edkm_layer_forward_shard(l, w, EDKM_DTYPE_F32, 0, 64, out, EDKM_DTYPE_F32, NULL);
    char msg[240]; snprintf(msg, sizeof msg, "%s", edkm_last_error());
    edkm_status g = edkm_layer_get_channel_scale(l, f, 8);
    snprintf(d, n, "peer row 7 extrema (-inf, 1) -> %s (%s); get_channel_scale -> %s%s", edkm_status_name(s), s ? msg : "",
             edkm_status_name(g), g == EDKM_OK && !isfinite(f[7]) ? " with an infinite factor" : "");
    int bad = s != EDKM_ERR_NON_FINITE || g != EDKM_ERR_STATE;
    edkm_layer_destroy(l); edkm_runtime_destroy(rt);
    return bad;
}

/* S3: messages that blamed the caller's finite inputs: a forward whose w / s overflows said
 * "weight 0 is -inf", a backward whose gradient times its factor overflows float said
 * "grad_output[0] is inf". The statuses stay EDKM_ERR_NON_FINITE; the messages now name the quotient
 * and the product. */
static int s3(char *d, size_t n) {
    edkm_runtime *rt; edkm_layer *l; float w[128], out[128], g[128], gi[128], f[8];
    cs_open(&rt, &l, NULL, EDKM_CHANNEL_SCALE_ABS_MAX, w);
    for (int r = 0; r < 8; r++) f[r] = 1e-42f;
    REL_CHECK(edkm_layer_set_channel_scale(l, f, 8));
    edkm_status a = edkm_layer_forward(l, w, EDKM_DTYPE_F32, 128, out, EDKM_DTYPE_F32, NULL);
    char ma[240]; snprintf(ma, sizeof ma, "%s", edkm_last_error());
    for (int r = 0; r < 8; r++) f[r] = 3e38f;
    REL_CHECK(edkm_layer_set_channel_scale(l, f, 8));
    edkm_saved_state *st = NULL;
    REL_CHECK(edkm_layer_forward(l, w, EDKM_DTYPE_F32, 128, out, EDKM_DTYPE_F32, &st));
    for (int i = 0; i < 128; i++) g[i] = 10.0f;
    edkm_status b = edkm_saved_state_backward(st, g, gi, EDKM_DTYPE_F32, 128, w);
    char mb[240]; snprintf(mb, sizeof mb, "%s", edkm_last_error());
    snprintf(d, n, "forward, factors 1e-42: %s (%s) | backward, factors 3e38, gradient 10: %s (%s)", edkm_status_name(a), ma,
             edkm_status_name(b), mb);
    int bad = a != EDKM_ERR_NON_FINITE || !strstr(ma, "channel scale factor") || b != EDKM_ERR_NON_FINITE ||
              !strstr(mb, "channel scale factor");
    edkm_saved_state_destroy(st); edkm_layer_destroy(l); edkm_runtime_destroy(rt);
    return bad;
}

/* S4: a backward of a channel-scaled state called from inside a communicator callback of its own
 * runtime must fail with EDKM_ERR_BUSY at once (include/edkm.h); it first multiplied the gradient
 * and divided the weights, reading the caller's buffers (found under ASan: a re-entrant call with a
 * buffer of another dtype read past its end). Here both buffers are an inaccessible page: reading
 * them crashes. */
static edkm_saved_state *s4_state;
static edkm_status s4_status = EDKM_OK;
static void *s4_page;
static int s4_gather(void *u, const void *send, void *recv, size_t bytes) {
    (void)u;
    memcpy(recv, send, bytes);
    if (s4_state) { float out[128]; s4_status = edkm_saved_state_backward(s4_state, s4_page, out, EDKM_DTYPE_F32, 128, s4_page); s4_state = NULL; }
    return 0;
}
static int s4_reduce(void *u, double *x, size_t c) { (void)u; (void)x; (void)c; return 0; }
static int s4(char *d, size_t n) {
    edkm_communicator comm = rel_comm_struct(1, NULL, s4_gather, s4_reduce);
    edkm_runtime *rt; edkm_layer *l; float w[128], out[128];
    cs_open(&rt, &l, &comm, EDKM_CHANNEL_SCALE_ABS_MAX, w);
    edkm_saved_state *st = NULL;
    REL_CHECK(edkm_layer_forward(l, w, EDKM_DTYPE_F32, 128, out, EDKM_DTYPE_F32, &st));
    s4_page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    s4_state = st;
    edkm_status s = edkm_layer_forward_shard(l, w, EDKM_DTYPE_F32, 0, 128, out, EDKM_DTYPE_F32, NULL);
    snprintf(d, n, "backward from inside the forward_shard's all_gather -> %s (outer forward_shard %s)", edkm_status_name(s4_status),
             edkm_status_name(s));
    int bad = s4_status != EDKM_ERR_BUSY;
    edkm_saved_state_destroy(st); edkm_layer_destroy(l); edkm_runtime_destroy(rt);
    return bad;
}

static const struct { const char *id; check_fn fn; int fork; const char *what; } CHECKS[] = {
    { "K1", k1, 1, "forward_shard offset + count overflow traps" },
    { "K2", k2, 1, "set_centroids count >= 2^63 (UB; trap in debug builds)" },
    { "K3", k3, 0, "scale-free temperature on a constant partition gives NaN with EDKM_OK" },
    { "K4", k4, 0, "forward_shard backward reads freed memory (release builds)" },
    { "K5", k5, 1, "runtime worker threads never stop" },
    { "K6", k6, 0, "1-D init keyed by f16 overflows: NaN centroids with EDKM_OK" },
    { "K7", k7, 1, "communicator callbacks run concurrently for one runtime" },
    { "K8", k8, 1, "RSS grows ~4 KiB per used-and-destroyed runtime (jemalloc retain)" },
    { "K9", k9, 0, "destroyed handle reused by a new handle is accepted" },
    { "K10", k10, 1, "struct_size ending inside the communicator pointer: truncated pointer" },
    { "K11", k11, 1, "dense backward with empty clusters of 256: phantom error from a memmove tail call (release builds)" },
    { "D1", d1, 0, "forward_shard states need weights in every saved mode (now documented)" },
    { "H1", h1, 1, "histogram all-reduce returning NaN/Inf/1e300/negative/fractional/inconsistent sums with status 0" },
    { "H2", h2, 1, "gradient all-reduce returning Inf/NaN/1e300 (sums or flags) with status 0" },
    { "H3", h3, 1, "EDKM_SAVED_DKM heap allocation failure aborts the process" },
    { "H4", h4, 1, "SHARD backward with world_size 2^31-1: unchecked world x bytes gather buffer" },
    { "H7", h7, 1, "a communicator callback calling into the same runtime deadlocks" },
    { "H11", h11, 1, "SHARD backward with garbage gathered index blocks gives EDKM_OK" },
    { "H12", h12, 1, "a tiny legal tau gives NaN outputs and gradients with EDKM_OK" },
    { "H13", h13, 1, "f16 LUT overflow (Inf) on export; unpack of a NaN LUT gives EDKM_OK" },
    { "H14", h14, 1, "num_threads 1024 beyond the thread limit: stats claim 1024 workers" },
    { "M1", m1, 1, "misleading messages (signed sizes, shape overflow) and non-zero reserved fields accepted" },
    { "S1", s1, 1, "channel scale: init_centroids with w / s overflowing keeps NaN centroids with EDKM_OK" },
    { "S2", s2, 1, "channel scale: an infinite extremum in the sharded factor exchange is kept as an infinite factor" },
    { "S3", s3, 1, "channel scale: overflowing quotients and scaled gradients reported as the caller's NaN/Inf" },
    { "S4", s4, 1, "channel scale: a re-entrant backward reads the caller's buffers before failing with EDKM_ERR_BUSY" },
};

int main(int argc, char **argv) {
    int present = 0;
    size_t nchecks = sizeof CHECKS / sizeof CHECKS[0];
    printf("libedkm %s: known-bug checks\n", edkm_version_string());
    for (size_t i = 0; i < nchecks; i++) {
        int wanted = argc < 2;
        for (int a = 1; a < argc; a++) if (!strcmp(argv[a], CHECKS[i].id)) wanted = 1;
        if (!wanted) continue;
        char detail[512] = "";
        int r = CHECKS[i].fork ? in_child(CHECKS[i].fn, detail, sizeof detail) : CHECKS[i].fn(detail, sizeof detail);
        present += r != 0;
        printf("%-4s %-8s %s\n     %s\n", CHECKS[i].id, r ? "PRESENT" : "FIXED", CHECKS[i].what, detail);
        fflush(stdout);
    }
    return present;
}
