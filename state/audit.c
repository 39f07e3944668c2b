/* state/audit.c: the replicated audit log.
 *
 * Audit events are not resources: they are written once, never watched, read by
 * time range and by a few fields, and dropped by age. They live in two
 * databases of their own, away from the resources that watchers and snapshots
 * of hot state care about:
 *
 *   audit      be64 time_ms, uid                      -> the event (msgpack map)
 *   audit_idx  'T' event type \0 be64 time_ms, uid    -> ""   (by type)
 *              'U' user \0 be64 time_ms, uid          -> ""   (by user)
 *              'S' sid \0 be64 time_ms, uid           -> ""   (by session id)
 *
 * One "audit" command appends up to STATE_MAX_AUDIT events (the auth service
 * batches a burst of events into one Raft entry); "audit_trim" drops every
 * event older than a time. Both are deterministic: the time is in the events
 * and in the command, never read from a clock here. */
#define STATE_INTERNAL
#include "state/state.h"

#include <stdio.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/mp.h"

#define UID_MAX 64
#define TYPE_MAX 64
#define FIELD_MAX 255
#define IDX_KEY_MAX (1 + FIELD_MAX + 1 + 8 + UID_MAX)

/* The fields an event must or may carry, checked as a command is parsed. */
struct ev_keys {
    uint64_t time;
    const char *type, *uid, *user, *sid;
    size_t type_len, uid_len, user_len, sid_len;
};

static bool text_ok(const char *s, size_t n, size_t max)
{
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f)
            return false;
    }
    return true;
}

static int str_field(const msgpack_object *ev, const char *name, bool required, size_t max,
                     const char **s, size_t *n, char *msg, size_t msglen, unsigned i)
{
    const msgpack_object *o = rp_mp_get(ev, name);
    *s = NULL;
    *n = 0;
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        if (!required)
            return 0;
        snprintf(msg, msglen, "events[%u].%s: missing", i, name);
        return RP_EINVAL;
    }
    if (o->type != MSGPACK_OBJECT_STR || !text_ok(o->via.str.ptr, o->via.str.size, max)) {
        snprintf(msg, msglen,
                 "events[%u].%s: expected a string of 1-%zu bytes without control "
                 "characters",
                 i, name, max);
        return RP_EINVAL;
    }
    *s = o->via.str.ptr;
    *n = o->via.str.size;
    return 0;
}

static int event_keys(const msgpack_object *ev, unsigned i, struct ev_keys *k, char *msg,
                      size_t msglen)
{
    if (ev->type != MSGPACK_OBJECT_MAP) {
        snprintf(msg, msglen, "events[%u]: expected a map", i);
        return RP_EINVAL;
    }
    const msgpack_object *t = rp_mp_get(ev, "time");
    if (t == NULL || t->type != MSGPACK_OBJECT_POSITIVE_INTEGER || t->via.u64 == 0) {
        snprintf(msg, msglen, "events[%u].time: expected a time in ms since the epoch (> 0)", i);
        return RP_EINVAL;
    }
    k->time = t->via.u64;
    const char *code;
    size_t code_len;
    int rv;
    if ((rv = str_field(ev, "event", true, TYPE_MAX, &k->type, &k->type_len, msg, msglen, i)) ||
        (rv = str_field(ev, "code", true, 16, &code, &code_len, msg, msglen, i)) ||
        (rv = str_field(ev, "uid", true, UID_MAX, &k->uid, &k->uid_len, msg, msglen, i)) ||
        (rv = str_field(ev, "user", false, FIELD_MAX, &k->user, &k->user_len, msg, msglen, i)) ||
        (rv = str_field(ev, "sid", false, FIELD_MAX, &k->sid, &k->sid_len, msg, msglen, i)))
        return rv;
    return 0;
}

int state__audit_check(const msgpack_object *events, char *msg, size_t msglen)
{
    if (events->type != MSGPACK_OBJECT_ARRAY || events->via.array.size == 0 ||
        events->via.array.size > STATE_MAX_AUDIT) {
        snprintf(msg, msglen, "events: expected an array of 1-%u events", STATE_MAX_AUDIT);
        return RP_EINVAL;
    }
    for (uint32_t i = 0; i < events->via.array.size; i++) {
        struct ev_keys k;
        int rv = event_keys(&events->via.array.ptr[i], i, &k, msg, msglen);
        if (rv != 0)
            return rv;
    }
    return 0;
}

static size_t evt_key(uint8_t *out, uint64_t time, const char *uid, size_t uid_len)
{
    state__put_be64(out, time);
    memcpy(out + 8, uid, uid_len);
    return 8 + uid_len;
}

