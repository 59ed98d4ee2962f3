// A stand-in for NCCL (libnccl.so.2) for tests without GPUs: ranks in different processes meet in
// POSIX shared memory, one file per collective call. Like NCCL it refuses a config without its magic
// and 2.14 version, keeps a non-blocking communicator "in progress" until every rank has joined, runs
// each collective asynchronously on the given stream (an event recorded after it is ready when it is
// done), reports a failure through ncclCommGetAsyncError, and stops a collective stuck on a missing
// peer when the communicator is aborted. Works with fake_cuda's memory and streams.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fake_gpu.h"

typedef struct { char internal[128]; } ncclUniqueId;
typedef struct { size_t size; unsigned magic, version; int blocking; } ncclConfig;
enum { SUCCESS = 0, SYSTEM_ERROR = 2, INVALID_ARGUMENT = 4, REMOTE_ERROR = 6, IN_PROGRESS = 7 };
enum { INT64 = 4, UINT8 = 1, SUM = 0, MAX = 2, MIN = 3 };

struct comm {
    int rank, size, state, aborted, running;
    double enqueuing_until; // Like a non-blocking NCCL call: "in progress" for a moment after it returns.
    long seq;
    char name[100], error[200];
    int64_t *init;
    pthread_t thread;
};
struct header { int64_t arrived, ready, done; int64_t pad[5]; };
struct op { struct comm *c; struct fake_stream *stream; int broadcast, root, type, reduce; const void *send; void *recv; size_t count; long seq; };

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static double timeout_s(void) { const char *v = getenv("FAKE_NCCL_TIMEOUT_S"); return v && *v ? atof(v) : 60; }

static void *open_shared(const char *name, size_t n) {
    int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
    if (fd < 0) return NULL;
    if (ftruncate(fd, (off_t)n) != 0) { close(fd); return NULL; }
    void *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    return m == MAP_FAILED ? NULL : m;
}

static int fail(struct comm *c, int code, const char *what) {
    snprintf(c->error, sizeof c->error, "fake nccl: rank %d: %s", c->rank, what);
    __atomic_store_n(&c->state, code, __ATOMIC_RELEASE);
    return code;
}

static int wait_for(int64_t *value, int64_t target, struct comm *c, const char *what) {
    double until = now() + timeout_s();
    while (__atomic_load_n(value, __ATOMIC_ACQUIRE) < target) {
        if (__atomic_load_n(&c->aborted, __ATOMIC_ACQUIRE)) return fail(c, SYSTEM_ERROR, "aborted while waiting for peers");
        if (now() > until) return fail(c, REMOTE_ERROR, what);
        usleep(50);
    }
    return SUCCESS;
}

int ncclGetVersion(int *v) { *v = 21400; return SUCCESS; }
const char *ncclGetLastError(struct comm *c) { return c ? c->error : "fake nccl: no communicator"; }

int ncclGetUniqueId(ncclUniqueId *id) {
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "/fakenccl-%d-%ld", getpid(), (long)(now() * 1e6));
    return SUCCESS;
}

int ncclCommInitRankConfig(struct comm **out, int size, ncclUniqueId id, int rank, ncclConfig *config) {
    if (!config || config->magic != 0xcafebeef || config->version < 21400 || config->size < sizeof(ncclConfig)) return INVALID_ARGUMENT;
    if (size < 1 || rank < 0 || rank >= size) return INVALID_ARGUMENT;
    struct comm *c = calloc(1, sizeof *c);
    c->rank = rank; c->size = size;
    snprintf(c->name, sizeof c->name, "%.80s", id.internal);
    char init[160]; snprintf(init, sizeof init, "%s-init", c->name);
    c->init = open_shared(init, sizeof(struct header));
    if (!c->init) { free(c); return SYSTEM_ERROR; }
    __atomic_add_fetch(c->init, 1, __ATOMIC_ACQ_REL);
    c->state = config->blocking == 0 ? IN_PROGRESS : SUCCESS;
    if (c->state == SUCCESS && wait_for(c->init, size, c, "timed out in init") != SUCCESS) return SYSTEM_ERROR;
    *out = c;
    return c->state;
}

int ncclCommGetAsyncError(struct comm *c, int *state) {
    if (__atomic_load_n(&c->state, __ATOMIC_ACQUIRE) == IN_PROGRESS && __atomic_load_n(c->init, __ATOMIC_ACQUIRE) >= c->size) c->state = SUCCESS;
    *state = __atomic_load_n(&c->state, __ATOMIC_ACQUIRE);
    if (*state == SUCCESS && now() < c->enqueuing_until) *state = IN_PROGRESS;
    return SUCCESS;
}

