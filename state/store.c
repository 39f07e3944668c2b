/* state/store.c: the LMDB environment: opening it, closing it, and the reads.
 *
 * Durability. The environment is opened with MDB_NOSYNC: commits reach the OS
 * page cache but are not fsynced. The Raft log is the durable record, and on
 * every start libraft rebuilds the state machine from it: it restores the latest
 * snapshot (our restore replaces every database in one transaction) and then
 * re-applies the entries after it. Without a snapshot it re-applies from index 1
 * onto what LMDB already holds; state_apply skips any index at or below the
 * stored applied index (the applied index is written in the same transaction as
 * the entry's changes, so LMDB always holds exactly the entries up to it). Either
 * way LMDB ends up current, so losing its unsynced tail costs only re-applying.
 *
 * What NOSYNC does not survive is the machine going down (power, kernel): pages
 * may reach the disk out of order and leave a torn B-tree, and a torn tree is not
 * something restore can safely walk. A process crash (kill -9) is harmless, as
 * the page cache still holds every write. So state_open writes a marker holding
 * the kernel's boot id (fsynced, with its directory) before LMDB is touched, and
 * state_close removes it after mdb_env_sync. A marker from another boot means
 * the machine went down while we were open: the environment is discarded and
 * Raft rebuilds it as above (snapshot + log, or the whole log when there is no
 * snapshot, since the log is only ever truncated behind a snapshot). One caveat
 * follows from skipping applied indexes: this directory must be wiped together
 * with the Raft directory, never alone.
 *
 * Size. The map is opened at the ceiling (state_opts.map_size, the server's
 * auth_service.max_map_size) from the start, with MDB_WRITEMAP: a commit changes
 * pages in the map in place and costs no system call, where pwrite of every dirty
 * page cost a third of a member's CPU under writes (ext4 walks each large folio's
 * buffers for a 4 KiB write). Growing the map in steps instead would mean
 * mdb_env_set_mapsize, which LMDB allows only while no transaction of the process
 * is open; our readers (64 API workers, watch streams, a snapshot's read
 * transaction pinned across its serialisation on a thread-pool thread) would all
 * need a lock the apply waits on.
 *
 * With MDB_WRITEMAP, LMDB sizes data.mdb to the map: a sparse file, whose holes
 * take no disk. A store into a hole of the map allocates a block at the page
 * fault, and with the disk full that fault is SIGBUS, not an error code. So the
 * blocks are allocated ahead of LMDB (state__disk_reserve, posix_fallocate): up to
 * the last page in use plus what the next entry can add plus a margin (an eighth
 * of the data, from 256 KiB to 64 MiB), checked before every apply transaction.
 * LMDB never stores past that point, and a disk too full to allocate fails the
 * apply with RP_ENOSPC (Raft retries the entry, as it did when pwrite failed) and
 * makes state_space_check refuse writes. At the ceiling, proposers get RP_ENOSPC
 * from state_space_check before anything is proposed. */
#define STATE_INTERNAL
#include "state/state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/log.h"

const char *const state__db_names[STATE__N_DBS] = {"res",  "exp",   "rid",      "ridrev",
                                                   "meta", "audit", "audit_idx"};

static const char applied_key[] = "applied_index";

#define MARKER "state.open"

int state__lmdb_err(int rc, const char *what)
{
    if (rc == MDB_MAP_FULL)
        return rp_err(RP_ENOSPC, "%s: the state database is full (raise map_size): %s", what,
                      mdb_strerror(rc));
    if (rc == ENOMEM)
        return rp_err(RP_ENOMEM, "%s: %s", what, mdb_strerror(rc));
    return rp_err(RP_EIO, "%s: %s", what, mdb_strerror(rc));
}

int state__read_applied(struct state *s, MDB_txn *txn, uint64_t *out)
{
    MDB_val k = {sizeof applied_key - 1, (void *)applied_key}, v;
    int rc = mdb_get(txn, s->dbi[STATE__DB_META], &k, &v);
    *out = 0;
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return state__lmdb_err(rc, "reading the applied index");
    if (v.mv_size != 8)
        return rp_err(RP_EIO, "stored applied index has %zu bytes, expected 8", v.mv_size);
    *out = state__get_be64(v.mv_data);
    return 0;
}

/* ---- Crash marker ------------------------------------------------------- */

static void boot_id(char *out, size_t n)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
    if (f == NULL)
        return;
    if (fgets(out, (int)n, f) == NULL)
        out[0] = '\0';
    fclose(f);
    out[strcspn(out, "\n")] = '\0';
}

