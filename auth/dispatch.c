/* auth/dispatch.c: one request frame in, one answer out: parsing, the method
 * table (auth/authz.h), who is calling (membership, locks, forwarded identities),
 * authorization, routing in the Raft group, and the call of the method's handler. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/authz.h"
#include "auth/internal.h"
#include "auth/locks.h"
#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

/* ---- the method table ----------------------------------------------------- */

static int h_put(struct auth_req *r, struct rp_buf *out)
{
    return auth_h_write(r, r->write_op ? r->write_op : "put", out);
}
static int h_create(struct auth_req *r, struct rp_buf *out)
{
    return auth_h_write(r, "create", out);
}
static int h_update(struct auth_req *r, struct rp_buf *out)
{
    return auth_h_write(r, "update", out);
}
static int h_cas(struct auth_req *r, struct rp_buf *out)
{
    return auth_h_write(r, "cas", out);
}
static int h_delete(struct auth_req *r, struct rp_buf *out)
{
    return auth_h_write(r, "delete", out);
}
static int h_cdelete(struct auth_req *r, struct rp_buf *out)
{
    return auth_h_write(r, "cdelete", out);
}
static int h_batch(struct auth_req *r, struct rp_buf *out)
{
    return auth_h_write(r, "batch", out);
}
static int h_watch(struct auth_req *r, struct rp_buf *out)
{
    (void)out;
    return auth_h_watch(r);
}

#define ANYONE .anonymous = true
#define ADMINS .system = AUTH_SYS_ADMINS
#define EVERY_SYSTEM .system = AUTH_SYS_ALL
#define USERS(res, v) .resource = (res), .verb = (v)

/* Every method of the auth API; auth/auth.h documents their arguments in this order.
 * Node and Proxy identities read and watch what they serve from (secrets are kept
 * from them by auth/secrets.c); everything that changes the cluster is for admins
 * and for users whose roles' rules allow it. */
