/*
 * fuzz_abi.c: a fuzz driver over the C ABI of libedkm (include/edkm.h).
 *
 * Each *iteration* is a random program: a few runtimes, layers and saved states, and a random
 * sequence of 20-120 calls over them: runtime/layer create (random config fields, including bad
 * values and wrong struct_size), forward, forward_shard (one-rank or mirrored communicators),
 * backward, the histogram form (forward_histogram with device-style histograms, corrupted or not,
 * and backward_histogram), saved-state / layer / runtime destroy (including double destroy and destroyed,
 * never-created and wrong-kind handles), set/get/init centroids, export, unpack, stats, with random
 * shapes, dtypes (including invalid values), bit widths 0..9, NaN/Inf/subnormal payloads, NULL
 * pointers, misaligned byte buffers and 16-bit buffers at 2-byte alignment (the header asks only
 * natural alignment, so float buffers are never misaligned), wrong sizes and struct sizes.
 * Layers with a valid channel scale (fuzz_channel_scale.h) run every operation above with the
 * scale's model (factors by the header's formula, read back bit for bit; v = w / s for the NaN/Inf
 * and range checks; scaled-gradient overflow), plus set/get_channel_scale with hostile factors
 * (NaN, Inf, 0, negative, subnormal, FLT_MAX) and the histogram form checked bit for bit against
 * the buffer forward (and its backward against the buffer backward, within float rounding).
 *
 * Every call is checked against a model of the header:
 *   - the status is one the header documents for what was injected (an oracle per call: an
 *     injected fault must give its status, a clean call must give EDKM_OK, plus the statuses that
 *     depend on the environment such as EDKM_ERR_BUDGET_EXCEEDED under a budget);
 *   - on failure nothing is written to outputs (canary bytes) and edkm_last_error() is not empty;
 *   - on success outputs are sane (finite soft weights and centroids, sizes by the formulas,
 *     unpack = lut[label], stats consistent with the calls made);
 *   - at the end of the program, after destroying every saved state and layer, each runtime's
 *     arena statistics are back to their value right after create and live_saved_states is 0
 *     (checked with edkm_runtime_get_stats before the runtime's destroy). The same is checked
 *     whenever a runtime has no live saved state.
 *   - no thread outlives the runtimes (their worker pools are joined).
 * A crash is reported with the seed and iteration that reproduce it.
 *
 * Usage: fuzz_abi [--seed S] [--iterations N | --seconds T] [--only I] [--trace] [--tolerate-known]
 *   --only I       run only iteration I of the seed (reproduction); --trace prints every call.
 *   --tolerate-known  avoid or tolerate (and count) the inputs of the bugs K6, K9 and K10 listed
 *                  below, for libraries older than 0.2 (by default they are generated, and their
 *                  fixed behaviour checked; --hit-known, the former flag for that, is accepted).
 *   --max-ops M    longest program (default 120 calls).
 * Hostile parts (fuzz_hostile.h): after a quarter of the programs, a program over a communicator
 * that lies (impossible results with status 0, garbage gathers, re-entrant callbacks); before the
 * first iteration, one forked allocation-failure child per saved mode (RLIMIT_AS; skipped under
 * sanitizers and valgrind, or with FUZZ_ALLOC_FAILURE=0).
 * Environment: FUZZ_SHOW_NONFINITE_GRADS=1 prints the forwards whose successful backward gave a
 * non-finite gradient; FUZZ_DISABLE=letters skips op groups (a debugging aid, see run_program).
 *
 * Build (see scripts/reliability-ci.sh):
 *   cc -std=c99 -O1 -g -I include Tests/reliability/fuzz_abi.c -L .build-dist/lib -ledkm \
 *      -Wl,-rpath,$PWD/.build-dist/lib -lm -o .build-reliability/bin/fuzz_abi
 * libFuzzer (clang from the Swift toolchain; the choices then come from the fuzzer's input):
 *   clang -fsanitize=fuzzer -DEDKM_LIBFUZZER ... (see scripts/reliability-libfuzzer.sh)
 */
#define _GNU_SOURCE 1
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rel_common.h"


/*
 * Library bugs this driver found (Tests/reliability/README.md has the analysis), all fixed:
 *   K1 forward_shard offset + count overflow trap; K2 set_centroids count >= 2^63; K3 scale-free
 *   temperature on coincident centroids -> NaN; K4 forward_shard backward use-after-free (wrong
 *   gradients, NaN accepted); K5 worker threads of destroyed runtimes never stopped; K6 1-D
 *   initialisation of f32 weights beyond the f16 range keyed by f16 (NaN centroids); K9 a destroyed
 *   handle whose address was reused by a new handle was accepted; K10 a struct_size ending inside
 *   the communicator pointer made the library read a truncated pointer (crash).
 *   K1-K5 are checked on every run. For K6, K9 and K10 the driver still has the tolerant mode it
 *   needed while they were open (avoid the input or count it), now behind --tolerate-known; by
 *   default the driver generates those inputs and checks the fixed behaviour.
 */
static int g_hit_known = 1;  /* 0 with --tolerate-known (libraries older than 0.2) */
static uint64_t g_known_avoided[7];
static int g_threads_at_start = 1;

/* ------------------------------------------------------------------ random source */

static uint64_t g_rs;                  /* splitmix state (seeded mode) */
static const uint8_t *g_fd;            /* libFuzzer input */
static size_t g_fn, g_fp;
static int g_libfuzzer = 0;
static int g_exhausted = 0;

static uint64_t take_bytes(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        uint8_t b = 0;
        if (g_fp < g_fn) b = g_fd[g_fp++]; else g_exhausted = 1;
        v = (v << 8) | b;
    }
    return v;
}
static uint64_t R64(void) { return g_libfuzzer ? take_bytes(8) : rel_splitmix(&g_rs); }
/* Uniform in [0, n). */
static uint64_t RN(uint64_t n) {
    if (n <= 1) return 0;
    if (!g_libfuzzer) return rel_splitmix(&g_rs) % n;
    int bytes = n <= 256 ? 1 : n <= 65536 ? 2 : n <= 0xffffffffull ? 4 : 8;
    return take_bytes(bytes) % n;
}
static int CH(int percent) { return (int)RN(100) < percent; }
static int64_t RR(int64_t lo, int64_t hi) { return lo + (int64_t)RN((uint64_t)(hi - lo + 1)); }
static double log_uniform(double lo, double hi) {
    double u = (double)RN(1u << 30) / (double)(1u << 30);
    return exp(log(lo) + u * (log(hi) - log(lo)));
}

/* ------------------------------------------------------------------ bookkeeping */

static uint64_t g_calls = 0;           /* executions: C ABI calls made */
static uint64_t g_failures = 0;        /* oracle violations in this iteration */
static uint64_t g_total_failures = 0;
static uint64_t g_iteration = 0, g_seed = 0;
static int g_opno = 0;
static int g_trace = 0;
static char g_ctx[512];                /* what is running, for the crash handler */
static uint64_t g_status_hist[16 + 1];
static uint64_t g_aliased_stale = 0;   /* destroyed handles whose address came back as a new live handle */
static uint64_t g_nonfinite_grads = 0; /* successful backward with a non-finite gradient (not a failure) */
static uint64_t g_allocator_errors = 0;

#define MAX_FAIL_PRINTS 40
static uint64_t g_fail_prints = 0;

static void fail(const char *fmt, ...) {
    g_failures++;
    g_total_failures++;
    if (g_fail_prints++ >= MAX_FAIL_PRINTS) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL [seed %llu iteration %llu op %d] ", (unsigned long long)g_seed,
            (unsigned long long)g_iteration, g_opno);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n  reproduce: fuzz_abi --seed %llu --only %llu --trace\n", (unsigned long long)g_seed,
            (unsigned long long)g_iteration);
    va_end(ap);
}

static void trace(const char *fmt, ...) {
    if (!g_trace) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "  [%d] ", g_opno);
    vfprintf(stdout, fmt, ap);
    fprintf(stdout, "\n");
    fflush(stdout);
    va_end(ap);
}

static void set_ctx(const char *op) {
    snprintf(g_ctx, sizeof g_ctx,
             "\nfuzz_abi: CRASH during %s (seed %llu, iteration %llu, op %d)\n"
             "  reproduce: fuzz_abi --seed %llu --only %llu --trace\n",
             op, (unsigned long long)g_seed, (unsigned long long)g_iteration, g_opno,
             (unsigned long long)g_seed, (unsigned long long)g_iteration);
}

/* ------------------------------------------------------------------ statuses */

#define SB(s) (((unsigned)(s) <= 14u) ? (1u << (unsigned)(s)) : ((s) == EDKM_ERR_INTERNAL ? (1u << 31) : (1u << 30)))
enum {
    F_ARG = SB(EDKM_ERR_INVALID_ARGUMENT), F_NULL = SB(EDKM_ERR_NULL_POINTER), F_HANDLE = SB(EDKM_ERR_INVALID_HANDLE),
    F_DTYPE = SB(EDKM_ERR_DTYPE), F_SHAPE = SB(EDKM_ERR_SHAPE), F_NONFINITE = SB(EDKM_ERR_NON_FINITE),
    F_OOM = SB(EDKM_ERR_OUT_OF_MEMORY), F_BUDGET = SB(EDKM_ERR_BUDGET_EXCEEDED), F_STATE = SB(EDKM_ERR_STATE),
    F_CHANGED = SB(EDKM_ERR_WEIGHTS_CHANGED), F_COMM = SB(EDKM_ERR_COMMUNICATOR), F_BUSY = SB(EDKM_ERR_BUSY),
    F_STRUCT = SB(EDKM_ERR_STRUCT_SIZE), F_ALLOC = SB(EDKM_ERR_ALLOCATOR)
};

static void mask_names(unsigned m, char *buf, size_t n) {
    buf[0] = 0;
    if (m == 0) { snprintf(buf, n, "EDKM_OK"); return; }
    for (int s = 0; s <= 14; s++) {
        if (m & (1u << s)) {
            size_t l = strlen(buf);
            snprintf(buf + l, n - l, "%s%s", l ? "|" : "", edkm_status_name((edkm_status)s));
        }
    }
}

/*
 * Checks a status: `must` = the statuses of the faults injected (nonzero: the call must fail with
 * one of them or one of `may`); `may` = statuses the environment may cause (budget, key range...).
 * Returns 1 when the call succeeded.
 */
static int check_status(const char *op, edkm_status got, unsigned must, unsigned may) {
    unsigned g = (unsigned)got;
    if (g <= 14) g_status_hist[g]++; else g_status_hist[16]++;
    if (got == EDKM_ERR_ALLOCATOR && g_allocator_errors++ == 0)
        fprintf(stderr, "fuzz_abi: first EDKM_ERR_ALLOCATOR (%s) at iteration %llu with %d threads alive\n", edkm_last_error(),
                (unsigned long long)g_iteration, rel_thread_count());
    char want[256], inj[256];
    mask_names(must | may, want, sizeof want);
    mask_names(must, inj, sizeof inj);
    int documented = (g <= 14) || got == EDKM_ERR_INTERNAL;
    if (!documented) {
        fail("%s returned undocumented status %u", op, g);
        return 0;
    }
    if (got == EDKM_ERR_INTERNAL) {
        fail("%s returned EDKM_ERR_INTERNAL: %s", op, edkm_last_error());
        return 0;
    }
    if (got == EDKM_OK) {
        if (must) fail("%s returned EDKM_OK although %s was injected", op, inj);
        return must == 0;
    }
    const char *msg = edkm_last_error();
    if (msg == NULL || msg[0] == 0) fail("%s failed with %s but edkm_last_error() is empty", op, edkm_status_name(got));
    if (!((must | may) & SB(got))) {
        fail("%s returned %s (%s); expected %s%s", op, edkm_status_name(got), msg ? msg : "",
             must ? "" : "EDKM_OK or ", want);
    }
    trace("%s -> %s (%s)", op, edkm_status_name(got), msg ? msg : "");
    return 0;
}

#define CALL(expr) (g_calls++, (expr))
#define VCALL(expr) do { g_calls++; expr; } while (0)

/* ------------------------------------------------------------------ buffers */

typedef struct { void *base; void *p; size_t bytes; } Buf;

/* A buffer of exactly `bytes` bytes starting `off` bytes past a malloc'd (16-aligned) address,
 * so that reading past its end is caught by valgrind / ASan. */
static Buf buf_new(size_t bytes, size_t off) {
    Buf b;
    b.bytes = bytes;
    b.base = malloc(bytes + off + 1);
    if (!b.base) { fprintf(stderr, "fuzz_abi: out of memory (%zu bytes)\n", bytes); exit(2); }
    b.p = (char *)b.base + off;
    return b;
}
static void buf_free(Buf *b) { free(b->base); b->base = b->p = NULL; }
static void buf_canary(Buf *b) { memset(b->p, 0xA5, b->bytes); }
static int buf_is_canary(const Buf *b) {
    const unsigned char *p = (const unsigned char *)b->p;
    for (size_t i = 0; i < b->bytes; i++) if (p[i] != 0xA5) return 0;
    return 1;
}
/* An offset that keeps natural alignment for dtype t but not more (or 0). */
static size_t natural_offset(int t) {
    size_t w = (t == EDKM_DTYPE_F32) ? 4 : 2;
    int r = (int)RN(4);
    return r == 0 ? 0 : r == 1 ? w : r == 2 ? 3 * w : 16 - w;
}

/* ------------------------------------------------------------------ handles */

#define MAX_RT 3
#define MAX_L 8
#define MAX_S 16
#define MAX_STALE 32

typedef struct {
    int used;              /* slot in use (handle live, or destroyed with children still alive) */
    int handle_live;
    edkm_runtime *h;
    int saved_mode, keep_weights;
    uint64_t budget;
    int has_comm, world;
    rel_comm_ctx ctx;
    edkm_communicator comm;
    uint32_t threads_cfg;
    uint64_t base_arena, base_heap;
    int children;          /* live layers + saved states made from it */
    int live_saved;
    uint64_t comm_bytes;
} RT;

typedef struct {
    int live;
    edkm_layer *h;
    int rt;
    edkm_layer_config cfg;  /* effective config */
    size_t ndim;
    int64_t shape[16];
    size_t N, groups, E, k, d;
    int has_centroids;
    int last_degenerate;   /* the last forward was a K6 one (NaN traces) */
    double entropy_scale;  /* forward_shard with a mirrored communicator: counts are world x the slice's */
    double cent_maxabs;    /* the largest |weight| (v = w / s with a channel scale) any successful
                              init_centroids or forward clustered: a centroid no later weight attends
                              keeps its value, so later outputs can reach it */
    uint64_t forwards;
    int has_export;
    Buf lut, packed;
    int lut_dtype;
    int scale_fixed;       /* channel scale: the factors are fixed (fuzz_channel_scale.h) */
    float *factors;        /* shape[0] factors once fixed (the model's) */
} LY;

typedef struct {
    int live;
    edkm_saved_state *h;
    int rt;
    int sharded;
    size_t count;
    int wdtype;
    Buf weights;           /* copy of the forward's weights */
    int consumed;
    int needs_weights;
    int uses_comm;
    int degenerate;        /* made by a K6 forward (NaN traces) */
    int hist_form;         /* made by edkm_layer_forward_histogram: count = its total U of keys */
    float *factors;        /* the channel scale factors of its forward (NULL without) */
    size_t first, rowlen;  /* tensor element of its element 0 (a slice's offset), row length */
    char desc[200];        /* the forward's layer and payload, for reports */
} SS;

