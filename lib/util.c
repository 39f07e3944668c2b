/* lib/util.c: durations, clocks, files and random ids. */
#include "lib/util.h"

#include <ctype.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "lib/errors.h"

int rp_parse_duration_ms(const char *s, uint64_t *ms)
{
    if (s == NULL || *s == '\0')
        return rp_err(RP_EINVAL, "empty duration, expected e.g. 30s, 5m, 1h30m");
    const char *p = s;
    uint64_t total = 0;
    bool any_unit = false;
    while (*p) {
        if (!isdigit((unsigned char)*p))
            return rp_err(RP_EINVAL, "bad duration '%s', expected e.g. 250ms, 30s, 5m, 1h30m", s);
        uint64_t v = 0;
        while (isdigit((unsigned char)*p)) {
            if (v > UINT64_MAX / 10 - 10)
                return rp_err(RP_EINVAL, "duration '%s' is too large", s);
            v = v * 10 + (uint64_t)(*p - '0');
            p++;
        }
        uint64_t mult;
        if (*p == '\0' && !any_unit) {
            mult = 1000; /* bare integer: seconds */
        } else if (strncmp(p, "ms", 2) == 0) {
            mult = 1, p += 2;
        } else if (*p == 's') {
            mult = 1000, p++;
        } else if (*p == 'm') {
            mult = 60000, p++;
        } else if (*p == 'h') {
            mult = 3600000, p++;
        } else if (*p == 'd') {
            mult = 86400000, p++;
        } else {
            return rp_err(RP_EINVAL, "bad duration '%s': unknown unit, expected ms, s, m, h or d",
                          s);
        }
        any_unit = true;
        if (v > (UINT64_MAX - total) / mult)
            return rp_err(RP_EINVAL, "duration '%s' is too large", s);
        total += v * mult;
    }
    if (total == 0)
        return rp_err(RP_EINVAL, "duration '%s' must be greater than zero", s);
    *ms = total;
    return 0;
}

void rp_format_duration(uint64_t ms, char *out, size_t outlen)
{
    if (ms < 1000) {
        snprintf(out, outlen, "%llums", (unsigned long long)ms);
        return;
    }
    uint64_t s = ms / 1000;
    uint64_t h = s / 3600, m = (s % 3600) / 60, sec = s % 60;
    if (h)
        snprintf(out, outlen, "%lluh%llum%llus", (unsigned long long)h, (unsigned long long)m,
                 (unsigned long long)sec);
    else if (m)
        snprintf(out, outlen, "%llum%llus", (unsigned long long)m, (unsigned long long)sec);
    else
        snprintf(out, outlen, "%llus", (unsigned long long)sec);
}

uint64_t rp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t rp_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void rp_format_time(uint64_t ms, char *out, size_t outlen)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Fills @p from the OS CSPRNG. */
static int fill_random(void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom((char *)p + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return rp_err(RP_EIO, "getrandom: %s", strerror(errno));
        }
        got += (size_t)r;
    }
    return 0;
}

static pthread_mutex_t rand_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t rand_state;
static pid_t rand_pid; /* the process that seeded rand_state; 0 = not yet */

uint64_t rp_rand_u64(void)
{
    pthread_mutex_lock(&rand_mu);
    /* A forked child inherits the parent's state: it would draw the parent's next
     * numbers. The pid tells the child to take a seed of its own. */
    pid_t pid = getpid();
    if (rand_pid != pid) {
        if (fill_random(&rand_state, sizeof rand_state) != 0) {
            /* No getrandom (seccomp, an old kernel): clocks and pid still differ
             * between processes, which is all jitter needs. */
            rand_state = rp_now_ms() * 0x9e3779b97f4a7c15ull ^ rp_mono_ms() ^
                         ((uint64_t)pid << 32) ^ (uint64_t)(uintptr_t)&pid;
        }
        rand_pid = pid;
    }
    rand_state += 0x9e3779b97f4a7c15ull;
    uint64_t z = rand_state;
    pthread_mutex_unlock(&rand_mu);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t rp_rand_below(uint64_t n)
{
    if (n == 0)
        return 0;
    /* Rejection sampling: a plain modulo would favour small values. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t v;
    do {
        v = rp_rand_u64();
    } while (v >= limit);
    return v % n;
}

uint64_t rp_jitter_ms(uint64_t base)
{
    return base + rp_rand_below(base / 2 + 1);
}

int rp_uuid_v4(char out[37])
{
    uint8_t u[16];
    int rv = fill_random(u, sizeof u);
    if (rv != 0)
        return rv;
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40); /* version 4 */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
             u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
             u[14], u[15]);
    return 0;
}

