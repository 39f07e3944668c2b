/* state/recstore.c: session recordings, in an LMDB environment of their own.
 *
 * Recordings are bulk data (compressed asciicast chunks of up to 1 MiB) that
 * would crowd the resource map and every read of it, so they live in
 * dir/recordings, a second environment with four databases:
 *
 *   chunks   sid (16 bytes) be32 seq -> u8 flags (1: last), the chunk as uploaded
 *   recs     sid -> the recording's index entry (msgpack map, see pack_info)
 *   bystart  be64 start, sid -> ""   (listing by time, eviction oldest first)
 *   meta     "applied_index" -> be64, "bytes" -> be64 (sum of stored chunk sizes)
 *
 * Atomicity with the main environment. A rec command commits here first, then
 * state_apply commits the main transaction (request id, applied index). The two
 * commits are not atomic, so every apply here is idempotent in two ways:
 *   - the store keeps its own applied index, written in the same transaction as
 *     the command's effects: an index at or below it is skipped. This is what
 *     makes a replay exact: eviction depends on what the store holds, so a store
 *     that already holds an entry's effects must not apply them a second time
 *     (it could evict what the first pass kept);
 *   - a chunk is keyed by (sid, seq), and a (sid, seq) already stored changes
 *     nothing, so a replay after a crash between the two commits rewrites nothing
 *     and answers "not stored", which is also what a client retry gets.
 * Durability is that of the main environment (MDB_NOSYNC, see store.c): a process
 * crash loses nothing; after the machine went down state_open discards this
 * environment together with the main one and Raft rebuilds both from its snapshot
 * (which carries the recordings, see below) and log.
 *
 * The map grows instead of stalling: it starts at opts.rec_map_size and doubles
 * (mdb_env_set_mapsize, which needs no transaction open in the process: reads take
 * a shared gate that growth waits on) up to opts.rec_map_max. A write that does not
 * fit at the ceiling is refused with RP_ENOSPC as the command's outcome: Raft and
 * smaller writes carry on. Growth happens before a write when the map looks tight,
 * or after MDB_MAP_FULL, then the write is retried from the start.
 *
 * Snapshots carry the store after the main databases (state__rec_snapshot_*):
 *
 *   "RPRECSNP" be32 version (1) be32 number of databases (4)
 *   per database: u8 name length, name, be64 records, records (be32 key length,
 *                 key, be32 value length, value), in key order
 *   be64 FNV-1a 64 of the section so far
 *   be64 length of the section up to here, "RPRECEND"
 *
 * The trailer lets restore find the section from the end of the snapshot; a
 * snapshot without it (written before recordings existed) restores an empty store.
 * libraft 0.15 holds a whole snapshot in memory when taking, sending and restoring
 * it, so the budget (max_bytes) must fit in memory with room to spare
 * (docs/recordings.md). */
#define STATE_INTERNAL
#include "state/state.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"

enum { REC_DB_CHUNKS, REC_DB_RECS, REC_DB_BYSTART, REC_DB_META, REC_N_DBS };
static const char *const rec_db_names[REC_N_DBS] = {"chunks", "recs", "bystart", "meta"};

#define SID_BIN 16
#define CHUNK_KEY (SID_BIN + 4)
#define START_KEY (8 + SID_BIN)
#define DEFAULT_MAP ((size_t)64 << 20)
#define GROW_WAIT_MS 10000     /* longest a needed growth waits for readers (a snapshot) */
#define GROW_EARLY_WAIT_MS 200 /* and one made ahead of need (API reads are short) */

static const uint8_t snap_magic[8] = {'R', 'P', 'R', 'E', 'C', 'S', 'N', 'P'};
static const uint8_t snap_end[8] = {'R', 'P', 'R', 'E', 'C', 'E', 'N', 'D'};
#define SNAP_VERSION 1
static const char applied_key[] = "applied_index";
static const char bytes_key[] = "bytes";

struct state__recstore {
    MDB_env *env;
    MDB_dbi dbi[REC_N_DBS];
    size_t map_size, map_max;
    /* The gate: readers (API reads, a pinned snapshot) counted under mu; growth
     * waits for none and keeps new ones out while it remaps. Not a rwlock: a
     * snapshot's read is begun on the loop thread and ended on a pool thread. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned readers;
    bool growing;
    MDB_txn *snap_txn; /* pinned by a snapshot in flight */
    bool snap_held;    /* snap_txn holds a reader slot of the gate */
    uint64_t applied;  /* loop thread */
};

/* ---- small helpers --------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint64_t fnv1a64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* 8-4-4-4-12 hex digits -> 16 bytes; false if it is not a UUID. */
static bool sid_parse(const char *s, size_t n, uint8_t out[SID_BIN])
{
    if (n != STATE_REC_SID_LEN)
        return false;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
            i++;
            continue;
        }
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0 || i + 1 == 8 || i + 1 == 13 || i + 1 == 18 || i + 1 == 23)
            return false;
        out[o++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    return o == SID_BIN;
}

