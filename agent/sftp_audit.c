/* agent/sftp_audit.c: SFTP file operations as audit events (agent/sftp_audit.h).
 *
 * Each direction is framed on its own: a packet's 4-byte length, then up to a cap of
 * its bytes into a buffer (the head), then the rest skipped. Requests the client sent
 * wait in a table keyed by request id until the server's answer (the answer carries
 * the handle of an OPEN, the byte count of a READ, the outcome of everything); the
 * server answers in any order, so ids are matched, not positions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/sftp_audit.h"
#include "lib/buf.h"
#include "lib/errors.h"

/* Packet types, SFTP version 3. */
enum {
    FXP_INIT = 1,
    FXP_VERSION = 2,
    FXP_OPEN = 3,
    FXP_CLOSE = 4,
    FXP_READ = 5,
    FXP_WRITE = 6,
    FXP_FSETSTAT = 10,
    FXP_SETSTAT = 9,
    FXP_OPENDIR = 11,
    FXP_REMOVE = 13,
    FXP_MKDIR = 14,
    FXP_RMDIR = 15,
    FXP_RENAME = 18,
    FXP_SYMLINK = 20,
    FXP_STATUS = 101,
    FXP_HANDLE = 102,
    FXP_DATA = 103,
    FXP_EXTENDED = 200,
};

/* What a pending request is, for its answer. */
enum op {
    OP_OPEN,
    OP_OPENDIR,
    OP_CLOSE,
    OP_READ,
    OP_WRITE,
    OP_PATH, /* remove, mkdir, ...: reported with the answer */
};

#define HANDLE_MAX 256 /* the draft's bound on a handle's length */
#define SERVER_HEAD_CAP 512
#define SERVER_MAX_PACKET (4 * SFTP_AUDIT_MAX_PACKET)

struct dir {
    uint8_t *head;
    size_t cap;       /* bytes of a packet buffered at most (after its length) */
    uint8_t len_b[4]; /* the length field, as it arrives */
    size_t len_have;  /* bytes of len_b so far */
    uint32_t len;     /* the current packet's length */
    size_t head_want; /* min(len, cap) */
    size_t head_have; /* bytes of the head so far */
    uint64_t skip;    /* bytes of the current packet left to skip */
    uint32_t max_len;
};

struct handle {
    bool used;
    bool dir;
    bool counted; /* its bytes are counted (it is in the table) */
    uint8_t hlen;
    uint8_t h[HANDLE_MAX];
    char *path;
    uint32_t pflags;
    uint64_t rd, wr;
};

struct pending {
    bool used;
    uint8_t op;
    uint32_t id;
    int handle;     /* OP_CLOSE, OP_READ, OP_WRITE: index in handles; -1 unknown */
    uint32_t count; /* OP_WRITE: the bytes to write */
    uint32_t pflags;
    const char *action; /* OP_PATH: static */
    char *path, *target, *attrs;
};

struct sftp_audit {
    sftp_audit_emit_fn emit;
    void *arg;
    uint32_t max_events, events;
    bool truncated, failed, finished;
    struct dir cl, sv;
    struct pending pend[SFTP_AUDIT_PENDING];
    size_t n_pend;
    struct handle *handles; /* SFTP_AUDIT_HANDLES of them, allocated on first use */
    size_t str_bytes;       /* bytes of paths held by pend and handles */
};

