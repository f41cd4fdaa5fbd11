/*
 * fuzz_hostile.h: the hostile parts of fuzz_abi.c (included by it; uses its random source, oracle
 * and bookkeeping).
 *
 * run_hostile_program(): a runtime whose communicator lies (hostile_comm.h): on a random call it
 * returns a nonzero status, or status 0 with NaN, Inf, 1e300, negative, fractional,
 * rank-inconsistent (+1) or all-zero all-reduce results, garbage or altered gathered bytes, or it
 * calls back into the same runtime (another layer, the running layer, a saved state). Random
 * forward, forward_shard and backward calls in every saved mode. Oracle: the status is one the
 * corruption allows (hostile_comm's `expect`: EDKM_ERR_COMMUNICATOR for every impossible result;
 * EDKM_OK for what a correct collective could have returned), a re-entrant call got
 * EDKM_ERR_BUSY, failed calls wrote nothing, successful ones wrote finite values (unless a huge
 * but finite gradient sum was accepted), and the arena is back at its start bytes at the end.
 *
 * run_allocation_failure(mode): in a forked child, a forward with a saved state and its backward
 * under an address-space limit (RLIMIT_AS = the child's size + a random 16..256 MiB) on a layer
 * of 1-4 Mi weights: every call must return EDKM_OK or EDKM_ERR_OUT_OF_MEMORY (EDKM_ERR_ALLOCATOR
 * for the arena), outputs unwritten on failure, the arena and heap_saved back at their start
 * after destroy; a crash or abort of the child is a failure.
 */
#ifndef EDKM_FUZZ_HOSTILE_H
#define EDKM_FUZZ_HOSTILE_H

#include <sys/resource.h>
#include <sys/wait.h>

#include "hostile_comm.h"

static uint64_t g_hostile_programs = 0, g_hostile_applied = 0, g_hostile_reentered = 0;
static uint64_t g_alloc_children = 0, g_alloc_oom = 0;

static int finite_floats(const float *p, size_t n) {
    for (size_t i = 0; i < n; i++) if (!isfinite(p[i])) return 0;
    return 1;
}


/* FUZZ_HOSTILE_CHANNEL_SCALE=1: hostile programs on channel-scaled 2-D layers (40 % of them). */
static int hostile_channel_scale_enabled(void) {
    const char *e = getenv("FUZZ_HOSTILE_CHANNEL_SCALE");
    return e && e[0] == '1';
}

