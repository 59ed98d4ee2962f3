// A stand-in for the CUDA driver (libcuda.so.1) for tests on machines without a GPU: "device memory"
// is POSIX shared memory, so IPC handles work across processes; copies are memcpy. It checks what a
// real driver would refuse and a CPU test could otherwise miss: a call before cuInit or without a
// current context, a context that is no context, popping an empty context stack, releasing a primary
// context more often than it was retained, copies of unknown device memory, registering host memory
// twice, an IPC handle that is damaged or opened in the process that made it. Not a simulator of timing.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fake_gpu.h"

typedef int CUresult;
typedef uint64_t CUdeviceptr;
typedef struct { char reserved[64]; } CUipcMemHandle;
typedef struct { unsigned char bytes[16]; } CUuuid;

enum { OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, INVALID_DEVICE = 101, INVALID_CONTEXT = 201,
       NOT_READY = 600, ILLEGAL_ADDRESS = 700, ALREADY_REGISTERED = 712, NOT_REGISTERED = 713 };

struct event { struct fake_stream *stream; int64_t target; };

struct block { uint64_t ptr; size_t size; char name[40]; int owned; struct block *next; };
static struct block *blocks;
static struct host { void *ptr; struct host *next; } *hosts;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int counter, initialized;

enum { MAX_DEVICES = 64, MAX_DEPTH = 16 };
static int retained[MAX_DEVICES]; // Primary context references per device, as cuDevicePrimaryCtxRetain counts them.
// The calling thread's context stack (cuCtxSetCurrent replaces its top); the current context is the top.
static __thread void *stack[MAX_DEPTH];
static __thread int depth;
static void *current(void) { return depth ? stack[depth - 1] : NULL; }

static int env_int(const char *name, int fallback) { const char *v = getenv(name); return v && *v ? atoi(v) : fallback; }
static int devices(void) { int n = env_int("FAKE_CUDA_DEVICES", 1); return n < MAX_DEVICES ? n : MAX_DEVICES; }
static void *context_of(int d) { return (void *)(intptr_t)(0x1000 + d); }
// Whether a handle is one of the devices' primary contexts (not whether it is still retained: a real driver
// keeps a released primary context's handle, and what it does with it then is not pinned down here).
static int is_context(void *ctx) { intptr_t d = (intptr_t)ctx - 0x1000; return d >= 0 && d < devices(); }

static struct block *find(uint64_t p, size_t n) {
    for (struct block *b = blocks; b; b = b->next)
        if (p >= b->ptr && p + n <= b->ptr + b->size) return b;
    return NULL;
}

