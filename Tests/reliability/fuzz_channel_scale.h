/*
 * fuzz_channel_scale.h: the channel scale parts of fuzz_abi.c (included by it after its layer
 * model; uses its random source, oracle and bookkeeping).
 *
 * The model of edkm_channel_scale (include/edkm.h) the driver checks every call against:
 *   - factors: fixed by the first successful forward, forward_shard, init_centroids or export (or
 *     set_channel_scale), from the weights that call saw, by the header's formula in float
 *     arithmetic (MIN_MAX s_r = (max_r - min_r) / 2, ABS_MAX s_r = max_r |w|; a factor that is 0 or
 *     not finite is the row's largest magnitude, else 1). A sharded forward derives them from the
 *     rows' extrema within the slices (a row no slice touches: 1). A failed call fixes nothing
 *     (get_channel_scale stays EDKM_ERR_STATE). Read back with get_channel_scale bit for bit.
 *   - the clustered values are v = round_dtype(float(w) / s_r): a v that is NaN or Inf (a NaN/Inf
 *     weight, or a finite weight over a tiny factor) gives EDKM_ERR_NON_FINITE; the f16/bf16 key
 *     range and the output bound apply to v (the output to s_r f(v)).
 *   - backward: the clustering's gradient is taken of s_r dL/dw~ in float; a finite gradient
 *     whose product with its factor overflows float gives EDKM_ERR_NON_FINITE (nothing written,
 *     the state stays usable). Changed weights whose division rounds to the same v are the same
 *     clustering input: EDKM_OK or EDKM_ERR_WEIGHTS_CHANGED.
 *   - the histogram form needs fixed factors (EDKM_ERR_STATE before).
 *   - set_channel_scale: count = shape[0] (EDKM_ERR_SHAPE), each factor finite and > 0 (NaN,
 *     +-Inf, 0, -0, negative: EDKM_ERR_INVALID_ARGUMENT; subnormal and FLT_MAX are accepted), a
 *     layer without a channel scale EDKM_ERR_INVALID_ARGUMENT.
 */
#ifndef EDKM_FUZZ_CHANNEL_SCALE_H
#define EDKM_FUZZ_CHANNEL_SCALE_H

#include <float.h>

static uint64_t g_scale_fixed = 0, g_scale_checked = 0, g_scale_overflow = 0;

static size_t cs_rows(const LY *L) { return (size_t)L->shape[0]; }
static size_t cs_rowlen(const LY *L) { return L->N / (size_t)L->shape[0]; }
static int cs_on(const LY *L) { return L && (L->cfg.channel_scale == 1 || L->cfg.channel_scale == 2); }

/* The library's Swift.min / Swift.max on floats (NaN as the second argument is skipped). */
static float cs_min(float x, float y) { return y < x ? y : x; }
static float cs_max(float x, float y) { return y >= x ? y : x; }

/* The factor of a row from its smallest, largest and largest-magnitude elements (float arithmetic). */
static float cs_factor(float lo, float hi, float peak, int scheme) {
    float s = scheme == EDKM_CHANNEL_SCALE_MIN_MAX ? 0.5f * (hi - lo) : peak;
    return (s > 0 && isfinite(s)) ? s : (peak > 0 ? peak : 1.0f);
}

/*
 * The factors the library derives from `count` elements of type t holding the tensor's elements
 * [first, first + count): the whole tensor (buffer forms), or a slice (shard: the extrema of each
 * row within the slice, peak = max(-low, high), rows the slice does not touch 1).
 */
static void cs_model_factors(const LY *L, const void *w, int t, size_t first, size_t count, int shard, float *out) {
    size_t rows = cs_rows(L), rowlen = cs_rowlen(L);
    for (size_t r = 0; r < rows; r++) out[r] = 1.0f;
    size_t i = 0;
    while (i < count) {
        size_t r = (first + i) / rowlen, end = (r + 1) * rowlen - first;
        if (end > count) end = count;
        float lo = INFINITY, hi = -INFINITY, peak = 0;
        for (size_t j = i; j < end; j++) {
            float x = rel_load(w, t, j);
            lo = cs_min(lo, x);
            hi = cs_max(hi, x);
            peak = cs_max(peak, fabsf(x));
        }
        if (shard) { if (lo <= hi) out[r] = cs_factor(lo, hi, cs_max(-lo, hi), L->cfg.channel_scale); }
        else out[r] = cs_factor(lo, hi, peak, L->cfg.channel_scale);
        i = end;
    }
}