static const struct auth_method methods[] = {
    {"ping", auth_h_ping, ANYONE, .route = AUTH_ROUTE_LOCAL},
    {"get", auth_h_get, EVERY_SYSTEM, USERS(AUTH_RES_OF_REQUEST, "read"), .route = AUTH_ROUTE_READ},
    {"list", auth_h_list, EVERY_SYSTEM, USERS(AUTH_RES_OF_REQUEST, "list"),
     .route = AUTH_ROUTE_READ},
    {"put", h_put, ADMINS, USERS(AUTH_RES_OF_REQUEST, "put"), .route = AUTH_ROUTE_LEADER,
     .audit = "<kind>.created|updated"},
    {"create", h_create, ADMINS, USERS(AUTH_RES_OF_REQUEST, "create"), .route = AUTH_ROUTE_LEADER,
     .audit = "<kind>.created"},
    {"update", h_update, ADMINS, USERS(AUTH_RES_OF_REQUEST, "update"), .route = AUTH_ROUTE_LEADER,
     .audit = "<kind>.updated"},
    {"cas", h_cas, ADMINS, USERS(AUTH_RES_OF_REQUEST, "update"), .route = AUTH_ROUTE_LEADER,
     .audit = "<kind>.updated"},
    {"delete", h_delete, ADMINS, USERS(AUTH_RES_OF_REQUEST, "delete"), .route = AUTH_ROUTE_LEADER,
     .audit = "<kind>.deleted"},
    {"cdelete", h_cdelete, ADMINS, USERS(AUTH_RES_OF_REQUEST, "delete"), .route = AUTH_ROUTE_LEADER,
     .audit = "<kind>.deleted"},
    {"batch", h_batch, ADMINS, USERS(AUTH_RES_OF_REQUEST, "put"),
     .user_args = auth_authorize_batch_ops, .user_args_decide = true, .route = AUTH_ROUTE_LEADER,
     .audit = "<kind>.created|updated|deleted"},
    {"watch", h_watch, .stream = true, EVERY_SYSTEM, .route = AUTH_ROUTE_LOCAL},
    {"status", auth_h_status, EVERY_SYSTEM, USERS("cluster", "read"), .route = AUTH_ROUTE_LOCAL},
    {"member_status", auth_h_member_status, EVERY_SYSTEM, USERS("cluster", "read"),
     .route = AUTH_ROUTE_LOCAL},
    {"token_add", auth_h_token_add, ADMINS, USERS("token", "create"),
     .user_args = auth_authorize_token_type, .route = AUTH_ROUTE_LEADER,
     .audit = "join_token.create"},
    {"join", auth_h_join, ANYONE, .route = AUTH_ROUTE_LEADER, .audit = "join_token.used"},
    {"member_rm", auth_h_member_rm, ADMINS, .route = AUTH_ROUTE_LEADER,
     .audit = "auth_server.remove"},
    {"user_add", auth_h_user_add, ADMINS, USERS("user", "create"), .route = AUTH_ROUTE_LEADER,
     .audit = "user.create"},
    {"user_update", auth_h_user_update, ADMINS, USERS("user", "update"), .route = AUTH_ROUTE_LEADER,
     .audit = "user.update"},
    {"user_rm", auth_h_user_rm, ADMINS, USERS("user", "delete"), .route = AUTH_ROUTE_LEADER,
     .audit = "user.delete"},
    {"user_reset", auth_h_user_reset, ADMINS, USERS("user", "update"), .route = AUTH_ROUTE_LEADER,
     .audit = "user.update"},
    {"invite_redeem", auth_h_invite_redeem, ANYONE, .route = AUTH_ROUTE_LEADER,
     .audit = "user.password_change"},
    {"sign_user", auth_h_sign_user, ADMINS, .route = AUTH_ROUTE_LEADER, .audit = "cert.create"},
    {"authenticate", auth_h_authenticate, ANYONE, .route = AUTH_ROUTE_OWN, .audit = "user.login"},
    {"sign_host", auth_h_sign_host, ADMINS, .route = AUTH_ROUTE_LEADER, .audit = "cert.create"},
    {"events", auth_h_events, ADMINS, USERS("event", "list"), .route = AUTH_ROUTE_READ},
    {"audit_append", auth_h_audit_append, .system = AUTH_SYS(RP_SYS_AUTH),
     .route = AUTH_ROUTE_LEADER, .audit = "<the events it carries>"},
    /* Node agents and proxies: their own presence, events and certificates only (the
     * handlers hold each to its host id and kind, auth/agents.c). A heartbeat is not
     * audited: 10,000 nodes heartbeat ~167 times a second, and a presence changes
     * nothing a reader of the log asks about; a refused one is (auth_deny). */
    {"heartbeat", auth_h_heartbeat, .system = AUTH_SYS(RP_SYS_NODE) | AUTH_SYS(RP_SYS_PROXY),
     .route = AUTH_ROUTE_LEADER, .audit = "none (presence); refusals: auth"},
    {"emit_events", auth_h_emit_events, .system = AUTH_SYS(RP_SYS_NODE) | AUTH_SYS(RP_SYS_PROXY),
     .route = AUTH_ROUTE_LEADER, .audit = "<the events it carries>"},
    {"renew_host", auth_h_renew_host, .system = AUTH_SYS(RP_SYS_NODE) | AUTH_SYS(RP_SYS_PROXY),
     .route = AUTH_ROUTE_LEADER, .audit = "cert.create"},
    {"rec_put", auth_h_rec_put, .system = AUTH_SYS(RP_SYS_NODE), .route = AUTH_ROUTE_LEADER,
     .audit = "session.upload (when the recording is complete)"},
    {"rec_list", auth_h_rec_list, ADMINS, USERS("session", "list"), .route = AUTH_ROUTE_READ},
    {"rec_get", auth_h_rec_get, ADMINS, USERS("session", "read"), .route = AUTH_ROUTE_READ},
};

#undef ANYONE
#undef ADMINS
#undef EVERY_SYSTEM
#undef USERS

const struct auth_method *auth_methods(size_t *n)
{
    *n = sizeof methods / sizeof methods[0];
    return methods;
}

const struct auth_method *auth_method_find(const char *name)
{
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (strcmp(methods[i].name, name) == 0)
            return &methods[i];
    return NULL;
}

