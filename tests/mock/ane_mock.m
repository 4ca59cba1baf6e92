/* ane_mock.m — test-only stand-in for AppleNeuralEngine.framework: the four private classes under
 * their real names, implementing the protocols of ane_private.h, plus C control functions (eval
 * callback, fault injection, counters) that tests reach through cffi's dlopen of the same .so.
 * Built by `make mock` into build/mock/libane_mock.so; IOSurface symbols are left undefined and
 * bind to the single stub inside anetrain._ane (see csrc/compat/linux/IOSurface/IOSurface.h). */
#include "objc_compat.h"
#include "ane_private.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOCK_API __attribute__((visibility("default")))
#define MOCK_DOMAIN @"com.apple.appleneuralengine"

// ---- control state ------------------------------------------------------------------------------

typedef int (*ane_mock_eval_fn)(void *user, const char *mil, size_t mil_len, int n_weights,
                                const char *const *names, const uint8_t *const *data,
                                const size_t *sizes, const void *in, size_t in_bytes, void *out,
                                size_t out_bytes, char *err, size_t err_len);

/* Stages that faults can be injected into (same numbers in tests/mock/mock_control.py). */
enum { MOCK_DESCRIPTOR, MOCK_COMPILE, MOCK_LOAD, MOCK_EVAL, MOCK_UNLOAD, MOCK_STAGES };
static const char *const STAGE_SELECTOR[MOCK_STAGES] = {
    "modelWithMILText:weights:optionsPlist:", "compileWithQoS:options:error:",
    "loadWithQoS:options:error:", "evaluateWithQoS:options:request:error:", "unloadWithQoS:error:"};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    ane_mock_eval_fn eval;
    void *user;
    int fail_count[MOCK_STAGES]; /* the next N calls of a stage fail with an NSError */
    long fail_code[MOCK_STAGES];
    char fail_desc[MOCK_STAGES][256];
    int raise_count[MOCK_STAGES]; /* the next N calls raise an NSException */
    int compile_limit;            /* > 0: compiles past this many fail, like the real ~119 */
    int compiles;                 /* successful compiles in this process; never decreases */
    int calls[MOCK_STAGES];
    int live_objects; /* mock instances alive */
    int loaded;       /* models loaded and not unloaded */
} g;

MOCK_API void ane_mock_set_eval(ane_mock_eval_fn fn, void *user) {
    pthread_mutex_lock(&g_lock);
    g.eval = fn;
    g.user = user;
    pthread_mutex_unlock(&g_lock);
}

MOCK_API int ane_mock_fail(int stage, int count, long code, const char *desc) {
    if (stage < 0 || stage >= MOCK_STAGES) return -1;
    pthread_mutex_lock(&g_lock);
    g.fail_count[stage] = count;
    g.fail_code[stage] = code;
    snprintf(g.fail_desc[stage], sizeof g.fail_desc[stage], "%s", desc ? desc : "");
    pthread_mutex_unlock(&g_lock);
    return 0;
}

MOCK_API int ane_mock_raise(int stage, int count) {
    if (stage < 0 || stage >= MOCK_STAGES) return -1;
    pthread_mutex_lock(&g_lock);
    g.raise_count[stage] = count;
    pthread_mutex_unlock(&g_lock);
    return 0;
}

MOCK_API void ane_mock_set_compile_limit(int n) {
    pthread_mutex_lock(&g_lock);
    g.compile_limit = n;
    pthread_mutex_unlock(&g_lock);
}

/* Clears callback, faults, limit and call counts; the process-wide compile count stays, like the
 * real budget, unless reset_compiles. Live counters always stay: they measure leaks. */
MOCK_API void ane_mock_reset(int reset_compiles) {
    pthread_mutex_lock(&g_lock);
    g.eval = NULL;
    g.user = NULL;
    memset(g.fail_count, 0, sizeof g.fail_count);
    memset(g.raise_count, 0, sizeof g.raise_count);
    memset(g.calls, 0, sizeof g.calls);
    g.compile_limit = 0;
    if (reset_compiles) g.compiles = 0;
    pthread_mutex_unlock(&g_lock);
}

