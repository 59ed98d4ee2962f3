/* Reads between two processes of one host over UCX, as the P2P store would do them: the reader pulls 8 MiB
 * chunks, 32 in flight, either with ucp_get_nbx from the owner's mapped memory ("get") or by asking the owner
 * to tag-send each chunk from that memory, which the reader receives by rendezvous ("tag"). Memory is the
 * owner's own (mmap, written before mapping), as the ranks' registered buffers are.
 * Build: gcc -O2 -o onehost onehost.c -lucp -lucs      Run: ./run.sh get|tag [SIZE] [ROUNDS] [VAR=VALUE...] */
#include <ucp/api/ucp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>
#include <time.h>
#include <sys/mman.h>

#define CHUNK (8ul << 20)
#define WINDOW 32
#define TAG_HELLO (1ull << 62)
#define TAG_REQ (1ull << 61)
#define CHECK(x) do { ucs_status_t s_ = (x); if (s_ != UCS_OK) { fprintf(stderr, "%s: %s\n", #x, ucs_status_string(s_)); exit(1); } } while (0)

static ucp_context_h ctx; static ucp_worker_h wrk;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void put_file(const char *dir, const char *name, const void *p, size_t n) {
    char path[512], tmp[520]; snprintf(path, sizeof path, "%s/%s", dir, name); snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb"); fwrite(p, 1, n, f); fclose(f); rename(tmp, path);
}
static void *get_file(const char *dir, const char *name, size_t *n) {
    char path[512]; snprintf(path, sizeof path, "%s/%s", dir, name); FILE *f;
    while (!(f = fopen(path, "rb"))) { ucp_worker_progress(wrk); usleep(1000); }
    fseek(f, 0, SEEK_END); *n = ftell(f); fseek(f, 0, SEEK_SET); void *p = malloc(*n); fread(p, 1, *n, f); fclose(f); return p;
}
static void wait_req(void *r) {
    if (UCS_PTR_IS_ERR(r)) { fprintf(stderr, "request failed: %s\n", ucs_status_string(UCS_PTR_STATUS(r))); exit(1); }
    if (!r) return;
    while (ucp_request_check_status(r) == UCS_INPROGRESS) ucp_worker_progress(wrk);
    CHECK(ucp_request_check_status(r)); ucp_request_free(r);
}
static void *alloc_touched(size_t size, int pattern) {
    unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < size; i++) p[i] = pattern ? (unsigned char)(i * 13 + (i >> 9)) : 0;
    return p;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: owner DIR SIZE | reader DIR SIZE get|tag ROUNDS\n"); return 2; }
    const char *dir = argv[2]; size_t size = strtoull(argv[3], 0, 0);
    ucp_config_t *cfg; CHECK(ucp_config_read(NULL, NULL, &cfg));
    ucp_params_t pp = { .field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_RMA | UCP_FEATURE_TAG };
    CHECK(ucp_init(&pp, cfg, &ctx)); ucp_config_release(cfg);
    ucp_worker_params_t wp = { .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE, .thread_mode = UCS_THREAD_MODE_SINGLE };
    CHECK(ucp_worker_create(ctx, &wp, &wrk));
    ucp_address_t *addr; size_t alen; CHECK(ucp_worker_get_address(wrk, &addr, &alen));
    ucp_request_param_t none = { 0 };
    if (!strcmp(argv[1], "owner")) {
        unsigned char *buf = alloc_touched(size, 1);
        ucp_mem_map_params_t mp = { .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH, .address = buf, .length = size };
        ucp_mem_h memh; CHECK(ucp_mem_map(ctx, &mp, &memh));
        void *rk; size_t rklen; CHECK(ucp_rkey_pack(ctx, memh, &rk, &rklen));
        uint64_t base = (uint64_t)buf;
        put_file(dir, "owner.rkey", rk, rklen); put_file(dir, "owner.base", &base, 8); put_file(dir, "owner.addr", addr, alen);
        /* hello: the reader's worker address */
        char hello[4096]; ucp_tag_recv_info_t info;
        void *r = ucp_tag_recv_nbx(wrk, hello, sizeof hello, TAG_HELLO, ~0ull, &none); wait_req(r);
        ucp_ep_params_t ep_p = { .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | (getenv("ERRPEER") ? UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE : 0), .address = (ucp_address_t *)hello, .err_mode = UCP_ERR_HANDLING_MODE_PEER };
        ucp_ep_h ep; CHECK(ucp_ep_create(wrk, &ep_p, &ep));
        void *sends[4096]; int nsend = 0; uint64_t req[3];
        for (;;) {
            r = ucp_tag_recv_nbx(wrk, req, sizeof req, TAG_REQ, ~0ull, &none);
            if (UCS_PTR_IS_ERR(r)) { fprintf(stderr, "owner recv: %s\n", ucs_status_string(UCS_PTR_STATUS(r))); return 1; }
            while (r && ucp_request_check_status(r) == UCS_INPROGRESS) {
                ucp_worker_progress(wrk);
                for (int i = nsend - 1; i >= 0; i--) if (ucp_request_check_status(sends[i]) != UCS_INPROGRESS) { ucp_request_free(sends[i]); sends[i] = sends[--nsend]; }
            }
            if (r) ucp_request_free(r);
            if (req[1] == 0) break;
            void *s = ucp_tag_send_nbx(ep, buf + req[0], req[1], req[2], &none);
            if (UCS_PTR_IS_ERR(s)) { fprintf(stderr, "owner send: %s\n", ucs_status_string(UCS_PTR_STATUS(s))); return 1; }
            if (UCS_PTR_IS_PTR(s)) sends[nsend++] = s;
        }
        while (nsend) { ucp_worker_progress(wrk); for (int i = nsend - 1; i >= 0; i--) if (ucp_request_check_status(sends[i]) != UCS_INPROGRESS) { ucp_request_free(sends[i]); sends[i] = sends[--nsend]; } }
        (void)info; return 0;
    }
    const char *mode = argv[4]; int rounds = atoi(argv[5]);
    size_t n; void *oaddr = get_file(dir, "owner.addr", &n); uint64_t *base = get_file(dir, "owner.base", &n); void *rk = get_file(dir, "owner.rkey", &n);
    ucp_ep_params_t ep_p = { .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | (getenv("ERRPEER") ? UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE : 0), .address = oaddr, .err_mode = UCP_ERR_HANDLING_MODE_PEER };
    ucp_ep_h ep; CHECK(ucp_ep_create(wrk, &ep_p, &ep));
    ucp_rkey_h rkey; CHECK(ucp_ep_rkey_unpack(ep, rk, &rkey));
    wait_req(ucp_tag_send_nbx(ep, addr, alen, TAG_HELLO, &none));
    unsigned char *dst = alloc_touched(size, 0);
    size_t chunks = size / CHUNK; uint64_t reqs[WINDOW][3];
    for (int round = 0; round < rounds; round++) {
        memset(dst, 0, size);
        double t0 = now(); void *inflight[WINDOW] = { 0 }; void *reqsend[WINDOW] = { 0 }; size_t next = 0, done = 0;
        while (done < chunks) {
            for (int w = 0; w < WINDOW; w++) {
                if (inflight[w] && ucp_request_check_status(inflight[w]) != UCS_INPROGRESS) {
                    CHECK(ucp_request_check_status(inflight[w])); ucp_request_free(inflight[w]); inflight[w] = 0; done++;
                    if (reqsend[w]) { wait_req(reqsend[w]); reqsend[w] = 0; }
                }
                if (!inflight[w] && next < chunks) {
                    size_t off = next++ * CHUNK;
                    if (!strcmp(mode, "get")) {
                        void *r = ucp_get_nbx(ep, dst + off, CHUNK, *base + off, rkey, &none);
                        if (UCS_PTR_IS_ERR(r)) { fprintf(stderr, "get failed\n"); return 1; }
                        if (r) inflight[w] = r; else done++;
                    } else {
                        inflight[w] = ucp_tag_recv_nbx(wrk, dst + off, CHUNK, off, ~0ull, &none);
                        if (!inflight[w]) { fprintf(stderr, "recv completed at once\n"); return 1; }
                        reqs[w][0] = off; reqs[w][1] = CHUNK; reqs[w][2] = off;
                        void *s = ucp_tag_send_nbx(ep, reqs[w], sizeof reqs[w], TAG_REQ, &none);
                        if (UCS_PTR_IS_ERR(s)) { fprintf(stderr, "req failed\n"); return 1; }
                        reqsend[w] = s;
                    }
                }
            }
            ucp_worker_progress(wrk);
        }
        double t = now() - t0;
        size_t bad = 0; for (size_t i = 0; i < chunks * CHUNK; i++) if (dst[i] != (unsigned char)(i * 13 + (i >> 9))) { bad++; break; }
        printf("%s round %d: %.2f GB/s%s\n", mode, round, chunks * CHUNK / t / 1e9, bad ? " MISMATCH" : "");
    }
    uint64_t stop[3] = { 0, 0, 0 }; wait_req(ucp_tag_send_nbx(ep, stop, sizeof stop, TAG_REQ, &none));
    return 0;
}
