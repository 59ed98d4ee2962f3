// A stand-in for NCCL (libnccl.so.2) for tests without GPUs: ranks in different processes meet in
// POSIX shared memory, one file per collective call. Like NCCL it refuses a config without its magic
// and 2.14 version, keeps a non-blocking communicator "in progress" until every rank has joined, runs
// each collective asynchronously on the given stream (an event recorded after it is ready when it is
// done), reports a failure through ncclCommGetAsyncError, and stops a collective stuck on a missing
// peer when the communicator is aborted. Works with fake_cuda's memory and streams.
// Point-to-point sends and receives match per pair of ranks in call order (each direction numbered on its
// own); those between ncclGroupStart and ncclGroupEnd (per thread, as in NCCL) are issued together at the
// end, so a rank that sends and receives in one group cannot deadlock. A peer outside the communicator is
// refused at the call, and a receive whose count differs from its send fails both with ncclInvalidUsage.
// With FAKE_NCCL_ORDER_DIR set, every operation a process submits is logged there (PID.log: communicator and
// the operation's number on it, in submission order), so a test can check that the ranks submitted operations on
// their several communicators in one order (NCCL's rule; an order that differs between ranks can deadlock).
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
enum { SUCCESS = 0, SYSTEM_ERROR = 2, INVALID_ARGUMENT = 4, INVALID_USAGE = 5, REMOTE_ERROR = 6, IN_PROGRESS = 7 };
enum { INT64 = 4, UINT8 = 1, SUM = 0, MAX = 2, MIN = 3 };

struct comm {
    int rank, size, state, aborted, running;
    double enqueuing_until; // Like a non-blocking NCCL call: "in progress" for a moment after it returns.
    long seq;
    char name[100], error[200];
    int64_t *init;
    long *sends, *receives; // Point-to-point operations issued so far, per peer: they match in this order.
    pthread_t thread;
};
struct header { int64_t arrived, ready, done; int64_t pad[5]; };
struct p2p { struct comm *c; int send, peer; const void *data; void *into; size_t count; long seq; };
struct op { struct comm *c; struct fake_stream *stream; int broadcast, root, type, reduce; const void *send; void *recv; size_t count; long seq;
            struct p2p *items; int nitems; };
// A point-to-point transfer's meeting place: the sender's count and its flags (the bytes lie in a second file).
struct p2p_header { int64_t count, ready, done, refused; int64_t pad[4]; };

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
    c->sends = calloc((size_t)size, sizeof(long)); c->receives = calloc((size_t)size, sizeof(long));
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

static void *transfer(void *p) {
    struct p2p *t = p;
    struct comm *c = t->c;
    int from = t->send ? c->rank : t->peer, to = t->send ? t->peer : c->rank;
    char name[200], data_name[210];
    snprintf(name, sizeof name, "%s-p%d-%d-%ld", c->name, from, to, t->seq);
    snprintf(data_name, sizeof data_name, "%s-d", name);
    struct p2p_header *h = open_shared(name, sizeof *h);
    if (!h) { fail(c, SYSTEM_ERROR, "no shared memory"); return NULL; }
    char what[200];
    if (t->send) {
        char *data = t->count ? open_shared(data_name, t->count) : NULL;
        if (t->count && !data) { fail(c, SYSTEM_ERROR, "no shared memory"); munmap(h, sizeof *h); return NULL; }
        if (t->count) { memcpy(data, t->data, t->count); munmap(data, t->count); }
        __atomic_store_n(&h->count, (int64_t)t->count, __ATOMIC_RELAXED);
        __atomic_store_n(&h->ready, 1, __ATOMIC_RELEASE);
        snprintf(what, sizeof what, "timed out waiting for rank %d to receive a send", to);
        if (wait_for(&h->done, 1, c, what) == SUCCESS && __atomic_load_n(&h->refused, __ATOMIC_ACQUIRE)) {
            snprintf(what, sizeof what, "rank %d sent %zu bytes to rank %d, which receives %lld", from, t->count, to, (long long)h->refused - 1);
            fail(c, INVALID_USAGE, what);
        }
        shm_unlink(data_name);
        shm_unlink(name);
    } else {
        snprintf(what, sizeof what, "timed out waiting for rank %d to send", from);
        if (wait_for(&h->ready, 1, c, what) == SUCCESS) {
            int64_t count = __atomic_load_n(&h->count, __ATOMIC_RELAXED);
            if ((size_t)count != t->count) {
                __atomic_store_n(&h->refused, (int64_t)t->count + 1, __ATOMIC_RELEASE);
                snprintf(what, sizeof what, "rank %d receives %zu bytes from rank %d, which sends %lld", to, t->count, from, (long long)count);
                fail(c, INVALID_USAGE, what);
            } else if (count) {
                char *data = open_shared(data_name, t->count);
                if (data) { memcpy(t->into, data, t->count); munmap(data, t->count); } else fail(c, SYSTEM_ERROR, "no shared memory");
            }
            __atomic_add_fetch(&h->done, 1, __ATOMIC_ACQ_REL);
        }
    }
    munmap(h, sizeof *h);
    return NULL;
}