static size_t idx_key(uint8_t *out, char tag, const char *val, size_t val_len, uint64_t time,
                      const char *uid, size_t uid_len)
{
    out[0] = (uint8_t)tag;
    memcpy(out + 1, val, val_len);
    out[1 + val_len] = '\0';
    return 2 + val_len + evt_key(out + 2 + val_len, time, uid, uid_len);
}

/* Puts (@del false) or deletes the index entries of an event. */
static int index_event(struct state *s, MDB_txn *txn, const struct ev_keys *k, bool del)
{
    const struct {
        char tag;
        const char *v;
        size_t n;
    } idx[] = {{'T', k->type, k->type_len}, {'U', k->user, k->user_len}, {'S', k->sid, k->sid_len}};
    for (size_t i = 0; i < sizeof idx / sizeof idx[0]; i++) {
        if (idx[i].v == NULL)
            continue;
        uint8_t key[IDX_KEY_MAX];
        MDB_val kv = {idx_key(key, idx[i].tag, idx[i].v, idx[i].n, k->time, k->uid, k->uid_len),
                      key},
                empty = {0, NULL};
        int rc = del ? mdb_del(txn, s->dbi[STATE__DB_AUDIT_IDX], &kv, NULL)
                     : mdb_put(txn, s->dbi[STATE__DB_AUDIT_IDX], &kv, &empty, 0);
        if (rc != 0 && !(del && rc == MDB_NOTFOUND))
            return state__lmdb_err(rc, "writing the audit index");
    }
    return 0;
}

int state__audit_apply(struct state *s, MDB_txn *txn, const msgpack_object *events,
                       uint32_t *n_written)
{
    struct rp_buf b;
    rp_buf_init(&b);
    int rv = 0;
    for (uint32_t i = 0; i < events->via.array.size && rv == 0; i++) {
        const msgpack_object *ev = &events->via.array.ptr[i];
        struct ev_keys k;
        char msg[160];
        if (event_keys(ev, i, &k, msg, sizeof msg) != 0) {
            rv = rp_err(RP_EINVAL, "%s", msg); /* checked at parse: cannot happen */
            break;
        }
        uint8_t key[8 + UID_MAX];
        MDB_val kv = {evt_key(key, k.time, k.uid, k.uid_len), key}, old;
        /* The same event twice (a retried batch under another request id) is written
         * once: its key is its time and uid. */
        if (mdb_get(txn, s->dbi[STATE__DB_AUDIT], &kv, &old) == 0)
            continue;
        rp_buf_reset(&b);
        if ((rv = rp_mp_pack_object(&b, ev)) != 0)
            break;
        MDB_val vv = {b.len, b.data};
        int rc = mdb_put(txn, s->dbi[STATE__DB_AUDIT], &kv, &vv, 0);
        if (rc != 0) {
            rv = state__lmdb_err(rc, "writing an audit event");
            break;
        }
        if ((rv = index_event(s, txn, &k, false)) != 0)
            break;
        (*n_written)++;
    }
    rp_buf_free(&b);
    return rv;
}

int state__audit_trim(struct state *s, MDB_txn *txn, uint64_t before, uint32_t *n_deleted)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, s->dbi[STATE__DB_AUDIT], &cur);
    if (rc != 0)
        return state__lmdb_err(rc, "scanning the audit log");
    int rv = 0;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0) {
        if (k.mv_size < 9 || state__get_be64(k.mv_data) >= before)
            break;
        msgpack_unpacked u;
        struct ev_keys ek;
        char msg[160];
        if (rp_mp_parse(v.mv_data, v.mv_size, &u) != 0) {
            rv = rp_err(RP_EIO, "a stored audit event does not parse");
            break;
        }
        /* Index keys first, while the event's strings are still valid. */
        if (event_keys(&u.data, 0, &ek, msg, sizeof msg) == 0)
            rv = index_event(s, txn, &ek, true);
        msgpack_unpacked_destroy(&u);
        if (rv != 0)
            break;
        if ((rc = mdb_cursor_del(cur, 0)) != 0) {
            rv = state__lmdb_err(rc, "trimming the audit log");
            break;
        }
        (*n_deleted)++;
    }
    if (rv == 0 && rc != 0 && rc != MDB_NOTFOUND)
        rv = state__lmdb_err(rc, "scanning the audit log");
    mdb_cursor_close(cur);
    return rv;
}

int state__audit_check_record(bool idx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl)
{
    if (!idx) {
        if (kl < 9 || kl > 8 + UID_MAX || state__get_be64(k) == 0 || rp_mp_validate(v, vl) != 0)
            return rp_err(RP_EINVAL, "malformed audit event");
        return 0;
    }
    const uint8_t *z = kl > 1 ? memchr(k + 1, '\0', kl - 1) : NULL;
    if (kl < 1 + 1 + 1 + 9 || (k[0] != 'T' && k[0] != 'U' && k[0] != 'S') || z == NULL ||
        z == k + 1 || (size_t)(k + kl - (z + 1)) < 9 || vl != 0)
        return rp_err(RP_EINVAL, "malformed audit index entry");
    return 0;
}

