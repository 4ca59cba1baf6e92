/* ane_internal.h — shared between the runtime's .m files; not part of the C API (no cdef). */
#ifndef ANE_INTERNAL_H
#define ANE_INTERNAL_H
#include "objc_compat.h"
#include "ane_runtime.h"
#include <IOSurface/IOSurface.h>

struct ane_surface {
    IOSurfaceRef ref; /* one reference owned */
    size_t bytes;     /* requested size; the allocation may be larger */
};

/* printf into the caller's error buffer (NULL or 0-length: ignored) */
void ane_set_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* UTF-8 of an NSString, "" for nil or a non-string */
const char *ane_cstr(id s);
/* "<what>: <domain> (<code>): <description>[ <userInfo>]" (nil: "<what>: failed without ...") */
void ane_set_nserror(char *err, size_t err_len, const char *what, NSError *e);
/* "<fn>: Objective-C exception <name>: <reason>" */
void ane_set_exception(char *err, size_t err_len, const char *fn, id ex);

#endif /* ANE_INTERNAL_H */
