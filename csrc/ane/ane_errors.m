/* ane_errors.m — the runtime's one-line error messages: printf, NSError and exception rendering.
 * Part of the ANE runtime; declared in ane_internal.h. */
#include "ane_internal.h"

#include <stdarg.h>
#include <stdio.h>

void ane_set_err(char *err, size_t err_len, const char *fmt, ...) {
    if (err == NULL || err_len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

const char *ane_cstr(id s) {
    const char *c = [s isKindOfClass:[NSString class]] ? [(NSString *)s UTF8String] : NULL;
    return c != NULL ? c : "";
}

/* "<what>: <domain> (<code>): <localizedDescription>[ <userInfo>]": the userInfo carries the
   compiler's detail text and NSUnderlyingError, which a rejected MIL program needs. */
void ane_set_nserror(char *err, size_t err_len, const char *what, NSError *e) {
    if (e == nil) {
        ane_set_err(err, err_len, "%s: failed without an NSError", what);
        return;
    }
    NSMutableDictionary *info = [NSMutableDictionary dictionary]; /* autoreleased */
    if ([e userInfo] != nil) [info addEntriesFromDictionary:[e userInfo]];
    [info removeObjectForKey:NSLocalizedDescriptionKey]; /* already in the message */
    ane_set_err(err, err_len, "%s: %s (%ld): %s%s%s", what, ane_cstr([e domain]), (long)[e code],
                ane_cstr([e localizedDescription]), [info count] ? " " : "",
                [info count] ? ane_cstr([info description]) : "");
}

void ane_set_exception(char *err, size_t err_len, const char *fn, id ex) {
    if ([ex isKindOfClass:[NSException class]])
        ane_set_err(err, err_len, "%s: Objective-C exception %s: %s", fn,
                    ane_cstr([(NSException *)ex name]), ane_cstr([(NSException *)ex reason]));
    else
        ane_set_err(err, err_len, "%s: Objective-C exception of class %s", fn,
                    ane_cstr(NSStringFromClass([ex class])));
}
