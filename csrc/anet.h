/* anet.h — public C API of anetrain's portable core (the cffi cdef is read from this file). */
#ifndef ANET_H
#define ANET_H
#include <stddef.h>
#include <stdint.h>

/* Conventions: output pointer first, then const inputs, then sizes. No hidden state: every
 * function works only on the buffers it is given. Activations are channel-first [C, S] fp32
 * (element (c, t) at c*S + t); fp16 values are IEEE binary16 bit patterns stored as uint16_t. */

/* ---- fp32 <-> fp16 (fp16.c) ------------------------------------------------------------- */
/* Implementations: scalar reference (bit-exact, round-to-nearest-even, subnormals, inf, NaN),
 * F16C/AVX (x86-64, chosen by cpuid), NEON (aarch64), AVX-512F (x86-64, cpuid + OS state).
 * All implementations agree bit-for-bit on every input; NaNs come out quiet, keeping sign and
 * the top payload bits (what F16C and AArch64 FCVT do). */
enum { ANET_FP16_SCALAR = 0, ANET_FP16_F16C = 1, ANET_FP16_NEON = 2, ANET_FP16_AVX512 = 3,
       ANET_FP16_COUNT = 4 };
int anet_fp16_best_impl(void);            /* the fastest implementation this CPU supports */
int anet_fp16_impl_available(int impl);   /* 1 if `impl` is compiled in and this CPU runs it */
/* Convert n values with implementation `impl` (-1 = best). Returns 0, or -1 if impl unavailable. */
int anet_f32_to_f16(uint16_t *out, const float *in, size_t n, int impl);
int anet_f16_to_f32(float *out, const uint16_t *in, size_t n, int impl);

/* ---- packing into channel-first fp16 surfaces (pack.c) ------------------------------------ */
/* A surface buffer is fp16 [C, W] row-major (channel c occupies elements c*W .. c*W+W-1).
 * A segment is a channel range x spatial range inside it. `impl` is the fp16 implementation
 * (-1 = best). Returns 0, or -1 on out-of-range or an unavailable impl (nothing written). */

/* Write fp32 src [rows, cols] as fp16 into the segment at (c0, s0).
 * transpose = 0: src row r -> channel c0 + r, columns -> spatial s0 .. s0+cols-1 (segment rows x cols)
 * transpose = 1: src column j -> channel c0 + j, rows -> spatial s0 .. s0+rows-1 (segment cols x rows) */
int anet_pack_f16(uint16_t *dst, int dst_c, int dst_w, int c0, int s0,
                  const float *src, int rows, int cols, int transpose, int impl);
/* Read the fp16 segment at (c0, s0) of shape [rows, cols] into fp32 dst [rows, cols]. */
int anet_unpack_f16(float *dst, const uint16_t *src, int src_c, int src_w, int c0, int s0,
                    int rows, int cols, int impl);
/* Copy an fp16 segment [nch, width] from (src_c0, src_s0) of src to (dst_c0, dst_s0) of dst. */
int anet_copy_f16(uint16_t *dst, int dst_c, int dst_w, int dst_c0, int dst_s0,
                  const uint16_t *src, int src_c, int src_w, int src_c0, int src_s0,
                  int nch, int width);

/* ---- CPU ops (ops.c) ---------------------------------------------------------------------- */
/* y = exp(x) elementwise with ops.c's vectorisable exp (the one the kernels below use): max
 * relative error < 2e-7 over the normal range; overflow -> inf, underflow -> subnormal or 0,
 * -inf -> 0, NaN -> NaN. y may alias x. */
void anet_exp(float *y, const float *x, size_t n);

/* RMSNorm over channels, per position: r[t] = 1/sqrt(mean_d x[d,t]^2 + eps); y[d,t] = w[d]*x[d,t]*r[t].
 * y [D,S], rrms [S] (saved for the backward), x [D,S], w [D]. y may alias x. */
void anet_rmsnorm_fwd(float *y, float *rrms, const float *x, const float *w, int D, int S, float eps);
/* dx[d,t] = r[t]*(w[d]*dy[d,t] - x[d,t]*r[t]^2*c[t]/D), c[t] = sum_d w[d]*dy[d,t]*x[d,t];
 * dw[d] += sum_t dy[d,t]*x[d,t]*r[t] (accumulates). dx may alias dy. */
void anet_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w,
                      const float *rrms, int D, int S);

