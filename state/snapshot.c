/* state/snapshot.c: the snapshot format, writing it and restoring from it.
 *
 * A snapshot is every database of the environment as one read transaction saw
 * it, records in key order:
 *
 *   "RPSTSNAP"            magic, 8 bytes
 *   be32 version (2: with the audit databases)
 *   be32 number of databases (7), then for each, in state__db_names order:
 *     u8 name length, name
 *     be64 number of records, then for each: be32 key length, key,
 *                                            be32 value length, value
 *   be64 FNV-1a 64 of every byte before it
 *
 * Restore reads it twice: first to check every length, every key and every
 * stored resource (nothing is written if anything is wrong), then to insert. The
 * records come sorted (checked), so inserting uses MDB_APPEND.
 *
 * The recordings store (state/recstore.c) follows as a section of its own, with a
 * trailer restore finds it by; a snapshot without one restores no recordings. */
#define STATE_INTERNAL
#include "state/state.h"

#include <string.h>

#include "lib/errors.h"
#include "lib/mp.h"

static const uint8_t magic[8] = {'R', 'P', 'S', 'T', 'S', 'N', 'A', 'P'};
#define SNAP_VERSION 2
#define LMDB_KEY_MAX 511 /* mdb_env_get_maxkeysize with the default build */

static uint64_t fnv1a64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}

static uint8_t *put64(uint8_t *p, uint64_t v)
{
    state__put_be64(p, v);
    return p + 8;
}

/* Walks database @i of @txn: with @p == NULL only counts (records, bytes),
 * otherwise writes the records at @p and returns the end through @end. */
static int walk_db(struct state *s, MDB_txn *txn, int i, uint64_t *n, size_t *bytes, uint8_t *p,
                   uint8_t **end)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, s->dbi[i], &cur);
    if (rc != 0)
        return state__lmdb_err(rc, "snapshot");
    *n = 0;
    *bytes = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        (*n)++;
        *bytes += 8 + k.mv_size + v.mv_size;
        if (p != NULL) {
            p = put32(p, (uint32_t)k.mv_size);
            memcpy(p, k.mv_data, k.mv_size);
            p += k.mv_size;
            p = put32(p, (uint32_t)v.mv_size);
            if (v.mv_size > 0)
                memcpy(p, v.mv_data, v.mv_size);
            p += v.mv_size;
        }
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND)
        return state__lmdb_err(rc, "snapshot");
    if (end != NULL)
        *end = p;
    return 0;
}

int state__snapshot_encode(struct state *s, MDB_txn *txn, void **out, size_t *len)
{
    uint64_t counts[STATE__N_DBS];
    size_t bytes, total = sizeof magic + 4 + 4 + 8;
    int rv;
    /* Two passes over the same read transaction: size first, so the buffer is
     * allocated once and never copied. */
    for (int i = 0; i < STATE__N_DBS; i++) {
        if ((rv = walk_db(s, txn, i, &counts[i], &bytes, NULL, NULL)) != 0)
            return rv;
        total += 1 + strlen(state__db_names[i]) + 8 + bytes;
    }
    size_t main_len = total, rec_len;
    if ((rv = state__rec_snapshot_size(s, &rec_len)) != 0)
        return rv;
    total += rec_len;
    uint8_t *buf = raft_malloc(total);
    if (buf == NULL)
        return rp_err(RP_ENOMEM, "allocating a snapshot of %zu bytes", total);
    uint8_t *p = buf;
    memcpy(p, magic, sizeof magic);
    p += sizeof magic;
    p = put32(p, SNAP_VERSION);
    p = put32(p, STATE__N_DBS);
    for (int i = 0; i < STATE__N_DBS; i++) {
        uint64_t n;
        size_t nl = strlen(state__db_names[i]);
        *p++ = (uint8_t)nl;
        memcpy(p, state__db_names[i], nl);
        p += nl;
        p = put64(p, counts[i]);
        if ((rv = walk_db(s, txn, i, &n, &bytes, p, &p)) != 0)
            goto err;
        if (n != counts[i]) {
            rv = rp_err(RP_EIO, "snapshot: database %s changed under a read transaction",
                        state__db_names[i]);
            goto err;
        }
    }
    p = put64(p, fnv1a64(buf, (size_t)(p - buf)));
    if ((size_t)(p - buf) != main_len) {
        rv = rp_err(RP_EIO, "snapshot: wrote %zu bytes, expected %zu", (size_t)(p - buf), main_len);
        goto err;
    }
    if ((rv = state__rec_snapshot_write(s, p, rec_len)) != 0)
        goto err;
    *out = buf;
    *len = total;
    return 0;
err:
    raft_free(buf);
    return rv;
}

/* ---- Restore ------------------------------------------------------------ */

struct snap_db {
    size_t off; /* offset of its first record */
    uint64_t n;
};

/* LMDB's default order: bytes, then length. */
static int key_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c != 0)
        return c;
    return an < bn ? -1 : an > bn;
}

