/* tsh/scp.c: tsh scp: file copies over SFTP (version 3, what OpenSSH's sftp-server
 * speaks), with many requests in flight.
 *
 * The SFTP client is our own, on one "sftp" subsystem channel, because libssh 0.10's
 * sftp_write waits for each write's status before the next (one round trip per
 * 32 KiB: far from the throughput stock scp gets), and its blocking reads do not mix
 * with a non-blocking session. Here a transfer keeps up to INFLIGHT requests of CHUNK
 * bytes outstanding in both directions; answers are matched to requests by id, so
 * their order does not matter. Everything else (open, stat, mkdir, readdir) is one
 * request and its answer.
 *
 * Bounds: every answer is measured before it is taken (at most TSH_SFTP_MAX_PACKET
 * bytes, the server's own limit), and the bytes held for the server are at most
 * INFLIGHT requests, so a misbehaving node cannot make tsh hold more. The answers are
 * decoded by tsh/sftp_wire.c, which has a fuzz target. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/util.h"
#include "tsh/sftp_wire.h"
#include "tsh/ssh.h"
#include "tsh/tsh.h"

#define CHUNK (64 * 1024)
#define INFLIGHT 32
#define REQ_BATCH 8           /* read requests sent together (a download) */
#define MAX_DEPTH 64          /* directory nesting a recursive copy follows */
#define MAX_ENTRIES (1 << 20) /* names of one remote directory held at once */
#define IN_ROOM (8 * CHUNK)   /* the answer buffer's size in a transfer */
#define WAIT_MS 1000          /* one wait for the node; the loop around it goes on */

enum {
    FXP_INIT = 1,
    FXP_VERSION = TSH_SFTP_VERSION,
    FXP_OPEN = 3,
    FXP_CLOSE = 4,
    FXP_READ = 5,
    FXP_WRITE = 6,
    FXP_LSTAT = 7,
    FXP_FSTAT = 8,
    FXP_SETSTAT = 9,
    FXP_FSETSTAT = 10,
    FXP_OPENDIR = 11,
    FXP_READDIR = 12,
    FXP_MKDIR = 14,
    FXP_STAT = 17,
    FXP_STATUS = TSH_SFTP_STATUS,
    FXP_HANDLE = TSH_SFTP_HANDLE,
    FXP_DATA = TSH_SFTP_DATA,
    FXP_NAME = TSH_SFTP_NAME,
    FXP_ATTRS = TSH_SFTP_ATTRS,
};
enum { FX_OK = 0, FX_EOF = 1, FX_NO_SUCH_FILE = 2, FX_PERMISSION_DENIED = 3 };
enum { FXF_READ = 1, FXF_WRITE = 2, FXF_CREAT = 8, FXF_TRUNC = 0x10 };
enum {
    ATTR_SIZE = TSH_SFTP_ATTR_SIZE,
    ATTR_PERMISSIONS = TSH_SFTP_ATTR_PERMISSIONS,
    ATTR_ACMODTIME = TSH_SFTP_ATTR_ACMODTIME,
};

struct sftp {
    ssh_session s;
    ssh_channel ch;
    struct rp_buf out; /* requests not yet taken by the channel */
    size_t out_off;
    struct rp_buf in; /* answer bytes not yet parsed */
    size_t in_off;
    uint32_t next_id;
    /* the answer being looked at (borrowed from in) */
    uint8_t type;
    uint32_t id;
    const uint8_t *body;
    size_t body_len;
    const struct tsh_scp_opts *o;
    bool progress;
};

/* ---- the channel ---------------------------------------------------------------------- */

static int sftp_broken(struct sftp *f)
{
    return rp_err(RP_EIO, "the SFTP channel broke: %s", ssh_get_error(f->s));
}

/* Writes queued requests into the channel, as far as its window and the socket take
 * them without blocking. *@progress says whether anything moved. */
static int sftp_flush(struct sftp *f, bool *progress)
{
    while (f->out_off < f->out.len) {
        uint32_t w = ssh_channel_window_size(f->ch);
        size_t n = f->out.len - f->out_off;
        if (w == 0)
            break;
        if (n > w)
            n = w;
        int wr = ssh_channel_write(f->ch, f->out.data + f->out_off, (uint32_t)n);
        if (wr == SSH_AGAIN || wr == 0)
            break;
        if (wr < 0)
            return sftp_broken(f);
        f->out_off += (size_t)wr;
        *progress = true;
    }
    if (f->out_off == f->out.len)
        f->out_off = f->out.len = 0;
    return 0;
}

/* Room for CHUNK more answer bytes at the end of f->in (answers are read straight into
 * it: one copy less per byte). Parsed answers are dropped only when the room runs out,
 * so that the part of an answer still coming is moved once per IN_ROOM bytes, not
 * after every answer; the buffer holds at most the answers in flight, never the
 * whole transfer. */
static int sftp_in_room(struct sftp *f)
{
    if (f->in_off > 0 && (f->in_off == f->in.len || f->in.cap - f->in.len < CHUNK)) {
        memmove(f->in.data, f->in.data + f->in_off, f->in.len - f->in_off);
        f->in.len -= f->in_off;
        f->in_off = 0;
    }
    if (rp_buf_reserve(&f->in, f->in.cap < IN_ROOM ? IN_ROOM - f->in.len : CHUNK) != 0)
        return rp_err(RP_ENOMEM, "SFTP answer buffer");
    return 0;
}

/* Takes answer bytes the channel has without blocking. *@progress says whether any
 * came. */