static void sid_format(const uint8_t b[SID_BIN], char out[STATE_REC_SID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < SID_BIN; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

bool state_rec_sid_ok(const char *sid, size_t n)
{
    uint8_t b[SID_BIN];
    return sid != NULL && sid_parse(sid, n, b);
}

static int rec_lmdb_err(struct state__recstore *r, int rc, const char *what)
{
    if (rc == MDB_MAP_FULL)
        return rp_err(RP_ENOSPC,
                      "%s: the recordings store is full at its ceiling of %zu bytes "
                      "(auth_service.recordings.max_map_size)",
                      what, r->map_max);
    return state__lmdb_err(rc, what);
}

/* Codes of lib/errors.h, as opposed to LMDB's (errno values and MDB_* near -30800). */
static bool is_rp_code(int rc)
{
    return rc < 0 && rc > -1000;
}

/* ---- the gate ---------------------------------------------------------------- */

static void gate_enter(struct state__recstore *r)
{
    pthread_mutex_lock(&r->mu);
    while (r->growing)
        pthread_cond_wait(&r->cv, &r->mu);
    r->readers++;
    pthread_mutex_unlock(&r->mu);
}

static void gate_exit(struct state__recstore *r)
{
    pthread_mutex_lock(&r->mu);
    r->readers--;
    if (r->readers == 0)
        pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static int begin_read(struct state__recstore *r, MDB_txn **txn)
{
    gate_enter(r);
    int rc = mdb_txn_begin(r->env, NULL, MDB_RDONLY, txn);
    if (rc != 0) {
        gate_exit(r);
        return state__lmdb_err(rc, "reading the recordings store");
    }
    return 0;
}

static void end_read(struct state__recstore *r, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    gate_exit(r);
}

/* Sets the map to @size. Only the loop thread writes, and it has no transaction
 * open here; readers are waited for, at most @wait_ms (a snapshot being serialised
 * on the pool holds one for as long as that takes), else RP_EBUSY. */
static int set_map(struct state__recstore *r, size_t size, unsigned wait_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += wait_ms / 1000;
    until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->mu);
    r->growing = true;
    while (r->readers > 0) {
        if (pthread_cond_timedwait(&r->cv, &r->mu, &until) == ETIMEDOUT && r->readers > 0) {
            r->growing = false;
            pthread_cond_broadcast(&r->cv);
            pthread_mutex_unlock(&r->mu);
            return rp_err(RP_EBUSY, "growing the recordings map: readers still open after %u ms",
                          wait_ms);
        }
    }
    int rc = mdb_env_set_mapsize(r->env, size);
    if (rc == 0)
        r->map_size = size;
    r->growing = false;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (rc != 0)
        return state__lmdb_err(rc, "growing the recordings map");
    rp_info("state", "recordings map grown to %zu MiB (ceiling %zu MiB)", size >> 20,
            r->map_max >> 20);
    return 0;
}

/* Doubles the map until it is at least @want (capped at the ceiling), waiting at
 * most @wait_ms for readers. 0, or 1 if it is already at the ceiling, or an error. */
static int grow_to(struct state__recstore *r, size_t want, unsigned wait_ms)
{
    if (r->map_size >= r->map_max)
        return 1;
    size_t size = r->map_size;
    while (size < want && size < r->map_max)
        size = size > r->map_max / 2 ? r->map_max : size * 2;
    if (size == r->map_size)
        size = size > r->map_max / 2 ? r->map_max : size * 2;
    return set_map(r, size, wait_ms);
}

/* Pages in use (the high-water mark), in bytes. */
static size_t map_used(struct state__recstore *r)
{
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(r->env, &info) != 0 || mdb_env_stat(r->env, &st) != 0)
        return 0;
    return (info.me_last_pgno + 1) * (size_t)st.ms_psize;
}

/* ---- open / close ----------------------------------------------------------- */

static int read_u64(struct state__recstore *r, MDB_txn *txn, const char *key, uint64_t *out)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    *out = 0;
    int rc = mdb_get(txn, r->dbi[REC_DB_META], &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return state__lmdb_err(rc, "reading the recordings store");
    if (v.mv_size != 8)
        return rp_err(RP_EIO, "recordings store: %s holds %zu bytes, expected 8", key, v.mv_size);
    *out = state__get_be64(v.mv_data);
    return 0;
}

static int write_u64(struct state__recstore *r, MDB_txn *txn, const char *key, uint64_t val)
{
    uint8_t b[8];
    state__put_be64(b, val);
    MDB_val k = {strlen(key), (void *)key}, v = {8, b};
    return mdb_put(txn, r->dbi[REC_DB_META], &k, &v, 0);
}

int state__rec_open(struct state *s, const char *dir)
{
    char path[4096];
    MDB_txn *txn;
    int rc, rv;
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, STATE__REC_DIR) >= sizeof path)
        return rp_err(RP_EINVAL, "state directory path too long: %s", dir);
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return rp_err(RP_EIO, "create %s: %s", path, strerror(errno));
    struct state__recstore *r = calloc(1, sizeof *r);
    if (r == NULL)
        return rp_err(RP_ENOMEM, "allocating the recordings store");
    r->map_size = s->opts.rec_map_size ? s->opts.rec_map_size : DEFAULT_MAP;
    r->map_max = s->opts.rec_map_max ? s->opts.rec_map_max : STATE_REC_DEFAULT_MAP_MAX;
    if (r->map_max < r->map_size)
        r->map_max = r->map_size;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    if ((rc = mdb_env_create(&r->env)) != 0) {
        rv = state__lmdb_err(rc, "creating the recordings environment");
        goto err;
    }
    if ((rc = mdb_env_set_maxdbs(r->env, REC_N_DBS)) != 0 ||
        (rc = mdb_env_set_maxreaders(r->env, 1024)) != 0 ||
        (rc = mdb_env_set_mapsize(r->env, r->map_size)) != 0) {
        rv = state__lmdb_err(rc, "configuring the recordings environment");
        goto err_after_env;
    }
    /* Same flags as the main environment, for the same reasons (store.c). */
    if ((rc = mdb_env_open(r->env, path, MDB_NOTLS | MDB_NOSYNC | MDB_NORDAHEAD, 0600)) != 0) {
        rv = state__lmdb_err(rc, path);
        goto err_after_env;
    }
    /* A store grown by an earlier run keeps its size: LMDB maps at least the file. */
    MDB_envinfo info;
    if (mdb_env_info(r->env, &info) == 0 && info.me_mapsize > r->map_size) {
        r->map_size = info.me_mapsize;
        if (r->map_max < r->map_size)
            r->map_max = r->map_size;
    }
    int dead = 0;
    mdb_reader_check(r->env, &dead);
    if ((rc = mdb_txn_begin(r->env, NULL, 0, &txn)) != 0) {
        rv = state__lmdb_err(rc, "opening the recordings databases");
        goto err_after_env;
    }
    for (int i = 0; i < REC_N_DBS; i++) {
        if ((rc = mdb_dbi_open(txn, rec_db_names[i], MDB_CREATE, &r->dbi[i])) != 0) {
            mdb_txn_abort(txn);
            rv = state__lmdb_err(rc, "opening the recordings databases");
            goto err_after_env;
        }
    }
    if ((rv = read_u64(r, txn, applied_key, &r->applied)) != 0) {
        mdb_txn_abort(txn);
        goto err_after_env;
    }
    if ((rc = mdb_txn_commit(txn)) != 0) {
        rv = state__lmdb_err(rc, "opening the recordings databases");
        goto err_after_env;
    }
    s->rec = r;
    return 0;

err_after_env:
    mdb_env_close(r->env);
err:
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
    return rv;
}

void state__rec_close(struct state *s)
{
    struct state__recstore *r = s->rec;
    if (r == NULL)
        return;
    state__rec_snap_release(s);
    int rc = mdb_env_sync(r->env, 1);
    if (rc != 0)
        rp_warn("state", "recordings store: sync at close failed: %s", mdb_strerror(rc));
    mdb_env_close(r->env);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
    s->rec = NULL;
}

/* ---- the index entry --------------------------------------------------------- */

static void copy_str(char *dst, size_t cap, const msgpack_object *o)
{
    dst[0] = '\0';
    if (o == NULL || o->type != MSGPACK_OBJECT_STR)
        return;
    size_t n = o->via.str.size < cap - 1 ? o->via.str.size : cap - 1;
    memcpy(dst, o->via.str.ptr, n);
    dst[n] = '\0';
}

static uint64_t get_u(const msgpack_object *m, const char *key)
{
    uint64_t v = 0;
    rp_mp_get_u64(m, key, &v);
    return v;
}

static bool get_b(const msgpack_object *m, const char *key)
{
    bool v = false;
    rp_mp_get_bool(m, key, &v);
    return v;
}

/* The stored entry is a msgpack map written only by pack_info. */
static int unpack_info(const uint8_t sid[SID_BIN], const void *p, size_t n,
                       struct state_rec_info *out)
{
    msgpack_unpacked u;
    memset(out, 0, sizeof *out);
    if (rp_mp_parse(p, n, &u) != 0)
        return rp_err(RP_EIO, "recordings store: malformed index entry of %zu bytes", n);
    if (u.data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(&u);
        return rp_err(RP_EIO, "recordings store: index entry of %zu bytes is not a map", n);
    }
    const msgpack_object *m = &u.data;
    sid_format(sid, out->sid);
    copy_str(out->server_id, sizeof out->server_id, rp_mp_get(m, "server_id"));
    copy_str(out->user, sizeof out->user, rp_mp_get(m, "user"));
    copy_str(out->login, sizeof out->login, rp_mp_get(m, "login"));
    copy_str(out->hostname, sizeof out->hostname, rp_mp_get(m, "hostname"));
    copy_str(out->command, sizeof out->command, rp_mp_get(m, "command"));
    out->has_meta = get_b(m, "has_meta");
    out->start = get_u(m, "start");
    out->dur_ms = get_u(m, "dur");
    out->last_write = get_u(m, "last_write");
    out->chunks = (uint32_t)get_u(m, "chunks");
    out->bytes = get_u(m, "bytes");
    out->has_last = get_b(m, "has_last");
    out->last_seq = (uint32_t)get_u(m, "last_seq");
    out->max_seq = (uint32_t)get_u(m, "max_seq");
    out->cols = (uint32_t)get_u(m, "cols");
    out->rows = (uint32_t)get_u(m, "rows");
    out->interactive = get_b(m, "interactive");
    out->complete = out->has_last && out->chunks == out->last_seq + 1;
    bool ok = out->server_id[0] != '\0';
    msgpack_unpacked_destroy(&u);
    if (!ok)
        return rp_err(RP_EIO, "recordings store: index entry without server_id");
    return 0;
}

