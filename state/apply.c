/* state/apply.c: applies one command at one Raft index.
 *
 * Everything an entry changes (resources, the expiry index, the request id and
 * its result, pruned request ids, the applied index) goes into one LMDB write
 * transaction, so a crash never leaves half a command. The entry's watch events
 * are collected while applying and published only once that transaction has
 * committed. Apply reads nothing but the command, the index and LMDB: no clock,
 * no other file, so every replica computes the same bytes. */
#define STATE_INTERNAL
#include "state/state.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/mp.h"

struct apply {
    struct state *s;
    MDB_txn *txn;
    uint64_t index;
};

static void set_msg(struct state_result *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_msg(struct state_result *res, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof res->message, fmt, ap);
    va_end(ap);
}

static int push_event(struct state *s, struct state__ev *ev)
{
    if (ev == NULL)
        return rp_err(RP_ENOMEM, "allocating a watch event");
    if (s->n_pending == s->cap_pending) {
        size_t cap = s->cap_pending ? s->cap_pending * 2 : 16;
        struct state__ev **p = realloc(s->pending, cap * sizeof *p);
        if (p == NULL) {
            state__ev_free(ev);
            return rp_err(RP_ENOMEM, "allocating watch events");
        }
        s->pending = p;
        s->cap_pending = cap;
    }
    s->pending[s->n_pending++] = ev;
    return 0;
}

static void drop_pending(struct state *s)
{
    for (size_t i = 0; i < s->n_pending; i++)
        state__ev_free(s->pending[i]);
    s->n_pending = 0;
}

/* The stored revision and expiry of @key, if present. */
static int lookup(struct apply *a, const uint8_t *key, size_t klen, bool *exists, uint64_t *rev,
                  uint64_t *expires)
{
    MDB_val k = {klen, (void *)key}, v;
    int rc = mdb_get(a->txn, a->s->dbi[STATE__DB_RES], &k, &v);
    *exists = false;
    *rev = 0;
    *expires = 0;
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return state__lmdb_err(rc, "reading a resource");
    if (v.mv_size < STATE__VAL_HDR)
        return rp_err(RP_EIO, "stored resource value of %zu bytes is too short", v.mv_size);
    *exists = true;
    *rev = state__get_be64(v.mv_data);
    *expires = state__get_be64((uint8_t *)v.mv_data + 8);
    return 0;
}

static int exp_key(uint8_t *out, uint64_t expires, const uint8_t *key, size_t klen)
{
    state__put_be64(out, expires);
    memcpy(out + 8, key, klen);
    return (int)(8 + klen);
}

static int del_expiry(struct apply *a, uint64_t expires, const uint8_t *key, size_t klen)
{
    uint8_t ek[8 + STATE__KEY_MAX];
    MDB_val k = {(size_t)exp_key(ek, expires, key, klen), ek};
    int rc = mdb_del(a->txn, a->s->dbi[STATE__DB_EXP], &k, NULL);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return state__lmdb_err(rc, "updating the expiry index");
    return 0;
}

/* Stores the command's resource at this revision, replacing any old version. */
static int write_resource(struct apply *a, const struct state__cmd *c, const uint8_t *key,
                          size_t klen, bool existed, uint64_t old_expires)
{
    struct rp_buf b;
    int rv, rc;
    rp_buf_init(&b);
    if ((rv = rp_buf_reserve(&b, STATE__VAL_HDR + 256)) != 0)
        return rv;
    state__put_be64(b.data, a->index);
    state__put_be64(b.data + 8, c->meta.expires);
    b.len = STATE__VAL_HDR;
    if ((rv = state__res_pack(&b, c->res, a->index)) != 0)
        goto err;
    if (existed && old_expires != 0 && (rv = del_expiry(a, old_expires, key, klen)) != 0)
        goto err;
    MDB_val k = {klen, (void *)key}, v = {b.len, b.data};
    if ((rc = mdb_put(a->txn, a->s->dbi[STATE__DB_RES], &k, &v, 0)) != 0) {
        rv = state__lmdb_err(rc, "writing a resource");
        goto err;
    }
    if (c->meta.expires != 0) {
        uint8_t ek[8 + STATE__KEY_MAX];
        MDB_val ekv = {(size_t)exp_key(ek, c->meta.expires, key, klen), ek}, empty = {0, NULL};
        if ((rc = mdb_put(a->txn, a->s->dbi[STATE__DB_EXP], &ekv, &empty, 0)) != 0) {
            rv = state__lmdb_err(rc, "updating the expiry index");
            goto err;
        }
    }
    /* The event takes the encoded bytes as they are: no further copy. */
    size_t len = b.len;
    uint8_t *alloc = rp_buf_steal(&b, NULL);
    return push_event(a->s, state__ev_new(STATE_EV_PUT, a->index, c->meta.kind, c->meta.kind_len,
                                          c->meta.name, c->meta.name_len, alloc, STATE__VAL_HDR,
                                          len - STATE__VAL_HDR));
err:
    rp_buf_free(&b);
    return rv;
}

