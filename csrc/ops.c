/* ops.c — CPU kernels on channel-first [C, S] fp32: RMSNorm, CE, SwiGLU, attention softmax, RoPE,
 * embedding, AdamW. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anet.h"

/* Hot exp loops get AVX-512F and AVX2 clones next to the baseline (SSE2) one on x86-64 Linux with
 * GCC (ifunc dispatch by the loader; AVX-512F measured 20-30% faster than AVX2 on Zen 4). On
 * arm64 (Apple clang) NEON is the baseline and nothing is cloned. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define ANET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ANET_CLONES
#endif

/* Positions are processed in blocks of TB so per-position accumulators live on the stack while the
 * inner loops stream contiguous row segments of TB floats (channel-first: row c is x[c*S, +S)). */
#define TB 256

// ---- exp ----------------------------------------------------------------------------------------

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
/* c ? a : b on the bits. A plain ?: with a constant arm gets jump-threaded by GCC into separate
 * paths, one of them an overflowing constant multiply that -ftrapping-math (GCC's default) may
 * not if-convert, and the loop stays scalar; the mask form keeps one straight-line path. */
static inline float select_f(int c, float a, float b) {
    uint32_t m = -(uint32_t)c;
    return u2f((f2u(a) & m) | (f2u(b) & ~m));
}

/* exp(x) for fp32 without branches or libm calls, so loops over it auto-vectorise (libm's expf
 * is an opaque call). Cephes-style: x = n*ln2 + r with |r| <= ln2/2 (ln2 split in two so n*C1 is
 * exact), e^r by a degree-7 polynomial (Cephes expf's minimax coefficients), then scale by 2^n as
 * two exact power-of-two factors so that results in the subnormal range round once, correctly.
 * Max relative error vs exp in float64 8.1e-8 (< 1 ulp; test_ops.py checks it); overflow -> inf,
 * underflow -> subnormals, then 0; -inf -> 0, +inf -> inf, NaN -> NaN. */
static inline float exp_poly(float x) {
    /* clamp so n stays in [-150, 128]; NaN compares false and flows through untouched */
    float xc = select_f(x < -104.0f, -104.0f, x);
    xc = select_f(xc > 89.0f, 89.0f, xc);
    /* n = round(x/ln2) with the 1.5*2^23 trick: n lands in the low mantissa bits of z */
    const float shift = 12582912.0f;
    float z = xc * 1.44269504088896341f + shift;
    float n = z - shift;
    int32_t ni = (int32_t)(f2u(z) - f2u(shift));
    float r = xc - n * 0.693359375f;      /* C1: 9 significant bits, n*C1 exact */
    r = r - n * -2.12194440e-4f;          /* C2 = ln2 - C1 */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    /* 2^n = 2^a * 2^b with a = floor(n/2), b = n - a, both in [-75, 64]: normal floats */
    int32_t a = ni >> 1, b = ni - a;
    float sa = u2f((uint32_t)(a + 127) << 23), sb = u2f((uint32_t)(b + 127) << 23);
    return y * sa * sb;
}

ANET_CLONES
void anet_exp(float *y, const float *x, size_t n) {
    /* y, x: [n] (y may alias x) */
    for (size_t i = 0; i < n; i++) y[i] = exp_poly(x[i]);
}

// ---- reductions ---------------------------------------------------------------------------------

/* Reductions as LANES independent partial results combined in one fixed order: no
 * reassociation (no -ffast-math), so compilers vectorise the sums, and results do not depend on
 * the vector width. Sums accumulate in double. The max is not vectorised (a float max reduction
 * needs -ffinite-math-only), but its 16 independent chains keep it off the critical path. */
#define LANES 16

static inline float max_lanes(const float *x, size_t n) {
    float m[LANES], r = -INFINITY;
    for (int k = 0; k < LANES; k++) m[k] = -INFINITY;
    size_t u = 0;
    for (; u + LANES <= n; u += LANES)
        for (int k = 0; k < LANES; k++) m[k] = x[u + k] > m[k] ? x[u + k] : m[k];
    for (; u < n; u++) r = x[u] > r ? x[u] : r;
    for (int k = 0; k < LANES; k++) r = m[k] > r ? m[k] : r;
    return r;
}