struct counts {
    uint64_t res_expiring, exp, rid, ridrev;
    bool applied;
    uint64_t applied_index;
};

static int check_res(const uint8_t *k, size_t kl, const uint8_t *v, size_t vl, struct counts *c,
                     char *msg, size_t msglen)
{
    const char *kind, *name;
    size_t kn, nn;
    struct state_res_meta meta;
    msgpack_unpacked u;
    if (!state__split_key(k, kl, &kind, &kn, &name, &nn))
        return rp_err(RP_EINVAL, "key is not kind \\0 name");
    if (vl <= STATE__VAL_HDR)
        return rp_err(RP_EINVAL, "value of %zu bytes is too short", vl);
    uint64_t rev = state__get_be64(v), expires = state__get_be64(v + 8);
    if (rev == 0)
        return rp_err(RP_EINVAL, "revision 0");
    if (rp_mp_parse(v + STATE__VAL_HDR, vl - STATE__VAL_HDR, &u) != 0)
        return state__err_prefix(RP_EINVAL, "resource");
    int rv = state__res_check(&u.data, &meta, msg, msglen);
    msgpack_unpacked_destroy(&u);
    if (rv != 0)
        return rp_err(RP_EINVAL, "resource: %s", msg);
    if (meta.kind_len != kn || memcmp(meta.kind, kind, kn) != 0 || meta.name_len != nn ||
        memcmp(meta.name, name, nn) != 0)
        return rp_err(RP_EINVAL, "resource kind/name differ from its key");
    if (meta.revision != rev || meta.expires != expires)
        return rp_err(RP_EINVAL, "resource revision/expires differ from its header");
    if (expires != 0)
        c->res_expiring++;
    return 0;
}

static int check_record(int db, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl,
                        struct counts *c)
{
    const char *kind, *name;
    size_t kn, nn;
    char msg[160];
    struct state_result r;
    switch (db) {
    case STATE__DB_RES:
        return check_res(k, kl, v, vl, c, msg, sizeof msg);
    case STATE__DB_EXP:
        if (kl < 8 + 3 || state__get_be64(k) == 0 ||
            !state__split_key(k + 8, kl - 8, &kind, &kn, &name, &nn) || vl != 0)
            return rp_err(RP_EINVAL, "malformed expiry entry");
        c->exp++;
        return 0;
    case STATE__DB_RID:
        if (kl > STATE_RID_MAX || vl < 8 ||
            state__result_decode(v + 8, vl - 8, state__get_be64(v), &r) != 0)
            return rp_err(RP_EINVAL, "malformed request id entry");
        c->rid++;
        return 0;
    case STATE__DB_RIDREV:
        if (kl <= 8 || kl > 8 + STATE_RID_MAX || vl != 0)
            return rp_err(RP_EINVAL, "malformed request id index entry");
        c->ridrev++;
        return 0;
    case STATE__DB_AUDIT:
    case STATE__DB_AUDIT_IDX:
        return state__audit_check_record(db == STATE__DB_AUDIT_IDX, k, kl, v, vl);
    case STATE__DB_META:
        if (kl != strlen("applied_index") || memcmp(k, "applied_index", kl) != 0 || vl != 8)
            return rp_err(RP_EINVAL, "unknown meta entry");
        c->applied = true;
        c->applied_index = state__get_be64(v);
        return 0;
    }
    return rp_err(RP_EINVAL, "unknown database");
}

