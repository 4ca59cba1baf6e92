/* fp16.c — fp32 <-> IEEE fp16: bit-exact scalar reference plus F16C / AVX-512 / NEON paths. */
#include <string.h>

#include "anet.h"

// ---- scalar reference ---------------------------------------------------------------------------

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Round-to-nearest-even, as IEEE 754 and numpy's float16 cast do. NaNs become quiet NaNs that keep
 * the sign and the top 9 payload bits; that is what F16C (vcvtps2ph) and AArch64 FCVT produce, so
 * every path agrees bit-for-bit on every input, NaNs included. */
static inline uint16_t h_from_f(float f) {
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu)); /* qNaN */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);              /* >= 65520 -> inf */
    if (ax >= 0x38800000u) {                                                /* normal (>= 2^-14) */
        uint32_t h = (ax - 0x38000000u) >> 13;                              /* rebias 127 -> 15 */
        uint32_t rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;             /* may carry to exp */
        return (uint16_t)(sign | h);
    }
    if (ax <= 0x33000000u) return (uint16_t)sign;                           /* <= 2^-25 -> +-0 */
    /* Subnormal half: value = m * 2^(e-150) = (m >> (126-e)) units of 2^-24. */
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;                                              /* 14 .. 24 */
    uint32_t h = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) h++;                       /* may reach normal */
    return (uint16_t)(sign | h);
}

/* Exact (every half is an fp32 value). NaNs are quieted, as F16C (vcvtph2ps) and FCVT do. */
static inline float f_from_h(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    if (e == 31) return bits_f32(sign | 0x7f800000u | (m ? (0x400000u | (m << 13)) : 0u));
    if (e != 0) return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
    if (m == 0) return bits_f32(sign);
    /* subnormal: m * 2^-24; normalise so the leading 1 sits at bit 10 */
    uint32_t k = 0;
    while (!(m & 0x400u)) { m <<= 1; k++; }
    return bits_f32(sign | ((113u - k) << 23) | ((m & 0x3ffu) << 13));
}

static void f32_to_f16_scalar(uint16_t *out, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = h_from_f(in[i]);
}

static void f16_to_f32_scalar(float *out, const uint16_t *in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = f_from_h(in[i]);
}

// ---- x86-64: F16C (8 lanes) and AVX-512F (16 lanes), chosen by cpuid ----------------------------
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>

/* Above this many elements the output goes straight to memory with non-temporal stores: it will
 * not be re-read from cache soon, and skipping the read-for-ownership saves a third of traffic. */
#define STREAM_MIN ((size_t)1 << 20)

__attribute__((target("avx,f16c")))
static void f32_to_f16_f16c(uint16_t *out, const float *in, size_t n) {
    size_t i = 0;
    if (n >= STREAM_MIN) {
        size_t head = ((16u - ((uintptr_t)out & 15u)) & 15u) / 2u;   /* halves until 16B-aligned */
        if ((uintptr_t)out % 2u == 0) {
            f32_to_f16_scalar(out, in, head);
            for (i = head; i + 16 <= n; i += 16) {
                __m128i a = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT);
                __m128i b = _mm256_cvtps_ph(_mm256_loadu_ps(in + i + 8), _MM_FROUND_TO_NEAREST_INT);
                _mm_stream_si128((__m128i *)(out + i), a);
                _mm_stream_si128((__m128i *)(out + i + 8), b);
            }
            _mm_sfence();
        }
    }
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT);
        __m128i b = _mm256_cvtps_ph(_mm256_loadu_ps(in + i + 8), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(out + i), a);
        _mm_storeu_si128((__m128i *)(out + i + 8), b);
    }
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
    f32_to_f16_scalar(out + i, in + i, n - i);
}

__attribute__((target("avx,f16c")))
static void f16_to_f32_f16c(float *out, const uint16_t *in, size_t n) {
    size_t i = 0;
    if (n >= STREAM_MIN && (uintptr_t)out % 4u == 0) {
        size_t head = ((32u - ((uintptr_t)out & 31u)) & 31u) / 4u;     /* floats until 32B-aligned */
        f16_to_f32_scalar(out, in, head);
        for (i = head; i + 8 <= n; i += 8)
            _mm256_stream_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
        _mm_sfence();
    }
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i)));
        __m256 b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i + 8)));
        _mm256_storeu_ps(out + i, a);
        _mm256_storeu_ps(out + i + 8, b);
    }
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
    f16_to_f32_scalar(out + i, in + i, n - i);
}

__attribute__((target("avx512f")))
static void f32_to_f16_avx512(uint16_t *out, const float *in, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
    f32_to_f16_scalar(out + i, in + i, n - i);
}

__attribute__((target("avx512f")))
static void f16_to_f32_avx512(float *out, const uint16_t *in, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(in + i))));
    f16_to_f32_scalar(out + i, in + i, n - i);
}

/* xgetbv via asm, so no "xsave" target attribute is needed (called only once OSXSAVE is set). */
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

#if defined(__APPLE__)
#include <stdlib.h>
#include <sys/sysctl.h>

/* macOS creates threads with the AVX-512 state masked off in XCR0 and enables it on the first
 * AVX-512 instruction (xnu osfmk/i386/fpu.c), so XCR0 cannot tell; Apple's documented test is the
 * hw.optional.avx512f sysctl. Kernels before macOS 12.2 (Darwin 21.3) could lose the opmask
 * registers across a context switch, so AVX-512 is not used there. */
