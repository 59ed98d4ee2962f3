// A stand-in for NCCL (libnccl.so.2) for tests without GPUs: ranks in different processes meet in
// POSIX shared memory, one file per collective call; the calls run synchronously on the caller's
// thread. Like NCCL it refuses a config without its magic and 2.14 version, and a non-blocking
// communicator stays "in progress" until every rank has joined. Works with fake_cuda's memory.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

typedef struct { char internal[128]; } ncclUniqueId;
typedef struct { size_t size; unsigned magic, version; int blocking; } ncclConfig;
enum { SUCCESS = 0, SYSTEM_ERROR = 2, INVALID_ARGUMENT = 4, IN_PROGRESS = 7 };
enum { INT64 = 4, UINT8 = 1, SUM = 0, MAX = 2, MIN = 3 };

struct comm { int rank, size, state; long seq; char name[100]; int64_t *init; char error[160]; };
struct header { int64_t arrived, ready, done; int64_t pad[5]; };

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

static int wait_for(int64_t *value, int64_t target, struct comm *c, const char *what) {
    double until = now() + timeout_s();
    while (__atomic_load_n(value, __ATOMIC_ACQUIRE) < target) {
        if (now() > until) {
            snprintf(c->error, sizeof c->error, "fake nccl: rank %d timed out waiting for peers in %s", c->rank, what);
            c->state = SYSTEM_ERROR;
            return SYSTEM_ERROR;
        }
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
    if (c->state == SUCCESS && wait_for(c->init, size, c, "init") != SUCCESS) return SYSTEM_ERROR;
    *out = c;
    return c->state;
}

int ncclCommGetAsyncError(struct comm *c, int *state) {
    if (c->state == IN_PROGRESS && __atomic_load_n(c->init, __ATOMIC_ACQUIRE) >= c->size) c->state = SUCCESS;
    *state = c->state;
    return SUCCESS;
}

static int finish(struct comm *c, void *m, size_t n, char *name, int64_t *done) {
    if (__atomic_add_fetch(done, 1, __ATOMIC_ACQ_REL) == c->size) shm_unlink(name);
    munmap(m, n);
    return SUCCESS;
}

int ncclBroadcast(const void *send, void *recv, size_t count, int type, int root, struct comm *c, void *stream) {
    (void)stream;
    if (type != UINT8 || root < 0 || root >= c->size) return INVALID_ARGUMENT;
    if (c->state != SUCCESS) return c->state == IN_PROGRESS ? INVALID_ARGUMENT : c->state;
    long seq = ++c->seq;
    if (c->size == 1) { if (send != recv) memmove(recv, send, count); return SUCCESS; }
    char name[160]; snprintf(name, sizeof name, "%s-%ld", c->name, seq);
    size_t n = sizeof(struct header) + count;
    struct header *h = open_shared(name, n);
    if (!h) return SYSTEM_ERROR;
    char *data = (char *)(h + 1);
    if (c->rank == root) {
        memcpy(data, send, count);
        if (send != recv) memmove(recv, send, count);
        __atomic_store_n(&h->ready, 1, __ATOMIC_RELEASE);
    } else {
        if (wait_for(&h->ready, 1, c, "broadcast") != SUCCESS) { munmap(h, n); return SYSTEM_ERROR; }
        memcpy(recv, data, count);
    }
    return finish(c, h, n, name, &h->done);
}

int ncclAllReduce(const void *send, void *recv, size_t count, int type, int op, struct comm *c, void *stream) {
    (void)stream;
    if (type != INT64 || (op != SUM && op != MIN && op != MAX)) return INVALID_ARGUMENT;
    if (c->state != SUCCESS) return c->state == IN_PROGRESS ? INVALID_ARGUMENT : c->state;
    long seq = ++c->seq;
    char name[160]; snprintf(name, sizeof name, "%s-%ld", c->name, seq);
    size_t n = sizeof(struct header) + (size_t)c->size * count * 8;
    struct header *h = open_shared(name, n);
    if (!h) return SYSTEM_ERROR;
    int64_t *slots = (int64_t *)(h + 1);
    memcpy(slots + (size_t)c->rank * count, send, count * 8);
    __atomic_add_fetch(&h->arrived, 1, __ATOMIC_ACQ_REL);
    if (wait_for(&h->arrived, c->size, c, "all-reduce") != SUCCESS) { munmap(h, n); return SYSTEM_ERROR; }
    int64_t *out = recv;
    for (size_t i = 0; i < count; i++) {
        int64_t v = slots[i];
        for (int r = 1; r < c->size; r++) {
            int64_t x = slots[(size_t)r * count + i];
            v = op == SUM ? v + x : op == MIN ? (x < v ? x : v) : (x > v ? x : v);
        }
        out[i] = v;
    }
    return finish(c, h, n, name, &h->done);
}

static int close_comm(struct comm *c) {
    char init[160]; snprintf(init, sizeof init, "%s-init", c->name);
    shm_unlink(init);
    munmap(c->init, sizeof(struct header));
    free(c);
    return SUCCESS;
}
int ncclCommAbort(struct comm *c) { return close_comm(c); }
int ncclCommDestroy(struct comm *c) { return close_comm(c); }
