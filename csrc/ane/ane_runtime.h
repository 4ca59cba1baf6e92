/* ane_runtime.h — C API of the Objective-C ANE runtime (ane_runtime.m); the cffi cdef of
 * anetrain._ane is this file minus its '#' lines, so keep it plain C that pycparser reads. */
#ifndef ANE_RUNTIME_H
#define ANE_RUNTIME_H
#include <stddef.h>
#include <stdint.h>

/* Conventions. Every fallible call takes an error buffer (err, err_len), returns -1 or NULL on
 * failure and writes a one-line message there; NSErrors are rendered "<domain> (<code>): <text>".
 * No Objective-C exception escapes: each exported function catches and reports it the same way.
 * (A C++ exception thrown through the framework's Objective-C frames would not be caught here; none
 * is known, and catching one would need Objective-C++.)
 * Every *_new/_open/_compile has its *_free/_close, which accept NULL. */

typedef struct ane_ctx ane_ctx;         /* the dlopen()ed framework + its four classes */
typedef struct ane_kernel ane_kernel;   /* one compiled and loaded MIL program */
typedef struct ane_surface ane_surface; /* one IOSurface: a flat byte buffer */
typedef struct ane_request ane_request; /* (kernel, input surface, output surface), reusable */

/* ---- framework ------------------------------------------------------------------------------- */
/* dlopen(framework_path, RTLD_NOW) and look up _ANEInMemoryModelDescriptor, _ANEInMemoryModel,
 * _ANERequest and _ANEIOSurfaceObject. NULL path = the system AppleNeuralEngine.framework. */
ane_ctx *ane_open(const char *framework_path, char *err, size_t err_len);
/* Drops the caller's reference; the context lives on until its last kernel is freed. The framework
 * is never dlclose()d: its Objective-C classes stay registered for the life of the process. */
void ane_close(ane_ctx *ctx);
/* Successful compile+load pairs through this context (the ~119 per process budget, §1.7). */
int ane_compile_count(const ane_ctx *ctx);

/* ---- kernels --------------------------------------------------------------------------------- */
/* Compile and load one MIL program (upstream.md §1.4): mil is UTF-8 text of mil_len bytes; weight i
 * is the blob file weight_data[i] of weight_sizes[i] bytes under the MIL BLOBFILE path
 * weight_names[i], which must start with "@model_path/". in_bytes/out_bytes are the exact byte
 * sizes of the single input and output tensors. */
ane_kernel *ane_compile(ane_ctx *ctx, const char *mil, size_t mil_len, int n_weights,
                        const char *const *weight_names, const uint8_t *const *weight_data,
                        const size_t *weight_sizes, size_t in_bytes, size_t out_bytes, char *err,
                        size_t err_len);
/* Unload (QoS 21), release, and remove the temp dir unless a live kernel shares it: identical
 * MIL + weights give identical dirs (upstream §1.8), in this process or another of the same user;
 * each kernel holds a shared flock on "<dir>.lock" while it lives. */
void ane_free(ane_kernel *k);
const char *ane_kernel_hex(const ane_kernel *k); /* hexStringIdentifier */
const char *ane_kernel_dir(const ane_kernel *k); /* NSTemporaryDirectory()/<hex> */

/* ---- surfaces -------------------------------------------------------------------------------- */
/* A flat IOSurface of exactly `bytes` bytes (upstream.md §2.1), zero-filled on Linux. */
ane_surface *ane_surface_new(size_t bytes, char *err, size_t err_len);
void ane_surface_free(ane_surface *s);
/* Lock for CPU access (read_only = 1 for reads) and return the base address, or NULL. Pair every
 * successful lock with an unlock of the same read_only. */
void *ane_surface_lock(ane_surface *s, int read_only, char *err, size_t err_len);
int ane_surface_unlock(ane_surface *s, int read_only, char *err, size_t err_len);
/* Locked, bounds-checked copies: src (n bytes) -> s[offset..]; s[offset..] -> dst (n bytes);
 * src[src_off..] -> dst[dst_off..] (dst locked read-write, then src read-only; may be the same). */
int ane_surface_write(ane_surface *s, size_t offset, const void *src, size_t n, char *err,
                      size_t err_len);
int ane_surface_read(ane_surface *s, size_t offset, void *dst, size_t n, char *err, size_t err_len);
int ane_surface_copy(ane_surface *dst, size_t dst_off, ane_surface *src, size_t src_off, size_t n,
                     char *err, size_t err_len);

/* ---- requests and evaluation ----------------------------------------------------------------- */
/* Bind `in` and `out` for evaluations of k; sizes must equal k's in/out bytes. The request keeps
 * its own references to both surfaces, so freeing the surfaces first is safe. */
ane_request *ane_request_new(ane_kernel *k, ane_surface *in, ane_surface *out, char *err,
                             size_t err_len);
void ane_request_free(ane_request *r);
/* Synchronous evaluation: when it returns 0 the output surface holds the result. r must have been
 * made for k. Surfaces must not be locked by the caller during the call. */
int ane_eval(ane_kernel *k, ane_request *r, char *err, size_t err_len);

#endif /* ANE_RUNTIME_H */
