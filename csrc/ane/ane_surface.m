/* ane_surface.m — IOSurfaces as flat byte buffers (upstream.md §2): create, lock, bounded copies.
 * Part of the ANE runtime; C API in ane_runtime.h. */
#include "ane_internal.h"

#include <stdlib.h>
#include <string.h>

static int surface_new_impl(ane_surface *s, size_t bytes, char *err, size_t err_len) {
    /* a flat byte buffer: width = bytes, height 1, 1 byte per element (upstream.md §2.1) */
    NSDictionary *props =
        [NSDictionary dictionaryWithObjectsAndKeys:ANE_NUM_UINT(bytes), (id)kIOSurfaceWidth,
                                                   ANE_NUM_INT(1), (id)kIOSurfaceHeight,
                                                   ANE_NUM_INT(1), (id)kIOSurfaceBytesPerElement,
                                                   ANE_NUM_UINT(bytes), (id)kIOSurfaceBytesPerRow,
                                                   ANE_NUM_UINT(bytes), (id)kIOSurfaceAllocSize,
                                                   ANE_NUM_INT(0), (id)kIOSurfacePixelFormat, nil];
    s->ref = IOSurfaceCreate((__bridge CFDictionaryRef)props);
    if (s->ref == NULL) {
        ane_set_err(err, err_len, "ane_surface_new: IOSurfaceCreate(%zu bytes) failed", bytes);
        return -1;
    }
    if (IOSurfaceGetAllocSize(s->ref) < bytes) {
        ane_set_err(err, err_len, "ane_surface_new: allocated %zu < %zu bytes",
                    (size_t)IOSurfaceGetAllocSize(s->ref), bytes);
        return -1;
    }
    s->bytes = bytes;
    return 0;
}

ane_surface *ane_surface_new(size_t bytes, char *err, size_t err_len) {
    if (bytes == 0) {
        ane_set_err(err, err_len, "ane_surface_new: size must be > 0");
        return NULL;
    }
    ane_surface *s = calloc(1, sizeof *s);
    if (s == NULL) {
        ane_set_err(err, err_len, "ane_surface_new: out of memory");
        return NULL;
    }
    int rc = -1;
    ANE_POOL_BEGIN;
    @try {
        rc = surface_new_impl(s, bytes, err, err_len);
    } @catch (id ex) {
        ane_set_exception(err, err_len, "ane_surface_new", ex);
        rc = -1;
    }
    ANE_POOL_END;
    if (rc != 0) {
        ane_surface_free(s);
        return NULL;
    }
    return s;
}

/* Plain C calls only below (IOSurface is a C API), so no pool or @try is needed. */
void ane_surface_free(ane_surface *s) {
    if (s == NULL) return;
    if (s->ref != NULL) CFRelease(s->ref);
    free(s);
}

static IOSurfaceLockOptions lock_opts(int read_only) {
    return read_only ? kIOSurfaceLockReadOnly : 0;
}

void *ane_surface_lock(ane_surface *s, int read_only, char *err, size_t err_len) {
    if (s == NULL) {
        ane_set_err(err, err_len, "ane_surface_lock: NULL surface");
        return NULL;
    }
    kern_return_t r = IOSurfaceLock(s->ref, lock_opts(read_only), NULL);
    if (r != 0) {
        ane_set_err(err, err_len, "ane_surface_lock: IOSurfaceLock returned 0x%x", (unsigned)r);
        return NULL;
    }
    void *base = IOSurfaceGetBaseAddress(s->ref);
    if (base == NULL) {
        IOSurfaceUnlock(s->ref, lock_opts(read_only), NULL);
        ane_set_err(err, err_len, "ane_surface_lock: no base address");
    }
    return base;
}

int ane_surface_unlock(ane_surface *s, int read_only, char *err, size_t err_len) {
    if (s == NULL) {
        ane_set_err(err, err_len, "ane_surface_unlock: NULL surface");
        return -1;
    }
    kern_return_t r = IOSurfaceUnlock(s->ref, lock_opts(read_only), NULL);
    if (r != 0) {
        ane_set_err(err, err_len, "ane_surface_unlock: IOSurfaceUnlock returned 0x%x", (unsigned)r);
        return -1;
    }
    return 0;
}

static int in_bounds(const ane_surface *s, size_t offset, size_t n, const char *fn, char *err,
                     size_t err_len) {
    if (s == NULL) {
        ane_set_err(err, err_len, "%s: NULL surface", fn);
        return 0;
    }
    if (offset > s->bytes || n > s->bytes - offset) {
        ane_set_err(err, err_len, "%s: [%zu, %zu+%zu) is outside the %zu-byte surface", fn, offset,
                    offset, n, s->bytes);
        return 0;
    }
    return 1;
}

int ane_surface_write(ane_surface *s, size_t offset, const void *src, size_t n, char *err,
                      size_t err_len) {
    if (!in_bounds(s, offset, n, "ane_surface_write", err, err_len)) return -1;
    if (n == 0) return 0;
    uint8_t *base = ane_surface_lock(s, 0, err, err_len);
    if (base == NULL) return -1;
    memcpy(base + offset, src, n);
    return ane_surface_unlock(s, 0, err, err_len);
}

int ane_surface_read(ane_surface *s, size_t offset, void *dst, size_t n, char *err,
                     size_t err_len) {
    if (!in_bounds(s, offset, n, "ane_surface_read", err, err_len)) return -1;
    if (n == 0) return 0;
    const uint8_t *base = ane_surface_lock(s, 1, err, err_len);
    if (base == NULL) return -1;
    memcpy(dst, base + offset, n);
    return ane_surface_unlock(s, 1, err, err_len);
}

int ane_surface_copy(ane_surface *dst, size_t dst_off, ane_surface *src, size_t src_off, size_t n,
                     char *err, size_t err_len) {
    if (!in_bounds(dst, dst_off, n, "ane_surface_copy (dst)", err, err_len) ||
        !in_bounds(src, src_off, n, "ane_surface_copy (src)", err, err_len))
        return -1;
    if (n == 0) return 0;
    /* destination read-write, then source read-only; unlock in reverse (upstream.md §2.2) */
    uint8_t *d = ane_surface_lock(dst, 0, err, err_len);
    if (d == NULL) return -1;
    if (src == dst) {
        memmove(d + dst_off, d + src_off, n);
        return ane_surface_unlock(dst, 0, err, err_len);
    }
    const uint8_t *s = ane_surface_lock(src, 1, err, err_len);
    if (s == NULL) {
        ane_surface_unlock(dst, 0, NULL, 0);
        return -1;
    }
    memcpy(d + dst_off, s + src_off, n);
    int rc = ane_surface_unlock(src, 1, err, err_len);
    return ane_surface_unlock(dst, 0, err, err_len) != 0 ? -1 : rc;
}
