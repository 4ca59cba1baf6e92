/* objc_compat.h — the Objective-C dialect anetrain uses: compiles with Apple clang and gcc+GNUstep
 * (ecosystem.md §2.5). Include it first in every .m file. */
#ifndef ANE_OBJC_COMPAT_H
#define ANE_OBJC_COMPAT_H

#import <Foundation/Foundation.h>

/* ---- manual retain/release only -------------------------------------------------------------- */
#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if __has_feature(objc_arc)
#error "anetrain's Objective-C is manual retain/release: build without -fobjc-arc"
#endif

/* GNUstep defines __bridge empty when ARC is off; Apple clang accepts it under MRC. Define it only
 * where neither is true (gcc without GNUstep's GSConfig.h). */
#if !defined(__bridge) && !defined(__clang__)
#define __bridge
#endif

/* ---- autorelease pool: created only by the exported C wrappers, never @autoreleasepool ------- */
/* gcc's Objective-C has no @autoreleasepool; NSAutoreleasePool under MRC works on both runtimes. */
#define ANE_POOL_BEGIN NSAutoreleasePool *ane_pool_ = [[NSAutoreleasePool alloc] init]
#define ANE_POOL_END [ane_pool_ drain]

/* ---- boxing without literals: gcc rejects @(x), @{...} and @[...] ---------------------------- */
#define ANE_NUM_INT(x) [NSNumber numberWithLongLong:(long long)(x)]
#define ANE_NUM_UINT(x) [NSNumber numberWithUnsignedLongLong:(unsigned long long)(x)]
#define ANE_EMPTY_DICT [NSDictionary dictionary]

#endif /* ANE_OBJC_COMPAT_H */