static int read_counter(const int *c) {
    pthread_mutex_lock(&g_lock);
    int v = *c;
    pthread_mutex_unlock(&g_lock);
    return v;
}

MOCK_API int ane_mock_live_objects(void) {
    return read_counter(&g.live_objects);
}
MOCK_API int ane_mock_loaded_models(void) {
    return read_counter(&g.loaded);
}
MOCK_API int ane_mock_compiles(void) {
    return read_counter(&g.compiles);
}
MOCK_API int ane_mock_calls(int stage) {
    return stage >= 0 && stage < MOCK_STAGES ? read_counter(&g.calls[stage]) : -1;
}

static void add_counter(int *c, int d) {
    pthread_mutex_lock(&g_lock);
    *c += d;
    pthread_mutex_unlock(&g_lock);
}

static NSError *mock_error(long code, NSString *desc) {
    return [NSError errorWithDomain:MOCK_DOMAIN
                               code:code
                           userInfo:[NSDictionary dictionaryWithObject:desc
                                                                forKey:NSLocalizedDescriptionKey]];
}

/* An NSError whose userInfo also holds detail beyond the description (as the compiler's do). */
static NSError *mock_error_detail(long code, NSString *desc, NSString *detail) {
    NSDictionary *info = [NSDictionary
        dictionaryWithObjectsAndKeys:desc, NSLocalizedDescriptionKey, detail, @"detail", nil];
    return [NSError errorWithDomain:MOCK_DOMAIN code:code userInfo:info];
}

/* Count the call and apply an injected fault: raises, or returns an NSError (autoreleased), or nil.
 */
static NSError *take_fault(int stage) {
    int raise = 0;
    NSError *e = nil;
    pthread_mutex_lock(&g_lock);
    g.calls[stage]++;
    if (g.raise_count[stage] > 0) {
        g.raise_count[stage]--;
        raise = 1;
    } else if (g.fail_count[stage] > 0) {
        g.fail_count[stage]--;
        e = mock_error(g.fail_code[stage], [NSString stringWithUTF8String:g.fail_desc[stage]]);
    }
    pthread_mutex_unlock(&g_lock);
    if (raise)
        [NSException raise:NSInternalInconsistencyException
                    format:@"ane_mock: injected exception in %s", STAGE_SELECTOR[stage]];
    return e;
}

static BOOL fail_with(NSError **error, NSError *e) {
    if (error != NULL) *error = e;
    return NO;
}

// ---- base class: live-object counting
// ------------------------------------------------------------

@interface ANEMockBase : NSObject
@end

@implementation ANEMockBase
- (id)init {
    self = [super init];
    if (self != nil) add_counter(&g.live_objects, 1);
    return self;
}
- (void)dealloc {
    add_counter(&g.live_objects, -1);
    [super dealloc];
}
@end

// ---- _ANEInMemoryModelDescriptor
// -------------------------------------------------------------------

@interface _ANEInMemoryModelDescriptor : ANEMockBase <ANEInMemoryModelDescriptor> {
    NSData *_milText;
    NSDictionary *_weights;
}
- (NSData *)milText;
- (NSDictionary *)weights;
@end

@implementation _ANEInMemoryModelDescriptor
+ (id)modelWithMILText:(NSData *)milText
               weights:(NSDictionary *)weights
          optionsPlist:(id)optionsPlist {
    if (take_fault(MOCK_DESCRIPTOR) != nil) return nil;
    if (![milText isKindOfClass:[NSData class]] || [milText length] == 0) return nil;
    /* nil weights are accepted here and fail at compile: the real framework's "silent compile
     * failure" (upstream.md §1.5) */
    if (weights != nil && ![weights isKindOfClass:[NSDictionary class]]) return nil;
    for (id key in weights) {
        id entry = [weights objectForKey:key];
        if (![key isKindOfClass:[NSString class]] || ![entry isKindOfClass:[NSDictionary class]] ||
            ![[entry objectForKey:@"data"] isKindOfClass:[NSData class]] ||
            ![[entry objectForKey:@"offset"] isKindOfClass:[NSNumber class]])
            return nil;
    }
    _ANEInMemoryModelDescriptor *d = [[[self alloc] init] autorelease];
    d->_milText = [milText copy];
    d->_weights = [weights copy];
    return d;
}
- (NSData *)milText {
    return _milText;
}
- (NSDictionary *)weights {
    return _weights;
}
- (void)dealloc {
    [_milText release];
    [_weights release];
    [super dealloc];
}
@end

