/* auth/store_api.c: the resource methods of the auth API: get, list, the
 * writes, and watch streams. */
#include <poll.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/internal.h"
#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

static void copy_state_result(void *arg, void *fsm_result)
{
    if (fsm_result != NULL)
        memcpy(arg, fsm_result, sizeof(struct state_result));
}

int auth_propose(struct auth_server *s, const void *cmd, size_t len, struct state_result *res)
{
    return auth_propose_term(s, cmd, len, res, NULL);
}

int auth_propose_term(struct auth_server *s, const void *cmd, size_t len, struct state_result *res,
                      uint64_t *term)
{
    /* statfs at most every 100 ms while there is room: a write at 7,000/s paid a
     * system call each for an answer that changes slowly. When space is short,
     * every write looks again. */
    uint64_t free_bytes = 0, now = rp_mono_ms();
    bool recent = now < atomic_load(&s->disk_ok_until);
    if (!recent && rp_disk_free(s->data_dir, &free_bytes, NULL) == 0 &&
        free_bytes < s->cfg->min_free_disk) {
        if (!s->low_disk_warned)
            rp_error("auth", "refusing writes: %s has %llu MB free, below min_free_disk %llu MB",
                     s->data_dir, (unsigned long long)(free_bytes >> 20),
                     (unsigned long long)(s->cfg->min_free_disk >> 20));
        s->low_disk_warned = true;
        return rp_err(RP_ENOSPC,
                      "auth server data_dir has %llu MB free, below auth_service.min_free_disk "
                      "(%llu MB): writes are refused until space is freed",
                      (unsigned long long)(free_bytes >> 20),
                      (unsigned long long)(s->cfg->min_free_disk >> 20));
    }
    if (!recent)
        atomic_store(&s->disk_ok_until, now + 100);
    s->low_disk_warned = false;
    /* Single-resource writes may share an entry with concurrent ones (group
     * commit); the key keeps two writes of one resource apart. */
    uint64_t key = 0;
    int rv = state_space_check(s->state, len);
    if (rv != 0)
        return rv;
    if ((rv = state_command_key(cmd, len, &key)) != 0)
        return rv;
    memset(res, 0, sizeof *res);
    res->code = RP_EUNKNOWN;
    rv = rp_node_apply_grouped(s->node, cmd, len, key, AUTH_APPLY_TIMEOUT_MS, copy_state_result,
                               res, term);
    if (rv == RP_EUNKNOWN)
        return rp_err(RP_EUNKNOWN,
                      "leadership changed before the write was confirmed: it may or may not "
                      "have been applied; retry with the same request id");
    return rv;
}

int auth_propose_cmd(struct auth_server *s, const struct state_cmd *c, struct state_result *sr)
{
    struct state_result local;
    struct rp_buf cmd;
    if (sr == NULL)
        sr = &local;
    rp_buf_init(&cmd);
    int rv = state_cmd_encode(c, &cmd);
    if (rv == 0)
        rv = auth_propose(s, cmd.data, cmd.len, sr);
    if (cmd.data)
        OPENSSL_cleanse(cmd.data, cmd.cap); /* commands may carry keys or hashes */
    rp_buf_free(&cmd);
    if (rv == 0 && sr->code != 0)
        rv = rp_err(sr->code, "%s", sr->message[0] ? sr->message : rp_strerror(sr->code));
    return rv;
}

int auth_route_read(struct auth_req *r, struct rp_buf *out)
{
    bool stale = false;
    rp_mp_get_bool(r->args, "stale", &stale);
    if (stale)
        return 0;
#ifdef RP_TEST_STALE_READS
    /* Test-only build (build/raftport-stale, never shipped): a follower answers
     * from its own state without asking the leader. The Jepsen harness must
     * catch this as non-linearizable (tests/test_jepsen_smoke.c). */
    if (!auth_is_leader(r->srv))
        return 0;
#endif
    if (!auth_is_leader(r->srv)) {
        if (r->from_peer)
            return rp_err(RP_ENOTLEADER, "not the leader");
        int rv = auth_forward_req(r, out);
        return rv == 0 ? 1 : rv;
    }
    int rv = rp_node_barrier(r->srv->node, AUTH_READ_TIMEOUT_MS);
    if (rv != 0)
        return rp_err(rv, "linearizable read: %s", rp_errmsg());
    return 0;
}