static RT g_rt[MAX_RT];
static LY g_ly[MAX_L];
static SS g_ss[MAX_S];
static struct { void *p; int kind; } g_stale[MAX_STALE];
static int g_nstale = 0;
static char g_garbage_area[64];
static const char *g_disabled = NULL;

static void stale_add(void *p, int kind) {
    if (!p) return;
    int i = g_nstale < MAX_STALE ? g_nstale++ : (int)RN(MAX_STALE);
    g_stale[i].p = p;
    g_stale[i].kind = kind;
}
static int is_live_handle(void *p, int *kind) {
    for (int i = 0; i < MAX_RT; i++) if (g_rt[i].used && g_rt[i].handle_live && (void *)g_rt[i].h == p) { *kind = 0; return 1; }
    for (int i = 0; i < MAX_L; i++) if (g_ly[i].live && (void *)g_ly[i].h == p) { *kind = 1; return 1; }
    for (int i = 0; i < MAX_S; i++) if (g_ss[i].live && (void *)g_ss[i].h == p) { *kind = 2; return 1; }
    return 0;
}

/*
 * A bad handle for a function expecting `kind` (0 runtime, 1 layer, 2 saved state): NULL (fault
 * EDKM_ERR_NULL_POINTER), a destroyed handle, a never-created address, or a live handle of another
 * kind (EDKM_ERR_INVALID_HANDLE). Sets *fault.
 */
static void *bad_handle(int kind, unsigned *fault) {
    for (int tries = 0; tries < 4; tries++) {
        int r = (int)RN(4);
        if (r == 0) { *fault = F_NULL; return NULL; }
        if (r == 1 && g_nstale > 0) {
            int i = (int)RN((uint64_t)g_nstale);
            int lk;
            if (is_live_handle(g_stale[i].p, &lk)) {
                g_aliased_stale++;
                if (lk == kind) continue;  /* the address is a live handle of this kind again: not bad */
            }
            *fault = F_HANDLE;
            return g_stale[i].p;
        }
        if (r == 2) {
            static const uintptr_t odd[] = { 1, 8, 0xdeadbeef, (uintptr_t)-1, (uintptr_t)-64, 0x7fffffffffffull };
            int j = (int)RN(8);
            *fault = F_HANDLE;
            if (j < 6) return (void *)odd[j];
            return (void *)(g_garbage_area + RN(48));
        }
        if (r == 3) {
            /* a live handle of another kind */
            for (int a = 0; a < 8; a++) {
                int want = (int)RN(3);
                if (want == kind) continue;
                if (want == 0) { int i = (int)RN(MAX_RT); if (g_rt[i].used && g_rt[i].handle_live) { *fault = F_HANDLE; return g_rt[i].h; } }
                if (want == 1) { int i = (int)RN(MAX_L); if (g_ly[i].live) { *fault = F_HANDLE; return g_ly[i].h; } }
                if (want == 2) { int i = (int)RN(MAX_S); if (g_ss[i].live) { *fault = F_HANDLE; return g_ss[i].h; } }
            }
        }
    }
    *fault = F_HANDLE;
    return (void *)(g_garbage_area + 3);
}

static int pick_rt(void) {
    int c[MAX_RT], n = 0;
    for (int i = 0; i < MAX_RT; i++) if (g_rt[i].used && g_rt[i].handle_live) c[n++] = i;
    return n ? c[RN((uint64_t)n)] : -1;
}
static int pick_layer(void) {
    int c[MAX_L], n = 0;
    for (int i = 0; i < MAX_L; i++) if (g_ly[i].live) c[n++] = i;
    return n ? c[RN((uint64_t)n)] : -1;
}
static int pick_saved(void) {
    int c[MAX_S], n = 0;
    for (int i = 0; i < MAX_S; i++) if (g_ss[i].live) c[n++] = i;
    return n ? c[RN((uint64_t)n)] : -1;
}

static void rt_child_gone(int r) {
    RT *R = &g_rt[r];
    R->children--;
    if (!R->handle_live && R->children == 0) R->used = 0;  /* orphaned runtime: its arena is gone now */
}

/* ------------------------------------------------------------------ payloads */

typedef struct {
    int nonfinite;      /* a NaN or Inf element */
    int key_inf_f16;    /* (f32) an element whose f16 rounding is not finite */
    int key_inf_bf16;   /* (f32) an element whose bf16 rounding is not finite */
    double maxabs;
} Info;

static void scan_info(const void *p, int t, size_t n, Info *info) {
    memset(info, 0, sizeof *info);
    for (size_t i = 0; i < n; i++) {
        float v = rel_load(p, t, i);
        if (!isfinite(v)) { info->nonfinite = 1; continue; }
        if (fabs(v) > info->maxabs) info->maxabs = fabs(v);
        if (t == EDKM_DTYPE_F32) {
            if (!isfinite(rel_f16_to_float(rel_float_to_f16(v)))) info->key_inf_f16 = 1;
            if (!isfinite(rel_bf16_to_float(rel_float_to_bf16(v)))) info->key_inf_bf16 = 1;
        }
    }
}

/* Fills n elements of dtype t (valid) with a random payload; with inject, may add NaN/Inf. */
static void fill_payload(void *p, int t, size_t n, int inject) {
    uint64_t s = R64();
    int style = (int)(rel_splitmix(&s) % 8);
    double scale;
    switch ((int)(rel_splitmix(&s) % 6)) {
        case 0: scale = 1e-3; break;
        case 1: scale = 0.02; break;
        case 2: scale = 1.0; break;
        case 3: scale = 30.0; break;
        case 4: scale = t == EDKM_DTYPE_F16 ? 3000.0 : 1e5; break;
        default: scale = t == EDKM_DTYPE_F32 ? 1e30 : (t == EDKM_DTYPE_BF16 ? 1e30 : 20000.0); break;
    }
    int levels = 1 + (int)(rel_splitmix(&s) % 12);
    double constant = rel_normal(&s) * scale;
    for (size_t i = 0; i < n; i++) {
        double v;
        switch (style) {
            case 0: case 1: v = rel_normal(&s) * scale; break;
            case 2: v = (double)(rel_splitmix(&s) % (uint64_t)levels) * scale / levels; break;   /* few distinct */
            case 3: v = constant; break;                                                          /* all equal */
            case 4: {                                                                             /* subnormals */
                if (t == EDKM_DTYPE_F16) {
                    uint16_t h = (uint16_t)(rel_splitmix(&s) & 0x83ffu);
                    memcpy((char *)p + 2 * i, &h, 2);
                    continue;
                }
                uint32_t b = (uint32_t)(rel_splitmix(&s) & 0x807fffffu);
                if (t == EDKM_DTYPE_F32) { memcpy((char *)p + 4 * i, &b, 4); continue; }
                uint16_t h = (uint16_t)((b >> 16) & 0x807fu);
                memcpy((char *)p + 2 * i, &h, 2);
                continue;
            }
            case 5: v = ldexp(rel_normal(&s), (int)(rel_splitmix(&s) % 40) - 30); break;         /* wide exponents */
            case 6: v = (rel_splitmix(&s) & 1) ? 0.0 : -0.0; if (rel_splitmix(&s) % 4 == 0) v = rel_normal(&s) * scale; break;
            default: v = (double)((int64_t)(rel_splitmix(&s) % 64) - 32); break;                  /* small integers */
        }
        rel_store(p, t, i, (float)v);
    }
    if (inject && n > 0 && rel_splitmix(&s) % 100 < 10) {
        int count = 1 + (int)(rel_splitmix(&s) % 3);
        for (int c = 0; c < count; c++) {
            size_t i = (size_t)(rel_splitmix(&s) % n);
            int kind = (int)(rel_splitmix(&s) % 4);
            int neg = (int)(rel_splitmix(&s) & 1);
            if (t == EDKM_DTYPE_F32) {
                uint32_t b = kind == 0 ? 0x7f800000u : kind == 1 ? 0x7fc00000u : kind == 2 ? 0x7f800001u
                             : (0x7f800000u | (uint32_t)(1 + rel_splitmix(&s) % 0x7fffffu));
                if (neg) b |= 0x80000000u;
                memcpy((char *)p + 4 * i, &b, 4);
            } else {
                uint16_t inf = t == EDKM_DTYPE_F16 ? 0x7c00u : 0x7f80u;
                uint16_t mmask = t == EDKM_DTYPE_F16 ? 0x3ffu : 0x7fu;
                uint16_t b = kind == 0 ? inf : kind == 1 ? (uint16_t)(inf | (mmask + 1) / 2) : kind == 2 ? (uint16_t)(inf | 1)
                             : (uint16_t)(inf | (uint16_t)(1 + rel_splitmix(&s) % mmask));
                if (neg) b |= 0x8000u;
                memcpy((char *)p + 2 * i, &b, 2);
            }
        }
    }
}

/* A dtype for a call: mostly valid; invalid values set *fault |= F_DTYPE. */
static int pick_dtype(unsigned *fault, int prefer) {
    if (CH(6)) {
        static const int bad[] = { 3, 4, -1, 99, 0x7fffffff, (int)0x80000000 };
        *fault |= F_DTYPE;
        return bad[RN(6)];
    }
    if (prefer >= 0 && CH(60)) return prefer;
    return (int)RN(3);
}

/* A wrong element count near or far from n (never equal to n). */
static size_t wrong_count(size_t n) {
    size_t c;
    switch ((int)RN(7)) {
        case 0: c = n + 1; break;
        case 1: c = n ? n - 1 : 1; break;
        case 2: c = 0; break;
        case 3: c = n * 2 + 1; break;
        case 4: c = SIZE_MAX; break;
        case 5: c = (size_t)1 << 63; break;
        default: c = (size_t)RN(100000); break;
    }
    return c == n ? n + 1 : c;
}

/* ------------------------------------------------------------------ config models */

static void random_layer_config(edkm_layer_config *c) {
    edkm_layer_config_init(c);
    int r = (int)RN(100);
    c->bits = r < 70 ? (uint32_t)RR(1, 4) : r < 90 ? (uint32_t)RR(5, 8) : (CH(50) ? 0u : 9u);
    r = (int)RN(100);
    c->cluster_dim = r < 80 ? 1u : r < 95 ? (uint32_t)(1u << RR(1, 3)) : (uint32_t)RN(70);
    c->group_size = 0;  /* set with the shape */
    r = (int)RN(100);
    c->max_iterations = r < 80 ? (uint32_t)RR(1, 4) : r < 90 ? (uint32_t)RR(5, 64) : (CH(50) ? 0u : (uint32_t)RR(65, 100000));
    r = (int)RN(100);
    c->init = r < 95 ? (int32_t)RN(3) : (CH(50) ? -1 : (int32_t)RR(3, 1000));
    if (c->cluster_dim > 1 && c->init == EDKM_INIT_OPTIMAL_1D && CH(80)) c->init = EDKM_INIT_AUTO;
    r = (int)RN(100);
    if (r < 40) c->tau = 1e-4;
    else if (r < 90) c->tau = log_uniform(1e-9, 10.0);
    else { static const double bad[] = { 0.0, -1e-4, NAN, INFINITY, -INFINITY }; c->tau = bad[RN(5)]; }
    r = (int)RN(100);
    if (r < 60) c->epsilon = 1e-4; else if (r < 75) c->epsilon = 0; else if (r < 95) c->epsilon = log_uniform(1e-12, 1e3);
    else { static const double bad[] = { -1.0, NAN, INFINITY }; c->epsilon = bad[RN(3)]; }
    r = (int)RN(100);
    if (r < 60) c->zero_threshold = 1e-7; else if (r < 75) c->zero_threshold = 0; else if (r < 95) c->zero_threshold = log_uniform(1e-30, 0.5);
    else { static const double bad[] = { 1.0, 2.0, -1e-7, NAN }; c->zero_threshold = bad[RN(4)]; }
    r = (int)RN(100);
    if (r < 60) c->prune_threshold = 1e-7; else if (r < 75) c->prune_threshold = 0; else if (r < 95) c->prune_threshold = log_uniform(1e-12, 10.0);
    else { static const double bad[] = { -1.0, NAN, INFINITY }; c->prune_threshold = bad[RN(3)]; }
    r = (int)RN(100);
    c->algorithm = r < 95 ? (int32_t)RN(3) : (CH(50) ? 3 : -2);
    if (c->cluster_dim > 1 && c->algorithm == EDKM_ALGORITHM_UNIQUIFIED && CH(80)) c->algorithm = EDKM_ALGORITHM_AUTO;
    r = (int)RN(100);
    c->f32_key_dtype = r < 60 ? EDKM_DTYPE_F32 : r < 95 ? (int32_t)RR(1, 2) : (CH(50) ? 3 : -1);
    c->seed = R64();
    r = (int)RN(100);
    c->temperature_mode = r < 97 ? (int32_t)RN(2) : (CH(50) ? 2 : -7);
    c->reserved = CH(95) ? 0u : (uint32_t)R64();
    r = (int)RN(100);
    c->enforce_zero = r < 85 ? 0u : r < 98 ? 1u : (uint32_t)RR(2, 1000);
    r = (int)RN(100);
    c->lut_dtype = r < 80 ? EDKM_LUT_F32 : r < 98 ? (int32_t)RR(1, 2) : (CH(50) ? 3 : -1);
    /* channel_scale: NONE, a valid scale (fuzz_channel_scale.h models it), or an invalid value */
    r = (int)RN(100);
    c->channel_scale = r < 70 ? EDKM_CHANNEL_SCALE_NONE : r < 97 ? (int32_t)RR(1, 2) : (CH(50) ? 3 : -1);
}

/* Faults of an effective layer config (header: ranges of every field). */
static unsigned layer_config_faults(const edkm_layer_config *c) {
    unsigned f = 0;
    if (c->bits < 1 || c->bits > 8) f |= F_ARG;
    if (c->cluster_dim < 1 || c->cluster_dim > 64) f |= F_ARG;
    if (c->max_iterations < 1 || c->max_iterations > 64) f |= F_ARG;
    if (c->init < 0 || c->init > 2) f |= F_ARG;
    /* tau, epsilon, prune_threshold: NaN = unset (the temperature mode's default, valid) */
    if (!isnan(c->tau) && !(isfinite(c->tau) && c->tau > 0)) f |= F_ARG;
    if (!isnan(c->epsilon) && !(isfinite(c->epsilon) && c->epsilon >= 0)) f |= F_ARG;
    if (!(isfinite(c->zero_threshold) && c->zero_threshold >= 0 && c->zero_threshold < 1)) f |= F_ARG;
    if (!isnan(c->prune_threshold) && !(isfinite(c->prune_threshold) && c->prune_threshold >= 0)) f |= F_ARG;
    if (c->algorithm < 0 || c->algorithm > 2) f |= F_ARG;
    if (c->f32_key_dtype < 0 || c->f32_key_dtype > 2) f |= F_DTYPE;
    if (c->temperature_mode < 0 || c->temperature_mode > 1) f |= F_ARG;
    if (c->cluster_dim > 1 && c->algorithm == EDKM_ALGORITHM_UNIQUIFIED) f |= F_ARG;
    if (c->cluster_dim > 1 && c->init == EDKM_INIT_OPTIMAL_1D) f |= F_ARG;
    if (c->reserved != 0) f |= F_ARG;
    if (c->enforce_zero > 1) f |= F_ARG;
    if (c->lut_dtype < 0 || c->lut_dtype > 2) f |= F_ARG;
    if (c->channel_scale < 0 || c->channel_scale > 2) f |= F_ARG;
    if (isfinite(c->tau) && c->tau > 0 && !isfinite(1.0 / c->tau)) f |= F_ARG;  /* its reciprocal overflows */
    return f;
}