bool auth_caller_is_admin(const struct rp_identity *id)
{
    return rp_identity_is(id, RP_SYS_ADMIN) || rp_identity_is(id, RP_SYS_AUTH);
}

/* ---- who is calling --------------------------------------------------------- */

/* An auth server's identities (Auth, and the Admin identity tctl uses on its host)
 * are good only while that host is a member: its auth_server record exists. A state
 * with no record at all is a cluster still writing its bootstrap records. */
static int check_member(struct auth_server *s, const struct rp_identity *id)
{
    if (!rp_identity_is(id, RP_SYS_AUTH) && !rp_identity_is(id, RP_SYS_ADMIN))
        return 0;
    int rv = auth_locks_check_member(s->locks, id->host_id);
    if (rv == RP_ENOTFOUND)
        return rp_err(RP_EDENIED, "access denied: auth server %s is not a member of this cluster",
                      id->host_id);
    if (rv != 0)
        return rp_err(RP_EDENIED, "access denied: cannot check membership of %s: %s", id->host_id,
                      rp_errmsg());
    return 0;
}

/* A user must still exist (deleting a user cuts off its certificates at once); its
 * roles are read as stored now, and a role deleted since the certificate was issued
 * grants nothing. *@set is NULL for anyone who is not a user. */
#define MAX_ROLES 64
struct user_roles {
    struct rbac_role *roles[MAX_ROLES];
    size_t n;
    struct rbac_set *set;
};

static int load_user_roles(struct auth_server *s, const struct rp_identity *id,
                           struct user_roles *ur)
{
    memset(ur, 0, sizeof *ur);
    if (id == NULL || id->system_role != RP_SYS_NONE)
        return 0;
    struct rp_buf b;
    rp_buf_init(&b);
    int rv = state_get(s->state, "user", id->name, &b, NULL);
    rp_buf_free(&b);
    if (rv == RP_ENOTFOUND)
        return rp_err(RP_EDENIED, "access denied: user %s no longer exists", id->name);
    if (rv != 0)
        return rp_err(RP_EDENIED, "access denied: cannot read user %s: %s", id->name, rp_errmsg());
    for (size_t i = 0; i < id->n_groups && ur->n < MAX_ROLES; i++) {
        rv = auth_role_load(s, id->groups[i], &ur->roles[ur->n]);
        if (rv == 0)
            ur->n++;
        else if (rv != RP_ENOTFOUND)
            return rp_err(RP_EDENIED, "access denied: cannot read role %s: %s", id->groups[i],
                          rp_errmsg());
    }
    rv = rbac_set_new(ur->roles, ur->n, NULL, &ur->set);
    if (rv != 0)
        return rp_err(RP_EDENIED, "access denied: %s", rp_errmsg());
    return 0;
}

static void user_roles_free(struct auth_server *s, struct user_roles *ur)
{
    rbac_set_free(ur->set);
    for (size_t i = 0; i < ur->n; i++)
        auth_role_release(s, ur->roles[i]);
    ur->n = 0;
    ur->set = NULL;
}

/* Whether the resource a user's put names exists now (for create versus update). */
static bool put_target_exists(struct auth_server *s, const msgpack_object *args)
{
    const msgpack_object *res = rp_mp_get(args, "res");
    const msgpack_object *kind = rp_mp_get(res, "kind");
    const msgpack_object *name = rp_mp_get(rp_mp_get(res, "metadata"), "name");
    char k[64], n[256];
    if (kind == NULL || name == NULL || kind->type != MSGPACK_OBJECT_STR ||
        name->type != MSGPACK_OBJECT_STR || kind->via.str.size >= sizeof k ||
        name->via.str.size >= sizeof n)
        return false;
    snprintf(k, sizeof k, "%.*s", (int)kind->via.str.size, kind->via.str.ptr);
    snprintf(n, sizeof n, "%.*s", (int)name->via.str.size, name->via.str.ptr);
    struct rp_buf b;
    rp_buf_init(&b);
    int rv = state_get(s->state, k, n, &b, NULL);
    rp_buf_free(&b);
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
    if (caller && caller->system_role != RP_SYS_NONE) {
        audit_event_str(&e, "system_role", rp_system_role_name(caller->system_role));
        audit_event_str(&e, "server_id", caller->host_id);
    }
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
    /* A system identity travels typed, as its certificate said: role and host id. */
    if (rp_mp_get(as, "sys") != NULL) {
        char role[16];
        if (auth_arg_str(as, "sys", role, sizeof role, true) != 0 ||
            (id->system_role = rp_system_role_from_name(role)) == RP_SYS_NONE)
            return rp_err(RP_EINVAL, "_as: sys must name a system role (Admin, Auth, Node, Proxy)");
        if ((rv = rp_mp_get_strdup(as, "host_id", &id->host_id)) != 0 || id->host_id[0] == '\0')
            return rp_err(RP_EINVAL, "_as: a system identity needs its host_id");
    }
    return 0;
}

