/*
 * hostile_comm.h: a communicator that lies (for known_bugs.c and fuzz_abi.c). It plays `world`
 * identical ranks like rel_comm (all_gather copies this rank's block into every slot, all_reduce_sum
 * multiplies by world) and corrupts the call it is told to: a nonzero status, or a status of 0 with
 * results no correct collective can give (NaN, Inf, huge, negative, fractional or rank-inconsistent
 * values; garbage gathered bytes), or it calls back into the runtime that invoked it (re-entrancy).
 * `expect` says which statuses the libedkm call may then return (a mask of 1 << edkm_status).
 * Header-only, plain C99 + POSIX.
 */
#ifndef EDKM_HOSTILE_COMM_H
#define EDKM_HOSTILE_COMM_H

#include "rel_common.h"

enum hc_kind {
    HC_HONEST = 0, HC_STATUS, HC_NAN, HC_INF, HC_NEG_INF, HC_HUGE, HC_NEGATIVE, HC_FRACTION, HC_PLUS_ONE, HC_ZERO_ALL,
    HC_GATHER_FF, HC_GATHER_RANDOM, HC_GATHER_OWN, HC_REENTER, HC_KINDS
};
static REL_UNUSED const char *const HC_NAMES[HC_KINDS] = {
    "honest", "status", "nan", "inf", "-inf", "huge", "negative", "fraction", "plus-one", "zero-all",
    "gather-ff", "gather-random", "gather-own", "reenter"
};

#define HC_BIT(s) (1u << (unsigned)(s))

typedef struct hostile_comm {
    int world;
    int kind;              /* what to do to the call number `at` (0 = the next call) */
    int at;
    int entry;             /* -1: a random nonzero entry; else this entry of an all-reduce */
    uint64_t rng;
    /* re-entrancy: the callback calls into this runtime (a layer or state of it) */
    edkm_layer *reenter_layer;
    edkm_saved_state *reenter_state;
    size_t reenter_n;      /* element count of the layer / state called back (default 64) */
    edkm_status reenter_status; /* what the nested call returned */
    int reentered;
    /* results */
    uint64_t calls;
    int applied;           /* the corruption was applied */
    unsigned expect;       /* statuses the outer call may return once it was applied */
    char what[160];
    /* a layer with a channel scale: its sharded forward all-gathers rows x 8 bytes of row extrema
     * (the factor exchange) while it has no factors; set by the caller around forward_shard */
    size_t exchange_bytes;
    int in_shard_forward;
    int scale_garbage;     /* a peer's extrema in the exchange were garbage (the factors may be too) */
} hostile_comm;

static REL_UNUSED void hc_reenter(hostile_comm *h) {
    size_t n = h->reenter_n ? h->reenter_n : 64;
    uint16_t *w = (uint16_t *)malloc(n * 2);
    float *out = (float *)malloc(n * 4), *g = (float *)malloc(n * 4);
    if (!w || !out || !g) { free(w); free(out); free(g); return; }
    for (size_t i = 0; i < n; i++) { w[i] = rel_float_to_f16((float)(i % 64) / 64); g[i] = 0.1f; }
    h->reentered = 1;
    if (h->reenter_state) {
        h->reenter_status = edkm_saved_state_backward(h->reenter_state, g, out, EDKM_DTYPE_F32, n, w);
    } else if (h->reenter_layer) {
        h->reenter_status = (h->calls & 1) ? edkm_layer_forward(h->reenter_layer, w, EDKM_DTYPE_F16, n, out, EDKM_DTYPE_F32, NULL)
                                            : edkm_layer_forward_shard(h->reenter_layer, w, EDKM_DTYPE_F16, 0, n, out, EDKM_DTYPE_F32, NULL);
    }
    free(w); free(out); free(g);
}

/* Picks the entry to corrupt: h->entry, else a random nonzero entry (the last if none). */
static REL_UNUSED size_t hc_pick(hostile_comm *h, const double *data, size_t count) {
    if (h->entry >= 0 && (size_t)h->entry < count) return (size_t)h->entry;
    size_t nonzero = 0;
    for (size_t i = 0; i < count; i++) nonzero += data[i] != 0;
    if (nonzero == 0) return count - 1;
    size_t pick = (size_t)(rel_splitmix(&h->rng) % nonzero);
    for (size_t i = 0; i < count; i++) if (data[i] != 0 && pick-- == 0) return i;
    return count - 1;
}