int rp_random_hex(char *out, size_t n)
{
    unsigned char raw[256];
    if (n > sizeof raw)
        return rp_err(RP_EINVAL, "random id of %zu bytes is too long", n);
    int rv = fill_random(raw, n);
    if (rv != 0)
        return rv;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[2 * n] = '\0';
    return 0;
}

int rp_mkdir_p(const char *path, unsigned mode)
{
    char tmp[4096];
    if (strlen(path) >= sizeof tmp)
        return rp_err(RP_EINVAL, "path too long: %s", path);
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(tmp, mode) != 0 && errno != EEXIST)
                return rp_err(RP_EIO, "mkdir %s: %s", tmp, strerror(errno));
            *p = c;
            if (c == '\0')
                break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return rp_err(RP_EIO, "%s exists and is not a directory", path);
    return 0;
}

int rp_write_file(const char *path, const void *p, size_t n, unsigned mode)
{
    char tmp[4096], suffix[17];
    /* A random suffix keeps concurrent writers of one path off each other's temp file. */
    if (rp_random_hex(suffix, 8) != 0)
        return rp_err(RP_EIO, "write %s: no randomness for the temp file name", path);
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%s", path, suffix) >= (int)sizeof tmp)
        return rp_err(RP_EINVAL, "path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return rp_err(RP_EIO, "create %s: %s", tmp, strerror(errno));
    /* The umask may have narrowed the mode; secrets want exactly 0600. */
    if (fchmod(fd, mode) != 0)
        goto fail;
    const char *c = p;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, c, left);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            goto fail;
        }
        c += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0)
        goto fail;
    close(fd);
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return rp_err(RP_EIO, "rename %s to %s: %s", tmp, path, strerror(e));
    }
    /* The rename survives a crash only once the directory itself is synced. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash != NULL)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
fail : {
    int e = errno;
    close(fd);
    unlink(tmp);
    return rp_err(RP_EIO, "write %s: %s", path, strerror(e));
}
}

int rp_read_file(const char *path, size_t max, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rp_err(errno == ENOENT ? RP_ENOTFOUND : RP_EIO, "open %s: %s", path,
                      strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    if (buf == NULL) {
        close(fd);
        return rp_err(RP_ENOMEM, "reading %s", path);
    }
    for (;;) {
        if (n == cap) {
            if (cap >= max) {
                free(buf);
                close(fd);
                return rp_err(RP_ETOOBIG, "%s is larger than %zu bytes", path, max);
            }
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (nb == NULL) {
                free(buf);
                close(fd);
                return rp_err(RP_ENOMEM, "reading %s", path);
            }
            buf = nb;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            close(fd);
            return rp_err(RP_EIO, "read %s: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (n > max) {
        free(buf);
        return rp_err(RP_ETOOBIG, "%s is larger than %zu bytes", path, max);
    }
    buf[n] = '\0';
    *out = buf;
    if (len)
        *len = n;
    return 0;
}

bool rp_file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

int rp_disk_free(const char *path, uint64_t *free_bytes, uint64_t *total_bytes)
{
    struct statvfs sv;
    if (statvfs(path, &sv) != 0)
        return rp_err(RP_EIO, "statvfs %s: %s", path, strerror(errno));
    if (free_bytes)
        *free_bytes = (uint64_t)sv.f_bavail * sv.f_frsize;
    if (total_bytes)
        *total_bytes = (uint64_t)sv.f_blocks * sv.f_frsize;
    return 0;
}

int rp_check_hostport(const char *s)
{
    if (s == NULL || *s == '\0')
        return rp_err(RP_EINVAL, "empty address, expected host:port");
    const char *colon;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            return rp_err(RP_EINVAL, "bad address '%s', expected [ipv6]:port", s);
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || colon == s)
            return rp_err(RP_EINVAL, "bad address '%s', expected host:port", s);
        for (const char *p = s; p < colon; p++) {
            if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != '_')
                return rp_err(RP_EINVAL, "bad address '%s': invalid host, expected host:port", s);
        }
    }
    const char *port = colon + 1;
    if (*port == '\0' || strlen(port) > 5)
        return rp_err(RP_EINVAL, "bad address '%s': expected a port 1-65535", s);
    long v = 0;
    for (const char *p = port; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return rp_err(RP_EINVAL, "bad address '%s': expected a port 1-65535", s);
        v = v * 10 + (*p - '0');
    }
    if (v < 1 || v > 65535)
        return rp_err(RP_EINVAL, "bad address '%s': port %ld out of range 1-65535", s, v);
    return 0;
}
