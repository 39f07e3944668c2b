/* auth/recordings.c: the session recordings API (rec_put, rec_list, rec_get) and
 * the leader's trim of the recordings store.
 *
 * The store itself is the state machine's (state/state.h, "Session recordings"):
 * a chunk is checked here (who sends it, its zstd frame and asciicast lines,
 * auth/recordings.h) and then goes through Raft like any write, carrying the
 * leader's clock and the retention and budget from this leader's configuration,
 * so every member keeps and drops the same recordings. */
#include <stdio.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/internal.h"
#include "auth/recordings.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/util.h"

#define REC_LIST_DEFAULT 1000
#define REC_LIST_MAX 10000

static int arg_sid(const msgpack_object *args, char out[STATE_REC_SID_LEN + 1])
{
    const char *s;
    size_t n;
    if (rp_mp_get_str(args, "sid", &s, &n) != 0 || !state_rec_sid_ok(s, n))
        return rp_err(RP_EINVAL, "sid: expected a session id (a UUID of 36 characters)");
    for (size_t i = 0; i < n; i++)
        out[i] = (s[i] >= 'A' && s[i] <= 'F') ? (char)(s[i] - 'A' + 'a') : s[i];
    out[n] = '\0';
    return 0;
}

static int arg_seq(const msgpack_object *args, uint32_t *seq)
{
    uint64_t v;
    if (rp_mp_get_u64(args, "seq", &v) != 0 || v >= STATE_REC_MAX_SEQ)
        return rp_err(RP_EINVAL, "seq: expected a chunk index from 0 to %u", STATE_REC_MAX_SEQ - 1);
    *seq = (uint32_t)v;
    return 0;
}

