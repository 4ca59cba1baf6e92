/* ane_runtime.m — compile, load, evaluate and free MIL programs on the ANE through the private
 * in-memory API (upstream.md §1.4), behind the C API of ane_runtime.h. Manual retain/release; every
 * exported function = autorelease pool + @try/@catch around a static *_impl (ecosystem.md §2.5). */
#include "objc_compat.h"
#include "ane_private.h"
#include "ane_runtime.h"
#include "ane_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define ANE_DEFAULT_FRAMEWORK                                                                      \
    "/System/Library/PrivateFrameworks/AppleNeuralEngine.framework/AppleNeuralEngine"
#define ANE_MODEL_PATH_PREFIX "@model_path/"
#define ANE_LOAD_RETRY_US                                                                          \
    100000 /* one retry after 100 ms "for ANE slot reclamation" (§1.4 step 7) */

// ---- structs ------------------------------------------------------------------------------------

struct ane_ctx {
    void *handle; /* dlopen handle; never closed (the classes stay registered) */
    Class<ANEInMemoryModelDescriptor> descriptor_class;
    Class<ANEInMemoryModel> model_class;
    Class<ANERequest> request_class;
    Class<ANEIOSurfaceObject> surface_object_class;
    int refs;     /* the caller's + one per live kernel (atomic) */
    int compiles; /* successful compile+load pairs (atomic) */
};

struct ane_kernel {
    ane_ctx *ctx;
    id<ANEInMemoryModel> model; /* retained */
    NSString *dir;              /* retained; NSTemporaryDirectory()/<hex> */
    char *hex;                  /* malloc'd copies for the C accessors */
    char *dir_c;
    char *lock_c;               /* "<dir>.lock", see dir_lock */
    int lock_fd;                /* shared flock on lock_c while the kernel lives, else -1 */
    size_t in_bytes, out_bytes;
    uint64_t serial; /* ties requests to their kernel */
    int loaded;
};

struct ane_request {
    id request;           /* retained _ANERequest */
    IOSurfaceRef in, out; /* CFRetain'ed, so surfaces may be freed before the request */
    uint64_t kernel_serial;
};

static uint64_t g_next_serial = 1; /* atomic; only a source of unique kernel ids */

// ---- framework ----------------------------------------------------------------------------------

static void ctx_unref(ane_ctx *ctx) {
    if (ctx == NULL || __atomic_sub_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL) > 0) return;
    free(ctx);
}

/* Look up a class and check it answers every selector we send, so a renamed selector fails here
 * with its name instead of as an exception mid-compile. */
static Class find_class(const char *name, const SEL *class_sels, const SEL *inst_sels,
                        const char *path, char *err, size_t err_len) {
    Class cls = NSClassFromString([NSString stringWithUTF8String:name]);
    if (cls == Nil) {
        ane_set_err(err, err_len, "ane_open: class %s not found in %s", name, path);
        return Nil;
    }
    for (; class_sels != NULL && *class_sels != NULL; class_sels++)
        if (![(id)cls respondsToSelector:*class_sels]) {
            ane_set_err(err, err_len, "ane_open: class %s has no class method +%s", name,
                        ane_cstr(NSStringFromSelector(*class_sels)));
            return Nil;
        }
    for (; inst_sels != NULL && *inst_sels != NULL; inst_sels++)
        if (![cls instancesRespondToSelector:*inst_sels]) {
            ane_set_err(err, err_len, "ane_open: class %s has no instance method -%s", name,
                        ane_cstr(NSStringFromSelector(*inst_sels)));
            return Nil;
        }
    return cls;
}