static inline double sum_lanes(const float *x, size_t n) {
    double a[LANES] = {0}, r = 0.0;
    size_t u = 0;
    for (; u + LANES <= n; u += LANES)
        for (int k = 0; k < LANES; k++) a[k] += x[u + k];
    for (; u < n; u++) r += x[u];
    for (int k = 0; k < LANES; k++) r += a[k];
    return r;
}

static inline double dot_lanes(const float *x, const float *y, size_t n) {
    double a[LANES] = {0}, r = 0.0;
    size_t u = 0;
    for (; u + LANES <= n; u += LANES)
        for (int k = 0; k < LANES; k++) a[k] += (double)x[u + k] * y[u + k];
    for (; u < n; u++) r += (double)x[u] * y[u];
    for (int k = 0; k < LANES; k++) r += a[k];
    return r;
}

// ---- RMSNorm ------------------------------------------------------------------------------------

void anet_rmsnorm_fwd(float *y, float *rrms, const float *x, const float *w, int D, int S,
                      float eps) {
    /* y [D,S] (may alias x), rrms [S], x [D,S], w [D] */
    double ss[TB];
    float r[TB];
    for (int t0 = 0; t0 < S; t0 += TB) {
        int tn = S - t0 < TB ? S - t0 : TB;
        for (int t = 0; t < tn; t++) ss[t] = 0.0;
        for (int d = 0; d < D; d++) {
            const float *xr = x + (size_t)d * S + t0;
            for (int t = 0; t < tn; t++) ss[t] += (double)xr[t] * xr[t];
        }
        for (int t = 0; t < tn; t++) {
            r[t] = (float)(1.0 / sqrt(ss[t] / D + (double)eps));
            rrms[t0 + t] = r[t];
        }
        for (int d = 0; d < D; d++) {
            const float *xr = x + (size_t)d * S + t0;
            float *yr = y + (size_t)d * S + t0;
            const float wd = w[d];
            for (int t = 0; t < tn; t++) yr[t] = (xr[t] * r[t]) * wd;
        }
    }
}

ANET_CLONES
void anet_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w,
                      const float *rrms, int D, int S) {
    /* dx [D,S] (may alias dy), dw [D] (+=), dy [D,S], x [D,S], w [D], rrms [S] */
    double c[TB];
    float k[TB];
    for (int t0 = 0; t0 < S; t0 += TB) {
        int tn = S - t0 < TB ? S - t0 : TB;
        const float *r = rrms + t0;
        for (int t = 0; t < tn; t++) c[t] = 0.0;
        for (int d = 0; d < D; d++) {  /* c[t] = sum_d w*dy*x; dw[d] += sum_t dy*x*r (dy intact) */
            const float *dyr = dy + (size_t)d * S + t0, *xr = x + (size_t)d * S + t0;
            const double wd = w[d];
            double a[LANES] = {0}, acc = 0.0;  /* lanes: see the reductions section */
            int t = 0;
            for (; t + LANES <= tn; t += LANES)
                for (int l = 0; l < LANES; l++) {
                    double p = (double)dyr[t + l] * xr[t + l];
                    c[t + l] += wd * p;
                    a[l] += p * r[t + l];
                }
            for (; t < tn; t++) {
                double p = (double)dyr[t] * xr[t];
                c[t] += wd * p;
                acc += p * r[t];
            }
            for (int l = 0; l < LANES; l++) acc += a[l];
            dw[d] += (float)acc;
        }
        for (int t = 0; t < tn; t++) k[t] = (float)((double)r[t] * r[t] * r[t] * c[t] / D);
        for (int d = 0; d < D; d++) {  /* dx = r*w*dy - x*r^3*c/D */
            const float *dyr = dy + (size_t)d * S + t0, *xr = x + (size_t)d * S + t0;
            float *dxr = dx + (size_t)d * S + t0;
            const float wd = w[d];
            for (int t = 0; t < tn; t++) dxr[t] = r[t] * wd * dyr[t] - xr[t] * k[t];
        }
    }
}

// ---- softmax cross-entropy over [V, S] ----------------------------------------------------------

/* Channel-first rows are S floats apart, and one row segment per row is too little work for the
 * out-of-order core to overlap the next row's cache misses: without help every row costs about
 * one memory latency. Prefetch the segment PF_ROWS rows ahead (one prefetch per cache line). */
#define PF_ROWS 8
#define PREFETCH_SEG(p, n, rw)                                                                    \
    for (int pf_ = 0; pf_ < (n); pf_ += 16) __builtin_prefetch((p) + pf_, (rw))

