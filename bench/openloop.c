/* Open-loop HTTP/1.1 load engine for `make stress` (bench/stress.py compiles and drives it).
 *
 * Fires each request of a schedule at its intended time, whatever the server does, one TCP
 * connection per request ("Connection: close", as gunicorn's sync workers answer anyway). At most
 * `max_outstanding` connections are open; a due request waits for a slot in FIFO order. Every
 * latency runs from the intended time, so slot waits, listen-backlog waits and SYN retries all
 * count. A request unanswered `timeout_ms` after its intended time is a timeout error. A shot may
 * follow another (a feedback its prediction): when it falls due after that one failed, it is not
 * sent, as a client with no prediction has nothing to give feedback on.
 *
 * usage: openloop IPV4 PORT MAX_OUTSTANDING TIMEOUT_MS PAYLOADS SCHEDULE RESULTS
 *   PAYLOADS: u32 count, then per payload u32 length + bytes (whole HTTP requests)
 *   SCHEDULE: per shot f64 seconds-from-start + u32 payload index + i32 index of the shot it
 *             follows, -1 for none (little endian, packed)
 *   RESULTS:  per shot, in schedule order: f64 fire lag s, f64 latency s, i32 status, i32 error
 *             (error 0 none, 1 timeout, 2 connection refused/reset/closed early, 3 local: the
 *             generator itself could not open a socket, e.g. no free port or descriptor,
 *             4 dropped: not sent, the shot it follows had failed when it fell due)
 * Written in C because a Python event loop spends 200-500 us of CPU per connection here, which
 * caps it below the bursts it must offer (README, "Capacity and bursts").
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { E_NONE = 0, E_TIMEOUT = 1, E_CONNECTION = 2, E_LOCAL = 3, E_DROPPED = 4 };
enum { SHOT = 16 };  /* bytes per schedule record */
enum { BUF = 8192 };

typedef struct { double at; uint32_t payload; int32_t after; } shot_t;
typedef struct { double lag, latency; int32_t status, error; } result_t;
typedef struct {
    int fd;            /* -1 when the slot is free */
    long shot;
    size_t sent;
    int connected;
    size_t got, head_end, length; /* length: Content-Length, or SIZE_MAX while unknown */
    char buf[BUF];
} conn_t;

static char **payload; static uint32_t *payload_len;
static shot_t *shots; static result_t *results; static long nshots;
static conn_t *conns; static int *free_slots; static int nfree;
static long *queue; static long qhead, qtail;   /* due shots waiting for a slot */
static struct sockaddr_in addr;
static double t0, timeout_s;
static int ep;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END); *size = ftell(f); fseek(f, 0, SEEK_SET);
    void *data = malloc(*size ? *size : 1);
    if (fread(data, 1, *size, f) != *size) { perror(path); exit(2); }
    fclose(f);
    return data;
}

static void load(const char *payloads_path, const char *schedule_path) {
    size_t size, off = 4;
    char *p = slurp(payloads_path, &size);
    uint32_t n; memcpy(&n, p, 4);
    payload = malloc(n * sizeof *payload); payload_len = malloc(n * sizeof *payload_len);
    for (uint32_t i = 0; i < n; i++) {
        memcpy(&payload_len[i], p + off, 4); payload[i] = p + off + 4; off += 4 + payload_len[i];
    }
    char *s = slurp(schedule_path, &size);
    nshots = size / SHOT;
    shots = malloc((nshots ? nshots : 1) * sizeof *shots);
    for (long i = 0; i < nshots; i++) {
        const char *rec = s + SHOT * i;
        memcpy(&shots[i].at, rec, 8); memcpy(&shots[i].payload, rec + 8, 4); memcpy(&shots[i].after, rec + 12, 4);
        if (shots[i].payload >= n) { fprintf(stderr, "shot %ld: no payload %u\n", i, shots[i].payload); exit(2); }
        if (shots[i].after >= i) { fprintf(stderr, "shot %ld: follows a later shot %d\n", i, shots[i].after); exit(2); }
    }
    results = calloc(nshots ? nshots : 1, sizeof *results);
    queue = malloc((nshots ? nshots : 1) * sizeof *queue);
}

/* Whether shot i has already failed: an error, or an answer other than 2xx (0: none yet). */
static int failed(long i) {
    if (i < 0) return 0;
    const result_t *r = &results[i];
    return r->error != E_NONE || (r->status != 0 && (r->status < 200 || r->status >= 300));
}

static void finish(int slot, int status, int error) {
    conn_t *c = &conns[slot];
    result_t *r = &results[c->shot];
    r->latency = now() - (t0 + shots[c->shot].at);
    r->status = status; r->error = error;
    close(c->fd);  /* SO_LINGER 0: a reset, so no TIME_WAIT piles up on the generator's ports */
    c->fd = -1;
    free_slots[nfree++] = slot;
}