static int open_impl(ane_ctx *ctx, const char *path, char *err, size_t err_len) {
    if (path == NULL) path = ANE_DEFAULT_FRAMEWORK;
    ctx->handle = dlopen(path, RTLD_NOW);
    if (ctx->handle == NULL) {
        const char *why = dlerror();
        ane_set_err(err, err_len, "ane_open: dlopen(%s): %s", path, why ? why : "unknown error");
        return -1;
    }
    SEL desc_cls[] = { @selector(modelWithMILText:weights:optionsPlist:), NULL };
    SEL model_cls[] = { @selector(inMemoryModelWithDescriptor:), NULL };
    SEL model_inst[] = {
        @selector(hexStringIdentifier),
        @selector(compileWithQoS:options:error:),
        @selector(loadWithQoS:options:error:),
        @selector(evaluateWithQoS:options:request:error:),
        @selector(unloadWithQoS:error:),
        NULL
    };
    SEL req_cls[] = {
        @selector(requestWithInputs:
                       inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:),
        NULL
    };
    SEL surf_cls[] = { @selector(objectWithIOSurface:), NULL };
    Class c;
    if ((c = find_class(ANE_CLASS_DESCRIPTOR, desc_cls, NULL, path, err, err_len)) == Nil)
        return -1;
    ctx->descriptor_class = (Class<ANEInMemoryModelDescriptor>)c;
    if ((c = find_class(ANE_CLASS_MODEL, model_cls, model_inst, path, err, err_len)) == Nil)
        return -1;
    ctx->model_class = (Class<ANEInMemoryModel>)c;
    if ((c = find_class(ANE_CLASS_REQUEST, req_cls, NULL, path, err, err_len)) == Nil) return -1;
    ctx->request_class = (Class<ANERequest>)c;
    if ((c = find_class(ANE_CLASS_IOSURFACE_OBJECT, surf_cls, NULL, path, err, err_len)) == Nil)
        return -1;
    ctx->surface_object_class = (Class<ANEIOSurfaceObject>)c;
    return 0;
}

ane_ctx *ane_open(const char *framework_path, char *err, size_t err_len) {
    ane_ctx *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL) {
        ane_set_err(err, err_len, "ane_open: out of memory");
        return NULL;
    }
    ctx->refs = 1;
    int rc = -1;
    ANE_POOL_BEGIN;
    @try {
        rc = open_impl(ctx, framework_path, err, err_len);
    } @catch (id ex) {
        ane_set_exception(err, err_len, "ane_open", ex);
        rc = -1;
    }
    ANE_POOL_END;
    if (rc != 0) {
        ctx_unref(ctx); /* a failed dlopen leaves nothing; a loaded framework stays loaded */
        return NULL;
    }
    return ctx;
}

void ane_close(ane_ctx *ctx) {
    ctx_unref(ctx);
}

int ane_compile_count(const ane_ctx *ctx) {
    return ctx ? __atomic_load_n(&ctx->compiles, __ATOMIC_ACQUIRE) : 0;
}

// ---- temp dir sharing ---------------------------------------------------------------------------

/* Identical MIL + weights give the same hex and so the same dir (upstream.md §1.8): within this
 * process, and across processes of one user (two runs of the same model at once). So every kernel
 * holds a shared flock(2) on "<dir>.lock" from before it writes the dir until it is freed, and
 * only a kernel that can then take the lock exclusively (no other user left) removes the dir and
 * the lock file. A lock won on a lock file that was unlinked meanwhile is dropped and retaken on
 * the new file. (flock locks belong to the open file, so two kernels of one process also count
 * as two users.) */
static int dir_lock(ane_kernel *k, char *err, size_t err_len) {
    for (;;) {
        int fd = open(k->lock_c, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            ane_set_err(err, err_len, "ane_compile: cannot open %s: %s", k->lock_c,
                        strerror(errno));
            return -1;
        }
        int rc;
        while ((rc = flock(fd, LOCK_SH)) != 0 && errno == EINTR) {
        }
        struct stat held, now;
        if (rc != 0 || fstat(fd, &held) != 0) {
            int why = errno;
            close(fd);
            ane_set_err(err, err_len, "ane_compile: cannot lock %s: %s", k->lock_c,
                        strerror(why));
            return -1;
        }
        if (stat(k->lock_c, &now) == 0 && now.st_dev == held.st_dev &&
            now.st_ino == held.st_ino) {
            k->lock_fd = fd;
            return 0;
        }
        close(fd); /* its last user removed it while we waited: lock the current file */
    }
}