// ---- _ANEIOSurfaceObject
// ---------------------------------------------------------------------------

@interface _ANEIOSurfaceObject : ANEMockBase <ANEIOSurfaceObject> {
    IOSurfaceRef _surface;
}
- (IOSurfaceRef)ioSurface;
@end

@implementation _ANEIOSurfaceObject
+ (id)objectWithIOSurface:(IOSurfaceRef)surface {
    if (surface == NULL) return nil;
    _ANEIOSurfaceObject *o = [[[self alloc] init] autorelease];
    o->_surface = (IOSurfaceRef)CFRetain(surface);
    return o;
}
- (IOSurfaceRef)ioSurface {
    return _surface;
}
- (void)dealloc {
    if (_surface != NULL) CFRelease(_surface);
    [super dealloc];
}
@end

// ---- _ANERequest
// ----------------------------------------------------------------------------------

@interface _ANERequest : ANEMockBase <ANERequest> {
    NSArray *_inputs, *_outputs, *_inputIndices, *_outputIndices;
    NSNumber *_procedureIndex;
}
- (NSArray *)inputArray;
- (NSArray *)outputArray;
@end

@implementation _ANERequest
+ (id)requestWithInputs:(NSArray *)inputs
           inputIndices:(NSArray *)inputIndices
                outputs:(NSArray *)outputs
          outputIndices:(NSArray *)outputIndices
          weightsBuffer:(id)weightsBuffer
              perfStats:(id)perfStats
         procedureIndex:(NSNumber *)procedureIndex {
    if (![procedureIndex isKindOfClass:[NSNumber class]])
        [NSException raise:NSInvalidArgumentException
                    format:@"ane_mock: procedureIndex must be an NSNumber"];
    if ([inputs count] != [inputIndices count] || [outputs count] != [outputIndices count])
        return nil;
    _ANERequest *r = [[[self alloc] init] autorelease];
    r->_inputs = [inputs copy];
    r->_outputs = [outputs copy];
    r->_inputIndices = [inputIndices copy];
    r->_outputIndices = [outputIndices copy];
    r->_procedureIndex = [procedureIndex retain];
    return r;
}
- (NSArray *)inputArray {
    return _inputs;
}
- (NSArray *)outputArray {
    return _outputs;
}
- (void)dealloc {
    [_inputs release];
    [_outputs release];
    [_inputIndices release];
    [_outputIndices release];
    [_procedureIndex release];
    [super dealloc];
}
@end

// ---- _ANEInMemoryModel
// ------------------------------------------------------------------------------

/* FNV-1a, 64-bit */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

@interface _ANEInMemoryModel : ANEMockBase <ANEInMemoryModel> {
    _ANEInMemoryModelDescriptor *_descriptor;
    NSString *_hex;
    NSData *_mil;          /* model.mil as the compiler read it from the temp dir */
    NSArray *_weightNames; /* sorted keys, and the files' bytes in the same order */
    NSArray *_weightFiles;
    BOOL _compiled, _loaded;
}
@end

@implementation _ANEInMemoryModel
+ (id)inMemoryModelWithDescriptor:(id)descriptor {
    if (![descriptor isKindOfClass:[_ANEInMemoryModelDescriptor class]]) return nil;
    _ANEInMemoryModel *m = [[[self alloc] init] autorelease];
    m->_descriptor = [descriptor retain];
    return m;
}