static void run_hostile_program(void) {
    g_hostile_programs++;
    hostile_comm h;
    int world = CH(60) ? 1 : (int)RR(2, 4);
    edkm_communicator comm = hc_make(&h, world, R64());
    edkm_runtime_config rc;
    edkm_runtime_config_init(&rc);
    rc.communicator = &comm;
    rc.saved_mode = (int32_t)RN(6);
    rc.keep_weights = (uint32_t)RN(2);
    rc.num_threads = (uint32_t)RN(3);
    edkm_runtime *rt = NULL;
    set_ctx("hostile: edkm_runtime_create");
    if (!check_status("hostile: edkm_runtime_create", CALL(edkm_runtime_create(&rc, &rt)), 0, F_ALLOC | F_OOM)) return;
    size_t N = (size_t)RR(64, 4096);
    int64_t small = 64;
    edkm_layer_config lc;
    edkm_layer_config_init(&lc);
    lc.bits = (uint32_t)RR(1, 4);
    /* a channel scale on a 2-D layer (rows x N / rows): its sharded forwards add the agreement and
     * factor exchange gathers; sometimes factors set first (every rank the same) */
    int64_t shape[2] = { (int64_t)N, 1 };
    /* (off unless FUZZ_HOSTILE_CHANNEL_SCALE=1: open finding H-S5 in Tests/reliability/README.md;
     * the draw is made either way so that a seed replays the same programs) */
    int scaled = CH(40), set_factors = 0;
    if (!hostile_channel_scale_enabled()) scaled = 0;
    size_t rows = 1;
    if (scaled) {
        lc.channel_scale = (int32_t)RR(1, 2);
        rows = (size_t)1 << RR(0, 4);
        if (rows == 2) rows = 4;   /* 2 rows x 8 bytes would be the agreement's 16 bytes */
        N = rows * (size_t)RR(64 / (int64_t)rows + 1, 4096 / (int64_t)rows);
        shape[0] = (int64_t)rows;
        shape[1] = (int64_t)(N / rows);
        h.exchange_bytes = rows * 8;
        set_factors = CH(25);
    }
    int dtype = (int)RN(3);
    if (dtype == EDKM_DTYPE_F32) lc.f32_key_dtype = CH(50) ? EDKM_DTYPE_F16 : EDKM_DTYPE_BF16;
    edkm_layer *l = NULL, *other = NULL;
    edkm_saved_state *states[4] = { NULL, NULL, NULL, NULL };
    size_t counts[4] = { 0, 0, 0, 0 };
    int from_shard[4] = { 0, 0, 0, 0 };
    Buf weights[4];
    memset(weights, 0, sizeof weights);
    edkm_runtime_stats st0;
    memset(&st0, 0, sizeof st0);
    st0.struct_size = sizeof st0;
    if (!check_status("hostile: edkm_layer_create", CALL(edkm_layer_create(rt, &lc, shape, scaled ? 2 : 1, &l)), 0, 0) ||
        !check_status("hostile: edkm_layer_create(other)", CALL(edkm_layer_create(rt, NULL, &small, 1, &other)), 0, 0) ||
        !check_status("hostile: get_stats", CALL(edkm_runtime_get_stats(rt, &st0)), 0, 0)) goto done;
    if (set_factors) {
        float *f = (float *)malloc(rows * sizeof(float));
        for (size_t r = 0; r < rows; r++) f[r] = (float)log_uniform(1e-3, 1e3);
        check_status("hostile: edkm_layer_set_channel_scale", CALL(edkm_layer_set_channel_scale(l, f, rows)), 0, 0);
        free(f);
    }
    trace("hostile program: world %d, mode %d, N %zu, dtype %d, channel scale %d (rows %zu, factors set first %d)", world,
          rc.saved_mode, N, dtype, scaled ? lc.channel_scale : 0, rows, set_factors);
    int ops = (int)RR(4, 14);
    for (int op = 0; op < ops; op++) {
        g_opno = op;
        int kind = CH(40) ? HC_HONEST : (int)RR(1, HC_KINDS - 1);
        hc_arm(&h, kind, (int)RN(2), CH(20) ? (int)RN(65538) : -1);
        if (kind == HC_REENTER) {
            int t = (int)RN(3);
            int live = -1;
            for (int i = 0; i < 4; i++) if (states[i]) live = i;
            if (t == 2 && live >= 0) { h.reenter_state = states[live]; h.reenter_n = counts[live]; }
            else if (t == 1) { h.reenter_layer = l; h.reenter_n = N; }
            else { h.reenter_layer = other; h.reenter_n = 64; }
        }
        int which = (int)RN(3);  /* 0 forward, 1 forward_shard, 2 backward */
        int slot = -1;
        for (int i = 0; i < 4; i++) if (!states[i]) { slot = i; break; }
        if (which < 2 && slot < 0) which = 2;
        if (which == 2) {
            int i = (int)RN(4);
            if (!states[i]) continue;
            size_t n = counts[i];
            Buf g = buf_new(n * 4, 0), gi = buf_new(n * 4, 0);
            for (size_t e = 0; e < n; e++) ((float *)g.p)[e] = (float)((e * 7) % 13) * 0.01f - 0.06f;
            buf_canary(&gi);
            set_ctx("hostile: edkm_saved_state_backward");
            edkm_status s = CALL(edkm_saved_state_backward(states[i], g.p, gi.p, EDKM_DTYPE_F32, n, weights[i].p));
            unsigned allow = h.applied ? h.expect : SB(EDKM_OK);
            /* SHARD mode with mirrored ranks: the gathered index list (rank 0's shard in every slot)
             * is not the tensor's, and is rejected */
            if (rc.saved_mode == EDKM_SAVED_SHARD && world > 1 && !from_shard[i]) allow |= SB(EDKM_ERR_COMMUNICATOR);
            char op_name[240];
            snprintf(op_name, sizeof op_name, "hostile backward (world %d, mode %d; %s)", world, rc.saved_mode,
                     h.applied ? h.what : "honest");
            if (h.applied) g_hostile_applied++;
            if (!(allow & SB(s))) {
                fail("%s returned %s (%s)", op_name, edkm_status_name(s), edkm_last_error());
            } else {
                check_status(op_name, s, 0, allow & ~SB(EDKM_OK));
            }
            if (s != EDKM_OK && !buf_is_canary(&gi)) fail("%s failed but wrote grad_input", op_name);
            if (s == EDKM_OK && !(h.applied && kind == HC_HUGE) && !finite_floats((const float *)gi.p, n))
                fail("%s: EDKM_OK with a non-finite gradient", op_name);
            if (h.reentered) {
                g_hostile_reentered++;
                if (h.reenter_status != EDKM_ERR_BUSY) fail("%s: the re-entrant call returned %s, not EDKM_ERR_BUSY", op_name, edkm_status_name(h.reenter_status));
            }
            buf_free(&g); buf_free(&gi);
            if (s == EDKM_OK || CH(50)) {
                VCALL(edkm_saved_state_destroy(states[i]));
                states[i] = NULL;
                buf_free(&weights[i]);
            }
            continue;
        }
        int shard = which == 1;
        size_t offset = 0, count = N;
        if (shard && CH(40)) { offset = (size_t)RN(N / 2); count = N - offset - (size_t)RN(N / 2); }
        Buf w = buf_new(count * rel_width(dtype), 0);
        for (size_t e = 0; e < count; e++) rel_store(w.p, dtype, e, (float)(((offset + e) * 37) % 101) / 50.0f - 1.0f);
        Buf out = buf_new(count * 4, 0);
        buf_canary(&out);
        edkm_saved_state *sh = NULL;
        int save = CH(75);
        const char *name = shard ? "hostile forward_shard" : "hostile forward";
        set_ctx(name);
        int garbage_before = h.scale_garbage;
        h.in_shard_forward = shard;
        edkm_status s = shard ? CALL(edkm_layer_forward_shard(l, w.p, (edkm_dtype)dtype, offset, count, out.p, EDKM_DTYPE_F32, save ? &sh : NULL))
                              : CALL(edkm_layer_forward(l, w.p, (edkm_dtype)dtype, count, out.p, EDKM_DTYPE_F32, save ? &sh : NULL));
        h.in_shard_forward = 0;
        if (h.scale_garbage && s != EDKM_OK) h.scale_garbage = garbage_before;   /* nothing kept */
        char op_name[240];
        snprintf(op_name, sizeof op_name, "%s (world %d, mode %d, N %zu, slice %zu+%zu; %s)", name, world, rc.saved_mode, N, offset,
                 count, h.applied ? h.what : "honest");
        unsigned allow = h.applied ? h.expect : SB(EDKM_OK);
        /* factors from a garbage exchange may be tiny: a finite weight over them overflows */
        if (garbage_before) allow |= SB(EDKM_ERR_NON_FINITE);
        if (h.applied) g_hostile_applied++;
        if (!(allow & SB(s)) && !(s == EDKM_ERR_OUT_OF_MEMORY)) {
            fail("%s returned %s (%s)", op_name, edkm_status_name(s), edkm_last_error());
        } else {
            check_status(op_name, s, 0, (allow & ~SB(EDKM_OK)) | F_OOM);
        }
        if (h.reentered) {
            g_hostile_reentered++;
            if (h.reenter_status != EDKM_ERR_BUSY) fail("%s: the re-entrant call returned %s, not EDKM_ERR_BUSY", op_name, edkm_status_name(h.reenter_status));
        }
        if (s != EDKM_OK) {
            if (!buf_is_canary(&out)) fail("%s failed but wrote its output", op_name);
            if (sh) fail("%s failed but wrote *saved", op_name);
        } else if (!finite_floats((const float *)out.p, count)) {
            fail("%s: EDKM_OK with a non-finite output", op_name);
        }
        buf_free(&out);
        if (s == EDKM_OK && sh && slot >= 0) {
            states[slot] = sh;
            counts[slot] = shard ? count : N;
            from_shard[slot] = shard;
            weights[slot] = w;
        } else {
            if (sh) VCALL(edkm_saved_state_destroy(sh));
            buf_free(&w);
        }
    }
done:
    for (int i = 0; i < 4; i++) if (states[i]) { VCALL(edkm_saved_state_destroy(states[i])); buf_free(&weights[i]); }
    if (l) {
        edkm_runtime_stats st;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        if (check_status("hostile: get_stats(end)", CALL(edkm_runtime_get_stats(rt, &st)), 0, 0) &&
            (st.arena_allocated != st0.arena_allocated || st.live_saved_states != 0 || st.heap_saved != 0))
            fail("hostile program: arena %llu bytes (start %llu), %llu live states, heap %llu at the end",
                 (unsigned long long)st.arena_allocated, (unsigned long long)st0.arena_allocated,
                 (unsigned long long)st.live_saved_states, (unsigned long long)st.heap_saved);
    }
    VCALL(edkm_layer_destroy(other));
    VCALL(edkm_layer_destroy(l));
    VCALL(edkm_runtime_destroy(rt));
}

