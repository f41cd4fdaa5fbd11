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

static void op_set_channel_scale(void) {
    void *h;
    unsigned fault = 0;
    int l = layer_for_call(&h, &fault);
    LY *L = l >= 0 ? &g_ly[l] : NULL;
    size_t rows = L ? cs_rows(L) : 8, count = rows;
    if (CH(6)) { count = wrong_count(rows); if (L) fault |= F_SHAPE; }
    size_t alloc = count <= rows ? count : rows;
    if (alloc == 0) alloc = 1;
    Buf f = buf_new(alloc * sizeof(float), 0);
    float *fp = (float *)f.p;
    int style = (int)RN(4), bad = 0;
    for (size_t r = 0; r < alloc; r++)
        fp[r] = style == 0 ? 1.0f : style == 1 ? (float)log_uniform(1e-3, 1e3) : style == 2 ? (float)log_uniform(1e-30, 1e30) : 0.5f;
    if (CH(35)) {
        int n = 1 + (int)RN(3);
        for (int j = 0; j < n; j++) fp[RN(alloc)] = cs_hostile_factor(&bad);
    }
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
    int l = layer_for_call(&h, &fault);
    LY *L = l >= 0 ? &g_ly[l] : NULL;
    size_t rows = L ? cs_rows(L) : 8, count = rows;
    if (CH(6)) { count = wrong_count(rows); if (L) fault |= F_SHAPE; }
    if (L && !cs_on(L)) fault |= F_ARG;
    else if (L && !L->scale_fixed) fault |= F_STATE;
    size_t alloc = count <= rows ? count : rows;
    if (alloc == 0) alloc = 1;
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

#endif /* EDKM_FUZZ_CHANNEL_SCALE_H */