static REL_UNUSED int hc_all_reduce(void *user, double *data, size_t count) {
    hostile_comm *h = (hostile_comm *)user;
    int mine = h->at == 0;
    h->at--;
    h->calls++;
    if (h->world != 1) for (size_t i = 0; i < count; i++) data[i] *= (double)h->world;
    if (!mine || h->kind == HC_HONEST || count == 0) return 0;
    if (h->kind >= HC_GATHER_FF && h->kind <= HC_GATHER_OWN) { h->at = 0; return 0; }  /* meant for a gather */
    h->applied = 1;
    const unsigned comm = HC_BIT(EDKM_ERR_COMMUNICATOR);
    if (h->kind == HC_STATUS) { snprintf(h->what, sizeof h->what, "all_reduce_sum returns 3"); h->expect = comm; return 3; }
    if (h->kind == HC_REENTER) { hc_reenter(h); h->expect = HC_BIT(EDKM_OK); snprintf(h->what, sizeof h->what, "all_reduce_sum re-enters"); return 0; }
    /* The forward's histogram is 65,538 doubles: counts, non-finite flag, element total; a
     * backward's gradient sums are U + 2: sums, weights-changed flag, non-finite flag. */
    int histogram = count == 65538;
    if (h->kind == HC_ZERO_ALL) {
        memset(data, 0, count * sizeof *data);
        snprintf(h->what, sizeof h->what, "all_reduce_sum returns zeros");
        h->expect = histogram ? comm : HC_BIT(EDKM_OK);
        return 0;
    }
    size_t i = hc_pick(h, data, count);
    if (histogram && h->kind == HC_PLUS_ONE && i == 65536) i = 65537;  /* +1 on the flag is a valid "rank flagged" */
    int flag = histogram ? i == 65536 : i >= count - 2;
    double before = data[i];
    switch (h->kind) {
    case HC_NAN: data[i] = NAN; break;
    case HC_INF: data[i] = INFINITY; break;
    case HC_NEG_INF: data[i] = -INFINITY; break;
    case HC_HUGE: data[i] = 1e300; break;
    case HC_NEGATIVE: data[i] = data[i] != 0 ? -data[i] : -1; break;
    case HC_FRACTION: data[i] += 0.5; break;
    case HC_PLUS_ONE: data[i] += 1; break;
    default: break;
    }
    snprintf(h->what, sizeof h->what, "all_reduce_sum(count %zu) entry %zu: %g -> %g", count, i, before, data[i]);
    if (histogram) {
        h->expect = comm;
    } else if (flag) {
        /* a flag: must be an integral count of ranks, 0..world */
        h->expect = comm;
        if (h->kind == HC_PLUS_ONE)
            h->expect = HC_BIT(i == count - 2 ? EDKM_ERR_WEIGHTS_CHANGED : EDKM_ERR_NON_FINITE) | comm;
    } else {
        /* a gradient sum: any finite value is possible */
        h->expect = isfinite(data[i]) ? HC_BIT(EDKM_OK) : comm;
    }
    return 0;
}

static REL_UNUSED int hc_all_gather(void *user, const void *send, void *recv, size_t bytes) {
    hostile_comm *h = (hostile_comm *)user;
    int mine = h->at == 0;
    h->at--;
    h->calls++;
    for (int r = 0; r < h->world; r++) if (bytes) memcpy((char *)recv + (size_t)r * bytes, send, bytes);
    if (!mine || h->kind == HC_HONEST || bytes == 0) return 0;
    if (!(h->kind == HC_STATUS || h->kind == HC_REENTER || (h->kind >= HC_GATHER_FF && h->kind <= HC_GATHER_OWN))) {
        h->at = 0;  /* meant for an all-reduce */
        return 0;
    }
    h->applied = 1;
    const unsigned comm = HC_BIT(EDKM_ERR_COMMUNICATOR);
    if (h->kind == HC_STATUS) { snprintf(h->what, sizeof h->what, "all_gather returns 9"); h->expect = comm; return 9; }
    if (h->kind == HC_REENTER) { hc_reenter(h); h->expect = HC_BIT(EDKM_OK); snprintf(h->what, sizeof h->what, "all_gather re-enters"); return 0; }
    size_t total = (size_t)h->world * bytes;
    unsigned char *p = (unsigned char *)recv;
    if (h->kind == HC_GATHER_OWN) {
        for (size_t b = 0; b < bytes; b++) p[b] ^= 0x5A;          /* this rank's own block comes back changed */
    } else {
        size_t from = h->world > 1 ? bytes : 0;                    /* the peers' blocks (or the own one alone) */
        for (size_t b = from; b < total; b++)
            p[b] = h->kind == HC_GATHER_FF ? 0xFF : (unsigned char)rel_splitmix(&h->rng);
    }
    snprintf(h->what, sizeof h->what, "all_gather(%zu bytes x %d) returns %s", bytes, h->world, HC_NAMES[h->kind]);
    h->expect = comm;
    if (h->in_shard_forward && bytes == h->exchange_bytes && h->world > 1 && h->kind != HC_GATHER_OWN) {
        /* the peers' row extrema of the channel scale exchange: any floats are some slice's extrema
         * (NaN is skipped; an infinite one is a peer's Inf weight, which fails every rank) */
        h->expect = HC_BIT(EDKM_OK) | HC_BIT(EDKM_ERR_NON_FINITE);
        h->scale_garbage = 1;
        snprintf(h->what, sizeof h->what, "all_gather(%zu bytes x %d) of the channel scale exchange returns %s", bytes, h->world,
                 HC_NAMES[h->kind]);
    }
    return 0;
}

/* The process's virtual memory size (bytes), the base of an RLIMIT_AS set for allocation-failure
 * injection. */
static REL_UNUSED uint64_t hc_vm_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long pages = 0;
    if (f) { if (fscanf(f, "%llu", &pages) != 1) pages = 0; fclose(f); }
    return (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Arms the communicator: corrupt call number `at` (0 = the next) with `kind`. */
static REL_UNUSED void hc_arm(hostile_comm *h, int kind, int at, int entry) {
    h->kind = kind; h->at = at; h->entry = entry;
    h->applied = 0; h->expect = HC_BIT(EDKM_OK); h->what[0] = 0;
    h->reentered = 0; h->reenter_status = EDKM_OK; h->reenter_layer = NULL; h->reenter_state = NULL; h->reenter_n = 0;
}

static REL_UNUSED edkm_communicator hc_make(hostile_comm *h, int world, uint64_t seed) {
    memset(h, 0, sizeof *h);
    h->world = world;
    h->rng = seed;
    h->entry = -1;
    h->expect = HC_BIT(EDKM_OK);
    return rel_comm_struct(world, h, hc_all_gather, hc_all_reduce);
}

#endif /* EDKM_HOSTILE_COMM_H */