CUresult cuInit(unsigned flags) { if (flags != 0) return INVALID_VALUE; __atomic_store_n(&initialized, 1, __ATOMIC_RELEASE); return OK; }
static int ready(void) { return __atomic_load_n(&initialized, __ATOMIC_ACQUIRE); }
CUresult cuDeviceGetCount(int *n) { if (!ready()) return NOT_INITIALIZED; *n = devices(); return OK; }
CUresult cuDeviceGet(int *d, int ordinal) {
    if (!ready()) return NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= devices()) return INVALID_DEVICE;
    *d = ordinal; return OK;
}
CUresult cuDeviceGetUuid_v2(CUuuid *u, int d) {
    if (!ready()) return NOT_INITIALIZED;
    if (d < 0 || d >= devices()) return INVALID_DEVICE;
    // FAKE_CUDA_UUID_SALT: the test run's own number in the last four bytes, so that two runs on one machine (whose sockets
    // are named by device id) never share a device.
    unsigned salt = (unsigned)strtoul(getenv("FAKE_CUDA_UUID_SALT") ? getenv("FAKE_CUDA_UUID_SALT") : "0", NULL, 10);
    for (int i = 0; i < 16; i++) u->bytes[i] = (unsigned char)(0x10 * d + i);
    for (int i = 0; i < 4; i++) u->bytes[12 + i] = (unsigned char)(salt >> (8 * i));
    return OK;
}
CUresult cuDeviceGetUuid(CUuuid *u, int d) { return cuDeviceGetUuid_v2(u, d); }
CUresult cuDevicePrimaryCtxRetain(void **ctx, int d) {
    if (!ready()) return NOT_INITIALIZED;
    if (d < 0 || d >= devices()) return INVALID_DEVICE;
    __atomic_add_fetch(&retained[d], 1, __ATOMIC_ACQ_REL);
    *ctx = context_of(d);
    return OK;
}
// Releasing more often than retained is refused (a real driver would destroy the context under its users).
CUresult cuDevicePrimaryCtxRelease_v2(int d) {
    if (d < 0 || d >= devices()) return INVALID_DEVICE;
    int n = __atomic_load_n(&retained[d], __ATOMIC_ACQUIRE);
    do { if (n <= 0) return INVALID_CONTEXT; } while (!__atomic_compare_exchange_n(&retained[d], &n, n - 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    return OK;
}
CUresult cuDevicePrimaryCtxRelease(int d) { return cuDevicePrimaryCtxRelease_v2(d); }
CUresult cuCtxSetCurrent(void *ctx) {
    if (ctx && !is_context(ctx)) return INVALID_CONTEXT;
    if (depth) { if (ctx) stack[depth - 1] = ctx; else depth--; }
    else if (ctx) stack[depth++] = ctx;
    return OK;
}
CUresult cuCtxPushCurrent_v2(void *ctx) {
    if (!ctx) return INVALID_VALUE;
    if (!is_context(ctx)) return INVALID_CONTEXT;
    if (depth == MAX_DEPTH) return OUT_OF_MEMORY;
    stack[depth++] = ctx;
    return OK;
}
CUresult cuCtxPopCurrent_v2(void **ctx) {
    if (!depth) return INVALID_CONTEXT;
    void *top = stack[--depth];
    if (ctx) *ctx = top;
    return OK;
}
CUresult cuMemGetInfo_v2(size_t *free_, size_t *total) {
    if (!current()) return INVALID_CONTEXT;
    *total = (size_t)env_int("FAKE_CUDA_MEMORY_MB", 1024) << 20; *free_ = *total; return OK;
}

CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
    if (!current()) return INVALID_CONTEXT;
    struct block *b = calloc(1, sizeof *b);
    pthread_mutex_lock(&lock);
    snprintf(b->name, sizeof b->name, "/fakecuda-%d-%d", getpid(), ++counter);
    pthread_mutex_unlock(&lock);
    int fd = shm_open(b->name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)n) != 0) { if (fd >= 0) close(fd); free(b); return OUT_OF_MEMORY; }
    void *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) { shm_unlink(b->name); free(b); return OUT_OF_MEMORY; }
    b->ptr = (uint64_t)(uintptr_t)m; b->size = n; b->owned = 1;
    pthread_mutex_lock(&lock); b->next = blocks; blocks = b; pthread_mutex_unlock(&lock);
    *p = b->ptr;
    return OK;
}

static CUresult release(uint64_t p, int owned) {
    pthread_mutex_lock(&lock);
    for (struct block **at = &blocks; *at; at = &(*at)->next) {
        struct block *b = *at;
        if (b->ptr == p && b->owned == owned) {
            *at = b->next;
            pthread_mutex_unlock(&lock);
            munmap((void *)(uintptr_t)b->ptr, b->size);
            if (owned) shm_unlink(b->name);
            free(b);
            return OK;
        }
    }
    pthread_mutex_unlock(&lock);
    return INVALID_VALUE;
}

CUresult cuMemFree_v2(CUdeviceptr p) { return current() ? release(p, 1) : INVALID_CONTEXT; }

CUresult cuMemHostRegister_v2(void *p, size_t n, unsigned flags) {
    (void)n; (void)flags;
    if (!current()) return INVALID_CONTEXT;
    pthread_mutex_lock(&lock);
    for (struct host *h = hosts; h; h = h->next)
        if (h->ptr == p) { pthread_mutex_unlock(&lock); return ALREADY_REGISTERED; }
    struct host *h = malloc(sizeof *h); h->ptr = p; h->next = hosts; hosts = h;
    pthread_mutex_unlock(&lock);
    return OK;
}

CUresult cuMemHostUnregister(void *p) {
    if (!current()) return INVALID_CONTEXT;
    pthread_mutex_lock(&lock);
    for (struct host **at = &hosts; *at; at = &(*at)->next)
        if ((*at)->ptr == p) { struct host *h = *at; *at = h->next; free(h); pthread_mutex_unlock(&lock); return OK; }
    pthread_mutex_unlock(&lock);
    return NOT_REGISTERED;
}