/* ---- Queries -------------------------------------------------------------- */

static bool field_is(const msgpack_object *ev, const char *name, const char *want)
{
    return want == NULL || rp_mp_str_eq(rp_mp_get(ev, name), want);
}

/* Calls @cb with the event under @key if it passes the filters of @q. 1 = counted. */
static int deliver(MDB_txn *txn, struct state *s, const struct state_audit_query *q,
                   const void *key, size_t klen, state_list_cb cb, void *arg, int *cb_rv)
{
    MDB_val kv = {klen, (void *)key}, v;
    if (mdb_get(txn, s->dbi[STATE__DB_AUDIT], &kv, &v) != 0)
        return 0; /* index entry of a trimmed event: cannot happen within one txn */
    msgpack_unpacked u;
    if (rp_mp_parse(v.mv_data, v.mv_size, &u) != 0)
        return 0;
    bool pass = field_is(&u.data, "event", q->type) && field_is(&u.data, "user", q->user) &&
                field_is(&u.data, "sid", q->sid);
    msgpack_unpacked_destroy(&u);
    if (!pass)
        return 0;
    *cb_rv = cb(arg, v.mv_data, v.mv_size);
    return 1;
}

int state_audit_query(struct state *s, const struct state_audit_query *q, state_list_cb cb,
                      void *arg, uint64_t *rev_out)
{
    /* The most selective index the query allows, else the time-ordered log. */
    char tag = 0;
    const char *val = NULL;
    if (q->sid)
        tag = 'S', val = q->sid;
    else if (q->user)
        tag = 'U', val = q->user;
    else if (q->type)
        tag = 'T', val = q->type;
    size_t vl = val ? strlen(val) : 0;
    if (val && !text_ok(val, vl, FIELD_MAX))
        return rp_err(RP_EINVAL,
                      "audit filter '%.40s': expected 1-%d bytes without control "
                      "characters",
                      val, FIELD_MAX);
    uint64_t to = q->to_ms ? q->to_ms : UINT64_MAX;
    if (q->from_ms >= to)
        return 0;

    uint8_t lo[IDX_KEY_MAX], hi[IDX_KEY_MAX];
    size_t lo_len, hi_len, pfx_len = 0;
    if (tag) {
        lo_len = idx_key(lo, tag, val, vl, q->from_ms, "", 0);
        hi_len = idx_key(hi, tag, val, vl, to, "", 0);
        pfx_len = 2 + vl;
    } else {
        lo_len = evt_key(lo, q->from_ms, "", 0);
        hi_len = evt_key(hi, to, "", 0);
    }
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return state__lmdb_err(rc, "reading the audit log");
    int rv = 0;
    if (rev_out && (rv = state__read_applied(s, txn, rev_out)) != 0) {
        mdb_txn_abort(txn);
        return rv;
    }
    MDB_dbi db = s->dbi[tag ? STATE__DB_AUDIT_IDX : STATE__DB_AUDIT];
    if ((rc = mdb_cursor_open(txn, db, &cur)) != 0) {
        mdb_txn_abort(txn);
        return state__lmdb_err(rc, "reading the audit log");
    }
    MDB_val k = {lo_len, lo}, v;
    MDB_cursor_op step = MDB_NEXT;
    if (q->newest_first) {
        /* Start at the first key >= hi and step back (or at the very last key). */
        k = (MDB_val){hi_len, hi};
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        rc =
            rc == 0 ? mdb_cursor_get(cur, &k, &v, MDB_PREV) : mdb_cursor_get(cur, &k, &v, MDB_LAST);
        step = MDB_PREV;
    } else {
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    }
    unsigned n = 0;
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, step)) {
        const uint8_t *key = k.mv_data;
        if (tag && (k.mv_size < pfx_len + 9 || memcmp(key, lo, pfx_len) != 0))
            break;
        const uint8_t *ek = key + pfx_len;
        size_t ekl = k.mv_size - pfx_len;
        uint64_t t = state__get_be64(ek);
        if (t < q->from_ms || t >= to)
            break;
        int cb_rv = 0;
        n += (unsigned)deliver(txn, s, q, ek, ekl, cb, arg, &cb_rv);
        if (cb_rv != 0) {
            rv = cb_rv;
            break;
        }
        if (q->limit && n >= q->limit)
            break;
    }
    if (rv == 0 && rc != 0 && rc != MDB_NOTFOUND)
        rv = state__lmdb_err(rc, "reading the audit log");
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return rv;
}