/* Like the real id, a function of the MIL text and the weights (upstream.md §1.8). */
- (NSString *)hexStringIdentifier {
    if (_hex == nil) {
        NSData *mil = [_descriptor milText];
        uint64_t h = fnv1a(0xcbf29ce484222325ull, [mil bytes], [mil length]);
        uint64_t h2 = fnv1a(0x84222325cbf29ce4ull, [mil bytes], [mil length]);
        NSArray *keys =
            [[[_descriptor weights] allKeys] sortedArrayUsingSelector:@selector(compare:)];
        for (NSString *key in keys) {
            NSData *blob = [[[_descriptor weights] objectForKey:key] objectForKey:@"data"];
            h = fnv1a(fnv1a(h, [key UTF8String], strlen([key UTF8String]) + 1), [blob bytes],
                      [blob length]);
            h2 = fnv1a(h2 ^ h, [blob bytes], [blob length]);
        }
        _hex = [[NSString alloc]
            initWithFormat:@"%016llx%016llx", (unsigned long long)h, (unsigned long long)h2];
    }
    return _hex;
}

/* Reads the temp dir the caller must have pre-populated, as the real compiler appears to need
 * (upstream.md §1.4 step 5): model.mil and one file per weight key without "@model_path/". */
- (BOOL)compileWithQoS:(unsigned int)qos options:(NSDictionary *)options error:(NSError **)error {
    NSError *e = take_fault(MOCK_COMPILE);
    if (e != nil) return fail_with(error, e);
    if (qos > 63 || ![options isKindOfClass:[NSDictionary class]])
        return fail_with(error, mock_error(2, @"bad QoS or options"));
    if ([_descriptor weights] == nil)
        return fail_with(error, mock_error(3, @"no weights dictionary (pass an empty one)"));
    pthread_mutex_lock(&g_lock);
    int over = g.compile_limit > 0 && g.compiles >= g.compile_limit;
    int limit = g.compile_limit;
    pthread_mutex_unlock(&g_lock);
    if (over)
        return fail_with(
            error, mock_error_detail(11,
                                     [NSString stringWithFormat:@"ANECCompile() FAILED: compiler "
                                                                @"resources exhausted after %d "
                                                                @"compiles in this process",
                                                                limit],
                                     @"compile budget spent"));

    NSString *dir =
        [NSTemporaryDirectory() stringByAppendingPathComponent:[self hexStringIdentifier]];
    NSData *mil = [NSData dataWithContentsOfFile:[dir stringByAppendingPathComponent:@"model.mil"]];
    if (mil == nil)
        return fail_with(error,
                         mock_error(4, [NSString stringWithFormat:@"%@/model.mil not found", dir]));
    if (![mil isEqualToData:[_descriptor milText]])
        return fail_with(error, mock_error(5, @"model.mil differs from the descriptor's MIL"));
    NSArray *keys = [[[_descriptor weights] allKeys] sortedArrayUsingSelector:@selector(compare:)];
    NSMutableArray *files = [NSMutableArray arrayWithCapacity:[keys count]];
    for (NSString *key in keys) {
        if (![key hasPrefix:@"@model_path/"])
            return fail_with(
                error, mock_error(6, [NSString stringWithFormat:@"weight key %@ lacks @model_path/",
                                                                key]));
        NSString *path = [dir stringByAppendingPathComponent:[key substringFromIndex:12]];
        NSData *blob = [NSData dataWithContentsOfFile:path];
        if (blob == nil)
            return fail_with(error,
                             mock_error(7, [NSString stringWithFormat:@"%@ not found", path]));
        [files addObject:blob];
    }
    [_mil release];
    _mil = [mil retain];
    [_weightNames release];
    _weightNames = [keys retain];
    [_weightFiles release];
    _weightFiles = [files copy];
    _compiled = YES;
    add_counter(&g.compiles, 1);
    return YES;
}

