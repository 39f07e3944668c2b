/* auth/dispatch.c: one request frame in, one answer out: parsing, the method
 * table, authorization and the call of the method's handler. */
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

/* ---- authorization ------------------------------------------------------ */

enum access { ACCESS_ANON, ACCESS_READ, ACCESS_ALL };

struct method {
    const char *name;
    enum access need;
};

static const struct method methods[] = {
    {"ping", ACCESS_ANON},       {"join", ACCESS_ANON},      {"get", ACCESS_READ},
    {"list", ACCESS_READ},       {"watch", ACCESS_READ},     {"member_status", ACCESS_READ},
    {"status", ACCESS_READ},     {"put", ACCESS_ALL},        {"create", ACCESS_ALL},
    {"update", ACCESS_ALL},      {"cas", ACCESS_ALL},        {"delete", ACCESS_ALL},
    {"cdelete", ACCESS_ALL},     {"batch", ACCESS_ALL},      {"token_add", ACCESS_ALL},
    {"member_rm", ACCESS_ALL},   {"events", ACCESS_ALL},     {"audit_append", ACCESS_ALL},
    {"user_add", ACCESS_ALL},    {"user_update", ACCESS_ALL}, {"user_rm", ACCESS_ALL},
    {"user_reset", ACCESS_ALL},  {"invite_redeem", ACCESS_ANON}, {"sign_host", ACCESS_ALL},
    {"sign_user", ACCESS_ALL},   {"authenticate", ACCESS_ANON},
};

static enum access caller_access(const struct rp_identity *id)
{
    if (id == NULL)
        return ACCESS_ANON;
    if (rp_identity_has_group(id, RP_ROLE_ADMIN) || rp_identity_has_group(id, RP_ROLE_AUTH))
        return ACCESS_ALL;
    if (rp_identity_has_group(id, RP_ROLE_PROXY) || rp_identity_has_group(id, RP_ROLE_NODE))
        return ACCESS_READ;
    return ACCESS_ANON;
}

bool auth_caller_is_admin(const struct rp_identity *id)
{
    return caller_access(id) == ACCESS_ALL;
}

/* True unless the state says @host_id is no auth server of this cluster. */
static bool auth_server_known(struct auth_server *s, const char *host_id)
{
    struct rp_buf rec;
    rp_buf_init(&rec);
    int rv = state_get(s->state, AUTH_KIND_AUTH_SERVER, host_id, &rec, NULL);
    rp_buf_free(&rec);
    return rv != RP_ENOTFOUND;
}

/* Every denial is audited ("auth", T3007W: a failed authorization), without
 * waiting: a flood of refused calls must not stall the server, and the queue
 * drops what it cannot hold (counted in the audit stats). */
static void audit_denial(struct auth_server *s, const struct rp_identity *caller,
                         const char *remote, const char *method, const char *why)
{
    struct audit_event e;
    audit_event_init(&e, "auth", "T3007W");
    audit_event_str(&e, "user", caller ? caller->name : "anonymous");
    audit_event_str(&e, "method", method);
    audit_event_str(&e, "addr.remote", remote);
    audit_event_bool(&e, "success", false);
    audit_event_str(&e, "error", why);
    audit_emit(s, &e, AUDIT_ASYNC);
}

/* ---- dispatch ----------------------------------------------------------- */

static int strs_from(const msgpack_object *arr, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (arr == NULL || arr->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (arr->type != MSGPACK_OBJECT_ARRAY || arr->via.array.size > 256)
        return rp_err(RP_EINVAL, "_as: groups and logins must be arrays of at most 256 strings");
    *out = calloc(arr->via.array.size + 1, sizeof **out);
    if (*out == NULL)
        return rp_err(RP_ENOMEM, "_as");
    for (uint32_t i = 0; i < arr->via.array.size; i++) {
        const msgpack_object *o = &arr->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 || o->via.str.size > 255)
            return rp_err(RP_EINVAL, "_as: groups and logins must be strings of 1-255 bytes");
        (*out)[i] = strndup(o->via.str.ptr, o->via.str.size);
        (*n)++;
        if ((*out)[i] == NULL)
            return rp_err(RP_ENOMEM, "_as");
    }
    return 0;
}