/* A text field of meta: 1..max bytes without control characters, copied to @out. */
static int meta_text(const msgpack_object *meta, const char *key, char *out, size_t cap,
                     bool required)
{
    const char *s;
    size_t n;
    int rv = rp_mp_get_str(meta, key, &s, &n);
    if (rv == RP_ENOTFOUND && !required) {
        out[0] = '\0';
        return 0;
    }
    if (rv != 0 || n == 0 || n >= cap)
        return rp_err(RP_EINVAL, "meta.%s: expected a string of 1-%zu bytes", key, cap - 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return rp_err(RP_EINVAL, "meta.%s: holds a control character (byte %zu)", key, i);
    }
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

struct meta_fields {
    char user[STATE_REC_TEXT_MAX + 1], login[STATE_REC_TEXT_MAX + 1];
    char hostname[STATE_REC_TEXT_MAX + 1], command[STATE_REC_COMMAND_MAX + 1];
    struct state_rec_meta m;
};

/* meta: {user, login, hostname, start (ms), cols, rows, interactive, command?}, every
 * field typed, nothing else. */
static int parse_meta(const msgpack_object *meta, struct meta_fields *f)
{
    static const char *const keys[] = {"user", "login", "hostname",    "start",
                                       "cols", "rows",  "interactive", "command"};
    if (meta->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "meta: expected a map");
    for (uint32_t i = 0; i < meta->via.map.size; i++) {
        size_t k;
        for (k = 0; k < sizeof keys / sizeof keys[0]; k++)
            if (rp_mp_str_eq(&meta->via.map.ptr[i].key, keys[k]))
                break;
        if (k == sizeof keys / sizeof keys[0])
            return rp_err(RP_EINVAL, "meta: unknown field; expected user, login, hostname, start, "
                                     "cols, rows, interactive, command");
    }
    int rv;
    uint64_t cols, rows;
    memset(f, 0, sizeof *f);
    if ((rv = meta_text(meta, "user", f->user, sizeof f->user, true)) != 0 ||
        (rv = meta_text(meta, "login", f->login, sizeof f->login, true)) != 0 ||
        (rv = meta_text(meta, "hostname", f->hostname, sizeof f->hostname, true)) != 0)
        return rv;
    const msgpack_object *cmd = rp_mp_get(meta, "command");
    if (cmd != NULL && cmd->type == MSGPACK_OBJECT_STR && cmd->via.str.size == 0)
        f->command[0] = '\0';
    else if ((rv = meta_text(meta, "command", f->command, sizeof f->command, false)) != 0)
        return rv;
    if (rp_mp_get_u64(meta, "start", &f->m.start) != 0 || f->m.start == 0)
        return rp_err(RP_EINVAL, "meta.start: expected the session's start in ms since the epoch");
    if (rp_mp_get_u64(meta, "cols", &cols) != 0 || rp_mp_get_u64(meta, "rows", &rows) != 0 ||
        cols > 65535 || rows > 65535)
        return rp_err(RP_EINVAL, "meta.cols, meta.rows: expected integers of 0-65535");
    if (rp_mp_get_bool(meta, "interactive", &f->m.interactive) != 0)
        return rp_err(RP_EINVAL, "meta.interactive: expected a boolean");
    f->m.user = f->user;
    f->m.login = f->login;
    f->m.hostname = f->hostname;
    f->m.command = f->command[0] ? f->command : NULL;
    f->m.cols = (uint32_t)cols;
    f->m.rows = (uint32_t)rows;
    return 0;
}

static void audit_upload(struct auth_server *s, const struct state_rec_info *info)
{
    struct audit_event e;
    audit_event_init(&e, "session.upload", "T2005I");
    audit_event_str(&e, "sid", info->sid);
    audit_event_str(&e, "server_id", info->server_id);
    audit_event_str(&e, "user", info->user[0] ? info->user : NULL);
    audit_event_str(&e, "login", info->login[0] ? info->login : NULL);
    audit_event_u64(&e, "chunks", info->chunks);
    audit_event_u64(&e, "bytes", info->bytes);
    audit_emit(s, &e, AUDIT_ASYNC);
}

int auth_h_rec_put(struct auth_req *r, struct rp_buf *out)
{
    struct auth_server *s = r->srv;
    char sid[STATE_REC_SID_LEN + 1];
    uint32_t seq = 0;
    bool last;
    const msgpack_object *data = rp_mp_get(r->args, "data");
    const msgpack_object *meta = rp_mp_get(r->args, "meta");
    struct meta_fields mf;
    int rv;
    /* The table admits Node identities only; the host id is what a recording is
     * bound to, so it must be there. */
    if (r->caller == NULL || r->caller->host_id == NULL || r->caller->host_id[0] == '\0' ||
        strlen(r->caller->host_id) > 63)
        return rp_err(RP_EDENIED, "rec_put: the caller has no host id");
    if ((rv = arg_sid(r->args, sid)) != 0 || (rv = arg_seq(r->args, &seq)) != 0)
        return rv;
    if (rp_mp_get_bool(r->args, "last", &last) != 0)
        return rp_err(RP_EINVAL, "last: expected a boolean (true on the final chunk)");
    if (data == NULL || data->type != MSGPACK_OBJECT_BIN)
        return rp_err(RP_EINVAL, "data: expected bin, one zstd frame of asciicast lines");
    bool has_meta = meta != NULL && meta->type != MSGPACK_OBJECT_NIL;
    if (has_meta && seq != 0)
        return rp_err(RP_EINVAL, "meta: only chunk 0 carries meta (this is chunk %u)", seq);
    if (!has_meta && seq == 0)
        return rp_err(RP_EINVAL, "meta: chunk 0 must carry the recording's meta");
    if (has_meta && (rv = parse_meta(meta, &mf)) != 0)
        return rv;
    struct auth_rec_chunk_info ci;
    if ((rv = auth_rec_chunk_check(data->via.bin.ptr, data->via.bin.size, seq == 0, &ci, NULL)) !=
        0) {
        char why[256];
        snprintf(why, sizeof why, "%s", rp_errmsg());
        return rp_err(rv, "recording %s chunk %u: %s", sid, seq, why);
    }

    /* A recording belongs to the host that stored its first chunk. Apply decides
     * (deterministically, under concurrency); this only answers early. */
    struct state_rec_info info;
    if (state_rec_info(s->state, sid, &info) == 0 &&
        strcmp(info.server_id, r->caller->host_id) != 0)
        return rp_err(RP_EDENIED, "recording %s belongs to host %s", sid, info.server_id);

    struct state_rec_put p = {.sid = sid,
                              .seq = seq,
                              .server_id = r->caller->host_id,
                              .data = data->via.bin.ptr,
                              .len = data->via.bin.size,
                              .last = last,
                              .meta = has_meta ? &mf.m : NULL,
                              .dur_ms = ci.last_ms,
                              .now_ms = rp_now_ms(),
                              .keep_ms = s->cfg->rec_retention_ms,
                              .max_bytes = s->cfg->rec_max_size};
    struct rp_buf cmd;
    struct state_result sr;
    rp_buf_init(&cmd);
    rv = state_rec_put_encode(&p, &cmd);
    if (rv == 0)
        rv = auth_propose(s, cmd.data, cmd.len, &sr);
    rp_buf_free(&cmd);
    if (rv != 0)
        return rv;
    if (sr.code != 0)
        return rp_err(sr.code, "%s", sr.message);
    bool stored = sr.n_changed > 0;
    /* Only the upload that stored the missing chunk can make it complete. */
    if (stored && state_rec_info(s->state, sid, &info) == 0 && info.complete) {
        rp_info("auth", "recording %s from %s complete: %u chunks, %llu bytes", sid, info.server_id,
                info.chunks, (unsigned long long)info.bytes);
        audit_upload(s, &info);
    }
    msgpack_packer pk;
    struct rp_mp_map m;
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_bool(&m, "stored", stored);
    rp_mp_map_end(&m);
    return 0;
}

struct list_ctx {
    struct rp_buf items;
    msgpack_packer pk;
    uint32_t n;
};

static int list_cb(void *arg, const struct state_rec_info *i)
{
    struct list_ctx *c = arg;
    struct rp_mp_map m;
    rp_mp_map_begin(&c->pk, &m);
    rp_mp_map_str(&m, "sid", i->sid);
    rp_mp_map_str(&m, "user", i->user);
    rp_mp_map_str(&m, "login", i->login);
    rp_mp_map_str(&m, "server_id", i->server_id);
    rp_mp_map_str(&m, "hostname", i->hostname);
    rp_mp_map_u64(&m, "start", i->start);
    if (i->complete)
        rp_mp_map_u64(&m, "end", i->start + i->dur_ms);
    rp_mp_map_u64(&m, "chunks", i->chunks);
    rp_mp_map_u64(&m, "bytes", i->bytes);
    rp_mp_map_bool(&m, "complete", i->complete);
    rp_mp_map_end(&m);
    c->n++;
    return 0;
}

int auth_h_rec_list(struct auth_req *r, struct rp_buf *out)
{
    uint64_t from = 0, to = 0, limit = 0;
    if (rp_mp_get_u64(r->args, "from", &from) == RP_EINVAL ||
        rp_mp_get_u64(r->args, "to", &to) == RP_EINVAL ||
        rp_mp_get_u64(r->args, "limit", &limit) == RP_EINVAL)
        return rp_err(RP_EINVAL, "from, to (ms) and limit must be non-negative integers");
    if (limit > REC_LIST_MAX)
        return rp_err(RP_EINVAL, "limit %llu is above the maximum of %d", (unsigned long long)limit,
                      REC_LIST_MAX);
    struct list_ctx c = {.n = 0};
    rp_buf_init(&c.items);
    rp_mp_packer_init(&c.pk, &c.items);
    int rv = state_rec_list(r->srv->state, from, to, limit ? (unsigned)limit : REC_LIST_DEFAULT,
                            list_cb, &c);
    if (rv == 0) {
        msgpack_packer pk;
        struct rp_mp_map m;
        auth_reply_ok(&m, &pk, out);
        msgpack_pack_array(rp_mp_map_key(&m, "items"), c.n);
        rp_buf_append(out, c.items.data, c.items.len);
        rp_mp_map_end(&m);
    }
    rp_buf_free(&c.items);
    return rv;
}

int auth_h_rec_get(struct auth_req *r, struct rp_buf *out)
{
    char sid[STATE_REC_SID_LEN + 1];
    uint32_t seq = 0;
    int rv;
    if ((rv = arg_sid(r->args, sid)) != 0 || (rv = arg_seq(r->args, &seq)) != 0)
        return rv;
    struct state_rec_info info;
    if ((rv = state_rec_info(r->srv->state, sid, &info)) != 0)
        return rv;
    struct rp_buf data;
    bool last = false;
    rp_buf_init(&data);
    rv = state_rec_chunk(r->srv->state, sid, seq, &data, &last);
    if (rv == 0) {
        /* How many chunks the recording has: all of them once the last is known,
         * else as many as the highest stored so far implies. */
        uint32_t chunks = info.has_last ? info.last_seq + 1 : info.max_seq + 1;
        msgpack_packer pk;
        struct rp_mp_map m;
        auth_reply_ok(&m, &pk, out);
        msgpack_pack_bin(rp_mp_map_key(&m, "data"), data.len);
        msgpack_pack_bin_body(&pk, data.data, data.len);
        rp_mp_map_bool(&m, "last", last);
        rp_mp_map_u64(&m, "chunks", chunks);
        rp_mp_map_bool(&m, "complete", info.complete);
        rp_mp_map_end(&m);
    }
    rp_buf_free(&data);
    return rv;
}

static int oldest_cb(void *arg, const struct state_rec_info *i)
{
    *(uint64_t *)arg = i->start;
    return 0;
}

int auth_rec_trim_due(struct auth_server *s)
{
    if (!auth_is_leader(s))
        return 0;
    /* A Raft entry only when something is due: the oldest recording is past the
     * retention, or the store is over the budget (max_size was lowered). */
    struct state_rec_stats st;
    uint64_t oldest = 0, now = rp_now_ms();
    if (state_rec_stats(s->state, &st) != 0 || st.recordings == 0 ||
        state_rec_list(s->state, 0, 0, 1, oldest_cb, &oldest) != 0)
        return 0;
    bool expired = now > s->cfg->rec_retention_ms && oldest < now - s->cfg->rec_retention_ms;
    if (!expired && st.bytes <= s->cfg->rec_max_size)
        return 0;
    struct rp_buf cmd;
    struct state_result sr;
    rp_buf_init(&cmd);
    int rv = state_rec_trim_encode(now, s->cfg->rec_retention_ms, s->cfg->rec_max_size, &cmd);
    if (rv == 0)
        rv = auth_propose(s, cmd.data, cmd.len, &sr);
    rp_buf_free(&cmd);
    if (rv == 0 && sr.n_changed > 0)
        rp_info("auth", "recordings: removed %u past the retention or the budget", sr.n_changed);
    return rv;
}
