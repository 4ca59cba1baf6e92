/* iosurface_stub.m — heap-backed IOSurface for Linux builds and the mock framework (never on
 * macOS). */
#include "objc_compat.h"
#include <IOSurface/IOSurface.h>
#include <stdlib.h>

/* ---- keys ------------------------------------------------------------------------------------ */
/* Constant NSStrings are valid static initializers with gcc's constant-string class. */
const CFStringRef kIOSurfaceWidth = (CFStringRef) @"IOSurfaceWidth";
const CFStringRef kIOSurfaceHeight = (CFStringRef) @"IOSurfaceHeight";
const CFStringRef kIOSurfaceBytesPerElement = (CFStringRef) @"IOSurfaceBytesPerElement";
const CFStringRef kIOSurfaceBytesPerRow = (CFStringRef) @"IOSurfaceBytesPerRow";
const CFStringRef kIOSurfaceAllocSize = (CFStringRef) @"IOSurfaceAllocSize";
const CFStringRef kIOSurfacePixelFormat = (CFStringRef) @"IOSurfacePixelFormat";

/* ---- the surface ----------------------------------------------------------------------------- */
/* The magic is a non-canonical x86-64/arm64 address, so it can never equal an object's isa pointer:
 * CFRetain/CFRelease use it to tell a surface from an NSObject. */
#define IOSFC_MAGIC 0x5346434f53554641ull

struct __IOSurface {
    uint64_t magic;
    int refs;  /* CFRetain/CFRelease count, atomic */
    int locks; /* IOSurfaceLock - IOSurfaceUnlock, atomic */
    size_t size;
    void *base; /* size bytes, zeroed */
};

static int g_live;   /* atomic */
static int g_locked; /* atomic */

int iosurface_stub_live(void) {
    return __atomic_load_n(&g_live, __ATOMIC_SEQ_CST);
}
int iosurface_stub_locked(void) {
    return __atomic_load_n(&g_locked, __ATOMIC_SEQ_CST);
}

static int is_surface(CFTypeRef cf) {
    return cf != NULL && ((const struct __IOSurface *)cf)->magic == IOSFC_MAGIC;
}

static size_t prop_size(NSDictionary *props, CFStringRef key) {
    id v = [props objectForKey:(id)key];
    return [v respondsToSelector:@selector(unsignedLongLongValue)]
               ? (size_t)[v unsignedLongLongValue]
               : 0;
}

IOSurfaceRef IOSurfaceCreate(CFDictionaryRef properties) {
    NSDictionary *props = (NSDictionary *)properties;
    size_t size = prop_size(props, kIOSurfaceAllocSize);
    if (size == 0)
        size = prop_size(props, kIOSurfaceBytesPerRow) * prop_size(props, kIOSurfaceHeight);
    if (size == 0) return NULL;
    struct __IOSurface *s = calloc(1, sizeof *s);
    if (s == NULL) return NULL;
    s->base = calloc(1, size);
    if (s->base == NULL) {
        free(s);
        return NULL;
    }
    s->magic = IOSFC_MAGIC;
    s->refs = 1;
    s->size = size;
    __atomic_add_fetch(&g_live, 1, __ATOMIC_SEQ_CST);
    return s;
}

kern_return_t IOSurfaceLock(IOSurfaceRef buffer, IOSurfaceLockOptions options, uint32_t *seed) {
    if (!is_surface(buffer)) return -1;
    __atomic_add_fetch(&buffer->locks, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&g_locked, 1, __ATOMIC_SEQ_CST);
    if (seed) *seed = 0;
    return 0;
}

kern_return_t IOSurfaceUnlock(IOSurfaceRef buffer, IOSurfaceLockOptions options, uint32_t *seed) {
    if (!is_surface(buffer) || __atomic_load_n(&buffer->locks, __ATOMIC_SEQ_CST) <= 0) return -1;
    __atomic_sub_fetch(&buffer->locks, 1, __ATOMIC_SEQ_CST);
    __atomic_sub_fetch(&g_locked, 1, __ATOMIC_SEQ_CST);
    if (seed) *seed = 0;
    return 0;
}

void *IOSurfaceGetBaseAddress(IOSurfaceRef buffer) {
    return is_surface(buffer) ? buffer->base : NULL;
}

size_t IOSurfaceGetAllocSize(IOSurfaceRef buffer) {
    return is_surface(buffer) ? buffer->size : 0;
}

/* ---- CFRetain / CFRelease: surfaces, or any NSObject ----------------------------------------- */
CFTypeRef CFRetain(CFTypeRef cf) {
    if (is_surface(cf))
        __atomic_add_fetch(&((struct __IOSurface *)cf)->refs, 1, __ATOMIC_SEQ_CST);
    else if (cf != NULL)
        [(id)cf retain];
    return cf;
}

void CFRelease(CFTypeRef cf) {
    if (is_surface(cf)) {
        struct __IOSurface *s = (struct __IOSurface *)cf;
        if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_SEQ_CST) == 0) {
            /* a surface freed while locked would leave g_locked wrong forever: settle it */
            __atomic_sub_fetch(&g_locked, s->locks, __ATOMIC_SEQ_CST);
            s->magic = 0;
            free(s->base);
            free(s);
            __atomic_sub_fetch(&g_live, 1, __ATOMIC_SEQ_CST);
        }
    } else if (cf != NULL) {
        [(id)cf release];
    }
}