/* 1 if every id of tok [n] is in [0, V) */
static int tokens_ok(const int32_t *tok, int V, int n) {
    for (int t = 0; t < n; t++)
        if (tok[t] < 0 || tok[t] >= V) return 0;
    return 1;
}

/* 1 if every target of tgt [n] is in [0, V) or ANET_IGNORE */
static int targets_ok(const int32_t *tgt, int V, int n) {
    for (int t = 0; t < n; t++)
        if (tgt[t] < ANET_IGNORE || tgt[t] >= V) return 0;
    return 1;
}

ANET_CLONES
int anet_cross_entropy(float *dlogits, double *loss, const float *logits, const int32_t *targets,
                       int V, int S, int t0, int t1, float scale, int counted) {
    /* dlogits [V,S] (may alias logits), loss [S], logits [V,S], targets [S]; positions [t0, t1) */
    if (!targets_ok(targets + t0, V, t1 - t0) || counted < 1) return -1;
    float mx[TB], tgt[TB], inv[TB];
    double sum[TB];
    const float g = scale / (float)counted;
    const size_t ahead = (size_t)PF_ROWS * S;
    for (int b0 = t0; b0 < t1; b0 += TB) {
        int tn = t1 - b0 < TB ? t1 - b0 : TB;
        /* pass 1: per-position max, and the target logit before dlogits may overwrite it */
        for (int t = 0; t < tn; t++) {
            mx[t] = -INFINITY;
            sum[t] = 0.0;
            int id = targets[b0 + t] == ANET_IGNORE ? 0 : targets[b0 + t];
            tgt[t] = logits[(size_t)id * S + b0 + t];
        }
        for (int v = 0; v < V; v++) {
            const float *row = logits + (size_t)v * S + b0;
            if (v + PF_ROWS < V) PREFETCH_SEG(row + ahead, tn, 0);
            for (int t = 0; t < tn; t++) mx[t] = row[t] > mx[t] ? row[t] : mx[t];
        }
        /* pass 2: e = exp(x - max) stored into dlogits, sums in double (in v order: a position's
         * loss does not depend on how positions are split between calls) */
        for (int v = 0; v < V; v++) {
            const float *row = logits + (size_t)v * S + b0;
            float *out = dlogits + (size_t)v * S + b0;
            if (v + PF_ROWS < V) {
                PREFETCH_SEG(row + ahead, tn, 0);
                if (out != row) PREFETCH_SEG(out + ahead, tn, 1);
            }
            for (int t = 0; t < tn; t++) {
                float e = exp_poly(row[t] - mx[t]);
                out[t] = e;
                sum[t] += e;
            }
        }
        /* loss_t = log(sum) + max - x_target; pass 3 normalises: d = (e/sum - onehot) * scale/n
         * (an ignored position: loss 0, d 0) */
        for (int t = 0; t < tn; t++) {
            int skip = targets[b0 + t] == ANET_IGNORE;
            loss[b0 + t] = skip ? 0.0 : log(sum[t]) + (double)mx[t] - (double)tgt[t];
            inv[t] = skip ? 0.0f : (float)(1.0 / sum[t]) * g;
        }
        for (int v = 0; v < V; v++) {
            float *out = dlogits + (size_t)v * S + b0;
            if (v + PF_ROWS < V) PREFETCH_SEG(out + ahead, tn, 1);
            for (int t = 0; t < tn; t++) out[t] *= inv[t];
        }
        for (int t = 0; t < tn; t++)
            if (targets[b0 + t] != ANET_IGNORE) dlogits[(size_t)targets[b0 + t] * S + b0 + t] -= g;
    }
    return 0;
}

// ---- SwiGLU -------------------------------------------------------------------------------------

ANET_CLONES
void anet_swiglu_fwd(float *gate, const float *h1, const float *h3, size_t n) {
    /* gate, h1, h3: [n] (gate may alias either input) */
    for (size_t i = 0; i < n; i++) {
        float a = h1[i];
        gate[i] = a / (1.0f + exp_poly(-a)) * h3[i];
    }
}