static int path_in(char *out, size_t n, const char *dir, const char *file)
{
    if ((size_t)snprintf(out, n, "%s/%s", dir, file) >= n)
        return rp_err(RP_EINVAL, "state directory path too long: %s", dir);
    return 0;
}

/* Discards the environment if a marker from another boot says the machine went
 * down while it was open, then writes this boot's marker durably. */
static int check_and_mark(const char *dir)
{
    char path[4096], data[4096], lock[4096], rdata[4096], rlock[4096], now[64], was[64];
    int rv;
    if ((rv = path_in(path, sizeof path, dir, MARKER)) != 0 ||
        (rv = path_in(data, sizeof data, dir, "data.mdb")) != 0 ||
        (rv = path_in(lock, sizeof lock, dir, "lock.mdb")) != 0 ||
        (rv = path_in(rdata, sizeof rdata, dir, STATE__REC_DIR "/data.mdb")) != 0 ||
        (rv = path_in(rlock, sizeof rlock, dir, STATE__REC_DIR "/lock.mdb")) != 0)
        return rv;
    boot_id(now, sizeof now);

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t r = read(fd, was, sizeof was - 1);
        close(fd);
        was[r > 0 ? r : 0] = '\0';
        /* Without a boot id to compare, assume the worst. */
        if (now[0] == '\0' || strcmp(was, now) != 0) {
            rp_warn("state",
                    "%s: the machine went down while the state was open (boot id %s, now %s); "
                    "discarding it, Raft rebuilds it from its snapshot and log",
                    dir, was[0] ? was : "?", now[0] ? now : "?");
            /* The recordings store goes with it (same durability, state/recstore.c). */
            if ((unlink(data) != 0 && errno != ENOENT) || (unlink(lock) != 0 && errno != ENOENT) ||
                (unlink(rdata) != 0 && errno != ENOENT) || (unlink(rlock) != 0 && errno != ENOENT))
                return rp_err(RP_EIO, "removing %s: %s", data, strerror(errno));
        }
    }

    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return rp_err(RP_EIO, "create %s: %s", path, strerror(errno));
    size_t len = strlen(now);
    bool ok = write(fd, now, len) == (ssize_t)len && fsync(fd) == 0;
    close(fd);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ok = ok && fsync(dfd) == 0;
        close(dfd);
    } else {
        ok = false;
    }
    if (!ok)
        return rp_err(RP_EIO, "writing %s: %s", path, strerror(errno));
    return 0;
}

/* ---- Open / close ------------------------------------------------------- */

static int open_dbs(struct state *s)
{
    MDB_txn *txn;
    uint64_t applied;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc != 0)
        return state__lmdb_err(rc, "opening the state databases");
    for (int i = 0; i < STATE__N_DBS; i++) {
        rc = mdb_dbi_open(txn, state__db_names[i], MDB_CREATE, &s->dbi[i]);
        if (rc != 0) {
            mdb_txn_abort(txn);
            return state__lmdb_err(rc, "opening the state databases");
        }
    }
    int rv = state__read_applied(s, txn, &applied);
    if (rv != 0) {
        mdb_txn_abort(txn);
        return rv;
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0)
        return state__lmdb_err(rc, "opening the state databases");
    atomic_store(&s->applied, applied);
    atomic_store(&s->resources_changed, applied);
    return 0;
}