/* Drop k's lock; the last user of the dir removes it (best effort: a free reports nothing). */
static void dir_release(ane_kernel *k) {
    if (k->lock_fd < 0) return;
    if (flock(k->lock_fd, LOCK_EX | LOCK_NB) == 0) {
        @try {
            NSFileManager *fm = [[[NSFileManager alloc] init] autorelease];
            [fm removeItemAtPath:k->dir error:NULL];
        } @catch (id ex) {
            (void)ex;
        }
        unlink(k->lock_c); /* while still held: a waiter then sees a stale file and retries */
    }
    close(k->lock_fd);
    k->lock_fd = -1;
}

// ---- kernels ------------------------------------------------------------------------------------

/* Releases whatever a (possibly half-built) kernel holds. */
static void kernel_destroy(ane_kernel *k) {
    if (k->loaded) {
        @try {
            NSError *e = nil;
            [k->model unloadWithQoS:ANE_QOS error:&e]; /* failure ignored: the free must finish */
        } @catch (id ex) {
            (void)ex;
        }
        k->loaded = 0;
    }
    [k->model release];
    k->model = nil;
    dir_release(k);
    [k->dir release];
    k->dir = nil;
    free(k->hex);
    free(k->dir_c);
    free(k->lock_c);
    ctx_unref(k->ctx);
    free(k);
}

/* "@model_path/<rel>" with <rel> a relative path without empty, "." or ".." components. */
static const char *weight_rel_path(const char *name) {
    size_t plen = strlen(ANE_MODEL_PATH_PREFIX);
    if (name == NULL || strncmp(name, ANE_MODEL_PATH_PREFIX, plen) != 0) return NULL;
    const char *rel = name + plen;
    for (const char *c = rel;;) {
        const char *slash = strchr(c, '/');
        size_t n = slash ? (size_t)(slash - c) : strlen(c);
        if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return NULL;
        if (slash == NULL) break;
        c = slash + 1;
    }
    return rel;
}

/* The hex id becomes a path component: accept only [A-Za-z0-9_.-], not starting with '.'. */
static int hex_is_safe(const char *hex) {
    if (hex == NULL || hex[0] == '\0' || hex[0] == '.') return 0;
    for (const char *c = hex; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
              *c == '_' || *c == '-' || *c == '.'))
            return 0;
    return 1;
}

static int write_file(NSFileManager *fm, NSString *path, NSData *data, char *err, size_t err_len) {
    NSError *e = nil;
    NSString *parent = [path stringByDeletingLastPathComponent];
    if (![fm createDirectoryAtPath:parent
            withIntermediateDirectories:YES
                             attributes:nil
                                  error:&e]) {
        ane_set_nserror(err, err_len,
                    [[@"ane_compile: mkdir " stringByAppendingString:parent] UTF8String], e);
        return -1;
    }
    if (![data writeToFile:path atomically:YES]) {
        ane_set_err(err, err_len, "ane_compile: cannot write %s", ane_cstr(path));
        return -1;
    }
    return 0;
}

