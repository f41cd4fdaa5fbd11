/*
 * header_check.c: include/edkm.h compiled as strict C99 and checked against libedkm.so.
 *
 *   gcc -std=c99 -Wall -Wextra -Werror -pedantic -I include Tests/abi/header_check.c \
 *       -L .build-dist/lib -ledkm -Wl,-rpath,$PWD/.build-dist/lib -o Tests/abi/bin/header_check
 *
 * Prints `name size` for every public struct, then exercises every error path of the contract that
 * is cheap to reach (NULL pointers, destroy(NULL), bad struct_size, out-of-range config values,
 * foreign / destroyed handles, wrong counts and dtypes, non-finite data, changed weights, a second
 * backward, a byte budget, a failing communicator) and the "nothing is written on failure" rule.
 * Every check prints one line, OK or FAIL; the exit status is 1 if any check failed.
 * Where the header allows more than one status (e.g. a NULL handle may be reported as a NULL pointer
 * or as an invalid handle), every allowed status is accepted and the one returned is printed.
 * Not reachable cheaply, hence not checked: EDKM_ERR_BUSY, EDKM_ERR_OUT_OF_MEMORY,
 * EDKM_ERR_ALLOCATOR, EDKM_ERR_INTERNAL.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "edkm.h"

static int n_ok = 0, n_fail = 0;

static void report(int ok, const char *what, const char *detail) {
    if (ok) ++n_ok; else ++n_fail;
    printf("%s %s%s%s\n", ok ? "OK  " : "FAIL", what, detail && *detail ? ": " : "", detail ? detail : "");
    fflush(stdout);
}

/* got must be one of want[0..n); on failure statuses, last_error must be a non-empty message. */
static void expect_in(edkm_status got, const edkm_status *want, int n, const char *what) {
    char detail[512];
    int i, ok = 0;
    for (i = 0; i < n; ++i) ok |= got == want[i];
    if (ok && got != EDKM_OK) {
        const char *msg = edkm_last_error();
        if (!msg || !*msg) {
            sprintf(detail, "%s but edkm_last_error() is empty", edkm_status_name(got));
            report(0, what, detail);
            return;
        }
    }
    if (ok) {
        sprintf(detail, "%s", edkm_status_name(got));
    } else {
        int len = sprintf(detail, "got %s, want %s", edkm_status_name(got), edkm_status_name(want[0]));
        for (i = 1; i < n; ++i) len += sprintf(detail + len, " or %s", edkm_status_name(want[i]));
        if (got != EDKM_OK) sprintf(detail + len, " (%.200s)", edkm_last_error());
    }
    report(ok, what, detail);
}
static void expect(edkm_status got, edkm_status want, const char *what) { expect_in(got, &want, 1, what); }
static void expect2(edkm_status got, edkm_status a, edkm_status b, const char *what) {
    edkm_status w[2];
    w[0] = a;
    w[1] = b;
    expect_in(got, w, 2, what);
}
static void expect3(edkm_status got, edkm_status a, edkm_status b, edkm_status c, const char *what) {
    edkm_status w[3];
    w[0] = a;
    w[1] = b;
    w[2] = c;
    expect_in(got, w, 3, what);
}
static void check(int cond, const char *what) { report(cond, what, ""); }

/* ---- float16 helpers (exact for the values used here) ---- */
static uint16_t f16(float f) { /* exact conversion of values representable in f16 (normal range) */
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) == 0) return (uint16_t)((x >> 16) & 0x8000u);
    return (uint16_t)(((x >> 16) & 0x8000u) | (((x >> 23) & 0xffu) - 112u) << 10 | ((x >> 13) & 0x3ffu));
}

/* ---- a fake two-rank communicator that can be told to fail ---- */
typedef struct {
    int fail;
    int ranks; /* identical ranks played: 2, or 1 (a real one-rank world) */
    unsigned long calls;
} comm_state;

static int fake_all_gather(void *user, const void *send, void *recv, size_t bytes) {
    comm_state *s = (comm_state *)user;
    ++s->calls;
    if (s->fail) return 1;
    memcpy(recv, send, bytes); /* "rank 1" sends the same block: status-level test only */
    if (s->ranks == 2) memcpy((char *)recv + bytes, send, bytes);
    return 0;
}
static int fake_all_reduce_sum(void *user, double *data, size_t count) {
    comm_state *s = (comm_state *)user;
    size_t i;
    ++s->calls;
    if (s->fail) return 1;
    for (i = 0; i < count; ++i) data[i] *= s->ranks; /* identical ranks */
    return 0;
}

#define N 64 /* every test layer is 8 x 8 */