int state_open(struct state **out, const char *dir, const struct state_opts *opts)
{
    struct state *s;
    int rc, rv;

    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return rp_err(RP_EIO, "create %s: %s", dir, strerror(errno));
    s = calloc(1, sizeof *s);
    if (s == NULL)
        return rp_err(RP_ENOMEM, "allocating the state");
    if (opts != NULL)
        s->opts = *opts;
    if (s->opts.map_size == 0)
        s->opts.map_size = (size_t)8 << 30;
    if (s->opts.watch_queue_len == 0)
        s->opts.watch_queue_len = 4096;
    if (s->opts.event_ring_len == 0)
        s->opts.event_ring_len = 8192;
    if (s->opts.rid_keep == 0)
        s->opts.rid_keep = 100000;
    s->dir = strdup(dir);
    if (s->dir == NULL) {
        rv = rp_err(RP_ENOMEM, "allocating the state");
        goto err;
    }
    if ((rv = check_and_mark(dir)) != 0)
        goto err;

    if ((rc = mdb_env_create(&s->env)) != 0) {
        rv = state__lmdb_err(rc, "creating the LMDB environment");
        goto err;
    }
    if ((rc = mdb_env_set_mapsize(s->env, s->opts.map_size)) != 0 ||
        (rc = mdb_env_set_maxdbs(s->env, STATE__N_DBS)) != 0 ||
        (rc = mdb_env_set_maxreaders(s->env, 1024)) != 0) {
        rv = state__lmdb_err(rc, "configuring the LMDB environment");
        goto err_after_env;
    }
    /* MDB_NOTLS: read transactions are handed between threads (snapshots, watch
     * streams) and a thread may hold several. MDB_NOSYNC and MDB_WRITEMAP: see the
     * top of this file. */
    rc = mdb_env_open(s->env, dir, MDB_NOTLS | MDB_NOSYNC | MDB_NORDAHEAD | MDB_WRITEMAP, 0600);
    if (rc != 0) {
        rv = state__lmdb_err(rc, dir);
        goto err_after_env;
    }
    if ((rc = mdb_env_get_fd(s->env, &s->fd)) != 0) {
        rv = state__lmdb_err(rc, dir);
        goto err_after_env;
    }
    if ((rv = state__disk_reserve(s, 0)) != 0)
        goto err_after_env;
    int dead = 0;
    mdb_reader_check(s->env, &dead);
    if ((rv = open_dbs(s)) != 0)
        goto err_after_env;
    if ((rv = state__rec_open(s, dir)) != 0)
        goto err_after_env;
    if ((rv = state__hub_init(&s->hub, s->opts.event_ring_len, atomic_load(&s->applied))) != 0)
        goto err_after_rec;
    *out = s;
    return 0;

err_after_rec:
    state__rec_close(s);
err_after_env:
    mdb_env_close(s->env);
err:
    free(s->dir);
    free(s);
    return rv;
}

void state_close(struct state *s)
{
    if (s == NULL)
        return;
    if (s->hub.watchers != NULL)
        rp_warn("state", "closing the state with watches still open");
    if (s->snap_txn != NULL)
        mdb_txn_abort(s->snap_txn);
    for (size_t i = 0; i < s->n_pending; i++)
        state__ev_free(s->pending[i]);
    free(s->pending);
    free(s->group_res);
    free(s->group_keys);
    state__hub_close(&s->hub);
    state__rec_close(s); /* synced before the marker goes */
    int rc = mdb_env_sync(s->env, 1);
    mdb_env_close(s->env);
    /* Only a synced environment may lose its marker. */
    char path[4096];
    if (rc == 0 && path_in(path, sizeof path, s->dir, MARKER) == 0)
        unlink(path);
    else if (rc != 0)
        rp_warn("state", "%s: sync at close failed: %s", s->dir, mdb_strerror(rc));
    free(s->dir);
    free(s);
}

int state__env_space_check(MDB_env *env, size_t len, const char *setting)
{
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(env, &info) != 0 || mdb_env_stat(env, &st) != 0)
        return 0; /* no figures: let apply find out */
    uint64_t map = info.me_mapsize, reserve = map / 16;
    if (reserve > (64u << 20))
        reserve = 64u << 20;
    /* The last page used bounds what the tree holds (freed pages inside it are
     * reused first), so this errs on the side of refusing early. */
    uint64_t used = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
    if (used + 2 * (uint64_t)len + reserve > map)
        return rp_err(RP_ENOSPC,
                      "the database is full: %llu of %llu MiB used, a write of %zu bytes "
                      "does not fit (raise %s)",
                      (unsigned long long)(used >> 20), (unsigned long long)(map >> 20), len,
                      setting);
    return 0;
}

int state_space_check(struct state *s, size_t len)
{
    if (atomic_load(&s->disk_short))
        return rp_err(RP_ENOSPC,
                      "the disk holding %s is full: no room to grow the state database; "
                      "writes are refused until space is freed",
                      s->dir);
    return state__env_space_check(s->env, len, "auth_service.max_map_size");
}

/* The bytes the next transaction may add after the last page in use, besides
 * @extra: an eighth of the data, at least 256 KiB and at most 64 MiB. */
static uint64_t reserve_margin(uint64_t used)
{
    uint64_t m = used / 8;
    if (m < (256u << 10))
        m = 256u << 10;
    if (m > (64u << 20))
        m = 64u << 20;
    return m;
}