static int compile_impl(ane_kernel *k, const char *mil, size_t mil_len, int n_weights,
                        const char *const *names, const uint8_t *const *data, const size_t *sizes,
                        char *err, size_t err_len) {
    ane_ctx *ctx = k->ctx;
    if (mil == NULL || mil_len == 0) {
        ane_set_err(err, err_len, "ane_compile: empty MIL text");
        return -1;
    }
    if (n_weights < 0 || (n_weights > 0 && (names == NULL || data == NULL || sizes == NULL))) {
        ane_set_err(err, err_len, "ane_compile: bad weight arrays");
        return -1;
    }
    if (k->in_bytes == 0 || k->out_bytes == 0) {
        ane_set_err(err, err_len, "ane_compile: in_bytes and out_bytes must be > 0");
        return -1;
    }

    /* 1. MIL as UTF-8 NSData; weights {key: {"offset": 0, "data": blob}}, empty not nil (§1.5) */
    NSData *mil_data = [NSData dataWithBytes:mil length:mil_len];
    NSMutableDictionary *weights =
        [NSMutableDictionary dictionaryWithCapacity:(NSUInteger)n_weights];
    for (int i = 0; i < n_weights; i++) {
        if (weight_rel_path(names[i]) == NULL) {
            ane_set_err(err, err_len,
                        "ane_compile: weight name '%s' is not \"@model_path/<relative path>\"",
                        names[i] ? names[i] : "(null)");
            return -1;
        }
        NSString *key = [NSString stringWithUTF8String:names[i]];
        if (key == nil || [weights objectForKey:key] != nil) {
            ane_set_err(err, err_len, "ane_compile: weight name '%s' is not UTF-8 or repeated",
                        names[i]);
            return -1;
        }
        if (data[i] == NULL && sizes[i] > 0) {
            ane_set_err(err, err_len, "ane_compile: weight '%s' has no data", names[i]);
            return -1;
        }
        NSData *blob = [NSData dataWithBytes:data[i] length:sizes[i]];
        [weights setObject:[NSDictionary dictionaryWithObjectsAndKeys:ANE_NUM_INT(0), @"offset",
                                                                      blob, @"data", nil]
                    forKey:key];
    }

    /* 2-3. descriptor, model */
    id desc = [ctx->descriptor_class modelWithMILText:mil_data weights:weights optionsPlist:nil];
    if (desc == nil) {
        ane_set_err(err, err_len,
                    "ane_compile: modelWithMILText:weights:optionsPlist: returned nil");
        return -1;
    }
    id<ANEInMemoryModel> model = [ctx->model_class inMemoryModelWithDescriptor:desc];
    if (model == nil) {
        ane_set_err(err, err_len, "ane_compile: inMemoryModelWithDescriptor: returned nil");
        return -1;
    }
    k->model = [model retain];

    /* 4. hex id and temp dir */
    NSString *hex = [model hexStringIdentifier];
    if (!hex_is_safe(ane_cstr(hex))) {
        ane_set_err(err, err_len, "ane_compile: unusable hexStringIdentifier '%s'", ane_cstr(hex));
        return -1;
    }
    k->dir = [[NSTemporaryDirectory() stringByAppendingPathComponent:hex] retain];
    k->hex = strdup(ane_cstr(hex));
    k->dir_c = strdup(ane_cstr(k->dir));
    k->lock_c = strdup(ane_cstr([k->dir stringByAppendingString:@".lock"]));
    if (k->hex == NULL || k->dir_c == NULL || k->lock_c == NULL) {
        ane_set_err(err, err_len, "ane_compile: out of memory");
        return -1;
    }
    if (dir_lock(k, err, err_len) != 0) return -1;
    /* from here on a failure removes the dir, unless another kernel (any process) shares it */

    /* 5. pre-populate dir/model.mil and dir/weights/... before compiling (§1.4 step 5) */
    NSFileManager *fm = [[[NSFileManager alloc] init] autorelease];
    NSError *e = nil;
    if (![fm createDirectoryAtPath:[k->dir stringByAppendingPathComponent:@"weights"]
            withIntermediateDirectories:YES
                             attributes:nil
                                  error:&e]) {
        ane_set_nserror(err, err_len, "ane_compile: mkdir weights", e);
        return -1;
    }
    if (write_file(fm, [k->dir stringByAppendingPathComponent:@"model.mil"], mil_data, err,
                   err_len) != 0)
        return -1;
    for (int i = 0; i < n_weights; i++) {
        NSString *rel = [NSString stringWithUTF8String:weight_rel_path(names[i])];
        NSData *blob =
            [[weights objectForKey:[NSString stringWithUTF8String:names[i]]] objectForKey:@"data"];
        if (write_file(fm, [k->dir stringByAppendingPathComponent:rel], blob, err, err_len) != 0)
            return -1;
    }

    /* 6. compile */
    e = nil;
    if (![model compileWithQoS:ANE_QOS options:ANE_EMPTY_DICT error:&e]) {
        ane_set_nserror(err, err_len, "ane_compile: compileWithQoS", e);
        return -1;
    }
    /* 7. load, retried once after 100 ms */
    e = nil;
    if (![model loadWithQoS:ANE_QOS options:ANE_EMPTY_DICT error:&e]) {
        usleep(ANE_LOAD_RETRY_US);
        e = nil;
        if (![model loadWithQoS:ANE_QOS options:ANE_EMPTY_DICT error:&e]) {
            ane_set_nserror(err, err_len, "ane_compile: loadWithQoS (after one retry)", e);
            return -1;
        }
    }
    k->loaded = 1;
    /* 8. count only a successful compile+load */
    __atomic_add_fetch(&ctx->compiles, 1, __ATOMIC_ACQ_REL);
    return 0;
}