ANET_CLONES
void anet_swiglu_bwd(float *dh1, float *dh3, const float *dgate, const float *h1, const float *h3,
                     size_t n) {
    /* all [n]; outputs may alias dgate (every input is read before either output is written) */
    for (size_t i = 0; i < n; i++) {
        float a = h1[i], b = h3[i], dg = dgate[i];
        float s = 1.0f / (1.0f + exp_poly(-a));
        float d3 = dg * a * s;
        float d1 = dg * b * s * (1.0f + a * (1.0f - s));
        dh3[i] = d3;
        dh1[i] = d1;
    }
}

// ---- causal softmax over (n, S, S) attention scores ---------------------------------------------

ANET_CLONES
void anet_causal_softmax(float *p, int n, int S, float scale) {
    /* p [n,S,S] in place: scores (query t, key t') -> probabilities; only t' <= t is computed */
    for (int h = 0; h < n; h++)
        for (int t = 0; t < S; t++) {
            float *row = p + ((size_t)h * S + t) * S;  /* [S] keys of query t; t + 1 are live */
            for (int u = 0; u <= t; u++) row[u] *= scale;
            const float m = max_lanes(row, t + 1);
            for (int u = 0; u <= t; u++) row[u] = exp_poly(row[u] - m);
            const float inv = (float)(1.0 / sum_lanes(row, t + 1));
            for (int u = 0; u <= t; u++) row[u] *= inv;
            for (int u = t + 1; u < S; u++) row[u] = 0.0f;  /* masked keys: exactly 0 */
        }
}

ANET_CLONES
void anet_causal_softmax_bwd(float *ds, const float *p, const float *dp, int n, int S,
                             float scale) {
    /* ds, p, dp [n,S,S]; ds may alias dp (a row's dp is summed before any of it is written) */
    for (int h = 0; h < n; h++)
        for (int t = 0; t < S; t++) {
            size_t o = ((size_t)h * S + t) * S;
            const float *pr = p + o, *dpr = dp + o;  /* [S] row t; t + 1 live keys */
            float *out = ds + o;
            const float r = (float)dot_lanes(pr, dpr, t + 1);
            for (int u = 0; u <= t; u++) out[u] = (dpr[u] - r) * pr[u] * scale;
            for (int u = t + 1; u < S; u++) out[u] = 0.0f;  /* p = 0 there */
        }
}

// ---- RoPE ---------------------------------------------------------------------------------------

/* Rotate every pair by +angle (dir = 1, forward) or -angle (dir = -1, the transpose / backward). */
static int rope(float *x, const float *cos_t, const float *sin_t, int n_heads, int hd, int S,
                float dir) {
    /* x [n_heads*hd, S]; cos_t, sin_t [S, hd/2] */
    int half = hd / 2;
    /* Transposed tables ct, st [hd/2, S] make the inner loop contiguous in t (vectorisable). */
    float *ct = malloc(sizeof(float) * 2 * (size_t)half * (size_t)S);
    if (!ct) return -1;
    float *st = ct + (size_t)half * S;
    for (int t = 0; t < S; t++)
        for (int i = 0; i < half; i++) {
            ct[(size_t)i * S + t] = cos_t[(size_t)t * half + i];
            st[(size_t)i * S + t] = dir * sin_t[(size_t)t * half + i];
        }
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < half; i++) {
            float *x0 = x + (size_t)(h * hd + 2 * i) * S;
            float *x1 = x0 + S;
            const float *c = ct + (size_t)i * S, *s = st + (size_t)i * S;
            for (int t = 0; t < S; t++) {
                float a = x0[t], b = x1[t];
                x0[t] = a * c[t] - b * s[t];
                x1[t] = a * s[t] + b * c[t];
            }
        }
    free(ct);
    return 0;
}

int anet_rope_fwd(float *x, const float *cos_t, const float *sin_t, int n_heads, int head_dim,
                  int S) {
    return rope(x, cos_t, sin_t, n_heads, head_dim, S, 1.0f);
}

int anet_rope_bwd(float *x, const float *cos_t, const float *sin_t, int n_heads, int head_dim,
                  int S) {
    return rope(x, cos_t, sin_t, n_heads, head_dim, S, -1.0f);
}

// ---- embedding ----------------------------------------------------------------------------------