/* ---- strings ---------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at @p (at most @n bytes), or 0. */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
    size_t need;
    uint32_t cp;
    if (p[0] >= 0xC2 && p[0] <= 0xDF)
        need = 2, cp = p[0] & 0x1Fu;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF)
        need = 3, cp = p[0] & 0x0Fu;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4)
        need = 4, cp = p[0] & 0x07u;
    else
        return 0;
    if (need > n)
        return 0;
    for (size_t k = 1; k < need; k++) {
        if ((p[k] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[k] & 0x3Fu);
    }
    if ((need == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (need == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return need;
}

/* A printable copy of untrusted bytes: control characters and bytes that are not
 * UTF-8 become '?', and more than SFTP_AUDIT_PATH_MAX bytes are cut with "...".
 * Returns a malloc'd string (the caller's) or NULL. */
static char *printable(const uint8_t *p, size_t n)
{
    bool cut = n > SFTP_AUDIT_PATH_MAX;
    if (cut)
        n = SFTP_AUDIT_PATH_MAX;
    char *s = malloc(n + 4);
    if (s == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (p[i] >= 0x20 && p[i] < 0x7F) {
            s[o++] = (char)p[i++];
            continue;
        }
        size_t k = p[i] >= 0x80 ? utf8_seq(p + i, n - i) : 0;
        if (k == 0) {
            s[o++] = '?';
            i++;
        } else {
            memcpy(s + o, p + i, k);
            o += k;
            i += k;
        }
    }
    if (cut)
        memcpy(s + o, "...", 3), o += 3;
    s[o] = '\0';
    return s;
}

static int rd_string(struct rp_rd *r, const uint8_t **p, uint32_t *n)
{
    if (rp_rd_be32(r, n) != 0 || rp_rd_bytes(r, *n, p) != 0)
        return RP_EINVAL;
    return 0;
}

static const char *status_text(uint32_t code)
{
    static const char *const names[] = {
        "ok",          "end of file",   "no such file",    "permission denied",    "failure",
        "bad message", "no connection", "connection lost", "operation unsupported"};
    return code < sizeof names / sizeof names[0] ? names[code] : "failure";
}

static void open_flags(uint32_t f, char *out, size_t n)
{
    static const struct {
        uint32_t bit;
        const char *name;
    } names[] = {{1, "read"},   {2, "write"},       {4, "append"},
                 {8, "create"}, {0x10, "truncate"}, {0x20, "excl"}};
    out[0] = '\0';
    size_t o = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (f & names[i].bit) {
            int w = snprintf(out + o, n - o, "%s%s", o > 0 ? "," : "", names[i].name);
            if (w < 0 || (size_t)w >= n - o)
                return;
            o += (size_t)w;
        }
}

/* ---- events ------------------------------------------------------------------------ */

static void report(struct sftp_audit *a, const struct sftp_audit_event *ev)
{
    if (a->truncated)
        return;
    if (a->events >= a->max_events) {
        char why[128];
        snprintf(why, sizeof why,
                 "more than %u file operations on this channel: the rest are not audited",
                 a->max_events);
        struct sftp_audit_event t = {.action = "events_truncated", .error = why};
        a->truncated = true;
        a->events++;
        a->emit(a->arg, &t);
        return;
    }
    a->events++;
    a->emit(a->arg, ev);
}

static void report_close(struct sftp_audit *a, struct handle *h, const char *error)
{
    if (h->dir)
        return; /* the opendir said it all: closing a listing changes nothing */
    char flags[64];
    open_flags(h->pflags, flags, sizeof flags);
    struct sftp_audit_event ev = {.action = "close",
                                  .path = h->path,
                                  .flags = flags,
                                  .error = error,
                                  .has_bytes = true,
                                  .bytes_read = h->rd,
                                  .bytes_written = h->wr};
    report(a, &ev);
}

/* ---- tables ------------------------------------------------------------------------ */

static void str_release(struct sftp_audit *a, char **s)
{
    if (*s != NULL) {
        a->str_bytes -= strlen(*s) + 1;
        free(*s);
        *s = NULL;
    }
}

/* A printable copy counted against the budget; NULL when over it or out of memory. */
static char *str_take(struct sftp_audit *a, const uint8_t *p, size_t n)
{
    if (a->str_bytes + (n < SFTP_AUDIT_PATH_MAX ? n : SFTP_AUDIT_PATH_MAX) + 4 >
        SFTP_AUDIT_STR_BUDGET)
        return NULL;
    char *s = printable(p, n);
    if (s != NULL)
        a->str_bytes += strlen(s) + 1;
    return s;
}

static struct pending *pend_find(struct sftp_audit *a, uint32_t id)
{
    if (a->n_pend == 0)
        return NULL;
    size_t i = (id * 2654435761u) % SFTP_AUDIT_PENDING;
    for (size_t k = 0; k < SFTP_AUDIT_PENDING; k++, i = (i + 1) % SFTP_AUDIT_PENDING) {
        if (!a->pend[i].used)
            return NULL;
        if (a->pend[i].id == id)
            return &a->pend[i];
    }
    return NULL;
}

static void pend_clear(struct sftp_audit *a, struct pending *p)
{
    str_release(a, &p->path);
    str_release(a, &p->target);
    str_release(a, &p->attrs);
    memset(p, 0, sizeof *p);
}

/* Removes @p, moving later entries of its probe run back (no tombstones). */
static void pend_remove(struct sftp_audit *a, struct pending *p)
{
    size_t i = (size_t)(p - a->pend);
    pend_clear(a, p);
    a->n_pend--;
    size_t j = i;
    for (;;) {
        j = (j + 1) % SFTP_AUDIT_PENDING;
        if (!a->pend[j].used)
            return;
        size_t home = (a->pend[j].id * 2654435761u) % SFTP_AUDIT_PENDING;
        /* Entry j may move to the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays)
            continue;
        a->pend[i] = a->pend[j];
        memset(&a->pend[j], 0, sizeof a->pend[j]);
        i = j;
    }
}

/* A slot for request @id (an id still pending is replaced: its answer could not be
 * told apart), or NULL when the table is full. */
static struct pending *pend_add(struct sftp_audit *a, uint32_t id)
{
    struct pending *old = pend_find(a, id);
    if (old != NULL)
        pend_remove(a, old);
    if (a->n_pend >= SFTP_AUDIT_PENDING * 3 / 4)
        return NULL;
    size_t i = (id * 2654435761u) % SFTP_AUDIT_PENDING;
    while (a->pend[i].used)
        i = (i + 1) % SFTP_AUDIT_PENDING;
    a->pend[i].used = true;
    a->pend[i].id = id;
    a->pend[i].handle = -1;
    a->n_pend++;
    return &a->pend[i];
}

static int handle_find(struct sftp_audit *a, const uint8_t *h, uint32_t n)
{
    if (a->handles == NULL || n == 0 || n > HANDLE_MAX)
        return -1;
    for (size_t i = 0; i < SFTP_AUDIT_HANDLES; i++)
        if (a->handles[i].used && a->handles[i].hlen == n && memcmp(a->handles[i].h, h, n) == 0)
            return (int)i;
    return -1;
}

static void handle_drop(struct sftp_audit *a, int i)
{
    if (i < 0)
        return;
    str_release(a, &a->handles[i].path);
    memset(&a->handles[i], 0, sizeof a->handles[i]);
    /* Requests still waiting on it no longer count for it. */
    for (size_t k = 0; k < SFTP_AUDIT_PENDING; k++)
        if (a->pend[k].used && a->pend[k].handle == i)
            a->pend[k].handle = -1;
}

/* ---- client -> server ---------------------------------------------------------------- */

/* Path operations: reported with the answer if the request can wait for it. */
static void path_op(struct sftp_audit *a, uint32_t id, const char *action, const uint8_t *p,
                    uint32_t pn, const uint8_t *t, uint32_t tn, const char *attrs)
{
    struct pending *q = pend_add(a, id);
    if (q != NULL) {
        q->op = OP_PATH;
        q->action = action;
        q->path = p != NULL ? str_take(a, p, pn) : NULL;
        q->target = t != NULL ? str_take(a, t, tn) : NULL;
        q->attrs = attrs != NULL ? str_take(a, (const uint8_t *)attrs, strlen(attrs)) : NULL;
        if ((p == NULL || q->path != NULL) && (t == NULL || q->target != NULL) &&
            (attrs == NULL || q->attrs != NULL))
            return;
        pend_remove(a, q); /* over the budget: report now */
    }
    char *ps = p != NULL ? printable(p, pn) : NULL;
    char *ts = t != NULL ? printable(t, tn) : NULL;
    struct sftp_audit_event ev = {.action = action,
                                  .path = ps ? ps : (p ? "?" : NULL),
                                  .target_path = ts,
                                  .attributes = attrs};
    if (t != NULL && ts == NULL)
        ev.target_path = "?";
    report(a, &ev);
    free(ps);
    free(ts);
}

/* SFTP attributes as "mode=0644 size=N uid=N gid=N atime=N mtime=N". */
static int read_attrs(struct rp_rd *r, char *out, size_t n)
{
    uint32_t flags;
    out[0] = '\0';
    if (rp_rd_be32(r, &flags) != 0)
        return RP_EINVAL;
    size_t o = 0;
#define ATTR_PUT(...)                                                                              \
    do {                                                                                           \
        int w_ = snprintf(out + o, n - o, __VA_ARGS__);                                            \
        if (w_ > 0 && (size_t)w_ < n - o)                                                          \
            o += (size_t)w_;                                                                       \
    } while (0)
    if (flags & 1) {
        uint64_t size;
        if (rp_rd_be64(r, &size) != 0)
            return RP_EINVAL;
        ATTR_PUT("%ssize=%llu", o ? " " : "", (unsigned long long)size);
    }
    if (flags & 2) {
        uint32_t uid, gid;
        if (rp_rd_be32(r, &uid) != 0 || rp_rd_be32(r, &gid) != 0)
            return RP_EINVAL;
        ATTR_PUT("%suid=%u gid=%u", o ? " " : "", uid, gid);
    }
    if (flags & 4) {
        uint32_t mode;
        if (rp_rd_be32(r, &mode) != 0)
            return RP_EINVAL;
        ATTR_PUT("%smode=%04o", o ? " " : "", mode & 07777);
    }
    if (flags & 8) {
        uint32_t at, mt;
        if (rp_rd_be32(r, &at) != 0 || rp_rd_be32(r, &mt) != 0)
            return RP_EINVAL;
        ATTR_PUT("%satime=%u mtime=%u", o ? " " : "", at, mt);
    }
#undef ATTR_PUT
    /* Extended attributes follow; nothing of them is reported. */
    return 0;
}

static bool ext_is(const uint8_t *name, uint32_t n, const char *want)
{
    return strlen(want) == n && memcmp(name, want, n) == 0;
}

/* One client packet: @b / @n its first bytes (the type included), @len its length.
 * RP_EINVAL: a field overruns the packet (or, for a packet longer than what was
 * buffered, the buffer: RP_ETOOBIG, not an error of the stream). */
static int client_packet(struct sftp_audit *a, const uint8_t *b, size_t n, uint32_t len)
{
    struct rp_rd r;
    rp_rd_init(&r, b, n);
    uint8_t type;
    uint32_t id;
    const uint8_t *p, *t, *h;
    uint32_t pn, tn, hn;
    char attrs[160];
    if (rp_rd_u8(&r, &type) != 0)
        return RP_EINVAL;
    if (type == FXP_INIT)
        return 0;
    if (rp_rd_be32(&r, &id) != 0)
        return RP_EINVAL;
    switch (type) {
    case FXP_OPEN:
    case FXP_OPENDIR: {
        uint32_t pflags = 0;
        if (rd_string(&r, &p, &pn) != 0)
            return RP_EINVAL;
        if (type == FXP_OPEN && rp_rd_be32(&r, &pflags) != 0)
            return RP_EINVAL;
        struct pending *q = pend_add(a, id);
        char *path = q != NULL ? str_take(a, p, pn) : NULL;
        if (q != NULL && path != NULL) {
            q->op = type == FXP_OPEN ? OP_OPEN : OP_OPENDIR;
            q->pflags = pflags;
            q->path = path;
            return 0;
        }
        if (q != NULL)
            pend_remove(a, q);
        char flags[64];
        open_flags(pflags, flags, sizeof flags);
        char *ps = printable(p, pn);
        struct sftp_audit_event ev = {.action = type == FXP_OPEN ? "open" : "opendir",
                                      .path = ps ? ps : "?",
                                      .flags = type == FXP_OPEN ? flags : NULL};
        report(a, &ev);
        free(ps);
        return 0;
    }
    case FXP_CLOSE:
    case FXP_READ:
    case FXP_WRITE: {
        if (rd_string(&r, &h, &hn) != 0)
            return RP_EINVAL;
        uint64_t off;
        uint32_t count = 0;
        if (type == FXP_READ && (rp_rd_be64(&r, &off) != 0 || rp_rd_be32(&r, &count) != 0))
            return RP_EINVAL;
        if (type == FXP_WRITE) {
            /* The data is not buffered: its length must fit the packet as declared. */
            if (rp_rd_be64(&r, &off) != 0 || rp_rd_be32(&r, &count) != 0)
                return RP_EINVAL;
            if (count > (uint64_t)len - r.off)
                return RP_EINVAL;
        }
        int hi = handle_find(a, h, hn);
        if (hi < 0)
            return 0; /* a handle not tracked (a directory's too): nothing to count */
        struct pending *q = pend_add(a, id);
        if (q == NULL) {
            if (type == FXP_CLOSE && hi >= 0) {
                report_close(a, &a->handles[hi], NULL);
                handle_drop(a, hi);
            }
            return 0;
        }
        q->op = type == FXP_CLOSE ? OP_CLOSE : type == FXP_READ ? OP_READ : OP_WRITE;
        q->handle = hi;
        q->count = count;
        return 0;
    }
    case FXP_SETSTAT:
    case FXP_FSETSTAT:
    case FXP_REMOVE:
    case FXP_MKDIR:
    case FXP_RMDIR: {
        if (rd_string(&r, &p, &pn) != 0)
            return RP_EINVAL;
        const char *action = type == FXP_SETSTAT    ? "setstat"
                             : type == FXP_FSETSTAT ? "fsetstat"
                             : type == FXP_REMOVE   ? "remove"
                             : type == FXP_MKDIR    ? "mkdir"
                                                    : "rmdir";
        bool with_attrs = type == FXP_SETSTAT || type == FXP_FSETSTAT;
        if (type != FXP_REMOVE && type != FXP_RMDIR && read_attrs(&r, attrs, sizeof attrs) != 0)
            return RP_EINVAL;
        if (type == FXP_FSETSTAT) {
            int hi = handle_find(a, p, pn);
            const char *hp = hi >= 0 ? a->handles[hi].path : "?";
            path_op(a, id, action, (const uint8_t *)hp, (uint32_t)strlen(hp), NULL, 0, attrs);
            return 0;
        }
        path_op(a, id, action, p, pn, NULL, 0, with_attrs ? attrs : NULL);
        return 0;
    }
    case FXP_RENAME:
    case FXP_SYMLINK:
        if (rd_string(&r, &p, &pn) != 0 || rd_string(&r, &t, &tn) != 0)
            return RP_EINVAL;
        /* OpenSSH sends SYMLINK's two paths in the reverse of the draft's order: the
         * target first, then the link to create. */
        if (type == FXP_SYMLINK)
            path_op(a, id, "symlink", t, tn, p, pn, NULL);
        else
            path_op(a, id, "rename", p, pn, t, tn, NULL);
        return 0;
    case FXP_EXTENDED: {
        const uint8_t *name;
        uint32_t nn;
        if (rd_string(&r, &name, &nn) != 0)
            return RP_EINVAL;
        if (ext_is(name, nn, "posix-rename@openssh.com") ||
            ext_is(name, nn, "hardlink@openssh.com")) {
            if (rd_string(&r, &p, &pn) != 0 || rd_string(&r, &t, &tn) != 0)
                return RP_EINVAL;
            path_op(a, id, name[0] == 'p' ? "rename" : "link", p, pn, t, tn, NULL);
        } else if (ext_is(name, nn, "lsetstat@openssh.com")) {
            if (rd_string(&r, &p, &pn) != 0 || read_attrs(&r, attrs, sizeof attrs) != 0)
                return RP_EINVAL;
            path_op(a, id, "lsetstat", p, pn, NULL, 0, attrs);
        } else if (ext_is(name, nn, "copy-data")) {
            const uint8_t *h2;
            uint32_t h2n;
            uint64_t x;
            if (rd_string(&r, &h, &hn) != 0 || rp_rd_be64(&r, &x) != 0 || rp_rd_be64(&r, &x) != 0 ||
                rd_string(&r, &h2, &h2n) != 0)
                return RP_EINVAL;
            int from = handle_find(a, h, hn), to = handle_find(a, h2, h2n);
            const char *fp = from >= 0 ? a->handles[from].path : "?";
            const char *tp = to >= 0 ? a->handles[to].path : "?";
            path_op(a, id, "copy-data", (const uint8_t *)fp, (uint32_t)strlen(fp),
                    (const uint8_t *)tp, (uint32_t)strlen(tp), NULL);
        }
        return 0;
    }
    default:
        return 0; /* lookups, and what sftp-server answers "unsupported" */
    }
}

/* ---- server -> client ---------------------------------------------------------------- */

static void answer_open(struct sftp_audit *a, struct pending *q, const uint8_t *h, uint32_t hn,
                        const char *error)
{
    char flags[64];
    open_flags(q->pflags, flags, sizeof flags);
    struct sftp_audit_event ev = {.action = q->op == OP_OPEN ? "open" : "opendir",
                                  .path = q->path,
                                  .flags = q->op == OP_OPEN ? flags : NULL,
                                  .error = error};
    report(a, &ev);
    if (error != NULL || hn == 0 || hn > HANDLE_MAX)
        return;
    if (a->handles == NULL) {
        a->handles = calloc(SFTP_AUDIT_HANDLES, sizeof *a->handles);
        if (a->handles == NULL)
            return;
    }
    int old = handle_find(a, h, hn); /* the server reuses a handle it closed */
    handle_drop(a, old);
    for (size_t i = 0; i < SFTP_AUDIT_HANDLES; i++) {
        struct handle *e = &a->handles[i];
        if (e->used)
            continue;
        e->used = true;
        e->dir = q->op == OP_OPENDIR;
        e->hlen = (uint8_t)hn;
        memcpy(e->h, h, hn);
        e->path = q->path; /* moves, with its share of the budget */
        q->path = NULL;
        e->pflags = q->pflags;
        return;
    }
}

static int server_packet(struct sftp_audit *a, const uint8_t *b, size_t n, uint32_t len)
{
    struct rp_rd r;
    rp_rd_init(&r, b, n);
    uint8_t type;
    uint32_t id;
    if (rp_rd_u8(&r, &type) != 0)
        return RP_EINVAL;
    if (type == FXP_VERSION || type < FXP_STATUS)
        return 0;
    if (rp_rd_be32(&r, &id) != 0)
        return RP_EINVAL;
    struct pending *q = pend_find(a, id);
    if (q == NULL)
        return 0;
    const char *error = NULL;
    const uint8_t *h = NULL;
    uint32_t hn = 0, code = 0, count = 0;
    switch (type) {
    case FXP_STATUS:
        if (rp_rd_be32(&r, &code) != 0)
            return RP_EINVAL;
        if (code != 0)
            error = status_text(code);
        break;
    case FXP_HANDLE:
        if (rd_string(&r, &h, &hn) != 0)
            return RP_EINVAL;
        break;
    case FXP_DATA:
        if (rp_rd_be32(&r, &count) != 0 || count > (uint64_t)len - r.off)
            return RP_EINVAL;
        break;
    default:
        error = "unexpected answer";
        break;
    }
    struct handle *hd = q->handle >= 0 && a->handles != NULL ? &a->handles[q->handle] : NULL;
    switch (q->op) {
    case OP_OPEN:
    case OP_OPENDIR:
        answer_open(a, q, h, hn, type == FXP_HANDLE ? NULL : error ? error : "unexpected answer");
        break;
    case OP_CLOSE:
        if (hd != NULL) {
            report_close(a, hd, error);
            handle_drop(a, q->handle);
        }
        break;
    case OP_READ:
        if (hd != NULL && type == FXP_DATA)
            hd->rd += count;
        break;
    case OP_WRITE:
        if (hd != NULL && type == FXP_STATUS && code == 0)
            hd->wr += q->count;
        break;
    case OP_PATH: {
        struct sftp_audit_event ev = {.action = q->action,
                                      .path = q->path,
                                      .target_path = q->target,
                                      .attributes = q->attrs,
                                      .error = error};
        report(a, &ev);
        break;
    }
    }
    /* answer_open may have moved the table's entries: find the request again. */
    q = pend_find(a, id);
    if (q != NULL)
        pend_remove(a, q);
    return 0;
}

/* ---- framing ------------------------------------------------------------------------- */

static int dir_init(struct dir *d, size_t cap, uint32_t max_len)
{
    memset(d, 0, sizeof *d);
    d->head = malloc(cap);
    d->cap = cap;
    d->max_len = max_len;
    return d->head != NULL ? 0 : RP_ENOMEM;
}

static int feed_dir(struct sftp_audit *a, struct dir *d, bool from_client, const uint8_t *p,
                    size_t n)
{
    while (n > 0) {
        if (d->skip > 0) {
            size_t k = d->skip < n ? (size_t)d->skip : n;
            d->skip -= k;
            p += k;
            n -= k;
            continue;
        }
        if (d->len_have < 4) {
            size_t k = 4 - d->len_have < n ? 4 - d->len_have : n;
            memcpy(d->len_b + d->len_have, p, k);
            d->len_have += k;
            p += k;
            n -= k;
            if (d->len_have < 4)
                return 0;
            d->len = (uint32_t)d->len_b[0] << 24 | (uint32_t)d->len_b[1] << 16 |
                     (uint32_t)d->len_b[2] << 8 | d->len_b[3];
            if (d->len == 0 || d->len > d->max_len)
                return rp_err(RP_EINVAL,
                              "%s sent an SFTP packet of %u bytes: not SFTP (expected 1 to %u "
                              "bytes)",
                              from_client ? "the client" : "sftp-server", d->len, d->max_len);
            d->head_want = d->len < d->cap ? d->len : d->cap;
            d->head_have = 0;
        }
        size_t k = d->head_want - d->head_have < n ? d->head_want - d->head_have : n;
        memcpy(d->head + d->head_have, p, k);
        d->head_have += k;
        p += k;
        n -= k;
        if (d->head_have < d->head_want)
            return 0;
        int rv = from_client ? client_packet(a, d->head, d->head_want, d->len)
                             : server_packet(a, d->head, d->head_want, d->len);
        /* A field past what was buffered of a longer packet is a request too large to
         * read (harmless: sftp-server takes it or refuses it); past the packet's end,
         * the stream is not SFTP. */
        if (rv != 0 && d->head_want == d->len)
            return rp_err(RP_EINVAL,
                          "%s sent an SFTP packet (type %u, %u bytes) whose fields overrun it",
                          from_client ? "the client" : "sftp-server", d->head[0], d->len);
        d->skip = d->len - d->head_want;
        d->len_have = 0;
    }
    return 0;
}

/* ---- the observer -------------------------------------------------------------------- */

int sftp_audit_new(struct sftp_audit **out, sftp_audit_emit_fn emit, void *arg, uint32_t max_events)
{
    struct sftp_audit *a = calloc(1, sizeof *a);
    if (a == NULL)
        return RP_ENOMEM;
    a->emit = emit;
    a->arg = arg;
    a->max_events = max_events > 0 ? max_events : SFTP_AUDIT_DEFAULT_EVENTS;
    if (dir_init(&a->cl, SFTP_AUDIT_HEAD_CAP, SFTP_AUDIT_MAX_PACKET) != 0 ||
        dir_init(&a->sv, SERVER_HEAD_CAP, SERVER_MAX_PACKET) != 0) {
        sftp_audit_free(a);
        return RP_ENOMEM;
    }
    *out = a;
    return 0;
}

int sftp_audit_feed(struct sftp_audit *a, bool from_client, const void *p, size_t n)
{
    if (a->failed || a->finished || n == 0)
        return 0;
    int rv = feed_dir(a, from_client ? &a->cl : &a->sv, from_client, p, n);
    if (rv != 0)
        a->failed = true;
    return rv;
}

void sftp_audit_finish(struct sftp_audit *a)
{
    if (a->finished)
        return;
    a->finished = true;
    if (a->handles == NULL)
        return;
    for (size_t i = 0; i < SFTP_AUDIT_HANDLES; i++)
        if (a->handles[i].used) {
            report_close(a, &a->handles[i], "the channel ended with the file open");
            handle_drop(a, (int)i);
        }
}

uint32_t sftp_audit_events(const struct sftp_audit *a)
{
    return a->events;
}

void sftp_audit_free(struct sftp_audit *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < SFTP_AUDIT_PENDING; i++)
        if (a->pend[i].used)
            pend_clear(a, &a->pend[i]);
    if (a->handles != NULL)
        for (size_t i = 0; i < SFTP_AUDIT_HANDLES; i++)
            free(a->handles[i].path);
    free(a->handles);
    free(a->cl.head);
    free(a->sv.head);
    free(a);
}