int auth_h_get(struct auth_req *r, struct rp_buf *out)
{
    char kind[64], name[256];
    int rv;
    if ((rv = auth_arg_str(r->args, "kind", kind, sizeof kind, true)) != 0 ||
        (rv = auth_arg_str(r->args, "name", name, sizeof name, true)) != 0)
        return rv;
    /* Routed by the method table (AUTH_ROUTE_READ) before this handler runs. */
    bool with_secrets = false;
    rp_mp_get_bool(r->args, "with_secrets", &with_secrets);
    enum auth_view view = auth_view_of(r->caller, kind, strlen(kind), with_secrets);
    if (view == AUTH_VIEW_NONE)
        return rp_err(RP_EDENIED, "%s resources hold secrets: %s", kind,
                      auth_caller_is_admin(r->caller) ? "ask with --with-secrets"
                                                      : "not readable with this identity");
    struct rp_buf res, shown;
    uint64_t rev = 0;
    rp_buf_init(&res);
    rp_buf_init(&shown);
    rv = state_get(r->srv->state, kind, name, &res, &rev);
    if (rv == RP_ENOTFOUND)
        rv = rp_err(RP_ENOTFOUND, "%s/%s not found", kind, name);
    if (rv == 0)
        rv = auth_view_append(view, res.data, res.len, &shown);
    if (rv == 0) {
        msgpack_packer pk;
        struct rp_mp_map m;
        auth_reply_ok(&m, &pk, out);
        rp_mp_map_raw(&m, "res", shown.data, shown.len);
        rp_mp_map_u64(&m, "rev", rev);
        rp_mp_map_end(&m);
    }
    if (res.data)
        OPENSSL_cleanse(res.data, res.cap);
    rp_buf_free(&res);
    rp_buf_free(&shown);
    return rv;
}

struct list_ctx {
    struct rp_buf items;
    uint32_t n;
    const struct rp_identity *caller;
    bool with_secrets;
};

static int list_cb(void *arg, const void *res, size_t len)
{
    struct list_ctx *lc = arg;
    struct state_res_meta meta;
    int rv = state_resource_check(res, len, &meta);
    if (rv != 0)
        return rv;
    enum auth_view view = auth_view_of(lc->caller, meta.kind, meta.kind_len, lc->with_secrets);
    if (view == AUTH_VIEW_NONE)
        return 0;
    lc->n++;
    return auth_view_append(view, res, len, &lc->items);
}

int auth_h_list(struct auth_req *r, struct rp_buf *out)
{
    char kind[64], prefix[256];
    uint64_t limit = 0;
    int rv;
    if ((rv = auth_arg_str(r->args, "kind", kind, sizeof kind, false)) != 0 ||
        (rv = auth_arg_str(r->args, "prefix", prefix, sizeof prefix, false)) != 0)
        return rv;
    rv = rp_mp_get_u64(r->args, "limit", &limit);
    if (rv == RP_EINVAL)
        return rv;
    /* Routed by the method table (AUTH_ROUTE_READ) before this handler runs. */
    struct list_ctx lc = {.n = 0, .caller = r->caller};
    uint64_t rev = 0;
    rp_mp_get_bool(r->args, "with_secrets", &lc.with_secrets);
    if (kind[0] && auth_view_of(r->caller, kind, strlen(kind), lc.with_secrets) == AUTH_VIEW_NONE)
        return rp_err(RP_EDENIED, "%s resources hold secrets: %s", kind,
                      auth_caller_is_admin(r->caller) ? "ask with --with-secrets"
                                                      : "not readable with this identity");
    rp_buf_init(&lc.items);
    rv = state_list(r->srv->state, kind[0] ? kind : NULL, prefix[0] ? prefix : NULL,
                    limit > 100000 ? 100000 : (unsigned)limit, list_cb, &lc, &rev);
    if (rv == 0 && lc.items.len > RP_FRAME_MAX - 4096)
        rv =
            rp_err(RP_ETOOBIG, "answer of %zu bytes exceeds the frame limit: use a limit or prefix",
                   lc.items.len);
    if (rv == 0) {
        msgpack_packer pk;
        struct rp_mp_map m;
        auth_reply_ok(&m, &pk, out);
        msgpack_pack_array(rp_mp_map_key(&m, "items"), lc.n);
        rp_buf_append(out, lc.items.data, lc.items.len);
        rp_mp_map_u64(&m, "rev", rev);
        rp_mp_map_end(&m);
    }
    rp_buf_free(&lc.items);
    return rv;
}