- (BOOL)loadWithQoS:(unsigned int)qos options:(NSDictionary *)options error:(NSError **)error {
    NSError *e = take_fault(MOCK_LOAD);
    if (e != nil) return fail_with(error, e);
    if (!_compiled) return fail_with(error, mock_error(8, @"load before compile"));
    if (!_loaded) add_counter(&g.loaded, 1);
    _loaded = YES;
    return YES;
}

- (BOOL)evaluateWithQoS:(unsigned int)qos
                options:(NSDictionary *)options
                request:(id)request
                  error:(NSError **)error {
    NSError *e = take_fault(MOCK_EVAL);
    if (e != nil) return fail_with(error, e);
    if (!_loaded) return fail_with(error, mock_error(9, @"evaluate before load"));
    if (![request isKindOfClass:[_ANERequest class]] || [[request inputArray] count] != 1 ||
        [[request outputArray] count] != 1)
        /* the README's multi-input failure (upstream.md §1.9) */
        return fail_with(error, mock_error(0x1d, @"request must have one input and one output"));
    IOSurfaceRef in = [[[request inputArray] objectAtIndex:0] ioSurface];
    IOSurfaceRef out = [[[request outputArray] objectAtIndex:0] ioSurface];

    pthread_mutex_lock(&g_lock);
    ane_mock_eval_fn fn = g.eval;
    void *user = g.user;
    pthread_mutex_unlock(&g_lock);

    int n = (int)[_weightNames count];
    const char **names = calloc((size_t)n + 1, sizeof *names);
    const uint8_t **data = calloc((size_t)n + 1, sizeof *data);
    size_t *sizes = calloc((size_t)n + 1, sizeof *sizes);
    char msg[512] = "";
    int rc = 0;
    if (names == NULL || data == NULL || sizes == NULL) {
        rc = 12;
        snprintf(msg, sizeof msg, "out of memory");
    }
    for (int i = 0; rc == 0 && i < n; i++) {
        names[i] = [[_weightNames objectAtIndex:(NSUInteger)i] UTF8String];
        data[i] = [[_weightFiles objectAtIndex:(NSUInteger)i] bytes];
        sizes[i] = [[_weightFiles objectAtIndex:(NSUInteger)i] length];
    }
    if (rc == 0) {
        IOSurfaceLock(in, kIOSurfaceLockReadOnly, NULL);
        IOSurfaceLock(out, 0, NULL);
        const void *src = IOSurfaceGetBaseAddress(in);
        void *dst = IOSurfaceGetBaseAddress(out);
        size_t in_bytes = IOSurfaceGetAllocSize(in), out_bytes = IOSurfaceGetAllocSize(out);
        if (fn != NULL) {
            rc = fn(user, [_mil bytes], [_mil length], n, names, data, sizes, src, in_bytes, dst,
                    out_bytes, msg, sizeof msg);
        } else { /* default: copy the input into the output, zero the rest */
            size_t m = in_bytes < out_bytes ? in_bytes : out_bytes;
            memmove(dst, src, m);
            memset((uint8_t *)dst + m, 0, out_bytes - m);
        }
        IOSurfaceUnlock(out, 0, NULL);
        IOSurfaceUnlock(in, kIOSurfaceLockReadOnly, NULL);
    }
    free(names);
    free(data);
    free(sizes);
    if (rc != 0)
        return fail_with(
            error,
            mock_error(rc, [NSString stringWithFormat:@"program failed: %s",
                                                      msg[0] ? msg : "eval callback failed"]));
    return YES;
}

- (BOOL)unloadWithQoS:(unsigned int)qos error:(NSError **)error {
    NSError *e = take_fault(MOCK_UNLOAD);
    if (e != nil) return fail_with(error, e);
    if (!_loaded) return fail_with(error, mock_error(10, @"unload of a model that is not loaded"));
    _loaded = NO;
    add_counter(&g.loaded, -1);
    return YES;
}

/* A model released while loaded stays counted in ane_mock_loaded_models(): tests see the leak. */
- (void)dealloc {
    [_descriptor release];
    [_hex release];
    [_mil release];
    [_weightNames release];
    [_weightFiles release];
    [super dealloc];
}
@end