static int delete_resource(struct apply *a, const char *kind, size_t kind_len, const char *name,
                           size_t name_len, const uint8_t *key, size_t klen, uint64_t expires)
{
    MDB_val k = {klen, (void *)key};
    int rc = mdb_del(a->txn, a->s->dbi[STATE__DB_RES], &k, NULL);
    if (rc != 0)
        return state__lmdb_err(rc, "deleting a resource");
    if (expires != 0) {
        int rv = del_expiry(a, expires, key, klen);
        if (rv != 0)
            return rv;
    }
    return push_event(
        a->s, state__ev_new(STATE_EV_DELETE, a->index, kind, kind_len, name, name_len, NULL, 0, 0));
}

/* One put/create/update/cas/delete/cdelete. Returns <0 only for LMDB/memory
 * errors; the command's own outcome goes to @res. Writes nothing when it fails. */
static int exec_single(struct apply *a, const struct state__cmd *c, struct state_result *res)
{
    const struct state_res_meta *m = &c->meta;
    uint8_t key[STATE__KEY_MAX];
    size_t klen = state__res_key(key, m->kind, m->kind_len, m->name, m->name_len);
    int kl = (int)m->kind_len, nl = (int)m->name_len;
    bool exists;
    uint64_t rev, expires;
    int rv = lookup(a, key, klen, &exists, &rev, &expires);
    if (rv != 0)
        return rv;

    switch (c->op) {
    case STATE__OP_PUT:
        break;
    case STATE__OP_CREATE:
        if (exists) {
            res->code = RP_EEXISTS;
            res->current_rev = rev;
            set_msg(res, "%.*s/%.*s already exists (revision %llu)", kl, m->kind, nl, m->name,
                    (unsigned long long)rev);
            return 0;
        }
        break;
    case STATE__OP_UPDATE:
    case STATE__OP_DELETE:
        if (!exists) {
            res->code = RP_ENOTFOUND;
            set_msg(res, "%.*s/%.*s does not exist", kl, m->kind, nl, m->name);
            return 0;
        }
        break;
    case STATE__OP_CAS:
    case STATE__OP_CDELETE:
        if (c->rev == 0 && exists) {
            res->code = RP_ECONFLICT;
            res->current_rev = rev;
            set_msg(res, "%.*s/%.*s exists at revision %llu, expected it absent", kl, m->kind, nl,
                    m->name, (unsigned long long)rev);
            return 0;
        }
        if (c->rev != 0 && !exists) {
            res->code = RP_ENOTFOUND;
            set_msg(res, "%.*s/%.*s does not exist (expected revision %llu)", kl, m->kind, nl,
                    m->name, (unsigned long long)c->rev);
            return 0;
        }
        if (c->rev != 0 && rev != c->rev) {
            res->code = RP_ECONFLICT;
            res->current_rev = rev;
            set_msg(res, "%.*s/%.*s is at revision %llu, expected %llu", kl, m->kind, nl, m->name,
                    (unsigned long long)rev, (unsigned long long)c->rev);
            return 0;
        }
        break;
    default:
        return rp_err(RP_EINVAL, "not a single-resource op");
    }

    if (c->op == STATE__OP_DELETE || c->op == STATE__OP_CDELETE)
        rv = delete_resource(a, m->kind, m->kind_len, m->name, m->name_len, key, klen, expires);
    else
        rv = write_resource(a, c, key, klen, exists, expires);
    if (rv == 0)
        res->n_changed++;
    return rv;
}

/* All ops or none. On a failing op the caller throws the whole transaction away
 * (see state_apply), so ops already done need no undoing here. */
