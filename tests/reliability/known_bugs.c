/*
 * known_bugs.c: minimal reproductions of the library bugs found by the reliability work (issue 8),
 * one check each; prints PRESENT or FIXED per bug (see tests/reliability/README.md for the analysis
 * and the suggested fixes). Crashing checks run in a forked child.
 *
 *   known_bugs            run every check
 *   known_bugs K1 K4 ...  run some
 * Exit status: the number of bugs still present (0 = all fixed).
 */
#include "rel_common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
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
    { "D1", d1, 0, "forward_shard states need weights in every saved mode (now documented)" },
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