static int pack_info(const struct state_rec_info *in, struct rp_buf *b)
{
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_reset(b);
    rp_mp_packer_init(&pk, b);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "server_id", in->server_id);
    rp_mp_map_bool(&m, "has_meta", in->has_meta);
    if (in->has_meta) {
        rp_mp_map_str(&m, "user", in->user);
        rp_mp_map_str(&m, "login", in->login);
        rp_mp_map_str(&m, "hostname", in->hostname);
        if (in->command[0] != '\0')
            rp_mp_map_str(&m, "command", in->command);
        rp_mp_map_u64(&m, "cols", in->cols);
        rp_mp_map_u64(&m, "rows", in->rows);
        rp_mp_map_bool(&m, "interactive", in->interactive);
    }
    rp_mp_map_u64(&m, "start", in->start);
    rp_mp_map_u64(&m, "dur", in->dur_ms);
    rp_mp_map_u64(&m, "last_write", in->last_write);
    rp_mp_map_u64(&m, "chunks", in->chunks);
    rp_mp_map_u64(&m, "bytes", in->bytes);
    rp_mp_map_bool(&m, "has_last", in->has_last);
    rp_mp_map_u64(&m, "last_seq", in->last_seq);
    rp_mp_map_u64(&m, "max_seq", in->max_seq);
    rp_mp_map_end(&m);
    return b->data == NULL ? rp_err(RP_ENOMEM, "encoding a recording's index entry") : 0;
}

/* ---- command checks and encoding -------------------------------------------- */

static int failf(char *msg, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int failf(char *msg, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, n, fmt, ap);
    va_end(ap);
    return RP_EINVAL;
}

static bool text_ok(const msgpack_object *o, size_t max, bool allow_empty)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_STR || o->via.str.size > max)
        return false;
    if (o->via.str.size == 0 && !allow_empty)
        return false;
    for (uint32_t i = 0; i < o->via.str.size; i++) {
        unsigned char c = (unsigned char)o->via.str.ptr[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

static bool is_u64(const msgpack_object *o)
{
    return o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
}

/* Every key of map @m among @names. */
static bool only_keys(const msgpack_object *m, const char *const *names, size_t n)
{
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        size_t j;
        for (j = 0; j < n; j++)
            if (rp_mp_str_eq(k, names[j]))
                break;
        if (j == n)
            return false;
    }
    return true;
}

static int check_meta(const msgpack_object *m, char *msg, size_t n)
{
    static const char *const keys[] = {"user", "login", "hostname",    "start",
                                       "cols", "rows",  "interactive", "command"};
    if (m->type != MSGPACK_OBJECT_MAP || m->via.map.size > 8 ||
        !only_keys(m, keys, sizeof keys / sizeof keys[0]))
        return failf(msg, n,
                     "rec.meta: expected a map of user, login, hostname, start, cols, rows, "
                     "interactive, command");
    if (!text_ok(rp_mp_get(m, "user"), STATE_REC_TEXT_MAX, false) ||
        !text_ok(rp_mp_get(m, "login"), STATE_REC_TEXT_MAX, false) ||
        !text_ok(rp_mp_get(m, "hostname"), STATE_REC_TEXT_MAX, false))
        return failf(msg, n,
                     "rec.meta: user, login and hostname must be strings of 1-%d bytes without "
                     "control characters",
                     STATE_REC_TEXT_MAX);
    const msgpack_object *cmd = rp_mp_get(m, "command");
    if (cmd != NULL && cmd->type != MSGPACK_OBJECT_NIL &&
        !text_ok(cmd, STATE_REC_COMMAND_MAX, true))
        return failf(msg, n, "rec.meta.command: expected a string of at most %d bytes",
                     STATE_REC_COMMAND_MAX);
    const msgpack_object *cols = rp_mp_get(m, "cols"), *rows = rp_mp_get(m, "rows");
    if (!is_u64(rp_mp_get(m, "start")) || !is_u64(cols) || !is_u64(rows) || cols->via.u64 > 65535 ||
        rows->via.u64 > 65535)
        return failf(msg, n,
                     "rec.meta: start (ms) must be a non-negative integer, cols and rows "
                     "integers of 0-65535");
    const msgpack_object *inter = rp_mp_get(m, "interactive");
    if (inter == NULL || inter->type != MSGPACK_OBJECT_BOOLEAN)
        return failf(msg, n, "rec.meta.interactive: expected a boolean");
    return 0;
}

int state__rec_check(enum state__op op, const msgpack_object *rec, char *msg, size_t n)
{
    static const char *const put_keys[] = {"sid",  "seq", "server_id", "data",    "last",
                                           "meta", "dur", "now",       "keep_ms", "max_bytes"};
    static const char *const trim_keys[] = {"now", "keep_ms", "max_bytes"};
    if (rec == NULL || rec->type != MSGPACK_OBJECT_MAP)
        return failf(msg, n, "rec: expected a map");
    bool put = op == STATE__OP_REC_PUT;
    if (put ? !only_keys(rec, put_keys, sizeof put_keys / sizeof put_keys[0])
            : !only_keys(rec, trim_keys, sizeof trim_keys / sizeof trim_keys[0]))
        return failf(msg, n, "rec: unknown field for %s", put ? "rec_put" : "rec_trim");
    if (!is_u64(rp_mp_get(rec, "now")) || !is_u64(rp_mp_get(rec, "keep_ms")) ||
        !is_u64(rp_mp_get(rec, "max_bytes")))
        return failf(msg, n, "rec: now, keep_ms and max_bytes must be non-negative integers");
    if (!put)
        return 0;
    const msgpack_object *sid = rp_mp_get(rec, "sid"), *seq = rp_mp_get(rec, "seq");
    const msgpack_object *data = rp_mp_get(rec, "data"), *last = rp_mp_get(rec, "last");
    const msgpack_object *meta = rp_mp_get(rec, "meta");
    if (sid == NULL || sid->type != MSGPACK_OBJECT_STR ||
        !state_rec_sid_ok(sid->via.str.ptr, sid->via.str.size))
        return failf(msg, n, "rec.sid: expected a UUID (36 characters)");
    if (!is_u64(seq) || seq->via.u64 >= STATE_REC_MAX_SEQ)
        return failf(msg, n, "rec.seq: expected an integer below %u", STATE_REC_MAX_SEQ);
    if (!text_ok(rp_mp_get(rec, "server_id"), 63, false))
        return failf(msg, n, "rec.server_id: expected a host id of 1-63 bytes");
    if (data == NULL || data->type != MSGPACK_OBJECT_BIN || data->via.bin.size == 0 ||
        data->via.bin.size > STATE_REC_MAX_CHUNK)
        return failf(msg, n, "rec.data: expected 1-%u bytes (bin)", STATE_REC_MAX_CHUNK);
    if (last == NULL || last->type != MSGPACK_OBJECT_BOOLEAN)
        return failf(msg, n, "rec.last: expected a boolean");
    if (!is_u64(rp_mp_get(rec, "dur")))
        return failf(msg, n, "rec.dur: expected a non-negative integer (ms)");
    if (meta != NULL && meta->type != MSGPACK_OBJECT_NIL) {
        if (seq->via.u64 != 0)
            return failf(msg, n, "rec.meta: only chunk 0 carries meta");
        return check_meta(meta, msg, n);
    }
    return 0;
}

static int encode_common(struct rp_mp_map *rec, uint64_t now, uint64_t keep, uint64_t max)
{
    rp_mp_map_u64(rec, "now", now);
    rp_mp_map_u64(rec, "keep_ms", keep);
    rp_mp_map_u64(rec, "max_bytes", max);
    return 0;
}

int state_rec_put_encode(const struct state_rec_put *p, struct rp_buf *out)
{
    size_t start = out->len;
    msgpack_packer pk;
    struct rp_mp_map cmd, rec, meta;
    if (p->sid == NULL || !state_rec_sid_ok(p->sid, strlen(p->sid)))
        return rp_err(RP_EINVAL, "rec_put: sid is not a UUID");
    if (p->server_id == NULL || p->data == NULL || p->len == 0 || p->len > STATE_REC_MAX_CHUNK ||
        p->seq >= STATE_REC_MAX_SEQ || (p->meta != NULL && p->seq != 0))
        return rp_err(RP_EINVAL,
                      "rec_put: server_id, 1-%u bytes of data, seq below %u and meta "
                      "on chunk 0 only are required",
                      STATE_REC_MAX_CHUNK, STATE_REC_MAX_SEQ);
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &cmd);
    rp_mp_map_str(&cmd, "op", "rec_put");
    rp_mp_map_begin_map(&cmd, "rec", &rec);
    rp_mp_map_str(&rec, "sid", p->sid);
    rp_mp_map_u64(&rec, "seq", p->seq);
    rp_mp_map_str(&rec, "server_id", p->server_id);
    msgpack_pack_bin(rp_mp_map_key(&rec, "data"), p->len);
    msgpack_pack_bin_body(&pk, p->data, p->len);
    rp_mp_map_bool(&rec, "last", p->last);
    if (p->meta != NULL) {
        const struct state_rec_meta *m = p->meta;
        rp_mp_map_begin_map(&rec, "meta", &meta);
        rp_mp_map_str(&meta, "user", m->user);
        rp_mp_map_str(&meta, "login", m->login);
        rp_mp_map_str(&meta, "hostname", m->hostname);
        rp_mp_map_u64(&meta, "start", m->start);
        rp_mp_map_u64(&meta, "cols", m->cols);
        rp_mp_map_u64(&meta, "rows", m->rows);
        rp_mp_map_bool(&meta, "interactive", m->interactive);
        if (m->command != NULL)
            rp_mp_map_str(&meta, "command", m->command);
        rp_mp_map_end(&meta);
    }
    rp_mp_map_u64(&rec, "dur", p->dur_ms);
    encode_common(&rec, p->now_ms, p->keep_ms, p->max_bytes);
    rp_mp_map_end(&rec);
    rp_mp_map_end(&cmd);
    if (out->data == NULL || state_command_check(out->data + start, out->len - start) != 0) {
        int rv = out->data == NULL ? rp_err(RP_ENOMEM, "encoding rec_put")
                                   : state__err_prefix(RP_EINVAL, "rec_put");
        out->len = start;
        return rv;
    }
    return 0;
}

