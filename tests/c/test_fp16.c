/* test_fp16.c — C-only exhaustive check: every fast fp16 path equals the scalar reference. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anet.h"

static const char *NAMES[] = {"scalar", "f16c", "neon", "avx512"};

#define N_RANDOM (1u << 24)

static int passed = 0, failed = 0;

static void report(const char *what, int impl, size_t mismatches, size_t first) {
    printf("%-28s impl=%s mismatches=%zu", what, NAMES[impl], mismatches);
    if (mismatches) printf(" (first at %zu)", first);
    printf("\n");
    if (mismatches) failed++; else passed++;
}

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* xorshift32: deterministic random fp32 bit patterns over the whole range */
static uint32_t rng_next(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    return *s = x;
}

/* Every half decoded (65,536 values) must equal the scalar decode bit-for-bit. */
static void test_decode(int impl) {
    uint16_t *h = malloc(65536 * sizeof *h);
    float *ref = malloc(65536 * sizeof *ref), *got = malloc(65536 * sizeof *got);
    for (uint32_t i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    anet_f16_to_f32(ref, h, 65536, 0);
    anet_f16_to_f32(got, h, 65536, impl);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < 65536; i++)
        if (f2u(ref[i]) != f2u(got[i]) && !bad++) first = i;
    report("decode all halves", impl, bad, first);
    free(h); free(ref); free(got);

    /* every half 40 times over at an odd offset: the large-buffer (streaming store) paths */
    size_t big = 40 * 65536;
    h = malloc((big + 1) * sizeof *h);
    ref = malloc((big + 1) * sizeof *ref);
    got = malloc((big + 1) * sizeof *got);
    for (size_t i = 0; i <= big; i++) h[i] = (uint16_t)(i * 40503u);
    anet_f16_to_f32(ref + 1, h + 1, big, 0);
    anet_f16_to_f32(got + 1, h + 1, big, impl);
    bad = 0;
    for (size_t i = 1; i <= big; i++)
        if (f2u(ref[i]) != f2u(got[i]) && !bad++) first = i;
    report("decode large, unaligned", impl, bad, first);
    free(h); free(ref); free(got);
}

/* Encode: every half's exact value, every midpoint between neighbours and one ulp either side,
 * signed; specials; then N_RANDOM random bit patterns. Fast must equal scalar bit-for-bit. */
static void test_encode(int impl) {
    size_t n = 8 * 65536 + N_RANDOM + 64, k = 0;
    float *x = malloc(n * sizeof *x);
    uint16_t *ref = malloc(n * sizeof *ref), *got = malloc(n * sizeof *got);
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i, h1 = (uint16_t)(i + 1);
        float a, b;
        anet_f16_to_f32(&a, &h, 1, 0);
        anet_f16_to_f32(&b, &h1, 1, 0);
        float mid = (float)(((double)a + (double)b) / 2);  /* exact for finite neighbours */
        x[k++] = a;
        x[k++] = -a;
        x[k++] = mid;
        x[k++] = -mid;
        x[k++] = u2f(f2u(mid) + 1);
        x[k++] = u2f(f2u(mid) - 1);
        x[k++] = u2f(f2u(a) + 1);
        x[k++] = u2f(f2u(a) | 0x1000u);
    }
    const float specials[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 65536.0f,
                              5.9604645e-8f, 2.9802322e-8f, 1e-45f, 3.4e38f, 6.1035156e-5f};
    for (size_t i = 0; i < sizeof specials / sizeof *specials; i++) x[k++] = specials[i];
    const uint32_t special_bits[] = {0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u,
                                     0x7f800001u, 0xff800001u, 0x7fbfffffu, 0x7fffffffu};
    for (size_t i = 0; i < sizeof special_bits / sizeof *special_bits; i++)
        x[k++] = u2f(special_bits[i]);
    uint32_t s = 0x9e3779b9u;
    while (k < n) x[k++] = u2f(rng_next(&s));
    anet_f32_to_f16(ref, x, n, 0);
    anet_f32_to_f16(got, x, n, impl);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (ref[i] != got[i] && !bad++) first = i;
    report("encode ties+random", impl, bad, first);
    anet_f32_to_f16(got + 1, x + 1, n - 1, impl);         /* odd output address, large n */
    bad = 0;
    for (size_t i = 1; i < n; i++)
        if (ref[i] != got[i] && !bad++) first = i;
    report("encode large, unaligned", impl, bad, first);

    /* tails: every length 0..67 at unaligned offsets, guard element after the end untouched */
    bad = 0;
    for (size_t len = 0; len < 68; len++)
        for (size_t off = 0; off < 3; off++) {
            uint16_t o[80], r[80];
            float back[80], rback[80];
            o[len] = 0xbeefu;
            anet_f32_to_f16(o, x + 2 * 65536 + off, len, impl);
            anet_f32_to_f16(r, x + 2 * 65536 + off, len, 0);
            if (o[len] != 0xbeefu || (len && memcmp(o, r, len * sizeof *o))) bad++;
            back[len] = 7.0f;
            anet_f16_to_f32(back, r, len, impl);
            anet_f16_to_f32(rback, r, len, 0);
            if (back[len] != 7.0f || (len && memcmp(back, rback, len * sizeof *back))) bad++;
        }
    report("tails and offsets", impl, bad, 0);
    free(x); free(ref); free(got);
}

/* usage: test_fp16 [IMPL...]  each named implementation must exist here (make neon: "neon"),
 * so a build that silently lost a fast path fails instead of testing nothing */
int main(int argc, char **argv) {
    for (int a = 1; a < argc; a++) {
        int found = 0;
        for (int impl = 1; impl < ANET_FP16_COUNT; impl++)
            if (!strcmp(argv[a], NAMES[impl])) found = anet_fp16_impl_available(impl) ? 1 : -1;
        if (found != 1) {
            printf("required impl=%s is %s\n", argv[a], found ? "not available" : "unknown");
            return 1;
        }
    }
    int best = anet_fp16_best_impl();
    printf("best impl=%s\n", NAMES[best]);
    if (anet_f32_to_f16(NULL, NULL, 0, 99) != -1) { printf("bad impl accepted\n"); failed++; }
    /* scalar (impl 0) is the reference every other path is compared with (and tests/test_fp16.py
     * checks it against numpy), so the loop starts at 1 */
    for (int impl = 1; impl < ANET_FP16_COUNT; impl++) {
        if (!anet_fp16_impl_available(impl)) {
            printf("impl=%s not available\n", NAMES[impl]);
            continue;
        }
        test_decode(impl);
        test_encode(impl);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