/* The identity a follower forwarded a request for ("_as", auth/forward.c): its
 * address into @addr, and, unless the original caller was anonymous, its
 * identity into @id (*@has_id). Only trusted from an Auth connection. */
static int identity_from_as(const msgpack_object *as, struct rp_identity *id, bool *has_id,
                            char *addr, size_t addrlen)
{
    const char *s;
    size_t n;
    memset(id, 0, sizeof *id);
    *has_id = false;
    if (as->type != MSGPACK_OBJECT_MAP || rp_mp_get_str(as, "addr", &s, &n) != 0 || n == 0 ||
        n >= addrlen)
        return rp_err(RP_EINVAL, "_as: expected a map with the client's addr");
    memcpy(addr, s, n);
    addr[n] = '\0';
    if (rp_mp_get(as, "name") == NULL)
        return 0; /* anonymous */
    int rv = rp_mp_get_strdup(as, "name", &id->name);
    if (rv != 0 || id->name[0] == '\0')
        return rp_err(RP_EINVAL, "_as: name must be a non-empty string");
    *has_id = true;
    if ((rv = strs_from(rp_mp_get(as, "groups"), &id->groups, &id->n_groups)) != 0 ||
        (rv = strs_from(rp_mp_get(as, "logins"), &id->logins, &id->n_logins)) != 0)
        return rv;
    if (rp_mp_get_str(as, "cluster", &s, &n) == 0 && (id->cluster = strndup(s, n)) == NULL)
        return rp_err(RP_ENOMEM, "_as");
    if (rp_mp_get_str(as, "route_cluster", &s, &n) == 0 &&
        (id->route_cluster = strndup(s, n)) == NULL)
        return rp_err(RP_ENOMEM, "_as");
    return 0;
}

/* Serves one request frame; writes the answer into @out. Returns 1 if the
 * connection was turned into a watch stream (and is finished), 0 otherwise. */