/* The status once the buffer holds a whole answer (by Content-Length, or at EOF), else 0. */
static int parse(conn_t *c, int eof) {
    if (!c->head_end) {
        char *end = memmem(c->buf, c->got < BUF ? c->got : BUF, "\r\n\r\n", 4);
        if (!end) return eof ? -1 : 0;
        c->head_end = end - c->buf + 4;
        c->length = (size_t)-1;
        char keep = *end;  /* the header as a C string for a moment */
        *end = '\0';
        char *field = strcasestr(c->buf, "\r\ncontent-length:");
        if (field) c->length = strtoul(field + 17, NULL, 10);
        *end = keep;
    }
    int status = 0;
    if (sscanf(c->buf, "HTTP/1.%*d %d", &status) != 1) return -1;
    if (c->length == (size_t)-1) return eof ? status : 0;
    if (c->got - c->head_end >= c->length) return status;
    return eof ? -1 : 0;
}

static void on_readable(int slot) {
    conn_t *c = &conns[slot];
    for (;;) {
        char sink[BUF];
        char *into = c->got < BUF ? c->buf + c->got : sink;
        size_t room = c->got < BUF ? BUF - c->got : BUF;
        ssize_t n = read(c->fd, into, room);
        if (n > 0) {
            c->got += n;
            int status = parse(c, 0);
            if (status > 0) { finish(slot, status, E_NONE); return; }
            if (status < 0) { finish(slot, 0, E_CONNECTION); return; }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        int status = n == 0 ? parse(c, 1) : -1;
        finish(slot, status > 0 ? status : 0, status > 0 ? E_NONE : E_CONNECTION);
        return;
    }
}

static void on_writable(int slot) {
    conn_t *c = &conns[slot];
    if (!c->connected) {
        int err = 0; socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { finish(slot, 0, E_CONNECTION); return; }
        c->connected = 1;
    }
    const shot_t *s = &shots[c->shot];
    while (c->sent < payload_len[s->payload]) {
        ssize_t n = write(c->fd, payload[s->payload] + c->sent, payload_len[s->payload] - c->sent);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            finish(slot, 0, E_CONNECTION); return;
        }
        c->sent += n;
    }
    struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.u32 = slot };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void start(long shot) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { results[shot].error = E_LOCAL; results[shot].latency = now() - (t0 + shots[shot].at); return; }
    struct linger lg = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int slot = free_slots[--nfree];
    conn_t *c = &conns[slot];
    c->fd = fd; c->shot = shot; c->sent = 0; c->connected = 0; c->got = 0; c->head_end = 0;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        int local = errno == EADDRNOTAVAIL || errno == ENOBUFS || errno == EMFILE;
        finish(slot, 0, local ? E_LOCAL : E_CONNECTION);
        return;
    }
    struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = slot };
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

static void expire(double t) {
    while (qhead < qtail && t - (t0 + shots[queue[qhead]].at) >= timeout_s) {
        long s = queue[qhead++];
        results[s].error = E_TIMEOUT; results[s].latency = t - (t0 + shots[s].at);
    }
}

int main(int argc, char **argv) {
    if (argc != 8) { fprintf(stderr, "usage: openloop IPV4 PORT MAX_OUTSTANDING TIMEOUT_MS PAYLOADS SCHEDULE RESULTS\n"); return 2; }
    addr.sin_family = AF_INET; addr.sin_port = htons(atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) { fprintf(stderr, "not an IPv4 address: %s\n", argv[1]); return 2; }
    int max_out = atoi(argv[3]);
    timeout_s = atof(argv[4]) / 1000.0;
    load(argv[5], argv[6]);
    conns = calloc(max_out, sizeof *conns); free_slots = malloc(max_out * sizeof *free_slots);
    for (int i = 0; i < max_out; i++) { conns[i].fd = -1; free_slots[nfree++] = max_out - 1 - i; }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event events[256];
    long next = 0;
    double last_sweep = 0;
    t0 = now();
    while (next < nshots || qhead < qtail || nfree < max_out) {
        double t = now();
        for (; next < nshots && t0 + shots[next].at <= t; next++) {
            results[next].lag = t - (t0 + shots[next].at);
            if (failed(shots[next].after)) results[next].error = E_DROPPED;
            else queue[qtail++] = next;
        }
        expire(t);
        while (qhead < qtail && nfree > 0) start(queue[qhead++]);
        if (t - last_sweep > 0.005) {  /* time out open connections, oldest intended time first */
            last_sweep = t;
            for (int i = 0; i < max_out; i++)
                if (conns[i].fd >= 0 && t - (t0 + shots[conns[i].shot].at) >= timeout_s) finish(i, 0, E_TIMEOUT);
        }
        int wait_ms = 5;
        if (next < nshots) {
            double until = t0 + shots[next].at - now();
            wait_ms = until <= 0.001 ? 0 : (until < 0.005 ? (int)(until * 1000) : 5);
        }
        int n = epoll_wait(ep, events, 256, wait_ms);
        for (int i = 0; i < n; i++) {
            int slot = events[i].data.u32;
            if (conns[slot].fd < 0) continue;
            if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR) && conns[slot].connected)
                on_readable(slot);
            else if (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                on_writable(slot);
        }
    }
    FILE *out = fopen(argv[7], "wb");
    if (!out || fwrite(results, sizeof *results, nshots, out) != (size_t)nshots) { perror(argv[7]); return 2; }
    fclose(out);
    return 0;
}