/* What a write changed, for the audit log: kind and name of each resource. */
/* The writes of one request, each audited once the command commits: a batch may hold
 * STATE_MAX_BATCH ops, and every one gets its event, so the log grows as needed. */
struct write_log {
    struct write_item {
        char op[8];
        struct auth_admitted what;
    } * items;
    size_t n, cap;
    bool oom; /* an item could not be kept: the write is refused rather than unaudited */
};

static void log_write(struct write_log *wl, const char *op, const char *kind, const char *name)
{
    if (wl->n == wl->cap) {
        /* Not realloc: a token's name is its secret, and the old block is wiped. */
        size_t cap = wl->cap ? wl->cap * 2 : 4;
        struct write_item *v = malloc(cap * sizeof *v);
        if (v == NULL) {
            wl->oom = true;
            return;
        }
        if (wl->n > 0)
            memcpy(v, wl->items, wl->n * sizeof *v);
        if (wl->items != NULL)
            OPENSSL_cleanse(wl->items, wl->cap * sizeof *v);
        free(wl->items);
        wl->items = v;
        wl->cap = cap;
    }
    snprintf(wl->items[wl->n].op, sizeof wl->items[wl->n].op, "%s", op);
    snprintf(wl->items[wl->n].what.kind, sizeof wl->items[wl->n].what.kind, "%s", kind);
    snprintf(wl->items[wl->n].what.name, sizeof wl->items[wl->n].what.name, "%s", name);
    wl->n++;
}

static bool op_has_res(const char *op)
{
    return strcmp(op, "put") == 0 || strcmp(op, "create") == 0 || strcmp(op, "update") == 0 ||
           strcmp(op, "cas") == 0;
}

static bool op_is_delete(const char *op)
{
    return strcmp(op, "delete") == 0 || strcmp(op, "cdelete") == 0;
}

/* One write (a request, or one op of a batch) as a state command appended to @cmd:
 * only known fields travel, and a resource only in the form admission made of it.
 * @rid is NULL inside a batch. */
static int build_op(struct auth_req *r, const char *op, const msgpack_object *args, const char *rid,
                    struct rp_buf *cmd, struct write_log *wl, struct auth_warnings *warnings)
{
    char kind[64], name[256];
    struct state_cmd c = {.op = op, .rid = rid};
    struct rp_buf res;
    int rv;
    rp_buf_init(&res);
    if (op_has_res(op)) {
        struct auth_admitted who;
        const msgpack_object *o = rp_mp_get(args, "res");
        if (o == NULL || o->type != MSGPACK_OBJECT_MAP) {
            rv = rp_err(RP_EINVAL, "argument 'res' (a resource map) is required for %s", op);
            goto out;
        }
        if ((rv = auth_admit_resource(r->srv, op, o, &res, &who, warnings)) != 0)
            goto out;
        log_write(wl, op, who.kind, who.name);
        c.res = res.data;
        c.res_len = res.len;
    } else if (op_is_delete(op)) {
        if ((rv = auth_arg_str(args, "kind", kind, sizeof kind, true)) != 0 ||
            (rv = auth_arg_str(args, "name", name, sizeof name, true)) != 0)
            goto out;
        c.kind = kind;
        c.name = name;
        log_write(wl, op, kind, name);
    } else {
        rv = rp_err(RP_EINVAL, "unknown write '%s'", op);
        goto out;
    }
    if (strcmp(op, "cas") == 0 || strcmp(op, "cdelete") == 0) {
        rv = rp_mp_get_u64(args, "rev", &c.rev);
        if (rv != 0) {
            rv = rp_err(RP_EINVAL, "argument 'rev' (expected revision) is required for %s", op);
            goto out;
        }
    }
    rv = state_cmd_encode(&c, cmd);
out:
    if (res.data)
        OPENSSL_cleanse(res.data, res.cap); /* a token's name is its secret */
    rp_buf_free(&res);
    return rv;
}