static void run(struct op *o) {
    struct comm *c = o->c;
    if (o->nitems) { // A group's transfers progress independently: one thread each.
        pthread_t *threads = calloc((size_t)o->nitems, sizeof *threads);
        for (int i = 0; i < o->nitems; i++) pthread_create(&threads[i], NULL, transfer, &o->items[i]);
        for (int i = 0; i < o->nitems; i++) pthread_join(threads[i], NULL);
        free(threads);
        free(o->items);
        return;
    }
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

static pthread_mutex_t order_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *order_log;

static void log_submission(struct comm *c, long seq) {
    const char *dir = getenv("FAKE_NCCL_ORDER_DIR");
    if (!dir || !*dir) return;
    pthread_mutex_lock(&order_lock);
    if (!order_log) {
        char path[400]; snprintf(path, sizeof path, "%.300s/%d.log", dir, getpid());
        order_log = fopen(path, "a");
    }
    if (order_log) { fprintf(order_log, "%s %ld\n", c->name, seq); fflush(order_log); }
    pthread_mutex_unlock(&order_lock);
}

static int enqueue(struct op *o) {
    struct comm *c = o->c;
    int state = __atomic_load_n(&c->state, __ATOMIC_ACQUIRE);
    if (state != SUCCESS) { free(o->items); free(o); return state == IN_PROGRESS ? INVALID_ARGUMENT : state; }
    if (c->running) pthread_join(c->thread, NULL);  // One collective at a time, in order, as on one stream.
    o->seq = ++c->seq;
    log_submission(c, o->seq);
    if (c->size == 1 && !o->nitems) {
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

// The calling thread's open group (NCCL's groups are per thread): its transfers, issued at its end.
struct pending { struct p2p t; void *stream; };
static __thread int group_depth, group_error, npending, capacity;
static __thread struct pending *pending;

static int refuse_in_group(struct comm *c) {
    snprintf(c->error, sizeof c->error, "fake nccl: rank %d: collectives inside a group are not supported by the stand-in", c->rank);
    return INVALID_USAGE;
}

int ncclBroadcast(const void *send, void *recv, size_t count, int type, int root, struct comm *c, void *stream) {
    if (group_depth) return refuse_in_group(c);
    if (type != UINT8 || root < 0 || root >= c->size || !stream) return INVALID_ARGUMENT;
    struct op *o = make(c, stream, send, recv, count);
    o->broadcast = 1; o->root = root;
    return enqueue(o);
}

int ncclAllReduce(const void *send, void *recv, size_t count, int type, int op, struct comm *c, void *stream) {
    if (group_depth) return refuse_in_group(c);
    if (type != INT64 || (op != SUM && op != MIN && op != MAX) || !stream) return INVALID_ARGUMENT;
    struct op *o = make(c, stream, send, recv, count);
    o->reduce = op;
    return enqueue(o);
}

// Issues the thread's pending transfers, one operation per communicator. A communicator's transfers in one group
// must share a stream (the stand-in's limit; NCCL allows several).
static int issue(void) {
    int result = SUCCESS;
    for (int i = 0; i < npending; i++) {
        if (!pending[i].t.c) continue;
        struct comm *c = pending[i].t.c;
        struct op *o = make(c, pending[i].stream, NULL, NULL, 0);
        o->items = calloc((size_t)npending, sizeof *o->items);
        int mixed = 0;
        for (int j = i; j < npending; j++) {
            if (pending[j].t.c != c) continue;
            mixed |= pending[j].stream != pending[i].stream;
            struct p2p t = pending[j].t;
            t.seq = t.send ? c->sends[t.peer]++ : c->receives[t.peer]++; // Issued in call order: matched in call order.
            o->items[o->nitems++] = t;
            pending[j].t.c = NULL;
        }
        int r;
        if (mixed) {
            snprintf(c->error, sizeof c->error, "fake nccl: rank %d: a group's transfers on one communicator must share a stream", c->rank);
            free(o->items); free(o);
            r = INVALID_USAGE;
        } else {
            r = enqueue(o);
        }
        if (r != SUCCESS && r != IN_PROGRESS) result = r;
        else if (result == SUCCESS) result = r;
    }
    npending = 0;
    return result;
}

static int point_to_point(int send, const void *data, void *into, size_t count, int type, int peer, struct comm *c, void *stream) {
    if (type != UINT8 || !stream || (count && !(send ? data : into))) return group_depth ? (group_error = INVALID_ARGUMENT) : INVALID_ARGUMENT;
    if (peer < 0 || peer >= c->size) {
        snprintf(c->error, sizeof c->error, "fake nccl: rank %d: %s rank %d, which is not a rank of this communicator (size %d)",
                 c->rank, send ? "send to" : "receive from", peer, c->size);
        return group_depth ? (group_error = INVALID_ARGUMENT) : INVALID_ARGUMENT;
    }
    if (npending == capacity) { capacity = capacity ? 2 * capacity : 16; pending = realloc(pending, (size_t)capacity * sizeof *pending); }
    pending[npending++] = (struct pending){ { c, send, peer, data, into, count, 0 }, stream };
    return group_depth ? SUCCESS : issue(); // Outside a group: issued at once, as a group of one.
}

int ncclSend(const void *data, size_t count, int type, int peer, struct comm *c, void *stream) { return point_to_point(1, data, NULL, count, type, peer, c, stream); }
int ncclRecv(void *into, size_t count, int type, int peer, struct comm *c, void *stream) { return point_to_point(0, NULL, into, count, type, peer, c, stream); }

int ncclGroupStart(void) { group_depth++; return SUCCESS; }

// Like NCCL: a failed call inside the group fails the group end, and nothing of the group is issued.
int ncclGroupEnd(void) {
    if (group_depth == 0) return INVALID_USAGE;
    if (--group_depth) return SUCCESS;
    if (group_error) { int e = group_error; group_error = 0; npending = 0; return e; }
    return issue();
}

static int close_comm(struct comm *c) {
    if (c->running) pthread_join(c->thread, NULL);
    char init[160]; snprintf(init, sizeof init, "%s-init", c->name);
    shm_unlink(init);
    munmap(c->init, sizeof(struct header));
    free(c->sends); free(c->receives);
    free(c);
    return SUCCESS;
}
int ncclCommAbort(struct comm *c) { __atomic_store_n(&c->aborted, 1, __ATOMIC_RELEASE); return close_comm(c); }
int ncclCommDestroy(struct comm *c) { return close_comm(c); }