int state_rec_trim_encode(uint64_t now_ms, uint64_t keep_ms, uint64_t max_bytes, struct rp_buf *out)
{
    msgpack_packer pk;
    struct rp_mp_map cmd, rec;
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &cmd);
    rp_mp_map_str(&cmd, "op", "rec_trim");
    rp_mp_map_begin_map(&cmd, "rec", &rec);
    encode_common(&rec, now_ms, keep_ms, max_bytes);
    rp_mp_map_end(&rec);
    rp_mp_map_end(&cmd);
    return out->data == NULL ? rp_err(RP_ENOMEM, "encoding rec_trim") : 0;
}

/* ---- apply ------------------------------------------------------------------ */

struct rec_apply {
    struct state__recstore *r;
    MDB_txn *txn;
    uint64_t total; /* stored bytes, as "bytes" in meta */
    struct rp_buf scratch;
};

static int get_info(struct rec_apply *a, const uint8_t sid[SID_BIN], bool *found,
                    struct state_rec_info *info)
{
    MDB_val k = {SID_BIN, (void *)sid}, v;
    int rc = mdb_get(a->txn, a->r->dbi[REC_DB_RECS], &k, &v);
    *found = false;
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    int rv = unpack_info(sid, v.mv_data, v.mv_size, info);
    if (rv != 0)
        return rv;
    *found = true;
    return 0;
}

static void start_key(uint8_t out[START_KEY], uint64_t start, const uint8_t sid[SID_BIN])
{
    state__put_be64(out, start);
    memcpy(out + 8, sid, SID_BIN);
}

/* Deletes recording @sid (its chunks, index entry and start key). Returns an LMDB
 * code (or a negative RP_E* from decoding). */