/* Turns the request into a state command. A batch is decoded op by op, so each of
 * its resources is admitted exactly as a single write's would be. */
static int build_command(struct auth_req *r, const char *op, struct rp_buf *cmd,
                         struct write_log *wl, struct auth_warnings *warnings)
{
    char rid[80];
    int rv;
    if ((rv = auth_arg_str(r->args, "rid", rid, sizeof rid, false)) != 0)
        return rv;
    if (rid[0] == '\0')
        auth_new_rid(rid); /* not retry-safe, but a client that sends no rid never retries */
    if (strcmp(op, "batch") != 0)
        return build_op(r, op, r->args, rid, cmd, wl, warnings);

    const msgpack_object *o = rp_mp_get(r->args, "ops");
    if (o == NULL || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size == 0 ||
        o->via.array.size > STATE_MAX_BATCH)
        return rp_err(RP_EINVAL, "argument 'ops' (an array of 1-%d commands) is required",
                      STATE_MAX_BATCH);
    struct rp_buf ops;
    rp_buf_init(&ops);
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *sub = &o->via.array.ptr[i];
        char sub_op[16];
        if (sub->type != MSGPACK_OBJECT_MAP) {
            rv = rp_err(RP_EINVAL, "ops[%u]: expected a command map", i);
            goto out;
        }
        if ((rv = auth_arg_str(sub, "op", sub_op, sizeof sub_op, true)) != 0) {
            rv = rp_err(rv, "ops[%u]: %s", i, rp_errmsg());
            goto out;
        }
        if (!op_has_res(sub_op) && !op_is_delete(sub_op)) {
            rv = rp_err(RP_EINVAL,
                        "ops[%u]: op '%s' cannot be batched, expected put, create, "
                        "update, cas, delete or cdelete",
                        i, sub_op);
            goto out;
        }
        if ((rv = build_op(r, sub_op, sub, NULL, &ops, wl, warnings)) != 0) {
            rv = rp_err(rv, "ops[%u]: %s", i, rp_errmsg());
            goto out;
        }
    }
    struct state_cmd c = {
        .op = "batch", .rid = rid, .ops = ops.data, .ops_len = ops.len, .n_ops = o->via.array.size};
    rv = state_cmd_encode(&c, cmd);
out:
    if (ops.data)
        OPENSSL_cleanse(ops.data, ops.cap);
    rp_buf_free(&ops);
    return rv;
}

/* Writes of roles, users and tokens through the generic API (tctl create / rm) are
 * audited under Teleport's event names. A token's name is its value: the event
 * names it by a hash prefix (auth_token_label) only. */
static void audit_write(struct auth_req *r, const char *op, const char *kind, const char *name)
{
    bool del = op_is_delete(op), create = strcmp(op, "create") == 0;
    bool token = strcmp(kind, AUTH_KIND_TOKEN) == 0;
    const char *type = NULL, *code = NULL;
    if (strcmp(kind, "role") == 0) {
        type = del ? "role.deleted" : "role.created";
        code = del ? "T9001I" : "T9000I";
    } else if (strcmp(kind, "user") == 0) {
        type = del ? "user.delete" : create ? "user.create" : "user.update";
        code = del ? "T1004I" : create ? "T1002I" : "T1003I";
    } else if (token) {
        type = del ? "join_token.delete" : "join_token.create";
        code = del ? "TJT01I" : "TJT00I";
    } else {
        return;
    }
    struct audit_event e;
    char label[AUTH_TOKEN_LABEL_LEN];
    audit_event_init(&e, type, code);
    audit_event_str(&e, "user", r->caller ? r->caller->name : "?");
    if (token) {
        auth_token_label(name, strlen(name), label);
        audit_event_str(&e, "token_name", label);
    } else {
        audit_event_str(&e, "name", name);
    }
    audit_event_str(&e, "addr.remote", r->remote);
    audit_emit(r->srv, &e, AUDIT_WAIT);
}