ane_kernel *ane_compile(ane_ctx *ctx, const char *mil, size_t mil_len, int n_weights,
                        const char *const *weight_names, const uint8_t *const *weight_data,
                        const size_t *weight_sizes, size_t in_bytes, size_t out_bytes, char *err,
                        size_t err_len) {
    if (ctx == NULL) {
        ane_set_err(err, err_len, "ane_compile: NULL context");
        return NULL;
    }
    ane_kernel *k = calloc(1, sizeof *k);
    if (k == NULL) {
        ane_set_err(err, err_len, "ane_compile: out of memory");
        return NULL;
    }
    __atomic_add_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL);
    k->ctx = ctx;
    k->lock_fd = -1;
    k->in_bytes = in_bytes;
    k->out_bytes = out_bytes;
    k->serial = __atomic_fetch_add(&g_next_serial, 1, __ATOMIC_RELAXED);
    int rc = -1;
    ANE_POOL_BEGIN;
    @try {
        rc = compile_impl(k, mil, mil_len, n_weights, weight_names, weight_data, weight_sizes, err,
                          err_len);
    } @catch (id ex) {
        ane_set_exception(err, err_len, "ane_compile", ex);
        rc = -1;
    }
    if (rc != 0) {
        @try {
            kernel_destroy(k);
        } @catch (id ex) {
            (void)ex; /* the error already describes the first failure */
        }
        k = NULL;
    }
    ANE_POOL_END;
    return k;
}

void ane_free(ane_kernel *k) {
    if (k == NULL) return;
    ANE_POOL_BEGIN;
    @try {
        kernel_destroy(k);
    } @catch (id ex) {
        (void)ex; /* kernel_destroy catches the framework's exceptions itself; nothing to report */
    }
    ANE_POOL_END;
}

const char *ane_kernel_hex(const ane_kernel *k) {
    return k ? k->hex : NULL;
}
const char *ane_kernel_dir(const ane_kernel *k) {
    return k ? k->dir_c : NULL;
}

// ---- requests and evaluation --------------------------------------------------------------------

static void request_destroy(ane_request *r) {
    [r->request release];
    r->request = nil;
    if (r->in != NULL) CFRelease(r->in);
    if (r->out != NULL) CFRelease(r->out);
    free(r);
}