#ifndef EDKM_LIBFUZZER
/* Address-space limits do not mix with sanitizers (shadow memory) or valgrind: the allocation
 * failure children are skipped there, and with FUZZ_ALLOC_FAILURE=0. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define EDKM_FUZZ_SANITIZED 1
#endif
#endif
static int allocation_failure_enabled(void) {
    const char *e = getenv("FUZZ_ALLOC_FAILURE"), *pre = getenv("LD_PRELOAD");
    if (e && !strcmp(e, "0")) return 0;
    if (pre && strstr(pre, "vgpreload")) return 0;
#ifdef EDKM_FUZZ_SANITIZED
    return 0;
#else
    return 1;
#endif
}

/* The child: returns 0 when every call kept the contract. */
static int allocation_failure_child(int mode, uint64_t seed) {
    uint64_t rs = seed;
    edkm_runtime_config rc;
    edkm_runtime_config_init(&rc);
    rc.saved_mode = mode;
    rc.num_threads = 1;
    rc.keep_weights = (uint32_t)(rel_splitmix(&rs) % 2);
    rel_comm_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    edkm_communicator comm = rel_comm_make(&ctx, 1);  /* one rank: a mirrored gather is not an index list */
    if (mode == EDKM_SAVED_SHARD) rc.communicator = &comm;
    edkm_runtime *rt;
    if (edkm_runtime_create(&rc, &rt) != EDKM_OK) return 10;
    int64_t rows = rel_splitmix(&rs) % 2 ? 2048 : 1024, shape[2] = { rows, 2048 };
    size_t N = (size_t)rows * 2048;
    int dtype = (int)(rel_splitmix(&rs) % 3);
    edkm_layer_config lc;
    edkm_layer_config_init(&lc);
    lc.bits = 4;
    if (dtype == EDKM_DTYPE_F32 && rel_splitmix(&rs) % 2) lc.f32_key_dtype = EDKM_DTYPE_F16;
    edkm_layer *l;
    if (edkm_layer_create(rt, &lc, shape, 2, &l) != EDKM_OK) return 11;
    size_t wbytes = N * rel_width(dtype);
    unsigned char *w = malloc(wbytes), *out = malloc(wbytes), *g = malloc(wbytes), *gi = malloc(wbytes);
    if (!w || !out || !g || !gi) return 12;
    for (size_t e = 0; e < N; e++) { rel_store(w, dtype, e, (float)((e * 37) % 1001) / 500.0f - 1.0f); rel_store(g, dtype, e, 0.01f); }
    memset(out, 0xA5, wbytes);
    memset(gi, 0xA5, wbytes);
    edkm_runtime_stats st0;
    memset(&st0, 0, sizeof st0);
    st0.struct_size = sizeof st0;
    edkm_runtime_get_stats(rt, &st0);
    struct rlimit lim;
    getrlimit(RLIMIT_AS, &lim);
    lim.rlim_cur = hc_vm_bytes() + ((rlim_t)(16 + rel_splitmix(&rs) % 241) << 20);
    if (setrlimit(RLIMIT_AS, &lim) != 0) return 13;
    edkm_saved_state *s = NULL;
    edkm_status f = edkm_layer_forward(l, w, (edkm_dtype)dtype, N, out, (edkm_dtype)dtype, &s);
    int rc_child = 0;
    if (f == EDKM_OK) {
        edkm_status b = edkm_saved_state_backward(s, g, gi, (edkm_dtype)dtype, N, w);
        if (!(b == EDKM_OK || b == EDKM_ERR_OUT_OF_MEMORY || b == EDKM_ERR_ALLOCATOR)) rc_child = 20;
        if (b != EDKM_OK) { for (size_t i = 0; i < wbytes; i++) if (gi[i] != 0xA5) { rc_child = 21; break; } }
        else rc_child = rc_child ? rc_child : 0;
        if (b != EDKM_OK) rc_child = rc_child ? rc_child : 100;  /* 100: backward out of memory (reported) */
    } else {
        if (!(f == EDKM_ERR_OUT_OF_MEMORY || f == EDKM_ERR_ALLOCATOR)) rc_child = 30;
        if (s != NULL) rc_child = 31;
        for (size_t i = 0; i < wbytes && !rc_child; i++) if (out[i] != 0xA5) rc_child = 32;
        if (!rc_child) rc_child = 101;  /* 101: forward out of memory (reported) */
    }
    if (rc_child >= 20 && rc_child < 100) fprintf(stderr, "allocation failure, mode %d: forward %s, %s\n", mode, edkm_status_name(f), edkm_last_error());
    edkm_saved_state_destroy(s);
    edkm_runtime_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    edkm_runtime_get_stats(rt, &st);
    if (st.arena_allocated != st0.arena_allocated || st.heap_saved != 0 || st.live_saved_states != 0) rc_child = 40;
    edkm_layer_destroy(l);
    edkm_runtime_destroy(rt);
    return rc_child;
}

static void run_allocation_failure(int mode) {
    uint64_t seed = R64();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) _exit(allocation_failure_child(mode, seed));
    int st = 0;
    g_alloc_children++;
    if (pid < 0 || waitpid(pid, &st, 0) != pid) { fail("allocation failure: fork/wait failed"); return; }
    if (WIFSIGNALED(st)) { fail("allocation failure, saved mode %d: the child died of signal %d (seed %llu)", mode, WTERMSIG(st), (unsigned long long)seed); return; }
    int code = WEXITSTATUS(st);
    if (code == 100 || code == 101) { g_alloc_oom++; return; }
    if (code != 0) fail("allocation failure, saved mode %d: contract broken (child code %d, seed %llu)", mode, code, (unsigned long long)seed);
}
#endif

#endif /* EDKM_FUZZ_HOSTILE_H */