int auth_h_write(struct auth_req *r, const char *op, struct rp_buf *out)
{
    struct rp_buf cmd;
    struct state_result res;
    struct auth_warnings warnings = {.n = 0};
    struct write_log log = {0}, *wl = &log;
    rp_buf_init(&cmd);
    int rv = build_command(r, op, &cmd, wl, &warnings);
    if (rv == 0 && wl->oom)
        rv = rp_err(RP_ENOMEM, "keeping the write's audit record");
    if (rv == 0)
        rv = auth_propose(r->srv, cmd.data, cmd.len, &res);
    if (cmd.data)
        OPENSSL_cleanse(cmd.data, cmd.cap);
    rp_buf_free(&cmd);
    if (rv != 0)
        goto out;
    msgpack_packer pk;
    struct rp_mp_map m;
    if (res.code != 0) {
        rp_buf_reset(out);
        rp_mp_packer_init(&pk, out);
        rp_mp_map_begin(&pk, &m);
        rp_mp_map_bool(&m, "ok", false);
        rp_mp_map_str(&m, "code", rp_strerror(res.code));
        rp_mp_map_str(&m, "error", res.message[0] ? res.message : rp_strerror(res.code));
        rp_mp_map_u64(&m, "rev", res.revision);
        rp_mp_map_u64(&m, "current_rev", res.current_rev);
        rp_mp_map_u64(&m, "failed_op", res.failed_op);
        rp_mp_map_end(&m);
        goto out;
    }
    for (size_t i = 0; i < wl->n; i++)
        audit_write(r, wl->items[i].op, wl->items[i].what.kind, wl->items[i].what.name);
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_u64(&m, "rev", res.revision);
    rp_mp_map_u64(&m, "changed", res.n_changed);
    if (warnings.n) {
        msgpack_pack_array(rp_mp_map_key(&m, "warnings"), (uint32_t)warnings.n);
        for (size_t i = 0; i < warnings.n; i++)
            rp_mp_pack_str(&pk, warnings.msg[i]);
    }
    rp_mp_map_end(&m);
out:
    auth_warnings_free(&warnings);
    if (wl->items != NULL)
        OPENSSL_cleanse(wl->items, wl->cap * sizeof *wl->items);
    free(wl->items);
    return rv;
}

static const char *event_name(enum state_event_type t)
{
    switch (t) {
    case STATE_EV_INIT_PUT:
        return "init_put";
    case STATE_EV_INIT_DONE:
        return "init_done";
    case STATE_EV_PUT:
        return "put";
    case STATE_EV_DELETE:
        return "delete";
    case STATE_EV_REINIT:
        return "reinit";
    }
    return "unknown";
}

static int send_event(struct rp_conn *c, const struct state_event *ev, struct rp_buf *out)
{
    msgpack_packer pk;
    struct rp_mp_map m;
    bool has_res = ev->type == STATE_EV_INIT_PUT || ev->type == STATE_EV_PUT;
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_str(&m, "ev", event_name(ev->type));
    rp_mp_map_u64(&m, "rev", ev->revision);
    if (has_res || ev->type == STATE_EV_DELETE) {
        rp_mp_map_str(&m, "kind", ev->kind);
        rp_mp_map_str(&m, "name", ev->name);
    }
    if (has_res)
        rp_mp_map_raw(&m, "res", ev->res.data, ev->res.len);
    rp_mp_map_end(&m);
    return rp_conn_write_frame(c, out->data, out->len);
}

