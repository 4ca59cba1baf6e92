/* IOSurface.h — Linux-only stand-in for <IOSurface/IOSurface.h> with the SDK's names and
 * signatures, backed by heap memory (iosurface_stub.m). Only what anetrain and the mock use. Never
 * on macOS. */
#ifndef ANE_LINUX_IOSURFACE_H
#define ANE_LINUX_IOSURFACE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __APPLE__
#error "compat/linux/IOSurface is the Linux stand-in: use the SDK's IOSurface.framework on macOS"
#endif

/* Exported with default visibility even under -fvisibility=hidden: the Python wrapper promotes the
 * extension to RTLD_GLOBAL so a dlopen()ed mock framework binds to this single IOSurface instance,
 * as every framework in a macOS process binds to the one IOSurface.framework. */
#define IOSFC_API __attribute__((visibility("default")))

/* ---- minimal CoreFoundation types (GNUstep on Debian has no CoreFoundation) ------------------ */
typedef const void *CFTypeRef;
typedef const struct __CFString *CFStringRef;
typedef const struct __CFDictionary *CFDictionaryRef;
IOSFC_API CFTypeRef CFRetain(CFTypeRef cf);
IOSFC_API void CFRelease(CFTypeRef cf);

/* ---- IOSurface ------------------------------------------------------------------------------- */
typedef struct __IOSurface *IOSurfaceRef;
typedef int kern_return_t; /* <mach/kern_return.h>: what the SDK's Lock/Unlock return */
typedef uint32_t IOSurfaceLockOptions;
enum { kIOSurfaceLockReadOnly = 0x00000001, kIOSurfaceLockAvoidSync = 0x00000002 };

/* Property keys (CFStringRef in the SDK; NSString constants here). */
IOSFC_API extern const CFStringRef kIOSurfaceWidth;
IOSFC_API extern const CFStringRef kIOSurfaceHeight;
IOSFC_API extern const CFStringRef kIOSurfaceBytesPerElement;
IOSFC_API extern const CFStringRef kIOSurfaceBytesPerRow;
IOSFC_API extern const CFStringRef kIOSurfaceAllocSize;
IOSFC_API extern const CFStringRef kIOSurfacePixelFormat;

/* Returns a surface with retain count 1 (release with CFRelease), or NULL. */
IOSFC_API IOSurfaceRef IOSurfaceCreate(CFDictionaryRef properties);
IOSFC_API kern_return_t IOSurfaceLock(IOSurfaceRef buffer, IOSurfaceLockOptions options,
                                      uint32_t *seed);
IOSFC_API kern_return_t IOSurfaceUnlock(IOSurfaceRef buffer, IOSurfaceLockOptions options,
                                        uint32_t *seed);
IOSFC_API void *IOSurfaceGetBaseAddress(IOSurfaceRef buffer);
IOSFC_API size_t IOSurfaceGetAllocSize(IOSurfaceRef buffer);

/* ---- test hooks (Linux stub only) ------------------------------------------------------------ */
IOSFC_API int iosurface_stub_live(void);   /* surfaces created and not yet destroyed */
IOSFC_API int iosurface_stub_locked(void); /* locks currently held, over all surfaces */

#endif /* ANE_LINUX_IOSURFACE_H */