static int evict(struct rec_apply *a, const uint8_t sid[SID_BIN], uint32_t *n_evicted)
{
    struct state_rec_info info;
    bool found;
    int rv = get_info(a, sid, &found, &info);
    if (rv != 0 || !found)
        return rv;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(a->txn, a->r->dbi[REC_DB_CHUNKS], &cur);
    if (rc != 0)
        return rc;
    uint8_t first[CHUNK_KEY];
    memcpy(first, sid, SID_BIN);
    memset(first + SID_BIN, 0, 4);
    MDB_val k = {CHUNK_KEY, first}, v;
    uint64_t freed = 0;
    /* Seek again after each delete: the first chunk left is the next one. */
    for (;;) {
        k.mv_size = CHUNK_KEY;
        k.mv_data = first;
        if ((rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)) != 0)
            break;
        if (k.mv_size != CHUNK_KEY || memcmp(k.mv_data, sid, SID_BIN) != 0)
            break;
        freed += v.mv_size > 0 ? v.mv_size - 1 : 0;
        if ((rc = mdb_cursor_del(cur, 0)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return rc;
    uint8_t sk[START_KEY];
    start_key(sk, info.start, sid);
    MDB_val skv = {START_KEY, sk}, rk = {SID_BIN, (void *)sid};
    if ((rc = mdb_del(a->txn, a->r->dbi[REC_DB_BYSTART], &skv, NULL)) != 0 && rc != MDB_NOTFOUND)
        return rc;
    if ((rc = mdb_del(a->txn, a->r->dbi[REC_DB_RECS], &rk, NULL)) != 0)
        return rc;
    a->total = a->total >= freed ? a->total - freed : 0;
    (*n_evicted)++;
    return 0;
}

/* Retention, then the budget for @incoming more bytes, oldest start first, never
 * @keep (NULL: none). *@fits says whether the budget is met. */
static int enforce(struct rec_apply *a, uint64_t now, uint64_t keep_ms, uint64_t max_bytes,
                   uint64_t incoming, const uint8_t *keep, bool *fits, uint32_t *n_evicted)
{
    uint64_t cutoff = now > keep_ms ? now - keep_ms : 0;
    MDB_cursor *cur;
    MDB_val k, v;
    uint8_t skip_after[START_KEY]; /* resume past @keep, whose key is never deleted */
    bool have_skip = false;
    int rc = 0;
    *fits = false;
    for (;;) {
        bool over_budget = a->total + incoming > max_bytes;
        if ((rc = mdb_cursor_open(a->txn, a->r->dbi[REC_DB_BYSTART], &cur)) != 0)
            return rc;
        if (have_skip) {
            k.mv_size = START_KEY;
            k.mv_data = skip_after;
            rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
            if (rc == 0 && k.mv_size == START_KEY && memcmp(k.mv_data, skip_after, START_KEY) == 0)
                rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        } else {
            rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        }
        uint8_t sid[SID_BIN];
        bool victim = false;
        if (rc == 0 && k.mv_size == START_KEY) {
            uint64_t start = state__get_be64(k.mv_data);
            memcpy(sid, (uint8_t *)k.mv_data + 8, SID_BIN);
            if (keep != NULL && memcmp(sid, keep, SID_BIN) == 0) {
                memcpy(skip_after, k.mv_data, START_KEY);
                have_skip = true;
                mdb_cursor_close(cur);
                continue;
            }
            victim = start < cutoff || over_budget;
        }
        mdb_cursor_close(cur);
        if (rc != 0 && rc != MDB_NOTFOUND)
            return rc;
        if (!victim)
            break;
        if ((rc = evict(a, sid, n_evicted)) != 0)
            return rc;
    }
    *fits = a->total + incoming <= max_bytes;
    return 0;
}

static int put_info(struct rec_apply *a, const uint8_t sid[SID_BIN],
                    const struct state_rec_info *info)
{
    int rv = pack_info(info, &a->scratch);
    if (rv != 0)
        return rv;
    MDB_val k = {SID_BIN, (void *)sid}, v = {a->scratch.len, a->scratch.data};
    return mdb_put(a->txn, a->r->dbi[REC_DB_RECS], &k, &v, 0);
}

static void set_outcome(struct state_result *res, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_outcome(struct state_result *res, int code, const char *fmt, ...)
{
    va_list ap;
    res->code = code;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof res->message, fmt, ap);
    va_end(ap);
}

/* One rec_put in @a's transaction. Returns an LMDB code or RP_E* error (the caller
 * aborts); the command's own outcome goes to @res (on res->code != 0 the caller
 * aborts too: an outcome that refuses changes nothing). */
static int put_txn(struct rec_apply *a, const msgpack_object *rec, struct state_result *res)
{
    const msgpack_object *sido = rp_mp_get(rec, "sid"), *data = rp_mp_get(rec, "data");
    const msgpack_object *meta = rp_mp_get(rec, "meta"), *srv = rp_mp_get(rec, "server_id");
    uint64_t seq = get_u(rec, "seq"), now = get_u(rec, "now"), dur = get_u(rec, "dur");
    bool last = get_b(rec, "last");
    uint8_t sid[SID_BIN];
    char sidtxt[STATE_REC_SID_LEN + 1];
    sid_parse(sido->via.str.ptr, sido->via.str.size, sid);
    sid_format(sid, sidtxt);
    struct state_rec_info info;
    bool found;
    int rc = get_info(a, sid, &found, &info);
    if (rc != 0)
        return rc;
    char server_id[64];
    copy_str(server_id, sizeof server_id, srv);
    if (found && strcmp(info.server_id, server_id) != 0) {
        set_outcome(res, RP_EDENIED, "recording %s belongs to host %s, not %s", sidtxt,
                    info.server_id, server_id);
        return 0;
    }
    uint8_t ck[CHUNK_KEY];
    memcpy(ck, sid, SID_BIN);
    put32(ck + SID_BIN, (uint32_t)seq);
    MDB_val k = {CHUNK_KEY, ck}, v;
    rc = mdb_get(a->txn, a->r->dbi[REC_DB_CHUNKS], &k, &v);
    if (rc == 0)
        return 0; /* stored before: nothing changes, n_changed stays 0 */
    if (rc != MDB_NOTFOUND)
        return rc;
    if (found && info.has_last && seq > info.last_seq) {
        set_outcome(res, RP_EINVAL, "recording %s: chunk %llu after the last chunk %u", sidtxt,
                    (unsigned long long)seq, info.last_seq);
        return 0;
    }
    if (found && last && info.chunks > 0 && seq < info.max_seq) {
        set_outcome(res, RP_EINVAL, "recording %s: last chunk %llu before stored chunk %u", sidtxt,
                    (unsigned long long)seq, info.max_seq);
        return 0;
    }
    bool fits;
    uint32_t evicted = 0;
    size_t len = data->via.bin.size;
    if ((rc = enforce(a, now, get_u(rec, "keep_ms"), get_u(rec, "max_bytes"), len, sid, &fits,
                      &evicted)) != 0)
        return rc;
    if (!fits) {
        set_outcome(res, RP_ENOSPC,
                    "recording %s: a chunk of %zu bytes does not fit the recordings budget "
                    "of %llu bytes (auth_service.recordings.max_size)",
                    sidtxt, len, (unsigned long long)get_u(rec, "max_bytes"));
        return 0;
    }
    /* Re-read: the entry is never evicted, but decoding again keeps one path. */
    if ((rc = get_info(a, sid, &found, &info)) != 0)
        return rc;
    if (!found) {
        memset(&info, 0, sizeof info);
        snprintf(info.server_id, sizeof info.server_id, "%s", server_id);
        info.start = now;
    }
    uint64_t old_start = info.start;
    bool had_entry = found;
    if (meta != NULL && meta->type == MSGPACK_OBJECT_MAP) {
        info.has_meta = true;
        copy_str(info.user, sizeof info.user, rp_mp_get(meta, "user"));
        copy_str(info.login, sizeof info.login, rp_mp_get(meta, "login"));
        copy_str(info.hostname, sizeof info.hostname, rp_mp_get(meta, "hostname"));
        copy_str(info.command, sizeof info.command, rp_mp_get(meta, "command"));
        info.start = get_u(meta, "start");
        info.cols = (uint32_t)get_u(meta, "cols");
        info.rows = (uint32_t)get_u(meta, "rows");
        info.interactive = get_b(meta, "interactive");
    }
    if (dur > info.dur_ms)
        info.dur_ms = dur;
    info.last_write = now;
    info.chunks++;
    info.bytes += len;
    if (seq > info.max_seq)
        info.max_seq = (uint32_t)seq;
    if (last) {
        info.has_last = true;
        info.last_seq = (uint32_t)seq;
    }

    /* The chunk: a flags byte, then the bytes as uploaded. */
    MDB_val cv = {len + 1, NULL};
    if ((rc = mdb_put(a->txn, a->r->dbi[REC_DB_CHUNKS], &k, &cv, MDB_RESERVE)) != 0)
        return rc;
    ((uint8_t *)cv.mv_data)[0] = last ? 1 : 0;
    memcpy((uint8_t *)cv.mv_data + 1, data->via.bin.ptr, len);

    uint8_t sk[START_KEY];
    MDB_val skv = {START_KEY, sk}, empty = {0, NULL};
    if (had_entry && old_start != info.start) {
        start_key(sk, old_start, sid);
        if ((rc = mdb_del(a->txn, a->r->dbi[REC_DB_BYSTART], &skv, NULL)) != 0 &&
            rc != MDB_NOTFOUND)
            return rc;
    }
    start_key(sk, info.start, sid);
    if ((rc = mdb_put(a->txn, a->r->dbi[REC_DB_BYSTART], &skv, &empty, 0)) != 0)
        return rc;
    if ((rc = put_info(a, sid, &info)) != 0)
        return rc;
    a->total += len;
    res->n_changed = 1;
    if (evicted > 0)
        rp_info("state", "recordings: evicted %u recording(s) for retention or budget", evicted);
    return 0;
}

static int trim_txn(struct rec_apply *a, const msgpack_object *rec, struct state_result *res)
{
    bool fits;
    uint32_t evicted = 0;
    int rc = enforce(a, get_u(rec, "now"), get_u(rec, "keep_ms"), get_u(rec, "max_bytes"), 0, NULL,
                     &fits, &evicted);
    if (rc == 0 && evicted > 0) {
        res->n_changed = evicted;
        rp_info("state", "recordings: trimmed %u recording(s) for retention or budget", evicted);
    }
    return rc;
}

/* One attempt: 0 with the outcome in @res, MDB_MAP_FULL to grow and retry, or
 * another error. */
static int apply_once(struct state__recstore *r, uint64_t index, const struct state__cmd *c,
                      struct state_result *res)
{
    struct rec_apply a = {.r = r};
    uint64_t n_before = res->n_changed;
    int rc = mdb_txn_begin(r->env, NULL, 0, &a.txn);
    if (rc != 0)
        return rc;
    rp_buf_init(&a.scratch);
    rc = read_u64(r, a.txn, bytes_key, &a.total);
    if (rc == 0)
        rc = c->op == STATE__OP_REC_PUT ? put_txn(&a, c->rec, res) : trim_txn(&a, c->rec, res);
    if (rc == 0 && res->code == 0)
        rc = write_u64(r, a.txn, bytes_key, a.total);
    if (rc == 0 && res->code == 0)
        rc = write_u64(r, a.txn, applied_key, index);
    rp_buf_free(&a.scratch);
    if (rc != 0 || res->code != 0) {
        mdb_txn_abort(a.txn);
        if (rc != 0)
            res->n_changed = (uint32_t)n_before;
        return rc;
    }
    if ((rc = mdb_txn_commit(a.txn)) != 0)
        return rc;
    r->applied = index;
    return 0;
}

int state__rec_apply(struct state *s, uint64_t index, const struct state__cmd *c,
                     struct state_result *res)
{
    struct state__recstore *r = s->rec;
    if (index <= r->applied) {
        /* Its effects are here already (a crash between the two commits). */
        snprintf(res->message, sizeof res->message,
                 "index %llu already applied to the recordings store: skipped",
                 (unsigned long long)index);
        return 0;
    }
    /* Growing needs every reader out, and a snapshot being serialised holds one for
     * as long as that takes (seconds for a large store). So the map grows early,
     * once half of it is in use, and not while a snapshot is out: then MDB_MAP_FULL
     * (which waits for the snapshot) needs the store to double during one snapshot. */
    const msgpack_object *data = c->op == STATE__OP_REC_PUT ? rp_mp_get(c->rec, "data") : NULL;
    size_t incoming = data != NULL ? data->via.bin.size : 0;
    size_t want = map_used(r) + 2 * incoming + ((size_t)1 << 20);
    pthread_mutex_lock(&r->mu);
    bool snapshot_out = r->snap_held;
    pthread_mutex_unlock(&r->mu);
    if (want > r->map_size / 2 && r->map_size < r->map_max && !snapshot_out) {
        /* Best effort: if readers hold it off, MDB_MAP_FULL below tries again. */
        if (grow_to(r, 2 * want, GROW_EARLY_WAIT_MS) < 0)
            rp_debug("state", "recordings map: %s", rp_errmsg());
    }
    for (;;) {
        int rc = apply_once(r, index, c, res);
        if (rc == 0)
            return 0;
        if (is_rp_code(rc)) /* from decoding a stored entry, or memory */
            return rc;
        if (rc != MDB_MAP_FULL)
            return rec_lmdb_err(r, rc, "applying to the recordings store");
        int g = grow_to(r, r->map_size * 2, GROW_WAIT_MS);
        if (g < 0)
            return g;
        if (g == 1) {
            /* At the ceiling: this write is refused, nothing else stops. */
            res->n_changed = 0;
            set_outcome(res, RP_ENOSPC,
                        "the recordings store is full at its ceiling of %zu MiB "
                        "(auth_service.recordings.max_map_size)",
                        r->map_max >> 20);
            rp_warn("state", "index %llu: %s", (unsigned long long)index, res->message);
            return 0;
        }
    }
}

/* ---- reads ------------------------------------------------------------------- */

static int info_in(struct state__recstore *r, MDB_txn *txn, const uint8_t sid[SID_BIN],
                   struct state_rec_info *out)
{
    MDB_val k = {SID_BIN, (void *)sid}, v;
    int rc = mdb_get(txn, r->dbi[REC_DB_RECS], &k, &v);
    if (rc == MDB_NOTFOUND) {
        char txt[STATE_REC_SID_LEN + 1];
        sid_format(sid, txt);
        return rp_err(RP_ENOTFOUND, "no recording %s", txt);
    }
    if (rc != 0)
        return state__lmdb_err(rc, "reading a recording");
    return unpack_info(sid, v.mv_data, v.mv_size, out);
}

int state_rec_info(struct state *s, const char *sid, struct state_rec_info *out)
{
    uint8_t b[SID_BIN];
    MDB_txn *txn;
    if (sid == NULL || !sid_parse(sid, strlen(sid), b))
        return rp_err(RP_EINVAL, "session id is not a UUID");
    int rv = begin_read(s->rec, &txn);
    if (rv != 0)
        return rv;
    rv = info_in(s->rec, txn, b, out);
    end_read(s->rec, txn);
    return rv;
}

int state_rec_list(struct state *s, uint64_t from_ms, uint64_t to_ms, unsigned limit,
                   state_rec_cb cb, void *arg)
{
    struct state__recstore *r = s->rec;
    MDB_txn *txn;
    MDB_cursor *cur;
    int rv = begin_read(r, &txn);
    if (rv != 0)
        return rv;
    int rc = mdb_cursor_open(txn, r->dbi[REC_DB_BYSTART], &cur);
    if (rc != 0) {
        end_read(r, txn);
        return state__lmdb_err(rc, "listing recordings");
    }
    uint8_t from[8];
    state__put_be64(from, from_ms);
    MDB_val k = {8, from}, v;
    unsigned n = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != START_KEY)
            continue;
        if (to_ms != 0 && state__get_be64(k.mv_data) >= to_ms)
            break;
        struct state_rec_info info;
        if ((rv = info_in(r, txn, (uint8_t *)k.mv_data + 8, &info)) != 0)
            break;
        if ((rv = cb(arg, &info)) != 0)
            break;
        if (limit != 0 && ++n >= limit)
            break;
    }
    if (rv == 0 && rc != 0 && rc != MDB_NOTFOUND)
        rv = state__lmdb_err(rc, "listing recordings");
    mdb_cursor_close(cur);
    end_read(r, txn);
    return rv;
}