static int sftp_read_some(struct sftp *f, bool *progress)
{
    for (int i = 0; i < 16; i++) {
        int rv = sftp_in_room(f);
        if (rv != 0)
            return rv;
        int n = ssh_channel_read_nonblocking(f->ch, f->in.data + f->in.len, CHUNK, 0);
        if (n == SSH_EOF)
            return rp_err(RP_EIO, "the node's sftp-server ended the SFTP session");
        if (n == SSH_ERROR)
            return sftp_broken(f);
        if (n <= 0)
            break;
        f->in.len += (size_t)n;
        *progress = true;
    }
    return 0;
}

/* Waits for the session socket (with a deadline that only catches hangs) and lets
 * libssh read it: while requests wait for the channel's window or the socket. */
static int sftp_wait(struct sftp *f)
{
    short ev = POLLIN;
    if (ssh_get_poll_flags(f->s) & SSH_WRITE_PENDING)
        ev |= POLLOUT;
    struct pollfd p = {ssh_get_fd(f->s), ev, 0};
    int rc = poll(&p, 1, WAIT_MS);
    if (rc < 0 && errno != EINTR)
        return rp_err(RP_EIO, "poll: %s", strerror(errno));
    if (!ssh_is_connected(f->s))
        return sftp_broken(f);
    return 0;
}

/* Waits inside libssh (up to WAIT_MS, a deadline that only catches hangs) until the
 * channel holds answer bytes, and takes them: when no request waits to be written (the
 * wait does not end when the peer's window reopens). libssh reads its socket 4 KiB
 * per poll, so a 32 KiB SSH packet is whole only after several reads; waiting inside
 * it costs one poll and one read per 4 KiB, where a poll of ours before each
 * non-blocking read (which polls too) doubled the polls. */
static int sftp_read_wait(struct sftp *f)
{
    int rv = sftp_in_room(f);
    if (rv != 0)
        return rv;
    int n = ssh_channel_read_timeout(f->ch, f->in.data + f->in.len, CHUNK, 0, WAIT_MS);
    if (n == SSH_ERROR)
        return sftp_broken(f);
    if (n > 0) {
        f->in.len += (size_t)n;
        return 0;
    }
    if (ssh_channel_is_eof(f->ch))
        return rp_err(RP_EIO, "the node's sftp-server ended the SFTP session");
    if (!ssh_is_connected(f->s))
        return sftp_broken(f);
    return 0;
}

/* Makes the next whole answer current (f->type/id/body). 1 when there is one, 0 when
 * more bytes are needed, an error for an answer that breaks the protocol. */
static int sftp_take(struct sftp *f)
{
    struct tsh_sftp_packet pk;
    int rv = tsh_sftp_take(f->in.data, f->in.len, &f->in_off, &pk);
    if (rv == 1) {
        f->type = pk.type;
        f->id = pk.id;
        f->body = pk.body;
        f->body_len = pk.body_len;
    }
    return rv;
}

/* Waits for the next answer, writing queued requests meanwhile. */
static int sftp_next(struct sftp *f)
{
    for (;;) {
        int rv = sftp_take(f);
        if (rv != 0)
            return rv < 0 ? rv : 0;
        bool progress = false;
        if ((rv = sftp_flush(f, &progress)) != 0)
            return rv;
        if (f->out_off == f->out.len) {
            if ((rv = sftp_read_wait(f)) != 0)
                return rv;
            continue;
        }
        if ((rv = sftp_read_some(f, &progress)) != 0)
            return rv;
        if (!progress && (rv = sftp_wait(f)) != 0)
            return rv;
    }
}

/* ---- requests ------------------------------------------------------------------------- */

/* Starts a request of @type in f->out; returns the offset of its length field. */
static size_t req_begin(struct sftp *f, uint8_t type, uint32_t *id)
{
    size_t at = f->out.len;
    *id = 0;
    rp_buf_put_be32(&f->out, 0);
    rp_buf_append(&f->out, &type, 1);
    if (type != FXP_INIT) {
        *id = f->next_id++;
        rp_buf_put_be32(&f->out, *id);
    }
    return at;
}

static int req_end(struct sftp *f, size_t at)
{
    if (f->out.data == NULL || f->out.len < at + 5)
        return rp_err(RP_ENOMEM, "SFTP request");
    uint32_t len = (uint32_t)(f->out.len - at - 4);
    f->out.data[at] = (uint8_t)(len >> 24);
    f->out.data[at + 1] = (uint8_t)(len >> 16);
    f->out.data[at + 2] = (uint8_t)(len >> 8);
    f->out.data[at + 3] = (uint8_t)len;
    return 0;
}

static void put_str(struct sftp *f, const void *p, size_t n)
{
    rp_buf_put_be32(&f->out, (uint32_t)n);
    rp_buf_append(&f->out, p, n);
}

static void put_attrs(struct sftp *f, const struct tsh_sftp_attrs *a)
{
    rp_buf_put_be32(&f->out, a->flags);
    if (a->flags & ATTR_SIZE)
        rp_buf_put_be64(&f->out, a->size);
    if (a->flags & ATTR_PERMISSIONS)
        rp_buf_put_be32(&f->out, a->perm);
    if (a->flags & ATTR_ACMODTIME) {
        rp_buf_put_be32(&f->out, a->atime);
        rp_buf_put_be32(&f->out, a->mtime);
    }
}

static const char *status_text(uint32_t code)
{
    switch (code) {
    case FX_EOF:
        return "end of file";
    case FX_NO_SUCH_FILE:
        return "no such file or directory";
    case FX_PERMISSION_DENIED:
        return "permission denied";
    case 4:
        return "failure";
    case 5:
        return "bad message";
    case 8:
        return "operation unsupported";
    default:
        return "error";
    }
}

/* The current answer as a status: its code into *@code. An answer of another type is
 * a protocol error. */
static int answer_status(struct sftp *f, uint32_t *code)
{
    if (f->type != FXP_STATUS || tsh_sftp_decode_status(f->body, f->body_len, code) != 0)
        return rp_err(RP_EPROTO,
                      "the node's SFTP server answered with packet type %u where a "
                      "status was expected",
                      f->type);
    return 0;
}