static int exec_batch(struct apply *a, const struct state__cmd *c, struct state_result *res)
{
    const msgpack_object *arr = c->ops;
    for (uint32_t i = 0; i < arr->via.array.size; i++) {
        struct state__cmd sub;
        struct state_result sr;
        memset(&sr, 0, sizeof sr);
        /* Validated when the batch was parsed: this cannot fail. */
        if (state__cmd_parse(&arr->via.array.ptr[i], true, &sub, sr.message, sizeof sr.message))
            return rp_err(RP_EINVAL, "batch op %u failed validation twice: %s", i, sr.message);
        int rv = exec_single(a, &sub, &sr);
        if (rv != 0)
            return rv;
        if (sr.code != 0) {
            res->code = sr.code;
            res->current_rev = sr.current_rev;
            res->failed_op = i;
            res->n_changed = 0;
            set_msg(res, "ops[%u]: %s", i, sr.message);
            return 0;
        }
        res->n_changed += sr.n_changed;
    }
    return 0;
}

/* Deletes every resource with 0 < expires < before, oldest first. */
static int exec_expire(struct apply *a, const struct state__cmd *c, struct state_result *res)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(a->txn, a->s->dbi[STATE__DB_EXP], &cur);
    if (rc != 0)
        return state__lmdb_err(rc, "scanning the expiry index");
    int rv = 0;
    /* Always the first entry: each pass deletes it, so the next one moves up. */
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0) {
        const char *kind, *name;
        size_t kl, nl;
        if (k.mv_size < 8 || state__get_be64(k.mv_data) >= c->before)
            break;
        /* Copied out: the deletes below invalidate pointers into the map. */
        uint8_t key[STATE__KEY_MAX];
        size_t klen = k.mv_size - 8;
        if (klen > sizeof key) {
            rv = rp_err(RP_EIO, "malformed expiry index key of %zu bytes", k.mv_size);
            break;
        }
        memcpy(key, (uint8_t *)k.mv_data + 8, klen);
        if (!state__split_key(key, klen, &kind, &kl, &name, &nl)) {
            rv = rp_err(RP_EIO, "malformed expiry index key of %zu bytes", k.mv_size);
            break;
        }
        if ((rc = mdb_cursor_del(cur, 0)) != 0) {
            rv = state__lmdb_err(rc, "updating the expiry index");
            break;
        }
        MDB_val rk = {klen, key};
        rc = mdb_del(a->txn, a->s->dbi[STATE__DB_RES], &rk, NULL);
        if (rc == MDB_NOTFOUND)
            continue; /* index without resource: nothing to tell watchers */
        if (rc != 0) {
            rv = state__lmdb_err(rc, "deleting an expired resource");
            break;
        }
        if ((rv = push_event(a->s, state__ev_new(STATE_EV_DELETE, a->index, kind, kl, name, nl,
                                                 NULL, 0, 0))) != 0)
            break;
        res->n_changed++;
    }
    if (rv == 0 && rc != 0 && rc != MDB_NOTFOUND)
        rv = state__lmdb_err(rc, "scanning the expiry index");
    mdb_cursor_close(cur);
    return rv;
}

/* ---- Request ids -------------------------------------------------------- */

static int rid_lookup(struct state *s, MDB_txn *txn, const char *rid, size_t rid_len, bool *found,
                      struct state_result *res)
{
    MDB_val k = {rid_len, (void *)rid}, v;
    int rc = mdb_get(txn, s->dbi[STATE__DB_RID], &k, &v);
    *found = false;
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return state__lmdb_err(rc, "reading a request id");
    if (v.mv_size < 8)
        return rp_err(RP_EIO, "stored request id value of %zu bytes is too short", v.mv_size);
    int rv = state__result_decode((uint8_t *)v.mv_data + 8, v.mv_size - 8,
                                  state__get_be64(v.mv_data), res);
    if (rv != 0)
        return state__err_prefix(RP_EIO, "request id %.*s", (int)rid_len, rid);
    *found = true;
    return 0;
}

static int rid_record(struct apply *a, const char *rid, size_t rid_len,
                      const struct state_result *res)
{
    uint8_t rk[8 + STATE_RID_MAX], hdr[8];
    struct rp_buf b;
    int rv, rc;
    rp_buf_init(&b);
    state__put_be64(hdr, a->index);
    if ((rv = rp_buf_append(&b, hdr, 8)) != 0 || (rv = state__result_encode(res, &b)) != 0) {
        rp_buf_free(&b);
        return rp_err(RP_ENOMEM, "encoding a request result");
    }
    MDB_val k = {rid_len, (void *)rid}, v = {b.len, b.data}, empty = {0, NULL};
    rc = mdb_put(a->txn, a->s->dbi[STATE__DB_RID], &k, &v, 0);
    rp_buf_free(&b);
    if (rc != 0)
        return state__lmdb_err(rc, "recording a request id");
    memcpy(rk, hdr, 8);
    memcpy(rk + 8, rid, rid_len);
    MDB_val ik = {8 + rid_len, rk};
    if ((rc = mdb_put(a->txn, a->s->dbi[STATE__DB_RIDREV], &ik, &empty, 0)) != 0)
        return state__lmdb_err(rc, "recording a request id");
    return 0;
}

