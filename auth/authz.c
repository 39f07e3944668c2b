/* auth/authz.c: what a user's identity may do on the auth API.
 *
 * System identities (Admin, Auth, Proxy, Node) have fixed rights (auth/server.c).
 * A user identity, an X.509 certificate from tctl auth sign or a login, names its
 * roles; each request is mapped to a (resource, verb) pair and checked against
 * the rules of those roles as stored now, deny rules first (auth/rbac.c). The
 * user must still exist: deleting a user cuts off its certificates at once. Users
 * never receive secrets (tokens, password hashes, CA private keys). */
#include <stdio.h>
#include <string.h>

#include "auth/internal.h"
#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/tls.h"
#include "state/state.h"

#define MAX_ROLES 64

bool auth_is_user_identity(const struct rp_identity *id)
{
    static const char *const system[] = {RP_ROLE_AUTH, RP_ROLE_PROXY, RP_ROLE_NODE, RP_ROLE_ADMIN};
    if (id == NULL || id->name == NULL || id->n_groups == 0)
        return false;
    for (size_t i = 0; i < id->n_groups; i++)
        for (size_t k = 0; k < 4; k++)
            if (strcmp(id->groups[i], system[k]) == 0)
                return false;
    return true;
}

/* The (resource, verb) a request needs; NULL resource: not for users at all. */
static void needs(const char *m, const msgpack_object *args, char *res, size_t n, const char **verb)
{
    static const struct {
        const char *method, *resource, *verb;
    } fixed[] = {
        {"events", "event", "list"},      {"token_add", "token", "create"},
        {"user_add", "user", "create"},   {"user_update", "user", "update"},
        {"user_reset", "user", "update"}, {"user_rm", "user", "delete"},
        {"status", "cluster", "read"},    {"member_status", "cluster", "read"},
    };
    res[0] = '\0';
    *verb = NULL;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if (strcmp(m, fixed[i].method) == 0) {
            snprintf(res, n, "%s", fixed[i].resource);
            *verb = fixed[i].verb;
            return;
        }
    }
    const msgpack_object *kind = NULL;
    if (strcmp(m, "get") == 0 || strcmp(m, "list") == 0) {
        kind = rp_mp_get(args, "kind");
        *verb = strcmp(m, "get") == 0 ? "read" : "list";
    } else if (strcmp(m, "put") == 0 || strcmp(m, "create") == 0) {
        kind = rp_mp_get(rp_mp_get(args, "res"), "kind");
        *verb = "create";
    } else if (strcmp(m, "update") == 0 || strcmp(m, "cas") == 0) {
        kind = rp_mp_get(rp_mp_get(args, "res"), "kind");
        *verb = "update";
    } else if (strcmp(m, "delete") == 0 || strcmp(m, "cdelete") == 0) {
        kind = rp_mp_get(args, "kind");
        *verb = "delete";
    }
    if (kind && kind->type == MSGPACK_OBJECT_STR && kind->via.str.size < n)
        snprintf(res, n, "%.*s", (int)kind->via.str.size, kind->via.str.ptr);
    else
        *verb = NULL; /* a list of every kind, batches, watches, signing: admins only */
}

int auth_authorize_user(struct auth_server *s, const struct rp_identity *id, const char *method,
                        const msgpack_object *args)
{
    char resource[64];
    const char *verb;
    needs(method, args, resource, sizeof resource, &verb);
    if (verb == NULL)
        return rp_err(RP_EDENIED,
                      "access denied: %s is not allowed to call %s (not available to "
                      "user identities)",
                      id->name, method);
    bool with_secrets = false;
    rp_mp_get_bool(args, "with_secrets", &with_secrets);
    if (with_secrets)
        return rp_err(RP_EDENIED, "access denied: user identities never receive secrets; use an "
                                  "auth server's admin identity");
    struct rp_buf b;
    rp_buf_init(&b);
    int rv = state_get(s->state, "user", id->name, &b, NULL);
    rp_buf_free(&b);
    if (rv == RP_ENOTFOUND)
        return rp_err(RP_EDENIED, "access denied: user %s no longer exists", id->name);
    if (rv != 0)
        return rv;
    struct rbac_role *roles[MAX_ROLES];
    size_t n = 0;
    for (size_t i = 0; i < id->n_groups && i < MAX_ROLES && rv == 0; i++) {
        rv = auth_role_load(s, id->groups[i], &roles[n]);
        if (rv == 0)
            n++;
        else if (rv == RP_ENOTFOUND)
            rv = 0; /* a role deleted since the certificate was issued grants nothing */
    }
    struct rbac_set *set = NULL;
    char why[512] = "";
    if (rv == 0)
        rv = rbac_set_new(roles, n, NULL, &set);
    if (rv == 0 && rbac_check_rule(set, resource, verb, why, sizeof why) != 0)
        rv = rp_err(RP_EDENIED, "access denied: %s may not %s %s: %s", id->name, verb, resource,
                    why);
    rbac_set_free(set);
    for (size_t i = 0; i < n; i++)
        auth_role_release(s, roles[i]);
    return rv;
}