/* Sends the request that ends at the tail of f->out and waits for its answer (no other
 * request is outstanding). */
static int call(struct sftp *f, size_t at, uint32_t id)
{
    int rv = req_end(f, at);
    if (rv == 0)
        rv = sftp_next(f);
    if (rv == 0 && f->id != id)
        rv = rp_err(RP_EPROTO, "the node's SFTP server answered request %u where %u was due", f->id,
                    id);
    return rv;
}

/* A failure status of the current answer as an error naming @what and @path. */
static int status_error(struct sftp *f, const char *what, const char *path)
{
    uint32_t code = 0;
    int rv = answer_status(f, &code);
    if (rv != 0)
        return rv;
    int err = code == FX_NO_SUCH_FILE        ? RP_ENOTFOUND
              : code == FX_PERMISSION_DENIED ? RP_EDENIED
                                             : RP_EIO;
    return rp_err(err, "%s %s on the node: %s", what, path, status_text(code));
}

static int expect_ok(struct sftp *f, const char *what, const char *path)
{
    uint32_t code = 0;
    int rv = answer_status(f, &code);
    if (rv == 0 && code != FX_OK)
        rv = status_error(f, what, path);
    return rv;
}

static int r_stat(struct sftp *f, uint8_t type, const char *path, struct tsh_sftp_attrs *a)
{
    uint32_t id;
    size_t at = req_begin(f, type, &id);
    put_str(f, path, strlen(path));
    int rv = call(f, at, id);
    if (rv != 0)
        return rv;
    if (f->type != FXP_ATTRS)
        return status_error(f, "stat", path);
    return tsh_sftp_decode_attrs(f->body, f->body_len, a);
}

/* Opens @path (file with @pflags, or a directory when @dir); *@h gets the handle
 * (malloc'd). */
static int r_open(struct sftp *f, const char *path, bool dir, uint32_t pflags,
                  const struct tsh_sftp_attrs *a, char **h, size_t *hl)
{
    uint32_t id;
    size_t at = req_begin(f, dir ? FXP_OPENDIR : FXP_OPEN, &id);
    put_str(f, path, strlen(path));
    if (!dir) {
        rp_buf_put_be32(&f->out, pflags);
        struct tsh_sftp_attrs none = {0};
        put_attrs(f, a != NULL ? a : &none);
    }
    int rv = call(f, at, id);
    if (rv != 0)
        return rv;
    if (f->type != FXP_HANDLE)
        return status_error(f, dir ? "cannot list" : "cannot open", path);
    const uint8_t *p;
    if ((rv = tsh_sftp_decode_handle(f->body, f->body_len, &p, hl)) != 0)
        return rv;
    *h = malloc(*hl);
    if (*h == NULL)
        return rp_err(RP_ENOMEM, "handle");
    memcpy(*h, p, *hl);
    return 0;
}

static int r_close(struct sftp *f, char *h, size_t hl, const char *path)
{
    uint32_t id;
    size_t at = req_begin(f, FXP_CLOSE, &id);
    put_str(f, h, hl);
    free(h);
    int rv = call(f, at, id);
    return rv != 0 ? rv : expect_ok(f, "cannot close", path);
}

static int r_setstat(struct sftp *f, const char *h, size_t hl, const char *path,
                     const struct tsh_sftp_attrs *a)
{
    uint32_t id;
    size_t at = req_begin(f, h != NULL ? FXP_FSETSTAT : FXP_SETSTAT, &id);
    if (h != NULL)
        put_str(f, h, hl);
    else
        put_str(f, path, strlen(path));
    put_attrs(f, a);
    int rv = call(f, at, id);
    return rv != 0 ? rv : expect_ok(f, "cannot set the mode of", path);
}

static int r_mkdir(struct sftp *f, const char *path, uint32_t perm)
{
    uint32_t id;
    size_t at = req_begin(f, FXP_MKDIR, &id);
    put_str(f, path, strlen(path));
    struct tsh_sftp_attrs a = {.flags = ATTR_PERMISSIONS, .perm = perm};
    put_attrs(f, &a);
    int rv = call(f, at, id);
    if (rv != 0)
        return rv;
    uint32_t code = 0;
    if ((rv = answer_status(f, &code)) != 0 || code == FX_OK)
        return rv;
    /* sftp-server says "failure" for an existing directory: look before failing. */
    struct tsh_sftp_attrs st;
    if (r_stat(f, FXP_STAT, path, &st) == 0 && (st.flags & ATTR_PERMISSIONS) && S_ISDIR(st.perm))
        return 0;
    return rp_err(RP_EIO, "cannot create directory %s on the node", path);
}

/* ---- progress ------------------------------------------------------------------------- */

struct progress {
    bool on;
    int fd;
    const char *name;
    uint64_t total, done;
    uint64_t start_ms, last_ms;
};

static void fmt_bytes(double v, char *out, size_t n)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(out, n, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
}