/* Forgets request ids recorded at revisions <= index - rid_keep. Driven by the
 * index, never the clock, so every replica forgets the same ones. Each id is
 * pruned once, so this is O(1) per entry on average. */
static int rid_prune(struct apply *a)
{
    uint64_t keep = a->s->opts.rid_keep;
    if (a->index <= keep)
        return 0;
    uint64_t cutoff = a->index - keep;
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(a->txn, a->s->dbi[STATE__DB_RIDREV], &cur);
    if (rc != 0)
        return state__lmdb_err(rc, "pruning request ids");
    int rv = 0;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0) {
        if (k.mv_size <= 8 || state__get_be64(k.mv_data) > cutoff)
            break;
        uint8_t rid[STATE_RID_MAX];
        size_t rid_len = k.mv_size - 8;
        if (rid_len > sizeof rid) {
            rv = rp_err(RP_EIO, "malformed request id index key of %zu bytes", k.mv_size);
            break;
        }
        memcpy(rid, (uint8_t *)k.mv_data + 8, rid_len);
        if ((rc = mdb_cursor_del(cur, 0)) != 0)
            break;
        MDB_val rk = {rid_len, rid};
        rc = mdb_del(a->txn, a->s->dbi[STATE__DB_RID], &rk, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND)
            break;
    }
    if (rv == 0 && rc != 0 && rc != MDB_NOTFOUND)
        rv = state__lmdb_err(rc, "pruning request ids");
    mdb_cursor_close(cur);
    return rv;
}

/* ---- Group commit --------------------------------------------------------- */

static int group_reserve(struct state *s, unsigned n)
{
    if (n > s->cap_group_res) {
        struct state_result *r = realloc(s->group_res, n * sizeof *r);
        if (r == NULL)
            return rp_err(RP_ENOMEM, "allocating the results of a group of %u", n);
        s->group_res = r;
        s->cap_group_res = n;
    }
    size_t cap = 16;
    while (cap < 2 * (size_t)n)
        cap *= 2;
    if (cap > s->cap_group_keys) {
        uint64_t *k = realloc(s->group_keys, cap * sizeof *k);
        if (k == NULL)
            return rp_err(RP_ENOMEM, "allocating the keys of a group of %u", n);
        s->group_keys = k;
        s->cap_group_keys = cap;
    }
    memset(s->group_keys, 0, s->cap_group_keys * sizeof *s->group_keys);
    return 0;
}

/* Looks @key up in the open-addressing set of resources this group changed (at
 * most half full); adds it when @add. True if it was there. */
static bool group_key_seen(struct state *s, uint64_t key, bool add)
{
    size_t mask = s->cap_group_keys - 1;
    for (size_t i = (size_t)key & mask;; i = (i + 1) & mask) {
        if (s->group_keys[i] == key)
            return true;
        if (s->group_keys[i] == 0) {
            if (add)
                s->group_keys[i] = key;
            return false;
        }
    }
}

/* Independent commands sharing one entry: each is checked, de-duplicated by its
 * rid and applied on its own, and its outcome goes to s->group_res[i]. A member
 * that fails writes nothing (exec_single changes nothing before its checks pass),
 * so its neighbours are untouched and the transaction stays whole. Returns <0 only
 * for LMDB/memory errors, which fail the entire entry (raft retries it). */