static int apple_avx512_usable(void) {
    int on = 0;
    size_t n = sizeof on;
    if (sysctlbyname("hw.optional.avx512f", &on, &n, NULL, 0) != 0 || !on) return 0;
    char rel[32] = {0}; /* kern.osrelease: "major.minor.patch" */
    n = sizeof rel - 1;
    if (sysctlbyname("kern.osrelease", rel, &n, NULL, 0) != 0) return 0;
    char *end;
    long major = strtol(rel, &end, 10), minor = *end == '.' ? strtol(end + 1, NULL, 10) : 0;
    return major > 21 || (major == 21 && minor >= 3);
}
#endif

/* Bitmask of runnable implementations, from cpuid leaf 1 (OSXSAVE, AVX, F16C), the OS-enabled
 * register state in XCR0 (on macOS a sysctl instead, for AVX-512), and cpuid leaf 7 (AVX512F). */
static int detect_x86(void) {
    int mask = 1 << ANET_FP16_SCALAR;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return mask;
    const unsigned need = (1u << 27) | (1u << 28) | (1u << 29);             /* OSXSAVE, AVX, F16C */
    if ((c & need) != need) return mask;
    uint64_t xcr0 = read_xcr0();
    if ((xcr0 & 6u) != 6u) return mask;                                      /* XMM + YMM state */
    mask |= 1 << ANET_FP16_F16C;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
#if defined(__APPLE__)
        int zmm_state = apple_avx512_usable();
#else
        int zmm_state = (xcr0 & 0xe6u) == 0xe6u; /* opmask + ZMM upper halves + ZMM16-31 */
#endif
        if ((b & (1u << 16)) && zmm_state) mask |= 1 << ANET_FP16_AVX512;
    }
    return mask;
}
#endif

// ---- AArch64: NEON is baseline ------------------------------------------------------------------
#if defined(__aarch64__)
#include <arm_neon.h>

static void f32_to_f16_neon(uint16_t *out, const float *in, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float16x4_t a = vcvt_f16_f32(vld1q_f32(in + i));
        float16x4_t b = vcvt_f16_f32(vld1q_f32(in + i + 4));
        vst1q_u16(out + i, vreinterpretq_u16_f16(vcombine_f16(a, b)));
    }
    for (; i + 4 <= n; i += 4)
        vst1_u16(out + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(in + i))));
    f32_to_f16_scalar(out + i, in + i, n - i);
}

static void f16_to_f32_neon(float *out, const uint16_t *in, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint16x8_t h = vld1q_u16(in + i);
        vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h))));
        vst1q_f32(out + i + 4, vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h))));
    }
    for (; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(in + i))));
    f16_to_f32_scalar(out + i, in + i, n - i);
}
#endif

// ---- dispatch -----------------------------------------------------------------------------------

/* The only mutable global: the cpuid result, computed once (idempotent, so a race is harmless). */
static int g_impl_mask = 0;

static int impl_mask(void) {
    int m = __atomic_load_n(&g_impl_mask, __ATOMIC_RELAXED);
    if (m) return m;
    m = 1 << ANET_FP16_SCALAR;
#if defined(__x86_64__) || defined(__i386__)
    m = detect_x86();
#elif defined(__aarch64__)
    m |= 1 << ANET_FP16_NEON;
#endif
    __atomic_store_n(&g_impl_mask, m, __ATOMIC_RELAXED);
    return m;
}

int anet_fp16_impl_available(int impl) {
    return impl >= 0 && impl < ANET_FP16_COUNT && ((impl_mask() >> impl) & 1);
}

int anet_fp16_best_impl(void) {
    int m = impl_mask();
    /* F16C before AVX-512: the conversion is memory-bound and the 512-bit path measured slower
     * (64M floats: 21 vs 32 ms best-of-15 on a Xeon with AVX-512). */
    if (m & (1 << ANET_FP16_F16C)) return ANET_FP16_F16C;
    if (m & (1 << ANET_FP16_AVX512)) return ANET_FP16_AVX512;
    if (m & (1 << ANET_FP16_NEON)) return ANET_FP16_NEON;
    return ANET_FP16_SCALAR;
}

int anet_f32_to_f16(uint16_t *out, const float *in, size_t n, int impl) {
    if (impl == -1) impl = anet_fp16_best_impl();
    if (!anet_fp16_impl_available(impl)) return -1;
    switch (impl) {
#if defined(__x86_64__) || defined(__i386__)
    case ANET_FP16_F16C: f32_to_f16_f16c(out, in, n); return 0;
    case ANET_FP16_AVX512: f32_to_f16_avx512(out, in, n); return 0;
#endif
#if defined(__aarch64__)
    case ANET_FP16_NEON: f32_to_f16_neon(out, in, n); return 0;
#endif
    default: f32_to_f16_scalar(out, in, n); return 0;
    }
}

int anet_f16_to_f32(float *out, const uint16_t *in, size_t n, int impl) {
    if (impl == -1) impl = anet_fp16_best_impl();
    if (!anet_fp16_impl_available(impl)) return -1;
    switch (impl) {
#if defined(__x86_64__) || defined(__i386__)
    case ANET_FP16_F16C: f16_to_f32_f16c(out, in, n); return 0;
    case ANET_FP16_AVX512: f16_to_f32_avx512(out, in, n); return 0;
#endif
#if defined(__aarch64__)
    case ANET_FP16_NEON: f16_to_f32_neon(out, in, n); return 0;
#endif
    default: f16_to_f32_scalar(out, in, n); return 0;
    }
}