int auth_h_watch(struct auth_req *r)
{
    struct state_watch_opts wo = {0};
    const char *kinds[16];
    char kind_store[16][64];
    char prefix[256];
    struct rp_buf out;
    int rv;
    rp_buf_init(&out);

    const msgpack_object *k = rp_mp_get(r->args, "kinds");
    if (k != NULL && k->type == MSGPACK_OBJECT_ARRAY) {
        if (k->via.array.size > 16) {
            rv = rp_err(RP_EINVAL, "at most 16 kinds per watch, got %u", k->via.array.size);
            goto reply_err;
        }
        for (uint32_t i = 0; i < k->via.array.size; i++) {
            const msgpack_object *o = &k->via.array.ptr[i];
            if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 || o->via.str.size >= 64) {
                rv = rp_err(RP_EINVAL, "kinds[%u] must be a kind name of 1-63 bytes", i);
                goto reply_err;
            }
            memcpy(kind_store[i], o->via.str.ptr, o->via.str.size);
            kind_store[i][o->via.str.size] = '\0';
            kinds[i] = kind_store[i];
        }
        wo.kinds = kinds;
        wo.n_kinds = k->via.array.size;
    } else if (k != NULL && k->type != MSGPACK_OBJECT_NIL) {
        rv = rp_err(RP_EINVAL, "argument 'kinds' must be an array of kind names");
        goto reply_err;
    }
    if ((rv = auth_arg_str(r->args, "prefix", prefix, sizeof prefix, false)) != 0)
        goto reply_err;
    wo.prefix = prefix[0] ? prefix : NULL;
    rv = rp_mp_get_u64(r->args, "start_rev", &wo.start_rev);
    if (rv == RP_EINVAL)
        goto reply_err;

    struct state_watch *w;
    rv = state_watch_open(r->srv->state, &wo, &w);
    if (rv != 0)
        goto reply_err;
    struct state_event ev;
    state_event_init(&ev);
    rp_conn_set_timeout(r->conn, AUTH_READ_TIMEOUT_MS);
    while (!atomic_load(&r->srv->stopping)) {
        rv = state_watch_next(w, &ev, 0);
        if (rv == 0) {
            bool last = ev.type == STATE_EV_REINIT;
            bool named = ev.type == STATE_EV_INIT_PUT || ev.type == STATE_EV_PUT ||
                         ev.type == STATE_EV_DELETE;
            enum auth_view view =
                named ? auth_view_of(r->caller, ev.kind, strlen(ev.kind), false) : AUTH_VIEW_FULL;
            if (view == AUTH_VIEW_NONE) { /* secrets: not even that they changed */
                state_event_free(&ev);
                state_event_init(&ev);
                continue;
            }
            if (view == AUTH_VIEW_REDACTED && ev.res.len > 0) {
                struct rp_buf red;
                rp_buf_init(&red);
                if (auth_view_append(view, ev.res.data, ev.res.len, &red) == 0) {
                    OPENSSL_cleanse(ev.res.data, ev.res.cap);
                    rp_buf_free(&ev.res);
                    ev.res = red;
                } else {
                    rp_buf_free(&red);
                    state_event_free(&ev);
                    state_event_init(&ev);
                    continue;
                }
            }
            rv = send_event(r->conn, &ev, &out);
            state_event_free(&ev);
            state_event_init(&ev);
            if (rv != 0 || last)
                break;
            continue;
        }
        if (rv != RP_ETIMEDOUT)
            break;
        /* Nothing queued: wait for an event, for the client to go away, or for stop. */
        struct pollfd pfd[2] = {{.fd = state_watch_fd(w), .events = POLLIN},
                                {.fd = r->conn->fd, .events = POLLIN}};
        int n = poll(pfd, 2, 500);
        if (n > 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)))
            break; /* a watcher sends nothing: readable means closed */
    }
    state_event_free(&ev);
    state_watch_close(w);
    rp_buf_free(&out);
    return 0;

reply_err:
    auth_reply_error(&out, rv, rp_errmsg());
    rp_conn_write_frame(r->conn, out.data, out.len);
    rp_buf_free(&out);
    return rv;
}