static int exec_group(struct apply *a, const struct state__cmd *c, struct state_result *res)
{
    struct state *s = a->s;
    const msgpack_object *arr = c->ops;
    uint32_t n = arr->via.array.size;
    int rv = group_reserve(s, n);
    if (rv != 0)
        return rv;
    for (uint32_t i = 0; i < n; i++) {
        struct state_result *mr = &s->group_res[i];
        struct state__cmd m;
        bool remembered = false;
        memset(mr, 0, sizeof *mr);
        mr->revision = a->index;
        s->n_group_res = i + 1;
        if (state__cmd_parse(&arr->via.array.ptr[i], false, &m, mr->message, sizeof mr->message) !=
            0) {
            mr->code = RP_EINVAL;
            continue;
        }
        uint64_t key = state__cmd_key(&m);
        if (key == 0) {
            mr->code = RP_EINVAL;
            set_msg(mr, "ops[%u]: a group holds only put, create, update, cas, delete and cdelete",
                    i);
            continue;
        }
        /* An earlier member may carry the same rid (a retry that raced its
         * original): it recorded its result in this transaction, so this finds it. */
        if ((rv = rid_lookup(s, a->txn, m.rid, m.rid_len, &remembered, mr)) != 0)
            return rv;
        if (remembered)
            continue;
        if (group_key_seen(s, key, false)) {
            /* Not remembered under the rid: a retry with it may succeed. */
            mr->code = RP_ECONFLICT;
            set_msg(mr, "%.*s/%.*s was changed earlier in the same entry (revision %llu): retry",
                    (int)m.meta.kind_len, m.meta.kind, (int)m.meta.name_len, m.meta.name,
                    (unsigned long long)a->index);
            continue;
        }
        if ((rv = exec_single(a, &m, mr)) != 0)
            return rv;
        if (mr->code == 0)
            group_key_seen(s, key, true);
        if ((rv = rid_record(a, m.rid, m.rid_len, mr)) != 0)
            return rv;
        res->n_changed += mr->n_changed;
    }
    return 0;
}

const struct state_result *state_group_result(struct state *s, const void *fsm_result, unsigned i)
{
    if (i < s->n_group_res)
        return &s->group_res[i];
    return fsm_result;
}

/* ---- Apply -------------------------------------------------------------- */

/* An index at or below the applied one: libraft re-applying its log after a
 * restart onto an environment that already holds it (see store.c). Change
 * nothing; answer with the remembered result when the rid still has one. */
static int apply_again(struct state *s, uint64_t index, const void *cmd, size_t len,
                       struct state_result *res)
{
    msgpack_unpacked u;
    struct state__cmd c;
    char msg[sizeof res->message];
    bool found = false;
    int rv = 0;
    if (len <= STATE_MAX_COMMAND && rp_mp_parse(cmd, len, &u) == 0) {
        if (state__cmd_parse(&u.data, false, &c, msg, sizeof msg) == 0 && c.rid != NULL) {
            MDB_txn *txn;
            int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
            if (rc != 0) {
                rv = state__lmdb_err(rc, "reading a request id");
            } else {
                rv = rid_lookup(s, txn, c.rid, c.rid_len, &found, res);
                mdb_txn_abort(txn);
            }
        }
        msgpack_unpacked_destroy(&u);
    }
    if (rv != 0)
        return rv;
    if (!found) {
        memset(res, 0, sizeof *res);
        res->revision = index;
        set_msg(res, "index %llu already applied (applied index %llu): skipped",
                (unsigned long long)index, (unsigned long long)atomic_load(&s->applied));
    }
    return 0;
}

static int write_applied(struct apply *a)
{
    static const char key[] = "applied_index";
    uint8_t val[8];
    state__put_be64(val, a->index);
    MDB_val k = {sizeof key - 1, (void *)key}, v = {8, val};
    int rc = mdb_put(a->txn, a->s->dbi[STATE__DB_META], &k, &v, 0);
    return rc != 0 ? state__lmdb_err(rc, "writing the applied index") : 0;
}

static int exec(struct apply *a, const struct state__cmd *c, struct state_result *res)
{
    switch (c->op) {
    case STATE__OP_BATCH:
        return exec_batch(a, c, res);
    case STATE__OP_EXPIRE:
        return exec_expire(a, c, res);
    case STATE__OP_AUDIT:
        return state__audit_apply(a->s, a->txn, c->events, &res->n_changed);
    case STATE__OP_AUDIT_TRIM:
        return state__audit_trim(a->s, a->txn, c->before, &res->n_changed);
    case STATE__OP_REC_PUT:
    case STATE__OP_REC_TRIM:
        /* Commits in the recordings environment before this transaction does:
         * idempotent by design (state/recstore.c). */
        return state__rec_apply(a->s, a->index, c, res);
    case STATE__OP_GROUP:
        return exec_group(a, c, res);
    default:
        return exec_single(a, c, res);
    }
}