int state__disk_reserve(struct state *s, uint64_t extra)
{
    MDB_envinfo info;
    MDB_stat st;
    int rc;
    if ((rc = mdb_env_info(s->env, &info)) != 0 || (rc = mdb_env_stat(s->env, &st)) != 0)
        return state__lmdb_err(rc, "reading the state database's size");
    uint64_t map = info.me_mapsize, psize = st.ms_psize;
    uint64_t used = ((uint64_t)info.me_last_pgno + 1) * psize;
    if (s->disk_reserved < used)
        s->disk_reserved = used; /* every page up to the last in use has been written */
    uint64_t margin = reserve_margin(used);
    uint64_t need = used + extra + margin;
    if (need > map)
        need = map; /* past the map LMDB itself refuses (MDB_MAP_FULL) */
    if (need <= s->disk_reserved)
        return 0;
    /* Allocate twice the margin at once: one call per margin's worth of growth. */
    uint64_t want = need + margin;
    want = (want + (64u << 10) - 1) / (64u << 10) * (64u << 10);
    if (want > map)
        want = map;
    int err = posix_fallocate(s->fd, (off_t)s->disk_reserved, (off_t)(want - s->disk_reserved));
    if (err == 0) {
        s->disk_reserved = want;
        atomic_store(&s->disk_short, false);
        return 0;
    }
    if (!atomic_exchange(&s->disk_short, true))
        rp_error("state", "%s: cannot allocate %llu MiB for the state database: %s", s->dir,
                 (unsigned long long)((want - s->disk_reserved) >> 20), strerror(err));
    return rp_err(err == ENOSPC ? RP_ENOSPC : RP_EIO,
                  "allocating disk for the state database in %s: %s", s->dir, strerror(err));
}

uint64_t state_applied_index(struct state *s)
{
    return atomic_load(&s->applied);
}

uint64_t state_resources_changed(struct state *s)
{
    return atomic_load(&s->resources_changed);
}

/* ---- Reads -------------------------------------------------------------- */

static int begin_read(struct state *s, MDB_txn **txn, uint64_t *rev_out)
{
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
    if (rc != 0)
        return state__lmdb_err(rc, "starting a read");
    if (rev_out != NULL) {
        int rv = state__read_applied(s, *txn, rev_out);
        if (rv != 0) {
            mdb_txn_abort(*txn);
            return rv;
        }
    }
    return 0;
}

int state_get(struct state *s, const char *kind, const char *name, struct rp_buf *out,
              uint64_t *rev_out)
{
    uint8_t key[STATE__KEY_MAX];
    size_t kl = strlen(kind), nl = strlen(name);
    MDB_txn *txn;
    if (!state__kind_ok(kind, kl))
        return rp_err(RP_EINVAL, "kind '%.63s' is not 1-63 bytes of [a-z0-9_]", kind);
    if (!state__name_ok(name, nl))
        return rp_err(RP_EINVAL, "name is not 1-255 bytes without control characters");
    int rv = begin_read(s, &txn, rev_out);
    if (rv != 0)
        return rv;
    MDB_val k = {state__res_key(key, kind, kl, name, nl), key}, v;
    int rc = mdb_get(txn, s->dbi[STATE__DB_RES], &k, &v);
    if (rc == MDB_NOTFOUND)
        rv = rp_err(RP_ENOTFOUND, "%s/%s not found", kind, name);
    else if (rc != 0)
        rv = state__lmdb_err(rc, "reading a resource");
    else if (v.mv_size <= STATE__VAL_HDR)
        rv = rp_err(RP_EIO, "%s/%s: stored value of %zu bytes is too short", kind, name, v.mv_size);
    else
        rv = rp_buf_append(out, (uint8_t *)v.mv_data + STATE__VAL_HDR, v.mv_size - STATE__VAL_HDR);
    mdb_txn_abort(txn);
    return rv;
}

static bool has_prefix(const uint8_t *p, size_t n, const uint8_t *pre, size_t pn)
{
    return n >= pn && memcmp(p, pre, pn) == 0;
}

/* The walk behind state_list and state_list_range: names of @kind that start with
 * @prefix and lie in [@from, @to) (NULL: unbounded). */