static CUresult copy(void *dst, const void *src, size_t n, uint64_t device, size_t span) {
    if (!current()) return INVALID_CONTEXT;
    pthread_mutex_lock(&lock);
    int known = find(device, span) != NULL;
    pthread_mutex_unlock(&lock);
    if (!known) return INVALID_VALUE;
    memcpy(dst, src, n);
    return OK;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n) { return copy((void *)(uintptr_t)d, s, n, d, n); }
// FAKE_CUDA_FAIL_HTOD_AFTER=N: the asynchronous host-to-device copies of more than 4 KiB after the first N fail (a
// device fault while copying buckets; the few values an NCCL all-reduce copies in still arrive, so ranks can agree).
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, void *stream) {
    (void)stream;
    static int copies;
    int limit = env_int("FAKE_CUDA_FAIL_HTOD_AFTER", -1);
    if (limit >= 0 && n > 4096 && __atomic_fetch_add(&copies, 1, __ATOMIC_ACQ_REL) >= limit) return ILLEGAL_ADDRESS;
    return cuMemcpyHtoD_v2(d, s, n);
}
CUresult cuMemcpyDtoH_v2(void *d, CUdeviceptr s, size_t n) { return copy(d, (const void *)(uintptr_t)s, n, s, n); }

// Device-to-device copies run at once (the stand-in's streams only order NCCL calls; callers wait for those first).
static CUresult copy_within(uint64_t d, uint64_t s, size_t n) {
    if (!current()) return INVALID_CONTEXT;
    pthread_mutex_lock(&lock);
    int known = find(d, n) != NULL && find(s, n) != NULL;
    pthread_mutex_unlock(&lock);
    if (!known) return INVALID_VALUE;
    if ((d < s ? s - d : d - s) < n) return INVALID_VALUE; // cuMemcpy leaves overlapping copies undefined: refuse them.
    memcpy((void *)(uintptr_t)d, (const void *)(uintptr_t)s, n);
    return OK;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void *stream) { (void)stream; return copy_within(d, s, n); }

// CUDA_MEMCPY2D as cuda.h lays it out.
typedef struct {
    size_t srcXInBytes, srcY; int srcMemoryType; const void *srcHost; CUdeviceptr srcDevice; void *srcArray; size_t srcPitch;
    size_t dstXInBytes, dstY; int dstMemoryType; void *dstHost; CUdeviceptr dstDevice; void *dstArray; size_t dstPitch;
    size_t WidthInBytes, Height;
} memcpy2d;
_Static_assert(sizeof(memcpy2d) == 128, "CUDA_MEMCPY2D is 128 bytes");
// FAKE_CUDA_REFUSE_2D=1: strided copies fail as a driver refusing the pitches would (the caller copies row by row).
CUresult cuMemcpy2DAsync_v2(const memcpy2d *c, void *stream) {
    (void)stream;
    if (env_int("FAKE_CUDA_REFUSE_2D", 0)) return INVALID_VALUE;
    if (c->srcMemoryType != 2 || c->dstMemoryType != 2 || c->srcXInBytes || c->srcY || c->dstXInBytes || c->dstY) return INVALID_VALUE;
    if (c->srcPitch < c->WidthInBytes || c->dstPitch < c->WidthInBytes) return INVALID_VALUE;
    for (size_t r = 0; r < c->Height; r++) {
        CUresult e = copy_within(c->dstDevice + r * c->dstPitch, c->srcDevice + r * c->srcPitch, c->WidthInBytes);
        if (e != OK) return e;
    }
    return OK;
}

CUresult cuStreamCreate(void **s, unsigned flags) { (void)flags; if (!current()) return INVALID_CONTEXT; *s = calloc(1, sizeof(struct fake_stream)); return OK; }
CUresult cuStreamDestroy_v2(void *s) { free(s); return OK; }
static int stream_done(struct fake_stream *s, int64_t target) { return !s || __atomic_load_n(&s->completed, __ATOMIC_ACQUIRE) >= target; }
CUresult cuStreamSynchronize(void *p) {
    struct fake_stream *s = p;
    while (!stream_done(s, __atomic_load_n(&s->submitted, __ATOMIC_ACQUIRE))) usleep(50);
    return OK;
}
CUresult cuEventCreate(void **e, unsigned flags) { (void)flags; if (!current()) return INVALID_CONTEXT; *e = calloc(1, sizeof(struct event)); return OK; }
CUresult cuEventDestroy_v2(void *e) { free(e); return OK; }
CUresult cuEventRecord(void *p, void *s) {
    if (!current()) return INVALID_CONTEXT;
    struct event *e = p;
    e->stream = s;
    e->target = s ? __atomic_load_n(&e->stream->submitted, __ATOMIC_ACQUIRE) : 0;
    return OK;
}
CUresult cuEventQuery(void *p) { struct event *e = p; return stream_done(e->stream, e->target) ? OK : NOT_READY; }
CUresult cuEventSynchronize(void *p) { struct event *e = p; while (!stream_done(e->stream, e->target)) usleep(50); return OK; }