int state_rec_chunk(struct state *s, const char *sid, uint32_t seq, struct rp_buf *data, bool *last)
{
    uint8_t key[CHUNK_KEY];
    MDB_txn *txn;
    if (sid == NULL || !sid_parse(sid, strlen(sid), key))
        return rp_err(RP_EINVAL, "session id is not a UUID");
    put32(key + SID_BIN, seq);
    int rv = begin_read(s->rec, &txn);
    if (rv != 0)
        return rv;
    MDB_val k = {CHUNK_KEY, key}, v;
    int rc = mdb_get(txn, s->rec->dbi[REC_DB_CHUNKS], &k, &v);
    if (rc == MDB_NOTFOUND)
        rv = rp_err(RP_ENOTFOUND, "recording %s has no chunk %u", sid, seq);
    else if (rc != 0)
        rv = state__lmdb_err(rc, "reading a recording chunk");
    else if (v.mv_size < 2)
        rv = rp_err(RP_EIO, "recording %s chunk %u: stored value too short", sid, seq);
    else {
        if (last != NULL)
            *last = (((uint8_t *)v.mv_data)[0] & 1) != 0;
        rv = rp_buf_append(data, (uint8_t *)v.mv_data + 1, v.mv_size - 1);
    }
    end_read(s->rec, txn);
    return rv;
}

