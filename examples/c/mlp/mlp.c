/* mlp.c: the examples' MLP, data set, RNG, float16 conversion and Adam (declared and documented in mlp.h). */
#include "mlp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%lu bytes)\n", (unsigned long)bytes);
        exit(1);
    }
    return p;
}

/* ============================ Deterministic RNG ============================ */

uint64_t rng_next(rng_t *r) { /* splitmix64 */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
double rng_uniform(rng_t *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }
int rng_below(rng_t *r, int n) { return (int)(rng_uniform(r) * n); }
double rng_normal(rng_t *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
void shuffle(int *a, int n, rng_t *r) {
    int i;
    for (i = n - 1; i > 0; --i) {
        int j = rng_below(r, i + 1), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ============================ float16 (IEEE binary16) bit patterns ============================ */

uint16_t f32_to_f16(float f) { /* round to nearest even */
    uint32_t x, sign, absx;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
    if (absx >= 0x47800000u) return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) { /* half subnormal or zero */
        uint32_t e = absx >> 23, m = (absx & 0x7fffffu) | 0x800000u, shift, hm, rem, half;
        if (e < 102) return (uint16_t)sign;
        shift = 126 - e;
        hm = m >> shift;
        rem = m & ((1u << shift) - 1u);
        half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (hm & 1u))) ++hm;
        return (uint16_t)(sign | hm);
    } else {
        uint32_t h = (absx >> 13) - (112u << 10), rem = absx & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
        return (uint16_t)(sign | h);
    }
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16, e = ((uint32_t)h >> 10) & 0x1fu, m = (uint32_t)h & 0x3ffu, x;
    float f;
    if (e == 0) {
        f = ldexpf((float)m, -24);
        return sign ? -f : f;
    }
    x = (e == 31) ? (sign | 0x7f800000u | (m << 13)) : (sign | ((e + 112u) << 23) | (m << 13));
    memcpy(&f, &x, 4);
    return f;
}

/* ============================ Data ============================ */

void make_data(uint64_t seed, dataset *train, dataset *test) {
    rng_t r;
    double *means = (double *)xmalloc(sizeof(double) * NCLS * MODES * DIM);
    double *R = (double *)xmalloc(sizeof(double) * DIM * DIM);
    double mu[DIM], sd[DIM];
    int i, j, k, s;
    r.s = seed;
    for (i = 0; i < NCLS * MODES * DIM; ++i) means[i] = rng_normal(&r);
    for (i = 0; i < DIM * DIM; ++i) R[i] = rng_normal(&r) / sqrt((double)DIM);
    for (s = 0; s < 2; ++s) {
        dataset *d = s == 0 ? train : test;
        d->n = s == 0 ? NTRAIN : NTEST;
        d->x = (float *)xmalloc(sizeof(float) * (size_t)d->n * DIM);
        d->y = (int *)xmalloc(sizeof(int) * (size_t)d->n);
        for (i = 0; i < d->n; ++i) {
            int c = rng_below(&r, NCLS), m = rng_below(&r, MODES);
            double z[DIM];
            const double *mean = means + ((size_t)c * MODES + (size_t)m) * DIM;
            for (j = 0; j < DIM; ++j) z[j] = mean[j] + MLP_NOISE * rng_normal(&r);
            for (j = 0; j < DIM; ++j) {
                double a = 0;
                for (k = 0; k < DIM; ++k) a += R[j * DIM + k] * z[k];
                d->x[(size_t)i * DIM + j] = (float)(z[j] + MLP_WARP * sin(2.0 * a));
            }
            d->y[i] = c;
        }
    }
    for (j = 0; j < DIM; ++j) {
        double a = 0, b = 0;
        for (i = 0; i < train->n; ++i) a += train->x[(size_t)i * DIM + j];
        mu[j] = a / train->n;
        for (i = 0; i < train->n; ++i) {
            double t = train->x[(size_t)i * DIM + j] - mu[j];
            b += t * t;
        }
        sd[j] = sqrt(b / train->n) + 1e-12;
    }
    for (s = 0; s < 2; ++s) {
        dataset *d = s == 0 ? train : test;
        for (i = 0; i < d->n; ++i)
            for (j = 0; j < DIM; ++j)
                d->x[(size_t)i * DIM + j] = (float)((d->x[(size_t)i * DIM + j] - mu[j]) / sd[j]);
    }
    free(means);
    free(R);
}

/* ============================ Model ============================ */

model_view view_of(const float *p) {
    model_view v;
    v.w1 = p + OFF_W1;
    v.b1 = p + OFF_B1;
    v.w2 = p + OFF_W2;
    v.b2 = p + OFF_B2;
    return v;
}

double mlp_batch(model_view m, const dataset *d, const int *idx, int n, float *grad, double grad_scale, int *correct) {
    double loss = 0;
    int s, i, j, hits = 0;
    for (s = 0; s < n; ++s) {
        const int ex = idx ? idx[s] : s;
        const float *x = d->x + (size_t)ex * DIM;
        float h[HID], z[NCLS], dz[NCLS], dh[HID];
        float zmax;
        double zsum = 0;
        int arg = 0;
        for (i = 0; i < HID; ++i) {
            const float *wr = m.w1 + (size_t)i * DIM;
            float a = m.b1[i];
            for (j = 0; j < DIM; ++j) a += wr[j] * x[j];
            h[i] = a > 0 ? a : 0;
        }
        for (i = 0; i < NCLS; ++i) {
            const float *wr = m.w2 + (size_t)i * HID;
            float a = m.b2[i];
            for (j = 0; j < HID; ++j) a += wr[j] * h[j];
            z[i] = a;
            if (a > z[arg]) arg = i;
        }
        hits += arg == d->y[ex];
        zmax = z[arg];
        for (i = 0; i < NCLS; ++i) zsum += exp((double)(z[i] - zmax));
        loss += log(zsum) - (double)(z[d->y[ex]] - zmax);
        if (!grad) continue;
        for (i = 0; i < NCLS; ++i)
            dz[i] = (float)((exp((double)(z[i] - zmax)) / zsum - (i == d->y[ex])) * grad_scale);
        for (j = 0; j < HID; ++j) dh[j] = 0;
        for (i = 0; i < NCLS; ++i) {
            float *gw = grad + OFF_W2 + (size_t)i * HID;
            const float *wr = m.w2 + (size_t)i * HID;
            for (j = 0; j < HID; ++j) {
                gw[j] += dz[i] * h[j];
                dh[j] += dz[i] * wr[j];
            }
            grad[OFF_B2 + i] += dz[i];
        }
        for (i = 0; i < HID; ++i) {
            float *gw;
            if (h[i] <= 0) continue;
            gw = grad + OFF_W1 + (size_t)i * DIM;
            for (j = 0; j < DIM; ++j) gw[j] += dh[i] * x[j];
            grad[OFF_B1 + i] += dh[i];
        }
    }
    if (correct) *correct = hits;
    return loss;
}

double accuracy(model_view m, const dataset *d) {
    int hits;
    mlp_batch(m, d, NULL, d->n, NULL, 0, &hits);
    return (double)hits / d->n;
}

void init_params(float *p, uint64_t seed) {
    rng_t r;
    int i;
    r.s = seed;
    memset(p, 0, sizeof(float) * NPARAM);
    for (i = 0; i < N_W1; ++i) p[OFF_W1 + i] = (float)(rng_normal(&r) * sqrt(2.0 / DIM));
    for (i = 0; i < N_W2; ++i) p[OFF_W2 + i] = (float)(rng_normal(&r) * sqrt(2.0 / HID));
}

/* ============================ Adam ============================ */

void adam_init(adam_t *a, int n) {
    a->n = n;
    a->t = 0;
    a->m = (float *)xmalloc(sizeof(float) * (size_t)n);
    a->v = (float *)xmalloc(sizeof(float) * (size_t)n);
    memset(a->m, 0, sizeof(float) * (size_t)n);
    memset(a->v, 0, sizeof(float) * (size_t)n);
}
void adam_reset(adam_t *a) {
    memset(a->m, 0, sizeof(float) * (size_t)a->n);
    memset(a->v, 0, sizeof(float) * (size_t)a->n);
    a->t = 0;
}
void adam_free(adam_t *a) {
    free(a->m);
    free(a->v);
}
void adam_step(adam_t *a, float *p, const float *g, double lr) {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    double c1, c2;
    int i;
    ++a->t;
    c1 = 1.0 - pow(b1, (double)a->t);
    c2 = 1.0 - pow(b2, (double)a->t);
    for (i = 0; i < a->n; ++i) {
        a->m[i] = (float)(b1 * a->m[i] + (1 - b1) * g[i]);
        a->v[i] = (float)(b2 * a->v[i] + (1 - b2) * (double)g[i] * g[i]);
        p[i] -= (float)(lr * (a->m[i] / c1) / (sqrt(a->v[i] / c2) + eps));
    }
}

double cosine_lr(double base, long step, long total) {
    return 0.5 * base * (1.0 + cos(3.141592653589793 * (double)step / (double)total));
}