/* v_i = round_t(float(w_i) / s_r) for the count elements from tensor element `first`. */
static Buf cs_divided(const LY *L, const void *w, int t, size_t first, size_t count, const float *f) {
    Buf v = buf_new((count ? count : 1) * rel_width(t), 0);
    size_t rowlen = cs_rowlen(L);
    for (size_t i = 0; i < count; i++) rel_store(v.p, t, i, rel_load(w, t, i) / f[(first + i) / rowlen]);
    return v;
}

/* The factors of a call (the layer's fixed ones, else those of these weights) into a new array;
 * *vinfo: the Info of the divided values (non-finite also when a weight is). */
static float *cs_call_factors(const LY *L, const void *w, int t, size_t first, size_t count, int shard, const Info *winfo,
                              Info *vinfo) {
    float *f = (float *)malloc(cs_rows(L) * sizeof(float));
    if (L->scale_fixed) memcpy(f, L->factors, cs_rows(L) * sizeof(float));
    else cs_model_factors(L, w, t, first, count, shard, f);
    Buf v = cs_divided(L, w, t, first, count, f);
    scan_info(v.p, t, count, vinfo);
    vinfo->nonfinite |= winfo->nonfinite;
    buf_free(&v);
    return f;
}

static float cs_max_factor(const LY *L, const float *f) {
    float m = 0;
    for (size_t r = 0; r < cs_rows(L); r++) if (f[r] > m) m = f[r];
    return m;
}

/* After a successful call that fixes the factors (when the layer had none): they read back bit for
 * bit as the model derived them, and the layer keeps them. */
static void cs_after_success(LY *L, float *f, const char *op) {
    if (!cs_on(L) || !f) { free(f); return; }
    if (!L->scale_fixed) { L->factors = f; L->scale_fixed = 1; g_scale_fixed++; f = NULL; }
    else free(f);
    if (!CH(40)) return;
    size_t rows = cs_rows(L);
    float *got = (float *)malloc(rows * sizeof(float));
    g_scale_checked++;
    edkm_status s = CALL(edkm_layer_get_channel_scale(L->h, got, rows));
    if (check_status("edkm_layer_get_channel_scale(after a call that fixed them)", s, 0, 0)) {
        for (size_t r = 0; r < rows; r++) {
            if (!(isfinite(got[r]) && got[r] > 0)) { fail("after %s: channel scale factor %zu is %g (not finite and > 0)", op, r, (double)got[r]); break; }
            if (memcmp(&got[r], &L->factors[r], sizeof(float)) != 0) {
                fail("after %s: channel scale factor %zu is %.9g, the header's formula gives %.9g", op, r, (double)got[r], (double)L->factors[r]);
                break;
            }
        }
    }
    free(got);
}

/* After a failed call on a layer whose factors were not fixed: they still are not. */
static void cs_after_failure(LY *L, float *f, const char *op) {
    free(f);
    if (!cs_on(L) || L->scale_fixed || !CH(30)) return;
    size_t rows = cs_rows(L);
    float *got = (float *)malloc(rows * sizeof(float));
    edkm_status s = CALL(edkm_layer_get_channel_scale(L->h, got, rows));
    if (s != EDKM_ERR_STATE) fail("after a failed %s the layer's channel scale is %s (expected EDKM_ERR_STATE: nothing fixed)", op, edkm_status_name(s));
    free(got);
}

/* Some hostile factor values: invalid (*bad = 1) or valid but extreme. */
static float cs_hostile_factor(int *bad) {
    static const float invalid[] = { NAN, INFINITY, -INFINITY, 0.0f, -0.0f, -1.0f, -FLT_MIN };
    static const float extreme[] = { 1e-42f, 1.4e-45f, FLT_MIN, 1e-30f, 1e30f, 1e38f, FLT_MAX, 65504.0f, 6e-8f };
    if (CH(50)) { *bad = 1; return invalid[RN(7)]; }
    return extreme[RN(9)];
}

/* The target of a set/get_channel_scale call: a layer handle (live, or bad: NULL returned), the
 * factor count passed (shape[0], or a wrong one: EDKM_ERR_SHAPE) and the floats to allocate. */
static LY *cs_call_target(void **h, unsigned *fault, size_t *rows, size_t *count, size_t *alloc) {
    int l = layer_for_call(h, fault);
    LY *L = l >= 0 ? &g_ly[l] : NULL;
    *rows = L ? cs_rows(L) : 8;
    *count = *rows;
    if (CH(6)) { *count = wrong_count(*rows); if (L) *fault |= F_SHAPE; }
    *alloc = *count <= *rows ? *count : *rows;
    if (*alloc == 0) *alloc = 1;
    return L;
}

