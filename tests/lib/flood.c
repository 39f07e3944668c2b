/* tests/lib/flood.c: connection floods from 127.0.0.2 (see flood.h). */
#include "tests/lib/flood.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/conn.h"

void flood_raise_nofile(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void grow(struct flood *f, int more)
{
    if (f->n + more <= f->cap)
        return;
    int cap = f->n + more;
    f->fds = realloc(f->fds, (size_t)cap * sizeof *f->fds);
    f->ssl = realloc(f->ssl, (size_t)cap * sizeof *f->ssl);
    for (int i = f->cap; i < cap; i++) {
        f->fds[i] = -1;
        f->ssl[i] = NULL;
    }
    f->cap = cap;
}

/* A non-blocking socket bound to @f's source address, connecting to @addr. -1 on
 * failure. */
static int connect_from_src(const struct flood *f, const char *addr)
{
    struct sockaddr_storage dst;
    socklen_t dlen;
    if (rp_addr_parse(addr, &dst, &dlen) != 0)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in src = {.sin_family = AF_INET};
    inet_pton(AF_INET, f->src[0] ? f->src : FLOOD_SRC, &src.sin_addr);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0 ||
        (connect(fd, (struct sockaddr *)&dst, dlen) != 0 && errno != EINPROGRESS)) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool wait_connected(int fd, uint64_t deadline)
{
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= deadline)
            return false;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int n = poll(&p, 1, (int)(deadline - now));
        if (n > 0) {
            int err = 0;
            socklen_t l = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
            return err == 0;
        }
        if (n < 0 && errno != EINTR)
            return false;
    }
}

/* Opens @n sockets at once, then waits for them; each connected one gets @hello. */
static int open_many(struct flood *f, const char *addr, int n, const void *hello, size_t hlen)
{
    grow(f, n);
    int first = f->n;
    for (int i = 0; i < n; i++) {
        int fd = connect_from_src(f, addr);
        if (fd >= 0)
            f->fds[f->n++] = fd;
    }
    uint64_t deadline = mono_ms() + 10000;
    int ok = 0;
    for (int i = first; i < f->n; i++) {
        if (!wait_connected(f->fds[i], deadline))
            continue;
        ok++;
        if (hello != NULL && send(f->fds[i], hello, hlen, MSG_NOSIGNAL) < 0) {
            /* closed by the server already: still one the server had to take */
        }
    }
    return ok;
}

int flood_idle(struct flood *f, const char *addr, int n)
{
    snprintf(f->addr, sizeof f->addr, "%s", addr);
    f->hello = NULL;
    f->hello_len = 0;
    return open_many(f, addr, n, NULL, 0);
}

int flood_stalled_tls(struct flood *f, const char *addr, int n)
{
    /* A handshake record announcing 512 bytes, and the first 5 of its body. */
    static const uint8_t hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03};
    snprintf(f->addr, sizeof f->addr, "%s", addr);
    f->hello = hello;
    f->hello_len = sizeof hello;
    return open_many(f, addr, n, hello, sizeof hello);
}

/* True if the server closed @fd (EOF or reset); a flood sends nothing to read. */
static bool closed_by_server(int fd)
{
    char b[256];
    ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

static void *keeper_main(void *arg)
{
    struct flood *f = arg;
    while (!atomic_load(&f->stop)) {
        for (int i = 0; i < f->n && !atomic_load(&f->stop); i++) {
            if (f->fds[i] >= 0 && !closed_by_server(f->fds[i]))
                continue;
            if (f->fds[i] >= 0)
                close(f->fds[i]);
            f->fds[i] = connect_from_src(f, f->addr);
            if (f->fds[i] >= 0 && wait_connected(f->fds[i], mono_ms() + 1000)) {
                if (f->hello_len > 0)
                    send(f->fds[i], f->hello, f->hello_len, MSG_NOSIGNAL);
                atomic_fetch_add(&f->reopened, 1);
            }
        }
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

void flood_keep(struct flood *f)
{
    atomic_store(&f->stop, false);
    if (pthread_create(&f->keeper, NULL, keeper_main, f) == 0)
        f->keeping = true;
}

int flood_big_frames(struct flood *f, const char *addr, int n)
{
    if (f->ctx == NULL) {
        f->ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(f->ctx, TLS1_3_VERSION);
        SSL_CTX_set_verify(f->ctx, SSL_VERIFY_NONE, NULL);
    }
    grow(f, n);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        int fd = connect_from_src(f, addr);
        if (fd < 0)
            continue;
        if (!wait_connected(fd, mono_ms() + 5000)) {
            close(fd);
            continue;
        }
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        SSL *ssl = SSL_new(f->ctx);
        SSL_set_fd(ssl, fd);
        int slot = f->n++;
        f->fds[slot] = fd;
        f->ssl[slot] = ssl;
        if (SSL_connect(ssl) != 1)
            continue;
        static const uint8_t announce[] = {0x01, 0x00, 0x00, 0x00, 0x85, 0xa1};
        if (SSL_write(ssl, announce, sizeof announce) == (int)sizeof announce)
            ok++;
    }
    return ok;
}

int flood_trickle(struct flood *f)
{
    int open = 0;
    for (int i = 0; i < f->n; i++) {
        if (f->fds[i] < 0)
            continue;
        int r;
        if (f->ssl[i] != NULL) {
            int fl = fcntl(f->fds[i], F_GETFL);
            fcntl(f->fds[i], F_SETFL, fl | O_NONBLOCK);
            r = SSL_write(f->ssl[i], "m", 1);
        } else {
            r = (int)send(f->fds[i], "\x00", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (r > 0)
            open++;
    }
    return open;
}

void flood_close(struct flood *f)
{
    if (f->keeping) {
        atomic_store(&f->stop, true);
        pthread_join(f->keeper, NULL);
        f->keeping = false;
    }
    for (int i = 0; i < f->n; i++) {
        if (f->ssl[i] != NULL)
            SSL_free(f->ssl[i]);
        if (f->fds[i] >= 0)
            close(f->fds[i]);
    }
    free(f->fds);
    free(f->ssl);
    SSL_CTX_free(f->ctx);
    memset(f, 0, sizeof *f);
}

unsigned long proc_rss_kib(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return 0;
    unsigned long kib = 0;
    while (fgets(line, sizeof line, fp) != NULL) {
        if (sscanf(line, "VmRSS: %lu kB", &kib) == 1)
            break;
    }
    fclose(fp);
    return kib;
}

int proc_fd_count(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(d);
    return n;
}

unsigned long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (unsigned long)st.st_size : 0;
}