static int validate(const uint8_t *buf, size_t len, struct snap_db dbs[STATE__N_DBS],
                    uint64_t *applied)
{
    struct rp_rd rd;
    struct counts c = {0};
    const uint8_t *p;
    uint32_t version, n_dbs;
    if (len < sizeof magic + 4 + 4 + 8)
        return rp_err(RP_EINVAL, "snapshot of %zu bytes is too short", len);
    if (fnv1a64(buf, len - 8) != state__get_be64(buf + len - 8))
        return rp_err(RP_EINVAL, "snapshot checksum mismatch");
    rp_rd_init(&rd, buf, len - 8);
    if (rp_rd_bytes(&rd, sizeof magic, &p) != 0 || memcmp(p, magic, sizeof magic) != 0)
        return rp_err(RP_EINVAL, "not a Raftport state snapshot (bad magic)");
    if (rp_rd_be32(&rd, &version) != 0 || version != SNAP_VERSION)
        return rp_err(RP_EINVAL, "snapshot version %u, expected %u", version, SNAP_VERSION);
    if (rp_rd_be32(&rd, &n_dbs) != 0 || n_dbs != STATE__N_DBS)
        return rp_err(RP_EINVAL, "snapshot holds %u databases, expected %d", n_dbs, STATE__N_DBS);
    for (int i = 0; i < STATE__N_DBS; i++) {
        const char *want = state__db_names[i];
        uint8_t nl;
        const uint8_t *name;
        if (rp_rd_u8(&rd, &nl) != 0 || rp_rd_bytes(&rd, nl, &name) != 0 || nl != strlen(want) ||
            memcmp(name, want, nl) != 0)
            return rp_err(RP_EINVAL, "snapshot database %d: expected '%s'", i, want);
        if (rp_rd_be64(&rd, &dbs[i].n) != 0)
            return rp_err(RP_EINVAL, "snapshot database %s: truncated", want);
        dbs[i].off = rd.off;
        const uint8_t *prev = NULL;
        size_t prev_len = 0;
        /* Every record takes at least 8 bytes: the loop ends with the input. */
        for (uint64_t r = 0; r < dbs[i].n; r++) {
            uint32_t kl, vl;
            const uint8_t *k, *v;
            if (rp_rd_be32(&rd, &kl) != 0 || kl == 0 || kl > LMDB_KEY_MAX ||
                rp_rd_bytes(&rd, kl, &k) != 0 || rp_rd_be32(&rd, &vl) != 0 ||
                rp_rd_bytes(&rd, vl, &v) != 0)
                return rp_err(RP_EINVAL, "snapshot database %s record %llu: bad length", want,
                              (unsigned long long)r);
            if (prev != NULL && key_cmp(prev, prev_len, k, kl) >= 0)
                return rp_err(RP_EINVAL, "snapshot database %s record %llu: keys out of order",
                              want, (unsigned long long)r);
            prev = k;
            prev_len = kl;
            if (check_record(i, k, kl, v, vl, &c) != 0)
                return state__err_prefix(RP_EINVAL, "snapshot database %s record %llu", want,
                                         (unsigned long long)r);
        }
    }
    if (rp_rd_left(&rd) != 0)
        return rp_err(RP_EINVAL, "snapshot: %zu bytes after the last database", rp_rd_left(&rd));
    if (c.exp != c.res_expiring)
        return rp_err(RP_EINVAL, "snapshot: %llu expiry entries for %llu expiring resources",
                      (unsigned long long)c.exp, (unsigned long long)c.res_expiring);
    if (c.rid != c.ridrev)
        return rp_err(RP_EINVAL, "snapshot: %llu request ids but %llu index entries",
                      (unsigned long long)c.rid, (unsigned long long)c.ridrev);
    if (!c.applied)
        return rp_err(RP_EINVAL, "snapshot: no applied index");
    *applied = c.applied_index;
    return 0;
}

int state__snapshot_restore(struct state *s, const void *data, size_t all_len)
{
    const uint8_t *buf = data, *rec;
    struct snap_db dbs[STATE__N_DBS];
    uint64_t applied = 0;
    size_t len, rec_len;
    MDB_txn *txn;
    int rc, rv = state__rec_snapshot_split(buf, all_len, &len, &rec, &rec_len);
    if (rv == 0 && rec != NULL)
        rv = state__rec_snapshot_check(rec, rec_len);
    if (rv == 0)
        rv = validate(buf, len, dbs, &applied);
    if (rv != 0)
        return rv;

    /* The new contents land on pages past the old ones (pages freed by the drops are
     * reused only after the commit), and with MDB_WRITEMAP their blocks must be
     * allocated first (state/store.c, "Size"): a full disk fails the restore here. */
    if ((rv = state__disk_reserve(s, 3 * (uint64_t)len)) != 0)
        return rv;
    /* Everything checked: replace the contents in one transaction. */
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
        return state__lmdb_err(rc, "restore");
    for (int i = 0; i < STATE__N_DBS; i++) {
        if ((rc = mdb_drop(txn, s->dbi[i], 0)) != 0)
            goto err;
    }
    for (int i = 0; i < STATE__N_DBS; i++) {
        struct rp_rd rd;
        rp_rd_init(&rd, buf, len - 8);
        rd.off = dbs[i].off;
        for (uint64_t r = 0; r < dbs[i].n; r++) {
            uint32_t kl, vl;
            const uint8_t *k, *v;
            /* Checked by validate(): cannot fail. */
            rp_rd_be32(&rd, &kl);
            rp_rd_bytes(&rd, kl, &k);
            rp_rd_be32(&rd, &vl);
            rp_rd_bytes(&rd, vl, &v);
            MDB_val kv = {kl, (void *)k}, vv = {vl, (void *)v};
            if ((rc = mdb_put(txn, s->dbi[i], &kv, &vv, MDB_APPEND)) != 0)
                goto err;
        }
    }
    /* The recordings first: if the main commit then fails, the restore is retried
     * whole; the other way round a main state could stand without its recordings. */
    if ((rv = state__rec_snapshot_restore(s, rec, rec_len)) != 0) {
        mdb_txn_abort(txn);
        return rv;
    }
    if ((rc = mdb_txn_commit(txn)) != 0)
        return state__lmdb_err(rc, "restore");
    atomic_store(&s->applied, applied);
    atomic_store(&s->resources_changed, applied);
    state__hub_reset(s, applied);
    return 0;
err:
    mdb_txn_abort(txn);
    return state__lmdb_err(rc, "restore");
}