static void op_set_channel_scale(void) {
    void *h;
    unsigned fault = 0;
    size_t rows, count, alloc;
    LY *L = cs_call_target(&h, &fault, &rows, &count, &alloc);
    Buf f = buf_new(alloc * sizeof(float), 0);
    float *fp = (float *)f.p;
    int style = (int)RN(4), bad = 0;
    for (size_t r = 0; r < alloc; r++)
        fp[r] = style == 0 ? 1.0f : style == 1 ? (float)log_uniform(1e-3, 1e3) : style == 2 ? (float)log_uniform(1e-30, 1e30) : 0.5f;
    if (CH(35)) {
        int n = 1 + (int)RN(3);
        for (int j = 0; j < n; j++) { size_t i = (size_t)RN(alloc); fp[i] = cs_hostile_factor(&bad); }
    }
    bad = 0;   /* what the buffer holds (a later value may overwrite an invalid one) */
    for (size_t r = 0; r < alloc; r++) bad |= !(isfinite(fp[r]) && fp[r] > 0);
    if (L && count == rows && bad) fault |= F_ARG;
    if (L && !cs_on(L)) fault |= F_ARG;
    int null_f = CH(3);
    if (null_f) fault |= F_NULL;
    set_ctx("edkm_layer_set_channel_scale");
    trace("set_channel_scale(%p, count %zu of %zu)%s", h, count, rows, bad ? " [invalid factor]" : "");
    edkm_status s = CALL(edkm_layer_set_channel_scale((edkm_layer *)h, null_f ? NULL : fp, count));
    if (check_status("edkm_layer_set_channel_scale", s, fault, 0) && L) {
        if (!L->factors) L->factors = (float *)malloc(rows * sizeof(float));
        memcpy(L->factors, fp, rows * sizeof(float));
        if (!L->scale_fixed) g_scale_fixed++;
        L->scale_fixed = 1;
        cs_after_success(L, NULL, "edkm_layer_set_channel_scale");
    }
    buf_free(&f);
}

static void op_get_channel_scale(void) {
    void *h;
    unsigned fault = 0;
    size_t rows, count, alloc;
    LY *L = cs_call_target(&h, &fault, &rows, &count, &alloc);
    if (L && !cs_on(L)) fault |= F_ARG;
    else if (L && !L->scale_fixed) fault |= F_STATE;
    Buf out = buf_new(alloc * sizeof(float), 0);
    buf_canary(&out);
    int null_out = CH(3);
    if (null_out) fault |= F_NULL;
    set_ctx("edkm_layer_get_channel_scale");
    edkm_status s = CALL(edkm_layer_get_channel_scale((const edkm_layer *)h, null_out ? NULL : (float *)out.p, count));
    if (check_status("edkm_layer_get_channel_scale", s, fault, 0)) {
        if (L && L->scale_fixed && memcmp(out.p, L->factors, rows * sizeof(float)) != 0)
            fail("get_channel_scale differs from the factors the layer was given or derived");
    } else if (!buf_is_canary(&out)) fail("get_channel_scale failed (%s) but wrote its output", edkm_status_name(s));
    buf_free(&out);
}

static uint64_t g_hist_vs_buffer = 0, g_hist_backward = 0;

static int cs_cmp_u16(const void *a, const void *b) {
    uint16_t x = *(const uint16_t *)a, y = *(const uint16_t *)b;
    return (x > y) - (x < y);
}

/*
 * The histogram form against the buffer forward (include/edkm.h: "the caller forms
 * w~_i = s_r f[m_i] in float ... the buffer forward's out bit for bit"): from the same centroids, a
 * buffer forward of 16-bit weights w (f32 output) and a histogram forward of the keys of
 * v = round(w / s) (s = 1 without a channel scale) must agree: out_i == float(soft[m_i]) * s_r, bit
 * for bit, whatever the factors (set to extreme values, or derived from subnormal or huge weights).
 * Half of the time both keep saved states (saved modes that keep the uniquified algorithm) and the
 * backwards are compared too: the buffer backward's dL/dw_i against (g'_i h[m_i] + r[m_i]) / s_r
 * from backward_histogram on G_m = sum of g'_i over key m, g'_i = float(s_r g_i) (the header's
 * recipe), within float rounding (the buffer form rounds J^T g' to float before dividing by s_r).
 */