static void run(struct op *o) {
    struct comm *c = o->c;
    char name[160]; snprintf(name, sizeof name, "%s-%ld", c->name, o->seq);
    size_t width = o->broadcast ? o->count : (size_t)c->size * o->count * 8;
    size_t n = sizeof(struct header) + width;
    struct header *h = open_shared(name, n);
    if (!h) { fail(c, SYSTEM_ERROR, "no shared memory"); return; }
    char *data = (char *)(h + 1);
    if (o->broadcast) {
        if (c->rank == o->root) {
            memcpy(data, o->send, o->count);
            if (o->send != o->recv) memmove(o->recv, o->send, o->count);
            __atomic_store_n(&h->ready, 1, __ATOMIC_RELEASE);
            if (wait_for(&h->done, c->size - 1, c, "timed out waiting for receivers of a broadcast") != SUCCESS) { munmap(h, n); return; }
            shm_unlink(name);
        } else {
            if (wait_for(&h->ready, 1, c, "timed out waiting for the root of a broadcast") != SUCCESS) { munmap(h, n); return; }
            memcpy(o->recv, data, o->count);
            __atomic_add_fetch(&h->done, 1, __ATOMIC_ACQ_REL);
        }
    } else {
        int64_t *slots = (int64_t *)data;
        memcpy(slots + (size_t)c->rank * o->count, o->send, o->count * 8);
        __atomic_add_fetch(&h->arrived, 1, __ATOMIC_ACQ_REL);
        if (wait_for(&h->arrived, c->size, c, "timed out waiting for peers of an all-reduce") != SUCCESS) { munmap(h, n); return; }
        int64_t *out = o->recv;
        for (size_t i = 0; i < o->count; i++) {
            int64_t v = slots[i];
            for (int r = 1; r < c->size; r++) {
                int64_t x = slots[(size_t)r * o->count + i];
                v = o->reduce == SUM ? v + x : o->reduce == MIN ? (x < v ? x : v) : (x > v ? x : v);
            }
            out[i] = v;
        }
        if (__atomic_add_fetch(&h->done, 1, __ATOMIC_ACQ_REL) == c->size) shm_unlink(name);
    }
    munmap(h, n);
}

static void *worker(void *p) {
    struct op *o = p;
    run(o);
    __atomic_add_fetch(&o->stream->completed, 1, __ATOMIC_ACQ_REL);
    free(o);
    return NULL;
}

static int enqueue(struct op *o) {
    struct comm *c = o->c;
    int state = __atomic_load_n(&c->state, __ATOMIC_ACQUIRE);
    if (state != SUCCESS) { free(o); return state == IN_PROGRESS ? INVALID_ARGUMENT : state; }
    if (c->running) pthread_join(c->thread, NULL);  // One collective at a time, in order, as on one stream.
    o->seq = ++c->seq;
    if (c->size == 1) {
        if (o->send != o->recv) memmove(o->recv, o->send, o->broadcast ? o->count : o->count * 8);
        free(o);
        return SUCCESS;
    }
    __atomic_add_fetch(&o->stream->submitted, 1, __ATOMIC_ACQ_REL);
    c->running = pthread_create(&c->thread, NULL, worker, o) == 0;
    if (!c->running) return SYSTEM_ERROR;
    c->enqueuing_until = now() + 0.002; // Long enough that a caller polling for it sleeps (and may resume on another thread).
    return IN_PROGRESS;
}

static struct op *make(struct comm *c, void *stream, const void *send, void *recv, size_t count) {
    struct op *o = calloc(1, sizeof *o);
    o->c = c; o->stream = stream; o->send = send; o->recv = recv; o->count = count;
    return o;
}

int ncclBroadcast(const void *send, void *recv, size_t count, int type, int root, struct comm *c, void *stream) {
    if (type != UINT8 || root < 0 || root >= c->size || !stream) return INVALID_ARGUMENT;
    struct op *o = make(c, stream, send, recv, count);
    o->broadcast = 1; o->root = root;
    return enqueue(o);
}

int ncclAllReduce(const void *send, void *recv, size_t count, int type, int op, struct comm *c, void *stream) {
    if (type != INT64 || (op != SUM && op != MIN && op != MAX) || !stream) return INVALID_ARGUMENT;
    struct op *o = make(c, stream, send, recv, count);
    o->reduce = op;
    return enqueue(o);
}

static int close_comm(struct comm *c) {
    if (c->running) pthread_join(c->thread, NULL);
    char init[160]; snprintf(init, sizeof init, "%s-init", c->name);
    shm_unlink(init);
    munmap(c->init, sizeof(struct header));
    free(c);
    return SUCCESS;
}
int ncclCommAbort(struct comm *c) { __atomic_store_n(&c->aborted, 1, __ATOMIC_RELEASE); return close_comm(c); }
int ncclCommDestroy(struct comm *c) { return close_comm(c); }