int anet_embed_fwd(float *x, const float *emb, const int32_t *tok, int V, int D, int S) {
    /* x [D,S], emb [V,D], tok [S]; blocks of 64 channels keep the strided writes in cache */
    if (!tokens_ok(tok, V, S)) return -1;
    for (int d0 = 0; d0 < D; d0 += 64) {
        int dn = D - d0 < 64 ? D - d0 : 64;
        for (int t = 0; t < S; t++) {
            const float *e = emb + (size_t)tok[t] * D + d0;
            for (int d = 0; d < dn; d++) x[(size_t)(d0 + d) * S + t] = e[d];
        }
    }
    return 0;
}

int anet_embed_bwd(float *demb, const float *dx, const int32_t *tok, int V, int D, int S) {
    /* demb [V,D] (+=), dx [D,S], tok [S]; repeated tokens accumulate in position order */
    if (!tokens_ok(tok, V, S)) return -1;
    for (int d0 = 0; d0 < D; d0 += 64) {
        int dn = D - d0 < 64 ? D - d0 : 64;
        for (int t = 0; t < S; t++) {
            float *e = demb + (size_t)tok[t] * D + d0;
            for (int d = 0; d < dn; d++) e[d] += dx[(size_t)(d0 + d) * S + t];
        }
    }
    return 0;
}

// ---- AdamW and the global norm ------------------------------------------------------------------

/* The fp32 constants of one AdamW step: exactly the scalars torch's single-tensor AdamW hands its
 * fp32 kernels (Python floats combined in double, then cast once). */
typedef struct {
    float decay, w1, b2, w2, neg_step, bc2_sqrt, eps, gs;
} adamw_k;

static inline float adamw_one(float *p, float *m, float *v, float g, const adamw_k *k) {
    float gi = g * k->gs;
    float pi = *p * k->decay;                          /* p.mul_(1 - lr*wd) */
    float mi = *m + k->w1 * (gi - *m);                 /* m.lerp_(g, 1-b1) */
    float vi = *v * k->b2 + (k->w2 * gi) * gi;         /* v.mul_(b2).addcmul_(g, g, 1-b2) */
    float denom = sqrtf(vi) / k->bc2_sqrt + k->eps;    /* (v.sqrt() / sqrt(bc2)).add_(eps) */
    *m = mi;
    *v = vi;
    return pi + (k->neg_step * mi) / denom;            /* p.addcdiv_(m, denom, -lr/bc1) */
}

/* The same operations 4 lanes at a time. sqrtf() keeps gcc from vectorising the C loop (errno),
 * so use the ISA's IEEE sqrt/div directly: results are bit-identical to adamw_one. */
#if defined(__SSE2__)
#include <immintrin.h>
static size_t adamw_simd(float *p, float *m, float *v, const float *g, size_t n,
                         const adamw_k *k) {
    const __m128 gs = _mm_set1_ps(k->gs), decay = _mm_set1_ps(k->decay), w1 = _mm_set1_ps(k->w1);
    const __m128 b2 = _mm_set1_ps(k->b2), w2 = _mm_set1_ps(k->w2), ns = _mm_set1_ps(k->neg_step);
    const __m128 bc = _mm_set1_ps(k->bc2_sqrt), eps = _mm_set1_ps(k->eps);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m128 gi = _mm_mul_ps(_mm_loadu_ps(g + i), gs);
        __m128 pi = _mm_mul_ps(_mm_loadu_ps(p + i), decay);
        __m128 mo = _mm_loadu_ps(m + i);
        __m128 mi = _mm_add_ps(mo, _mm_mul_ps(w1, _mm_sub_ps(gi, mo)));
        __m128 vi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + i), b2),
                               _mm_mul_ps(_mm_mul_ps(w2, gi), gi));
        __m128 den = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), bc), eps);
        _mm_storeu_ps(m + i, mi);
        _mm_storeu_ps(v + i, vi);
        _mm_storeu_ps(p + i, _mm_add_ps(pi, _mm_div_ps(_mm_mul_ps(ns, mi), den)));
    }
    return i;
}
#elif defined(__aarch64__)
#include <arm_neon.h>
static size_t adamw_simd(float *p, float *m, float *v, const float *g, size_t n,
                         const adamw_k *k) {
    const float32x4_t gs = vdupq_n_f32(k->gs), decay = vdupq_n_f32(k->decay);
    const float32x4_t w1 = vdupq_n_f32(k->w1), b2 = vdupq_n_f32(k->b2), w2 = vdupq_n_f32(k->w2);
    const float32x4_t ns = vdupq_n_f32(k->neg_step), bc = vdupq_n_f32(k->bc2_sqrt);
    const float32x4_t eps = vdupq_n_f32(k->eps);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {   /* vmulq/vaddq, never vfmaq: same rounding as the scalar code */
        float32x4_t gi = vmulq_f32(vld1q_f32(g + i), gs);
        float32x4_t pi = vmulq_f32(vld1q_f32(p + i), decay);
        float32x4_t mo = vld1q_f32(m + i);
        float32x4_t mi = vaddq_f32(mo, vmulq_f32(w1, vsubq_f32(gi, mo)));
        float32x4_t vi = vaddq_f32(vmulq_f32(vld1q_f32(v + i), b2),
                                   vmulq_f32(vmulq_f32(w2, gi), gi));
        float32x4_t den = vaddq_f32(vdivq_f32(vsqrtq_f32(vi), bc), eps);
        vst1q_f32(m + i, mi);
        vst1q_f32(v + i, vi);
        vst1q_f32(p + i, vaddq_f32(pi, vdivq_f32(vmulq_f32(ns, mi), den)));
    }
    return i;
}
#else
static size_t adamw_simd(float *p, float *m, float *v, const float *g, size_t n,
                         const adamw_k *k) {
    (void)p; (void)m; (void)v; (void)g; (void)n; (void)k;
    return 0;
}
#endif