void auth_reply_error(struct rp_buf *out, int code, const char *msg)
{
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_reset(out);
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_bool(&m, "ok", false);
    rp_mp_map_str(&m, "code", rp_strerror(code));
    rp_mp_map_str(&m, "error", msg && *msg ? msg : rp_strerror(code));
    rp_mp_map_end(&m);
}

void auth_reply_ok(struct rp_mp_map *m, msgpack_packer *pk, struct rp_buf *out)
{
    rp_buf_reset(out);
    rp_mp_packer_init(pk, out);
    rp_mp_map_begin(pk, m);
    rp_mp_map_bool(m, "ok", true);
}

/* Refuses the request: logged, audited, answered. */
static void refuse(struct auth_server *s, const struct rp_identity *caller, const char *remote,
                   const char *method, struct rp_buf *out, int code)
{
    char why[512];
    snprintf(why, sizeof why, "%s", rp_errmsg());
    rp_warn("auth", "denied %s from %s (%s): %s", method, remote,
            caller ? caller->name : "anonymous", why);
    audit_denial(s, caller, remote, method, why);
    auth_reply_error(out, code, why);
}

int auth_deny(struct auth_req *r, const char *fmt, ...)
{
    char why[512];
    int n = snprintf(why, sizeof why, "access denied: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why + n, sizeof why - (size_t)n, fmt, ap);
    va_end(ap);
    rp_err(RP_EDENIED, "%s", why);
    rp_warn("auth", "denied %s from %s (%s): %s", r->method->name, r->remote,
            r->caller ? r->caller->name : "anonymous", why);
    audit_denial(r->srv, r->caller, r->remote, r->method->name, why);
    return rp_err(RP_EDENIED, "%s", why);
}

/* Runs the table's routing for @m: 1 if the request was forwarded or refused here
 * (the answer is in @out), 0 to serve it on this server. */
static int route(const struct auth_method *m, struct auth_req *r, struct rp_buf *out)
{
    int rv = 0;
    if (m->route == AUTH_ROUTE_READ) {
        rv = auth_route_read(r, out);
        if (rv > 0)
            return 1;
    } else if (m->route == AUTH_ROUTE_LEADER && !auth_is_leader(r->srv)) {
        /* A request a follower forwarded is never forwarded again: the sender retries
         * once it knows the new leader. */
        rv = r->from_peer ? rp_err(RP_ENOTLEADER, "not the leader") : auth_forward_req(r, out);
        if (rv == 0)
            return 1;
    }
    if (rv != 0) {
        auth_reply_error(out, rv, rp_errmsg());
        return 1;
    }
    return 0;
}

/* An address as a client's socket shows it: printable, no spaces, with a port. */
static bool client_addr_ok(const char *a)
{
    if (a[0] == '\0' || strrchr(a, ':') == NULL)
        return false;
    for (const char *p = a; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return false;
    return true;
}

int auth_serve_frame(struct auth_server *s, struct rp_conn *c, struct rp_identity *conn_caller,
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
    struct user_roles ur;
    memset(&as_id, 0, sizeof as_id);
    memset(&ur, 0, sizeof ur);
    int streamed = 0;
    if (args->type != MSGPACK_OBJECT_MAP) {
        auth_reply_error(out, RP_EINVAL, "request must be a map with a method \"m\"");
        goto done;
    }
    if (auth_arg_str(args, "m", m, sizeof m, true) != 0) {
        auth_reply_error(out, RP_EINVAL, rp_errmsg());
        goto done;
    }
    const struct auth_method *meth = auth_method_find(m);
    if (meth == NULL) {
        char msgbuf[96];
        snprintf(msgbuf, sizeof msgbuf, "unknown method '%s'", m);
        auth_reply_error(out, RP_EINVAL, msgbuf);
        goto done;
    }
    const char *remote = c->peer;
    char why[512];
    /* The connection's own identity first: a removed auth server, or any locked host
     * or user, is refused whatever it asks and whoever it claims to speak for. */
    if ((rv = check_member(s, conn_caller)) != 0 ||
        (rv = auth_locks_check(s->locks, conn_caller, why, sizeof why)) != 0) {
        refuse(s, conn_caller, remote, m, out, RP_EDENIED);
        goto done;
    }
    /* Only a current member's Auth identity may act on behalf of another caller: a
     * follower forwarding a request names the original caller in "_as". */
    bool peer = rp_identity_is(conn_caller, RP_SYS_AUTH);
    struct rp_identity *caller = conn_caller;
    char as_addr[128];
    const msgpack_object *as = rp_mp_get(args, "_as");
    if (as != NULL) {
        bool has_id = false;
        if (!peer) {
            rp_err(RP_EDENIED, "access denied: only auth servers may forward requests ('_as')");
            refuse(s, conn_caller, remote, m, out, RP_EDENIED);
            goto done;
        }
        if (identity_from_as(as, &as_id, &has_id, as_addr, sizeof as_addr) != 0) {
            auth_reply_error(out, RP_EINVAL, rp_errmsg());
            goto done;
        }
        remote = as_addr;
        caller = has_id ? &as_id : NULL;
        if ((rv = check_member(s, caller)) != 0 ||
            (rv = auth_locks_check(s->locks, caller, why, sizeof why)) != 0) {
            refuse(s, caller, remote, m, out, RP_EDENIED);
            goto done;
        }
    }
    /* A proxy calls on behalf of the web clients it serves (a login through the web API):
     * it names the client's address so that per-address limits and the audit log see
     * the client. Anyone else naming one is not believed. */
    char client_addr[64];
    if (rp_identity_is(caller, RP_SYS_PROXY) && rp_mp_get(args, "client_addr") != NULL) {
        if (auth_arg_str(args, "client_addr", client_addr, sizeof client_addr, true) != 0 ||
            !client_addr_ok(client_addr)) {
            auth_reply_error(out, RP_EINVAL,
                             "client_addr: expected the client's \"ip:port\" or \"[ip6]:port\"");
            goto done;
        }
        remote = client_addr;
    }
    struct auth_grant grant;
    bool exists = false;
    if ((rv = load_user_roles(s, caller, &ur)) != 0) {
        refuse(s, caller, remote, m, out, RP_EDENIED);
        goto done;
    }
    if (ur.set != NULL && meth->verb != NULL && strcmp(meth->verb, "put") == 0 &&
        !meth->user_args_decide)
        exists = put_target_exists(s, args);
    if (auth_authorize(meth, caller, ur.set, args, exists, &grant) != 0) {
        refuse(s, caller, remote, m, out, RP_EDENIED);
        goto done;
    }
    struct auth_req r = {
        .srv = s,
        .args = args,
        .raw = frame->data,
        .raw_len = frame->len,
        .caller = caller,
        .from_peer = peer,
        .conn = c,
        .remote = remote,
        .method = meth,
        .write_op = grant.write_op,
    };
    if (route(meth, &r, out))
        goto done;
    rp_err_clear();
    rv = meth->handler(&r, out);
    if (meth->stream) {
        streamed = 1;
        goto done;
    }
    if (rv != 0)
        auth_reply_error(out, rv, rp_errmsg());
done:
    user_roles_free(s, &ur);
    msgpack_unpacked_destroy(&msg);
    rp_identity_free(&as_id);
    return streamed;
}