int state_rec_stats(struct state *s, struct state_rec_stats *out)
{
    struct state__recstore *r = s->rec;
    MDB_txn *txn;
    MDB_stat st;
    memset(out, 0, sizeof *out);
    int rv = begin_read(r, &txn);
    if (rv != 0)
        return rv;
    rv = read_u64(r, txn, bytes_key, &out->bytes);
    if (rv == 0 && mdb_stat(txn, r->dbi[REC_DB_RECS], &st) == 0)
        out->recordings = st.ms_entries;
    pthread_mutex_lock(&r->mu);
    out->map_size = r->map_size;
    out->map_max = r->map_max;
    pthread_mutex_unlock(&r->mu);
    out->map_used = map_used(r);
    end_read(r, txn);
    return rv;
}

/* ---- snapshots ---------------------------------------------------------------- */

int state__rec_snap_pin(struct state *s)
{
    struct state__recstore *r = s->rec;
    if (r->snap_txn != NULL)
        return 0;
    int rv = begin_read(r, &r->snap_txn);
    if (rv != 0) {
        r->snap_txn = NULL;
        return rv;
    }
    pthread_mutex_lock(&r->mu);
    r->snap_held = true;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

void state__rec_snap_release(struct state *s)
{
    struct state__recstore *r = s->rec;
    if (r == NULL || r->snap_txn == NULL)
        return;
    MDB_txn *txn = r->snap_txn;
    r->snap_txn = NULL;
    pthread_mutex_lock(&r->mu);
    bool held = r->snap_held;
    r->snap_held = false;
    pthread_mutex_unlock(&r->mu);
    if (held)
        end_read(r, txn);
    else
        mdb_txn_abort(txn);
}

/* Walks database @i: counts with @p NULL, else writes its records at @p. */
static int walk(struct state__recstore *r, MDB_txn *txn, int i, uint64_t *n, size_t *bytes,
                uint8_t *p, uint8_t **end)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, r->dbi[i], &cur);
    if (rc != 0)
        return state__lmdb_err(rc, "recordings snapshot");
    *n = 0;
    *bytes = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        (*n)++;
        *bytes += 8 + k.mv_size + v.mv_size;
        if (p != NULL) {
            put32(p, (uint32_t)k.mv_size);
            memcpy(p + 4, k.mv_data, k.mv_size);
            p += 4 + k.mv_size;
            put32(p, (uint32_t)v.mv_size);
            if (v.mv_size > 0)
                memcpy(p + 4, v.mv_data, v.mv_size);
            p += 4 + v.mv_size;
        }
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND)
        return state__lmdb_err(rc, "recordings snapshot");
    if (end != NULL)
        *end = p;
    return 0;
}

/* The pinned transaction, or a fresh one (*@own set) when none is pinned. */
static int snap_txn(struct state__recstore *r, MDB_txn **txn, bool *own)
{
    *own = r->snap_txn == NULL;
    if (!*own) {
        *txn = r->snap_txn;
        return 0;
    }
    return begin_read(r, txn);
}

int state__rec_snapshot_size(struct state *s, size_t *len)
{
    struct state__recstore *r = s->rec;
    MDB_txn *txn;
    bool own;
    int rv = snap_txn(r, &txn, &own);
    if (rv != 0)
        return rv;
    size_t total = sizeof snap_magic + 4 + 4 + 8 + 8 + sizeof snap_end;
    for (int i = 0; i < REC_N_DBS && rv == 0; i++) {
        uint64_t n;
        size_t bytes;
        rv = walk(r, txn, i, &n, &bytes, NULL, NULL);
        total += 1 + strlen(rec_db_names[i]) + 8 + bytes;
    }
    if (own)
        end_read(r, txn);
    *len = total;
    return rv;
}

int state__rec_snapshot_write(struct state *s, uint8_t *buf, size_t len)
{
    struct state__recstore *r = s->rec;
    MDB_txn *txn;
    bool own;
    int rv = snap_txn(r, &txn, &own);
    if (rv != 0)
        return rv;
    uint8_t *p = buf;
    memcpy(p, snap_magic, sizeof snap_magic);
    p += sizeof snap_magic;
    put32(p, SNAP_VERSION);
    put32(p + 4, REC_N_DBS);
    p += 8;
    for (int i = 0; i < REC_N_DBS; i++) {
        uint64_t n, counted;
        size_t bytes, nl = strlen(rec_db_names[i]);
        /* The size pass used the same transaction: the counts match. */
        if ((rv = walk(r, txn, i, &counted, &bytes, NULL, NULL)) != 0)
            break;
        if ((size_t)(p - buf) + 1 + nl + 8 + bytes > len) {
            rv = rp_err(RP_EIO, "recordings snapshot: the store changed under a read");
            break;
        }
        *p++ = (uint8_t)nl;
        memcpy(p, rec_db_names[i], nl);
        p += nl;
        state__put_be64(p, counted);
        p += 8;
        if ((rv = walk(r, txn, i, &n, &bytes, p, &p)) != 0)
            break;
    }
    if (own)
        end_read(r, txn);
    if (rv != 0)
        return rv;
    size_t body = (size_t)(p - buf);
    if (body + 8 + 8 + sizeof snap_end != len)
        return rp_err(RP_EIO, "recordings snapshot: wrote %zu bytes, expected %zu",
                      body + 16 + sizeof snap_end, len);
    state__put_be64(p, fnv1a64(buf, body));
    state__put_be64(p + 8, body + 8);
    memcpy(p + 16, snap_end, sizeof snap_end);
    return 0;
}

int state__rec_snapshot_split(const uint8_t *buf, size_t len, size_t *main_len, const uint8_t **rec,
                              size_t *rec_len)
{
    *main_len = len;
    *rec = NULL;
    *rec_len = 0;
    if (len < 16 || memcmp(buf + len - 8, snap_end, 8) != 0)
        return 0;
    uint64_t n = state__get_be64(buf + len - 16);
    if (n > len - 16 || n < sizeof snap_magic + 16)
        return rp_err(RP_EINVAL, "snapshot: recordings section of %llu bytes does not fit",
                      (unsigned long long)n);
    *main_len = len - 16 - (size_t)n;
    *rec = buf + *main_len;
    *rec_len = (size_t)n;
    return 0;
}