/* A struct_size for a caller struct of `size` bytes; sets *fault (STRUCT_SIZE) or *maybe. */
/* The field offsets after struct_size of each sized struct: a struct_size must be one of them (the
 * caller's struct ends before that field) or the whole size; anything else is EDKM_ERR_STRUCT_SIZE. */
#define FIELD_OFFSETS(name, T, ...) static const uint32_t name[] = { __VA_ARGS__ }; typedef T name##_type
#define OFF(T, f) (uint32_t)offsetof(T, f)
FIELD_OFFSETS(RUNTIME_CONFIG_FIELDS, edkm_runtime_config, OFF(edkm_runtime_config, num_threads),
              OFF(edkm_runtime_config, budget_bytes), OFF(edkm_runtime_config, saved_mode),
              OFF(edkm_runtime_config, keep_weights), OFF(edkm_runtime_config, communicator));
FIELD_OFFSETS(RUNTIME_STATS_FIELDS, edkm_runtime_stats, OFF(edkm_runtime_stats, num_threads),
              OFF(edkm_runtime_stats, arena_allocated), OFF(edkm_runtime_stats, arena_peak),
              OFF(edkm_runtime_stats, arena_active), OFF(edkm_runtime_stats, heap_saved),
              OFF(edkm_runtime_stats, heap_saved_peak), OFF(edkm_runtime_stats, live_saved_states),
              OFF(edkm_runtime_stats, dedup_hits), OFF(edkm_runtime_stats, dedup_misses),
              OFF(edkm_runtime_stats, budget_bytes), OFF(edkm_runtime_stats, communicator_bytes));
FIELD_OFFSETS(LAYER_CONFIG_FIELDS, edkm_layer_config, OFF(edkm_layer_config, bits), OFF(edkm_layer_config, cluster_dim),
              OFF(edkm_layer_config, group_size), OFF(edkm_layer_config, max_iterations), OFF(edkm_layer_config, init),
              OFF(edkm_layer_config, tau), OFF(edkm_layer_config, epsilon), OFF(edkm_layer_config, zero_threshold),
              OFF(edkm_layer_config, prune_threshold), OFF(edkm_layer_config, algorithm),
              OFF(edkm_layer_config, f32_key_dtype), OFF(edkm_layer_config, seed),
              OFF(edkm_layer_config, temperature_mode), OFF(edkm_layer_config, reserved),
              OFF(edkm_layer_config, enforce_zero), OFF(edkm_layer_config, lut_dtype),
              OFF(edkm_layer_config, channel_scale));
FIELD_OFFSETS(LAYER_STATS_FIELDS, edkm_layer_stats, OFF(edkm_layer_stats, iterations), OFF(edkm_layer_stats, forwards),
              OFF(edkm_layer_stats, distinct_values), OFF(edkm_layer_stats, algorithm), OFF(edkm_layer_stats, reserved),
              OFF(edkm_layer_stats, inertia), OFF(edkm_layer_stats, effective_tau), OFF(edkm_layer_stats, attention_entropy));
