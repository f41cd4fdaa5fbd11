/*
 * rel_common.h: helpers shared by the reliability programs (fuzz_abi.c, soak.c, budget.c,
 * concurrency.c): half-precision conversions, a seeded generator, clocks, RSS, in-process
 * communicators. Header-only (static functions), plain C99 + POSIX.
 */
#ifndef EDKM_REL_COMMON_H
#define EDKM_REL_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* clock_gettime, sysconf, pthread extras under -std=c99 */
#endif

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "edkm.h"

#if defined(__GNUC__)
#  define REL_UNUSED __attribute__((unused))
#else
#  define REL_UNUSED
#endif

/* ---------- numbers ---------- */

static REL_UNUSED float rel_bits_to_float(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static REL_UNUSED uint32_t rel_float_to_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

/* IEEE binary16 -> float (exact). */
static REL_UNUSED float rel_f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
    if (exp == 0) {
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    if (exp == 31) return rel_bits_to_float(sign | 0x7f800000u | (man << 13));
    return rel_bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

/* float -> IEEE binary16, round to nearest even (overflow -> Inf, NaN kept NaN). */
static REL_UNUSED uint16_t rel_float_to_f16(float f) {
    uint32_t x = rel_float_to_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to Inf */
    if (ax < 0x38800000u) {                                   /* subnormal or zero in f16 */
        float a = rel_bits_to_float(ax);
        float scaled = a * 16777216.0f;                        /* 2^24 */
        uint32_t m = (uint32_t)lrintf(scaled);                 /* ties to even (default rounding) */
        return (uint16_t)(sign | m);
    }
    uint32_t e = (ax >> 23) - 112, m = ax & 0x7fffffu;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h += 1;
    return (uint16_t)(sign | h);
}

static REL_UNUSED float rel_bf16_to_float(uint16_t h) { return rel_bits_to_float((uint32_t)h << 16); }
static REL_UNUSED uint16_t rel_float_to_bf16(float f) {
    uint32_t x = rel_float_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

/* Element i of a buffer of dtype t as float (t must be valid). */
static REL_UNUSED float rel_load(const void *p, int t, size_t i) {
    if (t == EDKM_DTYPE_F32) { float f; memcpy(&f, (const char *)p + 4 * i, 4); return f; }
    uint16_t h; memcpy(&h, (const char *)p + 2 * i, 2);
    return t == EDKM_DTYPE_F16 ? rel_f16_to_float(h) : rel_bf16_to_float(h);
}
static REL_UNUSED void rel_store(void *p, int t, size_t i, float v) {
    if (t == EDKM_DTYPE_F32) { memcpy((char *)p + 4 * i, &v, 4); return; }
    uint16_t h = t == EDKM_DTYPE_F16 ? rel_float_to_f16(v) : rel_float_to_bf16(v);
    memcpy((char *)p + 2 * i, &h, 2);
}
static REL_UNUSED size_t rel_width(int t) { return t == EDKM_DTYPE_F32 ? 4 : 2; }

/* ---------- generator (splitmix64) ---------- */

static REL_UNUSED uint64_t rel_splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static REL_UNUSED double rel_uniform(uint64_t *s) { return (double)(rel_splitmix(s) >> 11) * (1.0 / 9007199254740992.0); }
static REL_UNUSED double rel_normal(uint64_t *s) {
    double u1 = rel_uniform(s), u2 = rel_uniform(s);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---------- clocks and memory ---------- */

static REL_UNUSED double rel_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Resident set size of this process in bytes (from /proc/self/statm), 0 if unavailable. */
static REL_UNUSED uint64_t rel_rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long size = 0, resident = 0;
    int n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    return n == 2 ? (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

/* Threads of this process (entries of /proc/self/task), -1 if unavailable. */
static REL_UNUSED int rel_thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* Least-squares slope of y over x. */
static REL_UNUSED double rel_slope(const double *x, const double *y, int n) {
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int i = 0; i < n; i++) { sx += x[i]; sy += y[i]; sxx += x[i] * x[i]; sxy += x[i] * y[i]; }
    double den = n * sxx - sx * sx;
    return den == 0 ? 0 : (n * sxy - sx * sy) / den;
}

/* ---------- in-process communicators ---------- */

/*
 * A communicator for a single process that plays `world` identical ranks: all_gather copies this
 * rank's block into every slot, all_reduce_sum multiplies by world (the sum of `world` equal
 * contributions). With world = 1 it is the identity, i.e. a real one-rank communicator.
 * fail_next > 0 makes the next callbacks return nonzero (and counts down); calls counts callbacks.
 */
typedef struct rel_comm_ctx {
    int world;
    int fail_next;
    uint64_t calls;
    uint64_t failures;
} rel_comm_ctx;

static REL_UNUSED int rel_comm_all_gather(void *user, const void *send, void *recv, size_t bytes) {
    rel_comm_ctx *c = (rel_comm_ctx *)user;
    c->calls++;
    if (c->fail_next > 0) { c->fail_next--; c->failures++; return 7; }
    for (int r = 0; r < c->world; r++) {
        if (bytes) memcpy((char *)recv + (size_t)r * bytes, send, bytes);
    }
    return 0;
}

static REL_UNUSED int rel_comm_all_reduce(void *user, double *data, size_t count) {
    rel_comm_ctx *c = (rel_comm_ctx *)user;
    c->calls++;
    if (c->fail_next > 0) { c->fail_next--; c->failures++; return 5; }
    if (c->world != 1) for (size_t i = 0; i < count; i++) data[i] *= (double)c->world;
    return 0;
}

/* A rank-0 communicator of `world` ranks with the given callbacks and user data. */
static REL_UNUSED edkm_communicator rel_comm_struct(int world, void *user,
        int (*gather)(void *, const void *, void *, size_t),
        int (*reduce)(void *, double *, size_t)) {
    edkm_communicator c;
    memset(&c, 0, sizeof c);
    c.struct_size = (uint32_t)sizeof c;
    c.rank = 0;
    c.world_size = world;
    c.user_data = user;
    c.all_gather = gather;
    c.all_reduce_sum = reduce;
    return c;
}

static REL_UNUSED edkm_communicator rel_comm_make(rel_comm_ctx *ctx, int world) {
    ctx->world = world;
    return rel_comm_struct(world, ctx, rel_comm_all_gather, rel_comm_all_reduce);
}

#define REL_CHECK(call) do { edkm_status s_ = (call); if (s_ != EDKM_OK) { \
    fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call, edkm_status_name(s_), edkm_last_error()); \
    exit(1); } } while (0)

#endif /* EDKM_REL_COMMON_H */