static int key_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c != 0)
        return c;
    return an < bn ? -1 : an > bn;
}

static int check_one(int db, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl)
{
    struct state_rec_info info;
    switch (db) {
    case REC_DB_CHUNKS:
        if (kl != CHUNK_KEY || vl < 2 || vl > STATE_REC_MAX_CHUNK + 1 || (v[0] & ~1u) != 0)
            return rp_err(RP_EINVAL, "malformed chunk record");
        return 0;
    case REC_DB_RECS:
        if (kl != SID_BIN || unpack_info(k, v, vl, &info) != 0)
            return rp_err(RP_EINVAL, "malformed recording index entry");
        return 0;
    case REC_DB_BYSTART:
        if (kl != START_KEY || vl != 0)
            return rp_err(RP_EINVAL, "malformed start index entry");
        return 0;
    case REC_DB_META:
        if (!((kl == strlen(applied_key) && memcmp(k, applied_key, kl) == 0) ||
              (kl == strlen(bytes_key) && memcmp(k, bytes_key, kl) == 0)) ||
            vl != 8)
            return rp_err(RP_EINVAL, "unknown meta entry");
        return 0;
    }
    return rp_err(RP_EINVAL, "unknown database");
}

/* Walks the section; with @txn NULL checks it, else inserts every record. */
static int walk_section(struct state__recstore *r, const uint8_t *rec, size_t len, MDB_txn *txn)
{
    struct rp_rd rd;
    const uint8_t *p;
    uint32_t version = 0, n_dbs = 0;
    uint64_t counts[REC_N_DBS] = {0};
    rp_rd_init(&rd, rec, len - 8);
    if (rp_rd_bytes(&rd, sizeof snap_magic, &p) != 0 || memcmp(p, snap_magic, 8) != 0)
        return rp_err(RP_EINVAL, "recordings snapshot: bad magic");
    if (rp_rd_be32(&rd, &version) != 0 || version != SNAP_VERSION || rp_rd_be32(&rd, &n_dbs) != 0 ||
        n_dbs != REC_N_DBS)
        return rp_err(RP_EINVAL,
                      "recordings snapshot: version %u with %u databases, expected %d "
                      "with %d",
                      version, n_dbs, SNAP_VERSION, REC_N_DBS);
    for (int i = 0; i < REC_N_DBS; i++) {
        uint8_t nl;
        const uint8_t *name;
        if (rp_rd_u8(&rd, &nl) != 0 || rp_rd_bytes(&rd, nl, &name) != 0 ||
            nl != strlen(rec_db_names[i]) || memcmp(name, rec_db_names[i], nl) != 0 ||
            rp_rd_be64(&rd, &counts[i]) != 0)
            return rp_err(RP_EINVAL, "recordings snapshot: database %d: expected '%s'", i,
                          rec_db_names[i]);
        const uint8_t *prev = NULL;
        size_t prev_len = 0;
        for (uint64_t j = 0; j < counts[i]; j++) {
            uint32_t kl, vl;
            const uint8_t *k, *v;
            if (rp_rd_be32(&rd, &kl) != 0 || kl == 0 || kl > 511 || rp_rd_bytes(&rd, kl, &k) != 0 ||
                rp_rd_be32(&rd, &vl) != 0 || rp_rd_bytes(&rd, vl, &v) != 0)
                return rp_err(RP_EINVAL, "recordings snapshot: %s record %llu: bad length",
                              rec_db_names[i], (unsigned long long)j);
            if (txn == NULL) {
                if (prev != NULL && key_cmp(prev, prev_len, k, kl) >= 0)
                    return rp_err(RP_EINVAL, "recordings snapshot: %s record %llu out of order",
                                  rec_db_names[i], (unsigned long long)j);
                prev = k;
                prev_len = kl;
                if (check_one(i, k, kl, v, vl) != 0)
                    return state__err_prefix(RP_EINVAL, "recordings snapshot: %s record %llu",
                                             rec_db_names[i], (unsigned long long)j);
                continue;
            }
            MDB_val kv = {kl, (void *)k}, vv = {vl, (void *)v};
            int rc = mdb_put(txn, r->dbi[i], &kv, &vv, MDB_APPEND);
            if (rc != 0)
                return rc;
        }
    }
    if (rp_rd_left(&rd) != 0)
        return rp_err(RP_EINVAL, "recordings snapshot: %zu bytes after the last database",
                      rp_rd_left(&rd));
    if (txn == NULL && counts[REC_DB_RECS] != counts[REC_DB_BYSTART])
        return rp_err(RP_EINVAL, "recordings snapshot: %llu recordings but %llu start entries",
                      (unsigned long long)counts[REC_DB_RECS],
                      (unsigned long long)counts[REC_DB_BYSTART]);
    return 0;
}

int state__rec_snapshot_check(const uint8_t *rec, size_t len)
{
    if (len < sizeof snap_magic + 16)
        return rp_err(RP_EINVAL, "recordings snapshot of %zu bytes is too short", len);
    if (fnv1a64(rec, len - 8) != state__get_be64(rec + len - 8))
        return rp_err(RP_EINVAL, "recordings snapshot: checksum mismatch");
    return walk_section(NULL, rec, len, NULL);
}

int state__rec_snapshot_restore(struct state *s, const uint8_t *rec, size_t len)
{
    struct state__recstore *r = s->rec;
    MDB_txn *txn;
    int rc, rv;
    /* The restored store must fit whatever the ceiling says: a member that cannot
     * take the cluster's recordings could not follow it at all. */
    size_t want = (rec != NULL ? len + len / 2 : 0) + ((size_t)8 << 20);
    if (want > r->map_size) {
        if (want > r->map_max) {
            rp_warn("state", "recordings snapshot of %zu KiB: raising the map ceiling from %zu KiB",
                    len >> 10, r->map_max >> 10);
            r->map_max = want;
        }
        if ((rv = grow_to(r, want, GROW_WAIT_MS)) < 0)
            return rv;
    }
    for (;;) {
        if ((rc = mdb_txn_begin(r->env, NULL, 0, &txn)) != 0)
            return rec_lmdb_err(r, rc, "restoring the recordings store");
        for (int i = 0; i < REC_N_DBS && rc == 0; i++)
            rc = mdb_drop(txn, r->dbi[i], 0);
        if (rc == 0 && rec != NULL) {
            rc = walk_section(r, rec, len, txn);
            if (is_rp_code(rc)) {
                mdb_txn_abort(txn);
                return rc;
            }
        }
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc != MDB_MAP_FULL)
            break;
        if (r->map_max < r->map_size * 2)
            r->map_max = r->map_size * 2;
        if ((rv = grow_to(r, r->map_size * 2, GROW_WAIT_MS)) < 0)
            return rv;
    }
    if (rc != 0)
        return rec_lmdb_err(r, rc, "restoring the recordings store");
    /* The applied index restored with the store. */
    if ((rv = begin_read(r, &txn)) != 0)
        return rv;
    rv = read_u64(r, txn, applied_key, &r->applied);
    end_read(r, txn);
    return rv;
}