static int list_impl(struct state *s, const char *kind, const char *prefix, const char *from,
                     const char *to, unsigned limit, state_list_cb cb, void *arg, uint64_t *rev_out)
{
    uint8_t start[STATE__KEY_MAX], end[STATE__KEY_MAX];
    size_t start_len = 0, end_len = 0, kl = kind ? strlen(kind) : 0;
    size_t pl = prefix ? strlen(prefix) : 0, fl = from ? strlen(from) : 0, tl = to ? strlen(to) : 0;
    MDB_txn *txn;
    MDB_cursor *cur;
    if (kind != NULL && !state__kind_ok(kind, kl))
        return rp_err(RP_EINVAL, "kind '%.63s' is not 1-63 bytes of [a-z0-9_]", kind);
    if (pl > STATE_NAME_MAX || fl > STATE_NAME_MAX || tl > STATE_NAME_MAX)
        return rp_err(RP_EINVAL, "name prefix or bound longer than %d bytes", STATE_NAME_MAX);
    if ((from || to) && kind == NULL)
        return rp_err(RP_EINVAL, "a name range needs a kind");
    /* With a kind, the range kind \0 prefix.. is contiguous. */
    uint8_t pfx[STATE__KEY_MAX];
    size_t pfx_len = 0;
    if (kind != NULL) {
        pfx_len = state__res_key(pfx, kind, kl, prefix ? prefix : "", pl);
        memcpy(start, pfx, pfx_len);
        start_len = pfx_len;
        if (from) { /* start at the later of kind\0prefix and kind\0from */
            uint8_t f[STATE__KEY_MAX];
            size_t f_len = state__res_key(f, kind, kl, from, fl);
            size_t m = f_len < pfx_len ? f_len : pfx_len;
            int c = memcmp(f, pfx, m);
            if (c > 0 || (c == 0 && f_len > pfx_len)) {
                memcpy(start, f, f_len);
                start_len = f_len;
            }
        }
        if (to)
            end_len = state__res_key(end, kind, kl, to, tl);
    }
    int rv = begin_read(s, &txn, rev_out);
    if (rv != 0)
        return rv;
    int rc = mdb_cursor_open(txn, s->dbi[STATE__DB_RES], &cur);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return state__lmdb_err(rc, "listing resources");
    }
    MDB_val k = {start_len, start}, v;
    unsigned n = 0;
    rc = mdb_cursor_get(cur, &k, &v, start_len ? MDB_SET_RANGE : MDB_FIRST);
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (kind != NULL && !has_prefix(k.mv_data, k.mv_size, pfx, pfx_len))
            break;
        if (end_len) {
            size_t m = k.mv_size < end_len ? k.mv_size : end_len;
            int c = memcmp(k.mv_data, end, m);
            if (c > 0 || (c == 0 && k.mv_size >= end_len))
                break;
        }
        if (kind == NULL && pl > 0) {
            const uint8_t *z = memchr(k.mv_data, '\0', k.mv_size);
            if (z == NULL)
                continue;
            const uint8_t *nm = z + 1;
            size_t nl = k.mv_size - (size_t)(nm - (const uint8_t *)k.mv_data);
            if (!has_prefix(nm, nl, (const uint8_t *)prefix, pl))
                continue;
        }
        if (v.mv_size <= STATE__VAL_HDR)
            continue;
        rv = cb(arg, (uint8_t *)v.mv_data + STATE__VAL_HDR, v.mv_size - STATE__VAL_HDR);
        if (rv != 0)
            break;
        if (limit != 0 && ++n >= limit)
            break;
    }
    if (rv == 0 && rc != 0 && rc != MDB_NOTFOUND)
        rv = state__lmdb_err(rc, "listing resources");
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return rv;
}

int state_list(struct state *s, const char *kind, const char *prefix, unsigned limit,
               state_list_cb cb, void *arg, uint64_t *rev_out)
{
    return list_impl(s, kind, prefix, NULL, NULL, limit, cb, arg, rev_out);
}

int state_list_range(struct state *s, const char *kind, const char *prefix, const char *from,
                     const char *to, unsigned limit, state_list_cb cb, void *arg, uint64_t *rev_out)
{
    if (kind == NULL)
        return rp_err(RP_EINVAL, "a name range needs a kind");
    return list_impl(s, kind, prefix, from, to, limit, cb, arg, rev_out);
}

int state_next_expiry(struct state *s, uint64_t *expires_ms)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    *expires_ms = 0;
    int rv = begin_read(s, &txn, NULL);
    if (rv != 0)
        return rv;
    int rc = mdb_cursor_open(txn, s->dbi[STATE__DB_EXP], &cur);
    if (rc == 0) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        if (rc == 0 && k.mv_size >= 8)
            *expires_ms = state__get_be64(k.mv_data);
        mdb_cursor_close(cur);
    }
    mdb_txn_abort(txn);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return state__lmdb_err(rc, "reading the next expiry");
    return 0;
}