int auth_serve_frame(struct auth_server *s, struct rp_conn *c, struct rp_identity *caller,
                       const struct rp_buf *frame, struct rp_buf *out)
{
    msgpack_unpacked msg;
    int rv = rp_mp_parse(frame->data, frame->len, &msg);
    if (rv != 0) {
        auth_reply_error(out, RP_EINVAL, rp_errmsg());
        return 0;
    }
    const msgpack_object *args = &msg.data;
    char m[32];
    struct rp_identity as_id;
    bool as_used = false;
    memset(&as_id, 0, sizeof as_id);
    if (args->type != MSGPACK_OBJECT_MAP) {
        auth_reply_error(out, RP_EINVAL, "request must be a map with a method \"m\"");
        goto done;
    }
    if (auth_arg_str(args, "m", m, sizeof m, true) != 0) {
        auth_reply_error(out, RP_EINVAL, rp_errmsg());
        goto done;
    }
    /* The connection's own identity decides whether "_as" is believed; the
     * identity it carries then decides what the request may do. */
    bool peer = caller && rp_identity_has_group(caller, RP_ROLE_AUTH);
    const char *remote = c->peer;
    char as_addr[128];
    const msgpack_object *as = rp_mp_get(args, "_as");
    if (as != NULL) {
        bool has_id = false;
        if (!peer) {
            audit_denial(s, caller, c->peer, m, "'_as' from a client that is not an auth server");
            auth_reply_error(out, RP_EDENIED,
                             "access denied: only auth servers may forward requests ('_as')");
            goto done;
        }
        if (identity_from_as(as, &as_id, &has_id, as_addr, sizeof as_addr) != 0) {
            auth_reply_error(out, RP_EINVAL, rp_errmsg());
            goto done;
        }
        as_used = true;
        remote = as_addr;
    }
    const struct method *meth = NULL;
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        if (strcmp(methods[i].name, m) == 0)
            meth = &methods[i];
    }
    if (meth == NULL) {
        char msgbuf[96];
        snprintf(msgbuf, sizeof msgbuf, "unknown method '%s'", m);
        auth_reply_error(out, RP_EINVAL, msgbuf);
        goto done;
    }
    /* An auth server's certificate is long-lived; once the server is removed from the
     * cluster its record goes, and so does what its certificate may do here. */
    if (caller && rp_identity_has_group(caller, RP_ROLE_AUTH) && !auth_server_known(s, caller->name)) {
        rp_warn("auth", "denied %s from %s: auth server %s is not a member of this cluster", m,
                c->peer, caller->name);
        audit_denial(s, caller, c->peer, m, "auth server is not a member of the cluster");
        auth_reply_error(out, RP_EDENIED, "access denied: this auth server is not a member of the cluster");
        goto done;
    }
    struct rp_identity *conn_caller = caller;
    if (as_used)
        caller = as_id.name ? &as_id : NULL;
    /* A user's identity: its roles' rules decide, request by request. */
    if (caller_access(caller) < meth->need && auth_is_user_identity(caller) &&
        meth->need != ACCESS_ANON) {
        if (auth_authorize_user(s, caller, m, args) != 0) {
            char why[512];
            snprintf(why, sizeof why, "%s", rp_errmsg());
            rp_warn("auth", "denied %s from %s (%s): %s", m, remote, caller->name, why);
            audit_denial(s, caller, remote, m, why);
            auth_reply_error(out, RP_EDENIED, why);
            goto done;
        }
    } else if (caller_access(caller) < meth->need) {
        char msgbuf[256];
        snprintf(msgbuf, sizeof msgbuf, "%s: %s is not allowed to call %s",
                 caller ? "access denied" : "access denied (no client certificate)",
                 caller ? caller->name : "anonymous", m);
        rp_warn("auth", "denied %s from %s (%s)", m, remote, caller ? caller->name : "anonymous");
        audit_denial(s, caller, remote, m, msgbuf);
        auth_reply_error(out, RP_EDENIED, msgbuf);
        goto done;
    }
    struct auth_req r = {
        .srv = s,
        .args = args,
        .raw = frame->data,
        .raw_len = frame->len,
        .caller = caller,
        .from_peer = conn_caller && rp_identity_has_group(conn_caller, RP_ROLE_AUTH),
        .conn = c,
        .remote = remote,
    };
    rp_err_clear();
    if (strcmp(m, "watch") == 0) {
        rv = auth_h_watch(&r);
        msgpack_unpacked_destroy(&msg);
        rp_identity_free(&as_id);
        return 1;
    }
    if (strcmp(m, "ping") == 0)
        rv = auth_h_ping(&r, out);
    else if (strcmp(m, "get") == 0)
        rv = auth_h_get(&r, out);
    else if (strcmp(m, "list") == 0)
        rv = auth_h_list(&r, out);
    else if (strcmp(m, "status") == 0)
        rv = auth_h_status(&r, out);
    else if (strcmp(m, "member_status") == 0)
        rv = auth_h_member_status(&r, out);
    else if (strcmp(m, "token_add") == 0)
        rv = auth_h_token_add(&r, out);
    else if (strcmp(m, "join") == 0)
        rv = auth_h_join(&r, out);
    else if (strcmp(m, "member_rm") == 0)
        rv = auth_h_member_rm(&r, out);
    else if (strcmp(m, "events") == 0)
        rv = auth_h_events(&r, out);
    else if (strcmp(m, "audit_append") == 0)
        rv = auth_h_audit_append(&r, out);
    else if (strcmp(m, "user_add") == 0)
        rv = auth_h_user_add(&r, out);
    else if (strcmp(m, "user_update") == 0)
        rv = auth_h_user_update(&r, out);
    else if (strcmp(m, "user_rm") == 0)
        rv = auth_h_user_rm(&r, out);
    else if (strcmp(m, "user_reset") == 0)
        rv = auth_h_user_reset(&r, out);
    else if (strcmp(m, "invite_redeem") == 0)
        rv = auth_h_invite_redeem(&r, out);
    else if (strcmp(m, "sign_host") == 0)
        rv = auth_h_sign_host(&r, out);
    else if (strcmp(m, "sign_user") == 0)
        rv = auth_h_sign_user(&r, out);
    else if (strcmp(m, "authenticate") == 0)
        rv = auth_h_authenticate(&r, out);
    else
        rv = auth_h_write(&r, m, out);
    if (rv != 0)
        auth_reply_error(out, rv, rp_errmsg());
done:
    msgpack_unpacked_destroy(&msg);
    rp_identity_free(&as_id);
    return 0;
}