/* A target id that carries no loss (a masked prompt token, padding). */
enum { ANET_IGNORE = -1 };

/* Softmax cross-entropy over channel-first logits [V, S] with targets [S] (0 <= id < V, or
 * ANET_IGNORE), for the positions t0 <= t < t1 (disjoint ranges may run on different threads):
 * loss[t] = per-position loss (0 where ignored; the mean over the `counted` positions whose
 * target is not ignored = sum / counted, left to the caller so the order is fixed), dlogits
 * [V,S] = (softmax - onehot) * (scale / counted), 0 in an ignored position's column; dlogits may
 * alias logits. Returns 0, or -1 (nothing written) if a target in the range is out of [0, V)
 * and not ANET_IGNORE, or counted < 1. */
int anet_cross_entropy(float *dlogits, double *loss, const float *logits, const int32_t *targets,
                       int V, int S, int t0, int t1, float scale, int counted);

/* SwiGLU: gate = silu(h1) * h3, silu(x) = x * sigmoid(x). Elementwise over n values. */
void anet_swiglu_fwd(float *gate, const float *h1, const float *h3, size_t n);
/* Given dgate: dh1 = dgate*h3*s*(1 + h1*(1-s)), dh3 = dgate*h1*s, s = sigmoid(h1).
 * dh1/dh3 may alias dgate (dh1 written after dh3 is computed per element). */
void anet_swiglu_bwd(float *dh1, float *dh3, const float *dgate, const float *h1, const float *h3,
                     size_t n);

/* Causal softmax of attention scores in place: p [n,S,S] holds n (query t, key t') matrices;
 * row t becomes softmax_t'(scale * p[t,t']) over keys t' <= t, and keys t' > t become exactly 0
 * (never read: the upper triangle may hold anything). */
void anet_causal_softmax(float *p, int n, int S, float scale);
/* Its backward: ds[t,t'] = (dp[t,t'] - sum_u p[t,u]*dp[t,u]) * p[t,t'] * scale over t' <= t,
 * 0 above the diagonal. ds, p, dp [n,S,S]; ds may alias dp. */
void anet_causal_softmax_bwd(float *ds, const float *p, const float *dp, int n, int S,
                             float scale);

/* RoPE in place on channel-first x [n_heads*head_dim, S]; llama2.c interleaved pairs
 * (channel h*hd + 2i, h*hd + 2i + 1). cos/sin tables [S, head_dim/2] (position-major).
 * fwd: x0' = x0*c - x1*s, x1' = x0*s + x1*c.  bwd (transpose rotation): g0' = g0*c + g1*s,
 * g1' = -g0*s + g1*c. Returns 0, or -1 (x untouched) if its 2*head_dim/2*S-float scratch table
 * cannot be allocated. */
int anet_rope_fwd(float *x, const float *cos_t, const float *sin_t, int n_heads, int head_dim, int S);
int anet_rope_bwd(float *x, const float *cos_t, const float *sin_t, int n_heads, int head_dim, int S);

/* Embedding gather x[d,t] = emb[tok[t], d] (x [D,S], emb [V,D]) and scatter-add
 * demb[tok[t], d] += dx[d,t]. Return 0, or -1 if a token id is outside [0, V). */
int anet_embed_fwd(float *x, const float *emb, const int32_t *tok, int V, int D, int S);
int anet_embed_bwd(float *demb, const float *dx, const int32_t *tok, int V, int D, int S);

/* Fused AdamW, exactly torch.optim.AdamW (decoupled decay first, bias correction, eps after sqrt):
 *   p *= 1 - lr*wd; g' = g*grad_scale; m = b1*m + (1-b1)*g'; v = b2*v + (1-b2)*g'^2;
 *   p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps), bc1 = 1-b1^step, bc2 = 1-b2^step (step >= 1).
 * grad_scale folds gradient unscaling/clipping into the same pass. */
/* Hyperparameters are double, like torch's Python floats: derived constants (1-lr*wd, 1-b1,
 * lr/bc1, sqrt(bc2)) are formed in double and rounded to fp32 once, exactly as torch does. */
void anet_adamw(float *p, float *m, float *v, const float *g, size_t n, double lr, double beta1,
                double beta2, double eps, double wd, double grad_scale, int step);

/* Sum of squares, accumulated in double (global L2 norm = sqrt of the sum over all buffers). */
double anet_sumsq(const float *x, size_t n);

#endif /* ANET_H */