static int request_new_impl(ane_request *r, ane_kernel *k, ane_surface *in, ane_surface *out,
                            char *err, size_t err_len) {
    if (in->bytes != k->in_bytes || out->bytes != k->out_bytes) {
        ane_set_err(err, err_len,
                    "ane_request_new: surfaces are %zu -> %zu bytes, kernel %s is %zu -> %zu bytes",
                    in->bytes, out->bytes, k->hex, k->in_bytes, k->out_bytes);
        return -1;
    }
    ane_ctx *ctx = k->ctx;
    id win = [ctx->surface_object_class objectWithIOSurface:in->ref];
    id wout = [ctx->surface_object_class objectWithIOSurface:out->ref];
    if (win == nil || wout == nil) {
        ane_set_err(err, err_len, "ane_request_new: objectWithIOSurface: returned nil");
        return -1;
    }
    /* one input and one output tensor, ordinal 0 each (upstream.md §1.9); procedureIndex @0 */
    NSArray *index0 = [NSArray arrayWithObject:ANE_NUM_INT(0)];
    id req = [ctx->request_class requestWithInputs:[NSArray arrayWithObject:win]
                                      inputIndices:index0
                                           outputs:[NSArray arrayWithObject:wout]
                                     outputIndices:index0
                                     weightsBuffer:nil
                                         perfStats:nil
                                    procedureIndex:ANE_NUM_INT(0)];
    if (req == nil) {
        ane_set_err(err, err_len, "ane_request_new: requestWithInputs:... returned nil");
        return -1;
    }
    r->request = [req retain];
    r->in = (IOSurfaceRef)CFRetain(in->ref);
    r->out = (IOSurfaceRef)CFRetain(out->ref);
    r->kernel_serial = k->serial;
    return 0;
}

ane_request *ane_request_new(ane_kernel *k, ane_surface *in, ane_surface *out, char *err,
                             size_t err_len) {
    if (k == NULL || in == NULL || out == NULL) {
        ane_set_err(err, err_len, "ane_request_new: NULL kernel or surface");
        return NULL;
    }
    ane_request *r = calloc(1, sizeof *r);
    if (r == NULL) {
        ane_set_err(err, err_len, "ane_request_new: out of memory");
        return NULL;
    }
    int rc = -1;
    ANE_POOL_BEGIN;
    @try {
        rc = request_new_impl(r, k, in, out, err, err_len);
    } @catch (id ex) {
        ane_set_exception(err, err_len, "ane_request_new", ex);
        rc = -1;
    }
    if (rc != 0) {
        request_destroy(r);
        r = NULL;
    }
    ANE_POOL_END;
    return r;
}

void ane_request_free(ane_request *r) {
    if (r == NULL) return;
    ANE_POOL_BEGIN;
    @try {
        request_destroy(r);
    } @catch (id ex) {
        (void)ex;
    }
    ANE_POOL_END;
}

static int eval_impl(ane_kernel *k, ane_request *r, char *err, size_t err_len) {
    if (r->kernel_serial != k->serial) {
        ane_set_err(err, err_len, "ane_eval: request was made for another kernel");
        return -1;
    }
    NSError *e = nil;
    if (![k->model evaluateWithQoS:ANE_QOS options:ANE_EMPTY_DICT request:r->request error:&e]) {
        ane_set_nserror(err, err_len, "ane_eval: evaluateWithQoS", e);
        return -1;
    }
    return 0;
}

int ane_eval(ane_kernel *k, ane_request *r, char *err, size_t err_len) {
    if (k == NULL || r == NULL) {
        ane_set_err(err, err_len, "ane_eval: NULL kernel or request");
        return -1;
    }
    int rc = -1;
    ANE_POOL_BEGIN; /* one pool per evaluation: a training run evaluates ~1e5-1e6 times (§1.4) */
    @try {
        rc = eval_impl(k, r, err, err_len);
    } @catch (id ex) {
        ane_set_exception(err, err_len, "ane_eval", ex);
        rc = -1;
    }
    ANE_POOL_END;
    return rc;
}