#define RANDOM_STRUCT_SIZE(fields, fault, maybe) \
    random_struct_size((uint32_t)sizeof(fields##_type), fields, sizeof fields / sizeof fields[0], fault, maybe)

static uint32_t random_struct_size(uint32_t size, const uint32_t *fields, size_t nfields, unsigned *fault, unsigned *maybe) {
    (void)maybe;
    int r = (int)RN(100);
    if (r < 86) return size;
    if (r < 90) { *fault |= F_STRUCT; return 0; }
    if (r < 93) { *fault |= F_STRUCT; return size + (uint32_t)RR(1, 64); }
    if (r < 95) { *fault |= F_STRUCT; return (uint32_t)RR(1, 3); }
    /* an older, shorter struct (a field boundary) or a size that ends inside a field */
    uint32_t ss = CH(50) ? fields[RN(nfields)] : (uint32_t)RR(4, size - 1);
    int boundary = 0;
    for (size_t i = 0; i < nfields; i++) boundary |= fields[i] == ss;
    if (!boundary) *fault |= F_STRUCT;
    return ss;
}

/* ------------------------------------------------------------------ operations */

static void op_runtime_create(void) {
    int slot = -1;
    for (int i = 0; i < MAX_RT; i++) if (!g_rt[i].used) { slot = i; break; }
    unsigned fault = 0, maybe = F_ALLOC | F_OOM;
    /* The config, inside a larger zeroed block so an oversized struct_size reads our own bytes. */
    union { edkm_runtime_config cfg; unsigned char raw[sizeof(edkm_runtime_config) + 64]; } u;
    memset(&u, 0, sizeof u);
    edkm_runtime_config_init(&u.cfg);
    int r = (int)RN(100);
    u.cfg.num_threads = r < 40 ? 0u : r < 65 ? 1u : r < 85 ? 2u : r < 95 ? (uint32_t)RR(3, 4)
                      : r < 99 ? (uint32_t)RR(1025, 0xffffffffll) : (CH(20) ? 1024u : 8u);
    r = (int)RN(100);
    u.cfg.budget_bytes = r < 65 ? 0 : r < 75 ? (uint64_t)RR(1, 4096) : r < 90 ? (uint64_t)RR(4096, 1 << 20) : (uint64_t)RR(1 << 20, 1ll << 34);
    r = (int)RN(100);
    u.cfg.saved_mode = r < 92 ? (int32_t)RN(6) : (CH(50) ? (int32_t)RR(6, 100) : -1);
    u.cfg.keep_weights = CH(95) ? (uint32_t)RN(2) : (uint32_t)RR(2, 0xffffffffll);
    /* communicator */
    rel_comm_ctx tmpctx;
    memset(&tmpctx, 0, sizeof tmpctx);
    rel_comm_ctx *ctx = slot >= 0 ? &g_rt[slot].ctx : &tmpctx;
    memset(ctx, 0, sizeof *ctx);
    union { edkm_communicator c; unsigned char raw[sizeof(edkm_communicator) + 64]; } cu;
    memset(&cu, 0, sizeof cu);
    int world = 1, has_comm = 0;
    r = (int)RN(100);
    if (r < 40) {
        u.cfg.communicator = NULL;
    } else {
        has_comm = 1;
        world = r < 80 ? 1 : (int)RR(2, 3);
        cu.c = rel_comm_make(ctx, world);
        if (r >= 90) {
            int b = (int)RN(7);
            if (b == 0) { cu.c.world_size = 0; fault |= F_ARG; }
            else if (b == 1) { cu.c.rank = cu.c.world_size; fault |= F_ARG; }
            else if (b == 2) { cu.c.rank = -1; fault |= F_ARG; }
            else if (b == 3) { cu.c.all_gather = NULL; fault |= F_NULL; }
            else if (b == 4) { cu.c.all_reduce_sum = NULL; fault |= F_NULL; }
            else if (b == 5) { cu.c.struct_size = CH(50) ? 0 : (uint32_t)sizeof(edkm_communicator) + 8; fault |= F_STRUCT; }
            else { cu.c.world_size = (int32_t)0x80000000; fault |= F_ARG; }
        }
        u.cfg.communicator = &cu.c;
    }
    /* struct_size and the effective config the library should read */
    unsigned comm_fault = fault;   /* faults injected into the communicator struct */
    fault = 0;
    int bad_out = CH(3);
    int cfg_null = CH(4);
    uint32_t ss = RANDOM_STRUCT_SIZE(RUNTIME_CONFIG_FIELDS, &fault, &maybe);
    u.cfg.struct_size = ss;
    edkm_runtime_config eff;
    edkm_runtime_config_init(&eff);
    if (cfg_null) { fault = 0; maybe &= ~F_STRUCT; }
    else if (!(fault & F_STRUCT) && ss >= 4 && ss <= sizeof eff) {
        memcpy(&eff, &u.cfg, ss);
        if (eff.num_threads > 1024) fault |= F_ARG;
        if (eff.saved_mode < 0 || eff.saved_mode > 5) fault |= F_ARG;
        if (eff.keep_weights > 1) fault |= F_ARG;
        if (eff.communicator != NULL) fault |= comm_fault;
    }
    if (eff.communicator == NULL) { has_comm = 0; world = 1; }
    if (bad_out) fault |= F_NULL;
    edkm_runtime *h = (edkm_runtime *)(uintptr_t)0xA5A5A5A5A5A5A5A5ull;
    set_ctx("edkm_runtime_create");
    edkm_status s = CALL(edkm_runtime_create(cfg_null ? NULL : &u.cfg, bad_out ? NULL : &h));
    int ok = check_status("edkm_runtime_create", s, fault, maybe);
    if (s != EDKM_OK) {
        if (!bad_out && h != (edkm_runtime *)(uintptr_t)0xA5A5A5A5A5A5A5A5ull) fail("edkm_runtime_create wrote *out on failure");
        return;
    }
    (void)ok;
    if (h == NULL || h == (edkm_runtime *)(uintptr_t)0xA5A5A5A5A5A5A5A5ull) { fail("edkm_runtime_create: OK but no handle"); return; }
    trace("runtime_create -> %p (mode %d keep %u budget %llu threads %u comm %d world %d)", (void *)h, eff.saved_mode,
          eff.keep_weights, (unsigned long long)eff.budget_bytes, eff.num_threads, has_comm, world);
    if (slot < 0) { VCALL(edkm_runtime_destroy(h)); stale_add(h, 0); return; }
    RT *R = &g_rt[slot];
    rel_comm_ctx keep = R->ctx;
    memset(R, 0, sizeof *R);
    R->ctx = keep;
    R->ctx.world = world;
    R->used = 1;
    R->handle_live = 1;
    R->h = h;
    R->saved_mode = eff.saved_mode;
    R->keep_weights = (int)eff.keep_weights;
    R->budget = eff.budget_bytes;
    R->has_comm = has_comm;
    R->world = world;
    R->threads_cfg = eff.num_threads;
    edkm_runtime_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    if (check_status("edkm_runtime_get_stats(after create)", CALL(edkm_runtime_get_stats(h, &st)), 0, 0)) {
        R->base_arena = st.arena_allocated;
        R->base_heap = st.heap_saved;
        if (st.live_saved_states != 0) fail("new runtime has live_saved_states %llu", (unsigned long long)st.live_saved_states);
        if (st.budget_bytes != eff.budget_bytes) fail("new runtime budget %llu != %llu", (unsigned long long)st.budget_bytes, (unsigned long long)eff.budget_bytes);
        /* the threads really started: num_threads, or fewer when the system cannot start more */
        if (eff.num_threads != 0 && st.num_threads > eff.num_threads) fail("runtime num_threads %u > %u", st.num_threads, eff.num_threads);
        if (st.num_threads < 1) fail("runtime num_threads 0");
    }
}

/* Checks a runtime's stats against the model; with `final`, the leak check before destroy. */
static void check_runtime_stats(int r, int final) {
    RT *R = &g_rt[r];
    edkm_runtime_stats st;
    memset(&st, 0xA5, sizeof st);
    st.struct_size = sizeof st;
    if (!check_status("edkm_runtime_get_stats", CALL(edkm_runtime_get_stats(R->h, &st)), 0, 0)) return;
    if (st.live_saved_states != (uint64_t)R->live_saved)
        fail("live_saved_states %llu, expected %d", (unsigned long long)st.live_saved_states, R->live_saved);
    if (st.arena_allocated > st.arena_peak)
        fail("arena_allocated %llu > arena_peak %llu", (unsigned long long)st.arena_allocated, (unsigned long long)st.arena_peak);
    if (st.budget_bytes != R->budget) fail("budget_bytes %llu, expected %llu", (unsigned long long)st.budget_bytes, (unsigned long long)R->budget);
    if (st.communicator_bytes < R->comm_bytes) fail("communicator_bytes went down");
    R->comm_bytes = st.communicator_bytes;
    if (R->saved_mode != EDKM_SAVED_DKM && st.heap_saved != 0) fail("heap_saved %llu in an arena mode", (unsigned long long)st.heap_saved);
    if (R->live_saved == 0 || final) {
        if (st.arena_allocated != R->base_arena)
            fail("%sarena_allocated %llu != %llu at create, with no live saved state (leak)", final ? "final check: " : "",
                 (unsigned long long)st.arena_allocated, (unsigned long long)R->base_arena);
        if (st.heap_saved != R->base_heap)
            fail("heap_saved %llu != %llu with no live saved state (leak)", (unsigned long long)st.heap_saved, (unsigned long long)R->base_heap);
        if (final && st.live_saved_states != 0) fail("final check: live_saved_states %llu", (unsigned long long)st.live_saved_states);
    }
}

static void op_runtime_destroy(void) {
    int r = pick_rt();
    if (r < 0 || CH(15)) {
        unsigned f;
        void *h = CH(30) ? NULL : bad_handle(0, &f);
        set_ctx("edkm_runtime_destroy(bad)");
        VCALL(edkm_runtime_destroy((edkm_runtime *)h));  /* must be a no-op */
        trace("runtime_destroy(bad %p)", h);
        return;
    }
    RT *R = &g_rt[r];
    if (R->children > 0 && !CH(25)) return;
    if (R->children == 0) check_runtime_stats(r, 1);
    set_ctx("edkm_runtime_destroy");
    VCALL(edkm_runtime_destroy(R->h));
    trace("runtime_destroy(%p) children %d", (void *)R->h, R->children);
    stale_add(R->h, 0);
    R->handle_live = 0;
    if (R->children == 0) R->used = 0;
}

static void op_set_budget(void) {
    int r = pick_rt();
    unsigned fault = 0;
    void *h;
    if (r < 0 || CH(8)) h = bad_handle(0, &fault); else h = g_rt[r].h;
    int q = (int)RN(100);
    uint64_t b = q < 35 ? 0 : q < 60 ? (uint64_t)RR(1, 8192) : q < 90 ? (uint64_t)RR(8192, 1 << 24) : R64();
    set_ctx("edkm_runtime_set_budget");
    if (check_status("edkm_runtime_set_budget", CALL(edkm_runtime_set_budget((edkm_runtime *)h, b)), fault, 0) && r >= 0)
        g_rt[r].budget = b;
    trace("set_budget(%p, %llu)", h, (unsigned long long)b);
}

/* A sized output struct filled with 0xA5 canaries before the call: the bytes beyond what
 * struct_size covers (all but struct_size itself when the call failed) must stay untouched. */
static void check_sized_output(const char *fn, const unsigned char *raw, size_t raw_size, uint32_t ss,
                               edkm_status s, int ok) {
    size_t from = ok ? (ss < 4 ? 4 : ss) : 4;
    for (size_t i = from; i < raw_size; i++) {
        if (raw[i] != 0xA5) { fail("%s (struct_size %u, %s) wrote byte %zu", fn, ss, edkm_status_name(s), i); break; }
    }
}

static void op_get_stats(void) {
    int r = pick_rt();
    unsigned fault = 0, maybe = 0;
    void *h;
    if (r < 0 || CH(8)) { h = bad_handle(0, &fault); r = -1; } else h = g_rt[r].h;
    if (r >= 0 && CH(70)) { set_ctx("edkm_runtime_get_stats"); check_runtime_stats(r, 0); return; }
    union { edkm_runtime_stats st; unsigned char raw[sizeof(edkm_runtime_stats) + 64]; } u;
    memset(&u, 0xA5, sizeof u);
    uint32_t ss = RANDOM_STRUCT_SIZE(RUNTIME_STATS_FIELDS, &fault, &maybe);
    u.st.struct_size = ss;
    int null_out = CH(4);
    if (null_out) fault |= F_NULL;
    set_ctx("edkm_runtime_get_stats(sized)");
    edkm_status s = CALL(edkm_runtime_get_stats((const edkm_runtime *)h, null_out ? NULL : &u.st));
    int ok = check_status("edkm_runtime_get_stats", s, fault, maybe);
    check_sized_output("edkm_runtime_get_stats", u.raw, sizeof u.raw, ss, s, ok);
    if (u.st.struct_size != ss) fail("edkm_runtime_get_stats changed struct_size");
}

static void op_reset_peak(void) {
    int r = pick_rt();
    unsigned fault = 0;
    void *h;
    if (r < 0 || CH(8)) h = bad_handle(0, &fault); else h = g_rt[r].h;
    set_ctx("edkm_runtime_reset_peak");
    check_status("edkm_runtime_reset_peak", CALL(edkm_runtime_reset_peak((edkm_runtime *)h)), fault, 0);
}

static int divides(int64_t a, int64_t b) { return b != 0 && a % b == 0; }

static void op_layer_create(void) {
    int slot = -1;
    for (int i = 0; i < MAX_L; i++) if (!g_ly[i].live) { slot = i; break; }
    int r = pick_rt();
    unsigned fault = 0, maybe = F_OOM;
    void *rh;
    if (r < 0 || CH(6)) { rh = bad_handle(0, &fault); r = -1; } else rh = g_rt[r].h;
    union { edkm_layer_config cfg; unsigned char raw[sizeof(edkm_layer_config) + 64]; } u;
    memset(&u, 0, sizeof u);
    random_layer_config(&u.cfg);
    /* shape */
    int64_t shape[24];
    size_t ndim;
    int kind = (int)RN(100);
    uint32_t k = (u.cfg.bits >= 1 && u.cfg.bits <= 8) ? (1u << u.cfg.bits) : 16u;
    uint32_t d = (u.cfg.cluster_dim >= 1 && u.cfg.cluster_dim <= 64) ? u.cfg.cluster_dim : 1u;
    if (kind < 88) {
        /* valid-ish: rows x cols with N <= 4096, enough vectors for k centroids */
        int64_t cols = d * RR(1, 16);
        int64_t rows = RR(1, 64);
        while (rows * cols / d < (int64_t)k && rows < 4096) rows *= 2;
        while (rows * cols > 8192 && rows > 1) rows /= 2;
        if (CH(10) && rows > 1) rows -= 1;  /* may break divisibility / minimum size */
        if (CH(30)) { ndim = 2; shape[0] = rows; shape[1] = cols; }
        else if (CH(40)) {
            ndim = (size_t)RR(3, 4);
            shape[0] = rows; shape[1] = cols;
            for (size_t i = 2; i < ndim; i++) shape[i] = 1;
            if (CH(50) && cols % 2 == 0 && cols / d % 2 == 0) { shape[1] = cols / 2; shape[2] = 2; }
        } else { ndim = 1; shape[0] = rows * cols; }
        if (CH(30) && shape[0] > 1) {
            /* a group size dividing rows */
            int64_t g = shape[0];
            for (int t = 0; t < 8; t++) { int64_t c = RR(1, shape[0]); if (divides(shape[0], c)) { g = c; break; } }
            u.cfg.group_size = (uint32_t)g;
        } else if (CH(3)) u.cfg.group_size = (uint32_t)RR(1, 1000);
    } else if (kind < 91) {
        /* a larger partition: 65,537..70,000 elements (f32 keys are rounded above 65,536) */
        ndim = 1;
        shape[0] = RR(65537, 70000);
        if (u.cfg.bits > 3) u.cfg.bits = 3;
        if (u.cfg.max_iterations > 3) u.cfg.max_iterations = 3;
        u.cfg.cluster_dim = 1;
        u.cfg.group_size = 0;
    } else if (kind < 93) {
        /* huge but valid element count (no forward will be possible) */
        ndim = 2; shape[0] = (int64_t)1 << 30; shape[1] = 256;
    } else if (kind < 96) {
        ndim = CH(50) ? 0 : (size_t)RR(17, 24);
        for (size_t i = 0; i < 24; i++) shape[i] = 1;
    } else {
        ndim = (size_t)RR(1, 3);
        for (size_t i = 0; i < ndim; i++) shape[i] = RR(1, 8);
        static const int64_t bad[] = { 0, -1, INT64_MIN, INT64_MAX, (int64_t)1 << 40, (int64_t)0x7fffffff * 256 + 1 };
        shape[RN(ndim)] = bad[RN(6)];
    }
    /* limit the work of a forward: N x k x T <= 2^20 (the dense saved modes keep N x k x T maps) */
    {
        double n = 1;
        for (size_t i = 0; i < ndim && i < 16; i++) n *= (double)(shape[i] > 0 ? shape[i] : 1);
        uint32_t kk = (u.cfg.bits >= 1 && u.cfg.bits <= 8) ? (1u << u.cfg.bits) : 16u;
        if (n <= 70000 && u.cfg.max_iterations >= 1 && u.cfg.max_iterations <= 64) {
            while (u.cfg.max_iterations > 1 && n * kk * u.cfg.max_iterations > (double)(1 << 20)) u.cfg.max_iterations /= 2;
        }
    }
    int cfg_null = CH(4);
    uint32_t ss = RANDOM_STRUCT_SIZE(LAYER_CONFIG_FIELDS, &fault, &maybe);
    u.cfg.struct_size = ss;
    edkm_layer_config eff;
    edkm_layer_config_init(&eff);
    int cfg_read = 1;
    if (!cfg_null) {
        if (!(fault & F_STRUCT) && ss >= 4 && ss <= sizeof eff) memcpy(&eff, &u.cfg, ss);
        else cfg_read = 0;
    } else {
        fault &= ~F_STRUCT;
        maybe &= ~F_STRUCT;
    }
    if (cfg_read) fault |= layer_config_faults(&eff);
    /* shape faults, from the effective config */
    unsigned sf = 0;
    size_t N = 0, groups = 1, E = 0;
    if (ndim < 1 || ndim > 16) sf |= F_SHAPE;
    else {
        double total = 1;
        int bad_extent = 0;
        for (size_t i = 0; i < ndim; i++) {
            if (shape[i] < 1 || shape[i] > (int64_t)0x7fffffff * 256) bad_extent = 1;
            else total *= (double)shape[i];
        }
        if (bad_extent || total > (double)0x7fffffff * 256) sf |= F_SHAPE;
        else if (cfg_read && !layer_config_faults(&eff)) {
            N = (size_t)total;
            size_t rows = (size_t)shape[0], rowlen = N / rows;
            size_t dd = eff.cluster_dim, kk = (size_t)1 << eff.bits;
            if (rowlen % dd) sf |= F_SHAPE;
            if (eff.group_size > 0) {
                if (rows % eff.group_size) sf |= F_SHAPE;
                else { groups = rows / eff.group_size; E = (size_t)eff.group_size * rowlen; }
            } else { groups = 1; E = N; }
            if (!sf && E / dd < kk) sf |= F_SHAPE;
            if (!sf && E > 0xffffffffull) sf |= F_SHAPE;
        }
    }
    fault |= sf;
    int null_shape = CH(2), null_out = CH(2);
    if (null_shape) fault |= F_NULL;
    if (null_out) fault |= F_NULL;
    edkm_layer *h = (edkm_layer *)(uintptr_t)0xA5A5A5A5A5A5A5A5ull;
    set_ctx("edkm_layer_create");
    edkm_status s = CALL(edkm_layer_create((edkm_runtime *)rh, cfg_null ? NULL : &u.cfg, null_shape ? NULL : shape, ndim,
                                           null_out ? NULL : &h));
    int ok = check_status("edkm_layer_create", s, fault, maybe);
    if (s != EDKM_OK) {
        if (!null_out && h != (edkm_layer *)(uintptr_t)0xA5A5A5A5A5A5A5A5ull) fail("edkm_layer_create wrote *out on failure");
        return;
    }
    (void)ok;
    if (fault) { VCALL(edkm_layer_destroy(h)); return; }  /* reported; clean up */
    trace("layer_create -> %p rt %d N %zu bits %u d %u g %u T %u alg %d key %d tm %d", (void *)h, r, N, eff.bits,
          eff.cluster_dim, eff.group_size, eff.max_iterations, eff.algorithm, eff.f32_key_dtype, eff.temperature_mode);
    if (slot < 0 || r < 0) { VCALL(edkm_layer_destroy(h)); stale_add(h, 1); return; }
    LY *L = &g_ly[slot];
    memset(L, 0, sizeof *L);
    L->live = 1;
    L->h = h;
    L->rt = r;
    L->cfg = eff;
    L->ndim = ndim;
    memcpy(L->shape, shape, ndim * sizeof shape[0]);
    L->N = N; L->groups = groups; L->E = E; L->k = (size_t)1 << eff.bits; L->d = eff.cluster_dim;
    g_rt[r].children++;
}

static void layer_free_export(LY *L) {
    if (L->has_export) { buf_free(&L->lut); buf_free(&L->packed); }
    L->has_export = 0;
}
/* The model's buffers of a layer that goes. */
static void layer_release(LY *L) {
    layer_free_export(L);
    free(L->factors);
    L->factors = NULL;
    L->scale_fixed = 0;
}

static void op_layer_destroy(void) {
    int l = pick_layer();
    if (l < 0 || CH(15)) {
        unsigned f;
        void *h = CH(30) ? NULL : bad_handle(1, &f);
        set_ctx("edkm_layer_destroy(bad)");
        VCALL(edkm_layer_destroy((edkm_layer *)h));
        trace("layer_destroy(bad %p)", h);
        return;
    }
    LY *L = &g_ly[l];
    set_ctx("edkm_layer_destroy");
    VCALL(edkm_layer_destroy(L->h));
    trace("layer_destroy(%p)", (void *)L->h);
    stale_add(L->h, 1);
    L->live = 0;
    layer_release(L);
    rt_child_gone(L->rt);
}

/* A layer handle for a call: mostly live (returns the slot), sometimes bad (slot -1, *fault set). */
static int layer_for_call(void **h, unsigned *fault) {
    int l = pick_layer();
    if (l < 0 || CH(7)) { *h = bad_handle(1, fault); return -1; }
    *h = g_ly[l].h;
    return l;
}

static int uniquified_path(const LY *L, int dtype, int saving, int mode) {
    int uniq = L->cfg.cluster_dim == 1 && (dtype != EDKM_DTYPE_F32 || L->cfg.f32_key_dtype != EDKM_DTYPE_F32);
    int alg;
    if (L->cfg.algorithm == EDKM_ALGORITHM_DENSE) alg = 0;
    else if (L->cfg.algorithm == EDKM_ALGORITHM_UNIQUIFIED) alg = 1;
    else alg = uniq;
    if (saving && (mode == EDKM_SAVED_DKM || mode == EDKM_SAVED_MARSHAL || mode == EDKM_SAVED_DEDUP)) alg = 0;
    return alg;
}

/* Reads a layer's centroids into a new buffer (NULL if none); used to check "unchanged on error". */
static float *snapshot_centroids(LY *L, size_t *count) {
    size_t cc = 0;
    if (CALL(edkm_layer_centroid_count(L->h, &cc)) != EDKM_OK) return NULL;
    *count = cc;
    if (!L->has_centroids || cc == 0 || cc > 1 << 16) return NULL;
    float *c = (float *)malloc(cc * sizeof(float));
    if (CALL(edkm_layer_get_centroids(L->h, c, cc)) != EDKM_OK) { free(c); return NULL; }
    return c;
}

static void check_centroids_unchanged(LY *L, float *before, size_t cc, const char *op) {
    if (!before) return;
    float *c = (float *)malloc(cc * sizeof(float));
    if (CALL(edkm_layer_get_centroids(L->h, c, cc)) == EDKM_OK && memcmp(c, before, cc * sizeof(float)) != 0)
        fail("%s failed but changed the layer's centroids", op);
    free(c);
    free(before);
}

static void check_centroids_finite(LY *L, const char *after) {
    size_t cc = 0;
    if (CALL(edkm_layer_centroid_count(L->h, &cc)) != EDKM_OK || cc == 0 || cc > 1 << 16) return;
    float *c = (float *)malloc(cc * sizeof(float));
    if (CALL(edkm_layer_get_centroids(L->h, c, cc)) == EDKM_OK) {
        for (size_t i = 0; i < cc; i++) {
            if (!isfinite(c[i])) { fail("non-finite centroid %zu (%g) after %s", i, (double)c[i], after); break; }
        }
    }
    free(c);
}

/* K6: give a layer finite centroids again (its initialisation produced NaN). */
static void k6_reset(LY *L) {
    size_t cc = L->groups * L->k * L->d;
    float *c = (float *)calloc(cc, sizeof(float));
    for (size_t i = 0; i < cc; i++) c[i] = (float)(i % L->k);
    CALL(edkm_layer_set_centroids(L->h, c, cc));
    free(c);
}

static int free_saved_slot(void) {
    for (int i = 0; i < MAX_S; i++) if (!g_ss[i].live) return i;
    return -1;
}

/* Weights of n elements for a call on layer L: payload, alignment, info. */
static Buf make_weights(int dtype_valid, size_t n, Info *info, int inject) {
    Buf w = buf_new(n * rel_width(dtype_valid), natural_offset(dtype_valid));
    fill_payload(w.p, dtype_valid, n, inject);
    scan_info(w.p, dtype_valid, n, info);
    return w;
}

#include "fuzz_channel_scale.h"

static void op_forward(int shard) {
    void *lh;
    unsigned fault = 0, maybe = F_OOM;
    int l = layer_for_call(&lh, &fault);
    LY *L = l >= 0 ? &g_ly[l] : NULL;
    RT *R = L ? &g_rt[L->rt] : NULL;
    if (L && L->N > 70000 && !CH(10)) return;                 /* huge layers: only an occasional call */
    int dtype = pick_dtype(&fault, L && L->cfg.f32_key_dtype == EDKM_DTYPE_F32 ? 1 : -1);
    int valid_dt = (dtype >= 0 && dtype <= 2) ? dtype : EDKM_DTYPE_F16;
    size_t N = L ? L->N : (size_t)RR(16, 256);
    size_t offset = 0, count = N;
    int want_saved = CH(75);
    int slot = free_saved_slot();
    if (slot < 0) want_saved = 0;
    if (shard) {
        int q = (int)RN(100);
        if (q < 55) { offset = 0; count = N; }
        else if (q < 85) { offset = (size_t)RN(N + 1); count = (size_t)RN(N - offset + 1); }
        else if (q < 90) { offset = N; count = 0; }
        else {
            static const size_t bigs[] = { SIZE_MAX, (size_t)INT64_MAX, (size_t)1 << 62, (size_t)1 << 63 };
            if (CH(50)) { offset = bigs[RN(4)]; count = (size_t)RN(N + 1); } else { offset = (size_t)RN(N + 1); count = bigs[RN(4)]; }
            if (CH(20)) { offset = (size_t)INT64_MAX; count = 1; }
        }
    } else if (CH(5)) count = wrong_count(N);
    /* K1 (fixed): offset + count overflowing Int64 while both are < 2^63 must give EDKM_ERR_SHAPE */
    if (shard && offset < ((size_t)1 << 63) && count < ((size_t)1 << 63) && offset + count >= ((size_t)1 << 63)) g_known_avoided[1]++;
    size_t alloc = count <= N ? count : (N + 1);
    if (alloc == 0) alloc = 1;                           /* count 0 still needs a non-NULL pointer */
    Info info;
    Buf w = make_weights(valid_dt, alloc, &info, 1);
    /* only the elements the library may read count for faults */
    if (count <= N && count < alloc) { Info i2; scan_info(w.p, valid_dt, count, &i2); info = i2; }
    int out_dtype;
    {
        int q = (int)RN(100);
        if (q < 45) out_dtype = EDKM_DTYPE_F32;
        else if (q < 90) out_dtype = dtype;
        else out_dtype = pick_dtype(&fault, (int)RN(3));
    }
    int valid_out = (out_dtype >= 0 && out_dtype <= 2) ? out_dtype : EDKM_DTYPE_F32;
    if (!(out_dtype >= 0 && out_dtype <= 2)) fault |= F_DTYPE;
    else if ((dtype >= 0 && dtype <= 2) && out_dtype != EDKM_DTYPE_F32 && out_dtype != dtype) fault |= F_DTYPE;
    Buf out = buf_new(alloc * rel_width(valid_out), natural_offset(valid_out));
    buf_canary(&out);
    int null_w = CH(2), null_out = CH(2);
    if (null_w || null_out) fault |= F_NULL;
    int mode = R ? R->saved_mode : 0;
    int uniq = 0;
    /* with a channel scale the library clusters v = w / s: faults and bounds come from v */
    float *csf = NULL;
    double out_scale = 1.0;
    if (cs_on(L) && dtype >= 0 && dtype <= 2 &&
        (shard ? (offset < ((size_t)1 << 63) && count < ((size_t)1 << 63) && offset + count <= N && count > 0) : count == N)) {
        Info vinfo;
        csf = cs_call_factors(L, w.p, valid_dt, shard ? offset : 0, count, shard, &info, &vinfo);
        info = vinfo;
        out_scale = cs_max_factor(L, csf);
    }
    if (L) {
        int dtv = (dtype >= 0 && dtype <= 2);
        if (!shard) {
            if (count != N) fault |= F_SHAPE;
            if (dtv && L->cfg.algorithm == EDKM_ALGORITHM_UNIQUIFIED && dtype == EDKM_DTYPE_F32 && L->cfg.f32_key_dtype == EDKM_DTYPE_F32)
                fault |= F_DTYPE;
            if (dtv && count == N) {
                uniq = uniquified_path(L, dtype, want_saved, mode);
                if (info.nonfinite) fault |= F_NONFINITE;
                if (uniq && dtype == EDKM_DTYPE_F32) {
                    if ((L->cfg.f32_key_dtype == EDKM_DTYPE_F16 && info.key_inf_f16) ||
                        (L->cfg.f32_key_dtype == EDKM_DTYPE_BF16 && info.key_inf_bf16)) maybe |= F_NONFINITE;
                }
            }
        } else {
            if (L->groups != 1) fault |= F_ARG;
            if (dtv && !(L->cfg.cluster_dim == 1 && (dtype != EDKM_DTYPE_F32 || L->cfg.f32_key_dtype != EDKM_DTYPE_F32) &&
                         L->cfg.algorithm != EDKM_ALGORITHM_DENSE)) fault |= F_DTYPE;
            int range_ok = offset < ((size_t)1 << 63) && count < ((size_t)1 << 63) && offset + count <= N && offset + count >= offset;
            if (!range_ok) fault |= F_SHAPE;
            else if (count == 0) fault |= F_SHAPE;         /* all (mirrored) ranks hold no weights */
            if (range_ok && dtv) {
                if (info.nonfinite) fault |= F_NONFINITE;
                if (dtype == EDKM_DTYPE_F32 && ((L->cfg.f32_key_dtype == EDKM_DTYPE_F16 && info.key_inf_f16) ||
                                                 (L->cfg.f32_key_dtype == EDKM_DTYPE_BF16 && info.key_inf_bf16)))
                    fault |= F_NONFINITE;
            }
            uniq = 1;
        }
        if (want_saved && R->budget != 0) maybe |= F_BUDGET;
        if (shard && R->has_comm && CH(10)) { R->ctx.fail_next = 1; maybe |= F_COMM; }
    }
    float *before = NULL;
    size_t cc = 0;
    if (L && L->has_centroids && CH(30)) before = snapshot_centroids(L, &cc);
    /* K6: this forward initialises the centroids from f32 weights beyond the f16 range, keyed by f16 */
    int k6 = L && !shard && !g_hit_known && !L->has_centroids && dtype == EDKM_DTYPE_F32 && L->cfg.f32_key_dtype == EDKM_DTYPE_F16 &&
             L->E > 65536 && info.key_inf_f16 && L->cfg.cluster_dim == 1 && L->cfg.init != EDKM_INIT_KMEANS_PP;
    edkm_saved_state *sh = (edkm_saved_state *)(uintptr_t)0xA5A5A5A5A5A5A5A5ull;
    const char *name = shard ? "edkm_layer_forward_shard" : "edkm_layer_forward";
    set_ctx(name);
    trace("%s(%p, dtype %d, offset %zu, count %zu (N %zu), out %d, saved %d)%s%s", name, lh, dtype, offset, count, N, out_dtype,
          want_saved, info.nonfinite ? " [nonfinite]" : "", null_w || null_out ? " [null]" : "");
    edkm_status s;
    if (shard)
        s = CALL(edkm_layer_forward_shard((edkm_layer *)lh, null_w ? NULL : w.p, (edkm_dtype)dtype, offset, count,
                                          null_out ? NULL : out.p, (edkm_dtype)out_dtype, want_saved ? &sh : NULL));
    else
        s = CALL(edkm_layer_forward((edkm_layer *)lh, null_w ? NULL : w.p, (edkm_dtype)dtype, count, null_out ? NULL : out.p,
                                    (edkm_dtype)out_dtype, want_saved ? &sh : NULL));
    if (R) R->ctx.fail_next = 0;
    int ok = check_status(name, s, fault, maybe);
    if (s != EDKM_OK) {
        if (!buf_is_canary(&out)) fail("%s failed (%s) but wrote its output", name, edkm_status_name(s));
        if (want_saved && sh != (edkm_saved_state *)(uintptr_t)0xA5A5A5A5A5A5A5A5ull) fail("%s failed but wrote *saved", name);
        if (L) check_centroids_unchanged(L, before, cc, name); else free(before);
        if (L) cs_after_failure(L, csf, name); else free(csf);
        buf_free(&w); buf_free(&out);
        return;
    }
    free(before);
    (void)ok;
    if (!L) { free(csf); buf_free(&w); buf_free(&out); return; }
    cs_after_success(L, csf, name);
    if (k6) {
        g_known_avoided[6]++;
        L->has_centroids = 1;
        L->forwards++;
        L->last_degenerate = 1;
        L->entropy_scale = 1.0;
        k6_reset(L);
        if (want_saved) want_saved = 2;  /* keep the state (it may hold NaN traces), skip the output checks */
        goto record;
    }
    /* the soft weights are convex combinations of finite centroids */
    for (size_t i = 0; i < count; i++) {
        float v = rel_load(out.p, valid_out, i);
        if (!isfinite(v)) {
            /* with a zero threshold the clamped attention is not renormalised: |w~| <= max|c| (1 + k z),
             * which may exceed the output dtype's range (centroids from set_centroids reach ~500) */
            double cmax = info.maxabs > L->cent_maxabs ? info.maxabs : L->cent_maxabs;
            double bound = (cmax > 500 ? cmax : 500) * (1.0 + (double)L->k * L->cfg.zero_threshold) * out_scale;
            if (!((valid_out == EDKM_DTYPE_F16 && bound > 65504) || bound > 3.4e38)) {
                fail("%s output[%zu] = %g is not finite (max |w| %g; layer bits %u T %u tau %g eps %g zero %g prune %g "
                     "temperature_mode %d alg %d groups %zu; dtype %d)", name, i, (double)v, info.maxabs, L->cfg.bits,
                     L->cfg.max_iterations, L->cfg.tau, L->cfg.epsilon, L->cfg.zero_threshold, L->cfg.prune_threshold,
                     L->cfg.temperature_mode, L->cfg.algorithm, L->groups, dtype);
                break;
            }
        }
    }
    L->has_centroids = 1;
    if (info.maxabs > L->cent_maxabs) L->cent_maxabs = info.maxabs;
    L->forwards++;
    L->last_degenerate = 0;
    L->entropy_scale = shard ? (double)R->world * (double)count / (double)N : 1.0;  /* entropy sum / N */
    if (L->entropy_scale < 1.0) L->entropy_scale = 1.0;
    check_centroids_finite(L, name);
record:
    if (want_saved) {
        if (sh == NULL || sh == (edkm_saved_state *)(uintptr_t)0xA5A5A5A5A5A5A5A5ull) { fail("%s: OK but no saved state", name); buf_free(&w); buf_free(&out); return; }
        SS *S = &g_ss[slot];
        memset(S, 0, sizeof *S);
        S->live = 1;
        S->h = sh;
        S->rt = L->rt;
        S->sharded = shard;
        S->count = count;
        S->wdtype = dtype;
        S->weights = w;
        S->consumed = 0;
        S->degenerate = k6;
        if (cs_on(L) && L->scale_fixed) {
            S->factors = (float *)malloc(cs_rows(L) * sizeof(float));
            memcpy(S->factors, L->factors, cs_rows(L) * sizeof(float));
            S->first = shard ? offset : 0;
            S->rowlen = cs_rowlen(L);
        }
        snprintf(S->desc, sizeof S->desc, "bits %u d %zu groups %zu N %zu T %u tau %g eps %g zero %g prune %g tm %d alg %d mode %d "
                 "dtype %d max|w| %g%s", L->cfg.bits, L->d, L->groups, L->N, L->cfg.max_iterations, L->cfg.tau, L->cfg.epsilon,
                 L->cfg.zero_threshold, L->cfg.prune_threshold, L->cfg.temperature_mode, L->cfg.algorithm, R->saved_mode, dtype,
                 info.maxabs, shard ? " shard" : "");
        if (shard) {
            S->needs_weights = !R->keep_weights;
            S->uses_comm = 1;
        } else {
            S->needs_weights = R->saved_mode == EDKM_SAVED_HISTOGRAM && !R->keep_weights;
            S->uses_comm = R->saved_mode == EDKM_SAVED_SHARD && uniq;
        }
        R->live_saved++;
        R->children++;
        w.base = NULL;  /* owned by the saved state now */
    }
    if (w.base) buf_free(&w);
    buf_free(&out);
}

static void op_backward(void) {
    int i = pick_saved();
    unsigned fault = 0, maybe = F_OOM;
    void *h;
    SS *S = NULL;
    if (i < 0 || CH(7)) h = bad_handle(2, &fault); else { S = &g_ss[i]; h = S->h; }
    RT *R = S ? &g_rt[S->rt] : NULL;
    size_t count = S ? S->count : (size_t)RR(1, 64);
    if (CH(5)) count = wrong_count(count);
    if (S && count != S->count) fault |= F_SHAPE;
    size_t alloc = S ? (S->count ? S->count : 1) : count;
    if (!S && (alloc > 4096 || alloc == 0)) alloc = 1;
    int gdt = pick_dtype(&fault, S && S->wdtype >= 0 && S->wdtype <= 2 ? S->wdtype : -1);
    int valid_g = (gdt >= 0 && gdt <= 2) ? gdt : EDKM_DTYPE_F32;
    Buf g = buf_new(alloc * rel_width(valid_g), natural_offset(valid_g));
    Info ginfo;
    {
        /* gradients: mostly moderate values, sometimes NaN/Inf */
        uint64_t s = R64();
        for (size_t e = 0; e < alloc; e++) rel_store(g.p, valid_g, e, (float)(rel_normal(&s) * (rel_splitmix(&s) % 8 == 0 ? 100.0 : 0.01)));
        if (CH(8)) {
            size_t e = (size_t)RN(alloc);
            static const float bad[] = { NAN, INFINITY, -INFINITY };
            rel_store(g.p, valid_g, e, bad[RN(3)]);
        }
        if (CH(5)) rel_store(g.p, valid_g, (size_t)RN(alloc), valid_g == EDKM_DTYPE_F16 ? 60000.0f : 1e30f);  /* huge, finite */
        scan_info(g.p, valid_g, alloc < count ? alloc : count, &ginfo);
    }
    Buf gin = buf_new(alloc * rel_width(valid_g), natural_offset(valid_g));
    buf_canary(&gin);
    int null_go = CH(2), null_gi = CH(2);
    if (null_go || null_gi) fault |= F_NULL;
    /* weights: the forward's, NULL, or changed */
    const void *wp = NULL;
    Buf changed = { 0, 0, 0 };
    int wsel = (int)RN(100);
    if (S && S->hist_form) {
        fault |= F_STATE;                   /* a histogram-form state takes edkm_saved_state_backward_histogram */
        wp = NULL;
    } else if (S) {
        if (S->consumed) fault |= F_STATE;
        if (wsel < 60) wp = S->weights.p;
        else if (wsel < 85) {
            wp = NULL;
            if (S->needs_weights) fault |= F_STATE;
        } else {
            size_t wbytes = (S->count ? S->count : 1) * rel_width(S->wdtype);
            changed = buf_new(wbytes, natural_offset(S->wdtype));
            memcpy(changed.p, S->weights.p, wbytes);
            if (S->count > 0) {
                size_t e = (size_t)RN(S->count);
                unsigned char *b = (unsigned char *)changed.p + e * rel_width(S->wdtype);
                b[0] ^= 1;  /* lowest mantissa bit: still finite */
                wp = changed.p;
                /* with a channel scale the check is of v = w / s: a change that rounds away is no change */
                int same_v = 0;
                if (S->factors) {
                    float sr = S->factors[(S->first + e) / S->rowlen];
                    Buf v0 = buf_new(4, 0), v1 = buf_new(4, 0);
                    rel_store(v0.p, S->wdtype, 0, rel_load(S->weights.p, S->wdtype, e) / sr);
                    rel_store(v1.p, S->wdtype, 0, rel_load(changed.p, S->wdtype, e) / sr);
                    same_v = memcmp(v0.p, v1.p, rel_width(S->wdtype)) == 0;
                    buf_free(&v0); buf_free(&v1);
                }
                if (same_v) maybe |= F_CHANGED; else fault |= F_CHANGED;
            } else wp = S->weights.p;
        }
        /* with a channel scale: a finite gradient whose product with its factor overflows float */
        int scaled_overflow = 0;
        if (S->factors && count == S->count && gdt >= 0 && gdt <= 2 && !ginfo.nonfinite) {
            for (size_t e = 0; e < count && !scaled_overflow; e++)
                scaled_overflow = !isfinite(rel_load(g.p, valid_g, e) * S->factors[(S->first + e) / S->rowlen]);
            if (scaled_overflow) g_scale_overflow++;
        }
        if (count == S->count && !(fault & F_CHANGED) && (ginfo.nonfinite || scaled_overflow) && (gdt >= 0 && gdt <= 2)) fault |= F_NONFINITE;
        if (scaled_overflow && (fault & F_CHANGED)) maybe |= F_NONFINITE;
        if (count == S->count && (fault & F_CHANGED) && ginfo.nonfinite) maybe |= F_NONFINITE;
        if (S->uses_comm && R->has_comm && CH(12)) { R->ctx.fail_next = 1; maybe |= F_COMM; }
        /* a mirrored all_gather puts rank 0's index shard in every slot, which is not the tensor's
         * index list: the library checks the gathered list against its histogram and rejects it */
        if (S->uses_comm && !S->sharded && R->world > 1) maybe |= F_COMM;
    }
    set_ctx("edkm_saved_state_backward");
    trace("backward(%p, count %zu, gdt %d, weights %s)%s", h, count, gdt, wp == NULL ? "NULL" : changed.p ? "changed" : "same",
          S && S->consumed ? " [consumed]" : "");
    if (g_trace && S && !S->hist_form && ginfo.nonfinite) {
        for (size_t e = 0; e < alloc && e < count; e++) {
            float gv = rel_load(g.p, valid_g, e);
            if (!isfinite(gv)) trace("  grad[%zu] = %g, weight[%zu] = %g (dtype %d)", e, (double)gv, e,
                                     (double)rel_load(S->weights.p, S->wdtype, e), S->wdtype);
        }
    }
    edkm_status s = CALL(edkm_saved_state_backward((edkm_saved_state *)h, null_go ? NULL : g.p, null_gi ? NULL : gin.p,
                                                   (edkm_dtype)gdt, count, wp));
    if (R) R->ctx.fail_next = 0;
    /* With a changed weight AND a fault that precedes the weight check, WEIGHTS_CHANGED may not show. */
    int ok = check_status("edkm_saved_state_backward", s, fault, maybe);
    if (s != EDKM_OK) {
        if (!buf_is_canary(&gin)) fail("backward failed (%s) but wrote grad_input", edkm_status_name(s));
    } else if (S && S->hist_form) {
        fail("edkm_saved_state_backward accepted a histogram-form saved state");
    } else if (S) {
        (void)ok;
        S->consumed = 1;
        for (size_t e = 0; e < count; e++) {
            if (!isfinite(rel_load(gin.p, valid_g, e))) {
                if (S->degenerate) g_known_avoided[6]++;
                else if (g_nonfinite_grads++ < 20 && getenv("FUZZ_SHOW_NONFINITE_GRADS"))
                    fprintf(stderr, "non-finite gradient (gdt %d, max |g| ~%g) from a forward of: %s\n", gdt, ginfo.maxabs, S->desc);
                break;
            }
        }
    }
    buf_free(&g);
    buf_free(&gin);
    if (changed.base) buf_free(&changed);
}

/* ------------------------------------------------------------------ histogram form */

static int cmp_u16(const void *a, const void *b) {
    uint16_t x = *(const uint16_t *)a, y = *(const uint16_t *)b;
    return (x > y) - (x < y);
}

/*
 * edkm_layer_forward_histogram with the histograms a device trainer would send (the sorted distinct
 * bit patterns of random f16/bf16 weights and their counts, per partition), then one injected fault
 * or none: unsorted or duplicate keys, a NaN/Inf key, a zero, negative, fractional, oversized or
 * NaN count, counts that do not add up, an empty partition, offsets not starting at 0, the wrong
 * number of partitions, a bad key dtype, NULL pointers. Failures must write neither soft_values nor
 * *saved and leave the centroids; successes give finite soft values and a state only the histogram
 * backward takes.
 */
static void op_backward_histogram(void);

static void op_forward_histogram(void) {
    void *lh;
    unsigned fault = 0, maybe = F_OOM;
    int l = layer_for_call(&lh, &fault);
    LY *L = l >= 0 ? &g_ly[l] : NULL;
    RT *R = L ? &g_rt[L->rt] : NULL;
    if (L && L->N > 70000 && !CH(10)) return;
    size_t P = L ? L->groups : (size_t)RR(1, 3);
    size_t E = L ? L->E : (size_t)RR(16, 128);
    int kdt = CH(50) ? EDKM_DTYPE_F16 : EDKM_DTYPE_BF16;
    int key_dtype = kdt;
    if (CH(4)) { key_dtype = CH(50) ? EDKM_DTYPE_F32 : (int)RR(3, 40); fault |= F_DTYPE; }
    if (L && (L->cfg.cluster_dim != 1 || L->cfg.algorithm == EDKM_ALGORITHM_DENSE)) fault |= F_ARG;
    if (cs_on(L) && !L->scale_fixed) fault |= F_STATE;   /* the keys are of w / s: the factors must be fixed */
    /* per partition: sort the bit patterns, run-length encode */
    uint16_t *keys = malloc((P * E + 2) * sizeof *keys);
    double *counts = malloc((P * E + 2) * sizeof *counts);
    size_t *offsets = malloc((P + 2) * sizeof *offsets);
    uint16_t *part = malloc((E ? E : 1) * sizeof *part);
    size_t U = 0;
    offsets[0] = 0;
    for (size_t p = 0; p < P; p++) {
        fill_payload(part, kdt, E, CH(5));
        qsort(part, E, sizeof *part, cmp_u16);
        for (size_t i = 0; i < E; i++) {
            if (i > 0 && part[i] == part[i - 1]) { counts[U - 1] += 1; continue; }
            if (!isfinite(rel_load(part, kdt, i))) fault |= F_NONFINITE;
            keys[U] = part[i];
            counts[U++] = 1;
        }
        offsets[p + 1] = U;
    }
    free(part);
    size_t partitions = P;
    int null_k = CH(2), null_c = CH(2), null_o = CH(2), null_v = CH(2);
    if (null_k || null_c || null_o || null_v) fault |= F_NULL;
    if (U > 0 && CH(25)) {
        size_t p = (size_t)RN(P), lo = offsets[p], hi = offsets[p + 1], i = lo + (size_t)RN(hi - lo);
        switch ((int)RN(11)) {
            case 0: if (hi - lo >= 2) { uint16_t t = keys[lo]; keys[lo] = keys[hi - 1]; keys[hi - 1] = t; fault |= F_ARG; } break;
            case 1: if (i + 1 < hi) { keys[i + 1] = keys[i]; fault |= F_ARG; } break;
            case 2: keys[i] = kdt == EDKM_DTYPE_F16 ? 0x7e00u : 0x7fc0u; fault |= F_NONFINITE | F_ARG; break;
            case 3: counts[i] = 0; fault |= F_ARG | F_SHAPE; break;
            case 4: counts[i] = -counts[i]; fault |= F_ARG | F_SHAPE; break;
            case 5: counts[i] += 0.5; fault |= F_ARG | F_SHAPE; break;
            case 6: counts[i] = CH(50) ? NAN : INFINITY; fault |= F_NONFINITE; break;
            case 7: counts[i] += 1; fault |= F_SHAPE | (counts[i] > (double)E ? F_ARG : 0); break;
            case 8:
                partitions = CH(50) ? P + 1 : P - 1;
                fault |= F_SHAPE;
                break;
            case 9: offsets[0] = 1 + (size_t)RN(3); fault |= F_ARG; break;
            default: if (P > 1) { offsets[p + 1] = offsets[p]; fault |= F_SHAPE; } break;  /* an empty partition */
        }
    }
    if (partitions > P) offsets[P + 1] = offsets[P];   /* never read: the partition count is checked first */
    double *soft = malloc((U ? U : 1) * sizeof *soft);
    memset(soft, 0xA5, (U ? U : 1) * sizeof *soft);
    double canary;
    memset(&canary, 0xA5, sizeof canary);
    int want_saved = CH(75);
    int slot = free_saved_slot();
    if (slot < 0) want_saved = 0;
    if (want_saved && R && R->budget != 0) maybe |= F_BUDGET;
    float *before = NULL;
    size_t cc = 0;
    if (L && L->has_centroids && CH(30)) before = snapshot_centroids(L, &cc);
    edkm_saved_state *sh = (edkm_saved_state *)(uintptr_t)0xA5A5A5A5A5A5A5A5ull;
    set_ctx("edkm_layer_forward_histogram");
    trace("forward_histogram(%p, key dtype %d, U %zu, partitions %zu of %zu, saved %d)%s", lh, key_dtype, U, partitions, P,
          want_saved, null_k || null_c || null_o || null_v ? " [null]" : "");
    edkm_status s = CALL(edkm_layer_forward_histogram((edkm_layer *)lh, (edkm_dtype)key_dtype, null_k ? NULL : keys,
                                                      null_c ? NULL : counts, null_o ? NULL : offsets, partitions,
                                                      null_v ? NULL : soft, want_saved ? &sh : NULL));
    check_status("edkm_layer_forward_histogram", s, fault, maybe);
    if (s != EDKM_OK) {
        for (size_t i = 0; i < U; i++)
            if (memcmp(&soft[i], &canary, sizeof canary) != 0) { fail("forward_histogram failed (%s) but wrote soft_values[%zu]", edkm_status_name(s), i); break; }
        if (want_saved && sh != (edkm_saved_state *)(uintptr_t)0xA5A5A5A5A5A5A5A5ull) fail("forward_histogram failed but wrote *saved");
        if (L) check_centroids_unchanged(L, before, cc, "edkm_layer_forward_histogram"); else free(before);
    } else if (L) {
        free(before);
        for (size_t i = 0; i < U; i++)
            if (!isfinite(soft[i])) { fail("forward_histogram soft_values[%zu] = %g is not finite", i, soft[i]); break; }
        L->has_centroids = 1;
        L->forwards++;
        L->last_degenerate = 0;
        L->entropy_scale = 1.0;
        check_centroids_finite(L, "edkm_layer_forward_histogram");
        if (want_saved) {
            if (sh == NULL || sh == (edkm_saved_state *)(uintptr_t)0xA5A5A5A5A5A5A5A5ull) fail("forward_histogram: OK but no saved state");
            else {
                SS *S = &g_ss[slot];
                memset(S, 0, sizeof *S);
                S->live = 1;
                S->h = sh;
                S->rt = L->rt;
                S->count = U;
                S->wdtype = kdt;
                S->hist_form = 1;
                snprintf(S->desc, sizeof S->desc, "histogram form: bits %u groups %zu N %zu U %zu key dtype %d", L->cfg.bits,
                         L->groups, L->N, U, kdt);
                R->live_saved++;
                R->children++;
            }
        }
    } else free(before);
    free(keys); free(counts); free(offsets); free(soft);
    if (s == EDKM_OK && want_saved && CH(60)) op_backward_histogram();   /* a trainer's step: backward next */
}

/*
 * edkm_saved_state_backward_histogram: the forward's total U gradient sums, or a wrong count, a
 * NaN/Inf sum (the state stays usable), NULL pointers, a buffer-form or consumed state.
 */
static void op_backward_histogram(void) {
    int i = pick_saved();
    if (CH(80)) {                       /* mostly a histogram-form state that can still run backward */
        int n = 0;
        for (int j = 0; j < MAX_S; j++)
            if (g_ss[j].live && g_ss[j].hist_form && !g_ss[j].consumed && (int)RN((uint64_t)++n) == 0) i = j;
    }
    unsigned fault = 0, maybe = F_OOM;
    void *h;
    SS *S = NULL;
    if (i < 0 || CH(7)) h = bad_handle(2, &fault); else { S = &g_ss[i]; h = S->h; }
    size_t count = S ? S->count : (size_t)RR(1, 64);
    if (S && !S->hist_form) fault |= F_STATE;
    if (S && S->hist_form && S->consumed) fault |= F_STATE;
    if (CH(5)) count = wrong_count(count);
    if (S && S->hist_form && count != S->count) fault |= F_SHAPE;
    size_t alloc = S ? (S->count ? S->count : 1) : (count && count <= 4096 ? count : 1);
    if (count <= alloc) {} else if (!(fault & (F_SHAPE | F_STATE | F_HANDLE))) fault |= F_SHAPE;
    double *sums = malloc(alloc * sizeof *sums), *hv = malloc(alloc * sizeof *hv), *rv = malloc(alloc * sizeof *rv);
    uint64_t st = R64();
    for (size_t e = 0; e < alloc; e++) sums[e] = rel_normal(&st) * (rel_splitmix(&st) % 8 == 0 ? 100.0 : 0.01);
    int bad_sum = CH(8);
    if (bad_sum) { sums[RN(alloc)] = CH(50) ? NAN : -INFINITY; if (S && S->hist_form && count == S->count) fault |= F_NONFINITE; }
    memset(hv, 0xA5, alloc * sizeof *hv);
    memset(rv, 0xA5, alloc * sizeof *rv);
    int null_g = CH(2), null_h = CH(2), null_r = CH(2);
    if (null_g || null_h || null_r) fault |= F_NULL;
    set_ctx("edkm_saved_state_backward_histogram");
    trace("backward_histogram(%p, count %zu)%s", h, count, bad_sum ? " [nonfinite]" : "");
    /* count beyond the buffers is only passed with a fault that is checked before any read */
    edkm_status s = CALL(edkm_saved_state_backward_histogram((edkm_saved_state *)h, null_g ? NULL : sums, count,
                                                             null_h ? NULL : hv, null_r ? NULL : rv));
    check_status("edkm_saved_state_backward_histogram", s, fault, maybe);
    unsigned char canary[sizeof(double)];
    memset(canary, 0xA5, sizeof canary);
    if (s != EDKM_OK) {
        for (size_t e = 0; e < alloc; e++)
            if (memcmp(&hv[e], canary, sizeof canary) || memcmp(&rv[e], canary, sizeof canary)) {
                fail("backward_histogram failed (%s) but wrote h or r", edkm_status_name(s));
                break;
            }
    } else if (S) {
        S->consumed = 1;
        for (size_t e = 0; e < count; e++)
            if (!isfinite(hv[e]) || !isfinite(rv[e])) {
                if (g_nonfinite_grads++ < 20 && getenv("FUZZ_SHOW_NONFINITE_GRADS"))
                    fprintf(stderr, "non-finite h/r from a forward of: %s\n", S->desc);
                break;
            }
    }
    free(sums); free(hv); free(rv);
}

static void op_saved_bytes(void) {
    int i = pick_saved();
    unsigned fault = 0;
    void *h;
    if (i < 0 || CH(10)) h = bad_handle(2, &fault); else h = g_ss[i].h;
    int null_out = CH(5);
    if (null_out) fault |= F_NULL;
    uint64_t bytes = 0xA5A5A5A5A5A5A5A5ull;
    set_ctx("edkm_saved_state_bytes");
    edkm_status s = CALL(edkm_saved_state_bytes((const edkm_saved_state *)h, null_out ? NULL : &bytes));
    if (check_status("edkm_saved_state_bytes", s, fault, 0)) {
        if (bytes == 0 || bytes == 0xA5A5A5A5A5A5A5A5ull) fail("saved_state_bytes = %llu", (unsigned long long)bytes);
    } else if (bytes != 0xA5A5A5A5A5A5A5A5ull) fail("saved_state_bytes failed but wrote *bytes");
}

static void saved_destroy_slot(int i) {
    SS *S = &g_ss[i];
    set_ctx("edkm_saved_state_destroy");
    VCALL(edkm_saved_state_destroy(S->h));
    trace("saved_destroy(%p)", (void *)S->h);
    stale_add(S->h, 2);
    S->live = 0;
    buf_free(&S->weights);
    free(S->factors);
    S->factors = NULL;
    g_rt[S->rt].live_saved--;
    rt_child_gone(S->rt);
}

static void op_saved_destroy(void) {
    int i = pick_saved();
    if (i < 0 || CH(15)) {
        unsigned f;
        void *h = CH(30) ? NULL : bad_handle(2, &f);
        set_ctx("edkm_saved_state_destroy(bad)");
        VCALL(edkm_saved_state_destroy((edkm_saved_state *)h));
        trace("saved_destroy(bad %p)", h);
        return;
    }
    saved_destroy_slot(i);
}

static void op_centroid_count(void) {
    void *h;
    unsigned fault = 0;
    int l = layer_for_call(&h, &fault);
    int null_out = CH(5);
    if (null_out) fault |= F_NULL;
    size_t cc = (size_t)0xA5A5A5A5A5A5A5A5ull;
    set_ctx("edkm_layer_centroid_count");
    if (check_status("edkm_layer_centroid_count", CALL(edkm_layer_centroid_count((const edkm_layer *)h, null_out ? NULL : &cc)), fault, 0)) {
        LY *L = &g_ly[l];
        if (cc != L->groups * L->k * L->d) fail("centroid_count %zu != groups %zu x k %zu x d %zu", cc, L->groups, L->k, L->d);
    }
}

static void op_get_centroids(void) {
    void *h;
    unsigned fault = 0;
    int l = layer_for_call(&h, &fault);
    LY *L = l >= 0 ? &g_ly[l] : NULL;
    size_t cc = L ? L->groups * L->k * L->d : 16;
    size_t count = cc;
    if (CH(6)) { count = wrong_count(cc); if (L) fault |= F_SHAPE; }
    if (L && !L->has_centroids) fault |= F_STATE;
    size_t alloc = count <= cc ? count : cc;
    if (alloc == 0) alloc = 1;
    if (alloc > 1 << 20) alloc = 1;
    Buf out = buf_new(alloc * 4, 0);
    buf_canary(&out);
    int null_out = CH(3);
    if (null_out) fault |= F_NULL;
    set_ctx("edkm_layer_get_centroids");
    edkm_status s = CALL(edkm_layer_get_centroids((const edkm_layer *)h, null_out ? NULL : (float *)out.p, count));
    if (check_status("edkm_layer_get_centroids", s, fault, 0)) {
        for (size_t i = 0; i < count; i++) if (!isfinite(((float *)out.p)[i])) { fail("get_centroids: non-finite centroid %zu", i); break; }
    } else if (!buf_is_canary(&out)) fail("get_centroids failed but wrote its output");
    buf_free(&out);
}

static void op_set_centroids(void) {
    void *h;
    unsigned fault = 0;
    int l = layer_for_call(&h, &fault);
    LY *L = l >= 0 ? &g_ly[l] : NULL;
    size_t cc = L ? L->groups * L->k * L->d : 16;
    size_t count = cc;
    if (CH(6)) { count = wrong_count(cc); if (L) fault |= F_SHAPE; }
    if (count >= ((size_t)1 << 63)) g_known_avoided[2]++;   /* K2 (fixed): must give EDKM_ERR_SHAPE */
    size_t alloc = count <= cc ? count : cc;
    if (alloc == 0) alloc = 1;
    if (alloc > 1 << 20) alloc = 1;
    Buf c = buf_new(alloc * 4, 0);
    uint64_t s = R64();
    double scale = (s & 1) ? 0.1 : 100.0;
    for (size_t i = 0; i < alloc; i++) ((float *)c.p)[i] = (float)(rel_normal(&s) * scale);
    if (CH(15) && alloc > 1) { size_t i = (size_t)RN(alloc); ((float *)c.p)[RN(alloc)] = ((float *)c.p)[i]; }   /* duplicates */
    if (CH(5)) { for (size_t i = 0; i < alloc; i++) ((float *)c.p)[i] = 0.5f; }                                /* all collapsed */
    if (CH(5)) { ((float *)c.p)[RN(alloc)] = 1e-42f; }                                                          /* subnormal */
    int nonfinite = 0;
    if (CH(8)) { static const float bad[] = { NAN, INFINITY, -INFINITY }; ((float *)c.p)[RN(alloc)] = bad[RN(3)]; nonfinite = 1; }
    if (L && count == cc && nonfinite) fault |= F_NONFINITE;
    int null_c = CH(3);
    if (null_c) fault |= F_NULL;
    float *before = NULL;
    size_t bcc = 0;
    if (L && L->has_centroids && CH(40)) before = snapshot_centroids(L, &bcc);
    set_ctx("edkm_layer_set_centroids");
    trace("set_centroids(%p, count %zu of %zu)%s", h, count, cc, nonfinite ? " [nonfinite]" : "");
    edkm_status st = CALL(edkm_layer_set_centroids((edkm_layer *)h, null_c ? NULL : (const float *)c.p, count));
    if (check_status("edkm_layer_set_centroids", st, fault, 0)) {
        free(before);
        L->has_centroids = 1;
        /* they read back exactly */
        float *back = (float *)malloc(cc * 4);
        if (CALL(edkm_layer_get_centroids(L->h, back, cc)) == EDKM_OK && memcmp(back, c.p, cc * 4) != 0)
            fail("set_centroids then get_centroids differ");
        free(back);
    } else if (L) check_centroids_unchanged(L, before, bcc, "set_centroids");
    else free(before);
    buf_free(&c);
}

static void op_init_centroids(void) {
    void *h;
    unsigned fault = 0, maybe = F_OOM;
    int l = layer_for_call(&h, &fault);
    LY *L = l >= 0 ? &g_ly[l] : NULL;
    if (L && L->N > 70000 && !CH(10)) return;
    size_t N = L ? L->N : 64;
    size_t count = N;
    if (CH(5)) count = wrong_count(N);
    if (L && count != N) fault |= F_SHAPE;
    int dtype = pick_dtype(&fault, -1);
    int valid_dt = (dtype >= 0 && dtype <= 2) ? dtype : EDKM_DTYPE_F32;
    size_t alloc = count <= N ? count : N;
    if (alloc == 0) alloc = 1;
    if (alloc > 70000) alloc = 1;
    Info info;
    Buf w = make_weights(valid_dt, alloc, &info, 1);
    float *csf = NULL;
    if (cs_on(L) && count == N && dtype >= 0 && dtype <= 2) { Info v; csf = cs_call_factors(L, w.p, valid_dt, 0, N, 0, &info, &v); info = v; }
    if (L && count == N && info.nonfinite && dtype >= 0 && dtype <= 2) fault |= F_NONFINITE;
    int null_w = CH(3);
    if (null_w) fault |= F_NULL;
    float *before = NULL;
    size_t bcc = 0;
    if (L && L->has_centroids && CH(30)) before = snapshot_centroids(L, &bcc);
    set_ctx("edkm_layer_init_centroids");
    trace("init_centroids(%p, dtype %d, count %zu of %zu)%s maxabs %g", h, dtype, count, N, info.nonfinite ? " [nonfinite]" : "", info.maxabs);
    edkm_status s = CALL(edkm_layer_init_centroids((edkm_layer *)h, null_w ? NULL : w.p, (edkm_dtype)dtype, count));
    if (check_status("edkm_layer_init_centroids", s, fault, maybe)) {
        free(before);
        L->has_centroids = 1;
        if (info.maxabs > L->cent_maxabs) L->cent_maxabs = info.maxabs;
        cs_after_success(L, csf, "edkm_layer_init_centroids");
        csf = NULL;
        if (!g_hit_known && dtype == EDKM_DTYPE_F32 && L->cfg.f32_key_dtype == EDKM_DTYPE_F16 && L->E > 65536 && info.key_inf_f16 &&
            L->cfg.cluster_dim == 1 && L->cfg.init != EDKM_INIT_KMEANS_PP) {
            g_known_avoided[6]++;   /* K6: NaN centroids expected; give the layer finite ones again */
            k6_reset(L);
        } else check_centroids_finite(L, "init_centroids");
    } else if (L) { check_centroids_unchanged(L, before, bcc, "init_centroids"); cs_after_failure(L, csf, "init_centroids"); csf = NULL; }
    else free(before);
    free(csf);
    buf_free(&w);
}

static void op_export_sizes(void) {
    void *h;
    unsigned fault = 0;
    int l = layer_for_call(&h, &fault);
    int n1 = CH(4), n2 = CH(4);
    if (n1 || n2) fault |= F_NULL;
    size_t lc = 0, pb = 0;
    set_ctx("edkm_layer_export_sizes");
    if (check_status("edkm_layer_export_sizes", CALL(edkm_layer_export_sizes((const edkm_layer *)h, n1 ? NULL : &lc, n2 ? NULL : &pb)), fault, 0)) {
        LY *L = &g_ly[l];
        size_t per = (L->E / L->d * (size_t)L->cfg.bits + 7) / 8;
        if (lc != L->groups * L->k * L->d || pb != L->groups * per)
            fail("export_sizes (%zu, %zu) != formula (%zu, %zu)", lc, pb, L->groups * L->k * L->d, L->groups * per);
    }
}

static void op_export(void) {
    void *h;
    unsigned fault = 0;
    int l = layer_for_call(&h, &fault);
    LY *L = l >= 0 ? &g_ly[l] : NULL;
    if (L && L->N > 70000 && !CH(10)) return;
    size_t N = L ? L->N : 64;
    size_t lut_count = L ? L->groups * L->k * L->d : 16;
    size_t packed_bytes = L ? L->groups * ((L->E / L->d * (size_t)L->cfg.bits + 7) / 8) : 16;
    size_t count = N, pbytes = packed_bytes;
    if (CH(5)) { count = wrong_count(N); if (L) fault |= F_SHAPE; }
    if (CH(5)) { pbytes = wrong_count(packed_bytes); if (L) fault |= F_SHAPE; }
    int dtype = pick_dtype(&fault, -1);
    int valid_dt = (dtype >= 0 && dtype <= 2) ? dtype : EDKM_DTYPE_F32;
    int lut_dtype = CH(90) ? (int)RN(2) : (CH(50) ? EDKM_DTYPE_BF16 : 7);
    if (lut_dtype != EDKM_DTYPE_F32 && lut_dtype != EDKM_DTYPE_F16) fault |= F_DTYPE;
    int valid_lut = lut_dtype == EDKM_DTYPE_F16 ? EDKM_DTYPE_F16 : EDKM_DTYPE_F32;
    size_t walloc = count <= N ? count : N;
    if (walloc == 0) walloc = 1;
    if (walloc > 70000) walloc = 1;
    Info info;
    Buf w = make_weights(valid_dt, walloc, &info, 1);
    float *csf = NULL;
    if (cs_on(L) && count == N && dtype >= 0 && dtype <= 2) { Info v; csf = cs_call_factors(L, w.p, valid_dt, 0, N, 0, &info, &v); info = v; }
    if (L && count == N && info.nonfinite && dtype >= 0 && dtype <= 2) fault |= F_NONFINITE;
    if (L && !L->has_centroids) fault |= F_STATE;
    if (L && L->has_centroids && lut_dtype == EDKM_DTYPE_F16) {
        /* centroids beyond the f16 range (they round to Inf) cannot go into an f16 LUT */
        size_t cc = 0;
        float *c = snapshot_centroids(L, &cc);
        for (size_t i = 0; c && i < cc; i++) if (!isfinite(rel_f16_to_float(rel_float_to_f16(c[i])))) { fault |= F_ARG; break; }
        free(c);
    }
    Buf lut = buf_new((lut_count ? lut_count : 1) * rel_width(valid_lut), natural_offset(valid_lut));
    size_t palloc = pbytes <= packed_bytes ? pbytes : packed_bytes;
    if (palloc == 0) palloc = 1;
    if (palloc > 1 << 22) palloc = 1;
    Buf packed = buf_new(palloc, (size_t)RN(8));            /* byte buffer: any alignment */
    buf_canary(&lut);
    buf_canary(&packed);
    int nw = CH(2), nl = CH(2), np = CH(2);
    if (nw || nl || np) fault |= F_NULL;
    set_ctx("edkm_layer_export");
    trace("export(%p, dtype %d, count %zu, lut %d, packed %zu of %zu)", h, dtype, count, lut_dtype, pbytes, packed_bytes);
    edkm_status s = CALL(edkm_layer_export((const edkm_layer *)h, nw ? NULL : w.p, (edkm_dtype)dtype, count, nl ? NULL : lut.p,
                                           (edkm_dtype)lut_dtype, np ? NULL : (uint8_t *)packed.p, pbytes));
    if (check_status("edkm_layer_export", s, fault, 0)) {
        cs_after_success(L, csf, "edkm_layer_export");
        layer_free_export(L);
        L->has_export = 1;
        L->lut = lut;
        L->packed = packed;
        L->lut_dtype = lut_dtype;
        /* unused trailing bits of each group's last byte... are not specified; labels are < k by construction */
        buf_free(&w);
        return;
    }
    if (!buf_is_canary(&lut) || !buf_is_canary(&packed)) fail("export failed (%s) but wrote an output", edkm_status_name(s));
    if (L) cs_after_failure(L, csf, "edkm_layer_export"); else free(csf);
    buf_free(&w); buf_free(&lut); buf_free(&packed);
}

static void op_unpack(void) {
    void *h;
    unsigned fault = 0;
    int l = layer_for_call(&h, &fault);
    LY *L = l >= 0 ? &g_ly[l] : NULL;
    if (L && L->N > 70000 && !CH(10)) return;
    size_t N = L ? L->N : 64;
    size_t lut_count = L ? L->groups * L->k * L->d : 16;
    size_t packed_bytes = L ? L->groups * ((L->E / L->d * (size_t)L->cfg.bits + 7) / 8) : 16;
    if (packed_bytes > 1 << 22) return;
    int use_export = L && L->has_export && CH(70);
    int lut_dtype = use_export ? L->lut_dtype : (CH(90) ? (int)RN(2) : (CH(50) ? EDKM_DTYPE_BF16 : -3));
    if (lut_dtype != EDKM_DTYPE_F32 && lut_dtype != EDKM_DTYPE_F16) fault |= F_DTYPE;
    int valid_lut = lut_dtype == EDKM_DTYPE_F16 ? EDKM_DTYPE_F16 : EDKM_DTYPE_F32;
    Buf lut = buf_new((lut_count ? lut_count : 1) * rel_width(valid_lut), natural_offset(valid_lut));
    Buf packed = buf_new(packed_bytes ? packed_bytes : 1, (size_t)RN(8));
    if (use_export) {
        memcpy(lut.p, L->lut.p, lut_count * rel_width(valid_lut));
        memcpy(packed.p, L->packed.p, packed_bytes);
    } else {
        fill_payload(lut.p, valid_lut, lut_count ? lut_count : 1, 1);
        uint64_t s = R64();
        for (size_t i = 0; i < packed.bytes; i++) ((unsigned char *)packed.p)[i] = (unsigned char)rel_splitmix(&s);
    }
    size_t count = N, pbytes = packed_bytes;
    if (CH(5)) { count = wrong_count(N); if (L) fault |= F_SHAPE; }
    if (CH(5)) { pbytes = wrong_count(packed_bytes); if (L) fault |= F_SHAPE; }
    /* a LUT holding NaN or Inf is rejected (nothing unpacked) */
    if (L && (lut_dtype == EDKM_DTYPE_F32 || lut_dtype == EDKM_DTYPE_F16))
        for (size_t i = 0; i < lut_count; i++) if (!isfinite(rel_load(lut.p, valid_lut, i))) { fault |= F_NONFINITE; break; }
    int out_dtype = pick_dtype(&fault, -1);
    int valid_out = (out_dtype >= 0 && out_dtype <= 2) ? out_dtype : EDKM_DTYPE_F32;
    size_t oalloc = count <= N ? count : N;
    if (oalloc == 0) oalloc = 1;
    Buf out = buf_new(oalloc * rel_width(valid_out), natural_offset(valid_out));
    buf_canary(&out);
    int nl = CH(2), np = CH(2), no = CH(2);
    if (nl || np || no) fault |= F_NULL;
    set_ctx("edkm_layer_unpack");
    trace("unpack(%p, lut %d, packed %zu of %zu, out %d, count %zu)", h, lut_dtype, pbytes, packed_bytes, out_dtype, count);
    edkm_status s = CALL(edkm_layer_unpack((const edkm_layer *)h, nl ? NULL : lut.p, (edkm_dtype)lut_dtype,
                                           np ? NULL : (const uint8_t *)packed.p, pbytes, no ? NULL : out.p, (edkm_dtype)out_dtype, count));
    if (check_status("edkm_layer_unpack", s, fault, 0)) {
        /* out[e] = lut[label(e)] */
        size_t E = L->E, d = L->d, k = L->k, bits = L->cfg.bits;
        size_t slice = packed_bytes / L->groups;
        const unsigned char *pk = (const unsigned char *)packed.p;
        for (size_t t = 0; t < 64 && N > 0; t++) {
            size_t e = (size_t)RN(N);
            size_t p = e / E, v = (e % E) / d, c = e % d;
            size_t bit = v * bits;
            unsigned word = pk[p * slice + (bit >> 3)];
            if ((bit & 7) + bits > 8) word |= (unsigned)pk[p * slice + (bit >> 3) + 1] << 8;
            size_t label = (word >> (bit & 7)) & ((1u << bits) - 1);
            float want = rel_load(lut.p, valid_lut, (p * k + label) * d + c);
            float got = rel_load(out.p, valid_out, e);
            if (!isfinite(want)) continue;
            float tol = valid_out == EDKM_DTYPE_F32 ? 0.0f : fabsf(want) * (valid_out == EDKM_DTYPE_BF16 ? 0.0079f : 0.001f) + 6e-8f;
            if (valid_out == EDKM_DTYPE_F16 && fabsf(want) > 65504.f) continue;
            if (!(fabsf(got - want) <= tol)) { fail("unpack out[%zu] = %g, lut[label %zu] = %g", e, (double)got, label, (double)want); break; }
        }
    } else if (!buf_is_canary(&out)) fail("unpack failed (%s) but wrote its output", edkm_status_name(s));
    buf_free(&lut); buf_free(&packed); buf_free(&out);
}

static void op_layer_stats(void) {
    void *h;
    unsigned fault = 0, maybe = 0;
    int l = layer_for_call(&h, &fault);
    union { edkm_layer_stats st; unsigned char raw[sizeof(edkm_layer_stats) + 64]; } u;
    memset(&u, 0xA5, sizeof u);
    uint32_t ss = RANDOM_STRUCT_SIZE(LAYER_STATS_FIELDS, &fault, &maybe);
    u.st.struct_size = ss;
    int null_out = CH(4);
    if (null_out) fault |= F_NULL;
    set_ctx("edkm_layer_get_stats");
    edkm_status s = CALL(edkm_layer_get_stats((const edkm_layer *)h, null_out ? NULL : &u.st));
    int ok = check_status("edkm_layer_get_stats", s, fault, maybe);
    check_sized_output("edkm_layer_get_stats", u.raw, sizeof u.raw, ss, s, ok);
    if (ok && ss == sizeof(edkm_layer_stats) && l >= 0) {
        LY *L = &g_ly[l];
        if (u.st.forwards != L->forwards) fail("layer stats forwards %llu, expected %llu", (unsigned long long)u.st.forwards, (unsigned long long)L->forwards);
        if (L->forwards > 0) {
            if (u.st.algorithm != EDKM_ALGORITHM_DENSE && u.st.algorithm != EDKM_ALGORITHM_UNIQUIFIED) fail("layer stats algorithm %d", u.st.algorithm);
            if (!(u.st.attention_entropy >= -1e-9 && u.st.attention_entropy <= L->entropy_scale * log((double)L->k) + 1e-6) &&
                !(L->last_degenerate && !g_hit_known))
                fail("attention_entropy %g outside [0, ln k = %g] (layer bits %u d %zu groups %zu N %zu T %u tau %g tm %d alg %d; "
                     "stats algorithm %d iterations %u forwards %llu)", u.st.attention_entropy, log((double)L->k), L->cfg.bits, L->d,
                     L->groups, L->N, L->cfg.max_iterations, L->cfg.tau, L->cfg.temperature_mode, L->cfg.algorithm,
                     u.st.algorithm, u.st.iterations, (unsigned long long)u.st.forwards);
            if (!(u.st.iterations >= 1 && u.st.iterations <= L->cfg.max_iterations)) fail("iterations %u", u.st.iterations);
        }
    }
}

static void op_misc(void) {
    set_ctx("misc");
    int s = (int)RR(-5, 120);
    const char *n = (g_calls++, edkm_status_name((edkm_status)s));
    if (!n) fail("edkm_status_name(%d) is NULL", s);
    const char *e = (g_calls++, edkm_last_error());
    if (!e) fail("edkm_last_error() is NULL");
    const char *v = (g_calls++, edkm_version_string());
    uint32_t vn = (g_calls++, edkm_version_number());
    if (!v || vn != EDKM_VERSION_NUMBER) fail("version %s / %u", v ? v : "(null)", vn);
    edkm_layer_config c;
    VCALL(edkm_layer_config_init(&c));
    edkm_runtime_config rc;
    VCALL(edkm_runtime_config_init(&rc));
    VCALL(edkm_layer_config_init(NULL));   /* header: fills cfg; NULL must not crash (tolerated) */
    VCALL(edkm_runtime_config_init(NULL));
}

#include "fuzz_hostile.h"

/* ------------------------------------------------------------------ a program */

static void teardown(void) {
    set_ctx("teardown");
    for (int i = 0; i < MAX_S; i++) if (g_ss[i].live) saved_destroy_slot(i);
    for (int i = 0; i < MAX_L; i++) if (g_ly[i].live) {
        VCALL(edkm_layer_destroy(g_ly[i].h));
        stale_add(g_ly[i].h, 1);
        g_ly[i].live = 0;
        layer_release(&g_ly[i]);
        rt_child_gone(g_ly[i].rt);
    }
    for (int r = 0; r < MAX_RT; r++) {
        if (g_rt[r].used && g_rt[r].handle_live) {
            check_runtime_stats(r, 1);
            VCALL(edkm_runtime_destroy(g_rt[r].h));
            stale_add(g_rt[r].h, 0);
        }
        g_rt[r].used = 0;
        g_rt[r].handle_live = 0;
    }
    /* destroyed handles stay destroyed: each kind of call on them is rejected */
    for (int i = 0; i < g_nstale; i++) {
        int lk;
        if (is_live_handle(g_stale[i].p, &lk)) continue;
        size_t cc;
        edkm_status s;
        if (g_stale[i].kind == 1) { s = CALL(edkm_layer_centroid_count((const edkm_layer *)g_stale[i].p, &cc)); check_status("centroid_count(destroyed layer)", s, F_HANDLE, 0); }
        if (g_stale[i].kind == 0) { s = CALL(edkm_runtime_reset_peak((edkm_runtime *)g_stale[i].p)); check_status("reset_peak(destroyed runtime)", s, F_HANDLE, 0); }
        if (g_stale[i].kind == 2) { uint64_t b; s = CALL(edkm_saved_state_bytes((const edkm_saved_state *)g_stale[i].p, &b)); check_status("saved_state_bytes(destroyed state)", s, F_HANDLE, 0); }
    }
    g_nstale = 0;
    /* every runtime object is gone now, so are the worker threads of their pools */
    int threads = rel_thread_count();
    for (int wait = 0; wait < 200 && threads > g_threads_at_start; wait++) {
        /* a joined thread can still be listed for a moment (its tid is cleared before it is reaped) */
        struct timespec ts = { 0, 1000000L };
        nanosleep(&ts, NULL);
        threads = rel_thread_count();
    }
    if (threads > g_threads_at_start) {
        fail("%d threads alive after every handle was destroyed (K5: runtime worker threads leak)", threads);
    }
}

static void run_program(int max_ops) {
    memset(g_rt, 0, sizeof g_rt);
    memset(g_ly, 0, sizeof g_ly);
    memset(g_ss, 0, sizeof g_ss);
    g_nstale = 0;
    g_failures = 0;
    g_opno = 0;
    /* start with a runtime and a layer most of the time */
    op_runtime_create();
    if (CH(80)) op_layer_create();
    int ops = (int)RR(20, max_ops);
    for (g_opno = 1; g_opno <= ops && !g_exhausted; g_opno++) {
        int r = (int)RN(1000);
        if (g_disabled && strchr(g_disabled, 'a' + r / 50)) continue;   /* FUZZ_DISABLE: debugging aid (op groups a..t) */
        if (r < 40) op_runtime_create();
        else if (r < 60) op_runtime_destroy();
        else if (r < 85) op_set_budget();
        else if (r < 110) op_get_stats();
        else if (r < 118) op_set_channel_scale();
        else if (r < 125) op_get_channel_scale();
        else if (r < 135) op_reset_peak();
        else if (r < 215) op_layer_create();
        else if (r < 240) op_layer_destroy();
        else if (r < 255) op_centroid_count();
        else if (r < 290) op_get_centroids();
        else if (r < 325) op_set_centroids();
        else if (r < 360) op_init_centroids();
        else if (r < 530) op_forward(0);
        else if (r < 610) op_forward(1);
        else if (r < 720) op_backward();
        else if (r < 740) op_forward_histogram();
        else if (r < 750) op_backward_histogram();
        else if (r < 770) op_saved_bytes();
        else if (r < 830) op_saved_destroy();
        else if (r < 845) op_export_sizes();
        else if (r < 900) op_export();
        else if (r < 945) op_unpack();
        else if (r < 985) op_layer_stats();
        else if (r < 995) op_histogram_matches_buffer();
        else op_misc();
    }
    teardown();
    if (!g_exhausted && CH(25)) run_hostile_program();
}

/* ------------------------------------------------------------------ drivers */

#ifndef EDKM_LIBFUZZER
static void crash_handler(int sig) {
    ssize_t n = write(2, g_ctx, strlen(g_ctx));
    (void)n;
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_handlers(void) {
    int sigs[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP };
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], crash_handler);
}
#endif

#ifndef EDKM_LIBFUZZER
static uint64_t iteration_seed(uint64_t seed, uint64_t it) {
    uint64_t s = seed ^ (it * 0xd1b54a32d192ed03ull);
    return rel_splitmix(&s);
}
#endif

#ifdef EDKM_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int init = 0;
    if (!init) {
        init = 1;  /* libFuzzer reports crashes itself (with the input that caused them) */
        if (getenv("FUZZ_TRACE")) g_trace = 1;
        if (getenv("FUZZ_TOLERATE_KNOWN")) g_hit_known = 0;
        g_threads_at_start = rel_thread_count();
    }
    g_libfuzzer = 1;
    g_fd = data; g_fn = size; g_fp = 0; g_exhausted = 0;
    g_iteration++;
    run_program(120);
    if (g_failures) {
        fprintf(stderr, "fuzz_abi: %llu oracle failure(s) on this input\n", (unsigned long long)g_failures);
        abort();
    }
    return 0;
}
#else
int main(int argc, char **argv) {
    uint64_t seed = 1, iterations = 0, only = UINT64_MAX;
    double seconds = 0;
    int max_ops = 120;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--iterations") && i + 1 < argc) iterations = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--max-ops") && i + 1 < argc) max_ops = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--trace")) g_trace = 1;
        else if (!strcmp(argv[i], "--hit-known")) g_hit_known = 1;
        else if (!strcmp(argv[i], "--tolerate-known")) g_hit_known = 0;
        else {
            fprintf(stderr, "usage: %s [--seed S] [--iterations N | --seconds T] [--only I] [--max-ops M] [--trace] [--tolerate-known]\n", argv[0]);
            return 2;
        }
    }
    if (max_ops < 20) max_ops = 20;
    if (iterations == 0 && seconds == 0) iterations = 200;
    install_handlers();
    g_disabled = getenv("FUZZ_DISABLE");
    g_threads_at_start = rel_thread_count();
    g_seed = seed;
    printf("fuzz_abi: libedkm %s, seed %llu, %s %g%s\n", edkm_version_string(), (unsigned long long)seed,
           only != UINT64_MAX ? "only iteration" : (seconds > 0 ? "seconds" : "iterations"),
           only != UINT64_MAX ? (double)only : (seconds > 0 ? seconds : (double)iterations),
           g_hit_known ? "" : " (tolerating the bugs fixed in 0.2)");
    fflush(stdout);
    double t0 = rel_now();
    uint64_t passed = 0, failed = 0, it;
    if (only == UINT64_MAX && allocation_failure_enabled()) {
        /* allocation failure in every saved mode (forked children under an address-space limit) */
        g_rs = iteration_seed(seed, UINT64_MAX);
        for (int mode = 0; mode <= 5; mode++) run_allocation_failure(mode);
        if (g_failures) failed++;
        g_failures = 0;
    }
    for (it = (only != UINT64_MAX ? only : 0);; it++) {
        if (only != UINT64_MAX && it != only) break;
        if (only == UINT64_MAX) {
            if (seconds > 0 ? rel_now() - t0 >= seconds : it >= iterations) break;
        }
        g_iteration = it;
        g_rs = iteration_seed(seed, it);
        if (g_trace) printf("iteration %llu\n", (unsigned long long)it);
        run_program(max_ops);
        if (g_failures) failed++; else passed++;
        if (only != UINT64_MAX) break;
    }
    double dt = rel_now() - t0;
    printf("executions: %llu C ABI calls in %llu iterations, %.1f s (%.0f calls/s)\n", (unsigned long long)g_calls,
           (unsigned long long)(passed + failed), dt, (double)g_calls / (dt > 0 ? dt : 1));
    printf("statuses:");
    for (int s = 0; s <= 14; s++) if (g_status_hist[s]) printf(" %s=%llu", edkm_status_name((edkm_status)s), (unsigned long long)g_status_hist[s]);
    if (g_status_hist[16]) printf(" other=%llu", (unsigned long long)g_status_hist[16]);
    printf("\n");
    printf("notes: regression inputs of fixed bugs: K1 %llu, K2 %llu; tolerated (0 unless --tolerate-known): K6 NaN results %llu, K9 destroyed "
           "handles re-used by a new handle %llu, K10 inputs avoided %llu; successful backwards with a non-finite gradient %llu; "
           "EDKM_ERR_ALLOCATOR %llu\n",
           (unsigned long long)g_known_avoided[1], (unsigned long long)g_known_avoided[2], (unsigned long long)g_known_avoided[6],
           (unsigned long long)g_aliased_stale, (unsigned long long)g_known_avoided[5], (unsigned long long)g_nonfinite_grads,
           (unsigned long long)g_allocator_errors);
    printf("hostile: %llu programs with a lying communicator, %llu corruptions applied, %llu re-entrant calls; allocation failure: "
           "%llu children (one per saved mode), %llu ran out of memory cleanly\n", (unsigned long long)g_hostile_programs,
           (unsigned long long)g_hostile_applied, (unsigned long long)g_hostile_reentered, (unsigned long long)g_alloc_children,
           (unsigned long long)g_alloc_oom);
    printf("channel scale: %llu layers' factors fixed, %llu read back and compared with the formula, %llu backwards whose "
           "gradient times its factor overflows; %llu histogram forms compared with the buffer forward (%llu with their "
           "backwards)\n", (unsigned long long)g_scale_fixed, (unsigned long long)g_scale_checked, (unsigned long long)g_scale_overflow,
           (unsigned long long)g_hist_vs_buffer, (unsigned long long)g_hist_backward);
    printf("%llu passed, %llu failed\n", (unsigned long long)passed, (unsigned long long)failed);
    return failed ? 1 : 0;
}
#endif