static void progress_show(struct progress *pr, bool final)
{
    if (!pr->on)
        return;
    uint64_t now = rp_mono_ms();
    if (!final && now - pr->last_ms < 200)
        return;
    pr->last_ms = now;
    double secs = (double)(now - pr->start_ms) / 1000.0;
    double rate = secs > 0 ? (double)pr->done / secs : 0;
    int pct = pr->total > 0 ? (int)(pr->done * 100 / pr->total) : 100;
    char done[32], speed[32];
    fmt_bytes((double)pr->done, done, sizeof done);
    fmt_bytes(rate, speed, sizeof speed);
    int cols = 80;
    struct winsize ws;
    if (ioctl(pr->fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 40)
        cols = ws.ws_col;
    char tail[96];
    snprintf(tail, sizeof tail, " %3d%% %10s %10s/s", pct, done, speed);
    int name_w = cols - 1 - (int)strlen(tail);
    const char *name = pr->name;
    int nl = (int)strlen(name);
    if (nl > name_w)
        name += nl - name_w;
    dprintf(pr->fd, "\r%-*s%s%s", name_w, name, tail, final ? "\n" : "");
}

static void progress_start(struct sftp *f, struct progress *pr, const char *name, uint64_t total)
{
    memset(pr, 0, sizeof *pr);
    pr->on = f->progress;
    pr->fd = f->o->progress_fd;
    pr->name = name;
    pr->total = total;
    pr->start_ms = rp_mono_ms();
}

/* ---- one file each way ---------------------------------------------------------------- */

struct req {
    uint32_t id;
    uint64_t off;
    uint32_t len;
};

static int find_req(struct req *q, int n, uint32_t id)
{
    for (int i = 0; i < n; i++)
        if (q[i].id == id)
            return i;
    return -1;
}

static int send_read(struct sftp *f, const char *h, size_t hl, uint64_t off, uint32_t len,
                     struct req *q, int *nq)
{
    uint32_t id;
    size_t at = req_begin(f, FXP_READ, &id);
    put_str(f, h, hl);
    rp_buf_put_be64(&f->out, off);
    rp_buf_put_be32(&f->out, len);
    q[*nq] = (struct req){id, off, len};
    (*nq)++;
    return req_end(f, at);
}

/* Copies the remote file @rpath (attributes @a) to the local @lpath. */
static int download_file(struct sftp *f, const char *rpath, const struct tsh_sftp_attrs *a,
                         const char *lpath)
{
    char *h = NULL;
    size_t hl = 0;
    int rv = r_open(f, rpath, false, FXF_READ, NULL, &h, &hl);
    if (rv != 0)
        return rv;
    mode_t mode = (a->flags & ATTR_PERMISSIONS) ? (a->perm & 07777) : 0644;
    int fd = open(lpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode | 0200);
    if (fd < 0) {
        rv = rp_err(RP_EIO, "cannot write %s: %s", lpath, strerror(errno));
        r_close(f, h, hl, rpath);
        return rv;
    }
    uint64_t size = (a->flags & ATTR_SIZE) ? a->size : 0;
    struct progress pr;
    progress_start(f, &pr, rpath, size);
    struct req q[INFLIGHT + 1];
    int nq = 0;
    uint64_t next = 0, eof_at = UINT64_MAX;
    for (;;) {
        /* Up to the size we were told, many at once; past it (a file that grew, or no
         * size), one at a time until the server says EOF. Requests go out REQ_BATCH at
         * a time: each message crosses the proxy, the tunnel and the node's SSH server
         * and wakes each of them, so one request per answer cost all of them a wakeup
         * per 64 KiB copied. */
        bool top_up = nq <= INFLIGHT - REQ_BATCH || next >= size;
        while (rv == 0 && top_up && nq < INFLIGHT && next < eof_at && (next < size || nq == 0)) {
            rv = send_read(f, h, hl, next, CHUNK, q, &nq);
            next += CHUNK;
        }
        if (rv != 0 || nq == 0)
            break;
        if ((rv = sftp_next(f)) != 0)
            break;
        int i = find_req(q, nq, f->id);
        if (i < 0) {
            rv = rp_err(RP_EPROTO,
                        "the node's SFTP server answered request %u, which is not "
                        "outstanding",
                        f->id);
            break;
        }
        struct req r = q[i];
        q[i] = q[--nq];
        if (f->type == FXP_DATA) {
            const uint8_t *p;
            size_t n;
            if ((rv = tsh_sftp_decode_data(f->body, f->body_len, &p, &n)) != 0)
                break;
            if (n == 0 || n > r.len) {
                rv = rp_err(RP_EPROTO, "the node's SFTP server sent %zu bytes for a read of %u", n,
                            r.len);
                break;
            }
            if (pwrite(fd, p, n, (off_t)r.off) != (ssize_t)n) {
                rv = rp_err(RP_EIO, "cannot write %s: %s", lpath, strerror(errno));
                break;
            }
            pr.done += n;
            progress_show(&pr, false);
            if (n < r.len && r.off + n < eof_at) /* a short read: ask for the rest */
                rv = send_read(f, h, hl, r.off + n, (uint32_t)(r.len - n), q, &nq);
        } else {
            uint32_t code = 0;
            if ((rv = answer_status(f, &code)) != 0)
                break;
            if (code != FX_EOF) {
                rv = status_error(f, "cannot read", rpath);
                break;
            }
            if (r.off < eof_at)
                eof_at = r.off;
        }
    }
    /* Answers still due are drained, so the channel stays usable for the next file. */
    while (nq > 0 && rv != RP_EIO && rv != RP_EPROTO && sftp_next(f) == 0) {
        int i = find_req(q, nq, f->id);
        if (i < 0)
            break;
        q[i] = q[--nq];
    }
    if (rv == 0 && ftruncate(fd, (off_t)(eof_at == UINT64_MAX ? next : eof_at)) != 0)
        rv = rp_err(RP_EIO, "cannot write %s: %s", lpath, strerror(errno));
    if (rv == 0 && fchmod(fd, mode) != 0)
        rv = rp_err(RP_EIO, "cannot set the mode of %s: %s", lpath, strerror(errno));
    if (rv == 0 && f->o->preserve_times && (a->flags & ATTR_ACMODTIME)) {
        struct timespec ts[2] = {{.tv_sec = a->atime}, {.tv_sec = a->mtime}};
        futimens(fd, ts);
    }
    if (close(fd) != 0 && rv == 0)
        rv = rp_err(RP_EIO, "cannot write %s: %s", lpath, strerror(errno));
    progress_show(&pr, true);
    int crv = r_close(f, h, hl, rpath);
    return rv != 0 ? rv : crv;
}

/* Copies the local file @lpath (stat @st) to the remote @rpath. */
static int upload_file(struct sftp *f, const char *lpath, const struct stat *st, const char *rpath)
{
    int fd = open(lpath, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rp_err(RP_EIO, "cannot read %s: %s", lpath, strerror(errno));
    char *h = NULL;
    size_t hl = 0;
    struct tsh_sftp_attrs a = {.flags = ATTR_PERMISSIONS, .perm = st->st_mode & 07777};
    int rv = r_open(f, rpath, false, FXF_WRITE | FXF_CREAT | FXF_TRUNC, &a, &h, &hl);
    if (rv != 0) {
        close(fd);
        return rv;
    }
    struct progress pr;
    progress_start(f, &pr, lpath, (uint64_t)st->st_size);
    struct req q[INFLIGHT];
    int nq = 0;
    uint64_t next = 0;
    bool at_eof = false;
    for (;;) {
        while (rv == 0 && !at_eof && nq < INFLIGHT) {
            /* The request is built around the file's bytes, read in place. */
            uint32_t id;
            size_t at = req_begin(f, FXP_WRITE, &id);
            put_str(f, h, hl);
            rp_buf_put_be64(&f->out, next);
            size_t len_at = f->out.len;
            rp_buf_put_be32(&f->out, 0);
            if (rp_buf_reserve(&f->out, CHUNK) != 0) {
                rv = rp_err(RP_ENOMEM, "SFTP request");
                break;
            }
            ssize_t n = pread(fd, f->out.data + f->out.len, CHUNK, (off_t)next);
            if (n <= 0) {
                f->out.len = at; /* no request after all */
                f->next_id--;
                if (n < 0)
                    rv = rp_err(RP_EIO, "cannot read %s: %s", lpath, strerror(errno));
                at_eof = true;
                break;
            }
            f->out.len += (size_t)n;
            f->out.data[len_at] = (uint8_t)(n >> 24);
            f->out.data[len_at + 1] = (uint8_t)(n >> 16);
            f->out.data[len_at + 2] = (uint8_t)(n >> 8);
            f->out.data[len_at + 3] = (uint8_t)n;
            rv = req_end(f, at);
            q[nq++] = (struct req){id, next, (uint32_t)n};
            next += (uint64_t)n;
        }
        if (rv != 0 || nq == 0)
            break;
        if ((rv = sftp_next(f)) != 0)
            break;
        int i = find_req(q, nq, f->id);
        if (i < 0) {
            rv = rp_err(RP_EPROTO,
                        "the node's SFTP server answered request %u, which is not "
                        "outstanding",
                        f->id);
            break;
        }
        pr.done += q[i].len;
        q[i] = q[--nq];
        if ((rv = expect_ok(f, "cannot write", rpath)) != 0)
            break;
        progress_show(&pr, false);
    }
    while (nq > 0 && rv != RP_EIO && rv != RP_EPROTO && sftp_next(f) == 0) {
        int i = find_req(q, nq, f->id);
        if (i < 0)
            break;
        q[i] = q[--nq];
    }
    close(fd);
    progress_show(&pr, true);
    if (rv == 0) {
        /* The mode exactly (the server's umask applied at create), times with -p. */
        if (f->o->preserve_times) {
            a.flags |= ATTR_ACMODTIME;
            a.atime = (uint32_t)st->st_atime;
            a.mtime = (uint32_t)st->st_mtime;
        }
        rv = r_setstat(f, h, hl, rpath, &a);
    }
    int crv = r_close(f, h, hl, rpath);
    return rv != 0 ? rv : crv;
}

/* ---- paths and directories ------------------------------------------------------------ */

static char *path_join(const char *dir, const char *name)
{
    char *out = NULL;
    size_t dl = strlen(dir);
    if (dl == 0 || strcmp(dir, ".") == 0)
        return strdup(name);
    if (asprintf(&out, "%s%s%s", dir, dir[dl - 1] == '/' ? "" : "/", name) < 0)
        return NULL;
    return out;
}

/* The last component of @p ("a/b/" -> "b"), malloc'd. */
static char *base_name(const char *p)
{
    char *c = strdup(p);
    if (c == NULL)
        return NULL;
    size_t n = strlen(c);
    while (n > 1 && c[n - 1] == '/')
        c[--n] = '\0';
    char *b = strdup(basename(c));
    free(c);
    return b;
}

static bool safe_entry_name(const char *n, size_t len)
{
    if (len == 0 || memchr(n, '/', len) != NULL || memchr(n, '\0', len) != NULL)
        return false;
    return !(len == 1 && n[0] == '.') && !(len == 2 && n[0] == '.' && n[1] == '.');
}

static int download_path(struct sftp *f, const char *rpath, const char *lpath, int depth);

static int download_dir(struct sftp *f, const char *rpath, const struct tsh_sftp_attrs *a,
                        const char *lpath, int depth)
{
    if (depth > MAX_DEPTH)
        return rp_err(RP_EINVAL, "%s: directories nest deeper than %d", rpath, MAX_DEPTH);
    mode_t mode = (a->flags & ATTR_PERMISSIONS) ? (a->perm & 07777) : 0755;
    if (mkdir(lpath, mode | 0700) != 0 && errno != EEXIST)
        return rp_err(RP_EIO, "cannot create directory %s: %s", lpath, strerror(errno));
    char *h = NULL;
    size_t hl = 0;
    int rv = r_open(f, rpath, true, 0, NULL, &h, &hl);
    if (rv != 0)
        return rv;
    /* Names first, copies after: the directory handle is closed before any file is
     * opened (one request outstanding at a time). */
    char **names = NULL;
    size_t n_names = 0;
    for (;;) {
        uint32_t id;
        size_t at = req_begin(f, FXP_READDIR, &id);
        put_str(f, h, hl);
        if ((rv = call(f, at, id)) != 0)
            break;
        if (f->type != FXP_NAME) {
            uint32_t code = 0;
            if ((rv = answer_status(f, &code)) == 0 && code != FX_EOF)
                rv = status_error(f, "cannot list", rpath);
            break;
        }
        struct tsh_sftp_names it;
        if ((rv = tsh_sftp_names_begin(&it, f->body, f->body_len)) != 0)
            break;
        for (;;) {
            struct tsh_sftp_name e;
            int got = tsh_sftp_names_next(&it, &e);
            if (got <= 0) {
                rv = got;
                break;
            }
            const uint8_t *np = e.name;
            size_t nl = e.name_len;
            if (!safe_entry_name((const char *)np, nl))
                continue;
            /* Links inside a tree are not followed (a link to "." would make the copy
             * endless), as OpenSSH's sftp get -r does. */
            if ((e.attrs.flags & ATTR_PERMISSIONS) && S_ISLNK(e.attrs.perm)) {
                dprintf(2, "tsh scp: %s/%.*s is a symbolic link on the node: skipped\n", rpath,
                        (int)nl, (const char *)np);
                continue;
            }
            if (n_names >= MAX_ENTRIES) {
                rv = rp_err(RP_ETOOBIG, "%s: more than %d entries in one directory", rpath,
                            MAX_ENTRIES);
                break;
            }
            char **nn = realloc(names, (n_names + 1) * sizeof *names);
            if (nn == NULL) {
                rv = rp_err(RP_ENOMEM, "directory listing");
                break;
            }
            names = nn;
            if ((names[n_names] = strndup((const char *)np, nl)) == NULL) {
                rv = rp_err(RP_ENOMEM, "directory listing");
                break;
            }
            n_names++;
        }
        if (rv != 0)
            break;
    }
    int crv = r_close(f, h, hl, rpath);
    if (rv == 0)
        rv = crv;
    for (size_t i = 0; i < n_names; i++) {
        char *rp = path_join(rpath, names[i]), *lp = path_join(lpath, names[i]);
        int erv = rp != NULL && lp != NULL ? download_path(f, rp, lp, depth + 1)
                                           : rp_err(RP_ENOMEM, "path");
        if (erv != 0) {
            dprintf(2, "tsh scp: %s\n", rp_errmsg());
            if (rv == 0)
                rv = erv;
            if (erv == RP_EIO && !ssh_is_connected(f->s))
                break;
        }
        free(rp);
        free(lp);
    }
    for (size_t i = 0; i < n_names; i++)
        free(names[i]);
    free(names);
    if (rv == 0 && chmod(lpath, mode) != 0)
        rv = rp_err(RP_EIO, "cannot set the mode of %s: %s", lpath, strerror(errno));
    if (rv == 0 && f->o->preserve_times && (a->flags & ATTR_ACMODTIME)) {
        struct timespec ts[2] = {{.tv_sec = a->atime}, {.tv_sec = a->mtime}};
        utimensat(AT_FDCWD, lpath, ts, 0);
    }
    /* Errors of entries were printed as they happened; the caller prints ours. */
    return rv != 0 && rv != RP_ENOMEM ? rp_err(rv, "%s: not every file was copied", rpath) : rv;
}

static int download_path(struct sftp *f, const char *rpath, const char *lpath, int depth)
{
    struct tsh_sftp_attrs a;
    int rv = r_stat(f, FXP_STAT, rpath, &a);
    if (rv != 0)
        return rv;
    if (!(a.flags & ATTR_PERMISSIONS))
        return rp_err(RP_EPROTO, "the node's SFTP server gave no file type for %s", rpath);
    if (S_ISDIR(a.perm)) {
        if (!f->o->recursive)
            return rp_err(RP_EINVAL, "%s is a directory on the node: use -r to copy it", rpath);
        return download_dir(f, rpath, &a, lpath, depth);
    }
    if (!S_ISREG(a.perm))
        return rp_err(RP_EINVAL, "%s on the node is not a regular file: skipped", rpath);
    return download_file(f, rpath, &a, lpath);
}

static int upload_path(struct sftp *f, const char *lpath, const char *rpath, int depth)
{
    struct stat st;
    if (stat(lpath, &st) != 0)
        return rp_err(RP_ENOTFOUND, "%s: %s", lpath, strerror(errno));
    if (S_ISREG(st.st_mode))
        return upload_file(f, lpath, &st, rpath);
    if (!S_ISDIR(st.st_mode))
        return rp_err(RP_EINVAL, "%s is not a regular file: skipped", lpath);
    if (!f->o->recursive)
        return rp_err(RP_EINVAL, "%s is a directory: use -r to copy it", lpath);
    if (depth > MAX_DEPTH)
        return rp_err(RP_EINVAL, "%s: directories nest deeper than %d", lpath, MAX_DEPTH);
    int rv = r_mkdir(f, rpath, (st.st_mode & 07777) | 0700);
    if (rv != 0)
        return rv;
    DIR *d = opendir(lpath);
    if (d == NULL)
        return rp_err(RP_EIO, "cannot list %s: %s", lpath, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!safe_entry_name(e->d_name, strlen(e->d_name)))
            continue;
        char *lp = path_join(lpath, e->d_name), *rp = path_join(rpath, e->d_name);
        struct stat lst;
        if (lp != NULL && lstat(lp, &lst) == 0 && S_ISLNK(lst.st_mode)) {
            dprintf(2, "tsh scp: %s is a symbolic link: skipped\n", lp);
            free(lp);
            free(rp);
            continue;
        }
        int erv = lp != NULL && rp != NULL ? upload_path(f, lp, rp, depth + 1)
                                           : rp_err(RP_ENOMEM, "path");
        free(lp);
        free(rp);
        if (erv != 0) {
            dprintf(2, "tsh scp: %s\n", rp_errmsg());
            if (rv == 0)
                rv = erv;
            if (!ssh_is_connected(f->s))
                break;
        }
    }
    closedir(d);
    struct tsh_sftp_attrs a = {.flags = ATTR_PERMISSIONS, .perm = st.st_mode & 07777};
    if (f->o->preserve_times) {
        a.flags |= ATTR_ACMODTIME;
        a.atime = (uint32_t)st.st_atime;
        a.mtime = (uint32_t)st.st_mtime;
    }
    int srv = r_setstat(f, NULL, 0, rpath, &a);
    if (rv == 0)
        rv = srv;
    return rv != 0 && rv != RP_ENOMEM ? rp_err(rv, "%s: not every file was copied", lpath) : rv;
}

/* ---- the session ---------------------------------------------------------------------- */

static int sftp_open(ssh_session s, const struct tsh_scp_opts *o, struct sftp *f)
{
    memset(f, 0, sizeof *f);
    f->s = s;
    f->o = o;
    f->next_id = 1;
    f->progress = !o->quiet && o->progress_fd >= 0 && isatty(o->progress_fd);
    rp_buf_init(&f->out);
    rp_buf_init(&f->in);
    f->ch = ssh_channel_new(s);
    if (f->ch == NULL || ssh_channel_open_session(f->ch) != SSH_OK)
        return rp_err(RP_EIO, "the node refused a session channel: %s", ssh_get_error(s));
    if (ssh_channel_request_subsystem(f->ch, "sftp") != SSH_OK)
        return rp_err(RP_EDENIED, "the node refused file copying (the sftp subsystem): your "
                                  "roles may not allow it");
    ssh_set_blocking(s, 0);
    uint32_t unused;
    size_t at = req_begin(f, FXP_INIT, &unused);
    rp_buf_put_be32(&f->out, 3);
    int rv = req_end(f, at);
    if (rv == 0)
        rv = sftp_next(f);
    if (rv == 0 && f->type != FXP_VERSION)
        rv = rp_err(RP_EPROTO, "the node's SFTP server did not answer with its version");
    return rv;
}

static void sftp_close(struct sftp *f)
{
    if (f->ch != NULL) {
        ssh_set_blocking(f->s, 1);
        if (ssh_channel_is_open(f->ch)) {
            ssh_channel_send_eof(f->ch);
            ssh_channel_close(f->ch);
        }
        ssh_channel_free(f->ch);
    }
    rp_buf_free(&f->out);
    rp_buf_free(&f->in);
}

/* Where source @src goes under @dst: into it when it is a directory (or when there are
 * several sources), else @dst itself. */
static char *dest_for(const char *src, const char *dst, bool dst_is_dir)
{
    if (!dst_is_dir)
        return strdup(dst);
    char *b = base_name(src);
    char *out = b != NULL ? path_join(dst, b) : NULL;
    free(b);
    return out;
}

int tsh_scp_upload(ssh_session s, const char *const *src, size_t n_src, const char *dst,
                   const struct tsh_scp_opts *o)
{
    struct sftp f;
    int rv = sftp_open(s, o, &f);
    if (rv != 0) {
        sftp_close(&f);
        return rv;
    }
    const char *rdst = dst[0] ? dst : ".";
    struct tsh_sftp_attrs a;
    bool dst_is_dir =
        r_stat(&f, FXP_STAT, rdst, &a) == 0 && (a.flags & ATTR_PERMISSIONS) && S_ISDIR(a.perm);
    if (n_src > 1 && !dst_is_dir) {
        sftp_close(&f);
        return rp_err(RP_EINVAL, "%s is not a directory on the node: several sources need one",
                      rdst);
    }
    for (size_t i = 0; i < n_src; i++) {
        char *target = dest_for(src[i], rdst, dst_is_dir);
        int erv = target != NULL ? upload_path(&f, src[i], target, 0) : rp_err(RP_ENOMEM, "path");
        free(target);
        if (erv != 0) {
            if (n_src > 1)
                dprintf(2, "tsh scp: %s\n", rp_errmsg());
            if (rv == 0)
                rv = erv;
        }
    }
    sftp_close(&f);
    return rv;
}

int tsh_scp_download(ssh_session s, const char *const *src, size_t n_src, const char *dst,
                     const struct tsh_scp_opts *o)
{
    struct sftp f;
    int rv = sftp_open(s, o, &f);
    if (rv != 0) {
        sftp_close(&f);
        return rv;
    }
    struct stat st;
    bool dst_is_dir = stat(dst, &st) == 0 && S_ISDIR(st.st_mode);
    if (n_src > 1 && !dst_is_dir) {
        sftp_close(&f);
        return rp_err(RP_EINVAL, "%s is not a directory: several sources need one", dst);
    }
    for (size_t i = 0; i < n_src; i++) {
        const char *rsrc = src[i][0] ? src[i] : ".";
        char *target = dest_for(rsrc, dst, dst_is_dir);
        int erv = target != NULL ? download_path(&f, rsrc, target, 0) : rp_err(RP_ENOMEM, "path");
        free(target);
        if (erv != 0) {
            if (n_src > 1)
                dprintf(2, "tsh scp: %s\n", rp_errmsg());
            if (rv == 0)
                rv = erv;
        }
    }
    sftp_close(&f);
    return rv;
}

/* ---- argument forms ------------------------------------------------------------------- */

int tsh_scp_spec_parse(const char *arg, struct tsh_scp_spec *out)
{
    memset(out, 0, sizeof *out);
    const char *colon = strchr(arg, ':');
    const char *slash = strchr(arg, '/');
    if (colon == NULL || colon == arg || (slash != NULL && slash < colon)) {
        out->path = strdup(arg);
        return out->path != NULL ? 0 : rp_err(RP_ENOMEM, "path");
    }
    const char *at = memchr(arg, '@', (size_t)(colon - arg));
    const char *host = arg;
    if (at != NULL) {
        if (at == arg)
            return rp_err(RP_EINVAL, "%s: the login before '@' is empty", arg);
        out->login = strndup(arg, (size_t)(at - arg));
        host = at + 1;
    }
    if (host == colon) {
        tsh_scp_spec_free(out);
        return rp_err(RP_EINVAL, "%s: the node name before ':' is empty", arg);
    }
    out->host = strndup(host, (size_t)(colon - host));
    out->path = strdup(colon + 1);
    if (out->host == NULL || out->path == NULL || (at != NULL && out->login == NULL)) {
        tsh_scp_spec_free(out);
        return rp_err(RP_ENOMEM, "path");
    }
    return 0;
}

void tsh_scp_spec_free(struct tsh_scp_spec *s)
{
    free(s->login);
    free(s->host);
    free(s->path);
    memset(s, 0, sizeof *s);
}

/* ---- tsh scp -------------------------------------------------------------------------- */

int tsh_cmd_scp(int argc, char **argv, const struct tsh_globals *gin)
{
    static const struct option own[] = {{NULL, 0, NULL, 0}};
    struct tsh_globals g = *gin;
    struct tsh_flags fl;
    struct tsh_scp_opts o = {.progress_fd = 2};
    int port = 0, c;
    tsh_flags_init(&fl, &g, argc, argv, own, "rpqP:", false);
    while ((c = tsh_flags_next(&fl)) > 0) {
        switch (c) {
        case 'r':
            o.recursive = true;
            break;
        case 'p':
            o.preserve_times = true;
            break;
        case 'q':
            o.quiet = true;
            break;
        case 'P': {
            char *end = NULL;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || v < 1 || v > 65535)
                return tsh_usage_error(&fl, "-P %s: expected a port (1-65535)", optarg);
            port = (int)v;
            break;
        }
        default:
            return tsh_usage_error(&fl, "unexpected flag");
        }
    }
    char **args = NULL;
    int nargs = 0;
    int done = tsh_flags_done(&fl, c, 2, -1, &args, &nargs);
    if (done >= 0)
        return done;
    int n_specs = nargs;
    struct tsh_scp_spec *specs = calloc((size_t)n_specs, sizeof *specs);
    const char **paths = calloc((size_t)n_specs, sizeof *paths);
    int rc = 2;
    if (specs == NULL || paths == NULL) {
        rc = 1;
        goto out;
    }
    for (int i = 0; i < n_specs; i++) {
        if (tsh_scp_spec_parse(args[i], &specs[i]) != 0) {
            rc = tsh_usage_error(&fl, "%s", rp_errmsg());
            goto out;
        }
        paths[i] = specs[i].path;
    }
    /* Either every source is on one node and the destination is local (download), or
     * the sources are local and the destination is on a node (upload). */
    struct tsh_scp_spec *dst = &specs[n_specs - 1];
    bool upload = dst->host != NULL;
    struct tsh_scp_spec *remote = upload ? dst : &specs[0];
    for (int i = 0; i < n_specs - 1; i++) {
        bool src_remote = specs[i].host != NULL;
        if (upload && src_remote) {
            rc = tsh_usage_error(&fl, "copies between two nodes are not supported: copy to a "
                                      "local file first");
            goto out;
        }
        if (!upload && !src_remote) {
            rc = tsh_usage_error(&fl, "neither '%s' nor '%s' is on a node ([LOGIN@]NODE:PATH)",
                                 args[i], args[n_specs - 1]);
            goto out;
        }
        if (!upload && (strcmp(specs[i].host, remote->host) != 0 ||
                        (specs[i].login == NULL) != (remote->login == NULL) ||
                        (specs[i].login != NULL && strcmp(specs[i].login, remote->login) != 0))) {
            rc = tsh_usage_error(&fl, "all sources must be on the same node as the first");
            goto out;
        }
    }
    struct tsh_profile p;
    if (tsh_require_profile(&g, "tsh scp", &p) != 0) {
        rc = 1;
        goto out;
    }
    const char *login =
        remote->login != NULL ? remote->login : (p.n_logins > 0 ? p.logins[0] : NULL);
    if (login == NULL) {
        fprintf(stderr, "tsh scp: no login given and your roles list none: use "
                        "LOGIN@NODE:PATH (tsh status shows your logins)\n");
        goto out;
    }
    char target[600];
    tsh_ssh_target(remote->host, port, target, sizeof target);
    struct tsh_dial_answer ans;
    int fd = -1;
    if (tsh_dial(&p, target, login, &ans, &fd) != 0) {
        fprintf(stderr, "tsh scp: %s\n", rp_errmsg());
        rc = 1;
        goto out;
    }
    struct tsh_ssh_auth auth = {.login = login,
                                .host = remote->host,
                                .key_path = p.key_path,
                                .cert_path = p.cert_path,
                                .host_key = ans.host_key};
    ssh_session s = NULL;
    int rv = tsh_ssh_connect(fd, &auth, &s);
    if (rv == 0)
        rv = upload ? tsh_scp_upload(s, paths, (size_t)n_specs - 1, dst->path, &o)
                    : tsh_scp_download(s, paths, (size_t)n_specs - 1, dst->path, &o);
    if (rv != 0)
        fprintf(stderr, "tsh scp: %s\n", rp_errmsg());
    tsh_ssh_close(s);
    tsh_dial_close(fd);
    tsh_dial_answer_free(&ans);
    rc = rv == 0 ? 0 : 1;
out:
    for (int i = 0; specs != NULL && i < n_specs; i++)
        tsh_scp_spec_free(&specs[i]);
    free(specs);
    free(paths);
    return rc;
}
