/* pack.c — bounds-checked staging of fp32 matrices into channel-first fp16 surfaces and back. */
#include <string.h>

#include "anet.h"

/* Tile edge for the transposed pack: a 32x32 fp32 tile (4 KB) stays in L1. */
#define TILE 32

/* 1 if the segment [c0, c0+nch) x [s0, s0+width) lies inside a [C, W] surface. 64-bit sums so
 * that huge or negative arguments cannot wrap around. */
static int seg_ok(int C, int W, int c0, int s0, int nch, int width) {
    if (C < 0 || W < 0 || c0 < 0 || s0 < 0 || nch < 0 || width < 0) return 0;
    return (int64_t)c0 + nch <= C && (int64_t)s0 + width <= W;
}

/* impl -1 -> the best one, resolved once per call instead of once per row; -1 if unavailable */
static int resolve_impl(int impl) {
    if (impl == -1) return anet_fp16_best_impl();
    return anet_fp16_impl_available(impl) ? impl : -1;
}

int anet_pack_f16(uint16_t *dst, int dst_c, int dst_w, int c0, int s0,
                  const float *src, int rows, int cols, int transpose, int impl) {
    /* dst: [dst_c, dst_w] fp16 surface; src: [rows, cols] fp32 */
    if ((impl = resolve_impl(impl)) < 0) return -1;
    if (!transpose) {
        if (!seg_ok(dst_c, dst_w, c0, s0, rows, cols)) return -1;
        for (int r = 0; r < rows; r++)
            anet_f32_to_f16(dst + (size_t)(c0 + r) * dst_w + s0, src + (size_t)r * cols,
                            (size_t)cols, impl);
        return 0;
    }
    /* Segment is [cols, rows]: src column j -> channel c0+j. Walk 32x32 tiles so both the strided
     * reads of src and the strided writes of dst touch only TILE cache lines per tile. */
    if (!seg_ok(dst_c, dst_w, c0, s0, cols, rows)) return -1;
    float tile[TILE * TILE]; /* [jn, in] transposed fp32 tile */
    for (int i0 = 0; i0 < rows; i0 += TILE) {
        int in = rows - i0 < TILE ? rows - i0 : TILE;
        for (int j0 = 0; j0 < cols; j0 += TILE) {
            int jn = cols - j0 < TILE ? cols - j0 : TILE;
            for (int i = 0; i < in; i++) {
                const float *s = src + (size_t)(i0 + i) * cols + j0;
                for (int j = 0; j < jn; j++) tile[j * TILE + i] = s[j];
            }
            for (int j = 0; j < jn; j++) /* tile row j -> in contiguous fp16 of channel c0+j0+j */
                anet_f32_to_f16(dst + (size_t)(c0 + j0 + j) * dst_w + s0 + i0, tile + j * TILE,
                                (size_t)in, impl);
        }
    }
    return 0;
}

int anet_unpack_f16(float *dst, const uint16_t *src, int src_c, int src_w, int c0, int s0,
                    int rows, int cols, int impl) {
    /* dst: [rows, cols] fp32; src: [src_c, src_w] fp16 surface */
    if ((impl = resolve_impl(impl)) < 0) return -1;
    if (!seg_ok(src_c, src_w, c0, s0, rows, cols)) return -1;
    for (int r = 0; r < rows; r++)
        anet_f16_to_f32(dst + (size_t)r * cols, src + (size_t)(c0 + r) * src_w + s0, (size_t)cols,
                        impl);
    return 0;
}

int anet_copy_f16(uint16_t *dst, int dst_c, int dst_w, int dst_c0, int dst_s0,
                  const uint16_t *src, int src_c, int src_w, int src_c0, int src_s0,
                  int nch, int width) {
    /* dst: [dst_c, dst_w], src: [src_c, src_w]; segment [nch, width]. Overlapping segments of one
     * surface copy as if through a temporary: memmove per row, rows walked backward when the
     * destination lies after the source. */
    if (!seg_ok(dst_c, dst_w, dst_c0, dst_s0, nch, width)) return -1;
    if (!seg_ok(src_c, src_w, src_c0, src_s0, nch, width)) return -1;
    uint16_t *d0 = dst + (size_t)dst_c0 * dst_w + dst_s0;
    const uint16_t *s0 = src + (size_t)src_c0 * src_w + src_s0;
    int backward = (uintptr_t)d0 > (uintptr_t)s0;
    for (int k = 0; k < nch; k++) {
        int r = backward ? nch - 1 - k : k;
        memmove(d0 + (size_t)r * dst_w, s0 + (size_t)r * src_w, (size_t)width * sizeof(uint16_t));
    }
    return 0;
}