static void cs_compare_backwards(LY *L, edkm_saved_state *sb, edkm_saved_state *sh, const Buf *w, int t, const Buf *v,
                                 const uint16_t *keys, const size_t *offsets, size_t U, const float *f) {
    size_t N = L->N, E = L->E, rowlen = cs_rowlen(L);
    float *g = (float *)malloc(N * sizeof(float)), *gi = (float *)malloc(N * sizeof(float)), *gp = (float *)malloc(N * sizeof(float));
    double *G = (double *)calloc(U ? U : 1, sizeof(double)), *h = (double *)malloc((U ? U : 1) * sizeof(double));
    double *r = (double *)malloc((U ? U : 1) * sizeof(double));
    size_t *slot = (size_t *)malloc(N * sizeof(size_t));
    uint64_t st = R64();
    for (size_t i = 0; i < N; i++) g[i] = (float)(rel_normal(&st) * (rel_splitmix(&st) % 8 == 0 ? 10.0 : 0.01));
    for (size_t i = 0; i < N; i++) {
        size_t p = i / E, lo = offsets[p], hi = offsets[p + 1];
        uint16_t key = ((const uint16_t *)v->p)[i];
        while (hi - lo > 1) { size_t mid = (lo + hi) / 2; if (keys[mid] <= key) lo = mid; else hi = mid; }
        slot[i] = lo;
        gp[i] = g[i] * f[i / rowlen];
        G[lo] += (double)gp[i];
    }
    int finite = 1;
    for (size_t i = 0; i < N && finite; i++) finite = isfinite(gp[i]);
    if (!finite) goto out;   /* (the overflowing product is the backward op's case) */
    set_ctx("histogram form vs buffer forward: edkm_saved_state_backward");
    edkm_status a = CALL(edkm_saved_state_backward(sb, g, gi, EDKM_DTYPE_F32, N, w->p));
    if (!check_status("histogram form vs buffer forward: edkm_saved_state_backward", a, 0, F_OOM)) goto out;
    set_ctx("histogram form vs buffer forward: edkm_saved_state_backward_histogram");
    edkm_status b = CALL(edkm_saved_state_backward_histogram(sh, G, U, h, r));
    if (!check_status("histogram form vs buffer forward: edkm_saved_state_backward_histogram", b, 0, F_OOM)) goto out;
    g_hist_backward++;
    for (size_t i = 0; i < N; i++) {
        double s = f[i / rowlen], x = (double)gp[i] * h[slot[i]], want = (x + r[slot[i]]) / s;
        if (!isfinite((float)want) || !isfinite(gi[i])) continue;   /* beyond float: rounded to +-Inf, as documented */
        /* float rounding of the terms (1e-6 relative), of J^T g' to float before the division
         * (3e-45 / s: two subnormal steps of the undivided value), and of the result itself: a
         * subnormal dL/dw_i lies on the 1.4e-45 grid whatever s is (FLT_TRUE_MIN). */
        double tol = 1e-6 * (fabs(x) + fabs(r[slot[i]])) / s + 3e-45 / s + 1.5e-45;
        if (!(fabs((double)gi[i] - want) <= tol)) {
            fail("histogram form vs buffer backward: element %zu (row factor %g): (g' h + r) / s = %.9g, the buffer backward gave "
                 "%.9g (g %g, h %g, r %g; dtype %d, bits %u, N %zu, U %zu, tm %d)", i, s, want, (double)gi[i], (double)g[i],
                 h[slot[i]], r[slot[i]], t, L->cfg.bits, N, U, L->cfg.temperature_mode);
            break;
        }
    }
out:
    free(g); free(gi); free(gp); free(G); free(h); free(r); free(slot);
}