/* A bound on what one entry's transaction adds to the file after its last page in
 * use: its bytes twice (a value's overflow pages, and the tree it lands in), and
 * for each resource it changes, the leaf and branch pages copied on write in the
 * resource, expiry and request-id trees (8 pages). Expiry and trimming delete what
 * they find, freeing about as many pages as they copy: the margin covers them. */
static uint64_t apply_growth(const struct state__cmd *c, size_t len)
{
    uint64_t items = 1;
    if (c != NULL && (c->op == STATE__OP_BATCH || c->op == STATE__OP_GROUP))
        items = c->ops->via.array.size;
    else if (c != NULL && c->op == STATE__OP_AUDIT)
        items = c->events->via.array.size;
    return 2 * (uint64_t)len + items * (32u << 10);
}

int state_apply(struct state *s, uint64_t index, const void *cmd, size_t len,
                struct state_result *res)
{
    struct apply a = {.s = s, .index = index};
    struct state__cmd c;
    msgpack_unpacked u;
    bool parsed = false, valid = false, remembered = false;
    int rv, rc;

    memset(res, 0, sizeof *res);
    res->revision = index;
    s->n_group_res = 0;
    if (index <= atomic_load(&s->applied))
        return apply_again(s, index, cmd, len, res);

    /* A bad command is an outcome, not an error: it must not stall Raft. */
    if (len > STATE_MAX_COMMAND) {
        res->code = RP_EINVAL;
        set_msg(res, "command of %zu bytes exceeds the limit of %u", len, STATE_MAX_COMMAND);
    } else if ((rv = rp_mp_parse(cmd, len, &u)) != 0) {
        /* Out of memory is this replica's problem, not the command's: fail the
         * apply (raft retries) rather than record an outcome others differ on. */
        if (rv == RP_ENOMEM)
            return rv;
        res->code = RP_EINVAL;
        set_msg(res, "command: %s", rp_errmsg());
    } else {
        parsed = true;
        res->code = state__cmd_parse(&u.data, false, &c, res->message, sizeof res->message);
        valid = res->code == 0;
    }

    /* The blocks this transaction may store into are allocated first (MDB_WRITEMAP:
     * see state/store.c, "Size"): a full disk fails the apply here, and Raft retries. */
    if ((rv = state__disk_reserve(s, apply_growth(valid ? &c : NULL, len))) != 0)
        goto err;
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &a.txn)) != 0) {
        rv = state__lmdb_err(rc, "starting the apply transaction");
        goto err;
    }
    /* Pruning first: at index i, ids recorded at or below i - rid_keep are gone
     * before this command looks for its own. */
    if ((rv = rid_prune(&a)) != 0)
        goto err_after_txn;
    if (valid && c.rid != NULL) {
        if ((rv = rid_lookup(s, a.txn, c.rid, c.rid_len, &remembered, res)) != 0)
            goto err_after_txn;
    }
    if (valid && !remembered) {
        if ((rv = exec(&a, &c, res)) != 0)
            goto err_after_txn;
        if (res->code != 0 && c.op == STATE__OP_BATCH) {
            /* A batch failed part-way: throw its writes away and keep only the
             * bookkeeping below. */
            mdb_txn_abort(a.txn);
            drop_pending(s);
            if ((rc = mdb_txn_begin(s->env, NULL, 0, &a.txn)) != 0) {
                rv = state__lmdb_err(rc, "restarting the apply transaction");
                goto err;
            }
            if ((rv = rid_prune(&a)) != 0)
                goto err_after_txn;
        }
        if (c.rid != NULL && (rv = rid_record(&a, c.rid, c.rid_len, res)) != 0)
            goto err_after_txn;
    }
    if ((rv = write_applied(&a)) != 0)
        goto err_after_txn;
    if ((rc = mdb_txn_commit(a.txn)) != 0) {
        rv = state__lmdb_err(rc, "committing the apply transaction");
        goto err;
    }
    atomic_store(&s->applied, index);
    if (s->n_pending > 0)
        atomic_store(&s->resources_changed, index);
    if (parsed)
        msgpack_unpacked_destroy(&u);
    state__hub_publish(s, s->pending, s->n_pending, index);
    s->n_pending = 0;
    return 0;

err_after_txn:
    mdb_txn_abort(a.txn);
err:
    s->n_group_res = 0;
    drop_pending(s);
    if (parsed)
        msgpack_unpacked_destroy(&u);
    return rv;
}