CUresult cuIpcGetMemHandle(CUipcMemHandle *h, CUdeviceptr p) {
    if (!current()) return INVALID_CONTEXT;
    pthread_mutex_lock(&lock);
    struct block *b = find(p, 1);
    pthread_mutex_unlock(&lock);
    if (!b || b->ptr != p || !b->owned) return INVALID_VALUE;
    memset(h, 0, sizeof *h);
    memcpy(h->reserved, b->name, strlen(b->name));
    memcpy(h->reserved + 56, &b->size, sizeof b->size);
    return OK;
}

// The handle must arrive whole: the name (NUL-terminated in its 40 bytes), zeros to byte 56, then the
// size, which must be the allocation's. A real driver refuses a handle of its own process's memory.
CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *p, CUipcMemHandle h, unsigned flags) {
    if (!current()) return INVALID_CONTEXT;
    if (flags != 1) return INVALID_VALUE;
    struct block *b = calloc(1, sizeof *b);
    memcpy(b->name, h.reserved, 40);
    memcpy(&b->size, h.reserved + 56, sizeof b->size);
    int pid = 0, end = 0;
    int shaped = b->name[39] == '\0' && sscanf(b->name, "/fakecuda-%d-%*d%n", &pid, &end) == 1 && end == (int)strlen(b->name);
    for (int i = 40; i < 56; i++) shaped = shaped && h.reserved[i] == 0;
    if (!shaped || b->size == 0) { free(b); return INVALID_VALUE; }
    if (pid == getpid()) { free(b); return INVALID_CONTEXT; }
    int fd = shm_open(b->name, O_RDWR, 0);
    if (fd < 0) { free(b); return INVALID_VALUE; }
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size != b->size) { close(fd); free(b); return INVALID_VALUE; }
    void *m = mmap(NULL, b->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) { free(b); return OUT_OF_MEMORY; }
    b->ptr = (uint64_t)(uintptr_t)m;
    pthread_mutex_lock(&lock); b->next = blocks; blocks = b; pthread_mutex_unlock(&lock);
    *p = b->ptr;
    return OK;
}
CUresult cuIpcOpenMemHandle(CUdeviceptr *p, CUipcMemHandle h, unsigned flags) { return cuIpcOpenMemHandle_v2(p, h, flags); }
CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr p) {
    if (!current()) return INVALID_CONTEXT;
    pthread_mutex_lock(&lock);
    struct block *b = find(p, 1);
    if (b) { if (base) *base = b->ptr; if (size) *size = b->size; }
    pthread_mutex_unlock(&lock);
    return b ? OK : INVALID_VALUE;
}
CUresult cuIpcCloseMemHandle(CUdeviceptr p) { return current() ? release(p, 0) : INVALID_CONTEXT; }

static const char *names[][2] = {
    {"CUDA_SUCCESS", "no error"}, {"CUDA_ERROR_INVALID_VALUE", "invalid argument"}, {"CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
};
CUresult cuGetErrorName(CUresult e, const char **s) {
    switch (e) {
    case 0: case 1: case 2: *s = names[e][0]; return OK;
    case NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; return OK;
    case INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; return OK;
    case INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; return OK;
    case NOT_READY: *s = "CUDA_ERROR_NOT_READY"; return OK;
    case ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; return OK;
    case ALREADY_REGISTERED: *s = "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"; return OK;
    case NOT_REGISTERED: *s = "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED"; return OK;
    default: *s = NULL; return INVALID_VALUE;
    }
}
CUresult cuGetErrorString(CUresult e, const char **s) {
    if (e >= 0 && e <= 2) { *s = names[e][1]; return OK; }
    if (e == INVALID_CONTEXT) { *s = "invalid device context"; return OK; }
    const char *n; if (cuGetErrorName(e, &n) != OK) { *s = NULL; return INVALID_VALUE; }
    *s = n; return OK;
}