int main(void) {
    static const struct { edkm_status s; const char *name; } statuses[] = {
        {EDKM_OK, "EDKM_OK"},
        {EDKM_ERR_INVALID_ARGUMENT, "EDKM_ERR_INVALID_ARGUMENT"},
        {EDKM_ERR_NULL_POINTER, "EDKM_ERR_NULL_POINTER"},
        {EDKM_ERR_INVALID_HANDLE, "EDKM_ERR_INVALID_HANDLE"},
        {EDKM_ERR_DTYPE, "EDKM_ERR_DTYPE"},
        {EDKM_ERR_SHAPE, "EDKM_ERR_SHAPE"},
        {EDKM_ERR_NON_FINITE, "EDKM_ERR_NON_FINITE"},
        {EDKM_ERR_OUT_OF_MEMORY, "EDKM_ERR_OUT_OF_MEMORY"},
        {EDKM_ERR_BUDGET_EXCEEDED, "EDKM_ERR_BUDGET_EXCEEDED"},
        {EDKM_ERR_STATE, "EDKM_ERR_STATE"},
        {EDKM_ERR_WEIGHTS_CHANGED, "EDKM_ERR_WEIGHTS_CHANGED"},
        {EDKM_ERR_COMMUNICATOR, "EDKM_ERR_COMMUNICATOR"},
        {EDKM_ERR_BUSY, "EDKM_ERR_BUSY"},
        {EDKM_ERR_STRUCT_SIZE, "EDKM_ERR_STRUCT_SIZE"},
        {EDKM_ERR_ALLOCATOR, "EDKM_ERR_ALLOCATOR"},
        {EDKM_ERR_INTERNAL, "EDKM_ERR_INTERNAL"},
    };
    const int64_t shape[2] = {8, 8};
    char buf[256], saved_msg[512];
    size_t i, count = 0, lut_count = 0, packed_bytes = 0;
    edkm_runtime_config rcfg;
    edkm_layer_config lcfg;
    edkm_runtime_stats rstats;
    edkm_layer_stats lstats;
    edkm_communicator comm;
    comm_state cstate;
    edkm_runtime *rt = NULL, *rt2 = NULL, *sentinel_rt = (edkm_runtime *)&n_ok;
    edkm_layer *layer = NULL, *l2 = NULL, *sentinel_layer = (edkm_layer *)&n_ok;
    edkm_saved_state *saved = NULL, *sentinel_saved = (edkm_saved_state *)&n_ok;
    float w[N], wbad[N], out[N], grad[N], gin[N], cent[16], cent2[16], lut32[16];
    uint16_t w16[N], out16[N], lut16[16];
    uint8_t packed[64];
    uint64_t bytes = 0;
    unsigned char raw[sizeof(edkm_runtime_stats) + 16];
    int local_object = 0;

    /* ============ sizes ============ */
    printf("edkm_communicator %lu\n", (unsigned long)sizeof(edkm_communicator));
    printf("edkm_runtime_config %lu\n", (unsigned long)sizeof(edkm_runtime_config));
    printf("edkm_runtime_stats %lu\n", (unsigned long)sizeof(edkm_runtime_stats));
    printf("edkm_layer_config %lu\n", (unsigned long)sizeof(edkm_layer_config));
    printf("edkm_layer_stats %lu\n", (unsigned long)sizeof(edkm_layer_stats));
    check(offsetof(edkm_communicator, struct_size) == 0 && offsetof(edkm_runtime_config, struct_size) == 0 &&
              offsetof(edkm_runtime_stats, struct_size) == 0 && offsetof(edkm_layer_config, struct_size) == 0 &&
              offsetof(edkm_layer_stats, struct_size) == 0,
          "struct_size is the first field of every struct");
    check(sizeof(edkm_status) == sizeof(int) && sizeof(edkm_dtype) == sizeof(int), "enums are int-sized");

    /* ============ version, status names, last error ============ */
    {
        const char *msg = edkm_last_error();
        check(msg != NULL && *msg == '\0', "edkm_last_error() is \"\" before any failed call");
    }
    sprintf(buf, "library %lu, header %d", (unsigned long)edkm_version_number(), EDKM_VERSION_NUMBER);
    report(edkm_version_number() == EDKM_VERSION_NUMBER, "edkm_version_number() == EDKM_VERSION_NUMBER", buf);
    sprintf(buf, "%d.%d.%d", EDKM_VERSION_MAJOR, EDKM_VERSION_MINOR, EDKM_VERSION_PATCH);
    report(edkm_version_string() && !strcmp(edkm_version_string(), buf), "edkm_version_string() == header's",
           edkm_version_string() ? edkm_version_string() : "(null)");
    for (i = 0; i < sizeof statuses / sizeof statuses[0]; ++i) {
        const char *nm = edkm_status_name(statuses[i].s);
        sprintf(buf, "edkm_status_name(%d) == %s", (int)statuses[i].s, statuses[i].name);
        report(nm && !strcmp(nm, statuses[i].name), buf, nm ? "" : "(null)");
    }
    check(!strcmp(edkm_status_name((edkm_status)15), "EDKM_UNKNOWN_STATUS") &&
              !strcmp(edkm_status_name((edkm_status)98), "EDKM_UNKNOWN_STATUS") &&
              !strcmp(edkm_status_name((edkm_status)-1), "EDKM_UNKNOWN_STATUS") &&
              !strcmp(edkm_status_name((edkm_status)100000), "EDKM_UNKNOWN_STATUS"),
          "edkm_status_name(unknown) == EDKM_UNKNOWN_STATUS");

    /* ============ config defaults ============ */
    memset(&rcfg, 0xab, sizeof rcfg);
    edkm_runtime_config_init(&rcfg);
    check(rcfg.struct_size == sizeof rcfg && rcfg.num_threads == 0 && rcfg.budget_bytes == 0 &&
              rcfg.saved_mode == EDKM_SAVED_HISTOGRAM && rcfg.keep_weights == 0 && rcfg.communicator == NULL,
          "edkm_runtime_config_init defaults");
    memset(&lcfg, 0xab, sizeof lcfg);
    edkm_layer_config_init(&lcfg);
    check(lcfg.struct_size == sizeof lcfg && lcfg.bits == 4 && lcfg.cluster_dim == 1 && lcfg.group_size == 0 &&
              lcfg.max_iterations == 3 && lcfg.init == EDKM_INIT_AUTO && isnan(lcfg.tau) && isnan(lcfg.epsilon) &&
              lcfg.zero_threshold == 1e-7 && isnan(lcfg.prune_threshold) && lcfg.algorithm == EDKM_ALGORITHM_AUTO &&
              lcfg.f32_key_dtype == EDKM_DTYPE_F32 && lcfg.seed == 0x5eed &&
              lcfg.temperature_mode == EDKM_TEMPERATURE_SCALE_FREE && lcfg.enforce_zero == 0 &&
              lcfg.lut_dtype == EDKM_LUT_F32 && lcfg.channel_scale == EDKM_CHANNEL_SCALE_NONE,
          "edkm_layer_config_init defaults (temperature thresholds unset: NaN)");

    /* ============ destroy(NULL) ============ */
    edkm_runtime_destroy(NULL);
    edkm_layer_destroy(NULL);
    edkm_saved_state_destroy(NULL);
    check(1, "edkm_*_destroy(NULL) are no-ops");

    /* ============ runtime create ============ */
    expect(edkm_runtime_create(NULL, NULL), EDKM_ERR_NULL_POINTER, "runtime_create(NULL cfg, NULL out)");
    expect(edkm_runtime_create(&rcfg, NULL), EDKM_ERR_NULL_POINTER, "runtime_create(cfg, NULL out)");
    /* last_error survives a successful call */
    strncpy(saved_msg, edkm_last_error(), sizeof saved_msg - 1);
    saved_msg[sizeof saved_msg - 1] = '\0';
    (void)edkm_version_number();
    edkm_layer_config_init(&lcfg);
    check(!strcmp(saved_msg, edkm_last_error()), "edkm_last_error() unchanged by calls that cannot fail");
    rt = sentinel_rt;
    rcfg.struct_size = 0;
    expect(edkm_runtime_create(&rcfg, &rt), EDKM_ERR_STRUCT_SIZE, "runtime_create struct_size 0");
    check(rt == sentinel_rt, "runtime_create failure leaves *out unwritten");
    rcfg.struct_size = sizeof rcfg + 8;
    expect(edkm_runtime_create(&rcfg, &rt), EDKM_ERR_STRUCT_SIZE, "runtime_create struct_size > sizeof");
    edkm_runtime_config_init(&rcfg);
    rcfg.saved_mode = 99;
    expect(edkm_runtime_create(&rcfg, &rt), EDKM_ERR_INVALID_ARGUMENT, "runtime_create saved_mode 99");
    rcfg.saved_mode = -1;
    expect(edkm_runtime_create(&rcfg, &rt), EDKM_ERR_INVALID_ARGUMENT, "runtime_create saved_mode -1");
    check(rt == sentinel_rt, "runtime_create failures leave *out unwritten");
    /* an older, shorter struct: fields beyond struct_size are ignored (garbage there) and defaulted */
    memset(&rcfg, 0xff, sizeof rcfg);
    rcfg.struct_size = (uint32_t)offsetof(edkm_runtime_config, saved_mode);
    rcfg.num_threads = 1;
    rcfg.budget_bytes = 0;
    expect(edkm_runtime_create(&rcfg, &rt), EDKM_OK, "runtime_create with struct_size = offsetof(saved_mode), garbage beyond");
    if (rt != sentinel_rt) edkm_runtime_destroy(rt);
    rt = sentinel_rt;
    /* communicator */
    edkm_runtime_config_init(&rcfg);
    memset(&comm, 0, sizeof comm);
    memset(&cstate, 0, sizeof cstate);
    cstate.ranks = 2;
    comm.struct_size = sizeof comm;
    comm.rank = 0;
    comm.world_size = 2;
    comm.user_data = &cstate;
    comm.all_gather = fake_all_gather;
    comm.all_reduce_sum = fake_all_reduce_sum;
    rcfg.communicator = &comm;
    comm.struct_size = 0;
    expect(edkm_runtime_create(&rcfg, &rt), EDKM_ERR_STRUCT_SIZE, "runtime_create communicator struct_size 0");
    comm.struct_size = sizeof comm + 8;
    expect(edkm_runtime_create(&rcfg, &rt), EDKM_ERR_STRUCT_SIZE, "runtime_create communicator struct_size > sizeof");
    comm.struct_size = sizeof comm;
    comm.world_size = 0;
    expect(edkm_runtime_create(&rcfg, &rt), EDKM_ERR_INVALID_ARGUMENT, "runtime_create communicator world_size 0");
    comm.world_size = 2;
    comm.rank = 2;
    expect(edkm_runtime_create(&rcfg, &rt), EDKM_ERR_INVALID_ARGUMENT, "runtime_create communicator rank == world_size");
    comm.rank = -1;
    expect(edkm_runtime_create(&rcfg, &rt), EDKM_ERR_INVALID_ARGUMENT, "runtime_create communicator rank -1");
    comm.rank = 0;
    comm.all_gather = NULL;
    expect2(edkm_runtime_create(&rcfg, &rt), EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_ARGUMENT,
            "runtime_create communicator all_gather NULL");
    comm.all_gather = fake_all_gather;
    comm.all_reduce_sum = NULL;
    expect2(edkm_runtime_create(&rcfg, &rt), EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_ARGUMENT,
            "runtime_create communicator all_reduce_sum NULL");
    comm.all_reduce_sum = fake_all_reduce_sum;
    check(rt == sentinel_rt, "runtime_create failures leave *out unwritten");

    strncpy(saved_msg, edkm_last_error(), sizeof saved_msg - 1);
    saved_msg[sizeof saved_msg - 1] = '\0';
    expect(edkm_runtime_create(NULL, &rt), EDKM_OK, "runtime_create(NULL cfg) = defaults");
    check(!strcmp(saved_msg, edkm_last_error()), "edkm_last_error() unchanged by a successful call");
    if (rt == sentinel_rt || rt == NULL) {
        printf("FAIL cannot continue without a runtime\n");
        return 1;
    }

    /* ============ runtime calls ============ */
    expect2(edkm_runtime_set_budget(NULL, 0), EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, "runtime_set_budget(NULL)");
    expect2(edkm_runtime_reset_peak(NULL), EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, "runtime_reset_peak(NULL)");
    rstats.struct_size = sizeof rstats;
    expect2(edkm_runtime_get_stats(NULL, &rstats), EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, "runtime_get_stats(NULL, out)");
    expect(edkm_runtime_get_stats(rt, NULL), EDKM_ERR_NULL_POINTER, "runtime_get_stats(rt, NULL)");
    rstats.struct_size = 0;
    expect(edkm_runtime_get_stats(rt, &rstats), EDKM_ERR_STRUCT_SIZE, "runtime_get_stats struct_size 0");
    rstats.struct_size = sizeof rstats + 8;
    expect(edkm_runtime_get_stats(rt, &rstats), EDKM_ERR_STRUCT_SIZE, "runtime_get_stats struct_size > sizeof");
    {
        const size_t cut = offsetof(edkm_runtime_stats, live_saved_states);
        uint32_t ss = (uint32_t)cut;
        int untouched = 1;
        memset(raw, 0xcd, sizeof raw);
        memcpy(raw, &ss, sizeof ss);
        expect(edkm_runtime_get_stats(rt, (edkm_runtime_stats *)(void *)raw), EDKM_OK,
               "runtime_get_stats with struct_size = offsetof(live_saved_states)");
        for (i = cut; i < sizeof raw; ++i) untouched &= raw[i] == 0xcd;
        check(untouched, "runtime_get_stats writes nothing beyond struct_size");
    }
    rstats.struct_size = sizeof rstats;
    expect(edkm_runtime_get_stats(rt, &rstats), EDKM_OK, "runtime_get_stats");
    check(rstats.struct_size == sizeof rstats && rstats.num_threads >= 1 && rstats.live_saved_states == 0 &&
              rstats.budget_bytes == 0 && rstats.arena_allocated == 0 && rstats.heap_saved == 0,
          "fresh runtime stats (threads >= 1, nothing saved, no budget)");
    expect(edkm_runtime_reset_peak(rt), EDKM_OK, "runtime_reset_peak");
    expect(edkm_runtime_get_stats((const edkm_runtime *)(void *)&local_object, &rstats), EDKM_ERR_INVALID_HANDLE,
           "runtime_get_stats(pointer never returned by create)");
    expect(edkm_runtime_create(NULL, &rt2), EDKM_OK, "runtime_create (second)");
    edkm_runtime_destroy(rt2);
    expect(edkm_runtime_get_stats(rt2, &rstats), EDKM_ERR_INVALID_HANDLE, "runtime_get_stats(destroyed runtime)");
    expect(edkm_runtime_set_budget(rt2, 0), EDKM_ERR_INVALID_HANDLE, "runtime_set_budget(destroyed runtime)");

    /* ============ layer create ============ */
    for (i = 0; i < N; ++i) {
        /* values on a coarse grid (exact in f16) with repeats */
        w[i] = (float)((int)((i * 37) % 23) - 11) / 16.0f;
        w16[i] = f16(w[i]);
    }
    edkm_layer_config_init(&lcfg);
    layer = sentinel_layer;
    expect2(edkm_layer_create(NULL, &lcfg, shape, 2, &layer), EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, "layer_create(NULL runtime)");
    expect(edkm_layer_create(rt2, &lcfg, shape, 2, &layer), EDKM_ERR_INVALID_HANDLE, "layer_create(destroyed runtime)");
    expect(edkm_layer_create((edkm_runtime *)(void *)&local_object, &lcfg, shape, 2, &layer), EDKM_ERR_INVALID_HANDLE,
           "layer_create(pointer never returned by create)");
    expect(edkm_layer_create(rt, &lcfg, NULL, 2, &layer), EDKM_ERR_NULL_POINTER, "layer_create(NULL shape)");
    expect(edkm_layer_create(rt, &lcfg, shape, 2, NULL), EDKM_ERR_NULL_POINTER, "layer_create(NULL out)");
    expect2(edkm_layer_create(rt, &lcfg, shape, 0, &layer), EDKM_ERR_SHAPE, EDKM_ERR_INVALID_ARGUMENT, "layer_create ndim 0");
    {
        int64_t bad[2];
        bad[0] = 8;
        bad[1] = 0;
        expect2(edkm_layer_create(rt, &lcfg, bad, 2, &layer), EDKM_ERR_SHAPE, EDKM_ERR_INVALID_ARGUMENT, "layer_create extent 0");
        bad[1] = -8;
        expect2(edkm_layer_create(rt, &lcfg, bad, 2, &layer), EDKM_ERR_SHAPE, EDKM_ERR_INVALID_ARGUMENT, "layer_create extent -8");
    }
    {
        int64_t big[17];
        for (i = 0; i < 17; ++i) big[i] = 1;
        big[16] = 64;
        expect2(edkm_layer_create(rt, &lcfg, big, 17, &layer), EDKM_ERR_SHAPE, EDKM_ERR_INVALID_ARGUMENT, "layer_create ndim 17 (> 16)");
        big[0] = 16;
        big[1] = 4;
        expect(edkm_layer_create(rt, &lcfg, big, 16, &layer), EDKM_OK, "layer_create ndim 16");
        if (layer != sentinel_layer) edkm_layer_destroy(layer);
        layer = sentinel_layer;
    }
    {
        int64_t small[2];
        small[0] = 1;
        small[1] = 15;
        expect(edkm_layer_create(rt, &lcfg, small, 2, &layer), EDKM_ERR_SHAPE, "layer_create 15 weights < 2^4 centroids");
        small[1] = 16;
        expect(edkm_layer_create(rt, &lcfg, small, 2, &layer), EDKM_OK, "layer_create 16 weights = 2^4 centroids");
        if (layer != sentinel_layer) edkm_layer_destroy(layer);
        layer = sentinel_layer;
    }
#define BAD_LAYER_CFG(field, value, want1, want2, what)                               \
    do {                                                                              \
        edkm_layer_config_init(&lcfg);                                                \
        lcfg.field = value;                                                           \
        expect2(edkm_layer_create(rt, &lcfg, shape, 2, &layer), want1, want2, what);  \
    } while (0)
    BAD_LAYER_CFG(struct_size, 0, EDKM_ERR_STRUCT_SIZE, EDKM_ERR_STRUCT_SIZE, "layer_create struct_size 0");
    BAD_LAYER_CFG(struct_size, sizeof lcfg + 8, EDKM_ERR_STRUCT_SIZE, EDKM_ERR_STRUCT_SIZE, "layer_create struct_size > sizeof");
    BAD_LAYER_CFG(bits, 0, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create bits 0");
    BAD_LAYER_CFG(bits, 9, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create bits 9");
    BAD_LAYER_CFG(cluster_dim, 0, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create cluster_dim 0");
    BAD_LAYER_CFG(cluster_dim, 65, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_SHAPE, "layer_create cluster_dim 65");
    BAD_LAYER_CFG(cluster_dim, 3, EDKM_ERR_SHAPE, EDKM_ERR_INVALID_ARGUMENT, "layer_create cluster_dim 3 (row of 8)");
    BAD_LAYER_CFG(group_size, 3, EDKM_ERR_SHAPE, EDKM_ERR_INVALID_ARGUMENT, "layer_create group_size 3 (8 rows)");
    BAD_LAYER_CFG(group_size, 1, EDKM_ERR_SHAPE, EDKM_ERR_SHAPE, "layer_create group_size 1 (8 weights per group < 16)");
    BAD_LAYER_CFG(cluster_dim, 8, EDKM_ERR_SHAPE, EDKM_ERR_SHAPE, "layer_create cluster_dim 8 (8 vectors < 16)");
    BAD_LAYER_CFG(max_iterations, 0, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create max_iterations 0");
    BAD_LAYER_CFG(max_iterations, 65, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create max_iterations 65");
    BAD_LAYER_CFG(init, 3, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create init 3");
    BAD_LAYER_CFG(init, -1, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create init -1");
    BAD_LAYER_CFG(tau, 0.0, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create tau 0");
    BAD_LAYER_CFG(tau, -1.0, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create tau -1");
    BAD_LAYER_CFG(tau, INFINITY, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_NON_FINITE, "layer_create tau +Inf");
    BAD_LAYER_CFG(epsilon, -1.0, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create epsilon -1");
    BAD_LAYER_CFG(epsilon, INFINITY, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_NON_FINITE, "layer_create epsilon +Inf");
    BAD_LAYER_CFG(zero_threshold, -1e-7, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create zero_threshold < 0");
    BAD_LAYER_CFG(prune_threshold, -1e-7, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create prune_threshold < 0");
    BAD_LAYER_CFG(algorithm, 3, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create algorithm 3");
    BAD_LAYER_CFG(f32_key_dtype, 7, EDKM_ERR_DTYPE, EDKM_ERR_INVALID_ARGUMENT, "layer_create f32_key_dtype 7");
    BAD_LAYER_CFG(enforce_zero, 2, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create enforce_zero 2");
    BAD_LAYER_CFG(lut_dtype, 3, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create lut_dtype 3");
    BAD_LAYER_CFG(channel_scale, 3, EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_INVALID_ARGUMENT, "layer_create channel_scale 3");
    check(layer == sentinel_layer, "layer_create failures leave *out unwritten");
    /* an older, shorter struct: fields from tau on are garbage and must be defaulted */
    memset(&lcfg, 0xff, sizeof lcfg);
    lcfg.struct_size = (uint32_t)offsetof(edkm_layer_config, tau);
    lcfg.bits = 4;
    lcfg.cluster_dim = 1;
    lcfg.group_size = 0;
    lcfg.max_iterations = 3;
    lcfg.init = EDKM_INIT_AUTO;
    expect(edkm_layer_create(rt, &lcfg, shape, 2, &layer), EDKM_OK, "layer_create with struct_size = offsetof(tau), garbage beyond");
    if (layer != sentinel_layer) edkm_layer_destroy(layer);
    /* a 0.3 caller: the struct ends before enforce_zero; the 0.4 fields (garbage here) default off */
    edkm_layer_config_init(&lcfg);
    memset((char *)&lcfg + offsetof(edkm_layer_config, enforce_zero), 0xff,
           sizeof lcfg - offsetof(edkm_layer_config, enforce_zero));
    lcfg.struct_size = (uint32_t)offsetof(edkm_layer_config, enforce_zero);
    expect(edkm_layer_create(rt, &lcfg, shape, 2, &layer), EDKM_OK, "layer_create with a 0.3 struct_size, garbage beyond");
    if (layer != sentinel_layer) edkm_layer_destroy(layer);
    /* a 0.4 caller: the struct ends before channel_scale; garbage there, the scale stays NONE */
    edkm_layer_config_init(&lcfg);
    memset((char *)&lcfg + offsetof(edkm_layer_config, channel_scale), 0x7f,
           sizeof lcfg - offsetof(edkm_layer_config, channel_scale));
    lcfg.struct_size = (uint32_t)offsetof(edkm_layer_config, channel_scale);
    layer = sentinel_layer;
    expect(edkm_layer_create(rt, &lcfg, shape, 2, &layer), EDKM_OK, "layer_create with a 0.4 struct_size, garbage beyond");
    if (layer != sentinel_layer) {
        float factors[8];
        expect(edkm_layer_get_channel_scale(layer, factors, 8), EDKM_ERR_INVALID_ARGUMENT,
               "layer_get_channel_scale of a 0.4-configured layer (NONE)");
        edkm_layer_destroy(layer);
    }
    /* a channel-scale layer: no factors before it sees weights; bad factors are refused */
    edkm_layer_config_init(&lcfg);
    lcfg.channel_scale = EDKM_CHANNEL_SCALE_MIN_MAX;
    layer = sentinel_layer;
    expect(edkm_layer_create(rt, &lcfg, shape, 2, &layer), EDKM_OK, "layer_create channel_scale MIN_MAX");
    if (layer != sentinel_layer) {
        float factors[8];
        for (int i = 0; i < 8; i++) factors[i] = 1.0f + (float)i;
        expect(edkm_layer_get_channel_scale(layer, factors, 8), EDKM_ERR_STATE, "layer_get_channel_scale before any weights");
        expect(edkm_layer_get_channel_scale(layer, NULL, 8), EDKM_ERR_NULL_POINTER, "layer_get_channel_scale(NULL)");
        expect(edkm_layer_set_channel_scale(layer, factors, 7), EDKM_ERR_SHAPE, "layer_set_channel_scale count 7");
        factors[3] = 0.0f;
        expect(edkm_layer_set_channel_scale(layer, factors, 8), EDKM_ERR_INVALID_ARGUMENT, "layer_set_channel_scale with a 0");
        factors[3] = 4.0f;
        expect(edkm_layer_set_channel_scale(layer, factors, 8), EDKM_OK, "layer_set_channel_scale");
        float got[8];
        expect(edkm_layer_get_channel_scale(layer, got, 8), EDKM_OK, "layer_get_channel_scale");
        check(memcmp(got, factors, sizeof got) == 0, "layer_get_channel_scale returns the factors set");
        edkm_layer_destroy(layer);
    }
    /* unset thresholds (NaN) resolve per temperature mode: absolute tau 1e-4, scale-free 0.1 */
    edkm_layer_config_init(&lcfg);
    lcfg.temperature_mode = EDKM_TEMPERATURE_ABSOLUTE;
    expect(edkm_layer_create(rt, &lcfg, shape, 2, &layer), EDKM_OK, "layer_create absolute, thresholds unset");
    if (layer != sentinel_layer) {
        edkm_layer_config got;
        edkm_layer_config_init(&got);
        expect(edkm_layer_get_config(layer, &got), EDKM_OK, "layer_get_config");
        check(got.tau == 1e-4 && got.epsilon == 1e-4 && got.prune_threshold == 1e-7 &&
                  got.temperature_mode == EDKM_TEMPERATURE_ABSOLUTE && got.bits == 4,
              "absolute mode: unset tau / epsilon / prune_threshold resolve to 1e-4 / 1e-4 / 1e-7");
        got.struct_size = 3;
        expect(edkm_layer_get_config(layer, &got), EDKM_ERR_STRUCT_SIZE, "layer_get_config struct_size 3");
        expect(edkm_layer_get_config(layer, NULL), EDKM_ERR_NULL_POINTER, "layer_get_config(NULL)");
        edkm_layer_destroy(layer);
        layer = sentinel_layer;
    }
    expect(edkm_layer_create(rt, NULL, shape, 2, &layer), EDKM_OK, "layer_create(NULL cfg) = defaults");
    if (layer == sentinel_layer || layer == NULL) {
        printf("FAIL cannot continue without a layer\n");
        return 1;
    }
    {
        edkm_layer_config got;
        edkm_layer_config_init(&got);
        expect(edkm_layer_get_config(layer, &got), EDKM_OK, "layer_get_config (defaults)");
        check(got.tau == 0.1 && got.epsilon == 1e-4 && got.prune_threshold == 1e-7 &&
                  got.temperature_mode == EDKM_TEMPERATURE_SCALE_FREE,
              "scale-free mode: unset tau / epsilon / prune_threshold resolve to 0.1 / 1e-4 / 1e-7");
    }
    expect(edkm_runtime_get_stats((const edkm_runtime *)(void *)layer, &rstats), EDKM_ERR_INVALID_HANDLE,
           "runtime_get_stats(a layer handle)");

    /* ============ centroids ============ */
    expect2(edkm_layer_centroid_count(NULL, &count), EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, "layer_centroid_count(NULL)");
    expect(edkm_layer_centroid_count(layer, NULL), EDKM_ERR_NULL_POINTER, "layer_centroid_count(layer, NULL)");
    expect(edkm_layer_centroid_count((const edkm_layer *)(void *)rt, &count), EDKM_ERR_INVALID_HANDLE,
           "layer_centroid_count(a runtime handle)");
    expect(edkm_layer_centroid_count(layer, &count), EDKM_OK, "layer_centroid_count");
    check(count == 16, "centroid count = 2^4 for the default config");
    expect(edkm_layer_get_centroids(layer, cent, 16), EDKM_ERR_STATE, "layer_get_centroids before any initialisation");
    expect(edkm_layer_export(layer, w, EDKM_DTYPE_F32, N, lut32, EDKM_DTYPE_F32, packed, 32), EDKM_ERR_STATE,
           "layer_export before any initialisation");
    expect(edkm_layer_export_sizes(layer, NULL, &packed_bytes), EDKM_ERR_NULL_POINTER, "layer_export_sizes(NULL lut_count)");
    expect(edkm_layer_export_sizes(layer, &lut_count, NULL), EDKM_ERR_NULL_POINTER, "layer_export_sizes(NULL packed_bytes)");
    expect(edkm_layer_export_sizes(layer, &lut_count, &packed_bytes), EDKM_OK, "layer_export_sizes");
    check(lut_count == 16 && packed_bytes == 32, "export sizes = 16 LUT values, 64 x 4 bits = 32 bytes");
    for (i = 0; i < 16; ++i) cent[i] = (float)i / 8.0f - 1.0f;
    expect(edkm_layer_set_centroids(layer, NULL, 16), EDKM_ERR_NULL_POINTER, "layer_set_centroids(NULL)");
    expect(edkm_layer_set_centroids(layer, cent, 15), EDKM_ERR_SHAPE, "layer_set_centroids count 15");
    cent[3] = NAN;
    expect(edkm_layer_set_centroids(layer, cent, 16), EDKM_ERR_NON_FINITE, "layer_set_centroids with NaN");
    cent[3] = INFINITY;
    expect(edkm_layer_set_centroids(layer, cent, 16), EDKM_ERR_NON_FINITE, "layer_set_centroids with Inf");
    expect(edkm_layer_get_centroids(layer, cent2, 16), EDKM_ERR_STATE, "failed set_centroids left no centroids");
    expect(edkm_layer_init_centroids(layer, NULL, EDKM_DTYPE_F32, N), EDKM_ERR_NULL_POINTER, "layer_init_centroids(NULL)");
    expect(edkm_layer_init_centroids(layer, w, EDKM_DTYPE_F32, N - 1), EDKM_ERR_SHAPE, "layer_init_centroids count N-1");
    expect(edkm_layer_init_centroids(layer, w, (edkm_dtype)7, N), EDKM_ERR_DTYPE, "layer_init_centroids dtype 7");
    memcpy(wbad, w, sizeof w);
    wbad[5] = NAN;
    expect(edkm_layer_init_centroids(layer, wbad, EDKM_DTYPE_F32, N), EDKM_ERR_NON_FINITE, "layer_init_centroids with NaN");
    wbad[5] = -INFINITY;
    expect(edkm_layer_init_centroids(layer, wbad, EDKM_DTYPE_F32, N), EDKM_ERR_NON_FINITE, "layer_init_centroids with -Inf");
    expect(edkm_layer_init_centroids(layer, w, EDKM_DTYPE_F32, N), EDKM_OK, "layer_init_centroids");
    expect(edkm_layer_get_centroids(layer, NULL, 16), EDKM_ERR_NULL_POINTER, "layer_get_centroids(NULL)");
    expect(edkm_layer_get_centroids(layer, cent2, 17), EDKM_ERR_SHAPE, "layer_get_centroids count 17");
    expect(edkm_layer_get_centroids(layer, cent2, 16), EDKM_OK, "layer_get_centroids");
    {
        int finite = 1;
        for (i = 0; i < 16; ++i) finite &= cent2[i] == cent2[i] && cent2[i] > -2 && cent2[i] < 2;
        check(finite, "initialised centroids are finite and within the weights' range");
    }

    /* ============ forward ============ */
    lstats.struct_size = 0;
    expect(edkm_layer_get_stats(layer, &lstats), EDKM_ERR_STRUCT_SIZE, "layer_get_stats struct_size 0");
    lstats.struct_size = sizeof lstats + 8;
    expect(edkm_layer_get_stats(layer, &lstats), EDKM_ERR_STRUCT_SIZE, "layer_get_stats struct_size > sizeof");
    expect(edkm_layer_get_stats(layer, NULL), EDKM_ERR_NULL_POINTER, "layer_get_stats(NULL)");
    lstats.struct_size = sizeof lstats;
    if (edkm_layer_get_stats(layer, &lstats) == EDKM_OK) /* or EDKM_ERR_STATE: the header does not say */
        check(lstats.forwards == 0, "layer_get_stats before any forward: forwards == 0");
    else
        report(1, "layer_get_stats before any forward", edkm_last_error());
    saved = sentinel_saved;
    for (i = 0; i < N; ++i) out[i] = 12345.0f;
    expect2(edkm_layer_forward(NULL, w, EDKM_DTYPE_F32, N, out, EDKM_DTYPE_F32, &saved), EDKM_ERR_NULL_POINTER,
            EDKM_ERR_INVALID_HANDLE, "layer_forward(NULL layer)");
    expect(edkm_layer_forward(layer, NULL, EDKM_DTYPE_F32, N, out, EDKM_DTYPE_F32, &saved), EDKM_ERR_NULL_POINTER,
           "layer_forward(NULL weights)");
    expect(edkm_layer_forward(layer, w, EDKM_DTYPE_F32, N, NULL, EDKM_DTYPE_F32, &saved), EDKM_ERR_NULL_POINTER,
           "layer_forward(NULL out)");
    expect(edkm_layer_forward(layer, w, EDKM_DTYPE_F32, N + 1, out, EDKM_DTYPE_F32, &saved), EDKM_ERR_SHAPE,
           "layer_forward count N+1");
    expect(edkm_layer_forward(layer, w, (edkm_dtype)3, N, out, EDKM_DTYPE_F32, &saved), EDKM_ERR_DTYPE,
           "layer_forward weights dtype 3");
    expect(edkm_layer_forward(layer, w, EDKM_DTYPE_F32, N, out, EDKM_DTYPE_BF16, &saved), EDKM_ERR_DTYPE,
           "layer_forward f32 weights, out bf16");
    expect(edkm_layer_forward(layer, w16, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_BF16, &saved), EDKM_ERR_DTYPE,
           "layer_forward f16 weights, out bf16");
    expect(edkm_layer_forward(layer, wbad, EDKM_DTYPE_F32, N, out, EDKM_DTYPE_F32, &saved), EDKM_ERR_NON_FINITE,
           "layer_forward weights with -Inf");
    {
        int untouched = 1;
        for (i = 0; i < N; ++i) untouched &= out[i] == 12345.0f;
        check(untouched && saved == sentinel_saved, "failed forwards leave out and *saved unwritten");
    }
    expect(edkm_layer_get_centroids(layer, cent, 16), EDKM_OK, "layer_get_centroids");
    check(!memcmp(cent, cent2, sizeof cent), "failed forwards leave the centroids unchanged");
    /* byte budget */
    expect(edkm_runtime_set_budget(rt, 1), EDKM_OK, "runtime_set_budget(1 byte)");
    expect(edkm_layer_forward(layer, w16, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &saved), EDKM_ERR_BUDGET_EXCEEDED,
           "layer_forward with saved state over a 1-byte budget");
    {
        int untouched = 1;
        for (i = 0; i < N; ++i) untouched &= out[i] == 12345.0f;
        check(untouched && saved == sentinel_saved, "budget failure leaves out and *saved unwritten");
    }
    expect(edkm_layer_get_centroids(layer, cent, 16), EDKM_OK, "layer_get_centroids");
    check(!memcmp(cent, cent2, sizeof cent), "budget failure leaves the centroids unchanged");
    rstats.struct_size = sizeof rstats;
    expect(edkm_runtime_get_stats(rt, &rstats), EDKM_OK, "runtime_get_stats");
    check(rstats.budget_bytes == 1 && rstats.live_saved_states == 0, "stats show the budget and no saved state");
    expect(edkm_layer_forward(layer, w16, EDKM_DTYPE_F16, N, out16, EDKM_DTYPE_F16, NULL), EDKM_OK,
           "layer_forward with saved = NULL under a 1-byte budget (nothing kept)");
    expect(edkm_runtime_set_budget(rt, 0), EDKM_OK, "runtime_set_budget(0 = unlimited)");
    lstats.struct_size = sizeof lstats;
    expect(edkm_layer_get_stats(layer, &lstats), EDKM_OK, "layer_get_stats");
    check(lstats.forwards == 1 && lstats.algorithm == EDKM_ALGORITHM_UNIQUIFIED && lstats.distinct_values >= 1 &&
              lstats.distinct_values <= 23 && lstats.iterations >= 1 && lstats.iterations <= 3,
          "stats after an f16 forward: 1 forward, UNIQUIFIED, U <= 23 distinct values, 1..3 iterations");
    expect(edkm_layer_forward(layer, w, EDKM_DTYPE_F32, N, out, EDKM_DTYPE_F32, NULL), EDKM_OK, "layer_forward f32 (saved = NULL)");
    expect(edkm_layer_get_stats(layer, &lstats), EDKM_OK, "layer_get_stats");
    check(lstats.forwards == 2 && lstats.algorithm == EDKM_ALGORITHM_DENSE && lstats.distinct_values == 0,
          "stats after an f32 forward with f32 keys: DENSE, distinct_values 0");

    /* ============ saved state, backward ============ */
    expect(edkm_layer_forward(layer, w16, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &saved), EDKM_OK,
           "layer_forward f16 -> f32 with a saved state");
    if (saved == sentinel_saved || saved == NULL) {
        printf("FAIL cannot continue without a saved state\n");
        return 1;
    }
    expect(edkm_saved_state_bytes(saved, NULL), EDKM_ERR_NULL_POINTER, "saved_state_bytes(state, NULL)");
    expect2(edkm_saved_state_bytes(NULL, &bytes), EDKM_ERR_NULL_POINTER, EDKM_ERR_INVALID_HANDLE, "saved_state_bytes(NULL)");
    expect(edkm_saved_state_bytes((const edkm_saved_state *)(void *)layer, &bytes), EDKM_ERR_INVALID_HANDLE,
           "saved_state_bytes(a layer handle)");
    expect(edkm_saved_state_bytes(saved, &bytes), EDKM_OK, "saved_state_bytes");
    check(bytes > 0, "a saved state holds > 0 bytes");
    expect(edkm_runtime_get_stats(rt, &rstats), EDKM_OK, "runtime_get_stats");
    check(rstats.live_saved_states == 1 && rstats.arena_allocated > 0, "stats: 1 live saved state, arena_allocated > 0");
    for (i = 0; i < N; ++i) {
        grad[i] = (float)((int)(i % 7) - 3) / 4.0f;
        gin[i] = 777.0f;
    }
    expect2(edkm_saved_state_backward(NULL, grad, gin, EDKM_DTYPE_F32, N, w16), EDKM_ERR_NULL_POINTER,
            EDKM_ERR_INVALID_HANDLE, "saved_state_backward(NULL state)");
    expect(edkm_saved_state_backward(saved, NULL, gin, EDKM_DTYPE_F32, N, w16), EDKM_ERR_NULL_POINTER,
           "saved_state_backward(NULL grad_output)");
    expect(edkm_saved_state_backward(saved, grad, NULL, EDKM_DTYPE_F32, N, w16), EDKM_ERR_NULL_POINTER,
           "saved_state_backward(NULL grad_input)");
    expect(edkm_saved_state_backward(saved, grad, gin, EDKM_DTYPE_F32, N - 1, w16), EDKM_ERR_SHAPE,
           "saved_state_backward count N-1");
    expect(edkm_saved_state_backward(saved, grad, gin, (edkm_dtype)5, N, w16), EDKM_ERR_DTYPE,
           "saved_state_backward grad dtype 5");
    expect3(edkm_saved_state_backward(saved, grad, gin, EDKM_DTYPE_F32, N, NULL), EDKM_ERR_NULL_POINTER,
            EDKM_ERR_INVALID_ARGUMENT, EDKM_ERR_STATE, "saved_state_backward weights NULL (HISTOGRAM, keep_weights 0)");
    {
        uint16_t changed[N];
        memcpy(changed, w16, sizeof changed);
        changed[10] ^= 1u; /* one ulp */
        expect(edkm_saved_state_backward(saved, grad, gin, EDKM_DTYPE_F32, N, changed), EDKM_ERR_WEIGHTS_CHANGED,
               "saved_state_backward with one weight changed by 1 ulp");
    }
    grad[3] = NAN;
    expect(edkm_saved_state_backward(saved, grad, gin, EDKM_DTYPE_F32, N, w16), EDKM_ERR_NON_FINITE,
           "saved_state_backward grad_output with NaN");
    grad[3] = 0.5f;
    {
        int untouched = 1;
        for (i = 0; i < N; ++i) untouched &= gin[i] == 777.0f;
        check(untouched, "failed backwards leave grad_input unwritten");
    }
    expect(edkm_saved_state_backward(saved, grad, gin, EDKM_DTYPE_F32, N, w16), EDKM_OK,
           "saved_state_backward (f16 weights, f32 gradients) after the failed attempts");
    {
        int finite = 1;
        for (i = 0; i < N; ++i) finite &= gin[i] == gin[i] && gin[i] != 777.0f && gin[i] < 1e30f && gin[i] > -1e30f;
        check(finite, "grad_input written and finite");
    }
    expect(edkm_saved_state_backward(saved, grad, gin, EDKM_DTYPE_F32, N, w16), EDKM_ERR_STATE, "second backward");
    expect(edkm_saved_state_bytes(saved, &bytes), EDKM_OK, "saved_state_bytes after backward (memory kept until destroy)");
    edkm_saved_state_destroy(saved);
    expect(edkm_saved_state_bytes(saved, &bytes), EDKM_ERR_INVALID_HANDLE, "saved_state_bytes(destroyed)");
    expect(edkm_saved_state_backward(saved, grad, gin, EDKM_DTYPE_F32, N, w16), EDKM_ERR_INVALID_HANDLE,
           "saved_state_backward(destroyed)");
    expect(edkm_runtime_get_stats(rt, &rstats), EDKM_OK, "runtime_get_stats");
    check(rstats.live_saved_states == 0, "stats: 0 live saved states after destroy");

    /* f16 weights, f16 gradients; the saved state outlives its layer */
    expect(edkm_layer_forward(layer, w16, EDKM_DTYPE_F16, N, out16, EDKM_DTYPE_F16, &saved), EDKM_OK,
           "layer_forward f16 -> f16 with a saved state");
    edkm_layer_destroy(layer);
    expect(edkm_layer_centroid_count(layer, &count), EDKM_ERR_INVALID_HANDLE, "layer_centroid_count(destroyed layer)");
    expect(edkm_layer_forward(layer, w, EDKM_DTYPE_F32, N, out, EDKM_DTYPE_F32, NULL), EDKM_ERR_INVALID_HANDLE,
           "layer_forward(destroyed layer)");
    {
        uint16_t g16[N], gi16[N];
        for (i = 0; i < N; ++i) g16[i] = f16((float)((int)(i % 5) - 2) / 8.0f);
        expect(edkm_saved_state_backward(saved, g16, gi16, EDKM_DTYPE_F16, N, w16), EDKM_OK,
               "saved_state_backward (f16 gradients) after its layer was destroyed");
    }
    edkm_saved_state_destroy(saved);

    /* ============ export / unpack ============ */
    expect(edkm_layer_create(rt, NULL, shape, 2, &layer), EDKM_OK, "layer_create");
    expect(edkm_layer_init_centroids(layer, w16, EDKM_DTYPE_F16, N), EDKM_OK, "layer_init_centroids (f16)");
    memset(packed, 0x5a, sizeof packed);
    expect2(edkm_layer_export(NULL, w, EDKM_DTYPE_F32, N, lut32, EDKM_DTYPE_F32, packed, 32), EDKM_ERR_NULL_POINTER,
            EDKM_ERR_INVALID_HANDLE, "layer_export(NULL layer)");
    expect(edkm_layer_export(layer, NULL, EDKM_DTYPE_F32, N, lut32, EDKM_DTYPE_F32, packed, 32), EDKM_ERR_NULL_POINTER,
           "layer_export(NULL weights)");
    expect(edkm_layer_export(layer, w, EDKM_DTYPE_F32, N, NULL, EDKM_DTYPE_F32, packed, 32), EDKM_ERR_NULL_POINTER,
           "layer_export(NULL lut)");
    expect(edkm_layer_export(layer, w, EDKM_DTYPE_F32, N, lut32, EDKM_DTYPE_F32, NULL, 32), EDKM_ERR_NULL_POINTER,
           "layer_export(NULL packed)");
    expect(edkm_layer_export(layer, w, EDKM_DTYPE_F32, N - 1, lut32, EDKM_DTYPE_F32, packed, 32), EDKM_ERR_SHAPE,
           "layer_export count N-1");
    expect2(edkm_layer_export(layer, w, EDKM_DTYPE_F32, N, lut32, EDKM_DTYPE_F32, packed, 31), EDKM_ERR_SHAPE,
            EDKM_ERR_INVALID_ARGUMENT, "layer_export packed_bytes 31 (needs 32)");
    expect(edkm_layer_export(layer, w, EDKM_DTYPE_F32, N, lut32, EDKM_DTYPE_BF16, packed, 32), EDKM_ERR_DTYPE,
           "layer_export lut dtype bf16");
    expect(edkm_layer_export(layer, wbad, EDKM_DTYPE_F32, N, lut32, EDKM_DTYPE_F32, packed, 32), EDKM_ERR_NON_FINITE,
           "layer_export weights with -Inf");
    {
        int untouched = 1;
        for (i = 0; i < sizeof packed; ++i) untouched &= packed[i] == 0x5a;
        check(untouched, "failed exports leave packed unwritten");
    }
    expect(edkm_layer_export(layer, w16, EDKM_DTYPE_F16, N, lut16, EDKM_DTYPE_F16, packed, 32), EDKM_OK,
           "layer_export (f16 weights, f16 LUT)");
    check(packed[32] == 0x5a, "layer_export writes exactly packed_bytes");
    for (i = 0; i < N; ++i) out[i] = 12345.0f;
    expect2(edkm_layer_unpack(NULL, lut16, EDKM_DTYPE_F16, packed, 32, out, EDKM_DTYPE_F32, N), EDKM_ERR_NULL_POINTER,
            EDKM_ERR_INVALID_HANDLE, "layer_unpack(NULL layer)");
    expect(edkm_layer_unpack(layer, NULL, EDKM_DTYPE_F16, packed, 32, out, EDKM_DTYPE_F32, N), EDKM_ERR_NULL_POINTER,
           "layer_unpack(NULL lut)");
    expect(edkm_layer_unpack(layer, lut16, EDKM_DTYPE_F16, NULL, 32, out, EDKM_DTYPE_F32, N), EDKM_ERR_NULL_POINTER,
           "layer_unpack(NULL packed)");
    expect(edkm_layer_unpack(layer, lut16, EDKM_DTYPE_F16, packed, 32, NULL, EDKM_DTYPE_F32, N), EDKM_ERR_NULL_POINTER,
           "layer_unpack(NULL out)");
    expect2(edkm_layer_unpack(layer, lut16, EDKM_DTYPE_F16, packed, 31, out, EDKM_DTYPE_F32, N), EDKM_ERR_SHAPE,
            EDKM_ERR_INVALID_ARGUMENT, "layer_unpack packed_bytes 31");
    expect(edkm_layer_unpack(layer, lut16, EDKM_DTYPE_F16, packed, 32, out, EDKM_DTYPE_F32, N + 1), EDKM_ERR_SHAPE,
           "layer_unpack count N+1");
    expect(edkm_layer_unpack(layer, lut16, EDKM_DTYPE_BF16, packed, 32, out, EDKM_DTYPE_F32, N), EDKM_ERR_DTYPE,
           "layer_unpack lut dtype bf16");
    expect(edkm_layer_unpack(layer, lut16, EDKM_DTYPE_F16, packed, 32, out, (edkm_dtype)9, N), EDKM_ERR_DTYPE,
           "layer_unpack out dtype 9");
    {
        int untouched = 1;
        for (i = 0; i < N; ++i) untouched &= out[i] == 12345.0f;
        check(untouched, "failed unpacks leave out unwritten");
    }
    expect(edkm_layer_unpack(layer, lut16, EDKM_DTYPE_F16, packed, 32, out16, EDKM_DTYPE_F16, N), EDKM_OK,
           "layer_unpack (f16 LUT -> f16)");
    {
        int match = 1;
        for (i = 0; i < N; ++i) {
            unsigned label = (packed[i / 2] >> (4 * (i % 2))) & 15u; /* 4 bits, LSB first */
            match &= out16[i] == lut16[label];
        }
        check(match, "unpack = lut[label] with labels packed LSB first");
    }
    {
        uint16_t obf[N];
        expect(edkm_layer_unpack(layer, lut16, EDKM_DTYPE_F16, packed, 32, obf, EDKM_DTYPE_BF16, N), EDKM_OK,
               "layer_unpack (f16 LUT -> bf16)");
    }
    /* the sized forms (since 0.4): every buffer with its size, checked */
    {
        uint16_t lut_sized[16], o2[N];
        uint8_t packed2[33];
        int same = 1;
        memset(packed2, 0x5a, sizeof packed2);
        expect(edkm_layer_export_sized(layer, w16, EDKM_DTYPE_F16, N, lut_sized, EDKM_DTYPE_F16, 15, packed2, 32),
               EDKM_ERR_SHAPE, "layer_export_sized lut_count 15 (needs 16)");
        check(packed2[0] == 0x5a, "a failed export_sized leaves packed unwritten");
        expect(edkm_layer_export_sized(layer, w16, EDKM_DTYPE_F16, N, lut_sized, EDKM_DTYPE_F16, 16, packed2, 32),
               EDKM_OK, "layer_export_sized");
        expect(edkm_layer_unpack_sized(layer, lut_sized, EDKM_DTYPE_F16, 17, packed2, 32, o2, EDKM_DTYPE_F16, N),
               EDKM_ERR_SHAPE, "layer_unpack_sized lut_count 17 (needs 16)");
        expect(edkm_layer_unpack_sized(layer, lut_sized, EDKM_DTYPE_F16, 16, packed2, 32, o2, EDKM_DTYPE_F16, N),
               EDKM_OK, "layer_unpack_sized");
        for (i = 0; i < 16; ++i) same &= lut_sized[i] == lut16[i];
        for (i = 0; i < 32; ++i) same &= packed2[i] == packed[i];
        for (i = 0; i < N; ++i) same &= o2[i] == out16[i];
        check(same && packed2[32] == 0x5a, "the sized export / unpack give the unsized ones' LUT, labels and values");
    }

    /* ============ keep_weights: backward with weights = NULL ============ */
    edkm_runtime_config_init(&rcfg);
    rcfg.keep_weights = 1;
    expect(edkm_runtime_create(&rcfg, &rt2), EDKM_OK, "runtime_create keep_weights = 1");
    expect(edkm_layer_create(rt2, NULL, shape, 2, &l2), EDKM_OK, "layer_create");
    expect(edkm_layer_forward(l2, w16, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &saved), EDKM_OK, "layer_forward");
    edkm_runtime_destroy(rt2); /* the runtime handle goes; the layer and saved state keep the runtime alive */
    expect(edkm_saved_state_backward(saved, grad, gin, EDKM_DTYPE_F32, N, NULL), EDKM_OK,
           "saved_state_backward weights = NULL with keep_weights, after runtime_destroy");
    edkm_saved_state_destroy(saved);
    expect(edkm_layer_forward(l2, w16, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, NULL), EDKM_OK,
           "layer_forward on a layer whose runtime handle was destroyed");
    edkm_layer_destroy(l2);

    /* ============ a failing communicator ============ */
    edkm_runtime_config_init(&rcfg);
    rcfg.saved_mode = EDKM_SAVED_SHARD;
    rcfg.communicator = &comm;
    /* one rank: a copied block is not another rank's shard of the index list, and the library
     * checks the gathered list against its histogram */
    comm.world_size = 1;
    cstate.ranks = 1;
    expect(edkm_runtime_create(&rcfg, &rt2), EDKM_OK, "runtime_create SHARD, 1-rank fake communicator");
    expect(edkm_layer_create(rt2, NULL, shape, 2, &l2), EDKM_OK, "layer_create");
    expect(edkm_layer_init_centroids(l2, w16, EDKM_DTYPE_F16, N), EDKM_OK, "layer_init_centroids");
    cstate.fail = 1;
    {
        edkm_status st = edkm_layer_forward(l2, w16, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &saved);
        expect2(st, EDKM_OK, EDKM_ERR_COMMUNICATOR, "layer_forward (SHARD) with a failing communicator");
        if (st == EDKM_ERR_COMMUNICATOR) {
            cstate.fail = 0;
            expect(edkm_layer_forward(l2, w16, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &saved), EDKM_OK,
                   "layer_forward (SHARD) once the communicator works");
            cstate.fail = 1;
        }
    }
    for (i = 0; i < N; ++i) gin[i] = 777.0f;
    cstate.calls = 0;
    expect(edkm_saved_state_backward(saved, grad, gin, EDKM_DTYPE_F32, N, w16), EDKM_ERR_COMMUNICATOR,
           "saved_state_backward (SHARD) with a failing all_gather");
    sprintf(buf, "%lu callback calls", cstate.calls);
    report(cstate.calls > 0, "the communicator was called", buf);
    {
        int untouched = 1;
        for (i = 0; i < N; ++i) untouched &= gin[i] == 777.0f;
        check(untouched, "communicator failure leaves grad_input unwritten");
    }
    cstate.fail = 0;
    expect(edkm_saved_state_backward(saved, grad, gin, EDKM_DTYPE_F32, N, w16), EDKM_OK,
           "saved_state_backward retried once the communicator works (state stayed usable)");
    expect(edkm_runtime_get_stats(rt2, &rstats), EDKM_OK, "runtime_get_stats");
    check(rstats.communicator_bytes > 0, "communicator_bytes > 0");
    edkm_saved_state_destroy(saved);
    edkm_layer_destroy(l2);
    edkm_runtime_destroy(rt2);

    /* ============ histogram form (since 0.3) ============ */
    {
        /* 64 elements of one partition: four f16 keys, 16 each */
        const uint16_t hkeys[4] = {0x2000, 0x2400, 0x2800, 0x3000}, badkeys[4] = {0x2000, 0x2400, 0x2400, 0x3000};
        const uint16_t nankeys[4] = {0x2000, 0x2400, 0x2800, 0x7e00};
        const double hcounts[4] = {16, 16, 16, 16}, short_counts[4] = {16, 16, 16, 15};
        const double frac_counts[4] = {16.5, 15.5, 16, 16}, gsums[4] = {0.5, -1, 2, 0.25};
        double nan_counts[4] = {16, 16, 16, 16}, soft[4], hh[4], rr[4];
        const size_t offs[2] = {0, 4}, big_offs[2] = {0, 65537};
        edkm_saved_state *hs = NULL;
        int untouched = 1;
        nan_counts[1] = NAN;
        for (i = 0; i < 4; ++i) soft[i] = 777.0;
        expect(edkm_runtime_create(NULL, &rt2), EDKM_OK, "runtime_create (histogram form)");
        expect(edkm_layer_create(rt2, NULL, shape, 2, &l2), EDKM_OK, "layer_create");
        expect(edkm_layer_forward_histogram(l2, EDKM_DTYPE_F16, NULL, hcounts, offs, 1, soft, &hs), EDKM_ERR_NULL_POINTER,
               "layer_forward_histogram(NULL keys)");
        expect(edkm_layer_forward_histogram(l2, EDKM_DTYPE_F32, hkeys, hcounts, offs, 1, soft, &hs), EDKM_ERR_DTYPE,
               "layer_forward_histogram(f32 keys)");
        expect(edkm_layer_forward_histogram(l2, EDKM_DTYPE_F16, hkeys, hcounts, offs, 2, soft, &hs), EDKM_ERR_SHAPE,
               "layer_forward_histogram(2 partitions for a per-tensor layer)");
        expect(edkm_layer_forward_histogram(l2, EDKM_DTYPE_F16, hkeys, hcounts, big_offs, 1, soft, &hs), EDKM_ERR_SHAPE,
               "layer_forward_histogram(U > 65,536)");
        expect(edkm_layer_forward_histogram(l2, EDKM_DTYPE_F16, badkeys, hcounts, offs, 1, soft, &hs),
               EDKM_ERR_INVALID_ARGUMENT, "layer_forward_histogram(duplicate keys)");
        expect(edkm_layer_forward_histogram(l2, EDKM_DTYPE_F16, nankeys, hcounts, offs, 1, soft, &hs), EDKM_ERR_NON_FINITE,
               "layer_forward_histogram(NaN key)");
        expect(edkm_layer_forward_histogram(l2, EDKM_DTYPE_F16, hkeys, nan_counts, offs, 1, soft, &hs), EDKM_ERR_NON_FINITE,
               "layer_forward_histogram(NaN count)");
        expect(edkm_layer_forward_histogram(l2, EDKM_DTYPE_F16, hkeys, frac_counts, offs, 1, soft, &hs),
               EDKM_ERR_INVALID_ARGUMENT, "layer_forward_histogram(fractional counts)");
        expect(edkm_layer_forward_histogram(l2, EDKM_DTYPE_F16, hkeys, short_counts, offs, 1, soft, &hs), EDKM_ERR_SHAPE,
               "layer_forward_histogram(counts add up to 63 of 64)");
        for (i = 0; i < 4; ++i) untouched &= soft[i] == 777.0;
        check(untouched && hs == NULL, "failed histogram forwards write nothing");
        expect(edkm_layer_forward_histogram(l2, EDKM_DTYPE_F16, hkeys, hcounts, offs, 1, soft, &hs), EDKM_OK,
               "layer_forward_histogram");
        expect(edkm_saved_state_bytes(hs, &bytes), EDKM_OK, "saved_state_bytes (histogram form)");
        sprintf(buf, "%llu bytes", (unsigned long long)bytes);
        report(bytes > 0 && bytes < 4096, "histogram-form saved state is U-sized", buf);
        expect(edkm_saved_state_backward(hs, grad, gin, EDKM_DTYPE_F32, N, NULL), EDKM_ERR_STATE,
               "saved_state_backward on a histogram-form state");
        expect(edkm_saved_state_backward_histogram(hs, gsums, 3, hh, rr), EDKM_ERR_SHAPE,
               "saved_state_backward_histogram(count 3 of 4)");
        expect(edkm_saved_state_backward_histogram(hs, nan_counts, 4, hh, rr), EDKM_ERR_NON_FINITE,
               "saved_state_backward_histogram(NaN sum)");
        expect(edkm_saved_state_backward_histogram(hs, gsums, 4, hh, rr), EDKM_OK, "saved_state_backward_histogram");
        expect(edkm_saved_state_backward_histogram(hs, gsums, 4, hh, rr), EDKM_ERR_STATE,
               "saved_state_backward_histogram twice");
        edkm_saved_state_destroy(hs);
        edkm_layer_destroy(l2);
        edkm_runtime_destroy(rt2);
    }

    /* ============ double destroy (the registry must reject it) ============ */
    printf("     (double destroy of a layer and a saved state: the registry must make them no-ops)\n");
    fflush(stdout);
    expect(edkm_layer_forward(layer, w16, EDKM_DTYPE_F16, N, out, EDKM_DTYPE_F32, &saved), EDKM_OK, "layer_forward");
    edkm_saved_state_destroy(saved);
    edkm_saved_state_destroy(saved);
    edkm_layer_destroy(layer);
    edkm_layer_destroy(layer);
    check(1, "double destroy did not crash");

    rstats.struct_size = sizeof rstats;
    expect(edkm_runtime_get_stats(rt, &rstats), EDKM_OK, "runtime_get_stats");
    check(rstats.live_saved_states == 0, "live_saved_states == 0 at the end");
    edkm_runtime_destroy(rt);
    edkm_runtime_destroy(rt);
    check(1, "double runtime_destroy did not crash");

    printf("%d OK, %d FAIL\n", n_ok, n_fail);
    return n_fail ? 1 : 0;
}
