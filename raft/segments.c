/* raft/segments.c: repair of a torn tail in libraft's open segments.
 *
 * libraft preallocates each open segment ("open-N", 8 MiB of zeros) and reads
 * it back at start until the first batch that is incomplete and followed only
 * by zeros: a write torn by a crash costs the entries of that batch and nothing
 * else. A file that is *shorter* than what its last batch header announces
 * (a truncated file: a disk or filesystem that lost the tail) makes libraft
 * 0.15 free a buffer twice inside raft_start and abort. Before Raft starts we
 * therefore find, in every open segment, the end of the last complete batch,
 * and if the file ends before a batch does, we cut the file there and extend it
 * with zeros: the shape libraft handles. The entries dropped were never more
 * than this server's copy; the leader sends them again.
 *
 * Open segment layout (little endian): u64 format version (1; 0 = unused
 * file), then batches: u32 header checksum, u32 data checksum, u64 entry count
 * n (0 = no more batches), n entry headers of 16 bytes (u64 term, u8 type,
 * 3 bytes unused, u32 data length), then each entry's data padded to 8 bytes. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/log.h"
#include "raft/rp_raft.h"

#define SEG_FORMAT 1
#define SEG_MIN_SIZE (8u << 20) /* libraft's default open segment size */
#define MAX_BATCH_ENTRIES (1u << 20)

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Reads exactly @n bytes at @off; 1 if the file ends first, <0 on error. */
static int read_at(int fd, void *buf, size_t n, off_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return rp_err(RP_EIO, "read: %s", strerror(errno));
        if (r == 0)
            return 1;
        got += (size_t)r;
    }
    return 0;
}

int rp_raft_segment_scan(int fd, uint64_t size, struct rp_segment_scan *out)
{
    unsigned char hdr[16];
    memset(out, 0, sizeof *out);
    out->complete_end = 0;
    int rv = read_at(fd, hdr, 8, 0);
    if (rv < 0)
        return rv;
    if (rv == 1) {
        out->torn = true; /* no complete format header */
        return 0;
    }
    uint64_t format = le64(hdr);
    if (format == 0) {
        out->complete_end = 8; /* never used: all zeros as libraft leaves it */
        return 0;
    }
    if (format != SEG_FORMAT)
        return rp_err(RP_EINVAL, "unknown segment format %llu (expected %d)",
                      (unsigned long long)format, SEG_FORMAT);
    uint64_t off = 8;
    out->complete_end = 8;
    for (;;) {
        rv = read_at(fd, hdr, 16, (off_t)off);
        if (rv < 0)
            return rv;
        if (rv == 1) {
            out->torn = true; /* the file ends where the next batch header (or the
                               * zeros marking the end) should be */
            return 0;
        }
        uint64_t n = le64(hdr + 8);
        if (n == 0)
            return 0; /* the zeros after the last batch */
        if (n > MAX_BATCH_ENTRIES) {
            out->torn = true; /* garbage where a header should be: treat as torn */
            return 0;
        }
        uint64_t data = 0;
        unsigned char eh[16];
        bool short_file = false;
        for (uint64_t i = 0; i < n; i++) {
            rv = read_at(fd, eh, 16, (off_t)(off + 16 + 16 * i));
            if (rv < 0)
                return rv;
            if (rv == 1) {
                short_file = true;
                break;
            }
            data += ((uint64_t)le32(eh + 12) + 7) / 8 * 8;
        }
        uint64_t end = off + 16 + 16 * n + data;
        if (short_file || end > size) {
            out->torn = true;
            return 0;
        }
        off = end;
        out->complete_end = end;
        out->batches++;
        out->entries += n;
    }
}

/* Cuts @path back to its last complete batch and zero-fills it to at least
 * SEG_MIN_SIZE. */
static int repair_one(const char *path, const char *dir_name)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return rp_err(RP_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    struct rp_segment_scan sc;
    int rv = 0;
    if (fstat(fd, &st) != 0) {
        rv = rp_err(RP_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    rv = rp_raft_segment_scan(fd, (uint64_t)st.st_size, &sc);
    if (rv != 0) {
        rv = rp_err(rv, "%s: %s", path, rp_errmsg());
        goto out;
    }
    if (!sc.torn)
        goto out;
    uint64_t want = (uint64_t)st.st_size > SEG_MIN_SIZE ? (uint64_t)st.st_size : SEG_MIN_SIZE;
    if (ftruncate(fd, (off_t)sc.complete_end) != 0 || ftruncate(fd, (off_t)want) != 0 ||
        fsync(fd) != 0) {
        rv = rp_err(RP_EIO, "repairing %s: %s", path, strerror(errno));
        goto out;
    }
    if (sc.complete_end == (uint64_t)st.st_size)
        rp_warn("raft",
                "%s/%s ended right after its last batch (%llu entries), without the "
                "zeros that mark the end: zero-filled, nothing dropped",
                dir_name, strrchr(path, '/') + 1, (unsigned long long)sc.entries);
    else
        rp_warn("raft",
                "%s/%s ended inside an entry batch (file %lld bytes, last complete batch ends at "
                "%llu): cut there and zero-filled; %llu complete entries kept, the leader resends "
                "the rest",
                dir_name, strrchr(path, '/') + 1, (long long)st.st_size,
                (unsigned long long)sc.complete_end, (unsigned long long)sc.entries);
out:
    close(fd);
    return rv;
}

int rp_raft_repair_open_segments(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return errno == ENOENT ? 0 : rp_err(RP_EIO, "%s: %s", dir, strerror(errno));
    int rv = 0;
    struct dirent *e;
    while (rv == 0 && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "open-", 5) != 0)
            continue;
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path) {
            rv = rp_err(RP_EINVAL, "path too long in %s", dir);
            break;
        }
        rv = repair_one(path, dir);
    }
    closedir(d);
    if (rv == 0) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    return rv;
}