/* 16 lanes where the CPU (and OS) has AVX-512F: one core is bound by the two divisions and the
 * square root at 4 lanes (110M params: 96 ms on one Zen 4 core, 64 ms at 16 lanes), which matters
 * when the second core is shared with a spinning BLAS worker. Same operations, bit-identical. */
#if defined(__x86_64__) && defined(__GNUC__)
#define ADAMW_AVX512 1
__attribute__((target("avx512f")))
static size_t adamw_avx512(float *p, float *m, float *v, const float *g, size_t n,
                           const adamw_k *k) {
    const __m512 gs = _mm512_set1_ps(k->gs), decay = _mm512_set1_ps(k->decay);
    const __m512 w1 = _mm512_set1_ps(k->w1), b2 = _mm512_set1_ps(k->b2);
    const __m512 w2 = _mm512_set1_ps(k->w2), ns = _mm512_set1_ps(k->neg_step);
    const __m512 bc = _mm512_set1_ps(k->bc2_sqrt), eps = _mm512_set1_ps(k->eps);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 gi = _mm512_mul_ps(_mm512_loadu_ps(g + i), gs);
        __m512 pi = _mm512_mul_ps(_mm512_loadu_ps(p + i), decay);
        __m512 mo = _mm512_loadu_ps(m + i);
        __m512 mi = _mm512_add_ps(mo, _mm512_mul_ps(w1, _mm512_sub_ps(gi, mo)));
        __m512 vi = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(v + i), b2),
                                  _mm512_mul_ps(_mm512_mul_ps(w2, gi), gi));
        __m512 den = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bc), eps);
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        _mm512_storeu_ps(p + i, _mm512_add_ps(pi, _mm512_div_ps(_mm512_mul_ps(ns, mi), den)));
    }
    return i;
}
#endif

void anet_adamw(float *p, float *m, float *v, const float *g, size_t n, double lr, double beta1,
                double beta2, double eps, double wd, double grad_scale, int step) {
    /* p, m, v, g: [n] */
    const double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
    const adamw_k k = {
        .decay = (float)(1.0 - lr * wd),
        .w1 = (float)(1.0 - beta1),
        .b2 = (float)beta2,
        .w2 = (float)(1.0 - beta2),
        .neg_step = (float)(-(lr / bc1)),
        .bc2_sqrt = (float)sqrt(bc2),
        .eps = (float)eps,
        .gs = (float)grad_scale,
    };
    size_t i = 0;
#ifdef ADAMW_AVX512
    /* not __builtin_cpu_supports: Apple's x86_64 toolchain has no __cpu_model to back it */
    if (anet_fp16_impl_available(ANET_FP16_AVX512))
        i = adamw_avx512(p, m, v, g, n, &k);
#endif
    i += adamw_simd(p + i, m + i, v + i, g + i, n - i, &k);
    for (; i < n; i++)
        p[i] = adamw_one(p + i, m + i, v + i, g[i], &k);
}

ANET_CLONES
double anet_sumsq(const float *x, size_t n) {
    /* x [n] */
    return dot_lanes(x, x, n);
}