static void op_histogram_matches_buffer(void) {
    int l = pick_layer();
    if (l < 0) return;
    LY *L = &g_ly[l];
    RT *R = &g_rt[L->rt];
    if (L->N > 70000 || L->cfg.cluster_dim != 1 || L->cfg.algorithm == EDKM_ALGORITHM_DENSE || !L->has_centroids) return;
    if (cs_on(L) && !L->scale_fixed) return;
    /* saved states from both forms: only where the buffer forward keeps the uniquified algorithm,
     * and a backward needs no all-gather a mirrored communicator cannot give */
    int mode = R->saved_mode;
    int saving = CH(50) && (mode == EDKM_SAVED_HISTOGRAM || mode == EDKM_SAVED_UNIQUIFY ||
                            (mode == EDKM_SAVED_SHARD && R->world == 1));
    int t = CH(50) ? EDKM_DTYPE_F16 : EDKM_DTYPE_BF16;
    size_t N = L->N, P = L->groups, E = L->E;
    Info info;
    Buf w = make_weights(t, N, &info, 0);
    float *f = (float *)malloc(cs_rows(L) * sizeof(float));
    for (size_t r = 0; r < cs_rows(L); r++) f[r] = cs_on(L) ? L->factors[r] : 1.0f;
    Buf v = cs_on(L) ? cs_divided(L, w.p, t, 0, N, f) : w;
    Info vinfo;
    scan_info(v.p, t, N, &vinfo);
    size_t cc = 0;
    float *c0 = snapshot_centroids(L, &cc);
    edkm_saved_state *sb = NULL, *sh = NULL;
    if (vinfo.nonfinite || !c0) goto out;
    g_hist_vs_buffer++;
    float *out = (float *)malloc(N * sizeof(float));
    unsigned budget = R->budget ? F_BUDGET : 0;
    set_ctx("histogram form vs buffer forward: edkm_layer_forward");
    edkm_status s = CALL(edkm_layer_forward(L->h, w.p, (edkm_dtype)t, N, out, EDKM_DTYPE_F32, saving ? &sb : NULL));
    if (!check_status("histogram form vs buffer forward: edkm_layer_forward", s, 0, F_ARG | F_OOM | budget)) { sb = NULL; free(out); goto out; }
    L->forwards++;
    L->last_degenerate = 0;
    L->entropy_scale = 1.0;
    if (!check_status("histogram form vs buffer forward: edkm_layer_set_centroids", CALL(edkm_layer_set_centroids(L->h, c0, cc)), 0, 0)) {
        free(out);
        goto out;
    }
    /* per partition: the sorted distinct keys of v and their counts */
    uint16_t *keys = (uint16_t *)malloc(N * sizeof(uint16_t)), *part = (uint16_t *)malloc(E * sizeof(uint16_t));
    double *counts = (double *)malloc(N * sizeof(double)), *soft = (double *)malloc(N * sizeof(double));
    size_t *offsets = (size_t *)malloc((P + 1) * sizeof(size_t)), U = 0;
    offsets[0] = 0;
    for (size_t p = 0; p < P; p++) {
        memcpy(part, (const uint16_t *)v.p + p * E, E * sizeof(uint16_t));
        qsort(part, E, sizeof *part, cs_cmp_u16);
        for (size_t i = 0; i < E; i++) {
            if (i > 0 && part[i] == part[i - 1]) { counts[U - 1] += 1; continue; }
            keys[U] = part[i];
            counts[U++] = 1;
        }
        offsets[p + 1] = U;
    }
    set_ctx("histogram form vs buffer forward: edkm_layer_forward_histogram");
    s = CALL(edkm_layer_forward_histogram(L->h, (edkm_dtype)t, keys, counts, offsets, P, soft, sb ? &sh : NULL));
    if (check_status("histogram form vs buffer forward: edkm_layer_forward_histogram", s, 0, F_ARG | F_OOM | budget)) {
        L->forwards++;
        int same = 1;
        for (size_t i = 0; i < N; i++) {
            size_t p = i / E, lo = offsets[p], hi = offsets[p + 1];
            uint16_t key = ((const uint16_t *)v.p)[i];
            while (hi - lo > 1) { size_t mid = (lo + hi) / 2; if (keys[mid] <= key) lo = mid; else hi = mid; }
            float want = (float)soft[lo] * f[i / cs_rowlen(L)];
            if (memcmp(&want, &out[i], sizeof want) != 0) {
                fail("histogram form vs buffer forward: element %zu (row factor %g, key 0x%04x): float(soft) x s = %.9g, the buffer "
                     "forward gave %.9g (dtype %d, bits %u groups %zu N %zu U %zu tm %d)", i, (double)f[i / cs_rowlen(L)], key,
                     (double)want, (double)out[i], t, L->cfg.bits, P, N, U, L->cfg.temperature_mode);
                same = 0;
                break;
            }
        }
        if (same && sb && sh) cs_compare_backwards(L, sb, sh, &w, t, &v, keys, offsets, U, f);
    } else sh = NULL;
    free(keys); free(part); free(counts); free(soft); free(offsets); free(out);
out:
    VCALL(edkm_saved_state_destroy(sb));
    VCALL(edkm_saved_state_destroy(sh));
    free(c0);
    free(f);
    if (v.base != w.base) buf_free(&v);
    buf_free(&w);
}

#endif /* EDKM_FUZZ_CHANNEL_SCALE_H */
