/* auth/authz.c: who may call which method (auth/authz.h).
 *
 * Anonymous callers get the methods marked anonymous. System identities get the
 * methods whose row names their role: the role comes from the certificate's system
 * role extension, never from a name. Users get what their roles' rules allow for
 * the (resource, verb) the row names, deny rules first; they never receive secrets,
 * and join tokens for auth servers are for admins alone. */
#include "auth/authz.h"

#include <stdio.h>
#include <string.h>

#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/mp.h"

static int deny(const struct rp_identity *caller, const char *method, const char *why)
{
    return rp_err(RP_EDENIED, "access denied: %s may not call %s: %s",
                  caller ? caller->name : "anonymous", method, why);
}

/* The kind a request names: "kind", or the kind of its "res". */
static bool request_kind(const msgpack_object *args, char *kind, size_t n)
{
    const msgpack_object *k = rp_mp_get(args, "kind");
    if (k == NULL)
        k = rp_mp_get(rp_mp_get(args, "res"), "kind");
    if (k == NULL || k->type != MSGPACK_OBJECT_STR || k->via.str.size == 0 ||
        k->via.str.size >= n || memchr(k->via.str.ptr, '\0', k->via.str.size) != NULL)
        return false;
    memcpy(kind, k->via.str.ptr, k->via.str.size);
    kind[k->via.str.size] = '\0';
    return true;
}

static int check_rule(const struct rp_identity *caller, const char *method,
                      const struct rbac_set *roles, const char *resource, const char *verb)
{
    char why[512] = "";
    if (roles == NULL || rbac_check_rule(roles, resource, verb, why, sizeof why) != 0)
        return rp_err(RP_EDENIED, "access denied: %s may not %s %s (%s): %s", caller->name, verb,
                      resource, method, why[0] ? why : "no role allows it");
    return 0;
}

/* A user's batch: each operation is checked as the write it is. "put" inside a batch
 * needs both create and update, since which one it turns out to be is decided only
 * when the batch applies. */
int auth_authorize_batch_ops(const struct rp_identity *caller, const struct rbac_set *roles,
                             const msgpack_object *args)
{
    const msgpack_object *ops = rp_mp_get(args, "ops");
    if (ops == NULL || ops->type != MSGPACK_OBJECT_ARRAY)
        return deny(caller, "batch", "expected 'ops', an array of writes");
    for (uint32_t i = 0; i < ops->via.array.size; i++) {
        const msgpack_object *op = &ops->via.array.ptr[i];
        char kind[64], name[16];
        const msgpack_object *o = rp_mp_get(op, "op");
        if (o == NULL || o->type != MSGPACK_OBJECT_STR || o->via.str.size >= sizeof name ||
            !request_kind(op, kind, sizeof kind))
            return deny(caller, "batch", "each op needs an 'op' and a kind");
        memcpy(name, o->via.str.ptr, o->via.str.size);
        name[o->via.str.size] = '\0';
        const char *verbs[2] = {NULL, NULL};
        if (strcmp(name, "put") == 0) {
            verbs[0] = "create";
            verbs[1] = "update";
        } else if (strcmp(name, "create") == 0) {
            verbs[0] = "create";
        } else if (strcmp(name, "update") == 0 || strcmp(name, "cas") == 0) {
            verbs[0] = "update";
        } else if (strcmp(name, "delete") == 0 || strcmp(name, "cdelete") == 0) {
            verbs[0] = "delete";
        } else {
            return deny(caller, "batch", "unknown op in batch");
        }
        for (int k = 0; k < 2 && verbs[k]; k++) {
            int rv = check_rule(caller, "batch", roles, kind, verbs[k]);
            if (rv != 0)
                return rv;
        }
    }
    return 0;
}

/* Auth tokens make admins: users may ask for node and proxy tokens only. */
int auth_authorize_token_type(const struct rp_identity *caller, const struct rbac_set *roles,
                              const msgpack_object *args)
{
    (void)roles;
    if (rp_mp_str_eq(rp_mp_get(args, "type"), "node") ||
        rp_mp_str_eq(rp_mp_get(args, "type"), "proxy"))
        return 0;
    return deny(caller, "token_add",
                "users may create node and proxy join tokens only; auth tokens are for an auth "
                "server's admin identity");
}

int auth_authorize(const struct auth_method *m, const struct rp_identity *caller,
                   const struct rbac_set *roles, const msgpack_object *args, bool exists,
                   struct auth_grant *grant)
{
    memset(grant, 0, sizeof *grant);
    if (m->anonymous)
        return 0;
    if (caller == NULL)
        return deny(NULL, m->name, "a client certificate is required");
    if (caller->system_role != RP_SYS_NONE) {
        if ((m->system & AUTH_SYS(caller->system_role)) == 0)
            return deny(caller, m->name,
                        "not a method for the system role "
                        "(see the method table in auth/auth.h)");
        return 0;
    }

    /* A user. */
    if (m->resource == NULL)
        return deny(caller, m->name, "not available to user identities");
    bool with_secrets = false;
    rp_mp_get_bool(args, "with_secrets", &with_secrets);
    if (with_secrets)
        return deny(caller, m->name,
                    "user identities never receive secrets; use an auth server's admin identity");
    if (m->user_args != NULL) {
        int rv = m->user_args(caller, roles, args);
        if (rv != 0)
            return rv;
    }
    if (m->user_args_decide)
        return 0;
    char kind[64];
    const char *resource = m->resource;
    if (strcmp(resource, AUTH_RES_OF_REQUEST) == 0) {
        if (!request_kind(args, kind, sizeof kind))
            return deny(caller, m->name, "users must name the kind they ask for");
        resource = kind;
    }
    if (strcmp(m->verb, "put") != 0)
        return check_rule(caller, m->name, roles, resource, m->verb);
    /* put: create for a new resource, update for an existing one. A user allowed only
     * one of the two gets the write that fails if the other case holds by the time
     * it applies, so a race with another writer cannot widen the right. */
    char why[512];
    bool can_create = roles && rbac_check_rule(roles, resource, "create", why, sizeof why) == 0;
    bool can_update = roles && rbac_check_rule(roles, resource, "update", why, sizeof why) == 0;
    if (can_create && can_update)
        return 0;
    if (exists && !can_update)
        return check_rule(caller, m->name, roles, resource, "update");
    if (!exists && !can_create)
        return check_rule(caller, m->name, roles, resource, "create");
    grant->write_op = can_create ? "create" : "update";
    return 0;
}
